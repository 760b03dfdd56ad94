"""Motion is bounded in time and must make progress; motion commands always have a deadline.

Against the simulator: a carriage that does not move while speed is commanded (the driver's
MAX_SPEED forced to 0) ends its command with TRAVEL_STALLED and a stop on the wire; a move that
progresses too slowly is ended at its time bound however often it refreshes; a move without
not_after gets the default deadline and expires while it waits in the queue.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest

from drivers.sim.client import SimProcess
from tests.conftest import wait_for

# Asserts the carriage's timing (poll ticks, link budgets, stop latency): `make test` runs it alone.
pytestmark = pytest.mark.realtime

TRAVEL = 3
M1_ENABLE, M1_MAX_SPEED = 0x01, 0x05


async def _finished(rt, command_id: str, timeout: float):  # type: ignore[no-untyped-def]
    record = None

    async def done() -> bool:
        nonlocal record
        record = await rt.controller.get_command(command_id)
        return record.terminal

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await done():
            return record
        await __import__("asyncio").sleep(0.05)
    raise AssertionError(f"command {command_id} still {record.state if record else '?'} after {timeout} s")


def _stop_written_since(sim: SimProcess, t: float) -> bool:
    return any(w["address"] == M1_ENABLE and not any(w["values"]) for w in sim.control.writes(TRAVEL, since=t))


async def test_a_stalled_carriage_is_stopped_with_travel_stalled(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    sim.control.set(TRAVEL, M1_MAX_SPEED, 0)  # jammed: speed is commanded, nothing moves
    started = time.monotonic()
    submitted = await rt.controller.submit_command(
        source="cli",
        idempotency_key="stall",
        type="move",
        params={"direction": "forward", "speed_pct": 40, "duration_ms": 20000},
        user="t",
    )
    record = await _finished(rt, submitted.record.id, 10.0)
    assert record.state == "failed" and record.error_code == "TRAVEL_STALLED", record
    assert time.monotonic() - started < 6.0, "the stall went unnoticed for most of the move"
    assert rt.controller.supervisor.verdict.has("TRAVEL_STALLED")
    assert _stop_written_since(sim, started)
    assert sim.control.registers(TRAVEL)[M1_ENABLE] == 0


MOTION_TIGHT = """
[motion]
bound_margin = 1.1
bound_allowance_ms = 0
"""


async def test_a_slow_move_ends_at_its_time_bound(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link, extra=MOTION_TIGHT)
    # 20 cm at 100 % is 0.4 s (0.8 s at the warning slow-down); capped at 10 % it takes 4 s, and
    # it progresses all the time (1 cm every 0.2 s), so only the time bound can end it.
    sim.control.set(TRAVEL, M1_MAX_SPEED, 10)
    started = time.monotonic()
    submitted = await rt.controller.submit_command(
        source="cli",
        idempotency_key="slow",
        type="move",
        params={"direction": "forward", "speed_pct": 100, "distance_cm": 20},
        user="t",
    )
    record = await _finished(rt, submitted.record.id, 10.0)
    assert record.state == "failed" and record.error_code == "MOTION_TIME_EXCEEDED", record
    assert record.result["time_bound_s"] < 1.5
    assert record.result["moved_cm"] < 20
    assert _stop_written_since(sim, started)


async def test_motion_commands_get_a_default_deadline_and_expire_in_the_queue(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link, extra="[motion]\ncommand_ttl_s = 1.0\nmax_command_ttl_s = 5.0\n")
    c = rt.controller
    before = dt.datetime.now(dt.UTC)
    first = await c.submit_command(
        source="cli",
        idempotency_key="long",
        type="move",
        params={"direction": "forward", "speed_pct": 20, "duration_ms": 2500},
        user="t",
    )
    second = await c.submit_command(
        source="cli",
        idempotency_key="queued",
        type="move",
        params={"direction": "reverse", "speed_pct": 20, "duration_ms": 500},
        user="t",
    )
    far = await c.submit_command(
        source="cli",
        idempotency_key="far",
        type="hoist",
        params={"position_cm": 0},
        user="t",
        not_after=before + dt.timedelta(hours=5),
    )
    assert second.record.not_after is not None
    deadline = dt.datetime.fromisoformat(second.record.not_after.replace("Z", "+00:00"))
    assert dt.timedelta(seconds=0.5) < deadline - before < dt.timedelta(seconds=2)
    capped = dt.datetime.fromisoformat(far.record.not_after.replace("Z", "+00:00"))
    assert capped - before < dt.timedelta(seconds=6), "a client's deadline was not capped"
    record = await _finished(rt, second.record.id, 10.0)
    assert record.state == "expired", record
    assert (await _finished(rt, first.record.id, 10.0)).state == "succeeded"
    assert await wait_for(lambda: c.sm.state.value == "IDLE", 5.0)
