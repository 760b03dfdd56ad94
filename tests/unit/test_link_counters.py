"""Late, mismatched and fenced replies are counted per module where the status and /metrics read them."""

from __future__ import annotations

from agent.api.metrics import flatten_status
from drivers.modbus.stats import SlaveStats


def test_per_module_reply_counters_reach_the_status_and_metrics() -> None:
    stats = SlaveStats(transactions=10, ok=7, late_dropped=2, mismatched=1, fences=3, set_aside=1)
    summary = stats.summary()  # what BusMaster.link_summary gives the status document per module
    assert (summary["late_dropped"], summary["mismatched"], summary["fences"], summary["set_aside"]) == (2, 1, 3, 1)
    metrics = flatten_status({"modules": {"safety": summary}})
    assert metrics["oht_status_modules_safety_late_dropped"] == 2
    assert metrics["oht_status_modules_safety_mismatched"] == 1
    assert metrics["oht_status_modules_safety_fences"] == 3
