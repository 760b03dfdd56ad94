"""E-stop (every role) and fault reset (technician and up)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter, Body, Depends, Request

from agent.api.context import api_context
from agent.api.deps import core_audit, mark_audited, require
from agent.api.errors import error_response
from agent.api.models import AUTH_ERRORS, EstopOut, EstopRequest, ResetOut, errors
from agent.api.permissions import Permission, allowed
from agent.auth.principal import Principal

router = APIRouter(prefix="/api/v1", tags=["control"])

ESTOP_PATH = "/api/v1/estop"


def early_estop_hook(app: Any) -> Callable[[Mapping[str, Any]], None]:
    """Called by the HTTP server the moment a request's head is parsed (see `ApiServer`).

    Under a flood the gateway's loop has many requests queued before a new one's handler runs;
    an E-stop must not wait for them. When the head is `POST /api/v1/estop` with a credential
    already known and valid (the cache only: no database, no wait), the stop goes to the core at
    once. The request then runs as usual: the route asks the core again (it joins the stop under
    way), gets the confirmation to answer with, and the core writes the audit row. Anything else,
    or an unknown credential, takes only the usual path, which decides.
    """

    def hook(scope: Mapping[str, Any]) -> None:
        if scope.get("method") != "POST" or scope.get("path") != ESTOP_PATH:
            return
        api = app.state.api
        fire = getattr(api.core, "fire_estop", None)
        if fire is None:
            return
        header = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"").decode("latin-1")
        scheme, _, value = header.strip().partition(" ")
        principal = api.auth.cached_principal(value.strip()) if scheme.lower() == "bearer" else None
        if principal is not None and allowed(principal.role, Permission.ESTOP):
            fire(user=principal.actor)

    return hook


@router.post(
    ESTOP_PATH.removeprefix("/api/v1"), name="robot.estop", response_model=EstopOut, responses=errors(*AUTH_ERRORS, 503)
)
async def estop(
    request: Request,
    body: EstopRequest | None = Body(default=None),
    principal: Principal = Depends(require(Permission.ESTOP)),
) -> Any:
    """200 only once the stop is confirmed on the bus; otherwise 503 with the fault."""
    reason = body.reason if body is not None else ""
    result = await api_context(request).core.estop(
        source="api", user=principal.actor, reason=reason, audit=core_audit(request, principal)
    )
    mark_audited(request)
    if result.confirmed:
        return EstopOut(confirmed=True, confirm_ms=result.confirm_ms)
    fault = dict(result.fault or {})
    return error_response(
        request,
        503,
        str(fault.get("code") or "ESTOP_NOT_CONFIRMED"),
        str(fault.get("message") or "the stop could not be confirmed on the bus"),
        str(fault.get("hint") or "") or "Use the hardware E-stop; the agent keeps retrying the stop writes.",
        fault=fault,
    )


@router.post("/reset", name="fault.reset", response_model=ResetOut, responses=errors(*AUTH_ERRORS, 409))
async def reset(request: Request, principal: Principal = Depends(require(Permission.FAULT_RESET))) -> Any:
    """Clear latched faults whose cause is gone: 200 when all cleared, else 409 with the reasons."""
    result = await api_context(request).core.reset(user=principal.actor, audit=core_audit(request, principal))
    mark_audited(request)
    if result.complete:
        return ResetOut(cleared=list(result.cleared), remaining={}, state=result.state)
    return error_response(
        request,
        409,
        "RESET_INCOMPLETE",
        f"{len(result.remaining)} fault(s) could not be cleared: "
        + "; ".join(f"{k}: {v}" for k, v in result.remaining.items()),
        "Remove the cause of each remaining fault (see `remaining`), then reset again.",
        cleared=list(result.cleared),
        remaining=dict(result.remaining),
        state=result.state,
    )
