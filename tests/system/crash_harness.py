"""Crash loop: kill -9 the agent at random moments while a client streams commands through the API.

Every command is a `register_write` of a value unique to it, so the simulator's record of the
writes it received tells how often each command really ran. The client behaves like a real one:
a request whose answer it did not get is sent again, with the same Idempotency-Key, after the
agent is back. A command counts as acknowledged once the API answered 201 or 200 for it.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from drivers.sim.client import SimProcess

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "crash-loop-password-1"
POWER = 2
USE_V_THS = 0x004D


@dataclass
class CrashReport:
    cycles: int = 0
    acknowledged: dict[str, int] = field(default_factory=dict)  # command id -> value
    lost: list[str] = field(default_factory=list)
    executed_twice: list[int] = field(default_factory=list)
    foreign_writes: list[int] = field(default_factory=list)
    quick_check_failures: list[str] = field(default_factory=list)
    states: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.executed_twice or self.foreign_writes or self.quick_check_failures)

    def summary(self) -> dict[str, object]:
        return {
            "cycles": self.cycles,
            "acknowledged": len(self.acknowledged),
            "lost": len(self.lost),
            "executed_twice": len(self.executed_twice),
            "foreign_writes": len(self.foreign_writes),
            "quick_check_failures": len(self.quick_check_failures),
            "states": dict(self.states),
            "seconds": round(self.seconds, 1),
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
        )


def _wait_up(client: httpx.Client, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode} while starting")
        try:
            if client.get("/healthz", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("agent API did not come up")


def quick_check(db: Path) -> str:
    if not db.exists():
        return "ok"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA quick_check").fetchone()[0])
    finally:
        conn.close()


def run_crash_loop(
    workdir: Path, cycles: int, seed: int = 1, kill_window: tuple[float, float] = (0.05, 2.5)
) -> CrashReport:
    started = time.monotonic()
    rng = random.Random(seed)
    report = CrashReport()
    sim = SimProcess(workdir / "bus.tty", workdir / "bus.ctl", seed=seed).start()
    port = free_port()
    data = workdir / "data"
    config = workdir / "agent.toml"
    config.write_text(
        f'[agent]\nid = "oht-crash"\ndata_dir = "{data}"\n\n[bus]\nport = "{sim.link}"\nscan = [2, 3, 4, 5]\n\n'
        f'[api]\nhost = "127.0.0.1"\nport = {port}\n'
    )
    log = workdir / "agent.log"
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "agent",
                "user",
                "add",
                "crash",
                "--role",
                "technician",
                "--password-stdin",
                "--config",
                str(config),
            ],
            input=PASSWORD.encode(),
            check=True,
            env=_env(),
            capture_output=True,
        )
        next_value = 1
        pending: tuple[str, int] | None = None  # sent, answer not seen: resent with the same key
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=2.0) as client:
            for _ in range(cycles):
                proc = _agent(config, log)
                _wait_up(client, proc)
                token = client.post("/api/v1/auth/login", json={"username": "crash", "password": PASSWORD}).json()[
                    "token"
                ]
                headers = {"Authorization": f"Bearer {token}"}
                killer = threading.Timer(rng.uniform(*kill_window), lambda p=proc: p.send_signal(signal.SIGKILL))
                killer.start()
                try:
                    while proc.poll() is None:
                        if pending is None:
                            pending = (f"crash-{next_value}", next_value)
                            next_value += 1
                        key, value = pending
                        try:
                            resp = client.post(
                                "/api/v1/commands",
                                headers={**headers, "Idempotency-Key": key},
                                json={
                                    "type": "register_write",
                                    "params": {"role": "power", "register": "USE_V_THS", "value": value / 100},
                                },
                            )
                        except httpx.HTTPError:
                            break  # killed mid-request: resend this key next cycle
                        if resp.status_code in (200, 201):
                            report.acknowledged[resp.json()["id"]] = value
                            pending = None
                        elif resp.status_code == 401:
                            break
                        elif resp.status_code == 503 and resp.json().get("code") in ("CORE_BUSY", "CORE_UNAVAILABLE"):
                            time.sleep(0.01)  # not started: resent with the same key, as any client would
                        else:
                            raise RuntimeError(f"unexpected answer {resp.status_code}: {resp.text}")
                finally:
                    killer.cancel()
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=10)
                report.cycles += 1
                result = quick_check(data / "agent.db")
                if result != "ok":
                    report.quick_check_failures.append(result)
            # One last, clean run: let the queue drain, then stop with SIGTERM.
            proc = _agent(config, log)
            _wait_up(client, proc)
            token = client.post("/api/v1/auth/login", json={"username": "crash", "password": PASSWORD}).json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if not client.get("/api/v1/commands", params={"state": "queued", "limit": 10}, headers=headers).json():
                    if not client.get(
                        "/api/v1/commands", params={"state": "running", "limit": 10}, headers=headers
                    ).json():
                        break
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
        conn = sqlite3.connect(f"file:{data / 'agent.db'}?mode=ro", uri=True)
        try:
            stored = dict(conn.execute("SELECT id, state FROM commands").fetchall())
        finally:
            conn.close()
        report.lost = [cid for cid in report.acknowledged if cid not in stored]
        report.states = Counter(stored.values())
        writes = Counter(w["values"][0] for w in sim.control.writes(POWER) if w["address"] == USE_V_THS)
        report.executed_twice = sorted(v for v, n in writes.items() if n > 1)
        sent = set(range(1, next_value))
        report.foreign_writes = sorted(v for v in writes if v not in sent)
    finally:
        sim.stop()
    report.seconds = time.monotonic() - started
    return report
