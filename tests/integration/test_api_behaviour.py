"""The API against the real agent: error shapes, limits, idempotency, E-stop and reset, throttling,
audit of every state-changing request, metrics, and no secret in any log record or audit row."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets.sync.client
from prometheus_client.parser import text_string_to_metric_families

from agent import logs
from drivers.sim.client import SimProcess
from tests.integration.test_api_harness import PASSWORD, Agent, agent_and_sim  # noqa: F401 - fixture


@pytest.fixture(scope="module")
def agent(agent_and_sim: tuple[Agent, SimProcess]) -> Agent:
    agent, _ = agent_and_sim
    for name, role in (("ada", "admin"), ("otto", "operator"), ("tess", "technician"), ("vera", "viewer")):
        agent.add_user(name, role)
    return agent


@pytest.fixture(scope="module")
def sim(agent_and_sim: tuple[Agent, SimProcess]) -> SimProcess:
    return agent_and_sim[1]


@pytest.fixture(scope="module")
def admin(agent: Agent) -> Iterator[httpx.Client]:
    with agent.client(agent.login("ada")) as c:
        yield c


def audit_rows(admin: httpx.Client) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = 0
    while True:
        page = admin.get("/api/v1/audit", params={"after_seq": after, "limit": 1000}).json()
        rows += page["items"]
        if not page["items"]:
            return rows
        after = page["next_after_seq"]


def reset_until_clear(client: httpx.Client, timeout: float = 10.0) -> set[str]:
    """Reset until nothing remains; returns every code cleared on the way.

    The agent under test shares this process and its two cores with the test, so a transient
    safety fault (a late poll) can be latched next to the one a test caused; it clears once its
    cause is gone, which is what this waits for.
    """
    cleared: set[str] = set()
    deadline = time.monotonic() + timeout
    while True:
        r = client.post("/api/v1/reset")
        cleared |= set(r.json().get("cleared", []))
        if r.status_code == 200 or time.monotonic() > deadline:
            assert r.status_code == 200, r.text
            return cleared
        time.sleep(0.2)


def wait_ready(client: httpx.Client, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").text
        time.sleep(0.2)


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code and body["message"], body
    assert body["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text and "/work/" not in r.text
    return body  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- errors and limits


def test_error_shapes(admin: httpx.Client) -> None:
    assert_error(admin.get("/api/v1/nothing-here"), 404, "NOT_FOUND")
    assert_error(admin.put("/api/v1/status"), 405, "METHOD_NOT_ALLOWED")
    assert_error(admin.get("/api/v1/modules/flux-capacitor"), 404, "MODULE_NOT_FOUND")
    assert_error(admin.get("/api/v1/commands/01a00000-0000-7000-8000-000000000000"), 404, "COMMAND_NOT_FOUND")
    body = assert_error(admin.get("/api/v1/commands", params={"limit": 0, "state": "bogus"}), 422, "REQUEST_INVALID")
    assert set(body["fields"]) == {"query.limit", "query.state"}
    r = admin.post(
        "/api/v1/commands",
        content=b'{"type": "stop",',
        headers={"Idempotency-Key": "m", "Content-Type": "application/json"},
    )
    assert_error(r, 400, "REQUEST_MALFORMED")


def test_validation_errors_never_echo_the_input(agent: Agent) -> None:
    with agent.client() as c:
        r = c.post("/api/v1/auth/login", json={"username": "ada", "password": "hunter2-never-shown", "otp": 1})
    body = assert_error(r, 422, "REQUEST_INVALID")
    assert body["fields"] == ["body.otp"]
    assert "hunter2" not in r.text


def test_oversize_bodies_are_refused(admin: httpx.Client) -> None:
    big = json.dumps({"type": "stop", "params": {"x": "y" * 70_000}}).encode()
    assert_error(
        admin.post("/api/v1/commands", content=big, headers={"Idempotency-Key": "big"}), 413, "REQUEST_TOO_LARGE"
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold on the stream itself
        for _ in range(70):
            yield b" " * 1024

    r = admin.post(
        "/api/v1/commands", content=chunks(), headers={"Idempotency-Key": "big2", "Content-Type": "application/json"}
    )
    assert_error(r, 413, "REQUEST_TOO_LARGE")


def test_headers_cors_off_and_credentials_only_from_the_header(agent: Agent, admin: httpx.Client) -> None:
    r = admin.get("/api/v1/status")
    assert r.headers["cache-control"] == "no-store" and r.headers["x-frame-options"] == "DENY"
    page = admin.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"] and "<script src=" in page.text
    assert "<script>" not in page.text and "token" not in page.text.lower().replace("oht-agent-token", "")
    preflight = admin.options(
        "/api/v1/status", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in preflight.headers
    token = admin.headers["Authorization"].removeprefix("Bearer ")
    with agent.client() as anon:
        assert_error(anon.get("/api/v1/status", params={"token": token}), 401, "AUTH_REQUIRED")
        assert_error(anon.get("/api/v1/status", params={"access_token": token}), 401, "AUTH_REQUIRED")
        cookie = {"Cookie": f"token={token}; session={token}; access_token={token}"}
        assert_error(anon.get("/api/v1/status", headers=cookie), 401, "AUTH_REQUIRED")
        assert_error(anon.get("/api/v1/status", headers={"Authorization": token}), 401, "AUTH_INVALID")


# ---------------------------------------------------------------------------- commands


def test_commands_are_idempotent_by_key(admin: httpx.Client) -> None:
    first = admin.post("/api/v1/commands", json={"type": "stop"}, headers={"Idempotency-Key": "idem-1"})
    assert first.status_code == 201, first.text
    record = first.json()
    assert record["source"] == "api" and record["user"] == "ada" and record["type"] == "stop"
    again = admin.post("/api/v1/commands", json={"type": "stop"}, headers={"Idempotency-Key": "idem-1"})
    assert again.status_code == 200 and again.json()["id"] == record["id"]
    other = admin.post("/api/v1/commands", json={"type": "pause"}, headers={"Idempotency-Key": "idem-1"})
    assert_error(other, 409, "COMMAND_KEY_REUSED")
    body = assert_error(admin.post("/api/v1/commands", json={"type": "stop"}), 422, "REQUEST_INVALID")
    assert body["fields"] == ["header.Idempotency-Key"]
    assert_error(
        admin.post("/api/v1/commands", json={"type": "warp"}, headers={"Idempotency-Key": "w"}), 422, "COMMAND_INVALID"
    )
    assert admin.get(f"/api/v1/commands/{record['id']}").json()["id"] == record["id"]
    assert record["id"] in [c["id"] for c in admin.get("/api/v1/commands").json()]


def test_guarded_command_types_need_a_technician(agent: Agent) -> None:
    body = {"type": "register_write", "params": {"role": "power", "register": "NOPE", "value": 1}}
    with agent.client(agent.login("otto")) as c:
        assert_error(c.post("/api/v1/commands", json=body, headers={"Idempotency-Key": "g1"}), 403, "PERMISSION_DENIED")
        assert c.post("/api/v1/commands", json={"type": "stop"}, headers={"Idempotency-Key": "g2"}).status_code == 201
    with agent.client(agent.login("tess")) as c:
        r = c.post("/api/v1/commands", json=body, headers={"Idempotency-Key": "g3"})
        assert r.status_code not in (401, 403), r.text


# ---------------------------------------------------------------------------- E-stop and reset


def test_estop_by_a_viewer_is_confirmed_and_reset_needs_a_technician(agent: Agent, admin: httpx.Client) -> None:
    with agent.client(agent.login("vera")) as viewer:
        r = viewer.post("/api/v1/estop", json={"reason": "person under the hoist"})
        assert r.status_code == 200, r.text
        assert r.json()["confirmed"] is True and r.json()["confirm_ms"] >= 0
        assert_error(viewer.post("/api/v1/reset"), 403, "PERMISSION_DENIED")
    assert admin.get("/api/v1/status").json()["state"] == "ESTOP"
    with agent.client(agent.login("tess")) as tech:
        assert "ESTOP_REQUESTED" in reset_until_clear(tech)
    rows = audit_rows(admin)
    assert any(r["action"] == "robot.estop" and r["actor"] == "vera" and r["result"] == "ok" for r in rows)
    assert any(r["action"] == "fault.reset" and r["actor"] == "tess" and r["result"] == "ok" for r in rows)


def test_reset_refused_while_the_cause_remains(agent: Agent, sim: SimProcess, admin: httpx.Client) -> None:
    sim.control.estop(True)
    try:
        deadline = time.monotonic() + 5
        while admin.get("/api/v1/status").json()["state"] != "ESTOP" and time.monotonic() < deadline:
            time.sleep(0.05)
        body = assert_error(admin.post("/api/v1/reset"), 409, "RESET_INCOMPLETE")
        assert body["remaining"] and body["hint"]
    finally:
        sim.control.estop(False)
    reset_until_clear(admin)


def test_estop_not_confirmed_is_503_with_the_fault(agent: Agent, sim: SimProcess, admin: httpx.Client) -> None:
    sim.control.silence(3, True)  # the travel driver stops answering: the stop cannot be read back
    try:
        body = assert_error(admin.post("/api/v1/estop", json={"reason": "link test"}), 503, "ESTOP_NOT_CONFIRMED")
        assert body["hint"] and body["fault"]["code"] == "ESTOP_NOT_CONFIRMED"
    finally:
        sim.control.silence(3, False)
    wait_ready(admin)
    reset_until_clear(admin)


# ---------------------------------------------------------------------------- throttling and audit


def test_login_throttle_returns_429_with_retry_after(agent: Agent, admin: httpx.Client) -> None:
    agent.add_user("target", "viewer")
    with agent.client() as c:
        for _ in range(5):
            assert_error(
                c.post("/api/v1/auth/login", json={"username": "target", "password": "wrong wrong wrong"}),
                401,
                "AUTH_FAILED",
            )
        r = c.post("/api/v1/auth/login", json={"username": "target", "password": PASSWORD})
        assert_error(r, 429, "AUTH_THROTTLED")
        assert 0 < int(r.headers["retry-after"]) <= 900
        unknown = c.post("/api/v1/auth/login", json={"username": "nobody-at-all", "password": "wrong wrong wrong"})
        assert unknown.json()["message"] == "invalid user name or password"
    rows = [r for r in audit_rows(admin) if r["action"] == "auth.login" and r["target"] == "target"]
    assert [r["code"] for r in rows][-6:] == ["AUTH_FAILED"] * 5 + ["AUTH_THROTTLED"]


def test_a_parallel_login_burst_gets_only_the_limit_of_password_checks(agent: Agent, admin: httpx.Client) -> None:
    """50 logins at once from one address: 5 passwords checked (the limit), the rest 429; the right
    password inside the burst does not get in. From an address of its own (127.0.0.2), so the other
    tests' address budget is untouched."""
    import asyncio

    agent.add_user("burst", "viewer")

    async def burst() -> list[int]:
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(base_url=agent.url, transport=transport, timeout=30.0) as c:
            bodies = [{"username": "burst", "password": "wrong wrong wrong"}] * 49 + [
                {"username": "burst", "password": PASSWORD}
            ]
            answers = await asyncio.gather(*(c.post("/api/v1/auth/login", json=b) for b in bodies))
            return [a.status_code for a in answers]

    statuses = asyncio.run(burst())
    assert statuses.count(401) == 5 and statuses.count(429) == 45, statuses
    assert 200 not in statuses
    rows = [r for r in audit_rows(admin) if r["action"] == "auth.login" and r["target"] == "burst"]
    assert sum(1 for r in rows if r["code"] == "AUTH_FAILED") == 5
    # From another address the owner waits only the short account-wide delay, not the window.
    with agent.client() as c:
        r = c.post("/api/v1/auth/login", json={"username": "burst", "password": PASSWORD})
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) <= 30
            time.sleep(int(r.headers["retry-after"]))
            r = c.post("/api/v1/auth/login", json={"username": "burst", "password": PASSWORD})
        assert r.status_code == 200, r.text


def test_every_state_changing_request_is_audited(agent: Agent, admin: httpx.Client) -> None:
    before = len(audit_rows(admin))
    with agent.client(agent.login("vera")) as viewer, agent.client() as anon:
        requests = [
            viewer.post("/api/v1/users", json={"name": "x1", "role": "admin", "password": PASSWORD}),  # denied
            anon.post("/api/v1/estop"),  # denied, anonymous
            admin.post("/api/v1/users", json={"name": "x2", "role": "viewer", "password": "short"}),  # error
            admin.post("/api/v1/users", json={"name": "x3", "role": "viewer", "password": PASSWORD}),  # ok
            admin.delete("/api/v1/api-keys/does-not-exist"),  # error
            anon.post("/api/v1/no/such/route"),  # error, anonymous
        ]
    assert [r.status_code for r in requests] == [403, 401, 422, 201, 404, 404]
    rows = audit_rows(admin)
    new = rows[before + 1 :]  # the first new row is vera's login
    by_request = {r["request_id"]: r for r in new}
    expected = [
        ("vera", "user.create", "denied", "PERMISSION_DENIED"),
        ("anonymous", "robot.estop", "denied", "AUTH_REQUIRED"),
        ("ada", "user.create", "error", "PASSWORD_REJECTED"),
        ("ada", "user.create", "ok", None),
        ("ada", "api_key.revoke", "error", "API_KEY_NOT_FOUND"),
        ("anonymous", "POST unmatched", "error", "NOT_FOUND"),
    ]
    for response, (actor, action, result, code) in zip(requests, expected, strict=True):
        row = by_request[response.headers["x-request-id"]]
        assert (row["actor"], row["action"], row["result"], row["code"]) == (actor, action, result, code), row
        assert row["source_ip"] == "127.0.0.1"
    verified = admin.get("/api/v1/audit/verify").json()
    assert verified["ok"] is True and verified["rows"] >= len(rows), verified


def test_metrics(agent: Agent, admin: httpx.Client) -> None:
    admin.get("/api/v1/status")
    with agent.client() as anon:
        assert_error(anon.get("/metrics"), 401, "AUTH_REQUIRED")
    text = admin.get("/metrics").text
    assert 'oht_api_requests_total{method="GET",route="/api/v1/status",status="200"}' in text
    assert "oht_api_request_duration_seconds_bucket" in text
    assert 'oht_api_auth_failures_total{code="AUTH_REQUIRED"}' in text
    assert "oht_status_verdict_speed_factor" in text
    # Readiness follows fresh readings, which a loaded machine can let lapse for a poll or two.
    deadline = time.monotonic() + 5.0
    while "oht_ready 1.0" not in text and time.monotonic() < deadline:
        time.sleep(0.1)
        text = admin.get("/metrics").text
    assert "oht_ready 1.0" in text
    assert "oht_store_batches_total" in text
    # Log lines the writer could not keep up with are counted where an operator looks.
    dropped = logs.dropped_lines()
    assert admin.get("/api/v1/status").json()["logs"] == {"dropped_lines": dropped}
    assert f"oht_status_logs_dropped_lines_total {float(dropped)}" in admin.get("/metrics").text


def _bus_figures(text: str, role: str) -> tuple[float, float]:
    """(transactions, answered round trips) of one role in an exposition."""
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("role") == role
    }
    return samples["oht_status_module_transactions_total"], samples["oht_status_module_rtt_seconds_count"]


def test_bus_transactions_move_the_per_role_counters_and_the_rtt_histogram(admin: httpx.Client) -> None:
    # The core polls the simulator over the pty all the time: each poll is a real transaction.
    before = _bus_figures(admin.get("/metrics").text, "safety")
    deadline = time.monotonic() + 3.0
    after = before
    while (after[0] <= before[0] or after[1] <= before[1]) and time.monotonic() < deadline:
        time.sleep(0.1)
        after = _bus_figures(admin.get("/metrics").text, "safety")
    assert after[0] > before[0] and after[1] > before[1], (before, after)
    assert after[1] <= after[0]  # every answer had a request on the wire


def test_readyz_reports_why(agent: Agent, sim: SimProcess) -> None:
    with agent.client() as anon:
        wait_ready(anon)
        assert anon.get("/readyz").json() == {"ready": True, "reasons": []}
        assert anon.get("/healthz").json()["alive"] is True
        sim.control.silence(4, True)  # the dock module stops answering
        try:
            deadline = time.monotonic() + 15
            r = anon.get("/readyz")
            while r.status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.2)
                r = anon.get("/readyz")
            body = assert_error(r, 503, "NOT_READY")
            assert any("dock" in reason for reason in body["reasons"])
        finally:
            sim.control.silence(4, False)
        wait_ready(anon)


# ---------------------------------------------------------------------------- secrets


AGENT_LOGGERS = ("agent", "oht", "uvicorn", "drivers", "fastapi", "starlette", "aiosqlite")


def test_no_secret_in_any_log_record_or_audit_row(
    agent: Agent, admin: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets: list[str] = []
    agent.add_user("sam", "operator", "sam's first password")
    secrets.append("sam's first password")
    with agent.client() as anon:  # a failed login with a password that must not show up
        anon.post("/api/v1/auth/login", json={"username": "sam", "password": "sam's wrong password"})
        secrets.append("sam's wrong password")
    token = agent.login("sam", "sam's first password")
    secrets.append(token)
    with agent.client(token) as sam:
        t = sam.post("/api/v1/stream/ticket").json()["ticket"]
        secrets.append(t)
        url = agent.url.replace("http://", "ws://") + f"/api/v1/stream?ticket={t}"
        with websockets.sync.client.connect(url, open_timeout=5, proxy=None) as ws:
            ws.recv(timeout=5)
        r = sam.post(
            "/api/v1/auth/password",
            json={"current_password": "sam's first password", "new_password": "sam's second password"},
        )
        assert r.status_code == 200, r.text
        secrets.append("sam's second password")
    created = admin.post("/api/v1/api-keys", json={"name": "scraper", "role": "viewer"}).json()
    secrets.append(created["key"])
    secrets.append(created["key"].split("_", 2)[2])  # the secret part alone
    with agent.client(created["key"]) as key_client:
        assert key_client.get("/metrics").status_code == 200
    with agent.client(agent.login("sam", "sam's second password")) as sam:
        assert sam.post("/api/v1/auth/logout").status_code == 200
    records = [r for r in caplog.records if r.name.split(".")[0] in AGENT_LOGGERS]
    assert records, "nothing was logged at all?"
    texts = [f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in records]
    rows = json.dumps(audit_rows(admin))
    for secret in secrets:
        assert not [t for t in texts if secret in t], f"a secret ({secret[:4]}...) was logged"
        assert secret not in rows
    assert any("WebSocket" in t and "ticket=<redacted>" in t for t in texts), (
        "the handshake line should be there, redacted"
    )
