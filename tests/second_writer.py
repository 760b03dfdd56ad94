"""A second process writing to the same database (attached, as the gateway does), started in step.

Both two-writer tests need the same choreography: start the child, wait until its database is
open, then let both sides write at the same moment so their transactions interleave.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


async def start_in_step(child_code: str, data_dir: Path, rows: int) -> asyncio.subprocess.Process:
    """Run `child_code` (argv: data_dir, rows; prints "ready", then waits for a line on stdin)
    and release it once it is ready; the caller starts writing right after."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", child_code, str(data_dir), str(rows), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert child.stdout is not None and child.stdin is not None
    assert (await asyncio.wait_for(child.stdout.readline(), 60)).strip() == b"ready"
    child.stdin.write(b"go\n")
    await child.stdin.drain()
    return child
