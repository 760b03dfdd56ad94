"""The password policy as a property: what a guesser tries early is refused however it is dressed
up, and a passphrase of unrelated words is accepted however the words are drawn."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.auth.errors import PasswordRejected
from agent.auth.password_policy import MAX_LENGTH, MIN_LENGTH, common_passwords
from agent.auth.passwords import check_policy

# Words a technician might string together; none is on the list, none holds three keys in a
# row, an alphabet or digit run, or a tripled letter, and none is a prefix of another, so four
# different ones never make a repeated pattern.
VOCABULARY = (
    "maple",
    "violin",
    "sleet",
    "harbor",
    "cactus",
    "lantern",
    "pebble",
    "walrus",
    "orchid",
    "mosaic",
    "tundra",
    "kettle",
    "gazebo",
    "bishop",
    "glacier",
    "nutmeg",
    "anchor",
    "quilt",
    "saddle",
    "zephyr",
    "velvet",
    "basalt",
    "cobweb",
    "meadow",
    "pigeon",
    "rubble",
    "tinsel",
    "juniper",
    "oyster",
    "ember",
)
SEPARATORS = (" ", "-", ".", "_", "", " & ")


def refused(password: str, user_name: str | None = None) -> str:
    try:
        check_policy(password, user_name=user_name)
    except PasswordRejected as exc:
        return exc.message
    raise AssertionError(f"accepted {password!r}")


def test_the_vocabulary_meets_the_precondition() -> None:
    listed = common_passwords()
    assert not any(word in listed for word in VOCABULARY)
    assert not any(a != b and b.startswith(a) for a in VOCABULARY for b in VOCABULARY)


@settings(max_examples=200, deadline=None)
@given(
    unit=st.text(min_size=1, max_size=4),
    copies=st.integers(min_value=2, max_value=80),
    cut=st.integers(min_value=0, max_value=3),
)
def test_any_repetition_of_a_short_unit_is_refused(unit: str, copies: int, cut: int) -> None:
    password = (unit * copies + unit[:cut])[:MAX_LENGTH]
    refused(password)


@settings(max_examples=300, deadline=None)
@given(
    entry=st.sampled_from(sorted(common_passwords())),
    upper=st.lists(st.booleans(), min_size=40, max_size=40),
    before=st.text(alphabet="0123456789", max_size=6),
    after=st.text(alphabet="0123456789", max_size=12),
)
def test_a_listed_password_with_digits_added_is_refused(entry: str, upper: list[bool], before: str, after: str) -> None:
    word = "".join(c.upper() if up else c for c, up in zip(entry, upper, strict=False))  # compared lowercase
    password = before + word + after
    if len(password) < MIN_LENGTH:
        password += "1" * (MIN_LENGTH - len(password))  # long enough that the list rules decide
    message = refused(password)
    assert "too short" not in message


@settings(max_examples=300, deadline=None)
@given(
    words=st.lists(st.sampled_from(VOCABULARY), min_size=4, max_size=4, unique=True),
    separator=st.sampled_from(SEPARATORS),
    capitals=st.lists(st.booleans(), min_size=4, max_size=4),
    user_name=st.sampled_from(("olga", "maintenance-01", "tech.2", None)),
)
def test_a_passphrase_of_four_unrelated_words_is_accepted(
    words: list[str], separator: str, capitals: list[bool], user_name: str | None
) -> None:
    password = separator.join(w.capitalize() if cap else w for w, cap in zip(words, capitals, strict=True))
    check_policy(password, user_name=user_name)
