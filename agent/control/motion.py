"""Bounds on motion: how long a motion command may run, and whether the carriage really moves.

A position-bounded move ends when the position reaches its target; if the position never gets
there (a jam, a slipping wheel, a frozen encoder, a stale reading) nothing else would end it. So
every motion command also gets a hard time bound worked out from its distance and speed, and a
progress watch: while speed is commanded the position must change by `stall_min_cm` within the
stall window, or the command ends with TRAVEL_STALLED. The window is widened for slow speeds so a
slow move that is moving as expected is never taken for a stall.

Motion commands that carry no deadline get `command_ttl_s`: a move queued behind a long command
or submitted during start-up expires instead of running minutes later.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class MotionLimits(BaseModel):
    """The [motion] configuration section."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # Carriage speed at 100 % COMMAND_SPEED, in cm/s: what the time bounds and the stall window assume.
    full_speed_cm_s: Annotated[float, Field(gt=0, le=1000)] = 50.0
    # A distance-bounded motion may take this many times its nominal time, plus the allowance for ramps.
    bound_margin: Annotated[float, Field(ge=1.1, le=10)] = 2.0
    bound_allowance_ms: Annotated[int, Field(ge=0, le=30000)] = 3000
    # No motion command may run longer than this, whatever its distance and speed.
    max_motion_s: Annotated[float, Field(ge=1, le=600)] = 120.0
    # While speed is commanded the position must change by stall_min_cm within the stall window.
    stall_window_ms: Annotated[int, Field(ge=200, le=30000)] = 1500
    stall_min_cm: Annotated[int, Field(ge=1, le=50)] = 1
    # Ramp-up time after a speed write during which no progress is expected yet.
    ramp_ms: Annotated[int, Field(ge=0, le=10000)] = 1000
    # Motion commands without not_after expire this long after submission; a client deadline is capped.
    command_ttl_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    max_command_ttl_s: Annotated[float, Field(ge=1, le=86400)] = 600.0

    def nominal_s(self, distance_cm: float, speed_pct: float) -> float:
        return distance_cm / (self.full_speed_cm_s * speed_pct / 100.0)

    def time_bound_s(
        self, *, distance_cm: float | None, duration_ms: int | None, speed_pct: float, slowest_factor: float
    ) -> float:
        """Seconds the command may run at most. The slowest speed factor the supervisor may apply
        (the warning slow-down) is assumed, so a legitimate slowed move is not cut short."""
        bounds = [self.max_motion_s]
        if distance_cm is not None:
            nominal = self.nominal_s(distance_cm, max(1.0, speed_pct * slowest_factor))
            bounds.append(nominal * self.bound_margin + self.bound_allowance_ms / 1000.0)
        if duration_ms is not None:
            bounds.append(duration_ms / 1000.0 + self.bound_allowance_ms / 1000.0)
        return min(bounds)

    def stall_window_s(self, speed_pct: float) -> float:
        """The window within which `stall_min_cm` of travel is expected at `speed_pct` (at least the
        configured window; longer where the speed makes that distance take longer)."""
        needed = 3 * self.stall_min_cm / (self.full_speed_cm_s * max(speed_pct, 1.0) / 100.0)
        return max(self.stall_window_ms / 1000.0, needed)


class ProgressWatch:
    """Decides whether a commanded motion is progressing, from position readings over time.

    `commanded(at, speed_pct)` is called when a nonzero speed is written (and with 0 when speed
    is withdrawn); `observe(at, position)` with every fresh position reading, or None when the
    reading is not fresh. `stalled(now)` is True once speed has been commanded past the ramp and
    the position has not moved by `stall_min_cm` for a whole window, or no fresh position has
    been seen for that long: a stale position is no evidence of motion.
    """

    def __init__(self, limits: MotionLimits) -> None:
        self.limits = limits
        self._speed_pct = 0.0
        self._since: float | None = None  # when the current commanded speed was written
        self._anchor: tuple[float, float] | None = None  # (time, position) progress is measured from
        self.moved_at: float | None = None  # the last time progress was seen

    def commanded(self, at: float, speed_pct: float) -> None:
        self._speed_pct = speed_pct
        self._since = at if speed_pct > 0 else None
        self._anchor = None

    def observe(self, at: float, position: float | None) -> bool:
        """Feed a reading; True if it shows progress since the anchor."""
        if position is None or self._since is None:
            return False
        if self._anchor is None:
            self._anchor = (at, position)
            return False
        if abs(position - self._anchor[1]) >= self.limits.stall_min_cm:
            self._anchor = (at, position)
            self.moved_at = at
            return True
        return False

    def stalled(self, now: float) -> bool:
        if self._since is None:
            return False
        started = self._since + self.limits.ramp_ms / 1000.0
        if now < started:
            return False
        reference = started if self.moved_at is None else max(started, self.moved_at)
        return now - reference > self.limits.stall_window_s(self._speed_pct)
