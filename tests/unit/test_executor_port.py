"""The executor behind its port, with fakes: what a command's result says comes from the read-back,
and a command the state forbids never reaches the plant. (The pty-backed tests cover the rest.)"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from agent.control.executor import Executor, ExecutorPort, Outcome
from agent.control.states import State
from agent.store.commands import CommandRecord


def record(type_: str, params: dict[str, Any]) -> CommandRecord:
    return CommandRecord(
        seq=1,
        id="c1",
        source="api",
        idempotency_key="k",
        user="t",
        type=type_,
        params=params,
        priority=5,
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


@dataclass
class FakePlant:
    registers: dict[str, int]
    ignore: set[str] = field(default_factory=set)  # writes the fake module does not take
    writes: list[tuple[str, str, int]] = field(default_factory=list)

    async def write(self, role: str, name: str, value: int, *_args: Any, **_kw: Any) -> None:
        self.writes.append((role, name, value))
        if name not in self.ignore:
            self.registers[name] = value

    async def read(self, role: str, names: list[str]) -> dict[str, int]:
        return {n: self.registers.get(n, 0) for n in names}


class FakeCommands:
    async def mark_running(self, command_id: str) -> CommandRecord:
        return replace(record("charge_start", {}), state="running")


@dataclass
class FakeStateMachine:
    state: State


class FakeController:
    def __init__(self, state: State, plant: FakePlant) -> None:
        self.commands = FakeCommands()
        self.sm = FakeStateMachine(state)
        self.plant = plant
        self.finished: list[Outcome] = []

    async def finish_command(self, rec: CommandRecord, outcome: Outcome) -> None:
        self.finished.append(outcome)


def executor_for(fake: FakeController) -> Executor:
    port: ExecutorPort = fake  # type: ignore[assignment]  # the parts this test needs, no more
    return Executor(port)


async def test_a_result_comes_from_the_read_back_not_from_the_write() -> None:
    plant = FakePlant({"CHARGE_STATE": 0}, ignore={"CHARGE_REQUEST"})  # the module drops the request
    fake = FakeController(State.IDLE, plant)
    await executor_for(fake).execute(record("charge_start", {"current_a": 2.0, "voltage_v": 24.0}))
    (outcome,) = fake.finished
    assert outcome.state == "failed" and outcome.error_code == "READBACK_MISMATCH", outcome
    assert ("power", "CHARGE_REQUEST", 1) in plant.writes
    assert outcome.result["readback"]["CHARGE_REQUEST"] == 0


async def test_a_command_the_state_forbids_writes_nothing() -> None:
    plant = FakePlant({})
    fake = FakeController(State.ESTOP, plant)
    await executor_for(fake).execute(record("charge_start", {"current_a": 2.0, "voltage_v": 24.0}))
    (outcome,) = fake.finished
    assert outcome.state == "failed" and outcome.error_code, outcome
    assert plant.writes == []
