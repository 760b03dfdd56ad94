"""The password policy: each rule refuses what it should with a message that names it, and a
passphrase of unrelated words passes. The common-password list is package data: it is read from
the installed package and declared in pyproject.toml so a wheel carries it."""

from __future__ import annotations

import random
import time
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from agent.auth.errors import PasswordRejected
from agent.auth.password_policy import common_passwords
from agent.auth.passwords import check_policy
from tests.unit.test_auth_cli import cfg, run  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parents[2]

COMMON = "list of common passwords"
DECORATED = "common password or word with only digits or symbols around it"
REPEATS = "repeats one short part"
FEW = "fewer than 5 different characters"
RUNS = "mostly runs"


def refusal(password: str, user_name: str | None = None) -> str:
    with pytest.raises(PasswordRejected) as info:
        check_policy(password, user_name=user_name)
    assert info.value.code == "PASSWORD_REJECTED"
    return info.value.message


@pytest.mark.parametrize(
    ("password", "rule"),
    [
        ("password1234", COMMON),
        ("PASSWORD1234", COMMON),  # compared lowercase
        ("qwertyuiop12", COMMON),
        ("123456789012", COMMON),
        ("administrator", COMMON),
        ("letmeinletmein", COMMON),
        ("correct horse battery staple", COMMON),  # the list entry has no spaces
        ("Oht50-Admin-2024", COMMON),
        ("aaaaaaaaaaaa", REPEATS),
        ("abcabcabcabc", REPEATS),
        ("1212121212121", REPEATS),
        ("AbAbAbAbAbAbA", REPEATS),
        ("aabbaabbabab", FEW),
        ("abcdefghijklm", RUNS),
        ("9876543210987", RUNS),
        ("qwertyuiopasd", RUNS),
        ("aaaaaaaa1234", RUNS),
        ("Qwerty!2024xyz", RUNS),
        ("Password!2024", DECORATED),
        ("welcome123456!", DECORATED),
        ("2024 Overhead !!", DECORATED),
        ("#oht50#2025#", DECORATED),
    ],
)
def test_each_rule_refuses_and_says_which(password: str, rule: str) -> None:
    assert rule in refusal(password)


def test_messages_never_repeat_the_password() -> None:
    for password in ("Password!2024", "qwertyuiopasd", "ludmila.kovac2024!"):
        message = refusal(password, "ludmila.kovac")
        assert password.casefold() not in message.casefold()
        assert "password!" not in message.casefold() and "ludmila" not in message


def test_the_user_name_with_digits_around_it_is_refused() -> None:
    assert refusal("Ludmila.Kovac", "ludmila.kovac") == "the password must not be the user name"
    assert "user name with only digits or symbols" in refusal("ludmila.kovac2024!", "ludmila.kovac")
    check_policy("ludmila.kovac2024!", user_name="someone.else")


@pytest.mark.parametrize(
    "password",
    [
        "twelve chars",
        "lamp river cloud stone",
        "Tr0ub4dor&3xyz",
        "maple tractor violin sleet",
        "the password of olga 77",  # listed word inside a phrase: only decoration is refused
        "abcdef plus four words here",  # a short run in a longer phrase
    ],
)
def test_good_passwords_pass(password: str) -> None:
    check_policy(password, user_name="olga")


def test_the_command_line_refuses_with_the_rule_and_the_hint(
    cfg: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`user add` and `user passwd` go through the policy before they touch the database."""
    c = str(cfg)
    code, _, err = run(
        monkeypatch,
        capsys,
        "user",
        "add",
        "bob",
        "--role",
        "admin",
        "--password-stdin",
        "--config",
        c,
        stdin="Password!2024\n",
    )
    assert code == 1 and "PASSWORD_REJECTED" in err and DECORATED in err and "hint: Choose a passphrase" in err
    code, _, err = run(
        monkeypatch,
        capsys,
        "user",
        "add",
        "bob",
        "--role",
        "admin",
        "--password-stdin",
        "--config",
        c,
        stdin="maple tractor violin sleet\n",
    )
    assert code == 0, err
    code, _, err = run(
        monkeypatch, capsys, "user", "passwd", "bob", "--password-stdin", "--config", c, stdin="qwertyuiopasd\n"
    )
    assert code == 1 and RUNS in err


def test_the_hint_describes_a_good_password() -> None:
    hint = PasswordRejected("x").hint
    assert "passphrase" in hint and "unrelated words" in hint


def test_the_list_is_package_data_and_read_once() -> None:
    listed = common_passwords()
    assert common_passwords() is listed  # cached: the file is read once
    assert 300 <= len(listed) and all(entry == entry.casefold().strip() and entry for entry in listed)
    assert {
        "password1234",
        "qwertyuiop12",
        "123456789012",
        "administrator",
        "letmeinletmein",
        "oht50",
        "overhead",
        "welcome",
    } <= listed
    assert resources.files("agent.auth").joinpath("common_passwords.txt").is_file()
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "common_passwords.txt" in declared["agent.auth"]


def test_the_worst_case_is_cheap() -> None:
    """A 1024-character password (the maximum) is judged in milliseconds, whatever it holds."""
    rng = random.Random(7)
    worst = [
        "".join(rng.choice("0123456789") for _ in range(1024)),  # no letters: every slice is a candidate base
        "".join(rng.choice("0123456789!#") for _ in range(1023)) + "x",
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 ") for _ in range(1024)),
        "7" * 1023 + "x",
    ]
    started = time.perf_counter()
    for password in worst:
        try:
            check_policy(password)
        except PasswordRejected:
            pass
    assert time.perf_counter() - started < 0.5
