"""The central consumer's check of one message: a record the robot signed comes through unchanged,
anything else is refused with the code the agent's rules give it, and a robot without a pinned key
is refused before its payload is read. Also the device keys file and its reading."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sync.envelope import Record, encode_record
from agent.sync.identity import DeviceIdentity
from central.device_keys import DeviceKeys, read_device_keys
from central.errors import DeviceKeysInvalid
from central.records import Refusal, check, parse_up_topic

AGENT = "oht-001"
DEVICE = DeviceIdentity(Ed25519PrivateKey.generate())  # the robot's key, pinned in `keys_file`
OTHER = DeviceIdentity(Ed25519PrivateKey.generate())  # another robot's


def record_id(name: str) -> str:
    """A UUIDv7-shaped id fixed by `name`: a resend of a record is the same record."""
    h = hashlib.sha256(name.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-7{h[13:16]}-8{h[17:20]}-{h[20:32]}"


def signed(
    stream: str = "results",
    seq: int = 1,
    *,
    agent: str = AGENT,
    body: Any = None,
    kind: str | None = None,
    gap: tuple[int, int] | None = None,
    rid: str | None = None,
    device: DeviceIdentity = DEVICE,
) -> Record:
    """A record as the agent makes it (agent.sync.identity.DeviceIdentity.sign_record)."""
    if gap is not None:
        kind, body = "gap", {"from_seq": gap[0], "to_seq": gap[1], "dropped": gap[1] - gap[0] + 1, "reason": "full"}
    return device.sign_record(
        agent=agent,
        stream=stream,
        seq=seq,
        id=rid or record_id(f"{agent}/{stream}/{seq}"),
        kind=kind or ("telemetry" if stream == "telemetry" else "command_result"),
        at="2026-01-01T00:00:00.000000Z",
        body={"n": seq} if body is None else body,
    )


def keys_file(path: Path, devices: dict[str, DeviceIdentity]) -> Path:
    path.write_text("".join(f'"{agent}" = "{d.public.base64()}"\n' for agent, d in devices.items()))
    return path


@pytest.fixture
def keys(tmp_path: Path) -> DeviceKeys:
    return DeviceKeys(keys_file(tmp_path / "keys.toml", {AGENT: DEVICE, "oht-002": OTHER}))


@pytest.fixture(scope="module")
def pinned(tmp_path_factory: pytest.TempPathFactory) -> DeviceKeys:
    """For the hypothesis tests, which take no function-scoped fixture."""
    return DeviceKeys(keys_file(tmp_path_factory.mktemp("keys") / "keys.toml", {AGENT: DEVICE}))


def topic(agent: str = AGENT, stream: str = "results") -> str:
    return f"oht/v1/{agent}/up/{stream}"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
names = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).filter(lambda k: k != "gap")


@settings(max_examples=40, deadline=None)
@given(stream=names, seq=st.integers(1, 2**63 - 1), kind=names, body=json_values)
def test_a_signed_record_comes_through_unchanged(
    pinned: DeviceKeys, stream: str, seq: int, kind: str, body: Any
) -> None:
    record = signed(stream, seq, kind=kind, body=body)
    assert check(topic(AGENT, stream), encode_record(record), pinned) == record


@settings(max_examples=40, deadline=None)
@given(position=st.integers(0, 10_000), flip=st.integers(1, 255))
def test_any_changed_byte_is_refused(pinned: DeviceKeys, position: int, flip: int) -> None:
    """Whatever byte a proxy changes, the record is malformed or its signature fails: never taken."""
    raw = bytearray(encode_record(signed("results", 7, body={"state": "succeeded", "text": "ä ok"})))
    raw[position % len(raw)] ^= flip
    outcome = check(topic(), bytes(raw), pinned)
    assert isinstance(outcome, Refusal), outcome
    assert outcome.code in {"UPSTREAM_MALFORMED", "UPSTREAM_SIGNATURE_INVALID", "UPSTREAM_VERSION_UNSUPPORTED",
                            "UPSTREAM_WRONG_AGENT"}  # fmt: skip


def test_a_body_changed_after_signing_fails_the_signature(keys: DeviceKeys) -> None:
    record = signed("results", 3, body={"state": "failed"})
    doc = json.loads(encode_record(record))
    doc["body"]["state"] = "succeeded"
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    outcome = check(topic(), raw, keys)
    assert isinstance(outcome, Refusal) and outcome.code == "UPSTREAM_SIGNATURE_INVALID" and outcome.agent == AGENT


def test_another_robots_key_or_topic_is_refused(keys: DeviceKeys) -> None:
    by_a_as_b = signed(agent="oht-002", device=DEVICE)  # robot A's key, B's agent id, on B's topic
    outcome = check(topic("oht-002"), encode_record(by_a_as_b), keys)
    assert isinstance(outcome, Refusal) and outcome.code == "UPSTREAM_SIGNATURE_INVALID"
    outcome = check(topic("oht-002"), encode_record(signed()), keys)  # A's own record on B's topic
    assert isinstance(outcome, Refusal) and outcome.code == "UPSTREAM_SIGNATURE_INVALID"
    own_key_wrong_topic = signed(agent="oht-002", device=OTHER)
    outcome = check(topic(AGENT), encode_record(own_key_wrong_topic), keys)  # B's record under A's topic
    assert isinstance(outcome, Refusal) and outcome.code == "UPSTREAM_SIGNATURE_INVALID"
    outcome = check(topic(AGENT, "alarms"), encode_record(signed("results")), keys)
    assert isinstance(outcome, Refusal) and outcome.code == "UPSTREAM_MALFORMED"


def test_a_robot_without_a_pinned_key_is_refused_unread(keys: DeviceKeys) -> None:
    outcome = check(topic("oht-003"), b"not even json", keys)
    assert outcome == Refusal("oht-003", "CENTRAL_DEVICE_UNKNOWN", f"no device key pinned for oht-003 in {keys.path}")


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xfe", b"not json", b"[1, 2]", b'{"v": NaN}', b'{"v": 1, "v": 1}', b" " * (5 * 1024 * 1024)],
)
def test_what_is_not_one_strict_json_object_is_refused(keys: DeviceKeys, payload: bytes) -> None:
    outcome = check(topic(), payload, keys)
    assert isinstance(outcome, Refusal) and outcome.code in {"UPSTREAM_MALFORMED", "UPSTREAM_TOO_LARGE"}


@pytest.mark.parametrize(
    "name", ["oht/v1/oht-001/up", "oht/v2/oht-001/up/results", "oht/v1/+/up/results", "x/v1/a/up/b"]
)
def test_only_up_topics_are_records(keys: DeviceKeys, name: str) -> None:
    outcome = check(name, encode_record(signed()), keys)
    assert isinstance(outcome, Refusal) and outcome.code == "UPSTREAM_MALFORMED" and outcome.agent is None
    assert parse_up_topic(topic()) == (AGENT, "results")


# ------------------------------------------------------------------------------ the keys file
def test_the_keys_file_takes_base64_and_pem(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(
        f"# pinned 2026-03-01\n\"{AGENT}\" = \"{DEVICE.public.base64()}\"\n'oht.002' = '''\n{OTHER.public.pem()}'''\n"
    )
    keys = read_device_keys(path)
    assert keys[AGENT].raw == DEVICE.public.raw and keys["oht.002"].raw == OTHER.public.raw


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('"oht-001" = "short"\n', ["line 1", "'oht-001'"]),
        ('# robots\n\n"oht-001" = 7\n', ["line 3", "'oht-001'", "quoted string"]),
        ('oht.001 = "x"\n', ["line 1", "'oht'"]),  # a dotted bare key is a table, not an agent id
        ('"bad id!" = "x"\n', ["line 1", "agent id"]),
        ('"oht-001" = \n', ["line 1"]),  # TOML's own message names the line
        (f'"oht-001" = "{DEVICE.public.base64()}"\n"oht-002" = "{DEVICE.public.base64()}"\n', ["line 2", "same key"]),
    ],
)
def test_a_malformed_keys_file_names_the_file_and_the_entry(tmp_path: Path, text: str, names: list[str]) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    with pytest.raises(DeviceKeysInvalid) as err:
        read_device_keys(path)
    assert err.value.code == "CENTRAL_DEVICE_KEYS_INVALID" and err.value.hint
    for name in [str(path), *names]:
        assert name in err.value.message, (name, err.value.message)


def test_the_registry_follows_the_file_and_keeps_the_last_good_keys(tmp_path: Path) -> None:
    path = keys_file(tmp_path / "keys.toml", {AGENT: DEVICE})
    keys = DeviceKeys(path)
    assert keys.get("oht-002") is None and not keys.refresh()  # unchanged: not read again
    keys_file(path, {AGENT: DEVICE, "oht-002": OTHER})
    assert keys.refresh() and keys.get("oht-002") is not None
    path.write_text('"oht-002" = \n')  # half-written by an editor
    assert not keys.refresh() and keys.get("oht-002") is not None and len(keys) == 2
    assert not keys.refresh()  # the broken file is reported once, not before every batch
    keys_file(path, {"oht-002": OTHER})
    assert keys.reload() and keys.get(AGENT) is None
