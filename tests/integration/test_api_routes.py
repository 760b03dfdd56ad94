"""Every route x every caller: each role, each role's API key, and every kind of bad credential.

The table below is checked against `app.routes`: a new route without a row, or without a
declared permission, or with a different permission than its row says, fails
`test_table_covers_every_route`. Each row sends one real request to the real agent (runtime +
controller against the simulator) and the expected answer follows from the permission matrix:
allowed -> one of the row's success statuses, not allowed -> 403 PERMISSION_DENIED, bad or
missing credentials on a protected route -> 401 with the matching code. Managing keys, users and
passwords needs a person: an API key whose role allows it gets 403 AUTH_PERSON_REQUIRED.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import websockets.exceptions
import websockets.sync.client
from fastapi.routing import iter_route_contexts
from starlette.routing import WebSocketRoute

from agent.api.deps import route_permission
from agent.api.permissions import Permission, allowed
from agent.auth.principal import CallContext, cli_principal
from agent.auth.roles import ROLES
from drivers.sim.client import SimProcess
from tests.integration.test_api_harness import PASSWORD, Agent, agent_and_sim  # noqa: F401 - fixture

_counter = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}"


@dataclass
class Ctx:
    """What a row's request may need; `role` is None for the bad-credential variants."""

    agent: Agent
    role: str | None
    command_id: str
    via_key: bool = False

    def fresh_auth(self) -> dict[str, str]:
        """A session of a new user of this role (for rows that end their session); an API key
        caller keeps its key."""
        if self.role is None or self.via_key:
            return {}
        name = self.fresh_user()
        return {"Authorization": f"Bearer {self.agent.login(name)}"}

    def fresh_user(self, role: str | None = None) -> str:
        name = unique(f"u-{role or self.role or 'viewer'}")
        self.agent.add_user(name, role or self.role or "viewer")
        return name

    def victim(self) -> str:
        """A user to disable or re-password: a new one when the caller may do it (an admin)."""
        if self.role is not None and allowed(self.role, Permission.USERS):
            return self.fresh_user("viewer")
        return "leaver"

    def key_id(self) -> str:
        record, _ = self.agent.run(
            self.agent.api.auth.create_api_key(cli_principal("test"), unique("k"), "viewer", CallContext())
        )
        return record.id


Call = Callable[[httpx.Client, Ctx], httpx.Response]


@dataclass(frozen=True)
class Row:
    permission: Permission
    call: Call
    ok: frozenset[int] = field(default_factory=lambda: frozenset({200}))
    session_only: bool = False  # an API key gets 409 AUTH_SESSION_REQUIRED
    person_only: bool = False  # an API key gets 403 AUTH_PERSON_REQUIRED


def row(permission: Permission, call: Call, *ok: int, session_only: bool = False, person_only: bool = False) -> Row:
    return Row(permission, call, frozenset(ok or (200,)), session_only, person_only)


def _login(c: httpx.Client, x: Ctx) -> httpx.Response:
    """Whatever Authorization header comes along, the login only looks at its body."""
    name = x.fresh_user() if x.role else "viewer"
    return c.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})


TABLE: dict[tuple[str, str], Row] = {
    ("GET", "/healthz"): row(Permission.PUBLIC, lambda c, x: c.get("/healthz")),
    ("GET", "/readyz"): row(Permission.PUBLIC, lambda c, x: c.get("/readyz"), 200, 503),
    ("GET", "/"): row(Permission.PUBLIC, lambda c, x: c.get("/")),
    ("GET", "/static/app.js"): row(Permission.PUBLIC, lambda c, x: c.get("/static/app.js")),
    ("GET", "/static/app.css"): row(Permission.PUBLIC, lambda c, x: c.get("/static/app.css")),
    ("POST", "/api/v1/auth/login"): row(Permission.PUBLIC, _login),
    ("POST", "/api/v1/auth/logout"): row(
        Permission.SELF, lambda c, x: c.post("/api/v1/auth/logout", headers=x.fresh_auth()), session_only=True
    ),
    ("POST", "/api/v1/auth/password"): row(
        Permission.SELF,
        lambda c, x: c.post(
            "/api/v1/auth/password",
            headers=x.fresh_auth(),
            json={"current_password": PASSWORD, "new_password": "another good password"},
        ),
        session_only=True,
    ),
    ("GET", "/api/v1/auth/me"): row(Permission.SELF, lambda c, x: c.get("/api/v1/auth/me")),
    ("GET", "/api/v1/status"): row(Permission.READ, lambda c, x: c.get("/api/v1/status")),
    ("GET", "/api/v1/modules"): row(Permission.READ, lambda c, x: c.get("/api/v1/modules")),
    ("GET", "/api/v1/modules/{name}"): row(Permission.READ, lambda c, x: c.get("/api/v1/modules/travel")),
    ("GET", "/api/v1/upstream"): row(Permission.READ, lambda c, x: c.get("/api/v1/upstream")),
    ("POST", "/api/v1/commands"): row(
        Permission.COMMAND,
        lambda c, x: c.post("/api/v1/commands", json={"type": "stop"}, headers={"Idempotency-Key": unique("key")}),
        201,
    ),
    ("GET", "/api/v1/commands"): row(Permission.READ, lambda c, x: c.get("/api/v1/commands", params={"limit": 5})),
    ("GET", "/api/v1/commands/{command_id}"): row(
        Permission.READ, lambda c, x: c.get(f"/api/v1/commands/{x.command_id}")
    ),
    ("POST", "/api/v1/commands/{command_id}/cancel"): row(
        Permission.COMMAND, lambda c, x: c.post(f"/api/v1/commands/{x.command_id}/cancel"), 200, 409
    ),
    ("POST", "/api/v1/estop"): row(
        Permission.ESTOP, lambda c, x: c.post("/api/v1/estop", json={"reason": "route table"})
    ),
    ("POST", "/api/v1/reset"): row(Permission.FAULT_RESET, lambda c, x: c.post("/api/v1/reset"), 200, 409),
    ("GET", "/api/v1/users"): row(Permission.USERS, lambda c, x: c.get("/api/v1/users")),
    ("POST", "/api/v1/users"): row(
        Permission.USERS,
        lambda c, x: c.post("/api/v1/users", json={"name": unique("new"), "role": "viewer", "password": PASSWORD}),
        201,
        person_only=True,
    ),
    ("POST", "/api/v1/users/{name}/disable"): row(
        Permission.USERS, lambda c, x: c.post(f"/api/v1/users/{x.victim()}/disable"), person_only=True
    ),
    ("POST", "/api/v1/users/{name}/password"): row(
        Permission.USERS,
        lambda c, x: c.post(f"/api/v1/users/{x.victim()}/password", json={"password": "set by an admin!"}),
        person_only=True,
    ),
    ("GET", "/api/v1/api-keys"): row(Permission.API_KEYS, lambda c, x: c.get("/api/v1/api-keys")),
    ("POST", "/api/v1/api-keys"): row(
        Permission.API_KEYS,
        lambda c, x: c.post("/api/v1/api-keys", json={"name": unique("client"), "role": "viewer"}),
        201,
        person_only=True,
    ),
    ("DELETE", "/api/v1/api-keys/{key_id}"): row(
        Permission.API_KEYS, lambda c, x: c.delete(f"/api/v1/api-keys/{x.key_id()}"), person_only=True
    ),
    ("GET", "/api/v1/audit"): row(Permission.AUDIT, lambda c, x: c.get("/api/v1/audit", params={"limit": 3})),
    ("GET", "/api/v1/audit/verify"): row(Permission.AUDIT, lambda c, x: c.get("/api/v1/audit/verify")),
    ("POST", "/api/v1/stream/ticket"): row(Permission.READ, lambda c, x: c.post("/api/v1/stream/ticket")),
    ("WS", "/api/v1/stream"): row(Permission.READ, lambda c, x: _ws(c, x)),
    ("GET", "/metrics"): row(Permission.READ, lambda c, x: c.get("/metrics")),
    ("GET", "/openapi.json"): row(Permission.READ, lambda c, x: c.get("/openapi.json")),
}


def _ws(c: httpx.Client, x: Ctx) -> httpx.Response:
    """The stream as one row: get a ticket with the caller's credentials, then connect with it.

    Answers are mapped to HTTP terms: 200 = the snapshot arrived, else the ticket request's
    own error (401/403), or 401 when the handshake itself was refused.
    """
    ticket = c.post("/api/v1/stream/ticket")
    if ticket.status_code != 200:
        return ticket
    url = x.agent.url.replace("http://", "ws://") + "/api/v1/stream?ticket=" + ticket.json()["ticket"]
    try:
        with websockets.sync.client.connect(url, open_timeout=5, proxy=None) as ws:
            first = ws.recv(timeout=5)
    except websockets.exceptions.InvalidStatus:
        return httpx.Response(401, json={"code": "AUTH_INVALID"})
    assert '"type":"snapshot"' in str(first)
    return httpx.Response(200, json={})


# ---------------------------------------------------------------------------- callers

BAD = {
    "none": "AUTH_REQUIRED",
    "malformed": "AUTH_INVALID",
    "expired": "AUTH_EXPIRED",
    "revoked": "AUTH_INVALID",
    "disabled-user": "AUTH_INVALID",
    "revoked-key": "AUTH_INVALID",
    "wrong-scheme": "AUTH_INVALID",
}
CALLERS = [*ROLES, *(f"key:{r}" for r in ROLES), *BAD]


@dataclass
class World:
    agent: Agent
    headers: dict[str, dict[str, str]]
    command_id: str
    clients: dict[str, httpx.Client] = field(default_factory=dict)

    def client(self, caller: str) -> httpx.Client:
        """One client per caller for the module (building one costs more than a request)."""
        if caller not in self.clients:
            self.clients[caller] = self.agent.client(headers=self.headers[caller])
        return self.clients[caller]


@pytest.fixture(scope="module")
def world(agent_and_sim: tuple[Agent, SimProcess]) -> Iterator[World]:
    agent, _ = agent_and_sim
    headers: dict[str, dict[str, str]] = {"none": {}}
    for role in ROLES:
        agent.add_user(role, role)
        headers[role] = {"Authorization": f"Bearer {agent.login(role)}"}
        # Names as long as allowed: a key's actor (prefix and name) must still fit every record
        # that names it, such as the `user` of the commands it submits.
        name = f"client-{role}: ".ljust(64, "x")
        _, key = agent.run(agent.api.auth.create_api_key(cli_principal("test"), name, role, CallContext()))
        headers[f"key:{role}"] = {"Authorization": f"Bearer {key}"}
    headers["malformed"] = {"Authorization": "Bearer not-a-token"}
    headers["wrong-scheme"] = {"Authorization": "Basic " + "YWRtaW46cGFzc3dvcmQ="}
    headers["expired"] = {"Authorization": f"Bearer {agent.add_session('viewer', lifetime_s=-1)}"}
    with agent.client() as c:
        revoked = agent.login("viewer")
        assert c.post("/api/v1/auth/logout", headers={"Authorization": f"Bearer {revoked}"}).status_code == 200
        headers["revoked"] = {"Authorization": f"Bearer {revoked}"}
        agent.add_user("leaver", "admin")
        leaver = agent.login("leaver")
        r = c.post("/api/v1/users/leaver/disable", headers=headers["admin"])
        assert r.status_code == 200, r.text
        headers["disabled-user"] = {"Authorization": f"Bearer {leaver}"}
        r = c.post("/api/v1/api-keys", json={"name": "gone", "role": "admin"}, headers=headers["admin"])
        gone = r.json()
        assert c.delete(f"/api/v1/api-keys/{gone['id']}", headers=headers["admin"]).status_code == 200
        headers["revoked-key"] = {"Authorization": f"Bearer {gone['key']}"}
        r = c.post(
            "/api/v1/commands", json={"type": "stop"}, headers={**headers["admin"], "Idempotency-Key": "table-seed"}
        )
        assert r.status_code == 201, r.text
    world = World(agent, headers, r.json()["id"])
    yield world
    for client in world.clients.values():
        client.close()


def _route_key(route: Any, path: str | None) -> tuple[str, str] | None:
    if path is None:
        return None
    if isinstance(route, WebSocketRoute):
        return ("WS", path)
    methods = getattr(route, "methods", None)
    if not methods:
        return None
    (method,) = set(methods) - {"HEAD"}
    return (method, path)


def test_table_covers_every_route(world: World) -> None:
    app_routes = {}
    # FastAPI keeps included routers nested in `app.routes`; this walks every effective route.
    for context in iter_route_contexts(world.agent.app.routes):
        route = context.original_route
        key = _route_key(route, context.path)
        assert key is not None, f"route {route!r} is neither HTTP nor WebSocket"
        assert key not in app_routes, f"{key} is served twice"
        app_routes[key] = route
    assert set(app_routes) == set(TABLE), "routes without a table row / rows without a route"
    for key, route in app_routes.items():
        declared = route_permission(route)
        assert declared is not None, f"{key} declares no permission"
        assert declared is TABLE[key].permission, f"{key} declares {declared}, the table says {TABLE[key].permission}"


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("key", list(TABLE), ids=lambda k: f"{k[0]} {k[1]}")
def test_route_answers_by_permission(world: World, key: tuple[str, str], caller: str) -> None:
    spec = TABLE[key]
    role = caller.removeprefix("key:") if caller in ROLES or caller.startswith("key:") else None
    ctx = Ctx(world.agent, role, world.command_id, via_key=caller.startswith("key:"))
    response = spec.call(world.client(caller), ctx)
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if spec.permission is Permission.PUBLIC:
        assert response.status_code in spec.ok, response.text
    elif role is None:
        assert response.status_code == 401, response.text
        assert body["code"] == BAD[caller], body
        if key[0] != "WS":
            assert response.headers["www-authenticate"].startswith("Bearer")
    elif not allowed(role, spec.permission):
        assert response.status_code == 403, response.text
        assert body["code"] == "PERMISSION_DENIED" and body["request_id"], body
    elif spec.session_only and caller.startswith("key:"):
        assert response.status_code == 409 and body["code"] == "AUTH_SESSION_REQUIRED", response.text
    elif spec.person_only and caller.startswith("key:"):
        assert response.status_code == 403 and body["code"] == "AUTH_PERSON_REQUIRED", response.text
    else:
        assert response.status_code in spec.ok, response.text
