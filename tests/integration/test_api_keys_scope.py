"""What an API key may do, over real HTTP: no more than its creator, never longer, never more keys.

The gateway runs as in the daemon (its own `Gateway`, attached to a database the core side
created), without a core: nothing here touches the robot, and every route used here is served
by the gateway alone. Passwords are hashed at a cheap scrypt cost (same code path).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from agent.api.context import ApiContext
from agent.auth.passwords import Hasher, ScryptParams
from agent.auth.principal import CallContext, cli_principal
from agent.config import validate_config
from agent.gateway import Gateway
from agent.store import api_keys as keys_store
from agent.store.database import Database

FAST = ScryptParams(n=2**12, r=8, p=1)
PW = "plum kettle orbit lantern"
ROOT = cli_principal("root")


class Served:
    """The running gateway and what the tests arrange through it."""

    def __init__(self, gateway: Gateway, core_db: Database) -> None:
        assert gateway.api is not None
        self.gateway = gateway
        self.core_db = core_db
        self.url = gateway.api.url
        self.api: ApiContext = gateway.api.app.state.api
        self.api.auth.hasher = Hasher(FAST)

    def client(self, bearer: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10.0)

    async def add_user(self, name: str, role: str) -> None:
        await self.api.auth.create_user(ROOT, name, role, PW, CallContext())

    async def login(self, name: str, password: str = PW) -> str:
        async with self.client() as c:
            r = await c.post("/api/v1/auth/login", json={"username": name, "password": password})
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    async def audit(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in await self.api.audit.list(0, 1000)]


pytestmark = pytest.mark.asyncio(loop_scope="module")
_names = itertools.count(1)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    data = tmp_path_factory.mktemp("keys") / "data"
    cfg = validate_config(
        {
            "agent": {"id": "oht-test", "data_dir": str(data)},
            "bus": {"port": "/dev/null"},
            "api": {"host": "127.0.0.1", "port": 0},
        }
    )
    core_db = await Database.open(cfg.data_path)  # the core creates and migrates the database
    gateway = Gateway(cfg)
    await gateway.start()
    try:
        yield Served(gateway, core_db)
    finally:
        await gateway.shutdown()
        await core_db.close()


@pytest_asyncio.fixture(loop_scope="module")
async def admins(served: Served) -> tuple[str, str]:
    """Two admins of this test's own (one may disable the other: the last admin cannot go)."""
    n = next(_names)
    names = (f"ada-{n}", f"bob-{n}")
    for name in names:
        await served.add_user(name, "admin")
    return names


async def make_key(c: httpx.AsyncClient, name: str, role: str = "admin") -> dict[str, Any]:
    r = await c.post("/api/v1/api-keys", json={"name": name, "role": role})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_a_key_stops_working_the_moment_its_creator_is_disabled(served: Served, admins: tuple[str, str]) -> None:
    ada_name, bob_name = admins
    async with served.client(await served.login(ada_name)) as ada, served.client(await served.login(bob_name)) as bob:
        made = await make_key(ada, "ada's scraper")
        async with served.client(made["key"]) as key:
            assert (await key.get("/api/v1/users")).status_code == 200  # used, so now cached
            assert served.api.auth.cached_principal(made["key"]) is not None
            assert (await bob.post(f"/api/v1/users/{ada_name}/disable")).status_code == 200
            r = await key.get("/api/v1/users")
            assert r.status_code == 401 and r.json()["code"] == "AUTH_INVALID", r.text
            assert served.api.auth.cached_principal(made["key"]) is None  # the early E-stop path too
        listed = {k["id"]: k for k in (await bob.get("/api/v1/api-keys")).json()}
        assert listed[made["id"]]["revoked"] is True and listed[made["id"]]["revoked_by"] == bob_name
    rows = [(r["actor"], r["action"], r["target"]) for r in await served.audit()]
    assert (bob_name, "api_key.revoke", made["prefix"]) in rows  # the consequence is in the log


async def test_a_key_cannot_make_keys_users_or_passwords_but_can_read(served: Served, admins: tuple[str, str]) -> None:
    ada_name, bob_name = admins
    async with served.client(await served.login(ada_name)) as ada:
        made = await make_key(ada, "line controller")
        other = await make_key(ada, "other client", "viewer")
    keys_before = {k.id for k in await served.api.auth.list_api_keys()}
    users_before = {u.name for u in await served.api.auth.list_users()}
    async with served.client(made["key"]) as key:
        refused = [
            await key.post("/api/v1/api-keys", json={"name": "child", "role": "admin"}),
            await key.delete(f"/api/v1/api-keys/{other['id']}"),
            await key.post("/api/v1/users", json={"name": "mallory", "role": "admin", "password": PW}),
            await key.post(f"/api/v1/users/{bob_name}/disable"),
            await key.post(f"/api/v1/users/{ada_name}/password", json={"password": "taken over by a key"}),
        ]
        for r in refused:
            body = r.json()
            assert r.status_code == 403 and body["code"] == "AUTH_PERSON_REQUIRED", r.text
            assert "oht-agent user" in body["hint"] and "/api/v1/auth/login" in body["hint"]
        for path in ("/api/v1/users", "/api/v1/api-keys", "/api/v1/audit"):
            assert (await key.get(path)).status_code == 200, path
        me = (await key.get("/api/v1/auth/me")).json()
    actor = f"{made['prefix']}:line controller"  # prefix and name
    assert me["actor"] == actor and me["method"] == "api_key"
    denied = [r for r in await served.audit() if r["actor"] == actor]
    assert [(r["action"], r["result"], r["code"]) for r in denied] == [
        ("api_key.create", "denied", "AUTH_PERSON_REQUIRED"),
        ("api_key.revoke", "denied", "AUTH_PERSON_REQUIRED"),
        ("user.create", "denied", "AUTH_PERSON_REQUIRED"),
        ("user.disable", "denied", "AUTH_PERSON_REQUIRED"),
        ("user.password_set", "denied", "AUTH_PERSON_REQUIRED"),
    ]
    # Nothing changed: no new key or user, the other key and ada's password still hold.
    assert {k.id for k in await served.api.auth.list_api_keys()} == keys_before
    assert {u.name for u in await served.api.auth.list_users()} == users_before
    assert (await served.api.auth.authenticate(other["key"])).role == "viewer"
    await served.login(ada_name)


async def test_revoking_a_key_revokes_the_keys_made_with_it(served: Served, admins: tuple[str, str]) -> None:
    """Keys made by keys exist only in databases from before that was refused: their rows are
    written here as the old code made them (creator a key), then the first key is revoked."""
    ada_name, _ = admins
    async with served.client(await served.login(ada_name)) as ada:
        root = await make_key(ada, "root")
        child, child_key = await legacy_key(served, "child", made_by=root["id"])
        grandchild, grandchild_key = await legacy_key(served, "grandchild", made_by=child.id)
        async with served.client(grandchild_key) as g:
            assert (await g.get("/api/v1/users")).status_code == 200
        assert (await ada.delete(f"/api/v1/api-keys/{root['id']}")).status_code == 200
        for key in (child_key, grandchild_key):
            async with served.client(key) as k:
                r = await k.get("/api/v1/users")
                assert r.status_code == 401 and r.json()["code"] == "AUTH_INVALID"
        listed = {k["id"]: k for k in (await ada.get("/api/v1/api-keys")).json()}
    for key_id in (root["id"], child.id, grandchild.id):
        assert listed[key_id]["revoked"] and listed[key_id]["revoked_by"] == ada_name


async def test_disabling_a_user_revokes_keys_made_with_their_keys(served: Served, admins: tuple[str, str]) -> None:
    ada_name, bob_name = admins
    async with served.client(await served.login(ada_name)) as ada:
        root = await make_key(ada, "root")
    child, child_key = await legacy_key(served, "child", made_by=root["id"])
    async with served.client(await served.login(bob_name)) as bob:
        assert (await bob.post(f"/api/v1/users/{ada_name}/disable")).status_code == 200
    async with served.client(child_key) as k:
        assert (await k.get("/api/v1/users")).status_code == 401
    assert all(k.revoked for k in await served.api.auth.list_api_keys() if k.id in (root["id"], child.id))


async def test_a_key_acts_with_the_lower_of_its_role_and_its_creators(served: Served, admins: tuple[str, str]) -> None:
    """There is no role change on the API: the role is lowered in the database, as a role change
    would do it, before the key is first used."""
    ada_name, _ = admins
    async with served.client(await served.login(ada_name)) as ada:
        made = await make_key(ada, "strong key")
    await served.api.db.write(
        lambda conn: conn.execute("UPDATE users SET role = 'operator' WHERE name = ?", (ada_name,))
    )
    async with served.client(made["key"]) as key:
        assert (await key.get("/api/v1/auth/me")).json()["role"] == "operator"
        r = await key.get("/api/v1/users")
        assert r.status_code == 403 and r.json()["code"] == "PERMISSION_DENIED"


async def test_an_admin_sets_their_own_password_only_with_the_current_one(
    served: Served, admins: tuple[str, str]
) -> None:
    ada_name, bob_name = admins
    async with served.client(await served.login(ada_name)) as ada:
        for name in (ada_name, ada_name.upper()):
            r = await ada.post(f"/api/v1/users/{name}/password", json={"password": "no current password"})
            body = r.json()
            assert r.status_code == 403 and body["code"] == "AUTH_CURRENT_PASSWORD_REQUIRED", r.text
            assert "POST /api/v1/auth/password" in body["hint"]
        assert (await ada.get("/api/v1/users")).status_code == 200  # the session was not ended
        r = await ada.post(f"/api/v1/users/{bob_name}/password", json={"password": "set by ada for bob"})
        assert r.status_code == 200, r.text
    await served.login(ada_name)  # unchanged
    await served.login(bob_name, "set by ada for bob")
    rows = [(r["actor"], r["action"], r["result"], r["code"]) for r in await served.audit()]
    assert rows.count((ada_name, "user.password_set", "denied", "AUTH_CURRENT_PASSWORD_REQUIRED")) == 2


async def legacy_key(served: Served, name: str, *, made_by: str) -> tuple[keys_store.ApiKeyRecord, str]:
    """An admin key whose creator is another key, as rows from before this rule look."""
    from agent.auth import tokens

    parent = next(k for k in await served.api.auth.list_api_keys() if k.id == made_by)
    prefix, full = tokens.new_api_key()
    record = await served.api.db.write(
        lambda conn: keys_store.create_in(
            conn,
            prefix=prefix,
            key_hash=tokens.digest(full),
            name=name,
            role="admin",
            created_by=parent.label,
            created_by_key_id=parent.id,
        )
    )
    return record, full
