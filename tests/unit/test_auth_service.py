"""AuthService over a real database: logins, throttling, sessions, passwords, users, keys, tickets."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.auth import tokens
from agent.auth.errors import (
    AuthExpired,
    AuthFailed,
    AuthInvalid,
    LastAdmin,
    LoginThrottled,
    PasswordMismatch,
    PasswordRejected,
    RoleNotAllowed,
    UserExists,
)
from agent.auth.passwords import Hasher, ScryptParams, hash_password, parse_hash
from agent.auth.principal import CallContext, Principal, cli_principal
from agent.auth.service import AuthLimits, AuthService
from agent.auth.throttle import ThrottleLimits
from agent.store import users as users_store
from agent.store.audit import Audit, verify_chain
from agent.store.database import DB_NAME, Database
from tests.conftest import FakeClock

FAST = ScryptParams(n=2**12, r=8, p=1)  # cheaper than production; same code path
PW = "correct horse battery"
ROOT = cli_principal("root")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def svc(db: Database, clock: FakeClock) -> AuthService:
    limits = AuthLimits(session_lifetime_s=3600, session_idle_s=600, ticket_ttl_s=10,
                        throttle=ThrottleLimits(account_failures=3, ip_failures=10, window_s=900))  # fmt: skip
    service = AuthService(db, limits, hasher=Hasher(FAST), clock=clock, monotonic=clock)
    await service.start()
    await service.create_user(ROOT, "alice", "admin", PW, CallContext())
    await service.create_user(ROOT, "olga", "operator", PW, CallContext())
    return service


def ctx(ip: str = "10.0.0.1") -> CallContext:
    return CallContext(source_ip=ip, request_id="req")


async def audit_rows(db: Database) -> list[tuple[str, str, str, str | None]]:
    return [(r.actor, r.action, r.result, r.code) for r in await Audit(db).list(limit=1000)]


async def test_login_opens_a_session_and_audits_it(svc: AuthService, db: Database) -> None:
    c = ctx()
    result = await svc.login("olga", PW, c)
    assert c.audited and result.role == "operator" and result.user_name == "olga"
    principal = await svc.authenticate(result.token)
    assert (principal.actor, principal.role, principal.method) == ("olga", "operator", "session")
    assert ("olga", "auth.login", "ok", None) in await audit_rows(db)
    assert (await verify_chain(db)).ok


async def test_only_digests_are_stored(svc: AuthService, db: Database, tmp_path: Path) -> None:
    token = (await svc.login("olga", PW, ctx())).token
    _, key = await svc.create_api_key(await svc.authenticate(token), "scraper", "viewer", ctx())
    await db.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "data").glob(f"{DB_NAME}*"))
    await db.start()
    assert token.encode() not in raw and key.encode() not in raw and PW.encode() not in raw
    assert tokens.digest(token).encode() in raw


@pytest.mark.parametrize("name", ["olga", "nobody", "Olga "])
async def test_wrong_password_unknown_user_same_answer(svc: AuthService, db: Database, name: str) -> None:
    with pytest.raises(AuthFailed) as info:
        await svc.login(name, "wrong password here", ctx())
    assert info.value.message == "invalid user name or password"
    assert ("anonymous", "auth.login", "denied", "AUTH_FAILED") in await audit_rows(db)


async def test_disabled_user_cannot_log_in_and_loses_sessions(svc: AuthService, db: Database) -> None:
    token = (await svc.login("olga", PW, ctx())).token
    await svc.disable_user(ROOT, "olga", ctx())
    with pytest.raises(AuthInvalid):
        await svc.authenticate(token)
    with pytest.raises(AuthFailed) as info:
        await svc.login("olga", PW, ctx())
    assert info.value.message == "invalid user name or password"
    users = {u.name: u for u in await svc.list_users()}
    assert users["olga"].disabled and users["olga"].disabled_by == "cli:root"


async def test_last_admin_cannot_be_disabled(svc: AuthService) -> None:
    with pytest.raises(LastAdmin):
        await svc.disable_user(ROOT, "alice", ctx())
    await svc.create_user(ROOT, "bert", "admin", PW, ctx())
    await svc.disable_user(ROOT, "alice", ctx())


async def test_throttle_per_account_even_with_the_right_password(
    svc: AuthService, db: Database, clock: FakeClock
) -> None:
    for _ in range(3):
        with pytest.raises(AuthFailed):
            await svc.login("olga", "wrong password here", ctx())
    with pytest.raises(LoginThrottled) as info:
        await svc.login("olga", PW, ctx("10.9.9.9"))
    assert 0 < info.value.retry_after <= 900
    assert ("anonymous", "auth.login", "denied", "AUTH_THROTTLED") in await audit_rows(db)
    clock.now += 901
    assert (await svc.login("olga", PW, ctx())).role == "operator"


async def test_logout_revokes(svc: AuthService) -> None:
    token = (await svc.login("olga", PW, ctx())).token
    principal = await svc.authenticate(token)
    await svc.logout(principal, ctx())
    with pytest.raises(AuthInvalid):
        await svc.authenticate(token)
    assert not await svc.still_valid(principal)


async def test_absolute_expiry_and_idle_timeout(svc: AuthService, clock: FakeClock) -> None:
    token = (await svc.login("olga", PW, ctx())).token
    for _ in range(6):  # active use keeps it alive until the absolute expiry
        clock.now += 590
        await svc.authenticate(token)
    clock.now += 300  # 3840 s after login: past the 3600 s lifetime
    with pytest.raises(AuthExpired):
        await svc.authenticate(token)
    with pytest.raises(AuthExpired):  # and it stays dead (revoked in the database), still "expired"
        await svc.authenticate(token)
    idle = (await svc.login("olga", PW, ctx())).token
    clock.now += 601
    with pytest.raises(AuthExpired):
        await svc.authenticate(idle)


async def test_sessions_survive_a_new_service_but_revocations_too(
    svc: AuthService, db: Database, clock: FakeClock
) -> None:
    """A restart (new service, empty cache) sees the same sessions from the database."""
    token = (await svc.login("olga", PW, ctx())).token
    gone = (await svc.login("olga", PW, ctx())).token
    await svc.logout(await svc.authenticate(gone), ctx())
    fresh = AuthService(db, svc.limits, hasher=Hasher(FAST), clock=clock, monotonic=clock)
    assert (await fresh.authenticate(token)).actor == "olga"
    with pytest.raises(AuthInvalid):
        await fresh.authenticate(gone)


async def test_malformed_bearers(svc: AuthService) -> None:
    for bad in ("x", "oak_", "oak_abc_def", tokens.new_session_token()):
        with pytest.raises(AuthInvalid):
            await svc.authenticate(bad)


async def test_password_change_revokes_every_session(svc: AuthService, db: Database) -> None:
    t1 = (await svc.login("olga", PW, ctx())).token
    t2 = (await svc.login("olga", PW, ctx())).token
    principal = await svc.authenticate(t1)
    with pytest.raises(PasswordMismatch):
        await svc.change_password(principal, "not my password", "a brand new password", ctx())
    with pytest.raises(PasswordRejected):
        await svc.change_password(principal, PW, "short", ctx())
    assert await svc.change_password(principal, PW, "a brand new password", ctx()) == 2
    for t in (t1, t2):
        with pytest.raises(AuthInvalid):
            await svc.authenticate(t)
    with pytest.raises(AuthFailed):
        await svc.login("olga", PW, ctx())
    await svc.login("olga", "a brand new password", ctx())
    rows = await audit_rows(db)
    assert ("olga", "auth.password_change", "denied", "AUTH_PASSWORD_MISMATCH") in rows
    assert ("olga", "auth.password_change", "ok", None) in rows


async def test_admin_sets_password(svc: AuthService) -> None:
    token = (await svc.login("olga", PW, ctx())).token
    assert await svc.set_password(ROOT, "olga", "set by the admin", ctx()) == 1
    with pytest.raises(AuthInvalid):
        await svc.authenticate(token)
    await svc.login("olga", "set by the admin", ctx())


async def test_weak_stored_hash_is_upgraded_at_login(svc: AuthService, db: Database) -> None:
    weak = hash_password(PW, ScryptParams(n=2**10, r=8, p=1))
    await db.write(lambda conn: users_store.create_in(conn, "old", "viewer", weak, created_by="migration"))
    await svc.login("old", PW, ctx())
    stored = (await users_store.Users(db).get("old")).password_hash  # type: ignore[union-attr]
    assert parse_hash(stored).params.n == FAST.n
    await svc.login("old", PW, ctx())


async def test_user_names_are_unique_regardless_of_case(svc: AuthService) -> None:
    with pytest.raises(UserExists):
        await svc.create_user(ROOT, "ALICE", "viewer", PW, ctx())


async def test_api_keys(svc: AuthService, db: Database) -> None:
    olga = await svc.authenticate((await svc.login("olga", PW, ctx())).token)
    with pytest.raises(RoleNotAllowed):
        await svc.create_api_key(olga, "too-strong", "technician", ctx())
    record, key = await svc.create_api_key(olga, "line-ctl", "operator", ctx())
    principal = await svc.authenticate(key)
    assert (principal.actor, principal.role, principal.method) == (f"{record.label}:line-ctl", "operator", "api_key")
    assert principal.key_prefix == record.prefix and principal.user_id is None
    assert key.startswith(record.label + "_")
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    with pytest.raises(AuthInvalid):
        await svc.authenticate(forged)
    listed = {k.id: k for k in await svc.list_api_keys()}
    assert listed[record.id].last_used_at is not None and listed[record.id].created_by == "olga"
    await svc.revoke_api_key(ROOT, record.id, ctx())
    with pytest.raises(AuthInvalid):
        await svc.authenticate(key)
    assert not await svc.still_valid(principal)
    rows = await audit_rows(db)
    assert ("olga", "api_key.create", "ok", None) in rows and ("cli:root", "api_key.revoke", "ok", None) in rows


async def test_a_key_rests_on_its_creator_and_a_cli_key_on_nobody(svc: AuthService, db: Database) -> None:
    """Disabling the creator ends the key everywhere it is held: cache, stream re-check, tickets."""
    olga = await svc.authenticate((await svc.login("olga", PW, ctx())).token)
    record, key = await svc.create_api_key(olga, "olga's client", "operator", ctx())
    _, cli_key = await svc.create_api_key(ROOT, "line controller", "admin", ctx())
    principal = await svc.authenticate(key)
    ticket = svc.issue_ticket(principal)
    assert record.created_by_user_id == olga.user_id and await svc.still_valid(principal)
    await svc.disable_user(ROOT, "olga", ctx())
    with pytest.raises(AuthInvalid):
        await svc.authenticate(key)
    assert not await svc.still_valid(principal)
    with pytest.raises(AuthInvalid):
        svc.redeem_ticket(ticket)
    assert (await svc.authenticate(cli_key)).role == "admin"  # the command line's key belongs to no user
    rows = await audit_rows(db)
    assert rows[-2:] == [("cli:root", "user.disable", "ok", None), ("cli:root", "api_key.revoke", "ok", None)]
    assert (await verify_chain(db)).ok


async def test_tickets_are_single_use_and_short_lived(svc: AuthService, clock: FakeClock) -> None:
    principal = await svc.authenticate((await svc.login("olga", PW, ctx())).token)
    ticket = svc.issue_ticket(principal)
    assert svc.redeem_ticket(ticket).actor == "olga"
    with pytest.raises(AuthInvalid):
        svc.redeem_ticket(ticket)
    late = svc.issue_ticket(principal)
    clock.now += 11
    with pytest.raises(AuthExpired):
        svc.redeem_ticket(late)
    for bad in (None, "", "short"):
        with pytest.raises(AuthInvalid):
            svc.redeem_ticket(bad)


async def test_logout_of_a_key_is_refused(svc: AuthService) -> None:
    _, key = await svc.create_api_key(ROOT, "k", "viewer", ctx())
    principal = await svc.authenticate(key)
    from agent.auth.errors import SessionRequired

    with pytest.raises(SessionRequired):
        await svc.logout(principal, ctx())
    with pytest.raises(SessionRequired):
        await svc.change_password(principal, PW, "whatever new pass", ctx())
    assert isinstance(principal, Principal)


async def test_a_read_only_store_does_not_lock_out_logged_in_users(
    svc: AuthService, db: Database, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """With the disk refusing writes, bookkeeping is skipped: the operator can still reach E-stop."""
    token = (await svc.login("olga", PW, ctx())).token
    _, key = await svc.create_api_key(ROOT, "k", "viewer", ctx())
    await db.write(lambda conn: conn.execute("PRAGMA query_only = ON"))
    try:
        clock.now += 120  # due for a last-seen / last-used write
        fresh = AuthService(db, svc.limits, hasher=Hasher(FAST), clock=clock, monotonic=clock)
        assert (await fresh.authenticate(token)).actor == "olga"
        assert (await fresh.authenticate(key)).role == "viewer"
        assert (await svc.authenticate(token)).actor == "olga"
        assert "session bookkeeping not written" in caplog.text  # the writes really failed
    finally:
        await db.write(lambda conn: conn.execute("PRAGMA query_only = OFF"))
