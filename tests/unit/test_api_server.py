"""ApiServer: uvicorn inside our loop, TLS off loopback with a generated device certificate."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
import ssl
import stat
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from agent.api.server import ApiServer, ApiServerError
from agent.api.tls import ensure_certificate, is_loopback, read_fingerprint


def tiny_app() -> FastAPI:
    """Not a robot: the server runner is tested with the smallest ASGI app there is."""
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"pong": True}

    @app.get("/slow")
    async def slow() -> dict[str, bool]:
        await asyncio.sleep(0.5)
        return {"done": True}

    return app


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.3.4.5", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("robot.local", False)],
)
def test_only_loopback_is_plain(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


async def test_loopback_serves_plain_http_and_stops(tmp_path: Path) -> None:
    server = ApiServer(tiny_app(), "127.0.0.1", 0, tmp_path)
    handler = signal.getsignal(signal.SIGTERM)
    await server.start()
    try:
        assert server.url.startswith("http://127.0.0.1:") and not server.tls
        assert signal.getsignal(signal.SIGTERM) is handler, "uvicorn must not take over SIGTERM"
        async with httpx.AsyncClient(base_url=server.url) as c:
            assert (await c.get("/ping")).json() == {"pong": True}
            slow = asyncio.create_task(c.get("/slow"))
            await asyncio.sleep(0.1)
            started = asyncio.get_running_loop().time()
            await server.stop()
            assert (await slow).json() == {"done": True}, "a running request finishes during a graceful stop"
            assert asyncio.get_running_loop().time() - started < 5
            with pytest.raises(httpx.ConnectError):
                await c.get("/ping")
    finally:
        await server.stop()
    assert not (tmp_path / "tls").exists()


async def test_non_loopback_serves_tls_with_the_device_certificate(tmp_path: Path) -> None:
    server = ApiServer(tiny_app(), "0.0.0.0", 0, tmp_path)
    await server.start()
    try:
        assert server.tls and server.url.startswith("https://")
        key = tmp_path / "tls" / "device.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert server.fingerprint == read_fingerprint(tmp_path)
        # The certificate the server presents is the one whose fingerprint is logged and printed.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=context)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        await writer.wait_closed()
        presented = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
        assert presented == server.fingerprint
        async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{server.port}", verify=False) as c:
            r = await c.get("/ping")
            assert r.json() == {"pong": True}
        # Plain HTTP on the TLS port gets nothing useful.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as c:
            with pytest.raises(httpx.HTTPError):
                await c.get("/ping")
    finally:
        await server.stop()


def test_certificate_is_reused_and_a_loose_key_mode_is_fixed(tmp_path: Path) -> None:
    first = ensure_certificate(tmp_path, "0.0.0.0")
    first.key.chmod(0o644)
    second = ensure_certificate(tmp_path, "0.0.0.0")
    assert first.fingerprint == second.fingerprint
    assert stat.S_IMODE(second.key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in second.key.read_bytes() and b"CERTIFICATE" in second.cert.read_bytes()


async def test_address_in_use_is_a_coded_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = ApiServer(tiny_app(), "127.0.0.1", port, tmp_path)
        with pytest.raises(ApiServerError) as info:
            await server.start()
    assert info.value.code == "API_BIND_FAILED" and info.value.hint
    await server.stop()  # harmless when it never started


async def test_answers_are_not_held_back_by_nagle(tmp_path: Path) -> None:
    """uvicorn writes the head and the body of an answer separately. With Nagle's algorithm on
    the accepted socket, the body waits for the client's delayed ACK (40 ms on Linux), so every
    request on a kept-alive connection took 40 ms. Measured here on one connection in a row."""
    server = ApiServer(tiny_app(), "127.0.0.1", 0, tmp_path)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, limits=httpx.Limits(max_connections=1)) as c:
            await c.get("/ping")
            took = []
            for _ in range(15):
                began = asyncio.get_running_loop().time()
                assert (await c.get("/ping")).status_code == 200
                took.append(asyncio.get_running_loop().time() - began)
        took.sort()
        assert took[len(took) // 2] < 0.02, f"median {took[len(took) // 2] * 1000:.1f} ms: an answer waited for a delayed ACK"
    finally:
        await server.stop()


def test_listening_socket_hands_tcp_nodelay_to_accepted_connections(tmp_path: Path) -> None:
    from agent.api.server import _bind

    listener = _bind("127.0.0.1", 0)
    listener.setblocking(True)
    try:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        with client, accepted:
            # asyncio switches Nagle off only on sockets whose protocol reads as TCP
            assert accepted.proto == socket.IPPROTO_TCP
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        listener.close()
