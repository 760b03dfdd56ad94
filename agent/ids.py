"""Identifiers: UUIDv7 (RFC 9562), unique by construction and sortable by creation.

Why UUIDv7 and not the clock or a counter alone: the clock can stand still or step back (NTP,
an RTC without a battery after a power cut) and a counter restarts with the process. A UUIDv7
carries 62 random bits from the kernel next to the millisecond timestamp, so two processes (or
the same process before and after a restart) never produce the same id, while ids created by one
process still sort in creation order, which keeps SQLite's unique indexes append-mostly.

Layout (128 bits, most significant first):

    48 unix_ts_ms | 4 version (0b0111) | 12 rand_a | 2 variant (0b10) | 62 rand_b

`rand_a` is used as a counter ("method 1" of RFC 9562 section 6.2): it starts at a random value
in its lower half for each new millisecond and is incremented for every further id in the same
millisecond. When it would overflow, or when the clock goes backwards, the generator keeps the
last timestamp and borrows the next millisecond instead, so ids stay strictly increasing in this
process whatever the wall clock does.

Random bytes are taken from `os.urandom` in 4 KiB blocks: every `os.urandom` call releases the
GIL, and in a process where the SQLite worker threads hold the GIL most of the time, each release
can cost tens of microseconds on the event loop. The block is discarded in a forked child, so
parent and child never share random bits.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable

__all__ = ["UUIDv7Generator", "new_id", "timestamp_ms"]

_COUNTER_MAX = 0xFFF  # 12 bits of rand_a
_RAND_B_MASK = (1 << 62) - 1
_VERSION = 0x7
_VARIANT = 0b10
_POOL_BYTES = 4096


class UUIDv7Generator:
    """A thread-safe UUIDv7 source with a per-process monotonic counter.

    `clock_ns` and `random_bytes` are injectable so that the edge cases (a clock that stands
    still for more than 4096 ids, a clock that steps back) can be exercised deterministically;
    the module-level `new_id` uses the real clock and `os.urandom`.
    """

    def __init__(
        self,
        clock_ns: Callable[[], int] = time.time_ns,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._clock_ns = clock_ns
        self._random_bytes = random_bytes
        self._lock = threading.Lock()
        self._last_ms = -1
        self._counter = 0
        self._pool = b""
        self._pool_pos = 0

    def _reset_after_fork(self) -> None:
        # A lock held by another thread at fork time would stay locked forever in the child,
        # and the child must not reuse the parent's unused random bytes.
        self._lock = threading.Lock()
        self._pool = b""
        self._pool_pos = 0

    def _random(self, n: int) -> int:
        """n random bytes as an integer; call with the lock held."""
        if self._pool_pos + n > len(self._pool):
            self._pool = self._random_bytes(_POOL_BYTES)
            self._pool_pos = 0
        start = self._pool_pos
        self._pool_pos += n
        return int.from_bytes(self._pool[start : start + n], "big")

    def _next_fields(self) -> tuple[int, int, int]:
        """(timestamp_ms, counter, rand_b) for the next id; (ms, counter) strictly increase."""
        now_ms = self._clock_ns() // 1_000_000
        with self._lock:
            if now_ms > self._last_ms:
                self._last_ms = now_ms
                # Random start in the lower half: hides the id rate and leaves room to count.
                self._counter = self._random(2) & 0x7FF
            elif self._counter < _COUNTER_MAX:
                self._counter += 1
            else:
                # Counter exhausted (or clock went back): borrow the next millisecond.
                self._last_ms += 1
                self._counter = 0
            return self._last_ms, self._counter, self._random(8) & _RAND_B_MASK

    def new_int(self) -> int:
        """The next id as a 128-bit integer."""
        ms, counter, rand_b = self._next_fields()
        return ((ms & 0xFFFF_FFFF_FFFF) << 80) | (_VERSION << 76) | (counter << 64) | (_VARIANT << 62) | rand_b

    def new_id(self) -> str:
        """The next id in its canonical 36-character form (lower-case hex with hyphens)."""
        h = f"{self.new_int():032x}"  # what str(uuid.UUID(int=...)) gives, without the object
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_default = UUIDv7Generator()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_default._reset_after_fork)


def new_id() -> str:
    """A new UUIDv7 string; unique across processes, increasing within this process."""
    return _default.new_id()


def timestamp_ms(id_: str) -> int:
    """The unix millisecond timestamp embedded in a UUIDv7 string (useful in logs and tests)."""
    return uuid.UUID(id_).int >> 80
