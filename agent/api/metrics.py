"""Prometheus metrics of the API and of whatever the core's status exposes as numbers.

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
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE",
    "KNOWN_METHODS",
    "OTHER",
    "UNMATCHED",
    "ApiMetrics",
    "flatten_status",
    "method_label",
    "status_label",
]

log = logging.getLogger("oht.api")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME_RE = re.compile(r"[^a-zA-Z0-9_]")
_MAX_DEPTH = 4
_MAX_SERIES = 500

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"  # any method or status outside the fixed sets
UNMATCHED = "unmatched"  # any path that is not one of the app's routes


def method_label(method: str) -> str:
    """The method as a label: one of KNOWN_METHODS (compared exactly: methods are case-sensitive), else `other`."""
    return method if method in KNOWN_METHODS else OTHER


def status_label(status: object) -> str:
    """An HTTP status the app answered with as a label; anything but an int in 100-599 is `other`."""
    return str(status) if isinstance(status, int) and 100 <= status <= 599 else OTHER


def _name(parts: list[str]) -> str:
    return _NAME_RE.sub("_", "_".join(parts)).strip("_").lower()


def flatten_status(status: Any, prefix: str = "oht_status") -> dict[str, float]:
    """Numeric leaves of a status document as metric names: bools as 0/1, lists as counts."""
    out: dict[str, float] = {}

    def walk(value: Any, path: list[str], depth: int) -> None:
        if len(out) >= _MAX_SERIES or depth > _MAX_DEPTH:
            return
        if isinstance(value, bool):
            out.setdefault(_name(path), 1.0 if value else 0.0)
        elif isinstance(value, int | float):
            if math.isfinite(value):
                out.setdefault(_name(path), float(value))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, [*path, str(key)], depth + 1)
        elif isinstance(value, list | tuple):
            out.setdefault(_name([*path, "count"]), float(len(value)))

    walk(status, [prefix], 0)
    return out


class _CoreCollector(Collector):
    """Reads the core's status, readiness and the store's counters at scrape time."""

    def __init__(self, sources: Callable[[], dict[str, Any]]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        try:
            values = self._sources()
        except Exception:
            log.exception("collecting status metrics failed")
            values = {}
        for name, value in sorted(values.items()):
            family = GaugeMetricFamily(name, f"{name} (from the agent's status)")
            family.add_metric([], value)
            yield family


class ApiMetrics:
    def __init__(self, sources: Callable[[], dict[str, Any]]) -> None:
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
        self.registry.register(_CoreCollector(sources))
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
