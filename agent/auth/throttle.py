"""Login throttling that slows an attacker without locking the owner out.

The policy, all over one sliding window (`window_s`, 15 min by default):

- **Per address and account**: after `account_failures` failed checks of one account from one
  address, that address may not try that account again until the oldest failure leaves the window.
- **Per address**: after `ip_failures` failures from one address (any accounts) the address waits
  the same way; this stops one address from spraying many accounts.
- **Per account, from anywhere**: beyond `account_failures` failures in the window (from all
  addresses together) each further password check of the account waits a delay that doubles
  (1 s, 2 s, 4 s, ...) up to `account_delay_max_s`. It is a delay, never a lockout: guessing
  from many addresses gets one guess per delay, and the owner, from another address, waits at
  most `account_delay_max_s`.
- An address that logged in to the account successfully within `known_address_s` skips the
  account-wide delay (its own limits above still apply), so the technician's usual terminal is
  not slowed by someone else's guessing.

Why the check is a reservation: the limits count password checks, and a check takes ~75 ms in
a thread. `begin` decides and reserves in one synchronous step (nothing else runs on the event
loop in between), so a burst of 50 parallel attempts gets exactly the allowed number of checks,
not as many as were in flight before the first one failed. A successful check gives its
reservation back; a failed one keeps it as the failure.

Memory is bounded: at most `max_keys` keys per table (the least recently used are forgotten
first). The state is in memory only; a technician clears an account on the carriage with
`oht-agent user unlock NAME`, and a restart of the gateway forgets everything.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Attempt", "AuditGate", "LoginThrottle", "SlidingWindow", "ThrottleLimits"]

V = TypeVar("V")


@dataclass(frozen=True)
class ThrottleLimits:
    account_failures: int = 5
    ip_failures: int = 20
    window_s: float = 900.0
    account_delay_max_s: float = 30.0
    known_address_s: float = 30 * 24 * 3600.0

    def __post_init__(self) -> None:
        if self.account_failures < 1 or self.ip_failures < 1 or self.window_s <= 0:
            raise ValueError("login limits and their window must be positive")
        if not 1 <= self.account_delay_max_s <= self.window_s:
            raise ValueError("account_delay_max_s must be between 1 s and the window")


class _LruTable(Generic[V]):
    """A bounded mapping that forgets the least recently used key first."""

    def __init__(self, max_keys: int) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be positive")
        self._max = max_keys
        self._items: OrderedDict[str, V] = OrderedDict()

    def get(self, key: str) -> V | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: str, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)

    def pop(self, key: str) -> V | None:
        return self._items.pop(key, None)

    def keys(self) -> list[str]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)


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
        self._clock = clock
        self._events: _LruTable[deque[float]] = _LruTable(max_keys)

    def _live(self, key: str, now: float) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        while events and events[0] <= now - self.window_s:
            events.popleft()
        if not events:
            self._events.pop(key)
            return None
        return events

    def count(self, key: str) -> int:
        events = self._live(key, self._clock())
        return 0 if events is None else len(events)

    def retry_after(self, key: str) -> int:
        """Seconds until `key` may try again (0: not blocked)."""
        now = self._clock()
        events = self._live(key, now)
        if events is None or len(events) < self.limit:
            return 0
        # Blocked until enough of the oldest events leave the window.
        release_at = events[len(events) - self.limit] + self.window_s
        return max(1, math.ceil(release_at - now))

    def hit(self, key: str) -> float:
        """Count one event now; returns its time (to `release` it again)."""
        now = self._clock()
        events = self._live(key, now)
        if events is None:
            events = deque(maxlen=self.limit)
            self._events.put(key, events)
        events.append(now)
        return now

    def release(self, key: str, at: float) -> None:
        """Take back the event counted at `at` (a reservation that did not become a failure)."""
        events = self._events.get(key)
        if events is not None and at in events:
            events.remove(at)

    def clear(self, key: str) -> None:
        self._events.pop(key)

    def restore(self, key: str, at: float) -> None:
        """Count again an event taken at `at` (a reservation still running after a `clear`);
        restored in the order they were taken, so the window stays sorted."""
        events = self._live(key, self._clock())
        if events is None:
            events = deque(maxlen=self.limit)
            self._events.put(key, events)
        events.append(at)

    def keys(self) -> list[str]:
        return self._events.keys()

    def __len__(self) -> int:
        return len(self._events)


@dataclass
class _AccountState:
    failures: deque[float]  # times of failures in the window (from any address)
    in_flight: int = 0  # password checks reserved and not finished
    next_check_at: float = 0.0  # the account-wide delay ends here


class Attempt:
    """One reserved password check: end it with exactly one of `failed` or `succeeded`."""

    def __init__(self, throttle: LoginThrottle, account: str, ip: str, pair_at: float, ip_at: float) -> None:
        self._throttle = throttle
        self.account = account
        self.ip = ip
        self.pair_at = pair_at
        self._ip_at = ip_at
        self._done = False

    def failed(self) -> None:
        if not self._done:
            self._done = True
            self._throttle._attempt_failed(self, self.pair_at, self._ip_at)

    def succeeded(self) -> None:
        if not self._done:
            self._done = True
            self._throttle._attempt_succeeded(self, self.pair_at, self._ip_at)

    def abandon(self) -> None:
        """The check never ran (an error before it): count nothing."""
        if not self._done:
            self._done = True
            self._throttle._attempt_abandoned(self, self.pair_at, self._ip_at)


class LoginThrottle:
    """`begin` before a password check; then `Attempt.failed` or `Attempt.succeeded`."""

    def __init__(
        self,
        limits: ThrottleLimits = ThrottleLimits(),
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._pairs = SlidingWindow(limits.account_failures, limits.window_s, max_keys=max_keys, clock=clock)
        self._ips = SlidingWindow(limits.ip_failures, limits.window_s, max_keys=max_keys, clock=clock)
        self._accounts: _LruTable[_AccountState] = _LruTable(max_keys)
        self._known: _LruTable[float] = _LruTable(max_keys)  # "account\x00ip" -> last success
        # The reservations of checks still running, per pair: a success or an unlock clears the
        # pair's failures, but the checks in flight still count against the limit until they end.
        self._open: dict[str, list[float]] = {}

    @staticmethod
    def account_key(user_name: object) -> str:
        return str(user_name).strip().casefold()[:128]

    @staticmethod
    def _pair(account: str, ip: str) -> str:
        return f"{account}\x00{ip}"

    def _account(self, account: str, now: float) -> _AccountState | None:
        state = self._accounts.get(account)
        if state is None:
            return None
        while state.failures and state.failures[0] <= now - self.limits.window_s:
            state.failures.popleft()
        if not state.failures and not state.in_flight:
            self._accounts.pop(account)
            return None
        return state

    def _known_address(self, account: str, ip: str, now: float) -> bool:
        seen = self._known.get(self._pair(account, ip))
        return seen is not None and now - seen < self.limits.known_address_s

    def _account_wait(self, account: str, ip: str, now: float) -> int:
        """Seconds the account-wide delay still holds for a check from `ip` (0: free)."""
        state = self._account(account, now)
        if state is None:
            return 0
        if self._known_address(account, ip, now):
            # An address that logged in recently is spared the failures others caused, but not
            # the bound on checks running at once for the account.
            return 1 if state.in_flight >= self.limits.account_failures else 0
        if len(state.failures) + state.in_flight < self.limits.account_failures:
            return 0
        if state.in_flight:
            return 1  # a check is running; the delay that follows it is not known yet
        return max(0, math.ceil(state.next_check_at - now))

    def begin(self, user_name: object, ip: str) -> Attempt | int:
        """Reserve a password check (an `Attempt`), or the seconds to wait before one is allowed."""
        now = self._clock()
        account = self.account_key(user_name)
        pair = self._pair(account, ip)
        wait = max(self._pairs.retry_after(pair), self._ips.retry_after(ip), self._account_wait(account, ip, now))
        if wait:
            return wait
        pair_at, ip_at = self._pairs.hit(pair), self._ips.hit(ip)
        self._open.setdefault(pair, []).append(pair_at)
        state = self._account(account, now)
        if state is None:
            state = _AccountState(deque(maxlen=max(64, 4 * self.limits.account_failures)))
            self._accounts.put(account, state)
        state.in_flight += 1
        return Attempt(self, account, ip, pair_at, ip_at)

    def _close(self, attempt: Attempt) -> None:
        pair = self._pair(attempt.account, attempt.ip)
        running = self._open.get(pair)
        if running is not None:
            if attempt.pair_at in running:
                running.remove(attempt.pair_at)
            if not running:
                del self._open[pair]

    def _clear_pair(self, pair: str) -> None:
        """Forget the pair's failures; the reservations of checks still running stay counted."""
        self._pairs.clear(pair)
        for at in self._open.get(pair, ()):
            self._pairs.restore(pair, at)

    def _attempt_failed(self, attempt: Attempt, pair_at: float, ip_at: float) -> None:
        # The reservation becomes the failure, dated when the check failed (not when it began),
        # so that it stays in the windows for their whole length after the failure.
        self._close(attempt)
        pair = self._pair(attempt.account, attempt.ip)
        self._pairs.release(pair, pair_at)
        self._pairs.hit(pair)
        self._ips.release(attempt.ip, ip_at)
        self._ips.hit(attempt.ip)
        now = self._clock()
        state = self._accounts.get(attempt.account)
        if state is None:  # forgotten under memory pressure: start again
            state = _AccountState(deque(maxlen=max(64, 4 * self.limits.account_failures)))
            self._accounts.put(attempt.account, state)
        state.in_flight = max(0, state.in_flight - 1)
        state.failures.append(now)
        beyond = len(state.failures) - self.limits.account_failures
        if beyond >= 0:
            delay = min(self.limits.account_delay_max_s, 2.0 ** min(beyond, 30))
            state.next_check_at = max(state.next_check_at, now + delay)

    def _attempt_succeeded(self, attempt: Attempt, pair_at: float, ip_at: float) -> None:
        """A correct password: the account's and the pair's failures are cleared, the address's
        reservation is given back (its earlier failures stay), and the address becomes known."""
        self._close(attempt)
        self._clear_pair(self._pair(attempt.account, attempt.ip))
        self._ips.release(attempt.ip, ip_at)
        state = self._accounts.get(attempt.account)
        if state is not None:
            state.failures.clear()
            state.next_check_at = 0.0
            state.in_flight = max(0, state.in_flight - 1)
            if not state.in_flight:
                self._accounts.pop(attempt.account)
        self._known.put(self._pair(attempt.account, attempt.ip), self._clock())

    def _attempt_abandoned(self, attempt: Attempt, pair_at: float, ip_at: float) -> None:
        self._close(attempt)
        self._pairs.release(self._pair(attempt.account, attempt.ip), pair_at)
        self._ips.release(attempt.ip, ip_at)
        state = self._accounts.get(attempt.account)
        if state is not None:
            state.in_flight = max(0, state.in_flight - 1)

    def clear_account(self, user_name: object) -> None:
        """Forget every failure of the account, from every address (a password set, an unlock)."""
        account = self.account_key(user_name)
        state = self._accounts.get(account)
        if state is not None:
            state.failures.clear()
            state.next_check_at = 0.0
            if not state.in_flight:
                self._accounts.pop(account)
        prefix = self._pair(account, "")
        for key in [k for k in self._pairs.keys() if k.startswith(prefix)]:
            self._clear_pair(key)

    def account_failures(self, user_name: object) -> int:
        state = self._account(self.account_key(user_name), self._clock())
        return 0 if state is None else len(state.failures)


class AuditGate:
    """Bounds the audit rows an unauthenticated address can cause; suppressed rows are counted.

    Why: every refused request is audited, and each row is kept (append-only) and shipped
    upstream. Without a bound, anyone on the network could fill the robot's disk with refusals.
    Up to `per_minute` anonymous rows per address are written as they come; beyond that they are
    counted, and the count is written (as one `audit.suppressed` row) with the next admitted row,
    so the loss is itself on record.
    """

    def __init__(
        self, per_minute: int = 60, *, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
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
