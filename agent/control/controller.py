"""The controller: the one place that decides what the robot may do next.

It owns the state machine, runs the control loop (supervisor verdict -> conditions -> state
machine, watchdog feeding, motion window), executes commands through the executor, and
implements `AgentCore` for the API and sync. Transitions are committed together with their cause.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from agent.control.catalogue import MOTION_TYPES, OUT_OF_BAND, admitted_when_full, validate_params
from agent.control.conditions import build_conditions
from agent.control.errors import ModuleNotFound
from agent.control.executor import Executor, Outcome
from agent.control.facade import EstopResult, ResetResult, StatusListener, SubmitResult
from agent.control.motion import MotionLimits
from agent.control.output_monitor import OutputMonitor
from agent.control.plant import Hardware, ModuleNotBound, Plant
from agent.control.results import ResultCode, left_state
from agent.control.state_machine import Conditions, StateMachine, Transition, TransitionRefused
from agent.control.states import Event, State
from agent.control.status_view import (
    EstopTally,
    LagWindow,
    ModuleView,
    StatusDocument,
    module_view,
    status_document,
)
from agent.safety.estop_input import EstopInputState
from agent.safety.policy import SafetyPolicy
from agent.safety.stop import StopOutcome, StopPath
from agent.safety.supervisor import RoleLiveness, Supervisor, Verdict
from agent.store import outbox
from agent.store.audit import AuditEntry, append_in
from agent.store.clock import format_wall, now_ts
from agent.store.commands import CommandRecord, Commands
from agent.store.database import Database
from agent.store.errors import CommandNotCancellable, CommandNotFound, OutboxFull, StoreUnavailable
from agent.store.outbox import Outbox
from agent.store.streams import DEFAULT_LIMITS, Limits
from agent.store.transitions import record_transition
from agent.supervision import TaskSupervisor
from drivers.modbus.errors import BusError
from drivers.modbus.interlock import Permit
from drivers.modbus.schedule import Priority
from drivers.snapshots import Quality
from drivers.watchdog import HardwareWatchdog, SdNotifier
from oht_errors import CodedError

log = logging.getLogger("oht.control")

LOOP_PERIOD_S = 0.02
MOTION_WINDOW_S = 0.5  # a running motion command that does not refresh within this is stopped


NotFound = ModuleNotFound  # the name the API's tests and routes know


# Which events are alarms: a fault raised or cleared goes to the critical `alarms` stream, any
# other event to `events`. Decided here, by the event's own name, for every record written.
ALARM_EVENTS = frozenset({"fault_raised", "fault_cleared"})


def outbox_kind(event: dict[str, Any]) -> str:
    """The outbox kind of an event record the controller writes (see ALARM_EVENTS)."""
    return outbox.KIND_ALARM if event.get("event") in ALARM_EVENTS else outbox.KIND_EVENT


class Controller:
    def __init__(
        self,
        *,
        agent_id: str,
        hw: Hardware,
        db: Database,
        policy: SafetyPolicy,
        stop_path: StopPath,
        mandatory: list[str],
        ready_check: Callable[[], tuple[bool, list[str]]],
        notifier: SdNotifier | None = None,
        hw_watchdog: HardwareWatchdog | None = None,
        estop_input: Callable[[float], EstopInputState | None] | None = None,
        motion: MotionLimits | None = None,
        outbox_limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.agent_id = agent_id
        self.hw = hw
        self.plant = Plant(hw)
        self.db = db
        self.commands = Commands(db)
        # Asked at every new command whether results can still be kept ([upstream] quotas).
        self.outbox = Outbox(db, outbox_limits)
        self._outbox_full = False  # for logging the refusal once per episode
        self.policy = policy
        self.motion = motion if motion is not None else MotionLimits()
        self.mandatory = mandatory
        self._ready_check = ready_check
        self.sm = StateMachine()
        # Made (and bound, and started) by the runtime before the controller existed: the start-up
        # stop of the travel driver comes first of all.
        self.stop_path = stop_path
        self.output_monitor = OutputMonitor(policy.stop_current_max_a, policy.uncommanded_motion_cm)
        self._port_seen_up = False
        self._config_seen: tuple[float, float | None] = (-1.0, None)  # (bound_at, first verified at)
        self.supervisor = Supervisor(
            policy, self._liveness, port_up=self._port_ok, on_trip=self._on_trip, estop_input=estop_input
        )
        self.executor = Executor(self)
        self.notifier = notifier or SdNotifier()
        self.hw_watchdog = hw_watchdog
        self.started_at = time.monotonic()
        self._state_since_wall = time.time()
        self._listeners: list[StatusListener] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self.tasks = TaskSupervisor(on_death=self._on_task_died)  # every long-lived task, the runtime's too
        self._records: asyncio.Queue[tuple[list[Transition], list[dict[str, Any]]]] = asyncio.Queue(maxsize=1024)
        self.safe_outputs_confirmed = False
        self._initial_stop: asyncio.Task[StopOutcome] | None = None
        self._deadman_counter = 0
        self._deadman_last = 0.0
        self._deadman_task: asyncio.Task[Any] | None = None
        self._last_tick = time.monotonic()
        self.loop_lag = LagWindow(LOOP_PERIOD_S)
        self.estops = EstopTally()
        self.watchdog_pings = 0
        self._last_ping = 0.0
        self.ready_notified = False  # READY=1 delivered to systemd (or no systemd to tell)
        self._ready_logged = False
        self.loop_healthy = True
        self._last_status_key: tuple[Any, ...] = ()
        self.supervisor.listeners.append(self._on_verdict_change)
        self._link_timer: asyncio.TimerHandle | None = None
        hw.board.add_listener(lambda snap: self._evaluate())

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._control_loop(), name="control-loop"),
            asyncio.create_task(self._recorder(), name="transition-recorder"),
            asyncio.create_task(self.executor.run(), name="executor"),
        ]
        for task in self._tasks:
            self.tasks.watch(task)

    async def shutdown(self) -> StopOutcome | None:
        """Stop motion, end the tasks, then a final stop that no cache can answer. Returns its outcome.

        The first stop goes out at once (and revokes every output permit); the executor and the
        control loop are then cancelled, so nothing can write the outputs again; the final stop
        is written and read back anew before the bus closes. The hardware watchdog is disarmed
        only when that final stop is confirmed: otherwise it is left to reset the board.
        """
        self.tasks.stopping()  # tasks end on purpose from here on
        self.notifier.stopping()
        if self._link_timer is not None:
            self._link_timer.cancel()
        self.executor.signals.abort_reason, self.executor.signals.abort_code = (
            "agent shutting down",
            ResultCode.SHUTDOWN,
        )
        bound = self.stop_path.bound and self.hw.master.port_up
        if bound:
            self.stop_path.request("shutdown")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.executor.cancel_out_of_band()
        outcome: StopOutcome | None = None
        if bound:
            try:
                outcome = await asyncio.wait_for(self.stop_path.stop("shutdown: final stop", fresh=True), 2.0)
            except TimeoutError:
                log.error("shutdown: final stop not confirmed within 2 s")
        await self._drain_records()
        if self.hw_watchdog is not None:
            safe = outcome is not None and outcome.confirmed
            if not safe:
                log.error("shutdown: final stop not confirmed; the hardware watchdog is left armed")
            self.hw_watchdog.close(disarm=safe)
        return outcome

    def adopt_initial_stop(self, task: asyncio.Task[StopOutcome]) -> None:
        """The start-up stop the runtime issued before the controller was built."""
        self._initial_stop = task

    def bind_travel(self) -> None:
        """Called when the travel driver is bound (the stop path already knows it): its outputs go
        to the safe state before anything else."""
        self._initial_stop = self.stop_path.request("start-up: outputs to the safe state")

    # ------------------------------------------------------------------ conditions
    def _port_ok(self) -> bool:
        up = self.hw.master.port_up
        if up:
            self._port_seen_up = True
        return up or not self._port_seen_up  # before the port was ever open, BOOT waits for it

    def _liveness(self, role: str) -> RoleLiveness | None:
        poller = self.hw.pollers.get(role)
        if poller is None:
            return None
        return RoleLiveness(
            poller.snapshot,
            poller.bound_at,
            poller.interval_s,
            poller.binding.profile.turnaround_ms / 1000,
            poller.interval_since,
            self._configured_at(poller.bound_at) if role == "safety" else None,
        )

    def _configured_at(self, bound_at: float) -> float:
        """When the safety module bound at `bound_at` was first seen with its configuration verified
        (the supervisor bounds how long after bind that may be); infinity while it is not."""
        if self._config_seen[0] != bound_at:
            self._config_seen = (bound_at, None)
        if self._config_seen[1] is None and self.hw.safety_config_verified():
            self._config_seen = (bound_at, time.monotonic())
        seen = self._config_seen[1]
        return seen if seen is not None else float("inf")

    def fresh(self, role: str, now: float) -> bool:
        poller = self.hw.pollers.get(role)
        return poller is not None and poller.fast_quality(now) is Quality.FRESH

    def conditions(self, *, target_valid: bool = False, now: float | None = None) -> Conditions:
        now = time.monotonic() if now is None else now
        comms = all(
            r in self.hw.pollers and self.hw.master.is_online(self.hw.pollers[r].binding.address)
            for r in self.mandatory
        )
        return build_conditions(
            self.supervisor.verdict,
            comms_ok=comms and self.hw.master.port_up,
            # A safety module whose configuration is not verified may have its sensors off.
            sensors_ok=all(self.fresh(r, now) for r in self.mandatory) and self.hw.safety_config_verified(),
            location_ok=self.plant.value("travel", "M1_POSITION_CURRENT") is not None,
            target_valid=target_valid,
        )

    def motion_allowed(self) -> bool:
        return self.sm.motion_allowed(self.conditions(target_valid=True))

    # ------------------------------------------------------------------ the control loop
    async def _control_loop(self) -> None:
        next_tick = time.monotonic()
        while True:
            next_tick += LOOP_PERIOD_S
            delay = next_tick - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            lag = now - next_tick
            if lag > 0.5:
                next_tick = now  # do not try to catch up a long stall tick by tick
            self.loop_lag.add(lag)
            try:
                self._tick(now, lag)
            except Exception:
                log.exception("control loop tick failed")
                self.loop_healthy = False

    def _evaluate(self) -> None:
        """Judge the newest readings now, and again the moment the first link budget runs out."""
        self.supervisor.evaluate()
        self._arm_link_timer()

    def _arm_link_timer(self) -> None:
        """One timer at the earliest link deadline: a module that falls silent trips when its budget
        ends, not at the next control tick (up to 20 ms later). Re-armed only when it moves."""
        due = None if self.tasks.is_stopping else self.supervisor.link_deadline()
        timer = self._link_timer
        if due is None:
            if timer is not None:
                timer.cancel()
                self._link_timer = None
            return
        due += 0.0005  # just past it: the age must exceed the budget
        if timer is not None and not timer.cancelled() and abs(timer.when() - due) < 0.001:
            return
        if timer is not None:
            timer.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._link_timer = loop.call_at(due, self._evaluate)

    def _tick(self, now: float, lag: float) -> None:
        p = self.policy
        if lag * 1000 > p.loop_lag_stop_ms:
            self.supervisor.record_event("LOOP_STALL", f"control loop ran {lag * 1000:.0f} ms late")
        if lag * 1000 > p.loop_lag_warning_ms:
            self.supervisor.raise_external("LOOP_LAG", f"control loop {lag * 1000:.0f} ms late")
        elif self.supervisor.external_active("LOOP_LAG"):
            self.supervisor.clear_external("LOOP_LAG")
        self._watch_stop(now)
        if not self.db.healthy:
            if not self.supervisor.external_active("STORE_UNAVAILABLE"):
                health = self.db.health()
                self.supervisor.raise_external("STORE_UNAVAILABLE", f"{health.get('code')}: {health.get('message')}")
        elif self.supervisor.external_active("STORE_UNAVAILABLE"):
            self.supervisor.clear_external("STORE_UNAVAILABLE")
        verdict = self.supervisor.evaluate(now)
        self._arm_link_timer()
        self._advance_boot(now)
        fired = self.sm.observe(self.conditions(now=now))
        if fired:
            self._after_transitions(fired)
        self._motion_window(now)
        self._watch_outputs(now)
        self._feed_deadman(now)
        self._maybe_notify_status(verdict)
        # Last, so that a tick that raised anywhere above feeds nothing. Healthy: on time, and every
        # supervised task (bus master, executor, recorder, store writer, API, ...) still running.
        master_task = self.hw.master.task
        healthy = (
            lag * 1000 <= p.loop_lag_stop_ms
            and self.tasks.healthy
            and master_task is not None
            and not master_task.done()
        )
        self.loop_healthy = healthy
        if healthy:
            self._feed_watchdogs(now)

    def _advance_boot(self, now: float) -> None:
        state = self.sm.state
        if state is State.BOOT and self.hw.master.port_up and self.db.healthy:
            self._apply_internal(Event.BOOT_COMPLETE, "database open, bus port open")
        elif state is State.INIT:
            ok, _ = self._ready_check()
            if ok and self.safe_outputs_confirmed:
                self._apply_internal(Event.INIT_COMPLETE, "mandatory modules bound and fresh, outputs safe")
        if not self.ready_notified and self.safe_outputs_confirmed and self.db.healthy and self.hw.master.port_up:
            # Sent again on the next tick if systemd's queue was full: a lost READY=1 would leave
            # the unit "activating" until its start timeout kills a healthy agent.
            self.ready_notified = self.notifier.ready("outputs safe, serving") or not self.notifier.enabled
            if not self._ready_logged:
                self._ready_logged = True
                log.info("ready: database open, bus up, travel outputs confirmed safe")

    def _apply_internal(self, event: Event, reason: str) -> None:
        try:
            t = self.sm.handle(event, self.conditions(), reason)
        except TransitionRefused:
            return
        self._after_transitions([t])

    def _after_transitions(self, fired: list[Transition]) -> None:
        for t in fired:
            log.info("state %s -> %s (%s: %s)", t.from_state, t.to_state, t.event, t.reason)
            if t.to_state not in (State.MOVE, State.DOCK, State.PAUSED) and self.executor.current is not None:
                sig = self.executor.signals
                if sig.abort_reason is None:
                    sig.abort_reason, sig.abort_code = f"state {t.to_state}", left_state(t.to_state)
        self._state_since_wall = time.time()
        self._queue_record(fired, [])

    def _watch_stop(self, now: float) -> None:
        last = self.stop_path.last
        if last is None:
            return
        if last.confirmed:
            if self._initial_stop is not None and self._initial_stop.done():
                self.safe_outputs_confirmed = True
            if self.supervisor.external_active("STOP_NOT_CONFIRMED"):
                self.supervisor.clear_external("STOP_NOT_CONFIRMED")
        elif last.error is not None and not self.supervisor.external_active("STOP_NOT_CONFIRMED"):
            self.supervisor.raise_external(
                "STOP_NOT_CONFIRMED", f"stop for '{last.reason}' not confirmed ({last.error})"
            )

    def _motion_window(self, now: float) -> None:
        if self.sm.state not in (State.MOVE, State.DOCK):
            return
        refreshed = self.executor.refreshed_at
        if refreshed is not None and now - refreshed > MOTION_WINDOW_S:
            log.error("motion command did not refresh for %.0f ms: stopping", (now - refreshed) * 1000)
            sig = self.executor.signals
            sig.abort_reason, sig.abort_code = "motion window expired", ResultCode.MOTION_WINDOW_EXPIRED
            self.stop_path.request("motion window expired")
            self.executor.refreshed_at = None

    def _watch_outputs(self, now: float) -> None:
        """Outside motion the driver must read back off and the carriage must stand still."""
        poller = self.hw.pollers.get("travel")
        if poller is None:
            return
        motion = self.sm.state in (State.MOVE, State.DOCK)
        stop = self.stop_path
        if (
            not motion
            and not stop.in_progress
            and stop.last_confirmed is not None
            and self.hw.master.interlock.energised_since(stop.last_confirmed.readback_sent_at or 0.0)
        ):
            # An energising frame went out after the last confirmed stop, and none is running.
            stop.request("outputs energised outside motion")
        causes = self.output_monitor.check(
            poller.snapshot,
            now,
            motion=motion or stop.in_progress,
            stopped_since=None if stop.last_confirmed is None else stop.last_confirmed.confirmed_at,
        )
        for code in ("OUTPUTS_NOT_SAFE", "UNCOMMANDED_MOTION"):
            detail = causes.get(code)
            if detail is not None and not self.supervisor.external_active(code):
                self.supervisor.raise_external(code, detail)
            elif detail is None and self.supervisor.external_active(code):
                self.supervisor.clear_external(code)

    def _feed_deadman(self, now: float) -> None:
        poller = self.hw.pollers.get("travel")
        if poller is None or not poller.binding.profile.deadman:
            return
        if not (self.sm.state in (State.MOVE, State.DOCK) and self.motion_allowed()):
            return  # fed only while motion is allowed: otherwise the firmware's window turns outputs off
        window = poller.binding.profile.deadman_window_ms / 1000
        if now - self._deadman_last < window / 3 or (self._deadman_task is not None and not self._deadman_task.done()):
            return
        self._deadman_last = now
        self._deadman_counter = (self._deadman_counter + 1) & 0xFFFF
        permit = self.plant.permit("dead-man heartbeat")  # taken with the motion check above
        self._deadman_task = asyncio.get_running_loop().create_task(
            self._quiet_write("travel", "HEARTBEAT", self._deadman_counter, Priority.SAFETY, permit)
        )

    async def _quiet_write(
        self, role: str, name: str, value: int, priority: Priority, permit: Permit | None = None
    ) -> None:
        try:
            await self.plant.write(role, name, value, priority, permit=permit)
        except (BusError, CodedError) as exc:
            log.warning("%s.%s write failed: %s", role, name, exc.code)

    def _feed_watchdogs(self, now: float) -> None:
        if not self.tasks.healthy or self.tasks.is_stopping:
            return  # once a task died the pings end for good: the watchdog restarts the agent
        interval = self.notifier.watchdog_interval_s
        if interval is not None and now - self._last_ping >= interval:
            self._last_ping = now
            if self.notifier.watchdog():
                self.watchdog_pings += 1
        if self.hw_watchdog is not None:
            self.hw_watchdog.keepalive()

    def _on_task_died(self, name: str, why: str) -> None:
        """A supervised task ended: latch TASK_DIED (an emergency stop, through `_on_trip`)."""
        self.loop_healthy = False
        detail = "; ".join(f"{n} {w}" for n, w in self.tasks.deaths.items())
        self.supervisor.raise_external("TASK_DIED", detail)
        self.notifier.status(f"task {name} {why}: waiting for the watchdog to restart the agent")

    # ------------------------------------------------------------------ faults
    def _on_trip(self, code: str, detail: str) -> None:
        """A cause at protective-stop level or above appeared: stop now, from wherever we are."""
        sig = self.executor.signals
        if self.executor.current is not None and sig.abort_reason is None:
            sig.abort_reason, sig.abort_code = f"fault {code}", code
        if self.stop_path.bound:
            self.stop_path.request(f"fault {code}: {detail}")

    def _on_verdict_change(self, old: Verdict, new: Verdict) -> None:
        old_codes = {f.code for f in old.faults}
        new_codes = {f.code for f in new.faults}
        events = [{"event": "fault_raised", **f.as_dict()} for f in new.faults if f.code not in old_codes]
        events += [{"event": "fault_cleared", "code": c} for c in old_codes - new_codes]
        if events:
            self._queue_record([], events)

    # ------------------------------------------------------------------ recording
    def _queue_record(self, transitions: list[Transition], events: list[dict[str, Any]]) -> None:
        try:
            self._records.put_nowait((transitions, events))
        except asyncio.QueueFull:
            log.error(
                "transition recorder queue full: dropping %d transitions, %d events", len(transitions), len(events)
            )

    async def _recorder(self) -> None:
        while True:
            transitions, events = await self._records.get()
            await self._write_records(transitions, events)

    async def _drain_records(self) -> None:
        while not self._records.empty():
            await self._write_records(*self._records.get_nowait())

    async def _write_records(
        self, transitions: list[Transition], events: list[dict[str, Any]], command_id: str | None = None
    ) -> None:
        async def unit(conn: Any) -> None:
            for event in events:
                await outbox.add(conn, outbox_kind(event), {**event, "at": now_ts()})
            for t in transitions:
                await record_transition(conn, t.from_state.value, t.to_state.value, t.event.value, t.reason, command_id)

        try:
            await self.db.write(unit)
        except CodedError as exc:
            log.error("could not record %d transitions: %s", len(transitions), exc)

    async def transition(
        self, event: Event, *, target_valid: bool, reason: str, command_id: str | None = None
    ) -> Transition:
        """A command-driven transition: applied, then committed (with its command) before anything moves."""
        t = self.sm.handle(event, self.conditions(target_valid=target_valid), reason)
        log.info("state %s -> %s (%s: %s)", t.from_state, t.to_state, t.event, t.reason)
        self._state_since_wall = time.time()
        await self._write_records([t], [], command_id)
        return t

    async def settle_after_motion(self, command_id: str) -> None:
        """After a motion command: back to IDLE if nothing else moved the state machine meanwhile."""
        if self.sm.state in (State.MOVE, State.DOCK, State.PAUSED):
            try:
                await self.transition(
                    Event.STOP_COMMAND, target_valid=False, reason="motion command ended", command_id=command_id
                )
            except TransitionRefused:
                pass

    async def stop_outputs(self, reason: str) -> dict[str, Any]:
        """A routine stop of the travel outputs (stop command, pause, end of a command), waited
        for until confirmed. The urgent stops (E-stop, fault trip) go through the stop path directly."""
        outcome = await self.stop_path.stop(reason, routine=True) if self.stop_path.bound else None
        if outcome is None:
            return {"confirmed": False, "confirm_ms": None}
        return {
            "confirmed": outcome.confirmed,
            "confirm_ms": round(outcome.confirm_ms, 1) if outcome.confirm_ms else None,
            "readback": {
                "M1_ENABLE": 0,
                "M1_COMMAND_SPEED": 0,
                "M1_ACTUAL_SPEED": 0,
                "M2_ENABLE": 0,
                "M2_COMMAND_SPEED": 0,
                "M2_ACTUAL_SPEED": 0,
            }
            if outcome.confirmed
            else {},
        }

    async def withdraw_queued_motion(self) -> None:
        """At start: motion commands still queued from before are expired (MOTION_WITHDRAWN), never run."""
        try:
            withdrawn = await self.commands.withdraw_queued(
                MOTION_TYPES,
                ResultCode.MOTION_WITHDRAWN,
                "queued before the agent restarted: motion never resumes by itself",
            )
        except CodedError as exc:
            log.error("could not withdraw the motion commands queued before the restart: %s", exc)
            return
        if withdrawn:
            log.warning(
                "%d motion command(s) queued before the restart withdrawn, not run: %s",
                len(withdrawn),
                ", ".join(r.id for r in withdrawn),
            )

    async def finish_command(self, record: CommandRecord, outcome: Outcome) -> None:
        try:
            await self.commands.finish(
                record.id, outcome.state, outcome.result, outcome.error_code, outcome.error_message
            )
        except CodedError as exc:
            log.error("could not record the result of %s: %s", record.id, exc)

    # ------------------------------------------------------------------ AgentCore
    def alive(self) -> bool:
        """Every supervised task runs (not only the controller's own): what /healthz reports."""
        return bool(self._tasks) and self.tasks.healthy

    def not_alive_because(self) -> str:
        """Why `alive()` is False, for the technician reading /healthz ("" while alive)."""
        if self.alive():
            return ""
        if not self._tasks:
            return "the control loop has not started"
        return "; ".join(f"task {name} {why}" for name, why in sorted(self.tasks.ended().items()))

    def ready(self) -> tuple[bool, list[str]]:
        ok, reasons = self._ready_check()
        reasons = list(reasons)
        if not self.alive():
            reasons.append(f"core not alive: {self.not_alive_because()}")
        if not self.db.healthy:
            reasons.append("database is not writable")
        if not self.safe_outputs_confirmed:
            reasons.append("travel outputs not yet confirmed safe")
        return (ok and not reasons, reasons)

    def status(self) -> StatusDocument:
        return status_document(self)

    def state_since_iso(self) -> str:
        return format_wall(self._state_since_wall)

    def modules(self) -> list[ModuleView]:
        return [self.module(role) for role in sorted(self.hw.pollers)]

    def module(self, name: str) -> ModuleView:
        poller = self.hw.pollers.get(name)
        if poller is None:
            raise NotFound(f"no module bound for role {name!r}")
        return module_view(self.hw, name, poller)

    async def submit_command(
        self,
        *,
        source: str,
        idempotency_key: str,
        type: str,
        params: dict[str, Any],
        user: str | None,
        priority: int = 5,
        not_after: datetime | None = None,
        audit: AuditEntry | None = None,
    ) -> SubmitResult:
        clean = validate_params(type, params)
        not_after = self._deadline_for(type, not_after)
        if not self.db.healthy:
            health = self.db.health()
            raise StoreUnavailable(
                f"the database cannot be written: {health.get('message', '')}",
                hint="free disk space or fix the file system, then reset the fault",
            )
        await self._admit(source, idempotency_key, type, user)
        record, created = await self.commands.submit(
            source, idempotency_key, type, clean, user=user, priority=priority, not_after=not_after
        )
        if created:
            if type in OUT_OF_BAND:
                self.executor.start_out_of_band(record)
            else:
                self.executor.wake()
        await self._audit(audit, target=record.id)
        return SubmitResult(record, created)

    async def _admit(self, source: str, idempotency_key: str, type_: str, user: str | None) -> None:
        """Refuse a new command (OUTBOX_FULL, nothing written) while a class of the outbox that
        is never dropped is over its quota: every command adds results that could not be kept.

        Commands that only stop are always taken (catalogue.ADMITTED_WHEN_FULL), and so is a repeat
        of a command already stored: it adds nothing, and its client gets the first answer."""
        if admitted_when_full(type_):
            return
        full = await self.outbox.admission()
        if full is None:
            if self._outbox_full:
                self._outbox_full = False
                log.warning("the outbox has room again: new commands are accepted")
            return
        if not self._outbox_full:
            self._outbox_full = True
            log.error("%s [%s] (stop, pause and charge_stop are still taken)", full.message, full.code)
        if await self.commands.find(source, idempotency_key, user=user) is None:
            raise OutboxFull(full.message)

    def _deadline_for(self, type_: str, not_after: datetime | None) -> datetime | None:
        """Motion commands always have a deadline: the default TTL when none is given, and a client's
        deadline is capped, so a queued move never runs long after it was asked for."""
        if type_ not in MOTION_TYPES:
            return not_after
        now = dt.datetime.now(dt.UTC)
        cap = now + dt.timedelta(seconds=self.motion.max_command_ttl_s)
        if not_after is None:
            return now + dt.timedelta(seconds=self.motion.command_ttl_s)
        return min(not_after, cap)

    async def get_command(self, command_id: str) -> CommandRecord:
        return await self.commands.get(command_id)

    async def list_commands(self, state: str | None = None, limit: int = 100) -> list[CommandRecord]:
        return await self.commands.list(state=state, limit=limit)

    async def cancel_command(
        self, command_id: str, *, user: str | None, audit: AuditEntry | None = None
    ) -> CommandRecord:
        record = await self._cancel(command_id, user)
        await self._audit(audit)
        return record

    async def _cancel(self, command_id: str, user: str | None) -> CommandRecord:
        current = self.executor.current
        if current is not None and current.id == command_id:
            sig = self.executor.signals
            sig.abort_reason, sig.abort_code = f"cancelled by {user or 'unknown'}", ResultCode.CANCELLED
            for _ in range(300):
                await asyncio.sleep(0.01)
                record = await self.commands.get(command_id)
                if record.terminal:
                    return record
            raise CommandNotCancellable(f"command {command_id} did not stop within 3 s")
        return await self.commands.cancel(command_id)

    def begin_estop(self, *, source: str, user: str | None, reason: str = "") -> asyncio.Task[StopOutcome] | None:
        """The E-stop's first step, synchronous: the stop frame is queued before this returns.

        None when no travel driver is bound (nothing to stop on the bus)."""
        who = user or source
        self.supervisor.record_event(
            "ESTOP_REQUESTED", f"E-stop requested by {who}" + (f": {reason}" if reason else "")
        )
        self._apply_internal(Event.ESTOP_TRIGGERED, f"E-stop requested by {who}")
        if not self.stop_path.bound:
            return None
        return self.stop_path.request(f"E-stop by {who}")

    async def estop(
        self, *, source: str, user: str | None, reason: str = "", audit: AuditEntry | None = None
    ) -> EstopResult:
        return await self.confirm_estop(self.begin_estop(source=source, user=user, reason=reason), audit=audit)

    async def confirm_estop(
        self, task: asyncio.Task[StopOutcome] | None, *, audit: AuditEntry | None = None
    ) -> EstopResult:
        """Wait for the stop begun by `begin_estop` to be read back, then write its audit row."""
        result = await self._estop_outcome(task)
        self.estops.record(result.confirmed, result.confirm_ms)
        if audit is not None and not result.confirmed:
            audit = dataclasses.replace(audit, result="error", code="ESTOP_NOT_CONFIRMED")
        await self._audit(audit)
        return result

    async def _estop_outcome(self, task: asyncio.Task[StopOutcome] | None) -> EstopResult:
        if task is None:
            return EstopResult(
                False,
                None,
                {
                    "code": "ESTOP_NOT_CONFIRMED",
                    "message": "no travel driver is bound",
                    "hint": "use the hardware E-stop; the travel module is not reachable",
                },
            )
        try:
            outcome = await asyncio.wait_for(asyncio.shield(task), self.policy.stop_confirm_timeout_ms / 1000)
        except TimeoutError:
            outcome = None
        if outcome is None or not outcome.confirmed:
            error = outcome.error if outcome else "timeout"
            return EstopResult(
                False,
                None,
                {
                    "code": "ESTOP_NOT_CONFIRMED",
                    "message": f"the stop was sent but not confirmed on the bus ({error})",
                    "hint": "use the hardware E-stop now; then check the travel driver and the RS485 link",
                },
            )
        return EstopResult(True, outcome.confirm_ms, None)

    async def _audit(self, entry: AuditEntry | None, *, target: str | None = None) -> None:
        """Write the audit row of a change the gateway asked for, after the change (never before a stop)."""
        if entry is None:
            return
        if target is not None:
            entry = dataclasses.replace(entry, target=target)
        try:
            await self.db.write(lambda conn: append_in(conn, entry))
        except Exception:
            log.exception("could not write the audit row of request %s", entry.request_id)

    async def reset(self, *, user: str, audit: AuditEntry | None = None) -> ResetResult:
        result = await self._reset(user)
        if audit is not None and not result.complete:
            audit = dataclasses.replace(audit, result="error", code="RESET_INCOMPLETE")
        await self._audit(audit)
        return result

    async def _reset(self, user: str) -> ResetResult:
        """Clear latched faults whose cause is gone; the safety module's latch is written back last.

        Before it leaves a stop state, a fresh stop is written and read back (never a cached
        confirmation): a reset must not report IDLE while the driver runs.
        """
        blockers = self.supervisor.reset_blockers(ignore_module_latch=True)
        if not blockers and self.supervisor.module_latch_set():
            poller = self.hw.pollers.get("safety")
            if poller is not None:
                try:
                    await self.plant.write("safety", "RESET_FLAG", 0, Priority.SAFETY)
                    written = time.monotonic()
                    for _ in range(60):  # wait for a status read taken after the write
                        await asyncio.sleep(0.025)
                        reading = poller.snapshot.readings.get("RESET_FLAG")
                        if reading is not None and reading.at > written:
                            break
                except (BusError, ModuleNotBound) as exc:
                    blockers["SAFETY_MODULE_LATCHED"] = f"could not release the safety module latch: {exc.code}"
        cleared, remaining = self.supervisor.clear_latches()
        remaining.update({k: v for k, v in blockers.items() if k not in remaining})
        if not remaining and self.sm.state in (State.ESTOP, State.FAULT, State.SAFE):
            remaining.update(await self._fresh_stop_before_reset(user))
        if not remaining:
            for event, reason in (
                (Event.ESTOP_RESET, f"reset by {user}"),
                (Event.FAULT_CLEARED, f"reset by {user}"),
                (Event.SAFE_RESET, f"reset by {user}"),
            ):
                if self.sm.state in (State.ESTOP, State.FAULT, State.SAFE):
                    try:
                        await self.transition(event, target_valid=False, reason=reason)
                    except TransitionRefused:
                        continue
        log.info("reset by %s: cleared %s, remaining %s", user, cleared, list(remaining))
        return ResetResult(cleared, remaining, self.sm.state.value)

    async def _fresh_stop_before_reset(self, user: str) -> dict[str, str]:
        """A stop written and read back anew (never a cached confirmation) before a stop state is
        left, so a reset cannot report IDLE while the driver runs. Routine priority: the robot is
        already stopped, and repeated resets must not cost the safety module its polls."""
        if not self.stop_path.bound:
            return {}
        try:
            fresh = await asyncio.wait_for(
                self.stop_path.stop(f"reset by {user}", routine=True, fresh=True),
                self.policy.stop_confirm_timeout_ms / 1000,
            )
        except TimeoutError:
            fresh = None
        if fresh is None or not fresh.confirmed:
            error = fresh.error if fresh is not None else "timeout"
            return {"STOP_NOT_CONFIRMED": f"the travel driver did not confirm a fresh stop ({error})"}
        self._watch_outputs(time.monotonic())  # readings from before this stop no longer count
        remaining = {
            f.code: f"cause still present: {f.detail}"
            for f in self.supervisor.verdict.faults
            if f.code in ("OUTPUTS_NOT_SAFE", "UNCOMMANDED_MOTION") and f.cause_present
        }
        return remaining

    # ------------------------------------------------------------------ status stream
    def add_status_listener(self, listener: StatusListener) -> None:
        self._listeners.append(listener)

    def remove_status_listener(self, listener: StatusListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def notify_status_changes(self) -> None:
        """Tell the listeners now if the status changed since they last heard (not at the next tick)."""
        self._maybe_notify_status(self.supervisor.verdict)

    def _maybe_notify_status(self, verdict: Verdict) -> None:
        key = (
            self.sm.state,
            verdict.level,
            tuple(f.code for f in verdict.faults),
            self.executor.current and self.executor.current.id,
        )
        if key == self._last_status_key or not self._listeners:
            self._last_status_key = key
            return
        self._last_status_key = key
        status = self.status()
        for listener in list(self._listeners):
            try:
                listener(status)
            except Exception:
                log.exception("status listener failed")


__all__ = ["CommandNotFound", "Controller", "ModuleNotBound", "NotFound"]
