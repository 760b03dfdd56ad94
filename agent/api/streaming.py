"""The WebSocket status stream: a snapshot, then changes, at most `stream_max_hz` per client.

Beside the status, every `VALUES_INTERVAL_S` the stream carries the bound modules' decoded
values with their age (`{"type": "values", "modules": {role: {name: {value, unit, age_ms,
quality}}}}`), read from the view the gateway already holds: the technician's page shows live
speed, position, battery and obstacle distances without polling.

Why a one-slot mailbox per client rather than a queue of every update: a status stream only
needs the newest state, so updates that arrive faster than the client's rate replace each other
(coalescing) and memory per client is bounded by one status document. A client that does not
read (its TCP window fills, so a send does not finish within `stream_send_timeout_s`) is closed
with code 1013 and a reason instead of holding the agent's memory. Every `stream_recheck_s` the
credential behind the stream is checked again: a logout, a password change, a disabled user or a
revoked key ends the stream too (code 1008). Which web pages may connect at all is `origins`
(see origins.py); the route checks it before the ticket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from agent.api.origins import OriginPolicy
from agent.auth.principal import Principal
from agent.auth.service import AuthService
from agent.control.facade import AgentCore
from agent.control.status_view import StatusDocument
from oht_errors import CodedError

__all__ = ["StreamHub"]

log = logging.getLogger("oht.api.stream")

VALUES_INTERVAL_S = 1.0
CLOSE_SLOW = 1013  # "try again later": the client did not keep up
CLOSE_POLICY = 1008
_CLOSE_TIMEOUT_S = 1.0


def _dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, default=str, separators=(",", ":"))


class _Client:
    def __init__(self) -> None:
        self.pending: StatusDocument | None = None
        self.wake = asyncio.Event()

    def offer(self, status: StatusDocument) -> None:
        self.pending = status
        self.wake.set()


class StreamHub:
    def __init__(
        self,
        core: AgentCore,
        auth: AuthService,
        metrics: Any,
        *,
        max_hz: float,
        max_clients: int,
        send_timeout_s: float,
        recheck_s: float,
        origins: OriginPolicy | None = None,
    ) -> None:
        self.origins = origins or OriginPolicy()  # checked by the route before a ticket is redeemed
        self._core = core
        self._auth = auth
        self._metrics = metrics
        self._interval = 1.0 / max_hz
        self._max_clients = max_clients
        self._send_timeout = send_timeout_s
        self._recheck = recheck_s
        self._clients: set[_Client] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    @property
    def clients(self) -> int:
        return len(self._clients)

    # ------------------------------------------------------------------ core listener

    def _on_status(self, status: StatusDocument) -> None:
        """Called by the core on every status change; never blocks, never raises."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._fan_out(status)
        else:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody to tell
                loop.call_soon_threadsafe(self._fan_out, status)

    def _fan_out(self, status: StatusDocument) -> None:
        for client in self._clients:
            client.offer(status)

    def _join(self, client: _Client) -> None:
        if not self._clients:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
            self._core.add_status_listener(self._on_status)
        self._clients.add(client)
        self._metrics.stream_clients.set(len(self._clients))

    def _leave(self, client: _Client) -> None:
        self._clients.discard(client)
        self._metrics.stream_clients.set(len(self._clients))
        if not self._clients:
            with contextlib.suppress(Exception):
                self._core.remove_status_listener(self._on_status)

    # ------------------------------------------------------------------ one client

    async def serve(self, websocket: WebSocket, principal: Principal) -> None:
        await websocket.accept()
        if len(self._clients) >= self._max_clients:
            await self._close(websocket, CLOSE_SLOW, "too many stream clients; retry later")
            return
        client = _Client()
        self._join(client)
        tasks: list[asyncio.Task[Any]] = []
        try:
            if not await self._send(websocket, {"type": "snapshot", "seq": 0, "status": self._core.status()}):
                return
            tasks = [
                asyncio.create_task(self._pump(websocket, client)),
                asyncio.create_task(self._drain_input(websocket)),
                asyncio.create_task(self._values(websocket)),
                asyncio.create_task(self._watch_credential(websocket, principal)),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("stream of %s failed: %s", principal.actor, task.exception())
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._leave(client)
            await self._close(websocket, 1000, "")

    async def _send(self, websocket: WebSocket, payload: dict[str, Any]) -> bool:
        try:
            async with asyncio.timeout(self._send_timeout):
                await websocket.send_text(_dumps(payload))
        except TimeoutError:
            self._metrics.stream_dropped.inc()
            log.warning("stream client too slow: closed")
            await self._close(
                websocket, CLOSE_SLOW, f"client too slow: a message was not taken within {self._send_timeout:g} s"
            )
            return False
        except (WebSocketDisconnect, RuntimeError, OSError):
            return False
        return True

    async def _pump(self, websocket: WebSocket, client: _Client) -> None:
        last: Mapping[str, object] = self._core.status()
        seq = 0
        while True:
            await client.wake.wait()
            client.wake.clear()
            pending, client.pending = client.pending, None
            if pending is None:
                continue
            status: Mapping[str, object] = pending
            changes = {k: v for k, v in status.items() if k not in last or last[k] != v}
            changes.update({k: None for k in last if k not in status})
            last = status
            if changes:
                seq += 1
                if not await self._send(websocket, {"type": "change", "seq": seq, "changes": changes}):
                    return
            await asyncio.sleep(self._interval)  # the rate limit; newer updates coalesce meanwhile

    async def _values(self, websocket: WebSocket) -> None:
        """The modules' values, once a `VALUES_INTERVAL_S` (none while the core is away)."""
        while True:
            try:
                modules = {m["role"]: m["values"] for m in self._core.modules()}
            except CodedError:  # the core is not connected: the status says so
                modules = {}
            if modules and not await self._send(websocket, {"type": "values", "modules": modules}):
                return
            await asyncio.sleep(max(self._interval, VALUES_INTERVAL_S))

    @staticmethod
    async def _drain_input(websocket: WebSocket) -> None:
        """The client has nothing to say; read (and drop) until it disconnects."""
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return

    async def _watch_credential(self, websocket: WebSocket, principal: Principal) -> None:
        while True:
            await asyncio.sleep(self._recheck)
            if not await self._auth.still_valid(principal):
                await self._close(websocket, CLOSE_POLICY, "the session or key behind this stream ended")
                return

    @staticmethod
    async def _close(websocket: WebSocket, code: int, reason: str) -> None:
        if websocket.application_state is WebSocketState.DISCONNECTED:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await websocket.close(code=code, reason=reason)
