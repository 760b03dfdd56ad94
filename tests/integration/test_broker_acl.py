"""The site broker's rules, checked by a real mosquitto with the ACL a site gives robots (tests/broker.py).

Robots and central consumers are known by their client certificate's common name. These tests
connect with certificates from the test CA and one from a foreign CA, and look at what the broker
delivers, since delivery is what an ACL is for: mosquitto 2.0's acl_file is consulted when a message
is published and when it is delivered, never at SUBSCRIBE (its SUBACK grants any filter), so a
robot that subscribes to another robot's topic is granted the filter and receives nothing.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sync.mqtt_link import (
    SHARED_UP_FILTER,
    MqttLink,
    PublishRefused,
    agent_link,
    cmd_topic,
    up_topic,
)
from tests.broker import Broker, Pki, mosquitto_binary, next_message, no_message, running, skip_reason

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason=skip_reason())

# MQTT 5 CONNECT: clean start, keepalive 30, no properties, empty client id (the broker assigns one)
CONNECT = bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([5, 0x02, 0, 30, 0, 0, 0])
CONNACK = 0x20


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


@pytest.fixture
def broker(tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    with Broker(tmp_path / "broker", pki=pki) as b:
        yield b


def central(broker: Broker, name: str = "central-1", **kwargs: object) -> MqttLink:
    return MqttLink(
        broker.settings("central-1"),
        client_id=f"central-{name}",
        persistent_session=False,
        **kwargs,  # type: ignore[arg-type]
    )


def robot(broker: Broker, agent_id: str, **kwargs: object) -> MqttLink:
    return MqttLink(
        broker.settings(agent_id),
        client_id=f"oht-agent-{agent_id}",
        persistent_session=False,
        **kwargs,  # type: ignore[arg-type]
    )


def tls12_session(broker: Broker, pki: Pki, cert: Path, key: Path) -> bytes:
    """Handshake (TLS 1.2: the client certificate is checked inside the handshake), CONNECT, first bytes back."""
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    with socket.create_connection((broker.host, broker.port), timeout=2) as raw:
        with ctx.wrap_socket(raw, server_hostname=broker.host) as tls:
            tls.sendall(CONNECT)
            return tls.recv(8)


async def test_a_certificate_from_another_ca_is_refused_in_the_handshake(broker: Broker, pki: Pki) -> None:
    own = pki.clients["oht-001"]
    assert tls12_session(broker, pki, own.cert, own.key)[0] == CONNACK  # the same code path gets in with ours

    with pytest.raises(ssl.SSLError) as refused:
        tls12_session(broker, pki, pki.foreign.cert, pki.foreign.key)
    assert refused.value.reason == "TLSV1_ALERT_UNKNOWN_CA"
    async with asyncio.timeout(2):  # the broker logs it after sending the alert
        while "certificate verify failed" not in broker.log_text():
            await asyncio.sleep(0.01)

    # The agent's link (TLS 1.3, where the client learns of it after its own half of the handshake)
    # never gets a session either: every attempt fails and it keeps backing off.
    link = agent_link(broker.settings("foreign"), "oht-001")
    await link.start()
    try:
        async with asyncio.timeout(3):
            while link.stats().connect_failures < 2:
                await asyncio.sleep(0.01)
        assert link.stats().connects == 0 and not link.connected
    finally:
        await link.stop()


async def test_a_robot_cannot_publish_another_robots_records(broker: Broker) -> None:
    listener = central(broker, subscriptions=(SHARED_UP_FILTER,))
    oht2 = robot(broker, "oht-002")
    async with running(listener, oht2):
        with pytest.raises(PublishRefused, match="Not authorized"):
            await oht2.publish(up_topic("oht-001", "results"), b"forged")
        await oht2.publish(up_topic("oht-002", "results"), b"own")
        got = await next_message(listener)
        # published first, the forged one would have arrived first
        assert (got.topic, got.payload) == (up_topic("oht-002", "results"), b"own")
        await no_message(listener, 0.1)
        # nor commands or acks, to anyone
        for topic in (cmd_topic("oht-001"), "oht/v1/oht-001/ack", "oht/v1/oht-002/cmd"):
            with pytest.raises(PublishRefused):
                await oht2.publish(topic, b"{}")


async def test_a_robot_reads_neither_another_robots_commands_nor_the_central_group(broker: Broker) -> None:
    oht1 = robot(broker, "oht-001", subscriptions=(cmd_topic("oht-002"), SHARED_UP_FILTER, cmd_topic("oht-001")))
    oht2 = robot(broker, "oht-002", subscriptions=(cmd_topic("oht-002"),))
    centre = central(broker)
    async with running(oht1, oht2, centre):  # mosquitto 2.0 grants every filter (see the module docstring)
        await centre.publish(cmd_topic("oht-002"), b"for 2")
        await oht2.publish(up_topic("oht-002", "events"), b"record of 2")
        await centre.publish(cmd_topic("oht-001"), b"for 1")
        assert (await next_message(oht2)).payload == b"for 2"
        got = await next_message(oht1)
        assert (got.topic, got.payload) == (cmd_topic("oht-001"), b"for 1")
        await no_message(oht1, 0.1)


async def test_a_central_identity_reads_every_robot_through_the_shared_group_and_commands_any(broker: Broker) -> None:
    consumer = central(broker, subscriptions=(SHARED_UP_FILTER,))
    oht1 = robot(broker, "oht-001", subscriptions=(cmd_topic("oht-001"),))
    oht2 = robot(broker, "oht-002", subscriptions=(cmd_topic("oht-002"),))
    async with running(consumer, oht1, oht2):
        await oht1.publish(up_topic("oht-001", "results"), b"r1")
        await oht2.publish(up_topic("oht-002", "alarms"), b"a2")
        got = {(m.topic, m.payload) for m in [await next_message(consumer), await next_message(consumer)]}
        assert got == {(up_topic("oht-001", "results"), b"r1"), (up_topic("oht-002", "alarms"), b"a2")}
        await consumer.publish(cmd_topic("oht-002"), b"go")
        await consumer.publish("oht/v1/oht-001/ack", b"{}")
        assert (await next_message(oht2)).payload == b"go"
