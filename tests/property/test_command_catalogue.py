"""The catalogue's allowed states agree with the state machine, for every (type, state) pair.

The robot is driven into each state by a real `StateMachine` (the shared event paths), and the
command's event is offered to it there. The domain is finite, so every pair is checked with all
conditions met; hypothesis adds random conditions, under which a command the catalogue allows
may be refused by a guard but never because the table lacks its event in that state.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from agent.control.catalogue import CATALOGUE, Dispatch, command_allowed
from agent.control.state_machine import Conditions, StateMachine
from agent.control.states import MOTION_STATES, TRANSITIONS, CommandType, Event, State
from tests.state_paths import CLEAR, PATHS

MOVING = MOTION_STATES | {State.PAUSED}  # a motion command runs (or is held) in these


def machine_in(state: State) -> StateMachine:
    sm = StateMachine()
    for event in PATHS[state]:
        sm.handle(event, CLEAR)
    assert sm.state is state
    return sm


def check(kind: CommandType, state: State, conditions: Conditions) -> None:
    spec = CATALOGUE[kind]
    allowed = command_allowed(state, kind.value) is None
    assert allowed == (state in spec.allowed_in), (kind, state)
    if kind is CommandType.STOP:
        assert allowed, f"stop refused in {state}"  # a stop is never refused
        return
    if spec.event is None:
        # Nothing asks the state machine, so nothing may start beside a motion command.
        assert not (allowed and state in MOVING), (kind, state)
        return
    refusal = machine_in(state).can(spec.event, conditions)
    if allowed:
        assert refusal is None or refusal.code == "STATE_GUARD_FAILED", (kind, state, refusal)
    if spec.moves and allowed:
        assert TRANSITIONS[(state, spec.event)][0] in MOTION_STATES, (kind, state)
    if refusal is None:
        # Where the table accepts the event, some command raising it is allowed to.
        raisers = [s for s in CATALOGUE.values() if s.event is spec.event]
        assert any(state in s.allowed_in for s in raisers), (spec.event, state)


def test_every_type_and_state_with_all_conditions_met() -> None:
    for kind in CommandType:
        for state in State:
            check(kind, state, CLEAR)


flags = st.booleans()
conditions = st.builds(
    lambda estop, fault, safety, comms, sensors, location, target, battery: replace(
        CLEAR,
        estop_active=estop,
        latched_faults=frozenset({"BUS_TIMEOUT"}) if fault else frozenset(),
        safety_ok=safety,
        comms_ok=comms,
        sensors_ok=sensors,
        location_ok=location,
        target_valid=target,
        battery_ok=battery,
    ),
    flags,
    flags,
    flags,
    flags,
    flags,
    flags,
    flags,
    flags,
)


@given(kind=st.sampled_from(list(CommandType)), state=st.sampled_from(list(State)), conditions=conditions)
def test_every_type_and_state_under_any_conditions(kind: CommandType, state: State, conditions: Conditions) -> None:
    check(kind, state, conditions)


def test_out_of_band_types_act_on_a_running_command() -> None:
    """Pause and resume only make sense beside a motion command; stop beside anything."""
    for spec in CATALOGUE.values():
        if spec.dispatch is Dispatch.OUT_OF_BAND and spec.name is not CommandType.STOP:
            assert spec.allowed_in <= MOVING and spec.event in {Event.PAUSE_COMMAND, Event.RESUME_COMMAND}, spec.name
