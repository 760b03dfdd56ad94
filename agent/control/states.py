"""States, events and guards of the robot, as plain data.

Everything the state machine decides is written down here as tables, so that the tests, the API
and the technician's documentation can read the same source: which event leads from which state
to which state, which conditions each guard demands and how long a state may last.
`state_machine.py` only interprets these tables. Which command types may start in which state,
and which event each raises, is part of each type's entry in `agent.control.catalogue`.

The transition table follows the OHT-50 master's (docs/firmware.md#the-old-masters-state-machine)
with two repairs and without its shortcuts:

- SAFE and CONFIG also go to ESTOP on ESTOP_TRIGGERED, and to FAULT on FAULT_DETECTED (the master
  silently dropped those events, so an E-stop in SAFE or a fault during configuration was lost);
- ESTOP -> IDLE needs the E-stop input released, no latched fault and a good safety verdict (the
  master only checked "no fault" and never read the pin), and entering IDLE never declares the
  robot safe by itself (the master set `safety_ok=true` on every entry into IDLE);
- BOOT and INIT time out into FAULT: a start-up that hangs must end in a stop, not in silence.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING


class State(StrEnum):
    """Operating state of the robot. String values so that they store and serialise as-is."""

    BOOT = "BOOT"
    INIT = "INIT"
    IDLE = "IDLE"
    MOVE = "MOVE"
    DOCK = "DOCK"
    PAUSED = "PAUSED"
    CONFIG = "CONFIG"
    FAULT = "FAULT"
    ESTOP = "ESTOP"
    SAFE = "SAFE"
    SHUTDOWN = "SHUTDOWN"


INITIAL_STATE = State.BOOT


class Event(StrEnum):
    """Something that asks the state machine to change state."""

    BOOT_COMPLETE = "BOOT_COMPLETE"
    INIT_COMPLETE = "INIT_COMPLETE"
    MOVE_COMMAND = "MOVE_COMMAND"
    DOCK_COMMAND = "DOCK_COMMAND"
    CONFIG_COMMAND = "CONFIG_COMMAND"
    CONFIG_COMPLETE = "CONFIG_COMPLETE"
    CONFIG_FAILED = "CONFIG_FAILED"
    STOP_COMMAND = "STOP_COMMAND"
    PAUSE_COMMAND = "PAUSE_COMMAND"
    RESUME_COMMAND = "RESUME_COMMAND"
    ESTOP_TRIGGERED = "ESTOP_TRIGGERED"
    ESTOP_RESET = "ESTOP_RESET"
    FAULT_DETECTED = "FAULT_DETECTED"
    FAULT_CLEARED = "FAULT_CLEARED"
    SAFE_RESET = "SAFE_RESET"
    SHUTDOWN = "SHUTDOWN"
    TIMEOUT = "TIMEOUT"


class Requirement(StrEnum):
    """One condition a guard can demand. The value is how a failure is named in a refusal."""

    ESTOP_RELEASED = "estop_active"
    NO_LATCHED_FAULT = "latched fault"
    SAFETY_OK = "not safety_ok"
    COMMS_OK = "not comms_ok"
    SENSORS_OK = "not sensors_ok"
    LOCATION_OK = "not location_ok"
    TARGET_VALID = "not target_valid"
    BATTERY_OK = "not battery_ok"


# Order in which failed requirements are reported: most fundamental first, so that the first
# word of a refusal is the thing the technician should look at first.
REQUIREMENT_ORDER: tuple[Requirement, ...] = tuple(Requirement)

REQUIREMENT_HINTS: Mapping[Requirement, str] = MappingProxyType(
    {
        Requirement.ESTOP_RELEASED: "release the E-stop button / input",
        Requirement.NO_LATCHED_FAULT: "remove the cause of each latched fault, then reset it",
        Requirement.SAFETY_OK: "check the safety verdict (protective or emergency stop active)",
        Requirement.COMMS_OK: "check the RS485 link and that every mandatory module answers",
        Requirement.SENSORS_OK: "sensor readings are stale; check the modules are being polled",
        Requirement.LOCATION_OK: "position is unknown; re-anchor the carriage",
        Requirement.TARGET_VALID: "the move target is missing or outside the track",
        Requirement.BATTERY_OK: "battery below the configured minimum; charge first",
    }
)


class Guard(StrEnum):
    """Named guard of a transition; its requirements are in `GUARD_REQUIREMENTS`."""

    MOTION = "MOTION"
    DOCK = "DOCK"
    CONFIG = "CONFIG"
    FAULT_CLEAR = "FAULT_CLEAR"
    ESTOP_RESET = "ESTOP_RESET"
    SAFE_RESET = "SAFE_RESET"


_ALL = frozenset(Requirement)

GUARD_REQUIREMENTS: Mapping[Guard, frozenset[Requirement]] = MappingProxyType(
    {
        # Motion needs everything: any single doubt is a reason not to move.
        Guard.MOTION: _ALL,
        # Docking uses the dock module's own target, so the move target does not matter.
        Guard.DOCK: _ALL - {Requirement.TARGET_VALID},
        # Configuration writes registers but moves nothing.
        Guard.CONFIG: frozenset({Requirement.SAFETY_OK, Requirement.NO_LATCHED_FAULT}),
        Guard.FAULT_CLEAR: frozenset({Requirement.NO_LATCHED_FAULT, Requirement.ESTOP_RELEASED, Requirement.SAFETY_OK}),
        # The master's shortcut checked only "no fault"; the pin and the verdict count too.
        Guard.ESTOP_RESET: frozenset({Requirement.ESTOP_RELEASED, Requirement.NO_LATCHED_FAULT, Requirement.SAFETY_OK}),
        Guard.SAFE_RESET: frozenset(
            {
                Requirement.ESTOP_RELEASED,
                Requirement.NO_LATCHED_FAULT,
                Requirement.SAFETY_OK,
                Requirement.COMMS_OK,
                Requirement.SENSORS_OK,
            }
        ),
    }
)


def _build_transitions() -> dict[tuple[State, Event], tuple[State, Guard | None]]:
    S, E, G = State, Event, Guard
    table: dict[tuple[State, Event], tuple[State, Guard | None]] = {}

    def add(sources: tuple[State, ...], event: Event, target: State, guard: Guard | None = None) -> None:
        for source in sources:
            key = (source, event)
            assert key not in table, f"duplicate transition {key}"
            table[key] = (target, guard)

    # E-stop from everywhere except SHUTDOWN; in ESTOP it is accepted and stays (a repeated press).
    add(
        (S.BOOT, S.INIT, S.IDLE, S.MOVE, S.DOCK, S.FAULT, S.PAUSED, S.CONFIG, S.SAFE, S.ESTOP),
        E.ESTOP_TRIGGERED,
        S.ESTOP,
    )
    add(
        (S.BOOT, S.INIT, S.IDLE, S.MOVE, S.DOCK, S.PAUSED, S.CONFIG, S.ESTOP, S.SAFE),
        E.FAULT_DETECTED,
        S.FAULT,
    )
    add((S.BOOT,), E.BOOT_COMPLETE, S.INIT)
    add((S.BOOT,), E.TIMEOUT, S.FAULT)
    add((S.INIT,), E.INIT_COMPLETE, S.IDLE)
    add((S.INIT,), E.TIMEOUT, S.FAULT)
    add((S.IDLE,), E.MOVE_COMMAND, S.MOVE, G.MOTION)
    add((S.IDLE,), E.DOCK_COMMAND, S.DOCK, G.DOCK)
    add((S.IDLE,), E.CONFIG_COMMAND, S.CONFIG, G.CONFIG)
    add((S.IDLE, S.FAULT, S.ESTOP, S.SAFE), E.SHUTDOWN, S.SHUTDOWN)
    add((S.MOVE,), E.STOP_COMMAND, S.IDLE)
    add((S.MOVE,), E.TIMEOUT, S.IDLE)
    add((S.MOVE,), E.DOCK_COMMAND, S.DOCK, G.DOCK)
    add((S.MOVE,), E.PAUSE_COMMAND, S.PAUSED)
    add((S.DOCK,), E.STOP_COMMAND, S.IDLE)
    add((S.DOCK,), E.TIMEOUT, S.IDLE)
    add((S.DOCK,), E.MOVE_COMMAND, S.MOVE, G.MOTION)
    add((S.PAUSED,), E.RESUME_COMMAND, S.MOVE, G.MOTION)
    add((S.PAUSED,), E.STOP_COMMAND, S.IDLE)
    add((S.PAUSED,), E.TIMEOUT, S.IDLE)
    add((S.CONFIG,), E.CONFIG_COMPLETE, S.IDLE)
    add((S.CONFIG,), E.TIMEOUT, S.IDLE)
    add((S.CONFIG,), E.CONFIG_FAILED, S.FAULT)
    add((S.FAULT,), E.FAULT_CLEARED, S.IDLE, G.FAULT_CLEAR)
    add((S.ESTOP,), E.ESTOP_RESET, S.IDLE, G.ESTOP_RESET)
    add((S.FAULT, S.ESTOP), E.SAFE_RESET, S.SAFE, G.SAFE_RESET)
    add((S.SAFE,), E.SAFE_RESET, S.IDLE, G.SAFE_RESET)
    return table


TRANSITIONS: Mapping[tuple[State, Event], tuple[State, Guard | None]] = MappingProxyType(_build_transitions())
"""(from state, event) -> (to state, guard or None). A pair that is missing is refused."""


def events_from(state: State) -> tuple[Event, ...]:
    """Events the table accepts in `state`, in declaration order (used in refusal hints)."""
    return tuple(event for event in Event if (state, event) in TRANSITIONS)


DEFAULT_TIMEOUTS: Mapping[State, float] = MappingProxyType(
    {
        State.BOOT: 10.0,
        State.INIT: 5.0,
        State.MOVE: 30.0,
        State.PAUSED: 60.0,
        State.DOCK: 15.0,
        State.CONFIG: 10.0,
    }
)
"""Seconds a state may last before `observe` fires TIMEOUT; states not listed never time out."""

TIMEOUT_TARGETS: Mapping[State, State] = MappingProxyType(
    {state: TRANSITIONS[(state, Event.TIMEOUT)][0] for state in State if (state, Event.TIMEOUT) in TRANSITIONS}
)

# States that move the carriage; `refresh()` is only meaningful here.
MOTION_STATES: frozenset[State] = frozenset({State.MOVE, State.DOCK})

# Which guard keeps each motion state alive (used by `StateMachine.motion_allowed`).
MOTION_STATE_GUARDS: Mapping[State, Guard] = MappingProxyType({State.MOVE: Guard.MOTION, State.DOCK: Guard.DOCK})


if TYPE_CHECKING:
    from agent.control.catalogue import CommandType as CommandType
else:

    def __getattr__(name: str) -> object:
        """`from agent.control.states import CommandType` keeps working: the enum is defined with
        its specs in `agent.control.catalogue`, which imports this module, so it is fetched on
        first use instead of imported here (an import at the top would be circular)."""
        if name == "CommandType":
            from agent.control.catalogue import CommandType

            return CommandType
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
