"""Unit tests of the robot state machine: the table row by row, each guard, the repairs of the old
master's gaps and shortcuts, fail-safe observation, timeouts and the command permission table.

The expected table below is written out by hand from the old master's table
(docs/firmware.md#the-old-masters-state-machine) plus the documented fixes, not derived from
`states.TRANSITIONS`, so a wrong row in the implementation fails here.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from agent.control.catalogue import CATALOGUE, command_allowed
from agent.control.state_machine import (
    Conditions,
    Refusal,
    StateMachine,
    StateMachineError,
    Transition,
    TransitionRefused,
)
from agent.control.states import TRANSITIONS, CommandType, Event, State

S, E = State, Event

from tests.state_paths import CLEAR, PATHS  # noqa: E402

# Each unmet condition, as a Conditions change and the name a refusal must use for it.
BREAKS: dict[str, tuple[dict[str, object], str]] = {
    "estop": ({"estop_active": True}, "estop_active"),
    "fault": ({"latched_faults": frozenset({"SAFETY_LINK_LOST"})}, "latched fault SAFETY_LINK_LOST"),
    "safety": ({"safety_ok": False}, "not safety_ok"),
    "comms": ({"comms_ok": False}, "not comms_ok"),
    "sensors": ({"sensors_ok": False}, "not sensors_ok"),
    "location": ({"location_ok": False}, "not location_ok"),
    "target": ({"target_valid": False}, "not target_valid"),
    "battery": ({"battery_ok": False}, "not battery_ok"),
}
MOTION = frozenset(BREAKS)
DOCKING = MOTION - {"target"}
CONFIG = frozenset({"safety", "fault"})
FAULT_CLEAR = frozenset({"fault", "estop", "safety"})
ESTOP_RESET = frozenset({"estop", "fault", "safety"})
SAFE_RESET = frozenset({"estop", "fault", "safety", "comms", "sensors"})

# (from, event, to, set of conditions the guard checks)
ROWS: list[tuple[State, Event, State, frozenset[str]]] = [
    *[
        (s, E.ESTOP_TRIGGERED, S.ESTOP, frozenset())
        for s in (S.BOOT, S.INIT, S.IDLE, S.MOVE, S.DOCK, S.FAULT, S.PAUSED, S.CONFIG, S.SAFE, S.ESTOP)
    ],
    *[
        (s, E.FAULT_DETECTED, S.FAULT, frozenset())
        for s in (S.BOOT, S.INIT, S.IDLE, S.MOVE, S.DOCK, S.PAUSED, S.ESTOP, S.SAFE, S.CONFIG)
    ],
    (S.BOOT, E.BOOT_COMPLETE, S.INIT, frozenset()),
    (S.BOOT, E.TIMEOUT, S.FAULT, frozenset()),
    (S.INIT, E.INIT_COMPLETE, S.IDLE, frozenset()),
    (S.INIT, E.TIMEOUT, S.FAULT, frozenset()),
    (S.IDLE, E.MOVE_COMMAND, S.MOVE, MOTION),
    (S.IDLE, E.DOCK_COMMAND, S.DOCK, DOCKING),
    (S.IDLE, E.CONFIG_COMMAND, S.CONFIG, CONFIG),
    *[(s, E.SHUTDOWN, S.SHUTDOWN, frozenset()) for s in (S.IDLE, S.FAULT, S.ESTOP, S.SAFE)],
    (S.MOVE, E.STOP_COMMAND, S.IDLE, frozenset()),
    (S.MOVE, E.TIMEOUT, S.IDLE, frozenset()),
    (S.MOVE, E.DOCK_COMMAND, S.DOCK, DOCKING),
    (S.MOVE, E.PAUSE_COMMAND, S.PAUSED, frozenset()),
    (S.DOCK, E.STOP_COMMAND, S.IDLE, frozenset()),
    (S.DOCK, E.TIMEOUT, S.IDLE, frozenset()),
    (S.DOCK, E.MOVE_COMMAND, S.MOVE, MOTION),
    (S.PAUSED, E.RESUME_COMMAND, S.MOVE, MOTION),
    (S.PAUSED, E.STOP_COMMAND, S.IDLE, frozenset()),
    (S.PAUSED, E.TIMEOUT, S.IDLE, frozenset()),
    (S.CONFIG, E.CONFIG_COMPLETE, S.IDLE, frozenset()),
    (S.CONFIG, E.TIMEOUT, S.IDLE, frozenset()),
    (S.CONFIG, E.CONFIG_FAILED, S.FAULT, frozenset()),
    (S.FAULT, E.FAULT_CLEARED, S.IDLE, FAULT_CLEAR),
    (S.ESTOP, E.ESTOP_RESET, S.IDLE, ESTOP_RESET),
    (S.FAULT, E.SAFE_RESET, S.SAFE, SAFE_RESET),
    (S.ESTOP, E.SAFE_RESET, S.SAFE, SAFE_RESET),
    (S.SAFE, E.SAFE_RESET, S.IDLE, SAFE_RESET),
]
ROW_KEYS = {(src, ev) for src, ev, _dst, _g in ROWS}


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def broken(*names: str) -> Conditions:
    changes: dict[str, object] = {}
    for name in names:
        changes.update(BREAKS[name][0])
    return replace(CLEAR, **changes)


def machine_in(state: State, clock: FakeClock | None = None, **kwargs: object) -> StateMachine:
    sm = StateMachine(clock or FakeClock(), **kwargs)  # type: ignore[arg-type]
    for event in PATHS[state]:
        sm.handle(event, CLEAR)
    assert sm.state is state
    return sm


def snapshot(sm: StateMachine) -> tuple[State, float, list[Transition]]:
    return sm.state, sm.entered_at, list(sm.history)


# -- the table ---------------------------------------------------------------------------------


def test_table_has_exactly_the_expected_rows() -> None:
    assert set(TRANSITIONS) == ROW_KEYS
    for src, ev, dst, _guard in ROWS:
        assert TRANSITIONS[(src, ev)][0] is dst, (src, ev)


def test_initial_state_is_boot() -> None:
    clock = FakeClock(42.0)
    sm = StateMachine(clock)
    assert sm.state is S.BOOT
    assert sm.entered_at == 42.0
    assert list(sm.history) == []


def _param_id(value: object) -> str:
    """Stable ids: a set's order changes with hash randomisation, and every run (and every
    parallel worker) must collect the same tests."""
    if isinstance(value, (set, frozenset)):
        return "{" + ",".join(sorted(map(str, value))) + "}"
    return str(value)


@pytest.mark.parametrize(("src", "event", "dst", "guard"), ROWS, ids=_param_id)
def test_row_is_accepted_with_clear_conditions(src: State, event: Event, dst: State, guard: frozenset[str]) -> None:
    clock = FakeClock()
    sm = machine_in(src, clock)
    clock.advance(1.5)
    assert sm.can(event, CLEAR) is None
    transition = sm.handle(event, CLEAR, reason="because")
    assert transition == Transition(src, dst, event, "because", clock.now)
    assert sm.state is dst
    assert sm.history[-1] == transition


NON_ROWS = [(src, ev) for src in State for ev in Event if (src, ev) not in ROW_KEYS]


@pytest.mark.parametrize(("src", "event"), NON_ROWS, ids=_param_id)
def test_event_outside_the_table_is_refused_and_changes_nothing(src: State, event: Event) -> None:
    sm = machine_in(src)
    before = snapshot(sm)
    refusal = sm.can(event, CLEAR)
    assert refusal is not None and refusal.code == "STATE_EVENT_NOT_ALLOWED"
    assert refusal.state is src and refusal.event is event
    with pytest.raises(TransitionRefused) as info:
        sm.handle(event, CLEAR)
    assert info.value.code == "STATE_EVENT_NOT_ALLOWED"
    assert info.value.refusal == refusal
    assert snapshot(sm) == before


GUARDED = [(src, ev, dst, g) for src, ev, dst, g in ROWS if g]
GUARD_CASES = [(src, ev, dst, g, name) for src, ev, dst, g in GUARDED for name in BREAKS]


@pytest.mark.parametrize(("src", "event", "dst", "guard", "name"), GUARD_CASES, ids=_param_id)
def test_each_condition_alone(src: State, event: Event, dst: State, guard: frozenset[str], name: str) -> None:
    """A condition the guard checks refuses the event, naming it; any other is ignored."""
    sm = machine_in(src)
    before = snapshot(sm)
    conditions = broken(name)
    if name in guard:
        refusal = sm.can(event, conditions)
        assert refusal is not None
        assert refusal.code == "STATE_GUARD_FAILED"
        assert refusal.failed == (BREAKS[name][1],)
        assert BREAKS[name][1] in refusal.message
        assert refusal.hint
        with pytest.raises(TransitionRefused) as info:
            sm.handle(event, conditions)
        assert info.value.code == "STATE_GUARD_FAILED"
        assert snapshot(sm) == before
    else:
        assert sm.handle(event, conditions).to_state is dst


def test_guard_failure_names_every_failed_condition_in_order() -> None:
    sm = machine_in(S.ESTOP)
    conditions = replace(broken("estop", "safety"), latched_faults=frozenset({"SAFETY_LINK_LOST", "BUS_DOWN"}))
    refusal = sm.can(E.ESTOP_RESET, conditions)
    assert refusal is not None
    assert refusal.failed == (
        "estop_active",
        "latched fault BUS_DOWN",
        "latched fault SAFETY_LINK_LOST",
        "not safety_ok",
    )
    assert refusal.message == (
        "ESTOP_RESET refused in state ESTOP: "
        "estop_active, latched fault BUS_DOWN, latched fault SAFETY_LINK_LOST, not safety_ok"
    )
    assert refusal.as_dict()["failed"] == list(refusal.failed)


def test_brief_example_reason_text() -> None:
    sm = machine_in(S.IDLE)
    refusal = sm.can(E.CONFIG_COMMAND, broken("estop", "fault"))  # config ignores the E-stop input
    assert refusal is not None and refusal.failed == ("latched fault SAFETY_LINK_LOST",)
    refusal = machine_in(S.FAULT).can(E.FAULT_CLEARED, broken("estop", "fault"))
    assert refusal is not None
    assert refusal.message.endswith(": estop_active, latched fault SAFETY_LINK_LOST")


def test_refused_event_raises_a_coded_error_with_hint() -> None:
    sm = machine_in(S.IDLE)
    with pytest.raises(TransitionRefused) as info:
        sm.handle(E.MOVE_COMMAND, broken("battery"))
    error = info.value
    assert error.as_dict() == {
        "code": "STATE_GUARD_FAILED",
        "message": error.refusal.message,
        "hint": error.refusal.hint,
    }
    assert "charge" in error.hint


# -- fixed gaps and removed shortcuts -----------------------------------------------------------


def test_gap_fixed_estop_from_safe_and_config() -> None:
    for state in (S.SAFE, S.CONFIG):
        sm = machine_in(state)
        assert sm.handle(E.ESTOP_TRIGGERED, CLEAR).to_state is S.ESTOP
        sm = machine_in(state)
        assert [t.to_state for t in sm.observe(broken("estop"))] == [S.ESTOP]


def test_gap_fixed_fault_from_config_and_safe() -> None:
    for state in (S.CONFIG, S.SAFE):
        sm = machine_in(state)
        assert sm.handle(E.FAULT_DETECTED, CLEAR).to_state is S.FAULT
        sm = machine_in(state)
        assert [t.to_state for t in sm.observe(broken("fault"))] == [S.FAULT]


def test_estop_reset_refused_while_input_active() -> None:
    sm = machine_in(S.ESTOP)
    with pytest.raises(TransitionRefused) as info:
        sm.handle(E.ESTOP_RESET, broken("estop"))
    assert info.value.refusal.failed == ("estop_active",)
    assert sm.state is S.ESTOP


def test_estop_reset_refused_while_fault_latched() -> None:
    sm = machine_in(S.ESTOP)
    with pytest.raises(TransitionRefused) as info:
        sm.handle(E.ESTOP_RESET, broken("fault"))
    assert info.value.refusal.failed == ("latched fault SAFETY_LINK_LOST",)
    assert sm.state is S.ESTOP


def test_estop_reset_refused_without_safety_verdict() -> None:
    sm = machine_in(S.ESTOP)
    with pytest.raises(TransitionRefused):
        sm.handle(E.ESTOP_RESET, broken("safety"))
    assert sm.state is S.ESTOP


@pytest.mark.parametrize("via", ["init", "estop_reset", "safe_reset", "stop", "timeout"])
def test_entering_idle_never_makes_the_robot_safe(via: str) -> None:
    """The master set safety_ok on IDLE entry; here each IDLE still needs the caller's verdict."""
    clock = FakeClock()
    if via == "init":
        sm = machine_in(S.IDLE, clock)
    elif via == "estop_reset":
        sm = machine_in(S.ESTOP, clock)
        sm.handle(E.ESTOP_RESET, CLEAR)
    elif via == "safe_reset":
        sm = machine_in(S.SAFE, clock)
        sm.handle(E.SAFE_RESET, CLEAR)
    elif via == "stop":
        sm = machine_in(S.MOVE, clock)
        sm.handle(E.STOP_COMMAND, CLEAR)
    else:
        sm = machine_in(S.MOVE, clock)
        clock.advance(31)
        sm.observe(CLEAR)
    assert sm.state is S.IDLE
    refusal = sm.can(E.MOVE_COMMAND, broken("safety"))
    assert refusal is not None and refusal.failed == ("not safety_ok",)
    assert sm.can(E.DOCK_COMMAND, broken("safety")) is not None
    assert sm.can(E.CONFIG_COMMAND, broken("safety")) is not None
    assert not hasattr(sm, "safety_ok")


def test_repeated_estop_stays_in_estop_without_error() -> None:
    clock = FakeClock()
    sm = machine_in(S.ESTOP, clock)
    entered = sm.entered_at
    clock.advance(5)
    transition = sm.handle(E.ESTOP_TRIGGERED, broken("estop"), reason="pressed again")
    assert (transition.from_state, transition.to_state, transition.changed) == (S.ESTOP, S.ESTOP, False)
    assert sm.state is S.ESTOP and sm.entered_at == entered
    assert sm.history[-1] == transition


def test_shutdown_is_terminal() -> None:
    sm = machine_in(S.SHUTDOWN)
    for event in Event:
        assert sm.can(event, CLEAR) is not None
    assert sm.observe(broken("estop", "fault")) == []
    assert sm.state is S.SHUTDOWN


# -- observe: fail safe first ------------------------------------------------------------------

ESTOP_ON_OBSERVE = [s for s in State if s not in (S.ESTOP, S.SHUTDOWN)]
FAULT_ON_OBSERVE = [S.BOOT, S.INIT, S.IDLE, S.MOVE, S.DOCK, S.PAUSED, S.CONFIG, S.SAFE]


@pytest.mark.parametrize("state", ESTOP_ON_OBSERVE)
def test_observe_estop_goes_to_estop(state: State) -> None:
    sm = machine_in(state)
    fired = sm.observe(broken("estop", "fault"))  # E-stop wins over a latched fault
    assert [(t.from_state, t.to_state, t.event) for t in fired] == [(state, S.ESTOP, E.ESTOP_TRIGGERED)]
    assert sm.state is S.ESTOP
    assert sm.observe(broken("estop")) == []  # and stays without new records


@pytest.mark.parametrize("state", FAULT_ON_OBSERVE)
def test_observe_latched_fault_goes_to_fault(state: State) -> None:
    sm = machine_in(state)
    fired = sm.observe(replace(CLEAR, latched_faults=frozenset({"B_FAULT", "A_FAULT"})))
    assert [(t.to_state, t.event) for t in fired] == [(S.FAULT, E.FAULT_DETECTED)]
    assert fired[0].reason == "latched fault A_FAULT, B_FAULT"
    assert sm.observe(broken("fault")) == []


def test_observe_keeps_estop_when_only_a_fault_is_latched() -> None:
    """ESTOP is already a stop; leaving it for FAULT would flap while the input is held."""
    sm = machine_in(S.ESTOP)
    assert sm.observe(broken("fault")) == []
    assert sm.state is S.ESTOP


@pytest.mark.parametrize("state", list(State))
def test_observe_with_clear_conditions_changes_nothing_before_timeout(state: State) -> None:
    sm = machine_in(state)
    before = snapshot(sm)
    assert sm.observe(CLEAR) == []
    assert snapshot(sm) == before


@pytest.mark.parametrize("name", ["safety", "comms", "sensors", "location", "target", "battery"])
def test_observe_does_not_stop_on_soft_conditions(name: str) -> None:
    """Only the E-stop input and latched faults move the state; the executor stops motion on the
    rest via `motion_allowed` (and the supervisor latches a fault when it must)."""
    sm = machine_in(S.MOVE)
    assert sm.observe(broken(name)) == []
    assert sm.motion_allowed(broken(name)) is False


# -- timeouts ------------------------------------------------------------------------------------

TIMED = {
    S.BOOT: (10.0, S.FAULT),
    S.INIT: (5.0, S.FAULT),
    S.MOVE: (30.0, S.IDLE),
    S.PAUSED: (60.0, S.IDLE),
    S.DOCK: (15.0, S.IDLE),
    S.CONFIG: (10.0, S.IDLE),
}


@pytest.mark.parametrize("state", list(TIMED))
def test_default_timeout_fires_to_documented_target(state: State) -> None:
    seconds, target = TIMED[state]
    clock = FakeClock()
    sm = machine_in(state, clock)
    assert sm.timeout == seconds and sm.deadline == clock.now + seconds
    clock.advance(seconds - 0.001)
    assert sm.observe(CLEAR) == []
    clock.advance(0.001)
    recorded = len(sm.history)
    fired = sm.observe(CLEAR)
    assert [(t.from_state, t.to_state, t.event) for t in fired] == [(state, target, E.TIMEOUT)]
    assert len(sm.history) == recorded + 1 and sm.history[-1] == fired[0]
    assert fired[0].at == clock.now
    assert sm.entered_at == clock.now


@pytest.mark.parametrize("state", [s for s in State if s not in TIMED])
def test_untimed_states_never_time_out(state: State) -> None:
    clock = FakeClock()
    sm = machine_in(state, clock)
    assert sm.timeout is None and sm.deadline is None
    clock.advance(1e9)
    assert sm.observe(CLEAR) == []


def test_timeouts_are_configurable_and_merged_with_defaults() -> None:
    clock = FakeClock()
    sm = machine_in(S.MOVE, clock, timeouts={S.MOVE: 2.0, S.PAUSED: math.inf})
    assert sm.timeouts[S.DOCK] == 15.0
    clock.advance(2.0)
    assert [t.to_state for t in sm.observe(CLEAR)] == [S.IDLE]
    sm = machine_in(S.PAUSED, clock, timeouts={S.PAUSED: math.inf})
    clock.advance(1e9)
    assert sm.observe(CLEAR) == []


@pytest.mark.parametrize(
    "bad",
    [{S.IDLE: 5.0}, {S.MOVE: 0}, {S.MOVE: -1.0}, {S.MOVE: math.nan}, {S.MOVE: "30"}, {S.MOVE: True}, {"NOPE": 1.0}],
)
def test_invalid_timeouts_are_refused(bad: dict) -> None:
    with pytest.raises(StateMachineError) as info:
        StateMachine(FakeClock(), bad)
    assert info.value.code == "STATE_TIMEOUT_INVALID"


def test_fail_safe_wins_over_timeout() -> None:
    clock = FakeClock()
    sm = machine_in(S.MOVE, clock)
    clock.advance(100)
    assert [t.event for t in sm.observe(broken("estop"))] == [E.ESTOP_TRIGGERED]


@pytest.mark.parametrize("state", [S.MOVE, S.DOCK])
def test_refresh_restarts_timer_in_motion(state: State) -> None:
    seconds, target = TIMED[state]
    clock = FakeClock()
    sm = machine_in(state, clock)
    clock.advance(seconds - 1)
    sm.refresh()
    assert sm.entered_at == clock.now
    clock.advance(seconds - 1)
    assert sm.observe(CLEAR) == []
    clock.advance(1)
    assert [t.to_state for t in sm.observe(CLEAR)] == [target]


@pytest.mark.parametrize("state", [s for s in State if s not in (S.MOVE, S.DOCK)])
def test_refresh_refused_outside_motion(state: State) -> None:
    clock = FakeClock()
    sm = machine_in(state, clock)
    before = snapshot(sm)
    clock.advance(1)
    with pytest.raises(StateMachineError) as info:
        sm.refresh()
    assert info.value.code == "STATE_REFRESH_NOT_ALLOWED"
    assert snapshot(sm) == before


# -- motion_allowed ------------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(State))
def test_motion_allowed_only_in_motion_states(state: State) -> None:
    assert machine_in(state).motion_allowed(CLEAR) is (state in (S.MOVE, S.DOCK))


@pytest.mark.parametrize("name", list(BREAKS))
def test_motion_allowed_checks_each_condition(name: str) -> None:
    assert machine_in(S.MOVE).motion_allowed(broken(name)) is False
    # Docking does not need the move target.
    assert machine_in(S.DOCK).motion_allowed(broken(name)) is (name == "target")


# -- inputs and records -------------------------------------------------------------------------


def test_events_may_be_given_as_strings_but_unknown_ones_are_refused() -> None:
    sm = StateMachine(FakeClock())
    assert sm.handle("BOOT_COMPLETE", CLEAR).to_state is S.INIT
    with pytest.raises(StateMachineError) as info:
        sm.handle("FLY", CLEAR)
    assert info.value.code == "STATE_EVENT_UNKNOWN"
    assert sm.state is S.INIT


def test_conditions_are_validated_and_frozen() -> None:
    assert replace(CLEAR, latched_faults={"A"}).latched_faults == frozenset({"A"})  # type: ignore[arg-type]
    for bad in ({"latched_faults": "A"}, {"latched_faults": {""}}, {"estop_active": 0}, {"safety_ok": None}):
        with pytest.raises(StateMachineError) as info:
            replace(CLEAR, **bad)
        assert info.value.code == "STATE_CONDITIONS_INVALID"
    with pytest.raises(AttributeError):
        CLEAR.estop_active = True  # type: ignore[misc]
    with pytest.raises(StateMachineError):
        StateMachine(FakeClock()).observe({"estop_active": True})  # type: ignore[arg-type]


def test_history_is_bounded_and_a_copy() -> None:
    sm = StateMachine(FakeClock(), history_size=3)
    for event in PATHS[S.PAUSED]:
        sm.handle(event, CLEAR)
    assert [t.event for t in sm.history] == [E.INIT_COMPLETE, E.MOVE_COMMAND, E.PAUSE_COMMAND]
    sm.history.clear()
    assert len(sm.history) == 3
    with pytest.raises(StateMachineError):
        StateMachine(FakeClock(), history_size=0)


def test_transition_is_plain_data() -> None:
    clock = FakeClock(7.0)
    t = StateMachine(clock).handle(E.BOOT_COMPLETE, CLEAR)
    assert t.as_dict() == {
        "from_state": "BOOT",
        "to_state": "INIT",
        "event": "BOOT_COMPLETE",
        "reason": "BOOT_COMPLETE",
        "at": 7.0,
    }
    with pytest.raises(AttributeError):
        t.to_state = S.MOVE  # type: ignore[misc]


# -- commands ------------------------------------------------------------------------------------

EVERYWHERE = {"stop"}
MAINTENANCE = {"module_reset", "register_write"}
EXPECTED_COMMANDS: dict[State, set[str]] = {
    S.BOOT: EVERYWHERE,
    S.INIT: EVERYWHERE,
    S.IDLE: EVERYWHERE | MAINTENANCE | {"move", "hoist", "dock", "undock", "charge_start", "charge_stop"},
    S.MOVE: EVERYWHERE | {"pause", "dock"},
    S.DOCK: EVERYWHERE | {"move"},
    S.PAUSED: EVERYWHERE | {"resume"},
    S.CONFIG: EVERYWHERE | MAINTENANCE,
    S.FAULT: EVERYWHERE | MAINTENANCE,
    S.ESTOP: EVERYWHERE,
    S.SAFE: EVERYWHERE | MAINTENANCE,
    S.SHUTDOWN: EVERYWHERE,
}


# What the catalogue allows, state by state (the catalogue holds it per command type).
COMMANDS_ALLOWED: dict[State, set[str]] = {
    state: {spec.name.value for spec in CATALOGUE.values() if state in spec.allowed_in} for state in State
}


def test_commands_allowed_table() -> None:
    assert COMMANDS_ALLOWED == EXPECTED_COMMANDS


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("kind", [c.value for c in CommandType])
def test_command_allowed(state: State, kind: str) -> None:
    refusal = command_allowed(state, kind)
    if kind in EXPECTED_COMMANDS[state]:
        assert refusal is None
    else:
        assert isinstance(refusal, Refusal)
        assert refusal.code == "STATE_COMMAND_NOT_ALLOWED"
        assert refusal.command == kind and refusal.state is state
        assert kind in refusal.message and "stop" in refusal.hint


def test_commands_agree_with_the_transition_table() -> None:
    """A command that raises an event is allowed only where the table accepts that event, and the
    commands raising one event together cover every state that accepts it (stop raises none: it
    is allowed everywhere and is a no-op where nothing moves)."""
    covered: dict[Event, set[State]] = {}
    for spec in CATALOGUE.values():
        if spec.event is None:
            continue
        for state in spec.allowed_in:
            assert (state, spec.event) in ROW_KEYS, (spec.name, state)
        covered.setdefault(spec.event, set()).update(spec.allowed_in)
    for event, states in covered.items():
        assert states == {src for src, ev in ROW_KEYS if ev is event}, event


def test_no_motion_or_maintenance_command_while_stopped_by_safety() -> None:
    for state in (S.ESTOP, S.BOOT, S.INIT, S.SHUTDOWN):
        assert COMMANDS_ALLOWED[state] == {"stop"}
    for kind in ("move", "hoist", "dock", "undock", "module_reset", "register_write"):
        for state in (S.MOVE, S.DOCK, S.PAUSED):
            if kind in EXPECTED_COMMANDS[state]:
                continue
            assert command_allowed(state, kind) is not None


def test_unknown_command_and_state() -> None:
    refusal = command_allowed(S.IDLE, "teleport")
    assert refusal is not None and refusal.code == "STATE_COMMAND_UNKNOWN"
    assert command_allowed("IDLE", "move") is None
    with pytest.raises(StateMachineError) as info:
        command_allowed("LIMBO", "stop")
    assert info.value.code == "STATE_UNKNOWN"
