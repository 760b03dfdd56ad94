"""The agent's MQTT link against a real mosquitto, in plain TCP and in TLS with the site's ACL.

Every wait is bounded; the broker is killed, frozen and restarted under the link as a site's
broker would fail, and what the link promises is read from what other clients receive.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sync.mqtt_link import (
    SHARED_UP_FILTER,
    Incoming,
    LinkStopped,
    MqttLink,
    PublishTimeout,
    agent_link,
    cmd_topic,
    status_topic,
    up_topic,
)
from tests.broker import Broker, Pki, mosquitto_binary, next_message, no_message, running, skip_reason

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason=skip_reason())

REPO = Path(__file__).resolve().parents[2]
AGENT = "oht-001"


@pytest.fixture(params=["plain", "tls"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    pki = Pki(tmp_path / "pki") if request.param == "tls" else None
    with Broker(tmp_path / "broker", pki=pki) as b:
        yield b


@pytest.fixture
def plain_broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as b:
        yield b


def centre(broker: Broker, *subscriptions: str) -> MqttLink:
    """A central identity (the only one the ACL lets read status and send commands)."""
    return MqttLink(
        broker.settings("central-1"), client_id="central-test", subscriptions=subscriptions, persistent_session=False
    )


def state(message: Incoming) -> str:
    assert message.topic == status_topic(AGENT)
    return str(json.loads(message.payload)["state"])


async def test_publish_resolves_on_the_brokers_puback(broker: Broker) -> None:
    link = agent_link(broker.settings(AGENT), AGENT)
    consumer = centre(broker, SHARED_UP_FILTER)
    async with running(consumer, link):
        for n in range(3):
            await link.publish(up_topic(AGENT, "results"), f"r{n}".encode())
        assert [(await next_message(consumer)).payload for _ in range(3)] == [b"r0", b"r1", b"r2"]


async def test_a_publish_raises_within_its_timeout_when_the_broker_dies(broker: Broker) -> None:
    link = agent_link(broker.settings(AGENT), AGENT)
    async with running(link):
        broker.freeze()  # the PUBLISH reaches a broker that will never answer it
        started = time.monotonic()
        publish = asyncio.create_task(link.publish(up_topic(AGENT, "results"), b"lost?", timeout=0.3))
        await asyncio.sleep(0.05)
        broker.kill9()
        with pytest.raises(PublishTimeout):
            await publish
        elapsed = time.monotonic() - started
        assert 0.28 <= elapsed < 0.8, elapsed
        assert link.stats().publish_timeouts == 1


async def test_the_link_reconnects_after_a_broker_restart_and_is_online_again(broker: Broker) -> None:
    link = agent_link(broker.settings(AGENT), AGENT)
    watcher = centre(broker, status_topic(AGENT))
    async with running(watcher, link):
        first = json.loads((await next_message(watcher)).payload)
        assert first["state"] == "ONLINE"

        broker.kill9()  # no persistence: the restarted broker knows no session, subscription or retained message
        broker.start()
        assert await link.wait_subscribed(3.0), link.stats()
        again = json.loads((await next_message(watcher, 3.0)).payload)
        assert again["state"] == "ONLINE" and again["at"] > first["at"]
        assert link.stats().connects == 2 and link.stats().connection_losses == 1

        await watcher.publish(cmd_topic(AGENT), b'{"v":1}')  # subscribed again on the new broker
        got = await next_message(link)
        assert (got.topic, got.payload) == (cmd_topic(AGENT), b'{"v":1}')
        await link.publish(up_topic(AGENT, "events"), b"after the restart")


CHILD = """
import asyncio, json, sys
from pathlib import Path
from agent.sync.mqtt_link import MqttSettings, agent_link

async def main():
    raw = json.loads(sys.argv[1])
    paths = {k: Path(v) for k, v in raw.items() if k.endswith("_file") and v}
    settings = MqttSettings(**{**raw, **paths})
    link = agent_link(settings, sys.argv[2])
    await link.start()
    print("READY" if await link.wait_subscribed(5) else "NOT CONNECTED", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def settings_json(broker: Broker) -> str:
    s = broker.settings(AGENT)
    fields = {k: getattr(s, k) for k in ("host", "port", "keepalive_s", "backoff_initial_s", "backoff_max_s")}
    fields.update({k: str(getattr(s, k)) if getattr(s, k) else None for k in ("ca_file", "cert_file", "key_file")})
    return json.dumps(fields)


async def test_the_last_will_is_published_when_the_agent_process_is_killed(broker: Broker) -> None:
    watcher = centre(broker, status_topic(AGENT))
    async with running(watcher):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, settings_json(broker), AGENT],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 10)  # type: ignore[union-attr]
            assert line == b"READY\n", line
            assert state(await next_message(watcher)) == "ONLINE"
            child.kill()  # no DISCONNECT: the kernel closes the socket
        finally:
            child.kill()
            child.wait(5)
            child.stdout.close()  # type: ignore[union-attr]
        will = await next_message(watcher)
        assert state(will) == "CONNECTIONBROKEN"

    # retained: whoever looks later sees the robot's last state
    late = centre(broker, status_topic(AGENT))
    async with running(late):
        got = await next_message(late)
        assert got.retain and state(got) == "CONNECTIONBROKEN"


async def test_a_clean_stop_publishes_offline_and_the_will_is_discarded(plain_broker: Broker) -> None:
    watcher = centre(plain_broker, status_topic(AGENT))
    link = agent_link(plain_broker.settings(), AGENT)
    async with running(watcher):
        async with running(link):
            assert state(await next_message(watcher)) == "ONLINE"
        assert state(await next_message(watcher)) == "OFFLINE"
        await no_message(watcher, 0.2)
        with pytest.raises(LinkStopped):
            await link.publish(up_topic(AGENT, "results"), b"too late")


async def test_commands_sent_while_the_agent_is_away_wait_for_it_until_acknowledged(plain_broker: Broker) -> None:
    sender = centre(plain_broker)
    async with running(sender):
        async with running(agent_link(plain_broker.settings(), AGENT)):
            pass  # the session (and its cmd subscription) outlives the connection: clean_start False
        await sender.publish(cmd_topic(AGENT), b"while away")

        back = agent_link(plain_broker.settings(), AGENT)
        async with running(back):
            got = await asyncio.wait_for(back.receive(), 2)
            assert got.payload == b"while away"
            # not acknowledged (say the gateway died before committing it): the broker keeps it
        again = agent_link(plain_broker.settings(), AGENT)
        async with running(again):
            got = await asyncio.wait_for(again.receive(), 2)
            assert got.payload == b"while away" and got.duplicate
            got.ack()
        last = agent_link(plain_broker.settings(), AGENT)
        async with running(last):
            await no_message(last, 0.2)


async def test_a_broker_with_persistence_keeps_the_agents_session_through_kill_9(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker", persistence=True) as broker:
        sender = centre(broker)
        async with running(sender):
            async with running(agent_link(broker.settings(), AGENT)):
                pass
            await sender.publish(cmd_topic(AGENT), b"queued before the crash")
        broker.persist()  # saved after every change anyway, but on the broker's next loop turn
        broker.kill9()
        broker.start()
        back = agent_link(broker.settings(), AGENT)
        async with running(back):
            assert (await next_message(back)).payload == b"queued before the crash"


async def test_a_failing_handler_does_not_stop_the_next_message(plain_broker: Broker) -> None:
    link = agent_link(plain_broker.settings(), AGENT)
    sender = centre(plain_broker)
    handled: list[bytes] = []

    async def handler(message: Incoming) -> None:
        handled.append(message.payload)
        if message.payload == b"poison":
            raise ValueError("cannot handle this")

    async with running(link, sender):
        dispatcher = asyncio.create_task(link.dispatch(handler))
        try:
            for payload in (b"poison", b"next", b"and the next"):
                await sender.publish(cmd_topic(AGENT), payload)
            async with asyncio.timeout(2):
                while len(handled) < 3:
                    await asyncio.sleep(0.01)
        finally:
            dispatcher.cancel()
        assert handled == [b"poison", b"next", b"and the next"]
        assert link.stats().handler_errors == 1 and link.stats().callback_errors == 0


async def test_a_reader_that_falls_behind_stops_the_broker_instead_of_losing_messages(plain_broker: Broker) -> None:
    slow = MqttLink(
        plain_broker.settings(receive_maximum=4),
        client_id="slow-reader",
        subscriptions=(SHARED_UP_FILTER,),
        persistent_session=False,
    )
    sender = agent_link(plain_broker.settings(), AGENT)
    async with running(slow, sender):
        for n in range(40):
            await sender.publish(up_topic(AGENT, "telemetry"), str(n).encode())  # the broker queues them
        async with asyncio.timeout(2):
            while slow.unread < 4:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert slow.unread == 4  # the broker keeps to the Receive Maximum while nothing is acknowledged
        received, most = [], 0
        for _ in range(40):
            # each PUBACK lets mosquitto 2.0.11 put up to 4 more in flight, however many still are:
            # without the pause the unread pile grows by about 3 per message here
            received.append(int((await next_message(slow)).payload))
            await asyncio.sleep(0.005)
            most = max(most, slow.unread)
        assert received == list(range(40))
        assert most <= 4, most
        assert slow.stats().inbox_overflows == 0
