"""Shared fixtures: the firmware simulator as a real process on a real pty, and a bus master on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from agent.store.database import Database
from drivers.modbus.master import BusMaster
from drivers.profiles import Profile, load_profiles
from drivers.sim.client import SimProcess
from tests.hang_guard import pytest_exception_interact, pytest_runtest_protocol  # noqa: F401  (a hang ends the run)

REPO = Path(__file__).resolve().parent.parent
PROFILES_DIR = REPO / "config" / "profiles"


class FakeClock:
    """A clock that moves only when the test moves it (`clock.now += seconds`)."""

    def __init__(self, now: float = 1_900_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """A started database in a fresh data directory (a module may define its own `db`)."""
    database = await Database.open(tmp_path / "data")
    yield database
    await database.close()


@pytest.fixture(scope="session")
def profiles() -> dict[str, Profile]:
    return load_profiles(PROFILES_DIR)


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[Callable[..., SimProcess]]:
    """Start simulators in tmp_path; every one started is stopped at teardown."""
    started: list[SimProcess] = []

    def start(name: str = "bus", **kwargs: object) -> SimProcess:
        sim = SimProcess(tmp_path / f"{name}.tty", tmp_path / f"{name}.ctl", **kwargs)  # type: ignore[arg-type]
        sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(sim_factory: Callable[..., SimProcess]) -> SimProcess:
    """Default module set (power 2, travel 3, dock 4, safety 5) with firmware timing."""
    return sim_factory(seed=7)


async def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return predicate()


async def started_master(link: str, profiles: dict[str, Profile], **kwargs: object) -> BusMaster:
    """A running master with the default slaves' timing taken from their profiles."""
    master = BusMaster(link, **kwargs)  # type: ignore[arg-type]
    for address, name in ((2, "power-v2"), (3, "travel-drvfw"), (4, "dock-readonly"), (5, "safety-safefw")):
        p = profiles[name]
        master.configure_slave(
            address, turnaround_s=p.turnaround_ms / 1000, service_period_s=p.service_period_ms / 1000
        )
    await master.start()
    assert await wait_for(lambda: master.port_up, 5.0), "port did not open"
    return master


@pytest.fixture
async def master(sim: SimProcess, profiles: dict[str, Profile]) -> AsyncIterator[BusMaster]:
    m = await started_master(sim.link, profiles)
    yield m
    assert m.task is not None and not m.task.done(), "bus task died"
    await m.close()


# ---------------------------------------------------------------- the whole agent, in-process
AGENT_TOML = """\
[agent]
id = "oht-test"
data_dir = "{data}"

[bus]
port = "{link}"
scan = [2, 3, 4, 5]
rediscover_s = 0.5

[api]
port = 0
{extra}
"""


def agent_config(tmp_path: Path, link: str, extra: str = ""):  # type: ignore[no-untyped-def]
    from agent.config import load_config

    path = tmp_path / "agent.toml"
    path.write_text(AGENT_TOML.format(data=tmp_path / "data", link=link, extra=extra))
    return load_config(path)


@pytest.fixture
async def agent_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start a Runtime in this event loop against a simulator link; waits for IDLE. Stopped at teardown."""
    from agent.runtime import Runtime

    runtimes: list[Runtime] = []

    async def start(link: str, extra: str = "", wait_state: str | None = "IDLE", timeout: float = 15.0) -> Runtime:
        rt = Runtime(agent_config(tmp_path, link, extra), health_log_s=3600)
        runtimes.append(rt)
        await rt.start()
        if wait_state is not None:
            ok = await wait_for(
                lambda: rt.controller is not None and rt.controller.sm.state.value == wait_state, timeout
            )
            assert ok, f"agent did not reach {wait_state}: {rt.controller.status() if rt.controller else None}"
        return rt

    yield start
    for rt in runtimes:
        await rt.shutdown()


@asynccontextmanager
async def gateway_for(rt):  # type: ignore[no-untyped-def]
    """The real gateway (API) in this event loop, joined to the runtime `rt` over the core socket."""
    from agent.gateway import Gateway

    gw = Gateway(rt.config)
    await gw.start()
    try:
        await asyncio.wait_for(gw.client.connected.wait(), 10)
        yield gw
    finally:
        await gw.shutdown()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow soak and crash loops run only when asked for with `-m slow` (make test-slow / make bench)."""
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
