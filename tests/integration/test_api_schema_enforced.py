"""The OpenAPI schema states what the server enforces, and 405 answers list the path's methods.

Each case was a schema-valid request the server refused (or a wrong `Allow`): the schema now
states the limit from the validator the server applies, and the server still refuses.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agent.auth.errors import ApiKeyInvalid, UserNameInvalid
from agent.auth.password_policy import MIN_LENGTH
from agent.auth.principal import CallContext, cli_principal
from agent.control.catalogue import CATALOGUE
from agent.control.states import CommandType
from agent.store.api_keys import check_key_name
from agent.store.users import check_name
from tests.integration.test_api_harness import Agent, start_agent


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, dict[str, Any]]]:
    for agent, _sim in start_agent(tmp_path_factory.mktemp("enforced")):
        client = _admin_client(agent)
        with client:
            yield client, client.get("/openapi.json").json()


def _admin_client(agent: Agent) -> httpx.Client:
    _, key = agent.run(agent.api.auth.create_api_key(cli_principal("test"), "schema", "admin", CallContext()))
    return agent.client(headers={"Authorization": f"Bearer {key}"})


def _props(schema: dict[str, Any], model: str) -> dict[str, Any]:
    props: dict[str, Any] = schema["components"]["schemas"][model]["properties"]
    return props


def test_command_types_are_an_enum_of_the_types_the_server_runs(admin: tuple[httpx.Client, dict[str, Any]]) -> None:
    client, schema = admin
    enum = _props(schema, "CommandRequest")["type"]["enum"]
    assert set(enum) == {t.value for t in CommandType} == set(CATALOGUE)
    r = client.post("/api/v1/commands", json={"type": "0"}, headers={"Idempotency-Key": "t0"})
    assert r.status_code == 422 and r.json()["code"] == "COMMAND_INVALID"


def test_user_names_follow_the_stated_pattern(admin: tuple[httpx.Client, dict[str, Any]]) -> None:
    _client, schema = admin
    pattern = _props(schema, "UserCreate")["name"]["pattern"]
    assert re.search(pattern, "ada.l-1") and not re.search(pattern, "0" * 63)
    with pytest.raises(UserNameInvalid):  # the check the server applies when a user is made
        check_name("0" * 63)


def test_key_names_follow_the_stated_pattern(admin: tuple[httpx.Client, dict[str, Any]]) -> None:
    _client, schema = admin
    pattern = _props(schema, "ApiKeyCreate")["name"]["pattern"]
    assert re.search(pattern, "line 7 reader") and not re.search(pattern, "tab\there")
    with pytest.raises(ApiKeyInvalid):  # the check the server applies when a key is made
        check_key_name("tab\there")


def test_new_passwords_state_the_policy_length(admin: tuple[httpx.Client, dict[str, Any]]) -> None:
    _client, schema = admin
    assert _props(schema, "UserCreate")["password"]["minLength"] == MIN_LENGTH
    assert _props(schema, "PasswordSet")["password"]["minLength"] == MIN_LENGTH
    assert _props(schema, "PasswordChange")["new_password"]["minLength"] == MIN_LENGTH
    assert _props(schema, "PasswordChange")["current_password"]["minLength"] == 1  # an old one may be shorter
    assert _props(schema, "LoginRequest")["password"]["minLength"] == 1


@pytest.mark.parametrize("path", ["/api/v1/commands", "/api/v1/users", "/api/v1/api-keys"])
def test_a_405_lists_every_method_of_the_path(admin: tuple[httpx.Client, dict[str, Any]], path: str) -> None:
    client, schema = admin
    r = client.put(path, json={})
    assert r.status_code == 405
    allowed = {m.strip() for m in r.headers["allow"].split(",")}
    documented = {m.upper() for m in schema["paths"][path]}
    assert documented == {"GET", "POST"} and documented <= allowed <= documented | {"HEAD"}
