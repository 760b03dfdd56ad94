"""The cached round-trip percentiles always equal the percentiles of the current window."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.stats import SlaveStats, percentile

# Each step either records a round trip or asks for the percentiles (as a status page would).
steps = st.lists(st.one_of(st.floats(min_value=0.0, max_value=0.5, allow_nan=False), st.none()), max_size=300)


@given(steps)
@settings(max_examples=200, deadline=None)
def test_cached_percentiles_follow_the_window(sequence: list[float | None]) -> None:
    stats = SlaveStats()
    stats.rtt_window = type(stats.rtt_window)(maxlen=64)  # small window: evictions happen often
    for step in sequence:
        if step is None:
            window = list(stats.rtt_window)
            assert stats.rtt_percentiles() == (percentile(window, 50), percentile(window, 99))
        else:
            stats.record_rtt(step)
    window = list(stats.rtt_window)
    figures = stats.as_dict()
    assert figures["rtt_p50_ms"] == round(percentile(window, 50) * 1000, 3)
    assert figures["rtt_p99_ms"] == round(percentile(window, 99) * 1000, 3)
