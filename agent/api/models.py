"""Request and response bodies of the API (the OpenAPI schema is generated from these).

The store's records (commands, audit rows) are answered as they are: their dataclasses are the
response models, so each record's fields are declared once, in the store.

Requests forbid unknown fields: a typo in a field name is an error, not a silently ignored
setting.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from agent.auth.password_policy import MAX_LENGTH, MIN_LENGTH
from agent.control.states import CommandType
from agent.store.api_keys import KEY_NAME_PATTERN
from agent.store.audit import AuditRecord
from agent.store.users import USER_NAME_PATTERN

__all__ = [
    "ApiKeyCreate",
    "ApiKeyCreated",
    "ApiKeyOut",
    "AuditPage",
    "CommandRequest",
    "ErrorOut",
    "EstopOut",
    "EstopRequest",
    "LoginRequest",
    "LoginResponse",
    "PasswordChange",
    "PasswordSet",
    "ResetOut",
    "UserCreate",
    "UserOut",
    "errors",
]

RoleName = Literal["viewer", "operator", "technician", "admin"]
# Bounded sizes keep every request cheap to validate; the policy itself is checked by the service.
Password = Annotated[str, Field(min_length=1, max_length=MAX_LENGTH)]
# A password being set: the schema states the policy's length limits. The service applies them
# (with the rest of the policy) and answers PASSWORD_REJECTED with its hint, so they are stated
# here without a second check that would answer with another code.
NewPassword = Annotated[str, Field(min_length=1, max_length=MAX_LENGTH, json_schema_extra={"minLength": MIN_LENGTH})]
# Likewise user and key names, as the store checks them (USER_NAME_INVALID, API_KEY_INVALID),
# and command types, as the command validator checks them (COMMAND_INVALID).
UserName = Annotated[str, Field(min_length=1, max_length=64, json_schema_extra={"pattern": USER_NAME_PATTERN})]
KeyName = Annotated[str, Field(min_length=1, max_length=64, json_schema_extra={"pattern": KEY_NAME_PATTERN})]
CommandTypeName = Annotated[
    str, Field(min_length=1, max_length=64, json_schema_extra={"enum": [t.value for t in CommandType]})
]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginRequest(_In):
    username: Annotated[str, Field(min_length=1, max_length=256)]
    password: Password


class LoginResponse(BaseModel):
    token: str
    expires_at: str
    role: RoleName


class WhoAmI(BaseModel):
    actor: str
    role: RoleName
    method: str


class PasswordChange(_In):
    current_password: Password
    new_password: NewPassword


class PasswordSet(_In):
    password: NewPassword


class SessionsRevoked(BaseModel):
    revoked_sessions: int
    message: str


class UserCreate(_In):
    name: UserName
    role: RoleName
    password: NewPassword


class UserOut(BaseModel):
    id: str
    name: str
    role: RoleName
    disabled: bool
    created_at: str
    created_by: str
    password_changed_at: str
    disabled_at: str | None
    disabled_by: str | None
    last_login_at: str | None


class ApiKeyCreate(_In):
    name: KeyName
    role: RoleName


class ApiKeyOut(BaseModel):
    id: str
    prefix: str
    name: str
    role: RoleName
    created_by: str
    created_at: str
    last_used_at: str | None
    revoked: bool
    revoked_at: str | None
    revoked_by: str | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The full key. It is shown only in this answer; store it now.")


class CommandRequest(_In):
    type: CommandTypeName
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Annotated[int, Field(ge=1, le=10)] = 5
    not_after: AwareDatetime | None = None


class EstopRequest(_In):
    reason: Annotated[str, Field(max_length=200)] = ""


class EstopOut(BaseModel):
    confirmed: bool
    confirm_ms: float | None


class ResetOut(BaseModel):
    cleared: list[str]
    remaining: dict[str, str]
    state: str


class AuditPage(BaseModel):
    items: list[AuditRecord]
    next_after_seq: int


class AuditVerifyOut(BaseModel):
    ok: bool
    rows: int
    first_bad_seq: int | None
    reason: str


class TicketOut(BaseModel):
    ticket: str
    expires_in: float


class ErrorOut(BaseModel):
    """Every error: a stable code, a message, maybe a hint, and the request id."""

    model_config = ConfigDict(extra="allow")
    code: str
    message: str
    hint: str | None = None
    request_id: str


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` argument documenting error statuses with the one error shape."""
    return {status: {"model": ErrorOut} for status in statuses}


# What any authenticated route can answer besides its success.
AUTH_ERRORS = (400, 401, 403, 413, 422, 500)
