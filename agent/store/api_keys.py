"""API keys for machine clients: digest, public prefix, role, creator, last use; revoked one by one.

Why per client and revocable one by one: a scraper or a line controller each get their own key,
so a leaked key is revoked without breaking the others, and the audit log names which client did
what (by prefix and name). The full key is shown once at creation; only its SHA-256 digest is
stored.

Why the creator by id (`created_by_user_id`, `created_by_key_id`) and not only by name
(`created_by`, what the audit log shows): a key is only as good as whoever made it. Disabling a
user or revoking a key revokes every key made under it (`revoke_made_by_in`), and a key is looked
up together with the chain of its makers (`chain_in`) so that the auth layer can refuse it or cap
its role. Keys made by keys exist only in databases from before that was refused; keys made on the
command line have neither id and belong to no user.
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

__all__ = [
    "ApiKeyRecord",
    "ApiKeys",
    "KeyLink",
    "chain_in",
    "create_in",
    "list_in",
    "revoke_in",
    "revoke_made_by_in",
    "touch_in",
]

_MAX_NAME = 64
# What the API schema states of a key name: no control character (a lone surrogate is no JSON
# Schema string at all, and no pattern can name it). The check below (printable characters)
# refuses a few more (format characters, separators other than the space, unassigned code
# points), which a pattern that both JSON Schema and Python read cannot name.
KEY_NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
# How far `chain_in` follows "made by key": new keys are never made by keys, so any chain is old
# and short; a longer one (or a loop written by hand) ends unresolved, and the key is refused.
CHAIN_MAX = 16


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
    created_by_user_id: str | None
    created_by_key_id: str | None

    @classmethod
    def from_row(cls, row: Any) -> ApiKeyRecord:
        return cls(**dict(row))

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def label(self) -> str:
        """The key's public prefix as listings show it (`oak_<prefix>`), never the secret."""
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
    conn: aiosqlite.Connection,
    *,
    prefix: str,
    key_hash: str,
    name: str,
    role: str,
    created_by: str,
    created_by_user_id: str | None = None,
    created_by_key_id: str | None = None,
) -> ApiKeyRecord:
    """Insert a key; `created_by` names the creator for people, the ids are what the rules use."""
    check_key_name(name)
    check_role(role)
    rows = await conn.execute_fetchall(
        "INSERT INTO api_keys (id, prefix, key_hash, name, role, created_by, created_at,"
        " created_by_user_id, created_by_key_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
        (new_id(), prefix, key_hash, name, role, created_by, now_ts(), created_by_user_id, created_by_key_id),
    )
    return ApiKeyRecord.from_row(next(iter(rows)))


@dataclass(frozen=True)
class KeyLink:
    """One key of a chain, with the account of the user who made it (if a user did)."""

    record: ApiKeyRecord
    owner_found: bool  # `created_by_user_id` names an existing user
    owner_role: str | None
    owner_disabled: bool


# The key, then the key that made it, and so on: one row per key, nearest first.
_CHAIN = f"""
WITH RECURSIVE chain(id, depth) AS (
    SELECT id, 0 FROM api_keys WHERE prefix = ?
    UNION ALL
    SELECT k.created_by_key_id, c.depth + 1 FROM chain c JOIN api_keys k ON k.id = c.id
    WHERE k.created_by_key_id IS NOT NULL AND c.depth < {CHAIN_MAX}
)
SELECT k.*, u.id IS NOT NULL AS owner_found, u.role AS owner_role,
       u.disabled_at IS NOT NULL AS owner_disabled
FROM chain c JOIN api_keys k ON k.id = c.id LEFT JOIN users u ON u.id = k.created_by_user_id
ORDER BY c.depth
"""


async def chain_in(conn: aiosqlite.Connection, prefix: str) -> list[KeyLink]:
    """The key with this prefix and the keys that made it, nearest first; [] when unknown.

    A maker that does not exist ends the list early: the last link then still names a
    `created_by_key_id`, which tells the caller the chain did not resolve.
    """
    links = []
    for row in await conn.execute_fetchall(_CHAIN, (prefix,)):
        values = dict(row)
        found, role, disabled = values.pop("owner_found"), values.pop("owner_role"), values.pop("owner_disabled")
        links.append(KeyLink(ApiKeyRecord(**values), bool(found), role, bool(disabled)))
    return links


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


# Every key made by the user or the key given, and every key made by those, however deep (a key
# made by a revoked key is followed too: its own keys may still be live).
_REVOKE_MADE_BY = """
WITH RECURSIVE made(id) AS (
    SELECT id FROM api_keys WHERE created_by_user_id = ? OR created_by_key_id = ?
    UNION
    SELECT k.id FROM api_keys k JOIN made m ON k.created_by_key_id = m.id
)
UPDATE api_keys SET revoked_at = ?, revoked_by = ?
WHERE revoked_at IS NULL AND id IN (SELECT id FROM made)
RETURNING *
"""


async def revoke_made_by_in(
    conn: aiosqlite.Connection, *, user_id: str | None = None, key_id: str | None = None, by: str
) -> list[ApiKeyRecord]:
    """Revoke every key made by `user_id` or by `key_id`, transitively; the keys revoked now."""
    rows = await conn.execute_fetchall(_REVOKE_MADE_BY, (user_id, key_id, now_ts(), by))
    return sorted((ApiKeyRecord.from_row(r) for r in rows), key=lambda r: r.seq)


async def touch_in(conn: aiosqlite.Connection, key_id: str, at: datetime) -> None:
    await conn.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (format_ts(at), key_id))


class ApiKeys:
    """Reads of the api_keys table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def list(self) -> list[ApiKeyRecord]:
        return await self._db.read(list_in)
