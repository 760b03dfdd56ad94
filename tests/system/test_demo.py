"""`make demo` as a newcomer meets it: the README's first hour, step by step, against the real thing.

`python -m agent demo` is what `make demo` runs. The test reads what it prints, waits for
`/readyz`, logs in with the printed password, moves the carriage with the README's command, sees
the position change, presses the E-stop, sees the fault, resets and sees IDLE again, then stops it
with Ctrl-C (SIGINT) and expects a clean exit.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

# Asserts the carriage's timing (poll ticks, link budgets, stop latency): `make test` runs it alone.
pytestmark = pytest.mark.realtime

REPO = Path(__file__).resolve().parents[2]


def read_banner(proc: subprocess.Popen[str], timeout: float) -> str:
    """What the demo prints up to its 'Ctrl-C stops everything.' line."""
    assert proc.stdout is not None
    out, end = "", time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while "Ctrl-C stops everything." not in out:
            left = end - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise AssertionError(f"the demo printed no banner in {timeout} s:\n{out}")
            if sel.select(left):
                line = proc.stdout.readline()
                if not line:
                    raise AssertionError(f"the demo closed its output:\n{out}")
                out += line
    return out


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "demo", "--dir", str(tmp_path / "demo")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )
    try:
        yield proc, read_banner(proc, 60)
    finally:
        # Ctrl-C first: the demo stops its simulator, broker and consumer, which run in sessions
        # of their own and would outlive a SIGKILL of its group.
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def wait_json(client: httpx.Client, path: str, ok: object, timeout: float) -> dict[str, object]:
    """GET `path` until `ok(body)` holds; the last body."""
    assert callable(ok)
    end, body = time.monotonic() + timeout, {}
    while time.monotonic() < end:
        try:
            answer = client.get(path)
        except httpx.TransportError as exc:  # the gateway is not listening yet
            body = {"error": repr(exc)}
            time.sleep(0.1)
            continue
        body = answer.json()
        if answer.status_code == 200 and ok(body):
            return dict(body)
        time.sleep(0.1)
    raise AssertionError(f"{path} never satisfied the check in {timeout} s: {body}")


@pytest.mark.timeout(120)
def test_the_readmes_first_hour_works_on_the_demo(demo: tuple[subprocess.Popen[str], str]) -> None:
    proc, banner = demo
    api = re.search(r"API:\s+(http://127\.0\.0\.1:\d+)/", banner)
    login = re.search(r"log in:\s+user (\S+), password (\S+)", banner)
    assert api and login, banner
    with httpx.Client(base_url=api[1], timeout=10.0) as anon:
        wait_json(anon, "/readyz", lambda b: True, 60)
        answer = anon.post("/api/v1/auth/login", json={"username": login[1], "password": login[2]})
        assert answer.status_code == 200, answer.text
        assert anon.get("/").status_code == 200  # the page
    headers = {"Authorization": f"Bearer {answer.json()['token']}"}
    with httpx.Client(base_url=api[1], headers=headers, timeout=10.0) as c:
        before = wait_json(c, "/api/v1/status", lambda b: b["state"] == "IDLE", 30)
        # the README's move, as written there
        move = c.post(
            "/api/v1/commands",
            headers={"Idempotency-Key": "first-move"},
            json={"type": "move", "params": {"direction": "forward", "speed_pct": 20, "distance_cm": 50}},
        )
        assert move.status_code == 201, move.text
        done = wait_json(c, f"/api/v1/commands/{move.json()['id']}", lambda b: b["state"] == "succeeded", 30)
        assert done["error_code"] is None, done
        travel = c.get("/api/v1/modules/travel").json()
        assert travel["values"]["M1_POSITION_CURRENT"]["value"] != 0, (before, travel)
        stop = c.post("/api/v1/estop", json={"reason": "first hour"})
        assert stop.status_code == 200 and stop.json()["confirmed"], stop.text
        estop = wait_json(c, "/api/v1/status", lambda b: b["state"] == "ESTOP", 10)
        assert "ESTOP_REQUESTED" in {f["code"] for f in estop["verdict"]["faults"]}, estop
        end = time.monotonic() + 10
        while (reset := c.post("/api/v1/reset")).status_code != 200 and time.monotonic() < end:
            assert reset.json()["code"] == "RESET_INCOMPLETE", reset.text  # refused with its reasons
            time.sleep(0.2)
        assert reset.status_code == 200, reset.text
        wait_json(c, "/api/v1/status", lambda b: b["state"] == "IDLE", 10)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    assert proc.wait(30) == 0
