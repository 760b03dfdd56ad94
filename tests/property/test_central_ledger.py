"""The central ledger's acknowledgement is the contiguous prefix, whatever order and copies records come in.

Records (and gap records standing for dropped telemetry ranges) arrive shuffled, duplicated and
in batches of any size; after every batch the ack of each stream must equal the prefix computed
by brute force from what has arrived so far, and so never go backwards or cover a seq that is
neither stored nor inside a stored gap's range.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sync.envelope import Record
from central.ledger import Ledger
from tests.property.test_central_records import AGENT, record_id, signed


def record(stream: str, seq: int, gap: tuple[int, int] | None = None, rid: str | None = None) -> Record:
    """A signed record; `rid` names another record under the same seq (any text: it is made a UUIDv7 shape)."""
    return signed(stream, seq, kind="telemetry", gap=gap, rid=record_id(rid) if rid is not None else None)


@st.composite
def stream_plan(draw: st.DrawFn) -> tuple[int, dict[int, tuple[int, int]]]:
    """n seqs; some ranges dropped, each replaced by a gap record at a later seq that was not dropped."""
    n = draw(st.integers(1, 30))
    gaps: dict[int, tuple[int, int]] = {}
    dropped: set[int] = set()
    for _ in range(draw(st.integers(0, 3))):
        first = draw(st.integers(1, n))
        last = draw(st.integers(first, min(n, first + 4)))
        later = [g for g in range(last + 1, n + 1) if g not in dropped and g not in gaps]
        if set(range(first, last + 1)) & (dropped | set(gaps)) or not later:
            continue
        gaps[draw(st.sampled_from(later))] = (first, last)
        dropped |= set(range(first, last + 1))
    return n, gaps


def reference(arrived: set[int], gaps: dict[int, tuple[int, int]]) -> int:
    accounted = set(arrived)
    for seq in arrived & set(gaps):
        accounted |= set(range(gaps[seq][0], gaps[seq][1] + 1))
    k = 0
    while k + 1 in accounted:
        k += 1
    return k


@settings(max_examples=60, deadline=None)
@given(data=st.data(), plans=st.lists(stream_plan(), min_size=1, max_size=2))
def test_the_ack_is_the_contiguous_prefix_after_every_batch(
    data: st.DataObject, plans: list[tuple[int, dict[int, tuple[int, int]]]]
) -> None:
    streams = {f"s{i}": plan for i, plan in enumerate(plans)}
    deliveries: list[tuple[str, int]] = []
    for name, (n, gaps) in streams.items():
        dropped = {s for a, b in gaps.values() for s in range(a, b + 1)}
        sent = [s for s in range(1, n + 1) if s not in dropped]
        delivered = data.draw(st.lists(st.sampled_from(sent), max_size=2 * len(sent))) if sent else []
        deliveries += [(name, s) for s in delivered]
    order = data.draw(st.permutations(deliveries))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(order)), max_size=5)))

    ledger = Ledger(":memory:", consumer="prop")
    arrived: dict[str, set[int]] = {name: set() for name in streams}
    acked = dict.fromkeys(streams, 0)
    stored = 0
    for start, end in zip([0, *cuts], [*cuts, len(order)], strict=True):
        batch = order[start:end]
        done = ledger.commit([record(name, s, streams[name][1].get(s)) for name, s in batch])
        stored += done.stored
        for name, s in batch:
            arrived[name].add(s)
        for name in {name for name, _ in batch}:
            expected = reference(arrived[name], streams[name][1])
            assert done.acks[AGENT][name] == expected
            assert expected >= acked[name]
            acked[name] = expected
    assert stored == sum(len(a) for a in arrived.values())  # each (stream, seq) once, however many copies came
    for name in streams:
        assert ledger.acked(AGENT, name) == reference(arrived[name], streams[name][1])


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(1, 12))
def test_a_record_under_a_committed_seq_never_replaces_it_nor_is_acknowledged_alone(
    data: st.DataObject, n: int
) -> None:
    """Copies with other ids (a robot whose database went back, two robots under one id) arrive
    mixed with the originals: the first id committed under a seq stays, and a batch of nothing but
    such conflicts sends no ack, since an ack for it would make the robot delete its own copy."""
    versions = {seq: [record("results", seq, rid=f"{seq}/{v}") for v in range(3)] for seq in range(1, n + 1)}
    order = data.draw(st.lists(st.tuples(st.integers(1, n), st.integers(0, 2)), min_size=1, max_size=3 * n))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(order)), max_size=4)))
    ledger = Ledger(":memory:", consumer="prop")
    first: dict[int, str] = {}
    for start, end in zip([0, *cuts], [*cuts, len(order)], strict=True):
        batch = [versions[seq][v] for seq, v in order[start:end]]
        done = ledger.commit(batch)
        new = {r.seq: r.id for r in reversed(batch) if r.seq not in first}  # the batch's first copy wins
        conflicts = [r for r in batch if r.id != {**new, **first}[r.seq]]
        first.update(new)
        assert list(done.conflicts) == conflicts
        if batch and len(conflicts) == len(batch):
            assert done.acks == {}
    rows = dict(ledger._conn.execute("SELECT seq, id FROM records"))
    assert rows == first
