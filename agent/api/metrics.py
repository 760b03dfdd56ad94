"""Prometheus metrics of the API and of the agent's figures, each declared by name in `METRICS`.

One registry per app (not the process-global one), so two apps in one process (tests, the
benchmark) never share counters.

Every label value of the request metrics comes from a fixed set, because each new value is a new
series kept for the life of the process and written into every scrape: a caller without a login
who could choose one (an invented method, a random path) could grow the gateway's memory and
/metrics without bound. So the method is one of `KNOWN_METHODS` or `other`, the route is one of
the app's route templates or `unmatched` (never the raw path), and the status is the three-digit
code the app answered with (or `other`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.control.status_view import ModuleSummary, StatusDocument

__all__ = [
    "CONTENT_TYPE",
    "KNOWN_METHODS",
    "METRICS",
    "OTHER",
    "UNMATCHED",
    "ApiMetrics",
    "Figures",
    "MetricSpec",
    "method_label",
    "status_label",
]

log = logging.getLogger("oht.api")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"  # any method or status outside the fixed sets
UNMATCHED = "unmatched"  # any path that is not one of the app's routes


def method_label(method: str) -> str:
    """The method as a label: one of KNOWN_METHODS (compared exactly: methods are case-sensitive), else `other`."""
    return method if method in KNOWN_METHODS else OTHER


def status_label(status: object) -> str:
    """An HTTP status the app answered with as a label; anything but an int in 100-599 is `other`."""
    return str(status) if isinstance(status, int) and 100 <= status <= 599 else OTHER


@dataclass(frozen=True)
class Figures:
    """What one scrape reads: the core's status document (None while the core is away) and the
    gateway's own figures."""

    status: StatusDocument | None
    ready: bool
    alive: bool
    store_stats: Mapping[str, int]
    store_healthy: bool


Samples = Iterable[tuple[tuple[str, ...], float]]


@dataclass(frozen=True)
class MetricSpec:
    """One metric of the agent's figures: its name, type, help, label names, and what it reads."""

    name: str
    kind: Literal["gauge"]
    help: str
    labels: tuple[str, ...]
    samples: Callable[[Figures], Samples]


def _number(value: float | bool | None) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _one(value: float | bool | None) -> Samples:
    number = _number(value)
    return () if number is None else (((), number),)


def _gateway(name: str, help: str, read: Callable[[Figures], float | bool | None]) -> MetricSpec:
    return MetricSpec(name, "gauge", help, (), lambda f: _one(read(f)))


def _status(name: str, help: str, read: Callable[[StatusDocument], float | bool | None]) -> MetricSpec:
    """A figure of the core's status document; absent while the core is away."""
    return MetricSpec(name, "gauge", help, (), lambda f: () if f.status is None else _one(read(f.status)))


def _module(name: str, help: str, read: Callable[[ModuleSummary], float | bool | None]) -> MetricSpec:
    """A figure of each bound module's summary, labelled by its role."""

    def samples(f: Figures) -> Samples:
        if f.status is None:
            return ()
        out = []
        for role, module in sorted(f.status["modules"].items()):
            number = _number(read(module))
            if number is not None:
                out.append(((role,), number))
        return out

    return MetricSpec(name, "gauge", help, ("role",), samples)


def _store(key: str, help: str) -> MetricSpec:
    return _gateway(f"oht_store_{key}", help, lambda f: f.store_stats.get(key))


# The agent's figures in /metrics: each name is declared here, with what it reads. A renamed
# status key is a type error here, never a silently renamed metric.
METRICS: tuple[MetricSpec, ...] = (
    _gateway("oht_core_connected", "1 while the gateway holds a view of the core", lambda f: f.status is not None),
    _gateway("oht_ready", "1 when the agent is ready (core, bus, mandatory modules, database)", lambda f: f.ready),
    _gateway("oht_alive", "1 while the gateway's own tasks run", lambda f: f.alive),
    _gateway("oht_store_healthy", "1 while the store takes writes", lambda f: f.store_healthy),
    _store("batches", "Committed write batches since start"),
    _store("units", "Committed units of work since start"),
    _store("largest_batch", "Most units of work committed in one batch"),
    _store("aborted_batches", "Write batches rolled back since start"),
    _store("queued", "Units of work waiting for the writer"),
    _status("oht_status_ready", "1 when the core reports itself ready", lambda s: s["ready"]),
    _status("oht_status_ready_reasons_count", "Reasons the core is not ready", lambda s: len(s["ready_reasons"])),
    _status("oht_status_uptime_s", "Seconds since the core started", lambda s: s["uptime_s"]),
    _status(
        "oht_status_verdict_speed_factor",
        "Speed factor allowed (0-1)",
        lambda s: s["verdict"]["speed_factor"],
    ),
    _status("oht_status_verdict_estop_input", "1 while E-stop input is on", lambda s: s["verdict"]["estop_input"]),
    _status("oht_status_verdict_faults_count", "Active safety faults", lambda s: len(s["verdict"]["faults"])),
    _status("oht_status_bus_port_up", "1 while the serial port is open", lambda s: s["bus"]["port_up"]),
    _status("oht_status_bus_queue_depth", "Bus requests waiting", lambda s: s["bus"]["queue_depth"]),
    _status("oht_status_bus_reconnects", "Serial port reconnects", lambda s: s["bus"]["reconnects"]),
    _status("oht_status_bus_port_losses", "Serial port losses", lambda s: s["bus"]["port_losses"]),
    _status("oht_status_bus_garbage_bytes", "Bytes that were no frame", lambda s: s["bus"]["garbage_bytes"]),
    _status("oht_status_bus_poll_overruns", "Polls that could not run on time", lambda s: s["bus"]["poll_overruns"]),
    _status("oht_status_bus_queue_rejected", "Requests refused: queue full", lambda s: s["bus"]["queue_rejected"]),
    _status("oht_status_store_ok", "1 while the core's store takes writes", lambda s: s["store"]["ok"]),
    _status("oht_status_logs_dropped_lines", "Log lines dropped since start", lambda s: s["logs"]["dropped_lines"]),
    _status("oht_status_loop_period_ms", "Control loop period", lambda s: s["loop"]["period_ms"]),
    _status("oht_status_loop_lag_p99_ms", "Loop lateness, recent p99", lambda s: s["loop"]["lag_p99_ms"]),
    _status("oht_status_loop_lag_max_ms", "Loop lateness, recent worst", lambda s: s["loop"]["lag_max_ms"]),
    _status("oht_status_loop_ticks", "Control loop ticks since start", lambda s: s["loop"]["ticks"]),
    _status(
        "oht_status_last_stop_confirm_ms",
        "Time the last stop took to be confirmed on the bus",
        lambda s: None if s["last_stop"] is None else s["last_stop"]["confirm_ms"],
    ),
    _module("oht_status_module_online", "1 while the module answers", lambda m: m["online"]),
    _module("oht_status_module_fresh", "1 while the module's values are fresh", lambda m: m["quality"] == "fresh"),
    _module("oht_status_module_rtt_p50_ms", "Round-trip time, median", lambda m: m.get("rtt_p50_ms")),
    _module("oht_status_module_rtt_p99_ms", "Round-trip time, p99", lambda m: m.get("rtt_p99_ms")),
    _module("oht_status_module_timeouts", "Requests without an answer", lambda m: m.get("timeouts")),
    _module("oht_status_module_crc_errors", "Answers with a bad CRC", lambda m: m.get("crc_errors")),
    _module("oht_status_module_success_rate", "Answered attempts / attempts", lambda m: m.get("success_rate")),
    _module("oht_status_module_late_dropped", "Late replies recognised and dropped", lambda m: m.get("late_dropped")),
    _module("oht_status_module_mismatched", "Frames that matched no request", lambda m: m.get("mismatched")),
    _module("oht_status_module_fences", "Fence reads sent to flush late replies", lambda m: m.get("fences")),
    _module("oht_status_module_set_aside", "Times the module was set aside", lambda m: m.get("set_aside")),
    _module("oht_status_module_missed_ticks", "Polls that missed their tick", lambda m: m.get("missed_ticks")),
)


class _FiguresCollector(Collector):
    """Reads the agent's figures at scrape time and exposes the `METRICS` table."""

    def __init__(self, figures: Callable[[], Figures]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        try:
            figures: Figures | None = self._figures()
        except Exception:
            log.exception("collecting status metrics failed")
            figures = None
        for spec in METRICS:
            family = GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))
            if figures is not None:
                for labels, value in spec.samples(figures):
                    family.add_metric(list(labels), value)
            yield family


class ApiMetrics:
    def __init__(self, figures: Callable[[], Figures]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "oht_api_requests", "HTTP requests by method, route template and status",
            ["method", "route", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "oht_api_request_duration_seconds", "Time to answer a request, by route template",
            ["method", "route"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
        )  # fmt: skip
        self.auth_failures = Counter(
            "oht_api_auth_failures", "Refused credentials and logins, by error code", ["code"], registry=self.registry
        )
        self.stream_clients = Gauge("oht_api_stream_clients", "Open WebSocket stream clients", registry=self.registry)
        self.stream_dropped = Counter(
            "oht_api_stream_closed_slow", "Stream clients closed for not keeping up", registry=self.registry
        )
        self.registry.register(_FiguresCollector(figures))
        self._routes: frozenset[str] = frozenset()

    def know_routes(self, templates: Iterable[str]) -> None:
        """The app's route templates: the only route labels besides `unmatched` (set once the app is built)."""
        self._routes = frozenset(templates)

    def route_label(self, template: str | None) -> str:
        return template if template is not None and template in self._routes else UNMATCHED

    def observe_request(self, method: str, route: str | None, status: object, seconds: float) -> None:
        """Count one answered request and its latency, under bounded labels only."""
        method_value, route_value = method_label(method), self.route_label(route)
        self.requests.labels(method=method_value, route=route_value, status=status_label(status)).inc()
        self.latency.labels(method=method_value, route=route_value).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
