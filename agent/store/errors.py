"""Errors raised by the store, each with a stable code and a hint for the technician.

Each class declares its kind, from which the API answers its HTTP status (a conflict such as
COMMAND_KEY_REUSED -> 409, COMMAND_NOT_FOUND -> 404, the store unavailable -> 503); the CLI prints
them, the daemon raises latched faults for some of them. So the codes are part of the contract:
add new ones, never rename. Codes raised with `code=` are declared in their class's `variants`.
"""

from __future__ import annotations

import sqlite3
from types import MappingProxyType

from oht_errors import CodedError, ErrorKind

__all__ = [
    "BackupError",
    "CommandError",
    "CommandInvalid",
    "CommandKeyConflict",
    "CommandNotCancellable",
    "CommandNotFound",
    "CommandStateError",
    "DataDirBusy",
    "ForeignDatabase",
    "OutboxAckAhead",
    "OutboxError",
    "OutboxFull",
    "OutboxUnknownStream",
    "SchemaTooNew",
    "StoreClosed",
    "StoreError",
    "StoreOverloaded",
    "StoreTimeout",
    "StoreUnavailable",
    "is_unavailable",
    "map_sqlite_error",
    "sqlite_primary_code",
]


class StoreError(CodedError):
    """Base class of everything the store raises."""

    code = "STORE_ERROR"
    kind = ErrorKind.UNAVAILABLE
    hint = "See the agent log for the SQL error; this is most likely a bug in the agent."
    variants = MappingProxyType(
        {
            "STORE_CONSTRAINT": "A write broke a constraint of the schema: a bug in the agent; send the log.",
            "STORE_SQL_ERROR": "SQLite refused a statement: a bug in the agent; send the log.",
            "STORE_ALREADY_STARTED": "The database was started twice: a bug in the agent; send the log.",
            "STORE_INTERNAL": "The store's writer was used out of turn: a bug in the agent; send the log.",
            "STORE_BATCH_ABORTED": "Another unit of work of the same transaction failed; this one was rolled back.",
            "STORE_UNIT_CANCELLED": "The unit of work was cancelled (shutdown or timeout) and rolled back. Retry.",
            "OUTBOX_INVALID": "An outbox record or position was refused (kind, payload, size): a bug in the caller.",
            "TRANSITION_INVALID": "A state transition record was refused: a bug in the caller of record_transition.",
            "DATA_DIR_UNUSABLE": (
                "The data directory cannot be opened or locked: check that it exists, is accessible to the"
                " agent user and is on a local file system."
            ),
        }
    )


class StoreUnavailable(StoreError):
    """The database cannot take writes right now (disk full, read-only, I/O error, locked).

    Raised from `Database.write`; the daemon keeps running, reads still work and
    `Database.health()` reports the code so the API can refuse new commands.
    """

    code = "STORE_UNAVAILABLE"
    hint = (
        "The database cannot take writes: the detail names the cause (disk, permissions, lock); commands are refused."
    )
    # `variants` is set below the table of SQLite failures it is made from.


class StoreClosed(StoreError):
    code = "STORE_CLOSED"
    hint = "The agent is shutting down or has not finished starting; retry after it is up."


class StoreTimeout(StoreError):
    """A wait on the database exceeded its bound. For a write the outcome is unknown."""

    code = "STORE_TIMEOUT"
    hint = (
        "The database did not answer in time (slow or failing storage?). A write may still have "
        "been committed: retry with the same idempotency key, never with a new one."
    )


class StoreOverloaded(StoreError):
    code = "STORE_QUEUE_FULL"
    hint = "Too many writes are waiting for the disk; retry shortly. Check storage latency."


class SchemaTooNew(StoreError):
    code = "STORE_SCHEMA_NEWER"
    hint = (
        "The database was written by a newer oht-agent. Install that version again, or restore "
        "a backup made by this version (`oht-agent db restore SRC`)."
    )


class ForeignDatabase(StoreError):
    code = "STORE_NOT_OHT_DATABASE"
    hint = "The file is an SQLite database of some other program; check the path."


class DataDirBusy(StoreError):
    code = "DATA_DIR_LOCKED"
    hint = (
        "Another oht-agent process uses this data directory (is the daemon running?). "
        "Stop it first: `systemctl stop oht-agent.target`."
    )


class BackupError(StoreError):
    code = "BACKUP_FAILED"
    hint = "Check the paths, free space and permissions of both source and destination."
    variants = MappingProxyType(
        {
            "STORE_FILE_MISSING": "The database file to back up or check does not exist: check the path and data_dir.",
            "BACKUP_DEST_EXISTS": "The backup file exists; a backup is never overwritten: choose a new name.",
            "BACKUP_DEST_INVALID": "The destination's directory does not exist: create it or choose another.",
            "BACKUP_SOURCE_DAMAGED": "The live database is damaged: restart the agent (it moves the file aside).",
            "RESTORE_SOURCE_DAMAGED": "The backup to restore is damaged: use another (older) backup.",
            "RESTORE_FAILED": "The restore failed: check free space and permissions of the data directory.",
        }
    )


class CommandError(StoreError):
    """Base class for refusals of the commands repository (the HTTP layer maps them to 4xx)."""

    code = "COMMAND_ERROR"
    kind = ErrorKind.CONFLICT
    hint = "The command was refused: the message says why; fetch the command to see its state."


class CommandInvalid(CommandError):
    code = "COMMAND_INVALID"
    kind = ErrorKind.INVALID
    hint = "Fix the request: see the message for the field that was refused."


class CommandNotFound(CommandError):
    code = "COMMAND_NOT_FOUND"
    kind = ErrorKind.NOT_FOUND
    hint = "Check the command id; list commands with GET /api/v1/commands."


class CommandKeyConflict(CommandError):
    code = "COMMAND_KEY_REUSED"
    hint = (
        "This idempotency key was already used for a different command. Use a new key for a new "
        "command; repeat a request only with exactly the same body."
    )


class CommandStateError(CommandError):
    code = "COMMAND_STATE"
    hint = "The command is not in a state that allows this; fetch it to see its current state."


class CommandNotCancellable(CommandStateError):
    code = "COMMAND_NOT_CANCELLABLE"
    hint = (
        "The command is already running: stopping it is the executor's job (pause, stop or "
        "E-stop), not a queue operation."
    )


class OutboxError(StoreError):
    """Base class for refusals of the outbox's streams (agent/store/outbox.py)."""

    code = "OUTBOX_ERROR"
    kind = ErrorKind.INTERNAL
    hint = "An outbox stream refused an operation: the message says which; `oht-agent db check` shows every stream."


class OutboxUnknownStream(OutboxError):
    code = "OUTBOX_UNKNOWN_STREAM"
    hint = "A bug in the caller: the streams are declared in agent/store/streams.py."


class OutboxAckAhead(OutboxError):
    code = "OUTBOX_ACK_AHEAD"
    kind = ErrorKind.CONFLICT
    hint = (
        "The central consumer acknowledged records this agent has not written yet. Either another "
        "agent uses the same agent id, or this database was restored from a backup (a restore "
        "rewinds the streams): check the agent id, and after a restore reset the consumer's "
        "position for this agent."
    )


class OutboxFull(OutboxError):
    """Records that are never dropped fill their class's share: new commands are refused."""

    code = "OUTBOX_FULL"
    kind = ErrorKind.UNAVAILABLE
    hint = (
        "The upstream link has been down too long: command results, alarms, events or audit "
        "records that are never dropped have filled their share of the outbox. Check the broker "
        "and the network path to it (`oht-agent db check` shows the backlog of every stream); "
        "new commands are accepted again as soon as the centre acknowledges what it received."
    )


# SQLite primary result codes (the low byte of an extended code).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_NOMEM = 7
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_CONSTRAINT = 19
_SQLITE_NOTADB = 26

_UNAVAILABLE: dict[int, tuple[str, str]] = {
    _SQLITE_FULL: (
        "STORE_DISK_FULL",
        "The data partition (or the database size limit, if one is configured) is full. Free "
        "space on the data partition (`df`, old backups, logs); commands are refused until "
        "writes succeed again.",
    ),
    _SQLITE_READONLY: (
        "STORE_READ_ONLY",
        "The database file or its file system is read-only. Check `mount` (a file system "
        "remounted read-only after I/O errors?), file ownership and permissions of the data dir.",
    ),
    _SQLITE_IOERR: (
        "STORE_IO_ERROR",
        "The storage reported an I/O error. Check `dmesg` for SD/eMMC errors and whether the file "
        "system was remounted read-only; plan a storage replacement.",
    ),
    _SQLITE_CANTOPEN: (
        "STORE_IO_ERROR",
        "The database (or its -wal/-shm file) cannot be opened. Check that the data directory "
        "exists, is writable by the agent user and that the file system is mounted.",
    ),
    _SQLITE_BUSY: (
        "STORE_BUSY",
        "Another process holds a lock on the database (an sqlite3 shell?). Close it.",
    ),
    _SQLITE_LOCKED: (
        "STORE_BUSY",
        "The database is locked by another statement. Retry; report it if it persists.",
    ),
    _SQLITE_NOMEM: (
        "STORE_NO_MEMORY",
        "SQLite ran out of memory. Check the memory use of the agent and of the machine.",
    ),
    _SQLITE_CORRUPT: (
        "STORE_CORRUPT",
        "The database file is damaged. Restart the agent: it moves the file aside and starts a "
        "fresh one; then restore the last backup if needed.",
    ),
    _SQLITE_NOTADB: (
        "STORE_CORRUPT",
        "The database file is not a database any more. Restart the agent: it moves the file "
        "aside and starts a fresh one.",
    ),
}


StoreUnavailable.variants = MappingProxyType(
    {
        **{code: hint for code, hint in reversed(_UNAVAILABLE.values())},  # the first hint of a code wins
        "STORE_NOT_CREATED": "The core creates the database when it starts: start oht-agent-core first.",
        "STORE_SCHEMA_PENDING": "The core migrates the database when it starts: wait for it, or start it.",
        "STORE_AUDIT_KEY_MISSING": (
            "The core makes the audit key when it starts: start oht-agent-core first, or restore audit.key."
        ),
        "STORE_AUDIT_KEY_UNREADABLE": (
            "The audit key must be readable by the agent's accounts (group oht-agent): check its owner and mode."
        ),
        "STORE_AUDIT_KEY_INVALID": "audit.key is damaged: restore it from the backup taken with the database.",
    }
)


def sqlite_primary_code(exc: BaseException) -> int | None:
    """The primary SQLite result code of an sqlite3 exception, if it carries one."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def map_sqlite_error(exc: sqlite3.Error) -> StoreError:
    """Translate an sqlite3 exception into a coded store error (the original stays as cause).

    Storage-level failures become `StoreUnavailable` with a specific code; everything else
    (constraint violations, SQL errors) is a `StoreError`, because it is a bug in a unit of
    work rather than a condition of the machine.
    """
    primary = sqlite_primary_code(exc)
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    if primary in _UNAVAILABLE:
        code, hint = _UNAVAILABLE[primary]
        err: StoreError = StoreUnavailable(f"{exc} ({name})", code=code, hint=hint)
    elif primary == _SQLITE_CONSTRAINT:
        err = StoreError(f"constraint failed: {exc}", code="STORE_CONSTRAINT")
    else:
        err = StoreError(f"{exc} ({name})", code="STORE_SQL_ERROR")
    err.__cause__ = exc
    return err


def is_unavailable(exc: BaseException) -> bool:
    """Whether an sqlite3 exception means the storage cannot take writes."""
    return sqlite_primary_code(exc) in _UNAVAILABLE


class UpgradeBackupFailed(BackupError):
    """The backup taken before a schema migration failed: the migration was not applied."""

    code = "STORE_BACKUP_FAILED"
    hint = (
        "The database was NOT migrated and the previous release can still open it. Free space on "
        "the data partition (`df`; old backups in <data_dir>/backups), check that the agent user "
        "can write <data_dir>/backups, then start the agent again."
    )
