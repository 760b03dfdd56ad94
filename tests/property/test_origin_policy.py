"""The WebSocket origin rule: the agent's own origin and the listed ones pass, no Origin passes,
and any origin that differs from all of them in scheme, host or port is refused."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agent.api.origins import OriginPolicy, parse_origin
from agent.config import _ORIGIN_RE, ConfigError, validate_config

hosts = st.from_regex(r"[a-z][a-z0-9-]{0,12}(\.[a-z][a-z0-9-]{0,8}){0,2}", fullmatch=True) | st.ip_addresses(v=4).map(
    str
)
ports = st.integers(1, 65535)
schemes = st.sampled_from(["http", "https"])
WS = {"http": "ws", "https": "wss"}


def config_listing(*origins: str) -> dict[str, object]:
    return {
        "agent": {"id": "a", "data_dir": "/tmp/x"},
        "bus": {"port": "/dev/null"},
        "api": {"cors_origins": list(origins)},
    }


def netloc(host: str, port: int | None) -> str:
    return host if port is None else f"{host}:{port}"


@settings(max_examples=100, deadline=None)
@given(schemes, hosts, ports | st.none(), st.booleans())
def test_the_page_the_agent_served_may_connect(scheme: str, host: str, port: int | None, upper: bool) -> None:
    origin = f"{scheme}://{netloc(host, port)}"
    default = {"http": 80, "https": 443}[scheme]
    # Browsers leave the default port out of Origin; a Host header may carry it or not.
    host_header = netloc(host.upper() if upper else host, default if port is None and upper else port)
    assert OriginPolicy().allows([origin], WS[scheme], host_header)


@settings(max_examples=100, deadline=None)
@given(schemes, hosts, ports, schemes, hosts, ports)
def test_any_other_origin_is_refused(
    scheme: str, host: str, port: int, own_scheme: str, own_host: str, own_port: int
) -> None:
    assume((scheme, host, port) not in {(own_scheme, own_host, own_port), ("https", "console.example", 443)})
    policy = OriginPolicy(["https://console.example"])
    assert not policy.allows([f"{scheme}://{host}:{port}"], WS[own_scheme], f"{own_host}:{own_port}")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(schemes, hosts, ports | st.none()), min_size=1, max_size=4), st.data())
def test_a_listed_origin_passes_from_anywhere(listed: list[tuple[str, str, int | None]], data: st.DataObject) -> None:
    origins = [f"{s}://{netloc(h, p)}" for s, h, p in listed]
    policy = OriginPolicy(origins)
    chosen = data.draw(st.sampled_from(origins))
    assert policy.allows([chosen], "wss", data.draw(hosts))


@settings(max_examples=100, deadline=None)
@given(schemes, hosts, st.none() | ports)
def test_no_origin_passes_and_two_never_do(scheme: str, host: str, port: int | None) -> None:
    own = f"{scheme}://{netloc(host, port)}"
    policy = OriginPolicy()
    assert policy.allows([], WS[scheme], netloc(host, port))
    assert not policy.allows([own, own], WS[scheme], netloc(host, port))


@pytest.mark.parametrize(
    "value",
    [
        "null",
        "",
        "file://",
        "https://",
        "ftp://a.example",
        "https://a.example/",
        "https://a.example/x",
        "https://a.example?x",
        "https://u@a.example",
        "https://a.example:99999",
        "https://a.example:x",
        "https://a example",
        "//a.example",
        "a.example",
    ],
)
def test_what_is_not_an_origin(value: str) -> None:
    assert parse_origin(value) is None
    assert not OriginPolicy().allows([value], "wss", "a.example")


def test_forms_of_one_origin_compare_equal() -> None:
    same = ("https", "console.example", 443)
    assert parse_origin("HTTPS://Console.Example") == parse_origin("https://console.example:443") == same
    assert parse_origin("http://[::1]:8080") == ("http", "::1", 8080)
    assert OriginPolicy().allows(["http://[::1]:8080"], "ws", "[::1]:8080")


@pytest.mark.parametrize(
    "listed",
    ["https://ops.example/", "https://ops.example/console", "https://user@ops.example", "https://ops.example:x"],
)
def test_config_lists_bare_origins_only(listed: str) -> None:
    """CORS compares the Origin header with the list as text, and the stream compares origins: an
    entry with a path or credentials would never match either, so it is a configuration error."""
    with pytest.raises(ConfigError) as info:
        validate_config(config_listing(listed))
    assert any(p.startswith("api.cors_origins") for p in info.value.problems), info.value.problems


@settings(max_examples=100, deadline=None)
@given(st.from_regex(_ORIGIN_RE, fullmatch=True))
def test_every_origin_the_config_takes_is_one_the_stream_can_compare(origin: str) -> None:
    """So a configuration that `config check` passes never stops the gateway at start."""
    try:
        validate_config(config_listing(origin))
    except ConfigError:
        return
    assert parse_origin(origin) is not None, origin
    OriginPolicy([origin])
