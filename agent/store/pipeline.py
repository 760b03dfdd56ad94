"""Enqueue statements on an aiosqlite connection without waiting for each answer.

Why: every awaited aiosqlite call is a round trip to the connection's worker thread (60-120 us
measured on a 2-core development machine). A group commit that awaited BEGIN, SAVEPOINT and RELEASE
for each unit of work, and a unit that awaited each of its statements, would spend more time on
thread hops than on the disk. aiosqlite runs the jobs of one connection in one worker thread
from a FIFO queue, so jobs enqueued in order run in order; `enqueue` puts a statement in that
queue *now* and hands back the future that will carry its rows (or its exception).

How: an aiosqlite call is a coroutine that puts its job in the queue and then suspends on the
job's future. `enqueue` runs the coroutine up to that first suspension, keeps the future, and
closes the coroutine (the job stays queued). If a future aiosqlite suspended anywhere else first,
the yielded object would not be a Future and `enqueue` fails loudly instead of reordering
statements. `tests/unit/test_store_database.py` checks the statement order with a trace callback.
Every future must be collected (`settle` or await), or asyncio logs "exception never retrieved".
"""

from __future__ import annotations

import asyncio
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Generic, TypeVar, cast

import aiosqlite

__all__ = ["Pipelined", "enqueue", "settle"]

T = TypeVar("T")
Rows = Iterable[sqlite3.Row]


def enqueue(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> asyncio.Future[Rows]:
    """Put `sql` in `conn`'s job queue before returning; the future resolves to its rows."""
    coro = conn.execute_fetchall(sql, params)
    try:
        # runs until the job is queued and the call waits for it; aiosqlite's annotations say
        # its coroutines yield nothing, but they yield the job's future
        future: object = cast(Any, coro).send(None)
    except StopIteration as done:  # pragma: no cover - aiosqlite never completes synchronously
        raise RuntimeError("aiosqlite answered without queueing a job") from done
    finally:
        coro.close()
    if not isinstance(future, asyncio.Future):
        raise RuntimeError(f"aiosqlite suspended on {future!r} instead of its job future")
    return future


async def settle(futures: Sequence[asyncio.Future[Any]]) -> BaseException | None:
    """Wait for every enqueued statement; return the first exception in queue order.

    Never raises the statements' exceptions (all are retrieved, so none is logged as lost).
    If the caller is cancelled meanwhile, CancelledError propagates; the statements still run.
    """
    if not futures:
        return None
    # Jobs complete in queue order, so once the last is done all are. Awaiting the future
    # itself costs one event-loop iteration less than asyncio.wait.
    last = futures[-1]
    if not last.done():
        try:
            await last
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the caller is being cancelled
        except Exception:
            pass
    if not all(f.done() for f in futures):
        await asyncio.wait(futures)
    first: BaseException | None = None
    for future in futures:
        if future.cancelled():
            first = first or asyncio.CancelledError("statement cancelled")
        elif (exc := future.exception()) is not None:
            first = first or exc
    return first


class Pipelined(ABC, Generic[T]):
    """A unit of work whose statements do not depend on each other's results.

    Why: a plain unit (`async def unit(conn)`) awaits its statements, so the group-commit
    writer runs one unit per round trip to the SQLite thread. A pipelined unit hands over all
    its statements at once; the writer enqueues those of every pipelined unit in the batch
    without waiting and only then collects the rows, so fifty units cost about one round trip.

    Contract (the price of not waiting):
    - `statements()` is pure: it may be called again if an earlier unit of the batch fails and
      the rest is re-run (generate ids and timestamps before, in the constructor);
    - each statement must be harmless when an earlier statement of the same unit failed, since
      it is already queued when the failure is seen (e.g. make it conditional on that effect);
    - `result(rows)` is a pure function of the rows of its statements; raising refuses the unit
      and rolls back its statements only.
    """

    # True only if the unit has exactly one statement and `result` refuses only in cases where
    # that statement changed nothing. A lone unit can then be committed in the same round trip
    # as its statement, before its rows are read: a failing statement is atomic (it changed
    # nothing either), and a refusal has nothing to undo.
    commit_before_result: ClassVar[bool] = False

    @abstractmethod
    def statements(self) -> Sequence[tuple[str, Sequence[Any]]]:
        """The (sql, parameters) to run, in order."""

    @abstractmethod
    def result(self, rows: list[list[sqlite3.Row]]) -> T:
        """The unit's value from the rows of each statement (same order); raise to refuse."""

    async def __call__(self, conn: aiosqlite.Connection) -> T:
        """Run as a plain unit: inside another unit of work, or alone."""
        futures = [enqueue(conn, sql, params) for sql, params in self.statements()]
        failure = await settle(futures)
        if failure is not None:
            raise failure
        return self.result([list(f.result()) for f in futures])
