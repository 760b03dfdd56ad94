"""Which commands a full outbox still takes: only those that stop, never one that can start motion.

The rule is a flag of each type's catalogue entry (catalogue.ADMITTED_WHEN_FULL); what it must
satisfy is read from the tables the state machine and the executor run on, so a new command
type or a changed transition that makes an admitted type start motion fails here. The domain is
finite, so every type and state is checked rather than sampled."""

from __future__ import annotations

from agent.control.catalogue import ADMITTED_WHEN_FULL, CATALOGUE, MOTION_TYPES, admitted_when_full
from agent.control.states import MOTION_STATES, TRANSITIONS, CommandType, State


def test_every_admitted_type_is_a_known_command_that_never_leads_into_motion() -> None:
    assert ADMITTED_WHEN_FULL <= set(CommandType)
    assert not ADMITTED_WHEN_FULL & MOTION_TYPES
    for type_ in ADMITTED_WHEN_FULL:
        event = CATALOGUE[CommandType(type_)].event
        for state in State:
            target = TRANSITIONS.get((state, event)) if event is not None else None
            assert target is None or target[0] not in MOTION_STATES, (type_, state, target)


def test_stop_and_pause_are_taken_and_resume_and_every_motion_type_refused() -> None:
    assert admitted_when_full("stop") and admitted_when_full("pause")
    assert not admitted_when_full("resume")
    assert not any(admitted_when_full(t) for t in MOTION_TYPES)
