"""The password policy: what a new password must not be, each refusal naming its rule.

Why these rules: a guesser tries the most common passwords first, then the same words with
digits and symbols stuck on, then patterns a keyboard or a counter makes. Length alone (12
characters) lets all of those through (`password1234`, `aaaaaaaaaaaa`), so the policy also refuses

- a password on the common-password list shipped with the package (`common_passwords.txt`,
  compared lowercase, also with spaces, '-', '_' and '.' taken out);
- a short part written again and again (`abcabcabcabc`, `1212121212121`): a part shorter than the
  minimum length, repeated, is no harder to guess than the part;
- fewer than 5 different characters;
- a password that is mostly runs: three or more keys in a row on the keyboard, letters or digits
  counting up or down, or one character repeated (`abcdefghijklm`, `9876543210987`,
  `qwertyuiopasd`, `aaaaaaaa1234`);
- a listed password or word, or the user name, with only digits, symbols or spaces added around
  it (`Password!2024`, `welcome123456`).

A passphrase of several unrelated words passes all of them. Messages never repeat the password
or a part of it: they end up in logs and audit rows.
"""

from __future__ import annotations

import functools
import hmac
from importlib import resources

from agent.auth.errors import PasswordRejected

__all__ = ["MAX_LENGTH", "MIN_DISTINCT", "MIN_LENGTH", "check_policy", "common_passwords"]

MIN_LENGTH = 12
MAX_LENGTH = 1024  # bounds the work an attacker can make us do per attempt
MIN_DISTINCT = 5

_LIST_FILE = "common_passwords.txt"
_SEPARATORS = str.maketrans("", "", " \t-_.")
# Runs are steps of +1 or -1 along one of these (the alphabet and digits wrap around, so
# `9876543210987` is one run; the keyboard rows are one line, so `qwertyuiopasd` is too).
_SEQUENCES: tuple[tuple[str, bool], ...] = (
    ("abcdefghijklmnopqrstuvwxyz", True),
    ("0123456789", True),
    ("qwertyuiopasdfghjklzxcvbnm", False),
)
_MIN_RUN = 3  # characters


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped list, lowercase, read once (package data, so it is there in an installed wheel)."""
    text = resources.files("agent.auth").joinpath(_LIST_FILE).read_text(encoding="utf-8")
    entries = (line.strip().casefold() for line in text.splitlines())
    return frozenset(e for e in entries if e and not e.startswith("#"))


@functools.cache
def _longest_entry() -> int:
    return max(len(e) for e in common_passwords())


def _squashed(text: str) -> str:
    return text.translate(_SEPARATORS)


def _is_listed(text: str) -> bool:
    listed = common_passwords()
    return text in listed or _squashed(text) in listed


def _smallest_period(text: str) -> int:
    """The shortest p such that text[i] == text[i - p] for every i >= p (prefix function)."""
    border = [0] * len(text)
    k = 0
    for i in range(1, len(text)):
        while k and text[i] != text[k]:
            k = border[k - 1]
        if text[i] == text[k]:
            k += 1
        border[i] = k
    return len(text) - (border[-1] if text else 0)


def _repeats_short_part(text: str) -> bool:
    """Whether text is a part shorter than the minimum length written at least twice over."""
    period = _smallest_period(text)
    return 2 * period <= len(text) and period < MIN_LENGTH


def _steps(a: str, b: str) -> set[tuple[int, int]]:
    """Which (sequence, direction) steps lead from a to b; sequence -1 is 'the same character'."""
    if a == b:
        return {(-1, 0)}
    out = set()
    for index, (chars, wraps) in enumerate(_SEQUENCES):
        i, j = chars.find(a), chars.find(b)
        if i < 0 or j < 0:
            continue
        for direction in (1, -1):
            nxt = i + direction
            if wraps:
                nxt %= len(chars)
            if nxt == j:
                out.add((index, direction))
    return out


def _run_coverage(text: str) -> int:
    """How many characters lie in a run of at least `_MIN_RUN` characters (see the module doc)."""
    covered = [False] * len(text)
    streaks: dict[tuple[int, int], int] = {}
    for i in range(1, len(text)):
        steps = _steps(text[i - 1], text[i])
        streaks = {step: streaks.get(step, 0) + 1 for step in steps}
        for length in streaks.values():
            if length + 1 == _MIN_RUN:  # the run just became long enough: all of it so far
                covered[i - length : i + 1] = [True] * (length + 1)
            elif length + 1 > _MIN_RUN:  # a longer run: the rest is already marked
                covered[i] = True
    return sum(covered)


def _decorated_base(text: str, user_name: str | None) -> str | None:
    """'common' or 'user name' when text is one of those with only non-letters around it."""
    first = next((i for i, c in enumerate(text) if c.isalpha()), len(text))
    last = next((i for i in range(len(text) - 1, -1, -1) if text[i].isalpha()), -1)
    name = user_name.casefold() if user_name else None
    longest = max(_longest_entry(), len(name) if name else 0)
    for start in range(first + 1):
        for end in range(max(start + 1, last + 1), min(len(text), start + longest) + 1):
            core = text[start:end]
            if _is_listed(core):
                return "common"
            if name is not None and hmac.compare_digest(core.encode(), name.encode()):
                return "user name"
    return None


def check_policy(password: str, *, user_name: str | None = None) -> None:
    """Raise PasswordRejected unless `password` meets the policy (the message says which rule)."""
    if not isinstance(password, str):
        raise PasswordRejected("the password must be a string")
    if len(password) < MIN_LENGTH:
        raise PasswordRejected(f"the password is too short: at least {MIN_LENGTH} characters are required")
    if len(password) > MAX_LENGTH:
        raise PasswordRejected(f"the password is too long: at most {MAX_LENGTH} characters")
    if not password.strip():
        raise PasswordRejected("the password must not be only spaces")
    if user_name is not None and hmac.compare_digest(password.casefold().encode(), user_name.casefold().encode()):
        raise PasswordRejected("the password must not be the user name")
    text = password.casefold()
    if _is_listed(text):
        raise PasswordRejected("the password is on the list of common passwords")
    if _repeats_short_part(password) or _repeats_short_part(text):  # casefold may lengthen a character
        raise PasswordRejected("the password repeats one short part over and over")
    if len(set(text)) < MIN_DISTINCT:
        raise PasswordRejected(f"the password has fewer than {MIN_DISTINCT} different characters")
    if 2 * _run_coverage(text) >= len(text):
        raise PasswordRejected(
            "the password is mostly runs: keys in a row on the keyboard, letters or digits"
            " counting up or down, or one character repeated"
        )
    base = _decorated_base(text, user_name)
    if base == "common":
        raise PasswordRejected("the password is a common password or word with only digits or symbols around it")
    if base == "user name":
        raise PasswordRejected("the password is the user name with only digits or symbols around it")
