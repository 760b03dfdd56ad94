"""The `oht-agent` command line (also `python -m agent`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# Only the standard library at import time: `oht-agent run` hands over to the launcher before
# the configuration's imports, so a restarted agent reaches its start-up stop sooner.

DESCRIPTION = """\
Edge agent for the OHT-50 overhead-hoist carriage: Modbus RTU bus master for the power,
safety, travel-motor and dock modules, safety supervisor, durable command buffer, local API.
Two processes: the core (bus, safety, control; no network) and the gateway (local API).
"""

EPILOG = """\
configuration: --config PATH, else $OHT_AGENT_CONFIG, else config/agent.toml

examples:
  oht-agent config check --config /etc/oht-agent/agent.toml
  oht-agent run --config /etc/oht-agent/agent.toml      (core and gateway, supervised)
  oht-agent core --config /etc/oht-agent/agent.toml     (the oht-agent-core unit)
  oht-agent gateway --config /etc/oht-agent/agent.toml  (the oht-agent-gateway unit)
  oht-agent sim --link /tmp/oht-sim/tty --control /tmp/oht-sim/ctl
  oht-agent demo
"""


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", metavar="PATH", help="configuration file (default: $OHT_AGENT_CONFIG or config/agent.toml)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oht-agent", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sub.add_parser("run", help="run the core and the gateway, supervised (see `oht-agent run --help`)", add_help=False)
    core = sub.add_parser(
        "core",
        help="run the core process: bus, safety, control, store; no network",
        description="Run the real-time core until SIGTERM: it owns the serial port, the watchdogs and the "
        "store's command tables, and listens only on its Unix socket ([core] socket) for the gateway.",
    )
    _add_config(core)
    gateway = sub.add_parser(
        "gateway",
        help="run the gateway process: the local HTTP API, connected to the core's socket",
        description="Run the gateway until SIGTERM: HTTP/TLS, authentication, users, the status page, metrics "
        "and the stream. It has no access to the bus; it answers 503 CORE_UNAVAILABLE while the core is away.",
    )
    _add_config(gateway)

    sim = sub.add_parser(
        "sim",
        help="run the firmware simulator on a new pty",
        description=(
            "Start the OHT-50 slave-module simulator on a new pseudo-terminal (a test peer speaking real Modbus RTU)."
        ),
        add_help=False,
    )
    sim.add_argument("sim_args", nargs=argparse.REMAINDER, help="simulator options (see `oht-agent sim --help`)")

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION")
    config_sub.required = True
    check = config_sub.add_parser("check", help="validate a configuration file: exit 0, or 1 with every problem listed")
    _add_config(check)

    demo = sub.add_parser(
        "demo",
        help="simulator plus agent polling it, until Ctrl-C",
        description="Start the simulator on a new pty and the agent against it, with a temporary data directory.",
    )
    demo.add_argument("--dir", metavar="PATH", help="working directory for the demo (default: a new temporary one)")

    from agent import admin_cli, store_cli, sync_cli

    store_cli.add_parsers(sub, _add_config)
    admin_cli.add_parsers(sub)
    sync_cli.add_parsers(sub, _add_config)
    return parser


def cmd_config_check(path_arg: str | None) -> int:
    from agent.config import load_config, resolve_path
    from oht_errors import CodedError

    path = resolve_path(path_arg)
    try:
        cfg = load_config(path)
        from drivers.profiles import load_profiles

        profiles = load_profiles(cfg.profiles_path)
    except CodedError as exc:
        print(f"{exc.code}: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    print(
        f"{path}: ok (agent {cfg.agent.id}, bus {cfg.bus.port} @ {cfg.bus.baudrate}, {len(profiles)} register profiles)"
    )
    return 0


def _load(path_arg: str | None):  # type: ignore[no-untyped-def]
    from agent.config import ConfigError, load_config, resolve_path
    from agent.logs import setup_logging

    try:
        cfg = load_config(resolve_path(path_arg))
    except ConfigError as exc:
        print(f"{exc.code}: {exc.message}\nhint: {exc.hint}", file=sys.stderr)
        return None
    setup_logging(cfg.agent.log_level, cfg.agent.log_format)
    return cfg


def cmd_core(path_arg: str | None) -> int:
    from oht_errors import CodedError

    cfg = _load(path_arg)
    if cfg is None:
        return 1
    from agent.runtime import Runtime

    try:
        runtime = Runtime(cfg)
    except CodedError as exc:
        print(f"{exc.code}: {exc.message}\nhint: {exc.hint}", file=sys.stderr)
        return 1
    import asyncio

    asyncio.run(runtime.run())
    return 0


def cmd_gateway(path_arg: str | None) -> int:
    from oht_errors import CodedError

    cfg = _load(path_arg)
    if cfg is None:
        return 1
    import asyncio
    import logging

    from agent.gateway import Gateway

    # The gateway's loop on uvloop when it is installed: the HTTP stack serves more requests per
    # second of CPU on it (bench/api.py). Only the gateway: the core keeps the standard loop.
    try:
        import uvloop
    except ImportError as exc:
        run, why = asyncio.run, f"asyncio (uvloop not importable: {exc})"
    else:
        run, why = uvloop.run, "uvloop"
    logging.getLogger("oht.gateway").info("event loop: %s", why)
    try:
        run(Gateway(cfg).run())
    except CodedError as exc:
        print(f"{exc.code}: {exc.message}\nhint: {exc.hint}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["sim"]:
        from drivers.sim.main import main as sim_main

        return sim_main(args_list[1:])
    if args_list[:1] == ["run"]:
        from agent.launcher import main as launch

        return launch(args_list[1:])  # writes nothing itself; its children come through here
    # Before anything is written: no file the agent makes is readable by other accounts.
    from agent.store.private_files import restrict_umask

    restrict_umask()
    args = build_parser().parse_args(args_list)
    if args.command == "core":
        return cmd_core(args.config)
    if args.command == "gateway":
        return cmd_gateway(args.config)
    if args.command == "config":
        return cmd_config_check(args.config)
    if args.command == "demo":
        from agent.demo import run_demo

        return run_demo(args.dir)
    from agent import admin_cli, store_cli, sync_cli

    for handler in (store_cli.dispatch, admin_cli.dispatch, sync_cli.dispatch):
        code = handler(args)
        if code is not None:
            return code
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
