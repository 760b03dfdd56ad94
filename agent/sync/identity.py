"""The robot's signing identity (the device key) and the pinned keys it checks others with.

Why a key of its own, beside the MQTT client certificate: the certificate proves who connects to
the broker, but a record passes through the broker and whatever the centre puts behind it. A
record signed by a key that never leaves the robot lets the central consumer check, when it
commits, that the robot wrote exactly this; the same holds the other way for commands, signed by
the centre's key and checked against the copy pinned in `[upstream] central_public_key`.

The device key is Ed25519, made on the first start that needs it and never replaced: the file is
`device.key` in the data directory (PEM, PKCS#8, unencrypted: a passphrase would have to be
stored beside it). Written atomically and without replacing an existing key (two processes that
both find none end up with the same one), mode 0640 under the units' group umask and 0600
otherwise, as the audit key (agent/store/private_files.py). `oht-agent upstream pubkey` prints the
public half so the centre can pin it. Back the file up with the database: a new key means pinning
again.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.store.private_files import KEY_MODE, fsync_dir
from agent.sync.envelope import Command, Record, decode_public_key, make_record
from agent.sync.errors import (
    DeviceKeyInvalid,
    DeviceKeyUnreadable,
    DeviceKeyUnwritable,
    SignatureInvalid,
)

__all__ = [
    "DEVICE_KEY_FILE",
    "DeviceIdentity",
    "PinnedKey",
    "create",
    "load",
    "load_or_create",
    "verify_command",
    "verify_record",
]

log = logging.getLogger("oht.sync.identity")

DEVICE_KEY_FILE = "device.key"
_OTHERS = 0o007


def _fingerprint(raw: bytes) -> str:
    digest = hashlib.sha256(raw).digest()
    return ":".join(f"{b:02X}" for b in digest)


@dataclass(frozen=True)
class PinnedKey:
    """An Ed25519 public key trusted for one purpose (the centre's, or one robot's device key)."""

    key: Ed25519PublicKey = field(repr=False)

    @classmethod
    def from_text(cls, text: str) -> PinnedKey:
        """Base64 (standard or URL-safe, padded or not) of the 32 raw bytes, or a PEM public key."""
        return cls(Ed25519PublicKey.from_public_bytes(decode_public_key(text)))

    @property
    def raw(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def base64(self) -> str:
        """Standard base64 of the raw key, the form `central_public_key` also takes (44 characters)."""
        return base64.b64encode(self.raw).decode("ascii")

    def pem(self) -> str:
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def fingerprint(self) -> str:
        """SHA-256 of the raw key, colon-separated hex: what two people read to each other to compare."""
        return _fingerprint(self.raw)

    def verify(self, message: bytes, signature: bytes, what: str) -> None:
        try:
            self.key.verify(signature, message)
        except InvalidSignature:
            raise SignatureInvalid(f"{what}: the signature does not verify with the pinned key") from None


def verify_record(record: Record, device_key: PinnedKey) -> None:
    """SignatureInvalid unless `record` was signed by the robot whose key is `device_key`."""
    device_key.verify(record.signing_bytes(), record.signature(), f"record {record.stream}/{record.seq}")


def verify_command(command: Command, central_key: PinnedKey) -> None:
    """SignatureInvalid unless `command` was signed by the centre's pinned key."""
    central_key.verify(command.signing_bytes(), command.signature(), f"command {command.command_id}")


@dataclass(frozen=True)
class DeviceIdentity:
    """The device key pair. The private key stays in this object and in `device.key`."""

    private_key: Ed25519PrivateKey = field(repr=False)

    @property
    def public(self) -> PinnedKey:
        return PinnedKey(self.private_key.public_key())

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def sign_record(self, *, agent: str, stream: str, seq: int, id: str, kind: str, at: str, body: Any) -> Record:
        """The record for one outbox row, signed (see envelope.make_record for what is refused)."""
        return make_record(agent=agent, stream=stream, seq=seq, id=id, kind=kind, at=at, body=body, sign=self.sign)

    def pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def _path(data_dir: Path) -> Path:
    return Path(data_dir) / DEVICE_KEY_FILE


def _close_to_others(path: Path, mode: int) -> None:
    """A key readable by other accounts (restored from a copy, say) loses their bits, with a warning."""
    if mode & _OTHERS == 0:
        return
    try:
        os.chmod(path, mode & ~_OTHERS)
    except PermissionError:
        log.warning(
            "%s is mode %o and cannot be changed by this account: other accounts can read the device key", path, mode
        )
        return
    log.warning("%s was mode %o; now %o (others must not read the device key)", path, mode, mode & ~_OTHERS)


def load(data_dir: Path) -> DeviceIdentity | None:
    """The device key of this data directory; None when there is none yet."""
    path = _path(data_dir)
    try:
        with open(path, "rb") as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            raw = handle.read()
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise DeviceKeyUnreadable(f"cannot read {path}: {exc.strerror}") from None
    try:
        key: Any = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise DeviceKeyInvalid(f"{path} is not a readable PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise DeviceKeyInvalid(f"{path} holds a {type(key).__name__.removeprefix('_')}, not an Ed25519 key")
    _close_to_others(path, mode)
    return DeviceIdentity(key)


def create(data_dir: Path) -> tuple[DeviceIdentity, bool]:
    """Make the device key unless one exists: (the key the file holds afterwards, whether it is ours).

    Written to a private temporary file, synced, then hard-linked into place: the link fails if
    another process put a key there first, and that key is the one kept. A crash leaves either no
    `device.key` or a complete one.
    """
    path = _path(data_dir)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)  # left by a crashed process that had our pid
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, KEY_MODE)
    except OSError as exc:
        raise DeviceKeyUnwritable(f"cannot make {path}: {exc.strerror or exc}") from None
    try:
        try:
            os.write(fd, DeviceIdentity(Ed25519PrivateKey.generate()).pem())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            made = False  # someone else's key won: it is the one already pinned, perhaps
        else:
            made = True
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    identity = load(data_dir)
    if identity is None:  # removed between the link and the read: refuse rather than loop
        raise DeviceKeyInvalid(f"{path} disappeared while it was being made")
    return identity, made


def load_or_create(data_dir: Path) -> tuple[DeviceIdentity, bool]:
    """(identity, created): the existing device key, or a new one made now."""
    existing = load(data_dir)
    if existing is not None:
        return existing, False
    identity, made = create(data_dir)
    if made:
        log.info("device key made in %s; pin its public key centrally (oht-agent upstream pubkey)", _path(data_dir))
    return identity, made
