"""Helpers for the simulator's integration tests (no tests here).

``RtuPort`` is a deliberately tiny pyserial Modbus master: it sends exactly the bytes it is told
and returns exactly what came back (bad CRC, wrong unit and all), which pymodbus hides. The
fixtures start a real simulator process on a real pty in the test's tmp dir.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import serial

from drivers.sim.client import SimProcess
from drivers.sim.crc import crc_ok, with_crc


class ModbusError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"exception {code:02X}")
        self.code = code


class NoReply(Exception):
    pass


def read_frame(unit: int, address: int, count: int, fc: int = 3) -> bytes:
    return with_crc(struct.pack(">BBHH", unit, fc, address, count))


def write_frame(unit: int, address: int, value: int) -> bytes:
    return with_crc(struct.pack(">BBHH", unit, 6, address, value))


def write_many_frame(unit: int, address: int, values: list[int]) -> bytes:
    n = len(values)
    return with_crc(struct.pack(f">BBHHB{n}H", unit, 16, address, n, 2 * n, *values))


class RtuPort:
    def __init__(self, path: str | Path, timeout: float = 0.5) -> None:
        self.ser = serial.Serial(str(path), 115200, timeout=timeout)
        self.timeout = timeout

    def close(self) -> None:
        self.ser.close()

    def receive(self, timeout: float | None = None) -> bytes | None:
        """One reply frame as received (CRC not checked), or None when nothing came."""
        self.ser.timeout = self.timeout if timeout is None else timeout
        head = self.ser.read(3)
        if len(head) < 3:
            return None
        fc = head[1]
        total = 5 if fc & 0x80 else (5 + head[2] if fc in (3, 4) else 8)
        return head + self.ser.read(total - 3)

    def transact(self, frame: bytes, timeout: float | None = None) -> tuple[bytes | None, float]:
        self.ser.reset_input_buffer()
        start = time.perf_counter()
        self.ser.write(frame)
        reply = self.receive(timeout)
        return reply, time.perf_counter() - start

    def _checked(self, frame: bytes) -> bytes:
        reply, _ = self.transact(frame)
        if reply is None:
            raise NoReply(frame.hex())
        assert crc_ok(reply), reply.hex()
        assert reply[0] == frame[0], f"reply from unit {reply[0]} to a request for {frame[0]}"
        if reply[1] & 0x80:
            raise ModbusError(reply[2])
        return reply

    def read(self, unit: int, address: int, count: int = 1, fc: int = 3) -> list[int]:
        reply = self._checked(read_frame(unit, address, count, fc))
        assert reply[2] == 2 * count
        return list(struct.unpack(f">{count}H", reply[3:-2]))

    def write(self, unit: int, address: int, value: int) -> None:
        frame = write_frame(unit, address, value)
        assert self._checked(frame) == frame  # FC 06 echoes the request

    def write_many(self, unit: int, address: int, values: list[int]) -> None:
        reply = self._checked(write_many_frame(unit, address, values))
        assert struct.unpack(">HH", reply[2:6]) == (address, len(values))


def wait_for(predicate: Callable[[], Any], timeout: float = 2.0, interval: float = 0.01) -> Any:
    """Poll until ``predicate()`` is truthy; returns its value or fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(interval)


@pytest.fixture
def make_sim(tmp_path: Path) -> Iterator[Callable[..., SimProcess]]:
    """Factory: ``make_sim(slaves=[...], wire_baud=..., ...)``; every simulator is stopped after."""
    started: list[SimProcess] = []

    def make(name: str = "bus", **kwargs: Any) -> SimProcess:
        kwargs.setdefault("seed", 7)
        proc = SimProcess(tmp_path / name, **kwargs).start()
        started.append(proc)
        return proc

    yield make
    for proc in started:
        assert proc.alive, f"simulator died during the test: {proc.log_tail()}"
        assert proc.stop() == 0, proc.log_tail()


@pytest.fixture
def sim(make_sim: Callable[..., SimProcess]) -> SimProcess:
    """The default carriage: 2 power, 3 travel, 4 dock, 5 safety."""
    return make_sim()


@pytest.fixture
def port(sim: SimProcess) -> Iterator[RtuPort]:
    p = RtuPort(sim.link)
    yield p
    p.close()
