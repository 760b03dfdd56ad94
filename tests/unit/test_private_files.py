"""No file in the data directory is readable by other accounts, whatever umask the agent inherits.

What the review saw: started from a shell (umask 0022) the database was 0644; only the 0700
directory protected it. Run through the real command line in a process of its own (the umask is
per process).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PW = "correct horse battery"


def _run_cli(tmp_path: Path, umask: int, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nid = "oht-test"\ndata_dir = "{tmp_path / "data"}"\n\n[bus]\nport = "/dev/null"\n')
    code = f"import os, sys; os.umask({umask:#o}); from agent.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args, "--config", str(cfg)],
        input=stdin, capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip


def _modes(data: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir()}


def test_a_shell_umask_still_gives_owner_only_files(tmp_path: Path) -> None:
    done = _run_cli(tmp_path, 0o022, "user", "add", "ada", "--role", "admin", "--password-stdin", stdin=PW)
    assert done.returncode == 0, done.stderr
    modes = _modes(tmp_path / "data")
    assert {"agent.db", "audit.key", "agent.lock"} <= set(modes)
    assert all(mode & 0o077 == 0 for mode in modes.values()), {k: oct(v) for k, v in modes.items()}


def test_the_units_group_umask_shares_with_the_group_and_nobody_else(tmp_path: Path) -> None:
    """UMask=0007 in the units: the core and the gateway share the database through their group."""
    done = _run_cli(tmp_path, 0o007, "user", "add", "ada", "--role", "admin", "--password-stdin", stdin=PW)
    assert done.returncode == 0, done.stderr
    modes = _modes(tmp_path / "data")
    assert modes["agent.db"] & 0o060 == 0o060
    assert modes["audit.key"] == 0o640  # the gateway reads the key; only the core writes it
    assert all(mode & 0o007 == 0 for mode in modes.values()), {k: oct(v) for k, v in modes.items()}


@pytest.mark.parametrize("name", ["agent.db", "audit.key"])
def test_files_left_readable_by_an_earlier_release_are_tightened(tmp_path: Path, name: str) -> None:
    assert (
        _run_cli(tmp_path, 0o022, "user", "add", "ada", "--role", "admin", "--password-stdin", stdin=PW).returncode == 0
    )
    os.chmod(tmp_path / "data" / name, 0o644)
    done = _run_cli(tmp_path, 0o022, "user", "list")
    assert done.returncode == 0, done.stderr
    assert _modes(tmp_path / "data")[name] & 0o077 == 0
