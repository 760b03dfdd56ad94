"""Random-moment trip trials: does a confirmed stop stay a stop, on the wire?

Each trial starts a move (or changes the speed of a running one) and fires a trip at a random
moment around it: an E-stop through the HTTP API, the E-stop button on the simulated safety
module, a silent safety module (link loss), or the agent's shutdown. The verdict is taken from the
simulator's record of the frames the travel driver received and from its registers, never from
the agent's own bookkeeping: after the moment the stop was confirmed, no frame may write a
nonzero enable, speed, direction or heartbeat, and 300 ms later the driver must be off.

This module holds the trial logic; tests/integration/test_stop_trials.py runs a short series in
`make test` and a long one behind the slow marker.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.sim.client import SimControl

TRAVEL = 3
# Travel driver registers whose nonzero value energises it (DRV-FW map), by address.
ENERGISING = {
    0x01: "M1_ENABLE",
    0x02: "M1_COMMAND_SPEED",
    0x04: "M1_DIRECTION",
    0x11: "M2_ENABLE",
    0x12: "M2_COMMAND_SPEED",
    0x14: "M2_DIRECTION",
    0xF0: "HEARTBEAT",
}
OFF_REGISTERS = {
    0x01: "M1_ENABLE",
    0x02: "M1_COMMAND_SPEED",
    0x03: "M1_ACTUAL_SPEED",
    0x11: "M2_ENABLE",
    0x12: "M2_COMMAND_SPEED",
    0x13: "M2_ACTUAL_SPEED",
}
OFF_AFTER_S = 0.3


def energising_frames(writes: list[dict[str, Any]]) -> list[tuple[float, str, int]]:
    """(time received, register, value) for every nonzero write to an energising register."""
    out = []
    for w in writes:
        for i, value in enumerate(w["values"]):
            name = ENERGISING.get(w["address"] + i)
            if name is not None and value != 0:
                out.append((w["t"], name, value))
    return out


def driver_on(control: SimControl) -> dict[str, int]:
    """The travel driver's output registers that are not 0 (ground truth from the simulator)."""
    regs = control.registers(TRAVEL)
    return {name: regs[address] for address, name in OFF_REGISTERS.items() if regs.get(address)}


@dataclass
class TrialResult:
    kind: str
    delay_ms: float
    confirmed_at: float | None
    late_frames: list[tuple[float, str, int]]
    on_after: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.confirmed_at is not None and not self.late_frames and not self.on_after

    def describe(self) -> str:
        late = [(round((t - (self.confirmed_at or 0)) * 1000, 1), n, v) for t, n, v in self.late_frames]
        return (
            f"{self.kind} after {self.delay_ms:.0f} ms: confirmed={self.confirmed_at is not None} "
            f"energising after confirmation (ms, register, value)={late}"
            f" on {int(OFF_AFTER_S * 1000)} ms later={self.on_after}"
        )


def judge(kind: str, delay_ms: float, control: SimControl, confirmed_at: float | None) -> TrialResult:
    """Wait until 300 ms after the confirmation, then read the wire record and the driver."""
    if confirmed_at is None:
        return TrialResult(kind, delay_ms, None, [], driver_on(control))
    wait = confirmed_at + OFF_AFTER_S - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    late = energising_frames(control.writes(TRAVEL, since=confirmed_at))
    return TrialResult(kind, delay_ms, confirmed_at, late, driver_on(control))


def random_delay_ms(rng: random.Random, spread_ms: float) -> float:
    """Mostly within the first tens of ms (where the enable writes are), sometimes later."""
    return rng.uniform(0, spread_ms) if rng.random() < 0.7 else rng.uniform(0, 4 * spread_ms)


def sleep_ms(ms: float, clock: Callable[[], float] = time.monotonic) -> None:
    end = clock() + ms / 1000.0
    while clock() < end:
        time.sleep(min(0.001, max(0.0, end - clock())))
