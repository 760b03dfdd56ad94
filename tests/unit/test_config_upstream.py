"""`[upstream]`: the MQTT binding's keys, one rule per test, each refusal naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli import main
from agent.config import ConfigError, UpstreamSection, validate_config
from agent.sync.identity import DeviceIdentity, PinnedKey

MINIMAL = {"agent": {"id": "oht-001", "data_dir": "/tmp/x"}, "bus": {"port": "/dev/ttyOHT485"}}
CENTRAL = DeviceIdentity(Ed25519PrivateKey.generate()).public
TLS = {
    "ca_file": "/etc/oht-agent/site-ca.pem",
    "cert_file": "/etc/oht-agent/robot.crt",
    "key_file": "/etc/oht-agent/robot.key",
}
ON = {"broker": "mqtts://broker.site.example", **TLS, "central_public_key": CENTRAL.base64()}


def _upstream(**keys: object) -> UpstreamSection:
    return validate_config({**MINIMAL, "upstream": keys}).upstream


def _problems(**keys: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _upstream(**keys)
    return info.value.problems


def test_empty_broker_means_sync_off_with_every_default() -> None:
    upstream = _upstream()
    assert not upstream.enabled and upstream.window == 1024
    assert upstream.clock_skew_s < upstream.command_max_age_s
    assert upstream.bulk_quota_bytes < upstream.critical_quota_bytes < upstream.normal_quota_bytes


def test_a_complete_mqtts_binding() -> None:
    upstream = _upstream(**ON)
    assert upstream.enabled and upstream.tls and (upstream.host, upstream.port) == ("broker.site.example", 8883)
    assert PinnedKey.from_text(upstream.central_public_key).raw == CENTRAL.raw
    assert _upstream(**{**ON, "broker": "mqtts://10.1.2.3:18883"}).port == 18883


@pytest.mark.parametrize("broker", ["mqtt://127.0.0.1:1883", "mqtt://127.0.0.2:41234", "mqtt://[::1]:1883"])
def test_plain_mqtt_only_to_a_loopback_address(broker: str) -> None:
    upstream = _upstream(broker=broker, central_public_key=CENTRAL.base64())
    assert not upstream.tls and upstream.host in ("127.0.0.1", "127.0.0.2", "::1")


@pytest.mark.parametrize(
    ("broker", "words"),
    [
        ("mqtt://10.0.0.5:1883", "only to a loopback address"),
        ("mqtt://localhost:1883", "only to a loopback address"),  # a name may resolve elsewhere
        ("https://central.example", "use mqtts://host[:port]"),
        ("broker.site.example:8883", "use mqtts://host[:port]"),
        ("mqtts://robot:secret@broker.site.example", "client certificate"),
        ("mqtts://broker.site.example/oht", "without a path"),
        ("mqtts://broker.site.example:0", "port 0"),
        ("mqtts://broker.site.example:99999", "out of range"),
    ],
)
def test_a_broker_url_outside_the_binding_is_refused(broker: str, words: str) -> None:
    problems = _problems(**{**ON, "broker": broker})
    assert len(problems) == 1 and problems[0].startswith("upstream.broker") and words in problems[0], problems


@pytest.mark.parametrize("missing", ["ca_file", "cert_file", "key_file"])
def test_mqtts_needs_the_pinned_ca_and_the_client_certificate(missing: str) -> None:
    (problem,) = _problems(**{**ON, missing: ""})
    assert problem.startswith("upstream:") and f"needs {missing}" in problem


def test_tls_files_with_plain_mqtt_are_refused() -> None:
    (problem,) = _problems(broker="mqtt://127.0.0.1:1883", central_public_key=CENTRAL.base64(), ca_file="/x.pem")
    assert "use mqtts://" in problem


def test_a_broker_needs_the_central_key() -> None:
    (problem,) = _problems(**{**ON, "central_public_key": ""})
    assert "central_public_key is required" in problem


@pytest.mark.parametrize("key", ["not-a-key", "AAAA", "A" * 44])
def test_a_central_key_that_is_not_ed25519_is_refused(key: str) -> None:
    (problem,) = _problems(**{**ON, "central_public_key": key})
    assert problem.startswith("upstream.central_public_key") and "Ed25519" in problem


def test_a_central_key_as_pem_is_accepted() -> None:
    assert _upstream(**{**ON, "central_public_key": CENTRAL.pem()}).central_public_key.startswith("-----BEGIN")


@pytest.mark.parametrize(
    ("keys", "key"),
    [
        ({"window": 0}, "upstream.window"),
        ({"window": 9000}, "upstream.window"),
        ({"ack_timeout_s": 0.5}, "upstream.ack_timeout_s"),
        ({"command_max_age_s": 1}, "upstream.command_max_age_s"),
        ({"clock_skew_s": -1}, "upstream.clock_skew_s"),
        ({"critical_quota_bytes": 1024}, "upstream.critical_quota_bytes"),  # smaller than one large record
        ({"bulk_quota_bytes": "32M"}, "upstream.bulk_quota_bytes"),
        ({"telemetry_ttl_s": 10}, "upstream.telemetry_ttl_s"),
    ],
)
def test_values_out_of_range_name_their_key(keys: dict[str, object], key: str) -> None:
    problems = _problems(**keys)
    assert any(p.startswith(key) for p in problems), problems


def test_the_clock_skew_must_be_within_the_command_age() -> None:
    (problem,) = _problems(**{**ON, "command_max_age_s": 60, "clock_skew_s": 60})
    assert "clock_skew_s must be smaller than command_max_age_s" in problem


def test_the_old_https_url_points_to_its_replacement() -> None:
    (problem,) = _problems(url="https://central.example")
    assert "upstream.url is replaced by upstream.broker" in problem


def test_config_check_names_the_upstream_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[agent]\nid = "a"\ndata_dir = "/tmp/x"\n[bus]\nport = "/dev/null"\n'
                    '[upstream]\nbroker = "mqtt://192.168.1.10:1883"\n')  # fmt: skip
    assert main(["config", "check", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "upstream.broker" in err and "loopback" in err and "hint:" in err
