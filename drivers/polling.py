"""Periodic polling of bound modules: read plans from profiles, decoded into snapshots.

Each bound module gets one poll plan per merged read block of its "fast" group (at the role's
interval), of its "config" group (at bind, then every configuration interval) and of its "slow"
and "identity" groups (at bind, then every identity interval). On a slave that serves one frame
per service tick every plan is phase-locked and the fast read gets every tick; the config group
rides on it (the fast read is widened to cover both, once per configuration interval) where one
read can hold both, and the rare reads take a tick now and then. Results are decoded through the
profile and published on the snapshot board. docs/polling.md explains the rates and freshness rules.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from drivers.modbus.errors import BusError
from drivers.modbus.frames import Request, read_request
from drivers.modbus.master import BusMaster
from drivers.modbus.merge import plan_poll, plan_register_reads
from drivers.modbus.schedule import PollPlan, Priority
from drivers.profiles.model import Profile
from drivers.snapshots import ModuleSnapshot, Quality, Reading, SnapshotBoard, empty_snapshot


@dataclass(frozen=True)
class Binding:
    """A role bound to a slave address and the profile chosen for the firmware found there."""

    role: str
    address: int
    profile: Profile


# Aligning polls to a slave's service tick pays off when the tick is long (SAFE-FW: 100 ms); for
# a 10 ms tick the average wait (5 ms) is smaller than the lead a locked poll needs to be safe.
PHASE_LOCK_MIN_S = 0.05
# A value read on every tick of such a slave is stale once two ticks passed without a new one.
LOCKED_STALE_TICKS = 2


class ModulePoller:
    """Installs the poll plans of one bound module and turns their replies into snapshots."""

    def __init__(
        self,
        master: BusMaster,
        board: SnapshotBoard,
        binding: Binding,
        *,
        interval_s: float,
        slow_interval_s: float,
        config_interval_s: float | None = None,
        phase_s: float = 0.0,
        priority: Priority = Priority.TELEMETRY,
        stale_factor: float = 3.0,
    ) -> None:
        self.master = master
        self.board = board
        self.binding = binding
        self.interval_s = interval_s
        self.slow_interval_s = slow_interval_s
        self.config_interval_s = slow_interval_s if config_interval_s is None else config_interval_s
        self.phase_s = phase_s
        self.priority = priority
        profile = binding.profile
        self.service_period_s = profile.service_period_ms / 1000.0
        self.stale_factor = stale_factor
        self._snapshot: ModuleSnapshot = empty_snapshot(binding.role, binding.address, profile.name)
        self.keys: list[str] = []
        self.bound_at = time.monotonic()
        self.interval_since = self.bound_at  # when the current fast interval took effect
        # The config group riding on the fast read: (narrow, wide) requests, and when the next
        # wide one is due. None when the config group has plans of its own (or is empty).
        self._ride: tuple[Request, Request] | None = None
        self._wide_due = float("-inf")
        self._fast_key: str | None = None

    @property
    def fast_prefix(self) -> str:
        return f"{self.binding.role}:fast:"

    @property
    def snapshot(self) -> ModuleSnapshot:
        return self._snapshot

    def install(self) -> None:
        now = time.monotonic()
        self.bound_at = now
        profile = self.binding.profile
        self.master.configure_slave(
            self.binding.address,
            turnaround_s=profile.turnaround_ms / 1000.0,
            service_period_s=self.service_period_s,
        )
        locked = self.service_period_s >= PHASE_LOCK_MIN_S
        fast_blocks = plan_poll(profile, "fast")
        self._ride = self._riding_reads(fast_blocks) if locked else None
        groups = ("fast", "slow", "identity") if self._ride is not None else ("fast", "config", "slow", "identity")
        plans = [
            (group, start, count)
            for group in groups
            for start, count in (fast_blocks if group == "fast" else plan_poll(profile, group))
        ]
        rare = [p for p in plans if p[0] != "fast"]
        for index, (group, start, count) in enumerate(plans):
            key = f"{self.binding.role}:{group}:{start:04x}"
            fast = group == "fast"
            priority = self.priority if fast else Priority.TELEMETRY
            interval = (
                self.interval_s if fast else self.config_interval_s if group == "config" else self.slow_interval_s
            )
            phase = self.phase_s + 0.003 * index
            if locked and not fast:
                # A slave that serves one frame per service tick: the fast group (the safety
                # module's status, distances and enables, one read) keeps every tick it can get;
                # the rare blocks are phase-locked background reads spread over the slow cycle,
                # never in two ticks in a row, so they cost the fast read one tick in many.
                phase = self.phase_s + self.slow_interval_s * (rare.index((group, start, count)) + 1) / (len(rare) + 1)
            request = read_request(self.binding.address, start, count)
            handler = self._result_handler(start, key)
            if fast and self._ride is not None:
                self._fast_key = key
                request = self._ride[1]  # the first read at bind brings the configuration as well
                handler = self._riding_handler(key)
            plan = PollPlan(
                key=key,
                request=request,
                interval_s=interval,
                priority=priority,
                phase_s=phase,
                service_period_s=self.service_period_s if locked else 0.0,
                background=not fast,
                on_result=handler,
                on_error=self._on_error,
            )
            # The configuration and identity are read once right at bind: until then the role
            # does not count as ready (see fast_quality), then every slow interval.
            self.master.schedule.add(plan, now, first_due=None if fast else now)
            self.keys.append(key)
        self.board.publish(self._snapshot)

    def uninstall(self) -> None:
        for key in self.keys:
            self.master.schedule.remove(key)
        self.keys.clear()

    def _riding_reads(self, fast_blocks: list[tuple[int, int]]) -> tuple[Request, Request] | None:
        """The fast read, and the same read widened over the config group, if one read holds both."""
        profile = self.binding.profile
        config = profile.poll_registers("config")
        if len(fast_blocks) != 1 or not config:
            return None
        both = plan_register_reads(
            [*profile.poll_registers("fast"), *config],
            max_registers=profile.max_read_registers,
            max_gap=profile.max_read_registers,
            readable=profile.is_readable,
        )
        if len(both) != 1:
            return None
        address = self.binding.address
        return read_request(address, *fast_blocks[0]), read_request(address, *both[0])

    @property
    def config_rides(self) -> bool:
        """The config group comes with the fast read (every configuration interval) instead of on its own."""
        return self._ride is not None

    def refresh_config(self) -> None:
        """Widen the next fast read over the config group (after a write to it, a difference found).

        Only where the config group rides on the fast read; reads of its own keep their interval.
        """
        if self._ride is None or self._fast_key is None:
            return
        self._wide_due = float("-inf")
        plan = self.master.schedule.get(self._fast_key)
        if plan is not None:
            plan.request = self._ride[1]

    def set_interval(self, interval_s: float) -> None:
        """Change the fast interval (the travel motor polls faster while moving)."""
        if interval_s != self.interval_s:
            self.interval_since = time.monotonic()
        self.interval_s = interval_s
        self.master.schedule.set_interval(self.fast_prefix, interval_s, time.monotonic())

    def fast_quality(self, now: float) -> Quality:
        """The worst quality among the fast group's values: what readiness and status go by.

        MISSING until the config and slow groups (the module's configuration) have been read once:
        a role whose configuration the agent has not seen is not ready, whatever its fast values say.
        """
        profile = self.binding.profile
        seen_once = profile.poll_names("slow") + profile.poll_names("config")
        if self._snapshot.overall_quality(seen_once, math.inf) is Quality.MISSING:
            return Quality.MISSING
        return self._snapshot.overall_quality(profile.poll_names("fast"), now)

    def max_age_s(self, interval_s: float) -> float:
        """How long a value stays fresh: a few missed polls, never sooner than one retry could take.

        On a slave served once per tick the fast read gets every tick, so a value is fresh for two
        ticks (one missed read) plus one transaction: the reply's share of the turnaround budget
        beyond the wait for the tick. Anything older is stale, and the supervisor acts on that.
        """
        effective = max(interval_s, self.service_period_s)
        turnaround = self.binding.profile.turnaround_ms / 1000.0
        if self.service_period_s >= PHASE_LOCK_MIN_S and interval_s <= self.service_period_s:
            transaction = max(turnaround - self.service_period_s, 0.02)
            return LOCKED_STALE_TICKS * effective + transaction
        return self.stale_factor * effective + turnaround

    def _result_handler(self, start: int, key: str):  # type: ignore[no-untyped-def]
        def on_result(words: tuple[int, ...], at: float) -> None:
            self._publish(start, words, at, key)

        return on_result

    def _publish(
        self,
        start: int,
        words: tuple[int, ...],
        at: float,
        key: str,
        slower: frozenset[str] = frozenset(),
        slower_age_s: float = 0.0,
    ) -> None:
        """Decode one reply into the snapshot, fresh for the plan's maximum age (`slower` names:
        for `slower_age_s`, values that came with a rarer read), and publish it."""
        plan = self.master.schedule.get(key)
        max_age = self.max_age_s(plan.interval_s if plan is not None else self.slow_interval_s)
        values = self.binding.profile.decode_block(start, words)
        updates = {
            name: Reading(value, at, slower_age_s if name in slower else max_age) for name, value in values.items()
        }
        self._snapshot = self._snapshot.with_readings(updates, online=True, error=None, now=at)
        self.board.publish(self._snapshot)

    def _riding_handler(self, key: str):  # type: ignore[no-untyped-def]
        """Results of a fast read that carries the config group every configuration interval.

        The reply's length tells which of the two reads it answers. Values that came with the
        widened read stay fresh until two configuration intervals have passed without another.
        """
        assert self._ride is not None
        narrow, wide = self._ride
        profile = self.binding.profile
        config_names = frozenset(profile.poll_names("config"))
        config_age = 2 * self.config_interval_s + profile.turnaround_ms / 1000.0

        def on_result(words: tuple[int, ...], at: float) -> None:
            plan = self.master.schedule.get(key)
            wide_reply = len(words) == wide.count
            if wide_reply:
                self._wide_due = at + self.config_interval_s
            if plan is not None:  # the next read: widened once the interval has passed
                plan.request = wide if at >= self._wide_due else narrow
            if wide_reply:
                self._publish(wide.address, words, at, key, config_names, config_age)
            else:
                self._publish(narrow.address, words, at, key)

        return on_result

    def _on_error(self, exc: Exception, at: float) -> None:
        code = exc.code if isinstance(exc, BusError) else type(exc).__name__
        self._snapshot = self._snapshot.with_readings(
            {}, online=self.master.is_online(self.binding.address), error=code, now=at
        )
        self.board.publish(self._snapshot)
