"""Acknowledged means committed, even through kill -9.

A child process submits commands from several concurrent tasks (so group commits are in
flight when it dies) and prints each id only after `submit` returned. The parent kills it with
SIGKILL at a random moment 20-300 ms after it is ready, then opens the database: every printed
id must be there, `quick_check` must pass, and the store must start on it again.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.store.database import DB_NAME

CHILD = Path(__file__).with_name("store_crash_child.py")
READY_TIMEOUT_S = 30.0


def _run_cycle(data_dir: Path, rng: random.Random) -> int:
    """One start-submit-kill cycle; returns the number of acknowledged ids checked."""
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(data_dir), str(rng.choice([1, 8, 50]))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        first = child.stdout.readline()  # blocks until READY (bounded by the kill below)
        if not first.startswith(b"READY"):
            child.kill()
            raise AssertionError(f"child did not start: {first!r} {child.stderr.read()!r}")  # type: ignore[union-attr]
        time.sleep(rng.uniform(0.020, 0.300))
        os.kill(child.pid, signal.SIGKILL)
        out, err = child.communicate(timeout=READY_TIMEOUT_S)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL, err.decode(errors="replace")
    lines = out.split(b"\n")
    acknowledged = [line.decode() for line in lines[:-1]]  # the last piece has no newline
    assert len(lines[-1]) == 0, "a half line: the child printed in more than one write"

    conn = sqlite3.connect(data_dir / DB_NAME)
    try:
        assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        present: set[str] = set()
        for start in range(0, len(acknowledged), 500):
            chunk = acknowledged[start : start + 500]
            marks = ",".join("?" * len(chunk))
            present.update(r[0] for r in conn.execute(f"SELECT id FROM commands WHERE id IN ({marks})", chunk))
        # Only submits happen here: every command has exactly its one 'command' outbox row.
        (commands,) = conn.execute("SELECT count(*) FROM commands").fetchone()
        (announced,) = conn.execute("SELECT count(*) FROM outbox WHERE kind = 'command'").fetchone()
    finally:
        conn.close()
    missing = [i for i in acknowledged if i not in present]
    assert not missing, f"{len(missing)} acknowledged commands lost, e.g. {missing[:3]}"
    assert commands == announced, "a command without its outbox row (or the reverse)"
    return len(acknowledged)


def _crash_loop(tmp_path: Path, cycles: int, seed: int) -> None:
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    total = 0
    for _ in range(cycles):
        total += _run_cycle(data_dir, rng)
    assert total > 0, "no command was ever acknowledged: the test proved nothing"
    # The store itself starts on what the kills left behind.
    import asyncio

    from agent.store.database import Database

    async def reopen() -> None:
        db = await Database.open(data_dir)
        try:
            assert db.healthy
            assert db.report is not None and db.report.corrupt_moved_to is None
        finally:
            await db.close()

    asyncio.run(reopen())


def test_acknowledged_commands_survive_kill_9(tmp_path: Path) -> None:
    _crash_loop(tmp_path, cycles=20, seed=20261125)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 300 cycles: fifteen times the 20-cycle run (about 6 s)
def test_acknowledged_commands_survive_kill_9_soak(tmp_path: Path) -> None:
    _crash_loop(tmp_path, cycles=300, seed=int(time.time()))
