"""The outermost layer of every HTTP request (plain ASGI, no per-request task or copy).

In order, for each request:
- a new request id (`X-Request-ID` on the answer, `request_id` in error bodies and audit rows);
- the body is read up front and refused beyond `max_body_bytes` (413), whatever Content-Length
  claims, then replayed to the app; so no route ever sees an unbounded body;
- security headers on every answer (HSTS when served over TLS);
- state-changing requests (POST/PUT/PATCH/DELETE) get an audit row before their answer is
  sent, unless the service already wrote one in the transaction of the change; refusals by
  callers without credentials go through the audit gate (bounded per address);
- any unexpected exception becomes a 500 `INTERNAL` with a generic message; the traceback goes
  to the log under the request id, never to the client;
- at most `max_in_flight` requests are worked on at once (see ApiSettings for why); the
  E-stop and the health probes skip the queue;
- request count and latency by route template, under bounded labels (see metrics.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from fastapi.routing import iter_route_contexts
from starlette.datastructures import MutableHeaders
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.api.errors import error_body
from agent.auth.auditing import write_anonymous
from agent.auth.principal import CallContext, Principal
from agent.ids import new_id
from agent.logs import log_context
from agent.store.audit import AuditEntry, append_in, params_digest

__all__ = ["STATE_CHANGING", "ApiMiddleware", "allowed_methods"]

log = logging.getLogger("oht.api")

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = (
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("content-security-policy", _CSP),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
)
_HSTS = "max-age=31536000"


class _TooLarge(Exception):
    pass


# Never queued behind other requests: stopping the robot and telling whether it is alive.
_PRIORITY_PATHS = frozenset({"/api/v1/estop", "/healthz", "/readyz"})
# Admitted through slots of their own: they wait for a password-hashing thread.
_LOGIN_PATHS = frozenset({"/api/v1/auth/login"})


class ApiMiddleware:
    def __init__(self, app: ASGIApp, *, api: Any) -> None:
        self.app = app
        self.api = api  # ApiContext (set after the app is built)
        self._slots = asyncio.Semaphore(api.settings.max_in_flight)
        self._login_slots = asyncio.Semaphore(api.settings.login_in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            state = scope.setdefault("state", {})
            state["request_id"] = new_id()
            with log_context(request_id=state["request_id"]):
                await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_id()
        with log_context(request_id=request_id):  # every line logged for this request carries it
            await self._http(scope, receive, send, request_id)

    # ------------------------------------------------------------------ http

    async def _http(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        started = time.perf_counter()
        client = scope.get("client")
        ip = str(client[0]) if client else "unknown"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["call"] = CallContext(source_ip=ip, request_id=request_id)
        method = scope["method"]
        tls = scope.get("scheme") == "https"
        response: dict[str, Any] = {"status": 500, "started": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                headers = MutableHeaders(scope=message)
                if message["status"] == 405:
                    headers["allow"] = ", ".join(allowed_methods(scope))
                headers["x-request-id"] = request_id
                for name, value in _HEADERS:
                    headers.setdefault(name, value)
                headers.setdefault("cache-control", "no-store")
                if tls:
                    headers["strict-transport-security"] = _HSTS
                if method in STATE_CHANGING:
                    await self._audit(scope, body, message["status"])
                response["started"] = True
            await send(message)

        body = b""
        try:
            try:
                body = await self._read_body(scope, receive)
                state["body"] = body
            except _TooLarge:
                state["error_code"] = "REQUEST_TOO_LARGE"
                limit = self.api.settings.max_body_bytes
                await self._send_error(
                    send_wrapper, 413, "REQUEST_TOO_LARGE", f"the request body exceeds {limit} bytes",
                    "Send smaller requests; command parameters are small JSON objects.", request_id,
                )  # fmt: skip
                return
            problem = body_problem(body) if method in STATE_CHANGING and scope["path"] != "/api/v1/estop" else None
            if problem is not None:
                # Refused before any route runs: a body the agent cannot read, or could not
                # digest for its audit row, never reaches an action. (The E-stop never waits on this.)
                state["error_code"] = "REQUEST_MALFORMED"
                principal = self.api.auth.cached_principal(_bearer(scope))
                if principal is not None:
                    state["principal"] = principal
                await self._send_error(
                    send_wrapper, 400, "REQUEST_MALFORMED", f"the request body was refused: {problem}",
                    "Send one JSON object in UTF-8, each key once, nested at most "
                    f"{MAX_JSON_DEPTH} levels, finite numbers.", request_id,
                )  # fmt: skip
                return
            if scope["path"] in _PRIORITY_PATHS:
                await self.app(scope, _replay(body, receive), send_wrapper)
            else:
                slots = self._login_slots if scope["path"] in _LOGIN_PATHS else self._slots
                try:
                    if slots.locked():  # only a request that must queue pays for a timer
                        async with asyncio.timeout(self.api.settings.admission_wait_s):
                            await slots.acquire()
                    else:
                        await slots.acquire()
                except TimeoutError:
                    state["error_code"] = "API_BUSY"
                    await self._send_error(
                        send_wrapper, 503, "API_BUSY", "the agent is busy; the request was not started",
                        "Retry shortly; the E-stop is never refused for load.", request_id,
                    )  # fmt: skip
                    return
                try:
                    await self.app(scope, _replay(body, receive), send_wrapper)
                finally:
                    slots.release()
        except Exception:
            log.exception("request %s (%s %s) failed", request_id, method, _route(scope))
            if response["started"]:
                return
            state["error_code"] = "INTERNAL"
            await self._send_error(
                send_wrapper, 500, "INTERNAL", "internal error",
                f"Report request id {request_id}; the agent log has the details.", request_id,
            )  # fmt: skip
        finally:
            self.api.metrics.observe_request(
                method, _template(scope), response["status"], time.perf_counter() - started
            )

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.api.settings.max_body_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        raise _TooLarge
                except ValueError:
                    pass
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    @staticmethod
    async def _send_error(send: Send, status: int, code: str, message: str, hint: str, request_id: str) -> None:
        payload = json.dumps(error_body(code, message, hint, request_id)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        if status == 503:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    # ------------------------------------------------------------------ audit

    async def _audit(self, scope: Scope, body: bytes, status: int) -> None:
        state: MutableMapping[str, Any] = scope["state"]
        call: CallContext = state["call"]
        if call.audited:
            return
        call.audited = True
        principal = state.get("principal")
        result = "ok" if status < 400 else "denied" if status in (401, 403, 429) else "error"
        code = state.get("error_code") if status >= 400 else None
        entry = audit_entry(scope, body, principal, result=result, code=code)
        api = self.api
        try:
            if isinstance(principal, Principal):
                await api.db.write(lambda conn: append_in(conn, entry))
            else:
                await write_anonymous(api.db, api.auth.audit_gate, entry)
        except Exception:
            log.exception("could not write the audit row of request %s", call.request_id)


def audit_entry(
    scope: Scope, body: bytes, principal: Any, *, result: str = "ok", code: str | None = None
) -> AuditEntry:
    """The audit row of this request: the middleware's own, or the one a route hands to the core
    so that the change and its record are written by the process that makes the change."""
    state: MutableMapping[str, Any] = scope["state"]
    call: CallContext = state["call"]
    return AuditEntry(
        actor=principal.actor if isinstance(principal, Principal) else "anonymous",
        auth_method=principal.method if isinstance(principal, Principal) else "none",
        action=_action(scope),
        result=result,
        code=code,
        target=state.get("audit_target") or _target(scope),
        source_ip=call.source_ip,
        params_digest=_digest(scope, body),
        request_id=call.request_id,
    )


MAX_JSON_DEPTH = 32


class _RepeatedKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _RepeatedKey(key)
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def body_problem(body: bytes) -> str | None:
    """Why a state-changing request's body is refused, or None. Empty bodies pass."""
    if not body:
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "it is not UTF-8"
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
    except RecursionError:
        return "it is nested too deeply"
    except _RepeatedKey as exc:
        return f"it repeats the key {str(exc)[:40]!r}"
    except ValueError as exc:  # not JSON, or an integer too long to convert
        return f"it is not JSON ({str(exc)[:80]})"
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"it is nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(item, float) and not math.isfinite(item):
            return "it holds a number too large to be finite"
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return None


def allowed_methods(scope: Scope) -> list[str]:
    """Every method some route of the app serves at this request's path, for a 405's `Allow`.

    The router answers 405 from the first route whose path matched, so its own `Allow` names only
    that route's methods: a path served by two routes (GET lists, POST creates) would be
    advertised with one of them."""
    app = scope.get("app")
    path = scope.get("path", "")
    methods: set[str] = set()
    for context in iter_route_contexts(getattr(app, "routes", [])):
        if context.path is not None and context.methods and compile_path(context.path)[0].match(path):
            methods.update(context.methods)
    return sorted(methods)


def _bearer(scope: Scope) -> str | None:
    header = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"").decode("latin-1")
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _template(scope: Scope) -> str | None:
    """The matched route's template (`/api/v1/modules/{name}`), or None: never the request's path."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else None


def _route(scope: Scope) -> str:
    return _template(scope) or "unmatched"


def _action(scope: Scope) -> str:
    """The route's audit name (state-changing routes are named like `user.create`)."""
    name = getattr(scope.get("route"), "name", "") or ""
    return name if "." in name else f"{scope['method']} {_route(scope)}"


def _target(scope: Scope) -> str | None:
    params = scope.get("path_params") or {}
    if params:
        return ",".join(f"{k}={v}" for k, v in sorted(params.items()))[:200]
    return None if scope.get("route") else str(scope.get("path", ""))[:200]


def _digest(scope: Scope, body: bytes) -> str | None:
    """Digest of path parameters, query and JSON body, with secret-named fields removed."""
    parsed: Any = None
    if body:
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            parsed = {"unparsed_bytes": len(body)}
    query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
    params = {"path": dict(scope.get("path_params") or {}), "query": query, "body": parsed}
    idem = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"idempotency-key"), None)
    if idem is not None:
        params["idempotency_key"] = idem
    return params_digest(params)


def _replay(body: bytes, receive: Receive) -> Callable[[], Awaitable[Message]]:
    """A `receive` that hands the buffered body to the app once, then defers to the server."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
