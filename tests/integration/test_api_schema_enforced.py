"""The OpenAPI schema states what the server enforces, and 405 answers list the path's methods.

Each case was a schema-valid request the server refused (or a wrong `Allow`): the schema now
states the limit from the validator the server applies, and the server still refuses.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema_rs
import pytest

from agent.api.models import PARAMS_RULES
from agent.auth.errors import ApiKeyInvalid, UserNameInvalid
from agent.auth.password_policy import MIN_LENGTH
from agent.auth.principal import CallContext, cli_principal
from agent.control.catalogue import CATALOGUE, CommandType, validate_params
from agent.store.api_keys import check_key_name
from agent.store.errors import CommandInvalid
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


def test_command_types_are_the_variants_of_the_submission(admin: tuple[httpx.Client, dict[str, Any]]) -> None:
    client, schema = admin
    submission = schema["components"]["schemas"]["CommandRequest"]
    mapping = submission["discriminator"]["mapping"]
    assert submission["discriminator"]["propertyName"] == "type"
    assert set(mapping) == {t.value for t in CommandType} == {spec.name.value for spec in CATALOGUE.values()}
    assert [v["$ref"] for v in submission["oneOf"]] == [mapping[spec.name.value] for spec in CATALOGUE.values()]
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


def _submission_variant(schema: dict[str, Any], command_type: str) -> dict[str, Any]:
    ref = schema["components"]["schemas"]["CommandRequest"]["discriminator"]["mapping"][command_type]
    variant: dict[str, Any] = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return variant


def test_each_command_documents_its_own_parameters_with_their_bounds(
    admin: tuple[httpx.Client, dict[str, Any]],
) -> None:
    _client, schema = admin
    for spec in CATALOGUE.values():
        params = _submission_variant(schema, spec.name.value)["properties"]["params"]
        if spec.name in PARAMS_RULES:
            assert [alt["title"] for alt in params["oneOf"]], spec.name
        else:
            assert params["$ref"].endswith(f"/{spec.params.__name__}"), spec.name
    hoist = schema["components"]["schemas"]["HoistParams"]["properties"]["position_cm"]
    assert (hoist["minimum"], hoist["maximum"]) == (0, 300)


def test_every_rule_across_fields_is_stated_as_its_validator_applies_it() -> None:
    assert {spec.name for spec in CATALOGUE.values() if spec.params.rule} <= set(PARAMS_RULES)
    move = _move_params_schema()
    base = {"direction": "forward", "speed_pct": 50}
    for extra in (
        {},
        {"distance_cm": 10},
        {"duration_ms": 500},
        {"distance_cm": 10, "duration_ms": 500},
        {"distance_cm": None, "duration_ms": 500},
        {"distance_cm": 10, "duration_ms": None},
        {"distance_cm": None, "duration_ms": None},
        {"distance_cm": None},
    ):
        body = base | extra
        try:
            validate_params("move", body)
            accepted = True
        except CommandInvalid:
            accepted = False
        assert jsonschema_rs.Draft202012Validator(move).is_valid(body) == accepted, body


def _move_params_schema() -> dict[str, Any]:
    from agent.api.models import COMMAND_VARIANTS

    variant = next(v for v in COMMAND_VARIANTS if v.__name__ == "MoveCommand")
    schema: dict[str, Any] = variant.model_json_schema()["properties"]["params"]
    return schema


@pytest.mark.parametrize(
    ("body", "code", "named"),
    [
        ({"type": "move", "params": {"direction": "forward", "speed_pct": 500, "distance_cm": 5}}, "COMMAND_INVALID",
         "speed_pct"),
        ({"type": "move", "params": {"direction": "forward", "speed_pct": 5}}, "COMMAND_INVALID", "distance_cm"),
        ({"type": "teleport"}, "COMMAND_INVALID", "teleport"),
        ({"type": "stop", "priority": 11}, "REQUEST_INVALID", "priority"),
        ({"type": "stop", "not_after": 0}, "REQUEST_INVALID", "not_after"),
    ],
)  # fmt: skip
def test_a_wrong_submission_is_answered_with_its_code_and_a_hint(
    admin: tuple[httpx.Client, dict[str, Any]], body: dict[str, Any], code: str, named: str
) -> None:
    client, _schema = admin
    r = client.post("/api/v1/commands", json=body, headers={"Idempotency-Key": f"wrong-{named}-{code}"})
    answer = r.json()
    assert r.status_code == 422 and answer["code"] == code, answer
    assert named in answer["message"] and answer["hint"], answer
