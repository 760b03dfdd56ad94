"""Sliding-window login throttle and the audit gate, on a fake clock."""

from __future__ import annotations

from agent.auth.throttle import AuditGate, LoginThrottle, SlidingWindow, ThrottleLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_window_blocks_at_the_limit_and_releases_as_events_age() -> None:
    clock = Clock()
    w = SlidingWindow(3, 60.0, clock=clock)
    for _ in range(2):
        w.hit("k")
        clock.now += 10
    assert w.retry_after("k") == 0
    w.hit("k")  # events at 1000, 1010, 1020
    assert w.retry_after("k") == 40  # the first leaves the window at 1060; now 1020
    clock.now = 1059.5
    assert w.retry_after("k") == 1
    clock.now = 1060.0
    assert w.retry_after("k") == 0


def test_window_memory_is_bounded() -> None:
    w = SlidingWindow(2, 60.0, max_keys=100, clock=Clock())
    for i in range(1000):
        w.hit(f"ip-{i}")
    assert len(w) == 100


def test_login_throttle_per_account_and_per_ip() -> None:
    clock = Clock()
    t = LoginThrottle(ThrottleLimits(account_failures=3, ip_failures=5, window_s=900), clock=clock)
    for _ in range(3):
        assert t.check("Alice", "10.0.0.1") == 0
        t.failed("Alice", "10.0.0.1")
    # Blocked for the account whatever the case or the address.
    assert t.check("alice", "10.0.0.9") > 0
    # Another account from the same address still works until the address limit.
    assert t.check("bob", "10.0.0.1") == 0
    t.failed("bob", "10.0.0.1")
    t.failed("carol", "10.0.0.1")
    assert t.check("dave", "10.0.0.1") > 0
    assert t.check("dave", "10.0.0.2") == 0
    # Success clears the account's failures, not the address's.
    t.succeeded("alice")
    assert t.check("alice", "10.0.0.9") == 0
    assert t.check("alice", "10.0.0.1") > 0
    clock.now += 901
    assert t.check("dave", "10.0.0.1") == 0


def test_audit_gate_counts_what_it_suppresses() -> None:
    clock = Clock()
    gate = AuditGate(per_minute=3, clock=clock)
    assert [gate.admit("1.1.1.1") for _ in range(3)] == [(True, 0)] * 3
    assert gate.admit("1.1.1.1") == (False, 0)
    assert gate.admit("1.1.1.1") == (False, 0)
    assert gate.admit("2.2.2.2") == (True, 0)
    clock.now += 61
    assert gate.admit("1.1.1.1") == (True, 2)
    assert gate.admit("1.1.1.1") == (True, 0)
    assert gate.suppressed_total == 2
