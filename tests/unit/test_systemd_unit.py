"""The systemd unit: valid offline, notify + watchdog, and sandboxed (systemd-analyze security)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "oht-agent.service"
analyze = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(analyze is None, reason="systemd-analyze is not installed (.ci/run installs it)")


def unit_with_real_binary(tmp_path: Path) -> Path:
    """systemd-analyze verify wants ExecStart's binary to exist: point it at a real one."""
    text = UNIT.read_text().replace("/opt/oht-agent/.venv/bin/oht-agent", "/bin/true")
    out = tmp_path / "oht-agent.service"
    out.write_text(text)
    return out


def test_unit_declares_notify_watchdog_and_restart() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=always", "ProtectSystem=strict", "NoNewPrivileges=yes",
                 "StateDirectory=oht-agent", "SupplementaryGroups=dialout"):
        assert line in text


@needs_analyze
def test_unit_verifies_offline(tmp_path: Path) -> None:
    result = subprocess.run([analyze, "verify", str(unit_with_real_binary(tmp_path))], capture_output=True, text=True)
    problems = [l for l in (result.stdout + result.stderr).splitlines() if "oht-agent.service" in l]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


@needs_analyze
def test_unit_sandboxing_score(tmp_path: Path) -> None:
    """Exposure at most 2.5 of 10 (the threshold is on a 0-100 scale)."""
    result = subprocess.run([analyze, "security", "--offline=true", "--threshold=25", str(unit_with_real_binary(tmp_path))],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
