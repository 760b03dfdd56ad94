"""Every document the code, the tests and the docs cite is in the repository, and every section
they cite exists.

A comment that says "see the design page, section 2.3b" is worth something only while a reader
can open that page. The firmware facts the agent relies on live in `docs/firmware.md`; a citation
of a document that is not shipped (or of a heading that was renamed) fails here with the file and
line to fix.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
THIS = Path(__file__).resolve()

SCANNED_DIRS = ("agent", "drivers", "tests", "bench", "central", "docs", "config", "systemd")
SCANNED_FILES = ("README.md", "Makefile", "pyproject.toml", "MANIFEST.in")
SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".service", ".target", ".conf", ".rules", ".in", ".sh"}

# Documents that exist only outside the repository, and section numbers of those documents.
OUTSIDE = [
    re.compile(r"oht-bus", re.IGNORECASE),
    re.compile(r"\bDESIGN\.md\b", re.IGNORECASE),
    re.compile(r"toolchain[- ]notes", re.IGNORECASE),
    re.compile(r"\b(code|safety)-review\.md\b", re.IGNORECASE),
    re.compile(r"\breference/", re.IGNORECASE),
    re.compile(r"\breference\s*(§|section\s+)?\d+(\.\d+)*[a-z]?\b", re.IGNORECASE),
    re.compile(r"§\s*\d"),
]

# docs/NAME.md or docs/NAME.md#anchor anywhere; inside docs/, also NAME.md#anchor (relative).
DOC_CITATION = re.compile(r"(?<![\w/.-])docs/([\w.-]+\.md)(?:#([\w-]+))?")
RELATIVE_CITATION = re.compile(r"(?<![\w/.-])([\w-]+\.md)(?:#([\w-]+))?")


def scanned() -> list[Path]:
    files = [REPO / name for name in SCANNED_FILES if (REPO / name).exists()]
    for folder in SCANNED_DIRS:
        files += [p for p in sorted((REPO / folder).rglob("*")) if p.is_file() and p.suffix in SUFFIXES]
    return [p for p in files if p.resolve() != THIS and "__pycache__" not in p.parts]


def slug(heading: str) -> str:
    """The anchor a Markdown renderer (GitHub's rules) makes of a heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    in_fence = False
    for line in markdown.read_text().splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if in_fence or not match:
            continue
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def citations(path: Path) -> list[tuple[int, Path, str | None]]:
    """(line, cited file, anchor or None) for every documentation citation in `path`."""
    out: list[tuple[int, Path, str | None]] = []
    in_docs = path.parent == REPO / "docs"
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        for m in DOC_CITATION.finditer(line):
            out.append((number, REPO / "docs" / m.group(1), m.group(2)))
        if in_docs:
            for m in RELATIVE_CITATION.finditer(line):
                target = REPO / "docs" / m.group(1)
                out.append((number, target if target.exists() else REPO / m.group(1), m.group(2)))
    return out


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(REPO)}:{line}"


def test_the_scan_sees_the_tree() -> None:
    files = scanned()
    assert len(files) > 200
    assert REPO / "config" / "profiles" / "safety-safefw.toml" in files
    assert anchors(REPO / "docs" / "firmware.md") >= {"identity-block", "unverified-on-hardware"}


def test_slugs_follow_the_renderer() -> None:
    assert slug("The old master's state machine") == "the-old-masters-state-machine"
    assert slug("Safety module (SAFE-FW)") == "safety-module-safe-fw"
    assert slug("What the agent expects: `[safety_module]`") == "what-the-agent-expects-safety_module"


def test_nothing_cites_a_document_outside_the_repository() -> None:
    bad = []
    for path in scanned():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            bad += [f"{where(path, number)}: {m.group(0)!r}" for p in OUTSIDE for m in p.finditer(line)]
    assert not bad, "cite docs/ instead (docs/firmware.md holds the firmware facts):\n" + "\n".join(bad)


def test_every_cited_document_and_section_exists() -> None:
    bad = []
    cache: dict[Path, set[str]] = {}
    for path in scanned():
        for number, target, anchor in citations(path):
            if not target.exists():
                bad.append(f"{where(path, number)}: {target.relative_to(REPO)} does not exist")
            elif anchor is not None and anchor not in cache.setdefault(target, anchors(target)):
                bad.append(f"{where(path, number)}: no heading in {target.relative_to(REPO)} makes #{anchor}")
    assert not bad, "\n".join(bad)


def test_the_firmware_page_is_cited_from_the_code() -> None:
    # The point of docs/firmware.md: the code's firmware facts are traceable to it.
    citing = {
        path.relative_to(REPO).as_posix()
        for path in scanned()
        for _, t, _ in citations(path)
        if t.name == "firmware.md"
    }
    assert {"agent/control/states.py", "drivers/profiles/loader.py", "config/profiles/travel-drvfw.toml"} <= citing
