"""The simulator on a real pty, as a bare pymodbus client and a raw pyserial master see it."""

from __future__ import annotations

import time

import pytest
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient

from drivers.sim.client import AsyncSimControl, SimProcess
from drivers.sim.crc import with_crc
from tests.integration.test_sim_support import (  # noqa: F401  (fixtures)
    ModbusError,
    NoReply,
    RtuPort,
    make_sim,
    port,
    read_frame,
    sim,
    write_frame,
)

IDENTITY = {2: 2, 3: 3, 4: 5, 5: 6}  # address -> MODULE_TYPE of the default carriage


async def connect(link: str) -> AsyncModbusSerialClient:
    client = AsyncModbusSerialClient(port=link, framer=FramerType.RTU, baudrate=115200, timeout=0.5, retries=0)
    assert await client.connect()
    return client


async def test_pymodbus_reads_match_ground_truth(sim: SimProcess) -> None:
    ctl = AsyncSimControl(sim.control_path)
    client = await connect(sim.link)
    try:
        for unit, module_type in IDENTITY.items():
            rr = await client.read_holding_registers(0x0100, count=10, device_id=unit)
            assert not rr.isError(), rr
            assert rr.registers == await ctl.read(unit, 0x0100, 10)
            assert rr.registers[0] == unit and rr.registers[4] == module_type
        rr = await client.read_holding_registers(0, count=4, device_id=2)
        assert rr.registers == [240, 0, 800, 3700]  # power-v2 defaults
        truth = await ctl.registers(3)
        rr = await client.read_holding_registers(0, count=32, device_id=3)
        assert rr.registers == [truth[a] for a in range(32)]
        rr = await client.read_input_registers(0x0044, count=4, device_id=5)  # SAFE-FW answers FC 04
        assert rr.registers == [30, 50, 60, 70]
    finally:
        client.close()


async def test_pymodbus_writes_reach_registers_and_write_log(sim: SimProcess) -> None:
    ctl = AsyncSimControl(sim.control_path)
    client = await connect(sim.link)
    try:
        before = time.monotonic()
        rr = await client.write_register(0x0002, 42, device_id=3)
        assert not rr.isError()
        rr = await client.write_registers(0x0101, [4, 2, 2], device_id=3)
        assert not rr.isError()
        after = time.monotonic()
        assert await ctl.read(3, 0x0002) == [42]
        assert (await client.read_holding_registers(0x0101, count=3, device_id=3)).registers == [4, 2, 2]
        writes = await ctl.writes(3, since=before)
        assert [(w["fc"], w["address"], w["values"], w["applied"]) for w in writes] == [
            (6, 2, [42], True),
            (16, 0x0101, [4, 2, 2], True),
        ]
        # Receive timestamps are on this process's monotonic clock (system-wide on Linux).
        assert all(before <= w["t"] <= after for w in writes)
        assert await ctl.writes(3, since=after) == []
        await ctl.clear_writes()
        assert await ctl.writes() == []
    finally:
        client.close()


async def test_pymodbus_sees_the_firmware_exceptions(sim: SimProcess) -> None:
    client = await connect(sim.link)
    try:
        rr = await client.read_coils(0, count=1, device_id=3)
        assert rr.isError() and rr.exception_code == 1
        rr = await client.read_input_registers(0, count=1, device_id=3)  # DRV-FW: no FC 04
        assert rr.isError() and rr.exception_code == 1
        rr = await client.read_holding_registers(0x002B, count=2, device_id=2)  # gap at 0x002C
        assert rr.isError() and rr.exception_code == 2
        rr = await client.write_register(0x0003, 50, device_id=3)  # ACTUAL_SPEED is R
        assert rr.isError() and rr.exception_code == 2
        rr = await client.write_register(0x0030, 1, device_id=4)  # read-only dock
        assert rr.isError() and rr.exception_code == 2
        rr = await client.read_holding_registers(0, count=2, device_id=2)  # still in sync after all that
        assert rr.registers == [240, 0]
    finally:
        client.close()


def test_raw_count_limits_give_exception_03(port: RtuPort) -> None:
    for count in (0, 126):
        with pytest.raises(ModbusError) as exc:
            port.read(2, 0, count)
        assert exc.value.code == 3
    # FC 16 whose byte count disagrees with its quantity.
    bad = with_crc(bytes.fromhex("031000010002") + bytes((2,)) + bytes.fromhex("0001"))
    reply, _ = port.transact(bad)
    assert reply is not None and reply[1:3] == bytes((0x90, 3))


def test_bad_crc_unserved_and_broadcast_frames_get_no_reply(sim: SimProcess, port: RtuPort) -> None:
    frame = bytearray(read_frame(2, 0, 1))
    frame[-1] ^= 0x01
    assert port.transact(bytes(frame), timeout=0.1)[0] is None
    assert port.transact(read_frame(9, 0, 1), timeout=0.1)[0] is None  # nobody at 9
    assert port.transact(write_frame(0, 0x0002, 1), timeout=0.1)[0] is None  # broadcast
    assert port.read(2, 0, 1) == [240]
    stats = sim.control.stats()
    assert stats["slaves"]["2"]["crc_errors"] == 1
    assert stats["bus"]["frames_unserved"] == 2
    assert sim.control.read(3, 2) == [0]  # the broadcast write did nothing


def test_garbage_is_dropped_after_line_silence(sim: SimProcess, port: RtuPort) -> None:
    port.ser.write(b"\x03\x10\x00")  # the start of a frame that never completes
    time.sleep(0.01)
    assert port.read(3, 0x0100) == [3]
    port.ser.write(b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7")  # junk of frame length: CRC fails
    time.sleep(0.01)
    assert port.read(5, 0x0104) == [6]
    assert sim.control.stats()["bus"]["partials_dropped"] >= 1


def test_immediate_reply_latency_is_well_under_half_a_millisecond(port: RtuPort) -> None:
    frame = read_frame(2, 0, 10)
    times = []
    for _ in range(300):
        reply, elapsed = port.transact(frame)
        assert reply is not None and len(reply) == 25
        times.append(elapsed)
    times.sort()
    # Round trip through pyserial and both pty directions, measured from this process.
    assert times[len(times) // 2] < 0.0005, times[len(times) // 2]


def test_short_unknown_function_code_is_answered_once_the_line_is_idle(port: RtuPort) -> None:
    # FC 0x11 (report server id) is 4 bytes: shorter than the 8 the parser waits for.
    reply, elapsed = port.transact(with_crc(bytes((3, 0x11))))
    assert reply == with_crc(bytes((3, 0x91, 1)))
    assert elapsed < 0.05
    assert port.read(3, 0x0100) == [3]  # and the parser is clean afterwards
