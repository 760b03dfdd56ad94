"""Watchdogs: systemd notifications, the hardware watchdog protocol, and the dead-man heartbeat."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from drivers.sim.client import SimProcess
from drivers.watchdog import HardwareWatchdog
from tests.conftest import gateway_for, wait_for
from tests.integration.test_safety import M1_ACTUAL, M1_ENABLE, SAFETY, TRAVEL, outputs, start_moving

# Asserts the carriage's timing (poll ticks, link budgets, stop latency): `make test` runs it alone.
pytestmark = pytest.mark.realtime


class FakeSystemd:
    """Plays systemd's side of sd_notify as PID 1 does: a datagram socket read continuously by its
    own thread, each message recorded with the time it arrived. (A reader that only looks when
    the test asks would let the kernel's queue of 10 datagrams fill up between looks.)"""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read, name="fake-systemd", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closing.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def collect(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self.messages)

    def times(self, text: str) -> list[float]:
        return [t for t, m in self.collect() if text in m]

    def close(self) -> None:
        self._closing.set()
        self._reader.join(timeout=2.0)
        self.sock.close()


def notify_env(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 100 ms
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    notify_env(monkeypatch, tmp_path / "notify.sock")
    yield fake
    fake.close()


@pytest.fixture
def deaf_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A PID 1 too busy to read: the socket is bound and never read, so its queue fills and stays full."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    notify_env(monkeypatch, tmp_path / "notify.sock")
    yield sock
    sock.close()


async def frames_received(sim: SimProcess, address: int) -> int:
    stats = await asyncio.to_thread(sim.control.stats)
    return int(stats["slaves"][str(address)]["frames_received"])


@pytest.mark.timeout(30)  # before the fix the whole event loop froze in sendto, this test with it
async def test_a_notify_socket_that_is_never_read_does_not_stop_the_loop(
    sim: SimProcess, agent_factory, deaf_systemd
) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    assert await wait_for(lambda: rt.link is not None, 5.0)
    notifier = rt.controller.notifier
    assert await wait_for(lambda: notifier.dropped >= 5, 5.0), "the queue never filled: the test proves nothing"
    # The socket stays full from here on. For two seconds the loop must go on as usual.
    dropped_before = notifier.dropped
    polled_before = await frames_received(sim, SAFETY)
    worst_lateness = 0.0
    until = time.monotonic() + 2.0
    while time.monotonic() < until:
        asked = time.monotonic()
        await asyncio.sleep(0.02)
        worst_lateness = max(worst_lateness, time.monotonic() - asked - 0.02)
    assert worst_lateness < 0.4, f"the event loop stalled for {worst_lateness * 1000:.0f} ms"
    assert notifier.dropped - dropped_before >= 10, "the control loop stopped feeding (and so ticking)"
    assert await frames_received(sim, SAFETY) - polled_before >= 10, "the bus stopped polling the safety module"
    async with gateway_for(rt) as gw, httpx.AsyncClient(base_url=gw.api.url, timeout=5.0) as client:
        answer = await client.get("/healthz")
    assert answer.status_code == 200, answer.text
    assert not rt.controller.supervisor.verdict.has("LOOP_STALL")
    assert rt.controller.sm.state.value == "IDLE"


async def test_ready_is_sent_again_when_systemd_queue_was_full(sim: SimProcess, agent_factory, deaf_systemd) -> None:  # type: ignore[no-untyped-def]
    """READY=1 dropped because PID 1's queue was full is not lost: it is sent again once there is room."""
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    sent = 0
    while True:  # fill the queue before the agent starts: its first messages cannot get in
        try:
            filler.sendto(b"FILLER=1", deaf_systemd.getsockname())
            sent += 1
        except BlockingIOError:
            break
    filler.close()
    assert sent >= 5
    rt = await agent_factory(sim.link)
    notifier = rt.controller.notifier
    assert await wait_for(lambda: notifier.dropped >= 1 and rt.controller.safe_outputs_confirmed, 5.0)
    await asyncio.sleep(0.3)
    assert not rt.controller.ready_notified, "READY=1 counted as sent into a full queue"
    deaf_systemd.settimeout(0.05)
    received: list[str] = []
    until = time.monotonic() + 3.0
    while time.monotonic() < until and not any(m.startswith("READY=1") for m in received):
        try:
            received.append((await asyncio.to_thread(deaf_systemd.recv, 4096)).decode())
        except TimeoutError:
            continue
    assert any(m.startswith("READY=1") for m in received), received[-12:]
    assert rt.controller.ready_notified


async def test_ready_only_after_outputs_safe_and_pings_only_while_healthy(
    sim: SimProcess, agent_factory, systemd
) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    assert await wait_for(lambda: systemd.times("READY=1"), 1.0)
    ready = systemd.times("READY=1")
    assert len(ready) == 1
    first_stop = next(w for w in sim.control.writes(TRAVEL) if w["address"] == M1_ENABLE)
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


# ---------------------------------------------------------------- pings only while every task lives
async def supervised_agent(sim: SimProcess, agent_factory, tmp_path: Path):  # type: ignore[no-untyped-def]
    """An agent fed by the simulator with both watchdogs: the fake systemd and a file as /dev/watchdog."""
    device = tmp_path / "watchdog-device"
    device.write_bytes(b"")
    rt = await agent_factory(sim.link, extra=f'[watchdog]\ndevice = "{device}"\ntimeout_s = 5\n')
    assert await wait_for(lambda: rt.link is not None, 5.0)
    return rt, device


async def starved(systemd: FakeSystemd, device: Path, since: float) -> tuple[int, int]:
    """Pings and keepalive bytes that arrived over one second, starting 0.3 s after `since`
    (what was already on its way when the task died may still land in those 0.3 s)."""
    await asyncio.sleep(max(0.0, since + 0.3 - time.monotonic()))
    pings_at, bytes_at = len(systemd.times("WATCHDOG=1")), device.stat().st_size
    await asyncio.sleep(1.0)
    return len(systemd.times("WATCHDOG=1")) - pings_at, device.stat().st_size - bytes_at


async def fed(systemd: FakeSystemd, device: Path) -> tuple[int, int]:
    pings_at, bytes_at = len(systemd.times("WATCHDOG=1")), device.stat().st_size
    await asyncio.sleep(0.5)
    return len(systemd.times("WATCHDOG=1")) - pings_at, device.stat().st_size - bytes_at


def task_named(rt, name: str) -> asyncio.Task:  # type: ignore[no-untyped-def, type-arg]
    return next(t for t in asyncio.all_tasks() if t.get_name() == name)


async def test_a_dead_executor_starves_both_watchdogs_latches_task_died_and_stops(
    sim: SimProcess, agent_factory, systemd, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    rt, device = await supervised_agent(sim, agent_factory, tmp_path)
    pings, keepalives = await fed(systemd, device)
    assert pings >= 3 and keepalives >= 10, "not fed while healthy: the test would prove nothing"
    executor = task_named(rt, "executor")
    died_at = time.monotonic()
    executor.cancel()
    assert await wait_for(executor.done, 1.0)
    pings, keepalives = await starved(systemd, device, died_at)
    assert pings == 0, f"{pings} WATCHDOG=1 arrived after the executor died"
    assert keepalives == 0, f"/dev/watchdog got {keepalives} keepalive bytes after the executor died"
    verdict = rt.controller.supervisor.verdict
    assert verdict.has("TASK_DIED") and verdict.level.label == "emergency_stop"
    fault = next(f for f in verdict.faults if f.code == "TASK_DIED")
    assert fault.latched and "executor" in fault.detail
    assert "TASK_DIED" in rt.controller.supervisor.reset_blockers(), "a reset must not clear it: the task is still dead"
    # The trip went to the bus: the travel driver got a stop write after the death.
    stops = [w for w in sim.control.writes(TRAVEL, since=died_at) if w["address"] == M1_ENABLE and w["values"][0] == 0]
    assert stops, "no stop was written to the travel driver"
    async with gateway_for(rt) as gw, httpx.AsyncClient(base_url=gw.api.url, timeout=5.0) as client:
        answer = await client.get("/readyz")
    # /healthz is the gateway's own; the core's dead task shows in readiness, named with how it ended.
    assert answer.status_code == 503 and answer.json()["code"] == "NOT_READY", answer.text
    assert "task executor cancelled" in answer.json()["message"], answer.text
    # For good: the pings do not come back later (the task is still dead).
    await asyncio.sleep(0.3)
    pings, keepalives = await fed(systemd, device)
    assert pings == 0 and keepalives == 0


async def test_a_dead_runtime_task_starves_the_watchdogs(
    sim: SimProcess, agent_factory, systemd, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    rt, device = await supervised_agent(sim, agent_factory, tmp_path)
    assert (await fed(systemd, device))[0] >= 3
    discovery = task_named(rt, "discovery")
    died_at = time.monotonic()
    discovery.cancel()
    assert await wait_for(discovery.done, 1.0)
    assert await starved(systemd, device, died_at) == (0, 0)
    assert rt.controller.supervisor.verdict.has("TASK_DIED")
    assert not rt.controller.alive()


async def test_an_api_server_that_returns_on_its_own_is_the_gateways_death_not_the_cores(
    sim: SimProcess, agent_factory, systemd, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    rt, device = await supervised_agent(sim, agent_factory, tmp_path)
    async with gateway_for(rt) as gw:
        assert (await fed(systemd, device))[0] >= 3
        server = gw.api.task
        died_at = time.monotonic()
        gw.api._server.should_exit = True  # uvicorn leaves serve() as if it had decided to stop
        assert await wait_for(server.done, 10.0)
        # The supervisor hears of it in the task's done callback, one turn of the loop later.
        assert await wait_for(lambda: "api-server" in gw.tasks.deaths, 2.0)
        assert "returned" in gw.tasks.deaths["api-server"]  # the gateway's watchdog starves: systemd restarts it
        # The core goes on feeding both of its watchdogs: a dead API is not the robot's fault.
        await asyncio.sleep(0.3)
        pings, keepalives = await fed(systemd, device)
        assert pings >= 3 and keepalives >= 10, (pings, keepalives, died_at)
        assert not rt.controller.tasks.deaths
        assert not rt.controller.supervisor.verdict.has("TASK_DIED")


async def test_a_tick_that_raises_feeds_nothing(
    sim: SimProcess, agent_factory, systemd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    rt, device = await supervised_agent(sim, agent_factory, tmp_path)
    assert (await fed(systemd, device))[0] >= 3

    def broken(verdict: object) -> None:
        raise RuntimeError("a bug late in the tick")

    broke_at = time.monotonic()
    monkeypatch.setattr(rt.controller, "_maybe_notify_status", broken)  # the last step before the feed
    assert await starved(systemd, device, broke_at) == (0, 0)
    monkeypatch.undo()  # ticks complete again: feeding resumes (no task died)
    pings, keepalives = await fed(systemd, device)
    assert pings >= 3 and keepalives >= 10
    assert not rt.controller.tasks.deaths


async def test_a_clean_shutdown_is_not_a_death(sim: SimProcess, agent_factory, systemd) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    assert await wait_for(lambda: rt.link is not None, 5.0)
    supervised = rt.controller.tasks.names()
    assert {
        "control-loop",
        "transition-recorder",
        "executor",
        "bus-master",
        "store-writer",
        "discovery",
        "health-log",
    } <= set(supervised)
    await rt.shutdown()
    assert not rt.controller.tasks.deaths
    assert not rt.controller.supervisor.verdict.has("TASK_DIED")
