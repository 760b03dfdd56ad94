"""Properties of the delivery rules over whole sequences: duplicated, reordered, late."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.store.clock import format_ts
from agent.sync import envelope, replay
from agent.sync.identity import DeviceIdentity
from agent.sync.replay import CommandOutcome, CommandRules, StreamProgress

CENTRAL = DeviceIdentity(Ed25519PrivateKey.generate())
T0 = datetime(2025, 1, 31, 12, 0, 0, tzinfo=UTC)
RULES = CommandRules(agent="oht-001", max_age_s=300, clock_skew_s=30)

# A few commands, each with its own issue time and lifetime (seconds from T0).
_COMMANDS = [
    envelope.make_command(
        command_id=f"c-{i}",
        type="move",
        params={"i": i},
        sign=CENTRAL.sign,
        issued_at=format_ts(T0 + timedelta(seconds=issued)),
        not_after=format_ts(T0 + timedelta(seconds=issued + life)),
    )
    for i, (issued, life) in enumerate([(0, 30), (5, 600), (100, 50), (-200, 1000), (400, 60)])
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_COMMANDS) - 1), st.integers(-60, 900)), max_size=25))
def test_a_command_runs_at_most_once_and_only_in_time(deliveries: list[tuple[int, int]]) -> None:
    """Deliveries in any order, repeated, at any time; the caller keeps what the commands table
    would (an accepted command_id is committed). Each command runs at most once, never after its
    not_after, never outside the issue window; and a repeat of a committed command never
    produces a receipt."""
    committed: set[str] = set()
    runs: list[str] = []
    for index, offset in sorted(deliveries, key=lambda d: d[1]):  # time moves forward
        command, now = _COMMANDS[index], T0 + timedelta(seconds=offset)
        seen = command.command_id in committed
        decision = replay.judge_command(command, central_key=CENTRAL.public, seen_before=seen, now=now, rules=RULES)
        if seen:
            assert decision.outcome is CommandOutcome.DUPLICATE
            continue
        if decision.runs:
            assert now < command.not_after_at
            assert -RULES.clock_skew_s <= (now - command.issued_at_at).total_seconds() <= RULES.max_age_s
            committed.add(command.command_id)
            runs.append(command.command_id)
        else:
            assert decision.code is not None and decision.code.startswith("UPSTREAM_")
    assert len(runs) == len(set(runs))


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]]]:
    """A stream of n seqs, some covered by gap records, delivered in any order with repeats.

    Each item is the (first, last) range one committed record accounts for: itself, or for a
    gap record itself and the dropped range just before it."""
    n = draw(st.integers(1, 40))
    items: list[tuple[int, int]] = []
    seq = 1
    while seq <= n:
        run = draw(st.integers(0, 3))
        if run and seq + run <= n:  # seqs seq..seq+run-1 dropped, seq+run is the gap record
            items.append((seq, seq + run))
            seq += run + 1
        else:
            items.append((seq, seq))
            seq += 1
    order = draw(st.permutations(items))
    repeats = draw(st.lists(st.sampled_from(items), max_size=10))
    return n, [*order, *repeats]


@settings(max_examples=200, deadline=None)
@given(deliveries())
def test_the_cumulative_ack_is_the_longest_accounted_prefix(case: tuple[int, list[tuple[int, int]]]) -> None:
    n, items = case
    progress = StreamProgress()
    accounted: set[int] = set()
    for first, last in items:
        before = progress.through
        progress = progress.account(first, last)
        accounted.update(range(first, last + 1))
        prefix = 0
        while prefix + 1 in accounted:
            prefix += 1
        assert progress.through == prefix >= before  # exact, and never backwards
        lows = [low for low, _ in progress.ahead]
        assert all(low > progress.through + 1 for low in lows) and lows == sorted(lows)
    assert progress == StreamProgress(n, ())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 100), st.integers(0, 100)), max_size=30))
def test_the_agents_ack_never_goes_back_nor_past_what_was_sent(events: list[tuple[int, int]]) -> None:
    """(ack received, highest seq published so far) in any order: the acked seq is monotonic and
    never exceeds what was published, so pruning never deletes a record the centre has not seen."""
    acked, sent = 0, 0
    for received, published in events:
        sent = max(sent, published)
        decision = replay.accept_ack(acked, received, sent)
        assert acked <= decision.acked <= max(acked, sent)
        assert decision.acked == max(acked, min(received, sent))
        acked = decision.acked
