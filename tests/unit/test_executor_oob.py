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

    controller = SimpleNamespace(commands=store, sm=SimpleNamespace(state=State.IDLE), run_out_of_band=run_out_of_band)
    executor = Executor(controller)  # type: ignore[arg-type]
    task = asyncio.create_task(executor.run())
    largest = 0
    while store.heads:
        largest = max(largest, len(executor._oob_seen))
        await asyncio.sleep(0.001)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not ran, "the executor ran a command the controller had already run"
    assert largest <= 1 and len(executor._oob_seen) <= 1, f"{largest} entries kept"
