"""Late, mismatched and fenced replies are counted per module where the status and /metrics read them."""

from __future__ import annotations

from agent.api.metrics import METRICS, Figures
from agent.control.status_view import ModuleSummary
from drivers.modbus.stats import SlaveStats


def test_per_module_reply_counters_reach_the_status_and_metrics() -> None:
    stats = SlaveStats(transactions=10, ok=7, late_dropped=2, mismatched=1, fences=3, set_aside=1)
    summary = stats.summary()  # what BusMaster.link_summary gives the status document per module
    assert (summary["late_dropped"], summary["mismatched"], summary["fences"], summary["set_aside"]) == (2, 1, 3, 1)
    module: ModuleSummary = {"address": 5, "profile": "p", "quality": "fresh", "online": True, "last_error": None}
    module.update(summary)  # type: ignore[typeddict-item]
    status = {"modules": {"safety": module}}
    figures = Figures(status=status, ready=True, alive=True, store_stats={}, store_healthy=True)  # type: ignore[arg-type]
    samples = {spec.name: list(spec.samples(figures)) for spec in METRICS if spec.labels == ("role",)}
    assert samples["oht_status_module_late_dropped_total"] == [(("safety",), 2.0)]
    assert samples["oht_status_module_mismatched_total"] == [(("safety",), 1.0)]
    assert samples["oht_status_module_fences_total"] == [(("safety",), 3.0)]
