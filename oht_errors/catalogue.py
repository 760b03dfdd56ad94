"""Every code the agent can show, with where it shows up, what it means and what to check.

The one module that imports all the others: it imports every module that declares codes (error
classes, the fault catalogue, the command result codes, the API's own codes), walks the
subclasses of `CodedError` and returns one `Entry` per code. Nothing imports it but its test and
the generator of docs/codes.md:

    .venv/bin/python -m oht_errors.catalogue > docs/codes.md

It runs from the source tree (it reads central/, which is not installed with the agent).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from oht_errors import CodedError, ErrorKind, declares_kind

__all__ = ["ERROR_MODULES", "Entry", "collect", "error_classes", "problems", "render"]

# Every module that defines a CodedError subclass; the test fails on a subclass defined elsewhere.
ERROR_MODULES = (
    "agent.api.errors",
    "agent.api.origins",
    "agent.api.server",
    "agent.api.tls",
    "agent.auth.errors",
    "agent.config",
    "agent.control.errors",
    "agent.control.executor",
    "agent.control.plant",
    "agent.control.state_machine",
    "agent.link.protocol",
    "agent.store.commands",
    "agent.store.errors",
    "agent.sync.errors",
    "agent.sync.mqtt_link",
    "central.errors",
    "drivers.gpio",
    "drivers.modbus.errors",
    "drivers.modbus.interlock",
    "drivers.profiles.errors",
)

# Classes that another declaration replaced and that stay only until their module drops them:
# agent.control.status_view is being retyped elsewhere, and its ModuleNotFound moved to
# agent.control.errors (which is what the controller and the link client raise).
SUPERSEDED: frozenset[str] = frozenset()

CODE_RE = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*$")

# Where a class's codes show up, by the module that declares it (longest prefix wins).
_WHERE = {
    "agent": "API error, log",
    "agent.store": "API error, CLI, log",
    "agent.store.errors.Backup": "CLI",
    "agent.config": "start-up, CLI",
    "agent.api.server": "start-up",
    "agent.api.tls": "start-up",
    "agent.sync": "upstream receipt, log, CLI",
    "agent.sync.mqtt_link": "log",
    "drivers": "log, discovery, API error",
    "drivers.gpio": "start-up",
    "central": "central consumer",
}


@dataclass(frozen=True)
class Entry:
    code: str
    origin: str  # "error" | "api" | "audit" | "fault" | "result"
    where: str
    meaning: str
    hint: str
    kind: ErrorKind | None
    source: str  # the declaration: module.Class, or the table


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _where(source: str) -> str:
    best = max((p for p in _WHERE if source.startswith(p)), key=len)
    return _WHERE[best]


def _import_all() -> None:
    for name in ERROR_MODULES:
        importlib.import_module(name)


def _walk(cls: type[CodedError]) -> Iterator[type[CodedError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _walk(sub)


def error_classes() -> list[type[CodedError]]:
    """Every CodedError subclass (once each), after importing every module that declares some."""
    _import_all()
    seen: dict[str, type[CodedError]] = {}
    for cls in _walk(CodedError):
        name = _qualname(cls)
        if name not in SUPERSEDED and not name.startswith(("tests.", "__main__.")):
            seen.setdefault(name, cls)
    return sorted(seen.values(), key=_qualname)


def _meaning(cls: type) -> str:
    doc = vars(cls).get("__doc__")
    if not doc:
        return ""
    first = inspect.cleandoc(doc).split("\n\n")[0].replace("\n", " ")
    return "" if first.startswith("Base class") else first  # about the code's structure, not the robot


def _class_entries(cls: type[CodedError]) -> Iterator[Entry]:
    source = _qualname(cls)
    where = _where(source)
    if "code" in vars(cls):
        yield Entry(cls.code, "error", where, _meaning(cls), cls.hint, cls.kind if declares_kind(cls) else None, source)
    for code, hint in vars(cls).get("variants", {}).items():
        yield Entry(code, "error", where, "", hint, cls.kind if declares_kind(cls) else None, f"{source} (variant)")


def _api_entries() -> Iterator[Entry]:
    from agent.api.errors import API_CODES

    for code, api in API_CODES.items():
        yield Entry(code, "api", "API error", api.meaning, api.hint, api.kind, "agent.api.errors.API_CODES")


def _fault_entries() -> Iterator[Entry]:
    from agent.safety.faults import CATALOGUE

    for code, spec in CATALOGUE.items():
        latch = "latched until reset" if spec.latched else "clears by itself"
        meaning = f"Fault, level {spec.level.label}, {latch}."
        yield Entry(
            code, "fault", "fault (status, alarm, command result)", meaning, spec.hint, None, "agent.safety.faults"
        )


def _audit_entries() -> Iterator[Entry]:
    from agent.auth.auditing import AUDIT_CODES

    for code, hint in AUDIT_CODES.items():
        yield Entry(code, "audit", "audit log", "", hint, None, "agent.auth.auditing.AUDIT_CODES")


def _result_entries() -> Iterator[Entry]:
    from agent.control.results import RESULTS

    for code, info in RESULTS.items():
        yield Entry(code.value, "result", "command result", info.meaning, info.hint, None, "agent.control.results")


def collect() -> list[Entry]:
    """Every declared code, sorted by code (a code a fault and an error share appears once for each)."""
    entries = [e for cls in error_classes() for e in _class_entries(cls)]
    entries += [*_api_entries(), *_audit_entries(), *_fault_entries(), *_result_entries()]
    return sorted(entries, key=lambda e: (e.code, e.origin, e.source))


def problems(entries: Iterable[Entry], classes: Iterable[type[CodedError]] = ()) -> list[str]:
    """What breaks the rules of codes; empty when the catalogue is sound.

    A code is UPPER_SNAKE and has a hint; an error class declares its kind (or inherits one from a
    base below CodedError). A code may be declared once per origin, or several times with the same
    hint and kind; a fault and an error may share a code (the same condition, seen by the
    supervisor and by the caller), a command result code is declared nowhere else.
    """
    out: list[str] = []
    by_code: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        by_code[e.code].append(e)
        if not CODE_RE.match(e.code):
            out.append(f"{e.code!r} ({e.source}) is not UPPER_SNAKE")
        if not e.hint.strip():
            out.append(f"{e.code} ({e.source}) has no hint")
        if e.origin == "error" and e.kind is None:
            out.append(f"{e.code} ({e.source}) has no kind: declare `kind = ErrorKind.<...>` on the class")
    for cls in classes:
        if not declares_kind(cls):
            out.append(f"{_qualname(cls)} declares no kind")
    for code, group in sorted(by_code.items()):
        origins = {e.origin for e in group}
        if "result" in origins and len(group) > 1:
            out.append(
                f"{code} is a command result and also {', '.join(e.source for e in group if e.origin != 'result')}"
            )
        for origin in origins:
            same = [e for e in group if e.origin == origin]
            if len({(e.hint, e.kind) for e in same}) > 1:
                out.append(
                    f"{code} is declared {len(same)} times with different meanings: {', '.join(e.source for e in same)}"
                )
        if origins >= {"api", "error"}:
            out.append(f"{code} is both an API code and an error class: {', '.join(e.source for e in group)}")
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def render(entries: Iterable[Entry]) -> str:
    """docs/codes.md: one row per code and declaration, for a technician."""
    from agent.api.errors import STATUS

    lines = [
        "# Codes",
        "",
        "<!-- Generated by `.venv/bin/python -m oht_errors.catalogue > docs/codes.md`; do not edit by hand. -->",
        "",
        "Every code the agent shows: in an API error (`code` of the JSON body), as a fault (status page,",
        "alarms, `verdict.faults`), as a command's result (`error_code` of a failed or cancelled command),",
        "on the command line or in the log. The HTTP column is the status an API answer with that code",
        "has; it follows from the code's kind (agent/api/errors.py). Codes are stable: new ones are",
        "added, none is renamed.",
        "",
        "| Code | Shows up as | Kind (HTTP) | What it means | What to check |",
        "|---|---|---|---|---|",
    ]
    for e in entries:
        kind = f"{e.kind.value} ({STATUS[e.kind]})" if e.kind is not None else ""
        lines.append(f"| `{e.code}` | {e.where} | {kind} | {_cell(e.meaning)} | {_cell(e.hint)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(collect()), end="")
