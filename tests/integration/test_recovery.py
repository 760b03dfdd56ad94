"""The line goes silent and returns, again and again: every module polls again within 2 s each time.

Measured from just before the simulator is told to answer again to the first reply the agent
decodes for each role (the reading times in the role's snapshot, on the same system-wide clock).
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from drivers.modbus.frames import read_request
from drivers.modbus.schedule import PollPlan
from drivers.sim.client import SimProcess
from tests.conftest import wait_for

# Asserts the carriage's timing (poll ticks, link budgets, stop latency): `make test` runs it alone.
pytestmark = pytest.mark.realtime

CYCLES = 4  # in make test; `-m slow` runs 30
SILENT_S = 3.0
CONTRACT_S = 2.0


def keep_the_bus_busy(rt) -> None:  # type: ignore[no-untyped-def]
    """Extra reads of the power and dock modules back to back: the bus never has an idle gap."""
    now = time.monotonic()
    for i, (slave, start, count) in enumerate([(2, 0, 10), (4, 0x30, 6)]):
        rt.master.schedule.add(
            PollPlan(key=f"load{i}", request=read_request(slave, start, count), interval_s=0.005, phase_s=0.001 * i),
            now,
        )


def last_reply(rt, role: str) -> float:  # type: ignore[no-untyped-def]
    readings = rt.pollers[role].snapshot.readings
    return max((r.at for r in readings.values()), default=float("-inf"))


async def test_every_module_polls_again_within_two_seconds_of_the_line_returning(
    sim: SimProcess, agent_factory
) -> None:  # type: ignore[no-untyped-def]
    await silence_and_return(sim, agent_factory, CYCLES, seed=5)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_every_module_polls_again_within_two_seconds_of_the_line_returning_long(
    sim: SimProcess, agent_factory
) -> None:  # type: ignore[no-untyped-def]
    await silence_and_return(sim, agent_factory, 30, seed=6)


async def silence_and_return(sim: SimProcess, agent_factory, cycles: int, seed: int) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    roles = sorted(rt.pollers)
    assert set(roles) == {"dock", "power", "safety", "travel"}
    keep_the_bus_busy(rt)
    rng = random.Random(seed)
    worst: dict[str, float] = dict.fromkeys(roles, 0.0)
    for cycle in range(cycles):
        await asyncio.sleep(rng.uniform(0.0, 0.25))  # a different phase against the ticks and probes each time
        sim.control.silence(None, True)
        await asyncio.sleep(SILENT_S)
        returned = time.monotonic()
        sim.control.silence(None, False)
        back = await wait_for(
            lambda returned=returned: all(last_reply(rt, r) > returned for r in roles), CONTRACT_S + 1.0, 0.005
        )
        late = {r: round(last_reply(rt, r) - returned, 3) for r in roles}
        assert back, f"cycle {cycle}: not every module answered again: {late}"
        for role in roles:
            worst[role] = max(worst[role], late[role])
        assert all(t <= CONTRACT_S for t in late.values()), f"cycle {cycle}: polling came back late: {late}"
    assert rt.master.task is not None and not rt.master.task.done()
    print("worst recovery per role (s):", worst)
