"""kill -9 of the agent while moving, with dead-man firmware: the driver turns its outputs off."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import AGENT_TOML
from tests.system import moving_agent

# Asserts the carriage's timing (poll ticks, link budgets, stop latency): `make test` runs it alone.
pytestmark = pytest.mark.realtime


def test_kill_9_while_moving_deadman_turns_outputs_off(tmp_path: Path, sim_factory) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory("k", slaves=["2:power-v2", "3:travel-drvfw-deadman", "4:dock-readonly", "5:safety-safefw"])
    sim.control.set(3, 0x000A, 100)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(AGENT_TOML.format(data=tmp_path / "data", link=sim.link, extra=""))
    proc = moving_agent.start(cfg, tmp_path / "agent.log")
    try:
        time.sleep(0.3)
        assert sim.control.registers(3)[0x0001] == 1
        killed = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        window = 0.3  # deadman_window_ms of the profile
        while time.monotonic() - killed < window + 0.5 and sim.control.registers(3)[0x0001] == 1:
            time.sleep(0.01)
        off_after = time.monotonic() - killed
        regs = sim.control.registers(3)
        assert regs[0x0001] == 0 and regs[0x0003] == 0, "outputs stayed on after the agent died"
        assert off_after <= window + 0.2, f"outputs went off {off_after * 1000:.0f} ms after the kill"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
