"""`GET /metrics`: Prometheus text format (viewer or an API key)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from agent.api.context import api_context
from agent.api.deps import require
from agent.api.metrics import CONTENT_TYPE
from agent.api.models import AUTH_ERRORS, errors
from agent.api.permissions import Permission

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    dependencies=[Depends(require(Permission.READ))],
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **errors(*AUTH_ERRORS)},
)
async def metrics(request: Request) -> Response:
    return Response(api_context(request).metrics.render(), media_type=CONTENT_TYPE)
