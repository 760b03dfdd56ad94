"""Bounding the outbox by class: quotas, times-to-live, gap records, and the refusal of commands.

Why by class: when the upstream link stays down, the outbox grows until the disk is full, and
what to give up first is not a storage question. Telemetry (bulk) is worth less the older it
gets and is dropped, oldest first; command results, alarms, events and audit are never dropped
(losing them is worse than stopping): when they fill their share, `admission_in` says OUTBOX_FULL
and the command intake refuses new commands, which stops the main source of results.

Dropping never renumbers: each maximal run of consecutive seqs that goes is replaced by one gap
record, `{"from_seq", "to_seq", "dropped", "reason"}`, appended to the same stream with a seq of
its own, so the consumer can account for every seq. Gap records are not dropped themselves (they
are small, and dropping one would need another to say so); they go with the acknowledgement.

Hysteresis: over its quota a stream is brought down to LOW_WATERMARK of it, and past its
time-to-live everything older than LOW_WATERMARK of that age goes, so that a stream at its bound
is cut every few minutes, not at every call, and the number of gap records stays small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import aiosqlite

from agent.ids import new_id
from agent.store import jsoncodec, streams
from agent.store.clock import format_ts, now_ts
from agent.store.errors import OutboxFull, OutboxUnknownStream, StoreError
from agent.store.migrations import OUTBOX_ROW_OVERHEAD
from agent.store.streams import KIND_GAP, Limits, Stream, StreamClass

__all__ = [
    "LOW_WATERMARK",
    "GapRecord",
    "LimitReport",
    "admission_in",
    "enforce_in",
    "lock",
    "stream_named",
    "supersede_in",
]

LOW_WATERMARK = 0.9
_GAP_RESERVE = 256  # bytes one gap record takes at most (payload of four fields plus the row overhead)
_CHUNK = 500  # rows looked at per query while walking a stream

REASON_QUOTA = "over_quota"
REASON_TTL = "expired"
REASON_COALESCED = "coalesced"


@dataclass(frozen=True)
class GapRecord:
    """A gap record as written: its own `seq`, and the range [from_seq, to_seq] it accounts for."""

    stream: str
    seq: int
    id: str
    from_seq: int
    to_seq: int
    dropped: int
    reason: str


@dataclass(frozen=True)
class LimitReport:
    """What `enforce_in` did and found.

    `gaps`: the gap records written (one per dropped range). `over_quota`: classes still above
    their quota (for a class never dropped: commands are refused until acknowledgements come).
    `overdue`: streams never dropped whose oldest record is older than the class's time-to-live:
    kept, and reported so that someone looks at the link."""

    gaps: tuple[GapRecord, ...] = ()
    over_quota: tuple[StreamClass, ...] = ()
    overdue: tuple[str, ...] = ()
    bytes_by_class: dict[StreamClass, int] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return sum(g.dropped for g in self.gaps)


def stream_named(name: str) -> Stream:
    """The declared stream called `name` (OUTBOX_UNKNOWN_STREAM otherwise)."""
    stream = streams.STREAM_BY_NAME.get(name) if isinstance(name, str) else None
    if stream is None:
        raise OutboxUnknownStream(f"no outbox stream {name!r}; streams are {sorted(streams.STREAM_BY_NAME)}")
    return stream


async def lock(conn: aiosqlite.Connection) -> None:
    """Take the database's write lock now (a write that changes nothing opens the transaction),
    so that what the unit reads next cannot be changed by the other process before it writes."""
    await conn.execute("UPDATE outbox_streams SET last_seq = last_seq WHERE 0")


async def _counters(conn: aiosqlite.Connection) -> dict[str, tuple[int, int, int]]:
    """stream -> (last_seq, acked_seq, bytes)."""
    rows = await conn.execute_fetchall("SELECT stream, last_seq, acked_seq, bytes FROM outbox_streams")
    return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in rows}


def _class_bytes(counters: dict[str, tuple[int, int, int]]) -> dict[StreamClass, int]:
    totals = dict.fromkeys(StreamClass, 0)
    for stream in streams.STREAMS:
        if stream.name in counters:
            totals[stream.cls] += counters[stream.name][2]
    return totals


def _over_quota(totals: dict[StreamClass, int], limits: Limits) -> tuple[StreamClass, ...]:
    return tuple(cls for cls in StreamClass if totals[cls] > limits.of(cls).quota_bytes)


async def admission_in(conn: aiosqlite.Connection, limits: Limits) -> OutboxFull | None:
    """OUTBOX_FULL if a class that is never dropped is over its quota, else None."""
    totals = _class_bytes(await _counters(conn))
    full = [cls for cls in _over_quota(totals, limits) if not streams.CLASSES[cls].droppable]
    if not full:
        return None
    detail = ", ".join(f"{cls.value} {totals[cls]} of {limits.of(cls).quota_bytes} bytes" for cls in full)
    return OutboxFull(f"the outbox is full ({detail}); new commands are refused")


@dataclass
class _Run:
    """Consecutive seqs being dropped together: they become one gap record."""

    first: int
    last: int
    count: int
    quota: bool  # at least one record went for the quota (else: all for their age)


async def _write_gaps(
    conn: aiosqlite.Connection, stream: str, runs: Sequence[_Run], reason: str | None
) -> list[GapRecord]:
    """Delete every run's records and append its gap record (numbered by the trigger)."""
    gaps = []
    for run in runs:
        await conn.execute(
            "DELETE FROM outbox WHERE stream = ? AND stream_seq BETWEEN ? AND ? AND kind <> ?",
            (stream, run.first, run.last, KIND_GAP),
        )
        why = reason or (REASON_QUOTA if run.quota else REASON_TTL)
        body = {"from_seq": run.first, "to_seq": run.last, "dropped": run.count, "reason": why}
        gap_id = new_id()
        await conn.execute(
            "INSERT INTO outbox (id, kind, created_at, payload, stream) VALUES (?, ?, ?, ?, ?)",
            (gap_id, KIND_GAP, now_ts(), jsoncodec.dumps(body), stream),
        )
        # The trigger numbered it: the stream's counter now holds its seq.
        rows = await conn.execute_fetchall("SELECT last_seq FROM outbox_streams WHERE stream = ?", (stream,))
        seq = int(next(iter(rows))[0])
        gaps.append(GapRecord(stream, seq, gap_id, run.first, run.last, run.count, why))
    return gaps


def _extend(runs: list[_Run], seq: int, quota: bool) -> None:
    if runs and runs[-1].last == seq - 1:
        run = runs[-1]
        run.last, run.count, run.quota = seq, run.count + 1, run.quota or quota
    else:
        runs.append(_Run(seq, seq, 1, quota))


async def _cut(conn: aiosqlite.Connection, stream: str, need: int, expire_before: str | None) -> list[_Run]:
    """Walk `stream` oldest first (a chunk at a time) and choose what goes: records while
    `need` bytes (plus room for the gap records) are not yet freed, or while they were written
    before `expire_before`. Stops at the first record that is neither. Gap records stay."""
    runs: list[_Run] = []
    freed, after = 0, 0
    while True:
        rows = await conn.execute_fetchall(
            "SELECT stream_seq, kind, created_at, length(CAST(payload AS BLOB)) FROM outbox"
            " WHERE stream = ? AND stream_seq > ? ORDER BY stream_seq LIMIT ?",
            (stream, after, _CHUNK),
        )
        rows = list(rows)  # counted below
        for seq, kind, created_at, size in rows:
            after = int(seq)
            if kind == KIND_GAP:
                continue
            for_quota = need > 0 and freed - _GAP_RESERVE * len(runs) < need
            expired = expire_before is not None and created_at < expire_before
            if not (for_quota or expired):
                return runs
            freed += int(size) + OUTBOX_ROW_OVERHEAD
            _extend(runs, after, for_quota)
        if len(rows) < _CHUNK:
            return runs


async def _oldest_record(conn: aiosqlite.Connection, stream: str) -> str | None:
    rows = await conn.execute_fetchall(
        "SELECT created_at FROM outbox WHERE stream = ? AND kind <> ? ORDER BY stream_seq LIMIT 1", (stream, KIND_GAP)
    )
    return next((str(r[0]) for r in rows), None)


async def enforce_in(conn: aiosqlite.Connection, now: datetime, limits: Limits) -> LimitReport:
    """Apply `limits` at time `now` (a unit of work; see the module docstring)."""
    await lock(conn)
    counters = await _counters(conn)
    gaps: list[GapRecord] = []
    overdue: list[str] = []
    for stream in streams.STREAMS:
        if stream.name not in counters:
            continue
        bound = limits.of(stream.cls)
        oldest = await _oldest_record(conn, stream.name)
        past_ttl = oldest is not None and oldest < format_ts(now - timedelta(seconds=bound.ttl_s))
        if not stream.policy.droppable:
            if past_ttl:
                overdue.append(stream.name)
            continue
        size = counters[stream.name][2]
        need = size - int(bound.quota_bytes * LOW_WATERMARK) if size > bound.quota_bytes else 0
        expire_before = format_ts(now - timedelta(seconds=bound.ttl_s * LOW_WATERMARK)) if past_ttl else None
        if need <= 0 and expire_before is None:
            continue
        runs = await _cut(conn, stream.name, need, expire_before)
        gaps += await _write_gaps(conn, stream.name, runs, None)
    totals = _class_bytes(await _counters(conn))
    return LimitReport(tuple(gaps), _over_quota(totals, limits), tuple(overdue), totals)


async def supersede_in(conn: aiosqlite.Connection, stream_name: str, seqs: Sequence[int]) -> list[GapRecord]:
    """Replace the records at `seqs` (sorted, of a droppable stream) by gap records, one per run
    of consecutive seqs among those still kept (an ack or a cut may have taken some already)."""
    stream = stream_named(stream_name)
    if not stream.policy.droppable:
        raise StoreError(
            f"records of stream {stream.name!r} are never dropped", code="OUTBOX_INVALID",
            hint="A bug in the caller: only telemetry may be coalesced.",
        )  # fmt: skip
    await lock(conn)
    runs: list[_Run] = []
    for start in range(0, len(seqs), _CHUNK):
        chunk = list(seqs[start : start + _CHUNK])
        marks = ",".join("?" * len(chunk))
        rows = await conn.execute_fetchall(
            f"SELECT stream_seq FROM outbox WHERE stream = ? AND kind <> ? AND stream_seq IN ({marks})"
            " ORDER BY stream_seq",
            (stream.name, KIND_GAP, *chunk),
        )
        for (seq,) in rows:
            _extend(runs, int(seq), False)
    return await _write_gaps(conn, stream.name, runs, REASON_COALESCED)
