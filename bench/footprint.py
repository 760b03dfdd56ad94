"""Footprint benchmark: what the agent costs the carriage's computer while it only polls.

    .venv/bin/python bench/footprint.py [--idle S] [--starts N]

The last line printed is one JSON object. What it measures, black box, from /proc:

- `start_to_ready_s`: from spawning `python -m agent run` to the first `GET /readyz` 200 (the
  core has bound every mandatory module, the gateway serves), the median of `--starts` cold
  starts on one data directory;
- `rss_mb`: resident memory of the core, of the gateway and of both together, read after the
  agent has polled the simulated modules for `--idle` seconds; `rss_growth_pct` compares the
  core's and the gateway's RSS at the start and at the end of that window;
- `idle_cpu_pct`: CPU time (user + system) of each process over the window, in percent of one
  core;
- `db_growth_mb_per_h`: growth of the data directory (database, WAL, keys) over the window,
  scaled to an hour. Telemetry goes to the outbox, whose bulk class is pruned at its quota and
  age, so the growth is bounded by `[upstream]` quotas; `db_bounded` says whether the size at
  the end is within them.

Baseline, measured in the same run: `bare_rss_mb`, the RSS of a bare interpreter that imports
the same runtime libraries as the two halves (serial, aiosqlite, pydantic, cryptography for the
core; fastapi, uvicorn, paho for the gateway) and does nothing. `rss_vs_bare` is the agent's
total over that baseline: what the agent's own code and state cost on top of its libraries, on
a machine whose absolute figures vary with the Python build.

The simulator runs as its own process with the firmware's timing (safety module one frame per
100 ms tick, motor driver one per 10 ms); it is not counted in the agent's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drivers.sim.client import SimProcess  # noqa: E402 - after the path set-up

HOST = "127.0.0.1"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
TARGET_CORE_RSS_MB, TARGET_TOTAL_RSS_MB, TARGET_START_S = 80.0, 160.0, 2.0
CORE_LIBS = "import serial, aiosqlite, pydantic, cryptography.hazmat.primitives.asymmetric.ed25519"
GATEWAY_LIBS = "import fastapi, uvicorn, paho.mqtt.client, pydantic, aiosqlite, prometheus_client"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    fields = Path(f"/proc/{pid}/statm").read_text().split()
    return int(fields[1]) * PAGE / 2**20


def cpu_s(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    after_name = stat[stat.rindex(")") + 2 :].split()
    return (int(after_name[11]) + int(after_name[12])) / TICKS  # utime, stime


def children_by_name(launcher: int) -> dict[str, int]:
    """The launcher's children by role: it names them oht-core and oht-gateway."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == launcher and comm in ("oht-core", "oht-gateway"):
            found[comm.removeprefix("oht-")] = int(entry.name)
    return found


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def write_config(work: Path, link: str, port: int) -> Path:
    cfg = work / "agent.toml"
    cfg.write_text(
        f'[agent]\nid = "oht-bench-footprint"\ndata_dir = "{work / "data"}"\n\n'
        f'[bus]\nport = "{link}"\nscan = [2, 3, 4, 5]\n\n'
        f'[api]\nhost = "{HOST}"\nport = {port}\n\n[core]\nsocket = "{work / "core.sock"}"\n'
    )
    return cfg


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def start_agent(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env(),
            cwd=REPO,
            start_new_session=True,
        )


def wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=1.0) as client:
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise SystemExit(f"the agent exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.02)
    raise SystemExit(f"/readyz not 200 within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def bare_rss_mb() -> float:
    """RSS of interpreters that only import the halves' libraries (the baseline)."""
    total = 0.0
    for libs in (CORE_LIBS, GATEWAY_LIBS):
        probe = subprocess.Popen(
            [sys.executable, "-c", f"{libs}\nimport sys\nprint('ready', flush=True)\nsys.stdin.read()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env(),
        )
        assert probe.stdout is not None and probe.stdin is not None
        probe.stdout.readline()
        total += rss_mb(probe.pid)
        probe.stdin.close()
        probe.wait(10)
    return total


def measure(idle_s: float, starts: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="oht-bench-footprint-") as tmp:
        work = Path(tmp)
        log = work / "agent.log"
        sim = SimProcess(work / "bus.tty", work / "bus.ctl", seed=5, new_session=True).start()
        try:
            port = free_port()
            cfg = write_config(work, sim.link, port)
            start_times = []
            for _ in range(starts):
                t0 = time.monotonic()
                proc = start_agent(cfg, log)
                try:
                    wait_ready(port, proc, log)
                    start_times.append(time.monotonic() - t0)
                finally:
                    stop(proc)
            proc = start_agent(cfg, log)
            try:
                wait_ready(port, proc, log)
                pids = children_by_name(proc.pid)
                if set(pids) != {"core", "gateway"}:
                    raise SystemExit(f"expected a core and a gateway under the launcher, found {pids}")
                time.sleep(5.0)  # past the start-up: caches filled, first pruning pass done
                rss0 = {role: rss_mb(pid) for role, pid in pids.items()}
                cpu0 = {role: cpu_s(pid) for role, pid in pids.items()}
                db0, t0 = dir_mb(work / "data"), time.monotonic()
                time.sleep(idle_s)
                wall = time.monotonic() - t0
                rss1 = {role: rss_mb(pid) for role, pid in pids.items()}
                cpu1 = {role: cpu_s(pid) for role, pid in pids.items()}
                db1 = dir_mb(work / "data")
                with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=5.0) as client:
                    state = client.get("/healthz").json()
            finally:
                stop(proc)
        finally:
            sim.stop()
    bare = bare_rss_mb()
    total = rss1["core"] + rss1["gateway"]
    quota_mb = (64 + 128 + 32) + 8  # the [upstream] quotas (defaults) plus the tables beside the outbox
    return {
        "start_to_ready_s": round(statistics.median(start_times), 3),
        "start_to_ready_all_s": [round(t, 3) for t in start_times],
        "rss_mb": {"core": round(rss1["core"], 1), "gateway": round(rss1["gateway"], 1), "total": round(total, 1)},
        "rss_growth_pct": {role: round(100 * (rss1[role] - rss0[role]) / rss0[role], 2) for role in rss0},
        "idle_cpu_pct": {role: round(100 * (cpu1[role] - cpu0[role]) / wall, 2) for role in cpu0}
        | {"total": round(100 * sum(cpu1[r] - cpu0[r] for r in cpu0) / wall, 2)},
        "db_mb": round(db1, 3),
        "db_growth_mb_per_h": round((db1 - db0) * 3600 / wall, 2),
        "db_bounded": db1 <= quota_mb,
        "idle_s": round(wall, 1),
        "bare_rss_mb": round(bare, 1),
        "rss_vs_bare": round(total / bare, 2),
        "healthz_after": state,
        "targets": {
            "core_rss_mb": TARGET_CORE_RSS_MB,
            "total_rss_mb": TARGET_TOTAL_RSS_MB,
            "start_to_ready_s": TARGET_START_S,
        },
        "within_targets": rss1["core"] <= TARGET_CORE_RSS_MB
        and total <= TARGET_TOTAL_RSS_MB
        and statistics.median(start_times) <= TARGET_START_S,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle polling measured (default 60)")
    parser.add_argument("--starts", type=int, default=3, help="cold starts timed (default 3)")
    args = parser.parse_args()
    result = measure(args.idle, args.starts)
    r = result["rss_mb"]
    print(
        f"start to ready {result['start_to_ready_s']} s; RSS core {r['core']} MB, gateway {r['gateway']} MB,"
        f" total {r['total']} MB ({result['rss_vs_bare']}x bare imports); idle CPU {result['idle_cpu_pct']} %;"
        f" data dir {result['db_mb']} MB, +{result['db_growth_mb_per_h']} MB/h",
        file=sys.stderr,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
