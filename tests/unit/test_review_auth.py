"""Review of issue 5 (auth): private blobs stay private through the cache, and clients that could never push cannot spool bodies or hold upload slots."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import ensureDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from tests.unit.harness import Client, make_trow, result_of
from tests.unit.proxy_fakes import make_cache
from tests.unit.test_auth_helpers import RecordingWorker, bcrypt_hash, fake_clock, write_file
from trow.api.auth import AuthAPI
from trow.api.registry import RegistryAPI
from trow.api.site import SPOOL_THRESHOLD, TrowSite, UploadSlots
from trow.auth.service import Authenticator
from trow.config import config_from_dict
from trow.storage.blobs import BlobStore
from trow.workers import InlineWorker

RULES = [
    # alice owns the private repository; everybody may pull what trow proxies.
    {"users": ["alice"], "repositories": ["secret/"], "actions": ["pull", "push", "delete"]},
    {"users": ["*"], "repositories": ["f/"], "actions": ["pull"]},
]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _guarded(tmp_path: Path, **section: Any) -> tuple[Any, Client]:
    trow = make_trow(str(tmp_path / "data"))
    cache = make_cache(trow)
    htpasswd = str(tmp_path / "htpasswd")
    write_file(htpasswd, f"alice:{bcrypt_hash('alice-pw')}\nbob:{bcrypt_hash('bob-pw')}\n")
    section.setdefault("rules", RULES)
    authenticator = Authenticator.build(
        user=None,
        password=None,
        htpasswd=htpasswd,
        config=config_from_dict({"auth": section}).auth,
        data_dir=str(tmp_path / "data"),
        worker=RecordingWorker(),
        clock=fake_clock().seconds,
    )
    authenticator.canonical = cache.proxy.canonical_repository
    api = Client(RegistryAPI(trow.registry, cache.proxy, AuthAPI(authenticator)).resource())
    return trow, api


def _push_blob(api: Client, repo: str, data: bytes, headers: dict[str, str]) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    response = api.post(f"/v2/{repo}/blobs/uploads/?digest={digest}", body=data, headers=headers)
    assert response.code == 201, response.body
    return digest


def test_cache_repository_does_not_serve_a_private_blob(tmp_path: Path) -> None:
    """bob may pull f/... only; a blob alice pushed to secret/app must not reach him through
    f/docker.io/library/alpine/blobs/<digest> (the fake upstream does not have it)."""
    _, api = _guarded(tmp_path)
    secret = b"alice's private layer"
    digest = _push_blob(api, "secret/app", secret, basic("alice", "alice-pw"))
    # Direct access is refused, as it should be.
    assert api.get(f"/v2/secret/app/blobs/{digest}", headers=basic("bob", "bob-pw")).code == 403
    via_cache = api.get(f"/v2/f/docker.io/library/alpine/blobs/{digest}", headers=basic("bob", "bob-pw"))
    assert via_cache.body != secret
    assert via_cache.code == 404


# -- the body guard (trow.api.site, AuthAPI.refuse_body) ---------------------------------------


class _Ok(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return b"ok"


def _anonymous_pull_auth(tmp_path: Path) -> AuthAPI:
    authenticator = Authenticator.build(
        user="admin",
        password="admin-pw",
        htpasswd=None,
        config=config_from_dict({"auth": {"anonymous": "pull"}}).auth,
        data_dir=str(tmp_path / "data"),
        worker=InlineWorker(),
        clock=fake_clock().seconds,
    )
    return AuthAPI(authenticator)


def _site(tmp_path: Path, auth: AuthAPI, uploads: UploadSlots | None = None, clock: Clock | None = None) -> TrowSite:
    store = BlobStore(str(tmp_path / "data"), InlineWorker())
    return TrowSite(
        _Ok(), spool_store=store, reactor=clock or Clock(), body_guard=auth.refuse_body, uploads=uploads
    )


def _spooled_while_sending(site: TrowSite, authorization: str, size: int = SPOOL_THRESHOLD + 1000) -> tuple[int, list[int]]:
    """Send a PATCH whose body is half sent; how many spool files exist then, and the statuses."""
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 40000))
    channel = site.buildProtocol(transport.getPeer())
    channel.makeConnection(transport)
    channel.dataReceived(
        b"PATCH /v2/team/app/blobs/uploads/1 HTTP/1.1\r\nHost: trow\r\n"
        + (f"Authorization: {authorization}\r\n".encode() if authorization else b"")
        + b"Content-Length: %d\r\n\r\n" % size
    )
    channel.dataReceived(b"x" * (size // 2))
    spooling = len(os.listdir(os.path.join(site.spool_store.root, "tmp")))  # type: ignore[union-attr]
    channel.dataReceived(b"x" * (size - size // 2))
    return spooling, [int(c) for c in re.findall(rb"HTTP/1\.1 (\d{3}) ", transport.value())]


def test_an_anonymous_token_cannot_spool_a_body(tmp_path: Path) -> None:
    auth = _anonymous_pull_auth(tmp_path)
    token = result_of(ensureDeferred(auth.authenticator.login(None, [])))
    spooled, statuses = _spooled_while_sending(_site(tmp_path, auth), f"Bearer {token.token}")
    # An anonymous token can never push: nothing of its body should reach the disk.
    assert spooled == 0
    assert statuses == [401]


def test_basic_credentials_of_an_unknown_user_cannot_spool_a_body(tmp_path: Path) -> None:
    auth = _anonymous_pull_auth(tmp_path)
    junk = "Basic " + base64.b64encode(b"nobody:whatever").decode()
    spooled, statuses = _spooled_while_sending(_site(tmp_path, auth), junk)
    assert spooled == 0
    assert statuses == [401]


def test_clients_without_credentials_cannot_take_every_upload_slot(tmp_path: Path) -> None:
    """Bodies of clients without credentials never take an upload slot, and a body trickled a
    byte at a time is cut like a silent connection (it sends far under 16KiB per idle_timeout)."""
    auth = _anonymous_pull_auth(tmp_path)
    clock = Clock()
    slots = UploadSlots(2)
    site = _site(tmp_path, auth, uploads=slots, clock=clock)
    held = []
    for port in (40001, 40002):
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.6.6.6", port))
        channel = site.buildProtocol(transport.getPeer())
        channel.makeConnection(transport)
        # No Authorization header; a small body, sent one byte at a time well inside idle_timeout.
        channel.dataReceived(
            b"PATCH /v2/team/app/blobs/uploads/1 HTTP/1.1\r\nHost: trow\r\nContent-Length: 99000\r\n\r\n"
        )
        held.append((channel, transport))
    assert slots.active == 0
    for _ in range(3):  # one byte every 50 s per connection
        for channel, transport in held:
            channel.dataReceived(b"x")
        clock.advance(50)
    assert all(t.disconnecting for _, t in held)
    assert slots.active == 0


def test_a_trickled_body_gives_its_upload_slot_back(tmp_path: Path) -> None:
    """With auth off (the default) a trickling client does take a slot, but only until the idle
    timeout cuts it: the slot comes back."""
    clock = Clock()
    slots = UploadSlots(1)
    site = TrowSite(_Ok(), uploads=slots, reactor=clock)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.6.6.6", 40003))
    channel = site.buildProtocol(transport.getPeer())
    channel.makeConnection(transport)
    channel.dataReceived(b"PATCH /v2/team/app/blobs/uploads/1 HTTP/1.1\r\nHost: trow\r\nContent-Length: 5000\r\n\r\n")
    assert slots.active == 1
    for _ in range(2):
        channel.dataReceived(b"x")
        clock.advance(50)
    assert transport.disconnecting
    channel.connectionLost(Failure(ConnectionDone()))
    assert slots.active == 0
