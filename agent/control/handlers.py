"""What each command type does, one coroutine per type, named in the command catalogue.

Every handler takes the executor, its parsed parameters and the stored record, and returns the
`Outcome` that is stored as the command's result: values read back after the action, never the
values merely written. The catalogue (`agent.control.catalogue`) holds a reference to each, so a
type without a handler fails the catalogue's check at import instead of at run time.

The motion loop itself (`Executor.drive`) stays in the executor; the handlers only decide where
to go. This module imports the executor for type checking only: the catalogue, and so the
gateway through the permission matrix, can load it without the core's bus code.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.control import params as P
from agent.control.results import STOP_NOT_CONFIRMED, ResultCode
from agent.control.states import Event

if TYPE_CHECKING:
    from agent.control.executor import Executor
    from agent.store.commands import CommandRecord

TRACK_MIN_CM, TRACK_MAX_CM = 0, 300


@dataclass
class Outcome:
    state: str  # succeeded | failed | cancelled
    result: dict[str, Any] = field(default_factory=dict)
    error_code: str | None = None
    error_message: str | None = None


# ---------------------------------------------------------------------- queued: motion
async def move(ex: Executor, p: P.MoveParams, record: CommandRecord) -> Outcome:
    position = await ex.position("M1_POSITION_CURRENT")
    sign = 1 if p.direction == "forward" else -1
    bound_ok = p.distance_cm is None or TRACK_MIN_CM <= position + sign * p.distance_cm <= TRACK_MAX_CM
    await ex.c.transition(Event.MOVE_COMMAND, target_valid=bound_ok, reason=f"move {record.id}", command_id=record.id)
    return await ex.drive(
        "M1", p.direction, p.speed_pct, record, start=position, distance=p.distance_cm, duration_ms=p.duration_ms
    )


async def hoist(ex: Executor, p: P.HoistParams, record: CommandRecord) -> Outcome:
    position = await ex.position("M2_POSITION_CURRENT")
    if position == p.position_cm:
        return Outcome("succeeded", {"position_cm": position, "moved_cm": 0})
    direction = "forward" if p.position_cm > position else "reverse"
    await ex.c.transition(Event.MOVE_COMMAND, target_valid=True, reason=f"hoist {record.id}", command_id=record.id)
    return await ex.drive(
        "M2", direction, p.speed_pct, record, start=position, distance=abs(p.position_cm - position), duration_ms=None
    )


async def dock(ex: Executor, p: P.DockParams, record: CommandRecord) -> Outcome:
    await ex.c.transition(Event.DOCK_COMMAND, target_valid=True, reason=f"dock {record.id}", command_id=record.id)
    return await ex.drive(
        "M1",
        "forward",
        p.speed_pct,
        record,
        start=await ex.position("M1_POSITION_CURRENT"),
        distance=None,
        duration_ms=p.timeout_ms,
        until_docked=True,
    )


async def undock(ex: Executor, p: P.UndockParams, record: CommandRecord) -> Outcome:
    position = await ex.position("M1_POSITION_CURRENT")
    await ex.c.transition(
        Event.MOVE_COMMAND,
        target_valid=position - p.distance_cm >= TRACK_MIN_CM,
        reason=f"undock {record.id}",
        command_id=record.id,
    )
    return await ex.drive(
        "M1", "reverse", p.speed_pct, record, start=position, distance=p.distance_cm, duration_ms=None
    )


# ---------------------------------------------------------------------- queued: the rest
async def charge_start(ex: Executor, p: P.ChargeStartParams, record: CommandRecord) -> Outcome:
    plant = ex.c.plant
    await plant.write("power", "I_SET", p.current_a)
    await plant.write("power", "V_SET", p.voltage_v)
    await plant.write("power", "CHARGE_REQUEST", 1)
    readback = await plant.read("power", ["I_SET", "V_SET", "CHARGE_REQUEST", "CHARGE_STATE"])
    ok = readback["CHARGE_REQUEST"] == 1
    return Outcome(
        "succeeded" if ok else "failed", {"readback": readback}, None if ok else ResultCode.READBACK_MISMATCH
    )


async def charge_stop(ex: Executor, p: P.NoParams, record: CommandRecord) -> Outcome:
    await ex.c.plant.write("power", "CHARGE_REQUEST", 0)
    readback = await ex.c.plant.read("power", ["CHARGE_REQUEST", "CHARGE_STATE"])
    ok = readback["CHARGE_REQUEST"] == 0
    return Outcome(
        "succeeded" if ok else "failed", {"readback": readback}, None if ok else ResultCode.READBACK_MISMATCH
    )


async def module_reset(ex: Executor, p: P.ModuleResetParams, record: CommandRecord) -> Outcome:
    plant = ex.c.plant
    await plant.write(p.role, "RESET_ERROR_CMD", 1)
    await asyncio.sleep(0.05)
    readback = await plant.read(
        p.role, ["DEVICE_ID", "MODULE_TYPE", "FIRMWARE_VERSION", "SYSTEM_STATUS", "SYSTEM_ERROR"]
    )
    if p.role == "travel":
        await ex.c.stop_outputs("after module reset")  # the driver re-initialises: confirm it is still off
    return Outcome("succeeded", {"role": p.role, "readback": readback})


async def register_write(ex: Executor, p: P.RegisterWriteParams, record: CommandRecord) -> Outcome:
    plant = ex.c.plant
    reg = plant.poller(p.role).binding.profile.register(p.register_name)
    if reg.safety:
        return Outcome(
            "failed",
            error_code=ResultCode.REGISTER_SAFETY_CRITICAL,
            error_message=f"{reg.name} is safety-critical: use the dedicated command (move, stop, reset)",
        )
    await plant.write(p.role, reg.name, p.value)
    readback = await plant.read(p.role, [reg.name]) if reg.readable else {}
    ok = not reg.readable or abs(float(readback[reg.name]) - float(p.value)) <= abs(reg.scale) / 2
    return Outcome(
        "succeeded" if ok else "failed",
        {"register": reg.name, "written": p.value, "readback": readback},
        None if ok else ResultCode.READBACK_MISMATCH,
    )


# ---------------------------------------------------------------------- out of band
async def stop(ex: Executor, p: P.NoParams, record: CommandRecord) -> Outcome:
    """Abort the running motion (it stops and confirms on its way out) and stop the outputs now."""
    sig = ex.signals
    if ex.current is not None and sig.abort_reason is None:
        sig.abort_reason, sig.abort_code = f"stop command {record.id}", ResultCode.STOPPED
    stopped = await ex.c.stop_outputs(f"stop command {record.id}")
    confirmed = bool(stopped["confirmed"])
    return Outcome("succeeded" if confirmed else "failed", stopped, None if confirmed else STOP_NOT_CONFIRMED)


async def pause(ex: Executor, p: P.NoParams, record: CommandRecord) -> Outcome:
    """MOVE -> PAUSED, then stop the outputs; the running motion holds still until resumed."""
    await ex.c.transition(Event.PAUSE_COMMAND, target_valid=True, reason=f"pause {record.id}", command_id=record.id)
    return Outcome("succeeded", await ex.c.stop_outputs(f"pause {record.id}"))


async def resume(ex: Executor, p: P.NoParams, record: CommandRecord) -> Outcome:
    """PAUSED -> MOVE under the motion guard; the running motion energises the outputs again."""
    await ex.c.transition(Event.RESUME_COMMAND, target_valid=True, reason=f"resume {record.id}", command_id=record.id)
    return Outcome("succeeded", {"state": ex.c.sm.state.value})
