"""The gateway's end of the core socket: an `AgentCore` for the API, served by the core process.

The client keeps one connection and re-opens it by itself (every `retry_s`). While connected it
holds the core's latest `view` (status document and module views), so reading the status costs
the core nothing per HTTP request: an API flood stays in the gateway. Changes the core makes
(commands, cancel, E-stop, reset) are requests with a deadline; while the core is away they fail
at once with `CORE_UNAVAILABLE` (HTTP 503) and `ready()` says why. Reads of the command table go
to the database directly (a WAL reader never blocks the core's writer), so large pages are the
gateway's work too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from agent.control.errors import ModuleNotFound
from agent.control.facade import EstopResult, ResetResult, StatusListener, SubmitResult
from agent.control.status_view import ModuleView, StatusDocument
from agent.link import protocol as p
from agent.store.audit import AuditEntry
from agent.store.commands import CommandRecord, Commands
from agent.store.database import Database

__all__ = ["CoreClient"]

log = logging.getLogger("oht.gateway.link")


def _status_key(status: StatusDocument) -> tuple[Any, ...]:
    verdict = status["verdict"]
    faults = tuple(f["code"] for f in verdict["faults"])
    command = status["command"]
    return (status["state"], verdict["level"], faults, None if command is None else command["id"], status["ready"])


class CoreClient:
    """See the module docstring. `start()` returns at once; the connection follows."""

    def __init__(
        self,
        path: Path,
        db: Database,
        *,
        agent_id: str,
        retry_s: float = 0.2,
        request_timeout_s: float = 10.0,
        max_pending: int = 256,
    ) -> None:
        self.path = path
        self.agent_id = agent_id
        self._commands = Commands(db)
        self._retry_s = retry_s
        self._request_timeout_s = request_timeout_s
        self._max_pending = max_pending
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._view: dict[str, Any] | None = None
        self._view_at = 0.0
        self._listeners: list[StatusListener] = []
        self._last_key: tuple[Any, ...] | None = None
        self._task: asyncio.Task[None] | None = None
        self._why_down = "not connected yet"
        self.connected = asyncio.Event()
        self.connects = 0

    # ------------------------------------------------------------------ lifecycle
    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="core-link")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._drop("the gateway is stopping")

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except (OSError, asyncio.IncompleteReadError, p.ProtocolError) as exc:
                why = exc.message if isinstance(exc, p.ProtocolError) else f"{type(exc).__name__}: {exc}"
                if self.connected.is_set() or why != self._why_down:
                    log.warning("core link down: %s (retrying every %.1f s)", why, self._retry_s)
                self._drop(why)
            await asyncio.sleep(self._retry_s)

    async def _session(self) -> None:
        reader, writer = await asyncio.open_unix_connection(str(self.path), limit=p.MAX_FRAME + 4)
        try:
            writer.write(p.encode(dict(p.hello("gateway", self.agent_id, os.getpid()))))
            decoder = p.FrameDecoder()
            greeted = False
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionResetError("the core closed the connection")
                for message in decoder.feed(data):
                    if not greeted:
                        if message.get("t") == "rep" and not message.get("ok"):
                            raise p.ProtocolError(str((message.get("error") or {}).get("message")))
                        p.check_hello(message, "core")
                        greeted = True
                        self._writer = writer
                        self.connects += 1
                        log.info("connected to the core (pid %s) on %s", message.get("pid"), self.path)
                        continue
                    self._on_message(message)
        finally:
            self._writer = None
            writer.close()

    def _drop(self, why: str) -> None:
        self._why_down = why
        self.connected.clear()
        self._writer = None
        self._view = None
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(p.CoreUnavailable(f"the core connection was lost: {why}"))

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == "view":
            if message.get("v") != p.VIEW_VERSION:
                raise p.ProtocolError(
                    f"the core sends view version {message.get('v')!r}, this gateway reads {p.VIEW_VERSION}"
                )
            self._view = message
            self._view_at = time.monotonic()
            self.connected.set()
            status = cast(StatusDocument, message["status"])
            key = _status_key(status)
            if key != self._last_key:
                self._last_key = key
                for listener in list(self._listeners):
                    try:
                        listener(status)
                    except Exception:
                        log.exception("status listener failed")
        elif kind == "rep":
            future = self._pending.pop(message.get("id"), None)  # type: ignore[arg-type]
            if future is None or future.done():
                return
            if message.get("ok"):
                future.set_result(message.get("result"))
            else:
                future.set_exception(p.remote_error(message.get("error") or {}))
        else:
            raise p.ProtocolError(f"unexpected message type {kind!r} from the core")

    # ------------------------------------------------------------------ requests
    async def request(self, op: str, args: dict[str, Any], *, timeout_s: float | None = None) -> Any:
        writer = self._writer
        if writer is None:
            raise p.CoreUnavailable(f"the core is not connected ({self._why_down})")
        if len(self._pending) >= self._max_pending:
            raise p.CoreBusy(f"{len(self._pending)} requests already wait for the core")
        timeout = timeout_s if timeout_s is not None else self._request_timeout_s
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        writer.write(
            p.encode({"t": "req", "id": request_id, "op": op, "deadline_ms": int(timeout * 1000), "args": args})
        )
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise p.CoreTimeout(f"the core did not answer {op} within {timeout:.1f} s") from None
        finally:
            self._pending.pop(request_id, None)

    def fire_estop(self, *, user: str, reason: str = "") -> bool:
        """Send an E-stop to the core now, from a synchronous callback, and do not wait for it.

        The HTTP E-stop's early path: its frame leaves the gateway the moment the request is read,
        ahead of every request the gateway's loop has yet to turn to. The route then asks again
        the usual way (the core joins the stop already under way) for the reply and the audit row.
        False when the core is not connected."""
        writer = self._writer
        if writer is None:
            return False
        self._next_id += 1  # its reply matches no pending request and is dropped
        writer.write(
            p.encode(
                {
                    "t": "req",
                    "id": self._next_id,
                    "op": "estop",
                    "deadline_ms": 1000,
                    "args": {"source": "api", "user": user, "reason": reason or "on receipt of the request"},
                }
            )
        )
        return True

    # ------------------------------------------------------------------ AgentCore: reads
    def _current(self) -> dict[str, Any]:
        view = self._view
        if view is None:
            raise p.CoreUnavailable(f"the core is not connected ({self._why_down})")
        return view

    def status(self) -> StatusDocument:
        return cast(StatusDocument, self._current()["status"])

    def modules(self) -> list[ModuleView]:
        view = self._current()
        extra_ms = round((time.monotonic() - self._view_at) * 1000, 1)
        return [self._aged(m, extra_ms) for m in view["modules"]]

    def module(self, name: str) -> ModuleView:
        for module in self.modules():
            if module["role"] == name:
                return module
        raise ModuleNotFound(f"no module bound for role {name!r}")

    @staticmethod
    def _aged(module: dict[str, Any], extra_ms: float) -> ModuleView:
        """Value ages as of now: the view's own ages plus the time since the view arrived."""
        values = {k: {**v, "age_ms": round(v["age_ms"] + extra_ms, 1)} for k, v in module.get("values", {}).items()}
        return cast(ModuleView, {**module, "values": values})

    def ready(self) -> tuple[bool, list[str]]:
        view = self._view
        if view is None:
            return False, [f"core process not connected: {self._why_down}"]
        status = view["status"]
        return bool(status.get("ready")), list(status.get("ready_reasons") or [])

    def alive(self) -> bool:
        """The gateway itself: its link task runs (the core's health is in `ready()` and the status)."""
        return self._task is not None and not self._task.done()

    def not_alive_because(self) -> str:
        if self.alive():
            return ""
        if self._task is None:
            return "the core link has not started"
        return "the core link task ended"

    async def get_command(self, command_id: str) -> CommandRecord:
        return await self._commands.get(command_id)

    async def list_commands(self, state: str | None = None, limit: int = 100) -> list[CommandRecord]:
        return await self._commands.list(state=state, limit=limit)

    # ------------------------------------------------------------------ AgentCore: changes
    async def submit_command(
        self,
        *,
        source: str,
        idempotency_key: str,
        type: str,
        params: dict[str, Any],
        user: str | None,
        priority: int = 5,
        not_after: datetime | None = None,
        audit: AuditEntry | None = None,
    ) -> SubmitResult:
        result = await self.request(
            "submit_command",
            {
                "source": source,
                "idempotency_key": idempotency_key,
                "type": type,
                "params": params,
                "user": user,
                "priority": priority,
                "not_after": not_after.isoformat() if not_after is not None else None,
                "audit": _audit(audit),
            },
        )
        return SubmitResult(CommandRecord(**result["record"]), bool(result["created"]))

    async def cancel_command(
        self, command_id: str, *, user: str | None, audit: AuditEntry | None = None
    ) -> CommandRecord:
        result = await self.request("cancel_command", {"command_id": command_id, "user": user, "audit": _audit(audit)})
        return CommandRecord(**result["record"])

    async def estop(
        self, *, source: str, user: str | None, reason: str = "", audit: AuditEntry | None = None
    ) -> EstopResult:
        result = await self.request("estop", {"source": source, "user": user, "reason": reason, "audit": _audit(audit)})
        return EstopResult(bool(result["confirmed"]), result.get("confirm_ms"), result.get("fault"))

    async def reset(self, *, user: str, audit: AuditEntry | None = None) -> ResetResult:
        result = await self.request("reset", {"user": user, "audit": _audit(audit)}, timeout_s=30.0)
        return ResetResult(list(result["cleared"]), dict(result["remaining"]), str(result["state"]))

    def add_status_listener(self, listener: StatusListener) -> None:
        self._listeners.append(listener)

    def remove_status_listener(self, listener: StatusListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)


def _audit(entry: AuditEntry | None) -> dict[str, Any] | None:
    return None if entry is None else dataclasses.asdict(entry)
