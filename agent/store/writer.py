"""Group commit: one writer task, one transaction per batch, a savepoint per unit of work.

Why: durability costs one fsync per COMMIT (0.2 ms on this disk, 1-20 ms on SD/eMMC) and nothing
may be acknowledged before it is committed. One task takes every pending unit, runs them in one
transaction and commits once; N concurrent callers share one fsync, and each caller's `write`
still returns only after its own data is durable.

A batch on the single writer connection:

    BEGIN IMMEDIATE
      SAVEPOINT unit; <plain unit>; RELEASE unit
      SAVEPOINT unit; <plain unit that fails>; ROLLBACK TO unit; RELEASE unit   -- only it is lost
      SAVEPOINT r1; <pipelined unit>; <pipelined unit>; ...       -- sent without waiting for rows
    COMMIT                                                        -- then the callers are answered

Pipelined units (pipeline.py) hand over their statements up front, so a run of them is sent in
one go under one savepoint and costs about one round trip to the SQLite thread, not one per
unit. If one of them refuses, the run is rolled back to that savepoint and sent again carefully,
with a savepoint per unit, so that again only the refusing unit is lost.

A batch of one unit needs neither BEGIN nor savepoint (rolling the unit back is rolling the batch
back): the writer connection uses Python's implicit transactions (isolation_level="IMMEDIATE"),
which put "BEGIN IMMEDIATE" in front of the first INSERT/UPDATE/DELETE/REPLACE in the same call.
A lone pipelined unit that declares `commit_before_result` even gets its COMMIT in the same round
trip. The implicit BEGIN is also the safety net of pipelining: if SQLite rolls a transaction back
by itself, statements already queued behind the failure open a new transaction (rolled back
below) instead of committing one by one. So write statements must start with one of those four
keywords (not WITH).

A plain unit is `async def unit(conn) -> T`: it must use only `conn` (aiosqlite, rows as
sqlite3.Row), fetch every statement it starts (`execute_fetchall` for RETURNING), and never
BEGIN, COMMIT or ROLLBACK. If SQLite rolls the whole transaction back by itself (it may on
SQLITE_FULL, IOERR, BUSY, NOMEM), or the COMMIT fails, every unit of the batch gets the error:
nothing of the batch was committed and nothing is reported as done.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiosqlite

from agent.store.errors import (
    StoreClosed,
    StoreError,
    StoreOverloaded,
    StoreTimeout,
    StoreUnavailable,
    is_unavailable,
    map_sqlite_error,
)
from agent.store.pipeline import Pipelined, enqueue, settle

__all__ = ["GroupWriter", "Unit"]

log = logging.getLogger("oht.store")

T = TypeVar("T")
Unit = Callable[[aiosqlite.Connection], Awaitable[T]]

_STOP = object()


@dataclass(eq=False)
class _Job(Generic[T]):
    unit: Unit[T] | Pipelined[T]
    future: asyncio.Future[T]
    started: bool = False


@dataclass(eq=False)
class _Outcome:
    job: _Job[Any]
    value: Any = None
    error: BaseException | None = None


class _BatchAborted(Exception):
    """Internal: the transaction is lost; `cause` goes to every unit not refused on its own."""

    def __init__(self, cause: BaseException, job: _Job[Any] | None = None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.job = job


class GroupWriter:
    """Owns the writer connection's transactions; `write(unit)` from any task.

    `on_outcome(error)` is called after every batch: with the StoreUnavailable that refused
    it, or with None when something was committed (the database's health follows it).
    """

    def __init__(
        self,
        conn: aiosqlite.Connection,
        *,
        queue_size: int,
        max_batch: int,
        unit_timeout: float,
        on_outcome: Callable[[StoreUnavailable | None], None],
    ) -> None:
        self._conn = conn
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=queue_size)
        self._queue_size = queue_size
        self._max_batch = max_batch
        self._unit_timeout = unit_timeout
        self._on_outcome = on_outcome
        self._task: asyncio.Task[None] | None = None
        self._accepting = False
        self._names = itertools.count(1)
        self._inflight: list[asyncio.Future[Any]] = []
        self.stats = {"batches": 0, "units": 0, "largest_batch": 0, "aborted_batches": 0}

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def start(self) -> None:
        self._accepting = True
        self._task = asyncio.create_task(self._loop(), name="store-writer")

    def queued(self) -> int:
        return self._queue.qsize()

    async def stop(self, timeout: float) -> None:
        """Refuse new writes, commit what is queued (within `timeout`), end the task."""
        self._accepting = False
        task, self._task = self._task, None
        if task is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._queue.put(_STOP)
                await asyncio.shield(task)
        except TimeoutError:
            log.error("store writer did not drain within %.1f s; abandoning queued writes", timeout)
        if not task.done():
            task.cancel()
            try:
                await asyncio.wait_for(task, timeout)
            except (asyncio.CancelledError, TimeoutError):
                pass
        self._fail_queued(StoreClosed("the database was closed before this write ran"))

    # ------------------------------------------------------------------ callers

    async def write(self, unit: Unit[T] | Pipelined[T], timeout: float) -> T:
        """Queue `unit`; return its value once committed (see Database.write for errors)."""
        if not self._accepting:
            raise StoreClosed("the database is not open")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        job: _Job[T] = _Job(unit, loop.create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._queue.put(job)
            except TimeoutError:
                raise StoreOverloaded(
                    f"write queue full ({self._queue_size}) for {timeout:.1f} s; not written"
                ) from None
        try:
            async with asyncio.timeout_at(deadline):
                return await job.future
        except TimeoutError:
            if job.started:
                raise StoreTimeout(
                    f"write did not complete within {timeout:.1f} s; it may still be committed"
                ) from None
            raise StoreTimeout(f"write waited {timeout:.1f} s in the queue and was dropped; not written") from None

    def _fail_queued(self, err: StoreError) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if isinstance(item, _Job) and not item.future.done():
                item.future.set_exception(err)

    # ------------------------------------------------------------------ the writer task

    async def _loop(self) -> None:
        """Take everything queued (up to max_batch), run it as one batch; never die on one."""
        stop = False
        while not stop:
            first = await self._queue.get()
            if first is _STOP:
                break
            batch: list[_Job[Any]] = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            try:
                await self._run_batch(batch)
            except asyncio.CancelledError:
                self._fail_all(batch, StoreClosed("the database was closed during this write"))
                raise
            except Exception as exc:
                log.exception("store writer: batch failed unexpectedly")
                self._fail_all(batch, StoreError(f"store writer failed: {exc!r}"))
                await self._rollback_quietly()

    @staticmethod
    def _fail_all(batch: list[_Job[Any]], err: BaseException) -> None:
        for job in batch:
            if not job.future.done():
                job.future.set_exception(err)

    async def _run_batch(self, batch: list[_Job[Any]]) -> None:
        jobs = [job for job in batch if not job.future.done()]  # skip writes given up on
        if not jobs:
            return
        conn = self._conn
        nested = len(jobs) > 1
        if not nested and getattr(jobs[0].unit, "commit_before_result", False):
            await self._run_alone_committing(jobs[0])
            return
        outcomes: list[_Outcome] = []
        # Statements enqueued but not yet checked (BEGIN, savepoints, releases); every path
        # that needs to know the transaction's state settles them first. A single unit needs
        # no BEGIN: the connection opens the transaction with its first write (see module doc).
        self._inflight = [enqueue(conn, "BEGIN IMMEDIATE")] if nested else []
        try:
            index = 0
            while index < len(jobs):
                if isinstance(jobs[index].unit, Pipelined):
                    end = index
                    while end < len(jobs) and isinstance(jobs[end].unit, Pipelined):
                        end += 1
                    outcomes += await self._run_pipelined(jobs[index:end], nested)
                    index = end
                else:
                    outcomes.append(await self._run_plain(jobs[index], nested))
                    index += 1
            if not nested and (not outcomes or outcomes[0].error is not None):
                # The only unit refused and was rolled back with the transaction.
                self._resolve(outcomes)
                return
            failure = await self._settle_inflight()
            if failure is None and conn.in_transaction:  # a unit that only read: nothing to do
                failure = await settle([enqueue(conn, "COMMIT")])
            if failure is not None:
                raise _BatchAborted(failure)
        except _BatchAborted as aborted:
            await self._abort(jobs, outcomes, aborted)
            return
        self.stats["batches"] += 1
        self.stats["units"] += len(jobs)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(jobs))
        self._resolve(outcomes)

    async def _run_alone_committing(self, job: _Job[Any]) -> None:
        """A lone pipelined unit that allows it: its statement and COMMIT in one round trip."""
        conn = self._conn
        unit: Pipelined[Any] = job.unit  # type: ignore[assignment]
        job.started = True
        try:
            statements = list(unit.statements())
            if len(statements) != 1:
                raise StoreError(
                    f"{type(unit).__name__} sets commit_before_result with "
                    f"{len(statements)} statements; it needs exactly one",
                    code="STORE_INTERNAL",
                )
            (statement,) = statements
        except Exception as exc:
            self._resolve([_Outcome(job, error=_as_caller_error(exc))])
            return
        futures = [enqueue(conn, *statement), enqueue(conn, "COMMIT")]
        await settle(futures)
        failure = await settle(futures[:1])
        if failure is not None:
            # The statement changed nothing; the COMMIT either committed nothing or found the
            # transaction already rolled back by SQLite (whose error is the one to report).
            await settle(futures[1:])
            await self._rollback_quietly()
            self._resolve([_Outcome(job, error=_as_caller_error(failure))])
            return
        failure = await settle(futures[1:])
        if failure is not None:
            await self._abort([job], [], _BatchAborted(failure))
            return
        self.stats["batches"] += 1
        self.stats["units"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], 1)
        try:
            outcome = _Outcome(job, value=unit.result([list(futures[0].result())]))
        except Exception as exc:
            outcome = _Outcome(job, error=_as_caller_error(exc))
        self._resolve([outcome])

    async def _settle_inflight(self) -> BaseException | None:
        inflight, self._inflight = self._inflight, []
        return await settle(inflight)

    async def _run_plain(self, job: _Job[Any], nested: bool) -> _Outcome:
        """One awaited unit in its own savepoint; raises _BatchAborted if the batch is lost."""
        conn = self._conn
        if job.future.done():  # the caller gave up while earlier units ran: skip it
            return _Outcome(job, error=StoreTimeout("skipped: the caller stopped waiting"))
        if nested:
            self._inflight.append(enqueue(conn, "SAVEPOINT unit"))
        job.started = True  # from here on a caller's timeout means "outcome unknown"
        try:
            async with asyncio.timeout(self._unit_timeout):
                value = await job.unit(conn)
        except BaseException as exc:
            if not _is_unit_failure(exc):
                raise
            if isinstance(exc, TimeoutError):
                await conn.interrupt()
                exc = StoreTimeout(
                    f"unit of work exceeded {self._unit_timeout:.1f} s; rolled back",
                    hint="A query is too slow for the write path; report it as a bug.",
                )
            await self._undo(exc, job, "unit" if nested else None)
            return _Outcome(job, error=_as_caller_error(exc))
        if nested:
            self._inflight.append(enqueue(conn, "RELEASE unit"))
        return _Outcome(job, value=value)

    async def _run_pipelined(self, run: list[_Job[Any]], nested: bool) -> list[_Outcome]:
        """Run consecutive pipelined units: optimistically together, carefully if one refuses."""
        if nested and len(run) > 1:
            outcomes = await self._pipelined_together(run)
            if outcomes is not None:
                return outcomes
        return await self._pipelined_careful(run, nested)

    async def _pipelined_together(self, run: list[_Job[Any]]) -> list[_Outcome] | None:
        """All units of `run` under one savepoint: no per-unit statements at all.

        Returns None when a unit refused: then the whole run has been rolled back and is run
        again carefully (a savepoint per unit), which isolates the refusal. Pipelined units may
        run twice by contract; refusals are rare (a reused key, a bug), so this costs nothing in
        the common case and one extra pass otherwise.
        """
        conn = self._conn
        name = f"r{next(self._names)}"
        self._inflight.append(enqueue(conn, f"SAVEPOINT {name}"))
        sent: list[tuple[_Job[Any], list[asyncio.Future[Any]]]] = []
        refused: BaseException | None = None
        for job in run:
            if job.future.done():  # the caller gave up meanwhile: skip it
                continue
            job.started = True
            try:
                statements = job.unit.statements()  # type: ignore[union-attr]
            except Exception as exc:
                refused = exc
                break
            sent.append((job, [enqueue(conn, sql, params) for sql, params in statements]))
        before, self._inflight = self._inflight, []
        statements_sent = [f for _, futures in sent for f in futures]
        await settle(before + statements_sent)  # one wait: jobs complete in queue order
        failure = await settle(before)
        if failure is not None:  # a savepoint failed: the transaction is in doubt
            raise _BatchAborted(failure)
        outcomes = []
        culprit = None
        for job, futures in sent:
            if refused is not None:
                break
            refused = await settle(futures)
            if refused is None:
                try:
                    value = job.unit.result([list(f.result()) for f in futures])  # type: ignore[union-attr]
                except Exception as exc:
                    refused = exc
                else:
                    outcomes.append(_Outcome(job, value=value))
                    continue
            culprit = job
        if refused is None:
            return outcomes  # the savepoint is released by the COMMIT
        if _loses_transaction(refused) or not conn.in_transaction:
            raise _BatchAborted(refused, culprit)
        failure = await settle([enqueue(conn, f"ROLLBACK TO {name}"), enqueue(conn, f"RELEASE {name}")])
        if failure is not None:
            raise _BatchAborted(failure)
        return None

    async def _pipelined_careful(self, run: list[_Job[Any]], nested: bool) -> list[_Outcome]:
        """A savepoint per unit: enqueue all, then read rows in order; re-send after a refusal."""
        conn = self._conn
        outcomes: list[_Outcome] = []
        pending = run
        while pending:
            sent = []
            for job in pending:
                if job.future.done():  # the caller gave up meanwhile: skip it
                    continue
                job.started = True
                name = f"p{next(self._names)}" if nested else None
                if name:
                    self._inflight.append(enqueue(conn, f"SAVEPOINT {name}"))
                try:
                    statements = job.unit.statements()  # type: ignore[union-attr]
                    futures = [enqueue(conn, sql, params) for sql, params in statements]
                    refused: BaseException | None = None
                except Exception as exc:
                    futures, refused = [], exc
                sent.append((job, name, futures, refused, list(self._inflight)))
                self._inflight = []
            pending = []
            for position, (job, name, futures, refused, before) in enumerate(sent):
                await settle(before + futures)  # one wait: jobs complete in queue order
                failure = await settle(before)
                if failure is not None:  # a savepoint failed: the transaction is in doubt
                    await settle([f for _, _, fs, _, b in sent[position:] for f in (*b, *fs)])
                    raise _BatchAborted(failure, job)
                failure = refused or await settle(futures)
                if failure is None:
                    try:
                        rows = [list(f.result()) for f in futures]
                        value = job.unit.result(rows)  # type: ignore[union-attr]
                    except Exception as exc:
                        failure = exc
                    else:
                        outcomes.append(_Outcome(job, value=value))
                        continue
                # Units queued after this one ran on top of it: collect them, roll back to
                # this unit's savepoint (undoing them too) and send them again.
                later = sent[position + 1 :]
                await settle([f for _, _, fs, _, b in later for f in (*b, *fs)])
                await self._undo(failure, job, name)
                outcomes.append(_Outcome(job, error=_as_caller_error(failure)))
                pending = [entry[0] for entry in later]
                break
        return outcomes

    async def _undo(self, exc: BaseException, job: _Job[Any], savepoint: str | None) -> None:
        """Roll back one refused unit (to `savepoint`, or the whole single-unit batch).

        Raises _BatchAborted when that is not possible: a statement before it failed, the error
        is one after which SQLite may have rolled back the whole transaction by itself, or the
        transaction is gone.
        """
        conn = self._conn
        failure = await self._settle_inflight()
        if failure is not None:
            raise _BatchAborted(failure, job)
        if _loses_transaction(exc):
            raise _BatchAborted(exc, job)
        if not conn.in_transaction:
            if savepoint is None:
                return  # a single unit that failed before writing anything
            raise _BatchAborted(exc, job)
        undo = [f"ROLLBACK TO {savepoint}", f"RELEASE {savepoint}"] if savepoint else ["ROLLBACK"]
        failure = await settle([enqueue(conn, sql) for sql in undo])
        if failure is not None:
            raise _BatchAborted(failure, job)

    def _resolve(self, outcomes: list[_Outcome]) -> None:
        """Hand each caller its value or its own error; report the batch's health."""
        refused = [o.error for o in outcomes if isinstance(o.error, StoreUnavailable)]
        if refused:
            self._on_outcome(refused[-1])
        elif any(o.error is None for o in outcomes):
            self._on_outcome(None)
        for outcome in outcomes:
            if outcome.job.future.done():
                continue
            if outcome.error is not None:
                outcome.job.future.set_exception(outcome.error)
            else:
                outcome.job.future.set_result(outcome.value)

    async def _abort(self, jobs: list[_Job[Any]], outcomes: list[_Outcome], aborted: _BatchAborted) -> None:
        """Roll the batch back; every unit not refused on its own gets the cause."""
        self.stats["aborted_batches"] += 1
        await self._rollback_quietly()
        self._inflight = []
        cause = aborted.cause
        first = _as_caller_error(cause)
        if isinstance(first, StoreUnavailable):
            self._on_outcome(first)
        store_level = isinstance(cause, (sqlite3.Error, StoreError))
        own = {o.job: o.error for o in outcomes if o.error is not None}
        if aborted.job is not None:
            own[aborted.job] = first
        for job in jobs:
            if job.future.done():
                continue
            err = own.get(job)
            if err is None:
                err = (
                    _as_caller_error(cause)
                    if store_level
                    else StoreError(
                        "rolled back: another unit of the same batch broke the transaction",
                        code="STORE_BATCH_ABORTED",
                    )
                )
            job.future.set_exception(err)

    async def _rollback_quietly(self) -> None:
        try:
            if self._conn.in_transaction:
                await self._conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.error("store writer: ROLLBACK failed: %s", exc)


def _failed(exc: BaseException) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future


def _loses_transaction(exc: BaseException) -> bool:
    """Errors after which SQLite may have rolled back the whole transaction on its own."""
    if isinstance(exc, StoreUnavailable):
        return True
    cause = exc.__cause__ if isinstance(exc, StoreError) else exc
    return isinstance(cause, sqlite3.Error) and is_unavailable(cause)


def _is_unit_failure(exc: BaseException) -> bool:
    """An exception that belongs to the unit, as opposed to the writer task being cancelled."""
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        return task is None or not task.cancelling()
    return isinstance(exc, Exception)


def _as_caller_error(exc: BaseException) -> BaseException:
    """What the caller of `write` sees: coded store errors for SQLite failures."""
    if isinstance(exc, asyncio.CancelledError):
        return StoreError("the unit of work was cancelled; rolled back", code="STORE_UNIT_CANCELLED")
    if isinstance(exc, sqlite3.Error):
        return map_sqlite_error(exc)
    return exc
