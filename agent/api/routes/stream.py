"""The status stream: a single-use ticket over HTTP, then the WebSocket with that ticket."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, WebSocket

from agent.api.context import api_context
from agent.api.deps import require, require_ticket
from agent.api.models import AUTH_ERRORS, TicketOut, errors
from agent.api.permissions import Permission
from agent.auth.principal import Principal

router = APIRouter(prefix="/api/v1/stream", tags=["stream"])


@router.post("/ticket", name="stream.ticket", response_model=TicketOut, responses=errors(*AUTH_ERRORS))
async def ticket(request: Request, principal: Principal = Depends(require(Permission.READ))) -> TicketOut:
    """A ticket for one connection to `WS /api/v1/stream?ticket=...`, valid a few seconds.

    Browsers cannot put an Authorization header on a WebSocket, and a session token in a URL
    would end up in logs; a ticket is useless once used or after its few seconds.
    """
    api = api_context(request)
    return TicketOut(ticket=api.auth.issue_ticket(principal), expires_in=api.settings.ticket_ttl_s)


@router.websocket("")
async def stream(websocket: WebSocket, principal: Principal = Depends(require_ticket(Permission.READ))) -> None:
    """Status snapshot, then changes (at most 10 per second, coalesced)."""
    await api_context(websocket).streams.serve(websocket, principal)
