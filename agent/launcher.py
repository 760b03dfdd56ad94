"""`oht-agent run`: the core and the gateway as two child processes, supervised (development, `make demo`).

On a carriage the two run as their own systemd units (`oht-agent core`, `oht-agent gateway`);
this is the same pair for a terminal. The core starts first. The gateway follows once the core
has told this launcher READY=1 (through a private sd_notify socket), or after
`GATEWAY_WAIT_S` if it has not (no travel driver answering yet, say), so the gateway's imports
do not compete with the core's start-up stop. A child that dies is started again: the gateway
after `RESTART_GATEWAY_S`, the core after `RESTART_CORE_S` (its start stops the driver first);
one that fails within `FIRST_START_S` of its first start (a bad configuration) ends the launcher
with its exit code instead.
The gateway runs at nice `GATEWAY_NICE`; the core asks for SCHED_FIFO `CORE_FIFO_PRIORITY`, as
its unit gives it, and stays at the ordinary policy where that is not allowed. SIGTERM or Ctrl-C
stops the gateway, then the core (which stops and confirms motion), each with a bounded wait.
Both children die with this process (PR_SET_PDEATHSIG), so a launcher killed with SIGKILL leaves
no half of the agent running. The children are forked from this launcher, not started as new
interpreters, so a restarted core reaches its start-up stop sooner; they are named `oht-core`
and `oht-gateway` (what ps and top show).

Only the standard library is imported here: the core's start-up stop must not wait for it.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence

__all__ = ["main"]

GATEWAY_WAIT_S = 5.0
RESTART_GATEWAY_S = 0.2
RESTART_CORE_S = 1.0
STOP_GATEWAY_S = 10.0
STOP_CORE_S = 20.0
FIRST_START_S = 3.0  # a child that fails this soon after the launcher's first start is not restarted
# The gateway yields the CPU to the core, as the units arrange with the core's real-time
# priority: a burst of password hashing must not slow a stop (no privilege is needed to be nicer).
GATEWAY_NICE = 10
# The core asks for the policy its unit gives it (systemd/oht-agent-core.service); where it may not
# (an ordinary user), it stays at the ordinary policy and says so.
CORE_FIFO_PRIORITY = 10
_PR_SET_NAME = 15
_PR_SET_PDEATHSIG = 1


def _prctl(option: int, arg: int | bytes) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(option, ctypes.c_char_p(arg) if isinstance(arg, bytes) else ctypes.c_ulong(arg), 0, 0, 0)


def _say(text: str) -> None:
    print(f"oht-agent run: {text}", file=sys.stderr, flush=True)


def _take_core_priority() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(CORE_FIFO_PRIORITY))
    except OSError as exc:
        print(f"launcher: the core stays at the ordinary priority (SCHED_FIFO refused: {exc})", file=sys.stderr)


class _Child:
    """One half, forked from this launcher (no new interpreter to start: the core's start-up stop
    comes sooner) and run through the same command line as its systemd unit runs it."""

    def __init__(self, role: str, config: str | None, env: dict[str, str], inherited: list[socket.socket]) -> None:
        self.role = role
        self.args = [role] + (["--config", config] if config else [])
        self.env = env
        self.inherited = inherited  # the launcher's own sockets: closed in the child
        self.pid: int | None = None
        self.code: int | None = None
        self.restart_at: float | None = None
        self.started_at = 0.0
        self.starts = 0

    def start(self) -> None:
        pid = os.fork()
        if pid == 0:
            self._become_child()
        self.pid, self.code = pid, None
        self.started_at = time.monotonic()
        self.starts += 1
        self.restart_at = None

    def _become_child(self) -> None:
        code = 1
        try:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with the launcher, however it dies
            _prctl(_PR_SET_NAME, f"oht-{self.role}".encode())  # what ps and top show: oht-core, oht-gateway
            if self.role == "gateway":
                os.nice(GATEWAY_NICE)
            else:
                _take_core_priority()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            for sock in self.inherited:
                sock.close()
            os.environ.clear()
            os.environ.update(self.env)
            from agent.cli import main as cli_main

            code = cli_main(self.args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def exited(self) -> int | None:
        if self.pid is None:
            return None
        if self.code is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def _wait_exit(self, timeout: float) -> None:
        """Block until the child exits or `timeout` passes: a pidfd becomes readable at its exit,
        so the wait ends the moment it does (no polling)."""
        assert self.pid is not None
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return
        try:
            deadline = time.monotonic() + timeout
            while self.exited() is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                select.select([fd], [], [], left)
        finally:
            os.close(fd)

    def stop(self, timeout: float) -> None:
        if self.pid is None or self.exited() is not None:
            return
        os.kill(self.pid, signal.SIGTERM)
        self._wait_exit(timeout)
        if self.exited() is None:
            _say(f"{self.role} did not stop within {timeout:.0f} s: killed")
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.code = -signal.SIGKILL


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
    parser.add_argument(
        "--config", metavar="PATH", help="configuration file (default: $OHT_AGENT_CONFIG or config/agent.toml)"
    )
    args = parser.parse_args(list(argv))

    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    notify, notify_path = _notify_socket()
    base = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    core = _Child("core", args.config, {**base, "NOTIFY_SOCKET": notify_path}, [notify])
    gateway = _Child("gateway", args.config, base, [notify])
    failed = 0
    try:
        core.start()
        waiting_since = time.monotonic()
        while not stopping:
            now = time.monotonic()
            if _core_ready(notify) and gateway.pid is None:
                gateway.start()
            if gateway.pid is None and now - waiting_since > GATEWAY_WAIT_S:
                _say(f"the core has not reported ready within {GATEWAY_WAIT_S:.0f} s; starting the gateway anyway")
                gateway.start()
            for child, delay in ((core, RESTART_CORE_S), (gateway, RESTART_GATEWAY_S)):
                code = child.exited()
                if (
                    code is not None
                    and code > 0
                    and child.restart_at is None
                    and child.starts == 1
                    and now - child.started_at < FIRST_START_S
                ):
                    # It gave up by itself while coming up (a bad configuration, say): starting it
                    # again would fail again. One killed by a signal is started again below.
                    _say(f"{child.role} exited with {code} while starting; not started again")
                    stopping, failed = True, code
                    break
                if code is not None and child.restart_at is None:
                    _say(f"{child.role} exited with {code}; starting it again in {delay:.1f} s")
                    child.restart_at = now + delay
                if child.restart_at is not None and now >= child.restart_at:
                    child.start()
            # The launcher has no event loop: it waits here for the core's READY=1 (acted on the
            # moment it arrives) or 20 ms, whichever comes first, then looks at its children.
            select.select([notify], [], [], 0.02)
    finally:
        gateway.stop(STOP_GATEWAY_S)
        core.stop(STOP_CORE_S)
        notify.close()
        shutil.rmtree(os.path.dirname(notify_path), ignore_errors=True)
    return failed
