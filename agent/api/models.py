"""Request and response bodies of the API (the OpenAPI schema is generated from these).

The store's records (commands, audit rows) are answered as they are: their dataclasses are the
response models, so each record's fields are declared once, in the store.

Requests forbid unknown fields: a typo in a field name is an error, not a silently ignored
setting.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    TypeAdapter,
    WithJsonSchema,
    create_model,
)
from pydantic.json_schema import JsonSchemaValue

from agent.auth.password_policy import MAX_LENGTH, MIN_LENGTH
from agent.control.catalogue import CATALOGUE, CommandSpec, CommandType
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
# Likewise user and key names, as the store checks them (USER_NAME_INVALID, API_KEY_INVALID).
UserName = Annotated[str, Field(min_length=1, max_length=64, json_schema_extra={"pattern": USER_NAME_PATTERN})]
KeyName = Annotated[str, Field(min_length=1, max_length=64, json_schema_extra={"pattern": KEY_NAME_PATTERN})]


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


def _text(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("give the time as RFC 3339 text with its offset, e.g. 2030-01-01T12:00:00Z")
    return value


# As the schema says (a date-time string): a bare number would otherwise be read as seconds
# since 1970, which no technician means by a deadline.
DateTimeText = Annotated[AwareDatetime, BeforeValidator(_text)]


class _CommandFields(_In):
    """What every command submission carries besides its type and parameters."""

    priority: Annotated[int, Field(ge=1, le=10)] = 5
    not_after: DateTimeText | None = None


def exactly_one_of(*names: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The schema of a parameter model that takes exactly one of the optional fields `names`:
    one alternative per field, with that field required and set and the others absent or null,
    which is what the model's validator accepts."""

    def rule(schema: dict[str, Any]) -> dict[str, Any]:
        if "$defs" in schema:
            raise TypeError(f"{schema['title']}: a rule rewrites only a self-contained parameter schema")
        alternatives = []
        for name in names:
            alternative = copy.deepcopy(schema)
            props = alternative["properties"]
            props[name] = {k: v for k, v in props[name].items() if k not in ("anyOf", "default")} | next(
                branch for branch in props[name]["anyOf"] if branch.get("type") != "null"
            )
            for other in names:
                if other != name:
                    props[other] = {"type": "null", "default": None}
            alternative["required"] = [*alternative.get("required", []), name]
            alternative["title"] = f"{schema['title']} by {name}"
            alternatives.append(alternative)
        return {"title": schema["title"], "oneOf": alternatives}

    return rule


PARAMS_RULES: dict[CommandType, Callable[[dict[str, Any]], dict[str, Any]]] = {
    CommandType.MOVE: exactly_one_of("distance_cm", "duration_ms"),
}
"""Rules across a command's parameter fields (its `rule`, checked by its validator) that its field
list cannot show, stated for the schema. A test holds every model with a `rule` to an entry here
and each entry to the model's own validator."""


def _takes_no_arguments(model: type[BaseModel]) -> bool:
    return all(not field.is_required() for field in model.model_fields.values())


def _params_type(spec: CommandSpec) -> Any:
    rule = PARAMS_RULES.get(spec.name)
    if rule is None:
        return spec.params
    return Annotated[spec.params, WithJsonSchema(rule(spec.params.model_json_schema(by_alias=True)))]


def _variant(spec: CommandSpec) -> type[_CommandFields]:
    """The submission of one command type: its `type` and its own parameter model."""
    params_field = Field(default_factory=dict) if _takes_no_arguments(spec.params) else Field()
    name = "".join(part.title() for part in spec.name.value.split("_")) + "Command"
    tag: Any = Literal[spec.name.value]  # built from the catalogue, so not a static type
    model: type[_CommandFields] = create_model(
        name,
        __base__=_CommandFields,
        __doc__=f"`{spec.name.value}`: {spec.description}.",
        type=(tag, ...),
        params=(_params_type(spec), params_field),
    )
    return model


COMMAND_VARIANTS: tuple[type[_CommandFields], ...] = tuple(_variant(spec) for spec in CATALOGUE.values())
"""One submission model per catalogue entry, in catalogue order."""

_SUBMISSION_TYPE: Any = Annotated[Union[COMMAND_VARIANTS], Field(discriminator="type")]  # noqa: UP007
_SUBMISSION: TypeAdapter[Any] = TypeAdapter(_SUBMISSION_TYPE)


class CommandRequest(_CommandFields):
    """A command submission as the route reads it; documented as the union of `COMMAND_VARIANTS`.

    The route checks only the envelope here (REQUEST_INVALID) and leaves `type` and `params` to
    the core's validator, which checks them against the same catalogue models and answers
    COMMAND_INVALID with the command's own hint (the downlink's commands take the same path).
    The schema, by contrast, states each command's parameters with their bounds.
    """

    type: Annotated[str, Field(min_length=1, max_length=64)]
    params: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return handler(_SUBMISSION.core_schema)


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


def link(method: str, path: str, description: str, **parameters: str) -> dict[str, Any]:
    """An OpenAPI link from an answer to the operation `method path`, its parameters filled from
    that answer (`$response.body#/id`): how a client (and the schema's stateful tests) goes on."""
    pointer = path.replace("~", "~0").replace("/", "~1")
    return {"operationRef": f"#/paths/{pointer}/{method.lower()}", "description": description, "parameters": parameters}


# What any authenticated route can answer besides its success.
AUTH_ERRORS = (400, 401, 403, 413, 422, 500)
