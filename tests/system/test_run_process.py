"""`oht-agent run` as a real process against the simulator: discovers, polls, logs, stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drivers.sim.client import SimProcess

# Asserts the carriage's timing (poll ticks, link budgets, stop latency): `make test` runs it alone.
pytestmark = pytest.mark.realtime

REPO = Path(__file__).resolve().parents[2]


def write_config(tmp: Path, link: str, **modules: int) -> Path:
    mods = "".join(f"{k} = {v}\n" for k, v in modules.items())
    cfg = tmp / "agent.toml"
    cfg.write_text(
        f'[agent]\nid = "oht-test"\ndata_dir = "{tmp / "data"}"\n\n'
        f'[bus]\nport = "{link}"\nrediscover_s = 0.5\n\n'
        f"[modules]\n{mods}"
    )
    return cfg


def start_agent(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(cfg)], stdout=out, stderr=subprocess.STDOUT, env=env
        )


def wait_log(log: Path, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace") if log.exists() else ""
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged within {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def test_run_discovers_polls_and_stops_on_sigterm(tmp_path: Path, sim_factory) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory()
    cfg = write_config(tmp_path, sim.link)
    log = tmp_path / "agent.log"
    proc = start_agent(cfg, log)
    try:
        for role, addr in (("power", 2), ("travel", 3), ("dock", 4), ("safety", 5)):
            wait_log(log, f"bound {role} -> address {addr}", 10.0)
        time.sleep(0.5)
        before = sim.control.stats()["slaves"]["5"]["frames_received"]
        time.sleep(2.0)
        frames = sim.control.stats()["slaves"]["5"]["frames_received"] - before
        # SAFE-FW serves one frame per 100 ms tick: at most 20 in 2 s; the agent must use most ticks.
        assert frames >= 15, f"safety module polled only {frames} times in 2 s"
        # A link change is logged.
        sim.control.silence(2, True)
        wait_log(log, "module at address 2 set aside", 10.0)
        sim.control.silence(2, False)
        wait_log(log, "module at address 2 answers again", 10.0)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 3.0
        assert "stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_role_mismatch_is_reported_not_guessed(tmp_path: Path, sim_factory) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory()
    cfg = write_config(tmp_path, sim.link, travel=5, safety=3)  # swapped on purpose
    log = tmp_path / "agent.log"
    proc = start_agent(cfg, log)
    try:
        content = wait_log(log, "MODULE_ROLE_MISMATCH", 10.0)
        assert "configured as travel but holds a safety module" in content
        assert "bound travel" not in content and "bound safety" not in content
        wait_log(log, "bound power -> address 2", 5.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)


def test_unknown_module_is_reported(tmp_path: Path, sim_factory) -> None:  # type: ignore[no-untyped-def]
    # Serve a module type the agent has no profile for: a copy of the dock profile with another type.
    profiles = tmp_path / "sim-profiles"
    profiles.mkdir()
    for f in (REPO / "config" / "profiles").glob("*.toml"):
        (profiles / f.name).write_text(f.read_text())
    text = (profiles / "dock-readonly.toml").read_text()
    text = text.replace('name = "dock-readonly"', 'name = "mystery"').replace("module_type = 5", "module_type = 42")
    text = text.replace("default = 5\n", "default = 42\n", 1) if "MODULE_TYPE" not in text else text
    (profiles / "mystery.toml").write_text(_retype(text))
    (profiles / "dock-readonly.toml").unlink()
    sim = SimProcess(
        tmp_path / "m.tty",
        tmp_path / "m.ctl",
        profiles=profiles,
        slaves=["2:power-v2", "3:travel-drvfw", "4:mystery", "5:safety-safefw"],
    ).start()
    try:
        cfg = write_config(tmp_path, sim.link)
        log = tmp_path / "agent.log"
        proc = start_agent(cfg, log)
        try:
            content = wait_log(log, "MODULE_UNKNOWN", 10.0)
            assert "module type 42" in content
            wait_log(log, "bound safety -> address 5", 5.0)
            assert "bound dock" not in log.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=5)
    finally:
        sim.stop()


def _retype(text: str) -> str:
    """Set MODULE_TYPE's default to 42 in a profile text."""
    out, in_module_type = [], False
    for line in text.splitlines():
        if line.strip().startswith("name = ") and '"MODULE_TYPE"' in line:
            in_module_type = True
        elif line.strip().startswith("[[register]]"):
            in_module_type = False
        if in_module_type and line.strip().startswith("default ="):
            line = "default = 42"
        out.append(line)
    return "\n".join(out) + "\n"
