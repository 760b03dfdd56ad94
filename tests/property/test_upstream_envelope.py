"""Properties of the upstream envelope: round trips, one spelling per message, tamper evidence."""

from __future__ import annotations

import json
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent.sync import envelope
from agent.sync.errors import SignatureInvalid, UpstreamError
from agent.sync.identity import DeviceIdentity, PinnedKey, verify_command, verify_record

DEVICE = DeviceIdentity(Ed25519PrivateKey.generate())
CENTRAL = DeviceIdentity(Ed25519PrivateKey.generate())

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
)
json_keys = st.text(st.characters(exclude_categories=("Cs",)), max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_keys, inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(json_keys, json_values, max_size=5)

names = st.from_regex(envelope.STREAM_RE, fullmatch=True)
agents = st.from_regex(envelope.AGENT_RE, fullmatch=True)
kinds = st.from_regex(envelope.KIND_RE, fullmatch=True).filter(lambda k: k != envelope.KIND_GAP)
seqs = st.integers(1, envelope.SEQ_MAX)
uuid7s = st.from_regex(envelope.UUID_RE, fullmatch=True)
times = st.builds(
    lambda y, mo, d, h, mi, s, frac, zone: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{frac}{zone}",
    st.integers(1970, 2200), st.integers(1, 12), st.integers(1, 28), st.integers(0, 23), st.integers(0, 59),
    st.integers(0, 59), st.sampled_from(["", ".5", ".123456", ".123456789"]), st.sampled_from(["Z", "+00:00"]),
)  # fmt: skip


@st.composite
def records(draw: st.DrawFn) -> envelope.Record:
    return DEVICE.sign_record(
        agent=draw(agents), stream=draw(names), seq=draw(seqs), id=draw(uuid7s),
        kind=draw(kinds), at=draw(times), body=draw(json_values),
    )  # fmt: skip


@st.composite
def gap_records(draw: st.DrawFn) -> envelope.Record:
    first = draw(st.integers(1, 10**9))
    last = draw(st.integers(first, first + 10**6))
    gap = envelope.Gap(first, last, draw(st.integers(1, last - first + 1)), draw(st.text(min_size=1, max_size=30)))
    return DEVICE.sign_record(agent="oht-001", stream="telemetry", seq=draw(st.integers(last + 1, last + 10**6)),
                              id=draw(uuid7s), kind=envelope.KIND_GAP, at=draw(times), body=gap.as_body())  # fmt: skip


@st.composite
def commands(draw: st.DrawFn) -> envelope.Command:
    return envelope.make_command(
        command_id=draw(st.from_regex(envelope.COMMAND_ID_RE, fullmatch=True)),
        type=draw(st.from_regex(envelope.COMMAND_TYPE_RE, fullmatch=True)),
        params=draw(json_objects), not_after=draw(times), issued_at=draw(times),
        agent=draw(st.none() | agents), sign=CENTRAL.sign,
    )  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(records() | gap_records())
def test_a_record_round_trips_and_verifies(record: envelope.Record) -> None:
    decoded = envelope.decode_record(envelope.encode_record(record))
    assert decoded == record
    verify_record(decoded, DEVICE.public)
    with pytest.raises(SignatureInvalid):
        verify_record(decoded, CENTRAL.public)  # another robot's key


@settings(max_examples=50, deadline=None)
@given(commands())
def test_a_command_round_trips_and_verifies(command: envelope.Command) -> None:
    decoded = envelope.decode_command(envelope.encode_command(command))
    assert decoded == command
    verify_command(decoded, CENTRAL.public)
    with pytest.raises(SignatureInvalid):
        verify_command(decoded, DEVICE.public)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(names, st.integers(0, envelope.SEQ_MAX), min_size=1, max_size=envelope.MAX_ACK_STREAMS))
def test_an_ack_round_trips(acks: dict[str, int]) -> None:
    assert envelope.decode_ack(envelope.encode_ack(envelope.Ack(acks))) == envelope.Ack(acks)


def _refused(raw: bytes, opener: object) -> bool:
    try:
        opener(raw)  # type: ignore[operator]
    except UpstreamError:
        return True
    return False


def _open_record(raw: bytes) -> envelope.Record:
    record = envelope.decode_record(raw)
    verify_record(record, DEVICE.public)
    return record


def _open_command(raw: bytes) -> envelope.Command:
    command = envelope.decode_command(raw)
    verify_command(command, CENTRAL.public)
    return command


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(records(), gap_records(), commands()), st.data())
def test_any_single_byte_change_to_a_signed_message_is_refused(message: object, data: st.DataObject) -> None:
    """Whichever byte changes to whatever value, the message is refused (malformed, or its
    signature fails): never accepted with other content, never accepted as the same."""
    is_record = isinstance(message, envelope.Record)
    raw = envelope.encode_record(message) if is_record else envelope.encode_command(message)  # type: ignore[arg-type]
    at = data.draw(st.integers(0, len(raw) - 1), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda b: b != raw[at]), label="byte")
    tampered = raw[:at] + bytes([value]) + raw[at + 1 :]
    with pytest.raises(UpstreamError):
        (_open_record if is_record else _open_command)(tampered)


def test_every_position_flipped_is_refused() -> None:
    """Deterministic companion of the property above, on a record chosen for its traps: a float
    written with an exponent (`1e+16` reads the same as `1E+16` or `1e016`), non-ASCII text, and a
    signature whose last base64 character carries 4 unused bits. Every byte is flipped in the ways
    that keep such spellings valid (case, low bits), and the last signature character is tried
    with every other value."""
    record = DEVICE.sign_record(agent="oht-001", stream="telemetry", seq=7, id="01900000-0000-7000-8000-000000000001",
                                kind="telemetry", at="2025-01-31T12:00:00.000001Z",
                                body={"big": 1e16, "small": 1e-7, "text": "Größe ✓", "n": [0, -1, 2.5]})  # fmt: skip
    raw = envelope.encode_record(record)
    assert b"1e+16" in raw and b"1e-07" in raw
    tried = 0
    for at in range(len(raw)):
        for mask in (0x01, 0x02, 0x04, 0x08, 0x20):
            tampered = raw[:at] + bytes([raw[at] ^ mask]) + raw[at + 1 :]
            assert _refused(tampered, _open_record), (at, mask, tampered)
            tried += 1
    last = raw.index(b'","stream"') - 1  # the signature's last character
    for value in range(256):
        if value != raw[last]:
            assert _refused(raw[:last] + bytes([value]) + raw[last + 1 :], _open_record), value
    assert tried == 5 * len(raw)


@settings(max_examples=50, deadline=None)
@given(records(), st.sampled_from(["body", "seq", "kind", "at", "agent", "stream", "id"]))
def test_a_field_changed_and_re_encoded_fails_the_signature(record: envelope.Record, name: str) -> None:
    """A forger who re-encodes canonically (so the form is right) still fails at the signature."""
    doc = json.loads(envelope.encode_record(record))
    replacement = {"body": [doc["body"]], "seq": doc["seq"] % envelope.SEQ_MAX + 1, "kind": "audit",
                   "at": "2000-01-01T00:00:00Z", "agent": "other-robot", "stream": "audit",
                   "id": "01900000-0000-7000-8000-000000000000"}[name]  # fmt: skip
    assume(doc[name] != replacement)
    doc[name] = replacement
    with pytest.raises(SignatureInvalid):
        _open_record(envelope.canonical(doc))


@settings(max_examples=50, deadline=None)
@given(json_objects, st.randoms(use_true_random=False))
def test_canonical_json_does_not_depend_on_key_order(value: dict[str, object], rnd: random.Random) -> None:
    def shuffled(v: object) -> object:
        if isinstance(v, dict):
            items = list(v.items())
            rnd.shuffle(items)
            return {k: shuffled(x) for k, x in items}
        if isinstance(v, list):
            return [shuffled(x) for x in v]
        return v

    text = envelope.canonical(value)
    assert envelope.canonical(shuffled(value)) == text
    assert envelope.canonical(json.loads(text)) == text  # reading it back changes nothing


@settings(max_examples=40, deadline=None)
@given(records(), st.sampled_from(["spaces", "reordered", "escaped"]))
def test_the_same_values_spelled_otherwise_are_refused(record: envelope.Record, how: str) -> None:
    doc = json.loads(envelope.encode_record(record))
    if how == "spaces":
        raw = json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()
    elif how == "reordered":
        raw = json.dumps(dict(reversed(list(doc.items()))), separators=(",", ":"), ensure_ascii=False).encode()
    else:
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assume(raw != envelope.encode_record(record))
    with pytest.raises(UpstreamError) as info:
        envelope.decode_record(raw)
    assert info.value.code == "UPSTREAM_MALFORMED"


def test_pinned_key_round_trips_through_its_text_forms() -> None:
    public = DEVICE.public
    for text in (
        public.base64(),
        public.pem(),
        public.base64().rstrip("="),
        public.base64().replace("+", "-").replace("/", "_"),
    ):
        assert PinnedKey.from_text(text).raw == public.raw
