"""trow.auth.tokens: the key in the data dir, issuing and verifying tokens with a fake clock."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import jwt
import pytest

from tests.unit.test_auth_helpers import T0, fake_clock
from trow.auth.scopes import Scope
from trow.auth.tokens import (
    InvalidToken,
    TokenIssuer,
    key_from_config,
    load_or_create_key,
    rfc3339,
)
from trow.auth.users import AuthSetupError

KEY = b"k" * 32
PULL_A = Scope("repository", "team-a/app", frozenset({"pull"}))
CATALOG = Scope("registry", "catalog", frozenset({"*"}))


def issuer(key: bytes = KEY, ttl: float = 3600) -> tuple[TokenIssuer, object]:
    clock = fake_clock()
    return TokenIssuer(key, ttl, clock.seconds), clock


def claims_of(token: str) -> dict[str, object]:
    """The payload of a JWT, unverified (to look at it, or to forge from it)."""
    return jwt.decode(token, options={"verify_signature": False})


# -- the key -----------------------------------------------------------------------------------


def test_key_is_created_once_and_reused(tmp_path: Path) -> None:
    """The first start creates auth/token.key (0600, in a 0700 dir); later starts read it back."""
    key = load_or_create_key(str(tmp_path))
    path = tmp_path / "auth" / "token.key"
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "auth").stat().st_mode) == 0o700
    assert len(base64.urlsafe_b64decode(key)) >= 32
    assert load_or_create_key(str(tmp_path)) == key
    assert os.listdir(tmp_path / "auth") == ["token.key"]


def test_each_data_dir_gets_its_own_random_key(tmp_path: Path) -> None:
    """Keys are random, not derived from anything guessable."""
    assert load_or_create_key(str(tmp_path / "a")) != load_or_create_key(str(tmp_path / "b"))


def test_leftover_temporary_key_files_are_removed(tmp_path: Path) -> None:
    """A crash mid-creation leaves token.key.<random>: removed once it is old (a young one may be
    a peer replica's creation in progress, and is left alone), and a whole key is made."""
    (tmp_path / "auth").mkdir()
    (tmp_path / "auth" / "token.key.0123abcd").write_bytes(b"half")
    (tmp_path / "auth" / "token.key.young").write_bytes(b"peer")
    os.utime(tmp_path / "auth" / "token.key.0123abcd", (1, 1))
    key = load_or_create_key(str(tmp_path))
    assert sorted(os.listdir(tmp_path / "auth")) == ["token.key", "token.key.young"]
    assert len(key) >= 32


def test_replicas_creating_the_key_at_once_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two replicas on one shared data dir create the key at the same moment: the second finds
    the first's key linked in place and uses it, instead of replacing it with its own."""
    real_link = os.link
    first: list[bytes] = []

    def link_after_a_peer(source: str, target: str) -> None:
        # A peer wins the race just before this process links its own key.
        first.append(b"peer-key-" + b"x" * 40)
        (tmp_path / "auth" / "token.key").write_bytes(first[0] + b"\n")
        real_link(source, target)

    monkeypatch.setattr(os, "link", link_after_a_peer)
    key = load_or_create_key(str(tmp_path))
    assert key == first[0]
    assert os.listdir(tmp_path / "auth") == ["token.key"]


def test_a_short_key_file_is_refused(tmp_path: Path) -> None:
    """A truncated or hand-written short key stops start-up with a clear message."""
    (tmp_path / "auth").mkdir()
    (tmp_path / "auth" / "token.key").write_bytes(b"short\n")
    with pytest.raises(AuthSetupError, match="shorter than 32 bytes"):
        load_or_create_key(str(tmp_path))


def test_key_from_config_value_or_file(tmp_path: Path) -> None:
    """auth.token_key is the secret itself or file:///path; under 32 bytes is refused."""
    assert key_from_config("x" * 40) == b"x" * 40
    path = tmp_path / "key"
    path.write_text("y" * 40 + "\n")
    assert key_from_config(f"file://{path}") == b"y" * 40
    with pytest.raises(AuthSetupError, match="at least 32 bytes"):
        key_from_config("too-short")
    with pytest.raises(AuthSetupError, match="auth.token_key: cannot read"):
        key_from_config(f"file://{tmp_path}/missing")


def test_the_key_file_can_be_given_as_token_key(tmp_path: Path) -> None:
    """Pointing auth.token_key at a data dir's key file gives the same key (for replicas)."""
    key = load_or_create_key(str(tmp_path))
    assert key_from_config(f"file://{tmp_path}/auth/token.key") == key


# -- issuing and verifying ---------------------------------------------------------------------


def test_issue_and_verify() -> None:
    """A token carries its subject and exactly the scopes issued, with the standard claims."""
    tokens, _ = issuer()
    issued = tokens.issue("alice", [PULL_A, CATALOG])
    assert issued.expires_in == 3600
    assert issued.issued_at == "2023-11-14T22:13:20Z"
    body = issued.to_json()
    assert body["token"] == body["access_token"] == issued.token
    assert body["expires_in"] == 3600 and body["issued_at"] == issued.issued_at
    claims = claims_of(issued.token)
    assert claims["iss"] == "trow" and claims["aud"] == "trow" and claims["sub"] == "alice"
    assert claims["iat"] == claims["nbf"] == int(T0) and claims["exp"] == int(T0) + 3600
    assert isinstance(claims["jti"], str) and claims["jti"]
    assert claims["access"] == [
        {"type": "repository", "name": "team-a/app", "actions": ["pull"]},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
    ]
    verified = tokens.verify(issued.token)
    assert verified.subject == "alice"
    assert verified.grants("repository", "team-a/app", "pull")
    assert not verified.grants("repository", "team-a/app", "push")
    assert not verified.grants("repository", "team-a/other", "pull")
    assert verified.grants("registry", "catalog", "*")


def test_anonymous_tokens_have_an_empty_subject() -> None:
    """sub is "" for an anonymous client, and None once verified."""
    tokens, _ = issuer()
    issued = tokens.issue(None, [PULL_A])
    assert claims_of(issued.token)["sub"] == ""
    assert tokens.verify(issued.token).subject is None


def test_token_ids_differ() -> None:
    """Two tokens issued in the same second are different tokens."""
    tokens, _ = issuer()
    assert tokens.issue("a", []).token != tokens.issue("a", []).token


def test_tokens_expire_with_the_clock() -> None:
    """Valid until exp (ttl from auth.token_ttl), invalid from then on."""
    clock = fake_clock()
    tokens = TokenIssuer(KEY, 600, clock.seconds)
    token = tokens.issue("alice", [PULL_A]).token
    clock.advance(599)
    assert tokens.verify(token).subject == "alice"
    clock.advance(1)
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify(token)


def test_tokens_from_the_future_are_not_valid_yet() -> None:
    """nbf is checked against the injected clock."""
    clock = fake_clock()
    later = TokenIssuer(KEY, 600, lambda: T0 + 100)
    token = later.issue("alice", []).token
    with pytest.raises(InvalidToken, match="not valid yet"):
        TokenIssuer(KEY, 600, clock.seconds).verify(token)


def test_tokens_survive_a_restart_with_the_same_key_file(tmp_path: Path) -> None:
    """A new issuer over the same data dir (a restarted trow) accepts tokens issued before."""
    clock = fake_clock()
    before = TokenIssuer(load_or_create_key(str(tmp_path)), 3600, clock.seconds)
    token = before.issue("alice", [PULL_A]).token
    after = TokenIssuer(load_or_create_key(str(tmp_path)), 3600, clock.seconds)
    assert after.verify(token).grants("repository", "team-a/app", "pull")
    other_dir = TokenIssuer(load_or_create_key(str(tmp_path / "other")), 3600, clock.seconds)
    with pytest.raises(InvalidToken, match="signature"):
        other_dir.verify(token)


def test_a_token_signed_with_another_key_is_refused() -> None:
    """Same claims, another key: refused."""
    tokens, _ = issuer()
    forged = TokenIssuer(b"z" * 32, 3600, fake_clock().seconds).issue("alice", [PULL_A]).token
    with pytest.raises(InvalidToken, match="signature"):
        tokens.verify(forged)


def test_a_tampered_token_is_refused() -> None:
    """Changing the payload (widening access) breaks the signature."""
    tokens, _ = issuer()
    header, payload, signature = tokens.issue("alice", [PULL_A]).token.split(".")
    claims = claims_of(f"{header}.{payload}.{signature}")
    claims["access"] = [{"type": "repository", "name": "team-a/app", "actions": ["pull", "push", "delete"]}]
    widened = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidToken, match="signature"):
        tokens.verify(f"{header}.{widened}.{signature}")


def test_an_unsigned_token_is_refused() -> None:
    """alg none (the classic forgery) is never accepted."""
    tokens, _ = issuer()
    claims = claims_of(tokens.issue("alice", [PULL_A]).token)
    unsigned = jwt.encode(claims, None, algorithm="none")
    with pytest.raises(InvalidToken):
        tokens.verify(unsigned)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"aud": "registry.docker.io"}, "another service"),
        ({"iss": "someone-else"}, "another service"),
        ({"exp": None}, "no exp"),
        ({"sub": None}, "no sub"),
        ({"access": None}, "no access"),
        ({"jti": None}, "no jti"),
    ],
)
def test_tokens_with_wrong_or_missing_claims_are_refused(change: dict[str, object], reason: str) -> None:
    """Signed with our key, but for another audience, by another issuer, or incomplete."""
    tokens, _ = issuer()
    claims = claims_of(tokens.issue("alice", [PULL_A]).token)
    for name, value in change.items():
        if value is None:
            del claims[name]
        else:
            claims[name] = value
    with pytest.raises(InvalidToken, match=reason):
        tokens.verify(jwt.encode(claims, KEY, algorithm="HS256"))


@pytest.mark.parametrize("garbage", ["", "x", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9..", "é.é.é"])
def test_garbage_is_an_invalid_token_not_a_crash(garbage: str) -> None:
    """Whatever a client sends as a token, the answer is InvalidToken."""
    tokens, _ = issuer()
    with pytest.raises(InvalidToken):
        tokens.verify(garbage)


def test_malformed_access_entries_grant_nothing() -> None:
    """A signed token whose access entries are odd grants only what parses as a scope."""
    tokens, _ = issuer()
    claims = claims_of(tokens.issue("alice", []).token)
    claims["access"] = [
        "repository:x:pull",
        {"type": "repository", "name": "a b", "actions": ["pull"]},
        {"type": "repository", "name": "ok", "actions": ["pull", 7, "fly"]},
        {"type": "thing", "name": "ok", "actions": ["pull"]},
    ]
    verified = tokens.verify(jwt.encode(claims, KEY, algorithm="HS256"))
    assert verified.access == {("repository", "ok", "pull")}


def test_exception_messages_never_hold_the_token() -> None:
    """InvalidToken says why in words; the token itself stays out."""
    tokens, clock = issuer()
    token = tokens.issue("alice", [PULL_A]).token
    clock.advance(7200)  # type: ignore[attr-defined]
    with pytest.raises(InvalidToken) as raised:
        tokens.verify(token)
    assert token not in str(raised.value) and token.split(".")[2] not in repr(raised.value)
    assert token not in repr(tokens.issue("alice", []))
    assert KEY.decode() not in repr(tokens)


def test_rfc3339() -> None:
    """issued_at is RFC 3339 in UTC."""
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(T0 + 0.9) == "2023-11-14T22:13:20Z"
