"""docs/upstream.asyncapi.yaml and docs/upstream.md say what the code does.

The AsyncAPI file must hold every channel and message of the contract, with the QoS and retain
flags of the binding; its JSON Schemas must accept the messages envelope.py makes and refuse
broken ones; its examples are test vectors that decode and verify with the robot's own code. No
JSON Schema library is installed, so a small validator for the keywords the file uses is below;
it refuses any other keyword, so a schema cannot grow past what is checked here.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.sync import envelope
from agent.sync.identity import DeviceIdentity, PinnedKey, verify_command, verify_record

yaml = pytest.importorskip("yaml")

DOCS = Path(__file__).resolve().parents[2] / "docs"
CONTRACT_STREAMS = ["results", "alarms", "events", "audit", "telemetry"]
CONTRACT_CHANNELS = {  # address -> (the agent's action, retained)
    "oht/v1/{agentId}/up/{stream}": ("send", False),
    "oht/v1/{agentId}/ack": ("receive", False),
    "oht/v1/{agentId}/cmd": ("receive", False),
    "oht/v1/{agentId}/status": ("send", True),
}
DEVICE = DeviceIdentity(Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return yaml.safe_load((DOCS / "upstream.asyncapi.yaml").read_text(encoding="utf-8"))


def _follow(spec: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = spec
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _deref(spec: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and set(node) == {"$ref"}:
        node = _follow(spec, node["$ref"])
    return node


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) in (int, float),
    "boolean": lambda v: type(v) is bool,
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}
_KEYWORDS = {"$ref", "type", "const", "enum", "pattern", "minLength", "maxLength", "minimum", "maximum", "required",
             "properties", "additionalProperties", "propertyNames", "minProperties", "maxProperties", "if", "then",
             "description", "title", "format"}  # fmt: skip


def errors(spec: dict[str, Any], schema: Any, value: Any, where: str = "$") -> list[str]:
    """The JSON Schema (draft 7) keywords the file uses; [] when `value` is valid."""
    schema = _deref(spec, schema)
    assert set(schema) <= _KEYWORDS, f"keywords not checked here: {set(schema) - _KEYWORDS}"
    out: list[str] = []
    if "type" in schema and not _TYPES[schema["type"]](value):
        return [f"{where}: not {schema['type']}"]
    if "const" in schema and not (value == schema["const"] and type(value) is type(schema["const"])):
        out.append(f"{where}: not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: not one of {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            out.append(f"{where}: does not match {schema['pattern']}")
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            out.append(f"{where}: length")
    if type(value) in (int, float) and type(value) is not bool:
        if not schema.get("minimum", value) <= value <= schema.get("maximum", value):
            out.append(f"{where}: out of range")
    if isinstance(value, dict):
        out += [f"{where}: missing {k}" for k in schema.get("required", []) if k not in value]
        if not schema.get("minProperties", 0) <= len(value) <= schema.get("maxProperties", len(value)):
            out.append(f"{where}: number of properties")
        props = schema.get("properties", {})
        for key, item in value.items():
            if "propertyNames" in schema:
                out += errors(spec, schema["propertyNames"], key, f"{where}.<{key}>")
            if key in props:
                out += errors(spec, props[key], item, f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                out.append(f"{where}: unexpected {key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                out += errors(spec, schema["additionalProperties"], item, f"{where}.{key}")
    if "if" in schema and not errors(spec, schema["if"], value, where):
        out += errors(spec, schema.get("then", {}), value, where)
    return out


def _payload_schema(spec: dict[str, Any], message: str) -> Any:
    return _deref(spec, spec["components"]["messages"][message])["payload"]


def test_every_channel_of_the_contract_with_its_qos_and_retain_flag(spec: dict[str, Any]) -> None:
    assert str(spec["asyncapi"]).startswith("3.0")
    channels = {c["address"]: name for name, c in spec["channels"].items()}
    assert set(channels) == set(CONTRACT_CHANNELS)
    for address, (action, retained) in CONTRACT_CHANNELS.items():
        ops = [
            op
            for op in spec["operations"].values()
            if _deref(spec, op["channel"]) is spec["channels"][channels[address]]
        ]
        assert len(ops) == 1, address
        assert ops[0]["action"] == action
        assert ops[0]["bindings"]["mqtt"]["qos"] == 1 and ops[0]["bindings"]["mqtt"]["retain"] is retained
    records = spec["channels"][channels["oht/v1/{agentId}/up/{stream}"]]
    assert records["parameters"]["stream"]["enum"] == CONTRACT_STREAMS
    will = spec["servers"]["site"]["bindings"]["mqtt"]["lastWill"]
    assert (will["topic"], will["retain"], will["qos"]) == (
        "oht/v1/{agentId}/status",
        True,
        1,
    ) and "CONNECTIONBROKEN" in will["message"]
    assert "$share/central/oht/v1/+/up/+" in records["description"]


def test_every_message_of_the_contract_is_on_its_channel(spec: dict[str, Any]) -> None:
    expected = {"oht/v1/{agentId}/up/{stream}": "record", "oht/v1/{agentId}/ack": "ack",
                "oht/v1/{agentId}/cmd": "command", "oht/v1/{agentId}/status": "status"}  # fmt: skip
    for channel in spec["channels"].values():
        (message,) = channel["messages"].values()
        assert message["$ref"] == f"#/components/messages/{expected[channel['address']]}"
    assert set(spec["components"]["messages"]) == set(expected.values())


def test_the_schemas_use_the_codecs_own_patterns_and_limits(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    record, command = schemas["record"]["properties"], schemas["command"]["properties"]
    pairs = [
        (schemas["agentId"]["pattern"], envelope.AGENT_RE), (record["stream"]["pattern"], envelope.STREAM_RE),
        (record["kind"]["pattern"], envelope.KIND_RE), (record["id"]["pattern"], envelope.UUID_RE),
        (command["command_id"]["pattern"], envelope.COMMAND_ID_RE),
        (command["type"]["pattern"], envelope.COMMAND_TYPE_RE), (schemas["timestamp"]["pattern"], envelope._TIME_RE),
    ]  # fmt: skip
    for pattern, regex in pairs:
        assert pattern == f"^{regex.pattern}$"
    assert schemas["seq"]["maximum"] == envelope.SEQ_MAX
    assert schemas["ack"]["properties"]["acks"]["maxProperties"] == envelope.MAX_ACK_STREAMS
    assert set(schemas["record"]["required"]) == set(envelope.Record.__dataclass_fields__) | {"v"}
    assert set(schemas["command"]["properties"]) == set(envelope.Command.__dataclass_fields__) | {"v"}


def _made_by_the_codec() -> dict[str, list[Any]]:
    row = dict(agent="oht-001", id="01900000-0000-7000-8000-0000000000aa", at="2025-01-31T12:00:00.000000Z")
    records = [DEVICE.sign_record(stream=stream, seq=seq, kind=kind, body=body, **row)
               for stream, seq, kind, body in [
                   ("results", 1, "command", {"state": "queued"}), ("alarms", 2, "alarm", None),
                   ("telemetry", 9, "telemetry", [1.5, "x"]),
                   ("telemetry", 12, "gap", envelope.Gap(3, 11, 9, "bulk quota").as_body())]]  # fmt: skip
    commands = [envelope.make_command(command_id="c-1", type="stop", params={}, not_after="2025-01-31T12:01:00Z",
                                      issued_at="2025-01-31T12:00:00Z", agent=agent, sign=DEVICE.sign)
                for agent in (None, "oht-001")]  # fmt: skip
    return {
        "record": [envelope.decode_record(envelope.encode_record(r)).__dict__ | {"v": 1} for r in records],
        "command": [{k: v for k, v in (c.__dict__ | {"v": 1}).items() if v is not None} for c in commands],
        "ack": [{"v": 1, "acks": {"results": 7, "telemetry": 0}}],
        "status": [{"state": s, "at": "2025-01-31T12:00:00Z"} for s in ("ONLINE", "OFFLINE", "CONNECTIONBROKEN")],
    }


def test_the_schemas_accept_what_the_codec_makes(spec: dict[str, Any]) -> None:
    for message, values in _made_by_the_codec().items():
        for value in values:
            assert errors(spec, _payload_schema(spec, message), value) == [], (message, value)
    made = _made_by_the_codec()
    assert envelope.decode_command(envelope.canonical(made["command"][1])).agent == "oht-001"
    assert envelope.decode_ack(envelope.canonical(made["ack"][0])).acks["results"] == 7


@pytest.mark.parametrize(
    ("message", "change", "words"),
    [
        ("record", {"sig": None}, "missing sig"),
        ("record", {"extra": 1}, "unexpected extra"),
        ("record", {"stream": "Results"}, "does not match"),
        ("record", {"seq": 0}, "out of range"),
        ("record", {"sig": "A" * 85 + "B"}, "does not match"),  # a signature's last character has 4 unused bits
        ("record", {"kind": "gap", "body": {"from_seq": 1}}, "missing to_seq"),
        ("command", {"issued_at": "2025-01-31T12:00:00+01:00"}, "does not match"),
        ("command", {"params": []}, "not object"),
        ("ack", {"acks": {}}, "number of properties"),
        ("ack", {"acks": {"results": -1}}, "out of range"),
        ("status", {"state": "AWAY"}, "not one of"),
    ],
)
def test_the_schemas_refuse_what_the_codec_refuses(
    spec: dict[str, Any], message: str, change: dict[str, Any], words: str
) -> None:
    value = dict(_made_by_the_codec()[message][0])
    value.update(change)
    value = {k: v for k, v in value.items() if v is not None}
    found = errors(spec, _payload_schema(spec, message), value)
    assert any(words in e for e in found), found
    if message in ("record", "command", "ack"):
        decode = {"record": envelope.decode_record, "command": envelope.decode_command, "ack": envelope.decode_ack}[
            message
        ]
        with pytest.raises(envelope.MessageMalformed):
            decode(envelope.canonical(value))


def _example_keys(spec: dict[str, Any]) -> dict[str, PinnedKey]:
    keys = {name: PinnedKey.from_text(text) for name, text in spec["info"]["x-example-keys"].items()}
    for name, key in keys.items():  # the seeds docs/upstream.md gives
        seed = hashlib.sha256(f"oht-agent example {name} key".encode()).digest()
        assert DeviceIdentity(Ed25519PrivateKey.from_private_bytes(seed)).public.raw == key.raw
    return keys


def test_the_examples_are_test_vectors(spec: dict[str, Any]) -> None:
    keys = _example_keys(spec)
    text = (DOCS / "upstream.md").read_text(encoding="utf-8")
    assert keys["device"].base64() in text and keys["central"].base64() in text
    messages = spec["components"]["messages"]
    for name, decode in (("record", envelope.decode_record), ("command", envelope.decode_command),
                         ("ack", envelope.decode_ack), ("status", None)):  # fmt: skip
        assert messages[name]["examples"]
        for example in messages[name]["examples"]:
            payload = example["payload"]
            assert errors(spec, _payload_schema(spec, name), payload) == [], example["name"]
            if decode is None:
                continue
            decoded = decode(envelope.canonical(payload))
            if name == "record":
                verify_record(decoded, keys["device"])
            elif name == "command":
                verify_command(decoded, keys["central"])
    seeds = hashlib.sha256(b"oht-agent example central key").digest()
    central = DeviceIdentity(Ed25519PrivateKey.from_private_bytes(seeds))
    (move,) = messages["command"]["examples"]
    fields = {k: v for k, v in move["payload"].items() if k not in ("sig", "v")}
    again = envelope.make_command(**fields, sign=central.sign)  # Ed25519 is deterministic
    assert again.sig == move["payload"]["sig"]


def test_the_byte_level_verifier_in_the_docs_works(spec: dict[str, Any]) -> None:
    """docs/upstream.md shows how to check a record's signature on the received bytes; run it."""
    text = (DOCS / "upstream.md").read_text(encoding="utf-8")
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    namespace: dict[str, Any] = {"base64": base64}
    exec(code, namespace)
    keys = _example_keys(spec)
    for example in spec["components"]["messages"]["record"]["examples"]:
        signed, sig = namespace["signed_bytes"](envelope.canonical(example["payload"]))
        keys["device"].key.verify(sig, signed)
        assert signed == envelope.decode_record(envelope.canonical(example["payload"])).signing_bytes()
