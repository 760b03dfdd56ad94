"""The audit chain's key: rows are chained with HMAC-SHA256, so a rewrite of the whole log is detected.

Why a key: a plain hash chain shows an edit of one row, but whoever can write the database can
recompute every hash after the edit, head included. With a secret key that lives beside the
database, not in it, a rewritten chain no longer verifies unless the key was also read. The key is
made at the core's first start (32 random bytes) and never changes; `from_seq` records the first
row it covers, so rows written by a release before the key existed still verify as plain
SHA-256. A key made for a log that already has rows is itself recorded (an `audit.key_created`
row), so replacing the key file and rewriting the log is visible too.

The file is `audit.key` in the data directory: JSON with `version`, `key` (hex), `from_seq`. Back it
up with the database: without it the log cannot be verified.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from agent.store.errors import StoreUnavailable
from agent.store.private_files import KEY_MODE, write_atomic

__all__ = ["KEY_FILE", "ChainKey", "create", "load", "load_or_create"]

KEY_FILE = "audit.key"
_VERSION = 1


@dataclass(frozen=True)
class ChainKey:
    secret: bytes = field(repr=False)
    from_seq: int

    def covers(self, seq: int) -> bool:
        return seq >= self.from_seq

    def mac(self, message: bytes) -> str:
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()


def _path(data_dir: Path) -> Path:
    return Path(data_dir) / KEY_FILE


def load(data_dir: Path) -> ChainKey | None:
    """The key of this data directory, None when there is none yet; STORE_AUDIT_KEY_INVALID when damaged."""
    path = _path(data_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise StoreUnavailable(
            f"cannot read {path}: {exc.strerror}", code="STORE_AUDIT_KEY_UNREADABLE",
            hint="The audit key must be readable by the agent's accounts (group oht-agent); check its owner and mode.",
        ) from None  # fmt: skip
    try:
        doc = json.loads(raw)
        secret = bytes.fromhex(doc["key"])
        from_seq = int(doc["from_seq"])
        if doc.get("version") != _VERSION or len(secret) < 32 or from_seq < 1:
            raise ValueError("unexpected content")
    except (ValueError, KeyError, TypeError):
        raise StoreUnavailable(
            f"{path} is damaged", code="STORE_AUDIT_KEY_INVALID",
            hint=(
                "Restore audit.key from the backup taken with the database;"
                " without it the audit log cannot be verified."
            ),
        ) from None  # fmt: skip
    return ChainKey(secret, from_seq)


def create(data_dir: Path, from_seq: int) -> ChainKey:
    """Write a new key covering rows from `from_seq` on (atomically: a crash leaves none or all)."""
    key = ChainKey(secrets.token_bytes(32), from_seq)
    body = json.dumps({"version": _VERSION, "key": key.secret.hex(), "from_seq": from_seq}).encode()
    write_atomic(_path(data_dir), body, KEY_MODE)
    return key


def load_or_create(data_dir: Path, next_seq: int) -> tuple[ChainKey, bool]:
    """(key, created): the existing key, or a new one covering rows from `next_seq` on."""
    existing = load(data_dir)
    if existing is not None:
        return existing, False
    return create(data_dir, next_seq), True
