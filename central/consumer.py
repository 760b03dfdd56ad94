"""The reference central consumer: every robot's records from the broker into one SQLite database.

    python -m central.consumer --broker broker.site:8883 --db /var/lib/central/records.db \\
        --device-keys /etc/central/device-keys.toml \\
        --ca ca.crt --cert central-1.crt --key central-1.key --name central-1

What it does with each batch of messages (as many as are waiting, up to `batch_max`):

1. checks every message (`central.records.check`): the envelope decoded strictly, the signature
   verified with the device key pinned for the topic's robot (`--device-keys`, see
   `central/device_keys.py`), robot and stream against the topic. A record that fails is counted
   under its code, logged (once a minute per robot and code, with how many since) and
   acknowledged to the broker but never to the agent: the agent keeps it and sends it again, which
   is what enrols a robot without losing anything once its key is pinned;
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

Ed25519 verification is most of the work per record (about 85 us, against 20 us for the decoding
and 30 us for the commit), so step 1 runs in `verify_threads` threads, the batch split between
them: cryptography verifies without holding the GIL, and two threads verify nearly twice as many
records per second as one. Step 2 runs in the one database thread. The event loop only moves
messages, so it keeps reading and sending acks while a batch is checked.

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
import time
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
from central.device_keys import DeviceKeys
from central.errors import DeviceKeysInvalid
from central.ledger import Committed, Ledger, StoreFailed
from central.records import Record, Refusal, check

__all__ = ["Consumer", "StoreFailed", "main"]

log = logging.getLogger("central.consumer")

REFUSAL_LOG_INTERVAL_S = 60.0


class Consumer:
    """One consumer: the MQTT link (shared subscription, clean session), a ledger connection and the pinned keys."""

    def __init__(
        self,
        settings: MqttSettings,
        db: Path,
        *,
        name: str,
        device_keys: DeviceKeys,
        batch_max: int = 200,
        verify_threads: int = 2,
    ) -> None:
        self.name = name
        self.db = db
        self.device_keys = device_keys
        self.link = MqttLink(
            settings,
            client_id=f"central-{name}",
            subscriptions=(SHARED_UP_FILTER,),
            persistent_session=False,
        )
        self.counts: collections.Counter[str] = collections.Counter()
        self.refusals: collections.Counter[str] = collections.Counter()  # by code
        self._batch_max = batch_max
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="central-db")
        self._verify_threads = max(1, verify_threads)
        self._verifiers = ThreadPoolExecutor(max_workers=self._verify_threads, thread_name_prefix="central-verify")
        self._ledger: Ledger | None = None
        self._logged: dict[tuple[str | None, str], tuple[float, int]] = {}  # (agent, code) -> (when, since)

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
        self._verifiers.shutdown(wait=True)

    def reload_keys(self) -> None:
        """Read the device keys file again (SIGHUP); a small file, read in the event loop's thread."""
        self.device_keys.reload()

    async def _take_batch(self) -> list[Incoming]:
        batch = [await self.link.receive()]
        while len(batch) < self._batch_max:
            try:
                batch.append(self.link.receive_nowait())
            except asyncio.QueueEmpty:
                break
        return batch

    def _check(self, messages: list[Incoming]) -> list[Record | Refusal]:
        return [check(m.topic, m.payload, self.device_keys) for m in messages]

    def _commit(self, records: list[Record]) -> Committed:
        assert self._ledger is not None, "start() first"
        try:
            return self._ledger.commit(records)
        except Exception as exc:
            raise StoreFailed(f"committing {len(records)} records to {self.db}: {exc}") from exc

    async def handle(self, batch: list[Incoming]) -> None:
        """Steps 1-4 of the module docstring for one batch."""
        if not batch:
            return
        loop = asyncio.get_running_loop()
        self.device_keys.refresh()
        size = -(-len(batch) // self._verify_threads)
        chunks = [batch[i : i + size] for i in range(0, len(batch), size)]
        checked = await asyncio.gather(*(loop.run_in_executor(self._verifiers, self._check, c) for c in chunks))
        records: list[Record] = []
        for outcome in (o for chunk in checked for o in chunk):
            if isinstance(outcome, Refusal):
                self._refused(outcome)
            else:
                records.append(outcome)
        if records:
            done = await loop.run_in_executor(self._executor, self._commit, records)
            self.counts["stored"] += done.stored
            self.counts["duplicates"] += done.duplicates
            self.counts["conflicts"] += len(done.conflicts)
            for agent, acks in done.acks.items():
                self._send_ack(agent, acks)
        for message in batch:
            message.ack()

    def _refused(self, refusal: Refusal) -> None:
        """Count it; log it unless this robot's records were refused with this code less than a minute ago."""
        self.counts["rejected"] += 1
        self.refusals[refusal.code] += 1
        key = (refusal.agent, refusal.code)
        now = time.monotonic()
        last, since = self._logged.get(key, (-REFUSAL_LOG_INTERVAL_S, 0))
        if now - last < REFUSAL_LOG_INTERVAL_S:
            self._logged[key] = (last, since + 1)
            return
        self._logged[key] = (now, 0)
        more = f" ({since} more since the last report)" if since else ""
        log.warning("refused a record of %s: %s: %s%s", refusal.agent or "?", refusal.code, refusal.reason, more)

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
        "--device-keys",
        type=Path,
        required=True,
        metavar="FILE",
        help='TOML file of the pinned device keys, one line per robot: "<agent id>" = "<key>", the key as '
        "`oht-agent upstream pubkey` prints it (base64 or PEM). A robot not in it is refused "
        "(CENTRAL_DEVICE_UNKNOWN) until it is added; the file is read again on SIGHUP and when it changes",
    )
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
    loop.add_signal_handler(signal.SIGHUP, consumer.reload_keys)
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
        keys = DeviceKeys(args.device_keys)
    except DeviceKeysInvalid as exc:
        print(f"{exc.code}: {exc.message}\nhint: {exc.hint}", file=sys.stderr)
        return 2
    log.info("%d device keys pinned (%s)", len(keys), args.device_keys)
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
        consumer = Consumer(settings, args.db, name=args.name, device_keys=keys)
    except MqttSettingsInvalid as exc:
        print(exc, file=sys.stderr)
        return 2
    return asyncio.run(_serve(consumer))


if __name__ == "__main__":
    sys.exit(main())
