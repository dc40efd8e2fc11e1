"""trow.api.auth over HTTP in memory: challenges and realms, GET and POST /login, 401 vs 403.

A tiny Klein app stands in for the registry routes: it calls the guards the way RegistryAPI is
to call them (GET/HEAD pull, PUT push, DELETE delete), so these tests go through real HTTP.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlencode, urlsplit

import pytest
from klein import Klein
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.web.iweb import IRequest

from tests.unit.harness import Client, Response
from tests.unit.test_auth_helpers import LogCapture, RecordingWorker, bcrypt_hash, fake_clock, logs, write_file
from trow.api.auth import AuthAPI, required_actions
from trow.api.http import send_error, send_json
from trow.auth.service import Authenticator
from trow.config import AuthConfig, config_from_dict
from trow.registry.errors import RegistryError

__all__ = ["logs"]

ACTIONS = {"GET": "pull", "HEAD": "pull", "PUT": "push", "POST": "push", "PATCH": "push", "DELETE": "delete"}
RULES = [
    {"users": ["alice"], "repositories": ["team-a/", "f/127.0.0.1:5000/"], "actions": ["pull", "push", "delete"]},
    {"users": ["*"], "repositories": ["public"], "actions": ["pull"]},
]


class Registry:
    """Stand-in for RegistryAPI: every route guarded as the lead is to wire it."""

    app = Klein()

    def __init__(self, api: AuthAPI) -> None:
        self.api = api

    def _run(self, request: IRequest, work: Callable[[], Awaitable[Any]]) -> "Deferred[Any]":
        async def run() -> Any:
            try:
                return await work()
            except RegistryError as e:
                return send_error(request, e)

        return ensureDeferred(run())

    @app.route("/login", methods=["GET", "POST"])
    def login(self, request: IRequest) -> Any:
        return self.api.login(request)

    @app.route("/v2/", methods=["GET", "HEAD"])
    def base(self, request: IRequest) -> Any:
        async def work() -> Any:
            identity = await self.api.require(request, None)
            return send_json(request, 200, {"user": identity.user})

        return self._run(request, work)

    @app.route("/v2/_catalog", methods=["GET"])
    def catalog(self, request: IRequest) -> Any:
        async def work() -> Any:
            identity = await self.api.require_catalog(request)
            names = ["team-a/app", "team-b/app", "public"]
            return send_json(request, 200, {"repositories": [n for n in names if self.api.can_pull(identity, n)]})

        return self._run(request, work)

    @app.route("/v2/<path:name>/tags/list", methods=["GET"])
    def tags(self, request: IRequest, name: str) -> Any:
        """A proxied read: ?ns=<host> maps the name to the cache repository f/<host>/<name>."""

        async def work() -> Any:
            identity = await self.api.require(request, name, "pull")
            ns = request.args.get(b"ns")
            if ns:
                self.api.authorize(request, identity, name, "pull", f"f/{ns[0].decode()}/{name}")
            return send_json(request, 200, {"user": identity.user})

        return self._run(request, work)

    @app.route("/v2/<path:name>/blobs/uploads/", methods=["POST"])
    def upload(self, request: IRequest, name: str) -> Any:
        """A cross-repository mount: the source is mounted only if the client may pull it."""

        async def work() -> Any:
            identity = await self.api.require(request, name, required_actions(b"POST", "uploads"))
            source = request.args.get(b"from", [b""])[0].decode()
            mounted = bool(source) and self.api.permits(identity, source, "pull")
            return send_json(request, 201 if mounted else 202, {"mounted": mounted})

        return self._run(request, work)

    @app.route("/v2/<path:name>/manifests/<reference>", methods=list(ACTIONS))
    def manifest(self, request: IRequest, name: str, reference: str) -> Any:
        async def work() -> Any:
            action = ACTIONS[request.method.decode()]
            identity = await self.api.require(request, name, action)
            return send_json(request, 200, {"user": identity.user, "name": name, "action": action})

        return self._run(request, work)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def challenge_params(value: str | None) -> dict[str, str]:
    """The parameters of a Bearer challenge."""
    assert value is not None and value.startswith("Bearer "), value
    return dict(re.findall(r'(\w+)="([^"]*)"', value))


class Env:
    """An in-memory registry with auth: alice and bob in htpasswd, admin as --user."""

    def __init__(self, tmp_path: Path, hostname: str | None = None, enabled: bool = True, **section: Any) -> None:
        htpasswd = str(tmp_path / "htpasswd")
        write_file(htpasswd, f"alice:{bcrypt_hash('alice-pw')}\nbob:{bcrypt_hash('bob-pw')}\n")
        section.setdefault("rules", RULES)
        config = config_from_dict({"auth": section}).auth if enabled else AuthConfig()
        self.clock = fake_clock()
        self.authenticator = Authenticator.build(
            user="admin" if enabled else None,
            password="admin-pw" if enabled else None,
            htpasswd=htpasswd if enabled else None,
            config=config,
            data_dir=str(tmp_path / "data"),
            worker=RecordingWorker(),
            clock=self.clock.seconds,
        )
        self.client = Client(Registry(AuthAPI(self.authenticator, hostname)).app.resource())

    def get(self, url: str, authorization: str | None = None, **headers: str) -> Response:
        if authorization is not None:
            headers["Authorization"] = authorization
        return self.client.get(url, headers=headers)

    def login(self, authorization: str | None, *scopes: str) -> Response:
        query = urlencode([("service", "trow")] + [("scope", s) for s in scopes])
        return self.get(f"/login?{query}", authorization)

    def token(self, user: str, password: str, *scopes: str) -> str:
        response = self.login(basic(user, password), *scopes)
        assert response.code == 200, response.body
        return "Bearer " + str(response.json()["token"])


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


# -- challenges ----------------------------------------------------------------------------------


def test_base_without_credentials_is_challenged(env: Env) -> None:
    """/v2/: 401 UNAUTHORIZED, OCI JSON body, Bearer challenge without a scope."""
    response = env.get("/v2/")
    assert response.code == 401
    assert response.header("content-type") == "application/json"
    assert response.error_code() == "UNAUTHORIZED"
    assert response.header("www-authenticate") == 'Bearer realm="http://trow.test/login",service="trow"'


@pytest.mark.parametrize(
    ("method", "action"), [("GET", "pull"), ("HEAD", "pull"), ("PUT", "push"), ("DELETE", "delete")]
)
def test_repository_challenge_names_the_scope(env: Env, method: str, action: str) -> None:
    """The challenge's scope is the repository and the action the request needs."""
    response = env.client.request(method, "/v2/team-a/app/manifests/latest")
    assert response.code == 401
    params = challenge_params(response.header("www-authenticate"))
    assert params == {"realm": "http://trow.test/login", "service": "trow", "scope": f"repository:team-a/app:{action}"}


def test_realm_follows_forwarded_headers(env: Env) -> None:
    """Behind an ingress: X-Forwarded-Proto and the first X-Forwarded-Host."""
    forwarded = {"X-Forwarded-Proto": "https, http", "X-Forwarded-Host": "reg.example.com, trow.svc:8000"}
    response = env.get("/v2/", **forwarded)
    assert challenge_params(response.header("www-authenticate"))["realm"] == "https://reg.example.com/login"


def test_realm_uses_hostname_then_host(tmp_path: Path) -> None:
    """--hostname when nothing is forwarded; the Host header (with its port) without either."""
    env = Env(tmp_path, hostname="registry.corp:5000")
    assert challenge_params(env.get("/v2/").header("www-authenticate"))["realm"] == "http://registry.corp:5000/login"
    forwarded = env.get("/v2/", **{"X-Forwarded-Host": "outside.example.com"})
    assert challenge_params(forwarded.header("www-authenticate"))["realm"] == "http://outside.example.com/login"
    (tmp_path / "plain").mkdir()
    plain = Env(tmp_path / "plain")
    with_port = plain.client.get("http://trow.test:8080/v2/")
    assert challenge_params(with_port.header("www-authenticate"))["realm"] == "http://trow.test:8080/login"


def test_realm_scheme_from_tls(env: Env) -> None:
    """A request that came over TLS gets an https realm."""
    response = env.client.get("https://trow.test/v2/")
    assert challenge_params(response.header("www-authenticate"))["realm"] == "https://trow.test/login"


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-Host": 'evil.com",error="x'},
        {"X-Forwarded-Host": "evil.com/path"},
        {"X-Forwarded-Host": "a b"},
        {"X-Forwarded-Proto": "gopher"},
    ],
)
def test_odd_forwarded_headers_are_ignored(env: Env, headers: dict[str, str]) -> None:
    """A forwarded value that could break or redirect the challenge is not used."""
    response = env.get("/v2/", **headers)
    assert response.header("www-authenticate") == 'Bearer realm="http://trow.test/login",service="trow"'


@pytest.mark.parametrize(
    "value",
    [
        "Basic",
        "Basic ???",
        "Bearer",
        "Bearer not-a-jwt",
        "Token abc",
        "basic " + base64.b64encode(b"\xff\xfe\x00:x").decode(),
        "B\xe9arer x",
    ],
)
def test_garbage_authorization_is_401_never_500(env: Env, value: str) -> None:
    """Malformed credentials get a 401 challenge."""
    response = env.client.get("/v2/team-a/app/manifests/x", headers={"Authorization": value.encode("latin-1")})
    assert response.code == 401
    assert response.error_code() == "UNAUTHORIZED"
    assert challenge_params(response.header("www-authenticate"))["realm"] == "http://trow.test/login"


# -- Basic on /v2/ -------------------------------------------------------------------------------


def test_basic_credentials_on_registry_requests(env: Env) -> None:
    """Right credentials pass; wrong ones 401; right but not allowed 403 DENIED."""
    assert env.get("/v2/", basic("bob", "bob-pw")).json() == {"user": "bob"}
    ok = env.client.put("/v2/team-a/app/manifests/v1", headers={"Authorization": basic("alice", "alice-pw")})
    assert ok.code == 200 and ok.json()["action"] == "push"
    wrong = env.get("/v2/team-a/app/manifests/v1", basic("alice", "bob-pw"))
    assert wrong.code == 401 and wrong.error_code() == "UNAUTHORIZED"
    denied = env.get("/v2/team-a/app/manifests/v1", basic("bob", "bob-pw"))
    assert denied.code == 403 and denied.error_code() == "DENIED"
    assert "www-authenticate" not in denied.headers


# -- the token flow --------------------------------------------------------------------------------


def test_docker_style_token_flow(env: Env) -> None:
    """Challenge -> GET realm with Basic and the challenge's scope -> bearer token -> 200."""
    first = env.get("/v2/team-a/app/manifests/latest")
    params = challenge_params(first.header("www-authenticate"))
    realm = urlsplit(params["realm"])
    query = urlencode({"service": params["service"], "scope": params["scope"]})
    login = env.get(f"{realm.path}?{query}", basic("alice", "alice-pw"))
    assert login.code == 200
    assert login.header("content-type") == "application/json"
    assert login.header("cache-control") == "no-store"
    body = login.json()
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    assert body["token"] == body["access_token"] and body["expires_in"] == 3600
    assert body["issued_at"] == "2023-11-14T22:13:20Z"
    again = env.get("/v2/team-a/app/manifests/latest", "Bearer " + body["token"])
    assert again.code == 200 and again.json()["user"] == "alice"


def test_login_takes_several_scope_parameters_and_spaces(env: Env) -> None:
    """scope repeated, and several scopes in one value: all are considered."""
    token = env.token(
        "alice", "alice-pw", "repository:team-a/app:pull", "repository:team-a/b:push repository:public:pull"
    )
    assert env.get("/v2/team-a/app/manifests/x", token).code == 200
    assert env.client.put("/v2/team-a/b/manifests/x", headers={"Authorization": token}).code == 200
    assert env.get("/v2/public/manifests/x", token).code == 200


def test_login_reduces_scopes_silently(env: Env) -> None:
    """Denied and malformed scopes are left out of the token; the login still succeeds."""
    token = env.token("bob", "bob-pw", "repository:team-a/app:pull,push", "repository:public:*", "nonsense")
    assert env.get("/v2/public/manifests/x", token).code == 200
    assert env.client.put("/v2/public/manifests/x", headers={"Authorization": token}).code == 403
    assert env.get("/v2/team-a/app/manifests/x", token).code == 403


def test_proxied_names_with_ports_through_login(env: Env) -> None:
    """A scope on f/127.0.0.1:5000/library/alpine parses and grants like any other."""
    token = env.token("alice", "alice-pw", "repository:f/127.0.0.1:5000/library/alpine:pull")
    assert env.get("/v2/f/127.0.0.1:5000/library/alpine/manifests/3", token).code == 200


def test_insufficient_scope_challenge(env: Env) -> None:
    """A valid token lacking an action the user may have: 401 with error="insufficient_scope"."""
    token = env.token("alice", "alice-pw", "repository:team-a/app:pull")
    response = env.client.put("/v2/team-a/app/manifests/x", headers={"Authorization": token})
    assert response.code == 401
    params = challenge_params(response.header("www-authenticate"))
    assert params["error"] == "insufficient_scope" and params["scope"] == "repository:team-a/app:push"


def test_expired_token_is_challenged(env: Env) -> None:
    """Past its expiry a token gets a fresh challenge (invalid_token)."""
    token = env.token("alice", "alice-pw", "repository:team-a/app:pull")
    env.clock.advance(3601)
    response = env.get("/v2/team-a/app/manifests/x", token)
    assert response.code == 401
    assert challenge_params(response.header("www-authenticate"))["error"] == "invalid_token"


def test_bad_credentials_on_login(env: Env) -> None:
    """401 UNAUTHORIZED (OCI error body) with a Basic challenge."""
    response = env.login(basic("alice", "nope"), "repository:team-a/app:pull")
    assert response.code == 401
    assert response.error_code() == "UNAUTHORIZED"
    assert response.header("www-authenticate") == 'Basic realm="trow"'
    assert b"token" not in response.body
    bearer = env.login("Bearer abc", "repository:public:pull")
    assert bearer.code == 401 and bearer.header("www-authenticate") == 'Basic realm="trow"'
    garbage = env.login("Basic !!", "repository:public:pull")
    assert garbage.code == 401 and garbage.header("www-authenticate") == 'Basic realm="trow"'


def test_anonymous_login(tmp_path: Path) -> None:
    """anonymous: none -> 401 on /login without credentials; pull -> a pull-only token."""
    closed = Env(tmp_path)
    refused = closed.login(None, "repository:public:pull")
    assert refused.code == 401 and refused.header("www-authenticate") == 'Basic realm="trow"'
    (tmp_path / "open").mkdir()
    open_env = Env(tmp_path / "open", anonymous="pull")
    assert open_env.get("/v2/team-a/app/manifests/x").code == 401  # still challenged
    login = open_env.login(None, "repository:team-a/app:pull,push")
    assert login.code == 200
    token = "Bearer " + login.json()["token"]
    assert open_env.get("/v2/team-a/app/manifests/x", token).code == 200
    assert open_env.client.put("/v2/team-a/app/manifests/x", headers={"Authorization": token}).code == 401


def test_post_login_oauth2_password_grant(env: Env) -> None:
    """containerd's POST form: same JSON answer; the token carries the form's scopes."""
    form = urlencode(
        {
            "grant_type": "password",
            "username": "alice",
            "password": "alice-pw",
            "scope": "repository:team-a/app:pull,push repository:public:pull",
            "service": "trow",
            "client_id": "containerd-client",
            "access_type": "offline",
        }
    ).encode()
    response = env.client.post("/login", form, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.code == 200, response.body
    body = response.json()
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    token = "Bearer " + body["access_token"]
    assert env.client.put("/v2/team-a/app/manifests/x", headers={"Authorization": token}).code == 200
    assert env.get("/v2/public/manifests/x", token).code == 200


def test_post_login_refusals(env: Env) -> None:
    """Wrong password: 401; another grant type: 400 (containerd then falls back to GET)."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    wrong = urlencode({"grant_type": "password", "username": "alice", "password": "x", "scope": "repository:x:pull"})
    response = env.client.post("/login", wrong.encode(), headers=headers)
    assert response.code == 401 and response.error_code() == "UNAUTHORIZED"
    refresh = urlencode({"grant_type": "refresh_token", "refresh_token": "abc"})
    assert env.client.post("/login", refresh.encode(), headers=headers).code == 400
    assert env.client.post("/login", b"\xff\xfe", headers=headers).code == 400


def test_post_login_with_basic_header_and_no_username(env: Env) -> None:
    """A password grant without username in the form falls back to the Basic header."""
    form = urlencode({"grant_type": "password", "scope": "repository:public:pull"}).encode()
    response = env.client.post(
        "/login",
        form,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": basic("bob", "bob-pw")},
    )
    assert response.code == 200


# -- catalog ----------------------------------------------------------------------------------------


def test_catalog(env: Env) -> None:
    """Anonymous: challenged with the catalog scope; a user sees the repositories it may pull."""
    anonymous = env.get("/v2/_catalog")
    assert challenge_params(anonymous.header("www-authenticate"))["scope"] == "registry:catalog:*"
    assert env.get("/v2/_catalog", basic("bob", "bob-pw")).json() == {"repositories": ["public"]}
    token = env.token("alice", "alice-pw", "registry:catalog:*")
    assert env.get("/v2/_catalog", token).json() == {"repositories": ["team-a/app", "public"]}


# -- auth off ---------------------------------------------------------------------------------------


def test_auth_off(tmp_path: Path) -> None:
    """Without auth settings: everything is open, and /login says auth is off."""
    env = Env(tmp_path, enabled=False)
    assert env.get("/v2/").code == 200
    assert env.client.delete("/v2/x/manifests/y").code == 200
    assert env.get("/v2/_catalog").json() == {"repositories": ["team-a/app", "team-b/app", "public"]}
    assert env.login(None, "repository:x:pull").code == 404


# -- secrets ----------------------------------------------------------------------------------------


def test_no_secret_reaches_the_logs(env: Env, logs: LogCapture) -> None:
    """Logins (good, bad, POST), token use and refusals log no password, token or header."""
    token = env.token("alice", "alice-pw", "repository:team-a/app:pull")
    env.login(basic("alice", "guessed-pw"), "repository:team-a/app:pull")
    env.get("/v2/team-a/app/manifests/x", token)
    env.client.put("/v2/team-a/app/manifests/x", headers={"Authorization": token})
    env.get("/v2/team-a/app/manifests/x", basic("bob", "bob-pw"))
    env.client.post(
        "/login",
        urlencode({"grant_type": "password", "username": "alice", "password": "posted-pw"}).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    raw = token.split()[1]
    logs.assert_absent(
        "alice-pw",
        "guessed-pw",
        "bob-pw",
        "posted-pw",
        raw,
        raw.split(".")[2],
        basic("alice", "alice-pw").split()[1],
        basic("bob", "bob-pw").split()[1],
    )


# -- wiring helpers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "kind", "actions"),
    [
        (b"GET", "manifest", ("pull",)),
        (b"HEAD", "blob", ("pull",)),
        (b"get", "tags", ("pull",)),
        (b"GET", "referrers", ("pull",)),
        (b"PUT", "manifest", ("push",)),
        (b"DELETE", "manifest", ("delete",)),
        (b"DELETE", "blob", ("delete",)),
        (b"POST", "uploads", ("push",)),
        (b"PATCH", "upload", ("push",)),
        (b"PUT", "upload", ("push",)),
        (b"GET", "upload", ("push",)),  # an upload's status is part of a push
        (b"DELETE", "upload", ("push",)),  # cancelling an upload is not deleting content
    ],
)
def test_required_actions(method: bytes, kind: str, actions: tuple[str, ...]) -> None:
    """What each registry route needs."""
    assert required_actions(method, kind) == actions


def test_proxied_request_checks_the_cache_repository_too(tmp_path: Path) -> None:
    """?ns=ghcr.io: the rules on f/ghcr.io/... apply, not only those on the name in the path."""
    env = Env(
        tmp_path,
        rules=[
            {"users": ["alice"], "repositories": ["library", "f/docker.io"], "actions": ["pull"]},
            {"users": ["bob"], "repositories": [""], "actions": ["pull"]},
        ],
    )
    alice = basic("alice", "alice-pw")
    assert env.get("/v2/library/alpine/tags/list?ns=docker.io", alice).code == 200
    refused = env.get("/v2/library/alpine/tags/list?ns=ghcr.io", alice)
    assert refused.code == 403 and refused.error_code() == "DENIED"
    assert env.get("/v2/library/alpine/tags/list?ns=ghcr.io", basic("bob", "bob-pw")).code == 200
    token = env.token("alice", "alice-pw", "repository:library/alpine:pull")
    assert env.get("/v2/library/alpine/tags/list?ns=docker.io", token).code == 200
    assert env.get("/v2/library/alpine/tags/list?ns=ghcr.io", token).code == 403


def test_mount_source_needs_pull(env: Env) -> None:
    """A mount from a repository the client may not pull is not done (a plain upload instead)."""

    def mount(source: str, authorization: str) -> int:
        url = f"/v2/team-a/app/blobs/uploads/?mount=sha256:x&from={source}"
        return env.client.post(url, headers={"Authorization": authorization}).code

    alice = basic("alice", "alice-pw")
    assert mount("team-a/base", alice) == 201
    assert mount("team-b/secret", alice) == 202
    # A token without pull on the source: no mount, even though the policy would allow it.
    assert mount("team-a/base", env.token("alice", "alice-pw", "repository:team-a/app:push")) == 202
    wider = env.token("alice", "alice-pw", "repository:team-a/app:push", "repository:team-a/base:pull")
    assert mount("team-a/base", wider) == 201
