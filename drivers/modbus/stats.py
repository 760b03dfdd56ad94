"""Per-slave link statistics: counters, a bounded window of round-trip times for p50/p99, and
fixed-bound histograms that /metrics exports as Prometheus histograms."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field

from typing_extensions import TypedDict  # pydantic reads it into the status schema (Python 3.11)

# Upper bounds in seconds (Prometheus `le`). Few and fixed: every bucket travels in each status
# document the core publishes (several times a second) and is a series in every scrape. A reply
# on RS485 takes a few ms at 115200 baud and tens of ms at 9600; past 0.5 s it is a timeout.
RTT_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no samples."""
    return ranked(sorted(samples), q)


def ranked(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of samples already sorted ascending; 0.0 for none."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class HistogramSummary(TypedDict):
    """A histogram as Prometheus reads it: `counts[i]` observations <= `le[i]` (cumulative),
    `count` all of them (the +Inf bucket), `sum` their total in seconds."""

    le: list[float]
    counts: list[int]
    sum: float
    count: int


class Buckets:
    """Observations counted into fixed upper bounds: constant memory, one bisect per observation."""

    __slots__ = ("_counts", "bounds", "count", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("bucket bounds must be distinct and ascending")
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self.bounds, value)] += 1  # `le` is inclusive: value == bound counts there
        self.count += 1
        self.total += value

    def summary(self) -> HistogramSummary:
        cumulative, running = [], 0
        for n in self._counts[:-1]:
            running += n
            cumulative.append(running)
        return {"le": list(self.bounds), "counts": cumulative, "sum": round(self.total, 6), "count": self.count}


@dataclass
class SlaveStats:
    transactions: int = 0  # attempts put on the wire
    ok: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    exceptions: int = 0
    mismatched: int = 0  # valid frames that answered nothing we asked
    late_dropped: int = 0  # late replies to earlier, timed-out requests, recognised and dropped
    retries: int = 0
    fences: int = 0  # extra reads sent to flush a slave's late replies before an identical request
    set_aside: int = 0  # times the slave was set aside after repeated failures
    preempted: int = 0  # overdue reads abandoned so that a queued stop could go out
    missed_ticks: int = 0  # phase-locked polls answered a service tick late (sent too late for theirs)
    last_ok_at: float | None = None
    rtt_window: deque[float] = field(default_factory=lambda: deque(maxlen=2048))
    rtt_recorded: int = 0  # samples ever recorded: tells whether the window changed
    _rtt_cache: tuple[int, float, float] = (0, 0.0, 0.0)  # (rtt_recorded, p50, p99) last worked out
    rtt_histogram: Buckets = field(default_factory=lambda: Buckets(RTT_BUCKETS_S))  # since start, for /metrics

    def record_rtt(self, seconds: float) -> None:
        self.rtt_window.append(seconds)
        self.rtt_recorded += 1
        self.rtt_histogram.observe(seconds)

    def rtt_percentiles(self) -> tuple[float, float]:
        """(p50, p99) of the window in seconds. Status pages ask for these far more often than
        the window changes, so one sort serves both and is reused until a new sample comes."""
        if self._rtt_cache[0] != self.rtt_recorded:
            ordered = sorted(self.rtt_window)
            self._rtt_cache = (self.rtt_recorded, ranked(ordered, 50), ranked(ordered, 99))
        return self._rtt_cache[1], self._rtt_cache[2]

    def summary(self) -> dict[str, float | int | HistogramSummary | None]:
        """The link health a status page shows per module."""
        p50, p99 = self.rtt_percentiles()
        return {
            "transactions": self.transactions,
            "rtt_histogram": self.rtt_histogram.summary(),
            "rtt_p50_ms": round(p50 * 1000, 3),
            "rtt_p99_ms": round(p99 * 1000, 3),
            "timeouts": self.timeouts,
            "crc_errors": self.crc_errors,
            "success_rate": round(self.ok / self.transactions, 4) if self.transactions else None,
            # replies that answered nothing asked now: late ones recognised and dropped, frames
            # that matched no request, and the fence reads sent to flush them
            "late_dropped": self.late_dropped,
            "mismatched": self.mismatched,
            "fences": self.fences,
            "set_aside": self.set_aside,
            "missed_ticks": self.missed_ticks,
        }

    def as_dict(self) -> dict[str, float | int | HistogramSummary | None]:
        return {
            "ok": self.ok,
            "exceptions": self.exceptions,
            "retries": self.retries,
            "preempted": self.preempted,
            **self.summary(),
        }


@dataclass
class BusStats:
    reconnects: int = 0
    port_losses: int = 0
    garbage_bytes: int = 0
    poll_overruns: int = 0
    queue_rejected: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "reconnects": self.reconnects,
            "port_losses": self.port_losses,
            "garbage_bytes": self.garbage_bytes,
            "poll_overruns": self.poll_overruns,
            "queue_rejected": self.queue_rejected,
        }
