"""Safety benchmark: how fast a stop reaches the bus and is confirmed, with polling saturating the bus.

Runs alone: `.venv/bin/python bench/safety.py`; the last line printed is one JSON object.

The whole agent runs in this process against the firmware simulator with the firmware's own
timing (the safety module answers on its 100 ms service tick, the motor driver on its 10 ms tick),
and extra polls of the power and dock modules keep the line busy the whole time.

- estop_wire: E-stop request (the controller call behind POST /api/v1/estop) -> the simulator has
  received the first stop frame (both read the system-wide CLOCK_MONOTONIC).   target p99 <= 10 ms
- estop_confirm: request -> both channels read back at zero.                    target p99 <= 50 ms
- commloss_confirm: the safety module falls silent -> stop confirmed.           target p99 <= 300 ms
- press_wire: the E-stop input of the simulated safety module is pressed -> the simulator has
  received the first stop frame at the driver (the press is seen on the module's next 100 ms
  tick, so the physical limit is one tick plus one transaction).           target p99 <= 110 ms
- restart_stop: a new agent process (`python -m agent run`, the default scan list 2..7 with only
  2..5 present) is started while the driver runs -> the agent's start-up stop is confirmed (the
  time it logs, on the same clock).                                     target <= 300 ms (worst)
Baseline in the same run: the bare transaction time of the in-flight traffic (`transaction_ms`).
Also printed: how many of the safety module's phase-locked polls were answered a tick late
(`safety_missed_ticks` of `safety_polls`). With polls alone there are none (10 s saturated: 0 of
99); here they come from the stops and resets between samples, whose frames go before a poll.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import validate_config
from agent.runtime import Runtime
from drivers.modbus.frames import read_request
from drivers.modbus.schedule import PollPlan
from drivers.modbus.stats import percentile
from drivers.sim.client import SimProcess, terminate

TRAVEL, SAFETY, POWER, DOCK = 3, 5, 2, 4
ESTOP_SAMPLES = 60
COMMLOSS_SAMPLES = 25
PRESS_SAMPLES = 60
RESTART_SAMPLES = 8
REPO = Path(__file__).resolve().parent.parent
CONFIRMED = re.compile(rb"travel outputs confirmed safe .* \(monotonic ([0-9.]+)\)")


async def wait(pred, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(0.005)
    return pred()


async def back_to_idle(rt: Runtime, sim: SimProcess) -> None:
    for _ in range(40):
        result = await rt.controller.reset(user="bench")
        if not result.remaining and rt.controller.sm.state.value == "IDLE":
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"could not reset: {rt.controller.status()['verdict']}")


def stopped_since(rt: Runtime, t: float) -> bool:
    """A stop was requested after `t`: the output monitor caught the outputs the bench switched on
    (it stops outputs that are on with no motion commanded), so this sample measures nothing."""
    return any(o.requested_at > t for o in rt.controller.stop_path.history)


def saturate(rt: Runtime) -> list[float]:
    starts: list[float] = []
    now = time.monotonic()
    for i, (slave, start, count) in enumerate([(POWER, 0, 10), (DOCK, 0x30, 6), (POWER, 0x14, 10), (DOCK, 0x40, 1)]):
        rt.master.schedule.add(
            PollPlan(
                key=f"load{i}",
                request=read_request(slave, start, count),
                interval_s=0.002,
                phase_s=0.0005 * i,
                on_result=lambda regs, at: starts.append(at),
            ),
            now,
        )
    return starts


def restart_once(sim: SimProcess, tmp: Path, n: int) -> float:
    """Driver running, a new agent process started: seconds until it confirms its start-up stop."""
    sim.control.set(TRAVEL, 0x0004, 1)  # direction forward, speed 40 %, enabled: as a crashed agent left it
    sim.control.set(TRAVEL, 0x0002, 40)
    sim.control.set(TRAVEL, 0x0001, 1)
    cfg = tmp / f"restart{n}.toml"
    cfg.write_text(
        f'[agent]\nid = "bench"\ndata_dir = "{tmp}/restart-data"\n\n[bus]\nport = "{sim.link}"\n\n[api]\nport = 0\n'
    )
    log = tmp / f"restart{n}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(cfg)], stdout=out, stderr=subprocess.STDOUT, env=env
        )
        try:
            deadline = started + 20
            while time.monotonic() < deadline:
                found = CONFIRMED.search(log.read_bytes())
                if found:
                    return float(found.group(1)) - started
                if proc.poll() is not None:
                    break
                time.sleep(0.02)
            raise RuntimeError("the new agent did not confirm its start-up stop: " + log.read_text()[-2000:])
        finally:
            terminate(proc, 15)


async def main() -> dict[str, object]:
    logging.basicConfig(level=logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="oht-bench-safety-") as tmp:
        sim = SimProcess(Path(tmp) / "bus.tty", Path(tmp) / "bus.ctl", seed=11).start()
        try:
            cfg = validate_config(
                {"agent": {"id": "bench", "data_dir": f"{tmp}/data"}, "bus": {"port": sim.link, "scan": [2, 3, 4, 5]}}
            )
            rt = Runtime(cfg, health_log_s=3600)
            await rt.start()
            if not await wait(lambda: rt.controller.sm.state.value == "IDLE", 20):
                raise RuntimeError("agent did not reach IDLE")
            starts = saturate(rt)
            await asyncio.sleep(0.5)
            rng = random.Random(4)
            wire, confirm = [], []
            for i in range(ESTOP_SAMPLES):
                forced = time.monotonic()
                sim.control.set(TRAVEL, 0x0001, 1)  # outputs on, as while moving
                sim.control.set(TRAVEL, 0x0002, 40)
                await asyncio.sleep(rng.uniform(0.02, 0.06))
                if stopped_since(rt, forced):
                    await back_to_idle(rt, sim)  # the output monitor saw the forced outputs first: not a sample
                    continue
                t0 = time.monotonic()
                result = await rt.controller.estop(source="bench", user="bench", reason=str(i))
                if not result.confirmed:
                    raise RuntimeError(f"E-stop not confirmed: {result.fault}")
                frames = [
                    w for w in sim.control.writes(TRAVEL, since=t0) if w["address"] == 0x0001 and w["values"] == [0, 0]
                ]
                if not frames:  # it joined a stop already on its way (the monitor's): not a sample
                    await back_to_idle(rt, sim)
                    continue
                wire.append(frames[0]["t"] - t0)
                confirm.append(result.confirm_ms / 1000)
                await back_to_idle(rt, sim)
            press = []
            for _ in range(PRESS_SAMPLES):
                forced = time.monotonic()
                sim.control.set(TRAVEL, 0x0001, 1)
                sim.control.set(TRAVEL, 0x0002, 40)
                await asyncio.sleep(rng.uniform(0.05, 0.25))  # a different phase against the module's tick
                if stopped_since(rt, forced):
                    await back_to_idle(rt, sim)  # the output monitor saw the forced outputs first: not a sample
                    continue
                t0 = time.monotonic()
                sim.control.estop(True)

                def stop_seen(t0: float = t0) -> list[dict[str, Any]]:
                    return [
                        w
                        for w in sim.control.writes(TRAVEL, since=t0)
                        if w["address"] == 0x0001 and w["values"][0] == 0
                    ]

                if not await wait(lambda seen=stop_seen: bool(seen()), 3.0):
                    raise RuntimeError("no stop frame after the module's E-stop was pressed")
                press.append(stop_seen()[0]["t"] - t0)
                sim.control.estop(False)
                await asyncio.sleep(0.15)
                await back_to_idle(rt, sim)
            busy = (starts[-1] - starts[0]) / max(len(starts) - 1, 1)
            commloss = []
            for _ in range(COMMLOSS_SAMPLES):
                await asyncio.sleep(rng.uniform(0.05, 0.15))
                before = rt.controller.stop_path.last
                t0 = time.monotonic()
                sim.control.silence(SAFETY, True)
                ok = await wait(
                    lambda before=before, t0=t0: (
                        rt.controller.stop_path.last is not before
                        and rt.controller.stop_path.last.confirmed
                        and rt.controller.stop_path.last.requested_at > t0
                    ),
                    3.0,
                )
                if not ok:
                    raise RuntimeError("comm-loss stop not confirmed")
                commloss.append(rt.controller.stop_path.last.confirmed_at - t0)
                sim.control.silence(SAFETY, False)
                await wait(lambda: rt.master.is_online(SAFETY), 5.0)
                await asyncio.sleep(0.4)
                await back_to_idle(rt, sim)
            safety_link = rt.master.links[SAFETY].stats
            missed = (safety_link.missed_ticks, sum(p.runs for p in rt.master.schedule if p.slave == SAFETY))
            await rt.shutdown()
            restart = [restart_once(sim, Path(tmp), i) for i in range(RESTART_SAMPLES)]
        finally:
            sim.stop()
    ms = lambda xs, q: round(percentile(xs, q) * 1000, 2)  # noqa: E731
    out: dict[str, object] = {
        "bench": "safety",
        "transaction_ms": round(busy * 1000, 3),
        "estop_wire_p50_ms": ms(wire, 50),
        "estop_wire_p99_ms": ms(wire, 99),
        "estop_confirm_p50_ms": ms(confirm, 50),
        "estop_confirm_p99_ms": ms(confirm, 99),
        "commloss_confirm_p50_ms": ms(commloss, 50),
        "commloss_confirm_p99_ms": ms(commloss, 99),
        "press_wire_p50_ms": ms(press, 50),
        "press_wire_p99_ms": ms(press, 99),
        "restart_stop_ms": round(max(restart) * 1000, 1),
        "restart_stop_p50_ms": ms(restart, 50),
        # phase-locked safety polls answered a tick late (sent too late for theirs), of all its polls
        "safety_missed_ticks": missed[0],
        "safety_polls": missed[1],
        "samples": {"estop": len(wire), "commloss": len(commloss), "press": len(press), "restart": len(restart)},
    }
    out["targets"] = {
        "estop_wire_p99<=10ms": out["estop_wire_p99_ms"] <= 10,
        "estop_confirm_p99<=50ms": out["estop_confirm_p99_ms"] <= 50,
        "commloss_confirm_p99<=300ms": out["commloss_confirm_p99_ms"] <= 300,
        "press_wire_p99<=110ms": out["press_wire_p99_ms"] <= 110,
        "restart_stop<=300ms": out["restart_stop_ms"] <= 300,
    }
    out["targets_met"] = all(out["targets"].values())  # type: ignore[union-attr]
    return out


if __name__ == "__main__":
    result = asyncio.run(main())
    print(f"E-stop -> first stop frame  p50 {result['estop_wire_p50_ms']} ms  p99 {result['estop_wire_p99_ms']} ms")
    print(
        f"E-stop -> confirmed         p50 {result['estop_confirm_p50_ms']} ms  p99 {result['estop_confirm_p99_ms']} ms"
    )
    print(
        f"safety silent -> confirmed  p50 {result['commloss_confirm_p50_ms']} ms"
        f"  p99 {result['commloss_confirm_p99_ms']} ms"
    )
    print(f"module E-stop -> stop frame p50 {result['press_wire_p50_ms']} ms  p99 {result['press_wire_p99_ms']} ms")
    print(
        f"new agent process -> start-up stop confirmed: worst {result['restart_stop_ms']} ms,"
        f" p50 {result['restart_stop_p50_ms']} ms"
    )
    print(
        f"(in-flight transaction time under load: {result['transaction_ms']} ms; safety polls a tick late: "
        f"{result['safety_missed_ticks']} of {result['safety_polls']})"
    )
    print(json.dumps(result))
