"""The device keys the centre has pinned, one per robot, read from a file the central team keeps.

Why a file of pinned keys: a record is signed on the robot by a key that never leaves it
(agent/sync/identity.py), so the consumer can tell that the robot wrote exactly this, whatever
broker or proxy it passed through; that proof is only as good as the list of keys it is checked
against. The list is TOML, one entry per robot, the agent id (quoted) and the key as
`oht-agent upstream pubkey` prints it, base64 of the 32 raw bytes or the PEM block:

    # enrolled 2026-03-01, fingerprint read back by phone
    "oht-001" = "85WgbTEEX4HJ31VBkU96I25j9tyntVSXN5KX2RSHB1o="
    "oht-002" = '''
    -----BEGIN PUBLIC KEY-----
    MCowBQYDK2VwAyEA85WgbTEEX4HJ31VBkU96I25j9tyntVSXN5KX2RSHB1o=
    -----END PUBLIC KEY-----
    '''

One key per robot, and a key for one robot only (two entries with one key are a copy-and-paste
slip, refused). Enrolling a robot needs no restart: the file is read again on SIGHUP and when it
changes (its size, time or inode, looked at before every batch, a stat call). A file that no
longer reads keeps the keys read last, with an error in the log; at start it is fatal.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from agent.sync.envelope import AGENT_RE
from agent.sync.errors import PublicKeyInvalid
from agent.sync.identity import PinnedKey
from central.errors import DeviceKeysInvalid

__all__ = ["DeviceKeys", "read_device_keys"]

log = logging.getLogger("central.device_keys")

_Stamp = tuple[int, int, int, int]


def _line_of(text: str, agent: str) -> int | None:
    """The line of `agent`'s entry, for a message a person can act on (TOML gives values, not lines)."""
    pattern = re.compile(rf"""^\s*(?:"{re.escape(agent)}"|'{re.escape(agent)}'|{re.escape(agent)})\s*[=.]""")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    return None


def _where(path: Path, text: str, agent: str) -> str:
    line = _line_of(text, agent)
    return f"{path}, line {line}, entry {agent!r}" if line else f"{path}, entry {agent!r}"


def read_device_keys(path: Path) -> dict[str, PinnedKey]:
    """Agent id -> pinned key, from the file at `path`; DeviceKeysInvalid naming the file and entry."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise DeviceKeysInvalid(f"{path}: cannot read the device keys file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DeviceKeysInvalid(f"{path}: not UTF-8 text") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DeviceKeysInvalid(f"{path}: not TOML: {exc}") from None
    keys: dict[str, PinnedKey] = {}
    owner: dict[bytes, str] = {}
    for agent, value in doc.items():
        if AGENT_RE.fullmatch(agent) is None:
            raise DeviceKeysInvalid(f"{_where(path, text, agent)}: not an agent id (letters, digits, '.', '_', '-')")
        if not isinstance(value, str):
            raise DeviceKeysInvalid(
                f"{_where(path, text, agent)}: the key must be a quoted string (an agent id with a dot is quoted too)"
            )
        try:
            key = PinnedKey.from_text(value)
        except PublicKeyInvalid as exc:
            raise DeviceKeysInvalid(f"{_where(path, text, agent)}: {exc.message}") from None
        if key.raw in owner:
            raise DeviceKeysInvalid(
                f"{_where(path, text, agent)}: the same key as {owner[key.raw]!r}; each robot has its own"
            )
        owner[key.raw] = agent
        keys[agent] = key
    return keys


def _stamp(path: Path) -> _Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class DeviceKeys:
    """The registry: `get(agent)` from whichever thread; `refresh()` and `reload()` read the file again."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp = _stamp(self.path)
        self._keys: Mapping[str, PinnedKey] = MappingProxyType(read_device_keys(self.path))

    def get(self, agent: str) -> PinnedKey | None:
        return self._keys.get(agent)

    def __len__(self) -> int:
        return len(self._keys)

    def refresh(self) -> bool:
        """Read the file again if it changed since it was last read; True when new keys were taken."""
        if _stamp(self.path) == self._stamp:
            return False
        return self.reload()

    def reload(self) -> bool:
        """Read the file now (SIGHUP). A file that does not read keeps the current keys; False then."""
        with self._lock:
            self._stamp = _stamp(self.path)  # a broken file is reported once, not before every batch
            try:
                keys = read_device_keys(self.path)
            except DeviceKeysInvalid as exc:
                log.error("%s; keeping the %d keys read before", exc, len(self._keys))
                return False
            old = self._keys
            self._keys = MappingProxyType(keys)
        added = sorted(keys.keys() - old.keys())
        removed = sorted(old.keys() - keys.keys())
        changed = sorted(a for a in keys.keys() & old.keys() if keys[a].raw != old[a].raw)
        log.info(
            "device keys read from %s: %d robots (added %s, removed %s, changed %s)",
            self.path, len(keys), added or "none", removed or "none", changed or "none",
        )  # fmt: skip
        return True
