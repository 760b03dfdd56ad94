"""Upstream sync as one service of the gateway: the device key, the MQTT link, the sender and the
command handler, started and stopped together.

Why in the gateway and not the core: the link talks to the network, retries, and parses what
others send; none of that may come near the core's control loop. The gateway already opens the
database attached and holds the core client through which commands are submitted.

What never happens: a broker that is down, refuses us or shows a wrong certificate never stops
the gateway. The link logs each failed attempt with its code and keeps trying with backoff; the
sender logs publish and store trouble once per episode and goes on. Only what cannot get better
by waiting (no readable device key, unreadable TLS files, a bad central key) stops the service
from starting, with its code; the gateway then serves the API without sync.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import Config, UpstreamSection
from agent.store.outbox import Outbox
from agent.sync.downlink import Downlink
from agent.sync.identity import PinnedKey, load_or_create
from agent.sync.mqtt_link import Incoming, MqttLink, MqttSettings, ack_topic, agent_link, cmd_topic
from agent.sync.replay import CommandRules
from agent.sync.uplink import Uplink, UplinkStatus

if TYPE_CHECKING:
    from agent.link.client import CoreClient
    from agent.store.database import Database

__all__ = ["UpstreamService", "UpstreamStatus", "mqtt_settings"]

log = logging.getLogger("oht.gateway.upstream")


def mqtt_settings(section: UpstreamSection) -> MqttSettings:
    """The link's settings from `[upstream]` (TLS with mqtts://; the link's own timing defaults)."""
    return MqttSettings(
        host=section.host,
        port=section.port,
        ca_file=Path(section.ca_file) if section.ca_file else None,
        cert_file=Path(section.cert_file) if section.cert_file else None,
        key_file=Path(section.key_file) if section.key_file else None,
    )


@dataclass(frozen=True)
class UpstreamStatus:
    device_key: str  # fingerprint of the public half
    commands: bool  # commands from the centre are taken
    uplink: UplinkStatus

    def to_dict(self) -> dict[str, Any]:
        return {"device_key": self.device_key, "commands": self.commands, "uplink": self.uplink.to_dict()}


class UpstreamService:
    """`start()` (raises the coded error of a setup that cannot work), `tasks` for the gateway's
    supervisor, `status()`, `stop()`."""

    def __init__(self, config: Config, db: Database, core: CoreClient, *, poll_s: float = 0.1,
                 limits_every_s: float = 10.0) -> None:  # fmt: skip
        self.config = config
        self.db = db
        self.core = core
        self.poll_s = poll_s
        self.limits_every_s = limits_every_s
        self.link: MqttLink | None = None
        self.uplink: Uplink | None = None
        self.downlink: Downlink | None = None
        self.fingerprint = ""
        self._tasks: list[tuple[asyncio.Task[None], str]] = []
        self._ack_topic = ack_topic(config.agent.id)
        self._cmd_topic = cmd_topic(config.agent.id)

    @property
    def tasks(self) -> list[tuple[asyncio.Task[None], str]]:
        """(task, name) of everything that must run until stop: the sender and the reader."""
        return list(self._tasks)

    async def start(self) -> None:
        cfg, up = self.config, self.config.upstream
        identity, created = await asyncio.to_thread(load_or_create, cfg.data_path)
        self.fingerprint = identity.public.fingerprint()
        log.info("device key %s (%s)", self.fingerprint, "made now: pin it centrally" if created else "loaded")
        central_key = PinnedKey.from_text(up.central_public_key)
        outbox = Outbox(self.db, up.outbox_limits())
        self.link = agent_link(mqtt_settings(up), cfg.agent.id)
        self.uplink = Uplink(
            outbox, self.link, identity, cfg.agent.id, window=up.window, ack_timeout_s=up.ack_timeout_s,
            poll_s=self.poll_s, limits_every_s=self.limits_every_s,
        )  # fmt: skip
        self.downlink = self._make_downlink(outbox, central_key)
        await self.link.start()
        log.info("upstream: connecting to %s as %s", up.broker, self.link.client_id)
        self._tasks = [
            (asyncio.create_task(self.uplink.run(), name="upstream-sender"), "upstream-sender"),
            (asyncio.create_task(self.link.dispatch(self._on_message), name="upstream-reader"), "upstream-reader"),
        ]

    def _make_downlink(self, outbox: Outbox, central_key: PinnedKey) -> Downlink:
        up = self.config.upstream
        rules = CommandRules(agent=self.config.agent.id, max_age_s=up.command_max_age_s, clock_skew_s=up.clock_skew_s)
        return Downlink(self.core, outbox, self.db, central_key, rules)

    async def _on_message(self, message: Incoming) -> None:
        if message.topic == self._ack_topic:
            assert self.uplink is not None
            await self.uplink.on_ack(message.payload)
        elif message.topic == self._cmd_topic:
            assert self.downlink is not None
            await self.downlink.handle(message.payload)
        else:  # the broker sent what we did not subscribe to
            log.warning("upstream: message on unexpected topic %s ignored", message.topic)

    def status(self) -> UpstreamStatus | None:
        if self.uplink is None:
            return None
        return UpstreamStatus(self.fingerprint, self.downlink is not None, self.uplink.status())

    async def stop(self) -> None:
        """The sender and the reader first, then the link (OFFLINE, then DISCONNECT)."""
        tasks = [t for t, _ in self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        if self.link is not None:
            await self.link.stop()
