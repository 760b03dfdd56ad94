"""The envelope's refusals: each a coded error with a hint, for what a broker or a peer may send."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.store.outbox import encode_payload
from agent.sync import envelope
from agent.sync.errors import UpstreamError
from agent.sync.identity import DeviceIdentity, verify_record

DEVICE = DeviceIdentity(Ed25519PrivateKey.generate())
ROW_ID = "01900000-0000-7000-8000-0000000000aa"
AT = "2025-01-31T12:00:00.000000Z"


def _record(**changes: object) -> envelope.Record:
    fields: dict[str, object] = {"agent": "oht-001", "stream": "results", "seq": 42, "id": ROW_ID,
                                 "kind": "command_result", "at": AT, "body": {"state": "succeeded"}}  # fmt: skip
    fields.update(changes)
    return DEVICE.sign_record(**fields)  # type: ignore[arg-type]


def _doc(**changes: object) -> dict[str, object]:
    doc = json.loads(envelope.encode_record(_record()))
    doc.update(changes)
    return doc


def _code(fn: object, *args: object) -> str:
    with pytest.raises(UpstreamError) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.hint, f"{info.value.code} has no hint"
    return info.value.code


def test_the_contract_example_is_what_goes_on_the_wire() -> None:
    raw = envelope.encode_record(_record())
    doc = json.loads(raw)
    assert list(doc) == ["agent", "at", "body", "id", "kind", "seq", "sig", "stream", "v"]
    assert doc["v"] == 1 and doc["seq"] == 42 and len(doc["sig"]) == 86 and "=" not in doc["sig"]
    # The signed bytes are the message without its sig member: a verifier needs no JSON writer.
    signed = raw.replace(f',"sig":"{doc["sig"]}"'.encode(), b"")
    assert signed == _record().signing_bytes()
    DEVICE.public.key.verify(base64.urlsafe_b64decode(doc["sig"] + "=="), signed)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\xff\xfe{}", "UPSTREAM_MALFORMED"),  # not UTF-8
        (b"[1, 2]", "UPSTREAM_MALFORMED"),  # not an object
        (b'{"v":2}', "UPSTREAM_VERSION_UNSUPPORTED"),
        (b'{"v":"1"}', "UPSTREAM_MALFORMED"),
        (b'{"v":true}', "UPSTREAM_MALFORMED"),
        (b'{"v":1,"v":1}', "UPSTREAM_MALFORMED"),  # duplicate key
        (b'{"v":1,"x":NaN}', "UPSTREAM_MALFORMED"),
        (b'{"v":1,"x":"\\ud800"}', "UPSTREAM_MALFORMED"),  # a lone surrogate cannot be UTF-8
        (b"[" * 40_000 + b"]" * 40_000, "UPSTREAM_MALFORMED"),  # nesting beyond the parser
        (b" " * (envelope.MAX_COMMAND_BYTES + 1), "UPSTREAM_TOO_LARGE"),
    ],
)
def test_unreadable_commands_are_refused_with_a_code(raw: bytes, code: str) -> None:
    assert _code(envelope.decode_command, raw) == code


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"seq": 0}, "seq"),
        ({"seq": True}, "seq"),
        ({"seq": 2**63}, "seq"),
        ({"agent": "oht/001"}, "agent"),  # would break the topic
        ({"agent": "+"}, "agent"),
        ({"stream": "Results"}, "stream"),
        ({"id": "not-a-uuid"}, "id"),
        ({"id": "01900000-0000-4000-8000-0000000000aa"}, "id"),  # a UUIDv4
        ({"at": "2025-01-31 12:00:00Z"}, "at"),
        ({"at": "2025-01-31T12:00:00+01:00"}, "at"),  # not UTC
        ({"at": "2025-02-30T12:00:00Z"}, "date"),
        ({"extra": 1}, "unknown extra"),
    ],
)
def test_records_out_of_contract_are_refused(changes: dict[str, object], words: str) -> None:
    with pytest.raises(UpstreamError) as info:
        envelope.decode_record(envelope.canonical(_doc(**changes)))
    assert info.value.code == "UPSTREAM_MALFORMED" and words in info.value.message


def test_a_missing_field_is_named() -> None:
    doc = _doc()
    del doc["body"]
    with pytest.raises(UpstreamError) as info:
        envelope.decode_record(envelope.canonical(doc))
    assert info.value.code == "UPSTREAM_MALFORMED" and "missing body" in info.value.message


_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.mark.parametrize("change", ["padded", "std-alphabet", "short", "low-bits"])
def test_a_signature_has_one_spelling(change: str) -> None:
    sig = _record().sig
    last = _B64URL.index(sig[-1])
    bad = {
        "padded": sig + "==",
        "std-alphabet": ("/" if "+" in sig[:1] else "+") + sig[1:],
        "short": sig[:-2],
        # 86 characters carry 516 bits for 512: a last character with its unused low bits set
        # decodes to the same signature and would give one message two spellings.
        "low-bits": sig[:-1] + _B64URL[last ^ 0b0001],
    }[change]
    assert bad != sig
    assert _code(envelope.decode_record, envelope.canonical(_doc(sig=bad))) == "UPSTREAM_MALFORMED"


def test_the_largest_outbox_payload_fits_in_a_record() -> None:
    """The store bounds a payload's characters; four-byte characters make it four times as many
    bytes. Such a record must still be sendable, or a critical stream would stop at it."""
    body = {"text": "\U0001f600" * (256 * 1024 - 20)}
    encode_payload("audit", body)  # the store takes it
    raw = envelope.encode_record(_record(body=body))
    assert len(raw) > 1024 * 1024
    verify_record(envelope.decode_record(raw), DEVICE.public)
    assert (
        _code(envelope.decode_record, raw + b" " * (envelope.MAX_RECORD_BYTES - len(raw) + 1)) == "UPSTREAM_TOO_LARGE"
    )


def test_a_body_json_cannot_carry_is_refused_before_signing() -> None:
    with pytest.raises(UpstreamError) as info:
        _record(body={"x": float("nan")})
    assert info.value.code == "UPSTREAM_MALFORMED"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"from_seq": 5, "to_seq": 9, "dropped": 5}, "missing reason"),
        ({"from_seq": 9, "to_seq": 5, "dropped": 1, "reason": "quota"}, "from_seq <= to_seq < seq"),
        (
            {"from_seq": 5, "to_seq": 50, "dropped": 1, "reason": "quota"},
            "from_seq <= to_seq < seq",
        ),  # not before seq 42
        ({"from_seq": 5, "to_seq": 9, "dropped": 6, "reason": "quota"}, "exceeds the range"),
        ({"from_seq": 5, "to_seq": 9, "dropped": 5, "reason": ""}, "reason"),
        ([5, 9], "object"),
    ],
)
def test_a_gap_record_must_name_a_range_before_it(body: object, words: str) -> None:
    with pytest.raises(UpstreamError) as info:
        _record(stream="telemetry", kind="gap", body=body)
    assert info.value.code == "UPSTREAM_MALFORMED" and words in info.value.message


def test_a_gap_record_names_its_range() -> None:
    record = _record(stream="telemetry", kind="gap", body=envelope.Gap(5, 9, 5, "bulk quota").as_body())
    assert envelope.decode_record(envelope.encode_record(record)).gap() == envelope.Gap(5, 9, 5, "bulk quota")
    assert _record().gap() is None


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"v":1,"acks":{}}', "UPSTREAM_MALFORMED"),
        (b'{"v":1,"acks":{"results":-1}}', "UPSTREAM_MALFORMED"),
        (b'{"v":1,"acks":{"results":1.0}}', "UPSTREAM_MALFORMED"),
        (b'{"v":1,"acks":{"results/x":1}}', "UPSTREAM_MALFORMED"),
        (b'{"v":1,"ack":{"results":1}}', "UPSTREAM_MALFORMED"),  # a misspelling must not pass as nothing
        (b'{"v":1,"acks":{"results":1},"acks":{"results":9}}', "UPSTREAM_MALFORMED"),
        (b'{"v":7,"acks":{"results":1}}', "UPSTREAM_VERSION_UNSUPPORTED"),
    ],
)
def test_bad_acks_are_refused(raw: bytes, code: str) -> None:
    assert _code(envelope.decode_ack, raw) == code


def test_an_ack_may_be_spelled_freely() -> None:
    """Acks are unsigned: any JSON spelling of a valid ack is read."""
    assert envelope.decode_ack(b'{ "acks" : { "audit" : 17, "results" : 42 }, "v" : 1 }').acks == {
        "results": 42,
        "audit": 17,
    }


def test_command_times_are_parsed_and_kept_as_sent() -> None:
    command = envelope.make_command(command_id="c-1", type="move", params={"to": 5}, not_after="2025-01-31T12:00:30Z",
                                    issued_at="2025-01-31T12:00:00.5+00:00", sign=DEVICE.sign)  # fmt: skip
    assert command.not_after == "2025-01-31T12:00:30Z"
    assert (command.not_after_at - command.issued_at_at).total_seconds() == 29.5
    with pytest.raises(UpstreamError):
        envelope.make_command(command_id="c 1", type="move", params={}, not_after=AT, issued_at=AT, sign=DEVICE.sign)
    with pytest.raises(UpstreamError):
        envelope.make_command(
            command_id="c-1", type="move", params={}, not_after="tomorrow", issued_at=AT, sign=DEVICE.sign
        )
