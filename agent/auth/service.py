"""Accounts, sessions, API keys and stream tickets over the agent's database, with their audit.

Every change is written together with its audit row in one unit of work (one transaction): a
user created, a password changed, a session opened or revoked, a key created or revoked. Auth
events that change nothing (a failed or throttled login) get an audit row of their own.

Checking a bearer on every request must be cheap, so validated sessions and keys are cached in
memory. The cache is exact, not eventually consistent: this process is the only writer of the
database (the data directory is locked), every revocation goes through this class and evicts
the cache after its commit, and a generation counter keeps a lookup that raced a revocation from
re-inserting a stale entry. `last_seen_at`/`last_used_at` are written at most once a minute per
credential; the idle timeout is enforced from memory, so a restart can only shorten a session.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiosqlite

from agent.auth import tokens
from agent.auth.auditing import write_anonymous
from agent.auth.errors import (
    AuthExpired,
    AuthFailed,
    AuthInvalid,
    AuthRequired,
    CurrentPasswordRequired,
    LoginThrottled,
    PasswordMismatch,
    PersonRequired,
    RoleNotAllowed,
    SessionRequired,
    UserNotFound,
)
from agent.auth.key_scope import standing
from agent.auth.passwords import Hasher, check_policy
from agent.auth.principal import CallContext, Principal, key_actor
from agent.auth.roles import check_role, rank
from agent.auth.throttle import Attempt, AuditGate, LoginThrottle, ThrottleLimits
from agent.store import api_keys as keys_store
from agent.store import sessions as sessions_store
from agent.store import users as users_store
from agent.store.api_keys import ApiKeyRecord
from agent.store.audit import AuditEntry, append_in, params_digest
from agent.store.clock import parse_ts
from agent.store.database import Database
from agent.store.errors import StoreError
from agent.store.users import User

__all__ = ["AuthLimits", "AuthService", "LoginResult"]

log = logging.getLogger("oht.auth")

_TOUCH_EVERY_S = 60.0
_CACHE_MAX = 10_000
_TICKETS_MAX = 256
_UNLOCK_LOOK_EVERY_S = 1.0
UNLOCK_ACTION = "auth.unlock"


@dataclass(frozen=True)
class AuthLimits:
    session_lifetime_s: float = 8 * 3600.0
    session_idle_s: float = 30 * 60.0
    ticket_ttl_s: float = 10.0
    throttle: ThrottleLimits = field(default_factory=ThrottleLimits)


@dataclass(frozen=True)
class LoginResult:
    token: str
    expires_at: str
    role: str
    user_name: str


@dataclass
class _CachedSession:
    principal: Principal
    expires: float  # epoch seconds
    idle_s: float
    last_seen: float
    persisted_seen: float


@dataclass
class _CachedKey:
    """A key's verdict as of its lookup; `owners`/`chain` are the users and keys it rests on.

    Whatever changes one of those (a user disabled, a key revoked; a role change, should one be
    added) must evict the entries that name it (`_evict_keys`), as it does sessions.
    """

    principal: Principal
    key_hash: str
    persisted_used: float
    owners: frozenset[str]
    chain: frozenset[str]


def _require_person(principal: Principal, what: str) -> None:
    """Keys, users and passwords are changed by a person (a login session) or the command line."""
    if principal.method not in ("session", "local"):
        raise PersonRequired(f"an API key cannot {what}")


def _epoch(ts: str) -> float:
    return parse_ts(ts).timestamp()


class AuthService:
    def __init__(
        self,
        db: Database,
        limits: AuthLimits = AuthLimits(),
        *,
        hasher: Hasher | None = None,
        audit_gate: AuditGate | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self.limits = limits
        self.hasher = hasher or Hasher()
        self.throttle = LoginThrottle(limits.throttle, clock=monotonic)
        self.audit_gate = audit_gate or AuditGate(clock=monotonic)
        self._clock = clock
        self._monotonic = monotonic
        self._sessions: OrderedDict[str, _CachedSession] = OrderedDict()  # token digest -> entry
        self._keys: OrderedDict[str, _CachedKey] = OrderedDict()  # key prefix -> entry
        self._tickets: OrderedDict[str, tuple[Principal, float]] = OrderedDict()  # ticket digest
        self._generation = 0  # bumped by every revocation (see module docstring)
        self._unlock_seq = 0  # the last audit row looked at for unlocks
        self._unlocks_checked_at = -math.inf

    async def start(self) -> None:
        await self.hasher.prepare()
        # Unlocks written before this start concern failures this process never saw.
        rows = await self._db.read(lambda conn: conn.execute_fetchall("SELECT last_seq FROM audit_head WHERE id = 1"))
        self._unlock_seq = int(next(iter(rows))[0]) if rows else 0

    async def unlock(self, principal: Principal, user_name: str, ctx: CallContext) -> User:
        """Clear an account's login failures (the technician on the carriage, `oht-agent user unlock`).

        Written as an audit row; a running gateway applies it at the account's next throttled
        attempt (see `_apply_unlocks`), and this process's own throttle is cleared at once."""
        users_store.check_name(user_name)
        user = await self._db.read(lambda conn: users_store.get_by_name_in(conn, user_name))
        if user is None:
            raise UserNotFound(f"no user named {user_name!r}")
        entry = self._entry(principal.actor, principal.method, UNLOCK_ACTION, ctx, target=user.name)
        await self._db.write(lambda conn: append_in(conn, entry))
        ctx.audited = True
        self.throttle.clear_account(user.name)
        return user

    # ------------------------------------------------------------------ audit helper

    @staticmethod
    def _entry(
        actor: str, method: str, action: str, ctx: CallContext, *,
        result: str = "ok", code: str | None = None, target: str | None = None, params: object = None,
    ) -> AuditEntry:  # fmt: skip
        return AuditEntry(
            actor=actor,
            auth_method=method,
            action=action,
            result=result,
            code=code,
            target=target,
            source_ip=ctx.source_ip,
            params_digest=params_digest(params),
            request_id=ctx.request_id,
        )

    async def _audit_only(self, entry: AuditEntry, ctx: CallContext, *, anonymous: bool = False) -> None:
        """An audit row of its own (an auth event that changes nothing else).

        Failed and throttled logins come from callers nobody has authenticated: they go through
        the audit gate, so a password-guessing flood cannot fill the disk.
        """
        if anonymous:
            await write_anonymous(self._db, self.audit_gate, entry)
        else:
            await self._db.write(lambda conn: append_in(conn, entry))
        ctx.audited = True

    # ------------------------------------------------------------------ login / logout

    async def login(self, user_name: str, password: str, ctx: CallContext) -> LoginResult:
        """Open a session; AuthFailed (whatever the reason) or LoginThrottled otherwise."""
        ip = ctx.source_ip or "unknown"
        target = str(user_name)[:64]
        # The dummy hash for unknown users exists before the first check of any kind, so the
        # first login after a start is not slower for one kind of name than for the other.
        await self.hasher.prepare()
        attempt = await self._begin_check(user_name, ip)
        if isinstance(attempt, int):
            await self._audit_only(
                self._entry(
                    "anonymous", "password", "auth.login", ctx, result="denied", code=LoginThrottled.code, target=target
                ),
                ctx,
                anonymous=True,
            )
            raise LoginThrottled(f"too many failed logins; retry in {attempt} s", retry_after=attempt)
        try:
            user = None
            if isinstance(user_name, str) and 0 < len(user_name) <= 64:
                user = await self._db.read(lambda conn: users_store.get_by_name_in(conn, user_name))
            ok = await self.hasher.verify(password, user.password_hash if user is not None else None)
        except BaseException:
            attempt.abandon()
            raise
        if not ok or user is None or user.disabled:
            attempt.failed()
            await self._audit_only(
                self._entry(
                    "anonymous", "password", "auth.login", ctx, result="denied", code=AuthFailed.code, target=target
                ),
                ctx,
                anonymous=True,
            )
            raise AuthFailed("invalid user name or password")
        try:
            result = await self._open_session(user, password, ctx)
        except BaseException:
            attempt.abandon()  # the password was right; a store error is not a failed guess
            raise
        attempt.succeeded()
        return result

    async def _begin_check(self, user_name: object, ip: str) -> Attempt | int:
        """A reserved password check, or the seconds to wait; a throttled account first looks
        for an unlock written by a technician (`oht-agent user unlock`) since the last look."""
        attempt = self.throttle.begin(user_name, ip)
        if isinstance(attempt, int) and await self._apply_unlocks():
            attempt = self.throttle.begin(user_name, ip)
        return attempt

    async def _apply_unlocks(self) -> bool:
        """Apply `auth.unlock` audit rows written since the last look (at most once a second).

        Why through the audit log: the unlock is written by the command line on the carriage, a
        process of its own, while the gateway runs; its audit row is both the record and the
        instruction, and reading rows after a known seq uses the primary key only."""
        now = self._monotonic()
        if now - self._unlocks_checked_at < _UNLOCK_LOOK_EVERY_S:
            return False
        self._unlocks_checked_at = now
        after = self._unlock_seq

        async def fn(conn: aiosqlite.Connection) -> list[tuple[int, str]]:
            rows = await conn.execute_fetchall(
                "SELECT seq, target FROM audit WHERE seq > ? AND action = ? AND result = 'ok' ORDER BY seq",
                (after, UNLOCK_ACTION),
            )
            head = list(await conn.execute_fetchall("SELECT last_seq FROM audit_head WHERE id = 1"))
            return [(int(r[0]), str(r[1])) for r in rows] + ([(int(head[0][0]), "")] if head else [])

        try:
            found = await self._db.read(fn)
        except StoreError as exc:
            log.warning("cannot look for account unlocks: %s", exc)
            return False
        applied = False
        for seq, name in found:
            self._unlock_seq = max(self._unlock_seq, seq)
            if name:
                self.throttle.clear_account(name)
                log.info("login failures of %s cleared by an unlock on the carriage", name)
                applied = True
        return applied

    async def _open_session(self, user: User, password: str, ctx: CallContext) -> LoginResult:
        upgraded = await self.hasher.hash(password) if self.hasher.needs_upgrade(user.password_hash) else None
        token = tokens.new_session_token()
        now = datetime.fromtimestamp(self._clock(), UTC)
        entry = self._entry(user.name, "password", "auth.login", ctx, target=user.name)

        async def unit(conn: aiosqlite.Connection) -> sessions_store.SessionRecord:
            record = await sessions_store.create_in(
                conn,
                user_id=user.id,
                token_hash=tokens.digest(token),
                lifetime=timedelta(seconds=self.limits.session_lifetime_s),
                idle_timeout_s=max(1, int(self.limits.session_idle_s)),
                source_ip=ctx.source_ip,
                now=now,
            )
            await users_store.record_login_in(conn, user.id)
            if upgraded is not None:
                await users_store.replace_hash_in(conn, user.id, user.password_hash, upgraded)
            await sessions_store.prune_in(conn, now)
            await append_in(conn, entry)
            return record

        record = await self._db.write(unit)
        ctx.audited = True
        if upgraded is not None:
            log.info("password hash of %s upgraded to the current scrypt parameters", user.name)
        return LoginResult(token=token, expires_at=record.expires_at, role=user.role, user_name=user.name)

    async def logout(self, principal: Principal, ctx: CallContext) -> None:
        if principal.method != "session" or principal.session_id is None:
            raise SessionRequired("only a login session can log out")
        session_id = principal.session_id
        entry = self._entry(principal.actor, principal.method, "auth.logout", ctx, target=principal.actor)

        async def unit(conn: aiosqlite.Connection) -> None:
            await sessions_store.revoke_in(conn, session_id, "logout")
            await append_in(conn, entry)

        await self._db.write(unit)
        ctx.audited = True
        self._evict_sessions(lambda p: p.session_id == session_id)

    # ------------------------------------------------------------------ bearer checks

    async def authenticate(self, bearer: str | None) -> Principal:
        """The principal for an `Authorization: Bearer` value; AuthRequired/AuthInvalid/AuthExpired."""
        if not bearer:
            raise AuthRequired("authentication required")
        if tokens.looks_like_api_key(bearer):
            parsed = tokens.parse_api_key(bearer)
            if parsed is None:
                raise AuthInvalid("malformed API key")
            return await self._check_key(parsed.prefix, tokens.digest(bearer))
        if not tokens.well_formed_token(bearer):
            raise AuthInvalid("malformed token")
        return await self._check_session(tokens.digest(bearer))

    def cached_principal(self, bearer: str | None) -> Principal | None:
        """The principal for a bearer value that is already known and valid, without any wait.

        Only the cache: no database read, no touch, no audit. For the E-stop's early path, which
        must not wait behind anything; None means "take the normal path" (which decides)."""
        if not bearer:
            return None
        now = self._clock()
        if tokens.looks_like_api_key(bearer):
            parsed = tokens.parse_api_key(bearer)
            key = self._keys.get(parsed.prefix) if parsed is not None else None
            if key is None or not tokens.digests_match(key.key_hash, tokens.digest(bearer)):
                return None
            return key.principal
        if not tokens.well_formed_token(bearer):
            return None
        entry = self._sessions.get(tokens.digest(bearer))
        if entry is None or now >= entry.expires or now - entry.last_seen > entry.idle_s:
            return None
        return entry.principal

    async def still_valid(self, principal: Principal) -> bool:
        """Whether the credential behind `principal` still holds (for long-lived streams)."""
        digest = principal.credential_digest
        if digest is None:
            return False
        try:
            if principal.method == "api_key" and principal.key_prefix is not None:
                await self._check_key(principal.key_prefix, digest, touch=False)
            elif principal.method == "session":
                await self._check_session(digest, touch=False)
            else:
                return False
        except (AuthInvalid, AuthExpired):
            return False
        return True

    async def _check_session(self, digest: str, *, touch: bool = True) -> Principal:
        now = self._clock()
        entry = self._sessions.get(digest)
        if entry is None:
            generation = self._generation
            found = await self._db.read(lambda conn: sessions_store.find_in(conn, digest))
            if found is None or found.user_disabled:
                raise AuthInvalid("unknown or revoked session")
            s = found.session
            if s.revoked_at is not None:
                if s.revoked_reason in sessions_store.EXPIRY_REASONS:
                    raise AuthExpired("the session has expired")
                raise AuthInvalid("unknown or revoked session")
            if not tokens.digests_match(s.token_hash, digest):
                raise AuthInvalid("unknown or revoked session")
            principal = Principal(
                actor=found.user_name,
                role=found.role,
                method="session",
                user_name=found.user_name,
                user_id=s.user_id,
                session_id=s.id,
                credential_digest=digest,
            )
            seen = _epoch(s.last_seen_at)
            entry = _CachedSession(principal, _epoch(s.expires_at), float(s.idle_timeout_s), seen, seen)
            if generation == self._generation:
                self._sessions[digest] = entry
                while len(self._sessions) > _CACHE_MAX:
                    self._sessions.popitem(last=False)
        else:
            self._sessions.move_to_end(digest)
        if now >= entry.expires:
            await self._end_session(digest, entry, "expired")
            raise AuthExpired("the session has expired")
        if now - entry.last_seen > entry.idle_s:
            await self._end_session(digest, entry, "idle")
            raise AuthExpired("the session was idle too long")
        if touch:
            entry.last_seen = now
            if now - entry.persisted_seen >= _TOUCH_EVERY_S:
                entry.persisted_seen = now
                session_id = entry.principal.session_id or ""
                at = datetime.fromtimestamp(now, UTC)
                await self._best_effort(lambda conn: sessions_store.touch_in(conn, session_id, at))
        return entry.principal

    async def _best_effort(self, unit: Callable[[aiosqlite.Connection], Awaitable[object]]) -> None:
        """A bookkeeping write (last seen, last used, expiry) that must never refuse a request.

        With a full or read-only disk a logged-in operator must still reach the E-stop: the
        failure is logged and the request goes on (the idle timeout still runs from memory).
        """
        try:
            await self._db.write(unit)
        except StoreError as exc:
            log.warning("session bookkeeping not written: %s", exc)

    async def _end_session(self, digest: str, entry: _CachedSession, reason: str) -> None:
        session_id = entry.principal.session_id or ""
        self._sessions.pop(digest, None)
        self._generation += 1
        await self._best_effort(lambda conn: sessions_store.revoke_in(conn, session_id, reason))

    async def _check_key(self, prefix: str, digest: str, *, touch: bool = True) -> Principal:
        """The key's principal, with the role its whole chain of makers allows (`key_scope`)."""
        entry = self._keys.get(prefix)
        if entry is None:
            generation = self._generation
            chain = await self._db.read(lambda conn: keys_store.chain_in(conn, prefix))
            verdict = standing(chain)
            if verdict.role is None:
                raise AuthInvalid("unknown or revoked API key")
            record = chain[0].record
            principal = Principal(
                actor=key_actor(record.prefix, record.name),
                role=verdict.role,
                method="api_key",
                key_id=record.id,
                key_prefix=record.prefix,
                credential_digest=record.key_hash,
            )
            used = _epoch(record.last_used_at) if record.last_used_at else 0.0
            entry = _CachedKey(principal, record.key_hash, used, verdict.owner_ids, verdict.chain_ids)
            if generation == self._generation:
                self._keys[prefix] = entry
                while len(self._keys) > _CACHE_MAX:
                    self._keys.popitem(last=False)
        if not tokens.digests_match(entry.key_hash, digest):
            raise AuthInvalid("unknown or revoked API key")
        now = self._clock()
        if touch and now - entry.persisted_used >= _TOUCH_EVERY_S:
            entry.persisted_used = now
            key_id = entry.principal.key_id or ""
            at = datetime.fromtimestamp(now, UTC)
            await self._best_effort(lambda conn: keys_store.touch_in(conn, key_id, at))
        return entry.principal

    def _evict_keys(self, key_ids: set[str], *, owner_id: str | None = None) -> None:
        """Drop the cached keys (and their stream tickets) that rest on these keys or this user."""
        self._generation += 1
        gone = set(key_ids)
        for prefix, entry in list(self._keys.items()):
            if entry.chain & gone or (owner_id is not None and owner_id in entry.owners):
                gone.add(entry.principal.key_id or "")
                del self._keys[prefix]
        for digest in [d for d, (p, _) in self._tickets.items() if p.key_id in gone]:
            del self._tickets[digest]

    def _evict_sessions(self, match: Callable[[Principal], bool]) -> None:
        self._generation += 1
        for digest in [d for d, e in self._sessions.items() if match(e.principal)]:
            del self._sessions[digest]
        for digest in [d for d, (p, _) in self._tickets.items() if match(p)]:
            del self._tickets[digest]

    # ------------------------------------------------------------------ passwords

    async def change_password(self, principal: Principal, current: str, new: str, ctx: CallContext) -> int:
        """Change one's own password; every session of the user is revoked. Returns how many."""
        if principal.method != "session" or principal.user_name is None or principal.user_id is None:
            raise SessionRequired("only a logged-in user can change their password")
        name, ip = principal.user_name, ctx.source_ip or "unknown"
        check_policy(new, user_name=name)
        attempt = await self._begin_check(name, ip)
        if isinstance(attempt, int):
            await self._audit_only(
                self._entry(
                    name, "session", "auth.password_change", ctx, result="denied", code=LoginThrottled.code, target=name
                ),
                ctx,
            )
            raise LoginThrottled(f"too many failed password checks; retry in {attempt} s", retry_after=attempt)
        try:
            user = await self._db.read(lambda conn: users_store.get_by_name_in(conn, name))
            ok = user is not None and await self.hasher.verify(current, user.password_hash)
        except BaseException:
            attempt.abandon()
            raise
        if not ok or user is None:
            attempt.failed()
            await self._audit_only(
                self._entry(
                    name,
                    "session",
                    "auth.password_change",
                    ctx,
                    result="denied",
                    code=PasswordMismatch.code,
                    target=name,
                ),
                ctx,
            )
            raise PasswordMismatch("the current password is not correct")
        attempt.abandon()  # the right password: give the reservation back (the change clears the rest)
        return await self._replace_password(principal, user, new, "auth.password_change", ctx)

    async def set_password(self, principal: Principal, user_name: str, new: str, ctx: CallContext) -> int:
        """An admin sets another user's password; that user's sessions are revoked.

        Not one's own: whoever holds an admin's session (a browser left open) would otherwise take
        the account over without knowing its password. The command line may (it runs on the
        carriage, where the data directory is already in reach).
        """
        _require_person(principal, "set a password")
        users_store.check_name(user_name)
        user = await self._db.read(lambda conn: users_store.get_by_name_in(conn, user_name))
        if user is None:
            raise UserNotFound(f"no user named {user_name!r}")
        if principal.user_id is not None and user.id == principal.user_id:
            raise CurrentPasswordRequired("your own password is changed with the current one")
        check_policy(new, user_name=user.name)
        return await self._replace_password(principal, user, new, "user.password_set", ctx)

    async def _replace_password(self, principal: Principal, user: User, new: str, action: str, ctx: CallContext) -> int:
        new_hash = await self.hasher.hash(new)
        entry = self._entry(principal.actor, principal.method, action, ctx, target=user.name)

        async def unit(conn: aiosqlite.Connection) -> list[str]:
            await users_store.set_password_in(conn, user.name, new_hash)
            revoked = await sessions_store.revoke_user_in(conn, user.id, "password changed")
            await append_in(conn, entry)
            return revoked

        revoked = await self._db.write(unit)
        ctx.audited = True
        self._evict_sessions(lambda p: p.user_id == user.id)
        self.throttle.clear_account(user.name)
        return len(revoked)

    # ------------------------------------------------------------------ users

    async def create_user(self, principal: Principal, name: str, role: str, password: str, ctx: CallContext) -> User:
        _require_person(principal, "create users")
        users_store.check_name(name)
        check_role(role)
        if rank(role) > rank(principal.role):
            raise RoleNotAllowed(f"a {principal.role} cannot create a user with role {role}")
        check_policy(password, user_name=name)
        password_hash = await self.hasher.hash(password)
        entry = self._entry(
            principal.actor, principal.method, "user.create", ctx, target=name, params={"name": name, "role": role}
        )

        async def unit(conn: aiosqlite.Connection) -> User:
            user = await users_store.create_in(conn, name, role, password_hash, created_by=principal.actor)
            await append_in(conn, entry)
            return user

        user = await self._db.write(unit)
        ctx.audited = True
        return user

    async def disable_user(self, principal: Principal, name: str, ctx: CallContext) -> User:
        """Disable a user, revoke their sessions and every key they made (idempotent; the last
        admin stays). Keys made by those keys (older databases) go too; each revoked key gets
        its own audit row, in the same transaction."""
        _require_person(principal, "disable users")
        users_store.check_name(name)
        entry = self._entry(principal.actor, principal.method, "user.disable", ctx, target=name)

        async def unit(conn: aiosqlite.Connection) -> tuple[User, list[ApiKeyRecord]]:
            user, _changed = await users_store.disable_in(conn, name, by=principal.actor)
            await sessions_store.revoke_user_in(conn, user.id, "user disabled")
            revoked = await keys_store.revoke_made_by_in(conn, user_id=user.id, by=principal.actor)
            await append_in(conn, entry)
            await self._append_key_revocations(conn, principal, revoked, ctx, why=f"made by {user.name}, disabled")
            return user, revoked

        user, revoked = await self._db.write(unit)
        ctx.audited = True
        self._evict_sessions(lambda p: p.user_id == user.id)
        self._evict_keys({r.id for r in revoked}, owner_id=user.id)
        return user

    async def list_users(self) -> list[User]:
        return await self._db.read(users_store.list_in)

    # ------------------------------------------------------------------ API keys

    async def create_api_key(
        self, principal: Principal, name: str, role: str, ctx: CallContext
    ) -> tuple[ApiKeyRecord, str]:
        """A new key (role up to the creator's); returns the record and the full key, shown once.

        Made by a person, never by a key: a key that made keys would leave them behind when it is
        revoked. A session's key belongs to its user (`created_by_user_id`), one made on the
        command line to nobody.
        """
        _require_person(principal, "create API keys")
        keys_store.check_key_name(name)
        check_role(role)
        if rank(role) > rank(principal.role):
            raise RoleNotAllowed(f"a {principal.role} cannot create a key with role {role}")
        prefix, full = tokens.new_api_key()
        key_hash = tokens.digest(full)

        async def unit(conn: aiosqlite.Connection) -> ApiKeyRecord:
            record = await keys_store.create_in(
                conn, prefix=prefix, key_hash=key_hash, name=name, role=role, created_by=principal.actor,
                created_by_user_id=principal.user_id if principal.method == "session" else None,
            )  # fmt: skip
            await append_in(
                conn,
                self._entry(
                    principal.actor,
                    principal.method,
                    "api_key.create",
                    ctx,
                    target=record.label,
                    params={"name": name, "role": role},
                ),
            )
            return record

        record = await self._db.write(unit)
        ctx.audited = True
        return record, full

    async def revoke_api_key(self, principal: Principal, key_id: str, ctx: CallContext) -> ApiKeyRecord:
        """Revoke a key and, in the same transaction, every key made with it (older databases)."""
        _require_person(principal, "revoke API keys")

        async def unit(conn: aiosqlite.Connection) -> tuple[ApiKeyRecord, list[ApiKeyRecord]]:
            record, _changed = await keys_store.revoke_in(conn, key_id, by=principal.actor)
            made = await keys_store.revoke_made_by_in(conn, key_id=record.id, by=principal.actor)
            await append_in(
                conn, self._entry(principal.actor, principal.method, "api_key.revoke", ctx, target=record.label)
            )
            await self._append_key_revocations(conn, principal, made, ctx, why=f"made with {record.label}, revoked")
            return record, made

        record, made = await self._db.write(unit)
        ctx.audited = True
        self._evict_keys({record.id, *(r.id for r in made)})
        return record

    async def _append_key_revocations(
        self,
        conn: aiosqlite.Connection,
        principal: Principal,
        revoked: list[ApiKeyRecord],
        ctx: CallContext,
        *,
        why: str,
    ) -> None:
        """One audit row per key revoked as a consequence, so the log lists each one."""
        for record in revoked:
            entry = self._entry(
                principal.actor, principal.method, "api_key.revoke", ctx, target=record.label, params={"because": why}
            )
            await append_in(conn, entry)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        return await self._db.read(keys_store.list_in)

    # ------------------------------------------------------------------ stream tickets

    def issue_ticket(self, principal: Principal) -> str:
        """A single-use ticket for the WebSocket stream, valid `ticket_ttl_s`; only its digest is kept."""
        now = self._monotonic()
        for digest in [d for d, (_, exp) in self._tickets.items() if exp <= now]:
            del self._tickets[digest]
        while len(self._tickets) >= _TICKETS_MAX:
            self._tickets.popitem(last=False)
        ticket = tokens.new_ticket()
        self._tickets[tokens.digest(ticket)] = (principal, now + self.limits.ticket_ttl_s)
        return ticket

    def redeem_ticket(self, ticket: str | None) -> Principal:
        """Consume a ticket; AuthInvalid when unknown, used or expired."""
        if not ticket or not tokens.well_formed_token(ticket):
            raise AuthInvalid("missing or malformed stream ticket")
        found = self._tickets.pop(tokens.digest(ticket), None)
        if found is None:
            raise AuthInvalid("unknown or already used stream ticket")
        principal, expires = found
        if self._monotonic() >= expires:
            raise AuthExpired("the stream ticket has expired")
        return principal
