"""When a command runs once or not at all, when a record counts, how far an ack goes.

Why rules apart from storage: MQTT delivers at least once, so every message may arrive twice, late
or out of order, and a broker or anyone with its credentials may send one again later. These
functions decide from the message, the pinned key, the clock and what the caller already knows;
they keep nothing. Whoever calls them owns the durable part:

- Commands: the durable dedup is the commands table's idempotency on (source 'upstream',
  idempotency key = command_id). `seen_before` is the caller's early answer (the command is in the
  table); the commit itself is the authority: a submit that returns `created=False` is a replay
  found at the last moment and is treated as `duplicate`, whatever was decided before. A command
  refused here (signature, stale, wrong robot) is not committed, so a second delivery of it is
  judged, and refused, again.
- Records, on the central side: the consumer's own table of committed (agent, stream, seq) holds
  the id committed under each seq; `judge_record` decides from it.
- Acks, on the agent's side: the agent keeps the highest ack per stream; `accept_ack` gives the
  next value.

Order of the command checks, and why: the signature first (nothing in an unauthenticated message
is trusted, not even its id), then the robot it names, then repeats (a duplicate of a command
that was accepted must not produce a contradicting 'expired' receipt when it arrives late), then
not_after (expired: never run), then issued_at (stale: too old, or from a clock too far ahead).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agent.sync.envelope import Command, Record
from agent.sync.errors import (
    CommandExpired,
    CommandReplayed,
    CommandStale,
    MessageMalformed,
    SeqConflict,
    SignatureInvalid,
    UpstreamError,
    WrongAgent,
)
from agent.sync.identity import PinnedKey, verify_command, verify_record

__all__ = [
    "AckDecision",
    "CommandDecision",
    "CommandOutcome",
    "CommandRules",
    "RecordDecision",
    "RecordOutcome",
    "StreamProgress",
    "accept_ack",
    "judge_command",
    "judge_record",
    "rejection_receipt",
]


class CommandOutcome(enum.StrEnum):
    ACCEPTED = "accepted"  # commit it (idempotently) and run it
    EXPIRED = "expired"  # receipt 'expired', never run
    REJECTED = "rejected"  # receipt 'rejected' with the code, never run
    DUPLICATE = "duplicate"  # handled before: no new receipt, nothing runs


@dataclass(frozen=True)
class CommandRules:
    """The time bounds of `[upstream]` and the robot's own id."""

    agent: str
    max_age_s: float
    clock_skew_s: float


@dataclass(frozen=True)
class CommandDecision:
    outcome: CommandOutcome
    code: str | None = None  # an UPSTREAM_* code for every outcome but ACCEPTED
    reason: str = ""

    @property
    def runs(self) -> bool:
        return self.outcome is CommandOutcome.ACCEPTED


def _refused(outcome: CommandOutcome, error: UpstreamError) -> CommandDecision:
    return CommandDecision(outcome, error.code, error.message)


def judge_command(
    command: Command, *, central_key: PinnedKey, seen_before: bool, now: datetime, rules: CommandRules
) -> CommandDecision:
    """Decide one decoded command (decoding errors are the caller's: no command_id, no receipt)."""
    try:
        verify_command(command, central_key)
    except SignatureInvalid as exc:
        return _refused(CommandOutcome.REJECTED, exc)
    if command.agent is not None and command.agent != rules.agent:
        return _refused(CommandOutcome.REJECTED, WrongAgent(f"command {command.command_id} is for {command.agent}"))
    if seen_before:
        return _refused(CommandOutcome.DUPLICATE, CommandReplayed(f"command {command.command_id} was handled before"))
    if now >= command.not_after_at:
        return _refused(
            CommandOutcome.EXPIRED,
            CommandExpired(f"command {command.command_id}: not_after {command.not_after} has passed"),
        )
    issued = command.issued_at_at
    if issued > now + timedelta(seconds=rules.clock_skew_s):
        return _refused(
            CommandOutcome.REJECTED,
            CommandStale(f"command {command.command_id}: issued_at {command.issued_at} is in the future"),
        )
    if now - issued > timedelta(seconds=rules.max_age_s):
        return _refused(
            CommandOutcome.REJECTED,
            CommandStale(f"command {command.command_id}: issued_at {command.issued_at} is too old"),
        )
    return CommandDecision(CommandOutcome.ACCEPTED)


def rejection_receipt(command: Command, decision: CommandDecision, at: str) -> dict[str, Any]:
    """The body of the receipt for a command refused before it was committed (a `command_result`
    on `results`), with the keys of a stored command's record so the centre matches both alike."""
    if decision.outcome not in (CommandOutcome.REJECTED, CommandOutcome.EXPIRED):
        raise ValueError(f"a {decision.outcome} command has no rejection receipt")
    return {
        "source": "upstream",
        "idempotency_key": command.command_id,
        "type": command.type,
        "state": str(decision.outcome),
        "error_code": decision.code,
        "error_message": decision.reason,
        "updated_at": at,
    }


# ---------------------------------------------------------------------- records (central side)


class RecordOutcome(enum.StrEnum):
    COMMIT = "commit"  # new: commit it, then count it for the ack
    DUPLICATE = "duplicate"  # committed before: acknowledge again, commit nothing
    REFUSED = "refused"  # never commit, never acknowledge


@dataclass(frozen=True)
class RecordDecision:
    outcome: RecordOutcome
    code: str | None = None
    reason: str = ""


def judge_record(
    record: Record, *, topic_agent: str, topic_stream: str, device_key: PinnedKey, committed_id: str | None
) -> RecordDecision:
    """Decide one decoded record. `committed_id`: the id already committed under (agent, stream, seq), if any.

    A record must come from the robot its topic names, on its stream's topic, signed by that
    robot's pinned device key. A record already committed with the same id is a duplicate; a
    different record under a committed seq is a conflict, never a duplicate: acknowledging it
    would make the robot delete a record the centre does not have.
    """
    try:
        verify_record(record, device_key)
    except SignatureInvalid as exc:
        return RecordDecision(RecordOutcome.REFUSED, exc.code, exc.message)
    error: UpstreamError
    if record.agent != topic_agent:
        error = WrongAgent(f"record of {record.agent} published under {topic_agent}'s topic")
        return RecordDecision(RecordOutcome.REFUSED, error.code, error.message)
    if record.stream != topic_stream:
        error = MessageMalformed(f"record of stream {record.stream} on the {topic_stream} topic")
        return RecordDecision(RecordOutcome.REFUSED, error.code, error.message)
    if committed_id is None:
        return RecordDecision(RecordOutcome.COMMIT)
    if committed_id == record.id:
        return RecordDecision(RecordOutcome.DUPLICATE)
    error = SeqConflict(f"{record.agent} {record.stream}/{record.seq} was committed as {committed_id}, now {record.id}")
    return RecordDecision(RecordOutcome.REFUSED, error.code, error.message)


@dataclass(frozen=True)
class StreamProgress:
    """The consumer's cumulative ack of one stream: `through`, and what is committed beyond it.

    `ahead` holds disjoint, sorted, non-adjacent ranges above `through + 1`: ranges, so that a gap
    record accounting for a million dropped telemetry seqs costs one entry.
    """

    through: int = 0
    ahead: tuple[tuple[int, int], ...] = ()

    def account(self, first: int, last: int) -> StreamProgress:
        """Seqs first..last are committed (or accounted for by a gap record)."""
        if first > last:
            raise ValueError("first must not exceed last")
        ranges = sorted((*self.ahead, (max(first, self.through + 1), last)))
        merged: list[tuple[int, int]] = []
        for low, high in ranges:
            if low > high:
                continue  # wholly at or below `through`
            if merged and low <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], high))
            else:
                merged.append((low, high))
        through = self.through
        if merged and merged[0][0] == through + 1:
            through = merged.pop(0)[1]
        return StreamProgress(through, tuple(merged))

    def commit(self, record: Record) -> StreamProgress:
        """After committing `record`: its seq, and for a gap record the range it names."""
        progress = self.account(record.seq, record.seq)
        gap = record.gap()
        return progress.account(gap.from_seq, gap.to_seq) if gap is not None else progress


# ---------------------------------------------------------------------------- acks (agent side)


@dataclass(frozen=True)
class AckDecision:
    acked: int  # the stream's new acknowledged seq: prune stream_seq <= acked
    note: str | None = None  # why the ack was not taken as sent, for the log


def accept_ack(current: int, acked: int, highest_sent: int) -> AckDecision:
    """The next acknowledged seq of a stream. Acks never go back (an older one, redelivered late,
    changes nothing); and never beyond what was published, since pruning on an ack for a record
    that was never sent would delete it unsent."""
    if acked <= current:
        return AckDecision(current, None if acked == current else f"ack {acked} is older than {current}: ignored")
    if acked > highest_sent:
        taken = max(current, highest_sent)
        return AckDecision(taken, f"ack {acked} is beyond the highest seq published ({highest_sent}): taken as {taken}")
    return AckDecision(acked)
