"""Which outbox stream to send from next, and telemetry coalescing: pure policy, no I/O.

Why a policy of its own: after an outage the outbox holds hours of telemetry beside a few
command results and alarms. Sending in write order would put an alarm behind the telemetry;
sending strictly by class would leave audit and telemetry waiting for as long as a busy results
stream has anything. So: critical first, then normal, then bulk (agent/store/streams.py), and a
class that has waited through `guard` batches of higher classes gets the next one. The streams
of one class take turns. A class with records to send therefore gets a batch at least once in
every `guard + number of classes - 1` batches; without such a wait, the highest class wins.

Telemetry coalescing: within one batch (the window), only the newest sample per (source, key)
is worth sending; older samples of the same key are superseded. The consumer must still account
for every seq, so superseded samples are not skipped silently: `coalesce` names them, and sync
has the store replace them by gap records (`Outbox.supersede`, reason "coalesced") and sends the
rest of the batch. A sample without a string `source` and `key` is never coalesced.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from agent.store.streams import KIND_TELEMETRY, STREAMS, Stream, StreamClass

__all__ = ["DEFAULT_GUARD", "Coalesced", "Scheduler", "coalesce", "telemetry_key"]

DEFAULT_GUARD = 8
T = TypeVar("T")


class Scheduler:
    """Chooses the stream of every next batch; remembers only how long each class has waited.

    `choose(ready)` takes the names of the streams that have something to send now (the caller
    knows its in-flight window and backlog) and records the choice, so call it once per batch.
    """

    def __init__(self, streams: Sequence[Stream] = STREAMS, guard: int = DEFAULT_GUARD) -> None:
        if guard < 1:
            raise ValueError("guard must be at least 1")
        self.guard = guard
        self._streams = tuple(streams)
        self._by_name = {s.name: s for s in self._streams}
        self._rank = {s.cls: s.policy.rank for s in self._streams}
        self._waited: dict[StreamClass, int] = dict.fromkeys(self._rank, 0)
        self._last: dict[StreamClass, str] = {}

    @property
    def bound(self) -> int:
        """At most this many batches of other classes pass while a class has records to send:
        `guard` of higher classes, plus one of each lower class whose own wait ran out first."""
        return self.guard + len(self._rank) - 2 if len(self._rank) > 1 else 0

    def choose(self, ready: Collection[str]) -> str | None:
        """The stream to send the next batch from (None if nothing is ready)."""
        unknown = [name for name in ready if name not in self._by_name]
        if unknown:
            raise ValueError(f"unknown streams {sorted(unknown)}")
        waiting: dict[StreamClass, list[Stream]] = {}
        for stream in self._streams:  # declared order: the turn order within a class
            if stream.name in ready:
                waiting.setdefault(stream.cls, []).append(stream)
        for cls in self._waited:
            if cls not in waiting:
                self._waited[cls] = 0  # the guard counts only while a class has something to send
        if not waiting:
            return None
        starving = [cls for cls in waiting if self._waited[cls] >= self.guard]
        pick = min(starving or waiting, key=self._rank.__getitem__)
        for cls in waiting:
            if cls is pick:
                self._waited[cls] = 0
            elif self._rank[cls] > self._rank[pick]:
                self._waited[cls] += 1
        stream = self._next_in_turn(pick, waiting[pick])
        self._last[pick] = stream.name
        return stream.name

    def _next_in_turn(self, cls: StreamClass, ready: list[Stream]) -> Stream:
        """The ready stream of `cls` after the one that sent last (round robin)."""
        order = [s for s in self._streams if s.cls is cls]
        last = self._last.get(cls)
        start = order.index(self._by_name[last]) + 1 if last is not None else 0
        for stream in order[start:] + order[:start]:
            if stream in ready:
                return stream
        raise AssertionError("a class is waiting without a ready stream")  # pragma: no cover

    def next_batch(self, queues: Mapping[str, Sequence[T]], limit: int) -> tuple[str, list[T]] | None:
        """Choose among the non-empty `queues` (each in stream order) and take the first `limit`
        records of the chosen one: a batch is always a prefix, so stream order is kept."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        name = self.choose([n for n, q in queues.items() if len(q) > 0])
        if name is None:
            return None
        return name, list(queues[name][:limit])


class _Record(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def payload(self) -> Any: ...


R = TypeVar("R", bound=_Record)


@dataclass(frozen=True)
class Coalesced(Generic[R]):
    """`send`: the records to send, in their order; `superseded`: the seqs of telemetry samples
    a newer sample of the same (source, key) in the window replaces."""

    send: list[R]
    superseded: list[int]


def telemetry_key(payload: Any) -> tuple[str, str] | None:
    """(source, key) of a telemetry sample, None when it does not name both as strings."""
    if isinstance(payload, Mapping):
        source, key = payload.get("source"), payload.get("key")
        if isinstance(source, str) and isinstance(key, str):
            return source, key
    return None


def coalesce(records: Sequence[R], key: Callable[[Any], tuple[str, str] | None] = telemetry_key) -> Coalesced[R]:
    """Keep the newest telemetry sample per key of one window (`records`, in stream order)."""
    newest: dict[tuple[str, str], int] = {}
    for record in records:
        k = key(record.payload) if record.kind == KIND_TELEMETRY else None
        if k is not None:
            newest[k] = record.seq
    send: list[R] = []
    superseded: list[int] = []
    for record in records:
        k = key(record.payload) if record.kind == KIND_TELEMETRY else None
        if k is not None and newest[k] != record.seq:
            superseded.append(record.seq)
        else:
            send.append(record)
    return Coalesced(send, superseded)
