"""One module per resource; `ROUTERS` is what `create_app` includes."""

from __future__ import annotations

from agent.api.routes import (
    api_keys,
    audit,
    auth,
    commands,
    control,
    health,
    metrics,
    openapi,
    page,
    status,
    stream,
    users,
)

ROUTERS = (
    health.router,
    auth.router,
    status.router,
    commands.router,
    control.router,
    users.router,
    api_keys.router,
    audit.router,
    stream.router,
    metrics.router,
    openapi.router,
    page.router,
)
