"""The control operations: fault injection, physical inputs and ground-truth queries.

Each ``op_<name>`` takes the decoded request and returns the response fields. Arguments are
checked strictly (a bool is not an int, a rate is within 0..1): a test that mistypes a request
gets an error it can see rather than a fault that silently never fires.

Ops (``addr`` null or absent = every slave where noted with *):
  ping                                   -> pid, link, pty, line_up, wire_baud, slaves
  silence        addr*, on=true, execute=false   receive, never answer (execute: still run writes)
  delay          addr*, ms, rate=1       reply ms later with probability rate (ms 0 clears)
  corrupt_crc    addr*, rate             reply with a wrong CRC with probability rate
  exception      addr*, code, rate=1     answer exception code instead of executing (0 clears)
  wrong_address  addr*, reply_as, rate=1 reply under another id, valid CRC (rate 0 clears)
  reboot         addr*, boot_ms=200      registers to defaults, deaf for boot_ms
  faults_clear                           every fault above off (and any reboot finished)
  estop          pressed, addr*          E-stop input of the safety module(s)
  obstacle       sensor 1-4, value, addr*   ANALOG_INPUT_n raw value on the safety module(s)
  set_di         addr*, di 1-4, value    DIn_STATUS on the safety module(s)
  set            addr, address, value    force a raw register (access rules bypassed)
  line           up                      close the pty and remove the link / new pty at the link
  wire           baud                    wire-time emulation (0 = off)
  service_period addr*, ms               Modbus service period (0 = answer at once)
  registers      addr                    -> registers {"<decimal address>": raw}
  read           addr, address, count=1  -> values [raw, ...]
  writes         addr*, since=0.0        -> writes [{t, t_applied, addr, fc, address, values,
                                            applied, exception}] with t > since (monotonic)
  clear_writes
  stats                                  -> slaves {"<addr>": counters, faults}, bus counters
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from drivers.sim.firmware import SafetyFirmware

if TYPE_CHECKING:
    from drivers.sim.device import SimSlave
    from drivers.sim.server import Simulator

_MISSING = object()


class RequestError(ValueError):
    """The request is malformed or names something that does not exist."""


def _int(req: dict[str, Any], key: str, lo: int, hi: int, default: Any = _MISSING) -> int:
    value = req.get(key, default)
    if value is _MISSING:
        raise RequestError(f"missing field {key!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"field {key!r} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise RequestError(f"field {key!r} must be within {lo}..{hi}, got {value}")
    return value


def _number(req: dict[str, Any], key: str, lo: float, hi: float, default: Any = _MISSING) -> float:
    value = req.get(key, default)
    if value is _MISSING:
        raise RequestError(f"missing field {key!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"field {key!r} must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise RequestError(f"field {key!r} must be within {lo}..{hi}, got {value}")
    return float(value)


def _bool(req: dict[str, Any], key: str, default: Any = _MISSING) -> bool:
    value = req.get(key, default)
    if value is _MISSING:
        raise RequestError(f"missing field {key!r}")
    if not isinstance(value, bool):
        raise RequestError(f"field {key!r} must be true or false, got {value!r}")
    return value


class Commands:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        method = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        if method is None:
            return {"ok": False, "error": f"unknown op {op!r}"}
        try:
            result = method(req)
        except RequestError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, **result}

    # --- selecting slaves ---
    def _slave(self, req: dict[str, Any], key: str = "addr") -> SimSlave:
        unit = _int(req, key, 0, 255)
        slave = self.sim.slaves.get(unit)
        if slave is None:
            raise RequestError(f"no simulated slave at address {unit} (have {sorted(self.sim.slaves)})")
        return slave

    def _targets(self, req: dict[str, Any]) -> list[SimSlave]:
        """``addr`` null or absent: every slave."""
        if req.get("addr") is None:
            return list(self.sim.slaves.values())
        return [self._slave(req)]

    def _safety(self, req: dict[str, Any]) -> list[SimSlave]:
        """``addr`` given: that slave (must be a safety module); absent: every safety module."""
        slaves = self._targets(req)
        found = [s for s in slaves if isinstance(s.firmware, SafetyFirmware)]
        if not found:
            raise RequestError("no safety module among the addressed slaves")
        return found

    # --- liveness ---
    def op_ping(self, req: dict[str, Any]) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "link": self.sim.link,
            "pty": self.sim.pty_name,
            "line_up": self.sim.line_up,
            "wire_baud": self.sim.wire_baud,
            "slaves": {str(u): s.profile.name for u, s in self.sim.slaves.items()},
        }

    # --- faults ---
    def op_silence(self, req: dict[str, Any]) -> dict[str, Any]:
        on = _bool(req, "on", True)
        execute = _bool(req, "execute", False)
        for slave in self._targets(req):
            slave.faults.silent = on
            slave.faults.silent_execute = on and execute
        return {}

    def op_delay(self, req: dict[str, Any]) -> dict[str, Any]:
        ms = _number(req, "ms", 0, 600_000)
        rate = _number(req, "rate", 0.0, 1.0, 1.0)
        for slave in self._targets(req):
            slave.faults.delay_ms = ms
            slave.faults.delay_rate = rate if ms > 0 else 0.0
        return {}

    def op_corrupt_crc(self, req: dict[str, Any]) -> dict[str, Any]:
        rate = _number(req, "rate", 0.0, 1.0)
        for slave in self._targets(req):
            slave.faults.corrupt_rate = rate
        return {}

    def op_exception(self, req: dict[str, Any]) -> dict[str, Any]:
        code = _int(req, "code", 0, 255)
        rate = _number(req, "rate", 0.0, 1.0, 1.0)
        for slave in self._targets(req):
            slave.faults.exception_code = code
            slave.faults.exception_rate = rate if code else 0.0
        return {}

    def op_wrong_address(self, req: dict[str, Any]) -> dict[str, Any]:
        rate = _number(req, "rate", 0.0, 1.0, 1.0)
        reply_as = _int(req, "reply_as", 0, 255, 0)
        if rate > 0 and reply_as == 0:
            raise RequestError("field 'reply_as' (1..255) is required when rate > 0")
        for slave in self._targets(req):
            slave.faults.reply_as = reply_as if rate > 0 else 0
            slave.faults.wrong_address_rate = rate
        return {}

    def op_reboot(self, req: dict[str, Any]) -> dict[str, Any]:
        boot_ms = _number(req, "boot_ms", 0, 600_000, 200)
        now = time.monotonic()
        for slave in self._targets(req):
            slave.reboot(now, boot_ms)
        return {}

    def op_faults_clear(self, req: dict[str, Any]) -> dict[str, Any]:
        for slave in self.sim.slaves.values():
            slave.faults.clear()
            slave.firmware.outputs_stuck = False
        return {}

    def op_freeze(self, req: dict[str, Any]) -> dict[str, Any]:
        """Reads of one register report a fixed value (``value`` null: thaw it)."""
        address = _int(req, "address", 0, 0xFFFF)
        value = req.get("value")
        for slave in self._targets(req):
            if value is None:
                slave.faults.frozen.pop(address, None)
            else:
                slave.faults.frozen[address] = _int(req, "value", 0, 0xFFFF)
        return {}

    def op_stuck_outputs(self, req: dict[str, Any]) -> dict[str, Any]:
        """The output stage ignores what is written (a welded driver): motion goes on as it was."""
        on = _bool(req, "on", True)
        for slave in self._targets(req):
            slave.firmware.outputs_stuck = on
        return {}

    # --- physical inputs ---
    def op_estop(self, req: dict[str, Any]) -> dict[str, Any]:
        pressed = _bool(req, "pressed")
        for slave in self._safety(req):
            assert isinstance(slave.firmware, SafetyFirmware)
            slave.firmware.press_estop(pressed)
        return {}

    def op_obstacle(self, req: dict[str, Any]) -> dict[str, Any]:
        sensor = _int(req, "sensor", 1, 4)
        value = _int(req, "value", 0, 0xFFFF)
        now = time.monotonic()
        for slave in self._safety(req):
            slave.bank.set(f"ANALOG_INPUT_{sensor}", value)
            slave.firmware.on_forced(slave.bank.address_of(f"ANALOG_INPUT_{sensor}") or 0, now)
        return {}

    def op_set_di(self, req: dict[str, Any]) -> dict[str, Any]:
        di = _int(req, "di", 1, 4)
        value = _int(req, "value", 0, 0xFFFF)
        now = time.monotonic()
        for slave in self._safety(req):
            slave.bank.set(f"DI{di}_STATUS", value)
            slave.firmware.on_forced(slave.bank.address_of(f"DI{di}_STATUS") or 0, now)
        return {}

    def op_set(self, req: dict[str, Any]) -> dict[str, Any]:
        slave = self._slave(req)
        address = _int(req, "address", 0, 0xFFFF)
        value = _int(req, "value", -0x8000, 0xFFFF)
        if not slave.bank.mapped(address):
            raise RequestError(f"address {address} (0x{address:04X}) is not in profile {slave.profile.name}")
        slave.bank.store(address, value)
        slave.firmware.on_forced(address, time.monotonic())
        return {"value": slave.bank.words[address]}

    # --- line and timing ---
    def op_line(self, req: dict[str, Any]) -> dict[str, Any]:
        up = _bool(req, "up")
        try:
            self.sim.open_line() if up else self.sim.close_line()
        except OSError as exc:
            raise RequestError(f"cannot bring the line {'up' if up else 'down'}: {exc}") from None
        return {"line_up": self.sim.line_up, "pty": self.sim.pty_name if self.sim.line_up else None}

    def op_wire(self, req: dict[str, Any]) -> dict[str, Any]:
        self.sim.wire_baud = _int(req, "baud", 0, 10_000_000)
        return {}

    def op_service_period(self, req: dict[str, Any]) -> dict[str, Any]:
        ms = _number(req, "ms", 0, 60_000)
        for slave in self._targets(req):
            slave.service_period = ms / 1000.0
        return {}

    # --- ground truth ---
    def op_registers(self, req: dict[str, Any]) -> dict[str, Any]:
        slave = self._slave(req)
        return {"registers": {str(a): v for a, v in sorted(slave.bank.words.items())}}

    def op_read(self, req: dict[str, Any]) -> dict[str, Any]:
        slave = self._slave(req)
        address = _int(req, "address", 0, 0xFFFF)
        count = _int(req, "count", 1, 0x10000 - address, 1)
        if not slave.bank.mapped(address, count):
            raise RequestError(f"range {address}+{count} is not fully mapped in profile {slave.profile.name}")
        return {"values": slave.bank.read(address, count)}

    def op_writes(self, req: dict[str, Any]) -> dict[str, Any]:
        since = _number(req, "since", float("-inf"), float("inf"), 0.0)
        unit = None if req.get("addr") is None else self._slave(req).unit
        items = [w for w in self.sim.writes if w["t"] > since and (unit is None or w["addr"] == unit)]
        return {"writes": items}

    def op_reads(self, req: dict[str, Any]) -> dict[str, Any]:
        since = _number(req, "since", float("-inf"), float("inf"), 0.0)
        unit = None if req.get("addr") is None else self._slave(req).unit
        items = [
            {"t": t, "addr": u, "fc": fc, "address": a, "count": n}
            for t, u, fc, a, n in self.sim.reads
            if t > since and (unit is None or u == unit)
        ]
        return {"reads": items}

    def op_clear_writes(self, req: dict[str, Any]) -> dict[str, Any]:
        self.sim.writes.clear()
        return {}

    def op_stats(self, req: dict[str, Any]) -> dict[str, Any]:
        return {
            "slaves": {
                str(unit): {
                    **slave.stats.as_dict(),
                    "faults": slave.faults.as_dict(),
                    "service_period_ms": slave.service_period * 1000.0,
                    "profile": slave.profile.name,
                }
                for unit, slave in self.sim.slaves.items()
            },
            "bus": dict(self.sim.bus),
        }
