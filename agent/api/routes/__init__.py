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
    upstream,
    users,
)

# Routes are matched in this order, one by one: the ones polled most often come first.
ROUTERS = (
    status.router,
    commands.router,
    health.router,
    auth.router,
    control.router,
    users.router,
    api_keys.router,
    audit.router,
    stream.router,
    upstream.router,
    metrics.router,
    openapi.router,
    page.router,
)
