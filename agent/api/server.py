"""`ApiServer`: uvicorn inside the daemon's own event loop, started and stopped by the runtime.

Why not `uvicorn.run`: the agent is one asyncio process; the API must share the loop with the
bus master and the controller, start after them and stop before them. So the server runs as a
task, and:
- the listening socket is bound here, so "address in use" is a clean `API_BIND_FAILED` error
  (uvicorn would call `sys.exit` inside the task);
- uvicorn's own signal handling is switched off: SIGTERM belongs to the runtime;
- the access log is off (it would log every WebSocket URL with its ticket; see logfilter.py),
  proxy headers are ignored (the peer address in audit rows cannot be forged by a header);
- TLS is mandatory unless the host is a loopback address (device certificate, see tls.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn

from agent.api import logfilter
from agent.api.tls import ensure_certificate, is_loopback, server_context
from drivers.errors import CodedError

__all__ = ["ApiServer", "ApiServerError"]

log = logging.getLogger("agent.api")


class ApiServerError(CodedError):
    code = "API_BIND_FAILED"
    hint = "Another process listens on this address, or the address is not on this machine: check [api] host/port."


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers (the daemon owns SIGTERM/SIGINT)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


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
        start_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.data_dir = Path(data_dir)
        self.tls = not is_loopback(host)
        self.fingerprint: str | None = None
        self._max_connections = max_connections
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
            context = server_context(files)
            self.fingerprint = files.fingerprint
            log.info("TLS certificate SHA-256 fingerprint: %s", files.fingerprint)
        sock = _bind(self.host, self.port)
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_config=None,
            lifespan="off",
            access_log=False,
            proxy_headers=False,
            server_header=False,
            http="h11",
            ws="websockets-sansio",
            ws_max_size=64 * 1024,
            ws_per_message_deflate=False,
            limit_concurrency=self._max_connections,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=max(1, int(self._stop_timeout)),
            h11_max_incomplete_event_size=16 * 1024,
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
                raise ApiServerError(f"the API server did not start within {self._start_timeout:g} s", code="API_START_FAILED")
            await asyncio.sleep(0.01)
        log.info("API listening on %s", self.url)

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
        except Exception:  # noqa: BLE001 - stopping must not raise into the runtime's shutdown
            log.exception("API server ended with an error")
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        log.info("API stopped")
