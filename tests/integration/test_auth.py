"""Authentication and authorisation end to end (GitHub issue 5, point 7).

Every test talks to a real ``twistd -n trow`` on 127.0.0.1 (L{TrowProcess}), with Debian's
skopeo as the client where a real client matters, and raw HTTP where the exact protocol does
(status, error code, the ``WWW-Authenticate`` challenge). htpasswd files are made with the
``bcrypt`` package; tokens are forged, tampered with and crafted with PyJWT.

One trow process per configuration, shared by the tests of that configuration (module-scoped
fixtures); the tests use repository names of their own so that they do not see each other's
content. Every process is recorded in L{_PROCESSES} and every secret (password, right or wrong,
and every token issued to the tests) in L{_SECRETS}: the last test checks that none of them ever
reached trow's log.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import secrets
import stat
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import quote

import bcrypt
import jwt
import pytest

from tests.images import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, Layout
from tests.integration.conftest import (
    Images,
    RawResponse,
    Skopeo,
    TrowProcess,
    assert_same_image,
    trow_command,
)
from tests.integration.upstream import (  # noqa: F401 - fixtures
    ALIAS,
    ConnectionCounter,
    Upstream,
    UpstreamLog,
    upstream,
)

# -- secrets ---------------------------------------------------------------------------------

# Passwords, right and wrong, and the tokens issued to these tests: none may appear in a log.
_SECRETS: set[str] = set()
# Every trow process this module started (their logs are checked at the end).
_PROCESSES: list[TrowProcess] = []


def _secret(prefix: str) -> str:
    """A random, recognisable secret of this run, remembered for the log check."""
    value = f"{prefix}-{secrets.token_urlsafe(12)}"
    _SECRETS.add(value)
    return value


ALICE_PW = _secret("alice-pw")
BOB_PW = _secret("bob-pw")
CAROL_PW = _secret("carol-pw")
DAVE_PW = _secret("dave-pw")
ERIN_PW = _secret("erin-pw")
FRANK_PW = _secret("frank-pw")
GRACE_PW = _secret("grace-pw")
HEIDI_PW = _secret("heidi-pw")
IVAN_PW = _secret("ivan-pw")
JUDY_PW = _secret("judy-pw")
WRONG_PW = _secret("wrong-pw")
UMA_PW = _secret("üñí-çødé-pässwörd")
LENA_PW = _secret("long-" + "x" * 90)

HOSTNAME = "registry.internal.test"
SERVICE = "trow"
POLL_TIMEOUT = 15.0  # seconds: an upper bound for polls, never a timing assertion


# -- small helpers ---------------------------------------------------------------------------


def basic(user: str, password: str) -> tuple[str, str]:
    """An C{Authorization: Basic} header."""
    return ("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())


def bearer(token: str) -> tuple[str, str]:
    """An C{Authorization: Bearer} header."""
    return ("Authorization", f"Bearer {token}")


def htpasswd_line(user: str, password: str, prefix: bytes = b"$2b$") -> str:
    """One bcrypt htpasswd entry (cost 4: fast), with the C{$2b$} or C{$2y$} prefix."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))
    return f"{user}:{(prefix + hashed[4:]).decode()}"


def write_atomically(path: Path, text: str) -> None:
    """Replace C{path} with C{text} the way an operator's tooling should: a temporary file renamed
    into place, its mtime moved on so that even a coarse-mtime file system shows a change."""
    old_mtime = path.stat().st_mtime_ns if path.exists() else 0
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    new_mtime = max(time.time_ns(), old_mtime + 2_000_000_000)
    os.utime(temporary, ns=(new_mtime, new_mtime))
    os.replace(temporary, path)


def write_config(path: Path, document: dict[str, Any]) -> Path:
    """A trow config file (JSON is YAML)."""
    path.write_text(json.dumps(document, indent=2))
    return path


def wait_until(check: Callable[[], bool], timeout: float = POLL_TIMEOUT, interval: float = 0.1) -> bool:
    """Poll C{check} until it holds or C{timeout} passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return check()
        time.sleep(interval)
    return True


def challenge_realm(trow: TrowProcess) -> str:
    """The challenge trow sends a plain-HTTP client that reached it as C{127.0.0.1:<port>}."""
    return f'Bearer realm="http://{trow.host}/login",service="{SERVICE}"'


def login(
    trow: TrowProcess,
    credentials: tuple[str, str] | None = None,
    scopes: Sequence[str] = (),
    extra: Sequence[tuple[str, str]] = (),
) -> RawResponse:
    """C{GET /login} with Basic C{credentials} (None: anonymous) asking for C{scopes}."""
    query = "&".join([f"service={SERVICE}"] + [f"scope={quote(s, safe='')}" for s in scopes])
    headers = [basic(*credentials)] if credentials else []
    response = trow.request("GET", f"/login?{query}", headers=[*headers, *extra])
    if response.status == 200:
        _SECRETS.add(response.json()["token"])
    return response


def token_for(trow: TrowProcess, credentials: tuple[str, str] | None, scopes: Sequence[str] = ()) -> str:
    """A token from C{/login}; fails the test if there is none."""
    response = login(trow, credentials, scopes)
    assert response.status == 200, f"{response.status} {response.body!r}"
    return str(response.json()["token"])


def claims_of(token: str) -> dict[str, Any]:
    """A token's claims, read without checking its signature."""
    return dict(jwt.decode(token, options={"verify_signature": False}))


def assert_error(response: RawResponse, status: int, code: str) -> None:
    """An OCI error response with this status and this error code."""
    assert response.status == status, f"expected {status} {code}, got {response.status} {response.body[:400]!r}"
    assert code in response.error_codes(), response.body[:400]


def assert_challenged(response: RawResponse, trow: TrowProcess) -> str:
    """A 401 C{UNAUTHORIZED} with a Bearer challenge whose realm is this trow's /login; returns
    the challenge."""
    assert_error(response, 401, "UNAUTHORIZED")
    challenge = response.header("WWW-Authenticate") or ""
    assert challenge.startswith(challenge_realm(trow)), challenge
    return challenge


def assert_refused(result: Any, *words: str) -> None:
    """skopeo failed, and its stderr says why in one of C{words} (case-insensitive)."""
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode != 0, f"skopeo succeeded where it must be refused:\n{stderr}"
    assert any(w in stderr.lower() for w in words), f"skopeo's error mentions none of {words}:\n{stderr}"


# -- images ----------------------------------------------------------------------------------


@dataclass
class RawImage:
    """A tiny image (config, one gzip layer, manifest) to push over raw HTTP."""

    blobs: dict[str, bytes]
    manifest: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()


def raw_image(seed: str) -> RawImage:
    """A small image whose content depends on C{seed}."""

    def digest(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        content = f"content of {seed}\n".encode()
        info = tarfile.TarInfo("seed.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    layer = gzip.compress(tar_bytes.getvalue(), mtime=0)
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [digest(tar_bytes.getvalue())]}}
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": digest(layer), "size": len(layer)}],
        }
    ).encode()
    return RawImage({digest(config): config, digest(layer): layer}, manifest)


def push_raw(trow: TrowProcess, repo: str, tag: str, auth: tuple[str, str], image: RawImage) -> None:
    """Push C{image} as C{repo:tag}: monolithic blob uploads, then the manifest."""
    for digest, data in image.blobs.items():
        response = trow.request(
            "POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", headers=[auth], body=data
        )
        assert response.status == 201, f"blob upload: {response.status} {response.body!r}"
    response = trow.request(
        "PUT",
        f"/v2/{repo}/manifests/{tag}",
        headers=[auth, ("Content-Type", OCI_MANIFEST)],
        body=image.manifest,
    )
    assert response.status == 201, f"manifest: {response.status} {response.body!r}"


@pytest.fixture(scope="module")
def small_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout holding one small image, tag C{small}, for skopeo."""
    path = tmp_path_factory.mktemp("auth-images") / "layout"
    Layout(str(path)).image(
        [], tag="small", gzip_layers=[{"etc/motd": b"auth test\n"}, {"app/data": os.urandom(4096)}]
    )
    return path


def push_with_skopeo(skopeo: Skopeo, layout: Path, dest: str, *flags: str, check: bool = True) -> Any:
    """skopeo copy of the small image to a plain-HTTP trow, digests preserved."""
    return skopeo.run(
        "copy", "--preserve-digests", "--dest-tls-verify=false", *flags, f"oci:{layout}:small", dest, check=check
    )


def pull_with_skopeo(skopeo: Skopeo, source: str, layout: Path, *flags: str, check: bool = True) -> Any:
    """skopeo copy from a plain-HTTP trow into an OCI layout (tag C{v1})."""
    return skopeo.run(
        "copy", "--preserve-digests", "--src-tls-verify=false", *flags, source, f"oci:{layout}:v1", check=check
    )


# -- trow processes --------------------------------------------------------------------------


def running_trow(
    tmp_path_factory: pytest.TempPathFactory, name: str, args: Sequence[str]
) -> Iterator[TrowProcess]:
    """A trow with C{args} for the tests of one fixture; recorded for the log check."""
    instance = TrowProcess(tmp_path_factory.mktemp(name), extra_args=list(args))
    _PROCESSES.append(instance)
    try:
        instance.start()
        yield instance
    finally:
        instance.close()


@pytest.fixture(scope="module")
def single_user_trow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrowProcess]:
    """C{--user alice --password <secret>}: alice may do everything, nobody else anything."""
    yield from running_trow(tmp_path_factory, "auth-single", ["--user", "alice", "--password", ALICE_PW])


@pytest.fixture(scope="module")
def password_file_trow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrowProcess]:
    """C{--user bob --password file:///...} (the file ends with a newline, as C{echo} writes it),
    and C{--hostname}."""
    secret_file = tmp_path_factory.mktemp("auth-secret") / "bob.password"
    secret_file.write_text(BOB_PW + "\n")
    secret_file.chmod(0o600)
    args = ["--user", "bob", "--password", f"file://{secret_file}", "--hostname", HOSTNAME]
    yield from running_trow(tmp_path_factory, "auth-pwfile", args)


@pytest.fixture(scope="module")
def htpasswd_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An htpasswd file with carol ($2b$), dave ($2y$, as C{htpasswd -B} writes it), uma (a
    non-ASCII password) and lena (a password longer than bcrypt's 72 bytes, hashed truncated as
    C{htpasswd -B} does), plus a comment and a non-bcrypt entry that trow skips."""
    path = tmp_path_factory.mktemp("auth-htpasswd") / "htpasswd"
    lines = [
        "# made by the auth integration tests",
        htpasswd_line("carol", CAROL_PW),
        htpasswd_line("dave", DAVE_PW, b"$2y$"),
        htpasswd_line("uma", UMA_PW),
        "lena:" + bcrypt.hashpw(LENA_PW.encode()[:72], bcrypt.gensalt(rounds=4)).decode(),
        "md5user:$apr1$abcdefgh$0123456789abcdefghijkl",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def htpasswd_trow(tmp_path_factory: pytest.TempPathFactory, htpasswd_file: Path) -> Iterator[TrowProcess]:
    """C{--htpasswd FILE}, the file being rewritten by the test while trow runs."""
    yield from running_trow(tmp_path_factory, "auth-htpasswd-trow", ["--htpasswd", str(htpasswd_file)])


@pytest.fixture(scope="module")
def anonymous_trow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrowProcess]:
    """C{auth: {anonymous: pull, token_ttl: 90s}} and C{--user erin}: anyone pulls, erin pushes."""
    config = write_config(
        tmp_path_factory.mktemp("auth-anon-config") / "config.yml",
        {"auth": {"anonymous": "pull", "token_ttl": "90s"}},
    )
    args = ["--config", str(config), "--user", "erin", "--password", ERIN_PW]
    yield from running_trow(tmp_path_factory, "auth-anon", args)


@pytest.fixture(scope="module")
def rules_trow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrowProcess]:
    """Rules: frank may pull and push under C{team-a/}; every authenticated user may pull
    everything. Users come from C{auth.htpasswd} (frank and grace)."""
    directory = tmp_path_factory.mktemp("auth-rules-config")
    users = directory / "htpasswd"
    users.write_text(htpasswd_line("frank", FRANK_PW) + "\n" + htpasswd_line("grace", GRACE_PW) + "\n")
    config = write_config(
        directory / "config.yml",
        {
            "auth": {
                "htpasswd": str(users),
                "rules": [
                    {"users": ["frank"], "repositories": ["team-a/"], "actions": ["pull", "push"]},
                    {"users": ["*"], "repositories": [""], "actions": ["pull"]},
                ],
            }
        },
    )
    yield from running_trow(tmp_path_factory, "auth-rules", ["--config", str(config)])


@pytest.fixture(scope="module")
def upstream_stand_in() -> Iterator[ConnectionCounter]:
    """The stand-in upstream of L{proxy_rules_trow}."""
    stand_in = ConnectionCounter()
    try:
        yield stand_in
    finally:
        stand_in.close()


@pytest.fixture(scope="module")
def proxy_rules_trow(
    tmp_path_factory: pytest.TempPathFactory, upstream_stand_in: ConnectionCounter
) -> Iterator[TrowProcess]:
    """A cache of the stand-in upstream (alias C{up}, plain HTTP) with rules: frank may pull
    everything and push under C{frank/}; grace may pull and push under C{team-b/} only (so
    nothing under C{f/}); heidi may pull the stand-in's cache only, named by its host."""
    directory = tmp_path_factory.mktemp("auth-proxy-config")
    users = directory / "htpasswd"
    users.write_text(
        "\n".join(
            [htpasswd_line("frank", FRANK_PW), htpasswd_line("grace", GRACE_PW), htpasswd_line("heidi", HEIDI_PW)]
        )
        + "\n"
    )
    config = write_config(
        directory / "config.yml",
        {
            "registry_proxies": {
                "registries": [{"host": upstream_stand_in.host, "alias": "up", "insecure": True}]
            },
            "auth": {
                "htpasswd": str(users),
                "rules": [
                    {"users": ["frank"], "repositories": [""], "actions": ["pull"]},
                    {"users": ["frank"], "repositories": ["frank/"], "actions": ["push"]},
                    {"users": ["grace"], "repositories": ["team-b/"], "actions": ["pull", "push"]},
                    {"users": ["heidi"], "repositories": [f"f/{upstream_stand_in.host}/"], "actions": ["pull"]},
                ],
            },
        },
    )
    yield from running_trow(tmp_path_factory, "auth-proxy", ["--config", str(config)])


@pytest.fixture(scope="module")
def registry_cache_trow(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[TrowProcess]:
    """A cache of the session's real upstream registry (docker-registry, alias C{up}, plain
    HTTP) with rules: ivan may pull everything under C{f/} (the cache) and nothing else; judy may
    pull and push under C{team-j/} only."""
    directory = tmp_path_factory.mktemp("auth-cache-config")
    users = directory / "htpasswd"
    users.write_text(htpasswd_line("ivan", IVAN_PW) + "\n" + htpasswd_line("judy", JUDY_PW) + "\n")
    config = write_config(
        directory / "config.yml",
        {
            "registry_proxies": {
                "registries": [{"host": upstream.registry.host, "alias": ALIAS, "insecure": True}]
            },
            "auth": {
                "htpasswd": str(users),
                "rules": [
                    {"users": ["ivan"], "repositories": ["f/"], "actions": ["pull"]},
                    {"users": ["judy"], "repositories": ["team-j/"], "actions": ["pull", "push"]},
                ],
            },
        },
    )
    yield from running_trow(tmp_path_factory, "auth-cache", ["--config", str(config)])


# == 1. --user / --password ==================================================================


def test_single_user_push_and_pull_with_skopeo(
    single_user_trow: TrowProcess, skopeo: Skopeo, small_image: Path, tmp_path: Path
) -> None:
    """With C{--user/--password}, skopeo pushes with C{--dest-creds} and pulls back with
    C{--src-creds} (the Bearer token flow through /login), and every digest survives."""
    ref = single_user_trow.ref("single/app:v1")
    push_with_skopeo(skopeo, small_image, ref, "--dest-creds", f"alice:{ALICE_PW}")
    pulled = tmp_path / "pulled"
    pull_with_skopeo(skopeo, ref, pulled, "--src-creds", f"alice:{ALICE_PW}")
    assert_same_image(small_image, "small", pulled, "v1")


def test_single_user_refuses_clients_without_credentials(
    single_user_trow: TrowProcess, skopeo: Skopeo, small_image: Path, tmp_path: Path
) -> None:
    """Without credentials skopeo can neither push nor pull (the image exists: alice pushed it
    first), and the refusal says it is about authentication."""
    ref = single_user_trow.ref("single/anon-refused:v1")
    push_with_skopeo(skopeo, small_image, ref, "--dest-creds", f"alice:{ALICE_PW}")

    refused_push = push_with_skopeo(skopeo, small_image, single_user_trow.ref("single/anon-push:v1"), check=False)
    assert_refused(refused_push, "unauthorized", "authentication")
    refused_pull = pull_with_skopeo(skopeo, ref, tmp_path / "anon", check=False)
    assert_refused(refused_pull, "unauthorized", "authentication")

    # Nothing of the refused push was stored.
    listed = single_user_trow.request(
        "GET", "/v2/single/anon-push/tags/list", headers=[basic("alice", ALICE_PW)]
    )
    assert listed.status == 404, listed


def test_single_user_refuses_a_wrong_password(
    single_user_trow: TrowProcess, skopeo: Skopeo, small_image: Path, tmp_path: Path
) -> None:
    """A wrong password (and an unknown user with the right password) is refused by skopeo for
    push and pull, and by /login and Basic on /v2/ over raw HTTP; the right one is accepted."""
    ref = single_user_trow.ref("single/wrong-pw:v1")
    push_with_skopeo(skopeo, small_image, ref, "--dest-creds", f"alice:{ALICE_PW}")

    refused_push = push_with_skopeo(skopeo, small_image, ref, "--dest-creds", f"alice:{WRONG_PW}", check=False)
    assert_refused(refused_push, "unauthorized", "authentication")
    refused_pull = pull_with_skopeo(skopeo, ref, tmp_path / "wrong", "--src-creds", f"alice:{WRONG_PW}", check=False)
    assert_refused(refused_pull, "unauthorized", "authentication")

    for credentials in [("alice", WRONG_PW), ("mallory", ALICE_PW), ("alice", "")]:
        answer = login(single_user_trow, credentials, ["repository:single/wrong-pw:pull"])
        assert_error(answer, 401, "UNAUTHORIZED")
        assert (answer.header("WWW-Authenticate") or "").startswith("Basic "), answer.headers
        assert b"token" not in answer.body
        on_v2 = single_user_trow.request("GET", "/v2/single/wrong-pw/manifests/v1", headers=[basic(*credentials)])
        assert_challenged(on_v2, single_user_trow)

    accepted = single_user_trow.request("GET", "/v2/single/wrong-pw/manifests/v1", headers=[basic("alice", ALICE_PW)])
    assert accepted.status == 200, accepted
    assert accepted.header("Docker-Content-Digest") == "sha256:" + hashlib.sha256(accepted.body).hexdigest()


def test_login_answers_in_the_docker_token_format(single_user_trow: TrowProcess) -> None:
    """GET /login answers C{token}, C{access_token} (the same), C{expires_in} (the default hour)
    and C{issued_at}, uncacheable; the token grants exactly the scope asked for. POST /login
    (OAuth2 password grant) gives a token too, and refuses a wrong password."""
    answer = login(single_user_trow, ("alice", ALICE_PW), ["repository:single/shape:pull,push"])
    assert answer.status == 200, answer
    body = answer.json()
    assert set(body) >= {"token", "access_token", "expires_in", "issued_at"}
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 3600
    time.strptime(body["issued_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert "no-store" in (answer.header("Cache-Control") or "")
    claims = claims_of(body["token"])
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["access"] == [{"type": "repository", "name": "single/shape", "actions": ["pull", "push"]}]

    form = f"grant_type=password&service=trow&username=alice&password={quote(ALICE_PW)}&scope=repository:single/shape:pull"
    posted = single_user_trow.request(
        "POST", "/login", headers=[("Content-Type", "application/x-www-form-urlencoded")], body=form.encode()
    )
    assert posted.status == 200, posted
    _SECRETS.add(posted.json()["token"])
    assert claims_of(posted.json()["token"])["access"][0]["actions"] == ["pull"]
    # Without auth.anonymous: pull there are no anonymous tokens.
    assert_error(login(single_user_trow, None, ["repository:single/shape:pull"]), 401, "UNAUTHORIZED")
    wrong = form.replace(quote(ALICE_PW), quote(WRONG_PW))
    refused = single_user_trow.request(
        "POST", "/login", headers=[("Content-Type", "application/x-www-form-urlencoded")], body=wrong.encode()
    )
    assert_error(refused, 401, "UNAUTHORIZED")


# == 2. --password file:///path ==============================================================


def test_password_from_a_file(password_file_trow: TrowProcess) -> None:
    """C{--password file:///path}: the password is the file's content (trailing newline
    stripped), not the C{file://} string, and it works for /login and Basic on /v2/."""
    trow = password_file_trow
    assert trow.request("GET", "/v2/", headers=[basic("bob", BOB_PW)]).status == 200
    token = token_for(trow, ("bob", BOB_PW), ["repository:bob/app:pull,push"])
    push_raw(trow, "bob/app", "v1", bearer(token), raw_image("bob"))

    for wrong in [f"file://{trow.workdir}", BOB_PW + "\n", WRONG_PW]:
        assert_error(login(trow, ("bob", wrong)), 401, "UNAUTHORIZED")


# == 3. --htpasswd, re-read on change ========================================================


def test_htpasswd_users_follow_the_file(htpasswd_trow: TrowProcess, htpasswd_file: Path) -> None:
    """With C{--htpasswd}, both users of the file log in ($2b$ and $2y$ hashes). A user added
    to the file while trow runs logs in without a restart; a user removed from it can no longer
    log in, nor use a token issued before the removal; the others are unaffected. A changed
    password replaces the old one. A file that vanishes keeps the users read last. Non-ASCII
    passwords work; bcrypt's 72-byte limit is handled as C{htpasswd -B} does; non-bcrypt entries
    are skipped."""
    trow = htpasswd_trow
    pull = ["repository:team/app:pull"]
    assert login(trow, ("carol", CAROL_PW), pull).status == 200
    assert login(trow, ("dave", DAVE_PW), pull).status == 200
    assert trow.request("GET", "/v2/", headers=[basic("dave", DAVE_PW)]).status == 200
    assert login(trow, ("uma", UMA_PW), pull).status == 200
    assert login(trow, ("lena", LENA_PW), pull).status == 200
    assert_error(login(trow, ("lena", LENA_PW[:71]), pull), 401, "UNAUTHORIZED")
    assert_error(login(trow, ("md5user", "anything"), pull), 401, "UNAUTHORIZED")
    new_pw = _secret("newcomer-pw")
    assert_error(login(trow, ("newcomer", new_pw), pull), 401, "UNAUTHORIZED")
    dave_token = token_for(trow, ("dave", DAVE_PW), pull)

    lines = htpasswd_file.read_text().splitlines()
    write_atomically(htpasswd_file, "\n".join(lines + [htpasswd_line("newcomer", new_pw)]) + "\n")
    assert wait_until(lambda: login(trow, ("newcomer", new_pw), pull).status == 200), (
        "a user added to the htpasswd file never got in:\n" + trow.log()
    )
    assert login(trow, ("carol", CAROL_PW), pull).status == 200
    assert trow.request("GET", "/v2/", headers=[basic("newcomer", new_pw)]).status == 200

    kept = [line for line in htpasswd_file.read_text().splitlines() if not line.startswith("dave:")]
    write_atomically(htpasswd_file, "\n".join(kept) + "\n")
    assert wait_until(lambda: login(trow, ("dave", DAVE_PW), pull).status == 401), (
        "a user removed from the htpasswd file still logs in:\n" + trow.log()
    )
    assert_challenged(trow.request("GET", "/v2/", headers=[basic("dave", DAVE_PW)]), trow)
    assert_challenged(trow.request("GET", "/v2/team/app/tags/list", headers=[bearer(dave_token)]), trow)
    assert login(trow, ("carol", CAROL_PW), pull).status == 200
    assert login(trow, ("newcomer", new_pw), pull).status == 200

    # A changed password: the old one stops working (its cached check included), the new works.
    changed_pw = _secret("carol-new-pw")
    kept = [line for line in htpasswd_file.read_text().splitlines() if not line.startswith("carol:")]
    write_atomically(htpasswd_file, "\n".join(kept + [htpasswd_line("carol", changed_pw)]) + "\n")
    assert wait_until(lambda: login(trow, ("carol", changed_pw), pull).status == 200), trow.log()
    assert_error(login(trow, ("carol", CAROL_PW), pull), 401, "UNAUTHORIZED")
    assert_challenged(trow.request("GET", "/v2/", headers=[basic("carol", CAROL_PW)]), trow)

    # The file vanishes (a botched deployment): the users read last stay, with a warning.
    saved = htpasswd_file.read_text()
    htpasswd_file.unlink()
    try:
        assert wait_until(
            lambda: login(trow, ("carol", changed_pw), pull).status == 200 and "cannot be read" in trow.log()
        ), trow.log()
        assert login(trow, ("newcomer", new_pw), pull).status == 200
    finally:
        write_atomically(htpasswd_file, saved)


# == 4. anonymous: pull ======================================================================


def test_anonymous_pull_with_skopeo(
    anonymous_trow: TrowProcess, skopeo: Skopeo, small_image: Path, tmp_path: Path
) -> None:
    """With C{anonymous: pull}, skopeo pulls without credentials what erin pushed, and cannot
    push without them."""
    ref = anonymous_trow.ref("anon/app:v1")
    push_with_skopeo(skopeo, small_image, ref, "--dest-creds", f"erin:{ERIN_PW}")
    pulled = tmp_path / "pulled"
    pull_with_skopeo(skopeo, ref, pulled)
    assert_same_image(small_image, "small", pulled, "v1")

    refused = push_with_skopeo(skopeo, small_image, anonymous_trow.ref("anon/intruder:v1"), check=False)
    assert_refused(refused, "unauthorized", "authentication", "denied")
    # Nothing of the refused push was stored.
    listed = anonymous_trow.request("GET", "/v2/anon/intruder/tags/list", headers=[basic("erin", ERIN_PW)])
    assert listed.status == 404, listed


def test_anonymous_pull_still_challenges_and_grants_pull_only(anonymous_trow: TrowProcess) -> None:
    """With C{anonymous: pull}, an anonymous C{GET /v2/} still gets the Bearer challenge (that
    is how clients find the token endpoint); an anonymous token asked for pull and push grants
    pull only (for C{token_ttl}), and a push with it is refused; a pull with it works."""
    trow = anonymous_trow
    base = trow.request("GET", "/v2/")
    assert_error(base, 401, "UNAUTHORIZED")
    assert base.header("WWW-Authenticate") == challenge_realm(trow)

    push_raw(trow, "anon/raw", "v1", basic("erin", ERIN_PW), raw_image("anon-raw"))
    answer = login(trow, None, ["repository:anon/raw:pull,push"])
    assert answer.status == 200, answer
    assert answer.json()["expires_in"] == 90
    token = answer.json()["token"]
    claims = claims_of(token)
    assert claims["sub"] == ""
    assert claims["access"] == [{"type": "repository", "name": "anon/raw", "actions": ["pull"]}]

    upload = trow.request("POST", "/v2/anon/raw/blobs/uploads/", headers=[bearer(token)])
    assert upload.status in (401, 403), upload
    assert_error(upload, upload.status, "UNAUTHORIZED" if upload.status == 401 else "DENIED")
    manifest = trow.request("PUT", "/v2/anon/raw/manifests/v2", headers=[bearer(token), ("Content-Type", OCI_MANIFEST)], body=b"{}")
    assert manifest.status in (401, 403), manifest
    assert trow.request("GET", "/v2/anon/raw/manifests/v1", headers=[bearer(token)]).status == 200


# == 5. rules ================================================================================


def test_rules_with_skopeo(rules_trow: TrowProcess, skopeo: Skopeo, small_image: Path, tmp_path: Path) -> None:
    """frank (push on C{team-a/}) pushes C{team-a/app} with skopeo; his push to C{team-b/app}
    fails as denied; grace (pull on everything) pulls C{team-a/app}."""
    push_with_skopeo(skopeo, small_image, rules_trow.ref("team-a/app:v1"), "--dest-creds", f"frank:{FRANK_PW}")
    refused = push_with_skopeo(
        skopeo, small_image, rules_trow.ref("team-b/app:v1"), "--dest-creds", f"frank:{FRANK_PW}", check=False
    )
    assert_refused(refused, "denied", "unauthorized")
    pulled = tmp_path / "pulled"
    pull_with_skopeo(skopeo, rules_trow.ref("team-a/app:v1"), pulled, "--src-creds", f"grace:{GRACE_PW}")
    assert_same_image(small_image, "small", pulled, "v1")


def test_rules_over_raw_http(rules_trow: TrowProcess) -> None:
    """Rules on component boundaries, as 403 C{DENIED} to a known user: frank may push to
    C{team-a/app} (and C{team-a} itself), not to C{team-b/app} nor C{team-ab/app}; grace may
    pull but not push. A token asked for more than the rules allow carries only what they allow,
    and a push with it is denied."""
    trow = rules_trow
    frank, grace = basic("frank", FRANK_PW), basic("grace", GRACE_PW)
    for repo in ["team-a/rawapp", "team-a"]:
        started = trow.request("POST", f"/v2/{repo}/blobs/uploads/", headers=[frank])
        assert started.status == 202, (repo, started)
    for repo in ["team-b/app", "team-ab/app", "team-a-b/app", "other/team-a/app"]:
        assert_error(trow.request("POST", f"/v2/{repo}/blobs/uploads/", headers=[frank]), 403, "DENIED")
    push_raw(trow, "team-a/raw", "v1", frank, raw_image("team-a-raw"))

    assert trow.request("GET", "/v2/team-a/raw/manifests/v1", headers=[grace]).status == 200
    assert_error(trow.request("POST", "/v2/team-a/raw/blobs/uploads/", headers=[grace]), 403, "DENIED")
    assert_error(trow.request("DELETE", "/v2/team-a/raw/manifests/v1", headers=[frank]), 403, "DENIED")

    token = token_for(trow, ("frank", FRANK_PW), ["repository:team-b/app:pull,push", "repository:team-a/app:pull,push"])
    access = {entry["name"]: entry["actions"] for entry in claims_of(token)["access"]}
    assert access == {"team-b/app": ["pull"], "team-a/app": ["pull", "push"]}
    assert_error(trow.request("POST", "/v2/team-b/app/blobs/uploads/", headers=[bearer(token)]), 403, "DENIED")
    assert trow.request("POST", "/v2/team-a/app/blobs/uploads/", headers=[bearer(token)]).status == 202


# == 6. tokens survive a restart =============================================================


def test_token_survives_a_restart(trow_factory: Callable[..., TrowProcess]) -> None:
    """A token issued before a restart on the same data dir still pulls after it: the signing key
    is kept in C{<data-dir>/auth/token.key}, mode 0600 in a 0700 directory, unchanged."""
    trow = trow_factory("restart", extra_args=["--user", "alice", "--password", ALICE_PW])
    _PROCESSES.append(trow)
    image = raw_image("restart")
    push_raw(trow, "keep/app", "v1", basic("alice", ALICE_PW), image)
    token = token_for(trow, ("alice", ALICE_PW), ["repository:keep/app:pull"])
    key_file = trow.data_dir / "auth" / "token.key"
    key = key_file.read_bytes()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700

    trow.restart()
    fetched = trow.request("GET", f"/v2/keep/app/manifests/v1", headers=[bearer(token)])
    assert fetched.status == 200, fetched
    assert fetched.body == image.manifest
    assert key_file.read_bytes() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


# == 7. forged, tampered and expired tokens ==================================================


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _craft(key: bytes | str, subject: str, repo: str, actions: list[str], issued: int, lifetime: int) -> str:
    """A token with trow's claims, signed with C{key}."""
    claims = {
        "iss": "trow",
        "aud": "trow",
        "sub": subject,
        "iat": issued,
        "nbf": issued,
        "exp": issued + lifetime,
        "jti": secrets.token_urlsafe(16),
        "access": [{"type": "repository", "name": repo, "actions": actions}],
    }
    token = jwt.encode(claims, key, algorithm="HS256")
    _SECRETS.add(token)
    return token


def test_bad_tokens_get_a_bearer_challenge(single_user_trow: TrowProcess) -> None:
    """Tokens trow did not issue, or no longer honours, are 401 with a Bearer challenge
    (C{error="invalid_token"}): signed with another key, payload altered (one character flipped;
    or rewritten to grant push, signature kept), C{alg: none}, expired (crafted with trow's own
    key, so no waiting). The same crafting with a future expiry is accepted: the refusals are
    about what was wrong, not about how the tokens were made."""
    trow = single_user_trow
    repo = "tokens/app"
    image = raw_image("tokens")
    push_raw(trow, repo, "v1", basic("alice", ALICE_PW), image)
    path = f"/v2/{repo}/manifests/v1"
    key = (trow.data_dir / "auth" / "token.key").read_bytes().strip()
    now = int(time.time())

    good = _craft(key, "alice", repo, ["pull"], now - 10, 600)
    assert trow.request("GET", path, headers=[bearer(good)]).status == 200
    issued = token_for(trow, ("alice", ALICE_PW), [f"repository:{repo}:pull"])
    assert trow.request("GET", path, headers=[bearer(issued)]).status == 200

    header, payload, signature = issued.split(".")
    flipped_at = len(payload) // 2
    flipped = payload[:flipped_at] + ("A" if payload[flipped_at] != "A" else "B") + payload[flipped_at + 1 :]
    escalated_claims = json.loads(_unb64url(payload))
    escalated_claims["access"] = [{"type": "repository", "name": repo, "actions": ["pull", "push", "delete"]}]
    escalated = _b64url(json.dumps(escalated_claims).encode())
    none_claims = dict(escalated_claims, exp=now + 600)
    bad = {
        "forged": _craft(_b64url(secrets.token_bytes(48)), "alice", repo, ["pull", "push"], now - 10, 600),
        "flipped": f"{header}.{flipped}.{signature}",
        "escalated": f"{header}.{escalated}.{signature}",
        "alg-none": jwt.encode(none_claims, "", algorithm="none"),
        "expired": _craft(key, "alice", repo, ["pull"], now - 7200, 3600),
        "not-yet-valid": _craft(key, "alice", repo, ["pull"], now + 3600, 3600),
        "unknown-user": _craft(key, "mallory", repo, ["pull"], now - 10, 600),
        "garbage": "not-a-jwt",
    }
    for what, token in bad.items():
        _SECRETS.add(token)
        for method, target in [("GET", path), ("POST", f"/v2/{repo}/blobs/uploads/"), ("GET", "/v2/")]:
            response = trow.request(method, target, headers=[bearer(token)])
            challenge = assert_challenged(response, trow)
            assert 'error="invalid_token"' in challenge, (what, challenge)


def test_token_scope_is_bound_to_its_repository(single_user_trow: TrowProcess) -> None:
    """A valid token for pull on one repository is not a pass for another one, nor for a push
    on its own: 401 C{insufficient_scope} naming the scope needed."""
    trow = single_user_trow
    push_raw(trow, "scoped/one", "v1", basic("alice", ALICE_PW), raw_image("scoped-one"))
    push_raw(trow, "scoped/two", "v1", basic("alice", ALICE_PW), raw_image("scoped-two"))
    token = token_for(trow, ("alice", ALICE_PW), ["repository:scoped/one:pull"])
    assert trow.request("GET", "/v2/scoped/one/manifests/v1", headers=[bearer(token)]).status == 200

    other = assert_challenged(trow.request("GET", "/v2/scoped/two/manifests/v1", headers=[bearer(token)]), trow)
    assert 'scope="repository:scoped/two:pull"' in other and 'error="insufficient_scope"' in other, other
    push = assert_challenged(trow.request("POST", "/v2/scoped/one/blobs/uploads/", headers=[bearer(token)]), trow)
    assert 'scope="repository:scoped/one:push"' in push and 'error="insufficient_scope"' in push, push


# == 8, 9. the realm ============================================================================


def test_realm_follows_forwarded_headers(single_user_trow: TrowProcess) -> None:
    """Behind an ingress (C{X-Forwarded-Proto: https}, C{X-Forwarded-Host}), the challenge's
    realm is the public https URL of /login; without them, the Host the client used. A
    forwarded host that is not a host name is ignored."""
    trow = single_user_trow
    forwarded = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "registry.example.com")]
    for path in ["/v2/", "/v2/some/repo/manifests/v1"]:
        response = trow.request("GET", path, headers=forwarded)
        assert_error(response, 401, "UNAUTHORIZED")
        challenge = response.header("WWW-Authenticate") or ""
        assert challenge.startswith('Bearer realm="https://registry.example.com/login",service="trow"'), challenge
    plain = trow.request("GET", "/v2/")
    assert plain.header("WWW-Authenticate") == challenge_realm(trow)
    # A forwarded host that could break or redirect the challenge is not used.
    for evil in ['evil.example.com", foo="bar', "evil.example.com/path", "evil.example.com@x"]:
        injected = trow.request("GET", "/v2/", headers=[("X-Forwarded-Host", evil)])
        assert injected.header("WWW-Authenticate") == challenge_realm(trow), (evil, injected.headers)


def test_realm_uses_hostname(password_file_trow: TrowProcess) -> None:
    """With C{--hostname}, the realm names that host (whatever Host the client sent), and a
    repository challenge names the scope needed."""
    trow = password_file_trow
    base = trow.request("GET", "/v2/")
    assert_error(base, 401, "UNAUTHORIZED")
    assert base.header("WWW-Authenticate") == f'Bearer realm="http://{HOSTNAME}/login",service="trow"'
    repo = trow.request("GET", "/v2/some/repo/manifests/v1")
    assert repo.header("WWW-Authenticate") == (
        f'Bearer realm="http://{HOSTNAME}/login",service="trow",scope="repository:some/repo:pull"'
    )


# == 11. proxied repositories ================================================================


def test_proxied_repositories_follow_the_rules(
    proxy_rules_trow: TrowProcess, upstream_stand_in: ConnectionCounter
) -> None:
    """C{f/...} repositories are judged like any other, before any upstream contact: grace (no
    grant under C{f/}) gets 403 C{DENIED} for manifests, blobs and tags of C{f/up/...}, also
    through C{?ns=} on a repository name she may pull (judged on the cache name), and the
    stand-in upstream is never dialled. frank (pull on everything) gets the upstream's error
    (503 UNAVAILABLE: the stand-in hangs up; the cached tags, none, are a 404), never a 500, and
    trow did dial the stand-in for him. Anonymous clients are challenged."""
    trow = proxy_rules_trow
    frank, grace = basic("frank", FRANK_PW), basic("grace", GRACE_PW)
    digest = "sha256:" + "ab" * 32
    ns = f"ns={upstream_stand_in.host}"
    proxied = [
        "/v2/f/up/lib/app/manifests/latest",
        f"/v2/f/up/lib/app/manifests/{digest}",
        f"/v2/f/up/lib/app/blobs/{digest}",
        "/v2/f/up/lib/app/tags/list",
        f"/v2/team-b/app/manifests/latest?{ns}",
        f"/v2/team-b/app/blobs/{digest}?{ns}",
    ]
    before = upstream_stand_in.accepted
    for path in proxied:
        assert_error(trow.request("GET", path, headers=[grace]), 403, "DENIED")
        head = trow.request("HEAD", path, headers=[grace])
        assert head.status == 403, (path, head)
        assert_challenged(trow.request("GET", path), trow)
    token = token_for(trow, ("grace", GRACE_PW), ["repository:f/up/lib/app:pull"])
    assert claims_of(token)["access"] == []
    assert_error(trow.request("GET", proxied[0], headers=[bearer(token)]), 403, "DENIED")
    assert upstream_stand_in.settled_accepted(trow) == before, "trow contacted the upstream for a denied request"

    for path in proxied:
        response = trow.request("GET", path, headers=[frank])
        if path.endswith("/tags/list"):
            # Tags of a cache repository are the ones cached: none, and no upstream contact.
            assert_error(response, 404, "NAME_UNKNOWN")
        else:
            # The stand-in hangs up on every connection: the upstream is unavailable (then its
            # breaker is open for the next requests, the same answer without a dial).
            assert_error(response, 503, "UNAVAILABLE")
    assert upstream_stand_in.accepted > before, "the stand-in was never dialled: the test proves nothing"

    # grace's own, local team-b repository is hers (no ns: not proxied).
    push_raw(trow, "team-b/app", "v1", grace, raw_image("team-b"))
    assert trow.request("GET", "/v2/team-b/app/manifests/v1", headers=[grace]).status == 200


def test_proxied_ns_with_a_token(proxy_rules_trow: TrowProcess, upstream_stand_in: ConnectionCounter) -> None:
    """A token for C{team-b/app} (the name in the path) does not open C{team-b/app?ns=<host>}
    to grace: the cache repository it maps to is judged too (403). frank's token for the same
    name passes to the upstream (503: it hangs up)."""
    trow = proxy_rules_trow
    path = f"/v2/team-b/app/manifests/latest?ns={upstream_stand_in.host}"
    scope = ["repository:team-b/app:pull"]
    before = upstream_stand_in.accepted
    grace_token = token_for(trow, ("grace", GRACE_PW), scope)
    assert claims_of(grace_token)["access"] == [{"type": "repository", "name": "team-b/app", "actions": ["pull"]}]
    assert_error(trow.request("GET", path, headers=[bearer(grace_token)]), 403, "DENIED")
    assert upstream_stand_in.settled_accepted(trow) == before, "trow contacted the upstream for a denied request"
    frank_token = token_for(trow, ("frank", FRANK_PW), scope)
    allowed = trow.request("GET", path, headers=[bearer(frank_token)])
    assert_error(allowed, 503, "UNAVAILABLE")  # passed on to the upstream, which hangs up


def test_catalog_and_mounts_follow_the_rules(proxy_rules_trow: TrowProcess) -> None:
    """The catalog lists only what the client may pull (grace: C{team-b/...}; frank:
    everything), is refused to anonymous clients and to a token without
    C{registry:catalog:*}. A cross-repository mount from a repository the client may not pull
    is a plain upload session (202), never a mount (201); from one it may pull, it mounts, with
    Basic credentials or with a token that carries pull on the source."""
    trow = proxy_rules_trow
    frank, grace = basic("frank", FRANK_PW), basic("grace", GRACE_PW)
    frank_image, grace_image = raw_image("frank-cat"), raw_image("grace-cat")
    push_raw(trow, "frank/cat", "v1", frank, frank_image)
    push_raw(trow, "team-b/cat", "v1", grace, grace_image)

    seen_by_grace = trow.request("GET", "/v2/_catalog", headers=[grace])
    assert seen_by_grace.status == 200, seen_by_grace
    assert "team-b/cat" in seen_by_grace.json()["repositories"]
    assert all(r.startswith("team-b/") for r in seen_by_grace.json()["repositories"]), seen_by_grace.json()
    seen_by_frank = trow.request("GET", "/v2/_catalog", headers=[frank])
    assert {"team-b/cat", "frank/cat"} <= set(seen_by_frank.json()["repositories"])
    catalog_token = token_for(trow, ("grace", GRACE_PW), ["registry:catalog:*"])
    with_token = trow.request("GET", "/v2/_catalog", headers=[bearer(catalog_token)])
    assert with_token.status == 200 and with_token.json() == seen_by_grace.json(), with_token
    challenge = assert_challenged(trow.request("GET", "/v2/_catalog"), trow)
    assert 'scope="registry:catalog:*"' in challenge, challenge
    other_token = token_for(trow, ("grace", GRACE_PW), ["repository:team-b/cat:pull"])
    assert_challenged(trow.request("GET", "/v2/_catalog", headers=[bearer(other_token)]), trow)

    frank_layer = next(d for d in frank_image.blobs if frank_image.blobs[d].startswith(b"\x1f\x8b"))
    grace_layer = next(d for d in grace_image.blobs if grace_image.blobs[d].startswith(b"\x1f\x8b"))
    stolen = trow.request("POST", f"/v2/team-b/mnt/blobs/uploads/?mount={frank_layer}&from=frank/cat", headers=[grace])
    assert stolen.status == 202, stolen
    assert trow.request("HEAD", f"/v2/team-b/mnt/blobs/{frank_layer}", headers=[grace]).status == 404
    mounted = trow.request("POST", f"/v2/frank/mnt/blobs/uploads/?mount={grace_layer}&from=team-b/cat", headers=[frank])
    assert mounted.status == 201, mounted

    mount_path = f"/v2/frank/mnt2/blobs/uploads/?mount={grace_layer}&from=team-b/cat"
    narrow = token_for(trow, ("frank", FRANK_PW), ["repository:frank/mnt2:pull,push"])
    assert trow.request("POST", mount_path, headers=[bearer(narrow)]).status == 202
    wide = token_for(trow, ("frank", FRANK_PW), ["repository:frank/mnt3:pull,push", "repository:team-b/cat:pull"])
    mount_path = mount_path.replace("mnt2", "mnt3")
    assert trow.request("POST", mount_path, headers=[bearer(wide)]).status == 201


def test_authorised_pull_through_the_cache_gets_the_image(
    registry_cache_trow: TrowProcess, upstream: Upstream, images: Images, skopeo: Skopeo, tmp_path: Path
) -> None:
    """With auth rules on, ivan (pull on C{f/}) pulls C{f/up/<repo>:multi} through the cache with
    skopeo C{--src-creds} and gets exactly the upstream's image (every digest, every byte), which
    the upstream served (one GET per blob). Without credentials skopeo is refused, raw HTTP gets
    401 with trow's challenge, and judy (no grant on C{f/}) gets 403 DENIED: before the image is
    cached, with nothing sent upstream, and after."""
    trow = registry_cache_trow
    repo = upstream.image("multi", "authcache/multi")
    ref = trow.ref(f"f/{ALIAS}/{repo}:multi")
    manifest = f"/v2/f/{ALIAS}/{repo}/manifests/multi"
    blobs = [digest for digest, _ in images.tree("multi")[1:]]
    judy = basic("judy", JUDY_PW)

    def assert_refused_to_others() -> None:
        anonymous = skopeo.run(
            "copy", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'anonymous'}:multi", check=False
        )
        assert_refused(anonymous, "unauthorized", "authentication required", "401")
        for path in (manifest, f"/v2/f/{ALIAS}/{repo}/blobs/{blobs[-1]}"):
            assert_challenged(trow.request("GET", path), trow)
            assert_error(trow.request("GET", path, headers=[judy]), 403, "DENIED")

    log = UpstreamLog(upstream.registry, trow)
    assert_refused_to_others()
    assert log.requests() == [], "a refused client's request reached the upstream"

    log = log.next()
    skopeo.pull(ref, f"oci:{tmp_path / 'pulled'}:multi", "--src-creds", f"ivan:{IVAN_PW}")
    assert_same_image(images.layout, "multi", tmp_path / "pulled", "multi")
    for digest in blobs:
        assert log.blob_gets(digest) == 1, (digest, log.requests())

    assert_refused_to_others()


# == 10. secrets never reach the log ========================================================


def test_dry_run_prints_no_secret(tmp_path: Path) -> None:
    """C{--dry-run} prints the effective settings, but neither C{--password} nor
    C{auth.token_key}."""
    key = _secret("token-key-" + "k" * 40)
    config = write_config(tmp_path / "config.yml", {"auth": {"token_key": key, "anonymous": "pull"}})
    argv = trow_command(
        ["--dry-run", "--data-dir", str(tmp_path / "data"), "--config", str(config), "--user", "alice", "--password", ALICE_PW]
    )
    result = subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL, cwd=tmp_path)
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, output
    assert "alice" in output, output  # it did print the settings
    assert ALICE_PW not in output and key not in output, output


def test_no_secret_in_any_log(single_user_trow: TrowProcess) -> None:
    """After everything above (and a few secret-bearing requests of its own, so that it means
    something when run alone), no trow log holds a password (right or wrong), a token, a bcrypt
    hash, or an Authorization header; and no log shows a traceback."""
    trow = single_user_trow
    token = token_for(trow, ("alice", ALICE_PW), ["repository:secret/app:pull"])
    trow.request("GET", "/v2/secret/app/tags/list", headers=[bearer(token)])
    trow.request("GET", "/v2/secret/app/tags/list", headers=[basic("alice", WRONG_PW)])
    trow.request("GET", "/v2/secret/app/tags/list", headers=[bearer(token + "x")])
    login(trow, ("alice", WRONG_PW))

    assert _PROCESSES, "no trow ran"
    for process in _PROCESSES:
        for log_file in sorted(process.workdir.glob("trow-*.log")):
            text = log_file.read_text(errors="replace")
            where = f"{log_file}"
            for secret in _SECRETS:
                assert secret not in text, f"{where} holds a secret ({secret[:12]}...)"
            assert "Authorization" not in text, f"{where} mentions an Authorization header"
            assert "eyJ" not in text, f"{where} holds something that looks like a JWT"
            for prefix in ("$2b$", "$2y$", "$2a$"):
                assert prefix not in text, f"{where} holds a bcrypt hash"
            assert "Traceback" not in text and "Unhandled" not in text, f"{where} shows an error:\n{text}"


def test_a_rule_on_the_cache_host_covers_alias_and_ns(
    proxy_rules_trow: TrowProcess, upstream_stand_in: ConnectionCounter
) -> None:
    """heidi's only grant is pull on C{f/<host>/}: the rules judge the repository really read,
    so she reaches the upstream through the host form, the alias form and C{?ns=} alike (the
    upstream's error, 503 UNAVAILABLE: the stand-in hangs up; never 403), while a local
    repository of the same name stays closed."""
    trow = proxy_rules_trow
    heidi = basic("heidi", HEIDI_PW)
    host = upstream_stand_in.host
    for path in [
        f"/v2/f/{host}/lib/app/manifests/latest",
        "/v2/f/up/lib/app/manifests/latest",
        f"/v2/lib/app/manifests/latest?ns={host}",
    ]:
        assert_error(trow.request("GET", path, headers=[heidi]), 503, "UNAVAILABLE")
    token = token_for(trow, ("heidi", HEIDI_PW), ["repository:f/up/lib/app:pull"])
    assert claims_of(token)["access"] == [{"type": "repository", "name": "f/up/lib/app", "actions": ["pull"]}]
    assert_error(trow.request("GET", "/v2/f/up/lib/app/manifests/latest", headers=[bearer(token)]), 503, "UNAVAILABLE")
    assert_error(trow.request("GET", "/v2/lib/app/manifests/latest", headers=[heidi]), 403, "DENIED")
