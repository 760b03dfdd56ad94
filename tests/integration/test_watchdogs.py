"""Watchdogs: systemd notifications, the hardware watchdog protocol, and the dead-man heartbeat."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import pytest

from drivers.sim.client import SimProcess
from drivers.watchdog import HardwareWatchdog

from tests.conftest import wait_for
from tests.integration.test_safety import M1_ACTUAL, M1_ENABLE, TRAVEL, outputs, start_moving


class FakeSystemd:
    """Plays systemd's side of sd_notify: a datagram socket that records every message with its time."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []

    def collect(self) -> list[tuple[float, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.append((time.monotonic(), data.decode()))

    def times(self, text: str) -> list[float]:
        return [t for t, m in self.collect() if text in m]


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSystemd:
    fake = FakeSystemd(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 100 ms
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    return fake


async def test_ready_only_after_outputs_safe_and_pings_only_while_healthy(sim: SimProcess, agent_factory, systemd) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    ready = systemd.times("READY=1")
    assert len(ready) == 1
    first_stop = [w for w in sim.control.writes(TRAVEL) if w["address"] == M1_ENABLE][0]
    assert first_stop["t"] < ready[0], "READY=1 was sent before the travel outputs were made safe"
    await asyncio.sleep(0.6)
    assert len(systemd.times("WATCHDOG=1")) >= 4
    # Block the event loop on purpose: no ping may be sent for the blocked time.
    before = len(systemd.times("WATCHDOG=1"))
    blocked_at = time.monotonic()
    time.sleep(0.8)
    unblocked = time.monotonic()
    await asyncio.sleep(0.05)
    pings = systemd.times("WATCHDOG=1")
    assert not [t for t in pings if blocked_at < t < unblocked]
    assert len(pings) <= before + 1
    # The stall itself is a latched protective stop.
    assert await wait_for(lambda: rt.controller.supervisor.verdict.has("LOOP_STALL"), 1.0)
    await rt.shutdown()
    assert systemd.times("STOPPING=1")


def test_hardware_watchdog_protocol(tmp_path: Path) -> None:
    """Keepalive bytes while fed; the magic 'V' only on a clean stop (else the board resets)."""
    device = tmp_path / "watchdog"
    device.write_bytes(b"")
    wd = HardwareWatchdog(str(device), 5)
    wd.open()  # a plain file refuses the timeout ioctl: logged, not fatal
    for _ in range(3):
        wd.keepalive()
    wd.close(disarm=True)
    assert device.read_bytes() == b"\0\0\0V"
    other = tmp_path / "watchdog-crash"
    other.write_bytes(b"")
    crashed = HardwareWatchdog(str(other), 5)
    crashed.open()
    crashed.keepalive()
    crashed.close(disarm=False)
    assert other.read_bytes() == b"\0"  # no magic close: the hardware will reset the board


async def test_deadman_firmware_turns_outputs_off_when_the_loop_blocks(sim_factory, agent_factory) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory("dm", slaves=["2:power-v2", "3:travel-drvfw-deadman", "4:dock-readonly", "5:safety-safefw"])
    rt = await agent_factory(sim.link)
    assert rt.pollers["travel"].binding.profile.deadman
    await start_moving(rt, sim, duration_ms=8000)
    await asyncio.sleep(0.5)  # heartbeats flow while moving: the firmware keeps the outputs on
    assert outputs(sim)["M1_ENABLE"] == 1
    heartbeats = [w for w in sim.control.writes(TRAVEL) if w["address"] == 0x00F0]
    assert len(heartbeats) >= 3
    blocked = time.monotonic()
    time.sleep(0.8)  # the agent is stuck: no heartbeat, no stop write
    regs = sim.control.registers(TRAVEL)
    assert regs[M1_ENABLE] == 0 and regs[M1_ACTUAL] == 0, "dead-man firmware kept driving"
    assert regs[0x0108] & 0x0100
    trip_writes = [w for w in sim.control.writes(TRAVEL, since=blocked)]
    assert not trip_writes  # the agent wrote nothing meanwhile: the firmware did it alone


async def test_no_heartbeat_while_motion_is_not_allowed(sim_factory, agent_factory) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory("dm2", slaves=["2:power-v2", "3:travel-drvfw-deadman", "4:dock-readonly", "5:safety-safefw"])
    await agent_factory(sim.link)
    await asyncio.sleep(0.5)
    assert not [w for w in sim.control.writes(TRAVEL) if w["address"] == 0x00F0]
