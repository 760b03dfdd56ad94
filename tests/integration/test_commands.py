"""Commands end to end against the simulator: each type reaches the bus through its profile, once,
in order, never late, with a result that says what the robot did (read back)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from agent.store.errors import CommandInvalid, CommandKeyConflict
from drivers.sim.client import SimProcess
from tests.conftest import wait_for
from tests.integration.test_safety import M1_ACCEL, TRAVEL, outputs, start_moving, terminal

# Asserts the carriage's timing (poll ticks, link budgets, stop latency): `make test` runs it alone.
pytestmark = pytest.mark.realtime

POWER, SAFETY, DOCK = 2, 5, 4


async def submit(rt, key: str, type_: str, params: dict, **kw):  # type: ignore[no-untyped-def]
    return await rt.controller.submit_command(
        source="api", idempotency_key=key, type=type_, params=params, user="tester", **kw
    )


async def test_move_by_distance_reaches_its_bound_and_stops_confirmed(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    sim.control.set(TRAVEL, M1_ACCEL, 100)
    start = sim.control.registers(TRAVEL)[0x000E]
    res = await submit(rt, "m1", "move", {"direction": "forward", "speed_pct": 50, "distance_cm": 10})
    assert res.created and res.record.state == "queued"
    record = await terminal(rt, res.record.id, 10.0)
    assert record.state == "succeeded", record
    assert record.result["moved_cm"] >= 10 and record.result["stop_confirmed"] is True
    assert record.result["readback"]["M1_ENABLE"] == 0
    assert sim.control.registers(TRAVEL)[0x000E] - start >= 10
    assert outputs(sim) == dict.fromkeys(outputs(sim), 0)
    assert rt.controller.sm.state.value == "IDLE"
    enables = [w for w in sim.control.writes(TRAVEL) if w["address"] == 0x0001 and w["values"][0] == 1]
    assert len(enables) == 1  # executed exactly once


async def test_repeated_key_returns_the_first_record_and_runs_once(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    first = await submit(rt, "same", "register_write", {"role": "power", "register": "USE_V_THS", "value": 1.23})
    again = await submit(rt, "same", "register_write", {"role": "power", "register": "USE_V_THS", "value": 1.23})
    assert first.created and not again.created and again.record.id == first.record.id
    with pytest.raises(CommandKeyConflict):
        await submit(rt, "same", "register_write", {"role": "power", "register": "USE_V_THS", "value": 2.0})
    record = await terminal(rt, first.record.id)
    assert record.state == "succeeded" and record.result["readback"] == {"USE_V_THS": 1.23}
    writes = [w for w in sim.control.writes(POWER) if w["address"] == 0x004D]
    assert [w["values"] for w in writes] == [[123]]


async def test_invalid_parameters_are_refused_before_storing(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    for type_, params in (
        ("move", {"direction": "up", "speed_pct": 10, "duration_ms": 500}),
        ("move", {"direction": "forward", "speed_pct": 10}),
        ("teleport", {}),
        ("hoist", {"position_cm": 999}),
    ):
        with pytest.raises(CommandInvalid):
            await submit(rt, f"bad-{type_}", type_, params)
    assert await rt.controller.list_commands() == []


async def test_expired_command_never_runs(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    res = await submit(
        rt, "late", "register_write", {"role": "power", "register": "USE_V_THS", "value": 3.0}, not_after=past
    )
    record = await terminal(rt, res.record.id)
    assert record.state == "expired"
    assert not [w for w in sim.control.writes(POWER) if w["address"] == 0x004D]


async def test_priority_then_arrival_order(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    # Keep the executor busy with a move so the others queue up behind it.
    await start_moving(rt, sim, duration_ms=800)
    ids = []
    for i, prio in enumerate((3, 9, 3, 9)):
        ids.append(
            (
                await submit(
                    rt,
                    f"o{i}",
                    "register_write",
                    {"role": "power", "register": "USE_V_THS", "value": 4 + i},
                    priority=prio,
                )
            ).record.id
        )
    for cid in ids:
        await terminal(rt, cid, 10.0)
    written = [w["values"][0] for w in sim.control.writes(POWER) if w["address"] == 0x004D]
    assert written == [500, 700, 400, 600]  # priority 9 first (in arrival order), then priority 3


async def test_stop_command_interrupts_a_running_move(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    move_id = await start_moving(rt, sim)
    stop = await submit(rt, "stop1", "stop", {})
    assert (await terminal(rt, stop.record.id)).state == "succeeded"
    move = await terminal(rt, move_id)
    assert move.state == "cancelled" and move.result["stop_confirmed"] is True
    assert outputs(sim) == dict.fromkeys(outputs(sim), 0)
    assert await wait_for(lambda: rt.controller.sm.state.value == "IDLE", 2.0)


async def test_pause_and_resume(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    move_id = await start_moving(rt, sim, duration_ms=3000)
    pause = await submit(rt, "p", "pause", {})
    assert (await terminal(rt, pause.record.id)).state == "succeeded"
    assert rt.controller.sm.state.value == "PAUSED"
    assert await wait_for(lambda: outputs(sim)["M1_ACTUAL"] == 0, 1.0)
    resume = await submit(rt, "r", "resume", {})
    assert (await terminal(rt, resume.record.id)).state == "succeeded"
    assert await wait_for(lambda: outputs(sim)["M1_ACTUAL"] > 0, 2.0)
    move = await terminal(rt, move_id, 10.0)
    assert move.state == "succeeded"


async def test_register_write_is_checked_against_the_profile(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    cases = [
        ({"role": "travel", "register": "M1_ENABLE", "value": 1}, "REGISTER_SAFETY_CRITICAL"),
        ({"role": "dock", "register": "DOCK_MODE", "value": 1}, "REGISTER_WRITE_REFUSED"),
        ({"role": "travel", "register": "M1_MAX_ACCELERATION", "value": 100000}, "REGISTER_WRITE_REFUSED"),
        ({"role": "travel", "register": "NO_SUCH", "value": 1}, "REGISTER_UNKNOWN"),
    ]
    before = len(sim.control.writes(None))
    for i, (params, code) in enumerate(cases):
        record = await terminal(rt, (await submit(rt, f"rw{i}", "register_write", params)).record.id)
        assert record.state == "failed" and record.error_code == code, record
    assert len(sim.control.writes(None)) == before  # nothing refused reached the bus
    ok = await terminal(
        rt,
        (
            await submit(
                rt, "rw-ok", "register_write", {"role": "travel", "register": "M1_MAX_ACCELERATION", "value": 20}
            )
        ).record.id,
    )
    assert ok.state == "succeeded" and ok.result["readback"] == {"M1_MAX_ACCELERATION": 20}
    assert sim.control.registers(TRAVEL)[M1_ACCEL] == 20


async def test_module_reset_and_charge_commands(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    sim.control.set(TRAVEL, M1_ACCEL, 77)
    reset = await terminal(rt, (await submit(rt, "mr", "module_reset", {"role": "travel"})).record.id)
    assert reset.state == "succeeded" and reset.result["readback"]["DEVICE_ID"] == TRAVEL
    assert sim.control.registers(TRAVEL)[M1_ACCEL] == 5  # the driver re-initialised to its defaults
    start = await terminal(
        rt, (await submit(rt, "cs", "charge_start", {"voltage_v": 25.2, "current_a": 4.0})).record.id
    )
    assert start.state == "succeeded" and start.result["readback"]["CHARGE_REQUEST"] == 1
    assert start.result["readback"]["I_SET"] == 4.0
    stop = await terminal(rt, (await submit(rt, "ce", "charge_stop", {})).record.id)
    assert stop.state == "succeeded" and stop.result["readback"]["CHARGE_REQUEST"] == 0


async def test_commands_refused_in_estop_with_the_reason(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    await rt.controller.estop(source="api", user="op")
    for i, (type_, params) in enumerate(
        (
            ("move", {"direction": "forward", "speed_pct": 10, "duration_ms": 500}),
            ("hoist", {"position_cm": 50}),
            ("charge_start", {}),
        )
    ):
        record = await terminal(rt, (await submit(rt, f"e{i}", type_, params)).record.id)
        assert record.state == "failed" and record.error_code == "STATE_COMMAND_NOT_ALLOWED", record
    assert outputs(sim)["M1_ENABLE"] == 0


async def test_motion_window_stops_a_stalled_executor(sim: SimProcess, agent_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from agent.control import executor as executor_module

    rt = await agent_factory(sim.link)
    await start_moving(rt, sim, duration_ms=5000)
    # The executor stalls (its loop now sleeps 3 s between refreshes): the control loop must notice
    # that the motion command's window passed unrefreshed and stop the carriage by itself.
    monkeypatch.setattr(executor_module, "LOOP_S", 3.0)
    assert await wait_for(lambda: outputs(sim)["M1_ENABLE"] == 0 and outputs(sim)["M1_ACTUAL"] == 0, 1.5)
    assert await wait_for(
        lambda: (
            "motion window expired" in rt.controller.stop_path.last.reason and rt.controller.stop_path.last.confirmed
        ),
        1.0,
    )


async def test_a_flood_of_stop_commands_does_not_starve_the_safety_polls(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    sim.control.clear_writes()
    results = await asyncio.gather(*(submit(rt, f"flood-{i}", "stop", {}) for i in range(200)))
    records = [await terminal(rt, r.record.id) for r in results]
    assert all(r.state == "succeeded" and r.result["confirmed"] for r in records)
    await asyncio.sleep(0.5)
    verdict = rt.controller.supervisor.verdict
    assert not verdict.has("SAFETY_LINK_LOST") and rt.controller.sm.state.value == "IDLE", verdict.as_dict()
    stop_frames = [w for w in sim.control.writes(TRAVEL) if w["address"] == 0x0001]
    assert len(stop_frames) < 50  # confirmed stops are shared, not repeated 200 times
    # A move re-enables the outputs: the next stop must reach the bus again.
    await start_moving(rt, sim, key="after-flood", duration_ms=3000)
    before = len([w for w in sim.control.writes(TRAVEL) if w["address"] == 0x0001 and w["values"] == [0, 0]])
    stop = await terminal(rt, (await submit(rt, "final-stop", "stop", {})).record.id)
    after = len([w for w in sim.control.writes(TRAVEL) if w["address"] == 0x0001 and w["values"] == [0, 0]])
    assert stop.state == "succeeded" and after > before and outputs(sim)["M1_ENABLE"] == 0


async def test_moving_after_a_long_idle_is_not_a_link_loss(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    """Idle, the driver is polled every second; the faster moving rate must not count the idle gap as silence."""
    rt = await agent_factory(sim.link)
    await asyncio.sleep(2.2)
    move_id = await start_moving(rt, sim, key="after-idle", duration_ms=1500)
    record = await terminal(rt, move_id, 10.0)
    assert record.state == "succeeded", record
    assert not rt.controller.supervisor.verdict.faults, rt.controller.supervisor.verdict.as_dict()
