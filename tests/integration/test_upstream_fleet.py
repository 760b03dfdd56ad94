"""A fleet: 50 robots (the agent's own outbox, key, link and sender, each on its own database)
publish through one broker to two central consumers sharing one ledger; every record of every
robot arrives exactly once, and every robot's outbox ends empty."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from central.consumer import Consumer
from central.device_keys import DeviceKeys
from tests.broker import Broker, mosquitto_binary, skip_reason
from tests.upstream_peer import Peer, keys_text, ledger_rows, outbox_ids, payloads

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason=skip_reason())

ROBOTS = 50
PER_KIND = {"command_result": 8, "audit": 4, "telemetry": 8}


@pytest.mark.timeout(120)
async def test_fifty_robots_through_one_broker_to_two_consumers_arrive_exactly_once(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        peers = [
            await Peer(tmp_path / f"robot-{i:02d}", broker.settings(), f"oht-{i:03d}").open() for i in range(ROBOTS)
        ]
        keys = tmp_path / "device-keys.toml"
        keys.write_text(keys_text({p.agent_id: p.identity for p in peers if p.identity is not None}))
        for p in peers:
            for kind, n in PER_KIND.items():
                await p.fill(kind, payloads(kind, n))
        wrote = {p.agent_id: outbox_ids(p.data_dir) for p in peers}
        ledger = tmp_path / "central.db"
        consumers = [Consumer(broker.settings(), ledger, name=f"c{i}", device_keys=DeviceKeys(keys)) for i in (1, 2)]
        for c in consumers:
            await c.start()
            assert await c.link.wait_subscribed(5)
        tasks = [asyncio.create_task(c.run()) for c in consumers]
        try:
            await asyncio.gather(*(p.start() for p in peers))
            await asyncio.gather(*(p.drained(timeout=60) for p in peers))
            assert not any(t.done() for t in tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(c.stop() for c in consumers))
            await asyncio.gather(*(p.stop() for p in peers))

    for agent, streams in wrote.items():
        rows = ledger_rows(ledger, agent)
        for stream, ids in streams.items():
            assert {seq: rid for seq, rid, *_ in rows[stream]} == ids, f"{agent} {stream}"
            assert len(rows[stream]) == len(ids)
    assert all(c.counts["stored"] > 0 for c in consumers)  # the shared subscription split the fleet
    assert sum(c.counts["stored"] for c in consumers) == ROBOTS * sum(PER_KIND.values())
