"""`oht-agent run`: the core and the gateway as two child processes, supervised (development, `make demo`).

On a carriage the two run as their own systemd units (`oht-agent core`, `oht-agent gateway`);
this is the same pair for a terminal. The core starts first. The gateway follows once the core
has told this launcher READY=1 (through a private sd_notify socket), or after
`GATEWAY_WAIT_S` if it has not (no travel driver answering yet, say), so the gateway's imports
do not compete with the core's start-up stop. A child that dies is started again: the gateway
after `RESTART_GATEWAY_S`, the core after `RESTART_CORE_S` (its start stops the driver first).
The gateway runs at nice `GATEWAY_NICE`. SIGTERM or Ctrl-C stops the gateway, then the core
(which stops and confirms motion), each with a bounded wait. Both children die with this process (PR_SET_PDEATHSIG), so a launcher
killed with SIGKILL leaves no half of the agent running.

Only the standard library is imported here: the core's start-up stop must not wait for it.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

__all__ = ["main"]

GATEWAY_WAIT_S = 5.0
RESTART_GATEWAY_S = 0.2
RESTART_CORE_S = 1.0
STOP_GATEWAY_S = 10.0
STOP_CORE_S = 20.0
# The gateway yields the CPU to the core, as the units arrange with the core's real-time
# priority: a burst of password hashing must not slow a stop (no privilege is needed to be nicer).
GATEWAY_NICE = 10
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the launcher dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _gateway_child() -> None:
    _die_with_parent()
    os.nice(GATEWAY_NICE)


def _say(text: str) -> None:
    print(f"oht-agent run: {text}", file=sys.stderr, flush=True)


class _Child:
    def __init__(self, role: str, config: str | None, env: dict[str, str]) -> None:
        self.role = role
        self.prepare = _gateway_child if role == "gateway" else _die_with_parent
        self.argv = [sys.executable, "-m", "agent", role] + (["--config", config] if config else [])
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.restart_at: float | None = None
        self.starts = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, preexec_fn=self.prepare)  # noqa: PLW1509
        self.starts += 1
        self.restart_at = None

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _say(f"{self.role} did not stop within {timeout:.0f} s: killed")
            proc.kill()
            proc.wait(5)


def _notify_socket() -> tuple[socket.socket, str]:
    directory = tempfile.mkdtemp(prefix="oht-run-")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.bind(path)
    sock.setblocking(False)
    return sock, path


def _core_ready(sock: socket.socket) -> bool:
    ready = False
    while True:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return ready
        ready = ready or b"READY=1" in data.split(b"\n")


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="oht-agent run",
        description="Run the core (bus, safety, control; no network) and the gateway (local API) as two "
                    "supervised child processes until SIGTERM or Ctrl-C. On a carriage, use the systemd units "
                    "instead, which run `oht-agent core` and `oht-agent gateway`.",
    )
    parser.add_argument("--config", metavar="PATH", help="configuration file (default: $OHT_AGENT_CONFIG or config/agent.toml)")
    args = parser.parse_args(list(argv))

    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    notify, notify_path = _notify_socket()
    base = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    core = _Child("core", args.config, {**base, "NOTIFY_SOCKET": notify_path})
    gateway = _Child("gateway", args.config, base)
    try:
        core.start()
        waiting_since = time.monotonic()
        while not stopping:
            now = time.monotonic()
            if _core_ready(notify) and gateway.proc is None:
                gateway.start()
            if gateway.proc is None and now - waiting_since > GATEWAY_WAIT_S:
                _say(f"the core has not reported ready within {GATEWAY_WAIT_S:.0f} s; starting the gateway anyway")
                gateway.start()
            for child, delay in ((core, RESTART_CORE_S), (gateway, RESTART_GATEWAY_S)):
                code = child.exited()
                if code is not None and child.restart_at is None:
                    _say(f"{child.role} exited with {code}; starting it again in {delay:.1f} s")
                    child.restart_at = now + delay
                if child.restart_at is not None and now >= child.restart_at:
                    child.start()
            time.sleep(0.02)
    finally:
        gateway.stop(STOP_GATEWAY_S)
        core.stop(STOP_CORE_S)
        notify.close()
        shutil.rmtree(os.path.dirname(notify_path), ignore_errors=True)
    return 0
