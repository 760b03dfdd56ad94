"""The demo's centre: a mosquitto of its own and the reference central consumer, on 127.0.0.1.

Why in the demo: a newcomer should see records leave the robot and arrive, signed and once each,
without setting up a site. Everything here is a separate process started from the demo's working
directory; nothing in the agent's packages imports the consumer (it runs as
`python -m central.consumer`). Without mosquitto installed the demo runs with sync off and says so.

The robot's device key is made here before the agent starts (the gateway loads the same file), so
the consumer can pin it from its first record; the centre's command key pair is made here too,
and its public half goes into `[upstream] central_public_key`.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.sync.identity import load_or_create

__all__ = ["DemoCentre", "mosquitto_binary", "start_centre"]

_START_TIMEOUT_S = 10.0


def mosquitto_binary() -> str | None:
    """mosquitto on PATH, or where Debian installs it (/usr/sbin is not on every PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {proc.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mosquitto did not listen on {port} within {_START_TIMEOUT_S:g} s; see {log}"
                ) from None
            try:
                proc.wait(0.05)
            except subprocess.TimeoutExpired:
                pass


@dataclass
class DemoCentre:
    broker_port: int
    ledger: Path
    central_public_key: str
    processes: list[subprocess.Popen[bytes]]

    def config_section(self) -> str:
        return (
            f'\n[upstream]\nbroker = "mqtt://127.0.0.1:{self.broker_port}"\n'
            f'central_public_key = "{self.central_public_key}"\n'
        )

    def stop(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.processes):
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def start_centre(workdir: Path, data: Path, agent_id: str) -> DemoCentre | None:
    """Broker and consumer for the demo, or None (and why, printed) when mosquitto is missing."""
    binary = mosquitto_binary()
    if binary is None:
        print("upstream:    off (mosquitto is not installed: `apt-get install mosquitto` to see records go up)")
        return None
    centre = workdir / "centre"
    centre.mkdir(exist_ok=True)
    port = _free_port()
    conf = centre / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false", "max_queued_messages 100000"]
    if os.geteuid() == 0:
        lines.append("user root")  # it would drop to the mosquitto user, who cannot write here
    conf.write_text("\n".join(lines) + "\n")
    log = centre / "mosquitto.log"
    processes: list[subprocess.Popen[bytes]] = []
    with log.open("ab") as out:
        broker = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=out, start_new_session=True)
    processes.append(broker)
    try:
        _wait_listening(port, broker, log)
        device, _ = load_or_create(data)
        keys = centre / "device-keys.toml"
        keys.write_text(f'"{agent_id}" = "{device.public.base64()}"\n')
        command_key = Ed25519PrivateKey.generate()
        (centre / "central-command.key").write_bytes(command_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ))  # fmt: skip
        public = command_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        ledger = centre / "central.db"
        with (centre / "consumer.log").open("ab") as out:
            consumer = subprocess.Popen(
                [sys.executable, "-m", "central.consumer", "--broker", f"127.0.0.1:{port}", "--db", str(ledger),
                 "--name", "demo", "--device-keys", str(keys)],
                stdout=subprocess.DEVNULL, stderr=out, start_new_session=True,
            )  # fmt: skip
        processes.append(consumer)
    except BaseException:
        for proc in processes:
            proc.kill()
            proc.wait(5)
        raise
    centre_info = DemoCentre(port, ledger, base64.b64encode(public).decode(), processes)
    print(f"upstream:    broker mqtt://127.0.0.1:{port}, central consumer pid {consumer.pid}, ledger {ledger}")
    print("  watch records arrive (stream, seq, kind), once each:")
    print(f"  .venv/bin/python -c \"import sqlite3; print(sqlite3.connect('{ledger}').execute("
          f"'SELECT stream, COUNT(*), MAX(seq) FROM records GROUP BY stream').fetchall())\"")  # fmt: skip
    return centre_info
