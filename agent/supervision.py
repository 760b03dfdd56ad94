"""One supervisor for every long-lived task of the daemon.

The watchdogs outside the process (systemd's, /dev/watchdog) only help if they stop being fed
when the agent is no longer whole. A task that ended (an exception, a cancellation, or a plain
return from a loop meant to run for ever) leaves an agent that still ticks but no longer
executes commands, records transitions, serves the API or writes the database. Each such task is
registered here with a done-callback; the first unexpected end is reported once to `on_death`
(the controller latches TASK_DIED and stops motion) and `healthy` is False from then on, for good:
a dead task is not restarted in place, the process is restarted by its watchdog.

During shutdown tasks end on purpose: `stopping()` is called first, and ends after it are not
deaths.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from typing import Any

log = logging.getLogger("oht.supervision")


def why_it_ended(task: asyncio.Task[Any]) -> str:
    """A short reason for a task's end, for the fault detail and the journal."""
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    if exc is None:
        return "returned (it should run until shutdown)"
    return f"raised {type(exc).__name__}: {exc}"


class TaskSupervisor:
    def __init__(self, on_death: Callable[[str, str], None]) -> None:
        self._on_death = on_death
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self.deaths: dict[str, str] = {}  # task name -> why it ended
        self._stopping = False

    def watch(self, task: asyncio.Task[Any] | None, name: str | None = None) -> None:
        """Supervise `task` under `name` (its own name by default). A task that is missing is a death:
        the component that should have started it did not."""
        label = name or (task.get_name() if task is not None else "unnamed")
        if task is None:
            self._died(label, "was not running when it was registered")
            return
        self._tasks[label] = task
        task.add_done_callback(lambda t: self._ended(label, t))  # runs soon even if already done

    def stopping(self) -> None:
        """Shutdown has begun: tasks that end from now on end on purpose."""
        self._stopping = True

    @property
    def is_stopping(self) -> bool:
        return self._stopping

    @property
    def healthy(self) -> bool:
        """Every supervised task still runs and none has died. Checked each tick before feeding
        the watchdogs; looks at the tasks themselves too, so it is False before the callback ran."""
        return not self.deaths and all(not t.done() for t in self._tasks.values())

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def ended(self) -> dict[str, str]:
        """Every task that died or is done (its done-callback may not have run yet) -> how it ended."""
        done = {name: why_it_ended(task) for name, task in self._tasks.items() if task.done()}
        return {**done, **self.deaths}

    def _ended(self, name: str, task: asyncio.Task[Any]) -> None:
        if self._stopping or name in self.deaths:
            return
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            log.error("task %s died", name, exc_info=exc)
        self._died(name, why_it_ended(task))

    def _died(self, name: str, why: str) -> None:
        self.deaths[name] = why
        log.critical("task %s %s: watchdogs are no longer fed; the agent will be restarted", name, why)
        try:
            self._on_death(name, why)
        except Exception:
            log.exception("reaction to the death of task %s failed", name)


def freeze_startup_heap() -> None:
    """Leave what start-up built (profiles, app, routes, models) out of every later collection.

    A full collection walks every tracked object and stops the event loop meanwhile (in the core:
    the control loop and the bus). Start-up objects live as long as the
    process, so scanning them again and again finds nothing and, on a large heap, costs a stall
    long enough to miss a safety poll. Objects made later are collected as usual. (No collection
    first: it would be the very stall this avoids, while the modules are already being polled.)
    """
    gc.freeze()
    log.debug("%d start-up objects left out of garbage collection", gc.get_freeze_count())


def stop_on_signals(request_stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT ask the running process to stop (each process's `run()` calls this)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, request_stop)
        except (NotImplementedError, RuntimeError):
            pass
