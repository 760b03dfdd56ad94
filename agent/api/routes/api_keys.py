"""API keys for machine clients (admin): list, create (the key is shown once), revoke.

Creating and revoking need a person (a login session): a key only lists. A key acts with at most
its creator's role and ends with its creator (see agent/auth/key_scope.py).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from agent.api.context import api_context
from agent.api.deps import audit_target, call_context, require
from agent.api.models import AUTH_ERRORS, ApiKeyCreate, ApiKeyCreated, ApiKeyOut, errors, link
from agent.api.permissions import Permission
from agent.auth.principal import Principal

router = APIRouter(prefix="/api/v1/api-keys", tags=["api-keys"])
ADMIN = Depends(require(Permission.API_KEYS))


@router.get("", response_model=list[ApiKeyOut], responses=errors(*AUTH_ERRORS))
async def list_keys(request: Request, _: Principal = ADMIN) -> list[ApiKeyOut]:
    return [ApiKeyOut(**k.public()) for k in await api_context(request).auth.list_api_keys()]


@router.post(
    "",
    name="api_key.create",
    response_model=ApiKeyCreated,
    status_code=201,
    responses={
        201: {
            "description": "Created.",
            "links": {
                "RevokeKey": link("DELETE", "/api/v1/api-keys/{key_id}", "Revoke it.", key_id="$response.body#/id")
            },
        },
        **errors(*AUTH_ERRORS),
    },
)
async def create_key(body: ApiKeyCreate, request: Request, principal: Principal = ADMIN) -> ApiKeyCreated:
    """Create a key for one client; `key` is in this answer only. The key belongs to the caller:
    it acts with at most the caller's role and is revoked when the caller is disabled."""
    audit_target(request, body.name)
    record, full = await api_context(request).auth.create_api_key(
        principal, body.name, body.role, call_context(request)
    )
    return ApiKeyCreated(**record.public(), key=full)


@router.delete("/{key_id}", name="api_key.revoke", response_model=ApiKeyOut, responses=errors(*AUTH_ERRORS, 404))
async def revoke_key(
    request: Request, key_id: Annotated[str, Path(min_length=1, max_length=64)], principal: Principal = ADMIN
) -> ApiKeyOut:
    """Revoke a key and every key made with it (possible only in older databases)."""
    audit_target(request, key_id)
    record = await api_context(request).auth.revoke_api_key(principal, key_id, call_context(request))
    return ApiKeyOut(**record.public())
