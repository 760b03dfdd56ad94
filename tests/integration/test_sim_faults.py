"""Fault injection over the control socket, observed on the wire."""

from __future__ import annotations

import time

import pytest
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusIOException

from drivers.sim.client import AsyncSimControl, SimControlError, SimProcess
from drivers.sim.crc import crc_ok
from tests.integration.test_sim_support import (  # noqa: F401  (fixtures)
    ModbusError,
    NoReply,
    RtuPort,
    make_sim,
    port,
    read_frame,
    sim,
    wait_for,
    write_frame,
)


def test_silence_then_speak_again(sim: SimProcess, port: RtuPort) -> None:
    sim.control.silence(3)
    assert port.transact(read_frame(3, 0, 1), timeout=0.1)[0] is None
    assert port.transact(write_frame(3, 0x0002, 9), timeout=0.1)[0] is None
    assert port.read(2, 0) == [240]  # the others still answer
    assert sim.control.read(3, 0x0002) == [0]  # a silenced slave does not execute either
    stats = sim.control.stats()["slaves"]["3"]
    assert stats["frames_received"] == 2 and stats["frames_ignored"] == 2 and stats["replies_sent"] == 0
    sim.control.silence(3, False)
    assert port.read(3, 0x0100) == [3]


def test_silence_with_execute_models_a_dead_tx_line(sim: SimProcess, port: RtuPort) -> None:
    sim.control.silence(None, execute=True)  # every slave
    assert port.transact(write_frame(3, 0x0002, 9), timeout=0.1)[0] is None
    assert sim.control.read(3, 0x0002) == [9]
    assert port.transact(read_frame(2, 0, 1), timeout=0.1)[0] is None


def test_delay_puts_the_reply_past_the_timeout(sim: SimProcess, port: RtuPort) -> None:
    sim.control.delay(2, 300)
    reply, elapsed = port.transact(read_frame(2, 0, 1), timeout=1.0)
    assert reply is not None and crc_ok(reply)
    assert 0.295 <= elapsed < 0.4
    # A master with a 100 ms timeout gives up; the late reply then arrives unasked.
    assert port.transact(read_frame(2, 0, 1), timeout=0.1)[0] is None
    late = port.receive(timeout=0.5)
    assert late is not None and late[0] == 2
    sim.control.delay(2, 0)
    _, elapsed = port.transact(read_frame(2, 0, 1))
    assert elapsed < 0.05
    assert sim.control.stats()["slaves"]["2"]["replies_delayed"] == 2


def test_delayed_slave_is_busy_and_keeps_replies_in_order(sim: SimProcess, port: RtuPort) -> None:
    sim.control.delay(2, 150)
    port.ser.write(read_frame(2, 0x0000, 1))  # asks for BATTERY_VOLTAGE
    time.sleep(0.005)
    port.ser.write(read_frame(2, 0x0100, 1))  # then DEVICE_ID, while the first is pending
    first = port.receive(timeout=1.0)
    second = port.receive(timeout=1.0)
    assert first is not None and second is not None
    assert first[3:5] == (240).to_bytes(2, "big") and second[3:5] == (2).to_bytes(2, "big")


async def test_corrupt_crc_makes_pymodbus_time_out(sim: SimProcess) -> None:
    ctl = AsyncSimControl(sim.control_path)
    client = AsyncModbusSerialClient(port=sim.link, framer=FramerType.RTU, baudrate=115200, timeout=0.3, retries=0)
    assert await client.connect()
    try:
        await ctl.corrupt_crc(3, 1.0)
        with pytest.raises(ModbusIOException):
            await client.read_holding_registers(0, count=2, device_id=3)
        await ctl.corrupt_crc(3, 0.0)
        rr = await client.read_holding_registers(0x0100, count=1, device_id=3)
        assert rr.registers == [3]
    finally:
        client.close()


def test_corrupt_crc_on_the_wire_and_seeded_rate(sim: SimProcess, port: RtuPort) -> None:
    sim.control.corrupt_crc(2, 1.0)
    reply, _ = port.transact(read_frame(2, 0, 1))
    assert reply is not None and reply[:5] == bytes.fromhex("02030200f0")  # the right data...
    assert not crc_ok(reply)  # ...under a CRC that does not match
    sim.control.corrupt_crc(2, 0.3)
    bad = 0
    for _ in range(200):
        reply, _ = port.transact(read_frame(2, 0, 1))
        assert reply is not None
        bad += not crc_ok(reply)
    assert 30 <= bad <= 90  # binomial(200, 0.3): mean 60, sd 6.5
    assert sim.control.stats()["slaves"]["2"]["faults_injected"] == bad + 1


async def test_injected_exception_is_answered_and_not_executed(sim: SimProcess) -> None:
    ctl = AsyncSimControl(sim.control_path)
    client = AsyncModbusSerialClient(port=sim.link, framer=FramerType.RTU, baudrate=115200, timeout=0.5, retries=0)
    assert await client.connect()
    try:
        await ctl.exception(3, 4)
        rr = await client.write_register(0x0002, 77, device_id=3)
        assert rr.isError() and rr.exception_code == 4
        assert await ctl.read(3, 0x0002) == [0]
        (w,) = await ctl.writes(3)
        assert w["applied"] is False and w["exception"] == 4
        await ctl.exception(3, 0)
        rr = await client.write_register(0x0002, 77, device_id=3)
        assert not rr.isError()
        assert await ctl.read(3, 0x0002) == [77]
    finally:
        client.close()


def test_wrong_address_reply_has_a_valid_crc(sim: SimProcess, port: RtuPort) -> None:
    sim.control.wrong_address(3, reply_as=7)
    reply, _ = port.transact(read_frame(3, 0x0100, 1))
    assert reply is not None and crc_ok(reply)
    assert reply[0] == 7 and reply[3:5] == (3).to_bytes(2, "big")
    sim.control.wrong_address(3, reply_as=7, rate=0)
    assert port.read(3, 0x0100) == [3]


def test_reboot_restores_defaults_after_a_deaf_period(sim: SimProcess, port: RtuPort) -> None:
    port.write(3, 0x000A, 250)  # M1_MAX_ACCELERATION
    port.write(3, 0x0002, 30)
    sim.control.reboot(3, boot_ms=300)
    t0 = time.monotonic()
    assert port.transact(read_frame(3, 0x000A, 1), timeout=0.1)[0] is None
    wait_for(lambda: port.transact(read_frame(3, 0x000A, 1), timeout=0.05)[0] is not None, timeout=2.0)
    assert time.monotonic() - t0 >= 0.29
    assert port.read(3, 0x000A) == [5] and port.read(3, 0x0002) == [0]
    assert port.read(3, 0x0100) == [3]  # DEVICE_ID is still the served address


def test_faults_clear_and_control_errors(sim: SimProcess, port: RtuPort) -> None:
    sim.control.silence(2)
    sim.control.corrupt_crc(3, 1.0)
    sim.control.delay(5, 500)
    sim.control.faults_clear()
    assert port.read(2, 0) == [240] and port.read(3, 0x0100) == [3]
    faults = sim.control.stats()["slaves"]["5"]["faults"]
    assert faults["delay_ms"] == 0 and not faults["silent"]
    with pytest.raises(SimControlError, match="no simulated slave"):
        sim.control.silence(42)
    with pytest.raises(SimControlError, match="rate"):
        sim.control.corrupt_crc(2, 1.5)
    with pytest.raises(SimControlError, match="reply_as"):
        sim.control.request("wrong_address", addr=3, rate=1.0)
