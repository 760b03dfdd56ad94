"""The simulator must stay an independent peer of the bus master: standard library only, and
nothing from ``agent`` or from ``drivers`` outside ``drivers.sim``. A shared helper would let a bug
hide on both sides of the wire."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SIM_DIR = Path(__file__).resolve().parents[2] / "drivers" / "sim"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_sim_sources_import_only_stdlib_and_themselves() -> None:
    files = sorted(SIM_DIR.glob("*.py"))
    assert len(files) >= 8
    for path in files:
        for name in imported_modules(path):
            top = name.split(".")[0]
            ok = (
                name == "drivers.sim"
                or name.startswith("drivers.sim.")
                or (top in sys.stdlib_module_names and top != "drivers")
            )
            assert ok, f"{path.name} imports {name}"


def test_running_the_sim_loads_nothing_else_from_the_project() -> None:
    code = (
        "import sys, drivers.sim.main, drivers.sim.server, drivers.sim.client;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('agent', 'drivers', 'serial', 'pymodbus')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=SIM_DIR.parents[1]
    ).stdout
    loaded = ast.literal_eval(out)
    assert [m for m in loaded if m != "drivers" and not m.startswith("drivers.sim")] == []
