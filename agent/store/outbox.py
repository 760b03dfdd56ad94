"""The outbox: everything sync must deliver upstream, written in the transaction that caused it.

Why an outbox: "write the change, then send an event" loses the event when the process dies in
between, and "send, then write" reports changes that never happened. Writing the record in the
same transaction as the change (`add(conn, ...)` inside the unit of work) makes both happen or
neither.

Streams (agent/store/streams.py): each record lands in the stream of its kind and gets the next
`stream_seq` of that stream from a trigger (migration 7), gap-free from 1 whichever process
wrote it. Sync reads a stream in order with `batch`, and only the central consumer's cumulative
acknowledgement (`ack`) removes records: nothing is "sent" here, MQTT may lose or repeat a
message, and what is not acknowledged is sent again. `enforce_limits` bounds the outbox per class
(outbox_limits.py), `admission` says whether new commands may still be accepted, `backlog` what
waits where.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiosqlite

from agent.ids import new_id
from agent.store import jsoncodec, outbox_limits, streams
from agent.store.clock import now_ts, parse_ts, utc_now
from agent.store.errors import OutboxAckAhead, OutboxFull, StoreError
from agent.store.outbox_limits import GapRecord, LimitReport, stream_named
from agent.store.streams import (
    DEFAULT_LIMITS,
    KIND_ALARM,
    KIND_AUDIT,
    KIND_COMMAND,
    KIND_COMMAND_RESULT,
    KIND_EVENT,
    KIND_GAP,
    KIND_TELEMETRY,
    KIND_TRANSITION,
    Limits,
    StreamClass,
)

if TYPE_CHECKING:
    from agent.store.database import Database

__all__ = [
    "KIND_ALARM",
    "KIND_AUDIT",
    "KIND_COMMAND",
    "KIND_COMMAND_RESULT",
    "KIND_EVENT",
    "KIND_GAP",
    "KIND_TELEMETRY",
    "KIND_TRANSITION",
    "MAX_BATCH",
    "MAX_BATCH_BYTES",
    "AckResult",
    "Outbox",
    "OutboxRecord",
    "StreamBacklog",
    "ack_in",
    "add",
    "align_streams_in",
    "backlog_in",
    "batch_in",
    "encode_payload",
    "gaps_covering_in",
]

_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_MAX_PAYLOAD = 256 * 1024
# One batch holds at most this many records and (beyond its first record) this many payload
# bytes: what sync holds in memory per stream, however long the backlog is.
MAX_BATCH = 1000
MAX_BATCH_BYTES = 1024 * 1024


@dataclass(frozen=True)
class OutboxRecord:
    """One record as sync sends it: `seq` is its stream_seq (the envelope's `seq`)."""

    stream: str
    seq: int
    id: str
    kind: str
    created_at: str
    payload: Any

    @classmethod
    def from_row(cls, row: Any) -> OutboxRecord:
        return cls(
            stream=row["stream"],
            seq=int(row["stream_seq"]),
            id=row["id"],
            kind=row["kind"],
            created_at=row["created_at"],
            payload=jsoncodec.loads(row["payload"]),
        )


@dataclass(frozen=True)
class AckResult:
    stream: str
    acked_seq: int  # the stream's acknowledgement after this call
    deleted: int  # records removed by it
    advanced: bool  # False: an older or repeated acknowledgement, ignored


@dataclass(frozen=True)
class StreamBacklog:
    """What waits in one stream. `unacked` counts the records kept (gap records included);
    `bytes` is approximate (payload plus a fixed overhead per row). `overdue`: the oldest record
    of a class that is never dropped is older than the class's time-to-live."""

    stream: str
    cls: StreamClass
    last_seq: int
    acked_seq: int
    unacked: int
    bytes: int
    oldest_at: str | None
    oldest_age_s: float | None
    overdue: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.cls.value, "last_seq": self.last_seq, "acked_seq": self.acked_seq,
            "unacked": self.unacked, "bytes": self.bytes, "oldest_at": self.oldest_at,
            "oldest_age_s": self.oldest_age_s, "overdue": self.overdue,
        }  # fmt: skip


def encode_payload(kind: str, payload: Any) -> str:
    """Validate kind and payload; return the payload's JSON text.

    Only declared kinds are taken (a record without a stream could never be delivered), and
    never `gap`: gap records are written by the store alone, for what it dropped."""
    if not isinstance(kind, str) or not _KIND_RE.match(kind) or kind not in streams.KIND_STREAM:
        raise StoreError(
            f"invalid outbox kind {kind!r}", code="OUTBOX_INVALID",
            hint=f"A bug in the caller: the kinds are {sorted(streams.KIND_STREAM)} (agent/store/streams.py).",
        )  # fmt: skip
    try:
        text = jsoncodec.dumps(payload)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"outbox payload is not JSON: {exc}", code="OUTBOX_INVALID") from exc
    if len(text) > _MAX_PAYLOAD:
        raise StoreError(f"outbox payload of {len(text)} bytes exceeds {_MAX_PAYLOAD}", code="OUTBOX_INVALID")
    return text


async def add(conn: aiosqlite.Connection, kind: str, payload: Any) -> str:
    """Add a record inside the caller's unit of work; returns its id (its stream and seq are
    given by the database in the same statement)."""
    text = encode_payload(kind, payload)
    row_id = new_id()
    await conn.execute(
        "INSERT INTO outbox (id, kind, created_at, payload) VALUES (?, ?, ?, ?)",
        (row_id, kind, now_ts(), text),
    )
    return row_id


def _seq(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StoreError(f"{what} must be a non-negative integer, got {value!r}", code="OUTBOX_INVALID")
    return value


async def batch_in(
    conn: aiosqlite.Connection, stream: str, after_seq: int, limit: int, max_bytes: int = MAX_BATCH_BYTES
) -> list[OutboxRecord]:
    """The records of `stream` after `after_seq`, in stream order: at most `limit` of them and,
    past the first, at most `max_bytes` of payload. The sizes are read first and the payloads
    only of what fits, so a backlog of large records is never loaded whole."""
    stream_named(stream)
    after_seq = _seq(after_seq, "after_seq")
    limit = max(1, min(int(limit), MAX_BATCH))
    sizes = await conn.execute_fetchall(
        "SELECT stream_seq, length(CAST(payload AS BLOB)) FROM outbox WHERE stream = ? AND stream_seq > ?"
        " ORDER BY stream_seq LIMIT ?",
        (stream, after_seq, limit),
    )
    last, total = None, 0
    for seq, size in sizes:
        if last is not None and total + int(size) > max_bytes:
            break
        last, total = int(seq), total + int(size)
    if last is None:
        return []
    rows = await conn.execute_fetchall(
        "SELECT stream, stream_seq, id, kind, created_at, payload FROM outbox"
        " WHERE stream = ? AND stream_seq > ? AND stream_seq <= ? ORDER BY stream_seq",
        (stream, after_seq, last),
    )
    return [OutboxRecord.from_row(r) for r in rows]


async def gaps_covering_in(conn: aiosqlite.Connection, stream: str, low: int, high: int) -> list[OutboxRecord]:
    """The gap records of `stream` whose range meets [low, high], in stream order.

    Why sync needs them out of order: a gap record is appended at the end of its stream when it
    is written, possibly far beyond the records it stands for (a cut during a long outage, the
    coalescing of a window read from an old backlog). The consumer's cumulative ack cannot pass
    a hole until it has the gap record for it, so the sender sends that record as soon as it
    meets the hole instead of after everything in between."""
    stream_named(stream)
    rows = await conn.execute_fetchall(
        "SELECT stream, stream_seq, id, kind, created_at, payload FROM outbox"
        " WHERE stream = ? AND kind = ? AND stream_seq > ?"
        " AND json_extract(payload, '$.from_seq') <= ? AND json_extract(payload, '$.to_seq') >= ?"
        " ORDER BY stream_seq",
        (stream, KIND_GAP, _seq(low, "low"), _seq(high, "high"), low),
    )
    return [OutboxRecord.from_row(r) for r in rows]


async def ack_in(conn: aiosqlite.Connection, stream: str, seq: int) -> AckResult:
    """`Outbox.ack` as a unit of work."""
    stream_named(stream)
    seq = _seq(seq, "ack seq")
    await outbox_limits.lock(conn)
    rows = await conn.execute_fetchall("SELECT last_seq, acked_seq FROM outbox_streams WHERE stream = ?", (stream,))
    last_seq, acked_seq = (int(v) for v in next(iter(rows)))
    if seq > last_seq:
        raise OutboxAckAhead(f"ack {seq} for stream {stream!r} is beyond its last record {last_seq}")
    if seq <= acked_seq:
        return AckResult(stream, acked_seq, 0, False)
    await conn.execute("UPDATE outbox_streams SET acked_seq = ? WHERE stream = ?", (seq, stream))
    cursor = await conn.execute("DELETE FROM outbox WHERE stream = ? AND stream_seq <= ?", (stream, seq))
    return AckResult(stream, seq, max(0, cursor.rowcount), True)


def _age_s(at: str | None, now: datetime) -> float | None:
    if at is None:
        return None
    try:
        return max(0.0, (now - parse_ts(at)).total_seconds())
    except ValueError:  # a hand-made row with another time format: age unknown
        return None


async def backlog_in(conn: aiosqlite.Connection, now: datetime, limits: Limits) -> dict[str, StreamBacklog]:
    """Every declared stream's counters and oldest record (one indexed lookup per stream)."""
    rows = await conn.execute_fetchall(
        "SELECT s.stream, s.last_seq, s.acked_seq, s.rows, s.bytes,"
        " (SELECT o.created_at FROM outbox o WHERE o.stream = s.stream ORDER BY o.stream_seq LIMIT 1)"
        " FROM outbox_streams s"
    )
    found = {r[0]: r for r in rows}
    out: dict[str, StreamBacklog] = {}
    for stream in streams.STREAMS:
        row = found.get(stream.name)
        if row is None:
            continue  # declared but not in this database: `db check` reports the difference
        oldest = row[5]
        age = _age_s(oldest, now)
        overdue = not stream.policy.droppable and age is not None and age > limits.of(stream.cls).ttl_s
        out[stream.name] = StreamBacklog(
            stream=stream.name, cls=stream.cls, last_seq=int(row[1]), acked_seq=int(row[2]),
            unacked=int(row[3]), bytes=int(row[4]), oldest_at=oldest, oldest_age_s=age, overdue=overdue,
        )  # fmt: skip
    return out


async def align_streams_in(conn: aiosqlite.Connection) -> bool:
    """Make the database's kind -> stream mapping and stream counters those of the declaration
    (agent/store/streams.py), at the core's start; True if anything had to change.

    Why at every start and not only in a migration: the declaration is the one place that says
    where a kind goes, and a release that changes it must not leave upgraded devices with the
    old mapping (an insert of a new kind would be refused). Records already numbered stay in
    their stream; counters are never reset (a stream no longer declared keeps its row)."""
    stored = {r[0]: r[1] for r in await conn.execute_fetchall("SELECT kind, stream FROM outbox_kinds")}
    names = {r[0] for r in await conn.execute_fetchall("SELECT stream FROM outbox_streams")}
    if stored == dict(streams.KIND_STREAM) and set(streams.STREAM_BY_NAME) <= names:
        return False
    for statement in streams.mapping_statements():
        await conn.execute(statement)
    return True


class Outbox:
    """Reading, acknowledging and bounding the outbox (adding happens inside other units via `add`).

    `limits`: the per-class quotas and times-to-live (streams.DEFAULT_LIMITS unless configured).
    """

    def __init__(self, db: Database, limits: Limits = DEFAULT_LIMITS) -> None:
        self._db = db
        self.limits = limits

    async def add(self, kind: str, payload: Any) -> str:
        """Add a record in a unit of its own (e.g. telemetry that has no other cause to join)."""
        encode_payload(kind, payload)  # refuse bad input before it reaches the writer queue

        async def unit(conn: aiosqlite.Connection) -> str:
            return await add(conn, kind, payload)

        return await self._db.write(unit)

    async def batch(self, stream: str, after_seq: int = 0, limit: int = 100) -> list[OutboxRecord]:
        """The next records of `stream` after `after_seq`, in stream order (see `batch_in`)."""
        stream_named(stream)
        return await self._db.read(lambda conn: batch_in(conn, stream, after_seq, limit))

    async def gaps_covering(self, stream: str, low: int, high: int) -> list[OutboxRecord]:
        """The gap records standing for any seq in [low, high] (see `gaps_covering_in`)."""
        return await self._db.read(lambda conn: gaps_covering_in(conn, stream, low, high))

    async def ack(self, stream: str, seq: int) -> AckResult:
        """The consumer has committed every record of `stream` up to `seq`: delete them.

        Cumulative and monotonic: an older or equal ack changes nothing (MQTT may deliver an old
        one late); an ack beyond the last record written is refused (OUTBOX_ACK_AHEAD), since
        deleting on it would lose records the consumer has never seen."""
        stream_named(stream)
        return await self._db.write(lambda conn: ack_in(conn, stream, seq))

    async def backlog(self, now: datetime | None = None) -> dict[str, StreamBacklog]:
        """Per stream: last and acked seq, records kept, bytes, oldest record and its age."""
        when = now or utc_now()
        return await self._db.read(lambda conn: backlog_in(conn, when, self.limits))

    async def enforce_limits(self, now: datetime | None = None) -> LimitReport:
        """Apply the quotas and times-to-live (outbox_limits.py): telemetry beyond them is
        replaced by gap records; classes never dropped are reported (over quota, overdue)."""
        when = now or utc_now()
        return await self._db.write(lambda conn: outbox_limits.enforce_in(conn, when, self.limits))

    async def supersede(self, stream: str, seqs: Iterable[int]) -> list[GapRecord]:
        """Replace records of a droppable stream that newer ones made redundant (the telemetry
        coalescing of agent/sync/schedule.py) by gap records; returns the gap records."""
        wanted = sorted({_seq(s, "seq") for s in seqs})
        return await self._db.write(lambda conn: outbox_limits.supersede_in(conn, stream, wanted))

    async def admission(self) -> OutboxFull | None:
        """None while new commands may be accepted; else the OUTBOX_FULL error to refuse them
        with (a class that is never dropped is over its quota)."""
        return await self._db.read(lambda conn: outbox_limits.admission_in(conn, self.limits))
