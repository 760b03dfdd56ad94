"""The durable command buffer: submit, order, expire, run, finish, cancel, interrupt.

Lifecycle (anything else raises CommandStateError, code COMMAND_STATE):

    queued  -> running | cancelled | expired
    running -> succeeded | failed | cancelled | interrupted
    succeeded, failed, cancelled, expired, interrupted: terminal

Why it is shaped like this:
- `submit` is idempotent per (source, user, idempotency_key): a client that lost the answer
  repeats the request and gets the same record (`created=False`, HTTP 200), never a second
  command. Reusing a key for a different command is refused (COMMAND_KEY_REUSED, HTTP 409).
  Keys are scoped by the user (migration 6) because clients pick them: two users who send the
  same key get two commands, never each other's. So an API command must name its user.
- Every state change writes its outbox row in the same transaction ('command' for accepted and
  running, 'command_result' for terminal states), so upstream learns every change exactly once.
  The rows are written by triggers (migration 2), so no code path can change a command silently.
- A command that was running when the agent stopped becomes 'interrupted', never 'queued' again:
  re-running a half-done motion after a crash is the executor's and the operator's decision.
- A command has a deadline (`not_after`): it expires instead of running late.

Each operation exists as a unit-of-work function (`*_in(conn, ...)`) so the control layer can
combine it with other writes (e.g. `record_transition`) in one transaction, and as a method of
`Commands`, which runs it in a unit of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiosqlite

from agent.ids import new_id
from agent.store import jsoncodec
from agent.store.clock import format_ts, now_ts, utc_now
from agent.store.errors import (
    CommandInvalid,
    CommandKeyConflict,
    CommandNotCancellable,
    CommandNotFound,
    CommandStateError,
    StoreError,
)
from agent.store.pipeline import Pipelined

if TYPE_CHECKING:
    from agent.store.database import Database

__all__ = [
    "ALLOWED_TRANSITIONS",
    "SOURCES",
    "STATES",
    "TERMINAL_STATES",
    "CommandExpired",
    "CommandRecord",
    "Commands",
    "cancel_in",
    "count_by_state_in",
    "expire_due_in",
    "find_in",
    "finish_in",
    "interrupt_running_in",
    "mark_running_in",
    "submit_in",
]

SOURCES = ("api", "upstream", "cli")
STATES = ("queued", "running", "succeeded", "failed", "cancelled", "expired", "interrupted")
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "expired", "interrupted"})
ALLOWED_TRANSITIONS: Mapping[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "expired"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "interrupted"}),
    **{state: frozenset() for state in TERMINAL_STATES},
}
FINISH_STATES = frozenset({"succeeded", "failed", "cancelled"})

_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$")
_CODE_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
_MAX_KEY = 200
_MAX_USER = 64
_MAX_PARAMS = 64 * 1024
_MAX_MESSAGE = 2000


class CommandExpired(CommandStateError):
    code = "COMMAND_EXPIRED"
    hint = "The command's deadline (not_after) passed before it could start; submit a new one."


@dataclass(frozen=True)
class CommandRecord:
    """One row of `commands`, with params and result decoded from JSON."""

    seq: int
    id: str
    source: str
    idempotency_key: str
    user: str | None
    type: str
    params: dict[str, Any]
    priority: int
    not_after: str | None
    state: str
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    attempts: int
    result: Any
    error_code: str | None
    error_message: str | None

    @classmethod
    def from_row(cls, row: Any) -> CommandRecord:
        """From a `SELECT *` / `RETURNING *` row (columns in table order, as the fields)."""
        values: list[Any] = list(row)
        if len(values) != _N_FIELDS:
            raise StoreError(f"commands row has {len(values)} columns, expected {_N_FIELDS}")
        values[6] = jsoncodec.loads(values[6])  # params
        values[15] = jsoncodec.loads(values[15])  # result
        return cls(*values)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_N_FIELDS = len(fields(CommandRecord))


# ---------------------------------------------------------------------------- validation


def _ts(value: datetime | str | None, name: str) -> str | None:
    if value is None:
        return None
    try:
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            raise TypeError
        return format_ts(value)
    except (TypeError, ValueError):
        raise CommandInvalid(f"{name} must be a timezone-aware ISO-8601 timestamp, got {value!r}") from None


def _now(now: datetime | None) -> str:
    return format_ts(now if now is not None else utc_now())


def _validate_submit(
    source: str,
    idempotency_key: str,
    type_: str,
    params: Mapping[str, Any],
    user: str | None,
    priority: int,
) -> str:
    """Refuse bad input before it reaches the database; return params as canonical JSON."""
    if source not in SOURCES:
        raise CommandInvalid(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if (
        not isinstance(idempotency_key, str)
        or not 1 <= len(idempotency_key) <= _MAX_KEY
        or not idempotency_key.isprintable()
    ):
        raise CommandInvalid(f"idempotency key must be 1-{_MAX_KEY} printable characters")
    if not isinstance(type_, str) or not _TYPE_RE.match(type_):
        raise CommandInvalid(f"command type {type_!r} is not a valid name")
    if user is not None and (not isinstance(user, str) or not 1 <= len(user) <= _MAX_USER):
        raise CommandInvalid(f"user must be 1-{_MAX_USER} characters")
    if user is None and source == "api":
        raise CommandInvalid("an API command must name its user: its idempotency key is scoped by the user")
    if isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority <= 10:
        raise CommandInvalid(f"priority must be an integer from 1 to 10, got {priority!r}")
    if not isinstance(params, Mapping):
        raise CommandInvalid("params must be a JSON object")
    try:
        text = jsoncodec.dumps(dict(params))
    except (TypeError, ValueError) as exc:
        raise CommandInvalid(f"params are not valid JSON: {exc}") from None
    if len(text.encode()) > _MAX_PARAMS:
        raise CommandInvalid(f"params exceed {_MAX_PARAMS} bytes")
    return text


# ---------------------------------------------------------------------------- units of work


@dataclass(frozen=True)
class _Submission:
    """A validated submit request, encoded once, before it is queued for the writer."""

    source: str
    idempotency_key: str
    type: str
    params_json: str
    user: str | None
    priority: int
    not_after: str | None


def _prepare(
    source: str,
    idempotency_key: str,
    type_: str,
    params: Mapping[str, Any],
    user: str | None,
    priority: int,
    not_after: datetime | str | None,
) -> _Submission:
    params_json = _validate_submit(source, idempotency_key, type_, params, user, priority)
    return _Submission(source, idempotency_key, type_, params_json, user, priority, _ts(not_after, "not_after"))


# On a repeat (same source, user and key) the no-op update makes RETURNING give the existing
# row, so one statement tells "created" (our new id came back) from "repeat" (another id). The
# conflict target is the unique index of migration 6, expression for expression. The outbox row
# of a new command is written by the insert trigger (migrations 2 and 5).
_UPSERT = (
    "INSERT INTO commands (id, source, idempotency_key, user, type, params, priority,"
    " not_after, state, created_at, updated_at, attempts)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, 0)"
    " ON CONFLICT (source, ifnull(user, ''), idempotency_key) DO UPDATE SET updated_at = updated_at"
    " RETURNING *"
)


class _Submit(Pipelined[tuple[CommandRecord, bool]]):
    """`submit` as a pipelined unit: one statement, no decision before its rows come back.

    It refuses only a reused key (CommandKeyConflict), and then its statement changed nothing
    (the no-op update), so a lone submit may be committed before its rows are read.
    """

    commit_before_result = True

    def __init__(self, request: _Submission) -> None:
        self.request = request
        self.command_id, self.at = new_id(), now_ts()

    def statements(self) -> list[tuple[str, tuple[Any, ...]]]:
        r, at = self.request, self.at
        values = (
            self.command_id,
            r.source,
            r.idempotency_key,
            r.user,
            r.type,
            r.params_json,
            r.priority,
            r.not_after,
            at,
            at,
        )
        return [(_UPSERT, values)]

    def result(self, rows: list[list[Any]]) -> tuple[CommandRecord, bool]:
        record = CommandRecord.from_row(rows[0][0])
        if record.id == self.command_id:
            return record, True
        r = self.request
        if record.type != r.type or jsoncodec.dumps(record.params) != r.params_json:
            raise CommandKeyConflict(
                f"idempotency key {r.idempotency_key!r} ({r.source}, {r.user or 'no user'}) already names command "
                f"{record.id} of type {record.type!r} with different parameters"
            )
        return record, False


async def submit_in(
    conn: aiosqlite.Connection,
    source: str,
    idempotency_key: str,
    type: str,
    params: Mapping[str, Any],
    *,
    user: str | None = None,
    priority: int = 5,
    not_after: datetime | str | None = None,
) -> tuple[CommandRecord, bool]:
    """Insert a queued command and its outbox row, or return the one with the same source, user and key."""
    request = _prepare(source, idempotency_key, type, params, user, priority, not_after)
    return await _Submit(request)(conn)


async def _fetch(conn: aiosqlite.Connection, command_id: str) -> CommandRecord:
    rows = list(await conn.execute_fetchall("SELECT * FROM commands WHERE id = ?", (command_id,)))
    if not rows:
        raise CommandNotFound(f"no command with id {command_id!r}")
    return CommandRecord.from_row(rows[0])


async def find_in(
    conn: aiosqlite.Connection, source: str, idempotency_key: str, user: str | None = None
) -> CommandRecord | None:
    """The command stored under (source, user, idempotency key), if any: the key a repeat of
    `submit` would meet (the unique index of migration 6, so one indexed lookup)."""
    rows = list(
        await conn.execute_fetchall(
            "SELECT * FROM commands WHERE source = ? AND ifnull(user, '') = ? AND idempotency_key = ?",
            (source, user or "", idempotency_key),
        )
    )
    return CommandRecord.from_row(rows[0]) if rows else None


def _check_transition(record: CommandRecord, to_state: str) -> None:
    if to_state not in ALLOWED_TRANSITIONS[record.state]:
        raise CommandStateError(f"command {record.id} is {record.state}; it cannot become {to_state}")


async def _change(
    conn: aiosqlite.Connection,
    record: CommandRecord,
    to_state: str,
    values: Mapping[str, Any],
) -> CommandRecord:
    """Apply one allowed transition, guarded by the current state (the state trigger of
    migration 2 writes the outbox row in the same statement)."""
    _check_transition(record, to_state)
    assignments = ", ".join(f"{name} = ?" for name in values)
    rows = list(
        await conn.execute_fetchall(
            f"UPDATE commands SET state = ?, {assignments} WHERE id = ? AND state = ? RETURNING *",
            (to_state, *values.values(), record.id, record.state),
        )
    )
    if not rows:  # cannot happen with one writer; refuse (and roll back) rather than guess
        raise CommandStateError(f"command {record.id} changed state concurrently")
    return CommandRecord.from_row(rows[0])


async def mark_running_in(conn: aiosqlite.Connection, command_id: str, now: datetime | None = None) -> CommandRecord:
    """queued -> running (attempts + 1). Past its deadline it becomes expired instead.

    Returns the changed record; its state is 'expired' when the deadline had passed (the
    `Commands.mark_running` wrapper turns that into CommandExpired after the commit).
    """
    at = _now(now)
    record = await _fetch(conn, command_id)
    if record.state == "queued" and record.not_after is not None and record.not_after <= at:
        return await _expire(conn, record, at)
    return await _change(
        conn,
        record,
        "running",
        {"updated_at": at, "started_at": at, "attempts": record.attempts + 1},
    )


async def _expire(conn: aiosqlite.Connection, record: CommandRecord, at: str) -> CommandRecord:
    return await _change(
        conn,
        record,
        "expired",
        {
            "updated_at": at,
            "finished_at": at,
            "error_code": CommandExpired.code,
            "error_message": f"deadline {record.not_after} passed before the command started",
        },
    )


async def withdraw_queued_in(
    conn: aiosqlite.Connection, types: frozenset[str], code: str, message: str, now: datetime | None = None
) -> list[CommandRecord]:
    """Every queued command of `types` becomes expired with `code` (with outbox rows): never run."""
    at = _now(now)
    marks = ",".join("?" * len(types))
    rows = await conn.execute_fetchall(
        f"SELECT * FROM commands WHERE state = 'queued' AND type IN ({marks}) ORDER BY seq", tuple(sorted(types))
    )
    out = []
    for row in rows:
        record = CommandRecord.from_row(row)
        out.append(
            await _change(
                conn,
                record,
                "expired",
                {"updated_at": at, "finished_at": at, "error_code": code, "error_message": message},
            )
        )
    return out


async def finish_in(
    conn: aiosqlite.Connection,
    command_id: str,
    state: str,
    result: Any = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> CommandRecord:
    """running -> succeeded | failed | cancelled, with the result or the error."""
    if state not in FINISH_STATES:
        raise CommandStateError(f"finish() takes one of {sorted(FINISH_STATES)}, got {state!r}")
    if error_code is not None and not (isinstance(error_code, str) and _CODE_RE.match(error_code)):
        raise CommandInvalid(f"error_code must be UPPER_SNAKE, got {error_code!r}")
    if error_message is not None:
        error_message = str(error_message)[:_MAX_MESSAGE]
    try:
        result_json = None if result is None else jsoncodec.dumps(result)
    except (TypeError, ValueError) as exc:
        raise CommandInvalid(f"result is not valid JSON: {exc}") from None
    at = now_ts()
    record = await _fetch(conn, command_id)
    return await _change(
        conn,
        record,
        state,
        {
            "updated_at": at,
            "finished_at": at,
            "result": result_json,
            "error_code": error_code,
            "error_message": error_message,
        },
    )


async def cancel_in(conn: aiosqlite.Connection, command_id: str) -> CommandRecord:
    """queued -> cancelled. A running command is the executor's to stop."""
    record = await _fetch(conn, command_id)
    if record.state == "running":
        raise CommandNotCancellable(f"command {record.id} is running")
    at = now_ts()
    return await _change(
        conn,
        record,
        "cancelled",
        {"updated_at": at, "finished_at": at, "error_code": "COMMAND_CANCELLED"},
    )


async def expire_due_in(conn: aiosqlite.Connection, now: datetime | None = None) -> list[CommandRecord]:
    """Every queued command whose deadline has passed becomes expired (with outbox rows)."""
    at = _now(now)
    rows = await conn.execute_fetchall(
        "SELECT * FROM commands WHERE state = 'queued' AND not_after IS NOT NULL AND not_after <= ? ORDER BY seq",
        (at,),
    )
    return [await _expire(conn, CommandRecord.from_row(r), at) for r in rows]


async def interrupt_running_in(conn: aiosqlite.Connection, now: datetime | None = None) -> list[CommandRecord]:
    """At start: every command still 'running' was cut off by a stop; mark it interrupted."""
    at = _now(now)
    rows = await conn.execute_fetchall("SELECT * FROM commands WHERE state = 'running' ORDER BY seq")
    changed = []
    for row in rows:
        changed.append(
            await _change(
                conn,
                CommandRecord.from_row(row),
                "interrupted",
                {
                    "updated_at": at,
                    "finished_at": at,
                    "error_code": "AGENT_RESTARTED",
                    "error_message": "the agent stopped while the command was running",
                },
            )
        )
    return changed


async def count_by_state_in(conn: aiosqlite.Connection) -> dict[str, int]:
    """How many commands are in each state (every state named, 0 if none); the (state, seq) index
    answers it without reading the rows. Commands are never deleted, so the terminal counts only grow."""
    counts = dict.fromkeys(STATES, 0)
    for state, n in await conn.execute_fetchall("SELECT state, count(*) FROM commands GROUP BY state"):
        if state in counts:
            counts[state] = int(n)
    return counts


# ---------------------------------------------------------------------------- repository


class Commands:
    """The commands repository: each method is one unit of work (or one read)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def submit(
        self,
        source: str,
        idempotency_key: str,
        type: str,
        params: Mapping[str, Any],
        *,
        user: str | None = None,
        priority: int = 5,
        not_after: datetime | str | None = None,
    ) -> tuple[CommandRecord, bool]:
        """Queue a command durably; returns (record, created). created=False: a repeat (same
        source, user and idempotency key)."""
        # Validated and encoded before queueing: bad input never takes a place in a batch.
        request = _prepare(source, idempotency_key, type, params, user, priority, not_after)
        return await self._db.write(_Submit(request))

    async def get(self, command_id: str) -> CommandRecord:
        """The command with this id, or CommandNotFound."""
        return await self._db.read(lambda conn: _fetch(conn, command_id))

    async def find(self, source: str, idempotency_key: str, *, user: str | None = None) -> CommandRecord | None:
        """The command a repeat of this submit would return, or None (a read: no writer queue).

        Why a read apart from `submit`: a caller that must not write anything for a repeat (the
        upstream command intake, the refusal of commands while the outbox is full) asks first."""
        return await self._db.read(lambda conn: find_in(conn, source, idempotency_key, user))

    async def next_runnable(self, now: datetime | None = None) -> CommandRecord | None:
        """The queued command to run next: not expired, most urgent, then first come."""
        at = _now(now)

        async def fn(conn: aiosqlite.Connection) -> CommandRecord | None:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT * FROM commands WHERE state = 'queued'"
                    " AND (not_after IS NULL OR not_after > ?)"
                    " ORDER BY priority DESC, seq LIMIT 1",
                    (at,),
                )
            )
            return CommandRecord.from_row(rows[0]) if rows else None

        return await self._db.read(fn)

    async def withdraw_queued(self, types: frozenset[str], code: str, message: str) -> list[CommandRecord]:
        return await self._db.write(lambda conn: withdraw_queued_in(conn, types, code, message))

    async def expire_due(self, now: datetime | None = None) -> list[CommandRecord]:
        return await self._db.write(lambda conn: expire_due_in(conn, now))

    async def mark_running(self, command_id: str, now: datetime | None = None) -> CommandRecord:
        """queued -> running; raises CommandExpired (after recording the expiry) if too late."""
        record = await self._db.write(lambda conn: mark_running_in(conn, command_id, now))
        if record.state == "expired":
            raise CommandExpired(f"command {command_id} expired at {record.not_after}")
        return record

    async def finish(
        self,
        command_id: str,
        state: str,
        result: Any = None,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> CommandRecord:
        return await self._db.write(lambda conn: finish_in(conn, command_id, state, result, error_code, error_message))

    async def cancel(self, command_id: str) -> CommandRecord:
        return await self._db.write(lambda conn: cancel_in(conn, command_id))

    async def count_by_state(self) -> dict[str, int]:
        """Commands per state (a read), for /metrics."""
        return await self._db.read(count_by_state_in)

    async def interrupt_running_on_start(self) -> int:
        """Normally done by `Database.start` (see its report); harmless to repeat."""
        return len(await self._db.write(interrupt_running_in))

    async def list(
        self, state: str | None = None, limit: int = 100, before_seq: int | None = None
    ) -> list[CommandRecord]:
        """Newest first; page with `before_seq` = the last seq of the previous page."""
        if state is not None and state not in STATES:
            raise CommandInvalid(f"state must be one of {', '.join(STATES)}, got {state!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise CommandInvalid("limit must be an integer from 1 to 1000")
        clauses: list[str] = []
        args: list[str | int] = []
        if state is not None:
            clauses.append("state = ?")
            args.append(state)
        if before_seq is not None:
            clauses.append("seq < ?")
            args.append(int(before_seq))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""

        async def fn(conn: aiosqlite.Connection) -> list[CommandRecord]:
            rows = await conn.execute_fetchall(
                f"SELECT * FROM commands {where} ORDER BY seq DESC LIMIT ?", (*args, limit)
            )
            return [CommandRecord.from_row(r) for r in rows]

        return await self._db.read(fn)
