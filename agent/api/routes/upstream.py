"""`GET /api/v1/upstream`: whether the gateway syncs with the centre, and how far the sync got.

The sync service lives in the gateway beside the API (agent/sync/service.py), so this answers
without asking the core. The uplink's own dataclasses are the schema of the answer: each figure
is declared once, where the sender keeps it.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict

from agent.api.context import api_context
from agent.api.deps import require
from agent.api.models import AUTH_ERRORS, errors
from agent.api.permissions import Permission
from agent.sync.uplink import UplinkStatus

__all__ = ["UpstreamOut", "router"]

router = APIRouter(prefix="/api/v1", tags=["upstream"])
READ = [Depends(require(Permission.READ))]


class UpstreamOut(BaseModel):
    """`enabled` false (and nothing else) while `[upstream]` is off or its setup failed at start."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool
    device_key: str | None = None  # fingerprint of the device key's public half
    commands: bool | None = None  # commands from the centre are taken
    uplink: UplinkStatus | None = None


@router.get("/upstream", dependencies=READ, response_model=UpstreamOut, responses=errors(*AUTH_ERRORS))
async def upstream(request: Request) -> UpstreamOut:
    """The link to the broker, what was published and acknowledged per stream."""
    status = api_context(request).upstream_status()
    if status is None:
        return UpstreamOut(enabled=False)
    # Through the plain dict: the sender's per-stream map is a read-only view pydantic cannot encode.
    return UpstreamOut.model_validate({"enabled": True, **status.to_dict()})
