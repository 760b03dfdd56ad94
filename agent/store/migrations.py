"""Schema migrations: an ordered list of SQL steps, the version kept in `PRAGMA user_version`.

Why this shape: a robot in the field is upgraded from whatever version it runs, possibly several
releases old, and a power cut may hit in the middle of an upgrade. So every pending step is applied
in ONE transaction together with the new `user_version` (both live in the database file, so they
commit or roll back together), and a fresh install runs exactly the same steps as an upgrade; there
is no separate "current schema" that could drift from the migrated one.

Rules for adding a migration:
- append a `Migration` with the next version number; never edit or reorder a released one;
- statements are plain SQL, one per string (no `executescript`: it would commit mid-way);
- table rebuilds that need `foreign_keys=OFF` cannot run inside this transaction: add a
  dedicated mechanism for them when the first one is needed.

A database whose version is newer than `LATEST_VERSION` is refused (STORE_SCHEMA_NEWER): old code
must not write into a schema it does not know. So the way back to an older release is the backup
the store takes before it migrates an existing database (`migrate(before=...)`, database.py,
backup.py; docs/upgrade.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiosqlite

from agent.store import streams
from agent.store.errors import ForeignDatabase, SchemaTooNew

__all__ = [
    "APPLICATION_ID",
    "LATEST_VERSION",
    "MIGRATIONS",
    "OUTBOX_ROW_OVERHEAD",
    "Migration",
    "migrate",
    "read_identity",
]

# 'OHTA' in the SQLite header: tells our files apart from any other SQLite database.
APPLICATION_ID = 0x4F485441


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


_V1_COMMANDS = Migration(
    1,
    "commands",
    (
        f"PRAGMA application_id = {APPLICATION_ID}",
        """
        CREATE TABLE commands (
            seq             INTEGER PRIMARY KEY,
            id              TEXT    NOT NULL UNIQUE,
            source          TEXT    NOT NULL CHECK (source IN ('api', 'upstream', 'cli')),
            idempotency_key TEXT    NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 200),
            user            TEXT,
            type            TEXT    NOT NULL CHECK (length(type) BETWEEN 1 AND 64),
            params          TEXT    NOT NULL CHECK (json_valid(params)),
            priority        INTEGER NOT NULL DEFAULT 5 CHECK (priority BETWEEN 1 AND 10),
            not_after       TEXT,
            state           TEXT    NOT NULL DEFAULT 'queued' CHECK (state IN (
                                'queued', 'running', 'succeeded', 'failed',
                                'cancelled', 'expired', 'interrupted')),
            created_at      TEXT    NOT NULL,
            updated_at      TEXT    NOT NULL,
            started_at      TEXT,
            finished_at     TEXT,
            attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            result          TEXT    CHECK (result IS NULL OR json_valid(result)),
            error_code      TEXT,
            error_message   TEXT,
            UNIQUE (source, idempotency_key)
        )
        """,
        # next_runnable: queued first, most urgent, then arrival order.
        "CREATE INDEX commands_runnable ON commands (state, priority DESC, seq)",
        # list(state=...) newest first, paged by seq.
        "CREATE INDEX commands_state_seq ON commands (state, seq)",
    ),
)

# A command row as JSON (the outbox payload): the same keys as agent.store.commands.CommandRecord.
_COMMAND_JSON = (
    "json_object('seq', NEW.seq, 'id', NEW.id, 'source', NEW.source,"
    " 'idempotency_key', NEW.idempotency_key, 'user', NEW.user, 'type', NEW.type,"
    " 'params', json(NEW.params), 'priority', NEW.priority, 'not_after', NEW.not_after,"
    " 'state', NEW.state, 'created_at', NEW.created_at, 'updated_at', NEW.updated_at,"
    " 'started_at', NEW.started_at, 'finished_at', NEW.finished_at,"
    " 'attempts', NEW.attempts, 'result', json(NEW.result), 'error_code', NEW.error_code,"
    " 'error_message', NEW.error_message)"
)

_V2_TRANSITIONS_OUTBOX = Migration(
    2,
    "state transitions and outbox",
    (
        """
        CREATE TABLE state_transitions (
            seq        INTEGER PRIMARY KEY,
            id         TEXT NOT NULL UNIQUE,
            at         TEXT NOT NULL,
            from_state TEXT NOT NULL,
            to_state   TEXT NOT NULL,
            event      TEXT NOT NULL,
            reason     TEXT,
            command_id TEXT REFERENCES commands (id)
        )
        """,
        "CREATE INDEX state_transitions_command ON state_transitions (command_id) WHERE command_id IS NOT NULL",
        """
        CREATE TABLE outbox (
            seq        INTEGER PRIMARY KEY,
            id         TEXT NOT NULL UNIQUE,
            kind       TEXT NOT NULL CHECK (length(kind) BETWEEN 1 AND 32),
            created_at TEXT NOT NULL,
            payload    TEXT NOT NULL CHECK (json_valid(payload)),
            sent_at    TEXT
        )
        """,
        # What sync drains and what pruning looks at: unsent rows in arrival order.
        "CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_at IS NULL",
        # Every command that is accepted or changes state puts its record into the outbox in
        # the same statement, whichever code path made the change. `oht_new_id()` is the
        # UUIDv7 generator (agent/ids.py), registered on the writer connection. A later
        # migration that adds a column to `commands` must recreate these two triggers.
        f"""
        CREATE TRIGGER commands_outbox_insert AFTER INSERT ON commands
        BEGIN
            INSERT INTO outbox (id, kind, created_at, payload)
            VALUES (oht_new_id(), 'command', NEW.updated_at, {_COMMAND_JSON});
        END
        """,
        f"""
        CREATE TRIGGER commands_outbox_state AFTER UPDATE OF state ON commands
        WHEN NEW.state IS NOT OLD.state
        BEGIN
            INSERT INTO outbox (id, kind, created_at, payload)
            VALUES (
                oht_new_id(),
                CASE WHEN NEW.state IN ('queued', 'running') THEN 'command'
                     ELSE 'command_result' END,
                NEW.updated_at,
                {_COMMAND_JSON}
            );
        END
        """,
    ),
)

# v3 and v4 belong to the local API (agent/auth, agent/api): accounts, sessions, API keys and the
# hash-chained audit log. Secrets are stored only as digests (scrypt for passwords, SHA-256 for
# tokens and keys); the audit table is append-only by trigger (see agent/store/audit.py).
_V3_USERS_SESSIONS_KEYS = Migration(
    3,
    "users, sessions and API keys",
    (
        """
        CREATE TABLE users (
            seq                 INTEGER PRIMARY KEY,
            id                  TEXT NOT NULL UNIQUE,
            name                TEXT NOT NULL UNIQUE COLLATE NOCASE CHECK (length(name) BETWEEN 2 AND 64),
            role                TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'technician', 'admin')),
            password_hash       TEXT NOT NULL CHECK (password_hash LIKE 'scrypt$%'),
            created_at          TEXT NOT NULL,
            created_by          TEXT NOT NULL,
            updated_at          TEXT NOT NULL,
            password_changed_at TEXT NOT NULL,
            disabled_at         TEXT,
            disabled_by         TEXT,
            last_login_at       TEXT
        )
        """,
        # Users are disabled, never deleted: audit rows name them.
        "CREATE TRIGGER users_no_delete BEFORE DELETE ON users"
        " BEGIN SELECT RAISE(ABORT, 'users are disabled, never deleted'); END",
        """
        CREATE TABLE sessions (
            seq            INTEGER PRIMARY KEY,
            id             TEXT NOT NULL UNIQUE,
            user_id        TEXT NOT NULL REFERENCES users (id),
            token_hash     TEXT NOT NULL UNIQUE CHECK (length(token_hash) = 64),
            created_at     TEXT NOT NULL,
            expires_at     TEXT NOT NULL,
            idle_timeout_s INTEGER NOT NULL CHECK (idle_timeout_s > 0),
            last_seen_at   TEXT NOT NULL,
            source_ip      TEXT,
            revoked_at     TEXT,
            revoked_reason TEXT
        )
        """,
        "CREATE INDEX sessions_user_open ON sessions (user_id) WHERE revoked_at IS NULL",
        "CREATE INDEX sessions_expires ON sessions (expires_at)",
        """
        CREATE TABLE api_keys (
            seq          INTEGER PRIMARY KEY,
            id           TEXT NOT NULL UNIQUE,
            prefix       TEXT NOT NULL UNIQUE CHECK (length(prefix) = 10),
            key_hash     TEXT NOT NULL CHECK (length(key_hash) = 64),
            name         TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
            role         TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'technician', 'admin')),
            created_by   TEXT NOT NULL,
            created_at   TEXT NOT NULL,
            last_used_at TEXT,
            revoked_at   TEXT,
            revoked_by   TEXT
        )
        """,
    ),
)

_V4_AUDIT = Migration(
    4,
    "hash-chained audit log",
    (
        """
        CREATE TABLE audit (
            seq           INTEGER PRIMARY KEY,
            id            TEXT NOT NULL UNIQUE,
            at            TEXT NOT NULL,
            actor         TEXT NOT NULL,
            auth_method   TEXT NOT NULL,
            source_ip     TEXT,
            action        TEXT NOT NULL,
            target        TEXT,
            params_digest TEXT,
            result        TEXT NOT NULL CHECK (result IN ('ok', 'denied', 'error')),
            code          TEXT,
            request_id    TEXT,
            prev_hash     TEXT NOT NULL CHECK (length(prev_hash) = 64),
            row_hash      TEXT NOT NULL CHECK (length(row_hash) = 64)
        )
        """,
        # The head: last seq, last hash and row count, so that a cut-off tail is detected.
        """
        CREATE TABLE audit_head (
            id        INTEGER PRIMARY KEY CHECK (id = 1),
            last_seq  INTEGER NOT NULL,
            last_hash TEXT NOT NULL,
            rows      INTEGER NOT NULL
        )
        """,
        "INSERT INTO audit_head (id, last_seq, last_hash, rows) VALUES (1, 0, '" + "0" * 64 + "', 0)",
        # A row must extend the chain exactly: next seq, previous hash.
        "CREATE TRIGGER audit_extends_chain BEFORE INSERT ON audit"
        " WHEN NEW.seq IS NOT (SELECT last_seq + 1 FROM audit_head WHERE id = 1)"
        " OR NEW.prev_hash IS NOT (SELECT last_hash FROM audit_head WHERE id = 1)"
        " BEGIN SELECT RAISE(ABORT, 'audit row does not extend the chain'); END",
        "CREATE TRIGGER audit_moves_head AFTER INSERT ON audit BEGIN"
        " UPDATE audit_head SET last_seq = NEW.seq, last_hash = NEW.row_hash, rows = rows + 1"
        " WHERE id = 1; END",
        "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit"
        " BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
        "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit"
        " BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
        "CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head"
        " BEGIN SELECT RAISE(ABORT, 'the audit head cannot be deleted'); END",
        "CREATE TRIGGER audit_head_forward_only BEFORE UPDATE ON audit_head"
        " WHEN NEW.last_seq IS NOT OLD.last_seq + 1 OR NEW.rows IS NOT OLD.rows + 1"
        " BEGIN SELECT RAISE(ABORT, 'the audit head only moves with a new row'); END",
    ),
)

# v5: an API key names its creator by id (agent/store/api_keys.py says why). Old rows are filled
# from `created_by` where it names a user or a key; a name such as `oak_<prefix>` that is both a
# user and a key fills both (a key is then held to both). Then, as the rules now do at once, every
# key made by a disabled user, by a revoked key or by nobody known (not `cli:...`) is revoked,
# and every key made by one of those.
_V5_KEY_CREATORS = Migration(
    5,
    "API key creators by id",
    (
        "ALTER TABLE api_keys ADD COLUMN created_by_user_id TEXT REFERENCES users (id)",
        "ALTER TABLE api_keys ADD COLUMN created_by_key_id TEXT REFERENCES api_keys (id)",
        "UPDATE api_keys SET created_by_user_id = (SELECT u.id FROM users u WHERE u.name = api_keys.created_by)",
        "UPDATE api_keys SET created_by_key_id = (SELECT k.id FROM api_keys k"
        " WHERE 'oak_' || k.prefix = api_keys.created_by AND k.id <> api_keys.id)",
        "CREATE INDEX api_keys_by_user ON api_keys (created_by_user_id) WHERE created_by_user_id IS NOT NULL",
        "CREATE INDEX api_keys_by_key ON api_keys (created_by_key_id) WHERE created_by_key_id IS NOT NULL",
        """
        WITH RECURSIVE dead(id) AS (
            SELECT k.id FROM api_keys k LEFT JOIN users u ON u.id = k.created_by_user_id
            WHERE k.revoked_at IS NOT NULL OR u.disabled_at IS NOT NULL
               OR (k.created_by_user_id IS NULL AND k.created_by_key_id IS NULL
                   AND k.created_by NOT LIKE 'cli:%')
            UNION
            SELECT k.id FROM api_keys k JOIN dead d ON k.created_by_key_id = d.id
        )
        UPDATE api_keys
        SET revoked_at = strftime('%Y-%m-%dT%H:%M:%S', 'now') || '.000000Z',
            revoked_by = 'migration: made by a disabled user, a revoked key or an unknown creator'
        WHERE revoked_at IS NULL AND id IN (SELECT id FROM dead)
        """,
    ),
)

# v6: an idempotency key names one command per source AND user, so two users who happen to
# send the same Idempotency-Key get two commands (with one key space for all, the second user's
# command was silently answered with the first user's). SQLite cannot drop the v1 table
# constraint UNIQUE (source, idempotency_key), so `commands` is rebuilt: copied into a table
# without it, the old one dropped, the copy renamed, its indexes and outbox triggers (which go
# with the old table) recreated exactly as in v1 and v2. The writer runs with foreign_keys=ON
# and state_transitions rows point at commands, so those rows are set aside first and put back
# last, each checked against the new table. NULL users (upstream) count as one user: a NULL is
# distinct from every other NULL in a unique index, which would let such a key in twice.
_COMMANDS_COLUMNS = (
    "seq, id, source, idempotency_key, user, type, params, priority, not_after, state,"
    " created_at, updated_at, started_at, finished_at, attempts, result, error_code, error_message"
)
_TRANSITIONS_COLUMNS = "seq, id, at, from_state, to_state, event, reason, command_id"
_V6_IDEMPOTENCY_PER_USER = Migration(
    6,
    "idempotency keys scoped by user",
    (
        f"CREATE TEMP TABLE v6_transitions AS SELECT {_TRANSITIONS_COLUMNS} FROM state_transitions",
        "DELETE FROM state_transitions",
        """
        CREATE TABLE commands_v6 (
            seq             INTEGER PRIMARY KEY,
            id              TEXT    NOT NULL UNIQUE,
            source          TEXT    NOT NULL CHECK (source IN ('api', 'upstream', 'cli')),
            idempotency_key TEXT    NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 200),
            user            TEXT,
            type            TEXT    NOT NULL CHECK (length(type) BETWEEN 1 AND 64),
            params          TEXT    NOT NULL CHECK (json_valid(params)),
            priority        INTEGER NOT NULL DEFAULT 5 CHECK (priority BETWEEN 1 AND 10),
            not_after       TEXT,
            state           TEXT    NOT NULL DEFAULT 'queued' CHECK (state IN (
                                'queued', 'running', 'succeeded', 'failed',
                                'cancelled', 'expired', 'interrupted')),
            created_at      TEXT    NOT NULL,
            updated_at      TEXT    NOT NULL,
            started_at      TEXT,
            finished_at     TEXT,
            attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            result          TEXT    CHECK (result IS NULL OR json_valid(result)),
            error_code      TEXT,
            error_message   TEXT
        )
        """,
        f"INSERT INTO commands_v6 ({_COMMANDS_COLUMNS}) SELECT {_COMMANDS_COLUMNS} FROM commands",
        "DROP TABLE commands",
        "ALTER TABLE commands_v6 RENAME TO commands",
        # The upsert in agent/store/commands.py names exactly these expressions as its target.
        "CREATE UNIQUE INDEX commands_idempotency ON commands (source, ifnull(user, ''), idempotency_key)",
        *(s for s in _V1_COMMANDS.statements if s.startswith("CREATE INDEX commands_")),
        *(s for s in _V2_TRANSITIONS_OUTBOX.statements if "CREATE TRIGGER commands_outbox_" in s),
        f"INSERT INTO state_transitions ({_TRANSITIONS_COLUMNS})"
        f" SELECT {_TRANSITIONS_COLUMNS} FROM temp.v6_transitions",
        "DROP TABLE temp.v6_transitions",
    ),
)

# v7: the outbox becomes streams (agent/store/streams.py says why). Every row gets `stream` and
# `stream_seq`, gap-free per stream from 1, assigned by trigger in the inserting transaction:
# the core and the gateway both write the outbox, SQLite lets one writer at a time in, so a
# counter moved inside that transaction can neither skip nor repeat a number. `outbox_kinds`
# holds the declaration's kind -> stream mapping (as it stands when this runs; the core aligns
# it with the declaration at every start); `outbox_streams` one row per stream with its
# counters: last_seq (numbers given), acked_seq (the consumer's cumulative acknowledgement),
# and rows and bytes (payload plus OUTBOX_ROW_OVERHEAD per row) of what is kept, maintained by
# the same triggers so that the backlog and the quotas are read without a scan.
#
# Existing rows: those already sent were acknowledged under the old model (mark_sent came after
# the server's answer) and are deleted, as an acknowledged record is now; the consumer never saw
# them under stream numbers, so numbering them would only make it wait for seqs it cannot get.
# The unsent rows are numbered per stream in `seq` (write) order. A row of a kind the
# declaration does not know goes to the stream of 'event' (never dropped). Fault records written
# as 'event' before 'alarm' existed stay in that stream: a record is never rewritten.
# Only the store writes `stream` (for gap records: the stream they cover) and `stream_seq`;
# a numbered row is never changed, and counters only move forward.
OUTBOX_ROW_OVERHEAD = 128
_ROW_BYTES = "(length(CAST({row}.payload AS BLOB)) + " + str(OUTBOX_ROW_OVERHEAD) + ")"
_TARGET_STREAM = "coalesce(NEW.stream, (SELECT k.stream FROM outbox_kinds k WHERE k.kind = NEW.kind))"
_V7_OUTBOX_STREAMS = Migration(
    7,
    "outbox streams",
    (
        "CREATE TABLE outbox_kinds (kind TEXT PRIMARY KEY, stream TEXT NOT NULL) WITHOUT ROWID",
        """
        CREATE TABLE outbox_streams (
            stream    TEXT PRIMARY KEY,
            last_seq  INTEGER NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
            acked_seq INTEGER NOT NULL DEFAULT 0 CHECK (acked_seq >= 0 AND acked_seq <= last_seq),
            rows      INTEGER NOT NULL DEFAULT 0 CHECK (rows >= 0),
            bytes     INTEGER NOT NULL DEFAULT 0 CHECK (bytes >= 0)
        ) WITHOUT ROWID
        """,
        *streams.mapping_statements(),
        "DELETE FROM outbox WHERE sent_at IS NOT NULL",
        "DROP INDEX outbox_unsent",
        "ALTER TABLE outbox DROP COLUMN sent_at",
        "ALTER TABLE outbox ADD COLUMN stream TEXT",
        "ALTER TABLE outbox ADD COLUMN stream_seq INTEGER",
        "UPDATE outbox SET stream = coalesce((SELECT k.stream FROM outbox_kinds k WHERE k.kind = outbox.kind),"
        f" '{streams.KIND_STREAM[streams.KIND_EVENT]}')",
        "UPDATE outbox SET stream_seq = n.rn FROM (SELECT seq, row_number() OVER (PARTITION BY stream ORDER BY seq)"
        " AS rn FROM outbox) AS n WHERE n.seq = outbox.seq",
        # What batches, acks and the limits read: a stream's rows in order.
        "CREATE UNIQUE INDEX outbox_stream_seq ON outbox (stream, stream_seq)",
        "UPDATE outbox_streams SET last_seq = c.n, rows = c.n, bytes = c.b FROM (SELECT stream, count(*) AS n,"
        f" sum({_ROW_BYTES.format(row='outbox')}) AS b FROM outbox GROUP BY stream) AS c"
        " WHERE c.stream = outbox_streams.stream",
        # A row needs a stream: its kind's, or (gap records only) the one the store names.
        f"""
        CREATE TRIGGER outbox_needs_stream BEFORE INSERT ON outbox
        WHEN NEW.stream_seq IS NOT NULL
          OR (NEW.kind = '{streams.KIND_GAP}') IS NOT (NEW.stream IS NOT NULL)
          OR NOT EXISTS (SELECT 1 FROM outbox_streams s WHERE s.stream = {_TARGET_STREAM})
        BEGIN
            SELECT RAISE(ABORT, 'outbox row without a stream: unknown kind, or stream or seq set by the writer');
        END
        """,
        f"""
        CREATE TRIGGER outbox_numbers_row AFTER INSERT ON outbox
        BEGIN
            UPDATE outbox_streams
            SET last_seq = last_seq + 1, rows = rows + 1, bytes = bytes + {_ROW_BYTES.format(row="NEW")}
            WHERE stream = {_TARGET_STREAM};
            UPDATE outbox
            SET stream = {_TARGET_STREAM},
                stream_seq = (SELECT s.last_seq FROM outbox_streams s WHERE s.stream = {_TARGET_STREAM})
            WHERE seq = NEW.seq;
        END
        """,
        "CREATE TRIGGER outbox_row_fixed BEFORE UPDATE ON outbox WHEN OLD.stream_seq IS NOT NULL"
        " BEGIN SELECT RAISE(ABORT, 'a numbered outbox row is never changed'); END",
        "CREATE TRIGGER outbox_counts_delete AFTER DELETE ON outbox BEGIN"
        f" UPDATE outbox_streams SET rows = rows - 1, bytes = bytes - {_ROW_BYTES.format(row='OLD')}"
        " WHERE stream = OLD.stream; END",
        "CREATE TRIGGER outbox_streams_forward BEFORE UPDATE ON outbox_streams"
        " WHEN NEW.stream IS NOT OLD.stream OR NEW.last_seq < OLD.last_seq OR NEW.acked_seq < OLD.acked_seq"
        " BEGIN SELECT RAISE(ABORT, 'stream counters only move forward'); END",
        "CREATE TRIGGER outbox_streams_no_delete BEFORE DELETE ON outbox_streams"
        " BEGIN SELECT RAISE(ABORT, 'a stream is never deleted'); END",
    ),
)

# Next: v8 (append here; never edit the ones above).
MIGRATIONS: tuple[Migration, ...] = (
    _V1_COMMANDS,
    _V2_TRANSITIONS_OUTBOX,
    _V3_USERS_SESSIONS_KEYS,
    _V4_AUDIT,
    _V5_KEY_CREATORS,
    _V6_IDEMPOTENCY_PER_USER,
    _V7_OUTBOX_STREAMS,
)

LATEST_VERSION = MIGRATIONS[-1].version

if [m.version for m in MIGRATIONS] != list(range(1, len(MIGRATIONS) + 1)):
    raise RuntimeError("migrations must be numbered 1, 2, 3, ... without gaps")


async def read_identity(conn: aiosqlite.Connection) -> tuple[int, int, int]:
    """(application_id, user_version, number of schema objects) of the open database."""
    (app_id,) = next(iter(await conn.execute_fetchall("PRAGMA application_id")))
    (version,) = next(iter(await conn.execute_fetchall("PRAGMA user_version")))
    (objects,) = next(iter(await conn.execute_fetchall("SELECT count(*) FROM sqlite_master")))
    return int(app_id), int(version), int(objects)


def check_identity(app_id: int, version: int, objects: int, *, what: str) -> None:
    """Refuse a database this code must not write: newer schema, or not ours at all."""
    if version > LATEST_VERSION:
        raise SchemaTooNew(f"{what} has schema version {version}; this oht-agent knows up to {LATEST_VERSION}")
    if version == 0 and objects > 0:
        raise ForeignDatabase(f"{what} has tables but no oht-agent schema version")
    if version > 0 and app_id != APPLICATION_ID:
        raise ForeignDatabase(f"{what} has application_id {app_id:#x}, not oht-agent's {APPLICATION_ID:#x}")


async def migrate(
    conn: aiosqlite.Connection,
    *,
    target: int = LATEST_VERSION,
    before: Callable[[int, int], Awaitable[object]] | None = None,
) -> tuple[int, int]:
    """Apply every migration above the current version up to `target` in one transaction.

    Returns (version before, version after). `conn` must have no transaction open. Raises SchemaTooNew / ForeignDatabase
    before touching anything; an SQL failure rolls the whole upgrade back and propagates.

    `before(current, target)` runs when an existing database (version > 0) is about to be migrated,
    and only then, before anything is changed: the store takes its backup there (the way back to
    the previous release). If it raises, nothing is migrated and the exception propagates.
    """
    if not 0 <= target <= LATEST_VERSION:
        raise ValueError(f"target version {target} outside 0..{LATEST_VERSION}")
    app_id, current, objects = await read_identity(conn)
    check_identity(app_id, current, objects, what="the database")
    pending = [m for m in MIGRATIONS if current < m.version <= target]
    if not pending:
        return current, current
    if before is not None and current > 0:
        await before(current, pending[-1].version)
    await conn.execute("BEGIN IMMEDIATE")
    try:
        for migration in pending:
            for statement in migration.statements:
                await conn.execute(statement)
        await conn.execute(f"PRAGMA user_version = {pending[-1].version}")
        await conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            await conn.execute("ROLLBACK")
        raise
    return current, pending[-1].version
