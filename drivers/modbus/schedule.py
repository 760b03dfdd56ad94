"""Periodic polls on one bus: grid timing with phase offsets, no bursts, overruns counted.

Each `PollPlan` is due on a fixed grid (`phase + k * interval`). When a poll runs late, the next
due time is the next grid point after now: the missed points are counted as overruns and never
replayed as a burst. Plans for slaves whose firmware services frames only every N ms (the safety
module: 100 ms) are phase-locked: the request is timed to reach the slave just before its service
tick, so a poll holds the bus for a few milliseconds instead of up to a whole period.

The tick is learned from every reply of such a slave. Each tick serves one frame: locked plans of
one slave claim distinct ticks, and a plan whose tick was taken by other traffic (a command, a
discovery read) moves to the next free tick instead of going out late and holding the bus.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field

from drivers.modbus.frames import Request


class Priority(enum.IntEnum):
    """Lower value goes first.

    STOP is the urgent stop (E-stop, fault trip): it waits only for the transaction already on
    the wire, and abandons that one if it is an overdue read of another slave. HALT is the
    routine stop (a stop command, a pause, the end of a command): first in the queue, but like
    every other job it lets a phase-locked poll take its slot and abandons nothing. A flood of
    routine stops must not cost the safety module its polls.
    """

    STOP = 0
    HALT = 1
    SAFETY = 2
    COMMAND = 3
    TELEMETRY = 4
    PROBE = 5


STOPS = frozenset({Priority.STOP, Priority.HALT})  # never refused for load or a set-aside slave

TICK_WINDOW = 8  # recent tick sightings per slave that the estimate is taken from
_TIE_NUDGE = 1e-9  # periods: far below any real jitter, far above float error


ResultCallback = Callable[[tuple[int, ...], float], None]
ErrorCallback = Callable[[Exception, float], None]


@dataclass(eq=False)
class PollPlan:
    key: str
    request: Request
    interval_s: float
    priority: Priority = Priority.TELEMETRY
    phase_s: float = 0.0
    service_period_s: float = 0.0
    lead_s: float = 0.006  # how far ahead of the slave's service tick a phase-locked poll is sent
    # A locked background read (a slave's secondary blocks) never takes the tick next to another
    # background read's, so the slave's main poll keeps at least every other tick.
    background: bool = False
    on_result: ResultCallback | None = None
    on_error: ErrorCallback | None = None
    enabled: bool = True
    # state
    next_due: float = 0.0
    overruns: int = 0
    runs: int = 0
    last_started: float | None = None
    periods: list[float] = field(default_factory=list)  # recent start-to-start periods, for health checks

    @property
    def slave(self) -> int:
        return self.request.slave

    @property
    def phase_locked(self) -> bool:
        return self.service_period_s > 0


class PollSchedule:
    """The set of periodic polls; the bus master asks it what is due."""

    def __init__(self, start: float = 0.0) -> None:
        self._plans: dict[str, PollPlan] = {}
        self._origin = start
        self._ticks: dict[int, float] = {}  # slave address -> a recent estimate of its service tick
        self._sightings: dict[int, deque[float]] = {}  # slave address -> recent ticks as observed
        self._served: dict[int, float] = {}  # slave address -> the last tick known to have served a frame
        self.overruns = 0

    def __iter__(self) -> Iterator[PollPlan]:
        return iter(self._plans.values())

    def __len__(self) -> int:
        return len(self._plans)

    def add(self, plan: PollPlan, now: float, *, first_due: float | None = None) -> None:
        """Install `plan` on its grid; with `first_due`, its first run is then (on a free tick), not
        at the next grid point, which for a 30 s configuration read may be half a minute away."""
        if plan.interval_s <= 0:
            raise ValueError(f"poll {plan.key}: interval must be positive")
        if first_due is not None:
            plan.next_due = self._align_to_tick(plan, first_due)
        else:
            plan.next_due = self._grid_after(plan, now - 1e-9)
        self._plans[plan.key] = plan

    def remove(self, key: str) -> None:
        self._plans.pop(key, None)

    def get(self, key: str) -> PollPlan | None:
        return self._plans.get(key)

    def set_interval(self, prefix: str, interval_s: float, now: float) -> None:
        """Change the interval of every plan whose key starts with `prefix` (e.g. travel moving/idle)."""
        for plan in self._plans.values():
            if plan.key.startswith(prefix) and plan.interval_s != interval_s:
                plan.interval_s = interval_s
                plan.next_due = min(plan.next_due, self._grid_after(plan, now))

    def _grid_after(self, plan: PollPlan, t: float, unplaced: Collection[PollPlan] = ()) -> float:
        base = self._origin + plan.phase_s
        k = math.floor((t - base) / plan.interval_s) + 1
        due = base + k * plan.interval_s
        if due <= t:  # floating-point rounding put us on t itself
            due = base + (k + 1) * plan.interval_s
        return self._align_to_tick(plan, due, unplaced)

    def tick_estimate(self, slave: int) -> float | None:
        return self._ticks.get(slave)

    def served_tick(self, slave: int) -> float | None:
        """The last service tick known to have served a frame of `slave`."""
        return self._served.get(slave)

    def _align_to_tick(self, plan: PollPlan, due: float, unplaced: Collection[PollPlan] = ()) -> float:
        """Move a phase-locked plan to just before the first free service tick at or after `due`.

        The firmware handles one frame per tick, so two locked plans of one slave never share a
        tick: a plan takes the next tick no other locked plan of that slave has claimed. Plans in
        `unplaced` are being moved too: their old due times claim nothing.
        """
        tick = self._ticks.get(plan.slave)
        if not plan.phase_locked or tick is None:
            return due
        period = plan.service_period_s
        n = math.ceil((due + plan.lead_s - tick) / period)
        claimed: set[int] = set()
        for other in self._plans.values():
            if other is plan or not other.enabled or not other.phase_locked or other.slave != plan.slave:
                continue
            if other in unplaced:
                continue
            m = round((other.next_due + other.lead_s - tick) / period)
            claimed.add(m)
            if plan.background and other.background:
                claimed.update((m - 1, m + 1))
        while n in claimed:
            n += 1
        return tick + n * period - plan.lead_s

    def due(self, now: float, eligible: Callable[[PollPlan], bool]) -> PollPlan | None:
        """The most urgent plan that is due at `now`: phase-locked first, then priority, then earliest due.

        A locked plan is due only in the moment before its slave's tick and holds the bus for a
        few milliseconds; other traffic was held back to leave it that moment, so it is due at the
        same time and must not take it.
        """
        best: PollPlan | None = None
        best_key: tuple[bool, int, float] | None = None
        for plan in self._plans.values():
            if not plan.enabled or plan.next_due > now or not eligible(plan):
                continue
            key = (not plan.phase_locked, plan.priority, plan.next_due)
            if best_key is None or key < best_key:
                best, best_key = plan, key
        return best

    def next_due_time(self, eligible: Callable[[PollPlan], bool]) -> float | None:
        times = [p.next_due for p in self._plans.values() if p.enabled and eligible(p)]
        return min(times) if times else None

    def next_locked_due(self, eligible: Callable[[PollPlan], bool]) -> float | None:
        """Earliest due time among phase-locked plans: other traffic must not overlap it."""
        times = [p.next_due for p in self._plans.values() if p.enabled and p.phase_locked and eligible(p)]
        return min(times) if times else None

    def started(self, plan: PollPlan, now: float) -> None:
        """Record a poll going out; one that starts a whole period after its due time is an overrun."""
        period = max(plan.interval_s, plan.service_period_s)
        late = now - plan.next_due
        if late >= period * (1 - 1e-9):
            missed = math.floor(late / period + 1e-9)
            plan.overruns += missed
            self.overruns += missed
        if plan.last_started is not None:
            plan.periods.append(now - plan.last_started)
            if len(plan.periods) > 512:
                del plan.periods[:256]
        plan.last_started = now
        plan.runs += 1

    def observe_tick(self, slave: int, seen_at: float, period: float, now: float, sent_at: float | None = None) -> None:
        """Learn a slave's service tick from one of its replies (any reply: poll, job or probe).

        `seen_at` is when the reply was read, less its time on the wire. A reply is only ever seen
        late (the event loop may be busy when it arrives), never early, so the recent sightings are
        brought onto one period grid and one of the earliest is taken: the lowest quarter, which a
        busy loop must delay most sightings to move, and which one early outlier (the slave's own
        jitter) does not decide alone. A reply read more than half a period late cannot be told
        from an early one.

        The tick that served the request is the first one after it was sent (`sent_at`, when
        the request reached the slave), not the one nearest the moment the reply was read: a
        stalled loop reads a reply late, and that must not mark the next tick as used. Only a
        reply that came more than a period after that tick (the slave still had an older frame
        to serve) is placed by its own time.

        The first estimate for a slave realigns its locked plans: until then they were timed blind.
        """
        seen = self._sightings.setdefault(slave, deque(maxlen=TICK_WINDOW))
        seen.append(seen_at)
        # Half a period rounds the same way for every sighting (not half-to-even), so an exact tie
        # cannot split the sightings across two grid points. The nudge keeps it so in floating
        # point: sightings on one grid, read against a reply exactly half a period late, came out
        # as 10.999999 for some and 11.0 for others, and the late reply was taken for the tick.
        on_grid = sorted(t + math.floor((seen_at - t) / period + 0.5 + _TIE_NUDGE) * period for t in seen)
        first = slave not in self._ticks
        tick = on_grid[len(on_grid) // 4]
        self._ticks[slave] = tick
        served = tick + round((seen_at - tick) / period) * period
        if sent_at is not None:
            after_send = tick + math.ceil((sent_at - tick) / period - 1e-9) * period
            if seen_at - after_send < period:
                served = after_send
        self._served[slave] = served
        if first:
            self.realign(now, slave=slave)

    def move_off_served_tick(self, plan: PollPlan, now: float) -> bool:
        """Move a locked plan whose tick has already served another frame to the next free tick.

        A job or a held-back read that reached the slave first took the tick: sent now, the poll
        would wait a whole service period on the bus and push the next locked poll past its own
        tick, and so on down the line. Returns True if the plan moved.
        """
        tick = self._ticks.get(plan.slave)
        served = self._served.get(plan.slave)
        if not plan.phase_locked or tick is None or served is None:
            return False
        period = plan.service_period_s
        if plan.next_due + plan.lead_s > served + period / 2:
            return False
        plan.next_due = self._align_to_tick(plan, max(now, served + period / 2 - plan.lead_s))
        return True

    def completed(self, plan: PollPlan, now: float) -> None:
        """Advance `plan` to its next grid point after `now`: missed points are skipped, never replayed."""
        plan.next_due = self._grid_after(plan, max(now, plan.next_due))

    def realign(self, now: float, slave: int | None = None) -> None:
        """Every plan (of `slave`, if given) is due at its next grid point, with no catch-up burst.

        Used after an outage, and once a slave's service tick is first known. The plans are placed
        in order of priority, and their old due times claim no tick, so the most urgent plan gets
        the first free tick.
        """
        plans = [p for p in self._plans.values() if slave is None or p.slave == slave]
        unplaced = set(plans)
        for plan in sorted(plans, key=lambda p: (p.priority, p.phase_s, p.key)):
            unplaced.discard(plan)
            plan.next_due = self._grid_after(plan, now, unplaced)
