"""`create_app(core, db, settings)`: the local HTTP API as one FastAPI application.

The runtime builds it once and serves it with `agent.api.server.ApiServer`. There is no test
mode: tests build exactly this app over a real database and the real controller.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.middleware.cors import CORSMiddleware

from agent.api.context import ApiContext
from agent.api.errors import install_handlers
from agent.api.metrics import ApiMetrics, Figures
from agent.api.middleware import ApiMiddleware
from agent.api.origins import OriginPolicy
from agent.api.routes import ROUTERS
from agent.api.settings import ApiSettings
from agent.api.streaming import StreamHub
from agent.auth.service import AuthService
from agent.auth.throttle import AuditGate
from agent.control.facade import AgentCore
from agent.control.status_view import StatusDocument
from agent.store.audit import Audit
from agent.store.database import Database
from oht_errors import CodedError

__all__ = ["create_app"]

DESCRIPTION = """Local API of the OHT-50 edge agent.

Authenticate with `Authorization: Bearer <token>` (from `POST /api/v1/auth/login`) or with an API
key (`Authorization: Bearer oak_...`). Errors are `{code, message, hint?, request_id}`.
"""


def _figures(core: AgentCore, db: Database) -> Figures:
    """The core's status while it is reachable, and the gateway's own figures always."""
    try:
        status: StatusDocument | None = core.status()
    except CodedError as exc:
        if exc.code != "CORE_UNAVAILABLE":
            raise
        status = None
    ready, _reasons = core.ready()
    return Figures(status=status, ready=ready, alive=core.alive(), store_stats=db.stats(), store_healthy=db.healthy)


def create_app(core: AgentCore, db: Database, settings: ApiSettings) -> FastAPI:
    app = FastAPI(
        title="oht-agent",
        version=settings.version,
        description=DESCRIPTION,
        openapi_url=None,  # served by routes/openapi.py behind a login instead
        docs_url=None,
        redoc_url=None,
        # No trailing-slash redirects: Starlette builds their Location from the Host header, which
        # the caller writes, so any client could be sent elsewhere. A path with an extra slash is a
        # plain 404; every client of this API is a program or the agent's own page, using exact paths.
        redirect_slashes=False,
    )
    auth = AuthService(db, settings.auth_limits, audit_gate=AuditGate(settings.audit_anonymous_per_minute))
    metrics = ApiMetrics(lambda: _figures(core, db))
    streams = StreamHub(
        core,
        auth,
        metrics,
        max_hz=settings.stream_max_hz,
        max_clients=settings.stream_max_clients,
        send_timeout_s=settings.stream_send_timeout_s,
        recheck_s=settings.stream_recheck_s,
        origins=OriginPolicy(settings.cors_origins),
    )
    api = ApiContext(core=core, db=db, settings=settings, auth=auth, audit=Audit(db), metrics=metrics, streams=streams)
    app.state.api = api
    install_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    metrics.know_routes(context.path for context in iter_route_contexts(app.routes) if context.path is not None)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            allow_credentials=False,
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(ApiMiddleware, api=api)
    return app
