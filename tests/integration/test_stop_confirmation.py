"""What confirms a stop, and what watches the driver afterwards, checked against the simulator.

- A frozen ACTUAL_SPEED register on a driver whose output stage no longer follows its registers
  must not confirm a stop: the motor current is the second signal.
- Outside motion, an output that reads back on (another master writing the driver) latches
  OUTPUTS_NOT_SAFE and is stopped; a carriage that keeps moving after a confirmed stop (every
  feedback register lying) latches UNCOMMANDED_MOTION.
- The interlock: an energising write whose permit a stop revoked never reaches the wire.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from agent.runtime import Runtime
from drivers.modbus.frames import write_request
from drivers.modbus.interlock import PermitRevoked
from drivers.modbus.schedule import Priority
from drivers.sim.client import SimProcess
from tests.conftest import wait_for

# Asserts the carriage's timing (poll ticks, link budgets, stop latency): `make test` runs it alone.
pytestmark = pytest.mark.realtime

TRAVEL = 3
M1_ENABLE, M1_COMMAND_SPEED, M1_ACTUAL_SPEED, M1_POSITION, CURRENT = 0x01, 0x02, 0x03, 0x0E, 0x25
M1_MAX_ACCELERATION = 0x0A


async def _moving(rt: Runtime, sim: SimProcess, key: str) -> None:
    assert rt.controller is not None
    sim.control.set(TRAVEL, M1_MAX_ACCELERATION, 100)  # up to speed in well under a second
    await rt.controller.submit_command(
        source="cli",
        idempotency_key=key,
        type="move",
        params={"direction": "forward", "speed_pct": 40, "duration_ms": 20000},
        user="t",
    )
    assert await wait_for(lambda: sim.control.registers(TRAVEL)[M1_ACTUAL_SPEED] >= 30, 5.0)


async def test_a_frozen_actual_speed_does_not_confirm_a_stop(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    assert rt.controller is not None
    await _moving(rt, sim, "frozen-1")
    sim.control.stuck_outputs(TRAVEL, True)  # the output stage no longer follows ENABLE
    sim.control.freeze(TRAVEL, M1_ACTUAL_SPEED, 0)  # and the speed feedback reads 0
    result = await rt.controller.estop(source="api", user="tester", reason="frozen feedback")
    assert not result.confirmed, "a stop was confirmed while the motor still ran"
    # Ground truth: the carriage is still moving, and the agent says so.
    before = sim.control.registers(TRAVEL)[M1_POSITION]
    await asyncio.sleep(0.3)
    assert sim.control.registers(TRAVEL)[M1_POSITION] != before
    assert await wait_for(lambda: rt.controller.supervisor.verdict.has("STOP_NOT_CONFIRMED"), 3.0)
    sim.control.faults_clear()
    assert await wait_for(
        lambda: rt.controller.stop_path.last is not None and rt.controller.stop_path.last.confirmed, 5.0
    )


async def test_outputs_switched_on_by_someone_else_are_stopped_and_latched(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    assert rt.controller is not None
    forced = time.monotonic()
    sim.control.set(TRAVEL, M1_COMMAND_SPEED, 30)
    sim.control.set(TRAVEL, M1_ENABLE, 1)  # a second master on the line, or a driver that rebooted on
    assert await wait_for(lambda: rt.controller.supervisor.verdict.has("OUTPUTS_NOT_SAFE"), 4.0)
    assert rt.controller.supervisor.verdict.level.label == "emergency_stop"
    # On the wire: the agent wrote the zeros after the forced values, and the driver is off.
    assert await wait_for(
        lambda: any(
            w["address"] == M1_ENABLE and not any(w["values"]) for w in sim.control.writes(TRAVEL, since=forced)
        ),
        1.0,
    ), "no stop frame reached the driver"
    assert await wait_for(lambda: sim.control.registers(TRAVEL)[M1_ENABLE] == 0, 1.0)
    assert await wait_for(lambda: rt.controller.sm.state.value == "FAULT", 2.0)
    # Latched until a technician resets; the reset then goes through (the cause is gone).
    assert rt.controller.supervisor.verdict.has("OUTPUTS_NOT_SAFE")
    result = await rt.controller.reset(user="tess")
    assert "OUTPUTS_NOT_SAFE" in result.cleared or "OUTPUTS_NOT_SAFE" not in result.remaining


async def test_motion_after_a_confirmed_stop_is_uncommanded_motion(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    assert rt.controller is not None
    await _moving(rt, sim, "drift-1")
    # Every feedback register lies: the stop is confirmed, but the carriage runs on.
    sim.control.stuck_outputs(TRAVEL, True)
    sim.control.freeze(TRAVEL, M1_ACTUAL_SPEED, 0)
    sim.control.freeze(TRAVEL, CURRENT, 0)
    result = await rt.controller.estop(source="api", user="tester", reason="lying driver")
    assert result.confirmed
    assert await wait_for(lambda: rt.controller.supervisor.verdict.has("UNCOMMANDED_MOTION"), 5.0), (
        rt.controller.supervisor.verdict.as_dict()
    )
    sim.control.faults_clear()


async def test_a_revoked_permit_never_reaches_the_wire(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    master = rt.master
    permit = master.interlock.issue("test")
    started = time.monotonic()
    # Occupy the bus with reads so the energising write has to queue, then stop before it goes out.
    reads = [asyncio.create_task(rt.controller.plant.read("travel", ["M1_POSITION_CURRENT"])) for _ in range(5)]
    write = asyncio.create_task(
        master.execute(write_request(TRAVEL, M1_ENABLE, [1]), Priority.TELEMETRY, permit=permit)
    )
    await asyncio.sleep(0)
    stop = rt.controller.stop_path.request("test stop")
    outcome = await stop
    assert outcome.confirmed
    try:
        await write
        raise AssertionError("the revoked write was sent")
    except PermitRevoked:
        pass
    await asyncio.gather(*reads)
    await asyncio.sleep(0.05)
    assert not [w for w in sim.control.writes(TRAVEL, since=started) if w["address"] == M1_ENABLE and any(w["values"])]
    assert sim.control.registers(TRAVEL)[M1_ENABLE] == 0
