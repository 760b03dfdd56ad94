"""Digital inputs through libgpiod (the `gpiod` Python bindings, v2), read without threads.

Used for the hardwired E-stop: lines are requested as inputs with edge detection on both edges
and kernel debouncing; the request's file descriptor is watched by the event loop, so an edge
reaches the callback within one loop iteration. Values are reported already corrected for
active-low wiring (True = active). Install with the `gpio` extra.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from oht_errors import CodedError, ErrorKind

if TYPE_CHECKING:  # gpiod is optional (the `gpio` extra); imported only where the lines are opened
    import gpiod

log = logging.getLogger("oht.gpio")


class GpioUnavailable(CodedError):
    code = "GPIO_UNAVAILABLE"
    kind = ErrorKind.UNAVAILABLE
    hint = (
        "check the gpiochip path and line offsets, that the service user may open it,"
        " and that the `gpiod` package is installed"
    )


class GpioInputs:
    def __init__(
        self,
        chip: str,
        lines: Sequence[int],
        *,
        active_low: bool,
        debounce_ms: int,
        on_change: Callable[[tuple[bool, ...], float], None],
    ) -> None:
        self.chip = chip
        self.lines = tuple(lines)
        self.active_low = active_low
        self.debounce_ms = debounce_ms
        self.on_change = on_change
        self._request: gpiod.LineRequest | None = None

    def open(self) -> tuple[bool, ...]:
        """Request the lines and return their current values."""
        try:
            import gpiod
            from gpiod.line import Bias, Direction, Edge
        except ImportError as exc:
            raise GpioUnavailable("the gpiod package is not installed") from exc
        settings = gpiod.LineSettings(
            direction=Direction.INPUT,
            edge_detection=Edge.BOTH,
            bias=Bias.PULL_UP,
            active_low=self.active_low,
            debounce_period=dt.timedelta(milliseconds=self.debounce_ms),
        )
        try:
            self._request = gpiod.request_lines(self.chip, consumer="oht-agent-estop", config={self.lines: settings})
        except (OSError, ValueError) as exc:
            raise GpioUnavailable(f"cannot request lines {list(self.lines)} on {self.chip}: {exc}") from exc
        asyncio.get_running_loop().add_reader(self._request.fd, self._on_edges)
        return self.read()

    def read(self) -> tuple[bool, ...]:
        from gpiod.line import Value

        assert self._request is not None
        values = self._request.get_values(list(self.lines))
        return tuple(v == Value.ACTIVE for v in values)

    def _on_edges(self) -> None:
        assert self._request is not None
        self._request.read_edge_events()
        self.on_change(self.read(), time.monotonic())

    def close(self) -> None:
        if self._request is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._request.fd)
            except (RuntimeError, ValueError):
                pass
            self._request.release()
            self._request = None
