"""Upstream sync: the robot's sender against a bare publisher, through the same broker and consumer.

    .venv/bin/python bench/sync.py [--records N] [--fleet-agents A] [--fleet-records R]

Everything runs here, on 127.0.0.1, with a mosquitto of its own (Debian's, as in the tests) and the
reference central consumer (`python -m central.consumer`, one process, verifying every signature
against the pinned device keys, committing to SQLite, acknowledging cumulatively):

(a) raw: a bare paho-mqtt 2 client, MQTT 5, QoS 1, the same in-flight limit as the agent's link,
    at most 1000 messages waiting for their PUBACK, publishes N record envelopes (signed beforehand, of
    the same size as the agent's) and waits for the consumer's ack of the last: the rate of broker +
    consumer with nothing in front;
(b) drain: a robot process (tests/upstream_peer.py: the agent's outbox, key, MQTT link and sender,
    agent/sync/uplink.py) starts with N records in its outbox and runs until the consumer has
    acknowledged all of them and they are pruned; its RSS is sampled meanwhile;
(c) alarm after reconnect: a robot with N telemetry records written while it was cut off from
    the broker (a TCP gate, tests/gate.py, is its network), and one alarm written last; the gate
    opens; the time from the robot's reconnection to the alarm in the consumer's database;
(d) fleet: A robots (in one process, each its own database, key, link and sender) with R records
    each, through the broker to two consumers.

`ratio_vs_raw` = drain rate / raw rate, both measured in this run (the machine is shared and
noisy, so only the ratio is comparable between runs). Targets: ratio >= 0.5, alarm <= 2 s. The
last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from agent.config import UpstreamSection  # noqa: E402
from agent.ids import new_id  # noqa: E402
from agent.store.clock import now_ts  # noqa: E402
from agent.store.database import Database  # noqa: E402
from agent.sync.envelope import encode_record  # noqa: E402
from agent.sync.identity import DeviceIdentity, load_or_create  # noqa: E402
from agent.sync.mqtt_link import MqttSettings, ack_topic, up_topic  # noqa: E402
from drivers.sim.client import terminate  # noqa: E402
from tests.broker import Broker, mosquitto_binary, skip_reason  # noqa: E402
from tests.gate import Gate  # noqa: E402
from tests.upstream_peer import Peer, fill, keys_text, ledger_rows, payloads  # noqa: E402

RATIO_TARGET = 0.5
ALARM_TARGET_S = 2.0
WINDOW = UpstreamSection().window
RAW_OUTSTANDING = 1000  # the bare publisher's messages handed to paho and not yet PUBACKed
INFLIGHT = MqttSettings(host="x").max_inflight  # the agent link's in-flight limit, for the bare publisher too


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


def _expect(proc: subprocess.Popen[str], word: str, timeout: float) -> str:
    """The first line of `proc` that starts with `word` (within `timeout`)."""
    box: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(word):
                box.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not box:
        raise RuntimeError(f"{proc.args!r} did not print {word} within {timeout} s (exit {proc.poll()})")
    return box[0]


def _stop(proc: subprocess.Popen[str]) -> None:
    terminate(proc)  # type: ignore[arg-type]


def _consumer(broker: Broker, ledger: Path, keys: Path, name: str) -> subprocess.Popen[str]:
    proc = _spawn([
        "-m", "central.consumer", "--broker", f"{broker.host}:{broker.port}", "--db", str(ledger),
        "--name", name, "--device-keys", str(keys), "--log-level", "ERROR",
    ])  # fmt: skip
    _expect(proc, "READY", 20)
    return proc


# ---------------------------------------------------------------- (a) the bare publisher
def raw_rate(broker: Broker, agent: str, device: DeviceIdentity, n: int) -> float:
    """Records per second from the first publish to the consumer's ack of the last."""
    bodies = payloads("command_result", n)
    at = now_ts()
    messages = [
        encode_record(device.sign_record(agent=agent, stream="results", seq=i + 1, id=new_id(),
                                         kind="command_result", at=at, body=b))
        for i, b in enumerate(bodies)
    ]  # fmt: skip
    done = threading.Event()
    outstanding = threading.BoundedSemaphore(RAW_OUTSTANDING)

    def on_publish(client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        outstanding.release()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if json.loads(msg.payload)["acks"].get("results", 0) >= n:
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{agent}", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(INFLIGHT)
    client.on_message = on_message
    client.on_publish = on_publish
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    try:
        subscribed = client.subscribe(ack_topic(agent), qos=1)
        assert subscribed[0] == mqtt.MQTT_ERR_SUCCESS
        time.sleep(0.2)  # the SUBACK: the bench's own client, outside the agent
        topic = up_topic(agent, "results")
        started = time.monotonic()
        for payload in messages:
            outstanding.acquire()  # paho scans its whole queue on every PUBACK: keep the queue short
            client.publish(topic, payload, qos=1)
        if not done.wait(600):
            raise RuntimeError("the consumer did not acknowledge the raw records")
        return n / (time.monotonic() - started)
    finally:
        client.loop_stop()
        client.disconnect()


# ---------------------------------------------------------------- (b) the agent's drain
def drain(broker: Broker, data: Path, agent: str, n: int, window: int) -> dict[str, float]:
    async def backlog() -> None:
        db = await Database.open(data)
        try:
            await fill(db, "command_result", payloads("command_result", n))
        finally:
            await db.close()

    asyncio.run(backlog())
    proc = _spawn([
        "-m", "tests.upstream_peer", str(data), "--port", str(broker.port), "--agent", agent, "--window", str(window),
        "--exit-when-drained",
    ])  # fmt: skip
    try:
        report = json.loads(_expect(proc, "DRAINED", 900).split(" ", 1)[1])
    finally:
        _stop(proc)
    report["records_per_s"] = n / report["drain_s"]
    return report


# ---------------------------------------------------------------- (c) the alarm after an outage
async def alarm_after_reconnect(broker: Broker, root: Path, keys: Path, agent: str, n: int, ledger: Path) -> float:
    """The robot reaches the broker through a gate (its network), closed while the backlog is
    written; the consumer runs throughout. Seconds from the robot's reconnection to the alarm."""
    with Gate(broker.host, broker.port) as gate:
        gate.close()
        peer = await Peer(root, broker.settings(port=gate.port), agent).open()
        try:
            await peer.fill("telemetry", payloads("telemetry", n))
            await peer.fill("alarm", [{"code": "OBSTACLE_NEAR", "raised": True}])
            assert peer.identity is not None and peer.link is None
            with keys.open("a") as f:  # the consumer reads the file again when it changes
                f.write(keys_text({agent: peer.identity}))
            await peer.start()
            await asyncio.sleep(0.5)  # the sender meets a network that is not there
            gate.open()
            assert peer.link is not None
            async with asyncio.timeout(30):
                while not peer.link.connected:
                    await asyncio.sleep(0.002)
            connected = time.monotonic()
            async with asyncio.timeout(60):
                while not ledger_rows(ledger, agent).get("alarms"):
                    await asyncio.sleep(0.01)
            return time.monotonic() - connected
        finally:
            await peer.stop()


# ---------------------------------------------------------------- (d) the fleet
async def fleet(broker: Broker, root: Path, agents: int, per_agent: int) -> float:
    peers = [await Peer(root / f"robot-{i:03d}", broker.settings(), f"fleet-{i:03d}").open() for i in range(agents)]
    try:
        for p in peers:
            await p.fill("command_result", payloads("command_result", per_agent // 2))
            await p.fill("telemetry", payloads("telemetry", per_agent - per_agent // 2))
        keys = root / "fleet-keys.toml"
        keys.write_text(keys_text({p.agent_id: p.identity for p in peers if p.identity is not None}))
        consumers = [_consumer(broker, root / "fleet.db", keys, f"fleet-{i}") for i in (1, 2)]
        try:
            started = time.monotonic()
            await asyncio.gather(*(p.start() for p in peers))
            await asyncio.gather(*(p.drained(timeout=900, poll_s=0.1) for p in peers))
            elapsed = time.monotonic() - started
        finally:
            for c in consumers:
                _stop(c)
        with contextlib.closing(sqlite3.connect(root / "fleet.db")) as conn:
            stored = conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        if stored != agents * per_agent:
            raise RuntimeError(f"fleet: {stored} records stored, {agents * per_agent} written")
        return agents * per_agent / elapsed
    finally:
        await asyncio.gather(*(p.stop() for p in peers))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000, help="backlog of (a), (b) and (c)")
    parser.add_argument("--window", type=int, default=WINDOW, help="the sender's window (default: [upstream] window's)")
    parser.add_argument("--fleet-agents", type=int, default=50)
    parser.add_argument("--fleet-records", type=int, default=1000, help="records per robot in (d)")
    args = parser.parse_args()
    if mosquitto_binary() is None:
        print(json.dumps({"skipped": skip_reason()}))
        return 0
    n = args.records
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        root = Path(tmp)
        for sub in ("raw", "robot", "outage", "fleet"):
            (root / sub).mkdir()
        raw_device, _ = load_or_create(root / "raw")
        agent_device, _ = load_or_create(root / "robot")
        keys = root / "device-keys.toml"
        keys.write_text(keys_text({"raw-001": raw_device, "oht-001": agent_device}))
        ledger = root / "central.db"
        # The bare publisher has no window: the consumer's queue at the broker must hold its whole run.
        with Broker(root / "broker", max_queued=4 * n) as broker:
            consumer = _consumer(broker, ledger, keys, "bench")
            try:
                raw = raw_rate(broker, "raw-001", raw_device, n)
                print(f"(a) raw publisher      {raw:9.0f} records/s", flush=True)
                agent = drain(broker, root / "robot", "oht-001", n, args.window)
                print(f"(b) agent drain        {agent['records_per_s']:9.0f} records/s"
                      f"  ratio {agent['records_per_s'] / raw:.2f}"
                      f"  RSS {agent['rss_max_mb']:.1f} MB", flush=True)  # fmt: skip
                alarm_s = asyncio.run(alarm_after_reconnect(broker, root / "outage", keys, "oht-002", n, ledger))
                print(f"(c) alarm after reconnect {alarm_s:.3f} s (behind {n} telemetry records)", flush=True)
            finally:
                _stop(consumer)
            fleet_rate = asyncio.run(fleet(broker, root / "fleet", args.fleet_agents, args.fleet_records))
            print(f"(d) fleet of {args.fleet_agents}       {fleet_rate:9.0f} records/s", flush=True)
    ratio = agent["records_per_s"] / raw
    result = {
        "bench": "sync",
        "records": n,
        "raw_records_per_s": round(raw),
        "drain_records_per_s": round(agent["records_per_s"]),
        "ratio_vs_raw": round(ratio, 3),
        "ratio_target": RATIO_TARGET,
        "alarm_after_reconnect_s": round(alarm_s, 3),
        "alarm_target_s": ALARM_TARGET_S,
        "fleet_agents": args.fleet_agents,
        "fleet_records_per_s": round(fleet_rate),
        "agent_rss_mb": round(agent["rss_max_mb"], 1),
        "agent_rss_start_mb": round(agent["rss_start_mb"], 1),
        "python": platform.python_version(),
        "ok": ratio >= RATIO_TARGET and alarm_s <= ALARM_TARGET_S,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
