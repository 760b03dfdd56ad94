"""What a caller with no login, or a web page on another site, can make the gateway do.

- Request metrics are labelled from fixed sets only: a flood of invented methods and random
  paths adds no series to /metrics, under either HTTP parser (httptools refuses methods it does
  not know at the parser; h11, the fallback, hands any token to the app).
- No answer is a redirect built from the Host header: a route with a trailing slash appended is
  a plain 404 in the API's error format.
- A WebSocket upgrade from a foreign Origin is refused before its ticket is redeemed, and
  audited; the agent's own origin, a configured one, and clients sending no Origin get through.

One agent (core on the simulator, gateway on 127.0.0.1) serves the whole module; the same app is
also served over h11 on a second port, as the gateway does when httptools is missing.
"""

from __future__ import annotations

import json
import random
import re
import socket
import string
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets.exceptions
import websockets.sync.client
from fastapi.routing import iter_route_contexts
from prometheus_client.parser import text_string_to_metric_families

from agent.api.server import ApiServer
from tests.integration.test_api_harness import Agent, start_agent

CONSOLE = "https://console.example"  # the one origin listed in [api] cors_origins
METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"})
# Methods llhttp (httptools) parses, so they reach the app, but the API has no use for.
PARSER_KNOWN_ODD = ("PROPFIND", "MKCOL", "LOCK", "SEARCH", "PURGE", "REPORT", "COPY", "MOVE", "NOTIFY", "SOURCE")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, int]]:
    """The agent, and the port of the same app served over h11."""
    tmp = tmp_path_factory.mktemp("exposure")
    running = start_agent(tmp, {"cors_origins": [CONSOLE]})
    agent, _sim = next(running)
    h11 = ApiServer(agent.app, "127.0.0.1", 0, tmp / "h11", http="h11")
    try:
        agent.add_user("looker", "viewer")
        agent.add_user("chief", "admin")
        agent.run(h11.start())
        yield agent, h11.port
    finally:
        agent.run(h11.stop())
        running.close()  # stops the agent and the simulator


def raw_request(port: int, method: str, target: str) -> int:
    """One request exactly as written (httpx would upper-case the method); the answer's status."""
    head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def odd_requests(agent: Agent, h11_port: int, rng: random.Random, count: int) -> None:
    """`count` requests with invented methods (long, random, lower case) on random paths."""
    letters = string.ascii_letters
    for i in range(count):
        token = "".join(rng.choices(letters + string.digits, k=rng.randint(8, 40)))
        target = rng.choice((f"/{token}", f"/api/v1/{token}", f"/api/v1/modules/{token}", f"/static/{token}?q={token}"))
        if i % 5 == 0:  # through httptools: only the methods it parses get to the app
            raw_request(agent.server.port, PARSER_KNOWN_ODD[i % len(PARSER_KNOWN_ODD)], target)
        else:
            method = rng.choice(("X", "get", "Post-")) + "".join(rng.choices(letters, k=rng.randint(20, 120)))
            assert raw_request(h11_port, method, target) < 500


def scrape(agent: Agent) -> str:
    with agent.client(agent.login("looker")) as c:
        r = c.get("/metrics")
    assert r.status_code == 200, r.text
    return r.text


def api_series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every sample of the API's own request metrics: (name, labels)."""
    out = set()
    for family in text_string_to_metric_families(text):
        if family.name.startswith("oht_api_request"):
            out.update((s.name, tuple(sorted(s.labels.items()))) for s in family.samples)
    return out


def test_metrics_labels_stay_bounded_under_invented_methods_and_paths(served: tuple[Agent, int]) -> None:
    agent, h11_port = served
    rng = random.Random(20240611)
    templates = {context.path for context in iter_route_contexts(agent.app.routes)}
    scrape(agent)  # the scrape's own series exist from here on
    odd_requests(agent, h11_port, rng, 50)
    after_50 = scrape(agent)
    odd_requests(agent, h11_port, rng, 250)
    after_300 = scrape(agent)

    series = api_series(after_300)
    assert series, "no request metrics at all"
    for _name, labels in series:
        values = dict(labels)
        if "method" in values:
            assert values["method"] in METHOD_LABELS, values
        if "route" in values:
            assert values["route"] in templates | {"unmatched"}, values
        if "status" in values:
            assert re.fullmatch(r"[1-5][0-9][0-9]", values["status"]), values
    assert ("oht_api_requests_total", (("method", "other"), ("route", "unmatched"), ("status", "404"))) in series
    # 250 more odd requests: no new series, only larger counts.
    assert api_series(after_300) == api_series(after_50)
    assert len(after_300) - len(after_50) < 2048, (len(after_50), len(after_300))


def _concrete(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", template)


def test_no_redirect_is_built_from_the_host_header(served: tuple[Agent, int]) -> None:
    agent, _ = served
    checked = 0
    with agent.client(headers={"Host": "evil.example"}, follow_redirects=False) as c:
        for context in iter_route_contexts(agent.app.routes):
            if context.path == "/":  # already ends in its slash
                continue
            methods = set(getattr(context.original_route, "methods", None) or {"GET"}) - {"HEAD"}
            for method in methods:
                r = c.request(method, _concrete(context.path) + "/")
                assert "location" not in r.headers, (method, context.path, r.headers.get("location"))
                assert "evil.example" not in r.text
                assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND", (method, context.path, r.text)
                checked += 1
    assert checked >= 30


# ---------------------------------------------------------------- WebSocket origin


def _ticket(agent: Agent) -> str:
    with agent.client(agent.login("looker")) as c:
        r = c.post("/api/v1/stream/ticket")
    assert r.status_code == 200, r.text
    return str(r.json()["ticket"])


def _open(agent: Agent, ticket: str, origin: str | None) -> dict[str, Any]:
    """Connect with `origin` (None: no Origin header); the first message."""
    url = agent.url.replace("http://", "ws://") + f"/api/v1/stream?ticket={ticket}"
    with websockets.sync.client.connect(url, origin=origin, open_timeout=5, proxy=None) as ws:  # type: ignore[arg-type]
        return json.loads(ws.recv(timeout=5))  # type: ignore[no-any-return]


def test_websocket_from_a_foreign_origin_is_refused_before_the_ticket_is_used(
    served: tuple[Agent, int], caplog: pytest.LogCaptureFixture
) -> None:
    agent, _ = served
    own = agent.url  # http://127.0.0.1:<port>, what a page served by the agent sends
    ticket = _ticket(agent)
    for foreign in ("https://evil.example", "null", own.replace("http://", "https://"),
                    own.replace("127.0.0.1", "localhost"), own + "1", CONSOLE + ":8443"):  # fmt: skip
        with pytest.raises(websockets.exceptions.InvalidStatus) as info:
            _open(agent, ticket, foreign)
        assert info.value.response.status_code == 403, foreign
    # None of those refusals redeemed the ticket: it still opens the stream, from the agent's own page.
    assert _open(agent, ticket, own)["type"] == "snapshot"
    assert _open(agent, _ticket(agent), CONSOLE)["type"] == "snapshot"
    assert _open(agent, _ticket(agent), None)["type"] == "snapshot"  # a non-browser client sends no Origin

    with agent.client(agent.login("chief")) as c:
        rows = c.get("/api/v1/audit", params={"limit": 1000}).json()["items"]
    refused = [r for r in rows if r["action"] == "stream.open" and r["code"] == "ORIGIN_NOT_ALLOWED"]
    assert len(refused) == 6 and all(r["result"] == "denied" and r["actor"] == "anonymous" for r in refused), refused
    assert any(r["target"] == "https://evil.example" for r in refused)
    assert any("ORIGIN_NOT_ALLOWED" in r.getMessage() and "evil.example" in r.getMessage() for r in caplog.records)


def test_the_second_port_serves_the_same_app_over_h11(served: tuple[Agent, int]) -> None:
    """The second port really is the agent's app (so the label test covers the h11 fallback)."""
    _, h11_port = served
    with httpx.Client(base_url=f"http://127.0.0.1:{h11_port}") as c:
        assert c.get("/healthz").json()["agent_id"] == "oht-test"
    assert raw_request(h11_port, "BREW", "/healthz") == 405
