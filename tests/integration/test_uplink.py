"""The robot's sender against a real mosquitto and the reference central consumer.

The outbox is a real database in tmp_path (records written as the core writes them, in units of
work); the peer is `central.consumer.Consumer` with its ledger in tmp_path, and what arrived is
read from that ledger. Exactly once is the ledger's key (agent, stream, seq) plus the check that
every stored id is the outbox's id and every signature verifies; "nothing lost" is every seq
arriving and the outbox pruned to empty by the consumer's acks alone.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.store.database import Database
from agent.store.outbox import Outbox, add
from agent.sync.envelope import Record as CentralRecord
from agent.sync.envelope import decode_record, encode_command, make_command
from agent.sync.identity import DeviceIdentity, PinnedKey, create, load_or_create, verify_record
from agent.sync.mqtt_link import (
    Incoming,
    MqttLink,
    MqttSettings,
    ack_topic,
    agent_link,
    cmd_topic,
    status_topic,
    up_topic,
)  # fmt: skip
from agent.sync.uplink import Uplink
from central.consumer import Consumer
from central.device_keys import DeviceKeys
from central.ledger import Committed
from tests.broker import Broker, Pki, mosquitto_binary, next_message, running, skip_reason
from tests.conftest import agent_config, wait_for
from tests.upstream_peer import keys_text

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason=skip_reason())

AGENT = "oht-001"


# ---------------------------------------------------------------- the peer
class NotingConsumer(Consumer):
    """The consumer, telling `note` of every record it is about to commit (in its database thread)."""

    def __init__(self, *args: Any, note: Callable[[CentralRecord], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._note = note

    def _commit(self, records: list[CentralRecord]) -> Committed:
        for record in records:
            self._note(record)
        return super()._commit(records)


def make_consumer(
    settings: MqttSettings, ledger: Path, devices: dict[str, DeviceIdentity],
    note: Callable[[CentralRecord], None] | None = None,
) -> Consumer:  # fmt: skip
    """The one place the tests build the central consumer, with `devices` pinned."""
    keys = ledger.with_name("device-keys.toml")
    keys.write_text(keys_text(devices))
    if note is None:
        return Consumer(settings, ledger, name="central-1", device_keys=DeviceKeys(keys))
    return NotingConsumer(settings, ledger, name="central-1", device_keys=DeviceKeys(keys), note=note)


@asynccontextmanager
async def consuming(consumer: Consumer) -> AsyncIterator[Consumer]:
    await consumer.start()
    assert await consumer.link.wait_subscribed(3.0), "the consumer did not subscribe"
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.stop()


def ledger_rows(path: Path, agent: str = AGENT) -> list[tuple[str, int, str, str, str, str, str]]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT stream, seq, id, kind, at, body, sig FROM records WHERE agent = ? ORDER BY stream, seq", (agent,)
        ).fetchall()


def receipts(path: Path, agent: str) -> dict[str, tuple[str, str]]:
    """command_id -> (state, error_code) of the receipts on `results` for commands never committed."""
    out = {}
    for stream, _seq, _id, kind, _at, body, _sig in ledger_rows(path, agent):
        doc = json.loads(body)
        if stream == "results" and kind == "command_result" and doc.get("source") == "upstream":
            out[doc["idempotency_key"]] = (doc["state"], doc["error_code"])
    return out


def ledger_count(path: Path) -> int:
    return len(ledger_rows(path))


# ---------------------------------------------------------------- the robot
async def write(db: Database, items: list[tuple[str, Any]]) -> None:
    """Records in one unit of work, as the core writes them."""

    async def unit(conn: Any) -> None:
        for kind, payload in items:
            await add(conn, kind, payload)

    await db.write(unit)


async def outbox_rows(db: Database) -> dict[tuple[str, int], str]:
    rows = await db.read(lambda conn: conn.execute_fetchall("SELECT stream, stream_seq, id FROM outbox"))
    return {(r[0], int(r[1])): r[2] for r in rows}


async def unacked(outbox: Outbox) -> int:
    return sum(b.unacked for b in (await outbox.backlog()).values())


class Robot:
    """The sender on its link, with the reader of the ack topic; `take_acks = False` drops acks."""

    def __init__(self, db: Database, settings: MqttSettings, key_dir: Path, **options: Any) -> None:
        key_dir.mkdir(exist_ok=True)
        self.identity: DeviceIdentity = create(key_dir)[0]
        self.outbox = Outbox(db)
        self.link = agent_link(settings, AGENT)
        options.setdefault("poll_s", 0.05)
        self.uplink = Uplink(self.outbox, self.link, self.identity, AGENT, **options)
        self.take_acks = True

    async def _on_message(self, message: Incoming) -> None:
        if message.topic == ack_topic(AGENT) and self.take_acks:
            await self.uplink.on_ack(message.payload)

    @asynccontextmanager
    async def sending(self) -> AsyncIterator[Robot]:
        async with running(self.link):
            tasks = [asyncio.create_task(self.uplink.run()), asyncio.create_task(self.link.dispatch(self._on_message))]
            try:
                yield self
            finally:
                for task in tasks:
                    task.cancel()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                assert all(isinstance(r, asyncio.CancelledError) for r in results), results


def check_ledger(path: Path, expected: dict[tuple[str, int], str], identity: DeviceIdentity) -> None:
    """Every expected (stream, seq) stored once with the outbox's id, signed by the device key."""
    rows = ledger_rows(path)
    stored = {(r[0], r[1]): r[2] for r in rows}
    assert len(rows) == len(stored)
    assert stored == expected
    key = PinnedKey(identity.private_key.public_key())
    for stream, seq, rid, kind, at, body, sig in rows:
        doc = {"v": 1, "agent": AGENT, "stream": stream, "seq": seq, "id": rid, "kind": kind, "at": at,
               "body": json.loads(body), "sig": sig}  # fmt: skip
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        verify_record(decode_record(raw), key)


@pytest.fixture
def broker(tmp_path: Path) -> Broker:
    with Broker(tmp_path / "broker") as b:
        yield b  # type: ignore[misc]


def mixed(n_telemetry: int) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for i in range(12):
        items += [("command_result", {"n": i}), ("alarm", {"code": "X", "raised": i % 2 == 0}),
                  ("transition", {"to": f"S{i}"}), ("event", {"n": i}), ("audit", {"who": "tech", "n": i})]  # fmt: skip
    items += [("telemetry", {"source": "power", "key": f"k{i}", "value": i}) for i in range(n_telemetry)]
    return items


# ---------------------------------------------------------------- tests
async def test_every_record_of_every_stream_arrives_once_and_the_acks_empty_the_outbox(
    db: Database, broker: Broker, tmp_path: Path
) -> None:
    await write(db, mixed(300))
    expected = await outbox_rows(db)
    ledger = tmp_path / "central.db"
    robot = Robot(db, broker.settings(), tmp_path / "keys", window=32)
    async with consuming(make_consumer(broker.settings(), ledger, {AGENT: robot.identity})), robot.sending():
        assert await wait_for(lambda: ledger_count(ledger) == len(expected), 10.0), ledger_count(ledger)
        await write(db, [("alarm", {"code": "LATE"})])  # written while running: found by polling
        expected.update(await outbox_rows(db))
        assert await wait_for(lambda: ledger_count(ledger) == len(expected), 5.0)
        deadline = asyncio.get_running_loop().time() + 5.0
        while await unacked(robot.outbox) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        assert await unacked(robot.outbox) == 0
        status = robot.uplink.status()
    check_ledger(ledger, expected, robot.identity)
    assert {s for s, _ in expected} == {"results", "alarms", "events", "audit", "telemetry"}
    assert status.streams["telemetry"].acked == 300 and status.resent == 0
    assert status.published == len(expected)


async def test_a_critical_record_behind_thousands_of_telemetry_records_goes_first(
    db: Database, broker: Broker, tmp_path: Path
) -> None:
    await write(db, [("telemetry", {"n": i}) for i in range(3000)])
    await write(db, [("alarm", {"code": "E_STOP", "raised": True})])
    arrived: list[tuple[str, int]] = []

    def note(record: CentralRecord) -> None:
        arrived.append((record.stream, record.seq))

    ledger = tmp_path / "central.db"
    robot = Robot(db, broker.settings(), tmp_path / "keys", window=64)
    async with consuming(make_consumer(broker.settings(), ledger, {AGENT: robot.identity}, note)), robot.sending():
        assert await wait_for(lambda: ("alarms", 1) in arrived, 5.0)
        assert await wait_for(lambda: len(arrived) >= 200, 5.0)
    assert arrived[0] == ("alarms", 1), arrived[:5]
    telemetry = [seq for stream, seq in arrived if stream == "telemetry"]
    assert telemetry[:100] == list(range(1, 101))  # and each stream in order after it


async def test_the_window_bounds_what_is_unacknowledged_and_acks_free_room(
    db: Database, broker: Broker, tmp_path: Path
) -> None:
    """A listener in place of the consumer sees exactly `window` records; an ack of 4 lets 4 more go."""
    await write(db, [("command_result", {"n": i}) for i in range(50)])
    listener = MqttLink(
        broker.settings(), client_id="listener", subscriptions=(up_topic(AGENT, "results"),), persistent_session=False
    )
    central = MqttLink(broker.settings(), client_id="central-acks", persistent_session=False)
    robot = Robot(db, broker.settings(), tmp_path / "keys", window=10, ack_timeout_s=60.0)
    seen: list[int] = []

    async def take(until: int) -> None:
        while len(seen) < until:
            seen.append(json.loads((await next_message(listener, 3.0)).payload)["seq"])

    async with running(listener, central), robot.sending():
        await take(10)
        await asyncio.sleep(0.3)  # long enough for more to come, were the window not kept
        assert listener.unread == 0 and robot.uplink.in_flight == 10
        await central.publish(ack_topic(AGENT), b'{"v":1,"acks":{"results":4}}')
        await take(14)
        await asyncio.sleep(0.3)
        assert listener.unread == 0
        status = robot.uplink.status().streams["results"]
    assert seen == list(range(1, 15))
    assert (status.acked, status.sent_through, status.in_flight) == (4, 14, 10)
    assert len(await outbox_rows(db)) == 46  # the ack pruned 1..4


async def test_without_acks_the_robot_sends_again_after_the_ack_timeout(
    db: Database, broker: Broker, tmp_path: Path
) -> None:
    await write(db, [("audit", {"n": i}) for i in range(20)])
    expected = await outbox_rows(db)
    ledger = tmp_path / "central.db"
    robot = Robot(db, broker.settings(), tmp_path / "keys", window=8, ack_timeout_s=0.4)
    robot.take_acks = False
    consumer = make_consumer(broker.settings(), ledger, {AGENT: robot.identity})
    async with consuming(consumer), robot.sending():
        # audit is not critical: 7 of the window of 8 (one slot is kept for critical records)
        assert await wait_for(lambda: consumer.counts["duplicates"] >= 7, 5.0)  # 1..7 came again
        assert ledger_count(ledger) == 7 and robot.uplink.status().resent >= 7
        robot.take_acks = True
        assert await wait_for(lambda: ledger_count(ledger) == 20, 5.0)
        assert await wait_for(lambda: robot.uplink.status().streams["audit"].acked == 20, 5.0)
    check_ledger(ledger, expected, robot.identity)


async def test_a_broker_restart_mid_drain_ends_with_every_record_once(
    db: Database, broker: Broker, tmp_path: Path
) -> None:
    await write(db, mixed(1500))
    expected = await outbox_rows(db)
    ledger = tmp_path / "central.db"
    robot = Robot(db, broker.settings(), tmp_path / "keys", window=64, ack_timeout_s=1.0)
    async with consuming(make_consumer(broker.settings(), ledger, {AGENT: robot.identity})), robot.sending():
        assert await wait_for(lambda: ledger_count(ledger) >= 300, 5.0)
        broker.kill9()
        broker.start()  # no persistence: sessions, subscriptions and queued messages are gone
        assert await wait_for(lambda: ledger_count(ledger) == len(expected), 8.0), ledger_count(ledger)
        deadline = asyncio.get_running_loop().time() + 5.0
        while await unacked(robot.outbox) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        assert await unacked(robot.outbox) == 0
        assert robot.link.stats().connects >= 2
    check_ledger(ledger, expected, robot.identity)


# ---------------------------------------------------------------- the gateway, over TLS
CENTRAL_KEY = Ed25519PrivateKey.generate()  # the centre's command-signing key, for this module


def central_key_text() -> str:
    raw = CENTRAL_KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def signed_command(command_id: str, *, expired: bool = False, key: Ed25519PrivateKey = CENTRAL_KEY) -> bytes:
    now = datetime.now(UTC)
    not_after = now - timedelta(seconds=1) if expired else now + timedelta(seconds=60)
    command = make_command(
        command_id=command_id, type="register_write", params={"module": "travel", "address": 0x0100, "value": 1},
        not_after=stamp(not_after), issued_at=stamp(now - timedelta(seconds=2)), sign=key.sign,
    )  # fmt: skip
    return encode_command(command)


def stamp(when: datetime) -> str:
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


async def upstream_answer(gateway: Any) -> dict[str, Any]:
    """`GET /api/v1/upstream` as a new viewer: the route reaches the gateway's own sync service."""
    import httpx

    from agent.auth.principal import CallContext, cli_principal

    api = gateway.api.app.state.api
    await api.auth.create_user(
        cli_principal("test"), "sync-watcher", "viewer", "copper kettle on a windy pier", CallContext()
    )
    async with httpx.AsyncClient(base_url=gateway.api.url, timeout=5.0) as client:
        login = await client.post(
            "/api/v1/auth/login", json={"username": "sync-watcher", "password": "copper kettle on a windy pier"}
        )
        assert login.status_code == 200, login.text
        answer = await client.get("/api/v1/upstream", headers={"Authorization": f"Bearer {login.json()['token']}"})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert body["enabled"] is True and body["device_key"] and set(body["uplink"]["streams"])
    return body


async def test_the_gateway_with_upstream_set_goes_online_and_delivers_records(tmp_path: Path) -> None:
    """Configuration -> mqtt_settings -> TLS with client certificates and the site ACL; the gateway
    runs without a core (the API serves meanwhile), the test's database plays the core's part."""
    from agent.gateway import Gateway

    pki = Pki(tmp_path / "pki", clients=("oht-test", "central-1"))
    with Broker(tmp_path / "broker", pki=pki) as broker:
        ident = pki.clients["oht-test"]
        extra = (
            f'\n[upstream]\nbroker = "mqtts://127.0.0.1:{broker.port}"\nca_file = "{pki.ca}"\n'
            f'cert_file = "{ident.cert}"\nkey_file = "{ident.key}"\ncentral_public_key = "{central_key_text()}"\n'
        )
        cfg = agent_config(tmp_path, "/dev/null", extra)
        core_db = await Database.open(cfg.data_path)
        device, _ = load_or_create(cfg.data_path)  # the gateway loads the same key
        watcher = MqttLink(broker.settings("central-1"), client_id="central-watch",
                           subscriptions=(status_topic("oht-test"),), persistent_session=False)  # fmt: skip
        ledger = tmp_path / "central.db"
        try:
            await write(core_db, mixed(20))
            expected = await outbox_rows(core_db)
            async with (
                consuming(make_consumer(broker.settings("central-1"), ledger, {"oht-test": device})),
                running(watcher),
            ):
                gateway = Gateway(cfg)
                await gateway.start()
                try:
                    presence = json.loads((await next_message(watcher, 5.0)).payload)
                    assert presence["state"] == "ONLINE"
                    assert gateway.upstream is not None
                    assert {"upstream-sender", "upstream-reader"} <= set(gateway.tasks.names())
                    assert await wait_for(lambda: len(ledger_rows(ledger, "oht-test")) == len(expected), 5.0)
                    deadline = asyncio.get_running_loop().time() + 5.0
                    outbox = Outbox(core_db)
                    while await unacked(outbox) and asyncio.get_running_loop().time() < deadline:
                        await asyncio.sleep(0.02)
                    assert await unacked(outbox) == 0
                    # Commands down, through the broker and the ACL: answered on `results`, never run.
                    await watcher.publish(cmd_topic("oht-test"), signed_command("c-expired", expired=True))
                    await watcher.publish(
                        cmd_topic("oht-test"), signed_command("c-forged", key=Ed25519PrivateKey.generate())
                    )
                    assert await wait_for(lambda: len(receipts(ledger, "oht-test")) == 2, 5.0)
                    assert receipts(ledger, "oht-test") == {
                        "c-expired": ("expired", "UPSTREAM_EXPIRED"),
                        "c-forged": ("rejected", "UPSTREAM_SIGNATURE_INVALID"),
                    }
                    assert (await upstream_answer(gateway))["uplink"]["connected"] is True
                    assert gateway.tasks.healthy
                finally:
                    await gateway.shutdown()
                assert json.loads((await next_message(watcher, 3.0)).payload)["state"] == "OFFLINE"
            delivered = {(r[0], r[1]): r[2] for r in ledger_rows(ledger, "oht-test")}
            assert {k: v for k, v in delivered.items() if k in expected} == expected
        finally:
            await core_db.close()


async def test_the_gateway_serves_while_the_broker_is_down_and_delivers_once_it_is_up(tmp_path: Path) -> None:
    import httpx

    from agent.gateway import Gateway

    broker = Broker(tmp_path / "broker")  # its port is chosen; nothing listens on it yet
    extra = (
        f'\n[upstream]\nbroker = "mqtt://127.0.0.1:{broker.port}"\nack_timeout_s = 1.0\n'
        f'central_public_key = "{central_key_text()}"\n'
    )
    cfg = agent_config(tmp_path, "/dev/null", extra)
    core_db = await Database.open(cfg.data_path)
    device, _ = load_or_create(cfg.data_path)  # the gateway loads the same key
    ledger = tmp_path / "central.db"
    gateway = Gateway(cfg)
    try:
        await write(core_db, mixed(0))
        expected = await outbox_rows(core_db)
        await gateway.start()
        async with httpx.AsyncClient(base_url=gateway.api.url, timeout=5.0) as client:  # type: ignore[union-attr]
            assert (await client.get("/healthz")).status_code == 200
        assert gateway.upstream is not None and gateway.tasks.healthy
        link = gateway.upstream.link
        assert link is not None and await wait_for(lambda: link.stats().connect_failures >= 1, 3.0)
        with broker:
            async with consuming(make_consumer(broker.settings(), ledger, {"oht-test": device})):
                assert await wait_for(lambda: len(ledger_rows(ledger, "oht-test")) == len(expected), 6.0)
        assert gateway.tasks.healthy
    finally:
        await gateway.shutdown()
        await core_db.close()
    assert {(r[0], r[1]): r[2] for r in ledger_rows(ledger, "oht-test")} == expected


async def test_an_alarm_gets_a_slot_while_telemetry_fills_the_window(
    db: Database, broker: Broker, tmp_path: Path
) -> None:
    """No ack ever comes: the window is full of telemetry, and an alarm written now still goes."""
    await write(db, [("telemetry", {"n": i}) for i in range(500)])
    listener = MqttLink(
        broker.settings(), client_id="listener", subscriptions=(f"oht/v1/{AGENT}/up/+",), persistent_session=False
    )
    robot = Robot(db, broker.settings(), tmp_path / "keys", window=16, ack_timeout_s=60.0)
    seen: list[tuple[str, int]] = []

    async def take(until: int) -> None:
        while len(seen) < until:
            doc = json.loads((await next_message(listener, 3.0)).payload)
            seen.append((doc["stream"], doc["seq"]))

    async with running(listener), robot.sending():
        await take(14)  # 16 less the two slots kept for critical streams
        await asyncio.sleep(0.2)
        assert listener.unread == 0
        await write(db, [("alarm", {"code": "OVERTEMP", "raised": True})])
        await take(15)
    assert seen == [("telemetry", n) for n in range(1, 15)] + [("alarms", 1)]


async def test_coalescing_an_old_backlog_sends_its_gap_records_before_their_turn(
    db: Database, broker: Broker, tmp_path: Path
) -> None:
    """600 samples, every other one of the same key: each read of the backlog keeps the newest of
    that key and every sample of the others, and the store appends a gap record for the rest at
    the end of the stream, hundreds of seqs later. With a window of 16 and no resend to rescue it
    (ack timeout 60 s), the window fills with the kept samples after the first hole; the
    consumer's ack passes the hole only because its gap record is sent at once."""
    samples = [{"source": "power", "key": "k" if i % 2 else f"d{i}", "value": i} for i in range(600)]
    await write(db, [("telemetry", sample) for sample in samples])
    ledger = tmp_path / "central.db"
    robot = Robot(db, broker.settings(), tmp_path / "keys", window=16, ack_timeout_s=60.0)
    async with consuming(make_consumer(broker.settings(), ledger, {AGENT: robot.identity})), robot.sending():
        deadline = asyncio.get_running_loop().time() + 5.0
        while await unacked(robot.outbox) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        assert await unacked(robot.outbox) == 0, robot.uplink.status().to_dict()
    rows = [r for r in ledger_rows(ledger) if r[0] == "telemetry"]
    covered = set()
    for _stream, seq, _id, kind, _at, body, _sig in rows:
        covered.add(seq)
        if kind == "gap":
            gap = json.loads(body)
            covered.update(range(gap["from_seq"], gap["to_seq"] + 1))
    assert covered == set(range(1, max(covered) + 1)) and max(covered) > 600
    assert sum(1 for r in rows if r[3] == "telemetry") < 320  # the repeated key was coalesced away
