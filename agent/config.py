"""Typed, strict configuration loaded from TOML.

A typo in a key, a string where a number belongs or a value out of range stops start-up with
every problem listed and the file and key named: a robot must never run on a half-understood
configuration. Everything not required has a safe default.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.control.motion import MotionLimits
from agent.safety.policy import SafetyPolicy
from oht_errors import CodedError, ErrorKind

if TYPE_CHECKING:
    from agent.store.streams import Limits

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "config" / "agent.toml"
CONFIG_ENV = "OHT_AGENT_CONFIG"

Role = Literal["power", "safety", "travel", "dock"]
SlaveAddress = Annotated[int, Field(ge=1, le=247)]


class ConfigError(CodedError):
    code = "CONFIG_INVALID"
    kind = ErrorKind.INVALID
    hint = "Fix the keys listed in the message, then run `oht-agent config check --config PATH`."

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"{len(problems)} problem(s) in {path}:\n{lines}",
            hint=f"fix the keys listed above in {path}, then run `oht-agent config check --config {path}`",
        )


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class AgentSection(_Section):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    data_dir: Annotated[str, Field(min_length=1)]
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"


class BusSection(_Section):
    port: Annotated[str, Field(min_length=1)]
    baudrate: Literal[9600, 19200, 38400, 57600, 115200] = 115200
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    read_retries: Annotated[int, Field(ge=0, le=3)] = 1
    write_retries: Annotated[int, Field(ge=0, le=5)] = 2
    fail_threshold: Annotated[int, Field(ge=1, le=20)] = 3
    queue_limit: Annotated[int, Field(ge=8, le=4096)] = 256
    scan: list[SlaveAddress] = Field(default_factory=lambda: [2, 3, 4, 5, 6, 7])
    profiles_dir: str = ""  # empty: the profiles shipped with the agent
    rediscover_s: Annotated[float, Field(gt=0, le=3600)] = 5.0

    @field_validator("scan")
    @classmethod
    def _unique_scan(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("addresses must be listed once each")
        return v


class ModulesSection(_Section):
    """Which slave address plays which role. Defaults follow the firmware's compile-time ids."""

    power: SlaveAddress = 2
    travel: SlaveAddress = 3
    dock: SlaveAddress = 4
    safety: SlaveAddress = 5
    mandatory: list[Role] = Field(default_factory=lambda: list(get_args(Role)))

    @model_validator(mode="after")
    def _distinct(self) -> ModulesSection:
        addrs = {"power": self.power, "travel": self.travel, "dock": self.dock, "safety": self.safety}
        seen: dict[int, str] = {}
        for role, addr in addrs.items():
            if addr in seen:
                raise ValueError(f"roles {seen[addr]} and {role} share address {addr}")
            seen[addr] = role
        return self

    def role_map(self) -> dict[str, int]:
        return {"power": self.power, "safety": self.safety, "travel": self.travel, "dock": self.dock}


class PollingSection(_Section):
    safety_ms: Annotated[int, Field(ge=10, le=1000)] = 50
    travel_moving_ms: Annotated[int, Field(ge=20, le=2000)] = 100
    travel_idle_ms: Annotated[int, Field(ge=100, le=10000)] = 1000
    power_ms: Annotated[int, Field(ge=100, le=60000)] = 1000
    dock_ms: Annotated[int, Field(ge=20, le=60000)] = 100
    identity_ms: Annotated[int, Field(ge=1000, le=3600000)] = 30000


SENSORS = 4  # SAFE-FW: four analog distance sensors and four digital inputs


class SafetyModuleSection(_Section):
    """What the safety module must hold: the agent owns it, applies it at bind and verifies it.

    Values are raw register values of the SAFE-FW map. The module forgets all of them on a
    reboot (its power-on defaults leave every sensor off), so the agent compares them with what
    the module reports: the sensor enables on every status read, the rest every verify interval.
    """

    analog_enable: Annotated[list[bool], Field(min_length=SENSORS, max_length=SENSORS)] = Field(
        default_factory=lambda: [True] * SENSORS
    )
    zone_thresholds: Annotated[
        list[Annotated[int, Field(ge=1, le=10000)]], Field(min_length=SENSORS, max_length=SENSORS)
    ] = Field(default_factory=lambda: [30, 50, 60, 70])
    di_enable: Annotated[list[bool], Field(min_length=SENSORS, max_length=SENSORS)] = Field(
        default_factory=lambda: [False] * SENSORS
    )
    di_active_level: Annotated[
        list[Annotated[int, Field(ge=0, le=1)]], Field(min_length=SENSORS, max_length=SENSORS)
    ] = Field(default_factory=lambda: [1] * SENSORS)
    response_time_ms: Annotated[int, Field(ge=1, le=1000)] = 50
    auto_reset: bool = False
    safety_mode: Annotated[int, Field(ge=1, le=4)] = 1
    verify_interval_ms: Annotated[int, Field(ge=500, le=60000)] = 5000
    reapply_after_reboot: bool = True

    @field_validator("zone_thresholds")
    @classmethod
    def _zones_rise(cls, v: list[int]) -> list[int]:
        if any(a >= b for a, b in itertools.pairwise(v)):
            raise ValueError("zone 1 must be the nearest: each threshold must be larger than the one before")
        return v

    @field_validator("analog_enable")
    @classmethod
    def _one_sensor(cls, v: list[bool]) -> list[bool]:
        if not any(v):
            raise ValueError("at least one distance sensor must be enabled: a module with none enabled never trips")
        return v

    @field_validator("auto_reset")
    @classmethod
    def _manual_reset(cls, v: bool) -> bool:
        if v:
            raise ValueError(
                "must be false: the module must not release its relay latch by itself (a technician resets)"
            )
        return v

    def enabled_sensors(self) -> frozenset[int]:
        """Sensor numbers (1-4) whose distances take part in the safety decision."""
        return frozenset(i + 1 for i, on in enumerate(self.analog_enable) if on)

    def expected_registers(self) -> dict[str, int]:
        """Register name -> raw value, in the safety module profile's names."""
        regs: dict[str, int] = {}
        for i in range(SENSORS):
            n = i + 1
            regs[f"ANALOG_{n}_ENABLE"] = int(self.analog_enable[i])
            regs[f"DI{n}_ENABLE"] = int(self.di_enable[i])
            regs[f"DI{n}_ACTIVE_LEVEL"] = self.di_active_level[i]
            regs[f"SAFETY_ZONE{n}_THRESHOLD"] = self.zone_thresholds[i]
        regs["SAFETY_RESPONSE_TIME"] = self.response_time_ms
        regs["AUTO_RESET_ENABLE"] = int(self.auto_reset)
        regs["SAFETY_MODE"] = self.safety_mode
        return regs


_ORIGIN_RE = re.compile(r"https?://(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


class ApiSection(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080  # 0: any free port (the one chosen is logged)
    session_lifetime_s: Annotated[int, Field(ge=60, le=7 * 24 * 3600)] = 8 * 3600
    session_idle_s: Annotated[int, Field(ge=60, le=24 * 3600)] = 30 * 60
    login_account_failures: Annotated[int, Field(ge=1, le=100)] = 5
    login_ip_failures: Annotated[int, Field(ge=1, le=1000)] = 20
    login_window_s: Annotated[int, Field(ge=10, le=24 * 3600)] = 15 * 60
    login_account_delay_max_s: Annotated[int, Field(ge=1, le=3600)] = 30
    cors_origins: list[str] = Field(default_factory=list)
    # The oldest TLS served off loopback: "1.2" (AEAD suites only) and 1.3, or "1.3" alone.
    tls_min_version: Literal["1.2", "1.3"] = "1.2"

    @field_validator("tls_min_version", mode="before")
    @classmethod
    def _tls_version(cls, value: object) -> object:
        if value not in ("1.2", "1.3"):  # also a bare 1.2, which TOML reads as a number
            raise ValueError('use "1.2" (TLS 1.2 with AEAD suites, and 1.3) or "1.3" (TLS 1.3 only), quoted')
        return value

    @field_validator("cors_origins")
    @classmethod
    def _explicit_origins(cls, origins: list[str]) -> list[str]:
        # Bare origins only, as a browser sends them: CORS compares the text, the WebSocket stream
        # the origin, and an entry with a path, a user or a wildcard would never match either.
        for origin in origins:
            try:  # .port checks the range and a [v6] literal
                bare = _ORIGIN_RE.fullmatch(origin) is not None and urlsplit(origin).port != 0
            except ValueError:
                bare = False
            if not bare:
                raise ValueError(f"{origin!r}: list each origin as scheme://host[:port] (no path, no wildcard)")
        return origins

    @model_validator(mode="after")
    def _idle_within_lifetime(self) -> ApiSection:
        if self.session_idle_s > self.session_lifetime_s:
            raise ValueError("session_idle_s must not exceed session_lifetime_s")
        return self


SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL


class CoreSection(_Section):
    """The core process's Unix socket, through which the gateway reaches it (docs/core-protocol.md)."""

    socket: str = ""  # empty: core.sock in the data directory; the units use /run/oht-agent/core.sock
    gateway_user: str = ""  # the user the gateway runs as (besides the core's own user and root)
    request_rate: Annotated[float, Field(ge=1, le=10000)] = 500.0  # gateway requests admitted per second
    request_burst: Annotated[int, Field(ge=1, le=10000)] = 100
    max_inflight: Annotated[int, Field(ge=1, le=1024)] = 32
    view_interval_ms: Annotated[int, Field(ge=20, le=5000)] = 200  # status view sent at least this often


class WatchdogSection(_Section):
    """Linux hardware watchdog; systemd's watchdog is configured in the unit (WatchdogSec)."""

    device: str = ""  # e.g. "/dev/watchdog"; empty: not used
    timeout_s: Annotated[int, Field(ge=1, le=600)] = 10


class EstopGpioSection(_Section):
    """The hardwired E-stop read through libgpiod (active low; one or two channels)."""

    enabled: bool = False
    chip: str = "/dev/gpiochip1"
    lines: Annotated[list[Annotated[int, Field(ge=0, le=1023)]], Field(min_length=1, max_length=2)] = Field(
        default_factory=lambda: [59]
    )
    active_low: bool = True
    debounce_ms: Annotated[int, Field(ge=0, le=100)] = 10
    discrepancy_ms: Annotated[int, Field(ge=10, le=1000)] = 50


_MiB = 1024 * 1024
_QUOTA = Annotated[int, Field(ge=4 * _MiB, le=64 * 1024 * _MiB)]  # at least a few of the largest records


class UpstreamSection(_Section):
    """The link to the centre through the site's MQTT 5 broker (docs/upstream.md). Empty broker: off.

    Over the network the broker is `mqtts://` only, with a pinned CA and the robot's own client
    certificate; plain `mqtt://` is accepted for a loopback address alone (a broker on the same
    host, as in tests), never for anything a cable reaches.
    """

    broker: str = ""  # mqtts://host[:port] (8883 by default), or mqtt://127.0.0.1:port
    ca_file: str = ""  # the CA that signed the broker's certificate: the only one trusted
    cert_file: str = ""  # this robot's client certificate (PEM) ...
    key_file: str = ""  # ... and its private key
    central_public_key: str = ""  # Ed25519 key that signs commands: base64 of 32 bytes, or PEM
    window: Annotated[int, Field(ge=1, le=8192)] = 1024  # records published and not yet acknowledged
    ack_timeout_s: Annotated[float, Field(ge=1, le=3600)] = 30.0  # then the unacknowledged are sent again
    command_max_age_s: Annotated[float, Field(ge=5, le=86400)] = 300.0  # issued_at older: UPSTREAM_STALE
    clock_skew_s: Annotated[float, Field(ge=0, le=600)] = 30.0  # issued_at ahead of this clock by more: stale
    critical_quota_bytes: _QUOTA = 64 * _MiB  # results, alarms: when full, new commands are refused
    normal_quota_bytes: _QUOTA = 128 * _MiB  # events, audit: never dropped
    bulk_quota_bytes: _QUOTA = 32 * _MiB  # telemetry: when full, the oldest go first (a gap record says so)
    telemetry_ttl_s: Annotated[int, Field(ge=60, le=30 * 86400)] = 86400  # older unsent telemetry is dropped

    @model_validator(mode="before")
    @classmethod
    def _url_replaced(cls, data: object) -> object:
        if isinstance(data, dict) and "url" in data:
            raise ValueError('upstream.url is replaced by upstream.broker = "mqtts://host:8883" (see docs/upstream.md)')
        return data

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, v: str) -> str:
        if not v:
            return v
        try:
            parts = urlsplit(v)
            port = parts.port  # checks the range
        except ValueError as exc:
            raise ValueError(f"{v!r}: {exc}") from None
        if parts.scheme not in ("mqtts", "mqtt") or not parts.hostname:
            raise ValueError(f'{v!r}: use mqtts://host[:port] (or "" to turn sync off)')
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"{v!r}: no user or password in the URL; the robot logs in with its client certificate")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{v!r}: give scheme://host[:port] only, without a path or query")
        if port == 0:
            raise ValueError(f"{v!r}: port 0 cannot be connected to")
        if parts.scheme == "mqtt" and not _is_loopback_ip(parts.hostname):
            raise ValueError(
                f"{v!r}: plain mqtt:// is allowed only to a loopback address (127.0.0.1, ::1); use mqtts://"
            )
        return v

    @field_validator("central_public_key")
    @classmethod
    def _central_key(cls, v: str) -> str:
        if v:
            from agent.sync.envelope import decode_public_key  # the standard library only: no crypto in the core
            from agent.sync.errors import PublicKeyInvalid

            try:
                decode_public_key(v)
            except PublicKeyInvalid as exc:
                raise ValueError(f"{exc.message}; {exc.hint}") from None
        return v

    @model_validator(mode="after")
    def _complete(self) -> UpstreamSection:
        if not self.broker:
            return self
        tls_files = {"ca_file": self.ca_file, "cert_file": self.cert_file, "key_file": self.key_file}
        if self.tls:
            missing = [name for name, value in tls_files.items() if not value]
            if missing:
                raise ValueError(
                    f"mqtts:// needs {', '.join(missing)}: the pinned CA and this robot's client certificate and key"
                )
        elif any(tls_files.values()):
            raise ValueError("ca_file, cert_file and key_file are TLS settings: use mqtts:// to use them")
        if not self.central_public_key:
            raise ValueError("central_public_key is required with a broker: without it no command could be verified")
        if self.clock_skew_s >= self.command_max_age_s:
            raise ValueError("clock_skew_s must be smaller than command_max_age_s")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.broker)

    def outbox_limits(self) -> Limits:
        """The outbox's per-class bounds from these keys, for every process that bounds the outbox
        or asks it whether commands are still admitted (the core refuses new commands by them).

        Only telemetry's age is configured: the classes that are never dropped keep the
        declaration's time-to-live, which only marks their oldest record as overdue."""
        from agent.store.streams import DEFAULT_LIMITS, ClassLimits, Limits, StreamClass

        ttl = {cls: DEFAULT_LIMITS.of(cls).ttl_s for cls in StreamClass}
        return Limits({
            StreamClass.CRITICAL: ClassLimits(self.critical_quota_bytes, ttl[StreamClass.CRITICAL]),
            StreamClass.NORMAL: ClassLimits(self.normal_quota_bytes, ttl[StreamClass.NORMAL]),
            StreamClass.BULK: ClassLimits(self.bulk_quota_bytes, float(self.telemetry_ttl_s)),
        })  # fmt: skip

    @property
    def tls(self) -> bool:
        return urlsplit(self.broker).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlsplit(self.broker).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.broker)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)


def _is_loopback_ip(host: str) -> bool:
    """An IP literal in 127.0.0.0/8 or ::1. Not the name localhost: a name can be made to resolve elsewhere."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Config(_Section):
    agent: AgentSection
    bus: BusSection
    modules: ModulesSection = Field(default_factory=ModulesSection)
    polling: PollingSection = Field(default_factory=PollingSection)
    api: ApiSection = Field(default_factory=ApiSection)
    safety: SafetyPolicy = Field(default_factory=SafetyPolicy)
    motion: MotionLimits = Field(default_factory=MotionLimits)
    safety_module: SafetyModuleSection = Field(default_factory=SafetyModuleSection)
    core: CoreSection = Field(default_factory=CoreSection)
    watchdog: WatchdogSection = Field(default_factory=WatchdogSection)
    estop_gpio: EstopGpioSection = Field(default_factory=EstopGpioSection)
    upstream: UpstreamSection = Field(default_factory=UpstreamSection)
    source: str = Field(default="", exclude=True)

    @property
    def data_path(self) -> Path:
        return Path(self.agent.data_dir)

    @property
    def core_socket_path(self) -> Path:
        return Path(self.core.socket) if self.core.socket else self.data_path / "core.sock"

    @model_validator(mode="after")
    def _socket_fits(self) -> Config:
        path = str(self.core_socket_path)
        if len(os.fsencode(path)) > SOCKET_PATH_MAX:
            raise ValueError(
                f"core socket path {path!r} is longer than {SOCKET_PATH_MAX} bytes; set [core] socket to a shorter path"
            )
        return self

    @property
    def profiles_path(self) -> Path:
        return Path(self.bus.profiles_dir) if self.bus.profiles_dir else REPO_ROOT / "config" / "profiles"


def resolve_path(explicit: str | None) -> Path:
    """--config wins, then $OHT_AGENT_CONFIG, then the shipped config/agent.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG


def _format_loc(loc: tuple[object, ...]) -> str:
    return ".".join(str(p) for p in loc if not isinstance(p, int) or True)


def load_config(path: Path | str) -> Config:
    """Read and validate `path`; raise ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the file: {exc.strerror or exc}"]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"TOML syntax: {exc}"]) from exc
    return validate_config(data, path)


def validate_config(data: dict[str, object], path: Path | str = "<memory>") -> Config:
    try:
        cfg = Config.model_validate({**data, "source": str(path)})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = _format_loc(err["loc"]) or "(top level)"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see config/agent.toml for every key)"
            elif err["type"] == "missing":
                msg = "required key is missing"
            got = err.get("input")
            detail = (
                f" (got {got!r})"
                if err["type"] not in ("missing", "extra_forbidden") and not isinstance(got, dict)
                else ""
            )
            problems.append(f"{key}: {msg}{detail}")
        raise ConfigError(path, problems) from None
    return cfg
