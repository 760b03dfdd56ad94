"""Settings of the local API: lifetimes, throttles, limits. Safe defaults; no test switches."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent.auth.service import AuthLimits
from agent.auth.throttle import ThrottleLimits

if TYPE_CHECKING:
    from agent.config import Config

__all__ = ["ApiSettings"]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("oht-agent")
    except Exception:
        return "0+unknown"


@dataclass(frozen=True)
class ApiSettings:
    """What `create_app` needs besides the core and the database.

    `cors_origins` is empty by default: the status page is served by the agent itself, so no
    other origin needs to call the API from a browser.

    `max_in_flight` bounds the requests the app works on at once, so a flood queues at the door
    instead of inside every handler (each turn of the gateway's loop stays short, and the E-stop,
    which never waits, gets through it). Requests beyond the bound wait (at most
    `admission_wait_s`, then 503 API_BUSY); the E-stop and the health probes never wait.
    Logins have slots of their own (`login_in_flight`): a password check waits for one of the
    hashing threads, and a flood of failed logins holding the general slots kept a technician's
    reset waiting for seconds (bench/isolation.py).
    """

    agent_id: str
    data_dir: Path
    version: str = field(default_factory=_version)
    session_lifetime_s: float = 8 * 3600.0
    session_idle_s: float = 30 * 60.0
    ticket_ttl_s: float = 10.0
    login_account_failures: int = 5
    login_ip_failures: int = 20
    login_window_s: float = 15 * 60.0
    login_account_delay_max_s: float = 30.0
    max_body_bytes: int = 64 * 1024
    cors_origins: tuple[str, ...] = ()
    stream_max_hz: float = 10.0
    stream_max_clients: int = 32
    stream_send_timeout_s: float = 2.0
    stream_recheck_s: float = 5.0
    audit_anonymous_per_minute: int = 60
    max_in_flight: int = 8
    login_in_flight: int = 4
    admission_wait_s: float = 5.0

    def __post_init__(self) -> None:
        if self.session_lifetime_s <= 0 or self.session_idle_s <= 0 or self.ticket_ttl_s <= 0:
            raise ValueError("session lifetime, idle timeout and ticket lifetime must be positive")
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be at least 1024")
        if not 0 < self.stream_max_hz <= 50:
            raise ValueError("stream_max_hz must be in (0, 50]")
        if self.max_in_flight < 1 or self.login_in_flight < 1 or self.admission_wait_s <= 0:
            raise ValueError("max_in_flight, login_in_flight and admission_wait_s must be positive")
        if "*" in self.cors_origins:
            raise ValueError("a wildcard CORS origin is not allowed; list the origins")

    @property
    def auth_limits(self) -> AuthLimits:
        return AuthLimits(
            session_lifetime_s=self.session_lifetime_s,
            session_idle_s=self.session_idle_s,
            ticket_ttl_s=self.ticket_ttl_s,
            throttle=ThrottleLimits(
                account_failures=self.login_account_failures,
                ip_failures=self.login_ip_failures,
                window_s=self.login_window_s,
                account_delay_max_s=min(self.login_account_delay_max_s, self.login_window_s),
            ),
        )

    @classmethod
    def from_config(cls, config: Config) -> ApiSettings:
        """Settings for the daemon: identity, data directory and the `[api]` section."""
        api = config.api
        return cls(
            agent_id=config.agent.id,
            data_dir=config.data_path,
            session_lifetime_s=float(api.session_lifetime_s),
            session_idle_s=float(api.session_idle_s),
            login_account_failures=api.login_account_failures,
            login_ip_failures=api.login_ip_failures,
            login_window_s=float(api.login_window_s),
            login_account_delay_max_s=float(api.login_account_delay_max_s),
            cors_origins=tuple(api.cors_origins),
        )
