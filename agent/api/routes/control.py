"""E-stop (every role) and fault reset (technician and up)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Request

from agent.api.context import api_context
from agent.api.deps import core_audit, mark_audited, require
from agent.api.errors import error_response
from agent.api.models import AUTH_ERRORS, EstopOut, EstopRequest, ResetOut, errors
from agent.api.permissions import Permission
from agent.auth.principal import Principal

router = APIRouter(prefix="/api/v1", tags=["control"])


@router.post("/estop", name="robot.estop", response_model=EstopOut, responses=errors(*AUTH_ERRORS, 503))
async def estop(
    request: Request,
    body: EstopRequest | None = Body(default=None),
    principal: Principal = Depends(require(Permission.ESTOP)),
) -> Any:
    """200 only once the stop is confirmed on the bus; otherwise 503 with the fault."""
    reason = body.reason if body is not None else ""
    result = await api_context(request).core.estop(source="api", user=principal.actor, reason=reason,
                                                   audit=core_audit(request, principal))
    mark_audited(request)
    if result.confirmed:
        return EstopOut(confirmed=True, confirm_ms=result.confirm_ms)
    fault = dict(result.fault or {})
    return error_response(
        request, 503,
        str(fault.get("code") or "ESTOP_NOT_CONFIRMED"),
        str(fault.get("message") or "the stop could not be confirmed on the bus"),
        str(fault.get("hint") or "") or "Use the hardware E-stop; the agent keeps retrying the stop writes.",
        fault=fault,
    )  # fmt: skip


@router.post("/reset", name="fault.reset", response_model=ResetOut, responses=errors(*AUTH_ERRORS, 409))
async def reset(request: Request, principal: Principal = Depends(require(Permission.FAULT_RESET))) -> Any:
    """Clear latched faults whose cause is gone: 200 when all cleared, else 409 with the reasons."""
    result = await api_context(request).core.reset(user=principal.actor, audit=core_audit(request, principal))
    mark_audited(request)
    if result.complete:
        return ResetOut(cleared=list(result.cleared), remaining={}, state=result.state)
    return error_response(
        request, 409, "RESET_INCOMPLETE",
        f"{len(result.remaining)} fault(s) could not be cleared: " + "; ".join(f"{k}: {v}" for k, v in result.remaining.items()),
        "Remove the cause of each remaining fault (see `remaining`), then reset again.",
        cleared=list(result.cleared), remaining=dict(result.remaining), state=result.state,
    )  # fmt: skip
