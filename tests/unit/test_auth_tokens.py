"""Bearer secrets: shapes, digests, API key parsing."""

from __future__ import annotations

import hashlib

from agent.auth import tokens


def test_session_tokens_are_random_and_well_formed() -> None:
    seen = {tokens.new_session_token() for _ in range(200)}
    assert len(seen) == 200
    assert all(tokens.well_formed_token(t) for t in seen)
    assert not tokens.well_formed_token("abc")
    assert not tokens.well_formed_token("a" * 42 + "!")


def test_digest_is_sha256_hex_and_compare_is_exact() -> None:
    token = tokens.new_session_token()
    d = tokens.digest(token)
    assert d == hashlib.sha256(token.encode()).hexdigest() and len(d) == 64
    assert tokens.digests_match(d, tokens.digest(token))
    assert not tokens.digests_match(d, tokens.digest(token + "x"))


def test_api_key_format_and_parse() -> None:
    prefix, key = tokens.new_api_key()
    assert key.startswith(f"oak_{prefix}_") and len(prefix) == 10
    parsed = tokens.parse_api_key(key)
    assert parsed is not None and parsed.prefix == prefix
    assert tokens.looks_like_api_key(key)
    for bad in ("oak_", "oak_short_x", f"oak_{prefix}_tooshort", f"oak_{prefix.upper()}_{key[-43:]}", key + "x"):
        assert tokens.parse_api_key(bad) is None
