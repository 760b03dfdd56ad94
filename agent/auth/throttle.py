"""Login throttling: failures counted per account and per source address over sliding windows.

Why both: a per-account limit stops guessing one password from many addresses; a per-address
limit stops one address from spraying many accounts. Unknown accounts are counted like known
ones, so the throttle itself does not reveal which names exist.

Memory is bounded: each key keeps at most `limit` timestamps, and at most `max_keys` keys are
tracked (the least recently failed are forgotten first). The state is in memory only: a restart
forgets it, which costs an attacker a restart of the robot per window.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["AuditGate", "LoginThrottle", "SlidingWindow", "ThrottleLimits"]


@dataclass(frozen=True)
class ThrottleLimits:
    account_failures: int = 5
    ip_failures: int = 20
    window_s: float = 900.0


class SlidingWindow:
    """Counts events per key over the last `window_s` seconds; `limit` events block the key."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window_s <= 0 or max_keys < 1:
            raise ValueError("limit, window_s and max_keys must be positive")
        self.limit = limit
        self.window_s = window_s
        self._max_keys = max_keys
        self._clock = clock
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def _live(self, key: str, now: float) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        while events and events[0] <= now - self.window_s:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    def retry_after(self, key: str) -> int:
        """Seconds until `key` may try again (0: not blocked)."""
        now = self._clock()
        events = self._live(key, now)
        if events is None or len(events) < self.limit:
            return 0
        # Blocked until enough of the oldest events leave the window.
        release_at = events[len(events) - self.limit] + self.window_s
        return max(1, math.ceil(release_at - now))

    def hit(self, key: str) -> None:
        now = self._clock()
        events = self._live(key, now)
        if events is None:
            events = deque(maxlen=self.limit)
            self._events[key] = events
            while len(self._events) > self._max_keys:
                self._events.popitem(last=False)
        else:
            self._events.move_to_end(key)
        events.append(now)

    def clear(self, key: str) -> None:
        self._events.pop(key, None)

    def __len__(self) -> int:
        return len(self._events)


class LoginThrottle:
    """`check` before verifying a password, `failed` after a failure, `succeeded` after success."""

    def __init__(self, limits: ThrottleLimits = ThrottleLimits(), *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._accounts = SlidingWindow(limits.account_failures, limits.window_s, clock=clock)
        self._ips = SlidingWindow(limits.ip_failures, limits.window_s, clock=clock)

    @staticmethod
    def account_key(user_name: str) -> str:
        return user_name.strip().casefold()[:128]

    def check(self, user_name: str, ip: str) -> int:
        """Seconds to wait before this attempt is allowed (0: go ahead)."""
        return max(self._accounts.retry_after(self.account_key(user_name)), self._ips.retry_after(ip))

    def failed(self, user_name: str, ip: str) -> None:
        self._accounts.hit(self.account_key(user_name))
        self._ips.hit(ip)

    def succeeded(self, user_name: str) -> None:
        """A correct password clears the account's failures (not the address's)."""
        self._accounts.clear(self.account_key(user_name))


class AuditGate:
    """Bounds the audit rows an unauthenticated address can cause; suppressed rows are counted.

    Why: every refused request is audited, and each row is kept (append-only) and shipped
    upstream. Without a bound, anyone on the network could fill the robot's disk with refusals.
    Up to `per_minute` anonymous rows per address are written as they come; beyond that they are
    counted, and the count is written (as one `audit.suppressed` row) with the next admitted row,
    so the loss is itself on record.
    """

    def __init__(self, per_minute: int = 60, *, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = SlidingWindow(per_minute, 60.0, max_keys=max_keys, clock=clock)
        self._suppressed: OrderedDict[str, int] = OrderedDict()
        self._max_keys = max_keys
        self.suppressed_total = 0

    def admit(self, ip: str) -> tuple[bool, int]:
        """(write this row?, rows suppressed for this address since its last admitted row)."""
        if self._window.retry_after(ip):
            self._suppressed[ip] = self._suppressed.get(ip, 0) + 1
            self._suppressed.move_to_end(ip)
            while len(self._suppressed) > self._max_keys:
                self._suppressed.popitem(last=False)
            self.suppressed_total += 1
            return False, 0
        self._window.hit(ip)
        return True, self._suppressed.pop(ip, 0)
