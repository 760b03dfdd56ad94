"""Sliding-window login throttle and the audit gate, on a fake clock."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.auth.throttle import Attempt, AuditGate, LoginThrottle, SlidingWindow, ThrottleLimits
from tests.conftest import FakeClock


def test_window_blocks_at_the_limit_and_releases_as_events_age() -> None:
    clock = FakeClock(1000.0)
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
    w = SlidingWindow(2, 60.0, max_keys=100, clock=FakeClock(1000.0))
    for i in range(1000):
        w.hit(f"ip-{i}")
    assert len(w) == 100


def begin_and(t: LoginThrottle, name: str, ip: str, outcome: str) -> int:
    """One login attempt: 0 when a check was allowed (and ended with `outcome`), else the wait."""
    attempt = t.begin(name, ip)
    if isinstance(attempt, int):
        return attempt
    getattr(attempt, outcome)()
    return 0


def test_per_address_and_account_then_per_address() -> None:
    clock = FakeClock(1000.0)
    t = LoginThrottle(
        ThrottleLimits(account_failures=3, ip_failures=5, window_s=900, account_delay_max_s=30), clock=clock
    )
    for _ in range(3):
        assert begin_and(t, "Alice", "10.0.0.1", "failed") == 0
    # That address waits for the window for that account, whatever the name's case.
    assert 800 < begin_and(t, "alice", "10.0.0.1", "failed") <= 900
    # From elsewhere the account only waits the short, growing delay.
    assert begin_and(t, "alice", "10.0.0.9", "failed") == 1
    # Another account from the first address still works until the address limit.
    assert begin_and(t, "bob", "10.0.0.1", "failed") == 0
    assert begin_and(t, "carol", "10.0.0.1", "failed") == 0
    assert begin_and(t, "dave", "10.0.0.1", "failed") > 0
    assert begin_and(t, "dave", "10.0.0.2", "failed") == 0
    clock.now += 901
    assert begin_and(t, "dave", "10.0.0.1", "failed") == 0


def test_the_account_delay_doubles_up_to_its_cap_and_success_clears_it() -> None:
    clock = FakeClock(1000.0)
    t = LoginThrottle(
        ThrottleLimits(account_failures=2, ip_failures=1000, window_s=900, account_delay_max_s=10), clock=clock
    )
    waits = []
    for i in range(8):  # a new address each time: only the account-wide delay applies
        wait = begin_and(t, "alice", f"10.0.1.{i}", "failed")
        waits.append(wait)
        if wait:
            clock.now += wait
            assert begin_and(t, "alice", f"10.0.2.{i}", "failed") == 0
    assert waits == [0, 0, 1, 2, 4, 8, 10, 10]
    assert begin_and(t, "alice", "10.0.3.1", "succeeded") == 10
    clock.now += 10
    assert begin_and(t, "alice", "10.0.3.1", "succeeded") == 0
    assert t.account_failures("alice") == 0
    assert begin_and(t, "alice", "10.0.3.2", "failed") == 0


def test_a_success_gives_back_its_address_reservation() -> None:
    t = LoginThrottle(ThrottleLimits(account_failures=3, ip_failures=3, window_s=900), clock=FakeClock(1000.0))
    for i in range(10):
        assert begin_and(t, f"user{i}", "10.0.0.1", "succeeded") == 0
    for i in range(10):
        assert begin_and(t, f"user{i}", "10.0.0.2", "abandon") == 0


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),  # account
            st.integers(0, 3),  # address
            st.sampled_from(["begin", "fail", "succeed"]),
            st.floats(0, 120),  # seconds before this step
        ),
        max_size=120,
    )
)
# Found by this test: a success cleared the reservations of the checks still running for its pair
# and account, so three more could start beside them ...
@example([(0, 0, "begin", 0.0)] * 3 + [(0, 0, "succeed", 0.0)] + [(0, 0, "begin", 0.0)] * 2)
# ... a failure was dated when its check began, so it left the window early ...
@example(
    [(0, 0, "begin", t) for t in (0.0, 27.0, 47.0, 56.0, 99.0)]
    + [(0, 0, "fail", t) for t in (75.0, 99.0, 99.0)]
    + [(0, 0, "begin", 98.0)]
)
# ... and an address that had just logged in was spared the bound on checks running at once.
@example(
    [(0, 0, "begin", 0.0)] * 3
    + [(0, 0, "fail", 0.0), (0, 0, "succeed", 0.0), (0, 0, "begin", 0.0), (0, 1, "begin", 0.0), (0, 0, "begin", 0.0)]
)
def test_checks_never_exceed_the_limits(steps: list[tuple[int, int, str, float]]) -> None:
    """Whatever the interleaving: per (account, address) and per address, the checks that
    ended in failure within any window never exceed the limit; checks run at once (begun,
    not ended) never exceed it either."""
    limits = ThrottleLimits(account_failures=3, ip_failures=5, window_s=600, account_delay_max_s=30)
    clock = FakeClock(1000.0)
    t = LoginThrottle(limits, clock=clock)
    open_attempts: list[tuple[int, int, Attempt]] = []
    failures: list[tuple[float, int, int]] = []
    for account, ip, action, pause in steps:
        clock.now += pause
        if action == "begin":
            attempt = t.begin(f"a{account}", f"ip{ip}")
            if not isinstance(attempt, int):
                open_attempts.append((account, ip, attempt))
        elif open_attempts:
            account, ip, attempt = open_attempts.pop(0)
            if action == "fail":
                attempt.failed()
                failures.append((clock.now, account, ip))
            else:
                attempt.succeeded()
                failures = [f for f in failures if f[1] != account]  # a success clears the account
        recent = [f for f in failures if f[0] > clock.now - limits.window_s]
        running = [(a, i) for a, i, _ in open_attempts]
        for i in range(4):
            per_ip = sum(1 for f in recent if f[2] == i) + sum(1 for _, j in running if j == i)
            assert per_ip <= limits.ip_failures
            for a in range(3):
                per_pair = sum(1 for f in recent if f[1:] == (a, i)) + running.count((a, i))
                assert per_pair <= limits.account_failures
        for a in range(3):
            assert sum(1 for x, _ in running if x == a) <= limits.account_failures


def test_audit_gate_counts_what_it_suppresses() -> None:
    clock = FakeClock(1000.0)
    gate = AuditGate(per_minute=3, clock=clock)
    assert [gate.admit("1.1.1.1") for _ in range(3)] == [(True, 0)] * 3
    assert gate.admit("1.1.1.1") == (False, 0)
    assert gate.admit("1.1.1.1") == (False, 0)
    assert gate.admit("2.2.2.2") == (True, 0)
    clock.now += 61
    assert gate.admit("1.1.1.1") == (True, 2)
    assert gate.admit("1.1.1.1") == (True, 0)
    assert gate.suppressed_total == 2
