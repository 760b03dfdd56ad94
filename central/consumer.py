"""The reference central consumer: every robot's records from the broker into one SQLite database.

    python -m central.consumer --broker broker.site:8883 --db /var/lib/central/records.db \\
        --ca ca.crt --cert central-1.crt --key central-1.key --name central-1

What it does with each batch of messages (as many as are waiting, up to `batch_max`):

1. decodes and checks every envelope (`central.records.decode`) and asks `verify` (the signature
   hook); a record that fails is logged with its code, counted and acknowledged to the broker,
   because it will never become valid: the agent sends it again only if it is never acked;
2. commits the batch in one transaction (`central.ledger.Ledger.commit`): new records stored,
   duplicates counted, the contiguous prefix of every stream touched computed;
3. publishes `{"v": 1, "acks": {stream: prefix}}` to `oht/v1/<agent>/ack` for every robot in the
   batch, also when nothing new was stored: a duplicate means the agent missed an ack, so it gets
   it again. Acks go out without waiting for their PUBACK (`publish_nowait`: paho sends them again
   after a reconnect): an ack that is lost is superseded by the next one, and the consumer never
   stops reading to wait for one. Two consumers' acks may reach the agent out of order; the agent
   keeps the highest (an older ack is ignored);
4. and only then acknowledges the messages to the broker (PUBACK).

A consumer killed between 2 and 4 has committed records the broker will hand out again, and the
ledger takes them as duplicates. One killed before 2 loses nothing either: its connection has a
clean session, so the broker drops its subscription and gives the shared subscription's messages to
the other consumers from then on, and what it held unacknowledged is sent again by the agent, whose
outbox keeps every record until an ack covers it. A consumer that cannot write its database exits
(CENTRAL_STORE_FAILED) instead of acknowledging records it did not store.

Run several consumers side by side (each its own `--name`, one `--db`): see `central/ledger.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent.sync.mqtt_link import (
    SHARED_UP_FILTER,
    Incoming,
    MqttLink,
    MqttLinkError,
    MqttSettings,
    MqttSettingsInvalid,
    ack_topic,
)
from central.ledger import Committed, Ledger, StoreFailed
from central.records import Record, RecordInvalid, SignatureInvalid, Verifier, decode, verify

__all__ = ["Consumer", "StoreFailed", "main"]

log = logging.getLogger("central.consumer")


class Consumer:
    """One consumer: the MQTT link (shared subscription, clean session) and a ledger connection."""

    def __init__(
        self,
        settings: MqttSettings,
        db: Path,
        *,
        name: str,
        verifier: Verifier = verify,
        batch_max: int = 200,
    ) -> None:
        self.name = name
        self.db = db
        self.link = MqttLink(
            settings,
            client_id=f"central-{name}",
            subscriptions=(SHARED_UP_FILTER,),
            persistent_session=False,
        )
        self.counts: collections.Counter[str] = collections.Counter()
        self._verify = verifier
        self._batch_max = batch_max
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="central-db")
        self._ledger: Ledger | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ledger = await loop.run_in_executor(self._executor, lambda: Ledger(self.db, consumer=self.name))
        await self.link.start()

    async def run(self) -> None:
        """Take batches until cancelled; raises StoreFailed when the database cannot be written."""
        while True:
            await self.handle(await self._take_batch())

    async def stop(self) -> None:
        await self.link.stop()
        ledger, self._ledger = self._ledger, None
        if ledger is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, ledger.close)
        self._executor.shutdown(wait=True)

    async def _take_batch(self) -> list[Incoming]:
        batch = [await self.link.receive()]
        while len(batch) < self._batch_max:
            try:
                batch.append(self.link.receive_nowait())
            except asyncio.QueueEmpty:
                break
        return batch

    def _check(self, message: Incoming) -> Record | None:
        try:
            record = decode(message.topic, message.payload)
            if not self._verify(record):
                raise SignatureInvalid(f"{record.agent}/{record.stream}/{record.seq}")
        except RecordInvalid as exc:
            self.counts["rejected"] += 1
            log.warning("refused a record on %s: %s", message.topic, exc)
            return None
        return record

    async def handle(self, batch: list[Incoming]) -> None:
        """Steps 1-4 of the module docstring for one batch."""
        records = [r for r in (self._check(m) for m in batch) if r is not None]
        if records:
            assert self._ledger is not None, "start() first"
            try:
                done: Committed = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._ledger.commit, records
                )
            except Exception as exc:
                raise StoreFailed(f"committing {len(records)} records to {self.db}: {exc}") from exc
            self.counts["stored"] += done.stored
            self.counts["duplicates"] += done.duplicates
            self.counts["conflicts"] += len(done.conflicts)
            for agent, acks in done.acks.items():
                self._send_ack(agent, acks)
        for message in batch:
            message.ack()

    def _send_ack(self, agent: str, acks: dict[str, int]) -> None:
        payload = json.dumps({"v": 1, "acks": acks}, separators=(",", ":")).encode()
        try:
            self.link.publish_nowait(ack_topic(agent), payload, qos=1)
        except MqttLinkError as exc:  # the next record or resend of this agent is acked again
            self.counts["ack_failures"] += 1
            log.warning("ack to %s not delivered: %s", agent, exc)
        else:
            self.counts["acks_sent"] += 1


# ---------------------------------------------------------------- command line
def _broker(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m central.consumer",
        description=(
            "Take every robot's upstream records from the site broker (shared subscription "
            f"{SHARED_UP_FILTER}), store each once in SQLite and acknowledge the contiguous prefix per stream."
        ),
    )
    parser.add_argument("--broker", type=_broker, required=True, metavar="HOST:PORT", help="the site's MQTT 5 broker")
    parser.add_argument("--db", type=Path, required=True, help="SQLite file, shared by every consumer on this host")
    parser.add_argument(
        "--name",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="unique per consumer; the client id is central-NAME (default: host-pid)",
    )
    tls = parser.add_argument_group("TLS (on when --ca is given)")
    tls.add_argument("--ca", type=Path, help="CA that signed the broker's certificate")
    tls.add_argument("--cert", type=Path, help="this consumer's client certificate (a central identity)")
    tls.add_argument("--key", type=Path, help="its private key")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


async def _serve(consumer: Consumer) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await consumer.start()
    except StoreFailed as exc:
        log.error("%s", exc)
        await consumer.stop()
        return 1
    worker = asyncio.create_task(consumer.run())
    ready = asyncio.create_task(consumer.link.wait_subscribed(3600))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({ready, stopping, worker}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and ready.result():
            print(f"READY {consumer.link.client_id}", flush=True)  # for whoever starts it (the tests)
        if not worker.done() and not stopping.done():
            await asyncio.wait({worker, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if worker.done():
            log.error("%s", worker.exception())
            return 1
        return 0
    finally:
        for task in (worker, ready, stopping):
            task.cancel()
        await asyncio.gather(worker, ready, stopping, return_exceptions=True)
        await consumer.stop()
        log.info("stopped: %s", dict(consumer.counts))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    host, port = args.broker
    try:
        settings = MqttSettings(
            host=host,
            port=port,
            ca_file=args.ca,
            cert_file=args.cert,
            key_file=args.key,
            backoff_initial_s=0.5,
            backoff_max_s=10.0,
        )
        consumer = Consumer(settings, args.db, name=args.name)
    except MqttSettingsInvalid as exc:
        print(exc, file=sys.stderr)
        return 2
    return asyncio.run(_serve(consumer))


if __name__ == "__main__":
    sys.exit(main())
