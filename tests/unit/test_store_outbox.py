"""Outbox: drain order, acknowledgement, and the bound with its drop policy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

from agent.store import outbox
from agent.store.commands import Commands
from agent.store.database import Database
from agent.store.errors import StoreError
from agent.store.outbox import Outbox


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "data")
    yield database
    await database.close()


async def kinds(box: Outbox) -> list[str]:
    return [row.kind for row in await box.pending(10_000)]


async def test_pending_in_write_order_and_mark_sent(db: Database) -> None:
    box = Outbox(db)
    ids = [await box.add(outbox.KIND_EVENT, {"n": n}) for n in range(5)]
    pending = await box.pending(3)
    assert [row.id for row in pending] == ids[:3]
    assert [row.payload for row in pending] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert await box.mark_sent(ids[:2]) == 2
    assert await box.mark_sent(ids[:2]) == 0  # a repeated acknowledgement is harmless
    assert [row.id for row in await box.pending()] == ids[2:]
    assert await box.counts() == {"total": 5, "unsent": 3}


async def test_add_joins_the_callers_transaction(db: Database) -> None:
    box = Outbox(db)

    async def change_then_fail(conn: aiosqlite.Connection) -> None:
        await outbox.add(conn, outbox.KIND_AUDIT, {"who": "ann"})
        raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        await db.write(change_then_fail)
    assert await box.pending() == []


async def test_bad_kind_or_payload_is_refused(db: Database) -> None:
    box = Outbox(db)
    for kind, payload in (("Bad Kind", {}), ("event", {"x": object()}), ("event", float("inf"))):
        with pytest.raises(StoreError) as err:
            await box.add(kind, payload)
        assert err.value.code == "OUTBOX_INVALID"


async def test_prune_drops_sent_rows_first(db: Database) -> None:
    box = Outbox(db)
    ids = [await box.add(outbox.KIND_EVENT, {"n": n}) for n in range(10)]
    await box.mark_sent(ids[:6])
    result = await box.prune(max_rows=7)
    assert (result.dropped_sent, result.dropped_unsent, result.remaining) == (3, 0, 7)
    assert not result.over_bound
    rows = await db.read(lambda conn: conn.execute_fetchall("SELECT id FROM outbox ORDER BY seq"))
    assert [r[0] for r in rows] == ids[3:]  # the oldest sent ones went
    assert (await box.prune(max_rows=7)).dropped_sent == 0


async def test_prune_then_drops_oldest_unsent_telemetry_only_and_says_so(db: Database) -> None:
    box = Outbox(db)
    commands = Commands(db)
    await commands.submit("api", "k", "move", {}, user="ann")  # a 'command' row
    telemetry = [await box.add(outbox.KIND_TELEMETRY, {"t": n}) for n in range(10)]
    await box.add(outbox.KIND_AUDIT, {"who": "ann"})
    await box.add(outbox.KIND_EVENT, {"fault": "E12"})
    result = await box.prune(max_rows=8)
    # 13 rows, bound 8: 5 over, plus one slot for the report of the loss.
    assert result.dropped_sent == 0 and result.dropped_unsent == 6
    assert result.remaining == 8 and not result.over_bound
    pending = await box.pending()
    assert [row.id for row in pending if row.kind == "telemetry"] == telemetry[6:]
    assert {"command", "audit"} <= {row.kind for row in pending}
    report = pending[-1]
    assert report.kind == "event" and report.payload["event"] == "outbox_pruned"
    assert report.payload["dropped"] == 6 and report.payload["kinds"] == ["telemetry"]


async def test_prune_never_drops_commands_results_or_audit(db: Database) -> None:
    box = Outbox(db)
    commands = Commands(db)
    for i in range(4):
        record, _ = await commands.submit("api", f"k{i}", "move", {}, user="ann")
        await commands.mark_running(record.id)
        await commands.finish(record.id, "succeeded")
    await box.add(outbox.KIND_AUDIT, {"who": "ann"})
    before = await kinds(box)
    result = await box.prune(max_rows=5)
    assert result.over_bound and result.remaining == len(before) == 13
    assert (result.dropped_sent, result.dropped_unsent) == (0, 0)
    assert await kinds(box) == before
    with pytest.raises(ValueError):
        await box.prune(max_rows=0)
