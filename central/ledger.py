"""The central store of upstream records, in SQLite, and the contiguous prefix it acknowledges.

Each record is kept once under its key (agent, stream, seq): a copy that arrives again (MQTT
redelivers, the agent resends what was not acknowledged) is counted as a duplicate and changes
nothing. A copy with the same key but another record id is a conflict: the first one stays, the
other is refused and logged (UPSTREAM_SEQ_CONFLICT, the agent's code for it), because overwriting
would let a second sender rewrite history, and acknowledging it would let the robot delete a record
the centre does not hold.

This is the `committed_id` half of `agent.sync.replay.judge_record`, decided here, in the transaction
that stores the record, because only the commit is the authority: a lookup before it could be
overtaken by another consumer's commit. The signature half is checked before the transaction
(central/records.py), so the write lock is never held while signatures are verified.

The acknowledgement of a stream is its contiguous prefix: the highest seq n such that every seq
from 1 to n is accounted for, either stored or inside the range named by a stored gap record. It
only grows (`progress` holds it), and it is computed in the transaction that stores the records,
so it never covers a record that is not committed.

Several consumers share one database file (WAL, a busy timeout, every batch in one
BEGIN IMMEDIATE transaction). They must: the shared subscription gives each consumer only some of a
robot's records, so a consumer with a database of its own would see holes where the others' records
are and its prefix would stall; with one database the prefix is computed over every record whoever
stored it, and two consumers advancing the same stream take turns on the write lock. WAL needs the
consumers on one host (a local file system, not a network share); consumers on several hosts need a
shared database server with the same key and the same rule.

`synchronous=FULL`: an acknowledged record is on disk, since the agent deletes its copy on the ack.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.sync.envelope import Record, canonical
from agent.sync.errors import SeqConflict
from central.errors import StoreFailed

__all__ = ["Committed", "Ledger", "SeqConflict", "StoreFailed"]

log = logging.getLogger("central.ledger")

_CHUNK = 512
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    agent TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    kind TEXT NOT NULL,
    at TEXT NOT NULL,
    body TEXT NOT NULL,
    sig TEXT NOT NULL,
    received_at TEXT NOT NULL,
    consumer TEXT NOT NULL,
    PRIMARY KEY (agent, stream, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS covered (
    agent TEXT NOT NULL,
    stream TEXT NOT NULL,
    gap_seq INTEGER NOT NULL,
    from_seq INTEGER NOT NULL,
    to_seq INTEGER NOT NULL,
    PRIMARY KEY (agent, stream, gap_seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS covered_to ON covered (agent, stream, to_seq);
CREATE TABLE IF NOT EXISTS progress (
    agent TEXT NOT NULL,
    stream TEXT NOT NULL,
    acked INTEGER NOT NULL,
    PRIMARY KEY (agent, stream)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Committed:
    """What one batch did; `acks` holds the prefix of every (agent, stream) the batch touched."""

    stored: int = 0
    duplicates: int = 0
    conflicts: tuple[Record, ...] = ()
    acks: dict[str, dict[str, int]] = field(default_factory=dict)


def _body(record: Record) -> str:
    """The body as stored: its canonical JSON, the text the signature covered."""
    return canonical(record.body).decode("utf-8")


def _utc_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


class Ledger:
    """One connection to the central database; use it from one thread at a time."""

    def __init__(self, path: Path | str, *, consumer: str, busy_timeout_s: float = 10.0) -> None:
        self.consumer = consumer
        self._conn = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        mode = self._set_wal(busy_timeout_s)
        if mode not in ("wal", "memory"):
            raise StoreFailed(f"{path}: journal_mode is {mode}, not wal (a network file system?)")
        self._conn.execute("PRAGMA synchronous = FULL")
        with self._transaction():  # statement by statement: executescript would COMMIT on its own
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)

    def _set_wal(self, timeout_s: float) -> str:
        """PRAGMA journal_mode = WAL, tried again while another consumer holds the file: SQLite
        answers it with "database is locked" at once, without waiting out the busy timeout, when two
        connections open a new database together."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                (mode,) = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()
                return str(mode).lower()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise StoreFailed(f"setting WAL: {exc}") from exc
                time.sleep(random.uniform(0.005, 0.05))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)

    def close(self) -> None:
        self._conn.close()

    def commit(self, records: Sequence[Record]) -> Committed:
        """Store `records` in one transaction and return the prefix of every stream they belong to."""
        stored = duplicates = 0
        conflicts: list[Record] = []
        touched: set[tuple[str, str]] = set()
        received_at = _utc_now()
        with self._transaction():
            for r in records:
                cur = self._conn.execute(
                    "INSERT INTO records (agent, stream, seq, id, kind, at, body, sig, received_at, consumer)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (r.agent, r.stream, r.seq, r.id, r.kind, r.at, _body(r), r.sig, received_at, self.consumer),
                )
                if cur.rowcount == 1:
                    stored += 1
                    touched.add((r.agent, r.stream))
                    gap = r.gap()
                    if gap is not None:
                        self._conn.execute(
                            "INSERT INTO covered (agent, stream, gap_seq, from_seq, to_seq) VALUES (?, ?, ?, ?, ?)",
                            (r.agent, r.stream, r.seq, gap.from_seq, gap.to_seq),
                        )
                    continue
                (kept,) = self._conn.execute(
                    "SELECT id FROM records WHERE agent = ? AND stream = ? AND seq = ?", (r.agent, r.stream, r.seq)
                ).fetchone()
                if kept == r.id:
                    duplicates += 1
                    touched.add((r.agent, r.stream))  # the agent missed the ack: it gets it again
                else:  # not acknowledged for it: an ack sent for it alone would prune the robot's copy
                    conflicts.append(r)
            acks: dict[str, dict[str, int]] = {}
            for agent, stream in sorted(touched):
                acks.setdefault(agent, {})[stream] = self._advance(agent, stream)
        for r in conflicts:
            log.error("%s", SeqConflict(f"{r.agent}/{r.stream}/{r.seq}: kept the stored record, refused id {r.id}"))
        return Committed(stored, duplicates, tuple(conflicts), acks)

    def _advance(self, agent: str, stream: str) -> int:
        row = self._conn.execute(
            "SELECT acked FROM progress WHERE agent = ? AND stream = ?", (agent, stream)
        ).fetchone()
        acked = int(row[0]) if row else 0
        start = acked
        while True:
            before = acked
            for (seq,) in self._conn.execute(
                "SELECT seq FROM records WHERE agent = ? AND stream = ? AND seq > ? ORDER BY seq LIMIT ?",
                (agent, stream, acked, _CHUNK),
            ):
                if seq != acked + 1:
                    break
                acked = seq
            (cover,) = self._conn.execute(
                "SELECT MAX(to_seq) FROM covered WHERE agent = ? AND stream = ? AND to_seq > ? AND from_seq <= ?",
                (agent, stream, acked, acked + 1),
            ).fetchone()
            if cover is not None:
                acked = int(cover)
            if acked == before:
                break
        if acked != start or row is None:
            self._conn.execute(
                "INSERT INTO progress (agent, stream, acked) VALUES (?, ?, ?)"
                " ON CONFLICT (agent, stream) DO UPDATE SET acked = excluded.acked",
                (agent, stream, acked),
            )
        return acked

    def acked(self, agent: str, stream: str) -> int:
        row = self._conn.execute(
            "SELECT acked FROM progress WHERE agent = ? AND stream = ?", (agent, stream)
        ).fetchone()
        return int(row[0]) if row else 0


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception): the write lock from the first statement,
    so two consumers never compute a prefix from a snapshot the other is about to change."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
