"""The core process's composition root: builds its components, starts and supervises their tasks,
shuts down safely. (The gateway's is `agent/gateway.py`; `oht-agent run` starts both.)

Start order: the bus master (it owns the port and reconnects by itself), then the travel driver
at its configured address alone: identified, bound and its outputs driven to the safe state and
confirmed (a driver left running by a crashed agent must not wait for a database check whose
time grows with the database, nor for absent addresses to time out). Then the database (motion
commands still queued from before are withdrawn), the controller (state machine, supervisor,
control loop), the core socket for the gateway (`agent/link/server.py`) and discovery of the
other modules. A mandatory module that is missing is looked for again every
`bus.rediscover_s`; nothing is ever bound by guess. On SIGTERM motion is stopped and confirmed,
STOPPING=1 is sent, and the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from agent.config import Config
from agent.safety.estop_input import EstopChannels
from agent.safety.module_config import LockedWriter, ModuleConfigGuard
from agent.safety.stop import StopOutcome, StopPath
from agent.supervision import freeze_startup_heap, stop_on_signals
from drivers.discovery import DiscoveryReport, discover
from drivers.gpio import GpioInputs, GpioUnavailable
from drivers.modbus.master import BusMaster
from drivers.modbus.schedule import Priority
from drivers.polling import Binding, ModulePoller
from drivers.profiles import Profile, load_profiles
from drivers.snapshots import Quality, SnapshotBoard
from drivers.watchdog import HardwareWatchdog, SdNotifier

if TYPE_CHECKING:
    from agent.control.controller import Controller
    from agent.link.server import CoreServer
    from agent.store.database import Database

log = logging.getLogger("oht.runtime")

# Phase offsets spread the roles' polls over the cycle so they do not all fall due together.
ROLE_PHASE_S = {"safety": 0.0, "travel": 0.013, "power": 0.029, "dock": 0.041}


def import_controller() -> None:
    """Load the controller (state machine, executor) and the store: called in a worker thread."""
    import agent.control.controller
    import agent.link.server
    import agent.store.database  # noqa: F401


def allowed_uids(gateway_user: str) -> set[int]:
    """Who may connect to the core socket: this process's user, root, and the gateway's user."""
    import pwd

    uids = {os.getuid(), 0}
    if gateway_user:
        try:
            uids.add(pwd.getpwnam(gateway_user).pw_uid)
        except KeyError:
            log.error("[core] gateway_user %r does not exist: only uids %s may connect", gateway_user, sorted(uids))
    return uids


class Runtime:
    """The running agent. `run()` until `request_stop()` (SIGTERM/SIGINT) or cancellation."""

    def __init__(self, config: Config, *, health_log_s: float = 60.0) -> None:
        self.config = config
        self.health_log_s = health_log_s
        self.profiles: dict[str, Profile] = load_profiles(config.profiles_path)
        bus = config.bus
        self.master = BusMaster(
            bus.port,
            baudrate=bus.baudrate,
            parity=bus.parity,
            stopbits=bus.stopbits,
            read_retries=bus.read_retries,
            write_retries=bus.write_retries,
            fail_threshold=bus.fail_threshold,
            queue_limit=bus.queue_limit,
            on_event=self._on_bus_event,
        )
        self.board = SnapshotBoard()
        self.pollers: dict[str, ModulePoller] = {}
        self.safety_config: ModuleConfigGuard | None = None
        self.last_report: DiscoveryReport | None = None
        self.db: Database | None = None
        self.controller: Controller | None = None
        self.notifier = SdNotifier()
        self.link: CoreServer | None = None
        self.estop_channels: EstopChannels | None = None
        self.gpio: GpioInputs | None = None
        self._stop = asyncio.Event()
        self.stop_path = StopPath.from_policy(self.master, config.safety)
        self._tasks: list[asyncio.Task[Any]] = []
        self._reported: set[str] = set()

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        # The loop's thread is the one that must not wait: a worker thread (the store's, a
        # to_thread) hands the interpreter back after 1 ms instead of Python's default 5 ms, so a
        # phase-locked poll is not sent after the safety module's tick because a commit held it.
        sys.setswitchinterval(0.001)
        stop_on_signals(self.request_stop)
        log.info(
            "agent %s starting: bus %s at %d baud", self.config.agent.id, self.config.bus.port, self.config.bus.baudrate
        )
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.shutdown()

    async def start(self) -> None:
        cfg = self.config
        self.config.data_path.mkdir(parents=True, exist_ok=True)
        await self.master.start()
        initial_stop = await self._stop_travel_first()
        # The controller, the store and the HTTP stack take longer to import than the stop path:
        # they are imported in a thread once the driver is safe, neither before that nor on the loop.
        await asyncio.to_thread(import_controller)
        from agent.store.database import Database  # loaded by import_controller

        self.db = Database(cfg.data_path)
        self._build_controller()
        assert self.controller is not None
        if initial_stop is not None:
            self.controller.adopt_initial_stop(initial_stop)
        report = await self.db.start()
        if report.interrupted_commands:
            log.warning(
                "%d command(s) were running when the agent stopped: marked interrupted, not re-run",
                report.interrupted_commands,
            )
        # Motion never resumes by itself: a move queued before the core stopped is not started by
        # the next core (other queued commands still run, once).
        await self.controller.withdraw_queued_motion()
        # Distances are judged for the sensors the module must have on, not for what it reports.
        self.controller.supervisor.judged_sensors = cfg.safety_module.enabled_sensors()
        if report.corrupt_moved_to is not None:
            # Latched until a technician has looked: the old file is kept for analysis.
            self.controller.supervisor.record_event(
                "STORE_CORRUPT", f"corrupt database moved to {report.corrupt_moved_to}"
            )
        await self.controller.start()
        await self._serve_link()
        self._open_gpio()
        self._tasks = [
            asyncio.create_task(self._discovery_loop(), name="discovery"),
            asyncio.create_task(self._health_loop(), name="health-log"),
        ]
        self._supervise_tasks()

    def _build_controller(self) -> None:
        from agent.control.controller import Controller

        cfg = self.config
        assert self.db is not None
        estop_state = None
        if cfg.estop_gpio.enabled:
            # Until the lines are read the input counts as pressed: when in doubt, stop.
            self.estop_channels = EstopChannels(len(cfg.estop_gpio.lines), cfg.estop_gpio.discrepancy_ms / 1000)
            estop_state = self.estop_channels.state
        hw_watchdog = None
        if cfg.watchdog.device:
            hw_watchdog = HardwareWatchdog(cfg.watchdog.device, cfg.watchdog.timeout_s)
            hw_watchdog.open()
        self.controller = Controller(
            agent_id=cfg.agent.id,
            hw=self,
            db=self.db,
            policy=cfg.safety,
            stop_path=self.stop_path,
            mandatory=list(cfg.modules.mandatory),
            ready_check=self.ready,
            notifier=self.notifier,
            hw_watchdog=hw_watchdog,
            estop_input=estop_state,
            motion=cfg.motion,
            outbox_limits=cfg.upstream.outbox_limits(),
        )

    async def _stop_travel_first(self, timeout_s: float = 1.5) -> asyncio.Task[StopOutcome] | None:
        """Identify and bind the travel driver at its configured address alone, and stop it.

        Returns the start-up stop (for the controller to adopt), having waited at most `timeout_s`
        for its confirmation; None if no driver answered there yet (the discovery loop keeps
        looking for it, and binding it then stops it first).
        """
        deadline = time.monotonic() + timeout_s
        while not self.master.port_up and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if not self.master.port_up:
            return None
        address = self.config.modules.travel
        report = await discover(self.master, [address], self.profiles, {"travel": address})
        self._log_report(report)
        binding = report.bindings.get("travel")
        if binding is None:
            return None
        self._bind(binding)  # binds the stop path too
        # In the same step as the bind: the bus task runs no poll before the stop is queued.
        initial = self.stop_path.request("start-up: outputs to the safe state")
        try:
            outcome = await asyncio.wait_for(asyncio.shield(initial), max(0.05, deadline - time.monotonic()))
        except TimeoutError:
            log.error("start-up stop of the travel driver not yet confirmed; still trying")
            return initial
        log.info(
            "start-up: travel outputs confirmed safe %.0f ms after the stop was requested (monotonic %.3f)",
            outcome.confirm_ms or 0,
            outcome.confirmed_at or 0.0,
        )
        return initial

    def _supervise_tasks(self) -> None:
        """Every long-lived task is supervised by the controller: if one ends, the watchdogs starve."""
        assert self.controller is not None and self.db is not None
        supervisor = self.controller.tasks
        supervisor.watch(self.master.task, "bus-master")
        supervisor.watch(self.db.writer_task, "store-writer")
        for task in self._tasks:
            supervisor.watch(task)

    def _open_gpio(self) -> None:
        cfg = self.config.estop_gpio
        if self.estop_channels is None:
            return
        self.gpio = GpioInputs(
            cfg.chip, cfg.lines, active_low=cfg.active_low, debounce_ms=cfg.debounce_ms, on_change=self._on_gpio
        )
        try:
            self._on_gpio(self.gpio.open(), time.monotonic())
            log.info("E-stop input on %s lines %s", cfg.chip, cfg.lines)
        except GpioUnavailable as exc:
            self.gpio = None
            log.error("%s: the E-stop input stays active until it can be read. Hint: %s", exc, exc.hint)

    def _on_gpio(self, values: tuple[bool, ...], at: float) -> None:
        assert self.estop_channels is not None
        self.estop_channels.feed(values, at)
        if self.controller is not None:
            self.controller.supervisor.evaluate()

    async def _serve_link(self) -> None:
        """Listen for the gateway on the core socket (the core's only socket besides the bus and sd_notify)."""
        from agent.link.server import CoreServer

        assert self.controller is not None
        cfg = self.config.core
        self.link = CoreServer(
            self.controller,
            self.config.core_socket_path,
            allowed_uids=allowed_uids(cfg.gateway_user),
            rate=cfg.request_rate,
            burst=cfg.request_burst,
            max_inflight=cfg.max_inflight,
            view_interval_s=cfg.view_interval_ms / 1000,
        )
        await self.link.start()

    async def shutdown(self) -> StopOutcome | None:
        """Stop the carriage and every task, close the bus and the database; returns the final stop."""
        log.info("stopping")
        outcome: StopOutcome | None = None
        if self.controller is not None:
            outcome = await self.controller.shutdown()
            if outcome is not None:
                log.info("shutdown stop %s", "confirmed" if outcome.confirmed else "NOT confirmed")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.link is not None:
            await self.link.stop()
        if self.gpio is not None:
            self.gpio.close()
        if self.safety_config is not None:
            self.safety_config.uninstall()
        for poller in self.pollers.values():
            poller.uninstall()
        await self.master.close()
        if self.db is not None:
            await self.db.close()
        self.notifier.close()
        log.info("stopped")
        return outcome

    # ------------------------------------------------------------------ discovery and binding
    def mandatory_missing(self) -> list[str]:
        return [r for r in self.config.modules.mandatory if r not in self.pollers]

    def ready(self) -> tuple[bool, list[str]]:
        """Ready when the port is open and every mandatory role is bound with fresh readings."""
        reasons: list[str] = []
        if not self.master.port_up:
            reasons.append(f"serial port {self.config.bus.port} is not open")
        now = time.monotonic()
        for role in self.config.modules.mandatory:
            poller = self.pollers.get(role)
            if poller is None:
                reasons.append(f"{role} module not bound")
                continue
            if poller.fast_quality(now) is not Quality.FRESH:
                reasons.append(f"{role} module readings are not fresh")
            if role == "safety" and not self.safety_config_verified():
                reasons.append("safety module configuration not verified")
        return (not reasons, reasons)

    def safety_config_verified(self) -> bool:
        """The bound safety module holds `[safety_module]`, read back since bind or the last write."""
        if self.safety_config is None:
            return "safety" not in self.config.modules.mandatory
        return self.safety_config.verified

    async def _discovery_loop(self) -> None:
        first = True
        while True:
            missing = [r for r in self.config.modules.role_map() if r not in self.pollers]
            if missing:
                await self._wait_port()
                role_map = {r: a for r, a in self.config.modules.role_map().items() if r in missing}
                bound = {p.binding.address for p in self.pollers.values()}
                scan = [a for a in self.config.bus.scan if a not in bound] if first else list(role_map.values())
                report = await discover(self.master, scan, self.profiles, role_map)
                self.last_report = report
                self._log_report(report)
                # The travel driver first: its outputs go to the safe state before anything else.
                for _role, binding in sorted(report.bindings.items(), key=lambda rb: rb[0] != "travel"):
                    self._bind(binding)
                if first:
                    freeze_startup_heap()
                first = False
            await asyncio.sleep(self.config.bus.rediscover_s)

    async def _wait_port(self) -> None:
        while not self.master.port_up:
            await asyncio.sleep(0.05)

    def _bind(self, binding: Binding) -> None:
        cfg = self.config.polling
        interval_ms = {
            "safety": cfg.safety_ms,
            "travel": cfg.travel_idle_ms,
            "power": cfg.power_ms,
            "dock": cfg.dock_ms,
        }[binding.role]
        poller = ModulePoller(
            self.master,
            self.board,
            binding,
            interval_s=interval_ms / 1000.0,
            slow_interval_s=cfg.identity_ms / 1000.0,
            config_interval_s=self.config.safety_module.verify_interval_ms / 1000.0,
            phase_s=ROLE_PHASE_S.get(binding.role, 0.0),
            priority=Priority.SAFETY if binding.role == "safety" else Priority.TELEMETRY,
        )
        if binding.role == "safety" and self.controller is not None:
            # Its read-backs are placed before the poller's background reads: commissioning must
            # end within the start-up time, and the slow reads can wait a second.
            self._guard_safety_config(poller)
        poller.install()
        self.pollers[binding.role] = poller
        log.info("bound %s -> address %d (%s)", binding.role, binding.address, binding.profile.name)
        if binding.role == "travel":
            # The one place the stop path learns its driver. Its outputs go to the safe state
            # before anything else: by the controller once it runs, by the start-up path (which
            # stops it itself) before.
            self.stop_path.bind(binding.address, binding.profile)
            if self.controller is not None:
                self.controller.bind_travel()

    def _guard_safety_config(self, poller: ModulePoller) -> None:
        """Apply `[safety_module]` to the module just bound, then keep reading it back."""
        assert self.controller is not None
        binding = poller.binding
        cfg = self.config.safety_module
        if self.safety_config is not None:  # bound again: the old guard's reads and listener go
            self.safety_config.uninstall()
            self.board.remove_listener(self.safety_config.observe)
        self.safety_config = ModuleConfigGuard(
            binding,
            cfg.expected_registers(),
            schedule=self.master.schedule,
            faults=self.controller.supervisor,
            write=LockedWriter(self.master.schedule, binding),
            interval_s=cfg.verify_interval_ms / 1000.0,
            reapply_after_reboot=cfg.reapply_after_reboot,
            phase_s=ROLE_PHASE_S["safety"],
            request_read=poller.refresh_config,
        )
        self.safety_config.install()
        self.board.add_listener(self.safety_config.observe)

    def set_moving(self, moving: bool) -> None:
        """Travel feedback at the moving rate while motion is commanded, the idle rate otherwise."""
        poller = self.pollers.get("travel")
        if poller is not None:
            cfg = self.config.polling
            poller.set_interval((cfg.travel_moving_ms if moving else cfg.travel_idle_ms) / 1000.0)

    def _log_report(self, report: DiscoveryReport) -> None:
        for finding in report.findings:
            if finding.identity is not None and finding.problem is None:
                ident = finding.identity
                log.info(
                    "address %d: module type %d firmware %s -> profile %s",
                    finding.address,
                    ident.module_type,
                    ident.firmware_text,
                    finding.profile.name if finding.profile else "?",
                )
        for problem in report.problems:
            if problem not in self._reported:
                self._reported.add(problem)
                log.warning("discovery: %s", problem)
        for finding in report.findings:
            if finding.problem and finding.hint:
                key = f"hint:{finding.address}:{finding.problem_code}"
                if key not in self._reported:
                    self._reported.add(key)
                    log.warning(
                        "address %d: %s (%s). Hint: %s",
                        finding.address,
                        finding.problem,
                        finding.problem_code,
                        finding.hint,
                    )

    # ------------------------------------------------------------------ health
    def _on_bus_event(self, kind: str, info: dict[str, Any]) -> None:
        if kind == "port_up":
            log.info("serial port %s open", info.get("path"))
        elif kind == "port_down":
            log.error("serial port %s lost: %s", info.get("path"), info.get("reason"))
        elif kind == "port_unavailable":
            log.error("serial port %s unavailable: %s (retrying)", info.get("path"), info.get("reason"))
        elif kind == "slave_offline":
            log.error(
                "module at address %s set aside: %s (%s)", info.get("address"), info.get("reason"), info.get("code")
            )
        elif kind == "slave_online":
            log.info("module at address %s answers again", info.get("address"))

    def health(self) -> dict[str, Any]:
        """Port, bus and per-module link figures for the periodic health line (same builder as the status)."""
        from agent.control.status_view import module_summary

        now = time.monotonic()
        stats = self.master.stats_dict()
        modules = {
            role: module_summary(self, poller, fresh=poller.fast_quality(now) is Quality.FRESH)
            for role, poller in self.pollers.items()
        }
        return {"port_up": stats["port_up"], "bus": stats["bus"], "modules": modules}

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_log_s)
            h = self.health()
            parts = [
                f"{role}@{m['address']} {m['quality']} p50={m['rtt_p50_ms']}ms p99={m['rtt_p99_ms']}ms "
                f"timeouts={m['timeouts']} crc={m['crc_errors']}"
                for role, m in sorted(h["modules"].items())
            ]
            log.info(
                "health: port=%s overruns=%s | %s",
                "up" if h["port_up"] else "DOWN",
                h["bus"]["poll_overruns"],
                "; ".join(parts) or "no module bound",
            )
