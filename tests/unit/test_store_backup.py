"""db check / backup / restore, and the data-dir lock they rely on."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.store import backup as store_backup
from agent.store.commands import Commands
from agent.store.database import DB_NAME, Database
from agent.store.errors import BackupError, DataDirBusy, ForeignDatabase, SchemaTooNew
from agent.store.lock import DataDirLock
from agent.store.migrations import APPLICATION_ID, LATEST_VERSION


async def filled(data: Path, n: int = 20) -> list[str]:
    db = await Database.open(data)
    try:
        commands = Commands(db)
        return [(await commands.submit("api", f"k{i}", "move", {"i": i}, user="ann"))[0].id for i in range(n)]
    finally:
        await db.close()


def command_ids(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT id FROM commands")}
    finally:
        conn.close()


# ------------------------------------------------------------------------- lock


def test_lock_is_exclusive_across_processes(tmp_path: Path) -> None:
    probe = (
        "import sys; from agent.store.lock import DataDirLock\n"
        "try:\n    DataDirLock(sys.argv[1]).acquire()\nexcept Exception as e:\n"
        "    print(e.code); sys.exit(3)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with DataDirLock(tmp_path) as lock:
        assert lock.held
        other = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, env=env)
        assert other.returncode == 3 and other.stdout.strip() == "DATA_DIR_LOCKED"
    assert not lock.held
    free = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], env=env)
    assert free.returncode == 0


# ------------------------------------------------------------------------- check


async def test_check_reports_integrity_version_and_counts_while_running(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await filled(data, 5)
    db = await Database.open(data)
    try:
        info = store_backup.check(data)
    finally:
        await db.close()
    assert info["ok"] is True and info["quick_check"] == "ok" and info["problems"] == []
    assert info["schema_version"] == LATEST_VERSION == info["known_schema_version"]
    assert info["counts"]["commands"] == 5 and info["commands_by_state"] == {"queued": 5}
    assert info["outbox_unacked"] == 5
    assert info["outbox"]["results"] == {
        "class": "critical",
        "last_seq": 5,
        "acked_seq": 0,
        "unacked": 5,
        "bytes": info["outbox"]["results"]["bytes"],
    }
    assert info["outbox"]["results"]["bytes"] > 5 * 128
    assert set(info["outbox"]) == {"results", "alarms", "events", "audit", "telemetry"}


async def test_check_reports_a_stream_mapping_that_differs_from_the_declaration(tmp_path: Path) -> None:
    """A release that moved a kind to another stream without a migration writing it: `db check`
    names the kind (a backup is still made: the data is sound)."""
    data = tmp_path / "data"
    await filled(data, 1)
    conn = sqlite3.connect(data / DB_NAME)
    conn.execute("UPDATE outbox_kinds SET stream = 'events' WHERE kind = 'alarm'")
    conn.execute("INSERT INTO outbox_kinds (kind, stream) VALUES ('retired', 'events')")
    conn.commit()
    conn.close()
    info = store_backup.check(data)
    assert info["ok"] is False
    assert info["problems"] == [
        "outbox kind 'alarm' goes to stream 'events' in the database, 'alarms' in this release",
        "outbox kind 'retired' is in the database but not declared",
    ]
    assert store_backup.backup(data, tmp_path / "copy.db")["schema_version"] == LATEST_VERSION


def test_check_reports_damage_and_missing_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(BackupError) as err:
        store_backup.check(data)
    assert err.value.code == "STORE_FILE_MISSING"
    (data / DB_NAME).write_bytes(os.urandom(8192))
    info = store_backup.check(data)
    assert info["ok"] is False and info["quick_check"] != "ok"


# ------------------------------------------------------------------------- backup and restore


async def test_backup_while_writing_then_restore_round_trip(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = await Database.open(data)
    commands = Commands(db)
    before = [(await commands.submit("api", f"k{i}", "move", {}, user="ann"))[0].id for i in range(50)]

    async def keep_writing() -> None:
        for i in range(200):
            await commands.submit("api", f"busy{i}", "move", {}, user="ann")

    writer = asyncio.create_task(keep_writing())
    await asyncio.sleep(0.01)
    result = await asyncio.to_thread(store_backup.backup, data, tmp_path / "b.db")
    await writer
    # A restore refuses while the daemon holds the data directory.
    with pytest.raises(DataDirBusy) as busy:
        store_backup.restore(data, tmp_path / "b.db")
    assert busy.value.code == "DATA_DIR_LOCKED"
    after_backup, _ = await commands.submit("api", "after", "move", {}, user="ann")
    await db.close()

    backup_file = Path(result["path"])
    assert result["quick_check"] == "ok" and result["schema_version"] == LATEST_VERSION
    assert not Path(f"{backup_file}-wal").exists()  # one self-contained file
    assert set(before) <= command_ids(backup_file)
    with pytest.raises(BackupError) as exists:
        store_backup.backup(data, backup_file)
    assert exists.value.code == "BACKUP_DEST_EXISTS"

    restored = store_backup.restore(data, backup_file)
    kept = Path(restored["previous_saved_as"])
    assert kept.name.startswith(f"{DB_NAME}.before-restore-")
    assert after_backup.id in command_ids(kept)  # the replaced database is kept whole
    assert command_ids(data / DB_NAME) == command_ids(backup_file)
    assert not Path(f"{data / DB_NAME}-wal").exists()
    db = await Database.open(data)
    try:
        assert db.healthy and db.report.corrupt_moved_to is None  # type: ignore[union-attr]
        assert set(before) <= {r.id for r in await Commands(db).list(limit=1000)}
    finally:
        await db.close()


async def test_backup_into_a_directory_picks_a_new_name(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await filled(data, 3)
    first = store_backup.backup(data, tmp_path)
    second = store_backup.backup(data, tmp_path)
    assert first["path"] != second["path"] and first["counts"]["commands"] == 3


async def test_restore_refuses_damaged_foreign_and_newer_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ids = await filled(data, 3)
    original = (data / DB_NAME).read_bytes()

    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(os.urandom(8192))
    with pytest.raises(BackupError) as err:
        store_backup.restore(data, damaged)
    assert err.value.code == "RESTORE_SOURCE_DAMAGED"

    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE recipes (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(ForeignDatabase):
        store_backup.restore(data, foreign)

    newer = tmp_path / "newer.db"
    store_backup.backup(data, newer)
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew):
        store_backup.restore(data, newer)

    with pytest.raises(BackupError) as missing:
        store_backup.restore(data, tmp_path / "nothing-here.db")
    assert missing.value.code == "STORE_FILE_MISSING"

    assert (data / DB_NAME).read_bytes() == original  # nothing was touched
    assert command_ids(data / DB_NAME) == set(ids)
    assert sorted(p.name for p in data.iterdir()) == [DB_NAME, "agent.lock", "audit.key"]
    conn = sqlite3.connect(data / DB_NAME)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    conn.close()
