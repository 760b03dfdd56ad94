"""`GET /healthz` (the process answers) and `GET /readyz` (it can do its job): no credentials."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from agent.api.context import api_context
from agent.api.deps import require
from agent.api.errors import error_response
from agent.api.models import errors
from agent.api.permissions import Permission

router = APIRouter(tags=["health"])


@router.get("/healthz", dependencies=[Depends(require(Permission.PUBLIC))], responses=errors(503))
async def healthz(request: Request) -> Any:
    api = api_context(request)
    if not api.core.alive():
        return error_response(
            request,
            503,
            "NOT_ALIVE",
            api.core.not_alive_because() or "the control loop is not running",
            "The agent will be restarted by its watchdog; check the log for the task named here.",
        )
    return {"alive": True, "agent_id": api.settings.agent_id, "version": api.settings.version}


@router.get("/readyz", dependencies=[Depends(require(Permission.PUBLIC))], responses=errors(503))
async def readyz(request: Request) -> Any:
    api = api_context(request)
    ok, reasons = api.core.ready()
    reasons = list(reasons)
    db = api.db.health()
    if not db.get("ok", False):
        reasons.append(f"database: {db.get('code', 'STORE_UNAVAILABLE')}")
    if ok and not reasons:
        return JSONResponse({"ready": True, "reasons": []})
    return error_response(
        request,
        503,
        "NOT_READY",
        "; ".join(reasons) or "not ready",
        "See `reasons`: the bus, the mandatory modules and the database must all be up.",
        reasons=reasons,
    )
