"""Errors with a stable code and a hint for the technician.

Every error that can reach a log line, a CLI message or an API response derives from
`CodedError`, so that whoever reads it gets the same machine-readable `code` in every
release and a `hint` that says what to check on the robot, not only what went wrong.
"""

from __future__ import annotations


class CodedError(Exception):
    """An error with a stable `code` (UPPER_SNAKE) and an actionable `hint`."""

    code: str = "INTERNAL"
    hint: str = ""

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if hint is not None:
            self.hint = hint

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
