"""File modes of the data directory: nothing the agent writes is readable by other accounts.

Why here and not only in the units: the database holds password hashes, session digests and the
audit log, and the data directory also holds the audit-chain key and the TLS key. The systemd
units set `UMask=0007` (the core and the gateway share the database through the group
`oht-agent`); `oht-agent run` started from a shell inherits the shell's umask, typically 0022,
which made the database 0644. So the process sets its own umask at start, and files made by an
earlier release are tightened when the core opens the data directory.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = [
    "DATABASE_MODE",
    "KEY_MODE",
    "conform",
    "create_empty",
    "current_umask",
    "fsync_dir",
    "restrict_umask",
    "write_atomic",
]

log = logging.getLogger("oht.store")

DATABASE_MODE = 0o660  # the database and its -wal and -shm: the core and the gateway write them
KEY_MODE = 0o640  # the audit key: the core writes it once, the gateway reads it
_OTHERS = 0o007
_GROUP_AND_OTHERS = 0o077


def restrict_umask() -> int:
    """Set the process umask so that others never get access; returns the new umask.

    The group keeps access only when the umask given to us already grants the group write
    permission (the units' `UMask=0007`: a deliberate shared group); any other umask (a shell's
    0022) becomes 0077: owner only.
    """
    current = os.umask(_GROUP_AND_OTHERS)
    wanted = current | _OTHERS if current & 0o020 == 0 else current | _GROUP_AND_OTHERS
    os.umask(wanted)
    return wanted


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def conform(path: Path, mode: int) -> bool:
    """Give an existing file `mode` as the process umask allows it (`mode & ~umask`).

    Why exact and not only tighter: SQLite creates its files 0644 whatever the umask says, so under
    the units' group umask the database came out 0640 and the gateway could not write it; and a
    file left 0644 by an earlier release must lose the bits for others. Returns whether the mode
    changed. A missing file is left alone; one owned by another account is logged.
    """
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return False
    wanted = mode & ~current_umask() & 0o777
    if current == wanted:
        return False
    try:
        os.chmod(path, wanted)
    except PermissionError:
        log.warning("%s is mode %o, should be %o, and cannot be changed by this account", path, current, wanted)
        return False
    if current & ~wanted:
        log.warning("%s was mode %o; now %o (others must not read the agent's data)", path, current, wanted)
    return True


def create_empty(path: Path, mode: int) -> None:
    """Create `path` empty with `mode & ~umask` unless it exists (so SQLite, which copies the
    database file's mode to its -wal and -shm files, makes them with the same)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        return
    os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename durable: fsync the directory that holds the entry."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write a secret or a small state file whole or not at all: a temp file made with `mode`
    (never wider, whatever existed before), fsynced, renamed over `path`, the rename fsynced."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
