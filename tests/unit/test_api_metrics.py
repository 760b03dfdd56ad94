"""/metrics: the exposition parses, and its metric names are exactly the committed list below.

A metric name is part of the agent's interface (dashboards and alerts name it), so renaming one
must show up here as a diff, never happen through a renamed status key.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from agent.api.metrics import METRICS, ApiMetrics, Figures
from agent.control.status_view import ModuleSummary, StatusDocument
from drivers.modbus.stats import SlaveStats

METRIC_NAMES = """
oht_alive
oht_api_auth_failures
oht_api_request_duration_seconds
oht_api_requests
oht_api_stream_clients
oht_api_stream_closed_slow
oht_core_connected
oht_ready
oht_status_bus_garbage_bytes
oht_status_bus_poll_overruns
oht_status_bus_port_losses
oht_status_bus_port_up
oht_status_bus_queue_depth
oht_status_bus_queue_rejected
oht_status_bus_reconnects
oht_status_last_stop_confirm_ms
oht_status_logs_dropped_lines
oht_status_loop_lag_max_ms
oht_status_loop_lag_p99_ms
oht_status_loop_period_ms
oht_status_loop_ticks
oht_status_module_crc_errors
oht_status_module_fences
oht_status_module_fresh
oht_status_module_late_dropped
oht_status_module_mismatched
oht_status_module_missed_ticks
oht_status_module_online
oht_status_module_rtt_p50_ms
oht_status_module_rtt_p99_ms
oht_status_module_set_aside
oht_status_module_success_rate
oht_status_module_timeouts
oht_status_ready
oht_status_ready_reasons_count
oht_status_store_ok
oht_status_uptime_s
oht_status_verdict_estop_input
oht_status_verdict_faults_count
oht_status_verdict_speed_factor
oht_store_aborted_batches
oht_store_batches
oht_store_healthy
oht_store_largest_batch
oht_store_queued
oht_store_units
""".split()


def _module(**link: float) -> ModuleSummary:
    summary: ModuleSummary = {
        "address": 5,
        "profile": "safe-fw",
        "quality": "fresh",
        "online": True,
        "last_error": None,
    }
    summary.update(link)  # type: ignore[typeddict-item]
    return summary


def _status() -> StatusDocument:
    stats = SlaveStats(transactions=10, ok=7, late_dropped=2, mismatched=1, fences=3, set_aside=1)
    return {
        "agent_id": "oht-test",
        "state": "IDLE",
        "state_since": "2025-01-01T00:00:00Z",
        "verdict": {"level": "ok", "speed_factor": 0.5, "estop_input": False, "faults": []},
        "ready": True,
        "ready_reasons": [],
        "bus": {
            "port": "/dev/ttyS1",
            "port_up": True,
            "queue_depth": 0,
            "reconnects": 1,
            "port_losses": 0,
            "garbage_bytes": 0,
            "poll_overruns": 0,
            "queue_rejected": 0,
        },
        "modules": {"safety": _module(**stats.summary()), "dock": _module()},  # type: ignore[arg-type]
        "command": None,
        "last_stop": None,
        "store": {"ok": True},
        "logs": {"dropped_lines": 4},
        "loop": {"period_ms": 20.0, "lag_p99_ms": 1.5, "lag_max_ms": 3.0, "ticks": 100},
        "uptime_s": 12.5,
    }


def _scrape(figures: Figures) -> dict[str, list[tuple[dict[str, str], float]]]:
    metrics = ApiMetrics(lambda: figures)
    metrics.observe_request("GET", None, 200, 0.01)
    metrics.auth_failures.labels(code="AUTH_REQUIRED").inc()
    text = metrics.render().decode()
    families = text_string_to_metric_families(text)
    # prometheus_client writes a `<name>_created` timestamp beside each counter and histogram:
    # it follows its metric's name, so it is left out of the list.
    return {f.name: [(s.labels, s.value) for s in f.samples] for f in families if not f.name.endswith("_created")}


def test_the_exposition_parses_and_names_exactly_the_committed_metrics() -> None:
    figures = Figures(status=_status(), ready=True, alive=True, store_stats={"batches": 3}, store_healthy=True)
    families = _scrape(figures)
    assert sorted(families) == sorted(METRIC_NAMES)
    assert families["oht_status_logs_dropped_lines"] == [({}, 4.0)]
    assert families["oht_status_verdict_speed_factor"] == [({}, 0.5)]
    assert families["oht_store_batches"] == [({}, 3.0)]
    # Per module, labelled by role; a figure the module does not have yet is no sample.
    assert families["oht_status_module_late_dropped"] == [({"role": "safety"}, 2.0)]
    assert families["oht_status_module_fences"] == [({"role": "safety"}, 3.0)]
    assert families["oht_status_module_online"] == [({"role": "dock"}, 1.0), ({"role": "safety"}, 1.0)]


def test_while_the_core_is_away_only_the_gateway_figures_have_samples() -> None:
    figures = Figures(status=None, ready=False, alive=True, store_stats={}, store_healthy=True)
    families = _scrape(figures)
    assert sorted(families) == sorted(METRIC_NAMES)
    assert families["oht_core_connected"] == [({}, 0.0)]
    assert families["oht_ready"] == [({}, 0.0)]
    assert all(not families[spec.name] for spec in METRICS if spec.name.startswith("oht_status_"))
