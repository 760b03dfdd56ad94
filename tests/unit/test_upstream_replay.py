"""The command, record and ack rules, one case at a time (tests/property/test_upstream_replay.py
checks them over whole delivery sequences)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.store.clock import format_ts
from agent.sync import envelope, replay
from agent.sync.identity import DeviceIdentity
from agent.sync.replay import CommandOutcome, CommandRules, RecordOutcome

CENTRAL = DeviceIdentity(Ed25519PrivateKey.generate())
DEVICE = DeviceIdentity(Ed25519PrivateKey.generate())
NOW = datetime(2025, 1, 31, 12, 0, 0, tzinfo=UTC)
RULES = CommandRules(agent="oht-001", max_age_s=300, clock_skew_s=30)


def _command(*, issued: float = -1, expires: float = 60, signer: DeviceIdentity = CENTRAL, agent: str | None = None,
             command_id: str = "c-1") -> envelope.Command:  # fmt: skip
    return envelope.make_command(
        command_id=command_id, type="move", params={"to": 5}, agent=agent, sign=signer.sign,
        issued_at=format_ts(NOW + timedelta(seconds=issued)), not_after=format_ts(NOW + timedelta(seconds=expires)),
    )  # fmt: skip


def _judge(command: envelope.Command, *, seen: bool = False) -> replay.CommandDecision:
    return replay.judge_command(command, central_key=CENTRAL.public, seen_before=seen, now=NOW, rules=RULES)


@pytest.mark.parametrize(
    ("command", "seen", "outcome", "code"),
    [
        (_command(), False, CommandOutcome.ACCEPTED, None),
        (_command(agent="oht-001"), False, CommandOutcome.ACCEPTED, None),
        (_command(), True, CommandOutcome.DUPLICATE, "UPSTREAM_REPLAYED"),
        (_command(signer=DEVICE), False, CommandOutcome.REJECTED, "UPSTREAM_SIGNATURE_INVALID"),
        (_command(agent="oht-002"), False, CommandOutcome.REJECTED, "UPSTREAM_WRONG_AGENT"),
        (_command(expires=0), False, CommandOutcome.EXPIRED, "UPSTREAM_EXPIRED"),  # at not_after: too late
        (_command(expires=0.001), False, CommandOutcome.ACCEPTED, None),
        (_command(issued=-300), False, CommandOutcome.ACCEPTED, None),  # the window's edge
        (_command(issued=-300.001), False, CommandOutcome.REJECTED, "UPSTREAM_STALE"),
        (_command(issued=30), False, CommandOutcome.ACCEPTED, None),  # the skew's edge
        (_command(issued=30.001, expires=90), False, CommandOutcome.REJECTED, "UPSTREAM_STALE"),
    ],
)
def test_each_rule(command: envelope.Command, seen: bool, outcome: CommandOutcome, code: str | None) -> None:
    decision = _judge(command, seen=seen)
    assert (decision.outcome, decision.code) == (outcome, code)
    assert decision.runs == (outcome is CommandOutcome.ACCEPTED)
    assert bool(decision.reason) == (code is not None)


def test_the_order_of_the_checks() -> None:
    # A forged copy of a known command is refused for its signature, not taken as a repeat.
    assert _judge(_command(signer=DEVICE), seen=True).code == "UPSTREAM_SIGNATURE_INVALID"
    # A late repeat of a command already accepted stays a repeat: no contradicting 'expired' receipt.
    assert _judge(_command(issued=-900, expires=-600), seen=True).outcome is CommandOutcome.DUPLICATE
    # Past its deadline and stale as well: expired says more.
    assert _judge(_command(issued=-900, expires=-600)).outcome is CommandOutcome.EXPIRED


def test_a_refusal_receipt_matches_a_stored_commands_record() -> None:
    command = _command(signer=DEVICE)
    receipt = replay.rejection_receipt(command, _judge(command), "2025-01-31T12:00:00.000000Z")
    assert receipt["source"] == "upstream" and receipt["idempotency_key"] == "c-1" and receipt["type"] == "move"
    assert (receipt["state"], receipt["error_code"]) == ("rejected", "UPSTREAM_SIGNATURE_INVALID")
    with pytest.raises(ValueError):
        replay.rejection_receipt(_command(), _judge(_command()), "2025-01-31T12:00:00.000000Z")


ROW = "01900000-0000-7000-8000-0000000000aa"


def _record(signer: DeviceIdentity = DEVICE, **changes: object) -> envelope.Record:
    fields: dict[str, object] = {"agent": "oht-001", "stream": "results", "seq": 3, "id": ROW, "kind": "command",
                                 "at": "2025-01-31T12:00:00.000000Z", "body": {}}  # fmt: skip
    fields.update(changes)
    return signer.sign_record(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("record", "topic", "committed", "outcome", "code"),
    [
        (_record(), ("oht-001", "results"), None, RecordOutcome.COMMIT, None),
        (_record(), ("oht-001", "results"), ROW, RecordOutcome.DUPLICATE, None),
        (_record(CENTRAL), ("oht-001", "results"), None, RecordOutcome.REFUSED, "UPSTREAM_SIGNATURE_INVALID"),
        (_record(CENTRAL), ("oht-001", "results"), ROW, RecordOutcome.REFUSED, "UPSTREAM_SIGNATURE_INVALID"),
        (_record(), ("oht-002", "results"), None, RecordOutcome.REFUSED, "UPSTREAM_WRONG_AGENT"),
        (_record(), ("oht-001", "audit"), None, RecordOutcome.REFUSED, "UPSTREAM_MALFORMED"),
        # Same seq, another record: the robot's database went back. Never acknowledged.
        (_record(), ("oht-001", "results"), "01900000-0000-7000-8000-0000000000bb", RecordOutcome.REFUSED,
         "UPSTREAM_SEQ_CONFLICT"),
    ],
)  # fmt: skip
def test_record_rules(record: envelope.Record, topic: tuple[str, str], committed: str | None,
                      outcome: RecordOutcome, code: str | None) -> None:  # fmt: skip
    decision = replay.judge_record(record, topic_agent=topic[0], topic_stream=topic[1], device_key=DEVICE.public,
                                   committed_id=committed)  # fmt: skip
    assert (decision.outcome, decision.code) == (outcome, code)


def test_a_gap_record_accounts_for_its_range() -> None:
    progress = replay.StreamProgress().account(1, 4)
    gap = _record(stream="telemetry", kind="gap", seq=10, body=envelope.Gap(5, 9, 5, "bulk quota").as_body())
    assert progress.commit(gap) == replay.StreamProgress(10, ())
    assert replay.StreamProgress().commit(gap) == replay.StreamProgress(0, ((5, 10),))


@pytest.mark.parametrize(
    ("current", "acked", "sent", "expected", "noted"),
    [
        (10, 12, 20, 12, False),
        (10, 10, 20, 10, False),  # a repeat
        (10, 7, 20, 10, True),  # older, redelivered late: ignored
        (10, 25, 20, 20, True),  # beyond what was published: never prune the unsent
        (10, 25, 5, 10, True),
    ],
)
def test_acks_only_go_forward_and_never_past_what_was_sent(
    current: int, acked: int, sent: int, expected: int, noted: bool
) -> None:
    decision = replay.accept_ack(current, acked, sent)
    assert decision.acked == expected and (decision.note is not None) == noted
