"""Tests cannot hang: a test past its limit fails, and one that hangs again in teardown ends the run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

HANGS_TWICE = """
import time
import pytest

@pytest.fixture
def wedged_teardown():
    yield
    time.sleep(600)  # the teardown blocks again after the test was failed

def test_blocks_in_call_and_in_teardown(wedged_teardown):
    time.sleep(600)
"""

BLOCKS_ONCE = """
import time

def test_blocks_once():
    time.sleep(600)

def test_after_it():
    assert True
"""


def run_pytest(tmp_path: Path, source: str) -> tuple[subprocess.CompletedProcess[str], float]:
    (tmp_path / "test_probe.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HANG_GUARD_GRACE_S": "2"}
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.hang_guard",
            "-p",
            "no:cacheprovider",
            "-o",
            "timeout=1",
            "-o",
            "timeout_method=signal",
            str(tmp_path / "test_probe.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc, time.monotonic() - started


def test_a_blocked_test_fails_at_its_limit_and_the_session_goes_on(tmp_path: Path) -> None:
    proc, elapsed = run_pytest(tmp_path, BLOCKS_ONCE)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout
    assert "Timeout" in proc.stdout
    assert elapsed < 30


def test_a_teardown_that_hangs_again_ends_the_run_with_every_stack(tmp_path: Path) -> None:
    proc, elapsed = run_pytest(tmp_path, HANGS_TWICE)
    assert proc.returncode != 0
    assert elapsed < 30, "the hang guard did not end the run"
    assert "Timeout (0:00:0" in proc.stderr, proc.stderr  # faulthandler's dump, on the real stderr
    assert "wedged_teardown" in proc.stderr  # the stack shows where it hung
