"""The agent's MQTT 5 link to the site broker, on paho-mqtt 2.x, for code on an asyncio loop.

paho is a blocking client with callbacks; the gateway is an asyncio program. The link runs paho in
one thread of its own (`mqtt-<client id>`) and hands everything across:

- `await link.publish(topic, payload)` resolves when the broker's PUBACK arrives (QoS 1), raises
  `PublishRefused` on a PUBACK with a failure reason code (an ACL refusal, say), and raises
  `PublishTimeout` once `publish_timeout_s` has passed, whether the broker is slow, gone or the
  link is reconnecting. A publish that timed out may still reach the broker later (paho sends an
  unacknowledged QoS 1 message again after a reconnect): the outbox counts it as unsent and sends
  it again, and the central consumer stores a record once whichever copy comes first.
- Incoming messages are taken with `await link.receive()` as `Incoming` objects. The link
  acknowledges nothing by itself (paho's manual ack): the reader calls `message.ack()` once it has
  committed the message, so a message is never acknowledged to the broker before it is safe.
  Flow control: CONNECT announces a Receive Maximum (`receive_maximum`), and once that many
  messages wait unread the link's thread stops reading the socket (it still writes acks and
  publishes and keeps the keepalive), so TCP pushes back on the broker until the reader catches
  up. Both are needed: mosquitto 2.0.11 does not keep to the Receive Maximum (a PUBACK for the
  oldest message in flight lets it put up to Receive Maximum more in flight, however many are
  still unacknowledged). While reading is paused no PUBACK for our own publishes is read either,
  so the reader must not wait on a `publish` of the same link while it leaves messages unread:
  `publish_nowait` is for a reader that answers what it reads (the central consumer's acks).
  One turn of paho's loop can still bring many messages (it reads up to as many packets as there
  are messages in flight both ways, our own unacknowledged publishes included), so the inbox takes
  up to `receive_maximum + max_queued + max_inflight`; past that (a broker that ignores flow
  control altogether) a message is logged (UPSTREAM_INBOX_FULL), counted
  (`stats().inbox_overflows`) and left unacknowledged, never dropped silently: the broker still
  holds it and sends it again on the next connection of a persistent session, and the agent sends
  again whatever the central consumer did not acknowledge.
  `dispatch(handler)` is the usual reader: an exception in the handler is logged and counted and
  the next message is handled as usual.

The session (`persistent_session`, the agent's choice): clean_start is False and the CONNECT asks
for a session expiry of `session_expiry_s`. Commands the centre sends while the robot's link is
down (a broker restart, a Wi-Fi gap, the gateway restarting) are queued for it by the broker and
delivered at the reconnect, instead of being published into a gap with no subscription. The link
still subscribes again after every CONNACK: the broker may have lost the session (a restart
without persistence, the expiry passed), and a new release may subscribe to more topics than the
stored session holds; subscribing again to the same filter replaces the subscription and loses no
message. The central consumer uses `persistent_session=False`: when a consumer dies, its share of
the shared subscription must go to the others at once, not wait in a dead session.

Presence (`presence_topic`, retained, QoS 1): ONLINE after every CONNACK, OFFLINE on a clean
`stop()`, and CONNECTIONBROKEN as the last will, which the broker publishes when the connection
ends without a DISCONNECT (the process killed, the socket dead, the keepalive missed). The will's
`at` is when that connection was made: the broker sends it later unchanged.

Reconnects run through tenacity with exponential backoff and full jitter (a random wait between 0
and `backoff_initial_s * 2**n`, at most `backoff_max_s`), and the first attempt after a lost
connection also waits a random part of `backoff_initial_s`: a fleet of robots that lost one broker
does not come back in one burst.

Every paho callback is wrapped by `guarded`: an exception in our code is logged
(UPSTREAM_CALLBACK_FAILED), counted, and never reaches paho's loop, so the network thread lives on.

Threads: only the link's thread writes to the socket. paho writes a queued packet directly from the
calling thread when it thinks it runs without a network thread; the link registers
`on_socket_register_write` (paho's hook for an external loop) so a publish or an ack from the
asyncio thread only queues the packet and wakes the link's thread, which writes it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import re
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec

import paho.mqtt.client as mqtt
import tenacity
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.store.clock import now_ts
from oht_errors import CodedError, ErrorKind

__all__ = [
    "AGENT_ID_RE",
    "SHARED_UP_FILTER",
    "ConnectFailed",
    "ConnectRefused",
    "Incoming",
    "LinkStats",
    "LinkStopped",
    "MqttLink",
    "MqttLinkError",
    "MqttSettings",
    "MqttSettingsInvalid",
    "PublishQueueFull",
    "PublishRefused",
    "PublishTimeout",
    "ack_topic",
    "agent_link",
    "cmd_topic",
    "guarded",
    "status_topic",
    "up_topic",
]

log = logging.getLogger("oht.gateway.mqtt")

# ---------------------------------------------------------------- topics (the contract's MQTT binding)
AGENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # as [agent] id: never a / + or #
_STREAM_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
TOPIC_ROOT = "oht/v1"
SHARED_UP_FILTER = f"$share/central/{TOPIC_ROOT}/+/up/+"  # every central consumer, one group


def _agent(agent_id: str) -> str:
    if not AGENT_ID_RE.match(agent_id):
        raise ValueError(f"agent id {agent_id!r} cannot name a topic")
    return agent_id


def up_topic(agent_id: str, stream: str) -> str:
    if not _STREAM_RE.match(stream):
        raise ValueError(f"stream {stream!r} cannot name a topic")
    return f"{TOPIC_ROOT}/{_agent(agent_id)}/up/{stream}"


def ack_topic(agent_id: str) -> str:
    return f"{TOPIC_ROOT}/{_agent(agent_id)}/ack"


def cmd_topic(agent_id: str) -> str:
    return f"{TOPIC_ROOT}/{_agent(agent_id)}/cmd"


def status_topic(agent_id: str) -> str:
    return f"{TOPIC_ROOT}/{_agent(agent_id)}/status"


# ---------------------------------------------------------------- errors
class MqttLinkError(CodedError):
    code = "UPSTREAM_LINK_ERROR"
    kind = ErrorKind.UNAVAILABLE
    hint = "See the message; the outbox keeps every record until the central consumer acknowledges it."


class MqttSettingsInvalid(MqttLinkError):
    code = "UPSTREAM_SETTINGS_INVALID"
    kind = ErrorKind.INVALID
    hint = "Check the broker's host and port, and that the CA, certificate and key files exist and belong together."


class ConnectFailed(MqttLinkError):
    code = "UPSTREAM_CONNECT_FAILED"
    hint = (
        "The broker could not be reached or the TLS handshake failed: check the network, the broker's "
        "address and port, that the CA file is the one that signed the broker's certificate, and the clock."
    )


class ConnectRefused(MqttLinkError):
    code = "UPSTREAM_CONNECT_REFUSED"
    hint = "The broker refused the CONNECT (reason in the message): check the robot's certificate and the broker's ACL."


class PublishTimeout(MqttLinkError):
    code = "UPSTREAM_PUBLISH_TIMEOUT"
    hint = "The broker did not acknowledge in time: check that it is up and reachable. The record is sent again."


class PublishRefused(MqttLinkError):
    code = "UPSTREAM_PUBLISH_REFUSED"
    hint = "The broker refused the message: check that its ACL lets this robot's certificate publish on its own topics."


class PublishQueueFull(MqttLinkError):
    code = "UPSTREAM_QUEUE_FULL"
    hint = "Too many messages wait for the broker's acknowledgement: the link is down or the broker is slow."


class LinkStopped(MqttLinkError):
    code = "UPSTREAM_LINK_STOPPED"
    hint = "The MQTT link was stopped (the gateway is shutting down)."


class CallbackFailed(MqttLinkError):
    code = "UPSTREAM_CALLBACK_FAILED"
    kind = ErrorKind.INTERNAL
    hint = "A bug in the agent's MQTT callback; the link goes on. Report the logged stack."


class HandlerFailed(MqttLinkError):
    code = "UPSTREAM_HANDLER_FAILED"
    kind = ErrorKind.INTERNAL
    hint = "A received message could not be handled (the stack is logged); the next message is handled as usual."


class InboxFull(MqttLinkError):
    code = "UPSTREAM_INBOX_FULL"
    hint = "Received messages are not being read; the broker sends the message again after the next reconnect."


# ---------------------------------------------------------------- settings
@dataclass(frozen=True)
class MqttSettings:
    """Where the broker is and how to talk to it; plain values, so configuration maps onto it.

    TLS is on when `ca_file` is set (the CA that signed the broker's certificate; the broker's name
    or IP address must be in its certificate). `cert_file` and `key_file` are the robot's client
    certificate, whose common name is its identity on the broker.
    """

    host: str
    port: int = 8883
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 86_400  # how long the broker keeps our session (and queues commands) while we are away
    connect_timeout_s: float = 10.0  # TCP connect, then TLS handshake and CONNACK, each
    publish_timeout_s: float = 10.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    receive_maximum: int = 32  # unacknowledged messages the broker may have in flight to us
    max_inflight: int = 16  # ours in flight to the broker: at most its Receive Maximum (mosquitto: 20)
    max_queued: int = 1000  # our own QoS 1 messages waiting for a PUBACK, at most

    def __post_init__(self) -> None:
        problems = []
        if not self.host:
            problems.append("host is empty")
        if not 0 < self.port < 65536:
            problems.append(f"port {self.port} is not 1-65535")
        if (self.cert_file is None) != (self.key_file is None):
            problems.append("cert_file and key_file go together")
        if self.cert_file is not None and self.ca_file is None:
            problems.append("a client certificate needs ca_file (TLS)")
        if not 5 <= self.keepalive_s <= 65535:
            problems.append("keepalive_s must be 5-65535")
        if not 0 <= self.session_expiry_s <= 0xFFFFFFFF:
            problems.append("session_expiry_s out of range")
        if not 1 <= self.receive_maximum <= 65535:
            problems.append("receive_maximum must be 1-65535")
        if not 1 <= self.max_inflight <= 65535:
            problems.append("max_inflight must be 1-65535")
        for name in ("connect_timeout_s", "publish_timeout_s", "backoff_initial_s", "backoff_max_s"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive")
        if self.backoff_max_s < self.backoff_initial_s:
            problems.append("backoff_max_s is below backoff_initial_s")
        if self.max_queued < 1:
            problems.append("max_queued must be at least 1")
        if problems:
            raise MqttSettingsInvalid("; ".join(problems))

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    def ssl_context(self) -> ssl.SSLContext:
        """TLS 1.2 or later, the broker's certificate checked against `ca_file` and `host`."""
        assert self.ca_file is not None
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if self.cert_file is not None and self.key_file is not None:
                ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise MqttSettingsInvalid(f"TLS files: {exc}") from exc
        return ctx


# ---------------------------------------------------------------- callbacks never kill the thread
_P = ParamSpec("_P")


def guarded(name: str, fn: Callable[_P, None], on_error: Callable[[], None] | None = None) -> Callable[_P, None]:
    """`fn` with every exception logged as UPSTREAM_CALLBACK_FAILED (and `on_error` called) instead of raised.

    paho re-raises a callback's exception out of its loop, which would end the network thread and
    with it the link; a bug in one callback must cost one message, not the connection.
    """

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            log.exception("%s", CallbackFailed(f"paho callback {name} raised; the network thread goes on"))
            if on_error is not None:
                try:
                    on_error()
                except Exception:  # pragma: no cover - a counter increment
                    pass

    return wrapper


# ---------------------------------------------------------------- what the asyncio side sees
class Incoming:
    """A received message. `ack()` once it is committed: until then the broker counts it in flight."""

    __slots__ = ("_ack", "_acked", "duplicate", "payload", "qos", "retain", "topic")

    def __init__(
        self, topic: str, payload: bytes, qos: int, retain: bool, duplicate: bool, ack: Callable[[], None]
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.duplicate = duplicate
        self._ack = ack
        self._acked = False

    def ack(self) -> None:
        """Send the PUBACK (once; later calls do nothing). A message of a connection that has since
        been lost is not acknowledged: the broker sends it again on the new connection."""
        if not self._acked:
            self._acked = True
            self._ack()

    def __repr__(self) -> str:
        return f"Incoming({self.topic!r}, {len(self.payload)} bytes, qos={self.qos}, dup={self.duplicate})"


@dataclass(frozen=True)
class LinkStats:
    connects: int
    connection_losses: int
    connect_failures: int
    publish_timeouts: int
    publish_refusals: int
    callback_errors: int
    handler_errors: int
    inbox_overflows: int


@dataclass
class _Counters:
    lock: threading.Lock = field(default_factory=threading.Lock)
    values: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LinkStats.__dataclass_fields__, 0))

    def add(self, name: str) -> None:
        with self.lock:
            self.values[name] += 1

    def snapshot(self) -> LinkStats:
        with self.lock:
            return LinkStats(**self.values)


class _Stop(Exception):
    """The link is stopping: end the connect attempts."""


_NORMAL_DISCONNECT = 0  # DISCONNECT reason "Normal disconnection": the broker discards the will


class MqttLink:
    """One MQTT 5 client: a thread that keeps it connected, and coroutines to use it. See the module docstring."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        subscriptions: tuple[str, ...] = (),
        presence_topic: str | None = None,
        persistent_session: bool = True,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.subscriptions = subscriptions
        self.presence_topic = presence_topic
        self.persistent_session = persistent_session
        self._inbox: asyncio.Queue[Incoming] = asyncio.Queue()  # bounded by _unread, counted on the link's thread
        self._unread = 0  # delivered by paho and not yet taken by receive()
        self._unread_lock = threading.Lock()
        self._room = threading.Event()  # clear: the link's thread does not read the socket
        self._room.set()
        # paho reads up to (our messages in flight + theirs) packets in one loop_read, so once reading
        # pauses at receive_maximum at most that many more arrive: none is ever refused below this.
        self._hard_cap = settings.receive_maximum + settings.max_queued + settings.max_inflight
        self._counters = _Counters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._stop_deadline = 0.0
        self._stopped = False
        self._connected = asyncio.Event()
        self._subscribed = asyncio.Event()  # every filter granted on the current connection
        self._connack: ReasonCode | None = None
        self._generation = 0  # one per successful CONNACK; written by the link's thread only
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._client = self._make_client()

    # -- paho set-up
    def _make_client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,  # reconnects are ours (tenacity, with jitter)
            manual_ack=True,
        )
        client.suppress_exceptions = True  # second line of defence behind `guarded`
        client.enable_logger(logging.getLogger("oht.gateway.mqtt.paho"))
        client.connect_timeout = s.connect_timeout_s
        client.max_inflight_messages_set(s.max_inflight)
        client.max_queued_messages_set(s.max_queued)
        if s.tls:
            client.tls_set_context(s.ssl_context())
        count_error = functools.partial(self._counters.add, "callback_errors")
        client.on_connect = guarded("on_connect", self._on_connect, count_error)
        client.on_disconnect = guarded("on_disconnect", self._on_disconnect, count_error)
        client.on_publish = guarded("on_publish", self._on_publish, count_error)
        client.on_message = guarded("on_message", self._on_message, count_error)
        client.on_subscribe = guarded("on_subscribe", self._on_subscribe, count_error)
        client.on_socket_register_write = guarded("on_socket_register_write", _written_by_link_thread)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves __init__ bare
        props.ReceiveMaximum = s.receive_maximum
        if self.persistent_session:
            props.SessionExpiryInterval = s.session_expiry_s
        client.connect_async(
            s.host, s.port, keepalive=s.keepalive_s, clean_start=not self.persistent_session, properties=props
        )
        return client

    def _presence(self, state: str) -> bytes:
        return json.dumps({"state": state, "at": now_ts()}, separators=(",", ":")).encode()

    # -- asyncio side
    async def start(self) -> None:
        """Start the link's thread; returns at once (see `wait_connected`)."""
        if self._thread is not None:
            raise RuntimeError("link already started")
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self.client_id}", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    @property
    def subscribed(self) -> bool:
        """Connected, and the broker granted every subscription of this connection: what the
        robot may publish records on, since the consumer's acks are only heard from then on."""
        return self._subscribed.is_set()

    async def wait_subscribed(self, timeout: float) -> bool:
        """True once the broker granted every subscription on the current connection (its SUBACK)."""
        try:
            async with asyncio.timeout(timeout):
                await self._subscribed.wait()
        except TimeoutError:
            return False
        return True

    @property
    def unread(self) -> int:
        """Messages received and not yet taken by `receive()` (reading pauses at `receive_maximum`)."""
        with self._unread_lock:
            return self._unread

    def stats(self) -> LinkStats:
        return self._counters.snapshot()

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, timeout: float | None = None
    ) -> None:
        """Publish and wait for the broker's PUBACK, at most `timeout` (default `publish_timeout_s`),
        waiting for a connection within the same time. QoS 0 resolves once written.

        Raises PublishTimeout, PublishRefused, PublishQueueFull or LinkStopped. Keep taking messages
        (`receive`, `dispatch`) meanwhile: a link whose reader lags stops reading, PUBACKs included.
        """
        if qos not in (0, 1):
            raise ValueError("the link publishes at QoS 0 or 1")
        if self._stopped:
            raise LinkStopped(f"cannot publish on {topic}: the link is stopped")
        limit = self.settings.publish_timeout_s if timeout is None else timeout
        loop = asyncio.get_running_loop()
        mid: int | None = None
        fut: asyncio.Future[None] = loop.create_future()
        try:
            async with asyncio.timeout(limit):
                await self._connected.wait()
                info = self._client.publish(topic, payload, qos=qos, retain=retain)
                if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                    raise PublishQueueFull(f"{self.settings.max_queued} messages already wait for a PUBACK")
                if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                    raise MqttLinkError(f"publish on {topic}: {mqtt.error_string(info.rc)}")
                mid = info.mid
                self._pending[mid] = fut  # before any await: the PUBACK's callback runs on this loop
                await fut
        except TimeoutError:
            self._counters.add("publish_timeouts")
            raise PublishTimeout(f"no PUBACK for {topic} within {limit:g} s") from None
        finally:
            if mid is not None and self._pending.get(mid) is fut:
                del self._pending[mid]

    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Hand a message to paho and return: it is sent (again after a reconnect) until the broker
        acknowledges it, and nobody waits for that. For messages a later one supersedes (cumulative acks)."""
        if qos not in (0, 1):
            raise ValueError("the link publishes at QoS 0 or 1")
        if self._stopped:
            raise LinkStopped(f"cannot publish on {topic}: the link is stopped")
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise PublishQueueFull(f"{self.settings.max_queued} messages already wait for a PUBACK")
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttLinkError(f"publish on {topic}: {mqtt.error_string(info.rc)}")

    async def receive(self) -> Incoming:
        """The next received message (wait for it); `ack()` it once it is committed."""
        message = await self._inbox.get()
        self._taken()
        return message

    def receive_nowait(self) -> Incoming:
        """The next received message if one is waiting; asyncio.QueueEmpty otherwise."""
        message = self._inbox.get_nowait()
        self._taken()
        return message

    async def dispatch(self, handler: Callable[[Incoming], Awaitable[None]]) -> None:
        """Hand every received message to `handler`, then acknowledge it; runs until cancelled.

        A handler that raises has the message logged (UPSTREAM_HANDLER_FAILED) and acknowledged all
        the same: a message that breaks the handler once breaks it again, and left unacknowledged it
        would hold one of the broker's in-flight slots for good.
        """
        while True:
            message = await self.receive()
            try:
                await handler(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                self._counters.add("handler_errors")
                log.exception("%s", HandlerFailed(f"handling {message!r} raised"))
            finally:
                message.ack()

    async def stop(self, timeout: float = 5.0) -> None:
        """Publish OFFLINE (if connected and presence is on), DISCONNECT cleanly, end the thread."""
        if self._stopped:
            return
        if self.presence_topic is not None and self.connected:
            try:
                await self.publish(
                    self.presence_topic, self._presence("OFFLINE"), retain=True, timeout=min(timeout, 2.0)
                )
            except MqttLinkError as exc:
                log.warning("OFFLINE not acknowledged: %s", exc)
        self._stopped = True
        self._stop_deadline = time.monotonic() + min(timeout, 1.0)
        self._stopping.set()
        self._client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=_NORMAL_DISCONNECT))
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join, timeout)
            if thread.is_alive():  # pragma: no cover - the thread checks the stop flag every 0.1 s
                log.error("the MQTT link's thread did not end within %.1f s", timeout)
        self._lost()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(LinkStopped("the link stopped before the broker acknowledged"))
        self._pending.clear()

    # -- crossing from the link's thread to the loop
    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(fn, *args)  # RuntimeError once the loop is closed: `guarded` logs it

    def _resolve(self, mid: int, reason: ReasonCode | None) -> None:
        fut = self._pending.pop(mid, None)
        if fut is None or fut.done():
            return  # a presence publish, or a publish that already timed out
        if reason is not None and reason.is_failure:
            self._counters.add("publish_refusals")
            fut.set_exception(PublishRefused(f"the broker answered {reason} (0x{reason.value:02x})"))
        else:
            fut.set_result(None)

    def _lost(self) -> None:
        self._connected.clear()
        self._subscribed.clear()

    def _taken(self) -> None:
        with self._unread_lock:
            self._unread -= 1
            if self._unread < self.settings.receive_maximum:
                self._room.set()

    def _ack(self, mid: int, qos: int, generation: int) -> None:
        if qos > 0 and generation == self._generation:
            self._client.ack(mid, qos)

    # -- paho callbacks (the link's thread)
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode, props: Properties | None
    ) -> None:
        self._connack = reason
        if reason.is_failure:
            return
        self._generation += 1
        theirs = getattr(props, "ReceiveMaximum", 65535)
        if theirs < self.settings.max_inflight:  # paho does not follow the broker's limit by itself
            limit = self.settings.max_inflight
            log.warning("the broker takes %d messages in flight, max_inflight is %d: lower it", theirs, limit)
        if self.subscriptions:
            client.subscribe([(f, SubscribeOptions(qos=1)) for f in self.subscriptions])
        if self.presence_topic is not None:
            client.publish(self.presence_topic, self._presence("ONLINE"), qos=1, retain=True)
        self._counters.add("connects")
        log.info(
            "MQTT connected to %s:%d as %s (session %s)",
            self.settings.host,
            self.settings.port,
            self.client_id,
            "resumed" if flags.session_present else "new",
        )
        self._to_loop(self._connected.set)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        self._to_loop(self._lost)
        if not self._stopping.is_set():
            log.warning("MQTT connection lost: %s", reason)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Properties) -> None:
        self._to_loop(self._resolve, mid, reason)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Properties
    ) -> None:
        refused = [(topic, r) for topic, r in zip(self.subscriptions, reasons, strict=False) if r.is_failure]
        for topic, reason in refused:
            log.error("the broker refused the subscription %s: %s (check its ACL)", topic, reason)
        if not refused:
            self._to_loop(self._subscribed.set)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        ack = functools.partial(self._ack, msg.mid, msg.qos, self._generation)
        message = Incoming(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), bool(msg.dup), ack)
        with self._unread_lock:
            if self._unread >= self._hard_cap:
                full = True
            else:
                full = False
                self._unread += 1
                if self._unread >= self.settings.receive_maximum:
                    self._room.clear()  # _serve stops reading until the reader catches up
        if full:
            self._counters.add("inbox_overflows")
            log.warning("%s", InboxFull(f"{message!r} left unacknowledged: {self._hard_cap} wait unread"))
            return
        self._to_loop(self._inbox.put_nowait, message)

    # -- the link's thread
    def _run(self) -> None:
        first = True
        while not self._stopping.is_set():
            if not first:  # spread a fleet's reconnects after a broker restart
                self._stopping.wait(random.uniform(0, self.settings.backoff_initial_s))
            first = False
            try:
                self._connect_with_backoff()
            except _Stop:
                break
            self._serve()
            self._to_loop(self._lost)
            if not self._stopping.is_set():
                self._counters.add("connection_losses")
        self._drop_socket()

    def _connect_with_backoff(self) -> None:
        s = self.settings

        def give_up(state: tenacity.RetryCallState) -> bool:
            return self._stopping.is_set()

        def before_sleep(state: tenacity.RetryCallState) -> None:
            wait = state.next_action.sleep if state.next_action else 0.0
            exc = state.outcome.exception() if state.outcome else None
            log.warning("%s; attempt %d, next in %.2f s", exc, state.attempt_number, wait)

        retrying = tenacity.Retrying(
            wait=tenacity.wait_random_exponential(multiplier=s.backoff_initial_s, max=s.backoff_max_s),
            retry=tenacity.retry_if_exception_type(MqttLinkError),
            stop=give_up,
            sleep=self._pause,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            retrying(self._attempt)
        except MqttLinkError:
            raise _Stop() from None  # only a stop ends the retries

    def _attempt(self) -> None:
        """One connection: TCP, TLS, CONNECT, and the CONNACK; raises ConnectFailed or ConnectRefused."""
        if self._stopping.is_set():
            raise LinkStopped("stopping")
        s = self.settings
        self._connack = None
        if self.presence_topic is not None:
            self._client.will_set(self.presence_topic, self._presence("CONNECTIONBROKEN"), qos=1, retain=True)
        try:
            self._client.reconnect()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self._counters.add("connect_failures")
            self._drop_socket()
            raise ConnectFailed(f"{s.host}:{s.port}: {exc}") from exc
        deadline = time.monotonic() + s.connect_timeout_s
        while True:  # the CONNACK arrives through on_connect, inside loop()
            rc = self._client.loop(0.05)
            connack = self._received_connack()
            if connack is not None:
                break
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or time.monotonic() > deadline or self._stopping.is_set():
                self._counters.add("connect_failures")
                self._drop_socket()
                why = mqtt.error_string(rc) if rc != MQTTErrorCode.MQTT_ERR_SUCCESS else "no CONNACK in time"
                raise ConnectFailed(f"{s.host}:{s.port}: {why}")
        if connack.is_failure:
            self._counters.add("connect_failures")
            self._drop_socket()
            raise ConnectRefused(f"{s.host}:{s.port} answered {connack} (0x{connack.value:02x})")

    def _received_connack(self) -> ReasonCode | None:
        return self._connack

    def _pause(self, seconds: float) -> None:
        """tenacity's sleep between attempts: a stop cuts it short."""
        self._stopping.wait(seconds)

    def _serve(self) -> None:
        """Run paho's loop until the connection ends (or a stop gives up waiting for the DISCONNECT)."""
        while self._client.socket() is not None:  # paho closes it after writing our DISCONNECT
            rc = self._client.loop(0.1) if self._room.is_set() else self._serve_without_reading()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            if self._stopping.is_set() and time.monotonic() > self._stop_deadline:
                return

    def _serve_without_reading(self) -> MQTTErrorCode:
        """Flow control: write what is queued (acks, publishes), keep the keepalive, read nothing."""
        if self._client.want_write():
            rc = self._client.loop_write()
            if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
                return rc
        rc = self._client.loop_misc()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return rc
        self._room.wait(0.02)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _drop_socket(self) -> None:
        sock = self._client.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:  # pragma: no cover
                pass


def _written_by_link_thread(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """paho's external-loop hook: its presence stops paho from writing on the caller's thread;
    the link's thread selects for writability whenever packets are queued."""


def agent_link(settings: MqttSettings, agent_id: str) -> MqttLink:
    """The agent's link: client id oht-agent-{id}, its own cmd and ack, presence on its status topic."""
    return MqttLink(
        settings,
        client_id=f"oht-agent-{_agent(agent_id)}",
        subscriptions=(cmd_topic(agent_id), ack_topic(agent_id)),
        presence_topic=status_topic(agent_id),
        persistent_session=True,
    )
