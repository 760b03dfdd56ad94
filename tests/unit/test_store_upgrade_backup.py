"""The backup the store takes before it migrates: before and only before a migration, bounded, and
no migration without it."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from agent.cli import main
from agent.ids import new_id
from agent.store.backup import UPGRADE_BACKUPS_KEPT, list_backups, upgrade_backup
from agent.store.database import Database
from agent.store.errors import UpgradeBackupFailed
from agent.store.layout import BACKUPS_DIR, DB_NAME
from agent.store.lock import DataDirLock
from agent.store.migrations import LATEST_VERSION, migrate

OLD = LATEST_VERSION - 2  # a release two schema versions back


async def build_old(data: Path, version: int = OLD) -> str:
    """A data directory whose database an older release left at `version`, with one command."""
    data.mkdir(parents=True, exist_ok=True)
    async with aiosqlite.connect(data / DB_NAME, isolation_level=None) as conn:
        await conn.create_function("oht_new_id", 0, new_id)  # as the writer registers it
        await migrate(conn, target=version)
        command_id = new_id()
        await conn.execute(
            "INSERT INTO commands (id, source, idempotency_key, type, params, created_at, updated_at)"
            " VALUES (?, 'api', 'k', 'move', '{\"to\": 3}', '2026-01-01T00:00:00.000000Z',"
            " '2026-01-01T00:00:00.000000Z')",
            (command_id,),
        )
        return command_id


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def command_ids(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM commands ORDER BY seq")]
    finally:
        conn.close()


def automatic_backups(data: Path) -> list[str]:
    return sorted(p.name for p in (data / BACKUPS_DIR).glob("agent-v*-to-v*.db"))


async def test_a_fresh_or_current_database_is_not_backed_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for _ in range(2):  # created (version 0 -> latest), then opened at the latest version
        db = await Database.open(data)
        assert db.report is not None and db.report.upgrade_backup is None
        await db.close()
    assert not (data / BACKUPS_DIR).exists()


async def test_an_old_database_is_backed_up_as_it_was_then_migrated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    command_id = await build_old(data)
    with caplog.at_level(logging.WARNING, logger="oht.store"):
        db = await Database.open(data)
    await db.close()
    assert db.report is not None and db.report.migrated_from == OLD
    backup = db.report.upgrade_backup
    assert backup is not None and backup.parent == data / BACKUPS_DIR
    assert backup.name.startswith(f"agent-v{OLD}-to-v{LATEST_VERSION}-")
    # The copy is the database as the old release left it; the live one moved on.
    assert user_version(backup) == OLD and command_ids(backup) == [command_id]
    assert user_version(data / DB_NAME) == LATEST_VERSION
    assert any(str(backup) in r.getMessage() for r in caplog.records), "no log line names the backup"
    listed = list_backups(data)["backups"]
    assert [(b["path"], b["from_version"], b["to_version"], b["restorable"]) for b in listed] == [
        (str(backup), OLD, LATEST_VERSION, True)
    ]


async def test_only_the_newest_backups_are_kept_and_other_files_are_left_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await build_old(data)
    folder = data / BACKUPS_DIR
    folder.mkdir()
    older = [folder / f"agent-v1-to-v2-2020010{i}T000000.000000Z.db" for i in range(1, UPGRADE_BACKUPS_KEPT + 2)]
    for path in older:
        path.write_bytes(b"an older backup")
    mine = folder / "before-the-service-visit.db"
    mine.write_bytes(b"a technician's own copy")
    db = await Database.open(data)
    await db.close()
    assert db.report is not None and db.report.upgrade_backup is not None
    kept = automatic_backups(data)
    assert len(kept) == UPGRADE_BACKUPS_KEPT
    assert db.report.upgrade_backup.name in kept
    # The newest of the old ones stay, the oldest go.
    assert set(kept) - {db.report.upgrade_backup.name} == {p.name for p in older[-(UPGRADE_BACKUPS_KEPT - 1) :]}
    assert mine.read_bytes() == b"a technician's own copy"


async def test_no_migration_without_the_backup(tmp_path: Path) -> None:
    data = tmp_path / "data"
    command_id = await build_old(data)
    (data / BACKUPS_DIR).write_bytes(b"")  # a file where the folder must go: as unwritable as a full disk
    with pytest.raises(UpgradeBackupFailed) as caught:
        await Database.open(data)
    assert caught.value.code == "STORE_BACKUP_FAILED"
    assert "NOT migrated" in caught.value.hint
    assert f"from schema version {OLD} to {LATEST_VERSION}" in caught.value.message
    assert user_version(data / DB_NAME) == OLD and command_ids(data / DB_NAME) == [command_id]
    DataDirLock(data).acquire().release()  # the failed start let go of the data directory
    (data / BACKUPS_DIR).unlink()
    db = await Database.open(data)
    await db.close()
    assert db.report is not None and db.report.schema_version == LATEST_VERSION
    assert db.report.upgrade_backup is not None


async def test_migrate_calls_before_only_ahead_of_a_change_to_an_existing_database(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    calls: list[tuple[int, int, int]] = []

    async def before(current: int, target: int) -> None:
        calls.append((current, target, user_version(path)))  # what is on disk when it runs

    async with aiosqlite.connect(path, isolation_level=None) as conn:
        await migrate(conn, target=OLD, before=before)  # a new database: nothing to go back to
        assert calls == []
        await migrate(conn, before=before)
        assert calls == [(OLD, LATEST_VERSION, OLD)]
        await migrate(conn, before=before)  # already current: nothing to do
        assert calls == [(OLD, LATEST_VERSION, OLD)]


async def test_a_failing_before_leaves_the_database_unchanged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await build_old(data)

    async def refuse(current: int, target: int) -> None:
        raise UpgradeBackupFailed("disk full")

    async with aiosqlite.connect(data / DB_NAME, isolation_level=None) as conn:
        with pytest.raises(UpgradeBackupFailed):
            await migrate(conn, before=refuse)
        assert not conn.in_transaction
    assert user_version(data / DB_NAME) == OLD


def test_upgrade_backup_of_a_missing_database_is_a_coded_failure(tmp_path: Path) -> None:
    with pytest.raises(UpgradeBackupFailed) as caught:
        upgrade_backup(tmp_path, 1, 2)
    assert "STORE_FILE_MISSING" in caught.value.message


async def test_db_backups_lists_them_for_the_technician(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    await build_old(data)
    db = await Database.open(data)
    await db.close()
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nid = "upg-test"\ndata_dir = "{data}"\n[bus]\nport = "/dev/null"\n')
    assert main(["db", "backups", "--config", str(config)]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["schema_version"] == LATEST_VERSION
    assert [(b["from_version"], b["to_version"]) for b in listing["backups"]] == [(OLD, LATEST_VERSION)]
