"""What the device certificate's TLS offers: TLS 1.2 with AEAD suites only (ECDHE with AES-GCM
or ChaCha20-Poly1305) and TLS 1.3, or TLS 1.3 alone with `[api] tls_min_version = "1.3"`.

Each case is a real handshake with Python's `ssl` against ApiServer off loopback. The client
suites are ECDSA ones because the device key is ECDSA P-256 (checked first: with RSA suites a
refused handshake would prove nothing)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agent.api.server import ApiServer
from agent.api.tls import ensure_certificate, server_context
from agent.config import ConfigError, validate_config
from tests.unit.test_api_server import tiny_app

CBC_SUITES = "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA"
AEAD_SUITES = ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305")
MINIMAL = {"agent": {"id": "a", "data_dir": "/tmp/x"}, "bus": {"port": "/dev/null"}}


def client(ciphers: str | None = None, *, tls12_only: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if tls12_only:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


async def handshake(port: int, context: ssl.SSLContext) -> tuple[str, str]:
    """(protocol version, cipher) of a completed handshake; raises if it fails."""
    _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=context), 5)
    try:
        tls = writer.get_extra_info("ssl_object")
        return str(tls.version()), str(tls.cipher()[0])
    finally:
        writer.close()
        await writer.wait_closed()


async def refused(port: int, context: ssl.SSLContext) -> bool:
    try:
        await handshake(port, context)
    except (ssl.SSLError, ConnectionError):
        return True
    return False


@pytest.fixture
async def server(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[ApiServer]:
    server = ApiServer(tiny_app(), "0.0.0.0", 0, tmp_path, tls_min_version=getattr(request, "param", "1.2"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def test_the_device_key_is_ecdsa(tmp_path: Path) -> None:
    files = ensure_certificate(tmp_path, "0.0.0.0")
    assert isinstance(x509.load_pem_x509_certificate(files.cert.read_bytes()).public_key(), ec.EllipticCurvePublicKey)


async def test_tls12_offers_aead_suites_only(server: ApiServer) -> None:
    offered = {c["name"] for c in client(CBC_SUITES, tls12_only=True).get_ciphers()}
    assert {name for name in offered if not name.startswith("TLS_")} == set(CBC_SUITES.split(":"))
    assert await refused(server.port, client(CBC_SUITES, tls12_only=True)), "a CBC suite was accepted at TLS 1.2"
    for suite in AEAD_SUITES:
        assert await handshake(server.port, client(suite, tls12_only=True)) == ("TLSv1.2", suite)
    version, _ = await handshake(server.port, client())
    assert version == "TLSv1.3"


@pytest.mark.parametrize("server", ["1.3"], indirect=True)
async def test_tls13_only_refuses_a_tls12_client(server: ApiServer) -> None:
    assert await refused(server.port, client(":".join(AEAD_SUITES), tls12_only=True))
    version, cipher = await handshake(server.port, client())
    assert version == "TLSv1.3" and cipher.startswith("TLS_")


def test_an_unknown_minimum_version_is_refused(tmp_path: Path) -> None:
    files = ensure_certificate(tmp_path)
    for bad in ("1.1", "1.0", "1.4", "", "TLSv1.2"):
        with pytest.raises(ValueError, match="tls_min_version"):
            server_context(files, bad)


@pytest.mark.parametrize("value", ["1.1", "1.0", "1.4", "tls1.3", 1.2, 1.3, 12])
def test_config_names_the_key_and_the_choices(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({**MINIMAL, "api": {"tls_min_version": value}})
    (problem,) = [p for p in info.value.problems if p.startswith("api.tls_min_version")]
    assert '"1.2"' in problem and '"1.3"' in problem, problem


def test_config_takes_both_versions_and_defaults_to_12() -> None:
    assert validate_config(MINIMAL).api.tls_min_version == "1.2"
    assert validate_config({**MINIMAL, "api": {"tls_min_version": "1.3"}}).api.tls_min_version == "1.3"


async def test_the_gateway_serves_the_configured_minimum(tmp_path: Path) -> None:
    """`[api] tls_min_version` reaches the gateway's server (no core needed to serve a handshake)."""
    from agent.gateway import Gateway
    from agent.store.database import Database

    data = tmp_path / "data"
    db = Database(data)  # the core creates the database; the gateway only attaches to it
    await db.start()
    await db.close()
    config = validate_config({"agent": {"id": "a", "data_dir": str(data)}, "bus": {"port": "/dev/null"},
                              "api": {"host": "0.0.0.0", "port": 0, "tls_min_version": "1.3"}})  # fmt: skip
    gateway = Gateway(config)
    await gateway.start()
    try:
        assert gateway.api is not None and gateway.api.tls
        assert await refused(gateway.api.port, client(":".join(AEAD_SUITES), tls12_only=True))
        assert (await handshake(gateway.api.port, client()))[0] == "TLSv1.3"
    finally:
        await gateway.shutdown()
