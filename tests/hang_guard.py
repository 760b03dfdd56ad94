"""A backstop behind pytest-timeout: a test that is still running well past its limit ends the run.

pytest-timeout's `signal` method fails the test once, in the main thread, where the event loop
runs. That is the right first answer (the session goes on), but it fires only once per test: a
teardown that blocks again (an agent shutting down on a wedged socket) would still hang the run.
So every test also arms faulthandler: `GRACE_S` seconds after its limit it prints the stack of
every thread and exits the process. A hang therefore costs minutes and leaves a stack, never a
stalled CI job.
"""

from __future__ import annotations

import faulthandler
import os
import time
from collections.abc import Generator

import pytest

GRACE_S = float(os.environ.get("HANG_GUARD_GRACE_S", "60"))

_deadline: float | None = None  # monotonic time at which the running test ends the process
_stderr_fd = 2


def limit_of(item: pytest.Item) -> float | None:
    """The test's own time limit: its `timeout` mark, else the configured `timeout` (0 = none)."""
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        value = float(marker.args[0])
    elif marker is not None and "timeout" in marker.kwargs:
        value = float(marker.kwargs["timeout"])
    else:
        try:
            value = float(item.config.getoption("timeout", None) or item.config.getini("timeout") or 0)
        except (ValueError, TypeError):
            value = 0.0
    return value if value > 0 else None


def real_stderr_fd(config: pytest.Config) -> int:
    """The terminal's stderr: fd 2 is pytest's capture file while a test runs, and what is written
    there is lost when faulthandler ends the process, so use the copy pytest kept of the real one."""
    capman = config.pluginmanager.getplugin("capturemanager")
    capturing = getattr(capman, "_global_capturing", None)
    saved = getattr(getattr(capturing, "err", None), "targetfd_save", None)
    return saved if isinstance(saved, int) else 2


def _arm() -> None:
    if _deadline is not None:
        faulthandler.dump_traceback_later(max(1.0, _deadline - time.monotonic()), exit=True, file=_stderr_fd)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    global _deadline, _stderr_fd
    limit = limit_of(item)
    if limit is not None:
        _deadline, _stderr_fd = time.monotonic() + limit + GRACE_S, real_stderr_fd(item.config)
        _arm()
    try:
        yield
    finally:
        if _deadline is not None:
            _deadline = None
            faulthandler.cancel_dump_traceback_later()


def pytest_exception_interact(node: pytest.Item, call: pytest.CallInfo[object], report: pytest.TestReport) -> None:
    """pytest's own faulthandler plugin cancels the timer whenever a test fails (for pdb's sake);
    arm it again, or the teardown that follows a timeout could hang unguarded."""
    _arm()
