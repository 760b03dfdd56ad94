"""The core's end of the Unix socket: admits the gateway's requests, publishes the status view.

The core never waits for the gateway. Frames are parsed in `data_received` (no task per read), at
most `FRAMES_PER_TURN` in one turn of the event loop: beyond that, reading pauses and the rest is
taken in the next turns, so that a flood of requests never holds the loop for longer than a few
milliseconds and the bus's timers (the safety module's phase-locked polls) run on time. What a
turn answers is written in one call at its end;
replies and views are written to the transport without awaiting a drain: a gateway that stops
reading first loses views (latest wins), and one that lets `HARD_BUFFER` bytes pile up is
disconnected. Requests are admitted by a token bucket (`rate` per second, `burst`) and a bound
on the requests in flight; beyond either the answer is `CORE_BUSY` at once. The E-stop is
exempt from both and its stop frame is queued inside the callback that parsed it, before any
task, database write or reply (`Controller.begin_estop`).

Only a peer whose uid is allowed (`SO_PEERCRED`: the core's own user, root, and the configured
gateway user) gets past the hello; the socket file is made 0660 (the directory's group decides
who may reach it at all).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.link import protocol as p
from agent.store.audit import AuditEntry
from agent.store.errors import CommandInvalid
from oht_errors import CodedError

if TYPE_CHECKING:
    from agent.control.controller import Controller
    from agent.control.status_view import StatusDocument

__all__ = ["CoreServer", "peer_credentials"]

log = logging.getLogger("oht.link")

FRAMES_PER_TURN = 128  # frames handled in one turn of the loop (about a millisecond when refused)
SOFT_BUFFER = 256 * 1024  # above this many unsent bytes a view is skipped
HARD_BUFFER = 4 * 1024 * 1024  # above this the gateway is disconnected
_CRED = struct.Struct("3i")


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    pid, uid, gid = _CRED.unpack(raw)
    return pid, uid, gid


class TokenBucket:
    """`rate` admissions per second on average, `burst` at once."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, float(burst), clock
        self._tokens, self._at = float(burst), clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def _audit_entry(raw: Any) -> AuditEntry | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise p.CoreRequestInvalid("`audit` must be an object")
    fields = {f.name for f in dataclasses.fields(AuditEntry)}
    try:
        return AuditEntry(**{k: v for k, v in raw.items() if k in fields})
    except (TypeError, ValueError) as exc:
        raise p.CoreRequestInvalid(f"bad audit entry: {exc}") from None


def _not_after(raw: Any) -> dt.datetime | None:
    if raw is None:
        return None
    try:
        return dt.datetime.fromisoformat(str(raw))
    except ValueError:
        raise CommandInvalid(f"not_after {raw!r} is not an ISO 8601 time") from None


class _Connection(asyncio.Protocol):
    def __init__(self, server: CoreServer) -> None:
        self.server = server
        self.decoder = p.FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self.greeted = False
        self.inflight = 0
        self.peer: tuple[int, int, int] = (0, -1, -1)
        self.views_skipped = 0
        self._backlog: Iterator[dict[str, Any]] | None = None  # frames read, not yet handled
        self._corked: list[bytes] | None = None  # replies of this turn, written at its end

    # ------------------------------------------------------------------ transport callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        try:
            self.peer = peer_credentials(sock)
        except OSError as exc:
            log.error("gateway connection refused: no peer credentials (%s)", exc)
            transport.abort()
            return
        pid, uid, _gid = self.peer
        if uid not in self.server.allowed_uids:
            log.error(
                "connection from pid %d uid %d refused: not an allowed gateway user (allowed uids %s)",
                pid,
                uid,
                sorted(self.server.allowed_uids),
            )
            transport.abort()
            return
        self.send(dict(p.hello("core", self.server.controller.agent_id, os.getpid())))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.greeted:
            log.info("gateway (pid %d) disconnected%s", self.peer[0], f": {exc}" if exc else "")

    def data_received(self, data: bytes) -> None:
        self._backlog = self.decoder.feed(data)
        self._take_turn()

    def _take_turn(self) -> None:
        """Handle up to FRAMES_PER_TURN frames of the backlog; leave the rest to the next turn."""
        backlog = self._backlog
        transport = self.transport
        if backlog is None or transport is None or transport.is_closing():
            return
        self._corked = []
        try:
            for _ in range(FRAMES_PER_TURN):
                message = next(backlog, None)
                if message is None:
                    self._backlog = None
                    break
                self._on_message(message)
            else:  # more frames may wait: let the loop run, then go on
                transport.pause_reading()
                asyncio.get_running_loop().call_soon(self._next_turn)
        except p.ProtocolError as exc:
            log.error("gateway (pid %d) broke the protocol: %s", self.peer[0], exc)
            self.send(p.error_reply(None, exc))
            self._uncork()
            self.close()
        except Exception:
            log.exception("gateway (pid %d) sent a message the core could not handle: disconnected", self.peer[0])
            self._uncork()
            self.close()
        finally:
            self._uncork()

    def _uncork(self) -> None:
        corked, self._corked = self._corked, None
        transport = self.transport
        if corked and transport is not None and not transport.is_closing():
            transport.write(b"".join(corked))

    def _next_turn(self) -> None:
        self._take_turn()
        transport = self.transport
        if self._backlog is None and transport is not None and not transport.is_closing():
            transport.resume_reading()

    # ------------------------------------------------------------------ messages
    def _on_message(self, message: dict[str, Any]) -> None:
        if not self.greeted:
            p.check_hello(message, "gateway")
            self.greeted = True
            self.server.connections.add(self)
            log.info("gateway connected (pid %d uid %d)", self.peer[0], self.peer[1])
            self.server.send_view(self)
            return
        if message["t"] != "req":
            raise p.ProtocolError(f"unexpected message type {message['t']!r} from the gateway")
        request_id = message.get("id")
        op = message.get("op")
        args = message.get("args") or {}
        if not isinstance(args, dict) or op not in p.OPS:
            self.send(p.error_reply(request_id, p.CoreRequestInvalid(f"unknown operation {op!r}")))
            return
        try:
            deadline_ms = min(max(float(message.get("deadline_ms") or 5000), 0.0), 60000.0)
        except (TypeError, ValueError):
            deadline_ms = 5000.0
        deadline = time.monotonic() + deadline_ms / 1000
        if op == "estop":  # first, before admission, tasks, the database and the reply
            self._estop(request_id, args)
            return
        if self.inflight >= self.server.max_inflight or not self.server.bucket.take():
            self.server.busy_replies += 1
            self.send(p.error_reply(request_id, p.CoreBusy("the core is at its request limit; not started")))
            return
        handler = self.server.handlers[op]
        self._spawn(request_id, handler(args), deadline)

    def _estop(self, request_id: Any, args: dict[str, Any]) -> None:
        controller = self.server.controller
        try:
            audit = _audit_entry(args.get("audit"))
        except CodedError:
            audit = None  # a malformed audit never delays or refuses a stop
        task = controller.begin_estop(
            source=str(args.get("source") or "api"), user=args.get("user"), reason=str(args.get("reason") or "")
        )

        async def finish() -> Any:
            result = await controller.confirm_estop(task, audit=audit)
            return {"confirmed": result.confirmed, "confirm_ms": result.confirm_ms, "fault": result.fault}

        self._spawn(request_id, finish(), None)

    def _spawn(self, request_id: Any, work: Awaitable[Any], deadline: float | None) -> None:
        self.inflight += 1
        task = asyncio.ensure_future(self._answer(request_id, work, deadline))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def _answer(self, request_id: Any, work: Awaitable[Any], deadline: float | None) -> None:
        try:
            if deadline is not None and time.monotonic() > deadline:
                if asyncio.iscoroutine(work):
                    work.close()
                self.send(p.error_reply(request_id, p.CoreTimeout("the request's deadline passed before it started")))
                return
            result = await work
            # A change the request made reaches the gateway's view before the reply does, so a
            # status read right after the reply sees it.
            self.server.controller.notify_status_changes()
            self.send(p.ok_reply(request_id, result))
        except CodedError as exc:
            self.send(p.error_reply(request_id, exc))
        except Exception as exc:
            log.exception("core request %s failed", request_id)
            self.send(
                p.error_reply(
                    request_id,
                    CodedError(
                        f"internal error: {type(exc).__name__}", code="INTERNAL", hint="the core's log has the details"
                    ),
                )
            )
        finally:
            self.inflight -= 1

    # ------------------------------------------------------------------ output
    def send(self, message: dict[str, Any], *, droppable: bool = False) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        size = transport.get_write_buffer_size()
        if droppable and size > SOFT_BUFFER:
            self.views_skipped += 1
            return False
        if size > HARD_BUFFER:
            log.error("gateway (pid %d) does not read its socket (%d bytes unsent): disconnected", self.peer[0], size)
            transport.abort()
            return False
        try:
            frame = p.encode(message)
        except CodedError as exc:
            log.error("core reply not sent: %s", exc)
            frame = p.encode(p.error_reply(message.get("id"), exc))
        if self._corked is not None:
            self._corked.append(frame)
        else:
            transport.write(frame)
        return True

    def send_frame(self, frame: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > SOFT_BUFFER:
            self.views_skipped += 1
            return
        if self._corked is not None:  # in order with the replies of this turn
            self._corked.append(frame)
        else:
            transport.write(frame)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class CoreServer:
    """Listens on `path`; see the module docstring."""

    def __init__(
        self,
        controller: Controller,
        path: Path,
        *,
        allowed_uids: set[int],
        rate: float = 500.0,
        burst: int = 100,
        max_inflight: int = 32,
        view_interval_s: float = 0.2,
    ) -> None:
        self.controller = controller
        self.path = path
        self.allowed_uids = allowed_uids
        self.bucket = TokenBucket(rate, burst)
        self.max_inflight = max_inflight
        self.view_interval_s = view_interval_s
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Future[Any]] = set()
        self.busy_replies = 0
        self.views_sent = 0
        self._seq = 0
        self._server: asyncio.AbstractServer | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_view = 0.0
        self.handlers: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "ping": self._ping,
            "submit_command": self._submit,
            "cancel_command": self._cancel,
            "reset": self._reset,
        }

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()  # left by a core that was killed; nothing listens on it now
        except FileNotFoundError:
            pass
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Connection(self), str(self.path), backlog=8)
        os.chmod(self.path, 0o660)
        self.controller.add_status_listener(self._on_status)
        self._timer = loop.call_later(self.view_interval_s, self._tick)
        log.info("core socket listening on %s (uids allowed: %s)", self.path, sorted(self.allowed_uids))

    async def stop(self) -> None:
        self.controller.remove_status_listener(self._on_status)
        if self._timer is not None:
            self._timer.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------ the status view
    def _tick(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.view_interval_s, self._tick)
        if time.monotonic() - self._last_view >= self.view_interval_s * 0.5:
            self.publish()

    def _on_status(self, status: StatusDocument) -> None:
        self.publish(status)

    def view(self, status: StatusDocument | None = None) -> dict[str, Any]:
        self._seq += 1
        return {
            "t": "view",
            "v": p.VIEW_VERSION,
            "seq": self._seq,
            "status": status if status is not None else self.controller.status(),
            "modules": self.controller.modules(),
        }

    def publish(self, status: StatusDocument | None = None) -> None:
        """One view, encoded once, to every connected gateway (skipped for one that lags)."""
        if not self.connections:
            return
        self._last_view = time.monotonic()
        frame = p.encode(self.view(status))
        for conn in list(self.connections):
            conn.send_frame(frame)
        self.views_sent += 1

    def send_view(self, conn: _Connection) -> None:
        conn.send(self.view(), droppable=True)

    # ------------------------------------------------------------------ operations
    async def _ping(self, _args: dict[str, Any]) -> Any:
        return {"pid": os.getpid(), "agent_id": self.controller.agent_id}

    async def _submit(self, args: dict[str, Any]) -> Any:
        result = await self.controller.submit_command(
            source=str(args.get("source") or "api"),
            idempotency_key=str(args.get("idempotency_key") or ""),
            type=str(args.get("type") or ""),
            params=dict(args.get("params") or {}),
            user=args.get("user"),
            priority=int(args.get("priority", 5)),
            not_after=_not_after(args.get("not_after")),
            audit=_audit_entry(args.get("audit")),
        )
        return {"record": result.record.to_dict(), "created": result.created}

    async def _cancel(self, args: dict[str, Any]) -> Any:
        record = await self.controller.cancel_command(
            str(args.get("command_id") or ""), user=args.get("user"), audit=_audit_entry(args.get("audit"))
        )
        return {"record": record.to_dict()}

    async def _reset(self, args: dict[str, Any]) -> Any:
        result = await self.controller.reset(
            user=str(args.get("user") or "unknown"), audit=_audit_entry(args.get("audit"))
        )
        return {"cleared": list(result.cleared), "remaining": dict(result.remaining), "state": result.state}
