"""`ApiServer`: uvicorn inside the daemon's own event loop, started and stopped by the runtime.

Why not `uvicorn.run`: the agent is one asyncio process; the API must share the loop with the
bus master and the controller, start after them and stop before them. So the server runs as a
task, and:
- the listening socket is bound here, so "address in use" is a clean `API_BIND_FAILED` error
  (uvicorn would call `sys.exit` inside the task);
- uvicorn's own signal handling is switched off: SIGTERM belongs to the runtime;
- the access log is off (it would log every WebSocket URL with its ticket; see logfilter.py),
  proxy headers are ignored (the peer address in audit rows cannot be forged by a header);
- TLS is mandatory unless the host is a loopback address (device certificate, see tls.py):
  TLS 1.2 with AEAD suites and TLS 1.3, or TLS 1.3 alone (`tls_min_version`).

HTTP/1.1 parsing: httptools (llhttp) when it is importable, the pure-Python h11 otherwise; which
one serves is logged at start. httptools is the faster of the two (bench/api.py measures both).
The bound on the request head is ours: `MAX_HEAD_BYTES` (16 KiB of request target and headers).
llhttp has no limit of its own (Node.js counts header bytes in its own callbacks) and uvicorn's
httptools protocol sets none, so `_bounded_httptools()` counts the head in the parser's callbacks
and refuses a larger one with 400 and a closed connection before the application sees it. Under
the h11 fallback the bound is `h11_max_incomplete_event_size`, which h11 applies only to a head
still incomplete (a larger head that arrives whole in one read passes it), so there
`_bound_head_h11` also refuses a complete head over the bound, with 431, before the application.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import uvicorn

from agent.api import logfilter
from agent.api.tls import ensure_certificate, is_loopback, server_context
from oht_errors import CodedError, ErrorKind

__all__ = ["MAX_HEAD_BYTES", "ApiServer", "ApiServerError", "http_implementation"]

log = logging.getLogger("oht.api")

# The largest request head served: request target plus headers. The same bound under either parser.
MAX_HEAD_BYTES = 16 * 1024


class ApiServerError(CodedError):
    code = "API_BIND_FAILED"
    kind = ErrorKind.UNAVAILABLE
    hint = "Another process listens on this address, or the address is not on this machine: check [api] host/port."
    variants = MappingProxyType(
        {
            "API_ALREADY_STARTED": "The API server was started twice: a bug in the agent; send the log.",
            "API_START_FAILED": "The API server stopped or did not come up while starting: the log has the cause.",
        }
    )


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers (the daemon owns SIGTERM/SIGINT)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class _HeadTooLarge(Exception):
    """Raised in a parser callback: httptools turns it into HttpParserError, uvicorn into a 400."""


@functools.cache
def _bounded_httptools() -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a bound on the request head; ImportError without httptools.

    Two counts, both never more than the real size (so no request within the bound is refused):
    - the head's parts as the parser hands them over (the request target in pieces, each header
      once complete), checked as they come, so a head over the bound that arrived in one read
      is refused before `on_headers_complete` starts the application;
    - the reads that arrived while a head was already open and left it open, so a single header
      that never ends cannot grow without bound inside the parser (which keeps a header's bytes
      until it is complete): at most the bound plus one read is ever buffered.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        # Called with the request's scope the moment its head is parsed, before the application's
        # task is even scheduled (ApiServer sets it: the E-stop's early path). Must not block.
        early_hook: Callable[[Mapping[str, Any]], None] | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_open = False
            self._head_parts = 0  # bytes of the target and of the complete headers
            self._head_reads = 0  # bytes of reads that found the head open and left it open

        def _count(self, size: int) -> None:
            self._head_parts += size
            if self._head_parts > MAX_HEAD_BYTES:
                log.warning("request head over %d bytes from %s: refused", MAX_HEAD_BYTES, self.client)
                raise _HeadTooLarge(self._head_parts)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_open = True
            self._head_parts = self._head_reads = 0

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            self._count(len(url))

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)  # ": " and CRLF
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._head_open = False
            super().on_headers_complete()
            hook = type(self).early_hook
            if hook is not None and self.scope is not None:
                try:
                    hook(self.scope)
                except Exception:
                    log.exception("early request hook failed")

        def data_received(self, data: bytes) -> None:
            was_open = self._head_open
            super().data_received(data)
            if not (was_open and self._head_open) or self.transport.is_closing():
                return
            self._head_reads += len(data)
            if self._head_reads > MAX_HEAD_BYTES:
                log.warning("request head over %d bytes from %s: refused", MAX_HEAD_BYTES, self.client)
                self._head_open = False
                self.send_400_response("Request head too large.")

    return BoundedHttpToolsProtocol


def _head_size(scope: dict[str, Any]) -> int:
    target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    return target + sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))


def _bound_head_h11(app: Any) -> Any:
    """The application behind the head bound h11 leaves open: a complete head over it gets 431."""

    async def bounded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and _head_size(scope) > MAX_HEAD_BYTES:
            log.warning("request head over %d bytes from %s: refused", MAX_HEAD_BYTES, scope.get("client"))
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1009})  # before the handshake: HTTP 403
                return
            body = b"Request head too large."
            headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]  # fmt: skip
            await send({"type": "http.response.start", "status": 431, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return bounded


def http_implementation(choice: str = "auto") -> tuple[type[asyncio.Protocol] | str, str]:
    """The HTTP/1.1 protocol for uvicorn and its name: httptools (bounded) when importable, else h11.

    `choice` is "auto", or "h11" / "httptools" to insist on one (the benchmark compares them);
    "httptools" raises ImportError when it is not installed."""
    if choice not in ("auto", "h11", "httptools"):
        raise ValueError(f"unknown HTTP implementation {choice!r}")
    if choice == "h11":
        return "h11", "h11"
    try:
        return _bounded_httptools(), "httptools"
    except ImportError as exc:
        if choice == "httptools":
            raise
        return "h11", f"h11 (httptools not importable: {exc})"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio switches Nagle off (TCP_NODELAY) only on accepted sockets
    # whose protocol says TCP, and a socket made with proto 0 does not. With Nagle on, an answer
    # written in two parts (headers, then body) waits for the client's delayed ACK: 40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ApiServerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


class ApiServer:
    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        data_dir: Path | str,
        *,
        max_connections: int = 256,
        http: str = "auto",
        early_hook: Callable[[Mapping[str, Any]], None] | None = None,
        start_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
        tls_min_version: str = "1.2",
    ) -> None:
        self.app = app
        self._tls_min_version = tls_min_version
        self.host = host
        self._early_hook = early_hook
        self.port = port
        self.data_dir = Path(data_dir)
        self.tls = not is_loopback(host)
        self.fingerprint: str | None = None
        self._max_connections = max_connections
        self._http = http
        self.http_name = ""
        self._start_timeout = start_timeout_s
        self._stop_timeout = stop_timeout_s
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The serving task once started (None before): for supervision."""
        return self._task

    async def start(self) -> None:
        """Bind, then serve in a task; returns once the server accepts connections."""
        if self._task is not None:
            raise ApiServerError("the API server is already running", code="API_ALREADY_STARTED")
        logfilter.install()
        context = None
        if self.tls:
            files = await asyncio.to_thread(ensure_certificate, self.data_dir, self.host)
            context = server_context(files, self._tls_min_version)
            self.fingerprint = files.fingerprint
            log.info("TLS certificate SHA-256 fingerprint: %s", files.fingerprint)
        http, self.http_name = http_implementation(self._http)
        if self._early_hook is not None and not isinstance(http, str):
            http = type("EarlyHttpToolsProtocol", (http,), {"early_hook": staticmethod(self._early_hook)})
        sock = _bind(self.host, self.port)
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app if http != "h11" else _bound_head_h11(self.app),
            host=self.host,
            port=self.port,
            log_config=None,
            lifespan="off",
            access_log=False,
            proxy_headers=False,
            server_header=False,
            http=http,
            ws="websockets-sansio",
            ws_max_size=64 * 1024,
            ws_per_message_deflate=False,
            limit_concurrency=self._max_connections,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=max(1, int(self._stop_timeout)),
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            ssl_context_factory=(lambda _config, _default: context) if context is not None else None,
        )
        server = _EmbeddedServer(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="api-server")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout
        while not server.started:
            if self._task.done():
                exc = self._task.exception() if not self._task.cancelled() else None
                self._task = None
                sock.close()
                raise ApiServerError(f"the API server stopped while starting: {exc}", code="API_START_FAILED")
            if loop.time() > deadline:
                await self.stop()
                raise ApiServerError(
                    f"the API server did not start within {self._start_timeout:g} s", code="API_START_FAILED"
                )
            await asyncio.sleep(0.01)
        log.info("API listening on %s (HTTP/1.1 by %s)", self.url, self.http_name)

    async def stop(self) -> None:
        """Stop accepting, let running requests finish (bounded), then close everything."""
        server, task = self._server, self._task
        self._server, self._task = None, None
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), self._stop_timeout + 2.0)
        except TimeoutError:
            log.error("API server did not stop within %.1f s; cancelling", self._stop_timeout + 2.0)
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except Exception:
            log.exception("API server ended with an error")
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        log.info("API stopped")
