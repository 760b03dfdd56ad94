"""Exclusive ownership of a data directory (`data_dir/agent.lock`, flock).

Why: two daemons writing the same database, or a restore replacing the file under a running
daemon, would each be a silent data loss. The `Database` takes this lock for its whole life and
`restore` takes it for the replacement, so each refuses while the other holds it. flock locks
belong to the open file description and vanish when the process dies (even by kill -9), so a
crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from agent.store.errors import DataDirBusy, StoreError

__all__ = ["LOCK_NAME", "DataDirLock"]

LOCK_NAME = "agent.lock"


class DataDirLock:
    """A non-blocking exclusive lock on a data directory; usable as a context manager."""

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> DataDirLock:
        """Take the lock now or raise DataDirBusy (never waits)."""
        if self._fd is not None:
            return self
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Read-only is enough for flock and works whoever created the file.
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(
                f"cannot open lock file {self.path}: {exc.strerror}",
                code="DATA_DIR_UNUSABLE",
                hint="Check that the data directory exists and is accessible to the agent user.",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirBusy(f"data directory {self.data_dir} is in use by another process") from None
        except OSError as exc:
            os.close(fd)
            raise StoreError(
                f"cannot lock {self.path}: {exc.strerror}",
                code="DATA_DIR_UNUSABLE",
                hint="The file system does not support flock? Use a local file system.",
            ) from exc
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
