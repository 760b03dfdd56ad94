"""ApiServer: uvicorn inside our loop, TLS off loopback with a generated device certificate, the
HTTP parser (httptools when installed, else h11) and the 16 KiB bound on a request head under both."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
import ssl
import stat
import sys
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, WebSocket

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
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("robot.local", False),
    ],
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
        _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=context)
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
        assert took[len(took) // 2] < 0.02, (
            f"median {took[len(took) // 2] * 1000:.1f} ms: an answer waited for a delayed ACK"
        )
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


# ---------------------------------------------------------------------------- HTTP parser and head bound


def counting_app() -> tuple[FastAPI, list[int]]:
    """An app that counts the requests it served: a refused head must never reach it."""
    app = FastAPI()
    served: list[int] = []

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        served.append(1)
        return {"pong": True}

    return app, served


async def exchange(port: int, request: bytes, *, piece: int | None = None) -> bytes:
    """Send `request` (in one write, or in pieces of `piece` bytes), then read what comes back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        try:
            if piece is None:
                writer.write(request)
                await writer.drain()
            else:
                for at in range(0, len(request), piece):
                    writer.write(request[at : at + piece])
                    await writer.drain()
                    await asyncio.sleep(0.001)
        except ConnectionError:
            pass  # refused while still sending: the server closed the connection
        try:
            return await asyncio.wait_for(reader.read(4096), 5)
        except ConnectionError:
            return b""
    finally:
        writer.close()


HEAD = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n"
HEADS_64K = {
    "many headers": HEAD + b"".join(b"X-Filler-%03d: %s\r\n" % (i, b"a" * 100) for i in range(600)) + b"\r\n",
    "one header": HEAD + b"X-Big: " + b"a" * (64 * 1024) + b"\r\n\r\n",
    "long target": b"GET /ping?q=" + b"a" * (64 * 1024) + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
}


def test_httptools_is_chosen_when_installed() -> None:
    pytest.importorskip("httptools")
    from agent.api.server import http_implementation

    protocol, name = http_implementation()
    assert name == "httptools"
    assert protocol.__name__ == "BoundedHttpToolsProtocol"


async def test_the_server_says_which_parser_serves(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("httptools")
    server = ApiServer(tiny_app(), "127.0.0.1", 0, tmp_path)
    with caplog.at_level("INFO", logger="oht.api"):
        await server.start()
    try:
        assert server.http_name == "httptools"
        assert any("HTTP/1.1 by httptools" in r.getMessage() for r in caplog.records), caplog.text
    finally:
        await server.stop()


async def test_without_httptools_it_falls_back_to_h11_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.api import server as server_module

    # As on a machine where httptools is not installed: its import fails.
    monkeypatch.setitem(sys.modules, "httptools", None)
    monkeypatch.setitem(sys.modules, "uvicorn.protocols.http.httptools_impl", None)
    server_module._bounded_httptools.cache_clear()
    try:
        protocol, name = server_module.http_implementation()
        assert protocol == "h11" and name.startswith("h11 (httptools not importable")
        server = ApiServer(tiny_app(), "127.0.0.1", 0, tmp_path)
        await server.start()
        try:
            assert server.http_name.startswith("h11")
            async with httpx.AsyncClient(base_url=server.url) as c:
                assert (await c.get("/ping")).json() == {"pong": True}
        finally:
            await server.stop()
        with pytest.raises(ImportError):
            server_module.http_implementation("httptools")
    finally:
        server_module._bounded_httptools.cache_clear()


@pytest.mark.parametrize("http", ["auto", "h11"])
@pytest.mark.parametrize("shape", sorted(HEADS_64K))
@pytest.mark.parametrize("piece", [None, 4096], ids=["one-write", "in-pieces"])
async def test_a_request_head_of_64_kib_is_refused_never_served(
    tmp_path: Path, http: str, shape: str, piece: int | None
) -> None:
    """16 KiB of request target and headers at most, under either parser ("auto" is httptools
    where installed). Refused is a 4xx answer or a closed connection; the app never sees it."""
    app, served = counting_app()
    server = ApiServer(app, "127.0.0.1", 0, tmp_path, http=http)
    await server.start()
    try:
        answer = await exchange(server.port, HEADS_64K[shape], piece=piece)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:200]
        assert not served, f"a {len(HEADS_64K[shape])}-byte head was served by {server.http_name}"
        # The server goes on serving heads within the bound, on a new connection.
        near_bound = HEAD + b"X-Big: " + b"a" * 15000 + b"\r\n\r\n"
        assert (await exchange(server.port, near_bound)).startswith(b"HTTP/1.1 200"), "a 15 KiB head was refused"
        assert served == [1]
    finally:
        await server.stop()


async def test_a_header_that_never_ends_is_cut_off(tmp_path: Path) -> None:
    """A head that never completes is not buffered without end: refused once past the bound."""
    pytest.importorskip("httptools")
    app, served = counting_app()
    server = ApiServer(app, "127.0.0.1", 0, tmp_path)
    await server.start()
    try:
        answer = await exchange(server.port, HEAD + b"X-Endless: " + b"a" * (1024 * 1024), piece=4096)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:200]
        assert not served
    finally:
        await server.stop()


def test_answers_are_not_held_back_by_nagle_under_uvloop(tmp_path: Path) -> None:
    """The gateway's loop is uvloop (agent/cli.py): TCP_NODELAY must hold there too."""
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(test_answers_are_not_held_back_by_nagle(tmp_path))


def test_websocket_upgrade_is_served_under_httptools_on_uvloop(tmp_path: Path) -> None:
    """The stream's upgrade goes through the bounded httptools protocol to websockets-sansio."""
    uvloop = pytest.importorskip("uvloop")
    pytest.importorskip("httptools")
    import websockets.asyncio.client

    app = FastAPI()

    @app.websocket("/echo")
    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text(await ws.receive_text())
        await ws.close()

    async def check() -> None:
        server = ApiServer(app, "127.0.0.1", 0, tmp_path)
        await server.start()
        try:
            assert server.http_name == "httptools"
            async with websockets.asyncio.client.connect(f"ws://127.0.0.1:{server.port}/echo", proxy=None) as ws:
                await ws.send("hello")
                assert await asyncio.wait_for(ws.recv(), 5) == "hello"
        finally:
            await server.stop()

    uvloop.run(check())
