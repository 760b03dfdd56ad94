"""The outbox's streams: which record goes where, how urgent it is, and what may be given up.

Why streams: the central consumer acknowledges cumulatively ("everything up to seq N is
committed"), which needs a gap-free sequence, and one sequence for everything would let a
flood of telemetry hold back an alarm. So every outbox kind belongs to one stream with its own
sequence, and every stream to a class that decides two things: the order of sending (critical
before normal before bulk) and what happens when the link stays down until the disk share runs
out (bulk is dropped oldest first and a `gap` record says which seqs went; critical and normal
are never dropped, the agent refuses new commands instead).

This module is the one declaration. The migration that gave the outbox its streams (7) wrote
the kind -> stream mapping and one counter row per stream from it, the numbering trigger reads
that mapping, and the core brings the database in line with this declaration at every start
(`outbox.align_streams_in`). So a change here (a new kind, a kind moving stream, a new stream)
needs no migration: records written after it go the new way, records already numbered stay
where they are. `db check` reports a database that differs (one the core has not opened since
an upgrade).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "CLASSES",
    "DEFAULT_LIMITS",
    "KIND_ALARM",
    "KIND_AUDIT",
    "KIND_COMMAND",
    "KIND_COMMAND_RESULT",
    "KIND_EVENT",
    "KIND_GAP",
    "KIND_STREAM",
    "KIND_TELEMETRY",
    "KIND_TRANSITION",
    "STREAMS",
    "STREAM_BY_NAME",
    "ClassLimits",
    "ClassPolicy",
    "Limits",
    "Stream",
    "StreamClass",
    "mapping_statements",
]

KIND_COMMAND = "command"  # a command was accepted or changed state (not terminal)
KIND_COMMAND_RESULT = "command_result"  # a command reached a terminal state
KIND_ALARM = "alarm"  # a fault was raised or cleared
KIND_TRANSITION = "transition"  # the robot's state machine changed state
KIND_EVENT = "event"  # notices that are not faults
KIND_AUDIT = "audit"  # who did what (logins, resets, configuration)
KIND_TELEMETRY = "telemetry"  # periodic measurements: the only kind that may be dropped
# Written only by the store, into a droppable stream, in place of records it dropped. It has no
# stream of its own: it belongs to the stream whose range it covers.
KIND_GAP = "gap"

MIB = 1024 * 1024
HOUR = 3600.0


class StreamClass(enum.StrEnum):
    CRITICAL = "critical"
    NORMAL = "normal"
    BULK = "bulk"


@dataclass(frozen=True)
class ClassPolicy:
    """What a class means. `rank` orders sending (0 first). `droppable`: its oldest records may
    be replaced by a gap record when over quota or older than the time-to-live; otherwise the
    class is never dropped and only reported (and, over quota, refuses new commands)."""

    cls: StreamClass
    rank: int
    droppable: bool


@dataclass(frozen=True)
class Stream:
    name: str
    cls: StreamClass
    kinds: tuple[str, ...]

    @property
    def policy(self) -> ClassPolicy:
        return CLASSES[self.cls]


CLASSES: Mapping[StreamClass, ClassPolicy] = MappingProxyType({
    StreamClass.CRITICAL: ClassPolicy(StreamClass.CRITICAL, rank=0, droppable=False),
    StreamClass.NORMAL: ClassPolicy(StreamClass.NORMAL, rank=1, droppable=False),
    StreamClass.BULK: ClassPolicy(StreamClass.BULK, rank=2, droppable=True),
})  # fmt: skip

STREAMS: tuple[Stream, ...] = (
    Stream("results", StreamClass.CRITICAL, (KIND_COMMAND, KIND_COMMAND_RESULT)),
    Stream("alarms", StreamClass.CRITICAL, (KIND_ALARM,)),
    Stream("events", StreamClass.NORMAL, (KIND_TRANSITION, KIND_EVENT)),
    Stream("audit", StreamClass.NORMAL, (KIND_AUDIT,)),
    Stream("telemetry", StreamClass.BULK, (KIND_TELEMETRY,)),
)

STREAM_BY_NAME: Mapping[str, Stream] = MappingProxyType({s.name: s for s in STREAMS})
KIND_STREAM: Mapping[str, str] = MappingProxyType({k: s.name for s in STREAMS for k in s.kinds})


@dataclass(frozen=True)
class ClassLimits:
    """The bound of one class: `quota_bytes` of the outbox (payload plus a fixed per-row
    overhead), and `ttl_s`, the age after which a record is dropped (droppable classes) or
    reported as overdue (the others)."""

    quota_bytes: int
    ttl_s: float

    def __post_init__(self) -> None:
        if self.quota_bytes < 1 or not self.ttl_s > 0:
            raise ValueError("a class needs a positive quota and time-to-live")


@dataclass(frozen=True)
class Limits:
    """Per-class bounds, passed in by whoever reads the configuration (defaults below).

    The quotas together are the outbox's disk cap; keep them below the database's own limit
    (`Database(max_bytes=...)`) so that the cap is reached first and handled by class."""

    classes: Mapping[StreamClass, ClassLimits]

    def __post_init__(self) -> None:
        missing = set(StreamClass) - set(self.classes)
        if missing:
            raise ValueError(f"limits missing for {sorted(missing)}")

    def of(self, cls: StreamClass) -> ClassLimits:
        return self.classes[cls]

    @property
    def cap_bytes(self) -> int:
        return sum(c.quota_bytes for c in self.classes.values())


# 64 MiB in all. Results and alarms are small and rare; a day of them fits many times over.
# Audit and transitions come next. Telemetry gets the largest share and is given up first.
DEFAULT_LIMITS = Limits(MappingProxyType({
    StreamClass.CRITICAL: ClassLimits(quota_bytes=8 * MIB, ttl_s=1 * HOUR),
    StreamClass.NORMAL: ClassLimits(quota_bytes=24 * MIB, ttl_s=24 * HOUR),
    StreamClass.BULK: ClassLimits(quota_bytes=32 * MIB, ttl_s=24 * HOUR),
}))  # fmt: skip


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def mapping_statements() -> tuple[str, ...]:
    """SQL that writes this declaration into `outbox_kinds` and adds a counter row for every
    stream that has none (run by migration 7, and at start when the database differs)."""
    kinds = ", ".join(f"({_sql_text(k)}, {_sql_text(s)})" for k, s in sorted(KIND_STREAM.items()))
    streams = ", ".join(f"({_sql_text(s.name)})" for s in STREAMS)
    return (
        "DELETE FROM outbox_kinds",
        f"INSERT INTO outbox_kinds (kind, stream) VALUES {kinds}",
        f"INSERT INTO outbox_streams (stream) VALUES {streams} ON CONFLICT (stream) DO NOTHING",
    )


def _check_declaration() -> None:
    """Refuse at import a declaration the store could not serve (a kind in two streams, ...)."""
    kinds = [k for s in STREAMS for k in s.kinds]
    if len(kinds) != len(set(kinds)):
        raise RuntimeError("an outbox kind is declared in two streams")
    if len(STREAM_BY_NAME) != len(STREAMS):
        raise RuntimeError("two streams share a name")
    if KIND_GAP in KIND_STREAM:
        raise RuntimeError("gap records belong to the stream they cover, not to a stream of their own")
    if set(CLASSES) != set(StreamClass) or sorted(p.rank for p in CLASSES.values()) != list(range(len(CLASSES))):
        raise RuntimeError("every class needs a policy and a distinct rank 0, 1, 2, ...")


_check_declaration()
