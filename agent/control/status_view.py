"""The status document and the module views: declared and built here and nowhere else.

The same document answers `GET /api/v1/status` (through the core protocol's `view` message),
feeds the stream, the metrics and the periodic health line in the log. Its shape is declared here
once, as typed dictionaries: they are what travels over the core socket as JSON (so the link,
the stream's per-key changes and the page keep reading plain objects), mypy checks every key a
reader names, and pydantic derives the OpenAPI schema of the routes from the same declaration.
Every document refuses keys it does not declare (`extra="forbid"`), so the schema says exactly
what is sent. A renamed key is a new `agent.link.protocol.VIEW_VERSION`.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Literal, NotRequired

from pydantic import ConfigDict, with_config
from typing_extensions import TypedDict

from agent.logs import dropped_lines
from drivers.modbus.stats import Buckets, HistogramSummary, ranked

if TYPE_CHECKING:
    from agent.control.controller import Controller
    from agent.control.plant import Hardware
    from drivers.polling import ModulePoller

__all__ = [
    "BusSummary",
    "CurrentCommand",
    "EstopSummary",
    "EstopTally",
    "FaultSummary",
    "HistogramSummary",
    "LagWindow",
    "LastStop",
    "LogSummary",
    "LoopSummary",
    "ModuleSummary",
    "ModuleValue",
    "ModuleView",
    "StatusDocument",
    "StoreHealth",
    "StoreStart",
    "VerdictSummary",
    "module_summary",
    "module_view",
    "status_document",
]

_STRICT = ConfigDict(extra="forbid")

RegisterValue = int | float
Quality = Literal["fresh", "stale"]


IDENTITY_REGISTERS = (
    "DEVICE_ID",
    "MODULE_TYPE",
    "FIRMWARE_VERSION",
    "HARDWARE_VERSION",
    "SYSTEM_STATUS",
    "SYSTEM_ERROR",
)


@with_config(_STRICT)
class ModuleSummary(TypedDict):
    """One bound module's poll quality and link health (the link figures appear once it was addressed)."""

    address: int
    profile: str
    quality: Quality
    online: bool
    last_error: str | None
    transactions: NotRequired[int]
    rtt_histogram: NotRequired[HistogramSummary]  # seconds, since the core started
    rtt_p50_ms: NotRequired[float]
    rtt_p99_ms: NotRequired[float]
    timeouts: NotRequired[int]
    crc_errors: NotRequired[int]
    success_rate: NotRequired[float | None]
    late_dropped: NotRequired[int]
    mismatched: NotRequired[int]
    fences: NotRequired[int]
    set_aside: NotRequired[int]
    missed_ticks: NotRequired[int]


@with_config(_STRICT)
class LoopSummary(TypedDict):
    period_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    ticks: int
    lag_histogram: HistogramSummary  # seconds, every tick since the core started


@with_config(_STRICT)
class FaultSummary(TypedDict):
    code: str
    level: str
    latched: bool
    cause_present: bool
    since: str
    detail: str
    hint: str


@with_config(_STRICT)
class VerdictSummary(TypedDict):
    level: str
    speed_factor: float
    estop_input: bool
    faults: list[FaultSummary]


@with_config(_STRICT)
class BusSummary(TypedDict):
    port: str
    port_up: bool
    queue_depth: int
    reconnects: int
    port_losses: int
    garbage_bytes: int
    poll_overruns: int
    queue_rejected: int


@with_config(_STRICT)
class StoreHealth(TypedDict):
    """`ok`, or why the store takes no writes (a store error's code, message, hint and since when)."""

    ok: bool
    code: NotRequired[str]
    message: NotRequired[str]
    hint: NotRequired[str]
    since: NotRequired[str | None]


@with_config(_STRICT)
class StoreStart(TypedDict):
    """What the store found when the core opened it: the marks of an unclean stop before this start
    (commands cut off while running; a corrupt file moved aside)."""

    interrupted_commands: int
    corrupt_recovered: bool


@with_config(_STRICT)
class EstopSummary(TypedDict):
    """E-stops asked through the core since it started, and how long each took to be confirmed."""

    confirmed: int
    unconfirmed: int
    confirm_histogram: HistogramSummary  # seconds, confirmed stops only


@with_config(_STRICT)
class CurrentCommand(TypedDict):
    id: str
    type: str


@with_config(_STRICT)
class LastStop(TypedDict):
    reason: str
    confirmed: bool
    confirm_ms: float | None
    error: str | None


@with_config(_STRICT)
class LogSummary(TypedDict):
    dropped_lines: int


@with_config(_STRICT)
class StatusDocument(TypedDict):
    """State, safety verdict, readiness, bus, modules, current command, last stop, store, log and loop health."""

    agent_id: str
    state: str
    state_since: str
    verdict: VerdictSummary
    ready: bool
    ready_reasons: list[str]
    bus: BusSummary
    modules: dict[str, ModuleSummary]
    command: CurrentCommand | None
    last_stop: LastStop | None
    store: StoreHealth
    store_start: StoreStart
    estop: EstopSummary
    logs: LogSummary
    loop: LoopSummary
    uptime_s: float


@with_config(_STRICT)
class ModuleValue(TypedDict):
    value: RegisterValue
    unit: str | None
    age_ms: float
    quality: str


@with_config(_STRICT)
class ModuleView(TypedDict):
    """A bound module: identity registers, profile and every decoded value with its age."""

    role: str
    address: int
    profile: str
    description: str
    read_only: bool
    identity: dict[str, RegisterValue]
    online: bool
    values: dict[str, ModuleValue]


# Loop lateness bounds in seconds: the loop ticks every 20 ms; the safety policy warns and stops at
# a few tens of ms late, so the buckets are finest there.
LOOP_LAG_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5)
# E-stop confirmation (the stop written and read back on the bus): tens of ms when healthy, the
# policy gives up after its confirm timeout (a second or so).
ESTOP_CONFIRM_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class EstopTally:
    """The E-stops the core confirmed or not, and the confirmation times (for /metrics)."""

    def __init__(self) -> None:
        self.confirmed = 0
        self.unconfirmed = 0
        self.confirm = Buckets(ESTOP_CONFIRM_BUCKETS_S)

    def record(self, confirmed: bool, confirm_ms: float | None) -> None:
        if not confirmed:
            self.unconfirmed += 1
            return
        self.confirmed += 1
        if confirm_ms is not None:
            self.confirm.observe(confirm_ms / 1000)

    def summary(self) -> EstopSummary:
        return {
            "confirmed": self.confirmed,
            "unconfirmed": self.unconfirmed,
            "confirm_histogram": self.confirm.summary(),
        }


class LagWindow:
    """How late the control loop's ticks ran: a bounded recent window (p99, worst) and a histogram
    since start."""

    def __init__(self, period_s: float, size: int = 1500) -> None:
        self.period_s = period_s
        self._lags: deque[float] = deque(maxlen=size)
        self.ticks = 0
        self.histogram = Buckets(LOOP_LAG_BUCKETS_S)

    def add(self, lag_s: float) -> None:
        lag = max(0.0, lag_s)
        self._lags.append(lag)
        self.ticks += 1
        self.histogram.observe(lag)

    def summary(self) -> LoopSummary:
        lags = sorted(self._lags)
        return {
            "period_ms": round(self.period_s * 1000, 1),
            "lag_p99_ms": round(ranked(lags, 99) * 1000, 2) if lags else 0.0,
            "lag_max_ms": round(lags[-1] * 1000, 2) if lags else 0.0,
            "ticks": self.ticks,
            "lag_histogram": self.histogram.summary(),
        }


_LINK_FIGURES = (
    "transactions",
    "rtt_histogram",
    "rtt_p50_ms",
    "rtt_p99_ms",
    "timeouts",
    "crc_errors",
    "success_rate",
    "late_dropped",
    "mismatched",
    "fences",
    "set_aside",
    "missed_ticks",
)
_BUS_FIGURES = ("reconnects", "port_losses", "garbage_bytes", "poll_overruns", "queue_rejected")


def module_summary(hw: Hardware, poller: ModulePoller, *, fresh: bool) -> ModuleSummary:
    address = poller.binding.address
    summary: ModuleSummary = {
        "address": address,
        "profile": poller.binding.profile.name,
        "quality": "fresh" if fresh else "stale",
        "online": hw.master.is_online(address),
        "last_error": poller.snapshot.last_error,
    }
    link = hw.master.link_summary(address)
    for name in _LINK_FIGURES:
        if name in link:
            summary[name] = link[name]  # type: ignore[literal-required]
    return summary


def bus_summary(hw: Hardware) -> BusSummary:
    bus = hw.master.bus_summary()
    summary: BusSummary = {
        "port": str(bus["port"]),
        "port_up": bool(bus["port_up"]),
        "queue_depth": int(bus["queue_depth"]),
        "reconnects": 0,
        "port_losses": 0,
        "garbage_bytes": 0,
        "poll_overruns": 0,
        "queue_rejected": 0,
    }
    for name in _BUS_FIGURES:
        summary[name] = int(bus.get(name, 0))  # type: ignore[literal-required]
    return summary


def verdict_summary(c: Controller) -> VerdictSummary:
    verdict = c.supervisor.verdict
    return {
        "level": verdict.level.label,
        "speed_factor": verdict.speed_factor,
        "estop_input": verdict.estop_input,
        "faults": [
            {
                "code": f.code,
                "level": f.level.label,
                "latched": f.latched,
                "cause_present": f.cause_present,
                "since": f.since_utc,
                "detail": f.detail,
                "hint": f.hint,
            }
            for f in verdict.faults
        ],
    }


def store_health(c: Controller) -> StoreHealth:
    health = c.db.health()
    out: StoreHealth = {"ok": bool(health.get("ok", False))}
    for name in ("code", "message", "hint"):
        if name in health:
            out[name] = str(health[name])
    if "since" in health:
        out["since"] = None if health["since"] is None else str(health["since"])
    return out


def store_start(c: Controller) -> StoreStart:
    """From the store's start-up report (zero before the store was opened)."""
    report = c.db.report
    if report is None:
        return {"interrupted_commands": 0, "corrupt_recovered": False}
    return {
        "interrupted_commands": report.interrupted_commands,
        "corrupt_recovered": report.corrupt_moved_to is not None,
    }


def status_document(c: Controller) -> StatusDocument:
    now = time.monotonic()
    ready, reasons = c.ready()
    modules = {role: module_summary(c.hw, poller, fresh=c.fresh(role, now)) for role, poller in c.hw.pollers.items()}
    current = c.executor.current
    last = c.stop_path.last
    return {
        "agent_id": c.agent_id,
        "state": c.sm.state.value,
        "state_since": c.state_since_iso(),
        "verdict": verdict_summary(c),
        "ready": ready,
        "ready_reasons": reasons,
        "bus": bus_summary(c.hw),
        "modules": modules,
        "command": None if current is None else {"id": current.id, "type": current.type},
        "last_stop": None
        if last is None
        else {"reason": last.reason, "confirmed": last.confirmed, "confirm_ms": last.confirm_ms, "error": last.error},
        "store": store_health(c),
        "store_start": store_start(c),
        "estop": c.estops.summary(),
        "logs": {"dropped_lines": dropped_lines()},
        "loop": c.loop_lag.summary(),
        "uptime_s": round(now - c.started_at, 1),
    }


def module_view(hw: Hardware, name: str, poller: ModulePoller) -> ModuleView:
    now = time.monotonic()
    profile = poller.binding.profile
    snap = poller.snapshot
    identity: dict[str, RegisterValue] = {}
    for register in IDENTITY_REGISTERS:
        value = snap.value(register)
        if value is not None:
            identity[register] = value
    values: dict[str, ModuleValue] = {}
    for reg in profile.registers:
        reading = snap.readings.get(reg.name)
        if reading is None:
            continue
        values[reg.name] = {
            "value": reading.value,
            "unit": reg.unit,
            "age_ms": round((now - reading.at) * 1000, 1),
            "quality": snap.quality(reg.name, now).value,
        }
    return {
        "role": name,
        "address": poller.binding.address,
        "profile": profile.name,
        "description": profile.description,
        "read_only": profile.read_only,
        "identity": identity,
        "online": hw.master.is_online(poller.binding.address),
        "values": values,
    }
