"""Configuration: strict validation with every problem listed, and `oht-agent config check`."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main
from agent.config import DEFAULT_CONFIG, ConfigError, load_config, validate_config

MINIMAL = {"agent": {"id": "oht-001", "data_dir": "/tmp/x"}, "bus": {"port": "/dev/ttyOHT485"}}


def test_shipped_config_is_valid_and_matches_the_contract() -> None:
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.agent.id == "oht-001" and cfg.agent.data_dir == "/var/lib/oht-agent"
    assert cfg.bus.port == "/dev/ttyOHT485" and cfg.bus.baudrate == 115200
    assert (cfg.api.host, cfg.api.port) == ("127.0.0.1", 8080)
    assert cfg.upstream.broker == "" and not cfg.upstream.enabled
    assert cfg.modules.role_map() == {"power": 2, "safety": 5, "travel": 3, "dock": 4}


def test_every_key_in_the_shipped_file_has_a_comment() -> None:
    lines = DEFAULT_CONFIG.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.lstrip().startswith("#"):
            assert lines[i - 1].lstrip().startswith("#") or "#" in line, f"key without comment: {line}"


def test_defaults_fill_everything_else() -> None:
    cfg = validate_config(MINIMAL)
    assert cfg.polling.safety_ms == 50 and cfg.bus.read_retries == 1 and cfg.modules.mandatory


def test_all_problems_are_listed_at_once_with_their_keys() -> None:
    data = {
        "agent": {"id": "oht 001", "data_dir": "/tmp/x", "colour": "red"},
        "bus": {"port": "/dev/x", "baudrate": "115200", "scan": [2, 2]},
        "polling": {"safety_ms": 5},
        "modules": {"power": 3, "travel": 3},
        "upstream": {"url": "http://central"},
        "extra": {},
    }
    with pytest.raises(ConfigError) as info:
        validate_config(data, "robot.toml")
    text = str(info.value)
    for key in (
        "agent.id",
        "agent.colour",
        "bus.baudrate",
        "bus.scan",
        "polling.safety_ms",
        "modules",
        "upstream.url",
        "extra",
    ):
        assert key in text, f"{key} not named in:\n{text}"
    assert len(info.value.problems) == 8
    assert "robot.toml" in info.value.hint
    assert info.value.code == "CONFIG_INVALID"


def test_missing_required_keys_are_named() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"agent": {"id": "a"}})
    assert {p.split(":")[0] for p in info.value.problems} == {"agent.data_dir", "bus"}


def test_syntax_error_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent\nid = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert "TOML syntax" in str(info.value) and str(bad) in str(info.value)


def test_config_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "--config", str(DEFAULT_CONFIG)]) == 0
    assert "ok" in capsys.readouterr().out
    bad = tmp_path / "agent.toml"
    bad.write_text('[agent]\nid = "x"\ndata_dir = "/tmp"\nbogus = 1\n[bus]\nport = "/dev/x"\nbaudrate = 12\n')
    assert main(["config", "check", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "agent.bogus" in err and "bus.baudrate" in err and "hint:" in err


def test_config_env_variable_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "env.toml"
    cfg.write_text('[agent]\nid = "from-env"\ndata_dir = "/tmp"\n[bus]\nport = "/dev/x"\n')
    monkeypatch.setenv("OHT_AGENT_CONFIG", str(cfg))
    assert main(["config", "check"]) == 0
    assert "from-env" in capsys.readouterr().out


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("run", "sim", "config", "demo", "OHT_AGENT_CONFIG"):
        assert word in out


def test_api_section_reaches_the_api_settings() -> None:
    from agent.api.settings import ApiSettings

    data = {
        **MINIMAL,
        "api": {
            "session_lifetime_s": 3600,
            "session_idle_s": 600,
            "login_account_failures": 3,
            "login_ip_failures": 9,
            "login_window_s": 300,
            "cors_origins": ["https://ops.example"],
        },
    }
    settings = ApiSettings.from_config(validate_config(data))
    limits = settings.auth_limits
    assert (limits.session_lifetime_s, limits.session_idle_s) == (3600.0, 600.0)
    assert (limits.throttle.account_failures, limits.throttle.ip_failures, limits.throttle.window_s) == (3, 9, 300.0)
    assert settings.cors_origins == ("https://ops.example",)
    shipped = ApiSettings.from_config(load_config(DEFAULT_CONFIG))
    assert shipped.cors_origins == () and shipped.session_idle_s <= shipped.session_lifetime_s


@pytest.mark.parametrize(
    ("api", "key"),
    [
        ({"cors_origins": ["*"]}, "api.cors_origins"),
        ({"cors_origins": ["ops.example"]}, "api.cors_origins"),
        ({"session_lifetime_s": 600, "session_idle_s": 1200}, "api"),
        ({"login_account_failures": 0}, "api.login_account_failures"),
    ],
)
def test_unsafe_api_settings_are_refused(api: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({**MINIMAL, "api": api})
    assert any(p.startswith(key) for p in info.value.problems), info.value.problems


def test_config_check_rejects_unsafe_safety_module_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`[safety_module]` is the module's expected configuration: values that would leave it blind
    or self-resetting are refused with the key named, and the check exits 1."""
    path = tmp_path / "agent.toml"
    path.write_text(
        '[agent]\nid = "a"\ndata_dir = "/tmp/x"\n[bus]\nport = "/dev/null"\n'
        "[safety_module]\nanalog_enable = [false, false, false, false]\n"
        "zone_thresholds = [50, 30, 60, 70]\nauto_reset = true\nsafety_mode = 7\n"
        "di_active_level = [1, 2, 1, 1]\nverify_interval_ms = 100\n"
    )
    assert main(["config", "check", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    for key, words in (
        ("safety_module.analog_enable", "at least one distance sensor"),
        ("safety_module.zone_thresholds", "zone 1 must be the nearest"),
        ("safety_module.auto_reset", "must be false"),
        ("safety_module.safety_mode", "less than or equal to 4"),
        ("safety_module.di_active_level", "less than or equal to 1"),
        ("safety_module.verify_interval_ms", "greater than or equal to 500"),
    ):
        line = next((ln for ln in err.splitlines() if key in ln), None)
        assert line is not None and words in line, (key, err)


def test_safety_module_defaults_enable_the_sensors_and_manual_reset() -> None:
    expected = validate_config(MINIMAL).safety_module.expected_registers()
    assert [expected[f"ANALOG_{n}_ENABLE"] for n in range(1, 5)] == [1, 1, 1, 1]
    assert expected["AUTO_RESET_ENABLE"] == 0 and expected["SAFETY_MODE"] == 1
    assert [expected[f"SAFETY_ZONE{n}_THRESHOLD"] for n in range(1, 5)] == [30, 50, 60, 70]
