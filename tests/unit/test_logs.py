"""Logging never blocks the caller: records go through a bounded queue to a writer thread."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from agent import logs
from agent.store.errors import StoreUnavailable


class StalledStream(io.StringIO):
    """stderr as seen when journald stops reading: every write waits until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.writing = threading.Event()

    def write(self, text: str) -> int:
        self.writing.set()
        self.release.wait(30)
        return super().write(text)


@pytest.fixture
def stalled() -> Iterator[StalledStream]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = StalledStream()
    yield stream
    stream.release.set()
    logs.stop_logging()
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


@pytest.mark.timeout(15)  # before the queue, the first log call waited on the stream for ever
def test_a_log_call_returns_at_once_while_the_stream_is_stalled(
    stalled: StalledStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stderr", stalled)  # here, not in the fixture: pytest swaps stderr per phase
    logs.setup_logging("info")  # on sys.stderr, here the stalled stream
    log = logging.getLogger("oht.test")
    log.info("first line: the writer thread takes it and stalls in write")
    assert stalled.writing.wait(5)
    slowest = 0.0
    for i in range(200):
        started = time.perf_counter()
        log.warning("line %d while the stream is stalled", i)
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 0.05, f"a log call waited {slowest * 1000:.1f} ms for the stream"
    stalled.release.set()
    logs.stop_logging()
    out = stalled.getvalue()
    assert "first line" in out and "line 199 while the stream is stalled" in out  # nothing lost: the queue had room


@pytest.mark.timeout(15)
def test_a_full_queue_drops_and_counts_lines_and_reports_them_once_drained(stalled: StalledStream) -> None:
    logs.setup_logging("info", stream=stalled, queue_lines=8)
    log = logging.getLogger("oht.test")
    before = logs.dropped_lines()
    log.info("first line")
    assert stalled.writing.wait(5)  # the writer holds this one; the queue is empty again
    for i in range(50):
        log.info("burst %d", i)
    dropped = logs.dropped_lines() - before
    assert dropped == 50 - 8, f"{dropped} dropped: the queue holds 8 lines, the rest must be dropped"
    stalled.release.set()
    logs.stop_logging()
    out = stalled.getvalue()
    assert "burst 7" in out and "burst 8" not in out  # the first 8 queued, later ones dropped
    assert f"{dropped} log line(s) dropped" in out  # reported once the writer caught up
    assert out.count("log line(s) dropped") == 1


def test_json_lines_keep_fields_and_the_traceback_through_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        logs.setup_logging("info", "json", stream=stream)
        log = logging.getLogger("oht.test")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it failed at %s", "the end", extra={"fields": {"command": "c-1"}})
        logs.stop_logging()
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["msg"] == "it failed at the end"
    assert line["command"] == "c-1" and line["level"] == "error" and line["logger"] == "oht.test"
    assert "ValueError: boom" in line["exc"]


def _json_lines(emit: Callable[[logging.Logger], None]) -> list[dict[str, object]]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        logs.setup_logging("info", "json", stream=stream)
        emit(logging.getLogger("oht.test"))
        logs.stop_logging()
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_code_of_a_fault_or_of_the_coded_error_they_report() -> None:
    def emit(log: logging.Logger) -> None:
        log.error("fault %s: %s", "SAFETY_LINK_LOST", "no reply", extra={"code": "SAFETY_LINK_LOST"})
        log.warning("refused: %s", StoreUnavailable("disk full"))
        try:
            raise StoreUnavailable("gone")
        except StoreUnavailable:
            log.exception("store write failed")
        log.info("plain line")

    fault, refused, failed, plain = _json_lines(emit)
    assert fault["code"] == "SAFETY_LINK_LOST" and fault["msg"] == "fault SAFETY_LINK_LOST: no reply"
    assert refused["code"] == StoreUnavailable.code and failed["code"] == StoreUnavailable.code
    assert "code" not in plain


def test_json_lines_carry_the_request_and_command_ids_of_the_context_they_were_logged_in() -> None:
    async def handle() -> None:
        with logs.log_context(request_id="r-1"):
            logging.getLogger("oht.test").info("in the request")
            with logs.log_context(command_id="c-9"):
                # a task started here keeps the ids: the context is copied into it
                await asyncio.create_task(_log_in_task())
        logging.getLogger("oht.test").info("after")

    async def _log_in_task() -> None:
        logging.getLogger("oht.test").info("in the command")

    request, command, after = _json_lines(lambda _log: asyncio.run(handle()))
    assert request["request_id"] == "r-1" and "command_id" not in request
    assert command["request_id"] == "r-1" and command["command_id"] == "c-9"
    assert "request_id" not in after and "command_id" not in after
