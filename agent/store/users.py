"""Users of the local API: name, role, password hash; disabled, never deleted.

Why never deleted: audit rows name users; a deleted and re-created "alice" would inherit the
history of another person. A disabled user keeps its row and its name.

Names are unique regardless of case (`COLLATE NOCASE`), so "Admin" cannot be registered next to
"admin" to confuse a reader of the audit log.

Each operation is a unit-of-work function (`*_in(conn, ...)`) so that the caller can write the
audit row in the same transaction, and a method of `Users` for reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiosqlite

from agent.auth.errors import LastAdmin, UserExists, UserNameInvalid, UserNotFound
from agent.auth.roles import check_role
from agent.ids import new_id
from agent.store.clock import now_ts

if TYPE_CHECKING:
    from agent.store.database import Database

__all__ = [
    "User",
    "Users",
    "check_name",
    "create_in",
    "disable_in",
    "get_by_id_in",
    "get_by_name_in",
    "list_in",
    "record_login_in",
    "replace_hash_in",
    "set_password_in",
]

USER_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9._-]{1,63}$"  # also the API schema's pattern
_NAME_RE = re.compile(USER_NAME_PATTERN.replace("$", r"\Z"))


@dataclass(frozen=True)
class User:
    seq: int
    id: str
    name: str
    role: str
    password_hash: str
    created_at: str
    created_by: str
    updated_at: str
    password_changed_at: str
    disabled_at: str | None
    disabled_by: str | None
    last_login_at: str | None

    @classmethod
    def from_row(cls, row: Any) -> User:
        return cls(**dict(row))

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None

    def public(self) -> dict[str, Any]:
        """Everything except the password hash (what the API and the CLI show)."""
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "disabled": self.disabled,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "password_changed_at": self.password_changed_at,
            "disabled_at": self.disabled_at,
            "disabled_by": self.disabled_by,
            "last_login_at": self.last_login_at,
        }


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UserNameInvalid(f"invalid user name {str(name)[:80]!r}")
    return name


async def _one(conn: aiosqlite.Connection, sql: str, args: tuple[Any, ...]) -> User | None:
    rows = list(await conn.execute_fetchall(sql, args))
    return User.from_row(rows[0]) if rows else None


async def get_by_name_in(conn: aiosqlite.Connection, name: str) -> User | None:
    return await _one(conn, "SELECT * FROM users WHERE name = ?", (name,))


async def get_by_id_in(conn: aiosqlite.Connection, user_id: str) -> User | None:
    return await _one(conn, "SELECT * FROM users WHERE id = ?", (user_id,))


async def _require(conn: aiosqlite.Connection, name: str) -> User:
    user = await get_by_name_in(conn, name)
    if user is None:
        raise UserNotFound(f"no user named {name[:80]!r}")
    return user


async def list_in(conn: aiosqlite.Connection) -> list[User]:
    rows = await conn.execute_fetchall("SELECT * FROM users ORDER BY seq")
    return [User.from_row(r) for r in rows]


async def create_in(conn: aiosqlite.Connection, name: str, role: str, password_hash: str, *, created_by: str) -> User:
    """Insert a user; raises UserExists when the name (in any case) is taken."""
    check_name(name)
    check_role(role)
    at = now_ts()
    rows = list(
        await conn.execute_fetchall(
            "INSERT INTO users (id, name, role, password_hash, created_at, created_by, updated_at,"
            " password_changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (name) DO NOTHING RETURNING *",
            (new_id(), name, role, password_hash, at, created_by, at, at),
        )
    )
    if not rows:
        raise UserExists(f"a user named {name!r} already exists")
    return User.from_row(rows[0])


async def set_password_in(conn: aiosqlite.Connection, name: str, password_hash: str) -> User:
    """A new password chosen by a person (changes `password_changed_at`)."""
    user = await _require(conn, name)
    at = now_ts()
    rows = await conn.execute_fetchall(
        "UPDATE users SET password_hash = ?, password_changed_at = ?, updated_at = ? WHERE id = ? RETURNING *",
        (password_hash, at, at, user.id),
    )
    return User.from_row(next(iter(rows)))


async def replace_hash_in(conn: aiosqlite.Connection, user_id: str, old_hash: str, new_hash: str) -> bool:
    """Swap in a re-hash of the same password (parameter upgrade) unless it changed meanwhile."""
    cursor = await conn.execute(
        "UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ? AND password_hash = ?",
        (new_hash, now_ts(), user_id, old_hash),
    )
    return cursor.rowcount == 1


async def record_login_in(conn: aiosqlite.Connection, user_id: str) -> None:
    await conn.execute("UPDATE users SET last_login_at = ? WHERE id = ?", (now_ts(), user_id))


async def _active_admins(conn: aiosqlite.Connection) -> int:
    rows = await conn.execute_fetchall("SELECT count(*) FROM users WHERE role = 'admin' AND disabled_at IS NULL")
    return int(next(iter(rows))[0])


async def disable_in(conn: aiosqlite.Connection, name: str, *, by: str) -> tuple[User, bool]:
    """Disable a user; (user, changed). Refuses to disable the last enabled admin."""
    user = await _require(conn, name)
    if user.disabled:
        return user, False
    if user.role == "admin" and await _active_admins(conn) <= 1:
        raise LastAdmin(f"{user.name} is the only enabled admin")
    at = now_ts()
    rows = await conn.execute_fetchall(
        "UPDATE users SET disabled_at = ?, disabled_by = ?, updated_at = ? WHERE id = ? RETURNING *",
        (at, by, at, user.id),
    )
    return User.from_row(next(iter(rows))), True


class Users:
    """Reads of the users table (writes go through units so they carry their audit row)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, name: str) -> User | None:
        return await self._db.read(lambda conn: get_by_name_in(conn, name))

    async def list(self) -> list[User]:
        return await self._db.read(list_in)
