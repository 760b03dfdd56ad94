"""Periodic polling of bound modules: read plans from profiles, decoded into snapshots.

Each bound module gets one poll plan per merged read block of its "fast" group (at the role's
interval) and of its "slow" and "identity" groups (every identity interval). On a slave that
serves one frame per service tick every plan is phase-locked. Results are decoded through the
profile and published on the snapshot board.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from drivers.modbus.errors import BusError
from drivers.modbus.frames import read_request
from drivers.modbus.master import BusMaster
from drivers.modbus.merge import plan_poll
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
        phase_s: float = 0.0,
        priority: Priority = Priority.TELEMETRY,
        stale_factor: float = 3.0,
    ) -> None:
        self.master = master
        self.board = board
        self.binding = binding
        self.interval_s = interval_s
        self.slow_interval_s = slow_interval_s
        self.phase_s = phase_s
        self.priority = priority
        profile = binding.profile
        self.service_period_s = profile.service_period_ms / 1000.0
        self.stale_factor = stale_factor
        self._snapshot: ModuleSnapshot = empty_snapshot(binding.role, binding.address, profile.name)
        self.keys: list[str] = []
        self.bound_at = time.monotonic()
        self.interval_since = self.bound_at  # when the current fast interval took effect

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
        plans = [
            (group, start, count)
            for group in ("fast", "slow", "identity")
            for start, count in plan_poll(profile, group)
        ]
        secondaries = len(plans) - 1
        for index, (group, start, count) in enumerate(plans):
            key = f"{self.binding.role}:{group}:{start:04x}"
            priority = self.priority if group == "fast" else Priority.TELEMETRY
            interval = self.interval_s if group == "fast" else self.slow_interval_s
            phase = self.phase_s + 0.003 * index
            if locked and index > 0:
                # A slave that serves one frame per service tick: every block is phase-locked, or
                # a read sent at an arbitrary moment would hold the bus for up to a whole tick and
                # take the tick of the next locked poll. The first block (status) keeps most ticks;
                # the others are background reads, spread over a cycle of ten ticks, each taking
                # at most one in ten and never two ticks in a row between them.
                cycle = max(10 * self.interval_s, 10 * self.service_period_s)
                if group == "fast":
                    interval = cycle
                phase = self.phase_s + cycle * index / (secondaries + 1)
            plan = PollPlan(
                key=key,
                request=read_request(self.binding.address, start, count),
                interval_s=interval,
                priority=priority,
                phase_s=phase,
                service_period_s=self.service_period_s if locked else 0.0,
                background=index > 0,
                on_result=self._result_handler(start, key),
                on_error=self._on_error,
            )
            self.master.schedule.add(plan, now)
            self.keys.append(key)
        self.board.publish(self._snapshot)

    def uninstall(self) -> None:
        for key in self.keys:
            self.master.schedule.remove(key)
        self.keys.clear()

    def set_interval(self, interval_s: float) -> None:
        """Change the fast interval (the travel motor polls faster while moving)."""
        if interval_s != self.interval_s:
            self.interval_since = time.monotonic()
        self.interval_s = interval_s
        self.master.schedule.set_interval(self.fast_prefix, interval_s, time.monotonic())

    def fast_quality(self, now: float) -> Quality:
        """The worst quality among the fast group's values: what readiness and status go by."""
        return self._snapshot.overall_quality(self.binding.profile.poll_names("fast"), now)

    def max_age_s(self, interval_s: float) -> float:
        """Stale after a few missed polls, and never sooner than one retry could take."""
        effective = max(interval_s, self.service_period_s)
        return self.stale_factor * effective + self.binding.profile.turnaround_ms / 1000.0

    def _result_handler(self, start: int, key: str):  # type: ignore[no-untyped-def]
        profile = self.binding.profile
        schedule = self.master.schedule

        def on_result(words: tuple[int, ...], at: float) -> None:
            plan = schedule.get(key)
            max_age = self.max_age_s(plan.interval_s if plan is not None else self.slow_interval_s)
            values = profile.decode_block(start, words)
            updates = {name: Reading(value, at, max_age) for name, value in values.items()}
            self._snapshot = self._snapshot.with_readings(updates, online=True, error=None, now=at)
            self.board.publish(self._snapshot)

        return on_result

    def _on_error(self, exc: Exception, at: float) -> None:
        code = exc.code if isinstance(exc, BusError) else type(exc).__name__
        self._snapshot = self._snapshot.with_readings({}, online=self.master.is_online(self.binding.address), error=code, now=at)
        self.board.publish(self._snapshot)
