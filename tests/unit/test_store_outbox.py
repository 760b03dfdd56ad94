"""Outbox streams: numbering, batches, cumulative acks, the backlog, and the limits by class."""

from __future__ import annotations

import sqlite3
import tracemalloc
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from agent.ids import new_id
from agent.store import outbox
from agent.store.clock import now_ts, utc_now
from agent.store.commands import Commands
from agent.store.database import Database
from agent.store.errors import StoreError
from agent.store.outbox import MAX_BATCH, Outbox
from agent.store.streams import ClassLimits, Limits, StreamClass

DAY = 86400.0


def limits(
    critical: int = 10**9, normal: int = 10**9, bulk: int = 10**9, bulk_ttl: float = DAY, ttl: float = DAY
) -> Limits:
    return Limits({
        StreamClass.CRITICAL: ClassLimits(critical, ttl),
        StreamClass.NORMAL: ClassLimits(normal, ttl),
        StreamClass.BULK: ClassLimits(bulk, bulk_ttl),
    })  # fmt: skip


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "data")
    yield database
    await database.close()


async def add_many(db: Database, kind: str, payloads: list[Any]) -> None:
    """Many records in one unit and one round trip (the numbering trigger runs per row)."""
    rows = [(new_id(), kind, now_ts(), outbox.encode_payload(kind, p)) for p in payloads]

    async def unit(conn: aiosqlite.Connection) -> None:
        await conn.executemany("INSERT INTO outbox (id, kind, created_at, payload) VALUES (?, ?, ?, ?)", rows)

    await db.write(unit)


async def seqs(box: Outbox, stream: str) -> list[int]:
    return [r.seq for r in await box.batch(stream, 0, MAX_BATCH)]


async def test_each_kind_lands_in_its_stream_numbered_from_one(db: Database) -> None:
    box = Outbox(db)
    record, _ = await Commands(db).submit("api", "k", "move", {}, user="ann")  # 'command', by trigger
    await Commands(db).cancel(record.id)  # 'command_result'
    for kind in ("alarm", "transition", "event", "audit", "telemetry", "telemetry"):
        await box.add(kind, {"kind": kind})
    got = {
        s: [(r.seq, r.kind) for r in await box.batch(s)] for s in ("results", "alarms", "events", "audit", "telemetry")
    }
    assert got == {
        "results": [(1, "command"), (2, "command_result")],
        "alarms": [(1, "alarm")],
        "events": [(1, "transition"), (2, "event")],
        "audit": [(1, "audit")],
        "telemetry": [(1, "telemetry"), (2, "telemetry")],
    }
    first = (await box.batch("results"))[0]
    assert first.stream == "results" and first.payload["id"] == record.id and first.created_at


async def test_batch_reads_in_order_after_a_seq_and_within_its_bounds(db: Database) -> None:
    box = Outbox(db)
    await add_many(db, "event", [{"n": n} for n in range(30)])
    assert [r.payload["n"] for r in await box.batch("events", after_seq=10, limit=5)] == [10, 11, 12, 13, 14]
    assert await box.batch("events", after_seq=30) == []
    big = "x" * 150_000  # large records: 150 kB each
    await add_many(db, "telemetry", [{"v": big}] * 12)
    batch = await box.batch("telemetry", 0, limit=100)
    assert [r.seq for r in batch] == list(range(1, 7))  # 1 MiB of payload past the first, not all 12
    assert len(await box.batch("events", 0, limit=10**9)) == 30 and MAX_BATCH == 1000


async def test_a_record_rolled_back_with_its_cause_takes_no_number(db: Database) -> None:
    box = Outbox(db)

    async def change_then_fail(conn: aiosqlite.Connection) -> None:
        await outbox.add(conn, outbox.KIND_AUDIT, {"who": "ann"})
        raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        await db.write(change_then_fail)
    assert await box.batch("audit") == []
    await box.add("audit", {"who": "bob"})
    assert await seqs(box, "audit") == [1]  # the counter went back with the failed unit: no gap


async def test_bad_kind_payload_or_stream_is_refused(db: Database) -> None:
    box = Outbox(db)
    for kind, payload in (
        ("Bad Kind", {}),
        ("nonsense", {}),
        ("gap", {}),
        ("event", {"x": object()}),
        ("event", float("inf")),
    ):
        with pytest.raises(StoreError) as err:
            await box.add(kind, payload)
        assert err.value.code == "OUTBOX_INVALID"
    for call in (box.batch("nowhere"), box.ack("nowhere", 1)):
        with pytest.raises(StoreError) as err:
            await call
        assert err.value.code == "OUTBOX_UNKNOWN_STREAM" and err.value.hint
    with pytest.raises(StoreError) as err:
        await box.ack("events", -1)
    assert err.value.code == "OUTBOX_INVALID"


async def test_ack_is_cumulative_monotonic_and_never_beyond_the_last_record(db: Database) -> None:
    box = Outbox(db)
    await add_many(db, "event", [{"n": n} for n in range(10)])
    first = await box.ack("events", 4)
    assert (first.acked_seq, first.deleted, first.advanced) == (4, 4, True)
    assert await seqs(box, "events") == list(range(5, 11))
    for older in (4, 2, 0):  # an old ack arriving late changes nothing
        repeat = await box.ack("events", older)
        assert (repeat.acked_seq, repeat.deleted, repeat.advanced) == (4, 0, False)
    with pytest.raises(StoreError) as err:
        await box.ack("events", 11)
    assert err.value.code == "OUTBOX_ACK_AHEAD" and "restored" in err.value.hint
    assert await seqs(box, "events") == list(range(5, 11))  # the refused ack deleted nothing
    assert (await box.ack("events", 10)).deleted == 6
    await box.add("event", {"n": 10})
    assert await seqs(box, "events") == [11]  # numbers are never reused after an ack
    backlog = (await box.backlog())["events"]
    assert (backlog.last_seq, backlog.acked_seq, backlog.unacked) == (11, 10, 1)


async def test_the_database_refuses_renumbering_and_counters_going_back(db: Database) -> None:
    await Outbox(db).add("event", {})
    for statement in (
        "UPDATE outbox SET stream_seq = 7",
        "UPDATE outbox SET payload = '{}'",
        "UPDATE outbox_streams SET last_seq = 0 WHERE stream = 'events'",
        "UPDATE outbox_streams SET acked_seq = 2 WHERE stream = 'events'",  # beyond last_seq
        "DELETE FROM outbox_streams",
        "INSERT INTO outbox (id, kind, created_at, payload, stream) VALUES ('x', 'event', 'now', '{}', 'telemetry')",
        "INSERT INTO outbox (id, kind, created_at, payload) VALUES ('y', 'gap', 'now', '{}')",
    ):
        with pytest.raises(StoreError) as err:
            await db.write(lambda conn, s=statement: conn.execute(s))
        assert err.value.code == "STORE_CONSTRAINT", statement


async def test_backlog_counts_bytes_and_age_and_reports_old_records_it_never_drops(db: Database) -> None:
    box = Outbox(db, limits(ttl=3600.0))
    await box.add("alarm", {"code": "E1"})
    await add_many(db, "telemetry", [{"v": n} for n in range(3)])
    now = utc_now()
    backlog = await box.backlog(now)
    assert set(backlog) == {"results", "alarms", "events", "audit", "telemetry"}
    alarms = backlog["alarms"]
    assert (alarms.cls, alarms.last_seq, alarms.unacked, alarms.overdue) == (StreamClass.CRITICAL, 1, 1, False)
    assert alarms.bytes == len('{"code":"E1"}') + 128 and alarms.oldest_age_s is not None and alarms.oldest_age_s < 60
    assert backlog["results"].oldest_at is None and backlog["results"].unacked == 0
    later = await box.backlog(now + timedelta(hours=2))
    assert later["alarms"].overdue and not later["telemetry"].overdue  # telemetry expires instead
    report = await box.enforce_limits(now + timedelta(hours=2))
    assert report.overdue == ("alarms",) and await seqs(box, "alarms") == [1]  # reported, kept


async def test_telemetry_over_quota_goes_oldest_first_for_one_gap_record(db: Database) -> None:
    box = Outbox(db, limits(bulk=10_000))
    await add_many(db, "telemetry", [{"v": n, "pad": "x" * 172} for n in range(100)])  # 300 bytes a row
    await add_many(db, "command", [{"c": n} for n in range(5)])  # results are never dropped
    report = await box.enforce_limits()
    (gap,) = report.gaps
    kept = await box.batch("telemetry", 0, MAX_BATCH)
    assert (gap.stream, gap.seq, gap.from_seq, gap.reason) == ("telemetry", 101, 1, "over_quota")
    assert [r.seq for r in kept] == [*range(gap.to_seq + 1, 101), 101]
    assert kept[-1].kind == "gap" and kept[-1].payload == {
        "from_seq": 1,
        "to_seq": gap.to_seq,
        "dropped": gap.to_seq,
        "reason": "over_quota",
    }
    assert (await box.backlog())["telemetry"].bytes <= 10_000 * 0.9  # down to the low watermark
    assert await seqs(box, "results") == [1, 2, 3, 4, 5]
    assert (await box.enforce_limits()).gaps == ()  # under the quota: nothing more goes
    assert await box.admission() is None  # dropping telemetry never refuses commands


async def test_classes_never_dropped_refuse_commands_when_full_until_acknowledged(db: Database) -> None:
    box = Outbox(db, limits(normal=2_000))
    await add_many(db, "audit", [{"who": "ann", "pad": "x" * 100} for _ in range(10)])
    report = await box.enforce_limits()
    assert report.gaps == () and report.over_quota == (StreamClass.NORMAL,)
    assert await seqs(box, "audit") == list(range(1, 11))  # nothing dropped
    refusal = await box.admission()
    assert refusal is not None and refusal.code == "OUTBOX_FULL"
    assert "broker" in refusal.hint and "normal" in refusal.message
    await box.ack("audit", 6)
    assert await box.admission() is None


async def test_expired_telemetry_goes_and_gap_records_stay(db: Database) -> None:
    box = Outbox(db, limits(bulk_ttl=3600.0))
    await add_many(db, "telemetry", [{"v": n} for n in range(5)])
    assert (await box.enforce_limits()).gaps == ()  # young: kept
    report = await box.enforce_limits(utc_now() + timedelta(hours=2))
    assert [(g.from_seq, g.to_seq, g.dropped, g.reason, g.seq) for g in report.gaps] == [(1, 5, 5, "expired", 6)]
    await add_many(db, "telemetry", [{"v": 5}])
    report = await box.enforce_limits(utc_now() + timedelta(hours=2))
    # The new sample goes in a range of its own; the first gap record is not dropped again.
    assert [(g.from_seq, g.to_seq, g.seq) for g in report.gaps] == [(7, 7, 8)]
    assert [(r.seq, r.kind) for r in await box.batch("telemetry")] == [(6, "gap"), (8, "gap")]


async def test_supersede_replaces_runs_by_coalesced_gap_records(db: Database) -> None:
    box = Outbox(db)
    await add_many(db, "telemetry", [{"source": "m1", "key": "speed", "v": n} for n in range(6)])
    await box.ack("telemetry", 1)
    gaps = await box.supersede("telemetry", [1, 2, 3, 5, 99])  # 1 is acked, 99 never existed
    assert [(g.from_seq, g.to_seq, g.dropped, g.reason) for g in gaps] == [
        (2, 3, 2, "coalesced"),
        (5, 5, 1, "coalesced"),
    ]
    assert [(r.seq, r.kind) for r in await box.batch("telemetry")] == [
        (4, "telemetry"),
        (6, "telemetry"),
        (7, "gap"),
        (8, "gap"),
    ]
    await box.add("audit", {})
    with pytest.raises(StoreError) as err:
        await box.supersede("audit", [1])
    assert err.value.code == "OUTBOX_INVALID"
    assert await seqs(box, "audit") == [1]


async def test_enforcing_a_long_backlog_holds_little_memory(db: Database) -> None:
    """The cut walks the stream a chunk at a time and never reads payloads: 6 MB of telemetry
    are cut with a small peak of Python memory."""
    box = Outbox(db, limits(bulk=200_000))
    await add_many(db, "telemetry", [{"v": "y" * 1000}] * 6000)
    tracemalloc.start()
    try:
        report = await box.enforce_limits()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.dropped > 5800 and len(report.gaps) == 1
    assert peak < 1_000_000, f"enforce_limits peaked at {peak} bytes"


def test_counters_match_the_rows_after_all_of_it(tmp_path: Path) -> None:
    """The trigger-kept rows/bytes counters equal a recount (checked on a database the tests above
    did not share)."""
    import asyncio

    async def scenario() -> None:
        db = await Database.open(tmp_path)
        try:
            box = Outbox(db, limits(bulk=3_000))
            await add_many(db, "telemetry", [{"v": n} for n in range(100)])
            await box.enforce_limits()
            await box.ack("telemetry", 50)
            await box.supersede("telemetry", range(60, 70))
        finally:
            await db.close()

    asyncio.run(scenario())
    conn = sqlite3.connect(tmp_path / "agent.db")
    try:
        counted = conn.execute(
            "SELECT s.rows, s.bytes, (SELECT count(*) FROM outbox o WHERE o.stream = s.stream),"
            " (SELECT coalesce(sum(length(CAST(o.payload AS BLOB)) + 128), 0) FROM outbox o WHERE o.stream = s.stream)"
            " FROM outbox_streams s"
        ).fetchall()
    finally:
        conn.close()
    assert all(rows == recount and size == resize for rows, size, recount, resize in counted)
