"""API keys for machine clients: digest, public prefix, role, creator, last use; revoked one by one.

Why per client and revocable one by one: a scraper or a line controller each get their own key,
so a leaked key is revoked without breaking the others, and the audit log names which client did
what (by prefix). The full key is shown once at creation; only its SHA-256 digest is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiosqlite

from agent.auth.errors import ApiKeyInvalid, ApiKeyNotFound
from agent.auth.roles import check_role
from agent.ids import new_id
from agent.store.clock import format_ts, now_ts

if TYPE_CHECKING:
    from agent.store.database import Database

__all__ = ["ApiKeyRecord", "ApiKeys", "create_in", "find_by_prefix_in", "list_in", "revoke_in", "touch_in"]

_MAX_NAME = 64


@dataclass(frozen=True)
class ApiKeyRecord:
    seq: int
    id: str
    prefix: str
    key_hash: str
    name: str
    role: str
    created_by: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None
    revoked_by: str | None

    @classmethod
    def from_row(cls, row: Any) -> ApiKeyRecord:
        return cls(**dict(row))

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def label(self) -> str:
        """How the key is named in the audit log: its public prefix, never the secret."""
        return f"oak_{self.prefix}"

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prefix": self.label,
            "name": self.name,
            "role": self.role,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "revoked": self.revoked,
            "revoked_at": self.revoked_at,
            "revoked_by": self.revoked_by,
        }


def check_key_name(name: object) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= _MAX_NAME or not name.isprintable():
        raise ApiKeyInvalid(f"key name must be 1-{_MAX_NAME} printable characters")
    return name


async def create_in(
    conn: aiosqlite.Connection, *, prefix: str, key_hash: str, name: str, role: str, created_by: str
) -> ApiKeyRecord:
    check_key_name(name)
    check_role(role)
    rows = await conn.execute_fetchall(
        "INSERT INTO api_keys (id, prefix, key_hash, name, role, created_by, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
        (new_id(), prefix, key_hash, name, role, created_by, now_ts()),
    )
    return ApiKeyRecord.from_row(next(iter(rows)))


async def find_by_prefix_in(conn: aiosqlite.Connection, prefix: str) -> ApiKeyRecord | None:
    rows = list(await conn.execute_fetchall("SELECT * FROM api_keys WHERE prefix = ?", (prefix,)))
    return ApiKeyRecord.from_row(rows[0]) if rows else None


async def list_in(conn: aiosqlite.Connection) -> list[ApiKeyRecord]:
    rows = await conn.execute_fetchall("SELECT * FROM api_keys ORDER BY seq")
    return [ApiKeyRecord.from_row(r) for r in rows]


async def revoke_in(conn: aiosqlite.Connection, key_id: str, *, by: str) -> tuple[ApiKeyRecord, bool]:
    """Revoke a key by id; (record, changed). Revoking twice is harmless."""
    rows = list(await conn.execute_fetchall("SELECT * FROM api_keys WHERE id = ?", (key_id,)))
    if not rows:
        raise ApiKeyNotFound(f"no API key with id {key_id[:80]!r}")
    record = ApiKeyRecord.from_row(rows[0])
    if record.revoked:
        return record, False
    rows = list(
        await conn.execute_fetchall(
            "UPDATE api_keys SET revoked_at = ?, revoked_by = ? WHERE id = ? RETURNING *",
            (now_ts(), by, key_id),
        )
    )
    return ApiKeyRecord.from_row(rows[0]), True


async def touch_in(conn: aiosqlite.Connection, key_id: str, at: datetime) -> None:
    await conn.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (format_ts(at), key_id))


class ApiKeys:
    """Reads of the api_keys table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def list(self) -> list[ApiKeyRecord]:
        return await self._db.read(list_in)
