"""Test helper process: the real agent, commanded to move, until it is killed.

Usage: python moving_agent.py CONFIG. Prints MOVING once the travel driver reports speed.
"""

from __future__ import annotations

import asyncio
import sys

from agent.config import load_config
from agent.runtime import Runtime


async def main(path: str) -> None:
    rt = Runtime(load_config(path), health_log_s=3600)
    await rt.start()
    while rt.controller.sm.state.value != "IDLE":
        await asyncio.sleep(0.02)
    await rt.controller.submit_command(source="cli", idempotency_key="kill-test", type="move",
                                       params={"direction": "forward", "speed_pct": 30, "duration_ms": 30000}, user="test")
    while (rt.controller.plant.value("travel", "M1_ACTUAL_SPEED") or 0) <= 0:
        await asyncio.sleep(0.02)
    print("MOVING", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
