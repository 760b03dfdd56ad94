"""The task supervisor: a task that ends before shutdown is a death, reported once, and for good."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.supervision import TaskSupervisor

ENDINGS = ("runs", "returns", "raises", "cancelled")


async def _body(ending: str, gate: asyncio.Event) -> None:
    await gate.wait()
    if ending == "returns":
        return
    if ending == "raises":
        raise RuntimeError("broken")
    await asyncio.sleep(3600)


async def _scenario(endings: list[str], stop_after: int) -> tuple[TaskSupervisor, list[str], list[bool], set[str]]:
    """Tasks end one after another; shutdown begins after the first `stop_after` of them."""
    reported: list[str] = []
    supervisor = TaskSupervisor(on_death=lambda name, why: reported.append(name))
    gates = [asyncio.Event() for _ in endings]
    tasks = [
        asyncio.create_task(_body(e, g), name=f"t{i}") for i, (e, g) in enumerate(zip(endings, gates, strict=True))
    ]
    for task in tasks:
        supervisor.watch(task)
    healthy_seen: list[bool] = []
    expected_dead: set[str] = set()
    for i, (ending, gate, task) in enumerate(zip(endings, gates, tasks, strict=True)):
        if i == stop_after:
            supervisor.stopping()
        if ending == "cancelled":
            task.cancel()
        gate.set()
        for _ in range(3):
            await asyncio.sleep(0)
        if ending != "runs" and i < stop_after:
            expected_dead.add(task.get_name())
        healthy_seen.append(supervisor.healthy)
    supervisor.stopping()  # the end of the scenario is a shutdown: the tasks still running end on purpose
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return supervisor, reported, healthy_seen, expected_dead


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(ENDINGS), min_size=1, max_size=6), st.integers(min_value=0, max_value=6))
def test_deaths_before_shutdown_are_reported_once_and_stay(endings: list[str], stop_after: int) -> None:
    supervisor, reported, healthy_seen, expected_dead = asyncio.run(_scenario(endings, stop_after))
    assert set(supervisor.deaths) == expected_dead
    assert sorted(reported) == sorted(expected_dead), "each death reported exactly once"
    first_death = next((i for i, e in enumerate(endings[:stop_after]) if e != "runs"), None)
    for i, healthy in enumerate(healthy_seen):
        if first_death is not None and i >= first_death:
            assert not healthy, "healthy again after a death"


def test_the_reason_says_how_it_ended() -> None:
    async def scenario() -> dict[str, str]:
        supervisor = TaskSupervisor(on_death=lambda name, why: None)

        async def returns() -> None:
            return

        async def raises() -> None:
            raise ValueError("bad value")

        for name, coro in (("ret", returns()), ("exc", raises())):
            supervisor.watch(asyncio.create_task(coro), name)
        supervisor.watch(None, "never-started")
        await asyncio.sleep(0.01)
        return supervisor.deaths

    deaths = asyncio.run(scenario())
    assert "returned" in deaths["ret"]
    assert "ValueError: bad value" in deaths["exc"]
    assert "not running" in deaths["never-started"]


def test_healthy_is_false_as_soon_as_a_task_is_done_before_its_callback_ran() -> None:
    async def scenario() -> bool:
        supervisor = TaskSupervisor(on_death=lambda name, why: None)
        task = asyncio.create_task(asyncio.sleep(3600))
        supervisor.watch(task, "sleeper")
        await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return supervisor.healthy  # done, and the callback may not have run yet

    assert asyncio.run(scenario()) is False
