"""The command catalogue: every command type, said once.

One frozen `CommandSpec` per type holds all that the rest of the agent needs to know about it:
its parameter model, the handler the executor runs, the permission the API demands, whether it
runs at once beside the running command (out of band) or waits its turn in the queue, the
state-machine event it raises, whether it is still taken while the outbox is full, whether it
moves the carriage, the states it may start in, and a line for the README. The enum, the
permission lookup, the allowed-states check, the parameter lookup and the outbox rule are all
read from here, so a new type is one entry, and an entry that lacks a part fails at import.

The permission is named with `agent.auth.permissions.Permission`, a module of names only: the
control layer must not import `agent.api`, and the API's matrix (`agent.api.permissions`)
imports this catalogue instead, so both read the same entry. Importing this module loads no bus
code (the handlers import the executor only for type checking): the gateway can use it.

The README's command table is rendered from here; to regenerate it after a change:

    .venv/bin/python -m agent.control.catalogue --update README.md
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from agent.auth.permissions import Permission
from agent.control import handlers as H
from agent.control import params as P
from agent.control.handlers import Outcome
from agent.control.state_machine import Refusal, StateMachineError
from agent.control.states import Event, State
from agent.store.errors import CommandInvalid

if TYPE_CHECKING:
    from agent.control.executor import Executor
    from agent.store.commands import CommandRecord

__all__ = [
    "ADMITTED_WHEN_FULL",
    "CATALOGUE",
    "MOTION_TYPES",
    "OUT_OF_BAND",
    "CommandSpec",
    "CommandType",
    "Dispatch",
    "admitted_when_full",
    "catalogue_problems",
    "command_allowed",
    "command_permission",
    "render_markdown",
    "spec_for",
    "validate_params",
]


class CommandType(StrEnum):
    """Command types the agent knows (same strings as the command API). Each has one spec below."""

    MOVE = "move"
    STOP = "stop"
    PAUSE = "pause"
    RESUME = "resume"
    HOIST = "hoist"
    DOCK = "dock"
    UNDOCK = "undock"
    CHARGE_START = "charge_start"
    CHARGE_STOP = "charge_stop"
    MODULE_RESET = "module_reset"
    REGISTER_WRITE = "register_write"


class Dispatch(StrEnum):
    """How a stored command is started."""

    QUEUED = "queued"  # one at a time, by priority then arrival
    OUT_OF_BAND = "out_of_band"  # at once, beside the running command, which it acts on


Handler = Callable[["Executor", Any, "CommandRecord"], Awaitable[Outcome]]
"""A command's coroutine: (executor, parsed parameters, stored record) -> the stored outcome."""


@dataclass(frozen=True)
class CommandSpec:
    name: CommandType
    params: type[P.CommandParams]
    handler: Handler
    permission: Permission
    dispatch: Dispatch
    event: Event | None  # raised by the handler; None: the state machine is not involved
    admitted_when_full: bool  # still taken while the outbox refuses commands (it only stops)
    moves: bool  # drives a motor: always has a deadline, withdrawn if still queued at a restart
    allowed_in: frozenset[State]  # where the executor may start it (conditions are the guard's)
    description: str  # what reaches the bus, one line for the README


_ALL_STATES = frozenset(State)
_MAINTENANCE_STATES = frozenset({State.IDLE, State.CONFIG, State.FAULT, State.SAFE})
_IDLE = frozenset({State.IDLE})

_SPECS: tuple[CommandSpec, ...] = (
    CommandSpec(
        name=CommandType.MOVE,
        params=P.MoveParams,
        handler=H.move,
        permission=Permission.COMMAND,
        dispatch=Dispatch.QUEUED,
        event=Event.MOVE_COMMAND,
        admitted_when_full=False,
        moves=True,
        allowed_in=frozenset({State.IDLE, State.DOCK}),
        description="M1 direction, speed (times the safety speed factor), enable; stopped and confirmed at the bound",
    ),
    CommandSpec(
        name=CommandType.STOP,
        params=P.NoParams,
        handler=H.stop,
        permission=Permission.COMMAND,
        dispatch=Dispatch.OUT_OF_BAND,
        event=None,  # the aborted motion's own end raises STOP_COMMAND (settle_after_motion)
        admitted_when_full=True,
        moves=False,
        allowed_in=_ALL_STATES,  # a stop is never refused; where nothing moves it is confirmed anyway
        description="jumps the queue: both channels' enable and speed to 0, confirmed by read-back",
    ),
    CommandSpec(
        name=CommandType.PAUSE,
        params=P.NoParams,
        handler=H.pause,
        permission=Permission.COMMAND,
        dispatch=Dispatch.OUT_OF_BAND,
        event=Event.PAUSE_COMMAND,
        admitted_when_full=True,  # it stops motion; PAUSED holds still
        moves=False,
        # No pause in DOCK: the table has no DOCK -> PAUSED (RESUME would turn a dock into a move).
        allowed_in=frozenset({State.MOVE}),
        description="MOVE -> PAUSED: the outputs stopped and confirmed, the running motion held",
    ),
    CommandSpec(
        name=CommandType.RESUME,
        params=P.NoParams,
        handler=H.resume,
        permission=Permission.COMMAND,
        dispatch=Dispatch.OUT_OF_BAND,
        event=Event.RESUME_COMMAND,
        admitted_when_full=False,  # it starts motion again
        moves=False,  # it continues the paused command, which holds the deadline
        allowed_in=frozenset({State.PAUSED}),
        description="PAUSED -> MOVE under the motion guard: the paused motion re-enabled",
    ),
    CommandSpec(
        name=CommandType.HOIST,
        params=P.HoistParams,
        handler=H.hoist,
        permission=Permission.COMMAND,
        dispatch=Dispatch.QUEUED,
        event=Event.MOVE_COMMAND,
        admitted_when_full=False,
        moves=True,
        allowed_in=_IDLE,
        description="M2 toward the position, stopped and confirmed",
    ),
    CommandSpec(
        name=CommandType.DOCK,
        params=P.DockParams,
        handler=H.dock,
        permission=Permission.COMMAND,
        dispatch=Dispatch.QUEUED,
        event=Event.DOCK_COMMAND,
        admitted_when_full=False,
        moves=True,
        allowed_in=frozenset({State.IDLE, State.MOVE}),
        description="M1 forward, creeping until the dock module reports docked (DOCK_TIMEOUT otherwise)",
    ),
    CommandSpec(
        name=CommandType.UNDOCK,
        params=P.UndockParams,
        handler=H.undock,
        permission=Permission.COMMAND,
        dispatch=Dispatch.QUEUED,
        event=Event.MOVE_COMMAND,
        admitted_when_full=False,
        moves=True,
        allowed_in=_IDLE,
        description="M1 in reverse for the distance, stopped and confirmed",
    ),
    CommandSpec(
        name=CommandType.CHARGE_START,
        params=P.ChargeStartParams,
        handler=H.charge_start,
        permission=Permission.COMMAND,
        dispatch=Dispatch.QUEUED,
        event=None,
        admitted_when_full=False,
        moves=False,
        allowed_in=_IDLE,
        description="power module I_SET, V_SET, CHARGE_REQUEST 1, read back",
    ),
    CommandSpec(
        name=CommandType.CHARGE_STOP,
        params=P.NoParams,
        handler=H.charge_stop,
        permission=Permission.COMMAND,
        dispatch=Dispatch.QUEUED,
        event=None,
        admitted_when_full=True,  # it switches the charger off
        moves=False,
        allowed_in=_IDLE,
        description="power module CHARGE_REQUEST 0, read back",
    ),
    CommandSpec(
        name=CommandType.MODULE_RESET,
        params=P.ModuleResetParams,
        handler=H.module_reset,
        permission=Permission.MAINTENANCE,
        dispatch=Dispatch.QUEUED,
        event=None,
        admitted_when_full=False,
        moves=False,
        allowed_in=_MAINTENANCE_STATES,
        description="RESET_ERROR_CMD (0x0109), identity read back",
    ),
    CommandSpec(
        name=CommandType.REGISTER_WRITE,
        params=P.RegisterWriteParams,
        handler=H.register_write,
        permission=Permission.MAINTENANCE,
        dispatch=Dispatch.QUEUED,
        event=None,
        admitted_when_full=False,
        moves=False,
        allowed_in=_MAINTENANCE_STATES,
        description="one profile-checked write, read back; safety-critical registers are refused",
    ),
)


def catalogue_problems(specs: Iterable[object]) -> list[str]:
    """Every way `specs` falls short of one complete spec per command type ([] when none).

    Checked at import (so a gap stops the agent at start, not a stored command at run time) and
    by the tests, which also feed it broken specs to prove each check bites. Each part is read
    with getattr: a broken spec may lack one, or hold a value of the wrong kind.
    """
    problems: list[str] = []
    seen: dict[str, int] = {}
    for spec in specs:
        kind, params, handler = (
            getattr(spec, "name", None),
            getattr(spec, "params", None),
            getattr(spec, "handler", None),
        )
        label = str(kind)
        seen[label] = seen.get(label, 0) + 1
        if not isinstance(kind, CommandType):
            problems.append(f"{label}: name is not a CommandType member")
        if not (isinstance(params, type) and issubclass(params, P.CommandParams)):
            problems.append(f"{label}: params is not a CommandParams model")
        if not callable(handler):
            problems.append(f"{label}: handler is not callable")
        elif not inspect.iscoroutinefunction(handler):
            problems.append(f"{label}: handler is not a coroutine function (the executor awaits it)")
        if not isinstance(getattr(spec, "permission", None), Permission):
            problems.append(f"{label}: permission is not a Permission")
        if not isinstance(getattr(spec, "dispatch", None), Dispatch):
            problems.append(f"{label}: dispatch is not a Dispatch")
        event = getattr(spec, "event", None)
        if event is not None and not isinstance(event, Event):
            problems.append(f"{label}: event is neither None nor an Event")
        for flag in ("admitted_when_full", "moves"):
            if not isinstance(getattr(spec, flag, None), bool):
                problems.append(f"{label}: {flag} is not a bool")
        allowed_in = getattr(spec, "allowed_in", None)
        if not isinstance(allowed_in, frozenset) or not allowed_in or not all(isinstance(s, State) for s in allowed_in):
            problems.append(f"{label}: allowed_in must be a non-empty frozenset of State")
        description = getattr(spec, "description", None)
        if not isinstance(description, str) or not description.strip():
            problems.append(f"{label}: description is empty")
    for label, count in seen.items():
        if count > 1:
            problems.append(f"{label}: {count} specs (one per type)")
    for member in CommandType:
        if member.value not in seen:
            problems.append(f"{member.value}: CommandType member without a spec")
    return problems


def _index(specs: tuple[CommandSpec, ...]) -> Mapping[CommandType, CommandSpec]:
    problems = catalogue_problems(specs)
    if problems:
        raise TypeError("COMMAND_CATALOGUE_INCOMPLETE: " + "; ".join(problems))
    return MappingProxyType({spec.name: spec for spec in specs})


CATALOGUE: Mapping[CommandType, CommandSpec] = _index(_SPECS)
"""CommandType -> its spec, in declaration order."""

OUT_OF_BAND: frozenset[str] = frozenset(s.name.value for s in _SPECS if s.dispatch is Dispatch.OUT_OF_BAND)
MOTION_TYPES: frozenset[str] = frozenset(s.name.value for s in _SPECS if s.moves)
ADMITTED_WHEN_FULL: frozenset[str] = frozenset(s.name.value for s in _SPECS if s.admitted_when_full)
"""Still accepted while the outbox refuses commands: refusing new commands while results cannot
be kept must never take away the way to stop the robot (`docs/outbox.md`)."""


def spec_for(command_type: str) -> CommandSpec | None:
    """The spec of a command type by its API string, None for an unknown one."""
    try:
        return CATALOGUE[CommandType(command_type)]
    except ValueError:
        return None


def admitted_when_full(command_type: str) -> bool:
    """Whether a new command of this type is accepted while the outbox refuses commands."""
    return command_type in ADMITTED_WHEN_FULL


def command_permission(command_type: str) -> Permission:
    """The permission a command type needs; an unknown type needs the ordinary one (and is then
    refused by validation, so an unknown name never reveals more than a known one)."""
    spec = spec_for(command_type)
    return spec.permission if spec is not None else Permission.COMMAND


def validate_params(command_type: str, params: Any) -> dict[str, Any]:
    """The parameters as they are stored, or CommandInvalid saying what is wrong."""
    spec = spec_for(command_type)
    if spec is None:
        raise CommandInvalid(
            f"unknown command type {command_type!r}",
            hint=f"use one of: {', '.join(sorted(CommandType))}",
        )
    if not isinstance(params, dict):
        raise CommandInvalid("params must be a JSON object", hint="send {} when a command takes no parameters")
    try:
        parsed = spec.params.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors())
        raise CommandInvalid(
            f"invalid parameters for {command_type}: {problems}",
            hint=f"see the {command_type} parameters in the README",
        ) from None
    return parsed.model_dump(exclude_none=True, by_alias=True)


def command_allowed(state: State | str, command_type: str) -> Refusal | None:
    """None when the executor may start `command_type` in `state`, else why not.

    This only answers "in which state"; the conditions are judged by the state machine's guard
    for the command's event when the handler raises it.
    """
    try:
        state = State(state)
    except ValueError:
        raise StateMachineError(
            f"unknown state {state!r}", code="STATE_UNKNOWN", hint="states: " + ", ".join(State)
        ) from None
    spec = spec_for(command_type)
    if spec is None:
        return Refusal(
            code="STATE_COMMAND_UNKNOWN",
            message=f"unknown command type {command_type!r}",
            hint="command types: " + ", ".join(c.value for c in CommandType),
            state=state,
            command=str(command_type),
        )
    if state in spec.allowed_in:
        return None
    listed = ", ".join(s.name.value for s in _SPECS if state in s.allowed_in)
    return Refusal(
        code="STATE_COMMAND_NOT_ALLOWED",
        message=f"command {spec.name.value} is not allowed in state {state.value}",
        hint=f"in {state.value} the robot accepts the commands: {listed}",
        state=state,
        command=spec.name.value,
    )


# ---------------------------------------------------------------------- the README's table
MARKER_START = "<!-- commands:start (generated by python -m agent.control.catalogue --update README.md) -->"
MARKER_END = "<!-- commands:end -->"


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _describe_field(name: str, schema: Mapping[str, Any], required: bool) -> str:
    alternatives = schema.get("anyOf", [schema])
    concrete = [a for a in alternatives if a.get("type") != "null"]
    parts: list[str] = []
    for alt in concrete:
        if "enum" in alt:
            parts.append("/".join(str(v) for v in alt["enum"]))
        elif "minimum" in alt or "exclusiveMinimum" in alt or "maximum" in alt:
            low = _number(alt["minimum"]) if "minimum" in alt else f">{_number(alt.get('exclusiveMinimum', ''))}"
            parts.append(f"{low}-{_number(alt.get('maximum', ''))}")
        elif "maxLength" in alt:
            parts.append(f"text of {alt.get('minLength', 0)}-{alt['maxLength']} characters")
    if not parts and len(concrete) > 1:
        parts.append("number")
    text = f"`{name}`" + (f" {' or '.join(parts)}" if parts else "")
    if "default" in schema and schema["default"] is not None:
        text += f" (default {_number(schema['default'])})"
    elif not required:
        text += " (optional)"
    return text


def describe_params(model: type[BaseModel]) -> str:
    """The parameters of a model as the README lists them, read from its JSON schema."""
    schema = model.model_json_schema(by_alias=True)
    required = set(schema.get("required", []))
    fields = [_describe_field(name, prop, name in required) for name, prop in schema.get("properties", {}).items()]
    text = ", ".join(fields) if fields else "none"
    rule = getattr(model, "rule", "")
    return f"{text}; {rule}" if rule else text


def _states(spec: CommandSpec) -> str:
    if spec.allowed_in == _ALL_STATES:
        return "every state"
    return ", ".join(s.value for s in State if s in spec.allowed_in)


def render_markdown(specs: Iterable[CommandSpec] = _SPECS) -> str:
    """The README's command table, one row per type, in catalogue order."""
    rows = [
        "| type | parameters | allowed in | permission | runs | outbox full | what reaches the bus |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in specs:
        runs = "at once, beside the running command" if spec.dispatch is Dispatch.OUT_OF_BAND else "queued"
        full = "taken" if spec.admitted_when_full else "refused"
        rows.append(
            f"| `{spec.name.value}` | {describe_params(spec.params)} | {_states(spec)} | `{spec.permission.value}` "
            f"| {runs} | {full} | {spec.description} |"
        )
    return "\n".join(rows) + "\n"


_BLOCK = re.compile(re.escape(MARKER_START) + r"\n(.*?)" + re.escape(MARKER_END), re.DOTALL)


def table_in(text: str) -> str | None:
    """The table between the markers of a document (None when the markers are missing)."""
    match = _BLOCK.search(text)
    return match.group(1) if match else None


def with_table(text: str) -> str:
    """`text` with the table between its markers replaced by the rendered one."""
    if table_in(text) is None:
        raise ValueError(f"no {MARKER_START!r} ... {MARKER_END!r} block to update")
    return _BLOCK.sub(lambda _: f"{MARKER_START}\n{render_markdown()}{MARKER_END}", text, count=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.control.catalogue", description="The command catalogue.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the command table as markdown")
    group.add_argument("--update", metavar="FILE", type=Path, help="rewrite the table between the markers of FILE")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(render_markdown())
        return 0
    path: Path = args.update
    path.write_text(with_table(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
