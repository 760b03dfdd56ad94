"""Trips at random moments around move starts and speed changes: a confirmed stop stays a stop.

The agent runs as in production (bus, controller, store and HTTP API on one loop, in its own
thread here) against the simulator process. Trips: an E-stop through the HTTP API, the E-stop
button on the simulated safety module, the safety module falling silent, and (in its own test,
one agent per trial) the agent's shutdown. Moments: either blind (a random delay after the move
is submitted or the speed change is caused) or aligned on the wire (the instant the simulator
records the direction frame, when the enable/speed frame is queued behind it). Every verdict
comes from the simulator's record of received frames and its registers (see stop_trials.py).

`make test` runs a short series (at least 50 trials in all); `-m slow` runs 1,000 more.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.sim.client import SimProcess
from tests.conftest import agent_config, wait_for
from tests.integration.stop_trials import TRAVEL, TrialResult, judge, random_delay_ms, sleep_ms
from tests.integration.test_api_harness import Agent, start_agent

# Asserts the carriage's timing (poll ticks, link budgets, stop latency): `make test` runs it alone.
pytestmark = pytest.mark.realtime

KINDS = ("api", "button", "link")
BATTERY_SOC = 0x0002  # power module, 0.1 %
SAFETY = 5
_keys = itertools.count()


class Trials:
    """One agent and simulator, an operator and a technician session, and the trial steps."""

    def __init__(self, agent: Agent, sim: SimProcess) -> None:
        self.agent, self.sim, self.control = agent, sim, sim.control
        agent.add_user("olga", "operator")
        agent.add_user("theo", "technician")
        self.operator = agent.client(agent.login("olga"))
        self.technician = agent.client(agent.login("theo"))

    def close(self) -> None:
        self.operator.close()
        self.technician.close()

    # ------------------------------------------------------------------ helpers
    def state(self) -> str:
        rt = self.agent.runtime
        assert rt is not None and rt.controller is not None
        return rt.controller.sm.state.value

    def confirmed_after(self, t: float, timeout: float = 3.0) -> float | None:
        """When the first stop requested at or after `t` was confirmed (None if none within `timeout`)."""
        rt = self.agent.runtime
        assert rt is not None and rt.controller is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for outcome in list(rt.controller.stop_path.history):
                if outcome.requested_at >= t and outcome.confirmed and outcome.confirmed_at is not None:
                    return outcome.confirmed_at
            time.sleep(0.005)
        return None

    def submit_move(self, direction: str) -> None:
        body = {"type": "move", "params": {"direction": direction, "speed_pct": 40, "duration_ms": 1500}}
        r = self.operator.post("/api/v1/commands", json=body, headers={"Idempotency-Key": f"trial-{next(_keys)}"})
        assert r.status_code == 201, r.text

    def wait_direction_frame(self, since: float, timeout: float = 2.0) -> bool:
        """Poll the simulator's record until the executor's direction frame has reached the driver."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(w["address"] in (0x04, 0x14) and any(w["values"]) for w in self.control.writes(TRAVEL, since=since)):
                return True
            time.sleep(0.0005)
        return False

    def trip(self, kind: str) -> float:
        """Fire the trip; returns the moment it was fired."""
        t = time.monotonic()
        if kind == "api":
            r = self.operator.post("/api/v1/estop", json={"reason": "trial"})
            assert r.status_code in (200, 503), r.text
        elif kind == "button":
            self.control.estop(True)
        elif kind == "link":
            self.control.silence(SAFETY, True)
        else:
            raise ValueError(kind)
        return t

    def release(self, kind: str) -> None:
        if kind == "button":
            self.control.estop(False)
        elif kind == "link":
            self.control.silence(SAFETY, False)

    def recover(self) -> None:
        """Back to IDLE and ready, through the technician's reset, before the next trial."""
        self.control.set(2, BATTERY_SOC, 800)
        deadline = time.monotonic() + 20
        while True:
            if self.state() in ("ESTOP", "FAULT", "SAFE"):
                self.technician.post("/api/v1/reset")
            if self.state() == "IDLE" and self.technician.get("/readyz").status_code == 200:
                return
            assert time.monotonic() < deadline, self.technician.get("/api/v1/status").text
            time.sleep(0.1)

    # ------------------------------------------------------------------ one trial
    def run(self, rng: random.Random, number: int) -> TrialResult:
        kind = KINDS[number % len(KINDS)]
        aligned = rng.random() < 0.5
        speed_change = rng.random() < 0.3
        direction = "forward" if number % 2 == 0 else "reverse"
        start = time.monotonic()
        self.submit_move(direction)
        if speed_change:
            # Let the move run, then cause a speed change (BATTERY_LOW: the warning slow-down).
            assert self.wait_direction_frame(start)
            sleep_ms(150)
            start = time.monotonic()
            self.control.set(2, BATTERY_SOC, 150)
        slow_driver = aligned and rng.random() < 0.6
        if slow_driver:
            # A driver that answers 15 ms later than usual: the enable/speed frame waits behind the
            # direction frame's reply for longer, and the trip lands while it is queued.
            self.control.delay(TRAVEL, 15)
        if aligned:
            self.wait_direction_frame(start, timeout=2.5)
            delay = rng.uniform(0, 5)
        else:
            delay = random_delay_ms(rng, 1200 if speed_change else 60)
        sleep_ms(delay)
        fired = self.trip(kind)
        confirmed = self.confirmed_after(fired)
        if slow_driver:
            self.control.delay(TRAVEL, 0)
        result = judge(
            f"{kind}{' speed-change' if speed_change else ''}{' aligned' if aligned else ''}"
            f"{' slow-driver' if slow_driver else ''}",
            delay,
            self.control,
            confirmed,
        )
        self.release(kind)
        self.recover()
        return result


@pytest.fixture(scope="module")
def trials(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trials]:
    for agent, sim in start_agent(tmp_path_factory.mktemp("trials")):
        t = Trials(agent, sim)
        try:
            yield t
        finally:
            t.close()


def run_series(trials: Trials, count: int, seed: int) -> None:
    rng = random.Random(seed)
    failures = [r for r in (trials.run(rng, n) for n in range(count)) if not r.ok]
    assert not failures, f"{len(failures)} of {count} trials failed:\n" + "\n".join(f.describe() for f in failures)


@pytest.mark.timeout(300)
def test_no_energising_frame_after_a_confirmed_stop(trials: Trials) -> None:
    run_series(trials, 45, seed=10)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_no_energising_frame_after_a_confirmed_stop_long(trials: Trials) -> None:
    run_series(trials, 1000, seed=11)


# ---------------------------------------------------------------------- shutdown as the trip
async def _shutdown_trial(tmp_path: Path, sim: SimProcess, rng: random.Random, number: int) -> TrialResult:
    from agent.runtime import Runtime

    (tmp_path / f"run{number}").mkdir()
    rt = Runtime(agent_config(tmp_path / f"run{number}", sim.link), health_log_s=3600)
    try:
        await rt.start()
        assert await wait_for(lambda: rt.controller is not None and rt.controller.sm.state.value == "IDLE", 15.0)
        assert rt.controller is not None
        start = time.monotonic()
        await rt.controller.submit_command(
            source="cli",
            idempotency_key=f"shutdown-{number}",
            type="move",
            params={"direction": "forward", "speed_pct": 40, "duration_ms": 1500},
            user="t",
        )
        if rng.random() < 0.5:
            await wait_for(
                lambda: any(w["address"] == 0x04 for w in sim.control.writes(TRAVEL, since=start)), 2.0, 0.0005
            )
            delay = rng.uniform(0, 10)
        else:
            delay = random_delay_ms(rng, 60)
        await asyncio.sleep(delay / 1000)
    except BaseException:
        await rt.shutdown()
        raise
    outcome = await rt.shutdown()
    confirmed = outcome.confirmed_at if outcome is not None and outcome.confirmed else None
    return await asyncio.to_thread(judge, "shutdown", delay, sim.control, confirmed)


@pytest.mark.timeout(180)
async def test_shutdown_leaves_the_driver_off(sim: SimProcess, tmp_path: Path) -> None:
    rng = random.Random(12)
    results = [await _shutdown_trial(tmp_path, sim, rng, n) for n in range(6)]
    failures = [r for r in results if not r.ok]
    assert not failures, "\n".join(f.describe() for f in failures)
