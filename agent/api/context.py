"""What the routes share: the core, the database, the services built on it, the settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request
from starlette.requests import HTTPConnection

from agent.auth.service import AuthService
from agent.control.facade import AgentCore
from agent.store.audit import Audit
from agent.store.database import Database

if TYPE_CHECKING:
    from agent.api.metrics import ApiMetrics
    from agent.api.settings import ApiSettings
    from agent.api.streaming import StreamHub

__all__ = ["ApiContext", "api_context"]


@dataclass
class ApiContext:
    core: AgentCore
    db: Database
    settings: ApiSettings
    auth: AuthService
    audit: Audit
    metrics: ApiMetrics
    streams: StreamHub


def api_context(conn: Request | HTTPConnection) -> ApiContext:
    ctx = conn.app.state.api
    assert isinstance(ctx, ApiContext)
    return ctx
