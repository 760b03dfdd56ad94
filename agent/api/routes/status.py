"""Read-only views of the robot: status, modules."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Request, Response

from agent.api.context import api_context
from agent.api.deps import require
from agent.api.models import AUTH_ERRORS, errors
from agent.api.permissions import Permission

router = APIRouter(prefix="/api/v1", tags=["status"])
READ = [Depends(require(Permission.READ))]


@router.get("/status", dependencies=READ, responses=errors(*AUTH_ERRORS), response_class=Response)
async def status(request: Request) -> Response:
    """State, safety verdict, latched faults, link and module health."""
    api = api_context(request)
    return Response(api.status_json.encode(api.core.status()), media_type="application/json")


@router.get("/modules", dependencies=READ, responses=errors(*AUTH_ERRORS))
async def modules(request: Request) -> list[dict[str, Any]]:
    return api_context(request).core.modules()


@router.get("/modules/{name}", dependencies=READ, responses=errors(*AUTH_ERRORS, 404))
async def module(request: Request, name: str = Path(min_length=1, max_length=32)) -> dict[str, Any]:
    """Identity, profile and decoded live values with their age."""
    return api_context(request).core.module(name)
