"""Every state-changing route against bodies the agent cannot read or digest: each is refused with
400 before any action, and each leaves exactly one audit row (its request id), the action's
target untouched. (Found by an outside review: a body nested 5,000 levels deep answered 500 on
`POST /api/v1/reset` and `/commands/{id}/cancel`, the action ran, and no audit row was written.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.test_api_harness import Agent, start_agent

HOSTILE = {
    "deep": b"[" * 5000 + b"]" * 5000,
    "deep_object": b'{"a":' * 40 + b"1" + b"}" * 40,
    "huge_number": b'{"value": ' + b"9" * 5000 + b"}",
    "infinite": b'{"value": 1e999}',
    "nan": b'{"value": NaN}',
    "invalid_utf8": b'{"name": "\xff\xfe"}',
    "duplicate_keys": b'{"type": "stop", "type": "move"}',
}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    for agent, _sim in start_agent(tmp_path_factory.mktemp("hostile")):
        agent.add_user("ada", "admin")
        agent.add_user("tess", "technician")
        yield agent


def state_changing_paths(agent: Agent, command_id: str) -> list[tuple[str, str]]:
    """Every state-changing (method, path) of the app, from its own OpenAPI description."""
    out = []
    for path, operations in agent.app.openapi()["paths"].items():
        for method in sorted(m.upper() for m in operations):
            if method not in ("POST", "PUT", "PATCH", "DELETE") or path == "/api/v1/estop":
                continue  # the E-stop is never refused for its body: a stop must not wait on a parser
            out.append(
                (
                    method,
                    path.replace("{command_id}", command_id)
                    .replace("{name}", "tess")
                    .replace("{key_id}", "k")
                    .replace("{username}", "tess"),
                )
            )
    return out


def audit_rows_for(admin: httpx.Client, request_id: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = 0
    while True:
        page = admin.get("/api/v1/audit", params={"after_seq": after, "limit": 1000}).json()
        rows += [r for r in page["items"] if r["request_id"] == request_id]
        if not page["items"]:
            return rows
        after = page["next_after_seq"]


def test_every_state_changing_route_refuses_hostile_bodies_and_audits_each(agent: Agent) -> None:
    token = agent.login("ada")
    with agent.client(token) as admin:
        queued = admin.post(
            "/api/v1/commands",
            headers={"Idempotency-Key": "hostile-target"},
            json={"type": "charge_stop", "params": {}, "not_after": "2099-01-01T00:00:00Z"},
        )
        assert queued.status_code == 201, queued.text
        command_id = queued.json()["id"]
        routes = state_changing_paths(agent, command_id)
        assert len(routes) >= 8, routes  # the sweep reaches the routes, or it proves nothing
        state_before = admin.get("/api/v1/status").json()["state"]
        users_before = admin.get("/api/v1/users").json()
        for method, path in routes:
            for name, body in HOSTILE.items():
                answer = admin.request(
                    method,
                    path,
                    content=body,
                    headers={"Content-Type": "application/json", "Idempotency-Key": f"hostile-{name}-{path}"},
                )
                assert answer.status_code == 400, (method, path, name, answer.status_code, answer.text)
                assert answer.json()["code"] == "REQUEST_MALFORMED"
                rows = audit_rows_for(admin, answer.headers["x-request-id"])
                assert len(rows) == 1, (method, path, name, rows)
                assert rows[0]["result"] != "ok" and rows[0]["actor"] == "ada", rows[0]
        # Nothing acted on: the robot's state, the users, the queued command the cancel route named.
        assert admin.get("/api/v1/status").json()["state"] == state_before
        assert admin.get("/api/v1/users").json() == users_before
        record = admin.get(f"/api/v1/commands/{command_id}").json()
        assert record["state"] in ("queued", "running", "succeeded", "failed"), record  # never cancelled
        assert record["error_code"] != "COMMAND_CANCELLED", record


def test_a_plain_json_body_still_passes(agent: Agent) -> None:
    with agent.client(agent.login("ada")) as admin:
        answer = admin.post(
            "/api/v1/commands", headers={"Idempotency-Key": "plain"}, json={"type": "stop", "params": {}}
        )
    assert answer.status_code == 201, answer.text
