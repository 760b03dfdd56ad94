"""Logging set-up: readable text on a terminal, one JSON object per line for journald and shippers.

Nothing the control loop does may wait for the log's reader. Writing to stderr is a blocking
write to a pipe that journald drains; when journald is slow the pipe fills and a plain
StreamHandler would stop the whole event loop (bus, safety, API) inside `write`. So a log call
only puts the record on a bounded queue; one thread writes the lines out. When the queue is full
the line is dropped and counted (`dropped_lines()`), never waited for, and once the queue has
drained the writer logs how many were lost.

In JSON each line carries, beside time, level, logger and message, the fields that tie it to
what a technician looks up: `code` (the fault or error code: from `extra={"code": ...}`, or from
a `CodedError` the line reports), and `request_id` / `command_id` while a request or a command is
being handled (`log_context`, a context variable: it follows the asyncio task that set it).
"""

from __future__ import annotations

import atexit
import copy
import json
import logging
import logging.handlers
import queue
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import IO

from oht_errors import CodedError

# Fields every line logged inside `log_context(...)` carries (request_id, command_id).
_CONTEXT: ContextVar[Mapping[str, str]] = ContextVar("oht_log_context", default=MappingProxyType({}))


@contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Tag every line logged in this block (and in tasks it starts) with `fields`."""
    token = _CONTEXT.set({**_CONTEXT.get(), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def _line_fields(record: logging.LogRecord) -> dict[str, str]:
    """The structured fields of one record: the caller's context, then `extra={"fields": {...}}`,
    then the code. Taken when the record is queued (in the caller's context) and again when it is
    written (where the context is the writer's own, empty one: the queued fields are kept)."""
    out = dict(_CONTEXT.get())
    given = getattr(record, "fields", None)
    if isinstance(given, dict):
        out.update(given)
    code = getattr(record, "code", None)
    if code is None:
        reported = [a for a in (record.args if isinstance(record.args, tuple) else ()) if isinstance(a, CodedError)]
        if record.exc_info and isinstance(record.exc_info[1], CodedError):
            reported.append(record.exc_info[1])
        if reported:
            code = reported[0].code
    if code is not None and "code" not in out:
        out["code"] = str(code)
    return out


QUEUE_LINES = 4096  # lines waiting for the writer thread; about a minute of a very chatty agent
STOP_TIMEOUT_S = 2.0  # how long exit waits for the last lines to be written


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_line_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted on the caller's side before the record was queued
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


class _Counter:
    """Lines dropped because the queue was full; any thread may log, so the count is locked."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0
        self.unreported = 0

    def add(self) -> None:
        with self._lock:
            self.total += 1
            self.unreported += 1

    def take_unreported(self) -> int:
        with self._lock:
            n, self.unreported = self.unreported, 0
            return n


_dropped = _Counter()


def dropped_lines() -> int:
    """Log lines lost since start because the writer could not keep up (for status and metrics)."""
    return _dropped.total


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """Puts the record on the queue without waiting: a full queue drops the line and counts it."""

    def __init__(self, q: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__(q)
        self._exc_formatter = logging.Formatter()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The message is merged with its arguments here, while they still mean what they meant;
        # the traceback is kept apart as text so the writer's formatter can still place it.
        fields = _line_fields(record)
        record = copy.copy(record)
        record.fields = fields
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = self._exc_formatter.formatException(record.exc_info)
            record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            _dropped.add()


class _Writer(logging.handlers.QueueListener):
    """The thread that writes queued lines; it reports lost lines once it has caught up."""

    def __init__(
        self, q: queue.Queue[logging.LogRecord | None], *handlers: logging.Handler, respect_handler_level: bool
    ) -> None:
        super().__init__(q, *handlers, respect_handler_level=respect_handler_level)
        self._records = q  # typed: the base class only knows a "queue-like" object

    def handle(self, record: logging.LogRecord) -> None:
        super().handle(record)
        if _dropped.unreported and self._records.empty():
            self._report_dropped()

    def _report_dropped(self) -> None:
        n = _dropped.take_unreported()
        if n:
            note = logging.LogRecord(
                "oht.logs",
                logging.WARNING,
                __file__,
                0,
                "%d log line(s) dropped: the log output could not keep up (%d since start)",
                (n, _dropped.total),
                None,
            )
            super().handle(note)

    def stop_within(self, timeout: float) -> None:
        """Write what is queued, then end the thread; never waits longer than `timeout`."""
        thread = self._thread
        if thread is None:
            return
        try:
            self._records.put(None, timeout=timeout)  # None is the listener's end marker
        except queue.Full:
            pass  # the writer is stuck: the thread is a daemon, leave it
        thread.join(timeout)
        if thread.is_alive():
            return  # stuck in a write: keep queueing (and dropping) rather than block the exit
        self._thread = None
        self._report_dropped()
        for handler in self.handlers:
            handler.flush()


_writer: _Writer | None = None


def setup_logging(
    level: str = "info", fmt: str = "text", *, stream: IO[str] | None = None, queue_lines: int = QUEUE_LINES
) -> None:
    """Route every log record through a bounded queue to a writer thread on `stream` (stderr).

    Called again (tests, the demo) it replaces the previous set-up, flushing it first.
    """
    global _writer
    stop_logging()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    log_queue: queue.Queue[logging.LogRecord | None] = queue.Queue(maxsize=queue_lines)
    writer = _Writer(log_queue, handler, respect_handler_level=True)
    writer.start()
    _writer = writer
    root = logging.getLogger()
    root.handlers[:] = [DroppingQueueHandler(log_queue)]
    root.setLevel(level.upper())
    logging.getLogger("pymodbus").setLevel(logging.WARNING)


def stop_logging(timeout: float = STOP_TIMEOUT_S) -> None:
    """Flush the queued lines and stop the writer thread (also run at interpreter exit)."""
    global _writer
    writer, _writer = _writer, None
    if writer is None:
        return
    writer.stop_within(timeout)
    root = logging.getLogger()
    if writer._thread is None and any(isinstance(h, DroppingQueueHandler) for h in root.handlers):
        # Nothing reads the queue any more: what is logged after this (late shutdown) goes
        # straight to the stream, now that the loop no longer runs.
        root.handlers[:] = list(writer.handlers)


atexit.register(stop_logging)
