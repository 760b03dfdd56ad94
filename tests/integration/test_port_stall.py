"""A serial line whose output is stuck: the bus task waits for room on the event loop, never in a
spin, and an energising frame that was waiting for room when a stop came never leaves.

The port is a real pseudo-terminal whose other end nobody reads, its output buffer filled first:
the kernel takes no byte of the next frame, exactly as with a stalled USB adapter.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import pytest

from drivers.modbus.errors import PortUnavailable
from drivers.modbus.frames import write_request
from drivers.modbus.interlock import PermitRevoked
from drivers.modbus.master import BusMaster
from drivers.modbus.schedule import Priority
from tests.conftest import wait_for

TRAVEL = 3
ENERGISE = write_request(TRAVEL, 0x0001, [1, 40])  # M1_ENABLE = 1, M1_COMMAND_SPEED = 40


class StuckLine:
    """A pty: the master's end (`far`) is the line nobody reads; the bus master opens `path`."""

    def __init__(self) -> None:
        self.far, near = os.openpty()
        self.path = os.ttyname(near)
        self._filler = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
        os.close(near)
        os.set_blocking(self.far, False)

    def fill(self) -> int:
        """Write into the line until the kernel takes no more: its output buffer is full.

        The kernel moves what was written on to the far end's buffer in the background, which
        makes room again a moment after the first refusal; so the line counts as full only once
        three refusals 10 ms apart took nothing (otherwise the next frame sometimes fit)."""
        total, refused = 0, 0
        while refused < 3:
            try:
                total += os.write(self._filler, b"\x00" * 256)
                refused = 0
            except BlockingIOError:
                refused += 1
                time.sleep(0.01)
        return total

    def drain(self) -> bytes:
        """Read what reached the far end (which makes room again)."""
        out = b""
        while True:
            try:
                chunk = os.read(self.far, 65536)
            except (BlockingIOError, OSError):
                return out
            if not chunk:
                return out
            out += chunk

    def close(self) -> None:
        os.close(self._filler)
        os.close(self.far)


@pytest.fixture
async def stuck() -> AsyncIterator[tuple[StuckLine, BusMaster]]:
    line = StuckLine()
    master = BusMaster(line.path)
    master.configure_slave(TRAVEL, turnaround_s=0.03, service_period_s=0.0)
    await master.start()
    assert await wait_for(lambda: master.port_up, 5.0)
    yield line, master
    await master.close()
    line.close()


async def worst_lateness_while(task: asyncio.Task[object], limit_s: float) -> float:
    """Sleep in 5 ms steps until `task` ends; the worst lateness of a step says if the loop was blocked."""
    worst = 0.0
    until = time.monotonic() + limit_s
    while not task.done() and time.monotonic() < until:
        asked = time.monotonic()
        await asyncio.sleep(0.005)
        worst = max(worst, time.monotonic() - asked - 0.005)
    return worst


async def test_a_frame_waiting_for_room_when_a_stop_comes_never_leaves(stuck: tuple[StuckLine, BusMaster]) -> None:
    line, master = stuck
    assert line.fill() > 0
    permit = master.interlock.issue("test move")
    write = asyncio.create_task(master.execute(ENERGISE, Priority.COMMAND, retries=0, permit=permit))
    await asyncio.sleep(0.02)
    assert not write.done() and master.on_wire is not None, "the frame was not waiting for room"
    master.interlock.revoke_all()  # a stop: issued while the energising frame waits for the line
    line.drain()  # room again
    with pytest.raises(PermitRevoked):
        await asyncio.wait_for(write, 2.0)
    await asyncio.sleep(0.05)
    assert ENERGISE.encode() not in line.drain(), "the energising frame went out after the stop"
    assert not master.interlock.energised_since(0.0)


async def test_a_stuck_line_fails_the_frame_without_blocking_the_loop(stuck: tuple[StuckLine, BusMaster]) -> None:
    line, master = stuck
    line.fill()
    write = asyncio.create_task(master.execute(write_request(TRAVEL, 0x0001, [0, 0]), Priority.STOP, retries=0))
    worst = await worst_lateness_while(write, 2.0)
    with pytest.raises(PortUnavailable, match="output stalled"):
        await write
    # Before, the bus task spun in time.sleep for the whole 50 ms: the loop stood still with it.
    assert worst < 0.03, f"the event loop stood still for {worst * 1000:.1f} ms"
