"""What the local API and the upstream sync may ask of the agent: one narrow interface.

`api` and `sync` never touch the bus or the state machine directly; they call an `AgentCore`.
The runtime's `Controller` implements it. Every method either returns plain data or raises a
`CodedError` whose kind the HTTP layer answers with a status (agent/api/errors.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from agent.control.status_view import ModuleView, StatusDocument
from agent.store.audit import AuditEntry
from agent.store.commands import CommandRecord


@dataclass(frozen=True)
class EstopResult:
    confirmed: bool
    confirm_ms: float | None
    fault: dict[str, Any] | None  # when not confirmed: {code, message, hint}


@dataclass(frozen=True)
class ResetResult:
    cleared: list[str]
    remaining: dict[str, str]  # code -> why it could not be cleared
    state: str

    @property
    def complete(self) -> bool:
        return not self.remaining


@dataclass(frozen=True)
class SubmitResult:
    record: CommandRecord
    created: bool  # False: the idempotency key was seen before; `record` is the first one


StatusListener = Callable[[StatusDocument], None]


class AgentCore(Protocol):
    agent_id: str

    def status(self) -> StatusDocument:
        """{state, since, verdict: {level, speed_factor, estop_input, faults: [...]}, ready, ready_reasons,
        bus: {port, port_up, ...}, modules: {role: {address, profile, quality, online, last_error, ...}}}"""

    def modules(self) -> list[ModuleView]:
        """One entry per bound module: role, address, profile, identity, health."""

    def module(self, name: str) -> ModuleView:
        """Identity, profile and decoded live values with their age; raises ModuleNotFound (agent/control/errors.py)."""

    def ready(self) -> tuple[bool, list[str]]: ...

    def alive(self) -> bool: ...

    def not_alive_because(self) -> str:
        """Which task ended and how, while `alive()` is False ("" otherwise)."""

    async def submit_command(
        self,
        *,
        source: str,
        idempotency_key: str,
        type: str,
        params: dict[str, Any],
        user: str | None,
        priority: int = 5,
        not_after: datetime | None = None,
        audit: AuditEntry | None = None,
    ) -> SubmitResult:
        """Commit the command; with `audit`, its audit row follows in the same process."""

    async def get_command(self, command_id: str) -> CommandRecord: ...

    async def list_commands(self, state: str | None = None, limit: int = 100) -> list[CommandRecord]: ...

    async def cancel_command(
        self, command_id: str, *, user: str | None, audit: AuditEntry | None = None
    ) -> CommandRecord: ...

    async def estop(
        self, *, source: str, user: str | None, reason: str = "", audit: AuditEntry | None = None
    ) -> EstopResult:
        """The stop is queued before anything else happens; the audit row follows the confirmation."""

    async def reset(self, *, user: str, audit: AuditEntry | None = None) -> ResetResult: ...

    def add_status_listener(self, listener: StatusListener) -> None: ...

    def remove_status_listener(self, listener: StatusListener) -> None: ...
