"""`GET /`: the technician's page and its two static files (no credentials needed to load them)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from agent.api.deps import require
from agent.api.page_assets import APP_CSS, APP_JS, INDEX_HTML
from agent.api.permissions import Permission

router = APIRouter(include_in_schema=False)
PUBLIC = [Depends(require(Permission.PUBLIC))]


@router.get("/", dependencies=PUBLIC, response_class=HTMLResponse)
async def index() -> HTMLResponse:
    return HTMLResponse(INDEX_HTML)


@router.get("/static/app.js", dependencies=PUBLIC)
async def app_js() -> Response:
    return Response(APP_JS, media_type="text/javascript; charset=utf-8")


@router.get("/static/app.css", dependencies=PUBLIC)
async def app_css() -> Response:
    return Response(APP_CSS, media_type="text/css; charset=utf-8")
