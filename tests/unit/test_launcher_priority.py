"""The launcher gives the core the priority its systemd unit gives it, so `make demo` and the tests
run the pair as a carriage does."""

from __future__ import annotations

import configparser
from pathlib import Path

from agent.launcher import CORE_FIFO_PRIORITY

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "oht-agent-core.service"


def test_the_launcher_and_the_core_unit_ask_for_the_same_realtime_priority() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(UNIT)
    assert unit["Service"]["CPUSchedulingPolicy"] == "fifo"
    assert int(unit["Service"]["CPUSchedulingPriority"]) == CORE_FIFO_PRIORITY
