"""Immutable module snapshots: each value with the time it was read, and a quality derived from age.

Nobody downstream reads the bus; they read snapshots. A snapshot never claims more than the bus
knows: a value carries the monotonic time of the reply that brought it, and its quality is
computed from that age at the moment of asking, so a silent module turns stale by itself.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

Value = int | float


class Quality(enum.StrEnum):
    FRESH = "fresh"
    STALE = "stale"
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class Reading:
    value: Value
    at: float  # time.monotonic() of the reply
    max_age_s: float  # older than this, the value is stale (set from the poll that brings it)

    @property
    def fresh_until(self) -> float:
        """The last moment at which this value is still fresh: the one freshness rule."""
        return self.at + self.max_age_s


@dataclass(frozen=True)
class ModuleSnapshot:
    """What is known about one bound module at one moment."""

    role: str
    address: int
    profile: str
    readings: Mapping[str, Reading]
    online: bool
    last_error: str | None  # stable error code of the last failed poll, None after a success
    published_at: float
    # names -> when the first of them turns stale (-inf: one is missing). The snapshot never
    # changes, so this is worked out once per snapshot and group, not on every status request.
    _fresh_until: dict[tuple[str, ...], float] = field(default_factory=dict, compare=False, repr=False)

    def quality(self, name: str, now: float | None = None) -> Quality:
        reading = self.readings.get(name)
        if reading is None:
            return Quality.MISSING
        now = time.monotonic() if now is None else now
        return Quality.FRESH if now <= reading.fresh_until else Quality.STALE

    def value(self, name: str) -> Value | None:
        reading = self.readings.get(name)
        return None if reading is None else reading.value

    def age(self, name: str, now: float | None = None) -> float | None:
        reading = self.readings.get(name)
        if reading is None:
            return None
        return (time.monotonic() if now is None else now) - reading.at

    def overall_quality(self, names: tuple[str, ...], now: float | None = None) -> Quality:
        """The worst quality among `names` (MISSING < STALE < FRESH)."""
        until = self._fresh_until.get(names)
        if until is None:
            readings = [self.readings.get(name) for name in names]
            until = (
                -math.inf
                if any(r is None for r in readings)
                else min((r.fresh_until for r in readings if r), default=math.inf)
            )
            self._fresh_until[names] = until
        if until == -math.inf:
            return Quality.MISSING
        now = time.monotonic() if now is None else now
        return Quality.FRESH if now <= until else Quality.STALE

    def with_readings(
        self, updates: Mapping[str, Reading], *, online: bool, error: str | None, now: float
    ) -> ModuleSnapshot:
        merged = dict(self.readings)
        merged.update(updates)
        return ModuleSnapshot(
            role=self.role,
            address=self.address,
            profile=self.profile,
            readings=MappingProxyType(merged),
            online=online,
            last_error=error,
            published_at=now,
        )


Listener = Callable[[ModuleSnapshot], None]


@dataclass
class SnapshotBoard:
    """The latest snapshot per role, plus listeners called synchronously on every publication.

    Listeners run inside the bus task, so they must be quick and must not block (the safety
    supervisor evaluates there to keep the reaction path short).
    """

    _latest: dict[str, ModuleSnapshot] = field(default_factory=dict)
    _listeners: list[Listener] = field(default_factory=list)

    def publish(self, snapshot: ModuleSnapshot) -> None:
        self._latest[snapshot.role] = snapshot
        for listener in list(self._listeners):
            try:
                listener(snapshot)
            except Exception:  # a faulty listener must not stop the others or the bus
                import logging

                logging.getLogger("oht.snapshots").exception("snapshot listener failed")

    def latest(self, role: str) -> ModuleSnapshot | None:
        return self._latest.get(role)

    def all(self) -> Mapping[str, ModuleSnapshot]:
        return MappingProxyType(dict(self._latest))

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)


def empty_snapshot(role: str, address: int, profile: str) -> ModuleSnapshot:
    return ModuleSnapshot(
        role=role,
        address=address,
        profile=profile,
        readings=MappingProxyType({}),
        online=False,
        last_error=None,
        published_at=time.monotonic(),
    )
