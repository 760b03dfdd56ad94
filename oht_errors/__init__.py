"""Errors with a stable code, a kind and a hint for the technician.

Every error that can reach a log line, a CLI message or an API response derives from
`CodedError`, so that whoever reads it gets the same machine-readable `code` in every release,
a `kind` that says what the caller can do about it (the HTTP layer answers with the status of
the kind, agent/api/errors.py) and a `hint` that says what to check on the robot, not only what
went wrong.

This package sits below everything else: it imports nothing from agent/, drivers/ or central/,
so the bus drivers, the core and the gateway share one root without importing each other. The
list of every code (`oht_errors.catalogue`) is the one module here that imports them all.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

__all__ = ["CodedError", "ErrorKind", "declares_kind"]


class ErrorKind(enum.StrEnum):
    """What the caller can do about an error; one HTTP status per kind (agent/api/errors.py)."""

    MALFORMED = "malformed"  # the request cannot be read at all: send well-formed JSON
    INVALID = "invalid"  # the request is readable but a value is refused: fix the value
    UNAUTHENTICATED = "unauthenticated"  # no valid credentials: log in (again)
    FORBIDDEN = "forbidden"  # the credentials do not allow this: ask an admin
    NOT_FOUND = "not_found"  # no such thing: check the id or name
    METHOD_NOT_ALLOWED = "method_not_allowed"  # the resource exists but not for this method
    CONFLICT = "conflict"  # the request clashes with the current state: look at it, then decide
    PAYLOAD_TOO_LARGE = "payload_too_large"  # the body is over the limit: send less
    TOO_MANY_REQUESTS = "too_many_requests"  # slow down: wait before retrying
    UNAVAILABLE = "unavailable"  # the agent cannot do it now (bus, store, core): retry later
    INTERNAL = "internal"  # a bug or an unexpected condition: report it with the log


def declares_kind(cls: type[CodedError]) -> bool:
    """Whether `cls` or one of its bases below `CodedError` sets `kind` (the root's is only a fallback)."""
    return any("kind" in vars(base) for base in cls.__mro__ if issubclass(base, CodedError) and base is not CodedError)


class CodedError(Exception):
    """An error with a stable `code` (UPPER_SNAKE), a `kind` and an actionable `hint`.

    A subclass sets the three as class attributes. When one class stands for several closely
    related codes (a store failure: disk full, read-only, ...), it lists the others in `variants`
    (code -> hint) and the raise site passes `code=`; a variant has the kind of its class.
    """

    code: str = "INTERNAL"
    hint: str = ""
    kind: ErrorKind = ErrorKind.INTERNAL
    variants: ClassVar[Mapping[str, str]] = MappingProxyType({})

    def __init__(
        self, message: str, *, code: str | None = None, hint: str | None = None, kind: ErrorKind | None = None
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if hint is not None:
            self.hint = hint
        if kind is not None:
            self.kind = kind

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code

    def as_dict(self) -> dict[str, str]:
        out = {"code": self.code, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        return out

    def __str__(self) -> str:  # "CODE: message (hint: ...)" reads well in logs and on a terminal
        text = f"{self.code}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text
