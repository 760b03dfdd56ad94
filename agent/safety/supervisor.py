"""The safety supervisor: snapshots, link health and external alarms in; one verdict out.

It is evaluated on every snapshot the bus publishes (so a tripping condition reaches the stop
path within the same bus cycle) and on a short timer (so silence is noticed even when nothing
is published). A cause at protective-stop level or above trips the stop path at once and is
latched; a latch clears only through `clear_latches` after `reset_blockers` found its cause gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from agent.safety.estop_input import EstopInputState
from agent.safety.faults import CATALOGUE, Level
from agent.safety.policy import SafetyPolicy
from agent.store.clock import now_ts
from drivers.snapshots import ModuleSnapshot, Quality

log = logging.getLogger("oht.safety")

# Codes whose cause the safety module holds in its own latch (status frozen while RESET_FLAG = 1):
# they can only be re-evaluated after the reset writes RESET_FLAG back to 0.
MODULE_LATCH_CODES = frozenset({"SAFETY_MODULE_CRITICAL", "SAFETY_MODULE_ERROR", "SAFETY_MODULE_LATCHED"})
# Roles whose link is alive only while these registers (their status block) answer.
SAFETY_STATUS = ("SAFETY_SYSTEM_STATUS", "EMERGENCY_STOP_STATUS", "RESET_FLAG")
LIVENESS_REGISTERS: dict[str, tuple[str, ...]] = {"safety": SAFETY_STATUS}
SENSORS = (1, 2, 3, 4)
EXTERNAL_CODES = frozenset(
    {
        "ESTOP_REQUESTED",
        "STOP_NOT_CONFIRMED",
        "LOOP_STALL",
        "LOOP_LAG",
        "STORE_UNAVAILABLE",
        "STORE_CORRUPT",
        "OUTPUTS_NOT_SAFE",
        "UNCOMMANDED_MOTION",
        "TRAVEL_STALLED",
        "SAFETY_CONFIG_MISMATCH",
        "SAFETY_MODULE_REBOOTED",
        "TASK_DIED",
    }
)


@dataclass(frozen=True)
class ActiveFault:
    code: str
    level: Level
    latched: bool
    cause_present: bool
    since: float  # time.monotonic() when the cause first appeared
    since_utc: str
    detail: str
    hint: str

    def as_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "level": self.level.label,
            "latched": self.latched,
            "cause_present": self.cause_present,
            "since": self.since_utc,
            "detail": self.detail,
            "hint": self.hint,
        }


@dataclass(frozen=True)
class Verdict:
    level: Level
    faults: tuple[ActiveFault, ...]
    estop_input: bool
    speed_factor: float
    evaluated_at: float

    @property
    def latched_codes(self) -> frozenset[str]:
        return frozenset(f.code for f in self.faults if f.latched)

    def has(self, code: str) -> bool:
        return any(f.code == code for f in self.faults)

    def as_dict(self) -> dict[str, object]:
        return {
            "level": self.level.label,
            "speed_factor": self.speed_factor,
            "estop_input": self.estop_input,
            "faults": [f.as_dict() for f in self.faults],
        }


@dataclass(frozen=True)
class RoleLiveness:
    """What the supervisor needs to know about a bound role's link."""

    snapshot: ModuleSnapshot | None
    bound_at: float
    interval_s: float
    turnaround_s: float
    interval_since: float = 0.0  # when interval_s took effect (a faster rate cannot be owed earlier replies)
    # When the link's budget starts, if later than bind + FIRST_REPLY_GRACE_S: the safety module's
    # configuration written and read back at bind takes its service ticks (see `Supervisor.settled_at`).
    settled_at: float | None = None


LivenessSource = Callable[[str], RoleLiveness | None]


class Supervisor:
    def __init__(
        self,
        policy: SafetyPolicy,
        liveness: LivenessSource,
        *,
        port_up: Callable[[], bool],
        on_trip: Callable[[str, str], None],
        clock: Callable[[], float] = time.monotonic,
        estop_input: Callable[[float], EstopInputState | None] | None = None,
    ) -> None:
        self.policy = policy
        self._liveness = liveness
        self._port_up = port_up
        self._on_trip = on_trip
        self._estop_input = estop_input
        self._clock = clock
        self._present: dict[str, tuple[float, str, str]] = {}  # code -> (since, since_utc, detail)
        self._latched: dict[str, tuple[float, str, str]] = {}
        self._external: dict[str, str] = {}
        self._events: dict[str, str] = {}
        self._estop_clear_since: float | None = None
        self._hysteresis: set[str] = set()
        # Sensors whose distances are judged, whatever the module says it has enabled: a module
        # that forgot its enables (a reboot) must not switch off the agent's own check. None: the
        # enable flags as read from the module (no configured expectation).
        self.judged_sensors: frozenset[int] | None = None
        self.verdict = Verdict(Level.OK, (), False, 1.0, clock())
        self.listeners: list[Callable[[Verdict, Verdict], None]] = []

    # ------------------------------------------------------------------ inputs from outside the bus
    def record_event(self, code: str, detail: str) -> Verdict:
        """A momentary cause (an E-stop request, a stop that did not confirm): latched and tripped once.

        Its cause is gone as soon as it has been recorded, so the latch clears at the next reset.
        """
        if code not in CATALOGUE or code not in EXTERNAL_CODES:
            raise ValueError(f"{code} is not an external fault code")
        self._events[code] = detail
        if code in self._present:
            del self._present[code]  # a repeated event trips again
            self._latched.pop(code, None)
        return self.evaluate()

    def raise_external(self, code: str, detail: str) -> Verdict:
        """A standing condition outside the bus (disk full, loop lag) until `clear_external`."""
        if code not in CATALOGUE or code not in EXTERNAL_CODES:
            raise ValueError(f"{code} is not an external fault code")
        self._external[code] = detail
        return self.evaluate()

    def clear_external(self, code: str) -> Verdict:
        self._external.pop(code, None)
        return self.evaluate()

    def external_active(self, code: str) -> bool:
        return code in self._external

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, now: float | None = None) -> Verdict:
        now = self._clock() if now is None else now
        causes = self._causes(now)
        tripped: list[tuple[str, str]] = []
        for code, detail in causes.items():
            spec = CATALOGUE[code]
            if code not in self._present:
                self._present[code] = (now, now_ts(), detail)
                if spec.level >= Level.PROTECTIVE_STOP and code not in self._latched:
                    tripped.append((code, detail))
                log_fn = log.error if spec.level >= Level.PROTECTIVE_STOP else log.warning
                log_fn("fault %s: %s", code, detail, extra={"code": code})
            else:
                since, since_utc, _ = self._present[code]
                self._present[code] = (since, since_utc, detail)
            if spec.latched and code not in self._latched:
                self._latched[code] = self._present[code]
        for code in list(self._present):
            if code not in causes:
                del self._present[code]
                log.info("cause gone: %s%s", code, " (still latched until reset)" if code in self._latched else "")
        if "ESTOP_PRESSED" in causes:
            self._estop_clear_since = None
        elif self._estop_clear_since is None:
            self._estop_clear_since = now
        verdict = self._build(now, causes)
        previous, self.verdict = self.verdict, verdict
        for code, detail in tripped:
            try:
                self._on_trip(code, detail)
            except Exception:
                log.exception("stop trigger failed for %s", code)
        if verdict.faults != previous.faults or verdict.level != previous.level:
            for listener in list(self.listeners):
                try:
                    listener(previous, verdict)
                except Exception:
                    log.exception("verdict listener failed")
        return verdict

    def _build(self, now: float, causes: dict[str, str]) -> Verdict:
        faults: list[ActiveFault] = []
        for code in sorted(set(self._latched) | set(self._present)):
            spec = CATALOGUE[code]
            since, since_utc, detail = self._present.get(code) or self._latched[code]
            faults.append(
                ActiveFault(
                    code, spec.level, code in self._latched, code in causes, since, since_utc, detail, spec.hint
                )
            )
        level = max((f.level for f in faults), default=Level.OK)
        factor = (
            0.0
            if level >= Level.PROTECTIVE_STOP
            else (self.policy.warning_speed_factor if level == Level.WARNING else 1.0)
        )
        return Verdict(level, tuple(faults), "ESTOP_PRESSED" in causes, factor, now)

    def _causes(self, now: float) -> dict[str, str]:
        causes: dict[str, str] = dict(self._external)
        causes.update(self._events)
        self._events.clear()
        if not self._port_up():
            causes["BUS_PORT_DOWN"] = "the RS485 port is not open"
        self._link_causes(now, causes)
        self._gpio_causes(now, causes)
        self._safety_module_causes(now, causes)
        self._power_causes(now, causes)
        return causes

    # A module just bound has answered its identity read moments ago; its first poll may wait for
    # its service tick and for the other modules' first polls, so the budget starts after this grace.
    FIRST_REPLY_GRACE_S = 1.0
    # The safety module serves one frame per service tick, so writing and reading back its
    # configuration at bind holds its status polls for several ticks (up to about 0.8 s measured on
    # a loaded machine). Until the configuration is verified no motion is allowed (the role is not
    # ready), so its status budget starts once it is verified, but never later than this after bind.
    BIND_CONFIG_GRACE_S = 3.0

    def settled_at(self, live: RoleLiveness) -> float:
        """When a bound role's link budget starts: after its first reads, and its configuration."""
        first = live.bound_at + self.FIRST_REPLY_GRACE_S
        if live.settled_at is None:
            return first
        return max(first, min(live.settled_at, live.bound_at + self.BIND_CONFIG_GRACE_S))

    def _age(self, live: RoleLiveness, now: float, role: str | None = None) -> float:
        """Time since the role's link last proved alive.

        For most roles any reply proves it. For a role with a critical block (the safety module's
        status) only that block's own replies count, and only once all of its registers came: other
        blocks answering says nothing about whether the module's verdict is still being read.
        """
        snap = live.snapshot
        readings = snap.readings if snap is not None else {}
        critical = LIVENESS_REGISTERS.get(role or "")
        if critical is None:
            last = max((r.at for r in readings.values()), default=None)
        else:
            times = [readings[name].at for name in critical if name in readings]
            last = min(times) if len(times) == len(critical) else None
        settled_at = self.settled_at(live)
        if last is None:
            return now - settled_at
        if critical is not None:
            # Right after bind the module's configuration and identity are read on ticks of their
            # own while the loop is still busy starting up: the status block's budget starts after
            # the grace (no motion is allowed before the role is ready anyway).
            return now - max(last, live.interval_since, settled_at)
        return now - max(last, live.interval_since)

    def _link_budgets(self) -> Iterator[tuple[str, str, RoleLiveness, float]]:
        """(role, fault code, liveness, budget in s) for every bound role with a link budget."""
        p = self.policy
        for role, code, budget_ms in (
            ("safety", "SAFETY_LINK_LOST", p.safety_link_budget_ms),
            ("travel", "TRAVEL_LINK_LOST", p.travel_link_budget_ms),
            ("dock", "DOCK_LINK_LOST", p.dock_link_budget_ms),
        ):
            live = self._liveness(role)
            if live is None:
                continue
            # Never shorter than two poll periods plus one reply budget, or a slow idle poll would trip it.
            budget = (
                max(budget_ms / 1000.0, 2 * live.interval_s + live.turnaround_s)
                if role != "safety"
                else budget_ms / 1000.0
            )
            yield role, code, live, budget

    def link_deadline(self, now: float | None = None) -> float | None:
        """When the first link budget runs out if no reply comes before (time.monotonic), or None.

        The controller evaluates again at that moment, so a silent module trips when its budget
        ends, not up to a control tick later.
        """
        now = self._clock() if now is None else now
        dues = [now - self._age(live, now, role) + budget for role, _, live, budget in self._link_budgets()]
        return min(dues, default=None)

    def _link_causes(self, now: float, causes: dict[str, str]) -> None:
        p = self.policy
        for role, code, live, budget in self._link_budgets():
            age = self._age(live, now, role)
            if age > budget:
                what = "status-block reply" if role in LIVENESS_REGISTERS else "valid reply"
                causes[code] = (
                    f"no {what} from the {role} module for {age * 1000:.0f} ms (budget {budget * 1000:.0f} ms)"
                )
        power = self._liveness("power")
        if power is not None:
            warn = max(p.power_link_warning_ms / 1000.0, 2 * power.interval_s + power.turnaround_s)
            age = self._age(power, now)
            if age > warn + p.power_stop_countdown_ms / 1000.0:
                causes["POWER_LINK_LOST"] = f"no valid reply from the power module for {age:.1f} s"
            elif age > warn:
                left = warn + p.power_stop_countdown_ms / 1000.0 - age
                causes["POWER_LINK_WARNING"] = f"no reply from the power module for {age:.1f} s; stop in {left:.1f} s"

    def _fresh_values(self, role: str, names: Iterable[str], now: float) -> dict[str, float] | None:
        live = self._liveness(role)
        if live is None or live.snapshot is None:
            return None
        snap = live.snapshot
        out: dict[str, float] = {}
        for name in names:
            if snap.quality(name, now) is Quality.FRESH:
                value = snap.value(name)
                if value is not None:
                    out[name] = float(value)
        return out

    def _gpio_causes(self, now: float, causes: dict[str, str]) -> None:
        state = self._estop_input(now) if self._estop_input is not None else None
        if state is None:
            return
        if state.pressed:
            causes["ESTOP_PRESSED"] = f"the E-stop input (GPIO) is active: channels {list(state.channels)}"
        if state.discrepancy:
            causes["ESTOP_INPUT_DISCREPANCY"] = f"E-stop channels disagree: {list(state.channels)}"

    def _safety_module_causes(self, now: float, causes: dict[str, str]) -> None:
        """The module's own verdict, and the agent's obstacle distances, from fresh readings only.

        Missing data never reads as "all clear": a stale status or a stale distance of an enabled
        sensor is SAFETY_DATA_STALE, and enable flags that are not fresh mean the agent does not
        know which sensors count (SAFETY_SENSORS_UNKNOWN), never that there are none. A module
        bound moments ago is given FIRST_REPLY_GRACE_S for its first reads.
        """
        live = self._liveness("safety")
        if live is None or live.snapshot is None:
            return
        snap = live.snapshot
        settled = now > self.settled_at(live)

        def lapsed(name: str) -> bool:
            return settled and snap.quality(name, now) is not Quality.FRESH

        values = (
            self._fresh_values(
                "safety",
                list(SAFETY_STATUS) + [f"ANALOG_INPUT_{i}" for i in SENSORS] + [f"ANALOG_{i}_ENABLE" for i in SENSORS],
                now,
            )
            or {}
        )
        stale = [name for name in SAFETY_STATUS if lapsed(name)]
        unknown = [i for i in SENSORS if lapsed(f"ANALOG_{i}_ENABLE")]
        if unknown:
            causes["SAFETY_SENSORS_UNKNOWN"] = (
                f"enable flags of sensors {unknown} are not fresh: which sensors count is unknown"
            )
        distances: list[float] = []
        judged = self.judged_sensors  # the sensors the module must have on (configuration), if known
        for i in SENSORS:
            enabled = i in judged if judged is not None else values.get(f"ANALOG_{i}_ENABLE") == 1
            if not enabled:
                continue
            name = f"ANALOG_INPUT_{i}"
            if name in values:
                distances.append(values[name])
            elif lapsed(name):
                stale.append(name)
        if stale:
            causes["SAFETY_DATA_STALE"] = f"safety module readings not fresh: {', '.join(stale)}"
        if values.get("EMERGENCY_STOP_STATUS") == 1:
            causes.setdefault("ESTOP_PRESSED", "the safety module reports the E-stop input pressed")
        status = values.get("SAFETY_SYSTEM_STATUS")
        if status == 1:
            causes["SAFETY_MODULE_WARNING"] = "safety module status WARNING"
        elif status == 2:
            causes["SAFETY_MODULE_CRITICAL"] = "safety module status CRITICAL"
        elif status == 3:
            causes["SAFETY_MODULE_ERROR"] = "safety module status ERROR"
        if values.get("RESET_FLAG") == 1:
            causes["SAFETY_MODULE_LATCHED"] = "safety module RESET_FLAG (0x0004) is 1: relay 1 latched"
        if distances:
            nearest = min(distances)
            p = self.policy
            if nearest <= p.obstacle_emergency:
                causes["OBSTACLE_EMERGENCY"] = f"obstacle at {nearest:g} (emergency distance {p.obstacle_emergency:g})"
            if nearest <= p.obstacle_warning or ("OBSTACLE_NEAR" in self._hysteresis and nearest <= p.obstacle_safe):
                causes["OBSTACLE_NEAR"] = f"obstacle at {nearest:g} (clear beyond {p.obstacle_safe:g})"
                self._hysteresis.add("OBSTACLE_NEAR")
            else:
                self._hysteresis.discard("OBSTACLE_NEAR")

    def _power_causes(self, now: float, causes: dict[str, str]) -> None:
        values = self._fresh_values("power", ["BATTERY_SOC"], now)
        if not values or "BATTERY_SOC" not in values:
            return
        soc, p = values["BATTERY_SOC"], self.policy
        if soc <= p.battery_stop_pct:
            causes["BATTERY_CRITICAL"] = f"battery at {soc:g} % (stop level {p.battery_stop_pct:g} %)"
        if soc <= p.battery_warning_pct or (
            "BATTERY_LOW" in self._hysteresis and soc <= p.battery_warning_pct + p.battery_hysteresis_pct
        ):
            causes["BATTERY_LOW"] = f"battery at {soc:g} % (warning level {p.battery_warning_pct:g} %)"
            self._hysteresis.add("BATTERY_LOW")
        else:
            self._hysteresis.discard("BATTERY_LOW")

    # ------------------------------------------------------------------ reset
    def reset_blockers(self, now: float | None = None, *, ignore_module_latch: bool = False) -> dict[str, str]:
        """Latched faults that may not be cleared now, with the reason for each."""
        now = self._clock() if now is None else now
        self.evaluate(now)
        blockers: dict[str, str] = {}
        for code in self._latched:
            if ignore_module_latch and code in MODULE_LATCH_CODES:
                continue
            if code in self._present:
                blockers[code] = f"cause still present: {self._present[code][2]}"
            elif code == "ESTOP_PRESSED":
                released = 0.0 if self._estop_clear_since is None else now - self._estop_clear_since
                if released * 1000 < self.policy.estop_release_ms:
                    blockers[code] = (
                        f"E-stop released only {released * 1000:.0f} ms ago (needs {self.policy.estop_release_ms} ms)"
                    )
        # A reset also needs fresh readings from the safety module: nothing is cleared on stale data.
        if self._fresh_values("safety", ["SAFETY_SYSTEM_STATUS"], now) in (None, {}):
            for code in self._latched:
                blockers.setdefault(code, "the safety module's readings are not fresh")
        return blockers

    def module_latch_set(self, now: float | None = None) -> bool:
        values = self._fresh_values("safety", ["RESET_FLAG"], self._clock() if now is None else now)
        return values is not None and values.get("RESET_FLAG") == 1

    def clear_latches(self, now: float | None = None) -> tuple[list[str], dict[str, str]]:
        """Clear every latch whose cause is gone; returns (cleared codes, remaining code -> reason)."""
        now = self._clock() if now is None else now
        blockers = self.reset_blockers(now)
        cleared = [code for code in self._latched if code not in blockers]
        for code in cleared:
            del self._latched[code]
        self.evaluate(now)
        return cleared, blockers
