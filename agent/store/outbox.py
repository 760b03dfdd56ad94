"""The outbox: everything sync must deliver upstream, written in the transaction that caused it.

Why an outbox: "write the change, then send an event" loses the event when the process dies in
between, and "send, then write" reports changes that never happened. Writing the event row in the
same transaction as the change (with `add(conn, ...)` inside the unit of work) makes both happen or
neither; sync drains `pending()` and calls `mark_sent()` after the server acknowledged.

Bounded: `prune(max_rows)` first drops the oldest rows that were already sent; if that is not
enough it drops the oldest unsent rows of the droppable kinds (telemetry only) and records how
many in an 'event' row, so the loss is itself reported. Commands, results, transitions, events and
audit are never dropped: if they alone exceed the bound, the outbox stays over it and says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiosqlite

from agent.ids import new_id
from agent.store import jsoncodec
from agent.store.clock import now_ts
from agent.store.errors import StoreError

if TYPE_CHECKING:
    from agent.store.database import Database

__all__ = [
    "DROPPABLE_KINDS",
    "KIND_AUDIT",
    "KIND_COMMAND",
    "KIND_COMMAND_RESULT",
    "KIND_EVENT",
    "KIND_TELEMETRY",
    "KIND_TRANSITION",
    "Outbox",
    "OutboxRow",
    "PruneResult",
    "add",
]

KIND_COMMAND = "command"  # a command was accepted or changed state (not terminal)
KIND_COMMAND_RESULT = "command_result"  # a command reached a terminal state
KIND_TRANSITION = "transition"  # the robot's state machine changed state
KIND_EVENT = "event"  # faults, notices, and the store's own reports (e.g. pruning)
KIND_AUDIT = "audit"  # who did what (logins, resets, configuration)
KIND_TELEMETRY = "telemetry"  # periodic measurements: the only kind that may be dropped

DROPPABLE_KINDS = frozenset({KIND_TELEMETRY})
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_MAX_PAYLOAD = 256 * 1024
_CHUNK = 500


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    id: str
    kind: str
    created_at: str
    payload: Any
    sent_at: str | None

    @classmethod
    def from_row(cls, row: Any) -> OutboxRow:
        return cls(
            seq=row["seq"],
            id=row["id"],
            kind=row["kind"],
            created_at=row["created_at"],
            payload=jsoncodec.loads(row["payload"]),
            sent_at=row["sent_at"],
        )


@dataclass(frozen=True)
class PruneResult:
    dropped_sent: int
    dropped_unsent: int
    remaining: int
    over_bound: bool


def encode_payload(kind: str, payload: Any) -> str:
    """Validate kind and payload; return the payload's JSON text."""
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise StoreError(f"invalid outbox kind {kind!r}", code="OUTBOX_INVALID")
    try:
        text = jsoncodec.dumps(payload)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"outbox payload is not JSON: {exc}", code="OUTBOX_INVALID") from exc
    if len(text) > _MAX_PAYLOAD:
        raise StoreError(
            f"outbox payload of {len(text)} bytes exceeds {_MAX_PAYLOAD}", code="OUTBOX_INVALID"
        )
    return text


async def add(conn: aiosqlite.Connection, kind: str, payload: Any) -> str:
    """Add a row inside the caller's unit of work; returns its id."""
    text = encode_payload(kind, payload)
    row_id = new_id()
    await conn.execute(
        "INSERT INTO outbox (id, kind, created_at, payload) VALUES (?, ?, ?, ?)",
        (row_id, kind, now_ts(), text),
    )
    return row_id


class Outbox:
    """Draining and bounding the outbox (the adding happens inside other units via `add`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, kind: str, payload: Any) -> str:
        """Add a row in a unit of its own (e.g. telemetry that has no other cause to join)."""
        encode_payload(kind, payload)  # refuse bad input before it reaches the writer queue

        async def unit(conn: aiosqlite.Connection) -> str:
            return await add(conn, kind, payload)

        return await self._db.write(unit)

    async def pending(self, limit: int = 100) -> list[OutboxRow]:
        """The oldest unsent rows, in the order they were written."""
        limit = max(1, min(int(limit), 10_000))

        async def fn(conn: aiosqlite.Connection) -> list[OutboxRow]:
            rows = await conn.execute_fetchall(
                "SELECT * FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT ?", (limit,)
            )
            return [OutboxRow.from_row(r) for r in rows]

        return await self._db.read(fn)

    async def mark_sent(self, ids: Iterable[str]) -> int:
        """Mark rows as delivered; returns how many were newly marked (repeats are harmless)."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return 0

        async def unit(conn: aiosqlite.Connection) -> int:
            at = now_ts()
            marked = 0
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                cursor = await conn.execute(
                    f"UPDATE outbox SET sent_at = ? WHERE sent_at IS NULL AND id IN ({marks})",
                    (at, *chunk),
                )
                marked += cursor.rowcount
            return marked

        return await self._db.write(unit)

    async def counts(self) -> dict[str, int]:
        """{'total', 'unsent'} for metrics and `db check`."""

        async def fn(conn: aiosqlite.Connection) -> dict[str, int]:
            rows = await conn.execute_fetchall(
                "SELECT count(*), count(*) FILTER (WHERE sent_at IS NULL) FROM outbox"
            )
            total, unsent = next(iter(rows))
            return {"total": int(total), "unsent": int(unsent)}

        return await self._db.read(fn)

    async def prune(self, max_rows: int) -> PruneResult:
        """Bring the outbox down to `max_rows` by the policy in the module docstring."""
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        return await self._db.write(lambda conn: prune_in(conn, max_rows))


async def _count(conn: aiosqlite.Connection) -> int:
    rows = await conn.execute_fetchall("SELECT count(*) FROM outbox")
    return int(next(iter(rows))[0])


async def prune_in(conn: aiosqlite.Connection, max_rows: int) -> PruneResult:
    """`Outbox.prune` as a unit of work."""
    total = await _count(conn)
    if total <= max_rows:
        return PruneResult(0, 0, total, False)
    excess = total - max_rows
    cursor = await conn.execute(
        "DELETE FROM outbox WHERE seq IN ("
        " SELECT seq FROM outbox WHERE sent_at IS NOT NULL ORDER BY seq LIMIT ?)",
        (excess,),
    )
    dropped_sent = max(0, cursor.rowcount)
    excess -= dropped_sent
    dropped_unsent = 0
    if excess > 0:
        kinds = sorted(DROPPABLE_KINDS)
        marks = ",".join("?" * len(kinds))
        # One more than the excess: room for the event row that reports this loss.
        cursor = await conn.execute(
            "DELETE FROM outbox WHERE seq IN ("
            f" SELECT seq FROM outbox WHERE sent_at IS NULL AND kind IN ({marks})"
            " ORDER BY seq LIMIT ?)",
            (*kinds, excess + 1),
        )
        dropped_unsent = max(0, cursor.rowcount)
        if dropped_unsent:
            await add(
                conn,
                KIND_EVENT,
                {
                    "event": "outbox_pruned",
                    "code": "OUTBOX_DROPPED_UNSENT",
                    "dropped": dropped_unsent,
                    "kinds": kinds,
                    "max_rows": max_rows,
                },
            )
    remaining = await _count(conn)
    return PruneResult(dropped_sent, dropped_unsent, remaining, remaining > max_rows)
