"""Test helper process: the real agent, commanded to move, until it is killed.

Usage: python moving_agent.py CONFIG. Prints MOVING once the travel driver reports speed.
`start(config, log)` runs it from a test and returns once it moves.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from agent.config import load_config
from agent.runtime import Runtime


async def main(path: str) -> None:
    rt = Runtime(load_config(path), health_log_s=3600)
    await rt.start()
    while rt.controller.sm.state.value != "IDLE":
        await asyncio.sleep(0.02)
    await rt.controller.submit_command(
        source="cli",
        idempotency_key="kill-test",
        type="move",
        params={"direction": "forward", "speed_pct": 30, "duration_ms": 30000},
        user="test",
    )
    while (rt.controller.plant.value("travel", "M1_ACTUAL_SPEED") or 0) <= 0:
        await asyncio.sleep(0.02)
    print("MOVING", flush=True)
    await asyncio.Event().wait()


def start(config: Path, log: Path, timeout: float = 30.0) -> subprocess.Popen[bytes]:
    """This script as a process against `config`; returns once it reports the carriage moving."""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), str(config)],
        stdout=subprocess.PIPE,
        stderr=open(log, "wb"),
        env=env,
    )
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline and b"MOVING" not in line:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line and proc.poll() is not None:
            break
    if b"MOVING" not in line:
        proc.kill()
        proc.wait()
        raise AssertionError("the agent did not start moving: " + log.read_text()[-3000:])
    return proc


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
