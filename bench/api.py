"""Benchmark of the local API: the real agent (runtime + controller on the simulator) against a
bare FastAPI endpoint served the same way, in the same run.

    .venv/bin/python bench/api.py [--duration SECONDS] [--concurrency N]

What runs: the simulator as a process on a pty; the agent's `Runtime` in this process (its
event loop carries bus, controller, store and API, as in the daemon); the API and, next to it,
a bare `async def` endpoint with a trivial bearer check, both through `ApiServer` (uvicorn,
same settings) on 127.0.0.1. The load comes from a separate process, one phase at a time, each
for a fixed duration after a one-second warm-up:

    bare      GET /bare                      (the baseline)
    status    GET /api/v1/status             (session check, status document, middleware)
    commands  POST /api/v1/commands          (a unique Idempotency-Key each, type "stop":
                                              validated, committed with fsync, executed)

Each runs twice: closed loop (every connection sends its next request as soon as it has the
answer: the most the server takes, where latency is mostly queueing, p99 ~ N / throughput) and
paced (`*_paced`: the same connections offering PACED_RATE requests/s in total, latency counted
from the scheduled send time: what a client sees under a steady load).

Load generators. Closed loop: `wrk` (Debian package `wrk`; one thread, N connections, a Lua
script gives each POST its own Idempotency-Key), so the client takes little of the two cores it
shares with the agent. Paced, or when wrk is missing (`--client python`): a Python process with
one httpx.AsyncClient per connection. The JSON names the generator of each phase.

The last line is one JSON object: per phase p50/p99 (ms), requests/s and how late the agent's
event loop ran a 5 ms timer meanwhile (the control loop shares that loop), plus `status_p99_ms`,
`commands_p99_ms` (closed loop), `ratio_vs_bare` (status req/s / bare req/s), the targets
(status p99 <= 25 ms, ratio >= 0.5) with whether they were met, and the faults the agent had
latched by the end (none expected: the API must not starve the bus). Client and server share
the machine's cores, so absolute figures are a floor; the ratio is the figure to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import shutil
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

from drivers.modbus.stats import ranked  # noqa: E402

PASSWORD = "bench password, long enough"
BARE_TOKEN = "bench-bare-token-0123456789"
PACED_RATE = 200.0  # requests/s offered in the paced phases (spread over all connections)

# wrk script: a unique Idempotency-Key per POST (thread-local counter behind a per-run prefix,
# one wrk thread), and one JSON line of figures at the end (wrk counts latency in microseconds).
WRK_SCRIPT = r"""
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
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"non_2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


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
        httpx.AsyncClient(base_url=spec["url"], headers=headers, limits=limits, timeout=30.0) for _ in range(concurrency)
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


# ---------------------------------------------------------------------------- server side (parent)


class LagProbe:
    """How late the agent's event loop runs a 5 ms timer (the control loop shares this loop)."""

    def __init__(self) -> None:
        self.lags: list[float] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.005
            await asyncio.sleep(0.005)
            self.lags.append(max(0.0, loop.time() - due))

    def summary(self) -> dict[str, float]:
        values = sorted(self.lags)
        return {"loop_lag_p99_ms": round(ranked(values, 99) * 1000, 1), "loop_lag_max_ms": round(values[-1] * 1000, 1) if values else 0.0}


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


async def load(
    url: str, method: str, path: str, token: str, duration: float, concurrency: int, rate: float | None = None,
    client: str = "auto",
) -> dict[str, Any]:
    """One phase of load from a separate process: wrk for the closed loop when it is there."""
    if rate is None and client != "python" and shutil.which("wrk"):
        return await load_wrk(url, method, path, token, duration, concurrency)
    if client == "wrk" and rate is None:
        raise RuntimeError("wrk is not installed (Debian package `wrk`); or run with --client python")
    spec = {"url": url, "method": method, "path": path, "token": token, "duration": duration,
            "concurrency": concurrency, "warmup": 1.0, "rate": rate}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--load-spec", json.dumps(spec),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), duration + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"load client failed: {err.decode()[-2000:]}")
    return {**json.loads(out.decode().strip().splitlines()[-1]), "client": "httpx"}


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


async def serve_and_measure(work: Path, link: str, duration: float, concurrency: int, client: str) -> dict[str, Any]:
    import httpx

    from agent.api import ApiServer, ApiSettings, create_app
    from agent.auth.principal import CallContext, cli_principal
    from agent.config import validate_config
    from agent.runtime import Runtime

    data = work / "data"
    cfg = validate_config({"agent": {"id": "oht-bench", "data_dir": str(data)}, "bus": {"port": link, "rediscover_s": 0.5}})
    runtime = Runtime(cfg)
    servers: list[Any] = []
    try:
        await runtime.start()
        assert runtime.controller is not None and runtime.db is not None
        deadline = time.monotonic() + 30
        while not runtime.controller.ready()[0]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent not ready: {runtime.controller.ready()[1]}")
            await asyncio.sleep(0.1)
        app = create_app(runtime.controller, runtime.db, ApiSettings(agent_id="oht-bench", data_dir=data))
        await app.state.api.auth.create_user(cli_principal("bench"), "bench", "operator", PASSWORD, CallContext())
        api = ApiServer(app, "127.0.0.1", 0, data)
        bare = ApiServer(bare_app(), "127.0.0.1", 0, data)
        for server in (api, bare):
            await server.start()
            servers.append(server)
        async with httpx.AsyncClient(base_url=api.url) as c:
            r = await c.post("/api/v1/auth/login", json={"username": "bench", "password": PASSWORD})
            r.raise_for_status()
            token = r.json()["token"]
        plan = {
            "bare": (bare.url, "GET", "/bare", BARE_TOKEN, None),
            "status": (api.url, "GET", "/api/v1/status", token, None),
            "commands": (api.url, "POST", "/api/v1/commands", token, None),
            "bare_paced": (bare.url, "GET", "/bare", BARE_TOKEN, PACED_RATE),
            "status_paced": (api.url, "GET", "/api/v1/status", token, PACED_RATE),
            "commands_paced": (api.url, "POST", "/api/v1/commands", token, PACED_RATE),
        }
        phases = {}
        for name, (url, method, path, credential, rate) in plan.items():
            logging.getLogger("bench").warning("phase %s", name)  # so faults logged below can be placed
            probe = LagProbe()
            task = asyncio.create_task(probe.run())
            phases[name] = await load(url, method, path, credential, duration, concurrency, rate, client)
            task.cancel()
            phases[name].update(probe.summary())
        verdict = runtime.controller.status()["verdict"]
        return {"phases": phases, "faults_after": [f.get("code") for f in verdict.get("faults", [])],
                "state_after": runtime.controller.status()["state"]}  # fmt: skip
    finally:
        for server in servers:
            await server.stop()
        await runtime.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per phase (default 5)")
    parser.add_argument("--concurrency", type=int, default=50, help="connections and workers (default 50)")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                        help="closed-loop load generator: wrk when installed (auto), or insist on one")
    parser.add_argument("--load-spec", help=argparse.SUPPRESS)  # the Python load client's own run
    args = parser.parse_args()
    if args.load_spec:
        print(json.dumps(asyncio.run(client_main(json.loads(args.load_spec)))))
        return 0

    logging.basicConfig(level=logging.WARNING, format="%(relativeCreated)7.0f %(levelname)s %(name)s: %(message)s")
    from drivers.sim.client import SimProcess

    with tempfile.TemporaryDirectory(prefix="oht-bench-api-") as tmp:
        work = Path(tmp)
        sim = SimProcess(work / "bus.tty", work / "bus.ctl", seed=7)
        sim.start()
        try:
            result = asyncio.run(serve_and_measure(work, sim.link, args.duration, args.concurrency, args.client))
        finally:
            sim.stop()
    phases = result["phases"]
    status_p99 = phases["status"]["p99_ms"]
    ratio = round(phases["status"]["rps"] / phases["bare"]["rps"], 3) if phases["bare"]["rps"] else None
    summary = {
        "bench": "api",
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "cpus": os.cpu_count(),
        **{f"{name}_{key}": value for name, figures in phases.items() for key, value in figures.items()
           if key in ("rps", "p50_ms", "p99_ms", "requests", "errors", "statuses", "loop_lag_p99_ms", "loop_lag_max_ms",
                       "client")},
        "ratio_vs_bare": ratio,
        "paced_rate": PACED_RATE,
        "targets": {"status_p99_ms": 25.0, "ratio_vs_bare": 0.5},
        "status_p99_ok": status_p99 <= 25.0,
        "ratio_ok": ratio is not None and ratio >= 0.5,
        "state_after": result["state_after"],
        "faults_after": result["faults_after"],
    }  # fmt: skip
    for name, figures in phases.items():
        print(f"{name:15s} {figures['client']:5s} {figures['rps']:8.1f} req/s  p50 {figures['p50_ms']:7.2f} ms  p99 {figures['p99_ms']:7.2f} ms"
              f"  loop lag p99 {figures['loop_lag_p99_ms']} ms  statuses {figures['statuses']}  errors {figures['errors']}",
              file=sys.stderr)  # fmt: skip
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
