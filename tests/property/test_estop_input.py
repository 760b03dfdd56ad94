"""Properties of the E-stop input logic: any active channel stops; a disagreement never reads as released."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.safety.estop_input import EstopChannels

WINDOW = 0.05
steps = st.lists(st.tuples(st.tuples(st.booleans(), st.booleans()), st.floats(0.0, 0.2)), min_size=1, max_size=40)


@given(steps)
def test_dual_channel_invariants(sequence: list[tuple[tuple[bool, bool], float]]) -> None:
    ch = EstopChannels(2, WINDOW)
    now = 0.0
    disagree_since: float | None = None
    for values, dt in sequence:
        now += dt
        state = ch.feed(values, now)
        if values[0] != values[1]:
            disagree_since = now if disagree_since is None else disagree_since
        else:
            disagree_since = None
        if any(values):
            assert state.pressed  # one good channel is enough to stop
        if disagree_since is not None and now - disagree_since >= WINDOW:
            assert state.discrepancy and state.pressed
        if values == (False, False):
            assert not state.pressed and not state.discrepancy  # both agree: released


@given(st.lists(st.booleans(), min_size=1, max_size=20))
def test_single_channel_follows_the_line(values: list[bool]) -> None:
    ch = EstopChannels(1, WINDOW)
    for i, v in enumerate(values):
        assert ch.feed((v,), i * 0.01).pressed is v


def test_unknown_counts_as_pressed() -> None:
    assert EstopChannels(2, WINDOW).state(0.0).pressed
