"""Login, logout, own password, whoami. No self-registration: users are made by admins."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from agent.api.context import api_context
from agent.api.deps import audit_target, call_context, require
from agent.api.models import AUTH_ERRORS, LoginRequest, LoginResponse, PasswordChange, SessionsRevoked, WhoAmI, errors
from agent.api.permissions import Permission
from agent.auth.principal import Principal

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


@router.post(
    "/login",
    name="auth.login",
    response_model=LoginResponse,
    dependencies=[Depends(require(Permission.PUBLIC))],
    responses=errors(400, 401, 413, 422, 429),
)
async def login(body: LoginRequest, request: Request) -> LoginResponse:
    """Open a session. Wrong name, wrong password and disabled account get the same answer."""
    audit_target(request, body.username[:64])
    result = await api_context(request).auth.login(body.username, body.password, call_context(request))
    return LoginResponse(token=result.token, expires_at=result.expires_at, role=result.role)  # type: ignore[arg-type]


@router.post("/logout", name="auth.logout", responses=errors(*AUTH_ERRORS, 409))
async def logout(request: Request, principal: Principal = Depends(require(Permission.SELF))) -> dict[str, bool]:
    await api_context(request).auth.logout(principal, call_context(request))
    return {"logged_out": True}


@router.post(
    "/password", name="auth.password_change", response_model=SessionsRevoked, responses=errors(*AUTH_ERRORS, 409, 429)
)
async def change_password(
    body: PasswordChange, request: Request, principal: Principal = Depends(require(Permission.SELF))
) -> SessionsRevoked:
    """Change one's own password; every session of the user ends (log in again)."""
    audit_target(request, principal.actor)
    revoked = await api_context(request).auth.change_password(
        principal, body.current_password, body.new_password, call_context(request)
    )
    return SessionsRevoked(revoked_sessions=revoked, message="password changed; log in again")


@router.get("/me", response_model=WhoAmI, responses=errors(*AUTH_ERRORS))
async def whoami(principal: Principal = Depends(require(Permission.SELF))) -> WhoAmI:
    return WhoAmI(actor=principal.actor, role=principal.role, method=principal.method)  # type: ignore[arg-type]
