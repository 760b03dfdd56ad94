"""The audit log: append-only, chained with a keyed MAC, shipped upstream through the outbox.

Who did what, from where, with which result. Each row carries `prev_hash` (the previous row's
hash) and `row_hash = HMAC-SHA256(key, prev_hash || canonical JSON of the row)`, so editing,
deleting or reordering any row breaks the chain at that row. `audit_head` keeps the last seq,
last hash and row count (updated by a trigger in the same transaction as each insert), so cutting
rows off the end is detected too. Triggers refuse UPDATE and DELETE on `audit`; `verify_chain`
still catches edits made by someone who dropped the triggers. The key (`chain_key.py`) lives
beside the database, not in it, so a rewrite of the whole chain plus the head does not verify
either unless the key was read too; rows written before the key existed are plain SHA-256.

The key is bound to each connection the `Database` opens (`bind_chain_key`), so every unit of
work that appends a row uses it without passing it along; a connection without a key cannot
append (no row is ever written unkeyed by mistake).

Parameters are not stored, only `params_digest`: SHA-256 of the canonical JSON of the request
parameters with every secret-named field removed, so a row proves what was asked without
holding any password, token, key or ticket.
"""

from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import aiosqlite

from agent.ids import new_id
from agent.store import jsoncodec, outbox
from agent.store.chain_key import ChainKey
from agent.store.clock import now_ts
from agent.store.pipeline import enqueue, settle

if TYPE_CHECKING:
    from agent.store.database import Database

__all__ = [
    "GENESIS_HASH",
    "RESULTS",
    "Audit",
    "AuditEntry",
    "AuditRecord",
    "VerifyResult",
    "append_in",
    "bind_chain_key",
    "params_digest",
    "redact",
    "row_hash",
    "verify_chain",
    "verify_connection",
]

GENESIS_HASH = "0" * 64
RESULTS = ("ok", "denied", "error")
_SECRET_NAME = re.compile(r"pass|secret|token|ticket|credential|authorization|^key$|^api_?key$", re.IGNORECASE)
_MAX_TEXT = 200
_CHUNK = 1000
HASHED_FIELDS = (
    "seq", "id", "at", "actor", "auth_method", "source_ip", "action",
    "target", "params_digest", "result", "code", "request_id",
)  # fmt: skip


def redact(value: Any) -> Any:
    """`value` with every mapping entry whose name looks secret removed (recursively)."""
    if isinstance(value, Mapping):
        return {str(k): redact(v) for k, v in value.items() if not _SECRET_NAME.search(str(k))}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def params_digest(params: Any) -> str | None:
    """SHA-256 of the canonical JSON of `params` without secrets; None when there are none."""
    if params is None:
        return None
    try:
        text = jsoncodec.dumps(redact(params))
    except (TypeError, ValueError):
        text = jsoncodec.dumps({"unencodable": type(params).__name__})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _clip(text: str | None) -> str | None:
    if text is None:
        return None
    text = "".join(ch if ch.isprintable() else "?" for ch in str(text))
    return text[:_MAX_TEXT]


@dataclass(frozen=True)
class AuditEntry:
    """What the caller knows; seq, id, time and hashes are added by `append_in`."""

    actor: str
    auth_method: str
    action: str
    result: str = "ok"
    code: str | None = None
    target: str | None = None
    source_ip: str | None = None
    params_digest: str | None = None
    request_id: str | None = None

    def __post_init__(self) -> None:
        if self.result not in RESULTS:
            raise ValueError(f"audit result must be one of {RESULTS}, got {self.result!r}")


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    id: str
    at: str
    actor: str
    auth_method: str
    source_ip: str | None
    action: str
    target: str | None
    params_digest: str | None
    result: str
    code: str | None
    request_id: str | None
    prev_hash: str
    row_hash: str

    @classmethod
    def from_row(cls, row: Any) -> AuditRecord:
        return cls(**dict(row))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_CHAIN_KEYS: weakref.WeakKeyDictionary[aiosqlite.Connection, ChainKey] = weakref.WeakKeyDictionary()


def bind_chain_key(conn: aiosqlite.Connection, key: ChainKey) -> None:
    """Let units of work on `conn` append to (and verify) the chain with `key`."""
    _CHAIN_KEYS[conn] = key


def row_hash(prev_hash: str, fields: Mapping[str, Any], key: ChainKey | None = None) -> str:
    """HMAC-SHA256 with `key` of prev_hash || canonical JSON of the hashed fields (plain
    SHA-256 for rows before the key's `from_seq`, or without a key)."""
    canonical = jsoncodec.dumps({name: fields[name] for name in HASHED_FIELDS})
    message = (prev_hash + canonical).encode("utf-8")
    if key is not None and key.covers(int(fields["seq"])):
        return key.mac(message)
    return hashlib.sha256(message).hexdigest()


_INSERT = (
    "INSERT INTO audit (seq, id, at, actor, auth_method, source_ip, action, target, params_digest,"
    " result, code, request_id, prev_hash, row_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_OUTBOX = "INSERT INTO outbox (id, kind, created_at, payload) VALUES (?, ?, ?, ?)"


async def append_in(conn: aiosqlite.Connection, entry: AuditEntry) -> AuditRecord:
    """Append one row (and its outbox copy) inside the caller's unit of work."""
    key = _CHAIN_KEYS.get(conn)
    if key is None:
        raise RuntimeError("this connection has no audit chain key: open it through Database")
    # Two processes append to this chain (the core and the gateway). The head must be read under
    # the write lock: a write statement first makes the connection open its transaction (BEGIN IMMEDIATE)
    # before the read, so no other process can move the head between our read and our insert.
    await conn.execute("UPDATE audit_head SET last_seq = last_seq WHERE 0")  # changes nothing; takes the lock
    head = list(await conn.execute_fetchall("SELECT last_seq, last_hash FROM audit_head WHERE id = 1"))
    if not head:
        raise RuntimeError("audit_head is missing: the audit log cannot be extended")
    last_seq, prev = int(head[0][0]), str(head[0][1])
    at = now_ts()
    fields: dict[str, Any] = {
        "seq": last_seq + 1,
        "id": new_id(),
        "at": at,
        "actor": _clip(entry.actor) or "unknown",
        "auth_method": _clip(entry.auth_method) or "none",
        "source_ip": _clip(entry.source_ip),
        "action": _clip(entry.action) or "unknown",
        "target": _clip(entry.target),
        "params_digest": entry.params_digest,
        "result": entry.result,
        "code": _clip(entry.code),
        "request_id": _clip(entry.request_id),
    }
    record = AuditRecord(**fields, prev_hash=prev, row_hash=row_hash(prev, fields, key))
    inserted = enqueue(conn, _INSERT, tuple(record.to_dict().values()))
    shipped = enqueue(
        conn,
        _INSERT_OUTBOX,
        (new_id(), outbox.KIND_AUDIT, at, outbox.encode_payload(outbox.KIND_AUDIT, record.to_dict())),
    )
    failure = await settle([inserted, shipped])
    if failure is not None:
        raise failure
    return record


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    rows: int
    first_bad_seq: int | None = None
    reason: str = ""
    keyed_from: int | None = None  # the first row covered by the key (None: no key)


async def verify_connection(conn: aiosqlite.Connection, key: ChainKey | None = None) -> VerifyResult:
    """Walk the whole chain on `conn` (any connection, also a read-only one).

    `key`: the chain key (by default the one bound to `conn`). Without one, only rows written
    before any key existed can verify; the rest are reported as edited."""
    key = key if key is not None else _CHAIN_KEYS.get(conn)
    keyed_from = key.from_seq if key is not None else None
    head_rows = list(await conn.execute_fetchall("SELECT last_seq, last_hash, rows FROM audit_head WHERE id = 1"))
    expected_seq, prev, count = 1, GENESIS_HASH, 0
    while True:
        rows = await conn.execute_fetchall(
            "SELECT * FROM audit WHERE seq >= ? ORDER BY seq LIMIT ?", (expected_seq, _CHUNK)
        )
        batch = [AuditRecord.from_row(r) for r in rows]
        for rec in batch:
            if rec.seq != expected_seq:
                return VerifyResult(
                    False, count, expected_seq, f"row {expected_seq} is missing (next row is {rec.seq})", keyed_from
                )
            if rec.prev_hash != prev:
                broken = f"row {rec.seq} does not follow row {rec.seq - 1}"
                return VerifyResult(
                    False, count, rec.seq, f"{broken}: a row before it was edited, replaced or reordered", keyed_from
                )
            if row_hash(prev, rec.to_dict(), key) != rec.row_hash:
                return VerifyResult(False, count, rec.seq, f"row {rec.seq} was edited after it was written", keyed_from)
            prev, count, expected_seq = rec.row_hash, count + 1, rec.seq + 1
        if len(batch) < _CHUNK:
            break
    if not head_rows:
        return VerifyResult(False, count, None, "the audit head row is missing", keyed_from)
    head_seq, head_hash, head_count = int(head_rows[0][0]), str(head_rows[0][1]), int(head_rows[0][2])
    if head_seq != expected_seq - 1 or head_count != count or head_hash != prev:
        head = f"its head records {head_count} rows up to row {head_seq}"
        return VerifyResult(
            False,
            count,
            expected_seq,
            f"the log ends at row {expected_seq - 1} but {head}: rows were cut off the end",
            keyed_from,
        )
    return VerifyResult(True, count, keyed_from=keyed_from)


async def verify_chain(db: Database) -> VerifyResult:
    """`verify_connection` on a read snapshot of the agent's database."""
    return await db.read(verify_connection, timeout=600.0)


class Audit:
    """Reading and appending audit rows with the agent's database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def append(self, entry: AuditEntry) -> AuditRecord:
        """Append in a unit of its own (when no other change is written with it)."""
        return await self._db.write(lambda conn: append_in(conn, entry))

    async def list(self, after_seq: int = 0, limit: int = 100) -> list[AuditRecord]:
        limit = max(1, min(int(limit), 1000))

        async def fn(conn: aiosqlite.Connection) -> list[AuditRecord]:
            rows = await conn.execute_fetchall(
                "SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (int(after_seq), limit)
            )
            return [AuditRecord.from_row(r) for r in rows]

        return await self._db.read(fn)

    async def verify(self) -> VerifyResult:
        return await verify_chain(self._db)
