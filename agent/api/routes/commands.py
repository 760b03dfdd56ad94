"""Commands: submit (idempotent by `Idempotency-Key`), read, list, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response

from agent.api.context import api_context
from agent.api.deps import audit_target, core_audit, mark_audited, require
from agent.api.models import AUTH_ERRORS, CommandRequest, errors, link
from agent.api.permissions import Permission, allowed, command_permission
from agent.auth.errors import PermissionDenied
from agent.auth.principal import Principal
from agent.store.commands import STATES, CommandRecord

router = APIRouter(prefix="/api/v1/commands", tags=["commands"])
CommandId = Annotated[str, Path(min_length=1, max_length=64)]


_FOLLOW = {
    "GetCommand": link("GET", "/api/v1/commands/{command_id}", "Read the command.", command_id="$response.body#/id"),
    "CancelCommand": link(
        "POST", "/api/v1/commands/{command_id}/cancel", "Cancel the command.", command_id="$response.body#/id"
    ),
}


@router.post(
    "",
    name="command.submit",
    response_model=CommandRecord,
    status_code=201,
    responses={
        201: {"description": "Queued.", "links": _FOLLOW},
        200: {"model": CommandRecord, "description": "The key was seen before: the first record.", "links": _FOLLOW},
        **errors(*AUTH_ERRORS, 409, 503),
    },
)
async def submit(
    body: CommandRequest,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=200)],
    principal: Principal = Depends(require(Permission.COMMAND)),
) -> CommandRecord:
    """Queue a command: 201 when new, 200 with the first record when the key was seen before.

    `module_reset` and `register_write` need a technician.
    """
    audit_target(request, body.type)
    needed = command_permission(body.type)
    if not allowed(principal.role, needed):
        raise PermissionDenied(f"command type {body.type!r} needs permission {needed.value!r}")
    result = await api_context(request).core.submit_command(
        source="api",
        idempotency_key=idempotency_key,
        type=body.type,
        params=body.params,
        user=principal.actor,
        priority=body.priority,
        not_after=body.not_after,
        audit=core_audit(request, principal),
    )
    mark_audited(request)
    audit_target(request, result.record.id)
    if not result.created:
        response.status_code = 200
    return result.record


@router.get("", response_model=list[CommandRecord], responses=errors(*AUTH_ERRORS))
async def list_commands(
    request: Request,
    state: Annotated[str | None, Query(pattern="^(" + "|".join(STATES) + ")$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    _: Principal = Depends(require(Permission.READ)),
) -> list[CommandRecord]:
    """Newest first."""
    records = await api_context(request).core.list_commands(state, limit)
    return records


@router.get("/{command_id}", response_model=CommandRecord, responses=errors(*AUTH_ERRORS, 404))
async def get_command(
    request: Request, command_id: CommandId, _: Principal = Depends(require(Permission.READ))
) -> CommandRecord:
    return await api_context(request).core.get_command(command_id)


@router.post(
    "/{command_id}/cancel",
    name="command.cancel",
    response_model=CommandRecord,
    responses=errors(*AUTH_ERRORS, 404, 409),
)
async def cancel(
    request: Request, command_id: CommandId, principal: Principal = Depends(require(Permission.COMMAND))
) -> CommandRecord:
    audit_target(request, command_id)
    record = await api_context(request).core.cancel_command(
        command_id, user=principal.actor, audit=core_audit(request, principal)
    )
    mark_audited(request)
    return record
