"""`GET /openapi.json` behind a viewer login (FastAPI's own, unauthenticated one is switched off)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request

from agent.api.deps import require
from agent.api.permissions import Permission

router = APIRouter()


@router.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require(Permission.READ))])
async def openapi(request: Request) -> dict[str, Any]:
    # Building the document takes ~100 ms of CPU the first time (then it is cached): done in a
    # thread so the control loop, which shares this event loop, is not held up.
    document: dict[str, Any] = await asyncio.to_thread(request.app.openapi)
    return document
