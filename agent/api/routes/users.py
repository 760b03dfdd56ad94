"""User administration (admin): list, create, disable, set a password. Never delete.

Changes need a person (a login session) or the command line; an admin's API key only lists.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from agent.api.context import api_context
from agent.api.deps import audit_target, call_context, require
from agent.api.models import AUTH_ERRORS, PasswordSet, SessionsRevoked, UserCreate, UserOut, errors, link
from agent.api.permissions import Permission
from agent.auth.principal import Principal

router = APIRouter(prefix="/api/v1/users", tags=["users"])
UserName = Annotated[str, Path(min_length=1, max_length=64)]
ADMIN = Depends(require(Permission.USERS))


@router.get("", response_model=list[UserOut], responses=errors(*AUTH_ERRORS))
async def list_users(request: Request, _: Principal = ADMIN) -> list[UserOut]:
    return [UserOut(**u.public()) for u in await api_context(request).auth.list_users()]


_FOLLOW = {
    "DisableUser": link("POST", "/api/v1/users/{name}/disable", "Disable the user.", name="$response.body#/name"),
    "SetPassword": link("POST", "/api/v1/users/{name}/password", "Set their password.", name="$response.body#/name"),
}


@router.post(
    "",
    name="user.create",
    response_model=UserOut,
    status_code=201,
    responses={201: {"description": "Created.", "links": _FOLLOW}, **errors(*AUTH_ERRORS, 409)},
)
async def create_user(body: UserCreate, request: Request, principal: Principal = ADMIN) -> UserOut:
    audit_target(request, body.name)
    user = await api_context(request).auth.create_user(
        principal, body.name, body.role, body.password, call_context(request)
    )
    return UserOut(**user.public())


@router.post("/{name}/disable", name="user.disable", response_model=UserOut, responses=errors(*AUTH_ERRORS, 404, 409))
async def disable_user(request: Request, name: UserName, principal: Principal = ADMIN) -> UserOut:
    """Disable a user, end their sessions and revoke the API keys they made. The last enabled
    admin cannot be disabled."""
    audit_target(request, name)
    user = await api_context(request).auth.disable_user(principal, name, call_context(request))
    return UserOut(**user.public())


@router.post(
    "/{name}/password", name="user.password_set", response_model=SessionsRevoked, responses=errors(*AUTH_ERRORS, 404)
)
async def set_password(
    body: PasswordSet, request: Request, name: UserName, principal: Principal = ADMIN
) -> SessionsRevoked:
    """Set another user's password (e.g. forgotten); their sessions end. Not one's own: that is
    POST /api/v1/auth/password, with the current password."""
    audit_target(request, name)
    revoked = await api_context(request).auth.set_password(principal, name, body.password, call_context(request))
    return SessionsRevoked(revoked_sessions=revoked, message="password set; the user must log in again")
