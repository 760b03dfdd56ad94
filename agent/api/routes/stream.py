"""The status stream: a single-use ticket over HTTP, then the WebSocket with that ticket."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request, WebSocket
from fastapi.exceptions import WebSocketException

from agent.api.context import api_context
from agent.api.deps import client_ip, require, require_ticket
from agent.api.models import AUTH_ERRORS, TicketOut, errors
from agent.api.origins import OriginNotAllowed
from agent.api.permissions import Permission
from agent.auth.auditing import write_anonymous
from agent.auth.principal import Principal
from agent.store.audit import AuditEntry

router = APIRouter(prefix="/api/v1/stream", tags=["stream"])
log = logging.getLogger("oht.api.stream")


@router.post("/ticket", name="stream.ticket", response_model=TicketOut, responses=errors(*AUTH_ERRORS))
async def ticket(request: Request, principal: Principal = Depends(require(Permission.READ))) -> TicketOut:
    """A ticket for one connection to `WS /api/v1/stream?ticket=...`, valid a few seconds.

    Browsers cannot put an Authorization header on a WebSocket, and a session token in a URL
    would end up in logs; a ticket is useless once used or after its few seconds.
    """
    api = api_context(request)
    return TicketOut(ticket=api.auth.issue_ticket(principal), expires_in=api.settings.ticket_ttl_s)


async def allowed_origin(websocket: WebSocket) -> None:
    """Refuse (1008 before the handshake: HTTP 403) an upgrade from a foreign web page.

    A dependency of the route itself, so FastAPI runs it before the ticket's: a refused upgrade
    leaves its ticket unused. Audited like a refused ticket (bounded per address), and logged
    when audited.
    """
    api = api_context(websocket)
    origins = websocket.headers.getlist("origin")
    if api.streams.origins.allows(origins, websocket.scope.get("scheme", "ws"), websocket.headers.get("host")):
        return
    shown = ", ".join(origins)[:200]
    refusal = OriginNotAllowed(f"WebSocket upgrade from origin {shown!r} refused")
    entry = AuditEntry(
        actor="anonymous", auth_method="none", action="stream.open", result="denied", code=refusal.code,
        target=shown, source_ip=client_ip(websocket), request_id=websocket.scope.get("state", {}).get("request_id"),
    )  # fmt: skip
    if await write_anonymous(api.db, api.auth.audit_gate, entry):
        log.warning("%s (from %s)", refusal, entry.source_ip)
    raise WebSocketException(code=1008, reason=refusal.code)


@router.websocket("", dependencies=[Depends(allowed_origin)])
async def stream(websocket: WebSocket, principal: Principal = Depends(require_ticket(Permission.READ))) -> None:
    """Status snapshot, then changes (at most 10 per second, coalesced)."""
    await api_context(websocket).streams.serve(websocket, principal)
