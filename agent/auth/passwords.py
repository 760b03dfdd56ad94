"""Password hashing with scrypt, parameters stored with each hash (the policy is in `password_policy`).

Why scrypt with its parameters in the hash: scrypt is memory-hard (a GPU farm gains little), and
`cryptography` ships it, so no extra native dependency. Each stored hash names its own n, r, p,
salt and length, so the cost can be raised in a later release: a login with weaker stored
parameters re-hashes the password with the current ones (`needs_upgrade`).

Format: `scrypt$n=32768$r=8$p=1$<salt b64>$<hash b64>` (standard base64 without padding).

Hashing costs ~75 ms and 32 MiB here, so `Hasher` runs it in a thread (the event loop keeps
serving the bus and the API) and admits at most `concurrency` at once (memory stays bounded
under a login flood).
"""

from __future__ import annotations

import asyncio
import base64
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

# Re-exported: callers check and hash a new password through this module.
from agent.auth.password_policy import MAX_LENGTH, MIN_LENGTH, check_policy

__all__ = [
    "CURRENT",
    "MAX_LENGTH",
    "MIN_LENGTH",
    "Hasher",
    "ScryptParams",
    "check_policy",
    "hash_password",
    "needs_upgrade",
    "parse_hash",
    "verify_password",
]


@dataclass(frozen=True, order=True)
class ScryptParams:
    n: int
    r: int
    p: int
    salt_len: int = 16
    length: int = 32


CURRENT = ScryptParams(n=2**15, r=8, p=1)
_PREFIX = "scrypt"
# Refuse to run parameters that would exhaust memory (a tampered row must not kill the daemon).
_MAX_N, _MAX_R, _MAX_P = 2**20, 32, 16


@dataclass(frozen=True)
class ParsedHash:
    params: ScryptParams
    salt: bytes
    digest: bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _kdf(params: ScryptParams, salt: bytes) -> Scrypt:
    return Scrypt(salt=salt, length=params.length, n=params.n, r=params.r, p=params.p)


def hash_password(password: str, params: ScryptParams = CURRENT) -> str:
    """A new salted hash in the storage format (blocking: call through `Hasher` on the loop)."""
    salt = os.urandom(params.salt_len)
    digest = _kdf(params, salt).derive(password.encode("utf-8"))
    return f"{_PREFIX}$n={params.n}$r={params.r}$p={params.p}${_b64(salt)}${_b64(digest)}"


def parse_hash(stored: str) -> ParsedHash:
    """Decode the storage format; raises ValueError for anything malformed or out of bounds."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _PREFIX:
        raise ValueError("not an scrypt hash")
    values = {}
    for part, name in zip(parts[1:4], ("n", "r", "p"), strict=True):
        key, sep, value = part.partition("=")
        if key != name or not sep or not value.isdigit():
            raise ValueError(f"bad scrypt parameter {part!r}")
        values[name] = int(value)
    n, r, p = values["n"], values["r"], values["p"]
    if not (1 < n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        raise ValueError("scrypt parameters out of bounds")
    salt, digest = _unb64(parts[4]), _unb64(parts[5])
    if not 8 <= len(salt) <= 64 or not 16 <= len(digest) <= 64:
        raise ValueError("scrypt salt or hash length out of bounds")
    return ParsedHash(ScryptParams(n, r, p, len(salt), len(digest)), salt, digest)


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches `stored` (constant-time compare inside `cryptography`)."""
    try:
        parsed = parse_hash(stored)
    except ValueError:
        return False
    try:
        _kdf(parsed.params, parsed.salt).verify(password.encode("utf-8"), parsed.digest)
    except InvalidKey:
        return False
    return True


def needs_upgrade(stored: str, current: ScryptParams = CURRENT) -> bool:
    """Whether any stored parameter is weaker than `current` (re-hash at the next login)."""
    try:
        p = parse_hash(stored).params
    except ValueError:
        return True
    return (
        p.n < current.n
        or p.r < current.r
        or p.p < current.p
        or p.salt_len < current.salt_len
        or p.length < current.length
    )


class Hasher:
    """Runs scrypt off the event loop, at most `concurrency` at a time.

    `verify_or_dummy` always does the same amount of work whether the account exists or not,
    so a login for an unknown user takes as long as a wrong password (no user enumeration).
    """

    def __init__(self, params: ScryptParams = CURRENT, concurrency: int = 2) -> None:
        self.params = params
        self._slots = asyncio.Semaphore(concurrency)
        self._dummy: str | None = None

    async def prepare(self) -> None:
        """Compute the dummy hash now, so the first unknown-user login is not slower than later ones."""
        if self._dummy is None:
            self._dummy = await self.hash(os.urandom(16).hex())

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(hash_password, password, self.params)

    async def verify(self, password: str, stored: str | None) -> bool:
        """Check `password` against `stored`; with None, burn the same time and return False."""
        if stored is None:
            await self.prepare()
            assert self._dummy is not None
            async with self._slots:
                await asyncio.to_thread(verify_password, password, self._dummy)
            return False
        async with self._slots:
            return await asyncio.to_thread(verify_password, password, stored)

    def needs_upgrade(self, stored: str) -> bool:
        return needs_upgrade(stored, self.params)
