"""kill -9 mid-stream, of each process on the path up: the robot's sender, a central consumer, the broker.

Every process here is a real one: the robot (tests/upstream_peer.py: the agent's outbox, device
key, MQTT link and sender on its database), two `python -m central.consumer` sharing one ledger,
and mosquitto. The robot starts with a backlog in every stream; once the consumers have stored a
part of it, one process is killed with SIGKILL and (robot, broker) started again. Judged where the
claim is true or false, in the ledger: every record the robot wrote is stored exactly once, under
its own seq and id, no seq of any stream is missing, and the robot's outbox ends empty (it pruned
only what the consumers acknowledged).

The broker twice: without persistence a restart starts empty (what was in flight is lost, the
robot sends it again); with persistence its snapshot gives back messages that were already
delivered and acknowledged, so the consumers see them again and must store nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.store.database import Database
from agent.sync.identity import load_or_create
from drivers.sim.client import terminate
from tests.broker import Broker, mosquitto_binary, skip_reason
from tests.upstream_peer import fill, keys_text, ledger_rows, outbox_ids, payloads

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason=skip_reason())

REPO = Path(__file__).resolve().parents[2]
AGENT = "oht-001"
BACKLOG = {"command_result": 1500, "alarm": 100, "transition": 400, "audit": 400, "telemetry": 1600}
KILL_AT = 600  # records stored centrally before the kill


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )


async def _ready(proc: subprocess.Popen[bytes], word: bytes) -> None:
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 15)  # type: ignore[union-attr]
    assert line.startswith(word), (line, proc.poll())


class Site:
    """The broker, two consumer processes and the robot process, and how to start each again."""

    def __init__(self, root: Path, broker: Broker) -> None:
        self.root = root
        self.broker = broker
        self.data = root / "robot"
        self.ledger = root / "central.db"
        self.keys = root / "device-keys.toml"
        self.consumers: dict[str, subprocess.Popen[bytes]] = {}
        self.robot: subprocess.Popen[bytes] | None = None

    async def start_consumer(self, name: str) -> None:
        proc = _spawn([
            "-m", "central.consumer", "--broker", f"{self.broker.host}:{self.broker.port}", "--db", str(self.ledger),
            "--name", name, "--device-keys", str(self.keys), "--log-level", "ERROR",
        ])  # fmt: skip
        self.consumers[name] = proc
        await _ready(proc, b"READY central-")

    async def start_robot(self) -> None:
        self.robot = _spawn(
            ["-m", "tests.upstream_peer", str(self.data), "--port", str(self.broker.port), "--ack-timeout", "1"]
        )
        await _ready(self.robot, b"READY")

    def stored(self) -> int:
        with contextlib.suppress(sqlite3.OperationalError):  # the consumers create it
            with contextlib.closing(sqlite3.connect(self.ledger, timeout=5)) as conn:
                return int(conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])
        return 0

    def acked(self) -> dict[str, int]:
        with contextlib.closing(sqlite3.connect(self.ledger, timeout=5)) as conn:
            return dict(conn.execute("SELECT stream, acked FROM progress WHERE agent = ?", (AGENT,)).fetchall())

    def processes(self) -> Iterator[subprocess.Popen[bytes]]:
        yield from self.consumers.values()
        if self.robot is not None:
            yield self.robot

    def close(self) -> None:
        for proc in self.processes():
            terminate(proc)
            proc.stdout.close()  # type: ignore[union-attr]


async def _until(condition, timeout: float, what: str, poll_s: float = 0.005) -> None:  # type: ignore[no-untyped-def]
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(poll_s)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


async def _backlog(data: Path) -> dict[str, dict[int, str]]:
    db = await Database.open(data)
    try:
        for kind, n in BACKLOG.items():
            await fill(db, kind, payloads(kind, n))
    finally:
        await db.close()
    return outbox_ids(data)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("victim", ["robot", "consumer", "broker", "persistent-broker"])
async def test_kill_9_mid_stream_loses_nothing_and_stores_nothing_twice(tmp_path: Path, victim: str) -> None:
    broker = Broker(tmp_path / "broker", persistence=victim == "persistent-broker")
    site = Site(tmp_path, broker)
    wrote = await _backlog(site.data)  # the database first: it makes the data directory
    device, _ = load_or_create(site.data)
    site.keys.write_text(keys_text({AGENT: device}))
    total = sum(len(v) for v in wrote.values())
    with broker:
        try:
            await asyncio.gather(site.start_consumer("a"), site.start_consumer("b"))
            await site.start_robot()
            await _until(lambda: site.stored() >= KILL_AT, 20, f"{KILL_AT} records stored")
            if victim == "robot":
                assert site.robot is not None
                site.robot.kill()
                assert site.robot.wait(5) == -signal.SIGKILL
                site.robot.stdout.close()  # type: ignore[union-attr]
                await site.start_robot()  # the same data directory: its outbox and its key
            elif victim == "consumer":
                site.consumers["a"].kill()
                assert site.consumers["a"].wait(5) == -signal.SIGKILL
            else:
                if broker.persistence:
                    broker.persist()  # a snapshot holding messages the consumers are about to acknowledge
                    await _until(lambda: site.stored() >= KILL_AT + 300, 20, "more stored after the snapshot")
                broker.kill9()
                broker.start()
            stored_at_kill = site.stored()
            assert stored_at_kill < total, "the kill came after the end: make the backlog larger"
            last = {stream: max(seqs) for stream, seqs in wrote.items()}
            await _until(lambda: site.acked() == last, 40, f"every stream acknowledged to its end {last}", 0.05)
            assert site.robot is not None
            await _until(lambda: not any(outbox_ids(site.data).values()), 10, "the robot's outbox pruned", 0.05)
            assert site.robot.poll() is None and site.consumers["b"].poll() is None
        finally:
            site.close()

    ledger = ledger_rows(site.ledger, AGENT)
    for stream, ids in wrote.items():
        rows = ledger.get(stream, [])
        assert [seq for seq, *_ in rows] == sorted(ids), f"{stream}: a seq missing or stored twice"
        assert {seq: rid for seq, rid, *_ in rows} == ids, f"{stream}: a record stored under another id"
    assert sum(len(r) for r in ledger.values()) == total
