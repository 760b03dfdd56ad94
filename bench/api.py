"""Benchmark of the local API: the real agent (runtime + controller on the simulator) against a
bare FastAPI endpoint served the same way, in the same run.

    .venv/bin/python bench/api.py [--duration SECONDS] [--concurrency N]

What runs: the simulator as a process on a pty; the agent's `Runtime` in this process (its
event loop carries bus, controller, store and API, as in the daemon); the API and, next to it,
a bare `async def` endpoint with a trivial bearer check, both through `ApiServer` (uvicorn,
same settings) on 127.0.0.1. The load comes from a separate process (httpx.AsyncClient, N
connections, N workers), one phase at a time, each for a fixed duration after a warm-up:

    bare      GET /bare                      (the baseline)
    status    GET /api/v1/status             (session check, status document, middleware)
    commands  POST /api/v1/commands          (a unique Idempotency-Key each, type "stop":
                                              validated, committed with fsync, executed)

Each runs twice: closed loop (every connection sends its next request as soon as it has the
answer: the most the server takes, where latency is mostly queueing, p99 ~ N / throughput) and
paced (`*_paced`: the same connections offering PACED_RATE requests/s in total, latency counted
from the scheduled send time: what a client sees under a steady load).

The last line is one JSON object: per phase p50/p99 (ms), requests/s and how late the agent's
event loop ran a 5 ms timer meanwhile (the control loop shares that loop), plus `status_p99_ms`,
`commands_p99_ms` (closed loop), `ratio_vs_bare` (status req/s / bare req/s) and the targets
(status p99 <= 25 ms, ratio >= 0.5) with whether they were met. Client and server share the
machine's cores (the client is a Python process too), so absolute figures are a floor; the
ratio is the figure to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
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

PASSWORD = "bench password, long enough"
BARE_TOKEN = "bench-bare-token-0123456789"
PACED_RATE = 200.0  # requests/s offered in the paced phases (spread over all connections)


# ---------------------------------------------------------------------------- load client (child)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


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
        "p50_ms": round(percentile(values, 0.50) * 1000, 2),
        "p99_ms": round(percentile(values, 0.99) * 1000, 2),
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
        return {"loop_lag_p99_ms": round(percentile(values, 0.99) * 1000, 1), "loop_lag_max_ms": round(values[-1] * 1000, 1) if values else 0.0}


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
    url: str, method: str, path: str, token: str, duration: float, concurrency: int, rate: float | None = None
) -> dict[str, Any]:
    spec = {"url": url, "method": method, "path": path, "token": token, "duration": duration,
            "concurrency": concurrency, "warmup": 1.0, "rate": rate}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", json.dumps(spec),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), duration + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"load client failed: {err.decode()[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


async def serve_and_measure(work: Path, link: str, duration: float, concurrency: int) -> dict[str, Any]:
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
            phases[name] = await load(url, method, path, credential, duration, concurrency, rate)
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
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(asyncio.run(client_main(json.loads(args.client)))))
        return 0

    logging.basicConfig(level=logging.WARNING, format="%(relativeCreated)7.0f %(levelname)s %(name)s: %(message)s")
    from drivers.sim.client import SimProcess

    with tempfile.TemporaryDirectory(prefix="oht-bench-api-") as tmp:
        work = Path(tmp)
        sim = SimProcess(work / "bus.tty", work / "bus.ctl", seed=7)
        sim.start()
        try:
            result = asyncio.run(serve_and_measure(work, sim.link, args.duration, args.concurrency))
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
           if key in ("rps", "p50_ms", "p99_ms", "requests", "errors", "statuses", "loop_lag_p99_ms", "loop_lag_max_ms")},
        "ratio_vs_bare": ratio,
        "paced_rate": PACED_RATE,
        "targets": {"status_p99_ms": 25.0, "ratio_vs_bare": 0.5},
        "status_p99_ok": status_p99 <= 25.0,
        "ratio_ok": ratio is not None and ratio >= 0.5,
        "state_after": result["state_after"],
        "faults_after": result["faults_after"],
    }  # fmt: skip
    for name, figures in phases.items():
        print(f"{name:15s} {figures['rps']:8.1f} req/s  p50 {figures['p50_ms']:7.2f} ms  p99 {figures['p99_ms']:7.2f} ms"
              f"  loop lag p99 {figures['loop_lag_p99_ms']} ms  statuses {figures['statuses']}  errors {figures['errors']}",
              file=sys.stderr)  # fmt: skip
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
