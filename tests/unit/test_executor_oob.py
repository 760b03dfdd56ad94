"""The executor's wait for out-of-band commands keeps one entry, not one per command ever stored."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from agent.control.executor import Executor
from agent.control.states import State


class HeadOfQueue:
    """The command store as the executor sees it: each stop is at the head for a few polls, then
    gone because the controller ran it itself (the usual case)."""

    def __init__(self, stops: int, polls_each: int = 3) -> None:
        self.heads = [SimpleNamespace(id=f"stop-{n}", type="stop") for n in range(stops) for _ in range(polls_each)]

    async def expire_due(self) -> None:
        return None

    async def next_runnable(self) -> Any:
        return self.heads.pop(0) if self.heads else None


@pytest.mark.timeout(30)
async def test_out_of_band_commands_run_by_the_controller_leave_nothing_behind() -> None:
    store = HeadOfQueue(stops=100)
    ran: list[str] = []

    async def run_out_of_band(record: Any) -> None:
        ran.append(record.id)

    controller = SimpleNamespace(commands=store, sm=SimpleNamespace(state=State.IDLE))
    executor = Executor(controller)  # type: ignore[arg-type]
    executor.run_out_of_band = run_out_of_band  # type: ignore[method-assign]  # the fallback, recorded
    task = asyncio.create_task(executor.run())
    largest = 0
    while store.heads:
        largest = max(largest, len(executor._oob_seen))
        await asyncio.sleep(0.001)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not ran, "the executor ran a command the controller had already run"
    assert largest <= 1 and len(executor._oob_seen) <= 1, f"{largest} entries kept"


@pytest.mark.timeout(30)
async def test_a_cancel_that_meets_a_wake_still_ends_the_idle_executor() -> None:
    """Shutdown cancels the executor; a command stored at that same moment sets its wake event.
    Python 3.11's asyncio.wait_for lets the inner wait's result win over the cancellation, and
    the loop then ran on: the runtime's shutdown waited for a task that never ended."""
    store = HeadOfQueue(stops=0)
    controller = SimpleNamespace(commands=store, sm=SimpleNamespace(state=State.IDLE))
    executor = Executor(controller)  # type: ignore[arg-type]
    task = asyncio.create_task(executor.run())
    for _ in range(20):  # let it reach its idle wait
        await asyncio.sleep(0)
    executor.wake()
    task.cancel()  # in the same turn of the loop as the wake
    done, _ = await asyncio.wait({task}, timeout=2.0)
    if not done:
        task.cancel()
    assert done and task.cancelled(), "the executor swallowed its cancellation and kept running"
