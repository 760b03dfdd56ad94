"""The hardwired E-stop input read by the agent itself (GPIO), one or two channels.

Any channel active means pressed: one good channel is enough to stop. Two channels that disagree
for longer than the discrepancy window mean broken wiring or a welded contact: that is a fault of
its own, and it holds the E-stop as active until the channels agree again (a discrepancy is never
taken as "released"). Pure logic, fed with channel values and times, so it is tested exhaustively
without hardware.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EstopInputState:
    pressed: bool
    discrepancy: bool
    channels: tuple[bool, ...]


class EstopChannels:
    def __init__(self, channels: int, discrepancy_s: float) -> None:
        if channels not in (1, 2):
            raise ValueError("an E-stop input has one or two channels")
        self.channels = channels
        self.discrepancy_s = discrepancy_s
        self._values: tuple[bool, ...] = (True,) * channels  # unknown counts as pressed until read
        self._disagree_since: float | None = None
        self._latched_discrepancy = False
        self.seen = False

    def feed(self, values: tuple[bool, ...], now: float) -> EstopInputState:
        """`values`: True = that channel reports the E-stop active (already active-low corrected)."""
        if len(values) != self.channels:
            raise ValueError(f"expected {self.channels} channel values, got {len(values)}")
        self._values = tuple(bool(v) for v in values)
        self.seen = True
        if self.channels == 2 and self._values[0] != self._values[1]:
            if self._disagree_since is None:
                self._disagree_since = now
        else:
            self._disagree_since = None
            self._latched_discrepancy = False
        return self.state(now)

    def state(self, now: float) -> EstopInputState:
        if self._disagree_since is not None and now - self._disagree_since >= self.discrepancy_s:
            self._latched_discrepancy = True
        pressed = any(self._values) or self._latched_discrepancy
        return EstopInputState(pressed, self._latched_discrepancy, self._values)
