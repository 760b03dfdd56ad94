"""Coded errors raised by the profile layer.

They are separate classes (not one error with different codes) because callers react to them
differently: a bad profile file stops start-up, an unknown module is a discovery finding, and a
refused write is an answer to one command that must leave the bus untouched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from oht_errors import CodedError, ErrorKind


@dataclass(frozen=True)
class Problem:
    """One defect in one profile file: where (`source`, `key`) and what."""

    source: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.key}: {self.message}"


class ProfileError(CodedError):
    """A profile (or a set of profiles) is invalid; `problems` lists every defect found.

    All defects are reported at once so that a technician fixing a profile does not have to
    iterate file-edit-restart once per mistake.
    """

    code = "PROFILE_INVALID"
    kind = ErrorKind.INVALID
    hint = "Fix the profile files named in the message (every defect is listed), then restart the agent."

    def __init__(self, problems: Iterable[Problem], *, hint: str | None = None) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        count = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        message = f"{count} problem{'s' if count != 1 else ''} in register profiles:\n{lines}"
        if hint is None:
            where: dict[str, list[str]] = {}
            for p in self.problems:
                keys = where.setdefault(p.source, [])
                if p.key not in keys:
                    keys.append(p.key)
            hint = "; ".join(f"edit {src} (keys: {', '.join(keys)})" for src, keys in where.items())
        super().__init__(message, hint=hint)


class UnknownModule(CodedError):
    """No profile matches a module's identity: the agent must not guess a register map."""

    code = "MODULE_UNKNOWN"
    kind = ErrorKind.NOT_FOUND
    hint = (
        "No register profile matches the identity this module reports (DEVICE_ID, MODULE_TYPE, firmware):"
        " install the profile for it, or check that the right module sits at this address."
    )


class UnknownRegister(CodedError, KeyError):
    """A register name is not part of the profile (also a KeyError for mapping-style callers)."""

    code = "REGISTER_UNKNOWN"
    kind = ErrorKind.INVALID
    hint = "Use a register name of the module's profile (GET /api/v1/modules/{role} lists them)."

    def __str__(self) -> str:  # KeyError would otherwise quote the repr
        return CodedError.__str__(self)


class RegisterWriteRefused(CodedError):
    """A write was refused before reaching the bus (not writable, read-only module, out of range)."""

    code = "REGISTER_WRITE_REFUSED"
    kind = ErrorKind.INVALID
    hint = (
        "The register is not writable, the module is read-only, or the value is outside the range of its"
        " profile: see the message; nothing was written to the bus."
    )
