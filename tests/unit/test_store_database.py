"""Database: start-up checks, group commit, failure isolation, storage errors, health."""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from agent.ids import new_id
from agent.store.commands import Commands
from agent.store.database import DB_NAME, Database
from agent.store.errors import (
    CommandKeyConflict,
    DataDirBusy,
    ForeignDatabase,
    SchemaTooNew,
    StoreClosed,
    StoreOverloaded,
    StoreTimeout,
    StoreUnavailable,
)
from agent.store.lock import DataDirLock
from agent.store.migrations import APPLICATION_ID, LATEST_VERSION
from agent.store.pipeline import Pipelined


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "data")
    yield database
    await database.close()


def insert_event(marker: str) -> Any:
    async def unit(conn: aiosqlite.Connection) -> str:
        await conn.execute(
            "INSERT INTO outbox (id, kind, created_at, payload) VALUES (?, 'event', 'now', ?)",
            (new_id(), f'{{"marker": "{marker}"}}'),
        )
        return marker

    return unit


async def markers(db: Database) -> set[str]:
    rows = await db.read(
        lambda conn: conn.execute_fetchall("SELECT json_extract(payload, '$.marker') FROM outbox WHERE kind = 'event'")
    )
    return {r[0] for r in rows}


async def hold_writer(db: Database, seconds: float) -> asyncio.Task[Any]:
    """Occupy the writer so that what is written next piles up into one batch."""

    async def slow(conn: aiosqlite.Connection) -> None:
        await asyncio.sleep(seconds)

    task = asyncio.create_task(db.write(slow, timeout=10))
    await asyncio.sleep(0.01)
    return task


# ------------------------------------------------------------------------- start-up


async def test_fresh_start_reports_and_sets_pragmas(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "data")
    try:
        assert db.report is not None
        assert db.report.corrupt_moved_to is None
        assert db.report.schema_version == LATEST_VERSION
        assert db.report.interrupted_commands == 0
        assert db.healthy and db.health() == {"ok": True}

        async def pragmas(conn: aiosqlite.Connection) -> tuple[Any, ...]:
            out = []
            for name in ("journal_mode", "synchronous", "foreign_keys", "application_id"):
                out.append(next(iter(await conn.execute_fetchall(f"PRAGMA {name}")))[0])
            return tuple(out)

        assert await db.write(pragmas) == ("wal", 2, 1, APPLICATION_ID)  # 2 = FULL
    finally:
        await db.close()
    assert not db.healthy and db.health()["code"] == "STORE_CLOSED"
    with pytest.raises(StoreClosed):
        await db.write(insert_event("late"))


async def test_second_process_on_same_data_dir_is_refused(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "data")
    try:
        with pytest.raises(DataDirBusy) as err:
            await Database.open(tmp_path / "data")
        assert err.value.code == "DATA_DIR_LOCKED" and "daemon" in err.value.hint
    finally:
        await db.close()
    again = await Database.open(tmp_path / "data")  # the lock went with the close
    await again.close()


async def test_garbage_file_is_moved_aside_and_a_fresh_database_started(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    garbage = os.urandom(16384)
    (data / DB_NAME).write_bytes(garbage)
    (data / f"{DB_NAME}-wal").write_bytes(b"not a wal either")
    db = await Database.open(data)
    try:
        moved = db.report.corrupt_moved_to  # type: ignore[union-attr]
        assert moved is not None and moved.name.startswith(f"{DB_NAME}.corrupt-")
        assert moved.read_bytes() == garbage
        assert Path(f"{moved}-wal").read_bytes() == b"not a wal either"
        record, created = await Commands(db).submit("api", "k", "move", {}, user="ann")
        assert created and (await Commands(db).get(record.id)) == record
    finally:
        await db.close()


async def test_damaged_page_is_detected_and_moved_aside(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = await Database.open(data)
    commands = Commands(db)
    for i in range(300):
        await commands.submit("api", f"k{i}", "move", {"pad": "x" * 500}, user="ann")
    await db.close()
    path = data / DB_NAME
    with path.open("r+b") as f:  # clobber a page in the middle, keep the header
        f.seek(path.stat().st_size // 2 // 4096 * 4096)
        f.write(b"\xa5" * 4096)
    db = await Database.open(data)
    try:
        assert db.report.corrupt_moved_to is not None  # type: ignore[union-attr]
        assert await commands.__class__(db).list() == []
    finally:
        await db.close()


async def test_newer_schema_is_refused_and_nothing_stays_locked(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = await Database.open(data)
    await db.close()
    conn = sqlite3.connect(data / DB_NAME)
    conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew) as err:
        await Database.open(data)
    assert err.value.code == "STORE_SCHEMA_NEWER"
    with DataDirLock(data):
        pass


async def test_database_of_another_program_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(data / DB_NAME)
    conn.execute("CREATE TABLE recipes (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(ForeignDatabase):
        await Database.open(data)


# ------------------------------------------------------------------------- group commit


async def test_fifty_concurrent_submitters_are_all_committed_in_shared_batches(
    db: Database,
) -> None:
    commands = Commands(db)

    async def submitter(n: int) -> list[str]:
        ids = []
        for i in range(20):
            record, created = await commands.submit("api", f"{n}-{i}", "move", {"n": n}, user="ann")
            assert created
            ids.append(record.id)
        return ids

    acknowledged = [i for ids in await asyncio.gather(*(submitter(n) for n in range(50))) for i in ids]
    assert len(set(acknowledged)) == 1000
    rows = await db.read(lambda conn: conn.execute_fetchall("SELECT id FROM commands"))
    assert {r[0] for r in rows} == set(acknowledged)
    unsent = await db.read(lambda conn: conn.execute_fetchall("SELECT count(*) FROM outbox WHERE kind = 'command'"))
    assert next(iter(unsent))[0] == 1000  # one outbox row per command, in the same commits
    stats = db.stats()
    assert stats["largest_batch"] > 1 and stats["batches"] < 1000


async def test_a_failing_unit_loses_only_itself(db: Database) -> None:
    commands = Commands(db)
    await commands.submit("api", "taken", "move", {"x": 1}, user="ann")

    async def fails_after_writing(conn: aiosqlite.Connection) -> None:
        await insert_event("doomed")(conn)
        raise ValueError("refused by its own logic")

    holder = await hold_writer(db, 0.2)
    results = await asyncio.gather(
        db.write(insert_event("a")),
        commands.submit("api", "p1", "move", {}, user="ann"),
        db.write(fails_after_writing),
        commands.submit("api", "taken", "move", {"x": 2}, user="ann"),  # reused key: refused
        commands.submit("api", "p2", "move", {}, user="ann"),
        db.write(insert_event("b")),
        return_exceptions=True,
    )
    await holder
    assert results[0] == "a" and results[5] == "b"
    assert isinstance(results[2], ValueError)
    assert isinstance(results[3], CommandKeyConflict)
    assert results[1][1] and results[4][1]  # created
    assert await markers(db) == {"a", "b"}
    keys = await db.read(lambda conn: conn.execute_fetchall("SELECT idempotency_key FROM commands"))
    assert sorted(r[0] for r in keys) == ["p1", "p2", "taken"]
    assert db.stats()["largest_batch"] >= 6


async def test_refusal_among_pipelined_units_keeps_the_others(db: Database) -> None:
    commands = Commands(db)
    await commands.submit("api", "dup", "move", {"v": 0}, user="ann")
    holder = await hold_writer(db, 0.2)
    keys = [f"k{i}" for i in range(30)]
    keys[17] = "dup"
    results = await asyncio.gather(
        *(commands.submit("api", k, "move", {"v": 1}, user="ann") for k in keys), return_exceptions=True
    )
    await holder
    assert isinstance(results[17], CommandKeyConflict)
    assert all(r[1] for i, r in enumerate(results) if i != 17)  # type: ignore[index]
    counts = await db.read(
        lambda conn: conn.execute_fetchall("SELECT (SELECT count(*) FROM commands), (SELECT count(*) FROM outbox)")
    )
    assert tuple(next(iter(counts))) == (30, 30)  # 29 new + "dup"; one outbox row each


async def test_statements_run_in_the_order_they_are_sent(db: Database) -> None:
    """pipeline.py relies on aiosqlite running queued jobs in order; check what SQLite saw."""
    seen: list[str] = []

    async def trace_on(conn: aiosqlite.Connection) -> None:
        await conn.set_trace_callback(seen.append)

    await db.write(trace_on)
    commands = Commands(db)
    holder = await hold_writer(db, 0.2)
    await asyncio.gather(
        db.write(insert_event("first")),
        *(commands.submit("api", f"t{i}", "move", {}, user="ann") for i in range(5)),
        db.write(insert_event("last")),
    )
    await holder

    async def trace_off(conn: aiosqlite.Connection) -> None:
        await conn.set_trace_callback(None)

    await db.write(trace_off)
    # Trigger programs are traced with their statement's text again: drop the repeats.
    statements = [text for text, _ in itertools.groupby(seen)]
    words = [" ".join(text.split()[:3]).upper() for text in statements]
    start = words.index("BEGIN IMMEDIATE")
    batch = words[start : words.index("COMMIT", start) + 1]
    outbox, commands = "INSERT INTO OUTBOX", "INSERT INTO COMMANDS"
    assert batch == (
        ["BEGIN IMMEDIATE", "SAVEPOINT UNIT", outbox, "RELEASE UNIT"]  # a plain unit
        + ["SAVEPOINT R1"]
        + [commands] * 5  # the pipelined run, sent in one go
        + ["SAVEPOINT UNIT", outbox, "RELEASE UNIT", "COMMIT"]
    )


# ------------------------------------------------------------------------- bounds and timeouts


async def test_full_queue_pushes_back_then_refuses(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "data", queue_size=2, write_timeout=0.3)
    try:
        holder = await hold_writer(db, 0.8)
        queued = [asyncio.create_task(db.write(insert_event(f"q{i}"), timeout=5)) for i in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(StoreOverloaded) as err:
            await db.write(insert_event("one too many"))
        assert err.value.code == "STORE_QUEUE_FULL"
        await holder
        assert [await t for t in queued] == ["q0", "q1"]
    finally:
        await db.close()


async def test_slow_unit_is_cut_off_and_the_writer_goes_on(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "data", unit_timeout=0.2)
    try:

        async def stuck(conn: aiosqlite.Connection) -> None:
            await insert_event("stuck")(conn)
            await asyncio.sleep(5)

        with pytest.raises(StoreTimeout):
            await db.write(stuck)
        assert await db.write(insert_event("after")) == "after"
        assert await markers(db) == {"after"}
    finally:
        await db.close()


async def test_caller_timeout_drops_a_write_that_has_not_started(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "data")
    try:
        holder = await hold_writer(db, 0.5)
        with pytest.raises(StoreTimeout) as err:
            await db.write(insert_event("too late"), timeout=0.1)
        assert "not written" in err.value.message
        await holder
        assert await markers(db) == set()
    finally:
        await db.close()


async def test_close_commits_what_was_acknowledged_in_flight(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "data")
    writes = [asyncio.create_task(db.write(insert_event(f"m{i}"))) for i in range(100)]
    await asyncio.sleep(0)
    await db.close()
    done = [t.result() for t in writes if not t.exception()]
    db = await Database.open(tmp_path / "data")
    try:
        assert set(done) <= await markers(db)
        assert len(done) == 100
    finally:
        await db.close()


# ------------------------------------------------------------------------- storage failures


async def test_disk_full_refuses_writes_keeps_reads_and_recovers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = await Database.open(data)
    await db.close()
    limit = (data / DB_NAME).stat().st_size + 256 * 1024
    db = await Database.open(data, max_bytes=limit)
    commands = Commands(db)
    try:
        acknowledged = []
        with pytest.raises(StoreUnavailable) as err:
            for i in range(1000):
                record, _ = await commands.submit("api", f"big{i}", "move", {"pad": "x" * 8000}, user="ann")
                acknowledged.append(record.id)
        assert err.value.code == "STORE_DISK_FULL" and err.value.hint
        assert acknowledged, "the limit was too small to test anything"
        assert not db.healthy
        health = db.health()
        assert health["ok"] is False and health["code"] == "STORE_DISK_FULL" and health["since"]
        # Reads still work and everything acknowledged is there.
        listed = await commands.list(limit=1000)
        assert {r.id for r in listed} == set(acknowledged)
        # A burst of concurrent writes while full: each refused, none half-written.
        results = await asyncio.gather(
            *(commands.submit("api", f"burst{i}", "move", {"pad": "y" * 8000}, user="ann") for i in range(20)),
            return_exceptions=True,
        )
        assert all(isinstance(r, StoreUnavailable) for r in results)
        # Small writes still fit; a successful commit makes the store healthy again.
        await db.write(insert_event("small"))
        assert db.healthy
    finally:
        await db.close()
    conn = sqlite3.connect(data / DB_NAME)
    assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    assert conn.execute("SELECT count(*) FROM commands").fetchone()[0] == len(acknowledged)
    conn.close()


def _make_read_only(path: Path) -> str:
    """Make the file read-only for this process; returns how, or skips if impossible."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        return "chmod"
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i: cannot make a read-only file")
    return "chattr"


def _undo_read_only(path: Path, how: str) -> None:
    if how == "chattr":
        subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o644)


async def test_read_only_database_refuses_writes_but_serves_reads(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = await Database.open(data)
    record, _ = await Commands(db).submit("api", "before", "move", {}, user="ann")
    await db.close()
    path = data / DB_NAME
    how = _make_read_only(path)
    try:
        db = await Database.open(data)
        try:
            assert not db.healthy
            assert db.health()["code"] == "STORE_READ_ONLY"
            with pytest.raises(StoreUnavailable) as err:
                await Commands(db).submit("api", "after", "move", {}, user="ann")
            assert err.value.code == "STORE_READ_ONLY" and "read-only" in err.value.hint
            assert (await Commands(db).get(record.id)).idempotency_key == "before"
        finally:
            await db.close()
    finally:
        _undo_read_only(path, how)


# ------------------------------------------------------------------------- pipelined units


class _Insert(Pipelined[int]):
    def __init__(self, marker: str, refuse: bool = False) -> None:
        self.marker, self.refuse = marker, refuse

    def statements(self) -> list[tuple[str, tuple[Any, ...]]]:
        return [
            (
                "INSERT INTO outbox (id, kind, created_at, payload) VALUES (?, 'event', 'now', ?) RETURNING seq",
                (new_id(), f'{{"marker": "{self.marker}"}}'),
            )
        ]

    def result(self, rows: list[list[Any]]) -> int:
        if self.refuse:
            raise LookupError(self.marker)
        return int(rows[0][0][0])


async def test_pipelined_unit_refusing_after_writing_is_rolled_back(db: Database) -> None:
    with pytest.raises(LookupError):
        await db.write(_Insert("alone", refuse=True))
    holder = await hold_writer(db, 0.2)
    results = await asyncio.gather(
        *(db.write(_Insert(f"p{i}", refuse=i == 3)) for i in range(8)), return_exceptions=True
    )
    await holder
    assert isinstance(results[3], LookupError)
    assert await markers(db) == {f"p{i}" for i in range(8) if i != 3}


async def test_pipelined_unit_inside_another_unit(db: Database) -> None:
    async def both(conn: aiosqlite.Connection) -> int:
        await insert_event("plain")(conn)
        return await _Insert("nested")(conn)

    assert await db.write(both) > 0
    assert await markers(db) == {"plain", "nested"}
