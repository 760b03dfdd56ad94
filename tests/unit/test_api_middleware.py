"""The outer middleware on its own: 500 without traceback, body limit on the raw stream, headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI, Request

from agent.api.errors import install_handlers
from agent.api.metrics import ApiMetrics, Figures
from agent.api.middleware import ApiMiddleware
from agent.api.settings import ApiSettings


def build(tmp_path: Path) -> FastAPI:
    """A small app behind the real middleware and error handlers (GET routes: nothing to audit)."""
    app = FastAPI()
    install_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail at /var/lib/oht-agent/agent.db")

    @app.get("/echo-size")
    async def echo_size(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    api = SimpleNamespace(
        settings=ApiSettings(agent_id="t", data_dir=tmp_path, max_body_bytes=1024),
        metrics=ApiMetrics(lambda: Figures(status=None, ready=False, alive=True, store_stats={}, store_healthy=True)),
    )
    app.add_middleware(ApiMiddleware, api=api)
    app.state.metrics = api.metrics
    return app


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build(tmp_path), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_unexpected_exception_is_a_generic_500(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    r = await client.get("/boom")
    assert r.status_code == 500
    body = r.json()
    assert body["code"] == "INTERNAL" and body["message"] == "internal error"
    assert body["request_id"] == r.headers["x-request-id"]
    assert "secret internal detail" not in r.text and "/var/lib" not in r.text and "Traceback" not in r.text
    # The details are in the log, under the same request id.
    assert any(body["request_id"] in rec.getMessage() and rec.exc_info for rec in caplog.records)


async def test_body_limit_applies_to_the_raw_stream(client: httpx.AsyncClient) -> None:
    assert (await client.request("GET", "/echo-size", content=b"x" * 1000)).json() == {"size": 1000}

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked transfer
        for _ in range(10):
            yield b"y" * 200

    r = await client.request("GET", "/echo-size", content=chunks())
    assert r.status_code == 413 and r.json()["code"] == "REQUEST_TOO_LARGE"
    r = await client.request("GET", "/echo-size", content=b"z" * 1025)
    assert r.status_code == 413


async def test_security_headers_on_every_answer(client: httpx.AsyncClient) -> None:
    for path in ("/echo-size", "/nope", "/boom"):
        r = await client.get(path)
        h = r.headers
        assert h["x-content-type-options"] == "nosniff"
        assert h["x-frame-options"] == "DENY"
        assert h["referrer-policy"] == "no-referrer"
        assert h["cache-control"] == "no-store"
        assert (
            "default-src 'none'" in h["content-security-policy"] and "unsafe-inline" not in h["content-security-policy"]
        )
        assert "strict-transport-security" not in h  # plain HTTP: HSTS only over TLS
        assert len(h["x-request-id"]) == 36


async def test_hsts_over_tls(tmp_path: Path) -> None:
    transport = httpx.ASGITransport(app=build(tmp_path))
    async with httpx.AsyncClient(transport=transport, base_url="https://test") as c:
        r = await c.get("/echo-size")
    assert r.headers["strict-transport-security"].startswith("max-age=")


async def test_unmatched_paths_share_one_metrics_label(client: httpx.AsyncClient, tmp_path: Path) -> None:
    for i in range(20):
        await client.get(f"/random-{i}")
    app = client._transport.app  # type: ignore[attr-defined]
    text = app.state.metrics.render().decode()
    assert 'route="unmatched",status="404"} 20.0' in text
    assert "random-" not in text
