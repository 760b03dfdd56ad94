"""Command line of the firmware simulator (``python -m drivers.sim``, ``oht-agent sim``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from drivers.sim.registers import ProfileError, load_profile

#: config/profiles of the repository this file lives in (drivers/sim/main.py -> repo root).
DEFAULT_PROFILES = Path(__file__).resolve().parents[2] / "config" / "profiles"
DEFAULT_SLAVES = ("2:power-v2", "3:travel-drvfw", "4:dock-readonly", "5:safety-safefw")


def _slave_spec(text: str) -> tuple[int, str]:
    addr, sep, profile = text.partition(":")
    if not sep or not profile:
        raise argparse.ArgumentTypeError(f"expected ADDR:PROFILE, got {text!r}")
    try:
        unit = int(addr, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad slave address in {text!r}") from None
    if not 1 <= unit <= 247:
        raise argparse.ArgumentTypeError(f"slave address must be 1..247, got {unit}")
    return unit, profile


def _period_spec(text: str) -> tuple[int, float]:
    addr, sep, ms = text.partition(":")
    try:
        unit, period = int(addr, 0), float(ms)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ADDR:MS, got {text!r}") from None
    if not sep or period < 0:
        raise argparse.ArgumentTypeError(f"expected ADDR:MS with MS >= 0, got {text!r}")
    return unit, period


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The simulator's arguments; pass a (sub)parser to have them added to it."""
    if parser is None:
        parser = argparse.ArgumentParser(
            prog="python -m drivers.sim",
            description="OHT-50 slave firmware simulator: Modbus RTU on a new pty, faults over a control socket.",
        )
    parser.add_argument("--link", required=True, help="symlink to create for the pty slave device (the agent's port)")
    parser.add_argument("--control", help="Unix socket path of the control channel (default: LINK.ctl)")
    parser.add_argument("--profiles", default=str(DEFAULT_PROFILES), help="register profile directory")
    parser.add_argument(
        "--slave",
        action="append",
        type=_slave_spec,
        metavar="ADDR:PROFILE",
        help=f"serve PROFILE at ADDR (repeatable; default {' '.join(DEFAULT_SLAVES)})",
    )
    parser.add_argument(
        "--wire-baud",
        type=int,
        default=0,
        metavar="N",
        help="emulate wire time at N baud, 8N1 (0 = off, replies at once)",
    )
    parser.add_argument(
        "--service-period",
        action="append",
        type=_period_spec,
        default=[],
        metavar="ADDR:MS",
        help="override a slave's Modbus service period (default from its profile)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for tick phases and fault rates")
    parser.add_argument(
        "--realtime",
        type=int,
        default=0,
        metavar="PRIO",
        help="run at SCHED_FIFO priority PRIO (1..99) when the system allows it (0 = ordinary, the default):"
        " the modules have their own microcontrollers, so a busy test machine must not make them look dead",
    )
    parser.add_argument("--log-level", default="WARNING", help="log level on stderr (default WARNING)")
    return parser


def _take_realtime(priority: int) -> None:
    """SCHED_FIFO at `priority` if allowed; otherwise say so once and go on at the ordinary policy."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (PermissionError, OSError, ValueError) as exc:
        logging.getLogger("sim").warning("staying at the ordinary priority: SCHED_FIFO %d refused (%s)", priority, exc)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run the simulator for parsed arguments (shared with ``oht-agent sim``); returns the exit code."""
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        stream=sys.stderr,
        format="sim %(levelname)s %(name)s: %(message)s",
    )
    if args.realtime:
        _take_realtime(args.realtime)
    specs = args.slave or [_slave_spec(s) for s in DEFAULT_SLAVES]
    units = [u for u, _ in specs]
    if len(set(units)) != len(units):
        print(f"sim: duplicate slave address in {units}", file=sys.stderr)
        return 2
    try:
        slaves = [(unit, load_profile(args.profiles, name)) for unit, name in specs]
    except ProfileError as exc:
        print(f"sim: {exc}", file=sys.stderr)
        return 2
    periods = dict(args.service_period)
    unknown = sorted(set(periods) - set(units))
    if unknown:
        print(f"sim: --service-period for addresses not served: {unknown}", file=sys.stderr)
        return 2
    if args.wire_baud < 0:
        print("sim: --wire-baud must be >= 0", file=sys.stderr)
        return 2
    control = args.control or args.link + ".ctl"
    if len(control.encode()) > 107:
        print(f"sim: control socket path too long for AF_UNIX (max 107 bytes): {control}", file=sys.stderr)
        return 2

    from drivers.sim.server import Simulator, print_ready

    sim = Simulator(args.link, control, slaves, wire_baud=args.wire_baud, service_periods=periods, seed=args.seed)
    try:
        sim.start()
    except OSError as exc:
        print(f"sim: cannot start: {exc}", file=sys.stderr)
        sim.stop()
        return 1
    print_ready(sim)
    try:
        sim.run()
    finally:
        sim.stop()
    return 0
