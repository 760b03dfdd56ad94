"""/metrics: the exposition parses, its metric names are exactly the committed list below, the
histograms are real Prometheus histograms, and docs/metrics.md names every metric with its type
and labels.

A metric name is part of the agent's interface (dashboards and alerts name it), so renaming one
must show up here as a diff, never happen through a renamed status key.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from agent.api.metrics import METRICS, ApiMetrics, Figures, StoreReadings
from agent.control.states import State
from agent.control.status_view import EstopTally, LagWindow, ModuleSummary, StatusDocument
from agent.store.outbox import StreamBacklog
from agent.store.streams import StreamClass
from drivers.modbus.stats import Buckets, SlaveStats

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"

# As scraped: a counter with its `_total`, a histogram by its base name.
METRIC_NAMES = """
oht_alive
oht_api_auth_failures_total
oht_api_request_duration_seconds
oht_api_requests_total
oht_api_stream_clients
oht_api_stream_closed_slow_total
oht_commands_queued
oht_commands_running
oht_commands_total
oht_core_connected
oht_estop_confirm_seconds
oht_estop_confirmed_total
oht_estop_unconfirmed_total
oht_fault_latched
oht_outbox_bytes
oht_outbox_oldest_age_seconds
oht_outbox_records
oht_ready
oht_state
oht_status_bus_garbage_bytes_total
oht_status_bus_poll_overruns_total
oht_status_bus_port_losses_total
oht_status_bus_port_up
oht_status_bus_queue_depth
oht_status_bus_queue_rejected_total
oht_status_bus_reconnects_total
oht_status_last_stop_confirm_seconds
oht_status_logs_dropped_lines_total
oht_status_loop_lag_max_seconds
oht_status_loop_lag_p99_seconds
oht_status_loop_lag_seconds
oht_status_loop_period_seconds
oht_status_loop_ticks_total
oht_status_module_crc_errors_total
oht_status_module_fences_total
oht_status_module_fresh
oht_status_module_late_dropped_total
oht_status_module_mismatched_total
oht_status_module_missed_ticks_total
oht_status_module_online
oht_status_module_rtt_p50_seconds
oht_status_module_rtt_p99_seconds
oht_status_module_rtt_seconds
oht_status_module_set_aside_total
oht_status_module_success_ratio
oht_status_module_timeouts_total
oht_status_module_transactions_total
oht_status_not_ready_reasons
oht_status_ready
oht_status_store_ok
oht_status_uptime_seconds
oht_status_verdict_estop_input
oht_status_verdict_faults
oht_status_verdict_speed_factor
oht_store_aborted_batches_total
oht_store_batches_total
oht_store_database_bytes
oht_store_healthy
oht_store_largest_batch
oht_store_queued
oht_store_start_corrupt_recovered
oht_store_start_interrupted_commands
oht_store_units_total
oht_upstream_connected
""".split()

HISTOGRAMS = {"oht_status_module_rtt_seconds", "oht_status_loop_lag_seconds", "oht_estop_confirm_seconds"}


def _module(**link: object) -> ModuleSummary:
    summary: ModuleSummary = {
        "address": 5,
        "profile": "safe-fw",
        "quality": "fresh",
        "online": True,
        "last_error": None,
    }
    summary.update(link)  # type: ignore[typeddict-item]
    return summary


def _fault(code: str, *, latched: bool) -> dict[str, object]:
    return {"code": code, "level": "fault", "latched": latched, "cause_present": False,
            "since": "2025-01-01T00:00:00Z", "detail": "", "hint": ""}  # fmt: skip


def _status() -> StatusDocument:
    stats = SlaveStats(transactions=10, ok=7, late_dropped=2, mismatched=1, fences=3, set_aside=1, timeouts=3)
    for seconds in (0.004, 0.005, 0.03, 0.9):
        stats.record_rtt(seconds)
    loop = LagWindow(0.02)
    for lag in (0.0, 0.0015, 0.003):
        loop.add(lag)
    estops = EstopTally()
    estops.record(True, 40.0)
    estops.record(False, None)
    return {
        "agent_id": "oht-test",
        "state": "IDLE",
        "state_since": "2025-01-01T00:00:00Z",
        "verdict": {
            "level": "fault",
            "speed_factor": 0.5,
            "estop_input": False,
            "faults": [_fault("SAFETY_ZONE", latched=True), _fault("LOOP_LAG", latched=False)],  # type: ignore[list-item]
        },
        "ready": True,
        "ready_reasons": [],
        "bus": {
            "port": "/dev/ttyS1",
            "port_up": True,
            "queue_depth": 0,
            "reconnects": 1,
            "port_losses": 0,
            "garbage_bytes": 0,
            "poll_overruns": 2,
            "queue_rejected": 0,
        },
        "modules": {"safety": _module(**stats.summary()), "dock": _module()},
        "command": None,
        "last_stop": {"reason": "test", "confirmed": True, "confirm_ms": 25.0, "error": None},
        "store": {"ok": True},
        "store_start": {"interrupted_commands": 1, "corrupt_recovered": False},
        "estop": estops.summary(),
        "logs": {"dropped_lines": 4},
        "loop": loop.summary(),
        "uptime_s": 12.5,
    }


def _backlog(stream: str, cls: StreamClass, unacked: int, age: float | None) -> StreamBacklog:
    return StreamBacklog(stream=stream, cls=cls, last_seq=unacked, acked_seq=0, unacked=unacked, bytes=100 * unacked,
                         oldest_at=None, oldest_age_s=age, overdue=False)  # fmt: skip


READINGS = StoreReadings(
    database_bytes=81920,
    commands={"queued": 2, "running": 1, "succeeded": 5, "failed": 1, "cancelled": 0, "expired": 0, "interrupted": 0},
    outbox=[
        _backlog("results", StreamClass.CRITICAL, 3, 12.0),
        _backlog("alarms", StreamClass.CRITICAL, 1, 40.0),
        _backlog("events", StreamClass.NORMAL, 0, None),
    ],
)

Families = dict[str, tuple[str, list[Sample]]]


def _scrape(figures: Figures, readings: StoreReadings | None = READINGS, *, upstream: bool | None = True) -> Families:
    metrics = ApiMetrics(lambda: figures)
    metrics.watch_upstream(lambda: upstream)
    metrics.observe_request("GET", None, 200, 0.01)
    metrics.auth_failures.labels(code="AUTH_REQUIRED").inc()
    text = metrics.render(readings).decode()
    out: Families = {}
    for f in text_string_to_metric_families(text):
        # prometheus_client writes a `<name>_created` timestamp beside each counter and histogram:
        # it follows its metric's name, so it is left out of the list.
        if f.name.endswith("_created"):
            continue
        samples = [s for s in f.samples if not s.name.endswith("_created")]
        out[f.name + "_total" if f.type == "counter" else f.name] = (f.type, samples)
    return out


def _values(families: Families, name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for s in families[name][1]]


def _full() -> Figures:
    return Figures(status=_status(), ready=True, alive=True, store_stats={"batches": 3}, store_healthy=True)


def test_the_exposition_parses_and_names_exactly_the_committed_metrics() -> None:
    families = _scrape(_full())
    assert sorted(families) == sorted(METRIC_NAMES)
    assert _values(families, "oht_status_logs_dropped_lines_total") == [({}, 4.0)]
    assert _values(families, "oht_status_verdict_speed_factor") == [({}, 0.5)]
    assert _values(families, "oht_store_batches_total") == [({}, 3.0)]
    assert _values(families, "oht_status_loop_period_seconds") == [({}, 0.02)]
    assert _values(families, "oht_status_last_stop_confirm_seconds") == [({}, 0.025)]
    assert _values(families, "oht_upstream_connected") == [({}, 1.0)]
    assert _values(families, "oht_store_database_bytes") == [({}, 81920.0)]
    # Per module, labelled by role; a figure the module does not have yet is no sample.
    assert _values(families, "oht_status_module_late_dropped_total") == [({"role": "safety"}, 2.0)]
    assert _values(families, "oht_status_module_transactions_total") == [({"role": "safety"}, 10.0)]
    assert _values(families, "oht_status_module_online") == [({"role": "dock"}, 1.0), ({"role": "safety"}, 1.0)]


def test_every_metric_has_the_type_its_name_promises() -> None:
    for name, (kind, _samples) in _scrape(_full()).items():
        if name.endswith("_total"):
            assert kind == "counter", name
        elif name in HISTOGRAMS or name == "oht_api_request_duration_seconds":
            assert kind == "histogram", name
        else:
            assert kind == "gauge", name
        assert re.fullmatch(r"oht_[a-z0-9_]+", name), name
        assert not name.endswith(("_count", "_sum", "_bucket", "_ms", "_s")), name


def _le(sample: Sample) -> float:
    return math.inf if sample.labels["le"] == "+Inf" else float(sample.labels["le"])


@pytest.mark.parametrize("name", sorted(HISTOGRAMS))
def test_the_histograms_have_buckets_with_le_a_sum_and_a_count(name: str) -> None:
    kind, samples = _scrape(_full())[name]
    assert kind == "histogram"
    assert {s.name for s in samples} == {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    series = {tuple(sorted((k, v) for k, v in s.labels.items() if k != "le")) for s in samples}
    assert series  # each histogram has observations in the fixture
    for key in series:
        mine = [s for s in samples if tuple(sorted((k, v) for k, v in s.labels.items() if k != "le")) == key]
        buckets = [s for s in mine if s.name.endswith("_bucket")]
        bounds = [_le(s) for s in buckets]
        counts = [s.value for s in buckets]
        assert bounds == sorted(bounds) and bounds[-1] == math.inf
        assert counts == sorted(counts)  # cumulative
        (count,) = [s.value for s in mine if s.name.endswith("_count")]
        assert counts[-1] == count


def test_the_round_trip_histogram_counts_each_recorded_reply_in_its_bucket() -> None:
    samples = _scrape(_full())["oht_status_module_rtt_seconds"][1]
    buckets = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket")}
    assert all(s.labels["role"] == "safety" for s in samples)  # the dock has no replies yet
    assert buckets["0.002"] == 0 and buckets["0.005"] == 2  # 5 ms counts as <= 0.005 (le is inclusive)
    assert buckets["0.05"] == 3 and buckets["0.5"] == 3 and buckets["+Inf"] == 4
    (total,) = [s.value for s in samples if s.name.endswith("_sum")]
    assert total == pytest.approx(0.939)


def test_state_faults_commands_and_outbox_are_labelled_by_value() -> None:
    families = _scrape(_full())
    state = dict((labels["state"], value) for labels, value in _values(families, "oht_state"))
    assert set(state) == {s.value for s in State} and state["IDLE"] == 1 and sum(state.values()) == 1
    # Only the latched fault; the other is counted in oht_status_verdict_faults.
    assert _values(families, "oht_fault_latched") == [({"code": "SAFETY_ZONE"}, 1.0)]
    assert _values(families, "oht_status_verdict_faults") == [({}, 2.0)]
    outcomes = dict((labels["outcome"], value) for labels, value in _values(families, "oht_commands_total"))
    assert outcomes == {"cancelled": 0, "expired": 0, "failed": 1, "interrupted": 0, "succeeded": 5}
    assert _values(families, "oht_commands_queued") == [({}, 2.0)]
    records = dict((labels["class"], value) for labels, value in _values(families, "oht_outbox_records"))
    assert records == {"critical": 4, "normal": 0, "bulk": 0}
    ages = dict((labels["class"], value) for labels, value in _values(families, "oht_outbox_oldest_age_seconds"))
    assert ages == {"critical": 40.0, "normal": 0.0, "bulk": 0.0}
    assert _values(families, "oht_estop_confirmed_total") == [({}, 1.0)]
    assert _values(families, "oht_estop_unconfirmed_total") == [({}, 1.0)]


def test_while_the_core_is_away_only_the_gateway_figures_have_samples() -> None:
    figures = Figures(status=None, ready=False, alive=True, store_stats={}, store_healthy=True)
    families = _scrape(figures, readings=None, upstream=None)
    assert sorted(families) == sorted(METRIC_NAMES)
    assert _values(families, "oht_core_connected") == [({}, 0.0)]
    assert _values(families, "oht_ready") == [({}, 0.0)]
    assert not families["oht_upstream_connected"][1]  # sync off: no sample, not a 0
    assert all(not families[spec.name][1] for spec in METRICS if spec.core or spec.name.startswith("oht_outbox"))


def _documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    """docs/metrics.md's table rows: | `name` | type | `label`, ... | meaning |"""
    rows = {}
    for line in DOCS.read_text().splitlines():
        match = re.match(r"\| `(oht_[a-z0-9_]+)` \| (gauge|counter|histogram) \|([^|]*)\|", line)
        if match:
            labels = tuple(re.findall(r"`([a-z_]+)`", match.group(3)))
            rows[match.group(1)] = (match.group(2), labels)
    return rows


def test_docs_name_every_metric_with_its_type_and_labels() -> None:
    documented = _documented()
    assert sorted(documented) == sorted(METRIC_NAMES)
    families = _scrape(_full())
    for name, (kind, labels) in documented.items():
        assert families[name][0] == kind, name
        for sample in families[name][1]:
            assert set(sample.labels) - {"le"} == set(labels), name


def test_buckets_count_a_value_at_a_bound_in_that_bucket_and_refuse_unsorted_bounds() -> None:
    buckets = Buckets((0.1, 0.2))
    for value in (0.1, 0.15, 0.2, 7.0):
        buckets.observe(value)
    assert buckets.summary() == {"le": [0.1, 0.2], "counts": [1, 3], "sum": 7.45, "count": 4}
    with pytest.raises(ValueError):
        Buckets((0.2, 0.1))
