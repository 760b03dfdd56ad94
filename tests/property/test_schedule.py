"""Properties of the poll schedule: grid timing, no bursts after overruns, one locked plan per tick."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.frames import read_request
from drivers.modbus.schedule import PollPlan, PollSchedule

intervals = st.floats(0.01, 2.0)
phases = st.floats(0.0, 1.0)


def plan(key: str, interval: float, phase: float = 0.0, slave: int = 3, period: float = 0.0) -> PollPlan:
    return PollPlan(key=key, request=read_request(slave, 0, 4), interval_s=interval, phase_s=phase, service_period_s=period)


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
        schedule.completed(p, now, reply_at=now, reply_wire_s=0.0)
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
def test_locked_plans_of_one_slave_take_distinct_ticks(period: float, tick: float, ivs: list[float], now: float) -> None:
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
