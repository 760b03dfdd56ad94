"""Clients for the simulator: start it as a process, and drive its control socket.

- ``SimProcess``: runs ``python -m drivers.sim`` with the given arguments, waits for the READY line,
  stops it with SIGTERM (then SIGKILL). A context manager.
- ``SimControl``: synchronous control-socket client, one short connection per request, so it is
  safe to share between threads (e.g. ``asyncio.to_thread``).
- ``AsyncSimControl``: the same methods as coroutines on ``asyncio.open_unix_connection``.

Every method raises ``SimControlError`` when the simulator answers ``{"ok": false}`` or cannot be
reached. Timestamps in ``writes()`` are ``time.monotonic()`` of the simulator process; on Linux
that clock is system-wide, so a test compares them directly with its own ``time.monotonic()``.

Example::

    with SimProcess(tmp_path / "bus") as sim:
        sim.control.estop(True)
        # the agent under test opens sim.link with pyserial / pymodbus ...
        assert sim.control.read(5, 0x0004) == [1]
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parents[2]
# A started simulator asks for SCHED_FIFO 20: above the core's 10 (systemd/oht-agent-core.service),
# as the modules' own microcontrollers never wait for the carriage's computer.
SIM_REALTIME_PRIORITY = 20


class SimControlError(RuntimeError):
    """The simulator refused a control request, or could not be reached."""


def _registers(resp: dict[str, Any]) -> dict[int, int]:
    return {int(k): v for k, v in resp["registers"].items()}


class _Ops:
    """The convenience methods; ``_call`` makes them synchronous or coroutines."""

    def _call(self, op: str, fields: dict[str, Any], pick: Callable[[dict[str, Any]], Any] | None = None) -> Any:
        raise NotImplementedError

    def ping(self) -> Any:
        """``{"pid", "link", "pty", "line_up", "wire_baud", "slaves"}``."""
        return self._call("ping", {})

    def silence(self, addr: int | None, on: bool = True, *, execute: bool = False) -> Any:
        """Slave ``addr`` (None = all) receives but never answers; ``execute``: still runs writes."""
        return self._call("silence", {"addr": addr, "on": on, "execute": execute})

    def delay(self, addr: int | None, ms: float, rate: float = 1.0) -> Any:
        """Delay replies by ``ms`` extra with probability ``rate`` (ms 0 clears)."""
        return self._call("delay", {"addr": addr, "ms": ms, "rate": rate})

    def corrupt_crc(self, addr: int | None, rate: float) -> Any:
        return self._call("corrupt_crc", {"addr": addr, "rate": rate})

    def exception(self, addr: int | None, code: int, rate: float = 1.0) -> Any:
        """Answer with exception ``code`` instead of executing (code 0 clears)."""
        return self._call("exception", {"addr": addr, "code": code, "rate": rate})

    def wrong_address(self, addr: int | None, reply_as: int, rate: float = 1.0) -> Any:
        """Reply under slave id ``reply_as`` (valid CRC); rate 0 clears."""
        return self._call("wrong_address", {"addr": addr, "reply_as": reply_as, "rate": rate})

    def reboot(self, addr: int | None, boot_ms: float = 200) -> Any:
        """Registers back to profile defaults; deaf for ``boot_ms``."""
        return self._call("reboot", {"addr": addr, "boot_ms": boot_ms})

    def faults_clear(self) -> Any:
        return self._call("faults_clear", {})

    def freeze(self, addr: int, address: int, value: int | None) -> Any:
        """Every read of register ``address`` reports ``value`` (None thaws it): frozen feedback."""
        return self._call("freeze", {"addr": addr, "address": address, "value": value})

    def stuck_outputs(self, addr: int, on: bool = True) -> Any:
        """The driver's output stage no longer follows its registers: it runs on as it was."""
        return self._call("stuck_outputs", {"addr": addr, "on": on})

    def estop(self, pressed: bool, addr: int | None = None) -> Any:
        """The E-stop input wired into the safety module(s)."""
        return self._call("estop", {"pressed": pressed, "addr": addr})

    def obstacle(self, sensor: int, value: int, addr: int | None = None) -> Any:
        """ANALOG_INPUT_<sensor> raw distance on the safety module(s); the sensor must be enabled."""
        return self._call("obstacle", {"sensor": sensor, "value": value, "addr": addr})

    def set(self, addr: int, address: int, value: int) -> Any:
        """Force a raw register value, ignoring access rules (the firmware keeps running on it)."""
        return self._call("set", {"addr": addr, "address": address, "value": value})

    def set_di(self, addr: int | None, di: int, value: int) -> Any:
        return self._call("set_di", {"addr": addr, "di": di, "value": value})

    def line(self, up: bool) -> Any:
        """Take the line down (pty closed, symlink removed) or bring a new pty up at the same link."""
        return self._call("line", {"up": up})

    def wire(self, baud: int) -> Any:
        """Wire-time emulation at ``baud`` (0 = off)."""
        return self._call("wire", {"baud": baud})

    def service_period(self, addr: int | None, ms: float) -> Any:
        return self._call("service_period", {"addr": addr, "ms": ms})

    def registers(self, addr: int) -> Any:
        """Ground truth: ``{address: raw}`` of every mapped register."""
        return self._call("registers", {"addr": addr}, _registers)

    def read(self, addr: int, address: int, count: int = 1) -> Any:
        """Ground truth: raw values of ``count`` registers from ``address``."""
        return self._call("read", {"addr": addr, "address": address, "count": count}, lambda r: r["values"])

    def writes(self, addr: int | None = None, since: float = 0.0) -> Any:
        """Write frames received after monotonic time ``since``: dicts with t, t_applied, addr, fc,
        address, values, applied (executed as asked), exception (code or None)."""
        return self._call("writes", {"addr": addr, "since": since}, lambda r: r["writes"])

    def reads(self, addr: int | None = None, since: float = 0.0) -> Any:
        """Read requests received after monotonic time ``since``: dicts with t, addr, fc, address, count."""
        return self._call("reads", {"addr": addr, "since": since}, lambda r: r["reads"])

    def clear_writes(self) -> Any:
        return self._call("clear_writes", {})

    def stats(self) -> Any:
        """``{"slaves": {"<addr>": counters + faults}, "bus": counters}``."""
        return self._call("stats", {})


def _decode(line: bytes) -> dict[str, Any]:
    if not line.endswith(b"\n"):
        raise SimControlError("simulator closed the control connection without answering")
    resp: dict[str, Any] = json.loads(line)
    if not resp.get("ok"):
        raise SimControlError(resp.get("error", "request failed"))
    return resp


class SimControl(_Ops):
    """Synchronous control client (thread-safe: one connection per request)."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 5.0) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        payload = json.dumps({"op": op, **fields}).encode() + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                sock.sendall(payload)
                chunks = bytearray()
                while not chunks.endswith(b"\n"):
                    chunk = sock.recv(1 << 16)
                    if not chunk:
                        break
                    chunks += chunk
        except OSError as exc:
            raise SimControlError(f"control socket {self.path}: {exc}") from exc
        return _decode(bytes(chunks))

    def _call(self, op: str, fields: dict[str, Any], pick: Callable[[dict[str, Any]], Any] | None = None) -> Any:
        resp = self.request(op, **fields)
        return pick(resp) if pick else resp


class AsyncSimControl(_Ops):
    """The same methods as ``SimControl``, as coroutines."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 5.0) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        payload = json.dumps({"op": op, **fields}).encode() + b"\n"

        async def exchange() -> bytes:
            reader, writer = await asyncio.open_unix_connection(self.path, limit=1 << 26)
            try:
                writer.write(payload)
                await writer.drain()
                return await reader.readline()
            finally:
                writer.close()

        try:
            line = await asyncio.wait_for(exchange(), self.timeout)
        except (TimeoutError, OSError) as exc:
            raise SimControlError(f"control socket {self.path}: {exc!r}") from exc
        return _decode(line)

    async def _acall(self, op: str, fields: dict[str, Any], pick: Callable[[dict[str, Any]], Any] | None) -> Any:
        resp = await self.request(op, **fields)
        return pick(resp) if pick else resp

    def _call(self, op: str, fields: dict[str, Any], pick: Callable[[dict[str, Any]], Any] | None = None) -> Any:
        return self._acall(op, fields, pick)


def terminate(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    """End a child process as its service manager would: SIGTERM, wait up to `timeout`, then SIGKILL.

    Returns its exit code. Used for the simulator and, by tests and benches, for agent processes.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class SimProcess:
    """The simulator as a child process.

    ``SimProcess(link, slaves=["3:travel-drvfw"], wire_baud=115200, seed=1)``; ``start()`` (or
    ``with``) returns once ``SIM READY`` was printed. The child's stderr goes to ``log_path``
    (default LINK.log). Attributes: ``link``, ``control_path``, ``control`` (a ``SimControl``),
    ``pid``, ``log_path``.
    """

    READY_PREFIX = b"SIM READY "

    def __init__(
        self,
        link: str | os.PathLike[str],
        control: str | os.PathLike[str] | None = None,
        *,
        slaves: Sequence[str] | None = None,
        profiles: str | os.PathLike[str] | None = None,
        wire_baud: int = 0,
        service_periods: dict[int, float] | None = None,
        seed: int | None = None,
        extra_args: Sequence[str] = (),
        log_path: str | os.PathLike[str] | None = None,
        ready_timeout: float = 10.0,
        new_session: bool = False,
        realtime: int = SIM_REALTIME_PRIORITY,
    ) -> None:
        self.link = os.fspath(link)
        self.control_path = os.fspath(control) if control is not None else self.link + ".ctl"
        self.log_path = os.fspath(log_path) if log_path is not None else self.link + ".log"
        self.ready_timeout = ready_timeout
        # new_session: keep a terminal's Ctrl-C away from the child, so its owner stops it in order.
        self.new_session = new_session
        args = ["--link", self.link, "--control", self.control_path]
        for spec in slaves or ():
            args += ["--slave", spec]
        if profiles is not None:
            args += ["--profiles", os.fspath(profiles)]
        if wire_baud:
            args += ["--wire-baud", str(wire_baud)]
        for unit, ms in (service_periods or {}).items():
            args += ["--service-period", f"{unit}:{ms}"]
        if seed is not None:
            args += ["--seed", str(seed)]
        if realtime:
            args += ["--realtime", str(realtime)]
        self.args = args + list(extra_args)
        self.control = SimControl(self.control_path)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def start(self) -> SimProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "drivers.sim", *self.args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=self.new_session,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + self.ready_timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(f"simulator not ready after {self.ready_timeout} s: {self.log_tail()}")
                if not sel.select(remaining):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    code = self.proc.wait(timeout=5)
                    raise RuntimeError(f"simulator exited with {code} before READY: {self.log_tail()}")
                buf += chunk
                for line in buf.split(b"\n")[:-1]:
                    if line.startswith(self.READY_PREFIX):
                        return

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        terminate(proc, timeout)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc else None

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
