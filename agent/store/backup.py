"""`oht-agent db check | backup DEST | restore SRC`: plain functions for the CLI.

Each returns a JSON-friendly dict or raises a CodedError; the CLI prints either.

- `check` opens the database read-only (works while the daemon runs) and reports
  `PRAGMA quick_check`, the schema version, row counts and the outbox's backlog per stream
  (a kind -> stream mapping that differs from agent/store/streams.py is a problem).
- `backup` uses SQLite's online backup API, which copies a consistent snapshot while the daemon
  keeps writing (WAL: a reader never blocks the writer). The copy is a single self-contained
  file (journal_mode=DELETE), verified with quick_check before it gets its final name.
- `restore` takes the data-dir lock, so it refuses while the daemon runs (and the daemon cannot
  start during a restore). It refuses a source that fails quick_check, is not an oht-agent
  database, or has a schema newer than this code; keeps the current database as
  `agent.db.before-restore-<id>` (with its -wal/-shm), and puts the new file in place with
  write-to-temp + fsync + rename, so a crash leaves either the old or the new database.

- `upgrade_backup` is what the store runs by itself before it migrates an existing database to a
  newer schema (database.py): the same online backup, into `data_dir/backups/` under a name that
  carries the schema versions from and to and the UTC time, the newest `UPGRADE_BACKUPS_KEPT`
  kept. It is the way back to the previous release (docs/upgrade.md), so when it fails the
  migration is not applied (STORE_BACKUP_FAILED). `list_backups` shows them for `db backups`.

Ownership: these commands are often run as root while the daemon runs as its own user. Files
they create in the data directory get the owner and mode of the database they belong to, so the
daemon can still open them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.ids import new_id
from agent.store import streams
from agent.store.errors import (
    BackupError,
    ForeignDatabase,
    SchemaTooNew,
    StoreError,
    UpgradeBackupFailed,
    map_sqlite_error,
)
from agent.store.layout import BACKUPS_DIR, DB_NAME
from agent.store.lock import DataDirLock
from agent.store.migrations import APPLICATION_ID, LATEST_VERSION, check_identity
from agent.store.private_files import fsync_dir

__all__ = ["UPGRADE_BACKUPS_KEPT", "backup", "check", "list_backups", "restore", "upgrade_backup"]

log = logging.getLogger("oht.store")

_SIDE_FILES = ("-wal", "-shm")
# How many automatic pre-migration backups stay in data_dir/backups: enough to step back through
# several upgrades, bounded so that a carriage upgraded often does not fill its partition.
UPGRADE_BACKUPS_KEPT = 5
_UPGRADE_TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"
_UPGRADE_NAME = re.compile(r"^agent-v(\d+)-to-v(\d+)-(\d{8}T\d{6}\.\d{6}Z)\.db$")
_BUSY_TIMEOUT_MS = 10_000


def _side_files(path: Path) -> list[Path]:
    return [Path(f"{path}{suffix}") for suffix in _SIDE_FILES]


def _chown_like(paths: list[Path], reference: Path) -> None:
    """Give new files the owner and mode of `reference` (only root can, and needs to)."""
    if os.geteuid() != 0 or not reference.exists():
        return
    ref = reference.stat()
    for path in paths:
        with contextlib.suppress(FileNotFoundError, PermissionError):
            os.chown(path, ref.st_uid, ref.st_gid)
            os.chmod(path, ref.st_mode & 0o777)


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection; -wal/-shm files SQLite creates for it get the db's owner."""
    if not path.is_file():
        raise BackupError(
            f"{path} does not exist or is not a file",
            code="STORE_FILE_MISSING",
            hint="Check the path (and the data_dir in the agent's configuration).",
        )
    existed = {p for p in _side_files(path) if p.exists()}
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise map_sqlite_error(exc) from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        yield conn
    except sqlite3.Error as exc:
        raise map_sqlite_error(exc) from exc
    finally:
        conn.close()
        _chown_like([p for p in _side_files(path) if p.exists() and p not in existed], path)


def _inspect(conn: sqlite3.Connection) -> dict[str, Any]:
    """quick_check, identity and row counts of an open database (never raises on corruption)."""
    info: dict[str, Any] = {}
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check(20)")]
    except sqlite3.DatabaseError as exc:
        info["quick_check"] = [f"{exc} ({getattr(exc, 'sqlite_errorname', 'error')})"]
        info["ok"] = False
        return info
    info["quick_check"] = "ok" if rows == ["ok"] else rows
    (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    info["application_id_ok"] = app_id == APPLICATION_ID
    info["schema_version"] = int(version)
    info["known_schema_version"] = LATEST_VERSION
    info["counts"] = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    if "commands" in tables:
        info["commands_by_state"] = dict(conn.execute("SELECT state, count(*) FROM commands GROUP BY state").fetchall())
    problems = []
    if "outbox_streams" in tables:
        info["outbox"] = _outbox_streams(conn)
        info["outbox_unacked"] = sum(s["unacked"] for s in info["outbox"].values())
    try:
        check_identity(app_id, version, len(tables), what="the database")
        if version == 0:
            problems.append("empty database (no oht-agent schema yet)")
    except StoreError as exc:
        problems.append(str(exc))
    if info["quick_check"] != "ok":
        problems.append("quick_check found damage")
    info["problems"] = problems
    info["ok"] = not problems
    return info


def _outbox_streams(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Per stream: its class, last seq written, seq acknowledged, records waiting and bytes."""
    out = {}
    for stream, last_seq, acked_seq, rows, size in conn.execute(
        "SELECT stream, last_seq, acked_seq, rows, bytes FROM outbox_streams ORDER BY stream"
    ):
        declared = streams.STREAM_BY_NAME.get(stream)
        out[stream] = {
            "class": declared.cls.value if declared else None,
            "last_seq": last_seq, "acked_seq": acked_seq, "unacked": rows, "bytes": size,
        }  # fmt: skip
    return out


def _stream_mapping_problems(conn: sqlite3.Connection) -> list[str]:
    """Where the database's kind -> stream mapping differs from agent/store/streams.py (the core
    aligns it at start: a difference means it has not run this release on this database yet)."""
    stored = dict(conn.execute("SELECT kind, stream FROM outbox_kinds").fetchall())
    known = {r[0] for r in conn.execute("SELECT stream FROM outbox_streams")}
    problems = [
        f"outbox kind {kind!r} goes to stream {stored.get(kind)!r} in the database, {stream!r} in this release"
        for kind, stream in sorted(streams.KIND_STREAM.items())
        if stored.get(kind) != stream
    ]
    undeclared = sorted(set(stored) - set(streams.KIND_STREAM))
    problems += [f"outbox kind {kind!r} is in the database but not declared" for kind in undeclared]
    uncounted = sorted(set(streams.STREAM_BY_NAME) - known)
    problems += [f"outbox stream {s!r} is declared but has no counter row" for s in uncounted]
    return problems


def check(data_dir: Path | str) -> dict[str, Any]:
    """Integrity, schema version, row counts and outbox backlog of `data_dir/agent.db` (daemon may run)."""
    path = Path(data_dir) / DB_NAME
    with _read_only(path) as conn:
        info = _inspect(conn)
        if "outbox" in info:  # checked here, not in every copy: a backup is still worth making
            info["problems"] += _stream_mapping_problems(conn)
            info["ok"] = info["ok"] and not info["problems"]
    info["path"] = str(path)
    info["size_bytes"] = path.stat().st_size
    wal = Path(f"{path}-wal")
    info["wal_bytes"] = wal.stat().st_size if wal.exists() else 0
    return info


def _copy_database(src: sqlite3.Connection, target: Path) -> dict[str, Any]:
    """Online-backup `src` into a new single file `target`; verify it; fsync it."""
    dst = sqlite3.connect(target, isolation_level=None)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        info = _inspect(dst)
    finally:
        dst.close()
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return info


def backup(data_dir: Path | str, dest: Path | str) -> dict[str, Any]:
    """Copy the live database to `dest` (a new file, or a directory to put one in)."""
    path = Path(data_dir) / DB_NAME
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / f"agent-backup-{new_id()}.db"
    if dest.exists():
        raise BackupError(
            f"{dest} already exists",
            code="BACKUP_DEST_EXISTS",
            hint="Choose a new file name (or a directory); an existing backup is never overwritten.",
        )
    if not dest.parent.is_dir():
        raise BackupError(f"directory {dest.parent} does not exist", code="BACKUP_DEST_INVALID")
    temp = dest.with_name(f".{dest.name}.tmp-{new_id()}")
    try:
        with _read_only(path) as src:
            info = _copy_database(src, temp)
        if not info["ok"]:
            raise BackupError(
                f"the copy of {path} is not sound: {'; '.join(info['problems'])}",
                code="BACKUP_SOURCE_DAMAGED",
                hint="The live database is damaged: restart the agent (it moves the file aside) "
                "and restore the last good backup.",
            )
        try:
            os.link(temp, dest)  # atomic, and never replaces a file that appeared meanwhile
        except FileExistsError:
            raise BackupError(f"{dest} already exists", code="BACKUP_DEST_EXISTS") from None
        fsync_dir(dest.parent)
    except OSError as exc:
        raise BackupError(f"backup to {dest} failed: {exc}", code="BACKUP_FAILED") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    return {
        "path": str(dest),
        "size_bytes": dest.stat().st_size,
        "schema_version": info["schema_version"],
        "quick_check": info["quick_check"],
        "counts": info["counts"],
    }


def restore(data_dir: Path | str, src: Path | str) -> dict[str, Any]:
    """Replace `data_dir/agent.db` by `src`; refuses while the daemon runs (DATA_DIR_LOCKED)."""
    data_dir, src = Path(data_dir), Path(src)
    path = data_dir / DB_NAME
    with DataDirLock(data_dir):
        with _read_only(src) as conn:
            info = _inspect(conn)
        if info["quick_check"] != "ok":
            raise BackupError(
                f"{src} fails quick_check: {info['quick_check']}",
                code="RESTORE_SOURCE_DAMAGED",
                hint="Use another (older) backup.",
            )
        if not info["application_id_ok"] or info["schema_version"] == 0:
            raise ForeignDatabase(f"{src} is not an oht-agent database")
        if info["schema_version"] > LATEST_VERSION:
            raise SchemaTooNew(
                f"{src} has schema version {info['schema_version']}; this oht-agent knows up to {LATEST_VERSION}"
            )
        restore_id = new_id()
        temp = data_dir / f".{DB_NAME}.restore-{restore_id}.tmp"
        kept: Path | None = None
        try:
            with _read_only(src) as conn:
                copied = _copy_database(conn, temp)
            if not copied["ok"]:
                raise BackupError(
                    f"the copy of {src} is not sound: {'; '.join(copied['problems'])}",
                    code="RESTORE_FAILED",
                )
            _chown_like([temp], path)
            if path.exists():
                kept = data_dir / f"{DB_NAME}.before-restore-{restore_id}"
                try:
                    os.link(path, kept)  # the live name stays valid until the final rename
                except OSError:
                    path.rename(kept)  # file systems without hard links
                for side in _side_files(path):
                    if side.exists():  # a stale -wal must never meet the new file
                        side.rename(f"{kept}{side.name[len(DB_NAME) :]}")
            os.replace(temp, path)
            fsync_dir(data_dir)
        except OSError as exc:
            raise BackupError(f"restore into {path} failed: {exc}", code="RESTORE_FAILED") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
    return {
        "path": str(path),
        "restored_from": str(src),
        "previous_saved_as": None if kept is None else str(kept),
        "schema_version": copied["schema_version"],
        "counts": copied["counts"],
    }


def _upgrade_backups(folder: Path) -> list[tuple[datetime, int, int, Path]]:
    """(taken at, from version, to version, path) of the automatic backups in `folder`, newest first.

    Only names this module makes count: a file a technician put there is never listed or pruned.
    """
    found = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for path in folder.iterdir():
            match = _UPGRADE_NAME.match(path.name)
            if match is None or not path.is_file():
                continue
            taken = datetime.strptime(match[3], _UPGRADE_TIME_FORMAT).replace(tzinfo=UTC)
            found.append((taken, int(match[1]), int(match[2]), path))
    return sorted(found, reverse=True)


def upgrade_backup(
    data_dir: Path | str, from_version: int, to_version: int, *, keep: int = UPGRADE_BACKUPS_KEPT
) -> Path:
    """Back up `data_dir/agent.db` before it is migrated from `from_version` to `to_version`.

    Returns the new file (`backups/agent-v<from>-to-v<to>-<UTC time>.db`, verified and fsynced),
    then removes all but the newest `keep` automatic backups. Raises UpgradeBackupFailed when
    no sound copy could be made: the caller must then not migrate.
    """
    if keep < 1:
        raise ValueError("keep at least the backup just taken")
    data_dir = Path(data_dir)
    folder = data_dir / BACKUPS_DIR
    stamp = datetime.now(UTC).strftime(_UPGRADE_TIME_FORMAT)
    dest = folder / f"agent-v{from_version}-to-v{to_version}-{stamp}.db"
    try:
        if not folder.is_dir():
            folder.mkdir(mode=0o700)
            fsync_dir(data_dir)
            _chown_like([folder], data_dir)
        backup(data_dir, dest)
        _chown_like([dest], data_dir / DB_NAME)  # a user command run as root may be the one migrating
    except (OSError, StoreError) as exc:
        raise UpgradeBackupFailed(
            f"cannot back up {data_dir / DB_NAME} before migrating it from schema version {from_version} "
            f"to {to_version}: {exc}"
        ) from exc
    for _, _, _, old in _upgrade_backups(folder)[keep:]:
        try:
            old.unlink()
        except OSError as exc:  # the new backup exists: a stale old one only costs space
            log.warning("cannot remove the old upgrade backup %s: %s", old, exc)
    return dest


def list_backups(data_dir: Path | str) -> dict[str, Any]:
    """The automatic pre-migration backups of `data_dir`, newest first, for `oht-agent db backups`.

    `restorable` says whether this release can open the backup (`db restore` refuses a newer
    schema); the one to go back to after an upgrade is the newest whose `from_version` is this
    release's `schema_version`.
    """
    folder = Path(data_dir) / BACKUPS_DIR
    return {
        "backups_dir": str(folder),
        "schema_version": LATEST_VERSION,
        "backups": [
            {
                "path": str(path),
                "from_version": from_version,
                "to_version": to_version,
                "taken_at": taken.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "size_bytes": path.stat().st_size,
                "restorable": from_version <= LATEST_VERSION,
            }
            for taken, from_version, to_version, path in _upgrade_backups(folder)
        ],
    }
