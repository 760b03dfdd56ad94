"""The technician's page's static files (`agent/api/static/`), read once from the installed package.

They are package data, not Python strings, so they can be edited, linted and served as what they
are. No inline script or style (the Content-Security-Policy forbids both), no secret in the page:
the script asks for a login, keeps the session token in `sessionStorage` (gone with the tab,
never a cookie), and renders every value with `textContent`, never as HTML.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["APP_CSS", "APP_JS", "INDEX_HTML"]

_STATIC = resources.files("agent.api") / "static"


def _read(name: str) -> str:
    return (_STATIC / name).read_text(encoding="utf-8")


INDEX_HTML = _read("index.html")
APP_CSS = _read("app.css")
APP_JS = _read("app.js")
