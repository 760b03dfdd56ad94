"""Out-of-band commands (stop, pause, resume) run as tasks of their own: the executor holds each
one until it ends, so the loop's weak reference is never the only one, and what a task raises
is logged instead of vanishing with it."""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from agent.control.executor import Executor, Outcome
from agent.control.states import State
from agent.store.commands import CommandRecord


def stop_record(command_id: str) -> CommandRecord:
    return CommandRecord(
        seq=1,
        id=command_id,
        source="api",
        idempotency_key=command_id,
        user="op",
        type="stop",
        params={},
        priority=10,
        not_after=None,
        state="queued",
        created_at="",
        updated_at="",
        started_at=None,
        finished_at=None,
        attempts=0,
        result=None,
        error_code=None,
        error_message=None,
    )


class Commands:
    async def mark_running(self, command_id: str) -> CommandRecord:
        return replace(stop_record(command_id), state="running")


@dataclass
class StateMachine:
    state: State = State.MOVE


@dataclass
class Controller:
    """The parts of the controller a stop uses; the stop on the bus waits for `bus_done`."""

    commands: Commands = field(default_factory=Commands)
    sm: StateMachine = field(default_factory=StateMachine)
    bus_done: asyncio.Event = field(default_factory=asyncio.Event)
    fail_with: Exception | None = None
    finished: list[tuple[str, Outcome]] = field(default_factory=list)

    async def stop_outputs(self, reason: str) -> dict[str, Any]:
        await self.bus_done.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return {"confirmed": True, "confirm_ms": 3.0}

    async def finish_command(self, record: CommandRecord, outcome: Outcome) -> None:
        self.finished.append((record.id, outcome))


def executor_for(controller: Controller) -> Executor:
    return Executor(controller)  # type: ignore[arg-type]  # the parts a stop needs, no more


@pytest.mark.timeout(10)
async def test_a_stop_in_flight_is_held_until_it_ends_and_its_result_is_stored() -> None:
    controller = Controller()
    executor = executor_for(controller)
    executor.start_out_of_band(stop_record("s1"))  # the caller keeps nothing, as submit_command does
    for _ in range(5):
        await asyncio.sleep(0)
    gc.collect()
    held = executor.out_of_band_tasks
    assert len(held) == 1, "the executor holds no reference to the stop it started"
    (task,) = held
    assert not task.done() and task.get_name() == "stop-s1"
    controller.bus_done.set()
    await asyncio.wait_for(asyncio.shield(task), 2.0)
    assert [(cid, o.state, o.result["confirmed"]) for cid, o in controller.finished] == [("s1", "succeeded", True)]
    await asyncio.sleep(0)  # the done-callback runs on the next turn
    assert executor.out_of_band_tasks == frozenset()


@pytest.mark.timeout(10)
async def test_what_an_out_of_band_task_raises_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    controller = Controller(fail_with=RuntimeError("serial port vanished"))
    controller.bus_done.set()
    executor = executor_for(controller)
    with caplog.at_level(logging.ERROR, logger="oht.executor"):
        task = executor.start_out_of_band(stop_record("s2"))
        await asyncio.wait({task}, timeout=2.0)
        await asyncio.sleep(0)
    assert task.done() and isinstance(task.exception(), RuntimeError)
    (line,) = [r for r in caplog.records if "stop-s2" in r.getMessage()]
    assert line.exc_info is not None and "serial port vanished" in str(line.exc_info[1])
    assert executor.out_of_band_tasks == frozenset()


@pytest.mark.timeout(10)
async def test_shutdown_ends_the_out_of_band_tasks_in_flight() -> None:
    controller = Controller()  # bus_done never set: the stop would wait for ever
    executor = executor_for(controller)
    task = executor.start_out_of_band(stop_record("s3"))
    await asyncio.sleep(0)
    await asyncio.wait_for(executor.cancel_out_of_band(), 2.0)
    assert task.cancelled()
    await asyncio.sleep(0)
    assert executor.out_of_band_tasks == frozenset()
