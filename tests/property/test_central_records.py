"""The central consumer's envelope decoder: what the contract allows comes through unchanged,
and anything else is refused with a code."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from central.records import RecordInvalid, SignatureInvalid, TopicMismatch, decode, parse_up_topic, verify

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
agents = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
names = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).filter(lambda k: k != "gap")


def envelope(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "v": 1,
        "agent": "oht-001",
        "stream": "results",
        "seq": 42,
        "id": "0190a6a4-8f7e-7c4a-9b1e-3f2d1c0b0a99",
        "kind": "command_result",
        "at": "2026-03-01T12:00:00.123456Z",
        "body": {"state": "succeeded"},
        "sig": "c2lnbmF0dXJl",
    }
    base.update(changes)
    return base


def topic_of(env: dict[str, Any]) -> str:
    return f"oht/v1/{env['agent']}/up/{env['stream']}"


@settings(max_examples=50)
@given(agent=agents, stream=names, seq=st.integers(1, 2**63 - 1), kind=names, body=json_values)
def test_a_contract_envelope_decodes_to_its_fields(agent: str, stream: str, seq: int, kind: str, body: Any) -> None:
    env = envelope(agent=agent, stream=stream, seq=seq, kind=kind, body=body, id=str(uuid.uuid4()))
    record = decode(topic_of(env), json.dumps(env, ensure_ascii=False).encode())
    assert (record.agent, record.stream, record.seq, record.id, record.kind) == (agent, stream, seq, env["id"], kind)
    assert record.body == body and record.gap is None and verify(record)
    assert json.loads(record.body_json()) == body


@pytest.mark.parametrize(
    "changes",
    [
        {"v": 2},
        {"v": True},
        {"v": 1.0},
        {"seq": 0},
        {"seq": -1},
        {"seq": True},
        {"seq": 1.5},
        {"seq": "42"},
        {"seq": 2**63},
        {"id": "not-a-uuid"},
        {"id": ""},
        {"kind": "Command"},
        {"kind": 7},
        {"at": "2026-03-01 12:00:00"},
        {"at": "2026-03-01T12:00:00+02:00"},
        {"at": "2026-03-01T12:00:00"},
        {"at": "yesterday"},
        {"sig": ""},
        {"sig": "not base64!"},
        {"sig": None},
    ],
)
def test_a_field_outside_the_contract_is_refused(changes: dict[str, Any]) -> None:
    env = envelope(**changes)
    with pytest.raises(RecordInvalid) as err:
        decode(topic_of(envelope()), json.dumps(env).encode())
    assert err.value.code == "CENTRAL_RECORD_INVALID" and err.value.hint


def test_missing_or_unknown_fields_are_refused() -> None:
    env = envelope()
    del env["sig"]
    with pytest.raises(RecordInvalid, match="missing \\['sig'\\]"):
        decode(topic_of(envelope()), json.dumps(env).encode())
    with pytest.raises(RecordInvalid, match="unknown \\['extra'\\]"):
        decode(topic_of(envelope()), json.dumps(envelope(extra=1)).encode())


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xfe", b"not json", b"[1, 2]", b'{"v": NaN}', b'{"v": 1, "v": 1}', b" " * (1024 * 1024 + 1)],
)
def test_what_is_not_one_strict_json_object_is_refused(payload: bytes) -> None:
    with pytest.raises(RecordInvalid):
        decode(topic_of(envelope()), payload)


def test_an_envelope_for_another_robot_or_stream_than_its_topic_is_refused() -> None:
    with pytest.raises(TopicMismatch) as err:
        decode("oht/v1/oht-002/up/results", json.dumps(envelope()).encode())
    assert err.value.code == "CENTRAL_TOPIC_MISMATCH"
    with pytest.raises(TopicMismatch):
        decode("oht/v1/oht-001/up/alarms", json.dumps(envelope()).encode())
    assert issubclass(SignatureInvalid, RecordInvalid) and SignatureInvalid.code == "CENTRAL_SIGNATURE_INVALID"


@pytest.mark.parametrize(
    "topic", ["oht/v1/oht-001/up", "oht/v2/oht-001/up/results", "oht/v1/+/up/results", "x/v1/a/up/b"]
)
def test_only_up_topics_are_records(topic: str) -> None:
    with pytest.raises(RecordInvalid):
        parse_up_topic(topic)


def gap(first: int, last: int, seq: int, dropped: int | None = None, **extra: Any) -> bytes:
    n = last - first + 1 if dropped is None else dropped
    body = {"from_seq": first, "to_seq": last, "dropped": n, "reason": "outbox full", **extra}
    return json.dumps(envelope(stream="telemetry", kind="gap", seq=seq, body=body)).encode()


def test_a_gap_record_names_an_earlier_range() -> None:
    record = decode("oht/v1/oht-001/up/telemetry", gap(10, 19, 20))
    assert record.gap is not None and (record.gap.from_seq, record.gap.to_seq, record.gap.dropped) == (10, 19, 10)


@pytest.mark.parametrize(
    ("first", "last", "seq", "dropped", "extra"),
    [
        (10, 20, 20, None, {}),  # would cover its own seq
        (10, 30, 20, None, {}),  # would cover later seqs: an ack past records never received
        (20, 10, 30, None, {}),  # backwards
        (0, 5, 30, None, {}),  # seqs start at 1
        (10, 19, 20, 11, {}),  # more dropped than the range holds
        (10, 19, 20, None, {"why": "x"}),  # unknown field
    ],
)
def test_a_gap_that_could_acknowledge_what_was_never_sent_is_refused(
    first: int, last: int, seq: int, dropped: int | None, extra: dict[str, Any]
) -> None:
    with pytest.raises(RecordInvalid):
        decode("oht/v1/oht-001/up/telemetry", gap(first, last, seq, dropped, **extra))
