"""The core protocol's framing and admission, for any input: what crosses the socket comes out
whole and in order however the stream is cut, a hostile stream is refused, never half-read, and
the token bucket never admits more than its rate allows."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.link import protocol as p
from agent.link.server import TokenBucket

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
messages = st.fixed_dictionaries(
    {
        "t": st.sampled_from(["req", "rep", "view", "hello"]),
        "id": st.integers(0, 10**9),
        "args": st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    }
)


@settings(max_examples=200, deadline=None)
@given(st.lists(messages, min_size=1, max_size=12), st.lists(st.integers(1, 64), min_size=1, max_size=40))
def test_messages_survive_any_cut_of_the_stream(sent: list[dict[str, object]], cuts: list[int]) -> None:
    stream = b"".join(p.encode(m) for m in sent)
    decoder = p.FrameDecoder()
    got: list[dict[str, object]] = []
    offset, i = 0, 0
    while offset < len(stream):
        size = cuts[i % len(cuts)]
        got.extend(decoder.feed(stream[offset : offset + size]))
        offset += size
        i += 1
    assert got == sent
    assert decoder.buffered == 0


@settings(max_examples=100, deadline=None)
@given(st.integers(p.MAX_FRAME + 1, 2**32 - 1))
def test_an_oversized_length_is_refused_before_its_bytes_arrive(length: int) -> None:
    decoder = p.FrameDecoder()
    with pytest.raises(p.ProtocolError):
        list(decoder.feed(struct.pack(">I", length)))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200))
def test_a_frame_that_is_not_a_typed_json_object_is_refused(body: bytes) -> None:
    try:
        value = json.loads(body)
        valid = isinstance(value, dict) and isinstance(value.get("t"), str)
    except (ValueError, UnicodeDecodeError):
        valid = False
    decoder = p.FrameDecoder()
    frame = struct.pack(">I", len(body)) + body
    if valid:
        assert list(decoder.feed(frame)) == [json.loads(body)]
    else:
        with pytest.raises(p.ProtocolError):
            list(decoder.feed(frame))


def test_a_message_over_the_frame_limit_is_not_encoded() -> None:
    with pytest.raises(p.ProtocolError):
        p.encode({"t": "view", "blob": "x" * (p.MAX_FRAME + 1)})


def test_a_peer_of_another_version_is_refused() -> None:
    p.check_hello(dict(p.hello("core", "a", 1)), "core")
    with pytest.raises(p.ProtocolError):
        p.check_hello({**p.hello("core", "a", 1), "v": p.PROTOCOL_VERSION + 1}, "core")
    with pytest.raises(p.ProtocolError):
        p.check_hello(dict(p.hello("gateway", "a", 1)), "core")


def test_a_remote_error_keeps_its_code_and_hint() -> None:
    err = p.remote_error({"code": "CORE_BUSY", "message": "m", "hint": "h"})
    assert isinstance(err, p.CoreBusy) and err.code == "CORE_BUSY" and err.hint == "h"
    other = p.remote_error({"code": "COMMAND_NOT_FOUND", "message": "no such"})
    assert other.code == "COMMAND_NOT_FOUND" and other.message == "no such"


@settings(max_examples=200, deadline=None)
@given(st.floats(1, 1000), st.integers(1, 100), st.lists(st.floats(0, 0.05), min_size=1, max_size=300))
def test_the_bucket_admits_no_more_than_burst_plus_rate_times_time(rate: float, burst: int, gaps: list[float]) -> None:
    now = [0.0]
    bucket = TokenBucket(rate, burst, clock=lambda: now[0])
    admitted = 0
    for gap in gaps:
        now[0] += gap
        admitted += bucket.take()
    assert admitted <= burst + rate * now[0] + 1e-6


def test_the_bucket_gives_its_burst_at_once_then_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(10.0, 5, clock=lambda: now[0])
    assert [bucket.take() for _ in range(7)] == [True] * 5 + [False] * 2
    now[0] = 0.35  # 3.5 tokens earned
    assert [bucket.take() for _ in range(4)] == [True] * 3 + [False]
    now[0] = 100.0  # capped at the burst, not 996 tokens
    assert sum(bucket.take() for _ in range(20)) == 5
