"""The status document and the module views: built here and nowhere else.

The same document answers `GET /api/v1/status` (through the core protocol's `view` message),
feeds the stream, the metrics and the periodic health line in the log. Its shape is typed here
(`StatusDocument`, `ModuleSummary`, `ModuleView`) and versioned by `agent.link.protocol.VIEW_VERSION`:
a renamed key is a new version.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any, TypedDict

from agent.logs import dropped_lines
from drivers.errors import CodedError
from drivers.modbus.stats import ranked

if TYPE_CHECKING:
    from agent.control.controller import Controller
    from agent.control.plant import Hardware
    from drivers.polling import ModulePoller

__all__ = [
    "LagWindow",
    "ModuleNotFound",
    "ModuleSummary",
    "ModuleView",
    "StatusDocument",
    "module_summary",
    "module_view",
    "status_document",
]


class ModuleNotFound(CodedError):
    code = "MODULE_NOT_FOUND"
    hint = "use a role name: power, safety, travel, dock"


IDENTITY_REGISTERS = (
    "DEVICE_ID",
    "MODULE_TYPE",
    "FIRMWARE_VERSION",
    "HARDWARE_VERSION",
    "SYSTEM_STATUS",
    "SYSTEM_ERROR",
)


class ModuleSummary(TypedDict, total=False):
    address: int
    profile: str
    quality: str  # "fresh" | "stale"
    online: bool
    last_error: str | None
    # plus the bus master's link summary: transactions, timeouts, crc_errors, rtt_p50_ms, ...


class LoopSummary(TypedDict):
    period_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    ticks: int


class StatusDocument(TypedDict):
    agent_id: str
    state: str
    state_since: str
    verdict: dict[str, Any]
    ready: bool
    ready_reasons: list[str]
    bus: dict[str, Any]
    modules: dict[str, ModuleSummary]
    command: dict[str, str] | None
    last_stop: dict[str, Any] | None
    store: dict[str, Any]
    logs: dict[str, int]
    loop: LoopSummary
    uptime_s: float


class ModuleValue(TypedDict):
    value: Any
    unit: str | None
    age_ms: float
    quality: str


class ModuleView(TypedDict):
    role: str
    address: int
    profile: str
    description: str
    read_only: bool
    identity: dict[str, Any]
    online: bool
    values: dict[str, ModuleValue]


class LagWindow:
    """How late the control loop's recent ticks ran: a bounded window, p99 and worst."""

    def __init__(self, period_s: float, size: int = 1500) -> None:
        self.period_s = period_s
        self._lags: deque[float] = deque(maxlen=size)
        self.ticks = 0

    def add(self, lag_s: float) -> None:
        self._lags.append(max(0.0, lag_s))
        self.ticks += 1

    def summary(self) -> LoopSummary:
        lags = sorted(self._lags)
        return {
            "period_ms": round(self.period_s * 1000, 1),
            "lag_p99_ms": round(ranked(lags, 99) * 1000, 2) if lags else 0.0,
            "lag_max_ms": round(lags[-1] * 1000, 2) if lags else 0.0,
            "ticks": self.ticks,
        }


def module_summary(hw: Hardware, poller: ModulePoller, *, fresh: bool) -> ModuleSummary:
    address = poller.binding.address
    summary: dict[str, Any] = {
        "address": address,
        "profile": poller.binding.profile.name,
        "quality": "fresh" if fresh else "stale",
        "online": hw.master.is_online(address),
        "last_error": poller.snapshot.last_error,
        **hw.master.link_summary(address),
    }
    return summary  # type: ignore[return-value]


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
        "verdict": c.supervisor.verdict.as_dict(),
        "ready": ready,
        "ready_reasons": reasons,
        "bus": c.hw.master.bus_summary(),
        "modules": modules,
        "command": None if current is None else {"id": current.id, "type": current.type},
        "last_stop": None
        if last is None
        else {"reason": last.reason, "confirmed": last.confirmed, "confirm_ms": last.confirm_ms, "error": last.error},
        "store": c.db.health(),
        "logs": {"dropped_lines": dropped_lines()},
        "loop": c.loop_lag.summary(),
        "uptime_s": round(now - c.started_at, 1),
    }


def module_view(hw: Hardware, name: str, poller: ModulePoller) -> ModuleView:
    now = time.monotonic()
    profile = poller.binding.profile
    snap = poller.snapshot
    identity = {n: snap.value(n) for n in IDENTITY_REGISTERS if snap.value(n) is not None}
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
