"""The record envelope as the central consumer receives it: decoded strictly, or refused with a code.

An envelope (the upstream contract, v1) is a JSON object with exactly the fields `v, agent, stream,
seq, id, kind, at, body, sig`. The consumer trusts the topic for who sent it: the broker's ACL lets
a robot's certificate publish only under `oht/v1/<its id>/up/`, so an envelope whose `agent` or
`stream` differs from its topic is refused (CENTRAL_TOPIC_MISMATCH) rather than filed under
another robot. A `gap` record's body names the telemetry range it stands for, which must lie before
its own seq: a gap that claimed later seqs would let the consumer acknowledge records it never
received, and the agent would prune them.

`verify(record)` is where the signature check plugs in: agent/sync/envelope.py verifies `sig`
(Ed25519 by the device key over the canonical JSON of the other fields) against the key pinned for
`record.agent`. This reference consumer pins no device keys, so `verify` accepts every record and
the broker's client-certificate check is the only proof of origin; a deployment that pins keys
passes its own `verify` to the consumer, and a record it refuses is dropped with
CENTRAL_SIGNATURE_INVALID, never stored.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from drivers.errors import CodedError

__all__ = [
    "ENVELOPE_FIELDS",
    "GAP_KIND",
    "MAX_ENVELOPE_BYTES",
    "Gap",
    "Record",
    "RecordInvalid",
    "SignatureInvalid",
    "TopicMismatch",
    "Verifier",
    "decode",
    "parse_up_topic",
    "verify",
]

ENVELOPE_FIELDS = frozenset({"v", "agent", "stream", "seq", "id", "kind", "at", "body", "sig"})
GAP_KIND = "gap"
MAX_ENVELOPE_BYTES = 1024 * 1024  # the agent caps a payload at 256 KiB; room for the envelope around it
_AGENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_SIG_RE = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")
_MAX_SEQ = 2**63 - 1  # SQLite's INTEGER


class RecordInvalid(CodedError):
    code = "CENTRAL_RECORD_INVALID"
    hint = "The agent sent an envelope this consumer cannot read (the field is named); check the agent's version."


class TopicMismatch(RecordInvalid):
    code = "CENTRAL_TOPIC_MISMATCH"
    hint = "The envelope names another robot or stream than its topic: a misconfigured agent id or a forged record."


class SignatureInvalid(RecordInvalid):
    code = "CENTRAL_SIGNATURE_INVALID"
    hint = "The record's signature does not match the device key pinned for this robot: check the pinned key."


@dataclass(frozen=True)
class Gap:
    """The range of telemetry seqs a gap record stands for (dropped by the agent when its outbox was full)."""

    from_seq: int
    to_seq: int
    dropped: int
    reason: str


@dataclass(frozen=True)
class Record:
    agent: str
    stream: str
    seq: int
    id: str
    kind: str
    at: str
    body: Any
    sig: str
    gap: Gap | None = None  # set when kind is "gap"

    def body_json(self) -> str:
        return json.dumps(self.body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


Verifier = Callable[[Record], bool]


def verify(record: Record) -> bool:
    """The signature hook (see the module docstring): no device key is pinned here, so accept."""
    return True


def parse_up_topic(topic: str) -> tuple[str, str]:
    """(agent, stream) of `oht/v1/<agent>/up/<stream>`; RecordInvalid for any other topic."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "oht" or parts[1] != "v1" or parts[3] != "up":
        raise RecordInvalid(f"topic {topic!r} is not oht/v1/<agent>/up/<stream>")
    agent, stream = parts[2], parts[4]
    if not _AGENT_RE.match(agent) or not _NAME_RE.match(stream):
        raise RecordInvalid(f"topic {topic!r} names no valid agent and stream")
    return agent, stream


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise RecordInvalid(f"key {key!r} appears twice")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise RecordInvalid(f"{name} is not JSON")


def _int(value: Any, name: str, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= _MAX_SEQ:
        raise RecordInvalid(f"{name} must be an integer of at least {low}")
    return value


def _str(obj: dict[str, Any], name: str) -> str:
    value = obj[name]
    if not isinstance(value, str) or not value:
        raise RecordInvalid(f"{name} must be a non-empty string")
    return value


def _timestamp(value: str) -> str:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RecordInvalid(f"at {value!r} is not an RFC 3339 timestamp") from None
    if "T" not in value or parsed.utcoffset() != timedelta(0):
        raise RecordInvalid(f"at {value!r} is not an RFC 3339 UTC timestamp")
    return value


def _gap(body: Any, seq: int) -> Gap:
    if not isinstance(body, dict) or set(body) != {"from_seq", "to_seq", "dropped", "reason"}:
        raise RecordInvalid("a gap body has exactly from_seq, to_seq, dropped and reason")
    first = _int(body["from_seq"], "body.from_seq", 1)
    last = _int(body["to_seq"], "body.to_seq", first)
    if last >= seq:
        raise RecordInvalid(f"a gap at seq {seq} cannot stand for seqs up to {last}: only earlier ones")
    dropped = _int(body["dropped"], "body.dropped", 0)
    if dropped > last - first + 1:
        raise RecordInvalid("body.dropped is more than the range holds")
    if not isinstance(body["reason"], str):
        raise RecordInvalid("body.reason must be a string")
    return Gap(first, last, dropped, body["reason"])


def decode(topic: str, payload: bytes) -> Record:
    """The envelope of one MQTT message on an up topic, checked field by field (see the module docstring)."""
    agent, stream = parse_up_topic(topic)
    if len(payload) > MAX_ENVELOPE_BYTES:
        raise RecordInvalid(f"envelope of {len(payload)} bytes exceeds {MAX_ENVELOPE_BYTES}")
    try:
        obj = json.loads(payload.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise RecordInvalid("envelope is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise RecordInvalid(f"envelope is not JSON: {exc.msg} at {exc.pos}") from None
    if not isinstance(obj, dict):
        raise RecordInvalid("envelope is not a JSON object")
    if set(obj) != ENVELOPE_FIELDS:
        missing, extra = sorted(ENVELOPE_FIELDS - set(obj)), sorted(set(obj) - ENVELOPE_FIELDS)
        raise RecordInvalid(f"envelope fields: missing {missing}, unknown {extra}")
    if type(obj["v"]) is not int or obj["v"] != 1:
        raise RecordInvalid(f"envelope version {obj['v']!r} is not 1")
    if _str(obj, "agent") != agent:
        raise TopicMismatch(f"envelope of agent {obj['agent']!r} on {topic}")
    if _str(obj, "stream") != stream:
        raise TopicMismatch(f"envelope of stream {obj['stream']!r} on {topic}")
    seq = _int(obj["seq"], "seq", 1)
    record_id = _str(obj, "id")
    try:
        uuid.UUID(record_id)
    except ValueError:
        raise RecordInvalid(f"id {record_id!r} is not a UUID") from None
    kind = _str(obj, "kind")
    if not _NAME_RE.match(kind):
        raise RecordInvalid(f"kind {kind!r} is not a lower-case name")
    at = _timestamp(_str(obj, "at"))
    sig = _str(obj, "sig")
    if not _SIG_RE.match(sig):
        raise RecordInvalid("sig is not base64url")
    gap = _gap(obj["body"], seq) if kind == GAP_KIND else None
    return Record(agent, stream, seq, record_id, kind, at, obj["body"], sig, gap)
