"""Login sessions: the SHA-256 digest of each token, its absolute expiry, idle timeout, revocation.

Why only digests: whoever copies the database file must not be able to act as a logged-in
user. Why rows and not signed tokens (JWT): a session must be revocable at once (logout,
password change, a disabled user), and a row that says `revoked_at` does that without a
blacklist.

Expired and revoked rows are pruned a day after they stopped mattering, so the table stays small.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiosqlite

from agent.ids import new_id
from agent.store.clock import format_ts, utc_now

__all__ = [
    "EXPIRY_REASONS",
    "ActiveSession",
    "SessionRecord",
    "create_in",
    "find_in",
    "prune_in",
    "revoke_in",
    "revoke_user_in",
    "touch_in",
]

_KEEP_AFTER_END = timedelta(days=1)


@dataclass(frozen=True)
class SessionRecord:
    seq: int
    id: str
    user_id: str
    token_hash: str
    created_at: str
    expires_at: str
    idle_timeout_s: int
    last_seen_at: str
    source_ip: str | None
    revoked_at: str | None
    revoked_reason: str | None

    @classmethod
    def from_row(cls, row: Any) -> SessionRecord:
        return cls(**dict(row))


# Revocation reasons that mean "it ran out", so a client is told AUTH_EXPIRED, not AUTH_INVALID.
EXPIRY_REASONS = frozenset({"expired", "idle"})


@dataclass(frozen=True)
class ActiveSession:
    """A session joined with its user's current name, role and state."""

    session: SessionRecord
    user_name: str
    role: str
    user_disabled: bool


async def create_in(
    conn: aiosqlite.Connection,
    *,
    user_id: str,
    token_hash: str,
    lifetime: timedelta,
    idle_timeout_s: int,
    source_ip: str | None,
    now: datetime | None = None,
) -> SessionRecord:
    at = now or utc_now()
    rows = await conn.execute_fetchall(
        "INSERT INTO sessions (id, user_id, token_hash, created_at, expires_at, idle_timeout_s,"
        " last_seen_at, source_ip) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
        (
            new_id(),
            user_id,
            token_hash,
            format_ts(at),
            format_ts(at + lifetime),
            int(idle_timeout_s),
            format_ts(at),
            source_ip,
        ),
    )
    return SessionRecord.from_row(next(iter(rows)))


async def find_in(conn: aiosqlite.Connection, token_hash: str) -> ActiveSession | None:
    """The session with this token digest, revoked or not (the caller decides), or None."""
    rows = list(
        await conn.execute_fetchall(
            "SELECT s.*, u.name AS user_name, u.role AS user_role, u.disabled_at AS user_disabled_at"
            " FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?",
            (token_hash,),
        )
    )
    if not rows:
        return None
    values = dict(rows[0])
    name, role = values.pop("user_name"), values.pop("user_role")
    disabled = values.pop("user_disabled_at") is not None
    return ActiveSession(SessionRecord(**values), name, role, disabled)


async def touch_in(conn: aiosqlite.Connection, session_id: str, at: datetime) -> None:
    await conn.execute(
        "UPDATE sessions SET last_seen_at = max(last_seen_at, ?) WHERE id = ?",
        (format_ts(at), session_id),
    )


async def revoke_in(conn: aiosqlite.Connection, session_id: str, reason: str) -> bool:
    cursor = await conn.execute(
        "UPDATE sessions SET revoked_at = ?, revoked_reason = ? WHERE id = ? AND revoked_at IS NULL",
        (format_ts(utc_now()), reason, session_id),
    )
    return cursor.rowcount == 1


async def revoke_user_in(conn: aiosqlite.Connection, user_id: str, reason: str) -> list[str]:
    """Revoke every open session of a user; returns their ids."""
    rows = await conn.execute_fetchall(
        "UPDATE sessions SET revoked_at = ?, revoked_reason = ? WHERE user_id = ? AND revoked_at IS NULL RETURNING id",
        (format_ts(utc_now()), reason, user_id),
    )
    return [str(r[0]) for r in rows]


async def prune_in(conn: aiosqlite.Connection, now: datetime | None = None) -> int:
    """Delete sessions that ended (expired or revoked) more than a day ago."""
    cutoff = format_ts((now or utc_now()) - _KEEP_AFTER_END)
    cursor = await conn.execute(
        "DELETE FROM sessions WHERE expires_at < ? OR (revoked_at IS NOT NULL AND revoked_at < ?)",
        (cutoff, cutoff),
    )
    return max(0, cursor.rowcount)
