"""The request metrics' labels: whatever a caller sends, each label takes one of a fixed set of values."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.api.metrics import KNOWN_METHODS, OTHER, UNMATCHED, ApiMetrics, Figures, method_label, status_label

TEMPLATES = ("/api/v1/status", "/api/v1/modules/{name}", "/metrics")


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60) | st.sampled_from(sorted(KNOWN_METHODS)))
def test_a_method_label_is_a_known_method_or_other(method: str) -> None:
    label = method_label(method)
    assert label in KNOWN_METHODS | {OTHER}
    assert (label == method) is (method in KNOWN_METHODS)


@settings(max_examples=100, deadline=None)
@given(st.integers(-(10**6), 10**6) | st.text(max_size=6) | st.none())
def test_a_status_label_is_three_digits_or_other(status: object) -> None:
    label = status_label(status)
    assert label == OTHER or (len(label) == 3 and label.isdigit() and label[0] in "12345")


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60) | st.sampled_from(TEMPLATES) | st.none())
def test_a_route_label_is_a_template_of_the_app_or_unmatched(path: str | None) -> None:
    metrics = ApiMetrics(lambda: Figures(status=None, ready=False, alive=True, store_stats={}, store_healthy=True))
    metrics.know_routes(TEMPLATES)
    label = metrics.route_label(path)
    assert label == (path if path in TEMPLATES else UNMATCHED)
