"""Hypothesis: no sequence of faults, commands, resets and silences leaves motion allowed while a
fault is latched or the E-stop is active. Drives the real Supervisor and StateMachine."""

from __future__ import annotations

from types import MappingProxyType

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from agent.control.conditions import build_conditions
from agent.control.state_machine import StateMachine, TransitionRefused
from agent.control.states import MOTION_STATES, Event, State
from agent.safety.faults import Level
from agent.safety.policy import SafetyPolicy
from agent.safety.supervisor import RoleLiveness, Supervisor
from drivers.snapshots import ModuleSnapshot, Reading


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Interlock(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.port = True
        self.safety = {"SAFETY_SYSTEM_STATUS": 0, "EMERGENCY_STOP_STATUS": 0, "RESET_FLAG": 0}
        self.soc = 80.0
        self.safety_at = self.clock.t
        self.power_at = self.clock.t
        self.trips: list[str] = []
        self.sup = Supervisor(
            SafetyPolicy(),
            self.liveness,
            port_up=lambda: self.port,
            on_trip=lambda code, detail: self.trips.append(code),
            clock=self.clock,
        )
        self.sm = StateMachine(clock=self.clock)
        for event in (Event.BOOT_COMPLETE, Event.INIT_COMPLETE):
            self.sm.handle(event, self.cond())

    def liveness(self, role: str) -> RoleLiveness | None:
        if role == "safety":
            readings = {k: Reading(v, self.safety_at, 0.45) for k, v in self.safety.items()}
            interval = 0.05
        elif role == "power":
            readings = {"BATTERY_SOC": Reading(self.soc, self.power_at, 3.0)}
            interval = 1.0
        else:
            return None
        snap = ModuleSnapshot(role, 5, "p", MappingProxyType(readings), True, None, self.clock.t)
        return RoleLiveness(snap, 0.0, interval, 0.15)

    def cond(self, target_valid: bool = True):  # type: ignore[no-untyped-def]
        return build_conditions(
            self.sup.verdict, comms_ok=self.port, sensors_ok=True, location_ok=True, target_valid=target_valid
        )

    def step(self) -> None:
        """What the control loop does every cycle."""
        self.sup.evaluate()
        self.sm.observe(self.cond())

    def fresh(self) -> None:
        self.safety_at = self.clock.t
        self.power_at = self.clock.t

    # --------------------------------------------------------------- the world
    @rule(status=st.integers(0, 3), estop=st.booleans())
    def safety_module_reports(self, status: int, estop: bool) -> None:
        self.safety["SAFETY_SYSTEM_STATUS"] = status
        self.safety["EMERGENCY_STOP_STATUS"] = int(estop)
        if status >= 2 or estop:
            self.safety["RESET_FLAG"] = 1  # SAFE-FW latches relay 1
        self.fresh()
        self.step()

    @rule(soc=st.floats(0, 100))
    def battery(self, soc: float) -> None:
        self.soc = soc
        self.fresh()
        self.step()

    @rule(dt=st.floats(0.01, 2.0), replies=st.booleans())
    def time_passes(self, dt: float, replies: bool) -> None:
        self.clock.t += dt
        if replies and self.port:
            self.fresh()
        self.step()

    @rule(up=st.booleans())
    def port_changes(self, up: bool) -> None:
        self.port = up
        self.step()

    @rule()
    def api_estop(self) -> None:
        self.sup.record_event("ESTOP_REQUESTED", "test")
        try:
            self.sm.handle(Event.ESTOP_TRIGGERED, self.cond())
        except TransitionRefused:
            pass
        self.step()

    # --------------------------------------------------------------- commands
    @rule(
        event=st.sampled_from(
            [Event.MOVE_COMMAND, Event.DOCK_COMMAND, Event.RESUME_COMMAND, Event.PAUSE_COMMAND, Event.STOP_COMMAND]
        ),
        valid=st.booleans(),
    )
    def command(self, event: Event, valid: bool) -> None:
        try:
            self.sm.handle(event, self.cond(valid))
        except TransitionRefused:
            pass
        if self.sm.state in MOTION_STATES:
            self.sm.refresh()
        self.step()

    @rule()
    def reset(self) -> None:
        blockers = self.sup.reset_blockers(ignore_module_latch=True)
        if not blockers and self.safety["RESET_FLAG"] == 1:
            self.safety["RESET_FLAG"] = 0  # the reset writes 0; SAFE-FW re-latches if the cause persists
            if self.safety["SAFETY_SYSTEM_STATUS"] >= 2 or self.safety["EMERGENCY_STOP_STATUS"]:
                self.safety["RESET_FLAG"] = 1
            self.fresh()
        self.sup.clear_latches()
        for event in (Event.ESTOP_RESET, Event.FAULT_CLEARED):
            try:
                self.sm.handle(event, self.cond())
            except TransitionRefused:
                pass
        self.step()

    # --------------------------------------------------------------- the property
    @invariant()
    def no_motion_while_latched_or_estop(self) -> None:
        v = self.sup.verdict
        cond = self.cond()
        if v.latched_codes or v.estop_input:
            assert not self.sm.motion_allowed(cond), (self.sm.state, v.latched_codes)
            assert self.sm.state not in MOTION_STATES, (self.sm.state, v.latched_codes)

    @invariant()
    def every_stop_level_fault_tripped_the_stop_path(self) -> None:
        for fault in self.sup.verdict.faults:
            if fault.level >= Level.PROTECTIVE_STOP:
                assert fault.code in self.trips

    @invariant()
    def latched_faults_survive_until_reset(self) -> None:
        # A latched fault whose cause is gone is still reported (and still blocks motion).
        for fault in self.sup.verdict.faults:
            if fault.latched and not fault.cause_present:
                assert self.sm.state is not State.MOVE


Interlock.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestInterlock = Interlock.TestCase
