"""The API key rules as properties: a key never acts above anyone who made it, never after one of
them is gone, and its audit name can never be mistaken for another caller's."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.auth.errors import UserNameInvalid
from agent.auth.key_scope import standing
from agent.auth.principal import ACTOR_MAX, key_actor
from agent.auth.roles import ROLES, rank
from agent.store.api_keys import ApiKeyRecord, KeyLink
from agent.store.users import check_name

PREFIXES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=10, max_size=10)
# Printable, as key names must be: no control, format or separator characters but the space.
NAMES = st.text(st.characters(exclude_categories=("C", "Z")) | st.just(" "), min_size=1, max_size=64)
USER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{1,63}$")


@settings(max_examples=150, deadline=None)
@given(prefix=PREFIXES, name=NAMES, other=PREFIXES, other_name=NAMES)
def test_a_key_actor_names_its_own_key_and_nobody_else(prefix: str, name: str, other: str, other_name: str) -> None:
    actor = key_actor(prefix, name)
    assert len(actor) <= ACTOR_MAX and actor.isprintable()
    assert actor.startswith(f"oak_{prefix}:")  # the key is told by its prefix, whatever the name says
    assert name.startswith(actor[15:])  # the rest is the name, cut at most
    assert not USER_NAME.match(actor) and not actor.startswith("cli:")
    if other != prefix:
        assert key_actor(other, other_name) != actor
    with pytest.raises(UserNameInvalid):
        check_name(actor)


@given(prefix=PREFIXES, name=st.text(min_size=1, max_size=64))
def test_unprintable_characters_never_reach_the_actor(prefix: str, name: str) -> None:
    assert key_actor(prefix, name).isprintable()


# ---------------------------------------------------------------------------- chains


@dataclass(frozen=True)
class Maker:
    kind: str  # "user" | "cli" | "nobody"
    role: str = "admin"
    found: bool = True
    disabled: bool = False


def record(
    index: int, role: str, revoked: bool, *, user_id: str | None, key_id: str | None, created_by: str
) -> ApiKeyRecord:
    return ApiKeyRecord(
        seq=index, id=f"k{index}", prefix=f"{index:010d}", key_hash="0" * 64, name=f"key {index}", role=role,
        created_by=created_by, created_at="2026-01-01T00:00:00.000000Z", last_used_at=None,
        revoked_at="2026-01-02T00:00:00.000000Z" if revoked else None, revoked_by=None,
        created_by_user_id=user_id, created_by_key_id=key_id,
    )  # fmt: skip


def build(keys: list[tuple[str, bool]], maker: Maker, *, dangling: bool = False) -> list[KeyLink]:
    """Keys nearest first; each made by the next, the last by `maker` (or by a missing key)."""
    links = []
    for index, (role, revoked) in enumerate(keys):
        last = index == len(keys) - 1
        if not last or dangling:
            rec = record(index, role, revoked, user_id=None, key_id=f"k{index + 1}", created_by=f"oak_{index + 1:010d}")
            links.append(KeyLink(rec, False, None, False))
        elif maker.kind == "user":
            rec = record(index, role, revoked, user_id="u1", key_id=None, created_by="ada")
            links.append(KeyLink(rec, maker.found, maker.role if maker.found else None, maker.disabled))
        else:
            rec = record(
                index,
                role,
                revoked,
                user_id=None,
                key_id=None,
                created_by="cli:root" if maker.kind == "cli" else "gone",
            )
            links.append(KeyLink(rec, False, None, False))
    return links


KEYS = st.lists(st.tuples(st.sampled_from(ROLES), st.booleans()), min_size=1, max_size=5)
MAKERS = st.builds(
    Maker,
    kind=st.sampled_from(["user", "cli", "nobody"]),
    role=st.sampled_from(ROLES),
    found=st.booleans(),
    disabled=st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(keys=KEYS, maker=MAKERS, dangling=st.booleans())
def test_a_key_acts_with_the_lowest_role_of_its_chain_and_only_while_all_of_it_holds(
    keys: list[tuple[str, bool]], maker: Maker, dangling: bool
) -> None:
    verdict = standing(build(keys, maker, dangling=dangling))
    holds = (
        not any(revoked for _, revoked in keys)
        and not dangling
        and maker.kind != "nobody"
        and (maker.kind != "user" or (maker.found and not maker.disabled))
    )
    assert verdict.usable is holds, verdict.reason
    if holds:
        roles = [role for role, _ in keys] + ([maker.role] if maker.kind == "user" else [])
        assert verdict.role == min(roles, key=rank)
        assert rank(verdict.role) <= rank(keys[0][0])
    if maker.kind == "user" and not dangling:
        assert verdict.owner_ids == {"u1"}
    assert verdict.chain_ids == {f"k{i}" for i in range(len(keys))}


@settings(max_examples=200, deadline=None)
@given(keys=KEYS, maker=MAKERS, extra=st.tuples(st.sampled_from(ROLES), st.booleans()))
def test_a_longer_chain_never_grants_more(keys: list[tuple[str, bool]], maker: Maker, extra: tuple[str, bool]) -> None:
    """Putting one more key between a key and its maker can only lower its role or refuse it."""
    shorter = standing(build(keys, maker))
    longer = standing(build([*keys, extra], maker))
    if not shorter.usable:
        assert not longer.usable
    elif longer.usable:
        assert shorter.role is not None and rank(longer.role) <= rank(shorter.role)


def test_an_empty_or_broken_chain_is_refused() -> None:
    assert not standing([]).usable
    links = build([("admin", False), ("admin", False)], Maker("cli"))
    moved = replace(links[1], record=replace(links[1].record, id="elsewhere"))
    assert not standing([links[0], moved]).usable  # the maker found is not the one recorded
    assert standing(links).role == "admin"
