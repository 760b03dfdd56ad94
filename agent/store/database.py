"""The agent's SQLite database (`data_dir/agent.db`): open safely, write durably, read, health.

Start-up, in this order: take the data-dir lock (one process per database), `PRAGMA
quick_check` (a corrupt file is moved aside as `agent.db.corrupt-<id>` with its -wal/-shm and a
fresh database is created; never reused silently), open exactly one writer connection (WAL,
synchronous=FULL, foreign keys) plus read-only reader connections, back up a database that
needs a migration (`data_dir/backups`, backup.py: no migration without the way back), apply
pending migrations in one transaction, then mark commands that were running when the agent stopped as interrupted.
What was found is returned as a `StartupReport` for the daemon to raise latched faults.

Writes go through the group-commit writer (writer.py): `await db.write(unit)` returns after the
unit's data is committed. Storage failures never crash the daemon: the write raises
`StoreUnavailable` (STORE_DISK_FULL, STORE_READ_ONLY, STORE_IO_ERROR, ...), `healthy` turns False
and `health()` says why, so the API can refuse new commands while reads keep working. Health
follows the latest batch: it turns True again after the next successful commit.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiosqlite

from agent.ids import new_id
from agent.store import chain_key, private_files
from agent.store import commands as _commands
from agent.store import outbox as _outbox
from agent.store.audit import AuditEntry, append_in, bind_chain_key, params_digest
from agent.store.backup import upgrade_backup
from agent.store.clock import now_ts
from agent.store.errors import (
    StoreClosed,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
    map_sqlite_error,
    sqlite_primary_code,
)
from agent.store.layout import DB_NAME
from agent.store.lock import DataDirLock
from agent.store.migrations import LATEST_VERSION, check_identity, migrate, read_identity
from agent.store.pipeline import Pipelined, enqueue, settle
from agent.store.writer import GroupWriter, Unit

__all__ = ["DB_NAME", "Database", "StartupReport", "Unit"]

log = logging.getLogger("oht.store")

T = TypeVar("T")

_SIDE_FILES = ("-wal", "-shm")
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024  # truncate the WAL back to this after checkpoints


@dataclass(frozen=True)
class StartupReport:
    """What `Database.start` found; the daemon raises a latched fault if `corrupt_moved_to`."""

    corrupt_moved_to: Path | None
    schema_version: int
    interrupted_commands: int
    migrated_from: int = 0
    upgrade_backup: Path | None = None  # the backup taken before a migration, if one ran


class Database:
    """The store's connections, their lifecycle and health.

    Every wait is bounded: `write_timeout` covers queueing plus execution of one write,
    `read_timeout` one read, `unit_timeout` the time one unit may hold the writer,
    `start_timeout` the integrity check and migrations, `close_timeout` the final drain.
    `max_bytes` bounds the database file (SQLite `max_page_count`): writes beyond it fail with
    STORE_DISK_FULL instead of filling the partition the rest of the system needs.
    `queue_size` bounds the writes waiting for the writer (callers then wait, up to their
    timeout: back-pressure); `max_batch` bounds one transaction.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        max_bytes: int | None = None,
        queue_size: int = 1024,
        max_batch: int = 256,
        readers: int = 2,
        busy_timeout_ms: int = 5000,
        write_timeout: float = 30.0,
        read_timeout: float = 30.0,
        unit_timeout: float = 10.0,
        start_timeout: float = 300.0,
        close_timeout: float = 10.0,
        attach: bool = False,
    ) -> None:
        if queue_size < 1 or readers < 1 or max_batch < 1:
            raise ValueError("queue_size, max_batch and readers must be at least 1")
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self._max_bytes = max_bytes
        self._queue_size = queue_size
        self._max_batch = max_batch
        self._n_readers = readers
        self._busy_timeout_ms = busy_timeout_ms
        self._write_timeout = write_timeout
        self._read_timeout = read_timeout
        self._unit_timeout = unit_timeout
        self._start_timeout = start_timeout
        self._close_timeout = close_timeout
        # Attached: a second process (the gateway, or the CLI while the daemon runs) on the database
        # the core opened: no lock, no integrity check or migration, the schema must be current.
        self._attach = attach
        self._lock = DataDirLock(self.data_dir)
        self._writer_conn: aiosqlite.Connection | None = None
        self._writer: GroupWriter | None = None
        self._readers: asyncio.Queue[aiosqlite.Connection] | None = None
        self._reader_conns: list[aiosqlite.Connection] = []
        self._running = False
        self._healthy = True
        self._error: StoreError | None = None
        self._unhealthy_since: str | None = None
        self.report: StartupReport | None = None
        self.chain_key: chain_key.ChainKey | None = None
        self._upgrade_backup: Path | None = None

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, data_dir: Path | str, **options: Any) -> Database:
        """Construct and start; the startup report is in `db.report`."""
        db = cls(data_dir, **options)
        await db.start()
        return db

    async def start(self) -> StartupReport:
        """Lock, check, migrate, open, interrupt stale runs; see the module docstring.

        Raises DataDirBusy, SchemaTooNew, ForeignDatabase, StoreUnavailable or StoreTimeout
        when the database cannot be served at all; then nothing stays open or locked.
        """
        if self._running:
            raise StoreError("database already started", code="STORE_ALREADY_STARTED")
        if not self._attach:
            self._lock.acquire()
        try:
            async with asyncio.timeout(self._start_timeout):
                report = await self._start()
        except TimeoutError:
            await self._teardown()
            raise StoreTimeout(
                f"opening {self.path} took longer than {self._start_timeout:.0f} s",
                hint="The integrity check or a migration is too slow: check the storage (dmesg).",
            ) from None
        except BaseException:
            await self._teardown()
            raise
        self.report = report
        return report

    async def _start(self) -> StartupReport:
        self._upgrade_backup = None
        moved = None if self._attach else await self._check_or_move_aside()
        if not self._attach:
            for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"):
                private_files.conform(self.data_dir / name, private_files.DATABASE_MODE)
            private_files.conform(self.data_dir / chain_key.KEY_FILE, private_files.KEY_MODE)
            private_files.conform(self._lock.path, 0o600)
            private_files.create_empty(self.path, private_files.DATABASE_MODE)
        if self._attach and not self.path.exists():
            raise StoreUnavailable(
                f"{self.path} does not exist yet",
                code="STORE_NOT_CREATED",
                hint="the core creates the database when it starts; start oht-agent-core first",
            )
        self._writer_conn = conn = await self._connect(writer=True)
        try:
            if self._attach:
                app_id, before, objects = await read_identity(conn)
                check_identity(app_id, before, objects, what=str(self.path))
                if before != LATEST_VERSION:
                    raise StoreUnavailable(
                        f"{self.path} has schema version {before}; this release needs {LATEST_VERSION}",
                        code="STORE_SCHEMA_PENDING",
                        hint="the core migrates the database when it starts; wait for it, or start it",
                    )
                version = before
            else:
                before, version = await migrate(conn, before=self._backup_before_migration)
            key, key_created = await self._chain_key(conn)
        except sqlite3.Error as exc:
            raise map_sqlite_error(exc) from exc
        self.chain_key = key
        bind_chain_key(conn, key)
        for _ in range(self._n_readers):
            reader = await self._connect(writer=False)
            bind_chain_key(reader, key)
            self._reader_conns.append(reader)
        self._readers = asyncio.Queue(maxsize=self._n_readers)
        for reader in self._reader_conns:
            self._readers.put_nowait(reader)
        self._writer = GroupWriter(
            conn,
            queue_size=self._queue_size,
            max_batch=self._max_batch,
            unit_timeout=self._unit_timeout,
            on_outcome=self._on_outcome,
        )
        self._writer.start()
        self._running = True
        interrupted = 0
        if self._attach:
            return StartupReport(
                corrupt_moved_to=None, schema_version=version, interrupted_commands=0, migrated_from=before
            )

        async def first_write(conn: aiosqlite.Connection) -> int:
            # A real write (the same version again) finds a read-only file or a full disk now,
            # not at the first command; the outbox's streams are brought in line with this
            # release's declaration; then the commands left running are interrupted.
            await conn.execute(f"PRAGMA user_version = {version}")
            if await _outbox.align_streams_in(conn):
                log.warning("outbox stream mapping updated to this release's declaration")
            return len(await _commands.interrupt_running_in(conn))

        try:
            interrupted = await self.write(first_write)
            if key_created and key.from_seq > 1:
                log.warning("audit chain key created; rows before %d stay plain SHA-256", key.from_seq)
                entry = AuditEntry(actor="agent", auth_method="local", action="audit.key_created",
                                   params_digest=params_digest({"from_seq": key.from_seq}))  # fmt: skip
                await self.write(lambda conn: append_in(conn, entry))
        except StoreUnavailable as exc:
            # Read-only or full: serve reads, report unhealthy, let the daemon raise a fault.
            log.error("cannot mark interrupted commands at start: %s", exc)
        if moved is not None:
            log.error("corrupt database moved aside to %s; started a fresh one", moved)
        return StartupReport(
            corrupt_moved_to=moved,
            schema_version=version,
            interrupted_commands=interrupted,
            migrated_from=before,
            upgrade_backup=self._upgrade_backup,
        )

    async def _backup_before_migration(self, from_version: int, to_version: int) -> None:
        """The way back to the previous release: a backup of the database as that release left it.

        Raises UpgradeBackupFailed (STORE_BACKUP_FAILED) when it cannot be taken; the start then
        fails before the migration, and the previous release can still open the database.
        """
        path = await asyncio.to_thread(upgrade_backup, self.data_dir, from_version, to_version)
        self._upgrade_backup = path
        log.warning(
            "migrating the database from schema version %d to %d; backup taken before: %s",
            from_version,
            to_version,
            path,
        )

    async def _chain_key(self, conn: aiosqlite.Connection) -> tuple[chain_key.ChainKey, bool]:
        """The audit chain's key: made by the core at its first start (covering the rows to come),
        only read by attached processes (which wait for the core when there is none yet)."""
        if self._attach:
            key = chain_key.load(self.data_dir)
            if key is None:
                raise StoreUnavailable(
                    f"{self.data_dir / chain_key.KEY_FILE} does not exist yet", code="STORE_AUDIT_KEY_MISSING",
                    hint=(
                        "The core makes the audit key when it starts;"
                        " start oht-agent-core first, or restore audit.key."
                    ),
                )  # fmt: skip
            return key, False
        rows = list(await conn.execute_fetchall("SELECT last_seq FROM audit_head WHERE id = 1"))
        next_seq = int(rows[0][0]) + 1 if rows else 1
        return chain_key.load_or_create(self.data_dir, next_seq)

    async def close(self) -> None:
        """Refuse new writes, commit what is queued (bounded), close connections, unlock."""
        self._running = False
        await self._teardown()

    async def _teardown(self) -> None:
        self._running = False
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.stop(self._close_timeout)
        conns = [c for c in [self._writer_conn, *self._reader_conns] if c is not None]
        self._writer_conn, self._reader_conns, self._readers = None, [], None
        for conn in conns:
            try:
                await asyncio.wait_for(conn.close(), self._close_timeout)
            except Exception as exc:
                log.warning("closing a database connection failed: %s", exc)
        if not self._attach:
            self._lock.release()

    async def __aenter__(self) -> Database:
        if not self._running:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ opening

    async def _connect(self, *, writer: bool) -> aiosqlite.Connection:
        # The writer uses implicit transactions (see writer.py); readers begin explicitly.
        conn = await aiosqlite.connect(self.path, isolation_level="IMMEDIATE" if writer else None)
        conn.row_factory = sqlite3.Row
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            if writer:
                rows = await conn.execute_fetchall("PRAGMA journal_mode = WAL")
                mode = str(next(iter(rows))[0]).lower()
                if mode != "wal":
                    raise StoreUnavailable(
                        f"cannot switch {self.path} to WAL (journal_mode={mode})",
                        code="STORE_READ_ONLY",
                        hint="The data directory must be writable by the agent user.",
                    )
                # The outbox triggers take their ids from agent/ids.py (migration 2).
                await conn.create_function("oht_new_id", 0, new_id)
                await conn.execute("PRAGMA synchronous = FULL")
                await conn.execute("PRAGMA foreign_keys = ON")
                await conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
                # Savepoint journals of a batch stay in memory (bounded by max_batch).
                await conn.execute("PRAGMA temp_store = MEMORY")
                if self._max_bytes is not None:
                    (page_size,) = next(iter(await conn.execute_fetchall("PRAGMA page_size")))
                    pages = max(1, self._max_bytes // int(page_size))
                    await conn.execute(f"PRAGMA max_page_count = {pages}")
            else:
                await conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            await conn.close()
            raise map_sqlite_error(exc) from exc
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _check_or_move_aside(self) -> Path | None:
        """Run `PRAGMA quick_check`; move a corrupt file (and its -wal/-shm) aside."""
        if not self.path.exists():
            return None
        try:
            # Read-only first: a read-write connection would checkpoint into (or delete) the
            # -wal of a damaged database on close, destroying what someone may want to examine.
            problem = await self._quick_check(read_only=True)
        except StoreUnavailable:
            problem = await self._quick_check(read_only=False)  # e.g. no read-only WAL access
        if problem is None:
            return None
        target = self.path.with_name(f"{DB_NAME}.corrupt-{new_id()}")
        log.error("database %s failed quick_check (%s)", self.path, problem)
        try:
            for suffix in _SIDE_FILES:
                side = Path(f"{self.path}{suffix}")
                if side.exists():
                    side.rename(f"{target}{suffix}")
            self.path.rename(target)
            private_files.fsync_dir(self.data_dir)
        except OSError as exc:
            raise StoreUnavailable(
                f"corrupt database {self.path} cannot be moved aside: {exc.strerror}",
                code="STORE_CORRUPT",
                hint="Move the file away by hand (keep it for analysis) and restart the agent.",
            ) from exc
        return target

    async def _quick_check(self, *, read_only: bool) -> str | None:
        """None if the file passes quick_check, else what is wrong with it."""
        target = f"{self.path.resolve().as_uri()}?mode=ro" if read_only else str(self.path)
        conn = await aiosqlite.connect(target, uri=read_only, isolation_level=None)
        try:
            rows = [tuple(r) for r in await conn.execute_fetchall("PRAGMA quick_check")]
        except sqlite3.Error as exc:
            if sqlite_primary_code(exc) not in _CORRUPT_CODES:
                raise map_sqlite_error(exc) from exc
            return str(exc)
        finally:
            await conn.close()
        return None if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:5])

    # ------------------------------------------------------------------ health

    @property
    def healthy(self) -> bool:
        """False while the store cannot take writes (or is not open)."""
        return self._running and self._healthy

    @property
    def last_error(self) -> StoreError | None:
        """The latest storage error (kept after recovery, for diagnostics)."""
        return self._error

    @property
    def writer_task(self) -> asyncio.Task[None] | None:
        """The group writer's task while the store is open (None otherwise): for supervision."""
        return self._writer.task if self._writer is not None else None

    def health(self) -> dict[str, Any]:
        """`{"ok": True}` or `{"ok": False, "code", "message", "hint", "since"}` for /readyz."""
        if not self._running:
            return {"ok": False, "code": StoreClosed.code, "message": "database not open"}
        if self._healthy:
            return {"ok": True}
        assert self._error is not None
        return {"ok": False, **self._error.as_dict(), "since": self._unhealthy_since}

    def stats(self) -> dict[str, int]:
        """Counters for /metrics: committed batches and units, largest batch, aborts, queue."""
        writer = self._writer
        if writer is None:
            return {}
        return {**writer.stats, "queued": writer.queued()}

    def _on_outcome(self, error: StoreUnavailable | None) -> None:
        if error is None:
            if not self._healthy:
                log.warning("store takes writes again (after %s)", self._error)
            self._healthy = True
            return
        if self._healthy:
            log.error("store cannot take writes: %s", error)
            self._unhealthy_since = now_ts()
        self._healthy = False
        self._error = error

    # ------------------------------------------------------------------ writes and reads

    async def write(self, unit: Unit[T] | Pipelined[T], *, timeout: float | None = None) -> T:
        """Run `unit` in the next group commit; return its value once it is committed.

        Raises what the unit raised (its savepoint rolled back, nothing else affected),
        StoreUnavailable (nothing of it committed), StoreOverloaded (queue full for the whole
        timeout, not run), StoreTimeout (outcome unknown if it had started), StoreClosed.
        """
        writer = self._writer
        if not self._running or writer is None:
            raise StoreClosed("the database is not open")
        return await writer.write(unit, self._write_timeout if timeout is None else timeout)

    async def read(self, fn: Callable[[aiosqlite.Connection], Awaitable[T]], *, timeout: float | None = None) -> T:
        """Run `fn(conn)` on a read-only connection inside one read transaction (a snapshot).

        Reads see only committed data and keep working while writes fail.
        """
        readers = self._readers
        if not self._running or readers is None:
            raise StoreClosed("the database is not open")
        limit = self._read_timeout if timeout is None else timeout
        deadline = asyncio.get_running_loop().time() + limit
        try:
            async with asyncio.timeout_at(deadline):
                conn = await readers.get()
        except TimeoutError:
            raise StoreTimeout(f"no read connection free within {limit:.1f} s") from None
        try:
            begin = enqueue(conn, "BEGIN")
            try:
                async with asyncio.timeout_at(deadline):
                    return await fn(conn)
            except TimeoutError:
                await conn.interrupt()  # stop a runaway query before the ROLLBACK below
                raise StoreTimeout(f"read did not complete within {limit:.1f} s") from None
            except sqlite3.Error as exc:
                err = map_sqlite_error(exc)
                if sqlite_primary_code(exc) in _CORRUPT_CODES and isinstance(err, StoreUnavailable):
                    self._on_outcome(err)
                raise err from exc
            finally:
                await settle([begin])
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
        finally:
            readers.put_nowait(conn)
