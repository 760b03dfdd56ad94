"""Authentication and authorisation as FastAPI dependencies: `require(Permission.X)`.

Every route names its permission with exactly one of these dependencies; `route_permission`
finds it again, so a test (and the route listing) can prove no route was left open by accident.

Credentials are read from the `Authorization: Bearer` header only: never from a query string
(it lands in logs and browser history) nor from a cookie (it would make every form on another
site a cross-site request). The WebSocket stream is the one exception, with a single-use ticket.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, WebSocket
from fastapi.exceptions import WebSocketException
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute

from agent.api.context import api_context
from agent.api.permissions import Permission, allowed
from agent.auth.auditing import write_anonymous
from agent.auth.errors import AuthError, AuthInvalid, PermissionDenied
from agent.auth.principal import CallContext, Principal
from agent.store.audit import AuditEntry, append_in

__all__ = [
    "audit_target",
    "call_context",
    "client_ip",
    "require",
    "require_ticket",
    "route_permission",
]

PermissionDependency = Callable[..., Awaitable[Principal | None]]


def client_ip(conn: HTTPConnection) -> str:
    """The TCP peer (uvicorn runs without proxy headers, so this cannot be spoofed by a header)."""
    client = conn.scope.get("client")
    return str(client[0]) if client else "unknown"


def call_context(request: Request) -> CallContext:
    ctx = getattr(request.state, "call", None)
    if not isinstance(ctx, CallContext):
        ctx = CallContext(source_ip=client_ip(request), request_id=getattr(request.state, "request_id", None))
        request.state.call = ctx
    return ctx


def audit_target(request: Request, target: str) -> None:
    """Name what this request acts on, for the audit row the middleware writes (if nobody else did).

    The action is the route's name (`user.create`, ...), so it is known even when the request is
    refused before the handler runs.
    """
    request.state.audit_target = target


def core_audit(request: Request, principal: Principal) -> AuditEntry:
    """The audit row for a change the core makes: it writes the row after the change, in its own
    process, so a gateway that dies after the change leaves no change without its record. Call
    `mark_audited` once the core has answered; the middleware then writes no second row."""
    from agent.api.middleware import audit_entry

    return audit_entry(request.scope, request.scope["state"].get("body", b""), principal)


def mark_audited(request: Request) -> None:
    call_context(request).audited = True


def bearer(conn: HTTPConnection) -> str | None:
    """The value of `Authorization: Bearer <value>`; AuthInvalid for another scheme."""
    header = conn.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AuthInvalid("use `Authorization: Bearer <token>`")
    return value.strip()


def require(permission: Permission) -> PermissionDependency:
    """A dependency that authenticates the caller and checks `permission`; returns the principal."""

    async def dependency(request: Request) -> Principal | None:
        if permission is Permission.PUBLIC:
            return None
        api = api_context(request)
        try:
            principal = await api.auth.authenticate(bearer(request))
        except AuthError as exc:
            api.metrics.auth_failures.labels(code=exc.code).inc()
            raise
        request.state.principal = principal
        if not allowed(principal.role, permission):
            raise PermissionDenied(f"role {principal.role} does not have permission {permission.value!r}")
        return principal

    dependency.permission = permission  # type: ignore[attr-defined]
    dependency.__name__ = f"require_{permission.value}"
    return dependency


def require_ticket(permission: Permission) -> Callable[..., Awaitable[Principal]]:
    """For the WebSocket: redeem the single-use `ticket` query parameter, check `permission`.

    A refused connection is closed with 1008 (policy violation) before it is accepted and is
    audited; the ticket itself is never logged.
    """

    async def dependency(websocket: WebSocket) -> Principal:
        api = api_context(websocket)
        ip = client_ip(websocket)
        request_id = websocket.scope.get("state", {}).get("request_id")
        try:
            principal = api.auth.redeem_ticket(websocket.query_params.get("ticket"))
            if not allowed(principal.role, permission) or not await api.auth.still_valid(principal):
                raise AuthInvalid("the session behind this ticket is no longer valid")
        except AuthError as exc:
            api.metrics.auth_failures.labels(code=exc.code).inc()
            entry = AuditEntry(
                actor="anonymous", auth_method="ticket", action="stream.open", result="denied",
                code=exc.code, source_ip=ip, request_id=request_id,
            )  # fmt: skip
            await write_anonymous(api.db, api.auth.audit_gate, entry)
            raise WebSocketException(code=1008, reason=exc.code) from None
        entry = AuditEntry(
            actor=principal.actor, auth_method="ticket", action="stream.open",
            source_ip=ip, request_id=request_id,
        )  # fmt: skip
        await api.db.write(lambda conn: append_in(conn, entry))
        return principal

    dependency.permission = permission  # type: ignore[attr-defined]
    dependency.__name__ = f"require_ticket_{permission.value}"
    return dependency


def route_permission(route: BaseRoute) -> Permission | None:
    """The permission a route declared through `require`/`require_ticket`, or None."""
    dependant: Any = getattr(route, "dependant", None)
    if dependant is None:
        return None
    found: list[Permission] = []
    stack = list(dependant.dependencies)
    while stack:
        dep = stack.pop()
        perm = getattr(dep.call, "permission", None)
        if isinstance(perm, Permission):
            found.append(perm)
        stack.extend(dep.dependencies)
    return found[0] if len(found) == 1 else None
