"""What the routes share: the core, the database, the services built on it, the settings."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
    from agent.sync.service import UpstreamStatus

__all__ = ["ApiContext", "EncodedDocument", "api_context"]


class EncodedDocument:
    """The JSON bytes of the latest document, encoded once per document, not once per request.

    The gateway's core client hands out the same status object until the core's next view, so a
    flood of status reads encodes it once per view (a new object is encoded anew)."""

    def __init__(self) -> None:
        self._doc: Any = None
        self._body = b""

    def encode(self, doc: Any) -> bytes:
        if doc is not self._doc:
            self._body = json.dumps(doc, separators=(",", ":"), allow_nan=False, default=str).encode()
            self._doc = doc
        return self._body


def sync_off() -> UpstreamStatus | None:
    """The upstream status while the gateway runs no sync (`[upstream]` off, or not started)."""
    return None


@dataclass
class ApiContext:
    core: AgentCore
    db: Database
    settings: ApiSettings
    auth: AuthService
    audit: Audit
    metrics: ApiMetrics
    streams: StreamHub
    status_json: EncodedDocument = field(default_factory=EncodedDocument)
    # Set by the gateway, which owns the sync service and may start it after the API.
    upstream_status: Callable[[], UpstreamStatus | None] = sync_off


def api_context(conn: Request | HTTPConnection) -> ApiContext:
    ctx = conn.app.state.api
    assert isinstance(ctx, ApiContext)
    return ctx
