"""Password hashing (scrypt with stored parameters), upgrade detection and the policy."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent.auth.errors import PasswordRejected
from agent.auth.passwords import (
    CURRENT,
    Hasher,
    ScryptParams,
    check_policy,
    hash_password,
    needs_upgrade,
    parse_hash,
    verify_password,
)

WEAK = ScryptParams(n=2**10, r=8, p=1)


def test_hash_stores_its_parameters_and_verifies() -> None:
    stored = hash_password("correct horse battery", WEAK)
    assert stored.startswith("scrypt$n=1024$r=8$p=1$")
    parsed = parse_hash(stored)
    assert parsed.params == WEAK and len(parsed.salt) == 16 and len(parsed.digest) == 32
    assert verify_password("correct horse battery", stored)
    assert not verify_password("correct horse batterY", stored)
    assert "correct horse battery" not in stored


def test_same_password_gets_a_new_salt_each_time() -> None:
    a, b = hash_password("same password here", WEAK), hash_password("same password here", WEAK)
    assert a != b
    assert verify_password("same password here", a) and verify_password("same password here", b)


def test_weaker_stored_parameters_need_an_upgrade() -> None:
    assert needs_upgrade(hash_password("correct horse battery", WEAK))
    assert not needs_upgrade(hash_password("correct horse battery", CURRENT))
    assert needs_upgrade("not a hash at all")


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "bcrypt$2b$12$abc",
        "scrypt$n=1024$r=8$p=1$AAAA",
        # n not a power of 2
        "scrypt$n=1000$r=8$p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        # memory bomb
        "scrypt$n=2097152$r=8$p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$r=8$n=1024$p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_malformed_or_dangerous_hashes_never_verify(stored: str) -> None:
    with pytest.raises(ValueError):
        parse_hash(stored)
    assert not verify_password("anything at all", stored)


@pytest.mark.parametrize(
    ("password", "fragment"),
    [
        ("short", "at least 12"),
        ("elevenchars", "at least 12"),
        (" " * 14, "only spaces"),
        ("x" * 1025, "too long"),
        ("Maintenance-01", "user name"),
    ],
)
def test_policy_rejects_with_a_clear_message(password: str, fragment: str) -> None:
    with pytest.raises(PasswordRejected) as info:
        check_policy(password, user_name="maintenance-01")
    assert fragment in info.value.message
    assert info.value.code == "PASSWORD_REJECTED" and info.value.hint


def test_policy_accepts_twelve_characters() -> None:
    check_policy("twelve chars", user_name="bob")


async def test_hasher_runs_off_the_loop_and_burns_time_for_unknown_users() -> None:
    hasher = Hasher(ScryptParams(n=2**14, r=8, p=1))
    stored = await hasher.hash("correct horse battery")
    # The loop keeps ticking while scrypt runs in a thread.
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    assert await hasher.verify("correct horse battery", stored)
    known = time.perf_counter() - started
    task.cancel()
    assert ticks >= 3
    await hasher.prepare()
    started = time.perf_counter()
    assert not await hasher.verify("correct horse battery", None)
    unknown = time.perf_counter() - started
    # Same work either way (generous bounds: a shared CI machine is noisy).
    assert unknown > known * 0.3 and known > unknown * 0.3
