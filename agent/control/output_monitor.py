"""The output monitor: outside motion, the travel driver must read back off and stand still.

The stop path confirms a stop once; this watches every travel reading taken after that
confirmation, independently of who wrote what. An output that reads back on (another master on
the line, a driver that ignored the stop, a write that escaped the interlock) is OUTPUTS_NOT_SAFE;
a carriage whose position keeps changing, or a motor that draws current, after a confirmed stop
is UNCOMMANDED_MOTION. Both are emergency stops. Only readings taken after the confirmation
count: a reading from before it may rightly show the motor running.
"""

from __future__ import annotations

from drivers.snapshots import ModuleSnapshot, Quality

OUTPUT_REGISTERS = ("M1_ENABLE", "M1_COMMAND_SPEED", "M2_ENABLE", "M2_COMMAND_SPEED")
POSITION_REGISTERS = ("M1_POSITION_CURRENT", "M2_POSITION_CURRENT")
CURRENT_REGISTER = "CURRENT"


class OutputMonitor:
    def __init__(self, current_max_a: float, drift_cm: float) -> None:
        self.current_max_a = current_max_a
        self.drift_cm = drift_cm
        self._stop_ref: float | None = None  # the confirmation the positions are compared against
        self._positions: dict[str, float] = {}

    def check(self, snap: ModuleSnapshot, now: float, *, motion: bool, stopped_since: float | None) -> dict[str, str]:
        """The causes present now (code -> detail); empty while moving or before any confirmed stop."""
        if motion or stopped_since is None:
            self._stop_ref = None
            return {}
        if self._stop_ref != stopped_since:
            self._stop_ref, self._positions = stopped_since, {}
        causes: dict[str, str] = {}

        def after_stop(name: str) -> float | None:
            reading = snap.readings.get(name)
            if reading is None or reading.at <= stopped_since or snap.quality(name, now) is not Quality.FRESH:
                return None
            return float(reading.value)

        on = {n: v for n in OUTPUT_REGISTERS if (v := after_stop(n))}
        if on:
            listed = ", ".join(f"{n}={v:g}" for n, v in on.items())
            causes["OUTPUTS_NOT_SAFE"] = (
                f"travel driver reads {listed} after a confirmed stop, with no motion commanded"
            )
        moved: list[str] = []
        for name in POSITION_REGISTERS:
            position = after_stop(name)
            if position is None:
                continue
            ref = self._positions.setdefault(name, position)
            if abs(position - ref) >= self.drift_cm:
                moved.append(f"{name} {ref:g} -> {position:g} cm")
        current = after_stop(CURRENT_REGISTER)
        if current is not None and abs(current) > self.current_max_a:
            moved.append(f"motor current {current:g} A (at most {self.current_max_a:g} A when stopped)")
        if moved:
            causes["UNCOMMANDED_MOTION"] = "after a confirmed stop: " + "; ".join(moved)
        return causes
