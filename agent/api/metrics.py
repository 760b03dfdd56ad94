"""Prometheus metrics of the API and of the agent's figures, each declared by name in `METRICS`.

The agent's figures come from two places. The core's status document (received over the link
several times a second) carries the bus, loop, state, fault and E-stop figures, the histograms as
fixed cumulative bucket counts (drivers/modbus/stats.py). What only the database knows (outbox
backlog, command counts, file size) is read by the gateway when it is scraped: a scrape comes every
15-60 s, the status document several times a second, and the read stays out of the core's loop.
docs/metrics.md lists every metric and what a site alerts on.

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

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.control.states import State
from agent.control.status_view import HistogramSummary, ModuleSummary, StatusDocument
from agent.store.commands import TERMINAL_STATES, Commands
from agent.store.database import Database
from agent.store.errors import StoreError
from agent.store.outbox import Outbox, StreamBacklog
from agent.store.streams import StreamClass

__all__ = [
    "CONTENT_TYPE",
    "KNOWN_METHODS",
    "METRICS",
    "OTHER",
    "UNMATCHED",
    "ApiMetrics",
    "Figures",
    "MetricSpec",
    "StoreReadings",
    "method_label",
    "status_label",
    "store_readings",
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
class StoreReadings:
    """What a scrape reads from the database: file size (with its WAL), commands per state, and
    the outbox backlog per stream. None where the read failed: the scrape still answers."""

    database_bytes: int | None
    commands: Mapping[str, int] | None
    outbox: Sequence[StreamBacklog] | None


async def store_readings(db: Database) -> StoreReadings:
    """One read for the commands, one for the outbox (one indexed lookup per stream), two stats."""
    size: int | None = 0
    for suffix in ("", "-wal"):
        try:
            size = None if size is None else size + os.stat(f"{db.path}{suffix}").st_size
        except FileNotFoundError:
            pass  # no WAL right now
        except OSError:
            size = None
    commands: Mapping[str, int] | None = None
    outbox: Sequence[StreamBacklog] | None = None
    try:
        commands = await Commands(db).count_by_state()
        outbox = list((await Outbox(db).backlog()).values())
    except StoreError as exc:
        log.warning("metrics: could not read the database [%s]: %s", exc.code, exc)
    return StoreReadings(size, commands, outbox)


@dataclass(frozen=True)
class Figures:
    """What one scrape reads: the core's status document (None while the core is away), the
    gateway's own figures, and what the gateway read from the database (None if not read)."""

    status: StatusDocument | None
    ready: bool
    alive: bool
    store_stats: Mapping[str, int]
    store_healthy: bool
    upstream_connected: bool | None = None  # None: upstream sync is off
    readings: StoreReadings | None = None


Labels = tuple[str, ...]
Samples = Iterable[tuple[Labels, float]]
HistogramSamples = Iterable[tuple[Labels, HistogramSummary]]
Kind = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric of the agent's figures: its exposed name (a counter's ends in `_total`), type,
    help, label names, whether it reads the core's status document, and what it reads."""

    name: str
    kind: Kind
    help: str
    labels: Labels
    core: bool
    samples: Callable[[Figures], Samples] = lambda _f: ()
    histograms: Callable[[Figures], HistogramSamples] = lambda _f: ()


def _number(value: float | bool | None) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _one(value: float | bool | None) -> Samples:
    number = _number(value)
    return () if number is None else (((), number),)


def _ms(value: float | None) -> float | None:
    return None if value is None else value / 1000


def _gateway(name: str, help: str, read: Callable[[Figures], float | bool | None], kind: Kind = "gauge") -> MetricSpec:
    return MetricSpec(name, kind, help, (), False, lambda f: _one(read(f)))


def _status(
    name: str, help: str, read: Callable[[StatusDocument], float | bool | None], kind: Kind = "gauge"
) -> MetricSpec:
    """A figure of the core's status document; absent while the core is away."""
    return MetricSpec(name, kind, help, (), True, lambda f: () if f.status is None else _one(read(f.status)))


def _status_labelled(
    name: str, help: str, label: str, read: Callable[[StatusDocument], Iterable[tuple[str, float | bool]]]
) -> MetricSpec:
    """One sample per label value the core's status document names."""

    def samples(f: Figures) -> Samples:
        if f.status is None:
            return ()
        return [((value,), float(number)) for value, number in read(f.status)]

    return MetricSpec(name, "gauge", help, (label,), True, samples)


def _status_histogram(name: str, help: str, read: Callable[[StatusDocument], HistogramSummary | None]) -> MetricSpec:
    def histograms(f: Figures) -> HistogramSamples:
        histogram = None if f.status is None else read(f.status)
        return () if histogram is None else (((), histogram),)

    return MetricSpec(name, "histogram", help, (), True, histograms=histograms)


def _module(
    name: str, help: str, read: Callable[[ModuleSummary], float | bool | None], kind: Kind = "gauge"
) -> MetricSpec:
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

    return MetricSpec(name, kind, help, ("role",), True, samples)


def _module_rtt(f: Figures) -> HistogramSamples:
    if f.status is None:
        return ()
    return [((role,), m["rtt_histogram"]) for role, m in sorted(f.status["modules"].items()) if "rtt_histogram" in m]


def _store(key: str, help: str, kind: Kind = "gauge") -> MetricSpec:
    name = f"oht_store_{key}_total" if kind == "counter" else f"oht_store_{key}"
    return _gateway(name, help, lambda f: f.store_stats.get(key), kind)


def _readings(name: str, help: str, label: str | None, read: Callable[[StoreReadings], Samples | None]) -> MetricSpec:
    """A figure the gateway read from the database for this scrape; absent if it was not read."""

    def samples(f: Figures) -> Samples:
        out = None if f.readings is None else read(f.readings)
        return () if out is None else out

    kind: Kind = "counter" if name.endswith("_total") else "gauge"
    return MetricSpec(name, kind, help, () if label is None else (label,), False, samples)


def _outbox(read: Callable[[list[StreamBacklog]], float]) -> Callable[[StoreReadings], Samples | None]:
    """Per class (critical, normal, bulk), over the class's streams; every class has a sample."""

    def samples(r: StoreReadings) -> Samples | None:
        if r.outbox is None:
            return None
        return [((cls.value,), read([b for b in r.outbox if b.cls is cls])) for cls in StreamClass]

    return samples


def _oldest_age(backlogs: list[StreamBacklog]) -> float:
    ages = [b.oldest_age_s for b in backlogs if b.oldest_age_s is not None]
    return max(ages, default=0.0)


def _commands(read: Callable[[Mapping[str, int]], Samples]) -> Callable[[StoreReadings], Samples | None]:
    return lambda r: None if r.commands is None else read(r.commands)


# The agent's figures in /metrics: each name is declared here, with what it reads. A renamed
# status key is a type error here, never a silently renamed metric.
METRICS: tuple[MetricSpec, ...] = (
    # -- the gateway's own figures
    _gateway("oht_core_connected", "1 while the gateway holds a view of the core", lambda f: f.status is not None),
    _gateway("oht_ready", "1 when the agent is ready (core, bus, mandatory modules, database)", lambda f: f.ready),
    _gateway("oht_alive", "1 while the gateway's own tasks run", lambda f: f.alive),
    _gateway("oht_store_healthy", "1 while the store takes writes", lambda f: f.store_healthy),
    _gateway(
        "oht_upstream_connected",
        "1 while the upstream broker link is up (absent: sync off)",
        lambda f: f.upstream_connected,
    ),
    _store("batches", "Write batches the gateway committed since start", "counter"),
    _store("units", "Units of work the gateway committed since start", "counter"),
    _store("largest_batch", "Most units of work committed in one batch"),
    _store("aborted_batches", "Write batches rolled back since start", "counter"),
    _store("queued", "Units of work waiting for the writer"),
    # -- read from the database at scrape time
    _readings(
        "oht_store_database_bytes",
        "Size of the database file with its write-ahead log",
        None,
        lambda r: _one(r.database_bytes),
    ),
    _readings("oht_commands_queued", "Commands waiting to run", None, _commands(lambda c: _one(c.get("queued")))),
    _readings("oht_commands_running", "Commands running now", None, _commands(lambda c: _one(c.get("running")))),
    _readings(
        "oht_commands_total",
        "Commands finished, by outcome",
        "outcome",
        _commands(lambda c: [((s,), float(c.get(s, 0))) for s in sorted(TERMINAL_STATES)]),
    ),
    _readings(
        "oht_outbox_records",
        "Records waiting for upstream acknowledgement, by class",
        "class",
        _outbox(lambda b: float(sum(x.unacked for x in b))),
    ),
    _readings(
        "oht_outbox_bytes",
        "Approximate bytes waiting in the outbox, by class",
        "class",
        _outbox(lambda b: float(sum(x.bytes for x in b))),
    ),
    _readings(
        "oht_outbox_oldest_age_seconds",
        "Age of the oldest record waiting, by class (0: none)",
        "class",
        _outbox(_oldest_age),
    ),
    # -- the core's status document
    _status("oht_status_ready", "1 when the core reports itself ready", lambda s: s["ready"]),
    _status("oht_status_not_ready_reasons", "Reasons the core is not ready", lambda s: len(s["ready_reasons"])),
    _status("oht_status_uptime_seconds", "Seconds since the core started", lambda s: s["uptime_s"]),
    _status_labelled(
        "oht_state",
        "1 for the state the robot is in, 0 for the others",
        "state",
        lambda s: [(st.value, st.value == s["state"]) for st in State],
    ),
    _status_labelled(
        "oht_fault_latched",
        "1 for each latched fault, by code (cleared only by a reset)",
        "code",
        lambda s: sorted({(f["code"], 1) for f in s["verdict"]["faults"] if f["latched"]}),
    ),
    _status(
        "oht_status_verdict_speed_factor",
        "Speed factor allowed (0-1)",
        lambda s: s["verdict"]["speed_factor"],
    ),
    _status("oht_status_verdict_estop_input", "1 while E-stop input is on", lambda s: s["verdict"]["estop_input"]),
    _status("oht_status_verdict_faults", "Active safety faults", lambda s: len(s["verdict"]["faults"])),
    _status("oht_status_bus_port_up", "1 while the serial port is open", lambda s: s["bus"]["port_up"]),
    _status("oht_status_bus_queue_depth", "Bus requests waiting", lambda s: s["bus"]["queue_depth"]),
    _status("oht_status_bus_reconnects_total", "Serial port reconnects", lambda s: s["bus"]["reconnects"], "counter"),
    _status("oht_status_bus_port_losses_total", "Serial port losses", lambda s: s["bus"]["port_losses"], "counter"),
    _status(
        "oht_status_bus_garbage_bytes_total", "Bytes that were no frame", lambda s: s["bus"]["garbage_bytes"], "counter"
    ),
    _status(
        "oht_status_bus_poll_overruns_total",
        "Polls that could not run on time",
        lambda s: s["bus"]["poll_overruns"],
        "counter",
    ),
    _status(
        "oht_status_bus_queue_rejected_total",
        "Requests refused: queue full",
        lambda s: s["bus"]["queue_rejected"],
        "counter",
    ),
    _status("oht_status_store_ok", "1 while the core's store takes writes", lambda s: s["store"]["ok"]),
    _status(
        "oht_store_start_interrupted_commands",
        "Commands found running when the core opened the store",
        lambda s: s["store_start"]["interrupted_commands"],
    ),
    _status(
        "oht_store_start_corrupt_recovered",
        "1 if the core found the database corrupt and started a fresh one",
        lambda s: s["store_start"]["corrupt_recovered"],
    ),
    _status(
        "oht_status_logs_dropped_lines_total",
        "Log lines dropped since start",
        lambda s: s["logs"]["dropped_lines"],
        "counter",
    ),
    _status("oht_status_loop_period_seconds", "Control loop period", lambda s: _ms(s["loop"]["period_ms"])),
    _status("oht_status_loop_lag_p99_seconds", "Loop lateness, recent p99", lambda s: _ms(s["loop"]["lag_p99_ms"])),
    _status("oht_status_loop_lag_max_seconds", "Loop lateness, recent worst", lambda s: _ms(s["loop"]["lag_max_ms"])),
    _status("oht_status_loop_ticks_total", "Control loop ticks since start", lambda s: s["loop"]["ticks"], "counter"),
    _status_histogram(
        "oht_status_loop_lag_seconds", "How late each control loop tick ran", lambda s: s["loop"]["lag_histogram"]
    ),
    _status(
        "oht_status_last_stop_confirm_seconds",
        "Time the last stop took to be confirmed on the bus",
        lambda s: None if s["last_stop"] is None else _ms(s["last_stop"]["confirm_ms"]),
    ),
    _status("oht_estop_confirmed_total", "E-stops confirmed on the bus", lambda s: s["estop"]["confirmed"], "counter"),
    _status(
        "oht_estop_unconfirmed_total",
        "E-stops not confirmed in time (use the hardware E-stop)",
        lambda s: s["estop"]["unconfirmed"],
        "counter",
    ),
    _status_histogram(
        "oht_estop_confirm_seconds",
        "Time from an E-stop request to its read-back on the bus",
        lambda s: s["estop"]["confirm_histogram"],
    ),
    _module("oht_status_module_online", "1 while the module answers", lambda m: m["online"]),
    _module("oht_status_module_fresh", "1 while the module's values are fresh", lambda m: m["quality"] == "fresh"),
    _module("oht_status_module_rtt_p50_seconds", "Round-trip time, recent median", lambda m: _ms(m.get("rtt_p50_ms"))),
    _module("oht_status_module_rtt_p99_seconds", "Round-trip time, recent p99", lambda m: _ms(m.get("rtt_p99_ms"))),
    MetricSpec(
        "oht_status_module_rtt_seconds",
        "histogram",
        "Round-trip time of each answered request",
        ("role",),
        True,
        histograms=_module_rtt,
    ),
    _module(
        "oht_status_module_transactions_total",
        "Requests put on the wire (retries included)",
        lambda m: m.get("transactions"),
        "counter",
    ),
    _module("oht_status_module_timeouts_total", "Requests without an answer", lambda m: m.get("timeouts"), "counter"),
    _module("oht_status_module_crc_errors_total", "Answers with a bad CRC", lambda m: m.get("crc_errors"), "counter"),
    _module("oht_status_module_success_ratio", "Answered attempts / attempts", lambda m: m.get("success_rate")),
    _module(
        "oht_status_module_late_dropped_total",
        "Late replies recognised and dropped",
        lambda m: m.get("late_dropped"),
        "counter",
    ),
    _module(
        "oht_status_module_mismatched_total", "Frames that matched no request", lambda m: m.get("mismatched"), "counter"
    ),
    _module(
        "oht_status_module_fences_total", "Fence reads sent to flush late replies", lambda m: m.get("fences"), "counter"
    ),
    _module(
        "oht_status_module_set_aside_total", "Times the module was set aside", lambda m: m.get("set_aside"), "counter"
    ),
    _module(
        "oht_status_module_missed_ticks_total",
        "Polls that missed their tick",
        lambda m: m.get("missed_ticks"),
        "counter",
    ),
)


def _family(spec: MetricSpec) -> GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily:
    labels = list(spec.labels)
    if spec.kind == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=labels)  # writes `<name>` with its `_total`
    if spec.kind == "histogram":
        return HistogramMetricFamily(spec.name, spec.help, labels=labels)
    return GaugeMetricFamily(spec.name, spec.help, labels=labels)


def _buckets(histogram: HistogramSummary) -> list[tuple[str, float]]:
    bounds = [(repr(float(le)), float(n)) for le, n in zip(histogram["le"], histogram["counts"], strict=True)]
    return [*bounds, ("+Inf", float(histogram["count"]))]


class _FiguresCollector(Collector):
    """Reads the agent's figures at scrape time and exposes the `METRICS` table."""

    def __init__(self, figures: Callable[[], Figures]) -> None:
        self._figures = figures
        self.upstream: Callable[[], bool | None] = lambda: None
        self.readings: StoreReadings | None = None  # set by `ApiMetrics.render` for one scrape

    def collect(self) -> Iterator[Metric]:
        try:
            figures: Figures | None = dataclasses.replace(
                self._figures(), upstream_connected=self.upstream(), readings=self.readings
            )
        except Exception:
            log.exception("collecting status metrics failed")
            figures = None
        for spec in METRICS:
            family = _family(spec)
            if figures is not None:
                try:
                    self._add(spec, family, figures)
                except (KeyError, TypeError, ValueError):  # a core of another release: skip, keep the rest
                    log.exception("metric %s could not be read", spec.name)
            yield family

    @staticmethod
    def _add(spec: MetricSpec, family: Metric, figures: Figures) -> None:
        if isinstance(family, HistogramMetricFamily):
            for labels, histogram in spec.histograms(figures):
                family.add_metric(list(labels), _buckets(histogram), float(histogram["sum"]))
        else:
            assert isinstance(family, GaugeMetricFamily | CounterMetricFamily)
            for labels, value in spec.samples(figures):
                family.add_metric(list(labels), value)


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
        self._collector = _FiguresCollector(figures)
        self.registry.register(self._collector)
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

    def watch_upstream(self, connected: Callable[[], bool | None]) -> None:
        """Where `oht_upstream_connected` is read (set once upstream sync has started)."""
        self._collector.upstream = connected

    def render(self, readings: StoreReadings | None = None) -> bytes:
        """The exposition; `readings` are what the caller read from the database for this scrape.
        Synchronous from here to the end, so no other scrape sees them."""
        self._collector.readings = readings
        try:
            return generate_latest(self.registry)
        finally:
            self._collector.readings = None
