"""The command executor: one command at a time, by priority then arrival; results from read-back.

A command is refused with the reason when the state machine forbids it, expires instead of
running late, and ends with a result that says what the robot really did (register values read
back after the action, the stop confirmation for motion).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from agent.control.catalogue import OUT_OF_BAND, command_allowed, spec_for
from agent.control.handlers import TRACK_MAX_CM, TRACK_MIN_CM, Outcome
from agent.control.motion import ProgressWatch
from agent.control.results import STOP_NOT_CONFIRMED, TRAVEL_STALLED, ResultCode
from agent.control.state_machine import TransitionRefused
from agent.control.states import Event, State
from agent.logs import log_context
from agent.safety.faults import Level
from agent.store.commands import CommandExpired, CommandRecord
from agent.store.errors import StoreError
from drivers.modbus.interlock import PermitRevoked
from oht_errors import CodedError, ErrorKind

if TYPE_CHECKING:
    from agent.control.motion import MotionLimits
    from agent.control.plant import Hardware, Plant
    from agent.control.state_machine import StateMachine, Transition
    from agent.safety.policy import SafetyPolicy
    from agent.safety.supervisor import Supervisor
    from agent.store.commands import Commands

log = logging.getLogger("oht.executor")

__all__ = ["CommandFailed", "Executor", "ExecutorPort", "MotionSignals", "Outcome"]

LOOP_S = 0.02


class CommandFailed(CodedError):
    code = "COMMAND_FAILED"
    kind = ErrorKind.CONFLICT
    hint = "The command could not be carried out: the message says why; fetch the command for its result."


@dataclass
class MotionSignals:
    """How out-of-band commands (stop, pause, resume) reach the running motion command."""

    abort_reason: str | None = None
    abort_code: str | None = None
    paused: asyncio.Event = field(default_factory=asyncio.Event)
    resumed: asyncio.Event = field(default_factory=asyncio.Event)


class ExecutorPort(Protocol):
    """What the executor needs of the controller (and a test's fake provides): the parts it reads,
    and the few steps it asks for. It never sees the control loop, the watchdogs or the API."""

    commands: Commands
    sm: StateMachine
    plant: Plant
    hw: Hardware
    supervisor: Supervisor
    policy: SafetyPolicy
    motion: MotionLimits

    def motion_allowed(self) -> bool: ...

    async def transition(
        self, event: Event, *, target_valid: bool, reason: str, command_id: str | None = None
    ) -> Transition: ...

    async def settle_after_motion(self, command_id: str) -> None: ...

    async def stop_outputs(self, reason: str) -> dict[str, Any]: ...

    async def finish_command(self, record: CommandRecord, outcome: Outcome) -> None: ...


class Executor:
    def __init__(self, controller: ExecutorPort) -> None:
        self.c = controller
        self.current: CommandRecord | None = None
        self.signals = MotionSignals()
        self._wake = asyncio.Event()
        self.refreshed_at: float | None = None  # last time the running motion command refreshed its window
        self._oob_seen: dict[str, float] = {}
        # Out-of-band runs in flight. The loop keeps only a weak reference to a task, so one that
        # nothing else holds could be collected mid-flight (a stop that never finishes); each is
        # held here until it ends, and its done-callback logs what it raised.
        self._oob_tasks: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ loop
    async def run(self) -> None:
        commands = self.c.commands
        while True:
            if self.c.sm.state in (State.BOOT, State.INIT):
                # Starting up: queued commands wait (their not_after still bounds how long).
                await asyncio.sleep(0.05)
                try:
                    await commands.expire_due()
                except StoreError:
                    pass
                continue
            try:
                await commands.expire_due()
                record = await commands.next_runnable()
            except StoreError as exc:
                log.error("executor cannot read commands: %s", exc)
                await asyncio.sleep(0.5)
                continue
            if record is not None and record.type in OUT_OF_BAND:
                # stop/pause/resume are run by the controller the moment they are stored; only if
                # that did not happen within a second does the executor run one itself.
                # Only the one at the head of the queue is waited for: any other id seen before was run
                # by the controller meanwhile (or was pushed back and starts its second again), so the
                # map holds one entry instead of one per out-of-band command ever stored.
                first = self._oob_seen.get(record.id, time.monotonic())
                self._oob_seen = {record.id: first}
                if time.monotonic() - first < 1.0:
                    await asyncio.sleep(0.005)
                    continue
                self._oob_seen.pop(record.id, None)
                await self.run_out_of_band(record)
                continue
            if record is None:
                self._wake.clear()
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the wait's result
                # when a cancel arrives in the same turn as the wake, and the loop would run on.
                try:
                    async with asyncio.timeout(0.25):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            await self.execute(record)

    async def execute(self, record: CommandRecord) -> None:
        with log_context(command_id=record.id):
            await self._execute(record)

    async def _execute(self, record: CommandRecord) -> None:
        try:
            record = await self.c.commands.mark_running(record.id)
        except CommandExpired:
            return
        except StoreError as exc:
            log.error("cannot start command %s: %s", record.id, exc)
            await asyncio.sleep(0.2)
            return
        self.current = record
        self.signals = MotionSignals()
        started = time.monotonic()
        try:
            outcome = await self._dispatch(record)
        except TransitionRefused as exc:
            outcome = Outcome("failed", error_code=exc.code, error_message=exc.message)
        except CodedError as exc:
            outcome = Outcome("failed", error_code=exc.code, error_message=exc.message)
        except Exception as exc:  # never let one command take the executor down
            log.exception("command %s crashed", record.id)
            outcome = Outcome("failed", error_code="INTERNAL", error_message=type(exc).__name__)
        finally:
            self.current = None
            self.refreshed_at = None
        outcome.result.setdefault("elapsed_ms", round((time.monotonic() - started) * 1000, 1))
        await self.c.finish_command(record, outcome)

    async def _dispatch(self, record: CommandRecord) -> Outcome:
        refusal = command_allowed(self.c.sm.state, record.type)
        if refusal is not None:
            return Outcome("failed", error_code=refusal.code, error_message=refusal.message)
        spec = spec_for(record.type)
        assert spec is not None  # command_allowed refuses an unknown type
        return await spec.handler(self, spec.params.model_validate(record.params), record)

    # ------------------------------------------------------------------ out of band
    def start_out_of_band(self, record: CommandRecord) -> asyncio.Task[None]:
        """Run a stop, pause or resume now, beside whatever runs; the task is held until it ends."""
        task = asyncio.get_running_loop().create_task(self.run_out_of_band(record), name=f"{record.type}-{record.id}")
        self._oob_tasks.add(task)
        task.add_done_callback(self._out_of_band_ended)
        return task

    def _out_of_band_ended(self, task: asyncio.Task[None]) -> None:
        self._oob_tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("out-of-band command task %s raised", task.get_name(), exc_info=exc)

    @property
    def out_of_band_tasks(self) -> frozenset[asyncio.Task[None]]:
        """The out-of-band runs still in flight."""
        return frozenset(self._oob_tasks)

    async def cancel_out_of_band(self) -> None:
        """At shutdown: end the runs in flight (the shutdown's own final stop follows)."""
        tasks = list(self._oob_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run_out_of_band(self, record: CommandRecord) -> None:
        """stop / pause / resume act at once on whatever runs; the result is stored like any other."""
        with log_context(command_id=record.id):
            await self._run_out_of_band(record)

    async def _run_out_of_band(self, record: CommandRecord) -> None:
        try:
            record = await self.c.commands.mark_running(record.id)
        except CodedError:
            return
        started = time.monotonic()
        spec = spec_for(record.type)
        try:
            if spec is None:
                outcome = Outcome("failed", error_code="COMMAND_INVALID", error_message=f"unknown type {record.type}")
            else:
                outcome = await spec.handler(self, spec.params.model_validate(record.params), record)
        except CodedError as exc:
            outcome = Outcome("failed", error_code=exc.code, error_message=exc.message)
        outcome.result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
        await self.c.finish_command(record, outcome)

    # ------------------------------------------------------------------ motion, for the handlers
    async def position(self, name: str) -> int:
        """One travel-driver position register, read now (cm)."""
        values = await self.c.plant.read("travel", [name])
        return int(values[name])

    async def drive(
        self,
        channel: str,
        direction: str,
        speed_pct: int,
        record: CommandRecord,
        *,
        start: int,
        distance: int | None,
        duration_ms: int | None,
        until_docked: bool = False,
    ) -> Outcome:
        """Run one channel until its bound, then stop and confirm. Outputs are zeroed on every exit.

        Before every output write the abort signal, the state and the motion guard are checked
        again, and the write's output permit is taken in that same step: a stop requested after
        the check revokes it, and the bus drops the write at the wire. Besides its own bound
        (distance, duration, docked) the motion ends at its time bound, when the position stops
        changing while speed is commanded (TRAVEL_STALLED), or when the live position leaves the
        track. The state's timeout is refreshed only while progress is seen, never past the bound.
        """
        c, plant, sig = self.c, self.c.plant, self.signals
        limits = c.motion
        c.hw.set_moving(True)
        began = time.monotonic()
        bound_s = limits.time_bound_s(
            distance_cm=distance,
            duration_ms=duration_ms,
            speed_pct=speed_pct,
            slowest_factor=c.policy.warning_speed_factor,
        )
        hard_deadline = began + bound_s
        progress = ProgressWatch(limits)
        moved = 0
        applied_factor = -1.0
        reason, code, state = "bound reached", None, "succeeded"
        try:
            while True:
                now = time.monotonic()
                self.refreshed_at = now
                if sig.abort_reason is not None:
                    reason, code, state = sig.abort_reason, sig.abort_code, "cancelled"
                    break
                if c.supervisor.verdict.level >= Level.PROTECTIVE_STOP or c.sm.state not in (
                    State.MOVE,
                    State.DOCK,
                    State.PAUSED,
                ):
                    reason, code, state = (
                        f"motion withdrawn ({c.sm.state.value}, {c.supervisor.verdict.level.label})",
                        ResultCode.MOTION_WITHDRAWN,
                        "failed",
                    )
                    break
                if now >= hard_deadline:
                    reason, code, state = (
                        f"time bound of {bound_s:.1f} s exceeded",
                        ResultCode.MOTION_TIME_EXCEEDED,
                        "failed",
                    )
                    break
                if c.sm.state is State.PAUSED:
                    if applied_factor != 0.0:
                        await c.stop_outputs("pause")
                        applied_factor = 0.0
                        progress.commanded(time.monotonic(), 0)
                    await asyncio.sleep(LOOP_S)
                    continue
                # Every pass, not only when the speed changes: stale sensors or a lost link withdraw motion.
                if not c.motion_allowed():
                    reason, code, state = "motion not allowed", ResultCode.MOTION_WITHDRAWN, "failed"
                    break
                factor = c.supervisor.verdict.speed_factor
                if factor != applied_factor:
                    speed = max(1, round(speed_pct * factor))
                    try:
                        await self._energise(channel, direction, speed)
                    except PermitRevoked:
                        await asyncio.sleep(LOOP_S)  # a stop came: the checks above say why on the next pass
                        continue
                    applied_factor = factor
                    progress.commanded(time.monotonic(), speed)
                position = plant.value("travel", f"{channel}_POSITION_CURRENT")
                if position is not None:
                    moved = abs(int(position) - start)
                    if channel == "M1" and not TRACK_MIN_CM <= position <= TRACK_MAX_CM:
                        reason, code, state = (
                            f"position {position} cm is outside the track",
                            ResultCode.TRACK_LIMIT,
                            "failed",
                        )
                        break
                if progress.observe(now, position):
                    c.sm.refresh(limit=hard_deadline)
                if progress.stalled(now):
                    reason, code, state = (
                        (
                            f"no progress for {limits.stall_window_s(speed_pct * applied_factor):.1f} s "
                            f"with speed commanded"
                        ),
                        TRAVEL_STALLED,
                        "failed",
                    )
                    c.supervisor.record_event("TRAVEL_STALLED", f"{record.type} {record.id}: {reason}")
                    break
                if distance is not None and moved >= distance:
                    break
                if until_docked and plant.value("dock", "DOCK_STATUS") == 3:
                    break
                if duration_ms is not None and (now - began) * 1000 >= duration_ms:
                    if until_docked:
                        reason, code, state = "dock not reached in time", ResultCode.DOCK_TIMEOUT, "failed"
                    break
                await asyncio.sleep(LOOP_S)
        finally:
            outcome = await c.stop_outputs(f"{record.type} {record.id}: {reason}")
            c.hw.set_moving(False)
            await c.settle_after_motion(record.id)
        readback = outcome.get("readback", {})
        result = {
            "moved_cm": moved,
            "end": reason,
            "stop_confirmed": outcome["confirmed"],
            "stop_confirm_ms": outcome["confirm_ms"],
            "readback": readback,
            "time_bound_s": round(bound_s, 1),
        }
        if not outcome["confirmed"] and state == "succeeded":
            state, code = "failed", STOP_NOT_CONFIRMED
        return Outcome(state, result, code, None if state == "succeeded" else reason)

    async def _energise(self, channel: str, direction: str, speed: int) -> None:
        """Direction, then enable and speed, under one permit taken now (after the caller's checks)."""
        plant = self.c.plant
        permit = plant.permit(f"{channel} {direction} {speed} %")
        await plant.write("travel", f"{channel}_DIRECTION", 1 if direction == "forward" else 2, permit=permit)
        await plant.write_many("travel", {f"{channel}_ENABLE": 1, f"{channel}_COMMAND_SPEED": speed}, permit=permit)
