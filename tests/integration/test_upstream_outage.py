"""A long outage: the broker is down while the robot keeps writing; the disk cap holds; on return
every record that is never dropped arrives, dropped telemetry is covered by gap records, and an
alarm raised at the very end is at the consumer within 2 s of the reconnection.

The robot is tests/upstream_peer.py (the agent's outbox, key, link and sender); the consumer is
the real `central.consumer.Consumer`; the broker a real mosquitto, down while the backlog is
written. The robot reaches it through a gate (tests/gate.py), its network: when the broker returns,
the consumer subscribes first and then the gate opens, as at a site where the centre is up when
the robot's link comes back. (A robot that reconnects before any consumer has subscribed publishes
to nobody; it sends again after its ack timeout, which is a different measurement.) The full size
(100,000 records) runs with the slow tests; the normal run keeps a smaller one with the same shape.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import MappingProxyType

import pytest

from agent.store.streams import MIB, ClassLimits, Limits, StreamClass
from central.consumer import Consumer
from central.device_keys import DeviceKeys
from tests.broker import Broker, mosquitto_binary, skip_reason
from tests.gate import Gate
from tests.upstream_peer import Peer, keys_text, ledger_rows, outbox_ids, payloads

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason=skip_reason())

AGENT = "oht-001"
ALARM_WITHIN_S = 2.0


def limits(bulk_quota: int) -> Limits:
    return Limits(MappingProxyType({
        StreamClass.CRITICAL: ClassLimits(quota_bytes=64 * MIB, ttl_s=3600),
        StreamClass.NORMAL: ClassLimits(quota_bytes=64 * MIB, ttl_s=3600),
        StreamClass.BULK: ClassLimits(quota_bytes=bulk_quota, ttl_s=3600),
    }))  # fmt: skip


@pytest.mark.timeout(300)
@pytest.mark.parametrize("total", [pytest.param(100_000, marks=pytest.mark.slow), 10_000])
async def test_an_outage_keeps_the_cap_and_every_record_that_matters(tmp_path: Path, total: int) -> None:
    broker = Broker(tmp_path / "broker").start()
    gate = Gate(broker.host, broker.port).__enter__()
    gate.close()
    broker.stop()  # down while the backlog is written
    telemetry_n = total * 7 // 10
    others = {"command_result": total // 10, "audit": total // 10, "transition": total // 10}
    quota = telemetry_n * 300 // 4  # about a quarter of the telemetry fits
    peer = await Peer(tmp_path / "robot", broker.settings(port=gate.port), AGENT, limits=limits(quota)).open()
    assert peer.outbox is not None and peer.identity is not None
    keys = tmp_path / "device-keys.toml"
    keys.write_text(keys_text({AGENT: peer.identity}))
    consumer = Consumer(broker.settings(), tmp_path / "central.db", name="c1", device_keys=DeviceKeys(keys))
    try:
        await peer.start()  # the sender runs and the link retries against a broker that is not there
        for i in range(10):  # the writes of an outage, interleaved, with the limits applied as they go
            for kind, n in others.items():
                await peer.fill(kind, payloads(kind, n // 10, start=i * (n // 10)))
            await peer.fill("telemetry", payloads("telemetry", telemetry_n // 10, start=i * (telemetry_n // 10)))
            await peer.outbox.enforce_limits()
        backlog = await peer.outbox.backlog()
        assert backlog["telemetry"].bytes <= quota, backlog["telemetry"]  # the disk cap held
        for stream, n in (
            ("results", others["command_result"]),
            ("audit", others["audit"]),
            ("events", others["transition"]),
        ):
            assert backlog[stream].unacked == n, f"{stream} records were dropped during the outage"
        await peer.fill("alarm", [{"code": "OBSTACLE_NEAR", "raised": True}])  # the last thing before the return
        wrote = outbox_ids(peer.data_dir)
        assert peer.link is not None and not peer.link.connected

        broker.start()
        await consumer.start()
        assert await consumer.link.wait_subscribed(5)
        consumer_task = asyncio.create_task(consumer.run())
        gate.open()
        async with asyncio.timeout(10):
            while not peer.link.connected:
                await asyncio.sleep(0.002)
        connected = time.monotonic()
        async with asyncio.timeout(10):
            while not ledger_rows(tmp_path / "central.db", AGENT).get("alarms"):
                await asyncio.sleep(0.01)
        alarm_after = time.monotonic() - connected
        assert alarm_after <= ALARM_WITHIN_S, f"the alarm arrived {alarm_after:.2f} s after the reconnection"

        await peer.drained(timeout=120 if total > 20_000 else 40)
        assert not consumer_task.done()
        consumer_task.cancel()
        await asyncio.gather(consumer_task, return_exceptions=True)
    finally:
        await consumer.stop()
        await peer.stop()
        broker.stop()
        gate.__exit__(None, None, None)

    ledger = ledger_rows(tmp_path / "central.db", AGENT)
    for stream in ("results", "audit", "events", "alarms"):
        assert {seq: rid for seq, rid, *_ in ledger[stream]} == wrote[stream], f"{stream}: not every record, once"
    telemetry = ledger["telemetry"]
    covered: set[int] = set()
    gaps = 0
    for seq, _rid, kind, body in telemetry:
        covered.add(seq)
        if kind == "gap":
            import json

            gap = json.loads(body)
            covered.update(range(gap["from_seq"], gap["to_seq"] + 1))
            gaps += 1
    last = max(seq for seq, *_ in telemetry)
    assert covered == set(range(1, last + 1)), "a telemetry seq neither delivered nor covered by a gap record"
    assert gaps >= 1 and last >= telemetry_n  # telemetry was dropped, and said so
    kept = {seq for seq, _rid, kind, _b in telemetry if kind != "gap"}
    assert kept <= set(wrote["telemetry"]) and {s for s in wrote["telemetry"] if s in kept} == kept
