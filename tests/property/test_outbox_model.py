"""The outbox's ack and limit model against a plain in-memory model, on a real database written
through two connections (the core's and an attached one, as the gateway's).

Random sequences of inserts (from either connection), acks (older, equal, newer, beyond the
end), limit enforcement (now, or after the time-to-live) and coalescing. After every step:
- every record of a stream that is never dropped is either acknowledged or still present,
  with its own id at its own seq, the present ones gap-free up to the last seq;
- every telemetry seq is present, acknowledged, or covered by exactly one gap record, and a gap
  record covers only seqs of samples that are gone;
- the counters the triggers keep equal a recount, telemetry is back under its quota unless only
  gap records are left, and commands are refused exactly while a class never dropped is over
  its quota.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.store.clock import utc_now
from agent.store.database import Database
from agent.store.errors import StoreError
from agent.store.migrations import OUTBOX_ROW_OVERHEAD
from agent.store.outbox import Outbox
from agent.store.streams import KIND_STREAM, STREAM_BY_NAME, STREAMS, ClassLimits, Limits, StreamClass

LIMITS = Limits({
    StreamClass.CRITICAL: ClassLimits(quota_bytes=3_000, ttl_s=3600.0),
    StreamClass.NORMAL: ClassLimits(quota_bytes=3_000, ttl_s=3600.0),
    StreamClass.BULK: ClassLimits(quota_bytes=2_500, ttl_s=3600.0),
})  # fmt: skip
KINDS = sorted(KIND_STREAM)
NAMES = [s.name for s in STREAMS]

adds = st.tuples(st.just("add"), st.integers(0, 1), st.sampled_from(KINDS), st.integers(0, 300))
telemetry_adds = st.tuples(st.just("add"), st.integers(0, 1), st.just("telemetry"), st.integers(0, 300))
acks = st.tuples(st.just("ack"), st.sampled_from(NAMES), st.integers(-3, 3))
enforces = st.tuples(st.just("enforce"), st.sampled_from([0.0, 2.0]))
supersedes = st.tuples(st.just("supersede"), st.lists(st.integers(0, 12), max_size=6))
steps = st.lists(st.one_of(adds, telemetry_adds, telemetry_adds, acks, enforces, supersedes), min_size=1, max_size=40)


@dataclass
class Model:
    """What each stream must hold: the id given to every seq, which seqs are gap records, the ack."""

    ids: dict[str, dict[int, str]] = field(default_factory=lambda: {n: {} for n in NAMES})
    gaps: set[int] = field(default_factory=set)  # telemetry seqs that are gap records
    acked: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NAMES, 0))

    def last(self, stream: str) -> int:
        return len(self.ids[stream])

    def number(self, stream: str, record_id: str) -> None:
        self.ids[stream][self.last(stream) + 1] = record_id


async def check(db: Database, model: Model) -> None:
    async def read(conn: Any) -> tuple[list[Any], list[Any]]:
        rows = await conn.execute_fetchall(
            "SELECT stream, stream_seq, id, kind, payload, length(CAST(payload AS BLOB))"
            " FROM outbox ORDER BY stream, stream_seq"
        )
        counters = await conn.execute_fetchall("SELECT stream, last_seq, acked_seq, rows, bytes FROM outbox_streams")
        return list(rows), list(counters)

    rows, counters = await db.read(read)
    present: dict[str, dict[int, tuple[str, str, str]]] = {n: {} for n in NAMES}
    size: dict[str, int] = dict.fromkeys(NAMES, 0)
    for stream, seq, record_id, kind, payload, length in rows:
        present[stream][seq] = (record_id, kind, payload)
        size[stream] += length + OUTBOX_ROW_OVERHEAD
    for stream, last_seq, acked_seq, kept, kept_bytes in counters:
        assert (last_seq, acked_seq) == (model.last(stream), model.acked[stream]), stream
        assert (kept, kept_bytes) == (len(present[stream]), size[stream]), f"{stream}: counters differ from a recount"
    for stream in NAMES:
        acked, last = model.acked[stream], model.last(stream)
        assert all(acked < seq <= last for seq in present[stream]), f"{stream}: an acked or unknown seq is kept"
        assert all(present[stream][seq][0] == model.ids[stream][seq] for seq in present[stream]), "renumbered"
        if not STREAM_BY_NAME[stream].policy.droppable:
            assert sorted(present[stream]) == list(range(acked + 1, last + 1)), f"{stream}: a record was lost"
    tele, acked, last = present["telemetry"], model.acked["telemetry"], model.last("telemetry")
    cover = dict.fromkeys(range(1, last + 1), 0)
    for seq, (_, kind, payload) in tele.items():
        if kind != "gap":
            continue
        body = json.loads(payload)
        lo, hi = body["from_seq"], body["to_seq"]
        assert 1 <= lo <= hi < seq and body["dropped"] == hi - lo + 1
        for covered in range(lo, hi + 1):
            assert covered not in model.gaps and covered not in tele, "a gap covers a gap record or a kept sample"
            cover[covered] += 1
    assert all(n <= 1 for n in cover.values()), "a seq is covered by two gap records"
    for seq in range(acked + 1, last + 1):
        assert (seq in tele) != (cover[seq] == 1), f"telemetry seq {seq} is neither kept nor covered once"
    totals = {cls: sum(size[s.name] for s in STREAMS if s.cls is cls) for cls in StreamClass}
    full = any(totals[c] > LIMITS.of(c).quota_bytes for c in (StreamClass.CRITICAL, StreamClass.NORMAL))
    refusal = await Outbox(db, LIMITS).admission()
    assert (refusal is not None) == full and (refusal is None or refusal.code == "OUTBOX_FULL")


async def scenario(path: Path, script: list[tuple[Any, ...]]) -> None:
    core = await Database.open(path)
    gateway = await Database.open(path, attach=True)
    boxes = [Outbox(core, LIMITS), Outbox(gateway, LIMITS)]
    model = Model()
    try:
        for n, step in enumerate(script):
            if step[0] == "add":
                _, who, kind, pad = step
                record_id = await boxes[who].add(kind, {"n": n, "p": "x" * pad})
                model.number(KIND_STREAM[kind], record_id)
            elif step[0] == "ack":
                _, stream, offset = step
                target = model.acked[stream] + offset if offset < 3 else model.last(stream) + 1
                target = max(0, min(target, model.last(stream) + 1))
                try:
                    result = await boxes[n % 2].ack(stream, target)
                except StoreError as err:
                    assert err.code == "OUTBOX_ACK_AHEAD" and target > model.last(stream)
                else:
                    assert target <= model.last(stream)
                    assert result.advanced == (target > model.acked[stream])
                    model.acked[stream] = max(model.acked[stream], target)
            elif step[0] == "enforce":
                report = await boxes[0].enforce_limits(utc_now() + timedelta(hours=step[1]))
                for gap in report.gaps:
                    assert gap.seq == model.last("telemetry") + 1
                    model.number("telemetry", gap.id)
                    model.gaps.add(gap.seq)
                if step[1] == 0.0:
                    tele = (await boxes[0].backlog())["telemetry"]
                    samples = tele.unacked - sum(1 for s in model.gaps if s > model.acked["telemetry"])
                    assert tele.bytes <= LIMITS.of(StreamClass.BULK).quota_bytes or samples == 0
            else:
                for gap in await boxes[1].supersede("telemetry", step[1]):
                    assert gap.seq == model.last("telemetry") + 1 and gap.reason == "coalesced"
                    model.number("telemetry", gap.id)
                    model.gaps.add(gap.seq)
            await check(core, model)
    finally:
        await gateway.close()
        await core.close()


@settings(max_examples=40, deadline=None)
@given(steps)
def test_no_record_is_lost_and_every_dropped_seq_is_accounted_for_once(script: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp), script))
