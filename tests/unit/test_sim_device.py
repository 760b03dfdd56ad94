"""Modbus semantics of one simulated slave: which exception for which request."""

from __future__ import annotations

import random
import struct

import pytest

from drivers.sim import rtu
from drivers.sim.device import Outcome, SimSlave
from drivers.sim.main import DEFAULT_PROFILES
from drivers.sim.registers import load_profile


class NoPeers:
    def firmware_for_role(self, role: str) -> None:
        return None


def slave(name: str, unit: int) -> SimSlave:
    return SimSlave(unit, load_profile(DEFAULT_PROFILES, name), NoPeers(), random.Random(1), 0, 0.0)


def run(
    s: SimSlave, fc: int, address: int = 0, count: int = 1, values: tuple[int, ...] = (), malformed: bool = False
) -> Outcome:
    return s.execute(rtu.Request(s.unit, fc, address, count, values, malformed), 0.0)


def test_identity_block_reports_served_address() -> None:
    s = slave("power-v2", 9)  # served at a non-default address
    out = run(s, 3, 0x0100, 10)
    assert out.exception is None
    values = list(struct.unpack(">10H", out.reply[3:-2]))
    assert values[0] == 9 and values[4] == 2


@pytest.mark.parametrize(
    ("fc", "address", "count", "code"),
    [
        (0x01, 0, 1, rtu.EXC_ILLEGAL_FUNCTION),  # read coils: not implemented
        (0x04, 0, 1, rtu.EXC_ILLEGAL_FUNCTION),  # DRV-FW has no FC 04
        (0x03, 0, 0, rtu.EXC_ILLEGAL_VALUE),
        (0x03, 0, 126, rtu.EXC_ILLEGAL_VALUE),
        (0x03, 0x0025, 2, rtu.EXC_ILLEGAL_ADDRESS),  # 0x0026 is a gap: never bridged
        (0x03, 0x0200, 1, rtu.EXC_ILLEGAL_ADDRESS),
    ],
)
def test_read_exceptions(fc: int, address: int, count: int, code: int) -> None:
    out = run(slave("travel-drvfw", 3), fc, address, count)
    assert out.exception == code and not out.applied
    assert out.reply[1] == fc | 0x80 and out.reply[2] == code


def test_write_rules() -> None:
    s = slave("travel-drvfw", 3)
    assert run(s, 6, 0x0003, 1, (50,)).exception == rtu.EXC_ILLEGAL_ADDRESS  # ACTUAL_SPEED is R
    assert run(s, 6, 0x0026, 1, (1,)).exception == rtu.EXC_ILLEGAL_ADDRESS  # unmapped
    # FC16 touching one R register changes nothing at all.
    assert run(s, 16, 0x0001, 3, (1, 40, 9)).exception == rtu.EXC_ILLEGAL_ADDRESS
    assert s.bank.get("M1_ENABLE") == 0 and s.bank.get("M1_COMMAND_SPEED") == 0
    assert run(s, 16, 0x0001, 2, (1, 40), malformed=True).exception == rtu.EXC_ILLEGAL_VALUE
    ok = run(s, 16, 0x0001, 2, (1, 40))
    assert ok.applied and ok.reply == rtu.write_multiple_reply(3, 1, 2)
    assert s.bank.get("M1_COMMAND_SPEED") == 40
    # Raw storage, no range check (the firmware does none): 500 % is stored as such.
    assert run(s, 6, 0x0002, 1, (500,)).applied and s.bank.get("M1_COMMAND_SPEED") == 500


def test_write_only_register_reads_back() -> None:
    s = slave("safety-safefw", 5)
    assert run(s, 3, 0x0109, 1).exception is None
    assert run(s, 4, 0x0000, 2).exception is None  # SAFE-FW answers FC 04 too
