"""Commands from the centre: judged, committed once through the core, answered on `results`.

One message from `oht/v1/{agent}/cmd` at a time goes through `Downlink.handle`:

1. Decode it (`envelope.decode_command`). A message that does not decode has no command_id
   that can be trusted, so it gets no receipt: it is logged with its code and counted.
2. Judge it (`replay.judge_command`): signature, robot, repeat, not_after, issued_at. Whether it
   is a repeat is read from the commands table (source `upstream`, idempotency key =
   command_id), which the core's unique index makes the durable dedup.
3. Accepted: the core commits it (`submit_command`) and writes its receipt (`command`, state
   `queued`) and later its result (`command_result`) to the outbox in its own transactions; the
   core also writes the audit row. A submit answered `created=False` is a repeat found at the
   commit: nothing more is written.
4. Expired, rejected, or refused by the core (its parameters, a full outbox, a store that
   cannot be written): the gateway writes the receipt (`command_result`, state `rejected` or
   `expired`, with the code) and an audit row, in one transaction. Nothing ran.

The core away: the handler waits up to `core_wait_s` for the link to come back, then answers
`rejected` with CORE_UNAVAILABLE (nothing was sent to the core, so nothing ran). When the core
took the request but its answer was lost (the link dropped, or the answer came too late), the
command may have been committed: no receipt is written then, since a `rejected` one could
contradict the core's. The centre sends the same message again when no receipt arrives, and
that delivery is judged afresh: a repeat if the core did commit it, a new submit if not.

Why the gateway writes rejections itself: a command that is refused is never stored, so there
is no command row whose trigger would write the record; the gateway may write the outbox (it
opens the database attached, and the store's trigger numbers the stream across processes).
`handle` raises nothing for a bad message: the MQTT link acknowledges the message after it, and
a message that made the handler raise would come back only to fail again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import aiosqlite

from agent.control.facade import SubmitResult
from agent.link.protocol import CoreTimeout, CoreUnavailable
from agent.store import outbox as outbox_store
from agent.store.audit import AuditEntry, append_in, params_digest
from agent.store.commands import CommandRecord, Commands
from agent.store.database import Database
from agent.store.outbox import Outbox
from agent.sync.envelope import Command, decode_command
from agent.sync.errors import UpstreamError
from agent.sync.identity import PinnedKey
from agent.sync.replay import CommandDecision, CommandOutcome, CommandRules, judge_command, rejection_receipt
from oht_errors import CodedError

__all__ = [
    "ACTOR",
    "AUDIT_ACTION",
    "AUTH_METHOD",
    "DEFAULT_CORE_WAIT_S",
    "SOURCE",
    "CommandSink",
    "Downlink",
    "DownlinkStats",
]

log = logging.getLogger("oht.sync.downlink")

SOURCE = "upstream"  # the commands table's source of every command from the centre
ACTOR = "upstream"  # the user the centre's commands are stored and audited under
AUTH_METHOD = "central_key"  # how the centre is known: its signature, checked with the pinned key
AUDIT_ACTION = "command.submit"  # as the local API's submit, so one audit query finds both
DEFAULT_CORE_WAIT_S = 5.0
# Refusals of who sent the command (audited `denied`, as the API's 401/403); the others, an
# expired command or one the core refused, are audited `error`, as the API's other refusals.
_DENIED = frozenset({"UPSTREAM_SIGNATURE_INVALID", "UPSTREAM_WRONG_AGENT", "UPSTREAM_STALE"})


class CommandSink(Protocol):
    """What the downlink needs of the core: `agent.link.client.CoreClient` is one.

    `connected` is set while the core is reachable; `submit_command` commits idempotently on
    (source, user, idempotency_key) and raises a coded error when the core refuses."""

    connected: asyncio.Event

    async def submit_command(
        self,
        *,
        source: str,
        idempotency_key: str,
        type: str,
        params: dict[str, Any],
        user: str | None,
        priority: int = 5,
        not_after: datetime | None = None,
        audit: AuditEntry | None = None,
    ) -> SubmitResult: ...


@dataclass(frozen=True)
class DownlinkStats:
    """How the messages handled so far ended. `unanswered`: taken by the core, answer lost (no
    receipt; the centre's resend settles it). `codes`: the count of each refusal code."""

    accepted: int = 0
    duplicate: int = 0
    expired: int = 0
    rejected: int = 0
    malformed: int = 0
    unanswered: int = 0
    codes: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicate": self.duplicate, "expired": self.expired,
                "rejected": self.rejected, "malformed": self.malformed, "unanswered": self.unanswered,
                "codes": dict(self.codes)}  # fmt: skip


class Downlink:
    """Handles the messages of the robot's cmd topic (see the module docstring).

    `outbox` is the gateway's view of the outbox (its limits are the configured ones); a
    receipt is written with the outbox's unit function, so that its audit row joins it in one
    transaction. `core_wait_s`: how long a command waits for the core to come back."""

    def __init__(
        self,
        core: CommandSink,
        outbox: Outbox,
        db: Database,
        central_key: PinnedKey,
        rules: CommandRules,
        *,
        core_wait_s: float = DEFAULT_CORE_WAIT_S,
    ) -> None:
        self._core = core
        self._outbox = outbox
        self._db = db
        self._commands = Commands(db)
        self._central_key = central_key
        self._rules = rules
        self._core_wait_s = core_wait_s
        self._counts: Counter[str] = Counter()
        self._codes: Counter[str] = Counter()

    def stats(self) -> DownlinkStats:
        c = self._counts
        return DownlinkStats(c["accepted"], c["duplicate"], c["expired"], c["rejected"], c["malformed"],
                             c["unanswered"], dict(self._codes))  # fmt: skip

    async def handle(self, payload: bytes) -> None:
        """One message of the cmd topic. Raises nothing for a bad message; a store that cannot be
        written is logged (the receipt is then missing, and the centre's resend is judged again)."""
        try:
            command = decode_command(payload)
        except UpstreamError as exc:
            self._count("malformed", exc.code)
            log.warning("command message of %d bytes dropped, no receipt: %s [%s]", len(payload), exc.message, exc.code)
            return
        try:
            await self._handle(command)
        except CodedError as exc:
            log.error("command %s not answered: %s [%s]", command.command_id, exc.message, exc.code)
        except Exception:
            log.exception("command %s not answered: internal error", command.command_id)

    async def _handle(self, command: Command) -> None:
        stored = await self._commands.find(SOURCE, command.command_id, user=ACTOR)
        if stored is not None and stored.type != command.type:
            log.warning(
                "command_id %s arrived again as a %s, first stored as a %s (%s): the first stands",
                command.command_id,
                command.type,
                stored.type,
                stored.id,
            )
        now = datetime.now(UTC)
        decision = judge_command(command, central_key=self._central_key, seen_before=stored is not None,
                                 now=now, rules=self._rules)  # fmt: skip
        if decision.outcome is CommandOutcome.DUPLICATE:
            self._count("duplicate", decision.code)
            log.info("command %s: %s", command.command_id, decision.reason)
        elif decision.outcome is CommandOutcome.ACCEPTED:
            await self._submit(command)
        else:
            await self._refuse(command, decision)

    async def _submit(self, command: Command) -> None:
        if not await self._core_reachable():
            error = CoreUnavailable(f"the core did not come back within {self._core_wait_s:.1f} s")
            await self._refuse(command, CommandDecision(CommandOutcome.REJECTED, error.code, error.message))
            return
        try:
            result = await self._core.submit_command(
                source=SOURCE, idempotency_key=command.command_id, type=command.type, params=dict(command.params),
                user=ACTOR, not_after=command.not_after_at, audit=self._audit(command),
            )  # fmt: skip
        except (CoreUnavailable, CoreTimeout) as exc:
            # Sent, but the answer is lost: the core may have committed it. A 'rejected' receipt
            # could contradict its own; the centre's resend finds out (see the module docstring).
            self._count("unanswered", exc.code)
            log.warning(
                "command %s: the core's answer was lost (%s [%s]); no receipt until it is sent again",
                command.command_id,
                exc.message,
                exc.code,
            )
            return
        except CodedError as exc:
            await self._refuse(command, CommandDecision(CommandOutcome.REJECTED, exc.code, exc.message))
            return
        self._accepted(command, result)

    def _accepted(self, command: Command, result: SubmitResult) -> None:
        record: CommandRecord = result.record
        if result.created:
            self._count("accepted")
            log.info("command %s (%s) from the centre accepted as %s", command.command_id, command.type, record.id)
        else:
            self._count("duplicate", "UPSTREAM_REPLAYED")
            log.info("command %s was committed before (as %s): no new receipt", command.command_id, record.id)

    async def _core_reachable(self) -> bool:
        if self._core.connected.is_set():
            return True
        log.warning("command waits up to %.1f s for the core to come back", self._core_wait_s)
        try:  # asyncio.timeout: Python 3.11's wait_for can swallow a cancel that meets the event
            async with asyncio.timeout(self._core_wait_s):
                await self._core.connected.wait()
        except TimeoutError:
            return False
        return True

    async def _refuse(self, command: Command, decision: CommandDecision) -> None:
        """The receipt of a command that was not committed, and its audit row, in one transaction."""
        at = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        receipt = rejection_receipt(command, decision, at)
        outbox_store.encode_payload(outbox_store.KIND_COMMAND_RESULT, receipt)  # refuse bad input before the writer
        audit = AuditEntry(
            actor=ACTOR, auth_method=AUTH_METHOD, action=AUDIT_ACTION,
            result="denied" if decision.code in _DENIED else "error", code=decision.code,
            target=command.command_id, params_digest=params_digest(dict(command.params)), request_id=command.command_id,
        )  # fmt: skip

        async def unit(conn: aiosqlite.Connection) -> None:
            await outbox_store.add(conn, outbox_store.KIND_COMMAND_RESULT, receipt)
            await append_in(conn, audit)

        await self._db.write(unit)
        self._count(str(decision.outcome), decision.code)
        log.warning("command %s (%s) from the centre %s: %s [%s]", command.command_id, command.type,
                    decision.outcome, decision.reason, decision.code)  # fmt: skip

    def _audit(self, command: Command) -> AuditEntry:
        """The audit row the core writes after committing the command (it names the stored
        command as its target; the command_id stays in request_id)."""
        return AuditEntry(
            actor=ACTOR, auth_method=AUTH_METHOD, action=AUDIT_ACTION, target=command.command_id,
            params_digest=params_digest(dict(command.params)), request_id=command.command_id,
        )  # fmt: skip

    def _count(self, outcome: str, code: str | None = None) -> None:
        self._counts[outcome] += 1
        if code is not None:
            self._codes[code] += 1
