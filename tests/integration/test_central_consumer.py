"""The reference central consumer against a real mosquitto: records in, once each; contiguous acks out.

A robot is played by an `agent_link` that publishes record envelopes and reads the acks that come
back, and, in the kill test, sends again whatever stays unacknowledged, as the agent's outbox does.
What is stored is read from the central database itself.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.sync.envelope import encode_record
from agent.sync.mqtt_link import Incoming, MqttLink, agent_link, up_topic
from central.consumer import Consumer, main
from central.device_keys import DeviceKeys
from drivers.sim.client import terminate
from tests.broker import Broker, Pki, mosquitto_binary, running, skip_reason
from tests.property.test_central_records import AGENT, DEVICE, OTHER, keys_file, record_id, signed

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason=skip_reason())

REPO = Path(__file__).resolve().parents[2]


def envelope(stream: str, seq: int, *, gap: tuple[int, int] | None = None, agent: str = AGENT) -> bytes:
    """The record the robot `agent` publishes for `seq` (the same bytes every time: a resend is a copy)."""
    device = {AGENT: DEVICE, "oht-002": OTHER}[agent]
    return encode_record(signed(stream, seq, gap=gap, agent=agent, device=device))


class Robot:
    """Publishes records and keeps the highest ack per stream (and every ack message, in order)."""

    def __init__(self, link: MqttLink, agent: str = AGENT) -> None:
        self.link = link
        self.agent = agent
        self.acked: dict[str, int] = {}
        self.acks: list[dict[str, int]] = []
        self._reader: asyncio.Task[None] | None = None

    async def _on_ack(self, message: Incoming) -> None:
        acks = json.loads(message.payload)["acks"]
        self.acks.append(acks)
        for stream, seq in acks.items():
            self.acked[stream] = max(self.acked.get(stream, 0), seq)

    def start_reading(self) -> None:
        self._reader = asyncio.create_task(self.link.dispatch(self._on_ack))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()

    async def send(self, stream: str, seqs: list[int], gaps: dict[int, tuple[int, int]] | None = None) -> None:
        gaps = gaps or {}
        topic = up_topic(self.agent, stream)
        payloads = [envelope(stream, s, gap=gaps.get(s), agent=self.agent) for s in seqs]
        await asyncio.gather(*(self.link.publish(topic, payload) for payload in payloads))

    async def until(self, stream: str, seq: int, timeout: float = 5.0) -> None:
        await eventually(lambda: self.acked.get(stream, 0) >= seq, timeout)

    def count(self, stream: str, seq: int) -> int:
        """How many ack messages said `seq` for `stream`."""
        return sum(1 for acks in self.acks if acks.get(stream) == seq)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def stored(db: Path, stream: str, agent: str = AGENT) -> list[int]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        query = "SELECT seq FROM records WHERE agent = ? AND stream = ? ORDER BY seq"
        return [s for (s,) in conn.execute(query, (agent, stream))]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def device_keys(tmp_path: Path) -> DeviceKeys:
    """The centre's pinned keys: robots oht-001 and oht-002."""
    return DeviceKeys(keys_file(tmp_path / "device-keys.toml", {AGENT: DEVICE, "oht-002": OTHER}))


@pytest.fixture
async def consumers(broker: Broker, tmp_path: Path, device_keys: DeviceKeys):  # type: ignore[no-untyped-def]
    pair = [Consumer(broker.settings(), tmp_path / "central.db", name=f"c{i}", device_keys=device_keys) for i in (1, 2)]
    tasks = []
    for c in pair:
        await c.start()
    for c in pair:
        assert await c.link.wait_subscribed(3)
        tasks.append(asyncio.create_task(c.run()))
    yield pair
    for task in tasks:
        assert not task.done(), task  # a consumer that died would have raised StoreFailed
        task.cancel()
    for c in pair:
        await c.stop()


@pytest.fixture
async def robot(broker: Broker):  # type: ignore[no-untyped-def]
    r = Robot(agent_link(broker.settings(), AGENT))
    async with running(r.link):
        r.start_reading()
        yield r
        await r.close()


async def test_two_consumers_store_every_record_once_and_ack_the_contiguous_prefix(
    consumers: list[Consumer], robot: Robot, tmp_path: Path
) -> None:
    db = tmp_path / "central.db"
    # telemetry 31-40 was dropped by the agent; the gap record at 61 stands for it
    telemetry = [s for s in range(1, 62) if not 31 <= s <= 40]
    await asyncio.gather(robot.send("results", list(range(1, 121))), robot.send("telemetry", telemetry, {61: (31, 40)}))
    await robot.until("results", 120)
    await robot.until("telemetry", 61)
    await robot.send("results", list(range(1, 21)))  # copies, as after a lost ack
    await eventually(lambda: sum(c.counts["duplicates"] for c in consumers) == 20)

    assert stored(db, "results") == list(range(1, 121))
    assert stored(db, "telemetry") == telemetry
    with sqlite3.connect(db) as conn:
        shares = dict(conn.execute("SELECT consumer, COUNT(*) FROM records GROUP BY consumer").fetchall())
    assert set(shares) == {"c1", "c2"}, shares  # the shared subscription split the work
    assert sum(c.counts["stored"] for c in consumers) == 120 + len(telemetry)
    assert sum(c.counts["duplicates"] for c in consumers) == 20
    assert sum(c.counts["rejected"] for c in consumers) == 0
    assert max(robot.acked.values()) == 120 and robot.acked == {"results": 120, "telemetry": 61}


async def test_the_ack_stops_at_a_hole_until_it_is_filled(
    consumers: list[Consumer], robot: Robot, tmp_path: Path
) -> None:
    db = tmp_path / "central.db"
    await robot.send("results", [1, 2, 3, 4, 6, 7, 8, 9, 10])
    await eventually(lambda: len(stored(db, "results")) == 9)  # 6-10 are committed, and acked as 4
    await eventually(lambda: robot.count("results", 4) >= 1)
    await asyncio.sleep(0.05)
    assert robot.acked["results"] == 4 and all(a["results"] <= 4 for a in robot.acks)
    await robot.send("results", [5])
    await robot.until("results", 10)


async def test_a_duplicate_is_acknowledged_again_and_not_stored(
    consumers: list[Consumer], robot: Robot, tmp_path: Path
) -> None:
    await robot.send("results", [1, 2, 3])
    await robot.until("results", 3)
    threes = robot.count("results", 3)  # only the consumer that committed last computed 3
    await robot.send("results", [2])
    await eventually(lambda: robot.count("results", 3) == threes + 1, 2)  # the copy is acked with the prefix
    assert stored(tmp_path / "central.db", "results") == [1, 2, 3]
    assert sum(c.counts["duplicates"] for c in consumers) == 1


async def test_a_record_that_breaks_the_contract_is_refused_and_the_next_one_stored(
    consumers: list[Consumer], robot: Robot, tmp_path: Path
) -> None:
    forged = json.loads(envelope("results", 1))
    forged["agent"] = "oht-002"
    await robot.link.publish(up_topic(AGENT, "results"), json.dumps(forged).encode())
    await robot.link.publish(up_topic(AGENT, "results"), b"not json")
    await robot.send("results", [1])
    await robot.until("results", 1)
    assert stored(tmp_path / "central.db", "results") == [1]
    await eventually(lambda: sum(c.counts["rejected"] for c in consumers) == 2)
    refusals = sum((c.refusals for c in consumers), collections.Counter())
    assert refusals == {"UPSTREAM_MALFORMED": 2}  # not canonical JSON any more, and not JSON at all


# ---------------------------------------------------------------- kill -9 of a consumer process
def consumer_process(broker: Broker, pki: Pki, db: Path, name: str) -> subprocess.Popen[bytes]:
    ident = pki.clients["central-1"]
    keys = keys_file(db.with_name("device-keys.toml"), {AGENT: DEVICE})
    return subprocess.Popen(
        [
            sys.executable, "-m", "central.consumer",
            "--broker", f"{broker.host}:{broker.port}", "--db", str(db), "--name", name,
            "--device-keys", str(keys),
            "--ca", str(pki.ca), "--cert", str(ident.cert), "--key", str(ident.key),
            "--log-level", "WARNING",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def ready(proc: subprocess.Popen[bytes]) -> None:
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 10)  # type: ignore[union-attr]
    assert line.startswith(b"READY central-"), line


@pytest.mark.timeout(60)
async def test_kill_9_of_a_consumer_mid_stream_loses_nothing(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    db = tmp_path / "central.db"
    n = 300
    with Broker(tmp_path / "broker", pki=pki) as broker:
        procs = [consumer_process(broker, pki, db, name) for name in ("a", "b")]
        try:
            await asyncio.gather(*(ready(p) for p in procs))
            robot = Robot(agent_link(broker.settings(AGENT), AGENT))
            async with running(robot.link):
                robot.start_reading()
                for start in range(1, n + 1, 20):  # a steady stream; consumer a dies after 100 are acked
                    if start == 141:
                        await robot.until("results", 100)
                        procs[0].send_signal(signal.SIGKILL)
                    await robot.send("results", list(range(start, start + 20)))
                    await asyncio.sleep(0.005)

                # The agent's outbox: whatever the ack does not cover is sent again while acks stall.
                resent = 0
                deadline = time.monotonic() + 20
                while robot.acked.get("results", 0) < n:
                    assert time.monotonic() < deadline, (robot.acked, resent)
                    before = robot.acked.get("results", 0)
                    await asyncio.sleep(0.2)
                    if robot.acked.get("results", 0) == before:
                        missing = list(range(before + 1, n + 1))
                        resent += len(missing)
                        await robot.send("results", missing)
                await robot.close()
            assert procs[0].wait(5) == -signal.SIGKILL
            assert procs[1].poll() is None  # the other consumer took over
        finally:
            for p in procs:
                terminate(p)
                p.stdout.close()  # type: ignore[union-attr]
    assert procs[1].returncode == 0  # a clean stop on SIGTERM
    assert stored(db, "results") == list(range(1, n + 1))  # every record, once
    with sqlite3.connect(db) as conn:
        progress = conn.execute("SELECT acked FROM progress WHERE agent = ? AND stream = 'results'", (AGENT,))
        assert progress.fetchone() == (n,)


# ---------------------------------------------------------------- pinned device keys
@pytest.fixture
async def consumer(broker: Broker, tmp_path: Path, device_keys: DeviceKeys):  # type: ignore[no-untyped-def]
    """One consumer, so that the order of its acks is the order of its batches."""
    c = Consumer(broker.settings(), tmp_path / "central.db", name="c1", device_keys=device_keys)
    await c.start()
    assert await c.link.wait_subscribed(3)
    task = asyncio.create_task(c.run())
    yield c
    assert not task.done(), task
    task.cancel()
    await c.stop()


def altered(stream: str, seq: int) -> bytes:
    """The robot's record with its body changed on the way, still canonical JSON: only the signature tells."""
    doc = json.loads(envelope(stream, seq))
    doc["body"]["n"] = seq + 1000
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


async def test_a_record_altered_in_transit_is_refused_and_the_ack_stops_below_it(
    consumer: Consumer, robot: Robot, tmp_path: Path
) -> None:
    await robot.send("results", [1, 2])
    await robot.link.publish(up_topic(AGENT, "results"), altered("results", 3))
    await robot.send("results", [4])
    await eventually(lambda: consumer.counts["stored"] == 3)
    await eventually(lambda: len(robot.acks) == consumer.counts["acks_sent"])  # every ack sent has arrived
    assert stored(tmp_path / "central.db", "results") == [1, 2, 4]
    assert consumer.refusals == {"UPSTREAM_SIGNATURE_INVALID": 1}
    assert all(a["results"] <= 2 for a in robot.acks)
    await robot.send("results", [3])  # the agent sends it again, unaltered this time
    await robot.until("results", 4)
    with sqlite3.connect(tmp_path / "central.db") as conn:
        (body,) = conn.execute("SELECT body FROM records WHERE agent = ? AND seq = 3", (AGENT,)).fetchone()
    assert json.loads(body) == {"n": 3}


async def test_a_record_signed_by_another_robots_key_is_refused(
    consumer: Consumer, broker: Broker, robot: Robot, tmp_path: Path
) -> None:
    b = Robot(agent_link(broker.settings(), "oht-002"), "oht-002")
    async with running(b.link):
        # robot A's key, robot B's agent id and topic: B's pinned key does not verify it
        forged = encode_record(signed("results", 1, agent="oht-002", device=DEVICE))
        await b.link.publish(up_topic("oht-002", "results"), forged)
        await b.link.publish(up_topic("oht-002", "results"), envelope("results", 1))  # A's record, B's topic
        await eventually(lambda: consumer.refusals["UPSTREAM_SIGNATURE_INVALID"] == 2)
        await b.send("results", [1])  # B's own record is taken
        await eventually(lambda: stored(tmp_path / "central.db", "results", "oht-002") == [1])
    assert stored(tmp_path / "central.db", "results") == []  # nothing filed under A either
    assert consumer.counts["stored"] == 1


async def test_a_replay_is_a_duplicate_and_another_record_under_a_committed_seq_never_replaces_it(
    consumer: Consumer, robot: Robot, tmp_path: Path
) -> None:
    db = tmp_path / "central.db"
    await robot.send("results", [1, 2])
    await robot.until("results", 2)
    twos = robot.count("results", 2)
    await robot.send("results", [2])  # the same seq and id again, after the ack
    await eventually(lambda: robot.count("results", 2) == twos + 1)  # acknowledged again
    assert consumer.counts["duplicates"] == 1 and stored(db, "results") == [1, 2]

    # signed by the robot, but another record under seq 2 (its database went back) ...
    stale = signed("results", 2, body={"n": "stale"}, rid=record_id("restored/2"))
    # ... and the committed record with its id changed: the signature no longer covers it
    forged = json.loads(envelope("results", 2))
    forged["id"] = record_id("forged/2")
    forged_raw = json.dumps(forged, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    await robot.link.publish(up_topic(AGENT, "results"), encode_record(stale))
    await eventually(lambda: consumer.counts["conflicts"] == 1)
    await robot.link.publish(up_topic(AGENT, "results"), forged_raw)
    await eventually(lambda: consumer.refusals["UPSTREAM_SIGNATURE_INVALID"] == 1)
    await robot.send("results", [3])
    await robot.until("results", 3)
    assert robot.count("results", 2) == twos + 1  # the conflict and the forgery were not acknowledged
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT seq, id, body FROM records WHERE agent = ? ORDER BY seq", (AGENT,)).fetchall()
    assert rows[1] == (2, record_id(f"{AGENT}/results/2"), '{"n":2}') and len(rows) == 3


async def test_a_robot_without_a_pinned_key_is_refused_until_its_key_is_added(
    consumer: Consumer, broker: Broker, device_keys: DeviceKeys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "central.db"
    keys_file(device_keys.path, {"oht-002": OTHER})  # robot oht-001 not enrolled (yet)
    caplog.set_level(logging.WARNING, logger="central.consumer")
    robot = Robot(agent_link(broker.settings(), AGENT))
    async with running(robot.link):
        robot.start_reading()
        await robot.send("results", [1, 2])
        await robot.send("results", [3])
        await eventually(lambda: consumer.refusals["CENTRAL_DEVICE_UNKNOWN"] == 3)
        assert stored(db, "results") == [] and consumer.counts["acks_sent"] == 0 and robot.acks == []
        unknown = [r for r in caplog.records if "CENTRAL_DEVICE_UNKNOWN" in r.getMessage()]
        assert len(unknown) == 1, unknown  # once per robot per minute, not per record

        keys_file(device_keys.path, {"oht-002": OTHER, AGENT: DEVICE})  # enrolled: no restart
        await robot.send("results", [1, 2, 3])  # the agent sends again what was never acked
        await robot.until("results", 3)
        await robot.close()
    assert stored(db, "results") == [1, 2, 3]


def test_help_describes_device_keys_and_a_bad_keys_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    assert "--device-keys FILE" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["--broker", "localhost:1883", "--db", str(tmp_path / "c.db")])  # the flag is required
    assert done.value.code == 2 and "--device-keys" in capsys.readouterr().err

    bad = tmp_path / "keys.toml"
    bad.write_text(f'"{AGENT}" = "{DEVICE.public.base64()}"\n"oht-002" = "not a key"\n')
    assert main(["--broker", "localhost:1883", "--db", str(tmp_path / "c.db"), "--device-keys", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "CENTRAL_DEVICE_KEYS_INVALID" in err and f"{bad}, line 2, entry 'oht-002'" in err
    assert not (tmp_path / "c.db").exists()  # refused before anything was opened

    missing = tmp_path / "nowhere.toml"
    proc = subprocess.run(
        [sys.executable, "-m", "central.consumer", "--broker", "localhost:1883", "--db", str(tmp_path / "c.db"),
         "--device-keys", str(missing)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2 and str(missing) in proc.stderr and "CENTRAL_DEVICE_KEYS_INVALID" in proc.stderr
