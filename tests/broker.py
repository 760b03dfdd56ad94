"""A real MQTT 5 broker for tests: Debian's mosquitto 2.0, one process per test, on 127.0.0.1.

Each `Broker` gets a directory of its own (configuration, log, persistence data, certificates) and a
free port, and is started, killed and restarted on that port and directory, so a test can take the
broker away under a client and bring it back as a site's broker would come back after a crash.

Why `user root` when the tests run as root: mosquitto started as root drops to the `mosquitto`
account, which cannot enter pytest's temporary directory (pytest makes its base 0700) and so could
write neither its persistence file nor read a reloaded ACL. The test broker serves nobody but the
test, on loopback, from a throwaway directory, so it keeps the account that started it; mosquitto
takes `user root` to mean "do not change user". Run as any other account, it cannot change user
and the setting is left out. A site's broker keeps the package's default (`docs/broker.md`).

`Pki` makes the TLS material with `cryptography`: a test CA, a server certificate for 127.0.0.1, a
client certificate per identity (the common name becomes the MQTT user name), and one from a
foreign CA. `ACL` is the access list a site gives robots and central consumers; the tests run the
broker with it so the rules are checked by mosquitto itself, not by reading them.
"""

from __future__ import annotations

import asyncio
import ctypes
import datetime as dt
import ipaddress
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.demo_upstream import mosquitto_binary
from agent.sync.mqtt_link import Incoming, MqttLink, MqttSettings

__all__ = [
    "ACL",
    "Broker",
    "BrokerError",
    "Identity",
    "Pki",
    "mosquitto_binary",
    "next_message",
    "no_message",
    "running",
    "skip_reason",
]

START_TIMEOUT_S = 5.0  # mosquitto listens within ~20 ms; this only bounds a broken start
STOP_TIMEOUT_S = 2.0  # SIGTERM to exit (it writes its persistence file first), then SIGKILL

# Robots are known by the common name of their client certificate (use_identity_as_username), so
# `%u` is the robot's id. A robot publishes only its own up-streams and status and reads only its
# own commands and acks; a central identity reads every robot's up-streams (through the shared
# subscription) and status, and writes commands and acks to any robot. Nobody else may do anything.
ACL = """\
# Every client: its own topics only (%u is the certificate's common name).
pattern write oht/v1/%u/up/#
pattern write oht/v1/%u/status
pattern read oht/v1/%u/cmd
pattern read oht/v1/%u/ack

user central-1
topic read $share/central/oht/v1/+/up/+
topic read oht/v1/+/up/+
topic read oht/v1/+/status
topic write oht/v1/+/cmd
topic write oht/v1/+/ack
"""


class BrokerError(RuntimeError):
    """The test broker did not start, or did not stop, in time; the message ends with its log."""


def skip_reason() -> str:
    """Why broker tests cannot run here, for pytest.mark.skipif."""
    return "mosquitto is not installed (`apt-get install mosquitto`; .ci/run installs it)"


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the thread that started it ends, so a test run that
    is itself killed (the hang guard, a CI timeout) leaves no broker behind. Start brokers from the
    main thread, as fixtures do."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- certificates
@dataclass(frozen=True)
class Identity:
    """A client's certificate and key files (PEM); `name` is the certificate's common name."""

    name: str
    cert: Path
    key: Path


class Pki:
    """A test CA, a server certificate for 127.0.0.1, and client identities, written under `root`.

    EC P-256 keys: a key pair takes well under a millisecond, so each test can make its own.
    """

    def __init__(self, root: Path, clients: tuple[str, ...] = ("oht-001", "oht-002", "central-1")) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._ca_key, self._ca_cert = _make_ca("OHT test CA")
        self.ca = self._write_cert("ca.crt", self._ca_cert)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert = _issue(self._ca_key, self._ca_cert, "127.0.0.1", server_key, server=True)
        self.server = Identity(
            "127.0.0.1", self._write_cert("server.crt", server_cert), self._write_key("server.key", server_key)
        )
        self.clients = {name: self.issue(name) for name in clients}
        foreign_key, foreign_ca = _make_ca("Someone else's CA")
        self.foreign_ca = self._write_cert("foreign-ca.crt", foreign_ca)
        self.foreign = self._identity(foreign_key, foreign_ca, "oht-001", "foreign-oht-001")

    def issue(self, name: str) -> Identity:
        """A client certificate from the test CA with common name `name`."""
        return self._identity(self._ca_key, self._ca_cert, name, name)

    def _identity(self, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cn: str, file: str) -> Identity:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(ca_key, ca_cert, cn, key, server=False)
        return Identity(cn, self._write_cert(f"{file}.crt", cert), self._write_key(f"{file}.key", key))

    def _write_cert(self, name: str, cert: x509.Certificate) -> Path:
        path = self.root / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def _write_key(self, name: str, key: ec.EllipticCurvePrivateKey) -> Path:
        path = self.root / name
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        path.chmod(0o600)
        return path


def _make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    server: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(cn))]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256())


# ---------------------------------------------------------------- the broker process
class Broker:
    """One mosquitto process on 127.0.0.1:`port`, configured and kept under `root`.

    `persistence`: sessions, queued messages and retained messages are written to `root/data` after
    every change (autosave_on_changes with an interval of 1), on mosquitto's next turn of its loop,
    up to ~100 ms later: a test that kills the broker right after a PUBACK calls `persist()` first.
    Without it a restart starts empty, as a broker on a RAM disk would.
    `pki`: serve TLS only, with client certificates required, the certificate's common name as the
    user name and `ACL` applied.
    """

    def __init__(
        self, root: Path, *, persistence: bool = False, pki: Pki | None = None, max_queued: int = 100_000
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise BrokerError(skip_reason())
        self.binary = binary
        self.root = root
        self.persistence = persistence
        self.pki = pki
        self.max_queued = max_queued
        self.host = "127.0.0.1"
        self.port = free_port()
        self.data_dir = root / "data"
        self.config = root / "mosquitto.conf"
        self.log = root / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)

    # -- configuration
    def _write_config(self) -> None:
        lines = [
            "per_listener_settings false",
            f"listener {self.port} {self.host}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
            # A central consumer's queue must hold the windows of every robot at once (docs/broker.md):
            # at mosquitto's default of 1000, a fleet's records beyond it are dropped and wait for the
            # agents' ack timeout.
            f"max_queued_messages {self.max_queued}",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.data_dir}/",
                "autosave_on_changes true",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        if self.pki is None:
            lines.append("allow_anonymous true")
        else:
            acl = self.root / "acl"
            acl.write_text(ACL)
            lines += [
                "allow_anonymous false",
                f"cafile {self.pki.ca}",
                f"certfile {self.pki.server.cert}",
                f"keyfile {self.pki.server.key}",
                "require_certificate true",
                "use_identity_as_username true",
                f"acl_file {acl}",
            ]
        self.config.write_text("\n".join(lines) + "\n")

    # -- life cycle
    def start(self) -> Broker:
        """Start (or restart, on the same port and data directory) and wait until it accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            raise BrokerError("broker already running")
        self._write_config()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise BrokerError(f"mosquitto exited with {self.proc.returncode}\n{self.log_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.kill9()
                    raise BrokerError(
                        f"mosquitto did not listen within {START_TIMEOUT_S} s\n{self.log_text()}"
                    ) from None
                time.sleep(0.005)

    def stop(self) -> None:
        """SIGTERM (a clean exit that writes the persistence file first), then SIGKILL if it has not
        exited within STOP_TIMEOUT_S."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a frozen broker cannot act on SIGTERM
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill9()

    def kill9(self) -> None:
        """SIGKILL: the broker dies as on a power cut, keeping only what it had already written."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:  # pragma: no cover - the kernel reaps a SIGKILLed child
            raise BrokerError("mosquitto survived SIGKILL") from exc

    def persist(self, timeout: float = 2.0) -> None:
        """SIGUSR1: mosquitto writes its persistence file now; returns once the file is replaced."""
        if not self.persistence or self.proc is None or self.proc.poll() is not None:
            raise BrokerError("persist() needs a running broker with persistence")
        path = self.data_dir / "mosquitto.db"
        before = _stamp(path)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while _stamp(path) == before:
            if time.monotonic() > deadline:
                raise BrokerError(f"mosquitto did not write {path} within {timeout} s\n{self.log_text()}")
            time.sleep(0.005)

    def freeze(self) -> None:
        """SIGSTOP: the broker keeps its sockets open and answers nothing (a hung broker)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> Broker:
        self.stop()
        return self.start()

    def settings(self, identity: str | None = None, **overrides: Any) -> MqttSettings:
        """Link settings for this broker with test timing (fast backoff, short timeouts); with TLS,
        `identity` names the client certificate (`Pki.clients`, or "foreign")."""
        values: dict[str, Any] = dict(
            host=self.host,
            port=self.port,
            keepalive_s=5,
            connect_timeout_s=2.0,
            publish_timeout_s=2.0,
            backoff_initial_s=0.02,
            backoff_max_s=0.2,
        )
        if self.pki is not None:
            ident = self.pki.foreign if identity == "foreign" else self.pki.clients[identity or "oht-001"]
            values.update(ca_file=self.pki.ca, cert_file=ident.cert, key_file=ident.key)
        values.update(overrides)
        return MqttSettings(**values)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        # Without persistence there is nothing to write, and SIGTERM costs mosquitto ~100 ms.
        if self.persistence:
            self.stop()
        else:
            self.kill9()


# ---------------------------------------------------------------- links in tests
@asynccontextmanager
async def running(*links: MqttLink, timeout: float = 3.0) -> AsyncIterator[None]:
    """Start the links, wait until each is connected and its subscriptions granted; stop them after."""
    try:
        for link in links:
            await link.start()
        for link in links:
            ready = link.wait_subscribed if link.subscriptions else link.wait_connected
            assert await ready(timeout), f"{link.client_id} did not connect within {timeout} s: {link.stats()}"
        yield
    finally:
        for link in links:
            await link.stop()


async def next_message(link: MqttLink, timeout: float = 2.0) -> Incoming:
    """The link's next message, acknowledged."""
    message = await asyncio.wait_for(link.receive(), timeout)
    message.ack()
    return message


async def no_message(link: MqttLink, wait: float = 0.2) -> None:
    try:
        message = await asyncio.wait_for(link.receive(), wait)
    except TimeoutError:
        return
    raise AssertionError(f"{link.client_id} received {message!r}: {message.payload[:200]!r}")
