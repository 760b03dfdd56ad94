"""The three messages of the upstream link: a record (up), an ack (down), a command (down).

Why a codec of its own, apart from any transport: the outbox, the acks and the command rules do
not depend on MQTT, so the same envelope can ride another binding later; and the centre's team
reads one definition of what is on the wire (docs/upstream.md, docs/upstream.asyncapi.yaml).

Decoding is strict on purpose. A signed message (record, command) must arrive in its canonical
form: the canonical JSON of all its fields, `sig` included, byte for byte. A text that parses to
the same values but is spelled differently (spaces, key order, `1E2` for `100.0`, a duplicate
key, padding in the base64) is refused as UPSTREAM_MALFORMED. So there is exactly one text per
message: a changed byte is always either malformed or a failed signature, two parsers can never
read different values from one signed text, and a verifier in any language can check a signature
on the bytes it received (drop the `,"sig":"..."` member) without re-serialising anything.

Canonical JSON is the store's (`agent.store.jsoncodec.dumps`): keys sorted by code point,
separators "," and ":", UTF-8 without \\u escapes (only `"`, `\\` and control characters are
escaped), no NaN or Infinity, numbers as Python writes them (integers in full, floats as the
shortest text that reads back to the same double).

Nothing here checks a signature or a clock: `identity` verifies, `replay` judges time and repeats.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.store import jsoncodec
from agent.sync.errors import MessageMalformed, MessageTooLarge, PublicKeyInvalid, VersionUnsupported

__all__ = [
    "KIND_GAP",
    "MAX_ACK_BYTES",
    "MAX_COMMAND_BYTES",
    "MAX_RECORD_BYTES",
    "VERSION",
    "Ack",
    "Command",
    "Gap",
    "Record",
    "Signer",
    "canonical",
    "decode_ack",
    "decode_command",
    "decode_public_key",
    "decode_record",
    "encode_ack",
    "encode_command",
    "encode_record",
    "make_command",
    "make_record",
    "parse_time",
]

VERSION = 1
KIND_GAP = "gap"

# An outbox payload may be 256 Ki characters (agent/store/outbox.py), up to 4 bytes each in UTF-8;
# the other fields of a record take well under 1 KiB. A record the store accepted must always fit:
# a critical record that could not be sent would stop its stream for good.
MAX_RECORD_BYTES = 4 * 256 * 1024 + 4096
# Command params are at most 64 KiB in the store; the rest of a command is small.
MAX_COMMAND_BYTES = 96 * 1024
MAX_ACK_BYTES = 16 * 1024
MAX_ACK_STREAMS = 32
SEQ_MAX = 2**63 - 1  # SQLite's INTEGER
_SIG_BYTES = 64  # Ed25519

AGENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # as [agent] id: no MQTT wildcard, no "/"
STREAM_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")  # as an outbox kind
COMMAND_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
COMMAND_TYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,63}")  # as a stored command's type
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_TIME_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|\+00:00)")
_REASON_MAX = 200

Signer = Callable[[bytes], bytes]
"""Signs the bytes it is given (the device key's `sign`)."""


def canonical(value: Any) -> bytes:
    """The canonical JSON of `value` as UTF-8 bytes; MessageMalformed for what JSON cannot carry."""
    try:
        return jsoncodec.dumps(value).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:  # NaN, a lone surrogate, a set, too deep
        raise MessageMalformed(f"not representable as canonical JSON: {type(exc).__name__}") from None


def parse_time(text: object, field: str) -> datetime:
    """An RFC 3339 timestamp in UTC ('Z' or '+00:00', up to nanoseconds) as an aware datetime."""
    match = _TIME_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise MessageMalformed(f"{field} must be an RFC 3339 UTC timestamp such as 2025-01-31T12:00:00Z")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    micros = int((match.group(7) or "0").ljust(6, "0")[:6])
    try:
        return datetime(year, month, day, hour, minute, second, micros, tzinfo=UTC)
    except ValueError:  # 2025-02-30, 24:00, a leap second
        raise MessageMalformed(f"{field} is not a valid date and time") from None


def _reject_constant(name: str) -> Any:
    raise MessageMalformed(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise MessageMalformed("an object has the same key twice")
    return out


def _parse(raw: bytes, limit: int, what: str) -> dict[str, Any]:
    """Bytes -> the top-level object, refusing what is too large, not UTF-8 or not plain JSON."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise MessageMalformed(f"{what}: expected bytes")
    if len(raw) > limit:
        raise MessageTooLarge(f"{what} of {len(raw)} bytes exceeds {limit}")
    try:
        text = bytes(raw).decode("utf-8")
        doc = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except MessageMalformed as exc:
        raise MessageMalformed(f"{what}: {exc.message}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MessageMalformed(f"{what} is not UTF-8 JSON: {type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise MessageMalformed(f"{what} must be a JSON object")
    _version(doc, what)
    return doc


def _version(doc: Mapping[str, Any], what: str) -> None:
    v = doc.get("v")
    if type(v) is not int:
        raise MessageMalformed(f"{what}: v must be the integer {VERSION}")
    if v != VERSION:
        raise VersionUnsupported(f"{what} has envelope version {v}; this agent speaks {VERSION}")


def _fields(doc: Mapping[str, Any], required: frozenset[str], optional: frozenset[str], what: str) -> None:
    missing = sorted(required - doc.keys())
    unknown = sorted(doc.keys() - required - optional)
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(unknown)}"] if unknown else []
        )
        raise MessageMalformed(f"{what}: {'; '.join(parts)}")


def _text(doc: Mapping[str, Any], field: str, pattern: re.Pattern[str], what: str) -> str:
    value = doc[field]
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise MessageMalformed(f"{what}: {field} must match {pattern.pattern}")
    return value


def _int(value: object, field: str, low: int, what: str) -> int:
    if type(value) is not int or not low <= value <= SEQ_MAX:
        raise MessageMalformed(f"{what}: {field} must be an integer from {low} to {SEQ_MAX}")
    return value


def _sig_text(value: object, what: str) -> str:
    """A base64url (no padding) Ed25519 signature, in its only spelling."""
    try:
        if not isinstance(value, str) or not value.isascii():
            raise ValueError
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, binascii.Error):
        raise MessageMalformed(f"{what}: sig must be base64url without padding") from None
    if len(raw) != _SIG_BYTES or _b64url(raw) != value:  # the unused low bits of the last character must be 0
        raise MessageMalformed(f"{what}: sig must be the base64url of a {_SIG_BYTES}-byte signature, without padding")
    return value


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _sig_bytes(sig: str) -> bytes:
    return base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))


def _require_canonical(raw: bytes, doc: Mapping[str, Any], what: str) -> None:
    if canonical(doc) != bytes(raw):
        raise MessageMalformed(f"{what} is not in canonical form (sorted keys, no spaces, one spelling per value)")


# ------------------------------------------------------------------------------------ public keys

_ED25519_RAW = 32
# DER of a SubjectPublicKeyInfo for Ed25519 (RFC 8410): this prefix, then the 32 raw bytes.
_ED25519_SPKI = bytes.fromhex("302a300506032b6570032100")
_PEM_RE = re.compile(r"-----BEGIN PUBLIC KEY-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END PUBLIC KEY-----")


def decode_public_key(text: str) -> bytes:
    """The 32 raw bytes of an Ed25519 public key given as text: base64 (standard or URL-safe,
    padded or not) of the raw bytes, or a PEM `PUBLIC KEY` block.

    Here, with the standard library only, so that the configuration can check
    `central_public_key` without loading the crypto library into the core's start-up.
    """
    text = text.strip()
    if text.startswith("-----BEGIN"):
        match = _PEM_RE.fullmatch(text)
        if match is None:
            raise PublicKeyInvalid("not a PEM PUBLIC KEY block")
        try:
            der = base64.b64decode("".join(match.group(1).split()), validate=True)
        except (binascii.Error, ValueError):
            raise PublicKeyInvalid("the PEM block is not base64") from None
        if len(der) != len(_ED25519_SPKI) + _ED25519_RAW or not der.startswith(_ED25519_SPKI):
            raise PublicKeyInvalid("the PEM block holds a key that is not Ed25519")
        return der[len(_ED25519_SPKI) :]
    compact = text.replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise PublicKeyInvalid("not base64 and not a PEM block") from None
    if len(raw) != _ED25519_RAW:
        raise PublicKeyInvalid(f"the key is {len(raw)} bytes; an Ed25519 public key is {_ED25519_RAW}")
    return raw


# ---------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Gap:
    """The body of a `gap` record: telemetry seqs from_seq..to_seq were dropped, `dropped` of them."""

    from_seq: int
    to_seq: int
    dropped: int
    reason: str

    def as_body(self) -> dict[str, Any]:
        return {"from_seq": self.from_seq, "to_seq": self.to_seq, "dropped": self.dropped, "reason": self.reason}

    @classmethod
    def from_body(cls, body: object, seq: int) -> Gap:
        what = "gap record"
        if not isinstance(body, dict):
            raise MessageMalformed(f"{what}: body must be an object")
        _fields(body, frozenset({"from_seq", "to_seq", "dropped", "reason"}), frozenset(), what)
        first = _int(body["from_seq"], "from_seq", 1, what)
        last = _int(body["to_seq"], "to_seq", 1, what)
        dropped = _int(body["dropped"], "dropped", 1, what)
        reason = body["reason"]
        if not first <= last < seq:
            raise MessageMalformed(f"{what}: needs from_seq <= to_seq < seq (the gap record comes after the range)")
        if dropped > last - first + 1:
            raise MessageMalformed(f"{what}: dropped exceeds the range it names")
        if not isinstance(reason, str) or not 0 < len(reason) <= _REASON_MAX:
            raise MessageMalformed(f"{what}: reason must be a text of 1 to {_REASON_MAX} characters")
        return cls(first, last, dropped, reason)


_RECORD_FIELDS = frozenset({"v", "agent", "stream", "seq", "id", "kind", "at", "body", "sig"})


@dataclass(frozen=True)
class Record:
    """One outbox row on its way up, signed by the device key. `at` and `body` are as stored."""

    agent: str
    stream: str
    seq: int
    id: str
    kind: str
    at: str
    body: Any
    sig: str

    def unsigned(self) -> dict[str, Any]:
        """Every field but `sig`: what the signature covers."""
        return {"v": VERSION, "agent": self.agent, "stream": self.stream, "seq": self.seq, "id": self.id,
                "kind": self.kind, "at": self.at, "body": self.body}  # fmt: skip

    def signing_bytes(self) -> bytes:
        return canonical(self.unsigned())

    def signature(self) -> bytes:
        return _sig_bytes(self.sig)

    def gap(self) -> Gap | None:
        """The range a gap record accounts for; None for every other kind."""
        return Gap.from_body(self.body, self.seq) if self.kind == KIND_GAP else None


def _record_from(doc: Mapping[str, Any], what: str = "record") -> Record:
    _fields(doc, _RECORD_FIELDS, frozenset(), what)
    at = doc["at"]
    parse_time(at, f"{what}: at")
    record = Record(
        agent=_text(doc, "agent", AGENT_RE, what),
        stream=_text(doc, "stream", STREAM_RE, what),
        seq=_int(doc["seq"], "seq", 1, what),
        id=_text(doc, "id", UUID_RE, what),
        kind=_text(doc, "kind", KIND_RE, what),
        at=at,
        body=doc["body"],
        sig=_sig_text(doc["sig"], what),
    )
    record.gap()  # a gap record's body is part of the protocol: checked here
    return record


def make_record(*, agent: str, stream: str, seq: int, id: str, kind: str, at: str, body: Any, sign: Signer) -> Record:
    """A signed record from an outbox row; MessageMalformed/MessageTooLarge if it could not be decoded."""
    unsigned = {
        "v": VERSION,
        "agent": agent,
        "stream": stream,
        "seq": seq,
        "id": id,
        "kind": kind,
        "at": at,
        "body": body,
    }
    sig = _b64url(sign(canonical(unsigned)))
    record = _record_from({**unsigned, "sig": sig})
    encode_record(record)  # refuses now what the consumer would refuse for its size
    return record


def encode_record(record: Record) -> bytes:
    raw = canonical({**record.unsigned(), "sig": record.sig})
    if len(raw) > MAX_RECORD_BYTES:
        raise MessageTooLarge(f"record {record.stream}/{record.seq} is {len(raw)} bytes, more than {MAX_RECORD_BYTES}")
    return raw


def decode_record(raw: bytes) -> Record:
    """Bytes as published -> Record. Checks form only; `identity.verify_record` checks the signature."""
    doc = _parse(raw, MAX_RECORD_BYTES, "record")
    record = _record_from(doc)
    _require_canonical(raw, doc, "record")
    return record


# ------------------------------------------------------------------------------------------- acks


@dataclass(frozen=True)
class Ack:
    """Cumulative acknowledgement: per stream, every record up to that seq is committed centrally."""

    acks: Mapping[str, int]


def _ack_from(doc: Mapping[str, Any]) -> Ack:
    what = "ack"
    _fields(doc, frozenset({"v", "acks"}), frozenset(), what)
    acks = doc["acks"]
    if not isinstance(acks, dict) or not 0 < len(acks) <= MAX_ACK_STREAMS:
        raise MessageMalformed(f"{what}: acks must be an object of 1 to {MAX_ACK_STREAMS} streams")
    for stream, seq in acks.items():
        if STREAM_RE.fullmatch(stream) is None:
            raise MessageMalformed(f"{what}: stream name {stream[:40]!r} must match {STREAM_RE.pattern}")
        _int(seq, f"acks.{stream}", 0, what)
    return Ack(dict(acks))


def encode_ack(ack: Ack) -> bytes:
    doc = {"v": VERSION, "acks": dict(ack.acks)}
    _ack_from(doc)
    return canonical(doc)


def decode_ack(raw: bytes) -> Ack:
    """Acks are not signed (the broker's access rules protect the topic), so any JSON spelling is read."""
    return _ack_from(_parse(raw, MAX_ACK_BYTES, "ack"))


# --------------------------------------------------------------------------------------- commands

_COMMAND_FIELDS = frozenset({"v", "command_id", "type", "params", "not_after", "issued_at", "sig"})
_COMMAND_OPTIONAL = frozenset({"agent"})


@dataclass(frozen=True)
class Command:
    """A command from the centre, signed by the central key. Times are kept as sent (they are signed).

    `agent` is optional: when the centre names the robot, a command copied to another robot's
    topic is refused there (UPSTREAM_WRONG_AGENT) instead of running on a robot that never saw it.
    """

    command_id: str
    type: str
    params: Mapping[str, Any]
    not_after: str
    issued_at: str
    sig: str
    agent: str | None = None

    def unsigned(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"v": VERSION, "command_id": self.command_id, "type": self.type, "params": self.params,
                               "not_after": self.not_after, "issued_at": self.issued_at}  # fmt: skip
        if self.agent is not None:
            doc["agent"] = self.agent
        return doc

    def signing_bytes(self) -> bytes:
        return canonical(self.unsigned())

    def signature(self) -> bytes:
        return _sig_bytes(self.sig)

    @property
    def not_after_at(self) -> datetime:
        return parse_time(self.not_after, "not_after")

    @property
    def issued_at_at(self) -> datetime:
        return parse_time(self.issued_at, "issued_at")


def _command_from(doc: Mapping[str, Any]) -> Command:
    what = "command"
    _fields(doc, _COMMAND_FIELDS, _COMMAND_OPTIONAL, what)
    params = doc["params"]
    if not isinstance(params, dict):
        raise MessageMalformed(f"{what}: params must be an object")
    parse_time(doc["not_after"], f"{what}: not_after")
    parse_time(doc["issued_at"], f"{what}: issued_at")
    return Command(
        command_id=_text(doc, "command_id", COMMAND_ID_RE, what),
        type=_text(doc, "type", COMMAND_TYPE_RE, what),
        params=params,
        not_after=doc["not_after"],
        issued_at=doc["issued_at"],
        sig=_sig_text(doc["sig"], what),
        agent=_text(doc, "agent", AGENT_RE, what) if "agent" in doc else None,
    )


def make_command(
    *,
    command_id: str,
    type: str,
    params: Mapping[str, Any],
    not_after: str,
    issued_at: str,
    sign: Signer,
    agent: str | None = None,
) -> Command:
    """A signed command (what the centre sends; the agent uses it in tests and tools)."""
    unsigned = Command(command_id, type, dict(params), not_after, issued_at, "", agent).unsigned()
    command = _command_from({**unsigned, "sig": _b64url(sign(canonical(unsigned)))})
    encode_command(command)
    return command


def encode_command(command: Command) -> bytes:
    raw = canonical({**command.unsigned(), "sig": command.sig})
    if len(raw) > MAX_COMMAND_BYTES:
        raise MessageTooLarge(f"command {command.command_id} is {len(raw)} bytes, more than {MAX_COMMAND_BYTES}")
    return raw


def decode_command(raw: bytes) -> Command:
    """Bytes as received -> Command. Checks form only; `identity.CentralKey.verify_command` the signature."""
    doc = _parse(raw, MAX_COMMAND_BYTES, "command")
    command = _command_from(doc)
    _require_canonical(raw, doc, "command")
    return command
