"""`oht-agent run` as a real process serving the API: the first admin from the CLI, login,
status, E-stop, audit; TLS with the device certificate when not on loopback; clean SIGTERM."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from drivers.sim.client import SimProcess

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "first admin's long password"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp: Path, link: str, host: str, port: int) -> Path:
    cfg = tmp / "agent.toml"
    cfg.write_text(
        f'[agent]\nid = "oht-api-test"\ndata_dir = "{tmp / "data"}"\n\n'
        f'[bus]\nport = "{link}"\nrediscover_s = 0.5\n\n'
        f'[api]\nhost = "{host}"\nport = {port}\n'
    )
    return cfg


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], input=stdin, capture_output=True, text=True, env=ENV, timeout=60
    )


def wait_log(log: Path, pattern: str, timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text(errors="replace") if log.exists() else "")
        if match:
            return match
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not logged within {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def run_agent(tmp_path: Path) -> Iterator[Callable[[Path], tuple[subprocess.Popen[bytes], Path]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(cfg: Path) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / "agent.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(cfg)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=ENV,
            )
        procs.append(proc)
        return proc, log

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop(proc: subprocess.Popen[bytes]) -> None:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 8


def test_first_admin_from_the_cli_then_the_api(
    tmp_path: Path, sim_factory: Callable[..., SimProcess], run_agent
) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory()
    port = free_port()
    cfg = write_config(tmp_path, sim.link, "127.0.0.1", port)
    added = cli(
        "user", "add", "chief", "--role", "admin", "--password-stdin", "--config", str(cfg), stdin=PASSWORD + "\n"
    )
    assert added.returncode == 0, added.stderr
    proc, log = run_agent(cfg)
    wait_log(log, rf"API serving on http://127\.0\.0\.1:{port}", 20)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=10) as c:
        assert c.get("/api/v1/status").status_code == 401  # no default access of any kind
        bad = c.post("/api/v1/auth/login", json={"username": "admin", "password": "admin"})
        assert bad.status_code == 401
        r = c.post("/api/v1/auth/login", json={"username": "chief", "password": PASSWORD})
        assert r.status_code == 200, r.text
        c.headers["Authorization"] = f"Bearer {r.json()['token']}"
        assert r.json()["role"] == "admin"
        assert c.get("/api/v1/status").json()["agent_id"] == "oht-api-test"
        estop = c.post("/api/v1/estop", json={"reason": "system test"})
        assert estop.status_code == 200 and estop.json()["confirmed"], estop.text
        assert c.post("/api/v1/auth/logout").status_code == 200
        assert c.get("/api/v1/status").status_code == 401
    stop(proc)
    text = log.read_text()
    assert PASSWORD not in text and "Traceback" not in text
    verify = cli("audit", "verify", "--config", str(cfg))
    assert verify.returncode == 0, verify.stderr
    listed = cli("user", "list", "--config", str(cfg))
    assert listed.returncode == 0 and "chief" in listed.stdout and "admin" in listed.stdout


def test_off_loopback_the_api_speaks_tls_with_the_logged_certificate(
    tmp_path: Path, sim_factory: Callable[..., SimProcess], run_agent
) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory()
    port = free_port()
    cfg = write_config(tmp_path, sim.link, "0.0.0.0", port)
    proc, log = run_agent(cfg)
    match = wait_log(log, r"API serving on https://0\.0\.0\.0:\d+ \(TLS, certificate SHA-256 ([0-9A-F:]{95})\)", 20)
    logged = match.group(1)
    printed = cli("tls", "fingerprint", "--config", str(cfg))
    assert printed.returncode == 0 and logged in printed.stdout
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest()) == logged
    with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=False, timeout=10) as c:
        r = c.get("/healthz")
        assert r.status_code == 200 and r.headers["strict-transport-security"].startswith("max-age=")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as plain, pytest.raises(httpx.HTTPError):
        plain.get("/healthz")
    key = tmp_path / "data" / "tls" / "device.key"
    assert key.stat().st_mode & 0o077 == 0
    stop(proc)
