"""The gate in front of every state-changing route: any plain JSON passes, and what the agent
could not read or digest for its audit row is refused, whatever else the body holds."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.api.middleware import MAX_JSON_DEPTH, body_problem

plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=15,
)


@settings(max_examples=300, deadline=None)
@given(plain)
def test_plain_json_passes(value: object) -> None:
    assert body_problem(json.dumps(value).encode()) is None


@settings(max_examples=100, deadline=None)
@given(plain, st.integers(MAX_JSON_DEPTH, 6000))
def test_nesting_beyond_the_bound_is_refused(value: object, extra: int) -> None:
    body = b"[" * extra + json.dumps(value).encode() + b"]" * extra
    assert body_problem(body) is not None


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=6), plain, plain)
def test_a_repeated_key_is_refused(key: str, first: object, second: object) -> None:
    body = (
        "{" + json.dumps(key) + ":" + json.dumps(first) + "," + json.dumps(key) + ":" + json.dumps(second) + "}"
    ).encode()
    assert body_problem(body) is not None


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=50))
def test_bytes_that_are_not_utf8_json_are_refused(raw: bytes) -> None:
    try:
        json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        assert body_problem(raw) is not None
