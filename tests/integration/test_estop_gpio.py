"""The GPIO E-stop input through the supervisor: fail safe when unreadable, latch, reset rules."""

from __future__ import annotations

import asyncio
import time

from drivers.sim.client import SimProcess
from tests.conftest import wait_for

GPIO = '[estop_gpio]\nenabled = true\nchip = "/dev/no-such-gpiochip"\nlines = [48, 49]\ndiscrepancy_ms = 50\n'


async def test_unreadable_input_holds_the_estop(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link, extra=GPIO, wait_state=None)
    assert await wait_for(lambda: rt.controller.sm.state.value == "ESTOP", 10.0)
    assert rt.gpio is None and rt.controller.supervisor.verdict.estop_input
    result = await rt.controller.reset(user="tech")
    assert "ESTOP_PRESSED" in result.remaining


async def reset_once_fresh(rt):  # type: ignore[no-untyped-def]
    """A reset after the safety module's readings are fresh again.

    The stop just before it can delay one safety poll past its freshness limit (the agent shares
    this process and the machine's two cores with the test); a reset then, rightly, refuses with
    SAFETY_DATA_STALE. What is tested here is the E-stop input, so the reset waits for fresh data.
    """
    assert await wait_for(lambda: rt.controller.fresh("safety", time.monotonic()), 2.0)
    return await rt.controller.reset(user="tech")


async def test_input_edges_drive_estop_discrepancy_and_reset(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link, extra=GPIO, wait_state=None)
    assert await wait_for(lambda: rt.controller.sm.state.value == "ESTOP", 10.0)
    assert await wait_for(lambda: "safety" in rt.pollers and rt.controller.fresh("safety", time.monotonic()), 10.0)
    rt._on_gpio((False, False), time.monotonic())  # what the line request's edge callback delivers
    await asyncio.sleep(0.2)
    result = await reset_once_fresh(rt)
    assert result.remaining == {} and result.state == "IDLE", result
    # One channel opens: pressed at once.
    rt._on_gpio((True, False), time.monotonic())
    assert await wait_for(lambda: rt.controller.sm.state.value == "ESTOP", 1.0)
    assert rt.controller.stop_path.last.confirmed
    await asyncio.sleep(0.1)  # the channels keep disagreeing past the window
    rt.controller.supervisor.evaluate()
    assert rt.controller.supervisor.verdict.has("ESTOP_INPUT_DISCREPANCY")
    result = await rt.controller.reset(user="tech")
    assert "ESTOP_PRESSED" in result.remaining
    rt._on_gpio((False, False), time.monotonic())
    await asyncio.sleep(0.2)
    result = await reset_once_fresh(rt)
    assert result.remaining == {} and result.state == "IDLE", result


def test_gpiod_glue_builds_real_line_settings() -> None:
    """The bindings the agent relies on exist with the names used (no chip is opened)."""
    import datetime as dt

    import gpiod
    from gpiod.line import Bias, Direction, Edge

    settings = gpiod.LineSettings(
        direction=Direction.INPUT,
        edge_detection=Edge.BOTH,
        bias=Bias.PULL_UP,
        active_low=True,
        debounce_period=dt.timedelta(milliseconds=10),
    )
    assert settings.active_low and settings.edge_detection == Edge.BOTH
