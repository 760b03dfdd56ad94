"""Which part of the tree may import which (docs/architecture.md#import-rules), read from the
sources with `ast`, never by importing them.

The split into a core that owns the bus and a gateway that faces the network is only worth
something while the imports keep it: one convenient import from the API into the bus master, and
an API flood shares a process (and a GIL) with the stop path again. Each rule names what it
found, so a failure says which file to change.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "drivers", "central", "oht_errors")

# The neutral error package (CodedError) that every layer may import, except the simulator.
NEUTRAL = "oht_errors"

# Modules that run only in the gateway process (agent/gateway.py imports them lazily; agent/cli.py
# starts the gateway) and face the network.
GATEWAY_ONLY = ("agent.api", "agent.auth", "agent.sync", "agent.gateway", "agent.link.client")

# Modules that run only in the core process: the control loop, safety and the socket's server end
# (agent/runtime.py is the core's composition root).
CORE_ONLY = ("agent.control", "agent.safety", "agent.runtime", "agent.link.server")

# What the core exposes to the gateway as plain data (the link client returns these types), and
# the command catalogue with the states it names (the API validates, documents and authorises
# commands from it). The catalogue names its handlers, but imports the executor only for type
# checks: the run-time test below proves the gateway process still loads no bus code.
SHARED_VIEWS = (
    "agent.control.facade",
    "agent.control.status_view",
    "agent.control.catalogue",
    "agent.control.states",
    "agent.control.errors",  # the core's error classes, which the link client raises again by code
)

# Names from agent/auth that the core may use: leaves that hold no network code (the permission
# a command needs, the role names, their errors).
AUTH_LEAVES = ("agent.auth.permissions", "agent.auth.roles", "agent.auth.errors")

# Modules from drivers/ that the gateway still imports, each with the reason. An entry that is no
# longer needed fails the test, so the list only shrinks.
GATEWAY_DRIVER_EXCEPTIONS = {
    "drivers.watchdog": "SdNotifier (sd_notify for the gateway's own unit); it touches no bus",
}

# drivers/ modules the gateway process may load at all (through the shared views): leaves that
# open no port. The bus master, the port, polling, profiles and discovery are not among them.
GATEWAY_LOADABLE_DRIVERS = {"drivers", "drivers.watchdog", "drivers.modbus", "drivers.modbus.stats"}

# Third-party libraries of the network side; the core never imports them.
NETWORK_LIBRARIES = {"fastapi", "starlette", "uvicorn", "httptools", "uvloop", "websockets", "httpx", "paho"}

# The only modules outside agent/store that the store may import: leaves with no policy of their own.
STORE_LEAVES = {"agent.ids", "agent.auth.errors", "agent.auth.roles"}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (for `from X import Y`: X.Y when that is a module, else X)
    line: int
    type_only: bool  # inside `if TYPE_CHECKING:`, never executed


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            files[module_name(path)] = path
    return files


FILES = project_files()


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def imports_of(module: str) -> list[Import]:
    path = FILES[module]
    tree = ast.parse(path.read_text(), str(path))
    guarded = _type_checking_lines(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in FILES else origin for a in node.names]
        else:
            continue
        found += [Import(module, t, node.lineno, node.lineno in guarded) for t in targets]
    return found


def within(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def top(name: str) -> str:
    return name.split(".")[0]


def modules_under(*prefixes: str) -> list[str]:
    return [m for m in FILES if within(m, prefixes)]


def runtime_closure(roots: Iterable[str]) -> dict[str, str]:
    """Every project module that importing `roots` executes, with the module that first pulls it in
    (imports inside functions count: they run when the gateway starts; TYPE_CHECKING ones do not)."""
    seen: dict[str, str] = {r: "(root)" for r in roots}
    todo = list(seen)
    while todo:
        current = todo.pop()
        for imp in imports_of(current):
            if imp.type_only:
                continue
            # Importing a.b.c runs a/__init__ and a/b/__init__ first.
            parts = imp.target.split(".")
            for n in range(1, len(parts) + 1):
                name = ".".join(parts[:n])
                if name in FILES and name not in seen:
                    seen[name] = current
                    todo.append(name)
    return seen


def describe(found: Iterable[Import]) -> str:
    return "\n".join(f"  {FILES[i.source].relative_to(REPO)}:{i.line} imports {i.target}" for i in found)


def test_the_tree_is_parsed() -> None:
    # A rule over an empty set passes for nothing: make sure each side was found.
    for prefix in ("drivers.sim", "drivers.modbus", "agent.api", "agent.sync", "agent.store", "agent.control"):
        assert len(modules_under(prefix)) >= 3, prefix
    assert any(i.type_only for i in imports_of("agent.gateway"))
    assert "agent.api.app" in {i.target for i in imports_of("agent.gateway")}  # a lazy import is seen


def test_drivers_never_import_agent_or_central() -> None:
    bad = [i for m in modules_under("drivers") for i in imports_of(m) if top(i.target) in ("agent", "central")]
    assert not bad, "drivers/ is the hardware edge and must not depend on the daemon:\n" + describe(bad)


def test_the_simulator_imports_only_the_standard_library_and_itself() -> None:
    bad = [
        i
        for m in modules_under("drivers.sim")
        for i in imports_of(m)
        if not within(i.target, ["drivers.sim"]) and top(i.target) not in sys.stdlib_module_names
    ]
    assert not bad, "the simulator must stay an independent peer of the bus master:\n" + describe(bad)


def test_the_network_side_never_imports_drivers_or_the_core() -> None:
    gateway = modules_under(*GATEWAY_ONLY)
    found = [i for m in gateway for i in imports_of(m)]
    bad = [i for i in found if top(i.target) == "drivers" and i.target not in GATEWAY_DRIVER_EXCEPTIONS]
    bad += [i for i in found if within(i.target, CORE_ONLY) and not within(i.target, SHARED_VIEWS)]
    assert not bad, "the gateway reaches the core only through agent/link:\n" + describe(bad)
    used = {i.target for i in found}
    stale = sorted(set(GATEWAY_DRIVER_EXCEPTIONS) - used)
    assert not stale, f"no longer imported by the gateway: remove {stale} from GATEWAY_DRIVER_EXCEPTIONS"


def test_the_gateway_process_never_loads_the_bus_or_the_control_loop() -> None:
    loaded = runtime_closure(["agent.gateway", *modules_under(*GATEWAY_ONLY)])
    bad = {m: by for m, by in loaded.items() if top(m) == "drivers" and m not in GATEWAY_LOADABLE_DRIVERS}
    core_loop = ("agent.runtime", "agent.link.server", "agent.control.controller", "agent.control.executor")
    bad |= {m: by for m, by in loaded.items() if within(m, core_loop) or within(m, ["agent.safety.stop"])}
    assert not bad, "loaded in the gateway process (module <- pulled in by):\n" + "\n".join(
        f"  {m} <- {by}" for m, by in sorted(bad.items())
    )


def test_the_core_side_never_imports_the_network_side() -> None:
    found = [i for m in modules_under(*CORE_ONLY) for i in imports_of(m)]
    bad = [
        i
        for i in found
        if (within(i.target, GATEWAY_ONLY) and not within(i.target, AUTH_LEAVES)) or top(i.target) in NETWORK_LIBRARIES
    ]
    assert not bad, "the core opens no network socket and never waits on the API:\n" + describe(bad)


def test_the_store_imports_only_named_leaves() -> None:
    def foreign(i: Import) -> bool:
        t = i.target
        return top(t) in PACKAGES and not within(t, ["agent.store", NEUTRAL]) and t not in STORE_LEAVES

    bad = [i for m in modules_under("agent.store") for i in imports_of(m) if foreign(i)]
    assert not bad, "agent/store may import only the leaves in STORE_LEAVES:\n" + describe(bad)
    # The leaves stay leaves: they import nothing from the project but each other.
    leaks = [
        i
        for leaf in STORE_LEAVES
        for i in imports_of(leaf)
        if top(i.target) in PACKAGES and not within(i.target, [NEUTRAL]) and i.target not in STORE_LEAVES
    ]
    assert not leaks, "a store leaf grew a dependency:\n" + describe(leaks)


# The code catalogue: it imports every error module to list their codes (docs/codes.md), so it sits
# above every layer; only its test and the docs generator import it.
COLLECTOR = f"{NEUTRAL}.catalogue"


def test_the_neutral_error_package_imports_only_the_standard_library() -> None:
    bad = [
        i
        for m in modules_under(NEUTRAL)
        if m != COLLECTOR
        for i in imports_of(m)
        if top(i.target) not in sys.stdlib_module_names
    ]
    assert not bad, f"{NEUTRAL} is imported by every layer and must import none of them:\n" + describe(bad)


def test_nothing_in_the_daemon_imports_the_code_catalogue() -> None:
    found = [i for m in modules_under("agent", "drivers", NEUTRAL) for i in imports_of(m)]
    bad = [i for i in found if within(i.target, (COLLECTOR,)) and i.source != COLLECTOR]
    assert not bad, "the catalogue imports every layer; importing it back makes a cycle:\n" + describe(bad)


def test_the_daemon_never_imports_tests_or_benchmarks() -> None:
    found = [i for m in modules_under("agent", "drivers") for i in imports_of(m)]
    bad = [i for i in found if top(i.target) in ("tests", "bench")]
    assert not bad, describe(bad)
