"""The robot state machine: pure logic over the tables in `states.py`.

No I/O, no asyncio and no clock of its own: the caller supplies a `Conditions` snapshot with each
event and a clock function at construction, so the same code runs in the control loop, in tests
with a fake clock, and in the property tests. Every result (a `Transition` or a `Refusal`) is a
frozen dataclass of plain values, so the store can record it in the same transaction as its cause.

The control loop calls `observe(conditions)` every cycle. That is where "when in doubt, stop" is
enforced: an active E-stop input sends any state that has an ESTOP_TRIGGERED transition to ESTOP,
a latched fault sends any state that could still command motion to FAULT, and a state that has
outlived its timeout leaves by TIMEOUT. Explicit events go through `handle`, which refuses (and
changes nothing) when the table has no such transition or the guard is not satisfied.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from agent.control.states import (
    DEFAULT_TIMEOUTS,
    GUARD_REQUIREMENTS,
    INITIAL_STATE,
    MOTION_STATE_GUARDS,
    MOTION_STATES,
    REQUIREMENT_HINTS,
    REQUIREMENT_ORDER,
    TIMEOUT_TARGETS,
    TRANSITIONS,
    Event,
    Guard,
    Requirement,
    State,
    events_from,
)
from oht_errors import CodedError, ErrorKind

__all__ = [
    "Conditions",
    "Refusal",
    "StateMachine",
    "StateMachineError",
    "Transition",
    "TransitionRefused",
    "guard_failures",
]

DEFAULT_HISTORY_SIZE = 256

# States that `observe` moves to FAULT when a fault is latched. ESTOP is left out on purpose: it is
# already a stop, its exits check latched faults anyway, and ESTOP -> FAULT -> ESTOP would flap
# while the input is still held. FAULT and SHUTDOWN have nowhere further to go.
_FAULT_ON_OBSERVE: frozenset[State] = frozenset(
    state for (state, event) in TRANSITIONS if event is Event.FAULT_DETECTED and state is not State.ESTOP
)


class StateMachineError(CodedError):
    """Misuse of the state machine (bad argument, refresh outside motion)."""

    code = "STATE_MACHINE_ERROR"
    kind = ErrorKind.CONFLICT
    hint = "The state machine was used wrongly (the message names the argument): a bug in the agent; send the log."
    variants = MappingProxyType(
        {
            "STATE_CONDITIONS_INVALID": "The conditions given to the state machine are malformed: a bug; send the log.",
            "STATE_EVENT_UNKNOWN": "An event name the state machine does not know: a bug; send the log.",
            "STATE_TIMEOUT_INVALID": "A state timeout names an unknown state or is not a positive number: fix it.",
            "STATE_CLOCK_INVALID": "The state machine was given no clock function: a bug; send the log.",
            "STATE_HISTORY_INVALID": "The state machine's history size is not a positive integer: a bug; send the log.",
            "STATE_REFRESH_NOT_ALLOWED": "A motion refresh arrived outside MOVE or DOCK: the motion already ended.",
            "STATE_UNKNOWN": "A state name the agent does not know: the states are listed in the hint.",
        }
    )


@dataclass(frozen=True, slots=True)
class Conditions:
    """What the rest of the agent believes about the robot at one instant.

    Built by the caller (safety supervisor, bus health, executor) for every event; the state
    machine keeps no flags of its own, so nothing here can be set as a side effect of a
    transition (the old master set `safety_ok` on entering IDLE).
    """

    estop_active: bool
    latched_faults: frozenset[str]
    safety_ok: bool  # supervisor verdict is ok or warning
    comms_ok: bool  # every mandatory module answers
    sensors_ok: bool  # readings are fresh
    location_ok: bool
    target_valid: bool
    battery_ok: bool

    def __post_init__(self) -> None:
        # Accept any iterable of codes for convenience but store it frozen; refuse a bare string,
        # which would otherwise be read as one fault per letter.
        faults: object = self.latched_faults  # typed as a frozenset; callers may pass anything
        if isinstance(faults, str) or not isinstance(faults, Iterable):
            raise StateMachineError(
                f"latched_faults must be a set of fault codes, got {type(faults).__name__}",
                code="STATE_CONDITIONS_INVALID",
                hint="pass frozenset({'CODE', ...}) (empty when nothing is latched)",
            )
        faults = frozenset(faults)
        if not all(isinstance(code, str) and code for code in faults):
            raise StateMachineError(
                "latched_faults must contain non-empty strings",
                code="STATE_CONDITIONS_INVALID",
                hint="fault codes are UPPER_SNAKE strings",
            )
        object.__setattr__(self, "latched_faults", faults)
        for name in (
            "estop_active",
            "safety_ok",
            "comms_ok",
            "sensors_ok",
            "location_ok",
            "target_valid",
            "battery_ok",
        ):
            if not isinstance(getattr(self, name), bool):
                raise StateMachineError(
                    f"{name} must be a bool, got {type(getattr(self, name)).__name__}",
                    code="STATE_CONDITIONS_INVALID",
                    hint="build Conditions from explicit True/False values",
                )

    def holds(self, requirement: Requirement) -> bool:
        """Whether one guard requirement is satisfied by this snapshot."""
        if requirement is Requirement.ESTOP_RELEASED:
            return not self.estop_active
        if requirement is Requirement.NO_LATCHED_FAULT:
            return not self.latched_faults
        return bool(getattr(self, _FLAG_OF[requirement]))


_FLAG_OF: dict[Requirement, str] = {
    Requirement.SAFETY_OK: "safety_ok",
    Requirement.COMMS_OK: "comms_ok",
    Requirement.SENSORS_OK: "sensors_ok",
    Requirement.LOCATION_OK: "location_ok",
    Requirement.TARGET_VALID: "target_valid",
    Requirement.BATTERY_OK: "battery_ok",
}


def guard_failures(guard: Guard, conditions: Conditions) -> tuple[str, ...]:
    """Names of the requirements of `guard` that `conditions` fail, most fundamental first.

    A latched fault is named once per code ("latched fault SAFETY_LINK_LOST"), sorted, so the
    text is stable and tells the technician exactly what to clear.
    """
    failed: list[str] = []
    required = GUARD_REQUIREMENTS[guard]
    for requirement in REQUIREMENT_ORDER:
        if requirement not in required or conditions.holds(requirement):
            continue
        if requirement is Requirement.NO_LATCHED_FAULT:
            failed.extend(f"{requirement.value} {code}" for code in sorted(conditions.latched_faults))
        else:
            failed.append(requirement.value)
    return tuple(failed)


def _guard_hint(guard: Guard, conditions: Conditions) -> str:
    required = GUARD_REQUIREMENTS[guard]
    return "; ".join(REQUIREMENT_HINTS[r] for r in REQUIREMENT_ORDER if r in required and not conditions.holds(r))


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an event or command was not accepted. Plain data for the API, the store and logs."""

    code: str  # STATE_EVENT_NOT_ALLOWED | STATE_GUARD_FAILED | STATE_COMMAND_NOT_ALLOWED | ...
    message: str
    hint: str
    state: State
    event: Event | None = None
    command: str | None = None
    failed: tuple[str, ...] = ()  # for STATE_GUARD_FAILED: the unmet conditions

    def as_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
            "state": self.state.value,
            "event": self.event.value if self.event else None,
            "command": self.command,
            "failed": list(self.failed),
        }


class TransitionRefused(StateMachineError):
    """Raised by `StateMachine.handle` when an event is refused; carries the `Refusal`."""

    code = "STATE_EVENT_NOT_ALLOWED"
    hint = "The robot's state does not accept this now: read GET /api/v1/status, wait or reset, then retry."
    variants = MappingProxyType(
        {
            "STATE_GUARD_FAILED": "The event is allowed in this state but a condition is not met (listed in `failed`).",
            "STATE_COMMAND_UNKNOWN": "The command type is unknown to the state machine: check the command's type.",
            "STATE_COMMAND_NOT_ALLOWED": (
                "This command type is not accepted in the current state (the message lists those that are)."
            ),
        }
    )

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message, code=refusal.code, hint=refusal.hint)
        self.refusal = refusal


@dataclass(frozen=True, slots=True)
class Transition:
    """One accepted event. `from_state == to_state` only for a repeated E-stop in ESTOP."""

    from_state: State
    to_state: State
    event: Event
    reason: str
    at: float  # value of the injected clock

    @property
    def changed(self) -> bool:
        return self.from_state is not self.to_state

    def as_dict(self) -> dict[str, object]:
        return {
            "from_state": self.from_state.value,
            "to_state": self.to_state.value,
            "event": self.event.value,
            "reason": self.reason,
            "at": self.at,
        }


def _coerce_event(event: Event | str) -> Event:
    try:
        return Event(event)
    except ValueError:
        raise StateMachineError(
            f"unknown event {event!r}",
            code="STATE_EVENT_UNKNOWN",
            hint="events: " + ", ".join(e.value for e in Event),
        ) from None


def _check_conditions(conditions: object) -> Conditions:
    if not isinstance(conditions, Conditions):
        raise StateMachineError(
            f"conditions must be a Conditions snapshot, got {type(conditions).__name__}",
            code="STATE_CONDITIONS_INVALID",
            hint="build a Conditions from the current supervisor verdict and bus health",
        )
    return conditions


def _validated_timeouts(overrides: Mapping[State, float] | None) -> dict[State, float]:
    timeouts = dict(DEFAULT_TIMEOUTS)
    for key, seconds in (overrides or {}).items():
        try:
            state = State(key)
        except ValueError:
            raise StateMachineError(
                f"timeout for unknown state {key!r}",
                code="STATE_TIMEOUT_INVALID",
                hint="states with a timeout: " + ", ".join(s.value for s in TIMEOUT_TARGETS),
            ) from None
        if state not in TIMEOUT_TARGETS:
            raise StateMachineError(
                f"state {state.value} has no TIMEOUT transition",
                code="STATE_TIMEOUT_INVALID",
                hint="states with a timeout: " + ", ".join(s.value for s in TIMEOUT_TARGETS),
            )
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or math.isnan(seconds) or seconds <= 0:
            raise StateMachineError(
                f"timeout for {state.value} must be a positive number of seconds, got {seconds!r}",
                code="STATE_TIMEOUT_INVALID",
                hint="use e.g. 30.0; math.inf disables the timeout",
            )
        timeouts[state] = float(seconds)
    return timeouts


class StateMachine:
    """The only place that decides which state the robot is in.

    `clock` is any monotonic seconds function (`time.monotonic` in production, a fake in tests);
    `timeouts` overrides the default per-state timeouts (only states with a TIMEOUT transition;
    `math.inf` disables one). `history_size` bounds the in-memory history: the durable record is
    the store's job.
    """

    __slots__ = ("_clock", "_entered_at", "_history", "_state", "_timeouts")

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        timeouts: Mapping[State, float] | None = None,
        *,
        history_size: int = DEFAULT_HISTORY_SIZE,
    ) -> None:
        if not callable(clock):
            raise StateMachineError(
                "clock must be a function returning seconds",
                code="STATE_CLOCK_INVALID",
                hint="pass time.monotonic or a fake clock",
            )
        if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 1:
            raise StateMachineError(
                f"history_size must be a positive int, got {history_size!r}",
                code="STATE_HISTORY_INVALID",
                hint="the history is bounded; use e.g. 256",
            )
        self._clock = clock
        self._timeouts = _validated_timeouts(timeouts)
        self._history: deque[Transition] = deque(maxlen=history_size)
        self._state = INITIAL_STATE
        self._entered_at = clock()

    # -- read-only view -------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def entered_at(self) -> float:
        """Clock value when the current state was entered (or last refreshed)."""
        return self._entered_at

    @property
    def history(self) -> deque[Transition]:
        """A copy of the last `history_size` accepted transitions, oldest first."""
        return deque(self._history, maxlen=self._history.maxlen)

    @property
    def timeouts(self) -> Mapping[State, float]:
        """Effective per-state timeouts in seconds (defaults merged with the overrides)."""
        return MappingProxyType(self._timeouts)

    @property
    def timeout(self) -> float | None:
        """Timeout of the current state in seconds, or None when it never times out."""
        return self._timeouts.get(self._state)

    @property
    def deadline(self) -> float | None:
        """Clock value at which the current state times out, or None."""
        timeout = self.timeout
        return None if timeout is None else self._entered_at + timeout

    # -- decisions ------------------------------------------------------------------------------

    def can(self, event: Event | str, conditions: Conditions) -> Refusal | None:
        """None when `handle(event, conditions)` would be accepted, else the reason it would not."""
        event = _coerce_event(event)
        conditions = _check_conditions(conditions)
        entry = TRANSITIONS.get((self._state, event))
        if entry is None:
            accepted = ", ".join(e.value for e in events_from(self._state)) or "nothing"
            return Refusal(
                code="STATE_EVENT_NOT_ALLOWED",
                message=f"{event.value} is not accepted in state {self._state.value}",
                hint=f"in {self._state.value} the robot accepts: {accepted}",
                state=self._state,
                event=event,
            )
        _target, guard = entry
        if guard is None:
            return None
        failed = guard_failures(guard, conditions)
        if not failed:
            return None
        return Refusal(
            code="STATE_GUARD_FAILED",
            message=f"{event.value} refused in state {self._state.value}: {', '.join(failed)}",
            hint=_guard_hint(guard, conditions),
            state=self._state,
            event=event,
            failed=failed,
        )

    def handle(self, event: Event | str, conditions: Conditions, reason: str = "") -> Transition:
        """Apply one event, or raise `TransitionRefused` and change nothing."""
        event = _coerce_event(event)
        refusal = self.can(event, conditions)
        if refusal is not None:
            raise TransitionRefused(refusal)
        return self._apply(event, reason or event.value)

    def observe(self, conditions: Conditions) -> list[Transition]:
        """One evaluation step of the control loop: fail safe first, then timeouts.

        Returns the transitions fired (empty when nothing had to change). An active E-stop wins
        over a latched fault; a state left for safety reasons does not also time out.
        """
        conditions = _check_conditions(conditions)
        fired: list[Transition] = []
        if conditions.estop_active:
            if self._state is not State.ESTOP and (self._state, Event.ESTOP_TRIGGERED) in TRANSITIONS:
                fired.append(self._apply(Event.ESTOP_TRIGGERED, "E-stop input active"))
            return fired
        if conditions.latched_faults and self._state in _FAULT_ON_OBSERVE:
            codes = ", ".join(sorted(conditions.latched_faults))
            fired.append(self._apply(Event.FAULT_DETECTED, f"latched fault {codes}"))
            return fired
        deadline = self.deadline
        if deadline is not None and self._clock() >= deadline:
            fired.append(self._apply(Event.TIMEOUT, f"{self._state.value} timed out after {self.timeout:g} s"))
        return fired

    def refresh(self, limit: float | None = None) -> None:
        """Restart the current state's timer while a motion command is running and progressing.

        With `limit` (a clock value: the command's own time bound) the state's deadline is never
        moved past it, so no stream of refreshes can keep a motion state alive beyond its bound.
        """
        if self._state not in MOTION_STATES:
            raise StateMachineError(
                f"refresh is only allowed in MOVE or DOCK, not in {self._state.value}",
                code="STATE_REFRESH_NOT_ALLOWED",
                hint="only a running motion command keeps its state alive",
            )
        now = self._clock()
        timeout = self._timeouts.get(self._state)
        if limit is not None and timeout is not None:
            now = max(self._entered_at, min(now, limit - timeout))
        self._entered_at = now

    def motion_allowed(self, conditions: Conditions) -> bool:
        """Whether the executor may keep commanding motion: in MOVE/DOCK and that state's guard holds.

        DOCK is judged by the dock guard (the move target does not matter while docking).
        """
        conditions = _check_conditions(conditions)
        guard = MOTION_STATE_GUARDS.get(self._state)
        return guard is not None and not guard_failures(guard, conditions)

    # -- internals ------------------------------------------------------------------------------

    def _apply(self, event: Event, reason: str) -> Transition:
        target, _guard = TRANSITIONS[(self._state, event)]
        now = self._clock()
        transition = Transition(self._state, target, event, reason, now)
        if transition.changed:
            self._state = target
            self._entered_at = now
        self._history.append(transition)
        return transition
