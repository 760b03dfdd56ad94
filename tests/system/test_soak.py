"""A soak: `oht-agent run` on the simulator under polling, commands and API load, for a while.

What must hold at the end: the core's and the gateway's RSS grew by less than 5 % after their
warm-up, no fault latched that the load did not cause (the load only reads and pauses), the
data directory stays within the outbox's quotas, and the carriage is still IDLE and answering.

The short version runs in `make test` (`SOAK_SHORT_S`); the long one, an hour, is marked slow
(`make test-slow`). Both drive the real daemon over HTTP from a separate thread, the way a
technician's tools and the site's dashboards do.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from drivers.sim.client import SimProcess
from tests.system.test_two_processes import Daemon, daemon  # noqa: F401 - fixture

# Asserts the carriage's timing (poll ticks, link budgets, stop latency): `make test` runs it alone.
pytestmark = pytest.mark.realtime

SOAK_SHORT_S = 6.0
SOAK_LONG_S = 3600.0
WARM_UP_S = 3.0
RSS_GROWTH_LIMIT = 0.05
# The [upstream] quotas by class (defaults) plus the tables beside the outbox.
DATA_DIR_LIMIT_BYTES = (64 + 128 + 32 + 8) * 2**20


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * 4096


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Load:
    """Status reads, module reads and paused commands in a loop, counting the answers by status."""

    def __init__(self, daemon: Daemon, token: str) -> None:
        self.daemon, self.token = daemon, token
        self.stop = threading.Event()
        self.answers: dict[int, int] = {}
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name="soak-load", daemon=True)

    def _run(self) -> None:
        keys = itertools.count()
        with self.daemon.client(self.token) as client:
            while not self.stop.is_set():
                for method, path, body in (
                    ("GET", "/api/v1/status", None),
                    ("GET", "/api/v1/modules/travel", None),
                    ("GET", "/api/v1/commands?limit=20", None),
                    ("POST", "/api/v1/commands", {"type": "pause"}),
                ):
                    headers = {"Idempotency-Key": f"soak-{next(keys)}"} if method == "POST" else {}
                    try:
                        answer = client.request(method, path, json=body, headers=headers)
                    except httpx.HTTPError as exc:
                        self.errors.append(f"{method} {path}: {exc!r}")
                        continue
                    self.answers[answer.status_code] = self.answers.get(answer.status_code, 0) + 1
                self.stop.wait(0.02)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


@pytest.fixture
def token(daemon: Daemon) -> Iterator[str]:
    daemon.wait_ready()
    yield daemon.login("op")


def soak(daemon: Daemon, token: str, seconds: float) -> None:
    pids = daemon.pids()
    data_dir = daemon.config.parent / "data"
    with Load(daemon, token) as load:
        load.stop.wait(WARM_UP_S)  # caches, pools and the first pruning pass settle
        before = {role: rss_bytes(pid) for role, pid in pids.items()}
        end = time.monotonic() + seconds
        peak = dict(before)
        while time.monotonic() < end and not load.stop.is_set():
            load.stop.wait(min(1.0, max(end - time.monotonic(), 0.0)))
            for role, pid in pids.items():
                peak[role] = max(peak[role], rss_bytes(pid))
        after = {role: rss_bytes(pid) for role, pid in pids.items()}
    assert daemon.pids() == pids, "a half of the agent was restarted during the soak"
    assert not load.errors, load.errors[:5]
    assert set(load.answers) <= {200, 201}, load.answers
    assert sum(load.answers.values()) > 40 * seconds, load.answers  # the load was real
    for role in pids:
        growth = (after[role] - before[role]) / before[role]
        assert growth < RSS_GROWTH_LIMIT, f"{role}: RSS {before[role]} -> {after[role]} B (peak {peak[role]})"
    with daemon.client(token) as client:
        status = client.get("/api/v1/status").json()
    assert status["state"] == "IDLE", status["verdict"]
    assert status["verdict"]["faults"] == [], status["verdict"]
    assert dir_bytes(data_dir) < DATA_DIR_LIMIT_BYTES


@pytest.mark.timeout(90)
def test_a_short_soak_keeps_memory_faults_and_the_database_in_bounds(
    daemon: Daemon,
    sim: SimProcess,
    token: str,
) -> None:
    soak(daemon, token, SOAK_SHORT_S)


@pytest.mark.slow
@pytest.mark.timeout(SOAK_LONG_S + 300)
def test_an_hour_of_soak_keeps_memory_faults_and_the_database_in_bounds(
    daemon: Daemon,
    sim: SimProcess,
    token: str,
) -> None:
    soak(daemon, token, SOAK_LONG_S)
