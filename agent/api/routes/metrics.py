"""`GET /metrics`: Prometheus text format (viewer or an API key). The database figures are read
here, once per scrape, on the gateway's reader connections (see agent/api/metrics.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from agent.api.context import api_context
from agent.api.deps import require
from agent.api.metrics import CONTENT_TYPE, store_readings
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
    ctx = api_context(request)
    readings = await store_readings(ctx.db)
    return Response(ctx.metrics.render(readings), media_type=CONTENT_TYPE)
