"""Property tests of the robot state machine: random events, random conditions, random time.

A hypothesis rule-based machine drives the real `StateMachine` and checks, after every step, the
safety invariants the rest of the agent relies on: no sequence of events reaches MOVE or DOCK
with an active E-stop or a latched fault, `observe` always fails safe, ESTOP is left only through
its guarded exits, refused events change nothing, and timed states leave by TIMEOUT. The
expectations are written out here independently of `states.py`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from agent.control.state_machine import Conditions, StateMachine, StateMachineError, TransitionRefused
from agent.control.states import Event, State, events_from

S, E = State, Event

from tests.state_paths import CLEAR, PATHS  # noqa: E402

FLAGS = ("safety_ok", "comms_ok", "sensors_ok", "location_ok", "target_valid", "battery_ok")
FAULT_CODES = ("SAFETY_LINK_LOST", "BUS_TIMEOUT", "MOTOR_OVERCURRENT")

# Documented timeouts and where they lead.
TIMED: dict[State, tuple[float, State]] = {
    S.BOOT: (10.0, S.FAULT),
    S.INIT: (5.0, S.FAULT),
    S.MOVE: (30.0, S.IDLE),
    S.PAUSED: (60.0, S.IDLE),
    S.DOCK: (15.0, S.IDLE),
    S.CONFIG: (10.0, S.IDLE),
}
# States that observe() must send to FAULT when a fault is latched (ESTOP stays a stop).
FAULT_ON_OBSERVE = {S.BOOT, S.INIT, S.IDLE, S.MOVE, S.DOCK, S.PAUSED, S.CONFIG, S.SAFE}
ESTOP_EXITS = {E.ESTOP_RESET, E.SAFE_RESET, E.FAULT_DETECTED, E.SHUTDOWN}

# What each guarded event demands ("estop": input released, "faults": none latched, else a flag
# that must be True). Events not listed have no guard.
_MOTION = {"estop", "faults", *FLAGS}
REQUIRED: dict[Event, set[str]] = {
    E.MOVE_COMMAND: _MOTION,
    E.RESUME_COMMAND: _MOTION,
    E.DOCK_COMMAND: _MOTION - {"target_valid"},
    E.CONFIG_COMMAND: {"faults", "safety_ok"},
    E.FAULT_CLEARED: {"estop", "faults", "safety_ok"},
    E.ESTOP_RESET: {"estop", "faults", "safety_ok"},
    E.SAFE_RESET: {"estop", "faults", "safety_ok", "comms_ok", "sensors_ok"},
}


def unmet(event: Event, conditions: Conditions) -> set[str]:
    """The requirements of `event` that `conditions` fail (empty: the guard must pass)."""
    failed = set()
    for name in REQUIRED.get(event, ()):
        if name == "estop":
            if conditions.estop_active:
                failed.add(name)
        elif name == "faults":
            if conditions.latched_faults:
                failed.add(name)
        elif not getattr(conditions, name):
            failed.add(name)
    return failed


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@st.composite
def degraded_conditions(draw: st.DrawFn) -> Conditions:
    """Mostly-good conditions with a few things wrong, so guarded transitions are sometimes taken."""
    changes: dict[str, object] = {flag: False for flag in draw(st.sets(st.sampled_from(FLAGS), max_size=3))}
    changes["estop_active"] = draw(st.booleans())
    changes["latched_faults"] = draw(st.frozensets(st.sampled_from(FAULT_CODES), max_size=2))
    return replace(CLEAR, **changes)


# Exactly one thing wrong: the case that shows whether each guard checks each condition.
SINGLE_BREAKS = [
    replace(CLEAR, estop_active=True),
    *(replace(CLEAR, latched_faults=frozenset({code})) for code in FAULT_CODES),
    *(replace(CLEAR, **{flag: False}) for flag in FLAGS),
]
conditions_st = st.one_of(st.just(CLEAR), st.sampled_from(SINGLE_BREAKS), degraded_conditions())
dt_st = st.one_of(
    st.floats(min_value=0.0, max_value=3.0, allow_nan=False),
    st.sampled_from([4.999, 5.0, 10.0, 15.0, 29.9, 30.0, 60.0, 61.0]),
)


def is_dirty(conditions: Conditions) -> bool:
    return conditions.estop_active or bool(conditions.latched_faults)


def all_ok(conditions: Conditions, *flags: str) -> bool:
    return not is_dirty(conditions) and all(getattr(conditions, flag) for flag in flags)


class StateMachineRules(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.sm = StateMachine(self.clock)
        self.entered_at = self.clock.now  # the model's own record of when the state began
        self.last_accepted = CLEAR  # conditions of the last accepted event or observe()
        self.history: deque = deque(maxlen=256)  # what the machine's history must hold

    @initialize(start=st.sampled_from(list(State)))
    def start_in(self, start: State) -> None:
        for event in PATHS[start]:
            self.history.append(self.sm.handle(event, CLEAR))
        assert self.sm.state is start

    def snapshot(self) -> tuple[State, float, list]:
        return self.sm.state, self.sm.entered_at, list(self.sm.history)

    @rule(seconds=dt_st)
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(event=st.sampled_from(list(Event)), conditions=conditions_st)
    def handle_any(self, event: Event, conditions: Conditions) -> None:
        self.handle(event, conditions)

    @rule(data=st.data(), conditions=conditions_st)
    def handle_plausible(self, data: st.DataObject, conditions: Conditions) -> None:
        """Steer generation towards events the current state has a row for (the checks in
        `handle` stay independent of the table), so guarded transitions are tried often."""
        accepted = events_from(self.sm.state)
        if accepted:
            self.handle(data.draw(st.sampled_from(accepted)), conditions)

    def handle(self, event: Event, conditions: Conditions) -> None:
        before = self.snapshot()
        source = self.sm.state
        refusal = self.sm.can(event, conditions)
        if refusal is not None:
            with pytest.raises(TransitionRefused) as info:
                self.sm.handle(event, conditions)
            assert info.value.refusal == refusal
            assert refusal.code in {"STATE_EVENT_NOT_ALLOWED", "STATE_GUARD_FAILED"}
            if refusal.code == "STATE_GUARD_FAILED":
                assert unmet(event, conditions), f"{event} refused with every requirement met"
            assert self.snapshot() == before, "a refused event changed something"
            return

        transition = self.sm.handle(event, conditions)
        self.history.append(transition)
        assert transition.from_state is source and transition.event is event
        assert transition.at == self.clock.now
        assert list(self.sm.history)[-1] == transition
        assert source is not S.SHUTDOWN, "SHUTDOWN is terminal"
        target = transition.to_state
        assert not unmet(event, conditions), f"{event} accepted despite {unmet(event, conditions)}"
        # Motion only with everything in order.
        if target is S.MOVE:
            assert all_ok(conditions, *FLAGS)
        if target is S.DOCK:
            assert all_ok(conditions, *(f for f in FLAGS if f != "target_valid"))
        # ESTOP is only left through its guarded exits.
        if source is S.ESTOP and target is not S.ESTOP:
            assert event in ESTOP_EXITS
            if event is E.ESTOP_RESET:
                assert target is S.IDLE and all_ok(conditions, "safety_ok")
            if event is E.SAFE_RESET:
                assert target is S.SAFE and all_ok(conditions, "safety_ok", "comms_ok", "sensors_ok")
        if source is S.ESTOP:
            assert event in ESTOP_EXITS | {E.ESTOP_TRIGGERED}
        if transition.changed:
            self.entered_at = self.clock.now
        else:
            assert (source, event) == (S.ESTOP, E.ESTOP_TRIGGERED)
        self.last_accepted = conditions

    @rule(conditions=conditions_st)
    def observe(self, conditions: Conditions) -> None:
        state = self.sm.state
        if conditions.estop_active:
            expected = [] if state in (S.ESTOP, S.SHUTDOWN) else [(S.ESTOP, E.ESTOP_TRIGGERED)]
        elif conditions.latched_faults and state in FAULT_ON_OBSERVE:
            expected = [(S.FAULT, E.FAULT_DETECTED)]
        elif state in TIMED and self.clock.now - self.entered_at >= TIMED[state][0]:
            expected = [(TIMED[state][1], E.TIMEOUT)]
        else:
            expected = []
        fired = self.sm.observe(conditions)
        self.history.extend(fired)
        assert [(t.to_state, t.event) for t in fired] == expected
        assert all(t.from_state is state for t in fired)
        if fired:
            self.entered_at = self.clock.now
        # Fail safe: after observing, an E-stop means ESTOP and a fault means a stopped state.
        if conditions.estop_active:
            assert self.sm.state in (S.ESTOP, S.SHUTDOWN)
        elif conditions.latched_faults:
            assert self.sm.state in (S.FAULT, S.ESTOP, S.SHUTDOWN)
        self.last_accepted = conditions

    @rule()
    def refresh(self) -> None:
        before = self.snapshot()
        if self.sm.state in (S.MOVE, S.DOCK):
            self.sm.refresh()
            self.entered_at = self.clock.now
        else:
            with pytest.raises(StateMachineError):
                self.sm.refresh()
            assert self.snapshot() == before

    @invariant()
    def never_moving_with_estop_or_fault(self) -> None:
        """The last conditions the machine accepted never leave it in MOVE/DOCK when dirty."""
        if self.sm.state in (S.MOVE, S.DOCK):
            assert not is_dirty(self.last_accepted)
        if is_dirty(self.last_accepted):
            assert not self.sm.motion_allowed(self.last_accepted)

    @invariant()
    def history_matches_model(self) -> None:
        assert list(self.sm.history) == list(self.history)

    @invariant()
    def timer_matches_model(self) -> None:
        assert self.sm.entered_at == self.entered_at
        deadline = self.sm.deadline
        if self.sm.state in TIMED:
            assert deadline == self.entered_at + TIMED[self.sm.state][0]
        else:
            assert deadline is None


StateMachineRules.TestCase.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)
TestStateMachineRules = StateMachineRules.TestCase


@settings(max_examples=150, deadline=None)
@given(
    state=st.sampled_from(list(TIMED)),
    seconds=st.floats(min_value=0.01, max_value=10_000.0, allow_nan=False),
    early=st.floats(min_value=0.0, max_value=0.999),
)
def test_every_timed_state_leaves_by_timeout(state: State, seconds: float, early: float) -> None:
    """For every timed state and any configured timeout: quiet before it, TIMEOUT to the
    documented target once it has passed without a refresh."""
    clock = FakeClock()
    sm = StateMachine(clock, {state: seconds})
    for event in PATHS[state]:
        sm.handle(event, CLEAR)
    start = clock.now
    clock.now = start + seconds * early
    assert sm.observe(CLEAR) == []
    assert sm.state is state
    clock.now = start + seconds
    fired = sm.observe(CLEAR)
    assert [(t.from_state, t.to_state, t.event) for t in fired] == [(state, TIMED[state][1], E.TIMEOUT)]
    assert sm.state is TIMED[state][1]


@settings(max_examples=100, deadline=None)
@given(
    state=st.sampled_from([S.MOVE, S.DOCK]),
    refreshes=st.lists(st.floats(min_value=0.0, max_value=14.9), min_size=1, max_size=20),
)
def test_refresh_keeps_motion_alive_only_while_refreshed(state: State, refreshes: list[float]) -> None:
    clock = FakeClock()
    sm = StateMachine(clock)
    for event in PATHS[state]:
        sm.handle(event, CLEAR)
    for gap in refreshes:  # each gap is shorter than both motion timeouts
        clock.now += gap
        assert sm.observe(CLEAR) == []
        sm.refresh()
    clock.now += TIMED[state][0]
    assert [t.to_state for t in sm.observe(CLEAR)] == [S.IDLE]


GUARDED_ROWS = [
    (S.IDLE, E.MOVE_COMMAND),
    (S.DOCK, E.MOVE_COMMAND),
    (S.PAUSED, E.RESUME_COMMAND),
    (S.IDLE, E.DOCK_COMMAND),
    (S.MOVE, E.DOCK_COMMAND),
    (S.IDLE, E.CONFIG_COMMAND),
    (S.FAULT, E.FAULT_CLEARED),
    (S.ESTOP, E.ESTOP_RESET),
    (S.FAULT, E.SAFE_RESET),
    (S.ESTOP, E.SAFE_RESET),
    (S.SAFE, E.SAFE_RESET),
]


@settings(max_examples=800, deadline=None)
@given(
    row=st.one_of(
        st.sampled_from(GUARDED_ROWS),
        st.tuples(st.sampled_from(list(State)), st.sampled_from(list(Event))),
    ),
    conditions=conditions_st,
)
def test_one_event_is_accepted_exactly_when_its_requirements_hold(
    row: tuple[State, Event], conditions: Conditions
) -> None:
    """From any reachable state: a guarded event that the table accepts passes if and only if
    every requirement holds, and a refusal names exactly the unmet ones."""
    start, event = row
    sm = StateMachine(FakeClock())
    for step in PATHS[start]:
        sm.handle(step, CLEAR)
    refusal = sm.can(event, conditions)
    if refusal is not None and refusal.code == "STATE_EVENT_NOT_ALLOWED":
        return
    missing = unmet(event, conditions)
    if not missing:
        assert refusal is None
        return
    assert refusal is not None and refusal.code == "STATE_GUARD_FAILED"
    named = {
        "estop" if item == "estop_active" else "faults" if item.startswith("latched fault ") else item[4:]
        for item in refusal.failed
    }
    assert named == missing
    assert sum(item.startswith("latched fault ") for item in refusal.failed) == (
        len(conditions.latched_faults) if "faults" in missing else 0
    )


@settings(max_examples=500, deadline=None)
@given(start=st.sampled_from(list(State)), elapsed=dt_st, conditions=conditions_st)
def test_one_observe_fails_safe_from_every_state(start: State, elapsed: float, conditions: Conditions) -> None:
    """observe() from any reachable state after any time: E-stop first, then a latched fault,
    then the timeout; nothing else moves the state."""
    clock = FakeClock()
    sm = StateMachine(clock)
    for step in PATHS[start]:
        sm.handle(step, CLEAR)
    clock.now += elapsed
    if conditions.estop_active:
        expected = [] if start in (S.ESTOP, S.SHUTDOWN) else [(S.ESTOP, E.ESTOP_TRIGGERED)]
    elif conditions.latched_faults and start in FAULT_ON_OBSERVE:
        expected = [(S.FAULT, E.FAULT_DETECTED)]
    elif start in TIMED and elapsed >= TIMED[start][0]:
        expected = [(TIMED[start][1], E.TIMEOUT)]
    else:
        expected = []
    fired = sm.observe(conditions)
    assert [(t.from_state, t.to_state, t.event) for t in fired] == [(start, *pair) for pair in expected]
    assert sm.state is (expected[0][0] if expected else start)
    if is_dirty(conditions):
        assert sm.state not in (S.MOVE, S.DOCK, S.PAUSED, S.IDLE)
