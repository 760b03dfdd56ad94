"""Properties of module snapshots: a group's quality is always the worst of its values' qualities."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from drivers.snapshots import Quality, Reading, empty_snapshot

NAMES = ("A", "B", "C", "D", "E")
ORDER = {Quality.MISSING: 0, Quality.STALE: 1, Quality.FRESH: 2}

readings = st.dictionaries(
    st.sampled_from(NAMES),
    st.builds(Reading, st.integers(0, 65535), st.floats(0.0, 100.0), st.floats(0.0, 5.0)),
)


@given(
    readings,
    st.lists(st.sampled_from(NAMES), min_size=1, max_size=5, unique=True),
    st.lists(st.floats(0.0, 110.0), min_size=1, max_size=6),
)
def test_group_quality_is_the_worst_of_its_values(
    values: dict[str, Reading], group: list[str], times: list[float]
) -> None:
    """Asked again and again (the answer is kept per snapshot), at any moment, it never differs
    from the value-by-value rule."""
    snap = empty_snapshot("safety", 5, "p").with_readings(values, online=True, error=None, now=0.0)
    names = tuple(group)
    for now in times:
        worst = min((snap.quality(n, now) for n in names), key=ORDER.__getitem__)
        assert snap.overall_quality(names, now) is worst


@given(readings, st.floats(0.0, 110.0))
def test_a_new_reading_is_seen_by_the_group_at_once(values: dict[str, Reading], now: float) -> None:
    snap = empty_snapshot("safety", 5, "p").with_readings(values, online=True, error=None, now=0.0)
    snap.overall_quality(NAMES, now)  # remember the group's answer on the old snapshot
    fresh = {n: Reading(1, now, 1.0) for n in NAMES}
    assert snap.with_readings(fresh, online=True, error=None, now=now).overall_quality(NAMES, now) is Quality.FRESH
