"""The MQTT link's pieces that need no broker: settings, topics, and the callback guard."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path

import pytest

from agent.sync.mqtt_link import (
    MqttSettings,
    MqttSettingsInvalid,
    ack_topic,
    agent_link,
    cmd_topic,
    guarded,
    status_topic,
    up_topic,
)


def test_topics_follow_the_contract() -> None:
    assert up_topic("oht-001", "results") == "oht/v1/oht-001/up/results"
    assert ack_topic("oht-001") == "oht/v1/oht-001/ack"
    assert cmd_topic("oht-001") == "oht/v1/oht-001/cmd"
    assert status_topic("oht-001") == "oht/v1/oht-001/status"
    link = agent_link(MqttSettings(host="broker"), "oht-001")
    assert link.client_id == "oht-agent-oht-001" and link.persistent_session
    assert link.subscriptions == ("oht/v1/oht-001/cmd", "oht/v1/oht-001/ack")


@pytest.mark.parametrize("agent_id", ["", "a/b", "oht+", "#", "x" * 65, "-leading"])
def test_an_agent_id_that_would_change_the_topic_is_refused(agent_id: str) -> None:
    with pytest.raises(ValueError):
        cmd_topic(agent_id)


@pytest.mark.parametrize("stream", ["", "Results", "a/b", "+", "#"])
def test_a_stream_that_would_change_the_topic_is_refused(stream: str) -> None:
    with pytest.raises(ValueError):
        up_topic("oht-001", stream)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"host": ""}, "host is empty"),
        ({"port": 0}, "port 0"),
        ({"cert_file": Path("c.pem")}, "cert_file and key_file go together"),
        ({"cert_file": Path("c.pem"), "key_file": Path("k.pem")}, "needs ca_file"),
        ({"keepalive_s": 1}, "keepalive_s"),
        ({"publish_timeout_s": 0}, "publish_timeout_s must be positive"),
        ({"backoff_initial_s": 5.0, "backoff_max_s": 1.0}, "backoff_max_s is below"),
        ({"receive_maximum": 0}, "receive_maximum"),
    ],
)
def test_settings_name_what_is_wrong(fields: dict[str, object], problem: str) -> None:
    with pytest.raises(MqttSettingsInvalid, match=problem) as err:
        MqttSettings(**{"host": "broker", **fields})  # type: ignore[arg-type]
    assert err.value.code == "UPSTREAM_SETTINGS_INVALID" and err.value.hint


def test_missing_tls_files_are_a_settings_error(tmp_path: Path) -> None:
    settings = MqttSettings(host="broker", ca_file=tmp_path / "absent-ca.pem")
    with pytest.raises(MqttSettingsInvalid, match="TLS files"):
        agent_link(settings, "oht-001")


def test_a_guarded_callback_logs_and_counts_instead_of_raising(caplog: pytest.LogCaptureFixture) -> None:
    errors: list[int] = []

    def broken(client: object, userdata: object) -> None:
        raise RuntimeError("bug in a callback")

    wrapped = guarded("on_connect", broken, lambda: errors.append(1))
    with caplog.at_level(logging.ERROR, logger="oht.gateway.mqtt"):
        wrapped(None, None)  # returns: paho's loop goes on
    assert errors == [1]
    assert "UPSTREAM_CALLBACK_FAILED" in caplog.text and "bug in a callback" in caplog.text


async def test_reconnect_attempts_back_off_and_a_stop_ends_them() -> None:
    with socket.socket() as s:  # a port nothing listens on: every attempt is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = MqttSettings(host="127.0.0.1", port=port, backoff_initial_s=0.02, backoff_max_s=0.1)
    link = agent_link(settings, "oht-001")
    await link.start()
    await asyncio.sleep(0.5)
    attempts = link.stats().connect_failures
    started = time.monotonic()
    await link.stop()
    assert time.monotonic() - started < 0.5  # a stop does not wait out a backoff
    # at most one attempt per 0.05 s on average once the cap is reached; without backoff, thousands
    assert 3 <= attempts <= 30, attempts
    assert link.stats().connects == 0
