"""The catalogue of codes: every code is declared once, UPPER_SNAKE, with a hint (and a kind for errors).

Also: docs/codes.md is the catalogue rendered, the API answers the status of an error's kind (and
the statuses the API has always answered stay), and codes written at raise sites are declared.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from agent.api.errors import API_CODES, STATUS, status_for
from agent.control.results import RESULTS, ResultCode, left_state
from agent.control.states import MOTION_STATES, State
from agent.link import protocol as p
from oht_errors import CodedError, ErrorKind, catalogue

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = ".venv/bin/python -m oht_errors.catalogue > docs/codes.md"


@pytest.fixture(scope="module")
def entries() -> list[catalogue.Entry]:
    return catalogue.collect()


def test_the_catalogue_keeps_the_rules(entries: list[catalogue.Entry]) -> None:
    found = catalogue.problems(entries, catalogue.error_classes())
    assert not found, "\n".join(found)


def test_the_checker_reports_each_broken_rule() -> None:
    def entry(
        code: str, hint: str = "check it", kind: ErrorKind | None = ErrorKind.INVALID, **kw: str
    ) -> catalogue.Entry:
        return catalogue.Entry(code, kw.get("origin", "error"), "API error", "", hint, kind, kw.get("source", "x.Y"))

    class NoKind(CodedError):
        code = "NO_KIND"
        hint = "a hint"

    found = catalogue.problems(
        [
            entry("lower_case"),
            entry("NO_HINT", hint=" "),
            entry("KINDLESS", kind=None),
            entry("TWICE", source="a.A"),
            entry("TWICE", hint="another meaning", source="b.B"),
            entry("RESULT_TOO", origin="result", kind=None),
            entry("RESULT_TOO", source="c.C"),
        ],
        [NoKind],
    )
    assert len(found) == 6, found
    for needle in ("'lower_case'", "NO_HINT", "KINDLESS", "TWICE is declared 2 times", "RESULT_TOO", "NoKind"):
        assert any(needle in line for line in found), (needle, found)


def test_docs_codes_md_is_the_catalogue(entries: list[catalogue.Entry]) -> None:
    committed = (ROOT / "docs" / "codes.md").read_text(encoding="utf-8")
    if committed != catalogue.render(entries):
        pytest.fail(f"docs/codes.md differs from the catalogue: regenerate it with `{REGENERATE}`", pytrace=False)


def test_every_error_class_lives_in_a_listed_module() -> None:
    outside = [f"{c.__module__}.{c.__qualname__}" for c in catalogue.error_classes()]
    outside = [name for name in outside if name.rsplit(".", 1)[0] not in catalogue.ERROR_MODULES]
    assert not outside, f"add their modules to oht_errors.catalogue.ERROR_MODULES: {outside}"


_KEYWORD = re.compile(r"\bcode=\"([^\"]*)\"")  # raise X(..., code="...") / Outcome(error_code="...")
_ATTRIBUTE = re.compile(r"^\s+code = \"([^\"]*)\"", re.MULTILINE)  # class attributes
_ANSWER = re.compile(r"error_response\(\s*\w+,\s*(\d{3}),\s*\"([^\"]+)\"")  # a route's own answer


def _sources() -> list[Path]:
    files = [f for top in ("agent", "drivers", "central", "oht_errors") for f in (ROOT / top).rglob("*.py")]
    return [f for f in files if "sim" not in f.relative_to(ROOT).parts]  # the simulator has no codes of ours


def test_every_code_written_in_the_source_is_declared(entries: list[catalogue.Entry]) -> None:
    declared = {e.code for e in entries}
    missing = []
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        for match in [*_KEYWORD.finditer(text), *_ATTRIBUTE.finditer(text)]:
            if match.group(1) not in declared:
                missing.append(f"{path.relative_to(ROOT)}: {match.group(1)}")
    assert not missing, "declare these codes (a class, its `variants`, or a table the catalogue reads):\n" + "\n".join(
        missing
    )


def test_routes_answer_the_status_of_their_code() -> None:
    answers = [
        (path.relative_to(ROOT), int(status), code)
        for path in (ROOT / "agent" / "api").rglob("*.py")
        for status, code in _ANSWER.findall(path.read_text(encoding="utf-8"))
    ]
    assert answers, "the pattern no longer finds the routes' answers"
    wrong = [(where, status, code) for where, status, code in answers if API_CODES[code].status != status]
    assert not wrong, wrong


# The statuses the API has answered for these codes (tests/integration check most of them end to end).
KEPT = {
    "REQUEST_MALFORMED": 400,
    "AUTH_REQUIRED": 401,
    "AUTH_INVALID": 401,
    "AUTH_EXPIRED": 401,
    "AUTH_FAILED": 401,
    "PERMISSION_DENIED": 403,
    "ROLE_NOT_ALLOWED": 403,
    "AUTH_PERSON_REQUIRED": 403,
    "AUTH_CURRENT_PASSWORD_REQUIRED": 403,
    "AUTH_PASSWORD_MISMATCH": 403,
    "ORIGIN_NOT_ALLOWED": 403,
    "COMMAND_NOT_FOUND": 404,
    "MODULE_NOT_FOUND": 404,
    "USER_NOT_FOUND": 404,
    "API_KEY_NOT_FOUND": 404,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "COMMAND_KEY_REUSED": 409,
    "COMMAND_STATE": 409,
    "COMMAND_NOT_CANCELLABLE": 409,
    "COMMAND_EXPIRED": 409,
    "AUTH_SESSION_REQUIRED": 409,
    "USER_EXISTS": 409,
    "USER_LAST_ADMIN": 409,
    "RESET_INCOMPLETE": 409,
    "STATE_EVENT_NOT_ALLOWED": 409,
    "STATE_COMMAND_NOT_ALLOWED": 409,
    "REQUEST_TOO_LARGE": 413,
    "REQUEST_INVALID": 422,
    "COMMAND_INVALID": 422,
    "REGISTER_UNKNOWN": 422,
    "REGISTER_WRITE_REFUSED": 422,
    "PASSWORD_REJECTED": 422,
    "ROLE_INVALID": 422,
    "USER_NAME_INVALID": 422,
    "API_KEY_INVALID": 422,
    "AUTH_THROTTLED": 429,
    "INTERNAL": 500,
    "NOT_READY": 503,
    "NOT_ALIVE": 503,
    "API_BUSY": 503,
    "STREAM_FULL": 503,
    "OUTBOX_FULL": 503,
    "ESTOP_NOT_CONFIRMED": 503,
    "STORE_UNAVAILABLE": 503,
    "STORE_DISK_FULL": 503,
    "STORE_TIMEOUT": 503,
    "BUS_TIMEOUT": 503,
    "BUS_PORT_DOWN": 503,
    "CORE_UNAVAILABLE": 503,
    "CORE_BUSY": 503,
    "CORE_TIMEOUT": 503,
}


def test_the_api_keeps_its_statuses(entries: list[catalogue.Entry]) -> None:
    status = {e.code: STATUS[e.kind] for e in entries if e.kind is not None}
    changed = {code: (was, status.get(code)) for code, was in KEPT.items() if status.get(code) != was}
    assert not changed, changed


def test_the_kind_crosses_the_core_link() -> None:
    from agent.control.errors import ModuleNotFound

    body = p.error_reply(7, ModuleNotFound("no module bound for role 'flux'"))["error"]
    again = p.remote_error(body)
    assert (again.code, again.kind, status_for(again.kind)) == ("MODULE_NOT_FOUND", ErrorKind.NOT_FOUND, 404)
    assert p.remote_error({"code": "SOMETHING_NEW", "message": "m"}).kind is ErrorKind.INTERNAL


def test_every_state_that_ends_motion_has_its_result_code() -> None:
    for state in State:
        if state in MOTION_STATES or state is State.PAUSED:
            continue
        code = left_state(state)
        assert code == f"STATE_{state}" and code in RESULTS
    assert set(RESULTS) == set(ResultCode)


def test_the_error_root_imports_nothing_above_it() -> None:
    tree = ast.parse((ROOT / "oht_errors" / "__init__.py").read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] in ("agent", "drivers", "central")}, imported
    importer = re.compile(
        r"^\s*(?:import oht_errors\.catalogue|from oht_errors(?:\.catalogue)? import .*catalogue)", re.M
    )
    users = [f.relative_to(ROOT) for f in _sources() if importer.search(f.read_text(encoding="utf-8"))]
    assert not users, f"only its test and the docs generator may import the catalogue: {users}"
