"""Isolation benchmark: can a flood of API requests delay a stop?

    .venv/bin/python bench/isolation.py [--samples N] [--duration S] [--client auto|wrk|python]

The last line printed is one JSON object. With the defaults (30 samples, 32 s of sampling per
set of samples, six sets, what a set leaves unused passed on to the next) the whole run takes
at most four minutes; a set cut short by its time reports how many samples it took.

What it measures, black box, on the wire. The E-stop input of the simulated safety module is
pressed and the time until the simulator receives the first stop frame at the travel driver
(address 3, a write of 0 from M1_ENABLE) is read from the simulator's own record of received
frames; both clocks are the system-wide CLOCK_MONOTONIC. Then the button is released, a
technician resets through `POST /api/v1/reset` until the state is IDLE, and after a random
50-150 ms gap the next sample starts. N samples in each phase:

    quiet          no load                                                      (the baseline)
    status flood   64 connections, closed loop, authenticated GET /api/v1/status
    health flood   128 connections, closed loop, unauthenticated GET /healthz
    command flood  16 connections, closed loop, POST /api/v1/commands {"type": "pause"}, a
                   unique Idempotency-Key each
    login flood    64 connections, closed loop, POST /api/v1/auth/login with a wrong password
                   for a user name that does not exist (a new one per request)

Under the status flood also N samples of `api_estop_wire`: `POST /api/v1/estop` (the monotonic
time taken just before the request is written to an already open connection) -> first stop
frame at the driver, then the reset (an E-stop that joins an urgent stop already under way,
say a trip's, writes no frame of its own: counted as `joined`, not a sample). During every
flood `GET /api/v1/status` is read every 0.5 s for `loop.lag_p99_ms`, the control loop's
lateness p99 over its recent window (a field of the core/gateway split; the one-process agent
has none, so it is reported as null).

How. The simulator runs as its own process on a pty with the firmware's timing (the safety
module serves one frame per 100 ms tick, the motor driver one per 10 ms), as in
bench/safety.py. The agent is the real daemon, `python -m agent run --config CFG`, on a config
written to a temporary directory (loopback API on a free port), with an operator and a
technician made beforehand by `python -m agent user add`. The bench talks to it only through
the command line, HTTP and the simulator's control socket, so it measures the same way whether
`run` starts one process or a core and a gateway.

Why the load runs in another process: a load generator inside this process (or inside the
agent's) would share an event loop with the measurement and delay it itself; only a separate
process gives a flood the way a client on the network does. It is `wrk` when installed
(`--client auto`), else a small asyncio HTTP/1.1 client in a child process (keep-alive
connections over asyncio streams, cheaper per request than httpx). It runs at nice 10: on the
carriage the flood comes from another machine, here it shares the two cores with the agent,
the simulator and the bench, and should not take the CPU they need to run on time. The flood
starts one second before the first sample. Its requests/s are reported, so the reader can see
the flood was real.

Choices. Commands: `pause` is accepted in any state (201) and committed like every command
(submitted, marked running, finished, each a durable commit, plus its audit row), but in IDLE
(and ESTOP) the state machine refuses it before anything is written to the bus; `stop` would
write a routine stop to the driver, whose frames look like the E-stop's and would spoil the
measurement. 16 connections: commands come from a few clients (the fleet link, a technician's
tool), so 16 closed-loop writers are already several times a real load; each command costs
several durable commits, so 16 keep the store's writer busy without a pause, and more
closed-loop connections would mostly lengthen the queue in front of it (latency ~ connections
/ throughput) while every command stays in the database for good. Logins: a name that does not
exist costs the same scrypt check as a wrong password for a real user (a dummy hash), and a
new name per request never trips the per-account lock-out. The per-address limit would turn
the flood into cheap 429s after 20 failures, so the bench's config raises it to its maximum
(1000 failures per 10 s window); the statuses of the flood's answers are reported (expected:
401, not 429). The bench's config also scans only the addresses the simulator serves (2-5).

Targets: every flood's press->frame p99 <= quiet p99 + 10 ms; api_estop_wire p99 <= 20 ms;
core_loop_lag_p99_ms (the largest loop.lag_p99_ms seen under the status flood) <= 5 ms, not met
while the field is missing. With 30 samples the p99 is the largest sample. Also reported: the
faults each phase's resets cleared, and per phase `other_trips`, the samples whose reset
cleared more than the press (or the API E-stop) latches: a flood that starves the safety polls
or the control loop trips SAFETY_LINK_LOST, SAFETY_DATA_STALE or LOOP_STALL by itself, and in
such a sample the first stop frame may be that trip's rather than the press's. Per phase also
the time from the release to IDLE (`reset_p50_ms`, `reset_p99_ms`) and the reset answers other
than 200: the reset is an ordinary API request and queues for the API's admission slots
(/api/v1/estop, /healthz and /readyz never do), so a flood can keep a technician from clearing
a stop even where it cannot delay one. At the end: the faults still latched
(GET /api/v1/status verdict.faults) and the wall time.

Every child process (simulator, agent, load) is ended with drivers.sim.client.terminate(),
also on Ctrl-C, SIGTERM or an error, and every wait has a time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._wrk import REPORT_LUA  # noqa: E402
from drivers.modbus.stats import percentile, ranked  # noqa: E402
from drivers.sim.client import AsyncSimControl, SimProcess, terminate  # noqa: E402

TRAVEL = 3
STOP_FRAME_START = 0x0001  # M1_ENABLE: a stop's first frame writes 0 from here
HOST = "127.0.0.1"
OPERATOR, TECHNICIAN = "bench-operator", "bench-technician"
PASSWORD = "bench password, long enough"
WRONG_PASSWORD = "not the password, but long enough"
CONNECTIONS = {"status": 64, "health": 128, "command": 16, "login": 64}
WARMUP_S = 1.0  # flood running before the first sample
LAG_POLL_S = 0.5
RELEASE_S = 0.12  # after the release: the module sees it on its next 100 ms tick
FRAME_TIMEOUT_S = 5.0  # press -> stop frame: a sample without a frame by then counts as missed
RESET_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 15.0
# What a reset clears after a press (the module's input, its CRITICAL status and relay latch) and
# after an API E-stop; a sample whose reset cleared anything else had another trip meanwhile.
PRESS_CODES = frozenset({"ESTOP_PRESSED", "SAFETY_MODULE_CRITICAL", "SAFETY_MODULE_LATCHED"})
API_ESTOP_CODES = frozenset({"ESTOP_REQUESTED"})
LOAD_NICE = 10

# wrk script: one JSON line of figures at the end (wrk counts latency in microseconds); a unique
# Idempotency-Key per command and a new unknown user name per login.
WRK_SCRIPT = (
    r"""
local prefix, kind, counter = "run", "get", 0
function init(args)
  prefix = args[1] or prefix
  kind = args[2] or kind
  if kind ~= "get" then wrk.method = "POST" end
end
function request()
  counter = counter + 1
  if kind == "command" then
    local headers = {}
    for name, value in pairs(wrk.headers) do headers[name] = value end
    headers["Idempotency-Key"] = prefix .. "-" .. counter
    return wrk.format(nil, nil, headers, '{"type": "pause"}')
  elseif kind == "login" then
    return wrk.format(nil, nil, nil, '{"username": "nobody-' .. prefix .. '-' .. counter ..
                      '", "password": "__WRONG__"}')
  end
  return wrk.format()
end
""".replace("__WRONG__", WRONG_PASSWORD)
    + REPORT_LUA
)


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------------------- minimal HTTP/1.1


def http_request(
    method: str,
    path: str,
    port: int,
    *,
    token: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    close: bool = False,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    payload = b""
    if body is not None:
        payload = json.dumps(body).encode()
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    elif method == "POST":
        lines.append("Content-Length: 0")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-case names), body (Content-Length or chunked)."""
    line = await reader.readline()
    if not line:
        raise ConnectionError("the server closed the connection")
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise ConnectionError(f"not an HTTP response: {line[:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("the server closed the connection in the headers")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(chunks)
    elif status in (204, 304) or 100 <= status < 200:
        body = b""
    else:
        body = await reader.read()
    return status, headers, body


async def call(
    port: int, method: str, path: str, *, token: str | None = None, body: Any = None, timeout: float = HTTP_TIMEOUT_S
) -> tuple[int, Any]:
    """One request on a new connection (closed after it); the answer's status and JSON (or None)."""

    async def exchange() -> tuple[int, Any]:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(http_request(method, path, port, token=token, body=body, close=True))
            await writer.drain()
            status, _, raw = await read_response(reader)
        finally:
            writer.close()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, None

    return await asyncio.wait_for(exchange(), timeout)


# ---------------------------------------------------------------------------- load generator (child)


async def load_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Closed loop on `connections` keep-alive connections until stdin closes (or `max_s`)."""
    os.nice(LOAD_NICE)
    port, kind, prefix = int(spec["port"]), spec["kind"], uuid.uuid4().hex[:10]
    method, path = {
        "status": ("GET", "/api/v1/status"),
        "health": ("GET", "/healthz"),
        "command": ("POST", "/api/v1/commands"),
        "login": ("POST", "/api/v1/auth/login"),
    }[kind]
    token = spec.get("token")
    counter = 0

    def next_request() -> bytes:
        nonlocal counter
        counter += 1
        if kind == "command":
            return http_request(
                method,
                path,
                port,
                token=token,
                body={"type": "pause"},
                headers={"Idempotency-Key": f"{prefix}-{counter}"},
            )
        if kind == "login":
            return http_request(
                method, path, port, body={"username": f"nobody-{prefix}-{counter}", "password": WRONG_PASSWORD}
            )
        return http_request(method, path, port, token=token)

    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch_stdin() -> None:
        await reader.read()  # EOF: the bench closed our stdin (or died)
        stopped.set()

    begun = time.perf_counter()
    measure_from = begun + float(spec["warmup"])
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while not stopped.is_set():
            try:
                r, w = await asyncio.open_connection(HOST, port)
            except OSError:
                errors += 1
                await asyncio.sleep(0.05)
                continue
            try:
                while not stopped.is_set():
                    sent = time.perf_counter()
                    w.write(next_request())
                    await w.drain()
                    status, headers, _ = await read_response(r)
                    done = time.perf_counter()
                    if done >= measure_from and not stopped.is_set():  # answers within the window, whenever sent
                        latencies.append(done - sent)
                        statuses[str(status)] += 1
                    if headers.get("connection", "").lower() == "close":
                        break
            except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
                errors += 1
            finally:
                w.close()

    watcher = asyncio.create_task(watch_stdin())
    workers = [asyncio.create_task(worker()) for _ in range(int(spec["connections"]))]
    try:
        await asyncio.wait_for(stopped.wait(), float(spec["max_s"]))
    except TimeoutError:
        stopped.set()
    ended = time.perf_counter()
    for task in (*workers, watcher):
        task.cancel()
    await asyncio.gather(*workers, watcher, return_exceptions=True)
    window = max(ended - measure_from, 1e-9)
    values = sorted(latencies)
    return {
        "client": "python",
        "connections": int(spec["connections"]),
        "requests": len(values),
        "window_s": round(window, 1),
        "rps": round(len(values) / window, 1),
        "p50_ms": round(ranked(values, 50) * 1000, 2),
        "p99_ms": round(ranked(values, 99) * 1000, 2),
        "max_ms": round(values[-1] * 1000, 2) if values else None,
        "statuses": dict(statuses),
        "errors": errors,
    }


class Load:
    """One flood in a child process: started before a phase's samples, stopped after them."""

    def __init__(self, kind: str, port: int, token: str | None, client: str, work: Path, max_s: float) -> None:
        self.kind, self.connections = kind, CONNECTIONS[kind]
        self.out_path = work / f"load-{kind}.out"
        self.err_path = work / f"load-{kind}.err"
        self.wrk = client == "wrk" or (client == "auto" and shutil.which("wrk") is not None)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            if self.wrk:
                script = work / "load.lua"
                script.write_text(WRK_SCRIPT)
                path = {
                    "status": "/api/v1/status",
                    "health": "/healthz",
                    "command": "/api/v1/commands",
                    "login": "/api/v1/auth/login",
                }[kind]
                argv = [
                    "nice",
                    "-n",
                    str(LOAD_NICE),
                    "wrk",
                    "-t1",
                    f"-c{self.connections}",
                    f"-d{int(max_s) + 1}s",
                    "--timeout",
                    "30s",
                    "-s",
                    str(script),
                    "-H",
                    "Content-Type: application/json",
                ]
                if token:
                    argv += ["-H", f"Authorization: Bearer {token}"]
                argv += [
                    f"http://{HOST}:{port}{path}",
                    "--",
                    uuid.uuid4().hex[:10],
                    "get" if kind in ("status", "health") else kind,
                ]
                self.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
                )
            else:
                spec = {
                    "port": port,
                    "kind": kind,
                    "token": token,
                    "connections": self.connections,
                    "warmup": WARMUP_S,
                    "max_s": max_s,
                }
                self.proc = subprocess.Popen(
                    [sys.executable, __file__, "--load-spec", json.dumps(spec)],
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=err,
                    env=env,
                    start_new_session=True,
                )

    async def stop(self) -> dict[str, Any]:
        """End the flood (EOF on its stdin, SIGINT for wrk) and return its figures."""
        if self.wrk:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)  # wrk stops early and still prints its summary
        elif self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.to_thread(self.proc.wait, 30)
        except subprocess.TimeoutExpired as exc:
            terminate(self.proc, 5)
            raise BenchError(f"the {self.kind} load did not stop within 30 s") from exc
        lines = self.out_path.read_text(errors="replace").strip().splitlines()
        if self.proc.returncode != 0 or not lines:
            raise BenchError(
                f"the {self.kind} load failed ({self.proc.returncode}): "
                + self.err_path.read_text(errors="replace")[-2000:]
            )
        figures = json.loads(lines[-1])
        if not self.wrk:
            return figures
        requests = int(figures["requests"])
        return {
            "client": "wrk",
            "connections": self.connections,
            "requests": requests,
            "window_s": round(figures["duration_us"] / 1e6, 1),
            "rps": round(requests / max(figures["duration_us"] / 1e6, 1e-9), 1),
            "p50_ms": round(figures["p50_us"] / 1000, 2),
            "p99_ms": round(figures["p99_us"] / 1000, 2),
            "max_ms": round(figures["max_us"] / 1000, 2),
            "statuses": {"2xx": requests - int(figures["non_2xx"]), "other": int(figures["non_2xx"])},
            "errors": int(figures["socket_errors"]),
        }


# ---------------------------------------------------------------------------- processes


class Children:
    """Every process the bench started, ended in reverse order (load, agent), the simulator last."""

    def __init__(self) -> None:
        self.procs: list[tuple[subprocess.Popen[bytes], float]] = []
        self.sim: SimProcess | None = None

    def add(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        self.procs.append((proc, timeout))

    def stop_all(self) -> None:
        while self.procs:
            proc, timeout = self.procs.pop()
            terminate(proc, timeout)
            end_group(proc.pid)
        if self.sim is not None:
            self.sim.stop()
            self.sim = None


def end_group(pgid: int) -> None:
    """What is left of a child's own session (the processes a two-process `run` starts): TERM, then KILL."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def write_config(work: Path, link: str, port: int) -> Path:
    cfg = work / "agent.toml"
    cfg.write_text(
        "[agent]\n"
        'id = "oht-bench-iso"\n'
        f'data_dir = "{work / "data"}"\n\n'
        "[bus]\n"
        f'port = "{link}"\n'
        "scan = [2, 3, 4, 5]\n\n"
        "[api]\n"
        f'host = "{HOST}"\n'
        f"port = {port}\n"
        "# the login flood must reach the password check: the per-address limit at its maximum\n"
        "login_ip_failures = 1000\n"
        "login_account_failures = 100\n"
        "login_window_s = 10\n"
    )
    return cfg


def agent_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}


def add_user(cfg: Path, name: str, role: str) -> None:
    argv = [
        sys.executable,
        "-m",
        "agent",
        "user",
        "add",
        name,
        "--role",
        role,
        "--password-stdin",
        "--config",
        str(cfg),
    ]
    done = subprocess.run(
        argv,
        input=(PASSWORD + "\n").encode(),
        capture_output=True,
        timeout=120,
        env=agent_env(),
        cwd=REPO,
        start_new_session=True,
    )
    if done.returncode != 0:
        raise BenchError(
            f"`user add {name}` failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}"
        )


def log_tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


# ---------------------------------------------------------------------------- measurement


def ms(values: list[float], q: float) -> float | None:
    return round(percentile(values, q) * 1000, 2) if values else None


class Bench:
    def __init__(
        self,
        port: int,
        sim: SimProcess,
        agent: subprocess.Popen[bytes],
        agent_log: Path,
        work: Path,
        children: Children,
        samples: int,
        duration: float,
        client: str,
    ) -> None:
        self.port, self.agent, self.agent_log, self.work, self.children = port, agent, agent_log, work, children
        self.sim = AsyncSimControl(sim.control_path)
        self.samples, self.duration, self.client = samples, duration, client
        self.rng = random.Random(20)
        self.spare = 0.0  # sampling time earlier sets left unused, passed on to the next
        self.operator = ""
        self.technician = ""

    # -- helpers
    def check_agent(self) -> None:
        if self.agent.poll() is not None:
            raise BenchError(f"the agent exited with {self.agent.returncode}: {log_tail(self.agent_log)}")

    async def wait_ready(self, timeout: float = 90.0) -> None:
        end = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < end:
            self.check_agent()
            try:
                status, body = await call(self.port, "GET", "/readyz", timeout=3)
                if status == 200:
                    return
                last = body
            except (TimeoutError, OSError, ConnectionError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.2)
        raise BenchError(f"GET /readyz not 200 after {timeout:.0f} s ({last}): {log_tail(self.agent_log)}")

    async def login(self, name: str) -> str:
        status, body = await call(
            self.port, "POST", "/api/v1/auth/login", body={"username": name, "password": PASSWORD}
        )
        if status != 200 or not isinstance(body, dict):
            raise BenchError(f"login of {name} failed: {status} {body}")
        return str(body["token"])

    async def first_stop_frame(self, since: float, timeout: float) -> float | None:
        """Reception time (simulator's clock) of the first stop frame at the driver after `since`."""
        end = time.monotonic() + timeout
        while True:
            frames = [
                w["t"]
                for w in await self.sim.writes(TRAVEL, since=since)
                if w["address"] == STOP_FRAME_START and w["values"] and w["values"][0] == 0
            ]
            if frames:
                return float(min(frames))
            if time.monotonic() > end:
                return None
            await asyncio.sleep(0.01)

    async def reset_to_idle(self, answers: Counter[str]) -> list[str]:
        """POST /api/v1/reset (technician) until it answers 200 with state IDLE; the codes it cleared.

        The other answers are counted in `answers` (409: a cause not yet gone; 503: the API's
        admission queue was full for its whole wait)."""
        end = time.monotonic() + RESET_TIMEOUT_S
        cleared: list[str] = []
        last: Any = None
        while True:
            try:
                status, body = await call(self.port, "POST", "/api/v1/reset", token=self.technician)
            except (TimeoutError, OSError, ConnectionError) as exc:
                last = repr(exc)
                answers[type(exc).__name__] += 1
            else:
                if status != 200:
                    answers[str(status)] += 1
                if isinstance(body, dict):
                    cleared += [str(c) for c in body.get("cleared") or []]
                    if status == 200 and body.get("state") == "IDLE":
                        return cleared
                last = (status, body)
            if time.monotonic() > end:
                self.check_agent()
                raise BenchError(f"no reset to IDLE within {RESET_TIMEOUT_S:.0f} s: {last}")
            await asyncio.sleep(0.1)

    async def poll_lag(self, seen: list[float], tally: Counter[str]) -> None:
        """Every 0.5 s: GET /api/v1/status, note loop.lag_p99_ms (or that it is missing)."""
        while True:
            began = time.monotonic()
            try:
                status, body = await call(self.port, "GET", "/api/v1/status", token=self.operator, timeout=5)
            except (TimeoutError, OSError, ConnectionError):
                tally["errors"] += 1
            else:
                loop = body.get("loop") if isinstance(body, dict) else None
                value = loop.get("lag_p99_ms") if isinstance(loop, dict) else None
                if status != 200:
                    tally[f"http_{status}"] += 1
                elif isinstance(value, (int, float)):
                    seen.append(float(value))
                    tally["read"] += 1
                else:
                    tally["missing"] += 1
            await asyncio.sleep(max(0.0, LAG_POLL_S - (time.monotonic() - began)))

    # -- samples
    def budget(self) -> float:
        return self.duration + self.spare

    def spend(self, began: float, budget_s: float) -> float:
        used = time.monotonic() - began
        self.spare = max(0.0, budget_s - used)
        return round(used, 1)

    async def press_samples(self, budget_s: float) -> dict[str, Any]:
        latencies: list[float] = []
        missed = 0
        cleared: Counter[str] = Counter()
        resets: list[float] = []
        answers: Counter[str] = Counter()
        other_trips = 0
        began = time.monotonic()
        end = began + budget_s
        while len(latencies) + missed < self.samples and time.monotonic() < end:
            t0 = time.monotonic()
            await self.sim.estop(True)
            frame = await self.first_stop_frame(t0, FRAME_TIMEOUT_S)
            await self.sim.estop(False)
            if frame is None:
                missed += 1
            else:
                latencies.append(frame - t0)
            await asyncio.sleep(RELEASE_S)
            reset_from = time.monotonic()
            codes = await self.reset_to_idle(answers)
            resets.append(time.monotonic() - reset_from)
            cleared.update(codes)
            other_trips += bool(set(codes) - PRESS_CODES)
            await asyncio.sleep(self.rng.uniform(0.05, 0.15))
        return {
            "samples": len(latencies),
            "missed": missed,
            "p50_ms": ms(latencies, 50),
            "p99_ms": ms(latencies, 99),
            "max_ms": ms(latencies, 100),
            "other_trips": other_trips,
            "reset_cleared": dict(cleared),
            "reset_p50_ms": ms(resets, 50),
            "reset_p99_ms": ms(resets, 99),
            "reset_not_200": dict(answers),
            "seconds": self.spend(began, budget_s),
        }

    async def api_estop_samples(self, budget_s: float) -> dict[str, Any]:
        wire: list[float] = []
        answered: list[float] = []
        refused: Counter[str] = Counter()
        missed = joined = 0
        cleared: Counter[str] = Counter()
        answers: Counter[str] = Counter()
        other_trips = 0
        began = time.monotonic()
        end = began + budget_s
        for i in range(self.samples):
            if time.monotonic() >= end:
                break
            request = http_request(
                "POST", "/api/v1/estop", self.port, token=self.technician, body={"reason": f"bench {i}"}, close=True
            )
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, self.port), 10)
            confirmed = False
            t0 = time.monotonic()
            try:
                writer.write(request)
                await writer.drain()
                status, _, _ = await asyncio.wait_for(read_response(reader), HTTP_TIMEOUT_S)
                if status == 200:
                    confirmed = True
                    answered.append(time.monotonic() - t0)
                else:
                    refused[str(status)] += 1
            except (TimeoutError, OSError, ConnectionError) as exc:
                refused[type(exc).__name__] += 1
            finally:
                writer.close()
            frame = await self.first_stop_frame(t0, 2.0)
            if frame is not None:
                wire.append(frame - t0)
            elif confirmed:  # it joined an urgent stop already under way (a trip's): no frame of its own, not a sample
                joined += 1
            else:
                missed += 1
            codes = await self.reset_to_idle(answers)
            cleared.update(codes)
            other_trips += bool(set(codes) - API_ESTOP_CODES)
            await asyncio.sleep(self.rng.uniform(0.05, 0.15))
        return {
            "samples": len(wire),
            "missed": missed,
            "joined": joined,
            "p50_ms": ms(wire, 50),
            "p99_ms": ms(wire, 99),
            "max_ms": ms(wire, 100),
            "http_p50_ms": ms(answered, 50),
            "http_p99_ms": ms(answered, 99),
            "not_confirmed": dict(refused),
            "other_trips": other_trips,
            "reset_cleared": dict(cleared),
            "reset_not_200": dict(answers),
            "seconds": self.spend(began, budget_s),
        }

    async def phase(
        self, name: str, kind: str | None, token: str | None = None, api_estop: bool = False
    ) -> dict[str, Any]:
        print(f"== {name}", file=sys.stderr, flush=True)
        self.check_agent()
        if kind is None:
            return {"press": await self.press_samples(self.budget())}
        most = self.duration * (2 if api_estop else 1) + self.spare  # the load's own time limit, with room to spare
        load = Load(kind, self.port, token, self.client, self.work, max_s=most + WARMUP_S + 60 + RESET_TIMEOUT_S)
        self.children.add(load.proc, 5)
        lags: list[float] = []
        tally: Counter[str] = Counter()
        poller: asyncio.Task[None] | None = None
        try:
            await asyncio.sleep(WARMUP_S)
            if load.proc.poll() is not None:
                raise BenchError(f"the {kind} load ended at once: {log_tail(load.err_path)}")
            poller = asyncio.create_task(self.poll_lag(lags, tally))
            out: dict[str, Any] = {"press": await self.press_samples(self.budget())}
            if api_estop:
                out["api_estop"] = await self.api_estop_samples(self.budget())
        finally:
            if poller is not None:
                poller.cancel()
                await asyncio.gather(poller, return_exceptions=True)
        out["load"] = await load.stop()
        out["loop_lag_p99_ms_max"] = max(lags) if lags else None
        out["loop_lag_polls"] = dict(tally)
        self.check_agent()
        await asyncio.sleep(1.0)  # let what the flood left queued drain before the next phase
        return out

    async def run(self) -> dict[str, Any]:
        await self.wait_ready()
        self.operator = await self.login(OPERATOR)
        self.technician = await self.login(TECHNICIAN)
        phases = {
            "quiet": await self.phase("quiet", None),
            "status_flood": await self.phase("status flood", "status", self.operator, api_estop=True),
            "health_flood": await self.phase("health flood", "health"),
            "command_flood": await self.phase("command flood", "command", self.operator),
            "login_flood": await self.phase("login flood", "login"),
        }
        await asyncio.sleep(3.0)  # logins still queued behind the scrypt slots
        end = time.monotonic() + 20
        while True:  # 503 API_BUSY while those still hold the API's admission slots
            status, body = await call(self.port, "GET", "/api/v1/status", token=self.operator)
            if status == 200 and isinstance(body, dict):
                break
            if time.monotonic() > end:
                raise BenchError(f"final GET /api/v1/status: {status} {body}")
            await asyncio.sleep(0.5)
        return {
            "phases": phases,
            "faults_after": [f.get("code") for f in body.get("verdict", {}).get("faults", [])],
            "state_after": body.get("state"),
        }


def summarise(result: dict[str, Any], samples: int, duration: float, wall_s: float) -> dict[str, Any]:
    phases = result["phases"]
    quiet = phases["quiet"]["press"]
    out: dict[str, Any] = {
        "bench": "isolation",
        "samples": samples,
        "duration_s": duration,
        "cpus": os.cpu_count(),
        "quiet_p50_ms": quiet["p50_ms"],
        "quiet_p99_ms": quiet["p99_ms"],
    }
    floods = ("status_flood", "health_flood", "command_flood", "login_flood")
    for name in floods:
        figures = phases[name]
        out[f"{name}_p50_ms"] = figures["press"]["p50_ms"]
        out[f"{name}_p99_ms"] = figures["press"]["p99_ms"]
        out[f"{name}_rps"] = figures["load"]["rps"]
    api = phases["status_flood"]["api_estop"]
    out["api_estop_wire_p50_ms"] = api["p50_ms"]
    out["api_estop_wire_p99_ms"] = api["p99_ms"]
    out["api_estop_http_p99_ms"] = api["http_p99_ms"]
    out["core_loop_lag_p99_ms"] = phases["status_flood"]["loop_lag_p99_ms_max"]
    out["loop_lag_p99_ms_max"] = {name: phases[name]["loop_lag_p99_ms_max"] for name in floods}
    lag_missing = all(phases[name]["loop_lag_polls"].get("read", 0) == 0 for name in floods)
    if lag_missing:
        out["loop_lag_note"] = (
            "GET /api/v1/status has no loop.lag_p99_ms (the one-process agent does not report it): null"
        )
    out["samples_taken"] = {
        name: {
            k: phases[name]["press"][k]
            for k in ("samples", "missed", "other_trips", "seconds", "reset_p50_ms", "reset_p99_ms", "reset_not_200")
        }
        for name in ("quiet", *floods)
    }
    out["samples_taken"]["api_estop"] = {
        k: api[k] for k in ("samples", "missed", "joined", "other_trips", "not_confirmed", "seconds", "reset_not_200")
    }
    out["floods"] = {
        name: {
            k: phases[name]["load"].get(k)
            for k in ("client", "connections", "rps", "requests", "p50_ms", "p99_ms", "statuses", "errors")
        }
        for name in floods
    }
    out["reset_cleared"] = {name: phases[name]["press"]["reset_cleared"] for name in ("quiet", *floods)}
    out["reset_cleared"]["api_estop"] = api["reset_cleared"]

    def target(value: float | None, limit: float | None, missed: int = 0) -> dict[str, Any]:
        met = value is not None and limit is not None and value <= limit and missed == 0
        return {"value": value, "limit": limit, "met": met}

    limit = round(quiet["p99_ms"] + 10, 2) if quiet["p99_ms"] is not None else None
    out["targets"] = {
        f"{name}_p99<=quiet_p99+10ms": target(out[f"{name}_p99_ms"], limit, phases[name]["press"]["missed"])
        for name in floods
    }
    out["targets"]["api_estop_wire_p99<=20ms"] = target(out["api_estop_wire_p99_ms"], 20.0, api["missed"])
    out["targets"]["core_loop_lag_p99<=5ms"] = target(out["core_loop_lag_p99_ms"], 5.0)
    out["targets_met"] = all(t["met"] for t in out["targets"].values())
    out["faults_after"] = result["faults_after"]
    out["state_after"] = result["state_after"]
    out["wall_s"] = round(wall_s, 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=30, help="samples per phase (default 30)")
    parser.add_argument(
        "--duration",
        type=float,
        default=32.0,
        help="seconds of sampling per set of samples (six sets), time a set leaves unused passes to the "
        "next; a set cut short reports how many samples it took (default 32)",
    )
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk when installed (auto), or insist on one",
    )
    parser.add_argument(
        "--keep-logs", metavar="DIR", help="copy the agent's, the simulator's and the load's logs to DIR"
    )
    parser.add_argument("--load-spec", help=argparse.SUPPRESS)  # the Python load generator's own run
    args = parser.parse_args()
    if args.load_spec:
        print(json.dumps(asyncio.run(load_main(json.loads(args.load_spec)))))
        return 0
    if args.samples < 1 or args.duration <= 0:
        parser.error("--samples and --duration must be positive")
    if args.client == "wrk" and shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian package `wrk`); use --client python")

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)  # ended like Ctrl-C: the children are stopped in order
    started = time.monotonic()
    children = Children()
    with tempfile.TemporaryDirectory(prefix="oht-bench-iso-") as tmp:
        work = Path(tmp)
        agent_log = work / "agent.log"
        try:
            children.sim = SimProcess(work / "bus.tty", work / "bus.ctl", seed=11, new_session=True).start()
            port = free_port()
            cfg = write_config(work, children.sim.link, port)
            add_user(cfg, OPERATOR, "operator")
            add_user(cfg, TECHNICIAN, "technician")
            with open(agent_log, "wb") as log:
                agent = subprocess.Popen(
                    [sys.executable, "-m", "agent", "run", "--config", str(cfg)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=agent_env(),
                    cwd=REPO,
                    start_new_session=True,
                )
            children.add(agent, 20)
            bench = Bench(
                port, children.sim, agent, agent_log, work, children, args.samples, args.duration, args.client
            )
            result = asyncio.run(bench.run())
        except KeyboardInterrupt:
            raise
        except BaseException:
            print(f"agent log (tail):\n{log_tail(agent_log)}", file=sys.stderr)
            raise
        finally:
            children.stop_all()
            if args.keep_logs:
                keep = Path(args.keep_logs)
                keep.mkdir(parents=True, exist_ok=True)
                for log_file in (agent_log, work / "bus.tty.log", *work.glob("load-*.err")):
                    if log_file.exists():
                        shutil.copy(log_file, keep / log_file.name)
    summary = summarise(result, args.samples, args.duration, time.monotonic() - started)
    for name in ("quiet", "status_flood", "health_flood", "command_flood", "login_flood"):
        rps = summary.get(f"{name}_rps")
        print(
            f"{name:14s} press->stop frame p50 {summary[f'{name}_p50_ms']} ms  p99 {summary[f'{name}_p99_ms']} ms"
            + (f"  flood {rps} req/s" if rps is not None else ""),
            file=sys.stderr,
        )
    print(
        f"api E-stop (status flood) -> stop frame p50 {summary['api_estop_wire_p50_ms']} ms"
        f"  p99 {summary['api_estop_wire_p99_ms']} ms;"
        f" core loop lag p99 {summary['core_loop_lag_p99_ms']} ms; faults after {summary['faults_after']}",
        file=sys.stderr,
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the children were stopped on the way out
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
