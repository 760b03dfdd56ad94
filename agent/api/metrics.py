"""Prometheus metrics of the API and of whatever the core's status exposes as numbers.

One registry per app (not the process-global one), so two apps in one process (tests, the
benchmark) never share counters. Request metrics are labelled by route template, never by raw
path, so an attacker probing random URLs cannot blow up the number of series.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "ApiMetrics", "flatten_status"]

log = logging.getLogger("agent.api")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME_RE = re.compile(r"[^a-zA-Z0-9_]")
_MAX_DEPTH = 4
_MAX_SERIES = 500


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
        except Exception:  # noqa: BLE001 - a scrape must not fail because the core hiccuped
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
