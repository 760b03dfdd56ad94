"""Benchmark of the local API: the real agent (`oht-agent run`: the core and the gateway as two
processes, on the simulator) against a bare FastAPI endpoint in a process of its own, in one run.

    .venv/bin/python bench/api.py [--duration SECONDS] [--concurrency N] [--client auto|wrk|python]
                                  [--plain]

What runs: the simulator as a process on a pty; the agent exactly as `oht-agent run --config CFG`
starts it (a config with its own data directory, the API on 127.0.0.1 and a free port, the core's
socket under /tmp; the bench user made first with `oht-agent user add --password-stdin`), ready
once /readyz answers 200. The baseline is a bare `async def` endpoint with a trivial bearer check,
served by `ApiServer` (so with every setting the gateway's server has) in its own process, so it
neither gains nor loses by sharing one; it runs once on each pair of HTTP parser and event loop
(h11 / httptools, asyncio / uvloop) and the best of the four is the baseline. The load comes from
a separate process, one phase at a time, each for a fixed duration after a one-second warm-up:

    bare_<http>_<loop>  GET /bare                 (the baseline, per server setting)
    status              GET /api/v1/status        (session check, the core's latest view, middleware)
    commands            POST /api/v1/commands     (a unique Idempotency-Key each, type "stop": sent
                                                   to the core, which validates, commits with fsync
                                                   and executes it, or answers CORE_BUSY beyond its
                                                   admission rate)

then paced (`*_paced`: the same connections offering PACED_RATE requests/s in total, latency counted
from the scheduled send time: what a client sees under a steady load) for the best bare setting,
status and commands. Closed loop, every connection sends its next request as soon as it has the
answer: the most the server takes, where latency is mostly queueing (p99 ~ N / throughput).

Load generators; the client shares the machine's cores with the servers, so it must be cheap.
Closed loop: `wrk` when installed (Debian package `wrk`; one thread, N connections, a Lua script
gives each POST its own Idempotency-Key). Paced, or when wrk is missing: the raw client, a Python
process (on uvloop when installed) holding N keep-alive connections that send prepared request
bytes and read each answer by its Content-Length, a few per cent of what httpx costs per request.
`--client python` uses one httpx.AsyncClient per connection for every phase instead: it takes
about a core at 1,200 requests/s, so on two cores it, not the server, sets the closed-loop figures.
The JSON names the generator of each phase.

The core's control loop runs in another process now, so no probe inside it: at the end of each
phase the bench reads `GET /api/v1/status` and reports `status.loop.lag_p99_ms` / `lag_max_ms`
as `core_lag_p99_ms` / `core_lag_max_ms`. The core keeps those over its last 30 s (1,500 ticks),
so each phase's figure also covers whatever ran in the 30 s before its end (the phase before,
or two); a phase that made the core late shows in its own figure and in the next ones. The faults
latched at the end of each phase and of the run, and the state, come from the same document
(none expected: the API must not starve the bus); the agent's warnings are printed at the end.

`--plain` hides httptools and uvloop from the agent's processes (an import of either fails), so
the gateway runs on its fallback, h11 and asyncio: the figures without them, on the same machine.
The bare baseline runs on all four settings either way.

The last line is one JSON object: per phase p50/p99 (ms), requests/s (all answers, and `ok_rps`
the 2xx ones: beyond the core's admission rate a command is answered 503 CORE_BUSY), status codes
and the core's loop lateness; which parser and loop the gateway ran (from its log); `status_p99_ms`,
`commands_p99_ms` (closed loop), `bare_best` and `ratio_vs_bare` (status req/s / the best bare
req/s), and `targets` (status p99 <= 25 ms at the given concurrency, ratio >= 0.5), each with its
value and whether it was met. Client and servers share the machine's cores, so absolute figures are
a floor; the ratio is the figure to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._wrk import REPORT_LUA  # noqa: E402
from drivers.modbus.stats import ranked  # noqa: E402


def figures(latencies: list[float], wall: float, statuses: dict[str, int], errors: int) -> dict[str, Any]:
    """One phase's figures, the same for every load client."""
    values = sorted(latencies)
    return {
        "requests": len(values),
        "rps": round(len(values) / wall, 1),
        "p50_ms": round(ranked(values, 50) * 1000, 2),
        "p99_ms": round(ranked(values, 99) * 1000, 2),
        "max_ms": round(values[-1] * 1000, 2) if values else None,
        "statuses": statuses,
        "errors": errors,
    }


PASSWORD = "bench password, long enough"
BARE_TOKEN = "bench-bare-token-0123456789"
PACED_RATE = 200.0  # requests/s offered in the paced phases (spread over all connections)

# wrk script: a unique Idempotency-Key per POST (thread-local counter behind a per-run prefix,
# one wrk thread), and one JSON line of figures at the end (wrk counts latency in microseconds).
WRK_SCRIPT = (
    r"""
local prefix = "run"
local counter = 0
function init(args)
  prefix = args[1] or prefix
  wrk.method = args[2] or "GET"
  if wrk.method == "POST" then wrk.body = args[3] end
end
function request()
  if wrk.method ~= "POST" then
    return wrk.format()
  end
  counter = counter + 1
  local headers = {}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  headers["Idempotency-Key"] = prefix .. "-" .. counter
  return wrk.format(nil, nil, headers)
end
"""
    + REPORT_LUA
)


# ---------------------------------------------------------------------------- load client (child)


async def client_main(spec: dict[str, Any]) -> dict[str, Any]:
    import httpx

    concurrency = int(spec["concurrency"])
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    headers = {"Authorization": f"Bearer {spec['token']}"}
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors = 0
    measuring = False
    stop_at = 0.0

    # One client (and so one connection) per worker: 50 connections in total. A single
    # AsyncClient sharing a 50-connection pool spends most of its time in pool bookkeeping
    # (measured: 150 req/s against 650 with 10), which would measure httpx, not the agent.
    clients = [
        httpx.AsyncClient(base_url=spec["url"], headers=headers, limits=limits, timeout=30.0)
        for _ in range(concurrency)
    ]

    async def one(client: httpx.AsyncClient, due: float | None = None) -> None:
        nonlocal errors
        kwargs: dict[str, Any] = {}
        if spec["method"] == "POST":
            kwargs = {"json": {"type": "stop"}, "headers": {"Idempotency-Key": uuid.uuid4().hex}}
        started = time.perf_counter() if due is None else due
        try:
            response = await client.request(spec["method"], spec["path"], **kwargs)
        except httpx.HTTPError:
            errors += 1
            return
        elapsed = time.perf_counter() - started
        if measuring:
            latencies.append(elapsed)
            key = str(response.status_code)
            statuses[key] = statuses.get(key, 0) + 1

    rate = spec.get("rate")
    interval = concurrency / float(rate) if rate else 0.0

    async def worker(client: httpx.AsyncClient) -> None:
        if not interval:  # closed loop: the next request as soon as the answer is in
            while time.perf_counter() < stop_at:
                await one(client)
            return
        # Paced (open loop): each worker sends every `interval` seconds, so the offered load is
        # `rate` whatever the latency; a late start counts against the request (no omission).
        due = time.perf_counter() + interval * (hash(id(client)) % 1000) / 1000
        while due < stop_at:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await one(client, due)
            due += interval

    try:
        stop_at = time.perf_counter() + float(spec["warmup"])
        await asyncio.gather(*(worker(c) for c in clients))
        measuring = True
        began = time.perf_counter()
        stop_at = began + float(spec["duration"])
        await asyncio.gather(*(worker(c) for c in clients))
        wall = time.perf_counter() - began
    finally:
        for c in clients:
            await c.aclose()
    return figures(latencies, wall, statuses, errors)


# ---------------------------------------------------------------------------- raw load client (child)


class _RawConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends prepared bytes and reads one answer at a time.

    Only what these answers need: a status line, headers with Content-Length, a body. No pool, no
    header objects, no URL parsing per request: per request it costs a small fraction of httpx."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            line_end = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        del self.buffer[: end + 4 + length]
        self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    async def request(self, data: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


async def raw_client_main(spec: dict[str, Any]) -> dict[str, Any]:
    from urllib.parse import urlsplit

    loop = asyncio.get_running_loop()
    where = urlsplit(spec["url"])
    host, port = where.hostname or "127.0.0.1", int(where.port or 80)
    concurrency = int(spec["concurrency"])
    common = f"Host: {host}:{port}\r\nAuthorization: Bearer {spec['token']}\r\n"
    body = json.dumps({"type": "stop"}).encode()
    prefix = uuid.uuid4().hex[:12]
    counter = 0

    def next_request() -> bytes:
        nonlocal counter
        if spec["method"] != "POST":
            return f"GET {spec['path']} HTTP/1.1\r\n{common}\r\n".encode()
        counter += 1
        return (f"POST {spec['path']} HTTP/1.1\r\n{common}Content-Type: application/json\r\n"
                f"Idempotency-Key: {prefix}-{counter}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip

    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors = 0
    measuring = False
    stop_at = 0.0

    async def connect() -> _RawConnection:
        _, conn = await loop.create_connection(_RawConnection, host, port)
        return conn

    connections = [await connect() for _ in range(concurrency)]

    async def one(index: int, due: float | None = None) -> None:
        nonlocal errors
        started = time.perf_counter() if due is None else due
        try:
            if connections[index].closed:
                connections[index] = await connect()
            status = await connections[index].request(next_request())
        except (OSError, ConnectionError):
            errors += 1
            connections[index] = await connect()
            return
        elapsed = time.perf_counter() - started
        if measuring:
            latencies.append(elapsed)
            key = str(status)
            statuses[key] = statuses.get(key, 0) + 1

    rate = spec.get("rate")
    interval = concurrency / float(rate) if rate else 0.0

    async def worker(index: int) -> None:
        if not interval:
            while time.perf_counter() < stop_at:
                await one(index)
            return
        due = time.perf_counter() + interval * index / concurrency  # spread evenly over the interval
        while due < stop_at:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await one(index, due)
            due += interval

    try:
        stop_at = time.perf_counter() + float(spec["warmup"])
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        measuring = True
        began = time.perf_counter()
        stop_at = began + float(spec["duration"])
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall = time.perf_counter() - began
    finally:
        for conn in connections:
            if conn.transport is not None:
                conn.transport.close()
    return figures(latencies, wall, statuses, errors)


# ---------------------------------------------------------------------------- load phases (parent)


async def load(
    url: str,
    method: str,
    path: str,
    token: str,
    duration: float,
    concurrency: int,
    rate: float | None = None,
    client: str = "auto",
) -> dict[str, Any]:
    """One phase of load from a separate process: wrk for the closed loop when it is there, else
    the raw client (`--client python`: httpx for every phase)."""
    if rate is None and client in ("auto", "wrk") and shutil.which("wrk"):
        return await load_wrk(url, method, path, token, duration, concurrency)
    if client == "wrk" and rate is None:
        raise RuntimeError("wrk is not installed (Debian package `wrk`); or run with --client raw or python")
    kind = "httpx" if client == "python" else "raw"
    spec = {"url": url, "method": method, "path": path, "token": token, "duration": duration,
            "concurrency": concurrency, "warmup": 1.0, "rate": rate, "kind": kind}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--load-spec", json.dumps(spec),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), duration + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"load client failed: {err.decode()[-2000:]}")
    return {**json.loads(out.decode().strip().splitlines()[-1]), "client": kind}


async def run_wrk(url: str, method: str, path: str, token: str, seconds: int, concurrency: int) -> dict[str, Any]:
    """One wrk run (one thread, `concurrency` connections); its figures as a dict."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="oht-bench-") as script:
        script.write(WRK_SCRIPT)
        script.flush()
        argv = [
            "wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "30s", "-s", script.name,
            "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json",
            url + path, "--", uuid.uuid4().hex[:12], method, json.dumps({"type": "stop"}),
        ]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {err.decode()[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


async def load_wrk(url: str, method: str, path: str, token: str, duration: float, concurrency: int) -> dict[str, Any]:
    """A one-second warm-up run, then the measured run, in the shape the Python client reports."""
    await run_wrk(url, method, path, token, 1, concurrency)
    seconds = max(1, round(duration))
    figures = await run_wrk(url, method, path, token, seconds, concurrency)
    requests = int(figures["requests"])
    ok = requests - int(figures["non_2xx"])
    return {
        "requests": requests,
        "rps": round(requests / (figures["duration_us"] / 1e6), 1),
        "p50_ms": round(figures["p50_us"] / 1000, 2),
        "p99_ms": round(figures["p99_us"] / 1000, 2),
        "max_ms": round(figures["max_us"] / 1000, 2),
        "statuses": {"2xx": ok, "other": int(figures["non_2xx"])},
        "errors": int(figures["socket_errors"]),
        "client": "wrk",
    }


# ---------------------------------------------------------------------------- the bare baseline (child)

SETTINGS = (("h11", "asyncio"), ("h11", "uvloop"), ("httptools", "asyncio"), ("httptools", "uvloop"))


def bare_app() -> Any:
    app = FastAPI()

    async def bearer(request: Request) -> None:
        supplied = request.headers.get("authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(supplied.encode(), BARE_TOKEN.encode()):
            raise HTTPException(status_code=401)

    @app.get("/bare")
    async def bare(_: None = Depends(bearer)) -> dict[str, Any]:
        return {"ok": True, "state": "IDLE"}

    return app


def bare_main(spec: dict[str, Any]) -> int:
    """The bare endpoint through `ApiServer` on one parser and loop, until SIGTERM; prints its URL."""
    from agent.api.server import ApiServer

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        with tempfile.TemporaryDirectory(prefix="oht-bench-bare-") as data:
            server = ApiServer(bare_app(), "127.0.0.1", 0, data, http=spec["http"])
            await server.start()
            print(json.dumps({"url": server.url, "http": server.http_name,
                              "loop": type(asyncio.get_running_loop()).__module__}), flush=True)  # fmt: skip
            await stop.wait()
            await server.stop()

    if spec["loop"] == "uvloop":
        import uvloop

        uvloop.run(serve())
    else:
        asyncio.run(serve())
    return 0


async def start_bare(http: str, loop: str) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--bare-server", json.dumps({"http": http, "loop": loop}),
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        return proc, json.loads(line)
    except (TimeoutError, ValueError):
        await stop_process(proc)
        raise RuntimeError(f"the bare server ({http}, {loop}) did not start") from None


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# ---------------------------------------------------------------------------- the agent (parent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hide_fast_packages(directory: Path) -> None:
    """Packages named httptools and uvloop whose import fails, to put first on the agent's path."""
    for name in ("httptools", "uvloop"):
        (directory / name).mkdir(parents=True)
        (directory / name / "__init__.py").write_text(f'raise ImportError("{name} hidden by bench/api.py --plain")\n')


class AgentProcess:
    """`python -m agent run --config CFG` as a child process, its output in a log file."""

    def __init__(self, work: Path, link: str, *, plain: bool) -> None:
        self.work = work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.socket = Path(f"/tmp/oht-bench-{os.getpid()}.sock")  # sun_path holds 107 bytes
        self.config = work / "agent.toml"
        self.config.write_text(
            f'[agent]\nid = "oht-bench"\ndata_dir = "{work / "data"}"\n\n'
            f'[bus]\nport = "{link}"\nrediscover_s = 0.5\n\n'
            f'[api]\nhost = "127.0.0.1"\nport = {self.port}\n\n'
            f'[core]\nsocket = "{self.socket}"\n'
        )
        path = [str(REPO)]
        if plain:
            hide_fast_packages(work / "hidden")
            path.insert(0, str(work / "hidden"))
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        self.log = work / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, stdin: str | None = None) -> None:
        done = subprocess.run([sys.executable, "-m", "agent", *args, "--config", str(self.config)], input=stdin,
                              capture_output=True, text=True, env=self.env, timeout=120)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"oht-agent {' '.join(args)} failed: {done.stderr[-2000:]}")

    def start(self) -> None:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(self.config)],
                                         stdout=out, stderr=subprocess.STDOUT, env=self.env)  # fmt: skip

    async def wait_ready(self, timeout: float = 90.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        last = ""
        async with httpx.AsyncClient(base_url=self.url, timeout=5.0) as c:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    break
                try:
                    answer = await c.get("/readyz")
                    if answer.status_code == 200:
                        return
                    last = answer.text
                except httpx.HTTPError as exc:
                    last = repr(exc)
                await asyncio.sleep(0.2)
        raise RuntimeError(f"the agent was not ready ({last}):\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def gateway_settings(self) -> dict[str, str | None]:
        """Which parser and loop the (last started) gateway logged."""
        text = self.log_text()
        http = re.findall(r"API listening on \S+ \(HTTP/1\.1 by (.*)\)$", text, re.M)
        loop = re.findall(r"event loop: (.*)$", text, re.M)
        return {"http": http[-1] if http else None, "loop": loop[-1] if loop else None}

    def warnings(self, limit: int = 40) -> list[str]:
        """The agent's WARNING and ERROR lines (and the launcher's), folded: one line per kind of
        message (ids and numbers aside), with how often it came and when first and last."""
        kinds: dict[str, list[Any]] = {}  # key -> [count, first line, last time]
        for line in self.log_text().splitlines():
            parts = line.split(maxsplit=3)
            if line.startswith("oht-agent run:"):  # a child that exited, and was started again
                when, text = "", line
            elif len(parts) == 4 and parts[2] in ("WARNING", "ERROR", "CRITICAL"):
                when, text = parts[1], f"{parts[2]} {parts[3]}"
            else:
                continue
            key = re.sub(
                r"\d+", "#", re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<id>", text)
            )[:100]
            if key in kinds:
                kinds[key][0] += 1
                kinds[key][2] = when
            else:
                kinds[key] = [1, f"{parts[0]} {when} {text}" if when else text, when]
        out = [
            f"{count:6d} x  {first}" + (f"  (last at {last})" if count > 1 else "")
            for count, first, last in kinds.values()
        ]
        return out if len(out) <= limit else [*out[:limit], f"    ({len(out) - limit} more kinds)"]

    def stop(self) -> None:
        from drivers.sim.client import terminate

        if self.proc is not None:
            terminate(self.proc, 30)
        self.socket.unlink(missing_ok=True)


async def read_status(url: str, token: str) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10.0) as c:
        answer = await c.get("/api/v1/status")
    answer.raise_for_status()
    return answer.json()  # type: ignore[no-any-return]


async def measure(work: Path, link: str, duration: float, concurrency: int, client: str, plain: bool) -> dict[str, Any]:
    import httpx

    agent = AgentProcess(work, link, plain=plain)
    agent.cli("user", "add", "bench", "--role", "operator", "--password-stdin", stdin=PASSWORD + "\n")
    agent.start()
    try:
        await agent.wait_ready()
        async with httpx.AsyncClient(base_url=agent.url, timeout=10.0) as c:
            r = await c.post("/api/v1/auth/login", json={"username": "bench", "password": PASSWORD})
            r.raise_for_status()
            token = r.json()["token"]
        phases: dict[str, dict[str, Any]] = {}

        async def phase(name: str, url: str, method: str, path: str, credential: str, rate: float | None) -> None:
            logging.getLogger("bench").warning("phase %s", name)
            figures = await load(url, method, path, credential, duration, concurrency, rate, client)
            status = await read_status(agent.url, token)
            lag = status["loop"]
            faults = [f.get("code") for f in status["verdict"].get("faults", [])]
            ok = sum(count for code, count in figures["statuses"].items() if code.startswith("2"))
            ok_rps = round(figures["rps"] * ok / figures["requests"], 1) if figures["requests"] else 0.0
            phases[name] = {**figures, "ok_rps": ok_rps, "core_lag_p99_ms": lag["lag_p99_ms"],
                            "core_lag_max_ms": lag["lag_max_ms"], "faults": faults}  # fmt: skip

        bare_settings: dict[str, dict[str, str]] = {}
        for http, loop in SETTINGS:
            proc, served = await start_bare(http, loop)
            try:
                await phase(f"bare_{http}_{loop}", served["url"], "GET", "/bare", BARE_TOKEN, None)
                bare_settings[f"bare_{http}_{loop}"] = {"http": served["http"], "loop": served["loop"]}
            finally:
                await stop_process(proc)
        best = max(bare_settings, key=lambda name: phases[name]["rps"])
        await phase("status", agent.url, "GET", "/api/v1/status", token, None)
        await phase("commands", agent.url, "POST", "/api/v1/commands", token, None)
        http, loop = best.split("_")[1:]
        proc, served = await start_bare(http, loop)
        try:
            await phase("bare_paced", served["url"], "GET", "/bare", BARE_TOKEN, PACED_RATE)
        finally:
            await stop_process(proc)
        await phase("status_paced", agent.url, "GET", "/api/v1/status", token, PACED_RATE)
        await phase("commands_paced", agent.url, "POST", "/api/v1/commands", token, PACED_RATE)
        status = await read_status(agent.url, token)
        warnings = agent.warnings()
        if warnings:  # so that a fault can be placed against the phases' start times above
            print("agent log, warnings and errors:\n" + "\n".join(warnings), file=sys.stderr)
        return {"phases": phases, "bare_best": best, "bare_settings": bare_settings,
                "gateway": agent.gateway_settings(), "state_after": status["state"],
                "faults_after": [f.get("code") for f in status["verdict"].get("faults", [])]}  # fmt: skip
    finally:
        agent.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per phase (default 5)")
    parser.add_argument("--concurrency", type=int, default=50, help="connections and workers (default 50)")
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "raw", "python"),
        default="auto",
        help="load generator: wrk for the closed loop when installed and the raw client otherwise "
        "(auto), or insist on one (python: httpx)",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="hide httptools and uvloop from the agent: its gateway runs on h11 and asyncio",
    )
    parser.add_argument("--load-spec", help=argparse.SUPPRESS)  # the Python load client's own run
    parser.add_argument("--bare-server", help=argparse.SUPPRESS)  # the baseline's own process
    args = parser.parse_args()
    if args.load_spec:
        spec = json.loads(args.load_spec)
        if spec["kind"] == "httpx":
            print(json.dumps(asyncio.run(client_main(spec))))
            return 0
        try:  # the client is not what is measured: the cheaper its loop, the less it takes from the servers
            import uvloop
        except ImportError:
            print(json.dumps(asyncio.run(raw_client_main(spec))))
        else:
            print(json.dumps(uvloop.run(raw_client_main(spec))))
        return 0
    if args.bare_server:
        return bare_main(json.loads(args.bare_server))

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from drivers.sim.client import SimProcess

    with tempfile.TemporaryDirectory(prefix="oht-bench-api-") as tmp:
        work = Path(tmp)
        sim = SimProcess(work / "bus.tty", work / "bus.ctl", seed=7)
        sim.start()
        try:
            result = asyncio.run(measure(work, sim.link, args.duration, args.concurrency, args.client, args.plain))
        finally:
            sim.stop()
    phases = result["phases"]
    status_p99 = phases["status"]["p99_ms"]
    best_rps = phases[result["bare_best"]]["rps"]
    ratio = round(phases["status"]["rps"] / best_rps, 3) if best_rps else None
    summary = {
        "bench": "api",
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "cpus": os.cpu_count(),
        "plain": args.plain,
        "gateway_http": result["gateway"]["http"],
        "gateway_loop": result["gateway"]["loop"],
        **{f"{name}_{key}": value for name, figures in phases.items() for key, value in figures.items()
           if key in ("rps", "ok_rps", "p50_ms", "p99_ms", "requests", "errors", "statuses", "core_lag_p99_ms",
                       "core_lag_max_ms", "faults", "client")},
        "bare_best": result["bare_best"],
        "bare_best_rps": best_rps,
        "status_p99_ms": status_p99,
        "commands_p99_ms": phases["commands"]["p99_ms"],
        "ratio_vs_bare": ratio,
        "paced_rate": PACED_RATE,
        "targets": {
            "status_p99_ms": {"max": 25.0, "value": status_p99, "concurrency": args.concurrency,
                              "met": status_p99 <= 25.0},
            "ratio_vs_bare": {"min": 0.5, "value": ratio, "met": ratio is not None and ratio >= 0.5},
        },
        "state_after": result["state_after"],
        "faults_after": result["faults_after"],
    }  # fmt: skip
    for name, figures in phases.items():
        print(f"{name:26s} {figures['client']:5s} {figures['rps']:8.1f} req/s"
              f"  p50 {figures['p50_ms']:7.2f} ms  p99 {figures['p99_ms']:7.2f} ms"
              f"  core lag p99 {figures['core_lag_p99_ms']} ms max {figures['core_lag_max_ms']} ms"
              f"  statuses {figures['statuses']}  errors {figures['errors']}  faults {figures['faults']}",
              file=sys.stderr)  # fmt: skip
    print(f"gateway: {result['gateway']}; baseline: {result['bare_best']}", file=sys.stderr)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
