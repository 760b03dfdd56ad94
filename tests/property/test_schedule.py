"""Properties of the poll schedule: grid timing, no bursts after overruns, one locked plan per tick."""

from __future__ import annotations

import math
from itertools import pairwise

from hypothesis import example, given, settings
from hypothesis import strategies as st

from drivers.modbus.frames import read_request
from drivers.modbus.schedule import PollPlan, PollSchedule

intervals = st.floats(0.01, 2.0)
phases = st.floats(0.0, 1.0)


def plan(key: str, interval: float, phase: float = 0.0, slave: int = 3, period: float = 0.0) -> PollPlan:
    return PollPlan(
        key=key, request=read_request(slave, 0, 4), interval_s=interval, phase_s=phase, service_period_s=period
    )


def on_grid(t: float, origin: float, interval: float, phase: float) -> bool:
    k = (t - origin - phase) / interval
    return abs(k - round(k)) < 1e-6


@given(intervals, phases, st.lists(st.floats(0.0, 5.0), min_size=1, max_size=30))
def test_completion_never_bursts_and_stays_on_grid(interval: float, phase: float, delays: list[float]) -> None:
    schedule = PollSchedule(start=100.0)
    p = plan("a", interval, phase)
    now = 100.0
    schedule.add(p, now)
    for delay in delays:
        now = max(now, p.next_due) + delay  # the poll runs late by `delay`, then completes
        schedule.started(p, now)
        schedule.completed(p, now)
        assert p.next_due > now  # never due again at once: missed grid points are not replayed
        assert p.next_due - now <= interval + 1e-9  # and not later than the next grid point
        assert on_grid(p.next_due, 100.0, interval, phase)


@given(intervals, st.integers(0, 20), st.floats(0.0, 0.99))
def test_overruns_count_whole_missed_periods(interval: float, missed: int, fraction: float) -> None:
    schedule = PollSchedule(start=0.0)
    p = plan("a", interval)
    schedule.add(p, 0.0)
    start = p.next_due + (missed + fraction) * interval
    schedule.started(p, start)
    assert p.overruns == missed
    assert schedule.overruns == missed


@settings(max_examples=200)
@given(
    st.floats(0.05, 0.2),  # service period
    st.floats(0.0, 10.0),  # tick estimate
    st.lists(st.floats(0.01, 0.5), min_size=2, max_size=5),  # intervals of locked plans on one slave
    st.floats(10.0, 20.0),
)
def test_locked_plans_of_one_slave_take_distinct_ticks(
    period: float, tick: float, ivs: list[float], now: float
) -> None:
    schedule = PollSchedule(start=0.0)
    plans = [plan(f"p{i}", iv, period=period) for i, iv in enumerate(ivs)]
    for p in plans:
        schedule.add(p, now)
    schedule._ticks[3] = tick  # as learned from a reply
    schedule.realign(now)
    ticks = []
    for p in plans:
        n = (p.next_due + p.lead_s - tick) / period
        assert abs(n - round(n)) < 1e-6, "a locked poll must be sent lead_s before a service tick"
        assert p.next_due + p.lead_s >= now
        ticks.append(round(n))
    assert len(set(ticks)) == len(ticks), "two locked polls of one slave share a tick"


@given(intervals, intervals, st.floats(0.0, 10.0))
def test_set_interval_applies_to_prefix_only(a: float, b: float, now: float) -> None:
    schedule = PollSchedule(start=0.0)
    fast, other = plan("travel:fast:0000", a), plan("power:fast:0000", a)
    schedule.add(fast, now)
    schedule.add(other, now)
    schedule.set_interval("travel:fast:", b, now)
    assert fast.interval_s == b and other.interval_s == a
    assert fast.next_due - now <= max(a, b) + 1e-9 and not math.isnan(fast.next_due)


@settings(max_examples=200)
@given(
    st.floats(0.05, 0.2),  # service period
    st.floats(0.0, 10.0),  # the slave's true tick phase
    st.lists(st.floats(0.0, 0.49), min_size=1, max_size=20),  # how late each reply was read, in periods
    st.integers(0, 50),  # first tick index
)
def test_tick_estimate_stays_on_the_slave_grid_under_loop_lag(
    period: float, tick: float, lags: list[float], k0: int
) -> None:
    """Replies are read late, never early: the estimate lies on or after a true tick, and no later
    than the largest lag among the recent sightings."""
    schedule = PollSchedule(start=0.0)
    seen = []
    for i, lag in enumerate(lags):
        at = tick + (k0 + 3 * i) * period + lag * period
        seen.append(lag)
        schedule.observe_tick(3, at, period, now=at)
    estimate = schedule.tick_estimate(3)
    assert estimate is not None
    offset = (estimate - tick) / period
    offset -= math.floor(offset + 1e-9)  # position within the period, in periods
    window = seen[-8:]
    assert -1e-6 <= offset <= max(window) + 1e-6


@settings(max_examples=200)
@given(
    st.floats(0.05, 0.2),  # service period
    st.floats(0.0, 10.0),  # tick estimate
    st.lists(st.floats(0.01, 0.5), min_size=1, max_size=4),  # intervals of the other locked plans
    st.integers(-2, 3),  # the served tick, relative to the plan's target
    st.floats(0.0, 0.99),  # where `now` falls in the period before the served tick's follower
)
def test_a_locked_poll_never_goes_to_a_tick_already_served(
    period: float, tick: float, ivs: list[float], served_rel: int, now_frac: float
) -> None:
    schedule = PollSchedule(start=0.0)
    main = plan("main", 0.05, period=period)
    others = [plan(f"o{i}", iv, period=period) for i, iv in enumerate(ivs)]
    for p in [main, *others]:
        schedule.add(p, 20.0)
    schedule.observe_tick(3, tick, period, now=20.0)  # first sighting: every locked plan is placed
    target = round((main.next_due + main.lead_s - tick) / period)
    served = tick + (target + served_rel) * period
    schedule.observe_tick(3, served + 0.001, period, now=served + 0.002)
    now = max(main.next_due, served + 0.002) + now_frac * 0.5 * period
    moved = schedule.move_off_served_tick(main, now)
    new_tick = round((main.next_due + main.lead_s - tick) / period)
    if served_rel < 0:
        assert not moved and new_tick == target  # its tick is still ahead: it keeps it
    else:
        assert moved
        assert tick + new_tick * period > served + 1e-9, "moved onto a tick that has already served a frame"
        assert main.next_due >= now - 1e-9
        claimed = {round((o.next_due + o.lead_s - tick) / period) for o in others}
        assert new_tick not in claimed


@settings(max_examples=200)
@given(
    st.floats(0.05, 0.2),  # service period
    st.floats(0.0, 10.0),  # tick estimate
    st.lists(st.tuples(st.floats(0.5, 30.0), st.floats(0.0, 1.0)), min_size=1, max_size=8),  # background plans
    st.floats(10.0, 20.0),
)
def test_background_reads_leave_a_tick_between_them(
    period: float, tick: float, background: list[tuple[float, float]], now: float
) -> None:
    """A slave's secondary blocks never take two ticks in a row: its main poll keeps every other one."""
    schedule = PollSchedule(start=0.0)
    main = plan("main", 0.05, period=period)
    schedule.add(main, now)
    plans = []
    for i, (iv, phase) in enumerate(background):
        p = PollPlan(
            key=f"b{i}",
            request=read_request(3, 0x40, 2),
            interval_s=iv,
            phase_s=phase,
            service_period_s=period,
            background=True,
        )
        schedule.add(p, now)
        plans.append(p)
    schedule.observe_tick(3, tick, period, now=now)
    ticks = sorted(round((p.next_due + p.lead_s - tick) / period) for p in plans)
    assert all(b - a >= 2 for a, b in pairwise(ticks)), ticks
    main_tick = round((main.next_due + main.lead_s - tick) / period)
    assert main_tick not in ticks


@settings(max_examples=200)
@given(
    st.floats(0.05, 0.2),  # service period
    st.floats(0.0, 10.0),  # the slave's tick phase
    st.integers(10, 50),  # index of the tick that serves the request
    st.floats(0.0, 0.95),  # how late the reply was read (a stalled loop), in periods
    st.floats(0.01, 0.9),  # how long before that tick the request reached the slave, in periods
)
@example(0.05, 0.0, 10, 0.5, 0.5)  # exactly half a period late: float error once split the sightings
def test_a_reply_read_late_marks_the_tick_that_served_it(
    period: float, tick: float, k: int, read_late: float, ahead: float
) -> None:
    """A stalled loop reads a reply late; the tick after it must stay free for the next poll."""
    schedule = PollSchedule(start=0.0)
    for i in range(8):  # prompt replies: the estimate is the slave's tick
        at = tick + i * period
        schedule.observe_tick(3, at, period, now=at, sent_at=at - 0.004)
    served = tick + k * period
    schedule.observe_tick(
        3, served + read_late * period, period, now=served + read_late * period, sent_at=served - ahead * period
    )
    assert schedule.served_tick(3) is not None
    assert abs(schedule.served_tick(3) - served) < 1e-6
    main = plan("main", 0.05, period=period)
    schedule.add(main, served + read_late * period)
    main.next_due = served + period - main.lead_s  # due for the next tick
    assert not schedule.move_off_served_tick(main, served + read_late * period), "the next tick is free"


# ---------------------------------------------------------------- probes of set-aside slaves
from drivers.modbus.probes import ProbeCandidate, pick_probe  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(
    waits=st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=6),
    served=st.lists(st.booleans(), min_size=6, max_size=6),
    probe_s=st.floats(min_value=0.001, max_value=0.16),
    backoff=st.floats(min_value=0.2, max_value=1.0),  # the bus master's shortest back-off is 0.2 s
)
def test_no_set_aside_slave_starves_on_a_busy_bus(
    waits: list[float], served: list[bool], probe_s: float, backoff: float
) -> None:
    """Probes are picked on a bus that is never idle: each due slave is probed within one probe
    round of all set-aside slaves after it fell due, the tick-served one never after a plain one."""
    candidates = {a: ProbeCandidate(a, w, served[a]) for a, w in enumerate(waits)}
    probed_at: dict[int, list[float]] = {a: [] for a in candidates}
    now = 0.0
    while now < 6.0:
        address, _ = pick_probe(candidates.values(), now)
        if address is None:
            now += 0.005  # a routine poll: the bus is busy, never an idle gap
            continue
        due = candidates[address].next_probe_at
        # a tick-served slave that fell due no later than the one picked goes first
        picked = candidates[address]
        others = [c for c in candidates.values() if c.next_probe_at <= now and c.address != address]
        assert not (
            any(c.tick_served and c.next_probe_at <= picked.next_probe_at for c in others) and not picked.tick_served
        )
        probed_at[address].append(now)
        assert now - due <= len(candidates) * probe_s + 0.005 + 1e-9, (address, now, due)
        now += probe_s  # the probe failed: the slave is still silent
        candidates[address] = ProbeCandidate(address, now + backoff, candidates[address].tick_served)
    for address, times in probed_at.items():
        assert times, f"slave {address} was never probed"
