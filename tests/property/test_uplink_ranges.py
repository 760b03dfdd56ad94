"""The sender's reading of holes in a stream: the ranges it asks gap records for."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from agent.sync.uplink import missing_ranges


@dataclass(frozen=True)
class Seq:
    seq: int


@given(after=st.integers(0, 50), kept=st.sets(st.integers(1, 200)))
def test_missing_ranges_are_exactly_the_seqs_not_read(after: int, kept: set[int]) -> None:
    records = [Seq(s) for s in sorted(s for s in kept if s > after)]
    ranges = missing_ranges(after, records)
    missing = {s for low, high in ranges for s in range(low, high + 1)}
    last = records[-1].seq if records else after
    assert missing == set(range(after + 1, last + 1)) - kept  # every hole, nothing else
    assert all(low <= high for low, high in ranges)
    assert all(a[1] + 1 < b[0] for a, b in pairwise(ranges))  # sorted, disjoint, apart
