"""The robot's sender: outbox records up to the broker, until the central consumer acknowledges them.

Why the outbox decides and not MQTT: a PUBACK says the broker took a message, not that the centre
committed it, and a broker restarted without persistence forgets what it took. So a record counts
as delivered only when the consumer's cumulative ack (`on_ack`) covers it; until then it is "in
flight" and is published again when that looks lost. The consumer stores each (agent, stream, seq)
once, so sending again is always safe; not sending again never is.

The loop, one step at a time (one task, so the bookkeeping needs no locks):

- Which stream next: `schedule.Scheduler` (critical, then normal, then bulk, with its starvation
  guard) among the streams that have something to send and room in the window.
- Only once the link's subscriptions are granted: an ack the consumer publishes before our
  SUBACK would be lost, and the records it covers sent again only after `ack_timeout_s`.
- The window: at most `window` records in flight over all streams. Lower classes may fill only
  `window - reserve` of it (`reserve` is an eighth), so an alarm written while telemetry fills
  the window still gets a slot at once instead of waiting for the consumer's next ack.
- Reads: `Outbox.batch` from the stream's read cursor, `READ_BATCH` records at a time into a small
  buffer per stream (a backlog is never loaded whole). Telemetry read for the first time is
  coalesced there (`schedule.coalesce`; `Outbox.supersede` turns the superseded samples into gap
  records that are read and sent later in their turn).
- Publishing: each record is signed (`DeviceIdentity.sign_record`) and handed to `link.publish`
  in a task of its own, so many are on the wire at once (paho's max_inflight bounds the wire);
  nobody waits for a PUBACK before the next publish. A failed publish (timeout, full queue, a
  refusal, a stopped link) is logged once per episode and otherwise ignored: the record is still
  in flight, and the resend rules send it again.
- Resending, always from the stream's last acknowledged seq, in order: every stream after a
  reconnect (the link's count of CONNACKs moved), one stream when no ack has advanced it for
  `ack_timeout_s` while it has records in flight.
- New records: the core writes most of them, from another process, so the stream counters are
  read every `poll_s` (also while busy, so an alarm behind a long telemetry drain is seen soon).
- Limits: every `limits_every_s`, `Outbox.enforce_limits` (telemetry over quota or past its
  time-to-live becomes gap records); a class that is never dropped and is over its quota or
  overdue is logged once per episode with its code.

Acks are applied in memory at once (window room, the resend point) and to the outbox (`Outbox.ack`,
which deletes) by a second task, so a slow disk never delays the reader of the link, and with it
the PUBACKs of our own publishes that the same link reads.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from agent.store.errors import OutboxAckAhead, OutboxFull, StoreError
from agent.store.outbox import Outbox, OutboxRecord
from agent.store.streams import STREAMS, StreamClass
from agent.sync import schedule
from agent.sync.envelope import decode_ack, encode_record
from agent.sync.errors import AckTimeout, BacklogOverdue, RecordUnsendable, UpstreamError
from agent.sync.identity import DeviceIdentity
from agent.sync.mqtt_link import MqttLink, MqttLinkError, up_topic
from agent.sync.replay import accept_ack
from oht_errors import CodedError

__all__ = ["READ_BATCH", "StreamStatus", "Uplink", "UplinkStatus", "missing_ranges", "reserve_for_critical"]

log = logging.getLogger("oht.gateway.uplink")

READ_BATCH = 256  # records per outbox read: what one stream's buffer holds at most


def reserve_for_critical(window: int) -> int:
    """Window slots only critical streams may use (an eighth; none in a window below 8)."""
    return window // 8


@dataclass(frozen=True)
class StreamStatus:
    acked: int  # the consumer's cumulative ack, as taken
    sent_through: int  # the highest seq published since the last resend point
    last_seq: int  # the stream's counter, as last read
    in_flight: int  # published, not yet acknowledged

    def to_dict(self) -> dict[str, int]:
        return {"acked": self.acked, "sent_through": self.sent_through, "last_seq": self.last_seq,
                "in_flight": self.in_flight}  # fmt: skip


@dataclass(frozen=True)
class UplinkStatus:
    connected: bool
    published: int  # records handed to the link (resends included)
    resent: int  # of those, records published before
    acks_applied: int  # acks that advanced a stream
    publish_failures: int
    streams: Mapping[str, StreamStatus]

    def to_dict(self) -> dict[str, Any]:
        return {
            "connected": self.connected, "published": self.published, "resent": self.resent,
            "acks_applied": self.acks_applied, "publish_failures": self.publish_failures,
            "streams": {name: s.to_dict() for name, s in self.streams.items()},
        }  # fmt: skip


@dataclass
class _Stream:
    """One stream's bookkeeping. Invariant: acked <= sent_through <= cursor, and every seq in
    `in_flight` lies in (acked, sent_through]."""

    name: str
    cls: StreamClass
    droppable: bool
    topic: str
    acked: int = 0  # highest ack taken (in memory)
    pruned: int = 0  # highest ack applied to the outbox
    last_seq: int = 0  # counter as last polled
    cursor: int = 0  # highest seq read (into `buffer`) or known absent
    sent_through: int = 0  # highest seq published since the last resend point
    published_max: int = 0  # highest seq ever published by this process: accept_ack's bound
    buffer: collections.deque[OutboxRecord] = field(default_factory=collections.deque)
    in_flight: collections.deque[int] = field(default_factory=collections.deque)
    ahead: set[int] = field(default_factory=set)  # gap records sent before their turn, not yet acked
    ahead_max: int = 0  # the highest of those ever published
    progress_at: float = 0.0  # monotonic: last ack that advanced it, or first publish into an empty window
    stalled_until: float = 0.0  # a record could not be encoded: retry then

    def rewind(self) -> int:
        """Back to the last acknowledged record; returns how many were in flight."""
        dropped = len(self.in_flight)
        self.cursor = self.sent_through = self.acked
        self.buffer.clear()
        self.in_flight.clear()
        self.ahead.clear()  # sent again when their holes are met again
        return dropped

    def has_work(self, now: float) -> bool:
        return (bool(self.buffer) or self.cursor < self.last_seq) and now >= self.stalled_until


class _Seq(Protocol):
    @property
    def seq(self) -> int: ...


def missing_ranges(after: int, records: Sequence[_Seq]) -> list[tuple[int, int]]:
    """The seq ranges missing between `after` and each next record (`records` in seq order):
    what was dropped or superseded, and so must be covered by gap records further on."""
    holes, expected = [], after + 1
    for record in records:
        if record.seq > expected:
            holes.append((expected, record.seq - 1))
        expected = record.seq + 1
    return holes


class _Episode:
    """Log a kind of trouble once when it starts and once when it ends, not at every occurrence."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.active = False

    def trouble(self, exc: BaseException, level: int = logging.WARNING) -> None:
        if not self.active:
            self.active = True
            log.log(level, "%s: %s", self.what, exc)

    def fine(self) -> None:
        if self.active:
            self.active = False
            log.info("%s: resolved", self.what)


class Uplink:
    """Drains the outbox over `link` (see the module docstring). `run` until cancelled; the caller
    starts and stops the link and hands every message of the ack topic to `on_ack`."""

    def __init__(
        self,
        outbox: Outbox,
        link: MqttLink,
        identity: DeviceIdentity,
        agent_id: str,
        *,
        window: int,
        ack_timeout_s: float = 30.0,
        poll_s: float = 0.1,
        limits_every_s: float = 10.0,
        guard: int = schedule.DEFAULT_GUARD,
    ) -> None:
        if window < 1 or not ack_timeout_s > 0 or not poll_s > 0 or not limits_every_s > 0:
            raise ValueError("window must be at least 1 and the periods positive")
        self.outbox = outbox
        self.link = link
        self.identity = identity
        self.agent_id = agent_id
        self.window = window
        self.reserve = reserve_for_critical(window)
        self.ack_timeout_s = ack_timeout_s
        self.poll_s = poll_s
        self.limits_every_s = limits_every_s
        self._scheduler = schedule.Scheduler(STREAMS, guard=guard)
        self._streams = {
            s.name: _Stream(s.name, s.cls, s.policy.droppable, up_topic(agent_id, s.name)) for s in STREAMS
        }
        self._loaded = False
        self._connects = 0
        self._next_poll = 0.0
        self._next_limits = 0.0
        self._wake = asyncio.Event()  # an ack came, or a publish ended: look again
        self._prune_wanted = asyncio.Event()
        self._pending: set[asyncio.Task[None]] = set()
        self._max_pending = 2 * window + 16  # publish tasks; more wait (a hung broker)
        self._published = 0
        self._resent = 0
        self._acks_applied = 0
        self._publish_failures = 0
        self._publishing = _Episode("publishing upstream")
        self._store = _Episode("reading the outbox")
        self._pruning = _Episode("pruning acknowledged records")
        self._bad_ack = _Episode("acks from the centre")
        self._full = _Episode("outbox limits")
        self._overdue = _Episode("outbox backlog")
        self._unsendable: dict[str, _Episode] = {}
        self._waiting_ack: dict[str, _Episode] = {n: _Episode(f"acks for stream {n}") for n in self._streams}

    # ------------------------------------------------------------------ public
    async def run(self) -> None:
        """Send and prune until cancelled. Store and link trouble is logged and retried, never raised."""
        pruner = asyncio.create_task(self._prune_loop(), name="uplink-prune")
        try:
            while True:
                try:
                    await self._step()
                except asyncio.CancelledError:
                    raise
                except CodedError as exc:  # the store, most likely: wait a little and look again
                    self._store.trouble(exc)
                    await asyncio.sleep(self.poll_s)
        finally:
            pruner.cancel()
            pending = [pruner, *self._pending]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def on_ack(self, payload: bytes) -> None:
        """One message of the ack topic: take what it advances (accept_ack), free window room, and
        leave the deletion to the pruner. A malformed ack is logged and ignored."""
        try:
            ack = decode_ack(payload)
        except UpstreamError as exc:
            self._bad_ack.trouble(exc)
            return
        now = time.monotonic()
        for name, seq in ack.acks.items():
            s = self._streams.get(name)
            if s is None:
                log.debug("ack for unknown stream %r ignored", name)
                continue
            decision = accept_ack(s.acked, seq, max(s.published_max, s.ahead_max))
            if decision.note is not None and decision.acked > s.acked:
                log.info("stream %s: %s", name, decision.note)
            if decision.acked <= s.acked:
                continue
            self._advance(s, decision.acked, now)
        self._bad_ack.fine()

    def status(self) -> UplinkStatus:
        streams = {
            n: StreamStatus(s.acked, s.sent_through, s.last_seq, len(s.in_flight)) for n, s in self._streams.items()
        }
        return UplinkStatus(
            connected=self.link.connected, published=self._published, resent=self._resent,
            acks_applied=self._acks_applied, publish_failures=self._publish_failures,
            streams=MappingProxyType(streams),
        )  # fmt: skip

    @property
    def in_flight(self) -> int:
        return sum(len(s.in_flight) for s in self._streams.values())

    # ------------------------------------------------------------------ acks
    def _advance(self, s: _Stream, acked: int, now: float) -> None:
        s.acked = acked
        while s.in_flight and s.in_flight[0] <= acked:
            s.in_flight.popleft()
        s.ahead = {seq for seq in s.ahead if seq > acked}
        if s.sent_through < acked:  # acked past this pass (copies sent before a resend point)
            s.sent_through = acked
            while s.buffer and s.buffer[0].seq <= acked:
                s.buffer.popleft()
            s.cursor = max(s.cursor, acked)
        s.progress_at = now
        self._acks_applied += 1
        self._waiting_ack[s.name].fine()
        self._wake.set()
        self._prune_wanted.set()

    async def _prune_loop(self) -> None:
        while True:
            await self._prune_wanted.wait()
            self._prune_wanted.clear()
            for s in self._streams.values():
                target = s.acked
                if target <= s.pruned:
                    continue
                try:
                    result = await self.outbox.ack(s.name, target)
                except OutboxAckAhead as exc:  # a restored database or a second robot with our id
                    log.error("%s", exc)
                    s.pruned = target  # never retried: the next ack tries again with its own value
                    continue
                except StoreError as exc:
                    self._pruning.trouble(exc)
                    await asyncio.sleep(self.poll_s)
                    self._prune_wanted.set()
                    break
                s.pruned = max(s.pruned, result.acked_seq)
                self._pruning.fine()

    # ------------------------------------------------------------------ the send loop
    async def _step(self) -> None:
        self._wake.clear()
        now = time.monotonic()
        if not self._loaded:
            await self._load()
        if now >= self._next_poll:
            await self._poll()
            self._next_poll = now + self.poll_s
        if now >= self._next_limits:
            self._next_limits = now + self.limits_every_s
            await self._enforce_limits()
        self._store.fine()
        if not self.link.subscribed:  # an ack published before our SUBACK would never reach us
            await self.link.wait_subscribed(self.poll_s)
            return
        self._check_reconnect()
        self._check_ack_timeouts(now)
        if len(self._pending) >= self._max_pending:
            await self._idle(self.poll_s)
            return
        ready = [n for n, s in self._streams.items() if s.has_work(now) and self._room(s.cls) > 0]
        name = self._scheduler.choose(ready)
        if name is None:
            await self._idle(max(0.0, self._next_poll - time.monotonic()))
            return
        s = self._streams[name]
        if not s.buffer:
            await self._refill(s)
        self._send(s, min(self._room(s.cls), len(s.buffer)))

    def _room(self, cls: StreamClass) -> int:
        limit = self.window if cls is StreamClass.CRITICAL else self.window - self.reserve
        return limit - self.in_flight

    async def _idle(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _load(self) -> None:
        """The acknowledged seqs the outbox holds: where sending starts after a (re)start."""
        backlog = await self.outbox.backlog()
        for name, b in backlog.items():
            s = self._streams[name]
            s.acked = s.pruned = s.cursor = s.sent_through = s.published_max = b.acked_seq
            s.last_seq = b.last_seq
        self._loaded = True

    async def _poll(self) -> None:
        backlog = await self.outbox.backlog()
        for name, b in backlog.items():
            s = self._streams[name]
            s.last_seq = b.last_seq
            if b.acked_seq > s.pruned:  # pruned by someone else (a second gateway, a restore tool)
                s.pruned = b.acked_seq

    async def _enforce_limits(self) -> None:
        report = await self.outbox.enforce_limits()
        if report.gaps:
            log.info("telemetry over its quota or age: %d records dropped, %d gap records written",
                     report.dropped, len(report.gaps))  # fmt: skip
            for s in self._streams.values():
                if s.droppable:  # what the buffer holds may be gone: read it again
                    s.buffer.clear()
                    s.cursor = s.sent_through
        never_dropped = [c for c in report.over_quota if c is not StreamClass.BULK]
        if never_dropped:
            names = ", ".join(sorted(c.value for c in never_dropped))
            self._full.trouble(OutboxFull(f"classes {names} are over their quota; new commands are refused"))
        else:
            self._full.fine()
        if report.overdue:
            self._overdue.trouble(
                BacklogOverdue(f"streams {', '.join(report.overdue)} hold records past their time-to-live")
            )
        else:
            self._overdue.fine()

    def _check_reconnect(self) -> None:
        connects = self.link.stats().connects
        if connects == self._connects:
            return
        self._connects = connects
        again = sum(s.rewind() for s in self._streams.values())
        if again:
            log.info("connected again: sending every unacknowledged record again (%d were in flight)", again)

    def _check_ack_timeouts(self, now: float) -> None:
        for s in self._streams.values():
            if s.in_flight and now - s.progress_at >= self.ack_timeout_s:
                first = s.acked + 1
                count = s.rewind()
                self._waiting_ack[s.name].trouble(
                    AckTimeout(
                        f"no ack for stream {s.name} in {self.ack_timeout_s:g} s with {count} in flight;"
                        f" sending again from seq {first}"
                    )
                )

    async def _refill(self, s: _Stream) -> None:
        records = await self.outbox.batch(s.name, s.cursor, READ_BATCH)
        if not records:
            s.cursor = max(s.cursor, s.last_seq)  # what lay between was dropped or superseded
            return
        after = s.cursor
        s.cursor = records[-1].seq
        if s.droppable:
            records = await self._coalesce(s, records)
            await self._send_gaps_ahead(s, missing_ranges(after, records))
        s.buffer.extend(records)

    async def _send_gaps_ahead(self, s: _Stream, holes: list[tuple[int, int]]) -> None:
        """Publish now the gap records that stand for `holes` (ranges dropped or superseded).

        A gap record gets the next seq of its stream when it is written, so it may lie a whole
        backlog beyond its range; the consumer's ack stops at the hole until it has it, and a
        window full of the records in between would never be acknowledged. Sent before their
        turn they count outside the window (they are few: one per cut or coalesced window) and
        are skipped when their turn comes."""
        if not holes:
            return
        low, high = holes[0][0], holes[-1][1]
        for gap in await self.outbox.gaps_covering(s.name, low, high):
            if gap.seq <= s.sent_through or gap.seq in s.ahead:
                continue  # sent in its turn already, or ahead of it
            self._publish_record(gap)
            s.ahead.add(gap.seq)
            s.ahead_max = max(s.ahead_max, gap.seq)

    async def _coalesce(self, s: _Stream, records: list[OutboxRecord]) -> list[OutboxRecord]:
        """Supersede the older samples of a key among records never published; keep the rest."""
        fresh = [r for r in records if r.seq > s.published_max]
        superseded = schedule.coalesce(fresh).superseded
        if not superseded:
            return records
        try:
            await self.outbox.supersede(s.name, superseded)
        except StoreError as exc:  # send them all: coalescing saves bandwidth, it is never needed
            log.warning("coalescing telemetry failed, sending every sample: %s", exc)
            return records
        gone = set(superseded)
        return [r for r in records if r.seq not in gone]

    def _send(self, s: _Stream, count: int) -> None:
        now = time.monotonic()
        for _ in range(count):
            record = s.buffer[0]
            if record.seq in s.ahead:  # a gap record sent before its turn
                s.buffer.popleft()
                s.sent_through = record.seq
                continue
            try:
                self._publish_record(record)
            except UpstreamError as exc:
                episode = self._unsendable.setdefault(s.name, _Episode(f"stream {s.name}"))
                episode.trouble(
                    RecordUnsendable(f"{s.name}/{record.seq} ({record.id}): {exc.code} {exc.message}"), logging.ERROR
                )
                s.stalled_until = now + self.ack_timeout_s
                return
            s.buffer.popleft()
            if not s.in_flight:
                s.progress_at = now
            s.in_flight.append(record.seq)
            s.sent_through = record.seq
            if record.seq <= s.published_max:
                self._resent += 1
            else:
                s.published_max = record.seq
        if s.name in self._unsendable:
            self._unsendable.pop(s.name).fine()

    def _publish_record(self, record: OutboxRecord) -> None:
        """Sign `record` and hand it to the link in a task of its own; raises UpstreamError when
        it cannot be put into an envelope."""
        payload = encode_record(self.identity.sign_record(
            agent=self.agent_id, stream=record.stream, seq=record.seq, id=record.id,
            kind=record.kind, at=record.created_at, body=record.payload,
        ))  # fmt: skip
        self._published += 1
        task = asyncio.create_task(self._publish(self._streams[record.stream].topic, payload))
        self._pending.add(task)
        task.add_done_callback(self._published_one)

    def _published_one(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if len(self._pending) == self._max_pending - 1:
            self._wake.set()

    async def _publish(self, topic: str, payload: bytes) -> None:
        try:
            await self.link.publish(topic, payload)
        except MqttLinkError as exc:  # timeout, full queue, refusal, stopped: the resend rules cover it
            self._publish_failures += 1
            self._publishing.trouble(exc)
        else:
            self._publishing.fine()
