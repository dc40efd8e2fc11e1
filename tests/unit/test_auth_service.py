"""trow.auth.service: Authenticator decisions (401 / insufficient scope / 403), login, set-up."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import ensureDeferred

from tests.unit.harness import result_of
from tests.unit.test_auth_helpers import LogCapture, RecordingWorker, bcrypt_hash, fake_clock, logs, write_file
from trow.auth.scopes import Scope, parse_scopes
from trow.auth.service import (
    Authenticator,
    Bearer,
    Credentials,
    Denied,
    Identity,
    Unauthorized,
    check_settings,
    parse_authorization,
)
from trow.auth.users import AuthSetupError
from trow.config import AuthConfig, config_from_dict

__all__ = ["logs"]

RULES = [
    {"users": ["alice"], "repositories": ["team-a/"], "actions": ["pull", "push", "delete"]},
    {"users": ["*"], "repositories": ["public"], "actions": ["pull"]},
]


def auth_config(**section: Any) -> AuthConfig:
    return config_from_dict({"auth": section}).auth


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Env:
    """An authenticator over a temp data dir with alice (htpasswd) and admin (--user)."""

    def __init__(self, tmp_path: Path, **section: Any) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.clock = fake_clock()
        self.htpasswd = str(tmp_path / "htpasswd")
        write_file(self.htpasswd, f"alice:{bcrypt_hash('alice-pw')}\nbob:{bcrypt_hash('bob-pw')}\n")
        self.data_dir = str(tmp_path / "data")
        section.setdefault("rules", RULES)
        self.config = auth_config(**section)
        self.auth = self.build()

    def build(self) -> Authenticator:
        return Authenticator.build(
            user="admin",
            password="admin-pw",
            htpasswd=self.htpasswd,
            config=self.config,
            data_dir=self.data_dir,
            worker=RecordingWorker(),
            clock=self.clock.seconds,
        )

    def identify(self, header: str | None) -> Identity:
        return result_of(ensureDeferred(self.auth.identify(header)))  # type: ignore[no-any-return]

    def require(self, header: str | None, repo: str | None, actions: Any = (), cache: str | None = None) -> Identity:
        return result_of(ensureDeferred(self.auth.require(header, repo, actions, cache)))  # type: ignore[no-any-return]

    def token(self, credentials: Credentials | None, *scopes: str) -> str:
        issued = result_of(ensureDeferred(self.auth.login(credentials, parse_scopes(scopes))))
        return "Bearer " + str(issued.token)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


# -- parsing the Authorization header ----------------------------------------------------------


def test_parse_authorization_schemes_are_case_insensitive() -> None:
    """Basic and Bearer in any case; the password may hold colons."""
    assert parse_authorization(None) is None
    assert parse_authorization("   ") is None
    assert parse_authorization(basic("u", "p:w").replace("Basic", "bAsIc")) == Credentials("u", "p:w")
    assert parse_authorization("BEARER abc.def.ghi") == Bearer("abc.def.ghi")
    assert parse_authorization("bearer   abc") == Bearer("abc")


def test_parse_authorization_tolerates_missing_padding_and_latin1() -> None:
    """Padding-less base64, and non-UTF-8 credentials decoded as latin-1."""
    encoded = base64.b64encode(b"u:pw1").decode().rstrip("=")
    assert parse_authorization("Basic " + encoded) == Credentials("u", "pw1")
    raw = base64.b64encode("u:p\xe9".encode("latin-1")).decode()
    assert parse_authorization("Basic " + raw) == Credentials("u", "p\xe9")


@pytest.mark.parametrize(
    "value",
    [
        "Basic",
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b":no-user").decode(),
        "Bearer",
        "Bearer two words",
        "Digest username=x",
        "garbage",
        "\x00\x01",
    ],
)
def test_garbage_authorization_is_unauthorized(value: str) -> None:
    """Malformed headers raise Unauthorized, never anything else."""
    with pytest.raises(Unauthorized):
        parse_authorization(value)


def test_credentials_keep_the_password_out_of_repr() -> None:
    """repr of credentials and bearer tokens shows no secret."""
    assert "s3cret" not in repr(Credentials("u", "s3cret"))
    assert "tok.en.value" not in repr(Bearer("tok.en.value"))


# -- decisions on repositories ----------------------------------------------------------------


def test_auth_off_allows_everything(tmp_path: Path) -> None:
    """No --user, --htpasswd or auth section: open registry, and no key file written."""
    auth = Authenticator.build(
        user=None,
        password=None,
        htpasswd=None,
        config=AuthConfig(),
        data_dir=str(tmp_path),
        worker=RecordingWorker(),
        clock=fake_clock().seconds,
    )
    assert not auth.enabled
    identity = result_of(ensureDeferred(auth.require(None, "any/repo", ("push", "delete"))))
    assert identity.method == "open"
    assert auth.can_pull(identity, "x")
    assert not (tmp_path / "auth").exists()


def test_no_credentials_get_a_challenge_with_the_scope(env: Env) -> None:
    """Anonymous on a repository: 401 naming the repository and actions; on /v2/: no scope."""
    with pytest.raises(Unauthorized) as raised:
        env.require(None, "team-a/app", "pull")
    assert raised.value.scopes == (Scope("repository", "team-a/app", frozenset({"pull"})),)
    assert raised.value.error is None
    with pytest.raises(Unauthorized) as base:
        env.require(None, None)
    assert base.value.scopes == ()


def test_anonymous_pull_still_challenges_clients_without_credentials(tmp_path: Path) -> None:
    """anonymous: pull does not skip the challenge: the client fetches an anonymous token."""
    env = Env(tmp_path, anonymous="pull")
    with pytest.raises(Unauthorized):
        env.require(None, "team-a/app", "pull")
    with pytest.raises(Unauthorized):
        env.require(None, None)


def test_basic_credentials(env: Env) -> None:
    """Right credentials pass where the policy allows; wrong ones are 401; denied ones 403."""
    assert env.require(basic("alice", "alice-pw"), "team-a/app", ("pull", "push")).user == "alice"
    assert env.require(basic("admin", "admin-pw"), "public", "pull").user == "admin"
    assert env.require(basic("alice", "alice-pw"), None).user == "alice"
    with pytest.raises(Unauthorized):
        env.require(basic("alice", "wrong"), "team-a/app", "pull")
    with pytest.raises(Unauthorized):
        env.require(basic("nobody", "alice-pw"), "public", "pull")
    with pytest.raises(Denied):
        env.require(basic("bob", "bob-pw"), "team-a/app", "pull")
    with pytest.raises(Denied):
        env.require(basic("alice", "alice-pw"), "team-ab/app", "pull")


def test_bearer_token_with_the_scope_passes(env: Env) -> None:
    """A token carrying the actions, for a user the policy still allows, passes."""
    token = env.token(Credentials("alice", "alice-pw"), "repository:team-a/app:pull,push")
    identity = env.require(token, "team-a/app", ("pull", "push"))
    assert identity.user == "alice" and identity.method == "bearer"


def test_token_without_the_scope_but_policy_allows_is_insufficient_scope(env: Env) -> None:
    """The client must fetch a wider token: 401 insufficient_scope naming what is needed."""
    token = env.token(Credentials("alice", "alice-pw"), "repository:team-a/app:pull")
    with pytest.raises(Unauthorized) as raised:
        env.require(token, "team-a/app", "push")
    assert raised.value.error == "insufficient_scope"
    assert raised.value.scopes == (Scope("repository", "team-a/app", frozenset({"push"})),)
    with pytest.raises(Unauthorized) as other:
        env.require(token, "team-a/other", "pull")
    assert other.value.error == "insufficient_scope"


def test_token_without_the_scope_and_policy_denies_is_denied(env: Env) -> None:
    """A fresh token would not help: 403."""
    token = env.token(Credentials("bob", "bob-pw"), "repository:team-a/app:pull")
    with pytest.raises(Denied):
        env.require(token, "team-a/app", "pull")


def test_policy_is_checked_again_on_every_token_use(tmp_path: Path) -> None:
    """A rule removed after the token was issued takes effect at once (after a restart here)."""
    env = Env(tmp_path)
    token = env.token(Credentials("alice", "alice-pw"), "repository:team-a/app:pull,push")
    assert env.require(token, "team-a/app", "push").user == "alice"
    env.config = auth_config(rules=[{"users": ["alice"], "repositories": ["team-a"], "actions": ["pull"]}])
    env.auth = env.build()
    assert env.require(token, "team-a/app", "pull").user == "alice"  # same key: still valid
    with pytest.raises(Denied):
        env.require(token, "team-a/app", "push")


def test_expired_or_forged_tokens_are_invalid_token(env: Env) -> None:
    """Expired, tampered and garbage tokens: 401 invalid_token."""
    token = env.token(Credentials("alice", "alice-pw"), "repository:team-a/app:pull")
    for bad in (token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1], "Bearer x.y.z", token + "x"):
        with pytest.raises(Unauthorized) as raised:
            env.require(bad, "team-a/app", "pull")
        assert raised.value.error == "invalid_token"
    env.clock.advance(3600)
    with pytest.raises(Unauthorized) as expired:
        env.require(token, "team-a/app", "pull")
    assert expired.value.error == "invalid_token" and "expired" in expired.value.message


def test_tokens_of_deleted_users_stop_working(env: Env) -> None:
    """bob removed from the htpasswd file: his token is refused once the file is re-read."""
    token = env.token(Credentials("bob", "bob-pw"), "repository:public:pull")
    assert env.require(token, "public", "pull").user == "bob"
    write_file(env.htpasswd, f"alice:{bcrypt_hash('alice-pw')}\n", mtime_ns=9 * 10**18)
    env.clock.advance(2)
    with pytest.raises(Unauthorized, match="no longer exists"):
        env.require(token, "public", "pull")


def test_proxied_names_follow_the_same_rules(tmp_path: Path) -> None:
    """f/... names are repository names: rules on f/docker.io/ apply, host:port names too."""
    env = Env(
        tmp_path,
        rules=[
            {"users": ["alice"], "repositories": ["f/docker.io/"], "actions": ["pull"]},
            {"users": ["alice"], "repositories": ["f/127.0.0.1:5000"], "actions": ["pull"]},
        ],
    )
    alice = basic("alice", "alice-pw")
    assert env.require(alice, "f/docker.io/library/alpine", "pull").user == "alice"
    assert env.require(alice, "f/127.0.0.1:5000/library/alpine", "pull").user == "alice"
    with pytest.raises(Denied):
        env.require(alice, "f/ghcr.io/x/y", "pull")
    token = env.token(Credentials("alice", "alice-pw"), "repository:f/127.0.0.1:5000/library/alpine:pull")
    assert env.require(token, "f/127.0.0.1:5000/library/alpine", "pull").user == "alice"


def test_the_cache_repository_is_what_the_rules_judge(tmp_path: Path) -> None:
    """?ns=ghcr.io with name x/y reads f/ghcr.io/x/y: the rules on that cache repository decide,
    whatever they say of a local x/y."""
    env = Env(tmp_path, rules=[{"users": ["alice"], "repositories": [""], "actions": ["pull"]},
                                {"users": ["bob"], "repositories": ["x"], "actions": ["pull"]},
                                {"users": ["admin"], "repositories": ["f/ghcr.io/"], "actions": ["pull"]}])
    assert env.require(basic("alice", "alice-pw"), "x/y", "pull", cache="f/ghcr.io/x/y").user == "alice"
    with pytest.raises(Denied):
        env.require(basic("bob", "bob-pw"), "x/y", "pull", cache="f/ghcr.io/x/y")
    assert env.require(basic("bob", "bob-pw"), "x/y", "pull").user == "bob"
    assert env.require(basic("admin", "admin-pw"), "x/y", "pull", cache="f/ghcr.io/x/y").user == "admin"
    with pytest.raises(Denied):
        env.require(basic("admin", "admin-pw"), "x/y", "pull")


def test_an_alias_and_its_host_are_one_repository(tmp_path: Path) -> None:
    """With the cache's canonical names plugged in, a rule on f/<host>/ covers f/<alias>/ in
    requests and in tokens, and a rule naming the alias alone grants nothing extra."""
    env = Env(tmp_path, rules=[{"users": ["alice"], "repositories": ["f/registry.corp:5000/"], "actions": ["pull"]},
                                {"users": ["bob"], "repositories": ["f/corp/"], "actions": ["pull"]}])
    env.auth.canonical = lambda name: name.replace("f/corp/", "f/registry.corp:5000/", 1)
    assert env.require(basic("alice", "alice-pw"), "f/corp/app", "pull").user == "alice"
    token = env.token(Credentials("alice", "alice-pw"), "repository:f/corp/app:pull")
    assert env.require(token, "f/corp/app", "pull").user == "alice"
    with pytest.raises(Denied):
        env.require(basic("bob", "bob-pw"), "f/corp/app", "pull")


def test_anonymous_tokens(tmp_path: Path) -> None:
    """anonymous: pull: a token without credentials pulls; pushing with it asks for a login."""
    env = Env(tmp_path, anonymous="pull")
    token = env.token(None, "repository:team-a/app:pull,push")
    assert env.require(token, "team-a/app", "pull").user is None
    with pytest.raises(Unauthorized) as raised:
        env.require(token, "team-a/app", "push")
    assert raised.value.error is None  # not insufficient_scope: no anonymous token would do


def test_an_anonymous_token_after_anonymous_pull_is_switched_off(tmp_path: Path) -> None:
    """The policy is re-checked for anonymous tokens too."""
    env = Env(tmp_path, anonymous="pull")
    token = env.token(None, "repository:public:pull")
    env.config = auth_config(rules=RULES)
    env.auth = env.build()
    with pytest.raises(Unauthorized):
        env.require(token, "public", "pull")


# -- the catalog --------------------------------------------------------------------------------


def test_catalog_needs_an_authenticated_user(tmp_path: Path) -> None:
    """Anonymous: 401 with the catalog scope; users pass with Basic or a catalog token."""
    env = Env(tmp_path, anonymous="pull")
    with pytest.raises(Unauthorized) as raised:
        env.auth.authorize_catalog(env.identify(None))
    assert raised.value.scopes == (Scope("registry", "catalog", frozenset({"*"})),)
    env.auth.authorize_catalog(env.identify(basic("bob", "bob-pw")))
    with_scope = env.token(Credentials("bob", "bob-pw"), "registry:catalog:*")
    env.auth.authorize_catalog(env.identify(with_scope))
    without = env.token(Credentials("bob", "bob-pw"), "repository:public:pull")
    with pytest.raises(Unauthorized) as insufficient:
        env.auth.authorize_catalog(env.identify(without))
    assert insufficient.value.error == "insufficient_scope"
    anonymous_token = env.token(None, "registry:catalog:*")
    with pytest.raises(Unauthorized):
        env.auth.authorize_catalog(env.identify(anonymous_token))


def test_can_pull_filters_by_identity(env: Env) -> None:
    """can_pull uses the current policy for the identity's user."""
    alice = env.identify(basic("alice", "alice-pw"))
    bob = env.identify(basic("bob", "bob-pw"))
    names = ["team-a/app", "public", "team-b/x"]
    assert [n for n in names if env.auth.can_pull(alice, n)] == ["team-a/app", "public"]
    assert [n for n in names if env.auth.can_pull(bob, n)] == ["public"]


# -- login ----------------------------------------------------------------------------------------


def test_login_grants_only_what_the_policy_allows(env: Env) -> None:
    """Asked scopes are reduced; denied and malformed ones are left out, silently."""
    issued = result_of(
        ensureDeferred(
            env.auth.login(
                Credentials("alice", "alice-pw"),
                parse_scopes(
                    ["repository:team-a/app:pull,push,delete", "repository:public:*", "repository:team-b/x:pull", "bad"]
                ),
            )
        )
    )
    assert [s.format() for s in issued.scopes] == ["repository:team-a/app:pull,push,delete", "repository:public:pull"]


def test_login_refusals(tmp_path: Path) -> None:
    """Wrong credentials: refused; no credentials: refused unless anonymous is pull."""
    env = Env(tmp_path)
    with pytest.raises(Unauthorized):
        env.token(Credentials("alice", "nope"), "repository:public:pull")
    with pytest.raises(Unauthorized):
        env.token(None, "repository:public:pull")
    open_env = Env(tmp_path / "open", anonymous="pull")
    issued = result_of(ensureDeferred(open_env.auth.login(None, parse_scopes(["repository:team-a/app:pull,push"]))))
    assert [s.format() for s in issued.scopes] == ["repository:team-a/app:pull"]
    with pytest.raises(Unauthorized):
        open_env.token(Credentials("alice", "nope"), "repository:public:pull")


def test_login_caps_the_number_of_scopes(env: Env) -> None:
    """A request naming hundreds of repositories gets a token for the first 64 only."""
    scopes = [f"repository:public/x{i}:pull" for i in range(200)]
    env.config = auth_config(rules=[{"users": ["*"], "repositories": [""], "actions": ["pull"]}])
    env.auth = env.build()
    issued = result_of(ensureDeferred(env.auth.login(Credentials("bob", "bob-pw"), parse_scopes(scopes))))
    assert len(issued.scopes) == 64


def test_no_secret_in_logs_or_errors(env: Env, logs: LogCapture) -> None:
    """Passwords and tokens appear in no log event and no exception message."""
    token = env.token(Credentials("alice", "alice-pw"), "repository:team-a/app:pull")
    messages = []
    for header in (basic("alice", "wrong-pw-123"), basic("admin", "admin-pw"), token, token[:-3] + "abc"):
        try:
            env.require(header, "team-a/app", "push")
        except (Unauthorized, Denied) as e:
            messages.append(f"{e} {e!r}")
    assert len(messages) == 4
    for text in messages:
        for secret in ("alice-pw", "wrong-pw-123", "admin-pw", token.split()[1]):
            assert secret not in text
    logs.assert_absent("alice-pw", "wrong-pw-123", "admin-pw", token.split()[1], token.split(".")[2])


# -- set-up ---------------------------------------------------------------------------------------


def test_build_creates_the_key_and_reuses_it(env: Env) -> None:
    """Two builds over one data dir (a restart) share the key: tokens survive."""
    token = env.token(Credentials("alice", "alice-pw"), "repository:team-a/app:pull")
    env.auth = env.build()
    assert env.require(token, "team-a/app", "pull").user == "alice"


def test_build_uses_the_configured_key(tmp_path: Path) -> None:
    """auth.token_key replaces the key file (and none is written)."""
    env = Env(tmp_path, token_key="q" * 40)
    token = env.token(Credentials("alice", "alice-pw"), "repository:team-a/app:pull")
    assert not (Path(env.data_dir) / "auth").exists()
    other = Env(tmp_path / "elsewhere", token_key="q" * 40)
    assert other.require(token, "team-a/app", "pull").user == "alice"


def test_htpasswd_from_the_config_key(tmp_path: Path) -> None:
    """auth.htpasswd is the same as --htpasswd."""
    path = str(tmp_path / "users")
    write_file(path, f"carol:{bcrypt_hash('carol-pw')}\n")
    auth = Authenticator.build(
        user=None,
        password=None,
        htpasswd=None,
        config=auth_config(htpasswd=path),
        data_dir=str(tmp_path / "data"),
        worker=RecordingWorker(),
        clock=fake_clock().seconds,
    )
    assert auth.enabled
    assert result_of(ensureDeferred(auth.require(basic("carol", "carol-pw"), "x", "push"))).user == "carol"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"user": "u", "password": None}, "--user and --password go together"),
        ({"user": None, "password": "p"}, "--user and --password go together"),
        ({"htpasswd": "/nonexistent/htpasswd"}, "--htpasswd /nonexistent/htpasswd: cannot read it"),
        ({"config": AuthConfig(htpasswd="/nonexistent/h", configured=True)}, "auth.htpasswd /nonexistent/h: cannot"),
        ({"config": AuthConfig(configured=True)}, "nobody can log in"),
        ({"user": "u", "password": "p", "config": AuthConfig(token_key="short", configured=True)}, "at least 32 bytes"),
    ],
)
def test_check_settings_refuses_unusable_settings(kwargs: dict[str, Any], message: str) -> None:
    """Each unusable combination is named before anything is bound or written."""
    arguments: dict[str, Any] = {"user": None, "password": None, "htpasswd": None, "config": AuthConfig()}
    arguments.update(kwargs)
    with pytest.raises(AuthSetupError, match=message):
        check_settings(**arguments)


def test_check_settings_accepts_anonymous_only(tmp_path: Path) -> None:
    """An auth section with anonymous: pull and no users is a read-only public registry."""
    check_settings(user=None, password=None, htpasswd=None, config=AuthConfig(anonymous="pull", configured=True))
    auth = Authenticator.build(
        user=None,
        password=None,
        htpasswd=None,
        config=AuthConfig(anonymous="pull", configured=True),
        data_dir=str(tmp_path),
        worker=RecordingWorker(),
        clock=fake_clock().seconds,
    )
    with pytest.raises(Unauthorized):
        result_of(ensureDeferred(auth.require(basic("a", "b"), "x", "pull")))
