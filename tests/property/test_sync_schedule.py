"""The send schedule: higher classes first, no class starved beyond the guard, stream order kept,
and telemetry coalesced to the newest sample per (source, key) with every seq accounted for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.store.streams import STREAM_BY_NAME, STREAMS
from agent.sync.schedule import Scheduler, coalesce

NAMES = [s.name for s in STREAMS]
RANK = {s.name: s.policy.rank for s in STREAMS}

# Which streams have something to send before each batch, in stretches of up to 40 batches (a
# backlog lasts a while, so the guard is reached).
readiness = st.lists(
    st.tuples(st.frozensets(st.sampled_from(NAMES)), st.integers(min_value=1, max_value=40)), min_size=1, max_size=12
).map(lambda runs: [ready for ready, times in runs for _ in range(times)])
guards = st.integers(min_value=1, max_value=6)


def run(scheduler: Scheduler, trace: list[frozenset[str]]) -> list[str | None]:
    return [scheduler.choose(ready) for ready in trace]


@settings(max_examples=150, deadline=None)
@given(readiness, guards)
def test_a_class_with_a_backlog_is_never_passed_over_more_than_the_bound(
    trace: list[frozenset[str]], guard: int
) -> None:
    scheduler = Scheduler(guard=guard)
    picks = run(scheduler, trace)
    for cls in {s.cls for s in STREAMS}:
        passed = 0
        for ready, pick in zip(trace, picks, strict=True):
            if not any(STREAM_BY_NAME[n].cls is cls for n in ready):
                passed = 0
            elif pick is not None and STREAM_BY_NAME[pick].cls is cls:
                passed = 0
            else:
                passed += 1
                assert passed <= scheduler.bound, f"{cls} waited {passed} batches with records to send"


@settings(max_examples=150, deadline=None)
@given(readiness, guards)
def test_a_lower_class_goes_first_only_after_guard_batches_of_higher_ones(
    trace: list[frozenset[str]], guard: int
) -> None:
    picks = run(Scheduler(guard=guard), trace)
    for i, (ready, pick) in enumerate(zip(trace, picks, strict=True)):
        if not ready:
            assert pick is None
            continue
        assert pick in ready
        best = min(RANK[n] for n in ready)
        if RANK[pick] == best:
            continue
        # Passed over: count the batches of higher classes it waited through, with records to send.
        waited, j = 0, i - 1
        while j >= 0 and any(RANK[n] == RANK[pick] for n in trace[j]):
            before = picks[j]
            assert before is not None
            if RANK[before] == RANK[pick]:
                break
            waited += RANK[before] < RANK[pick]
            j -= 1
        assert waited >= guard, f"{pick} went before rank {best} after only {waited} higher batches"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(NAMES), max_size=120), st.integers(min_value=1, max_value=7), guards)
def test_batches_are_prefixes_so_each_stream_keeps_its_order(arrivals: list[str], limit: int, guard: int) -> None:
    queues: dict[str, list[int]] = {n: [] for n in NAMES}
    for seq_source, name in enumerate(arrivals):
        queues[name].append(seq_source)
    expected = {n: list(q) for n, q in queues.items()}
    sent: dict[str, list[int]] = {n: [] for n in NAMES}
    scheduler = Scheduler(guard=guard)
    while (chosen := scheduler.next_batch(queues, limit)) is not None:
        name, batch = chosen
        assert 1 <= len(batch) <= limit and batch == queues[name][: len(batch)]
        sent[name] += batch
        del queues[name][: len(batch)]
    assert sent == expected


def test_streams_of_one_class_take_turns() -> None:
    scheduler = Scheduler(guard=3)
    picks = [scheduler.choose({"results", "alarms"}) for _ in range(6)]
    assert picks == ["results", "alarms"] * 3
    assert scheduler.choose(set()) is None
    with pytest.raises(ValueError):
        scheduler.choose({"nowhere"})


@dataclass(frozen=True)
class Rec:
    seq: int
    kind: str
    payload: Any


samples = st.lists(
    st.tuples(
        st.sampled_from(["telemetry", "telemetry", "gap"]),
        st.one_of(
            st.fixed_dictionaries(
                {"source": st.sampled_from(["m1", "m2"]), "key": st.sampled_from(["a", "b"]), "v": st.integers()}
            ),
            st.fixed_dictionaries({"v": st.integers()}),
        ),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(samples)
def test_coalescing_keeps_the_newest_per_key_and_accounts_for_every_record(items: list[tuple[str, Any]]) -> None:
    records = [Rec(seq, kind, payload) for seq, (kind, payload) in enumerate(items, start=1)]
    result = coalesce(records)
    kept = [r.seq for r in result.send]
    assert kept == sorted(kept) and sorted(kept + result.superseded) == [r.seq for r in records]
    newest: dict[tuple[str, str], int] = {}
    for r in records:
        if r.kind == "telemetry" and "source" in r.payload:
            newest[(r.payload["source"], r.payload["key"])] = r.seq
    for r in records:
        keyed = r.kind == "telemetry" and "source" in r.payload
        expect_kept = not keyed or newest[(r.payload["source"], r.payload["key"])] == r.seq
        assert (r.seq in kept) == expect_kept
