"""The API base, health endpoints, unknown paths and methods, plus helpers the API tests share.

The helpers live here because tests/unit/harness.py belongs to another team: the other
test_api_* modules import them from this module.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import attrs
import pytest
from treq.testing import StubTreq
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.testing import MemoryReactorClock

from tests.unit.harness import Response, Trow, result_of
from trow.api.site import TrowSite
from trow.app import build_service
from trow.config import Config
from trow.storage.blobs import Spool
from trow.tap import Settings

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

API_VERSION = "registry/2.0"


# -- helpers shared by the API test modules ----------------------------------------------------


def sha256(data: bytes) -> str:
    """The sha256 digest string of C{data}."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha512(data: bytes) -> str:
    """The sha512 digest string of C{data}."""
    return "sha512:" + hashlib.sha512(data).hexdigest()


@attrs.define
class Fetched(Response):
    """A response plus the Content-Length the server declared.

    twisted's HTTP client keeps Content-Length out of C{headers} for anything but HEAD, so the
    declared length is read from the response object itself.
    """

    content_length: int | None = None


def _send(stub: StubTreq, method: str, url: str, body: bytes | None, headers: dict[str, Any] | None) -> Fetched:
    """Send one request through C{stub}, deliver it in memory, and read the whole answer."""
    # StubTreq grows its request() method at run time, out of mypy's sight.
    d = stub.request(  # type: ignore[attr-defined]
        method, "http://trow.test" + url, data=body, headers=headers or {}, allow_redirects=False
    )
    stub.flush()
    response = result_of(d)
    content = result_of(response.content())
    raw = {k.decode().lower(): [v.decode() for v in vs] for k, vs in response.headers.getAllRawHeaders()}
    if method == "HEAD":
        declared = raw.get("content-length")
        length = int(declared[0]) if declared else None
    else:
        length = response.length if isinstance(response.length, int) else None
    return Fetched(response.code, raw, content, length)


def fetch(trow: Trow, method: str, url: str, body: bytes | None = None, headers: dict[str, Any] | None = None) -> Fetched:
    """Send one request to C{trow} without following redirects; the answer has its declared length."""
    return _send(trow.client.stub, method, url, body, headers)


class SpoolingClient:
    """Requests through L{TrowSite}, so that large bodies are spooled into tmp/ as in production.

    C{spooled} counts the bodies that went to a spool, so a test can prove it took that path.
    """

    def __init__(self, trow: Trow) -> None:
        self.spooled = 0
        self._blobs = trow.stores.blobs
        # treq's in-memory agent keeps its resource and Site in private attributes; swapping the
        # Site is the only way to put TrowSite (and its spooling requests) behind StubTreq.
        self.stub = StubTreq(trow.client.stub._agent._rootResource)
        agent = self.stub._agent
        # Duck-typed spool store: TrowRequest only ever calls spool() on it.
        agent._serverFactory = TrowSite(
            agent._rootResource, spool_store=self, reactor=agent._memoryReactor  # type: ignore[arg-type]
        )

    def spool(self, producer: Any) -> Spool:
        """What L{TrowRequest} calls on its spool store: count, then spool into the real store."""
        self.spooled += 1
        return self._blobs.spool(producer)

    def request(self, method: str, url: str, body: bytes | None = None, headers: dict[str, Any] | None = None) -> Fetched:
        """Send one request through TrowSite."""
        return _send(self.stub, method, url, body, headers)


@pytest.fixture
def production(tmp_path: Path) -> Iterator[StubTreq]:
    """A client of the Site that L{trow.app.build_service} puts on the listener, in memory.

    Only handlers that need no worker thread answer here (the service's thread pools report to a
    reactor that never runs): health, the base, routing and request errors.
    """
    reactor = MemoryReactorClock()
    # The service's thread pools report back to the reactor (the GC's start-up hook, say): this
    # one never runs, so what they report is dropped, not an unhandled error in a worker thread.
    reactor.callFromThread = lambda f, *args, **kwargs: None  # type: ignore[attr-defined]
    settings = Settings(listen=("tcp:0",), data_dir=str(tmp_path / "production"), config=Config())
    root = build_service(settings, reactor)
    root.startService()
    try:
        [listener] = [s for s in root if isinstance(s, StreamServerEndpointService)]
        site = listener.factory
        site.reactor = reactor  # HTTP channel timeouts on the memory reactor, not the global one
        stub = StubTreq(site.resource)
        stub._agent._serverFactory = site
        yield stub
    finally:
        root.stopService()


def push_blob(trow: Trow, repo: str, data: bytes, digest: str | None = None) -> str:
    """Push C{data} to C{repo} in one monolithic POST; return its digest."""
    digest = digest or sha256(data)
    r = trow.client.post(f"/v2/{repo}/blobs/uploads/?digest={digest}", body=data)
    assert r.code == 201, r.body
    return digest


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    """A content descriptor for C{data}."""
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


def image_manifest(
    trow: Trow,
    repo: str,
    layers: tuple[bytes, ...] = (b"layer one",),
    media_type: str = OCI_MANIFEST,
    config: bytes = b'{"architecture":"amd64","os":"linux"}',
    push: bool = True,
    **extra: Any,
) -> bytes:
    """The bytes of an image manifest over C{config} and C{layers}, pushing those blobs first."""
    docker = media_type == DOCKER_MANIFEST
    if push:
        push_blob(trow, repo, config)
        for layer in layers:
            push_blob(trow, repo, layer)
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, config),
        "layers": [descriptor(DOCKER_LAYER if docker else OCI_LAYER, layer) for layer in layers],
    }
    document.update(extra)
    return json.dumps(document).encode()


def index_manifest(children: list[bytes], media_type: str = OCI_INDEX, **extra: Any) -> bytes:
    """The bytes of an index over the manifests C{children} (each must be OCI or Docker image)."""
    entries = []
    for child in children:
        child_type = json.loads(child)["mediaType"]
        entries.append(descriptor(child_type, child, platform={"architecture": "amd64", "os": "linux"}))
    document: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
    document.update(extra)
    return json.dumps(document).encode()


def put_manifest(trow: Trow, repo: str, reference: str, body: bytes, content_type: str | None = OCI_MANIFEST) -> Fetched:
    """PUT a manifest; the Content-Type is left out when C{content_type} is None."""
    headers = {"Content-Type": content_type} if content_type is not None else {}
    return fetch(trow, "PUT", f"/v2/{repo}/manifests/{reference}", body, headers)


def assert_error(r: Response, status: int, code: str) -> None:
    """C{r} is the spec's JSON error with this status and code, and the API version header."""
    assert r.code == status, (r.code, r.body)
    assert r.header("Content-Type") == "application/json"
    assert r.header("Docker-Distribution-API-Version") == API_VERSION
    errors = r.json()["errors"]
    assert errors and errors[0]["code"] == code, r.body
    assert isinstance(errors[0]["message"], str) and errors[0]["message"]


# -- /v2/ --------------------------------------------------------------------------------------


def test_base_answers_200_with_empty_json(trow: Trow) -> None:
    """GET /v2/ is the version check: 200, body {}, JSON, and the API version header."""
    r = fetch(trow, "GET", "/v2/")
    assert r.code == 200
    assert r.json() == {}
    assert r.header("Content-Type") == "application/json"
    assert r.header("Docker-Distribution-API-Version") == API_VERSION
    assert r.content_length == len(r.body)


def test_base_without_trailing_slash(trow: Trow) -> None:
    """Clients that ask for /v2 (no slash) get the same answer as /v2/."""
    r = fetch(trow, "GET", "/v2")
    assert r.code == 200 and r.json() == {}
    assert r.header("Docker-Distribution-API-Version") == API_VERSION


def test_base_head_has_length_and_no_body(trow: Trow) -> None:
    """HEAD /v2/ answers 200 with the GET's Content-Length and no body."""
    r = fetch(trow, "HEAD", "/v2/")
    assert r.code == 200
    assert r.body == b""
    assert r.content_length == 2
    assert r.header("Docker-Distribution-API-Version") == API_VERSION


# -- unknown paths and methods -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v2/repo/nothing-here", "/v2/a/b/blobs", "/v2/_catalog/extra", "/v2/repo/tags"])
def test_unknown_path_under_v2_is_404_json(trow: Trow, path: str) -> None:
    """A path under /v2/ that is no OCI endpoint is a 404 with the spec's JSON error body."""
    r = fetch(trow, "GET", path)
    assert r.code == 404
    assert r.header("Docker-Distribution-API-Version") == API_VERSION
    assert r.json()["errors"][0]["code"] == "UNSUPPORTED"


def test_unknown_path_outside_v2_is_json_with_api_version(trow: Trow) -> None:
    """reference.md s4: every response of the registry listener carries the API version header
    and errors use the spec's JSON body, also for a path that is not an endpoint."""
    r = fetch(trow, "GET", "/no/such/path")
    assert r.code == 404
    assert r.header("Docker-Distribution-API-Version") == API_VERSION
    assert r.header("Content-Type") == "application/json"
    assert "errors" in r.json()


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/v2/repo/manifests/latest"),
        ("PATCH", "/v2/repo/manifests/latest"),
        ("POST", "/v2/repo/blobs/sha256:" + "a" * 64),
        ("PUT", "/v2/repo/blobs/sha256:" + "a" * 64),
        ("PATCH", "/v2/repo/blobs/sha256:" + "a" * 64),
        ("PUT", "/v2/repo/blobs/uploads/"),
        ("DELETE", "/v2/repo/blobs/uploads/"),
        ("POST", "/v2/repo/blobs/uploads/some-id"),
        ("PUT", "/v2/repo/tags/list"),
        ("DELETE", "/v2/repo/tags/list"),
        ("POST", "/v2/repo/referrers/sha256:" + "a" * 64),
        ("DELETE", "/v2/repo/referrers/sha256:" + "a" * 64),
        ("POST", "/v2/_catalog"),
        ("DELETE", "/v2/_catalog"),
    ],
)
def test_unsupported_method_is_405_unsupported(trow: Trow, method: str, path: str) -> None:
    """A method an endpoint does not implement gets 405 with the UNSUPPORTED JSON error."""
    r = fetch(trow, method, path)
    assert_error(r, 405, "UNSUPPORTED")


def test_unlisted_method_is_405_unsupported_json(production: StubTreq) -> None:
    """A method that no route lists (here PROPFIND) still gets the spec's JSON UNSUPPORTED error
    from the production site."""
    r = _send(production, "PROPFIND", "/v2/repo/tags/list", None, None)
    assert_error(r, 405, "UNSUPPORTED")


def test_options_on_an_endpoint_is_405_unsupported(trow: Trow) -> None:
    """OPTIONS is routed but no endpoint implements it: 405 UNSUPPORTED, JSON."""
    r = fetch(trow, "OPTIONS", "/v2/repo/manifests/latest")
    assert_error(r, 405, "UNSUPPORTED")


def test_error_body_has_the_spec_shape(trow: Trow) -> None:
    """An error body is {"errors": [{"code", "message", "detail"}]} and its length is declared."""
    r = fetch(trow, "GET", "/v2/repo/blobs/sha256:" + "b" * 64)
    assert r.code == 404
    body = r.json()
    assert list(body) == ["errors"]
    assert len(body["errors"]) == 1
    assert set(body["errors"][0]) == {"code", "message", "detail"}
    assert r.content_length == len(r.body)


# -- health ------------------------------------------------------------------------------------


def test_healthz_is_ok(trow: Trow) -> None:
    """GET /healthz answers 200 with a JSON status while the process runs."""
    r = fetch(trow, "GET", "/healthz")
    assert r.code == 200
    assert r.header("Content-Type") == "application/json"
    assert r.json() == {"status": "ok"}


def test_readiness_is_ready_on_a_writable_data_dir(trow: Trow) -> None:
    """GET /readiness answers 200 when a durable write to the data dir works, and leaves no probe."""
    r = fetch(trow, "GET", "/readiness")
    assert r.code == 200
    assert r.json() == {"status": "ready"}
    assert trow.stores.blobs.clean_tmp() == 0


def test_readiness_is_503_when_the_data_dir_refuses_writes(trow: Trow, monkeypatch: pytest.MonkeyPatch) -> None:
    """A data dir that cannot take a write (full, read-only) makes /readiness answer 503."""

    def refuse(self: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(trow.stores.blobs), "_check_writable_sync", refuse)
    r = fetch(trow, "GET", "/readiness")
    assert r.code == 503
    assert r.json()["status"] == "unavailable"
    assert "No space left on device" in r.json()["reason"]


def test_readiness_head_has_no_body(trow: Trow) -> None:
    """HEAD /readiness answers like GET without a body."""
    r = fetch(trow, "HEAD", "/readiness")
    assert r.code == 200
    assert r.body == b""
    assert r.content_length == len(json.dumps({"status": "ready"}))


@pytest.mark.parametrize(
    "method, path",
    [("GET", "/healthz"), ("HEAD", "/healthz"), ("GET", "/v2/"), ("GET", "/no/such/path"), ("GET", "/v2/Bad/tags/list")],
)
def test_production_site_sets_api_version_everywhere(production: StubTreq, method: str, path: str) -> None:
    """reference.md s4: every response of the registry listener, health checks and errors
    included, carries Docker-Distribution-API-Version."""
    r = _send(production, method, path, None, None)
    assert r.code in (200, 400, 404)
    assert r.header("Docker-Distribution-API-Version") == API_VERSION
