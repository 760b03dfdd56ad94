"""The command catalogue: every type has one complete spec, the checker catches each missing part,
the handlers take the model the spec names, and the README's table is the rendered catalogue."""

from __future__ import annotations

import typing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.api.permissions import COMMAND_TYPE_PERMISSION, command_permission
from agent.auth.permissions import Permission
from agent.control import catalogue
from agent.control.catalogue import (
    CATALOGUE,
    OUT_OF_BAND,
    CommandSpec,
    CommandType,
    catalogue_problems,
    render_markdown,
    spec_for,
    table_in,
    validate_params,
)
from agent.control.executor import Executor
from agent.control.handlers import Outcome
from agent.control.params import CommandParams
from agent.store.commands import CommandRecord
from agent.store.errors import CommandInvalid

README = Path(__file__).resolve().parents[2] / "README.md"
MOVE = CATALOGUE[CommandType.MOVE]


def test_every_command_type_has_exactly_one_complete_spec() -> None:
    assert catalogue_problems(CATALOGUE.values()) == []
    assert list(CATALOGUE) == list(CommandType)
    assert all(kind is spec.name for kind, spec in CATALOGUE.items())


def _not_async(ex: Any, p: Any, record: Any) -> Outcome:
    return Outcome("succeeded")


BROKEN: dict[str, tuple[dict[str, Any], str]] = {
    "no handler": ({"handler": None}, "move: handler is not callable"),
    "handler not async": ({"handler": _not_async}, "move: handler is not a coroutine function"),
    "no permission": ({"permission": None}, "move: permission is not a Permission"),
    "permission as a string": ({"permission": "command"}, "move: permission is not a Permission"),
    "no params model": ({"params": None}, "move: params is not a CommandParams model"),
    "params not a model": ({"params": dict}, "move: params is not a CommandParams model"),
    "no dispatch": ({"dispatch": None}, "move: dispatch is not a Dispatch"),
    "event as a string": ({"event": "MOVE_COMMAND"}, "move: event is neither None nor an Event"),
    "no outbox rule": ({"admitted_when_full": None}, "move: admitted_when_full is not a bool"),
    "no states": ({"allowed_in": frozenset()}, "move: allowed_in must be a non-empty frozenset of State"),
    "states as strings": ({"allowed_in": frozenset({"IDLE"})}, "move: allowed_in must be a non-empty frozenset"),
    "no description": ({"description": " "}, "move: description is empty"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_spec_that_lacks_a_part_is_reported(case: str) -> None:
    changes, expected = BROKEN[case]
    specs = [replace(MOVE, **changes) if s is MOVE else s for s in CATALOGUE.values()]
    problems = catalogue_problems(specs)
    assert any(p.startswith(expected) for p in problems), problems


def test_an_enum_member_without_a_spec_and_a_doubled_spec_are_reported() -> None:
    without_hoist = [s for s in CATALOGUE.values() if s.name is not CommandType.HOIST]
    assert catalogue_problems(without_hoist) == ["hoist: CommandType member without a spec"]
    doubled = [*CATALOGUE.values(), MOVE]
    assert catalogue_problems(doubled) == ["move: 2 specs (one per type)"]


def test_an_incomplete_catalogue_stops_the_import() -> None:
    with pytest.raises(TypeError, match="COMMAND_CATALOGUE_INCOMPLETE: move: handler is not callable"):
        catalogue._index(tuple(replace(s, handler=None) if s is MOVE else s for s in CATALOGUE.values()))


@pytest.mark.parametrize("spec", list(CATALOGUE.values()), ids=lambda s: s.name.value)
def test_each_handler_takes_the_parameter_model_its_spec_names(spec: CommandSpec) -> None:
    hints = typing.get_type_hints(spec.handler, localns={"Executor": Executor, "CommandRecord": CommandRecord})
    assert list(hints) == ["ex", "p", "record", "return"], hints
    assert hints["p"] is spec.params and issubclass(spec.params, CommandParams)
    assert hints["return"] is Outcome


def test_the_api_reads_each_command_permission_from_the_catalogue() -> None:
    for kind, spec in CATALOGUE.items():
        assert command_permission(kind.value) is spec.permission
    assert COMMAND_TYPE_PERMISSION == {"module_reset": Permission.MAINTENANCE, "register_write": Permission.MAINTENANCE}
    assert command_permission("teleport") is Permission.COMMAND  # refused later as COMMAND_INVALID
    assert spec_for("teleport") is None


def test_out_of_band_commands_are_the_ones_that_act_on_the_running_command() -> None:
    assert OUT_OF_BAND == {"stop", "pause", "resume"}


def test_parameters_are_validated_by_the_model_the_spec_names() -> None:
    assert validate_params("move", {"direction": "forward", "speed_pct": 20, "distance_cm": 10}) == {
        "direction": "forward",
        "speed_pct": 20,
        "distance_cm": 10,
    }
    assert validate_params("register_write", {"role": "power", "register": "V_SET", "value": 24}) == {
        "role": "power",
        "register": "V_SET",
        "value": 24,
    }
    with pytest.raises(CommandInvalid, match="exactly one of distance_cm or duration_ms"):
        validate_params("move", {"direction": "forward", "speed_pct": 20})
    with pytest.raises(CommandInvalid, match="unknown command type 'teleport'") as info:
        validate_params("teleport", {})
    assert "move" in info.value.hint


def test_the_readme_command_table_is_the_rendered_catalogue() -> None:
    table = table_in(README.read_text(encoding="utf-8"))
    assert table is not None, f"README.md lacks the {catalogue.MARKER_START!r} ... {catalogue.MARKER_END!r} block"
    assert table == render_markdown(), (
        "README.md's command table differs from agent/control/catalogue.py; regenerate it with "
        "`.venv/bin/python -m agent.control.catalogue --update README.md`"
    )


def test_the_rendered_table_shows_each_part_of_a_spec() -> None:
    rows = {line.split(" | ")[0].strip("| `"): line for line in render_markdown().splitlines()[2:]}
    assert list(rows) == [kind.value for kind in CommandType]
    assert "`distance_cm` 1-300 (optional)" in rows["move"] and "exactly one of" in rows["move"]
    assert "| every state |" in rows["stop"] and "| taken |" in rows["stop"] and "at once" in rows["stop"]
    assert "`maintenance`" in rows["register_write"] and "IDLE, CONFIG, FAULT, SAFE" in rows["register_write"]
    assert "`voltage_v` >0-60 (default 25.2)" in rows["charge_start"] and "| none |" in rows["charge_stop"]
