"""One MQTT message on an up topic -> a record to commit, or the refusal with its code.

The envelope is the agent's (`agent.sync.envelope.decode_record`: strict, canonical, one text per
record) and so are the rules (`agent.sync.replay.judge_record`: the signature with the device key
pinned for the robot, then the robot and stream against the topic). What is central's own:

- the topic names the robot, because the broker's ACL lets a robot's certificate publish only
  under `oht/v1/<its id>/up/`; so the key is looked up by the topic's agent id, and a record
  signed by robot A but published under B's topic fails B's key;
- a robot whose key is not pinned is refused (CENTRAL_DEVICE_UNKNOWN): never stored, never
  acknowledged, so its outbox keeps everything until it is enrolled.

A refusal is returned, not raised: a batch of 200 records from a robot with a wrong key is 200
ordinary outcomes. Whether a seq is already committed under another id is the ledger's to decide,
in the transaction that stores the record (see central/ledger.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.sync.envelope import AGENT_RE, STREAM_RE, Record, decode_record
from agent.sync.errors import MessageMalformed, UpstreamError
from agent.sync.replay import RecordOutcome, judge_record
from central.device_keys import DeviceKeys
from central.errors import DeviceUnknown

__all__ = ["Record", "Refusal", "check", "parse_up_topic"]


@dataclass(frozen=True)
class Refusal:
    """A record not taken: the code (UPSTREAM_* or CENTRAL_*) and why, with the topic's robot if it names one."""

    agent: str | None
    code: str
    reason: str


def parse_up_topic(topic: str) -> tuple[str, str]:
    """(agent, stream) of `oht/v1/<agent>/up/<stream>`; MessageMalformed for any other topic."""
    parts = topic.split("/")
    if (
        len(parts) != 5
        or parts[:2] != ["oht", "v1"]
        or parts[3] != "up"
        or AGENT_RE.fullmatch(parts[2]) is None
        or STREAM_RE.fullmatch(parts[4]) is None
    ):
        raise MessageMalformed(f"topic {topic[:120]!r} is not oht/v1/<agent>/up/<stream>")
    return parts[2], parts[4]


def check(topic: str, payload: bytes, keys: DeviceKeys) -> Record | Refusal:
    """The record of one message if it may be committed, else the Refusal."""
    try:
        agent, stream = parse_up_topic(topic)
    except MessageMalformed as exc:
        return Refusal(None, exc.code, exc.message)
    key = keys.get(agent)
    if key is None:
        return Refusal(agent, DeviceUnknown.code, f"no device key pinned for {agent} in {keys.path}")
    try:
        record = decode_record(payload)
    except UpstreamError as exc:
        return Refusal(agent, exc.code, exc.message)
    decision = judge_record(record, topic_agent=agent, topic_stream=stream, device_key=key, committed_id=None)
    if decision.outcome is RecordOutcome.REFUSED:
        return Refusal(agent, decision.code or UpstreamError.code, decision.reason)
    return record
