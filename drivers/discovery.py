"""Discovery: scan addresses, read identity blocks, choose profiles, bind roles. Never guess.

The OHT-50 firmwares disagree with the project plan about addresses (the safety firmware
defaults to 5, the motor driver to 3) and about module-type codes, so the role of each address
comes from configuration and is only bound when the module found there has a profile for its
type and firmware version and that profile is for the configured role. Anything else is reported
with a reason: unknown module, role mismatch, address answering inconsistently (a duplicate
address on the line corrupts replies), identity echoing the wrong address.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from drivers.modbus.errors import BusCrcError, BusError, BusTimeout, ModbusExceptionReply
from drivers.modbus.master import BusMaster
from drivers.modbus.schedule import Priority
from drivers.polling import Binding
from drivers.profiles import IDENTITY_COUNT, IDENTITY_START, Identity, Profile, select_profile
from oht_errors import CodedError

log = logging.getLogger("oht.discovery")

SCAN_BACKOFF_S = (0.05, 0.1, 0.2)


@dataclass(frozen=True)
class Finding:
    """What one address answered (or did not)."""

    address: int
    identity: Identity | None = None
    profile: Profile | None = None
    problem_code: str | None = None
    problem: str | None = None
    hint: str | None = None

    @property
    def answered(self) -> bool:
        return self.identity is not None


@dataclass(frozen=True)
class DiscoveryReport:
    findings: tuple[Finding, ...]
    bindings: Mapping[str, Binding]
    problems: tuple[str, ...] = field(default=())

    def missing_roles(self, roles: Iterable[str]) -> list[str]:
        return [r for r in roles if r not in self.bindings]


async def read_identity(master: BusMaster, address: int, attempts: int = 3) -> tuple[Identity | None, str | None]:
    """Identity block of `address`: 3 attempts with 50/100/200 ms back-off.

    Two reads must agree before the identity is trusted; disagreement or repeated CRC errors from
    one address while the line is otherwise clean points at two modules sharing that address.
    """
    reads: list[tuple[int, ...]] = []
    crc_errors = 0
    for attempt in range(attempts):
        try:
            words = await master.execute(_identity_request(address), Priority.TELEMETRY, retries=0)
            reads.append(words)
        except ModbusExceptionReply as exc:
            return None, f"{exc.code}: answers but refuses the identity block ({exc.message})"
        except BusCrcError:
            crc_errors += 1
        except BusTimeout:
            pass
        if len(reads) >= 2:
            break
        if attempt < len(SCAN_BACKOFF_S) and attempt + 1 < attempts and not reads:
            await asyncio.sleep(SCAN_BACKOFF_S[attempt])
    if len(reads) >= 2 and reads[0] != reads[1] and _differs_beyond_status(reads[0], reads[1]):
        return None, "DUPLICATE_ADDRESS: identity changes between reads"
    if crc_errors >= 2 and reads:
        return None, "DUPLICATE_ADDRESS: replies collide (repeated CRC errors at this address only)"
    if not reads:
        return None, None
    return Identity.from_words(reads[-1]), None


def _identity_request(address: int):  # type: ignore[no-untyped-def]
    from drivers.modbus.frames import read_request

    return read_request(address, IDENTITY_START, IDENTITY_COUNT)


def _differs_beyond_status(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    # SYSTEM_STATUS (index 7) and SYSTEM_ERROR (index 8) may legitimately change between reads.
    return any(x != y for i, (x, y) in enumerate(zip(a, b, strict=True)) if i not in (7, 8))


async def discover(
    master: BusMaster,
    addresses: Iterable[int],
    profiles: Mapping[str, Profile],
    role_map: Mapping[str, int],
) -> DiscoveryReport:
    """Scan `addresses` and bind every role of `role_map` whose module is found and recognised."""
    wanted = sorted(set(addresses) | set(role_map.values()))
    role_of = {addr: role for role, addr in role_map.items()}
    findings: list[Finding] = []
    bindings: dict[str, Binding] = {}
    problems: list[str] = []
    for address in wanted:
        # Unknown slaves get a short turnaround budget while scanning; bound ones get their profile's.
        master.link(address)
        try:
            identity, trouble = await read_identity(master, address)
        except BusError as exc:  # port down mid-scan: report, do not crash
            findings.append(Finding(address, problem_code=exc.code, problem=exc.message, hint=exc.hint))
            continue
        if trouble is not None:
            code, _, text = trouble.partition(": ")
            hint = (
                "give every module on the line its own slave address (register 0x0100)"
                if code == "DUPLICATE_ADDRESS"
                else None
            )
            findings.append(Finding(address, problem_code=code, problem=text, hint=hint))
            problems.append(f"address {address}: {text}")
            continue
        if identity is None:
            findings.append(Finding(address))
            continue
        finding = _classify(address, identity, profiles, role_of.get(address))
        findings.append(finding)
        if finding.problem is not None:
            problems.append(f"address {address}: {finding.problem}")
        elif finding.profile is not None and address in role_of:
            bindings[role_of[address]] = Binding(role_of[address], address, finding.profile)
    for role, address in role_map.items():
        if role not in bindings and not any(f.address == address and f.problem for f in findings):
            problems.append(f"role {role}: no module answered at address {address}")
    return DiscoveryReport(tuple(findings), bindings, tuple(problems))


def _classify(address: int, identity: Identity, profiles: Mapping[str, Profile], role: str | None) -> Finding:
    try:
        profile = select_profile(identity, profiles)
    except CodedError as exc:
        return Finding(address, identity, None, exc.code, exc.message, exc.hint)
    if identity.device_id != address:
        return Finding(
            address,
            identity,
            profile,
            "MODULE_ADDRESS_MISMATCH",
            f"module at {address} reports device id {identity.device_id}",
            "check the module's DEVICE_ID register (0x0100) and the line for a second module",
        )
    if role is None:
        return Finding(
            address,
            identity,
            profile,
            "MODULE_UNASSIGNED",
            f"{profile.role} module ({profile.name}) found at {address}, which no role is configured for",
            "set [modules] in agent.toml if this module should be used",
        )
    if profile.role != role:
        return Finding(
            address,
            identity,
            profile,
            "MODULE_ROLE_MISMATCH",
            f"address {address} is configured as {role} but holds a {profile.role} module ({profile.name})",
            "fix [modules] in agent.toml or the module's address; the agent never rebinds roles by itself",
        )
    return Finding(address, identity, profile)
