"""No secret is compared with `==`/`!=` anywhere in the agent (timing leaks); use hmac.compare_digest."""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "agent"
SECRET_WORDS = ("token", "password", "secret", "key_hash", "token_hash", "ticket", "api_key", "passwd")


def _names(node: ast.AST) -> set[str]:
    out = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            out.add(sub.id.lower())
        elif isinstance(sub, ast.Attribute):
            out.add(sub.attr.lower())
    return out


def find_secret_comparisons(source: str, filename: str) -> list[str]:
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Compare):
            continue
        if not any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            continue
        operands = [node.left, *node.comparators]
        # `x == None`-style and comparisons with literals are not secret comparisons.
        if any(isinstance(o, ast.Constant) for o in operands):
            continue
        hits = {n for n in _names(node) if any(word in n for word in SECRET_WORDS)}
        if hits:
            problems.append(f"{filename}:{node.lineno}: {', '.join(sorted(hits))}")
    return problems


def test_the_scanner_catches_a_secret_comparison() -> None:
    bad = "def f(token, stored_token):\n    return token == stored_token\n"
    assert find_secret_comparisons(bad, "x.py") == ["x.py:2: stored_token, token"]
    ok = "import hmac\ndef f(a, b):\n    return hmac.compare_digest(a, b) and a is not None\n"
    assert find_secret_comparisons(ok, "x.py") == []


def test_no_secret_is_compared_with_eq_in_agent_sources() -> None:
    problems = []
    for path in sorted(AGENT.rglob("*.py")):
        problems += find_secret_comparisons(path.read_text(), str(path.relative_to(AGENT.parent)))
    assert problems == []
