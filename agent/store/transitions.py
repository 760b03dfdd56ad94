"""Robot state transitions, recorded in the same transaction as their cause.

The control layer calls `record_transition(conn, ...)` inside the unit of work that also changes
the command (or the fault) that caused the transition, so the history never shows a transition
without its cause or the other way round. Each transition also goes to the outbox.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import aiosqlite

from agent.ids import new_id
from agent.store import outbox
from agent.store.clock import now_ts
from agent.store.errors import StoreError

if TYPE_CHECKING:
    from agent.store.database import Database

__all__ = ["TransitionRecord", "recent_transitions", "record_transition"]

_MAX_TEXT = 500


@dataclass(frozen=True)
class TransitionRecord:
    seq: int
    id: str
    at: str
    from_state: str
    to_state: str
    event: str
    reason: str | None
    command_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(name: str, value: object, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value) or len(value) > _MAX_TEXT:
        raise StoreError(
            f"transition {name} must be a {'non-empty ' if required else ''}string of at most {_MAX_TEXT} characters",
            code="TRANSITION_INVALID",
            hint="A bug in the caller of record_transition.",
        )
    return value


async def record_transition(
    conn: aiosqlite.Connection,
    from_state: str,
    to_state: str,
    event: str,
    reason: str | None,
    command_id: str | None = None,
) -> TransitionRecord:
    """Insert a transition (and its outbox row) inside the caller's unit of work.

    `command_id`, when given, must name an existing command (foreign key).
    """
    values = {
        "from_state": _text("from_state", from_state, required=True),
        "to_state": _text("to_state", to_state, required=True),
        "event": _text("event", event, required=True),
        "reason": _text("reason", reason, required=False),
        "command_id": _text("command_id", command_id, required=False),
    }
    row_id, at = new_id(), now_ts()
    rows = await conn.execute_fetchall(
        "INSERT INTO state_transitions (id, at, from_state, to_state, event, reason, command_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
        (row_id, at, *values.values()),
    )
    seq = int(next(iter(rows))[0])
    transition = TransitionRecord(seq=seq, id=row_id, at=at, **values)  # type: ignore[arg-type]
    await outbox.add(conn, outbox.KIND_TRANSITION, transition.to_dict())
    return transition


async def recent_transitions(db: Database, limit: int = 100) -> list[TransitionRecord]:
    """The newest transitions first (for the status page and diagnostics)."""
    limit = max(1, min(int(limit), 1000))

    async def fn(conn: aiosqlite.Connection) -> list[TransitionRecord]:
        rows = await conn.execute_fetchall(
            "SELECT seq, id, at, from_state, to_state, event, reason, command_id"
            " FROM state_transitions ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        return [TransitionRecord(**dict(r)) for r in rows]

    return await db.read(fn)
