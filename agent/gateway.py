"""The gateway process: the local HTTP API and upstream sync, joined to the core by its socket.

It owns no device: it cannot open the serial port or the watchdog, and nothing it does can delay
the core's loop (the core admits its requests at a bounded rate). It opens the database the core
created, attached (no lock, no migration; see `Database(attach=True)`): users, sessions, API keys
and the audit rows of its own actions are written here; commands, transitions and the outbox,
and the audit rows of the changes the core makes, are written by the core.

While the core is away the gateway keeps serving: `/healthz` reports the gateway itself,
`/readyz` answers 503 with the reason, and every robot route answers 503 `CORE_UNAVAILABLE`.
It reconnects by itself. READY=1 goes to systemd once the API listens; WATCHDOG=1 is sent while
the gateway's own tasks run.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from agent.config import Config
from agent.supervision import TaskSupervisor, freeze_startup_heap, stop_on_signals
from drivers.watchdog import SdNotifier
from oht_errors import CodedError

if TYPE_CHECKING:
    from agent.api.server import ApiServer
    from agent.link.client import CoreClient
    from agent.store.database import Database
    from agent.sync.service import UpstreamService

__all__ = ["Gateway"]

log = logging.getLogger("oht.gateway")

# The database is the core's to create and migrate: wait for it instead of failing.
_WAIT_FOR_CORE = frozenset(
    {"STORE_NOT_CREATED", "STORE_SCHEMA_PENDING", "STORE_AUDIT_KEY_MISSING", "STORE_LOCKED", "STORE_BUSY"}
)


def _import_api() -> None:
    import agent.api.app
    import agent.api.server
    import agent.api.settings
    import agent.link.client  # noqa: F401


def _upstream_connected(service: UpstreamService) -> bool | None:
    """For `oht_upstream_connected`: the broker link's state (None before the sender exists)."""
    status = service.status()
    return None if status is None else status.uplink.connected


class Gateway:
    def __init__(self, config: Config, *, retry_s: float = 0.2) -> None:
        self.config = config
        self.retry_s = retry_s
        self.db: Database | None = None
        self.client: CoreClient | None = None
        self.api: ApiServer | None = None
        self.upstream: UpstreamService | None = None
        self.notifier = SdNotifier()
        self.tasks = TaskSupervisor(on_death=self._on_task_died)
        self._stop = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        stop_on_signals(self.request_stop)
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.shutdown()

    async def start(self) -> None:
        cfg = self.config
        # In a worker thread: where a test runs the gateway beside a core in one loop, the
        # seconds of FastAPI imports must not stall the core's control loop.
        await asyncio.to_thread(_import_api)
        from agent.api.app import create_app
        from agent.api.routes.control import early_estop_hook
        from agent.api.server import ApiServer
        from agent.api.settings import ApiSettings
        from agent.link.client import CoreClient

        self.db = await self._open_database()
        self.client = CoreClient(cfg.core_socket_path, self.db, agent_id=cfg.agent.id, retry_s=self.retry_s)
        self.client.start()
        app = create_app(self.client, self.db, ApiSettings.from_config(cfg))
        app.state.api.upstream_status = lambda: None if self.upstream is None else self.upstream.status()
        self.api = ApiServer(
            app, cfg.api.host, cfg.api.port, cfg.data_path,
            early_hook=early_estop_hook(app), tls_min_version=cfg.api.tls_min_version,
        )  # fmt: skip
        await self.api.start()
        extra = f" (TLS, certificate SHA-256 {self.api.fingerprint})" if self.api.tls else ""
        log.info("API serving on %s%s", self.api.url, extra)
        for task, name in (
            (self.client.task, "core-link"),
            (self.api.task, "api-server"),
            (self.db.writer_task, "store-writer"),
        ):
            if task is not None:
                self.tasks.watch(task, name)
        if cfg.upstream.enabled:
            await self._start_upstream()
        self.notifier.ready("serving the API")
        freeze_startup_heap()
        self._watchdog = asyncio.create_task(self._feed_watchdog(), name="gateway-watchdog")

    async def _start_upstream(self) -> None:
        """Upstream sync beside the API. A setup that cannot work (the device key, the TLS files)
        is logged with its code and leaves the API serving; the broker's own trouble never comes
        here, the link retries it."""
        from agent.sync.service import UpstreamService

        assert self.db is not None and self.client is not None
        service = UpstreamService(self.config, self.db, self.client)
        try:
            await service.start()
        except CodedError as exc:
            log.error("upstream sync is off: %s", exc)
            await service.stop()
            return
        self.upstream = service
        if self.api is not None:
            self.api.app.state.api.metrics.watch_upstream(lambda: _upstream_connected(service))
        for task, name in service.tasks:
            self.tasks.watch(task, name)

    async def _open_database(self) -> Database:
        from agent.store.database import Database

        logged = ""
        while True:
            db = Database(self.config.data_path, attach=True)
            try:
                await db.start()
                return db
            except CodedError as exc:
                if exc.code not in _WAIT_FOR_CORE:
                    raise
                if exc.code != logged:
                    log.warning("waiting for the core to open the database: %s", exc)
                    logged = exc.code
            await asyncio.sleep(self.retry_s)

    async def _feed_watchdog(self) -> None:
        interval = self.notifier.watchdog_interval_s
        if interval is None:
            return
        while True:
            await asyncio.sleep(interval)
            if self.tasks.healthy:
                self.notifier.watchdog()

    def _on_task_died(self, name: str, why: str) -> None:
        log.error("gateway task %s %s: the watchdog stops being fed", name, why)
        self.notifier.status(f"task {name} {why}")

    async def shutdown(self) -> None:
        self.tasks.stopping()
        self.notifier.stopping()
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        if self.api is not None:
            await self.api.stop()
        if self.upstream is not None:
            await self.upstream.stop()
        if self.client is not None:
            await self.client.stop()
        if self.db is not None:
            await self.db.close()
        self.notifier.close()
        log.info("gateway stopped")
