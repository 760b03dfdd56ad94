"""The login throttle under concurrency and against lockout, through AuthService on a real database.

What the review saw: the limit was checked before the password, so a parallel burst had 11 wrong
passwords checked against a limit of 5, and five wrong passwords from anywhere locked the owner
out for 15 minutes. Counted here is what matters: how many passwords were really checked.
"""

from __future__ import annotations

import asyncio

import pytest

from agent.auth.errors import AuthFailed, LoginThrottled
from agent.auth.passwords import Hasher, ScryptParams
from agent.auth.principal import CallContext, cli_principal
from agent.auth.service import AuthLimits, AuthService
from agent.auth.throttle import ThrottleLimits
from agent.store.audit import Audit
from agent.store.database import Database
from tests.conftest import FakeClock

FAST = ScryptParams(n=2**10, r=8, p=1)
PW = "correct horse battery"
WRONG = "wrong horse battery"
ROOT = cli_principal("root")
LIMITS = ThrottleLimits(account_failures=5, ip_failures=20, window_s=900, account_delay_max_s=30)


class CountingHasher(Hasher):
    """The real hasher, counting password checks (the quantity the limits bound)."""

    def __init__(self) -> None:
        super().__init__(FAST, concurrency=4)
        self.checks = 0

    async def verify(self, password: str, stored: str | None) -> bool:
        self.checks += 1
        await asyncio.sleep(0.01)  # a check takes time: the burst overlaps it
        return await super().verify(password, stored)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def svc(db: Database, clock: FakeClock) -> AuthService:
    service = AuthService(db, AuthLimits(throttle=LIMITS), hasher=CountingHasher(), clock=clock, monotonic=clock)
    await service.start()
    await service.create_user(ROOT, "olga", "operator", PW, CallContext())
    service.hasher.checks = 0  # type: ignore[attr-defined]
    return service


def ctx(ip: str) -> CallContext:
    return CallContext(source_ip=ip, request_id="req")


async def attempt(svc: AuthService, password: str, ip: str) -> str:
    try:
        await svc.login("olga", password, ctx(ip))
    except AuthFailed:
        return "failed"
    except LoginThrottled:
        return "throttled"
    return "ok"


def checks(svc: AuthService) -> int:
    return svc.hasher.checks  # type: ignore[attr-defined, no-any-return]


async def test_a_parallel_burst_from_one_address_gets_the_limit_of_checks(svc: AuthService, db: Database) -> None:
    outcomes = await asyncio.gather(*(attempt(svc, WRONG, "10.0.0.1") for _ in range(49)), attempt(svc, PW, "10.0.0.1"))
    assert checks(svc) == LIMITS.account_failures
    assert outcomes.count("failed") + outcomes.count("ok") == LIMITS.account_failures
    assert outcomes[-1] == "throttled"  # the right password after the limit does not get in
    rows = [r for r in await Audit(db).list(limit=1000) if r.action == "auth.login"]
    assert sorted({r.code or "" for r in rows}) == ["AUTH_FAILED", "AUTH_THROTTLED"]


async def test_a_parallel_burst_from_many_addresses_gets_the_limit_of_checks(svc: AuthService) -> None:
    outcomes = await asyncio.gather(*(attempt(svc, WRONG, f"10.0.1.{i}") for i in range(50)))
    assert checks(svc) == LIMITS.account_failures
    assert outcomes.count("failed") == LIMITS.account_failures


async def test_an_address_spraying_accounts_gets_its_limit(svc: AuthService) -> None:
    async def spray(i: int) -> None:
        try:
            await svc.login(f"user{i}", WRONG, ctx("10.0.2.1"))
        except (AuthFailed, LoginThrottled):
            pass

    await asyncio.gather(*(spray(i) for i in range(50)))
    assert checks(svc) == LIMITS.ip_failures


async def test_guessing_from_elsewhere_slows_the_owner_at_most_the_delay_cap(
    svc: AuthService, clock: FakeClock
) -> None:
    # An attacker with many addresses guesses all the time, each guess as soon as it is allowed.
    for i in range(200):
        if await attempt(svc, WRONG, f"10.1.{i // 250}.{i % 250}") == "throttled":
            clock.now += 1
    # The owner, from an address of their own, is told to wait no longer than the cap ...
    with pytest.raises(LoginThrottled) as info:
        await svc.login("olga", PW, ctx("192.168.7.7"))
    assert 0 < info.value.retry_after <= LIMITS.account_delay_max_s
    # ... and gets in when the wait is over (not after the 15-minute window).
    clock.now += info.value.retry_after
    assert await attempt(svc, PW, "192.168.7.7") == "ok"


async def test_the_owners_usual_address_is_not_slowed(svc: AuthService, clock: FakeClock) -> None:
    assert await attempt(svc, PW, "192.168.7.7") == "ok"
    for i in range(30):
        await attempt(svc, WRONG, f"10.2.0.{i}")
        clock.now += 0.5
    assert await attempt(svc, PW, "192.168.7.7") == "ok"


async def test_an_unlock_on_the_carriage_reaches_the_running_gateway(
    svc: AuthService, db: Database, clock: FakeClock
) -> None:
    for i in range(8):
        await attempt(svc, WRONG, "10.3.0.1")
        await attempt(svc, WRONG, f"10.3.1.{i}")
    assert await attempt(svc, PW, "10.3.0.1") == "throttled"
    # The command line is a process of its own: another service on the same database.
    cli_service = AuthService(db, AuthLimits(throttle=LIMITS), hasher=Hasher(FAST))
    await cli_service.unlock(ROOT, "olga", CallContext(source_ip="local"))
    clock.now += 1.5  # the gateway looks for unlocks at most once a second
    assert await attempt(svc, PW, "10.3.0.1") == "ok"
    rows = [(r.actor, r.action, r.target) for r in await Audit(db).list(limit=1000)]
    assert ("cli:root", "auth.unlock", "olga") in rows
