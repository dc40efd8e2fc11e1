"""Large request bodies of clients that could never be allowed to send them are dropped as they
arrive, not spooled to the data dir (TrowSite's body_guard, fed by AuthAPI.refuse_body)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request

from tests.unit.harness import result_of
from tests.unit.test_auth_helpers import fake_clock
from trow.api.auth import AuthAPI
from trow.api.site import SPOOL_THRESHOLD, TrowSite
from trow.auth.scopes import parse_scopes
from trow.auth.service import Authenticator, Credentials
from trow.config import config_from_dict
from trow.storage.blobs import BlobStore, Spool
from trow.workers import InlineWorker

BODY = b"x" * (SPOOL_THRESHOLD + 1000)


class _Recorder(Resource):
    """Answers 200 and remembers the bodies that reached it."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[int] = []

    def render(self, request: Request) -> Any:
        assert request.content is not None
        # A spool reports its size (its bytes are on disk, not in memory).
        self.bodies.append(request.content.tell() if isinstance(request.content, Spool) else len(request.content.read()))
        return b"ok"


def _auth(tmp_path: Path) -> AuthAPI:
    config = config_from_dict({"auth": {"anonymous": "pull"}}).auth
    authenticator = Authenticator.build(
        user="admin",
        password="pw",
        htpasswd=None,
        config=config,
        data_dir=str(tmp_path / "data"),
        worker=InlineWorker(),
        clock=fake_clock().seconds,
    )
    return AuthAPI(authenticator)


def _upload(site: TrowSite, headers: str = "", body: bytes = BODY) -> list[int]:
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 40000))
    channel = site.buildProtocol(transport.getPeer())
    channel.makeConnection(transport)
    channel.dataReceived(
        b"PATCH /v2/team/app/blobs/uploads/1 HTTP/1.1\r\nHost: trow\r\n"
        + headers.encode()
        + b"Content-Length: %d\r\n\r\n" % len(body)
    )
    spooling = os.listdir(os.path.join(site.spool_store.root, "tmp"))  # type: ignore[union-attr]
    channel.dataReceived(body)
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", transport.value())] + [len(spooling)]


def _site(tmp_path: Path, auth: AuthAPI, app: _Recorder) -> TrowSite:
    store = BlobStore(str(tmp_path / "data"), InlineWorker())
    return TrowSite(app, spool_store=store, reactor=Clock(), body_guard=auth.refuse_body)


def test_a_body_without_credentials_never_reaches_the_disk(tmp_path: Path) -> None:
    """No Authorization header: 401 with the Bearer challenge once the body is in, no spool file
    while it arrives, and the application never sees the request."""
    app = _Recorder()
    auth = _auth(tmp_path)
    status, spool_files = _upload(_site(tmp_path, auth, app))
    assert (status, spool_files) == (401, 0)
    assert app.bodies == []


def test_a_body_with_a_forged_token_never_reaches_the_disk(tmp_path: Path) -> None:
    """A token that does not verify is as good as none."""
    app = _Recorder()
    status, spool_files = _upload(_site(tmp_path, _auth(tmp_path), app), "Authorization: Bearer not.a.token\r\n")
    assert (status, spool_files) == (401, 0)
    assert app.bodies == []


def test_bodies_with_a_valid_token_or_basic_credentials_are_spooled(tmp_path: Path) -> None:
    """A valid token, or Basic credentials (checked later, by the handler), spool as usual."""
    app = _Recorder()
    auth = _auth(tmp_path)
    site = _site(tmp_path, auth, app)
    login = auth.authenticator.login(Credentials("admin", "pw"), parse_scopes(["repository:team/app:push"]))
    token = result_of(ensureDeferred(login))
    assert _upload(site, f"Authorization: Bearer {token.token}\r\n") == [200, 1]
    assert _upload(site, "Authorization: Basic YWRtaW46cHc=\r\n") == [200, 1]
    assert app.bodies == [len(BODY), len(BODY)]


def test_small_bodies_are_judged_too_but_not_the_login_form(tmp_path: Path) -> None:
    """A small body (a manifest) without credentials is refused the same way, before it takes an
    upload slot; the login form, which is how a client gets credentials, is not."""
    app = _Recorder()
    site = _site(tmp_path, _auth(tmp_path), app)
    assert _upload(site, body=b"{}") == [401, 0]
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 40000))
    channel = site.buildProtocol(transport.getPeer())
    channel.makeConnection(transport)
    form = b"grant_type=password&username=admin&password=pw"
    channel.dataReceived(
        b"POST /login HTTP/1.1\r\nHost: trow\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(form)
        + form
    )
    assert app.bodies == [len(form)]


def test_tokens_that_push_nowhere_and_unknown_users_are_refused(tmp_path: Path) -> None:
    """An anonymous token (free with anonymous: pull), a token that only pulls, and Basic
    credentials of a user trow does not know: their bodies never reach the disk."""
    app = _Recorder()
    auth = _auth(tmp_path)
    site = _site(tmp_path, auth, app)
    anonymous = result_of(ensureDeferred(auth.authenticator.login(None, parse_scopes(["repository:team/app:pull"]))))
    pulling = result_of(
        ensureDeferred(auth.authenticator.login(Credentials("admin", "pw"), parse_scopes(["repository:team/app:pull"])))
    )
    for header in (f"Bearer {anonymous.token}", f"Bearer {pulling.token}", "Basic bm9ib2R5Ong="):
        assert _upload(site, f"Authorization: {header}\r\n") == [401, 0], header
    assert app.bodies == []


def test_the_refusal_is_the_spec_error(tmp_path: Path) -> None:
    """The early refusal is the same 401 UNAUTHORIZED JSON error as any other."""
    auth = _auth(tmp_path)
    error = auth.refuse_body(_FakeRequest())  # type: ignore[arg-type]
    assert error is not None and error.code == "UNAUTHORIZED" and error.status == 401
    assert "Bearer realm=" in json.dumps(error.headers)


class _FakeRequest:
    """Just enough of a request for refuse_body: no Authorization header, a Host."""

    uri = b"/v2/team/app/blobs/uploads/1"

    def __init__(self) -> None:
        self.requestHeaders = Headers({b"host": [b"trow.example"]})

    def isSecure(self) -> bool:
        return False
