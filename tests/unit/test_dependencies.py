"""The runtime dependencies in pyproject.toml are what the daemon (agent/, drivers/) uses, no more
and no less: a library only the tests or benchmarks need belongs in the dev extras, where it is
not installed on a carriage, and a library the daemon imports must be declared.

Read from the sources with `ast`; nothing is imported or installed.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DAEMON = ("agent", "drivers")

# Distribution name -> how the daemon shows it uses it: a module it imports, or a uvicorn setting
# (keyword, value) that makes uvicorn load the library by name.
USED_AS: dict[str, tuple[str | tuple[str, str], ...]] = {
    "pyserial": ("serial",),
    "aiosqlite": ("aiosqlite",),
    "fastapi": ("fastapi",),
    "uvicorn": ("uvicorn",),
    "httptools": ("httptools", "uvicorn.protocols.http.httptools_impl"),
    "uvloop": ("uvloop",),
    "websockets": ("websockets", ("ws", "websockets-sansio")),
    "cryptography": ("cryptography",),
    "tenacity": ("tenacity",),
    "paho-mqtt": ("paho",),
    "pydantic": ("pydantic",),
    "prometheus-client": ("prometheus_client",),
    "typing-extensions": ("typing_extensions",),
    "gpiod": ("gpiod",),
}

# Imported by the daemon but installed by a declared dependency that pins it.
COMES_WITH = {"starlette": "fastapi"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution(spec: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec)
    assert match, spec
    return normalise(match.group(0))


def project() -> dict[str, object]:
    with (REPO / "pyproject.toml").open("rb") as fh:
        data = tomllib.load(fh)
    table = data["project"]
    assert isinstance(table, dict)
    return table


def runtime_dependencies() -> set[str]:
    deps = project()["dependencies"]
    assert isinstance(deps, list)
    return {distribution(d) for d in deps}


def extra(name: str) -> set[str]:
    extras = project()["optional-dependencies"]
    assert isinstance(extras, dict)
    return {distribution(d) for d in extras[name]}


def daemon_usage() -> tuple[set[str], set[tuple[str, str]]]:
    """Every module the daemon imports (with its parents) and every keyword=string in its calls."""
    modules: set[str] = set()
    settings: set[tuple[str, str]] = set()
    for package in DAEMON:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Call):
                    for kw in node.keywords:
                        if kw.arg and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                            settings.add((kw.arg, kw.value.value))
                for name in names:
                    parts = name.split(".")
                    modules.update(".".join(parts[:n]) for n in range(1, len(parts) + 1))
    return modules, settings


MODULES, SETTINGS = daemon_usage()


def test_every_runtime_dependency_has_a_known_import_name() -> None:
    unknown = sorted(runtime_dependencies() - {normalise(d) for d in USED_AS})
    assert not unknown, f"add {unknown} to USED_AS with the module the daemon imports"


def test_every_runtime_dependency_is_used_by_the_daemon() -> None:
    def used(dist: str) -> bool:
        evidence = next(v for k, v in USED_AS.items() if normalise(k) == dist)
        return any(e in MODULES if isinstance(e, str) else e in SETTINGS for e in evidence)

    unused = sorted(d for d in runtime_dependencies() if not used(d))
    assert not unused, f"not imported under agent/ or drivers/: move {unused} to the dev extras or remove them"


def test_every_library_the_daemon_imports_is_declared() -> None:
    declared = runtime_dependencies() | extra("gpio")
    by_import = {e: normalise(d) for d, ev in USED_AS.items() for e in ev if isinstance(e, str) and "." not in e}
    third_party = {m for m in MODULES if "." not in m and m not in sys.stdlib_module_names}
    third_party -= {"agent", "drivers", "central", "oht_errors"}  # the project's own packages
    missing = []
    for name in sorted(third_party):
        dist = by_import.get(name) or COMES_WITH.get(name)
        if dist is None or normalise(dist) not in declared:
            missing.append(name)
    assert not missing, f"the daemon imports {missing}, which no runtime dependency (or the gpio extra) provides"


def test_the_development_tools_are_not_runtime_dependencies() -> None:
    # What only tests and benchmarks use stays off the carriage.
    runtime = runtime_dependencies()
    for dist in ("pymodbus", "httpx", "pytest", "hypothesis", "schemathesis", "ruff", "mypy"):
        assert dist not in runtime, dist
    assert {"pymodbus", "httpx"} <= extra("dev")
