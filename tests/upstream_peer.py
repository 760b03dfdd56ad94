"""A robot without a daemon, for the upstream tests and `bench/sync.py`: the agent's own outbox,
device key, MQTT link and sender (agent/sync/uplink.py) on a database in a temporary directory.

Why not the daemon: the sender lives in the gateway and reads only the database; the core's only
part in sync is writing outbox records, which `fill` does with the store's own insert (the
trigger numbers each stream as it does for the core). Fifty robots in one process stay cheap.

`python -m tests.upstream_peer DATA_DIR --port P` runs one as a process of its own (for kill -9):
it prints `READY` once connected and runs until SIGTERM or SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import UpstreamSection
from agent.ids import new_id
from agent.store.clock import now_ts
from agent.store.database import Database
from agent.store.outbox import Outbox, encode_payload
from agent.store.streams import DEFAULT_LIMITS, Limits
from agent.sync.identity import DeviceIdentity, load_or_create
from agent.sync.mqtt_link import Incoming, MqttLink, MqttSettings, ack_topic, agent_link
from agent.sync.uplink import Uplink

__all__ = ["Peer", "fill", "keys_text", "ledger_rows", "outbox_ids", "payloads"]

_CHUNK = 2000  # rows per unit of work: a unit must stay well inside the writer's timeout


def payloads(kind: str, n: int, *, size: int = 200, start: int = 0) -> list[Any]:
    """`n` payloads of about `size` bytes of JSON for `kind`; telemetry samples have distinct keys
    (nothing coalesces) unless the caller makes its own."""
    pad = "x" * max(0, size - 60)
    if kind == "telemetry":
        return [{"source": "travel", "key": f"k{start + i}", "value": start + i, "pad": pad} for i in range(n)]
    return [{"n": start + i, "pad": pad} for i in range(n)]


async def fill(db: Database, kind: str, items: Sequence[Any]) -> None:
    """Insert outbox records of `kind` the way `agent.store.outbox.add` does (same statement, same
    trigger), in large units: a backlog of 100,000 is made in seconds, not minutes."""
    for start in range(0, len(items), _CHUNK):
        rows = [(new_id(), kind, now_ts(), encode_payload(kind, p)) for p in items[start : start + _CHUNK]]

        async def unit(conn: Any, rows: list[tuple[str, str, str, str]] = rows) -> None:
            await conn.executemany("INSERT INTO outbox (id, kind, created_at, payload) VALUES (?, ?, ?, ?)", rows)

        await db.write(unit)


def keys_text(devices: dict[str, DeviceIdentity]) -> str:
    """The central consumer's `--device-keys` file pinning `devices`."""
    return "".join(f'"{agent}" = "{d.public.base64()}"\n' for agent, d in devices.items())


def outbox_ids(data_dir: Path) -> dict[str, dict[int, str]]:
    """stream -> seq -> record id of what the outbox holds now (read with plain sqlite3)."""
    out: dict[str, dict[int, str]] = {}
    with contextlib.closing(sqlite3.connect(data_dir / "agent.db")) as conn:
        for stream, seq, rid in conn.execute("SELECT stream, stream_seq, id FROM outbox"):
            out.setdefault(stream, {})[int(seq)] = rid
    return out


def ledger_rows(db: Path, agent: str) -> dict[str, list[tuple[int, str, str, str]]]:
    """stream -> [(seq, id, kind, body)] in seq order, as the central consumers stored them."""
    out: dict[str, list[tuple[int, str, str, str]]] = {}
    if not db.exists():
        return out
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        rows = conn.execute(
            "SELECT stream, seq, id, kind, body FROM records WHERE agent = ? ORDER BY stream, seq", (agent,)
        )
        for stream, seq, rid, kind, body in rows:
            out.setdefault(stream, []).append((int(seq), rid, kind, body))
    return out


@dataclass
class Peer:
    """One robot's upstream side. `open()`, `fill(...)`, `start()`, ..., `stop()`."""

    data_dir: Path
    settings: MqttSettings
    agent_id: str
    window: int = UpstreamSection().window
    ack_timeout_s: float = 30.0
    limits: Limits = DEFAULT_LIMITS
    db: Database | None = None
    outbox: Outbox | None = None
    identity: DeviceIdentity | None = None
    link: MqttLink | None = None
    uplink: Uplink | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def open(self) -> Peer:
        self.db = await Database.open(self.data_dir)
        self.outbox = Outbox(self.db, self.limits)
        self.identity, _ = load_or_create(self.data_dir)
        return self

    async def fill(self, kind: str, items: Sequence[Any]) -> None:
        assert self.db is not None, "open() first"
        await fill(self.db, kind, items)

    async def start(self) -> None:
        assert self.outbox is not None and self.identity is not None, "open() first"
        self.link = agent_link(self.settings, self.agent_id)
        self.uplink = Uplink(
            self.outbox, self.link, self.identity, self.agent_id, window=self.window, ack_timeout_s=self.ack_timeout_s
        )
        await self.link.start()
        acks = ack_topic(self.agent_id)
        uplink = self.uplink

        async def route(message: Incoming) -> None:
            if message.topic == acks:
                await uplink.on_ack(message.payload)

        self._tasks = [
            asyncio.create_task(self.link.dispatch(route), name=f"peer-{self.agent_id}-acks"),
            asyncio.create_task(uplink.run(), name=f"peer-{self.agent_id}-uplink"),
        ]

    async def unacked(self) -> int:
        assert self.outbox is not None
        return sum(b.unacked for b in (await self.outbox.backlog()).values())

    async def drained(self, timeout: float, poll_s: float = 0.05) -> None:
        """Wait until the consumers have acknowledged every record (the outbox is empty)."""
        async with asyncio.timeout(timeout):
            while await self.unacked():
                for task in self._tasks:
                    if task.done():
                        task.result()  # a sender that died says why
                await asyncio.sleep(poll_s)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.link is not None:
            await self.link.stop()
        if self.db is not None:
            await self.db.close()


async def run_many(peers: Iterable[Peer], fn: Callable[[Peer], Any]) -> list[Any]:
    return list(await asyncio.gather(*(fn(p) for p in peers)))


# ---------------------------------------------------------------- as a process of its own
async def _serve(args: argparse.Namespace) -> int:
    settings = MqttSettings(
        host=args.host, port=args.port, keepalive_s=5, connect_timeout_s=2.0, publish_timeout_s=2.0,
        backoff_initial_s=0.05, backoff_max_s=0.5,
    )  # fmt: skip
    peer = await Peer(args.data_dir, settings, args.agent, window=args.window, ack_timeout_s=args.ack_timeout).open()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        started = time.monotonic()
        await peer.start()
        assert peer.link is not None
        await peer.link.wait_subscribed(30)
        print("READY", flush=True)
        if args.exit_when_drained:
            print("DRAINED " + json.dumps(await _drain_report(peer, started)), flush=True)
        else:
            await stop.wait()
    finally:
        await peer.stop()
    return 0


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0  # pragma: no cover - Linux only


async def _drain_report(peer: Peer, started: float) -> dict[str, float]:
    """Wait for an empty outbox, sampling this process's RSS; for bench/sync.py."""
    rss_start, rss_max = _rss_mb(), 0.0
    while await peer.unacked():
        rss_max = max(rss_max, _rss_mb())
        await asyncio.sleep(0.05)
    return {"drain_s": time.monotonic() - started, "rss_start_mb": rss_start, "rss_max_mb": max(rss_max, _rss_mb())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.upstream_peer")
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--agent", default="oht-001")
    parser.add_argument("--window", type=int, default=UpstreamSection().window)
    parser.add_argument("--ack-timeout", type=float, default=2.0)
    parser.add_argument(
        "--exit-when-drained", action="store_true", help="print DRAINED {json} once the outbox is empty, and exit"
    )
    return asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
