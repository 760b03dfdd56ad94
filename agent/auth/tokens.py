"""Bearer secrets: session tokens, API keys and stream tickets; stored only as SHA-256 digests.

Why a plain SHA-256 and not scrypt for these: they are 256-bit random values, so a digest cannot
be reversed by guessing, and a fast digest lets every request be checked in microseconds. Only
digests reach the database, so a copied database file grants no access.

API key format: `oak_<prefix>_<secret>`. The prefix (10 lowercase letters/digits) is public: it is
shown in listings and written to the audit log to name the key; the secret is shown once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

__all__ = [
    "API_KEY_PREFIX",
    "ParsedApiKey",
    "digest",
    "digests_match",
    "looks_like_api_key",
    "new_api_key",
    "new_session_token",
    "new_ticket",
    "parse_api_key",
    "well_formed_token",
]

API_KEY_PREFIX = "oak_"
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_PREFIX_LEN = 10
_KEY_RE = re.compile(r"^oak_([a-z0-9]{10})_([A-Za-z0-9_-]{43})$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")


def digest(secret: str) -> str:
    """Hex SHA-256 of a bearer secret: what the database stores and looks up."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def digests_match(a: str, b: str) -> bool:
    """Constant-time comparison of two stored digests (never `==` on secret material)."""
    return hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))


def new_session_token() -> str:
    """An opaque 256-bit session token (43 URL-safe characters)."""
    return secrets.token_urlsafe(32)


def new_ticket() -> str:
    """A single-use stream ticket (same strength as a session token)."""
    return secrets.token_urlsafe(32)


def well_formed_token(token: str) -> bool:
    """Tokens and tickets have one shape; anything else is refused before any lookup."""
    return bool(_TOKEN_RE.match(token))


@dataclass(frozen=True)
class ParsedApiKey:
    prefix: str
    full: str


def new_api_key() -> tuple[str, str]:
    """(prefix, full key). The full key is returned to the creator once and never stored."""
    prefix = "".join(secrets.choice(_ALPHABET) for _ in range(_PREFIX_LEN))
    return prefix, f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"


def looks_like_api_key(value: str) -> bool:
    return value.startswith(API_KEY_PREFIX)


def parse_api_key(value: str) -> ParsedApiKey | None:
    """The public prefix of a well-formed key, or None."""
    match = _KEY_RE.match(value)
    return ParsedApiKey(match.group(1), value) if match else None
