"""Read-only views of the robot: status, modules.

Each route's schema is the typed document the core builds (agent/control/status_view.py), so
/openapi.json lists every field the agent sends."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request, Response

from agent.api.context import api_context
from agent.api.deps import require
from agent.api.models import AUTH_ERRORS, errors
from agent.api.permissions import Permission
from agent.control.status_view import ModuleView, StatusDocument

router = APIRouter(prefix="/api/v1", tags=["status"])
READ = [Depends(require(Permission.READ))]


@router.get("/status", dependencies=READ, response_model=StatusDocument, responses=errors(*AUTH_ERRORS))
async def status(request: Request) -> Response:
    """State, safety verdict, latched faults, link and module health.

    Answered with the document's bytes as encoded once per view (see `EncodedDocument`): the
    most polled route does not validate and encode the same document again for every request."""
    api = api_context(request)
    return Response(api.status_json.encode(api.core.status()), media_type="application/json")


@router.get("/modules", dependencies=READ, response_model=list[ModuleView], responses=errors(*AUTH_ERRORS))
async def modules(request: Request) -> list[ModuleView]:
    return api_context(request).core.modules()


@router.get("/modules/{name}", dependencies=READ, response_model=ModuleView, responses=errors(*AUTH_ERRORS, 404))
async def module(request: Request, name: str = Path(min_length=1, max_length=32)) -> ModuleView:
    """Identity, profile and decoded live values with their age."""
    return api_context(request).core.module(name)
