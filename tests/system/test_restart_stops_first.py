"""kill -9 while moving, then a new agent with the full default scan list: the driver is stopped first.

DRV-FW keeps its last speed when its master dies. The new agent must stop the travel driver at its
configured address before it scans any other address (absent ones take retries and back-off) and
without waiting for the database check. Checked on the wire: the simulator's record of the
requests it received shows the stop frame before any frame to another module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drivers.sim.client import SimProcess, terminate
from tests.system import moving_agent

# Asserts the carriage's timing (poll ticks, link budgets, stop latency): `make test` runs it alone.
pytestmark = pytest.mark.realtime

REPO = Path(__file__).resolve().parents[2]
TRAVEL, M1_ENABLE = 3, 0x0001

CONFIG = """\
[agent]
id = "oht-restart"
data_dir = "{data}"

[bus]
port = "{link}"

[api]
port = 0
"""


def test_after_kill_9_the_new_agent_stops_the_driver_before_scanning(tmp_path: Path, sim: SimProcess) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(CONFIG.format(data=tmp_path / "data", link=sim.link))  # scan: the default list, 2..7
    moving = moving_agent.start(cfg, tmp_path / "first.log")
    try:
        os.kill(moving.pid, signal.SIGKILL)
        moving.wait(timeout=5)
    finally:
        if moving.poll() is None:
            moving.kill()
    time.sleep(0.3)
    assert sim.control.registers(TRAVEL)[M1_ENABLE] == 1, "the driver should still run after the kill (stock DRV-FW)"
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "second.log", "wb"),
        env=env,
    )
    try:
        stop_at = None
        deadline = time.monotonic() + 20
        while stop_at is None and time.monotonic() < deadline:
            stops = [
                w
                for w in sim.control.writes(TRAVEL, since=started)
                if w["address"] == M1_ENABLE and not any(w["values"])
            ]
            stop_at = stops[0]["t"] if stops else None
            time.sleep(0.01)
        assert stop_at is not None, (tmp_path / "second.log").read_text()[-3000:]
        others = [r for r in sim.control.reads(since=started) if r["addr"] != TRAVEL and r["t"] < stop_at]
        assert not others, f"the agent read other modules before stopping the driver: {others[:3]}"
        # And it does get on with the rest: every module is read once the driver is safe.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not {r["addr"] for r in sim.control.reads(since=stop_at)} >= {2, 4, 5}:
            time.sleep(0.1)
        assert {r["addr"] for r in sim.control.reads(since=stop_at)} >= {2, 4, 5}
        assert sim.control.registers(TRAVEL)[M1_ENABLE] == 0
    finally:
        terminate(agent, 15)
