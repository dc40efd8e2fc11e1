"""Registry(shared=True): metadata that other replicas write too, and that may be unreachable.

The registry is the real one on a temp dir, behind the real API in memory. "Another replica" is
the test writing the metadata directly, behind this Registry's back; an outage is
L{OutageMetadata}, a wrapper whose calls fail with MetadataUnavailable while it is down, as
PostgresMetadata's do when the database cannot be reached.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail

from tests.unit.harness import Client, Response, Trow, result_of
from tests.unit.test_api_misc import assert_error, image_manifest, push_blob, put_manifest, sha256
from trow.api.registry import RegistryAPI
from trow.registry.service import Registry
from trow.storage.metadata import MetadataUnavailable

REPO = "team/app"
UNKNOWN = "sha256:" + "d" * 64


class OutageMetadata:
    """Any Metadata, whose calls fail with MetadataUnavailable while C{down}."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False
        self.calls_while_down: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> "Deferred[Any]":
            if self.down:
                self.calls_while_down.append(name)
                return fail(MetadataUnavailable("the database db.example/trow is unavailable: connection refused"))
            return attribute(*args, **kwargs)

        return call


@pytest.fixture
def shared(trow: Trow) -> Trow:
    """A trow like the C{trow} fixture's (same stores), whose Registry treats its metadata as
    shared with other replicas, through an L{OutageMetadata}."""
    metadata = OutageMetadata(trow.stores.metadata)
    registry = Registry(trow.stores.blobs, trow.stores.uploads, metadata, 4 * 2**20, shared=True)
    return Trow(trow.root, trow.stores, registry, Client(RegistryAPI(registry).resource()))


def outage(trow: Trow) -> OutageMetadata:
    metadata = trow.registry.metadata
    assert isinstance(metadata, OutageMetadata)
    return metadata


def push_image(trow: Trow, tag: str = "v1", layer: bytes = b"layer one") -> tuple[bytes, str, str]:
    """Push an image to REPO under C{tag}; return the manifest, its digest and the layer's."""
    content = image_manifest(trow, REPO, layers=(layer,))
    r = put_manifest(trow, REPO, tag, content)
    assert r.code == 201, r.body
    return content, sha256(content), sha256(layer)


def get(trow: Trow, what: str, reference: str, method: str = "GET", repo: str = REPO) -> Response:
    return trow.client.request(method, f"/v2/{repo}/{what}/{reference}")


def assert_unavailable(r: Response) -> None:
    """The answer to a request the metadata could not decide: 503 UNAVAILABLE, OCI JSON, and a
    Retry-After telling clients to come back."""
    assert_error(r, 503, "UNAVAILABLE")
    retry = r.header("Retry-After")
    assert retry is not None and retry.isdigit() and int(retry) > 0


# -- deletes by other replicas are seen at once -------------------------------------------------


def test_manifest_deleted_elsewhere_is_unknown_at_once(shared: Trow) -> None:
    """A manifest served by digest, then deleted by another replica: MANIFEST_UNKNOWN on the
    very next request, GET and HEAD (nothing this process remembers answers for it)."""
    content, digest, _ = push_image(shared)
    for _ in range(2):
        r = get(shared, "manifests", digest)
        assert r.code == 200 and r.body == content
    assert result_of(shared.stores.metadata.delete_manifest(REPO, digest))
    assert_error(get(shared, "manifests", digest), 404, "MANIFEST_UNKNOWN")
    assert get(shared, "manifests", digest, "HEAD").code == 404


def test_tag_moved_elsewhere_is_followed_at_once(shared: Trow) -> None:
    """Another replica points the tag at another manifest: the next pull by tag gets that one."""
    first, _, _ = push_image(shared, "v1", b"layer one")
    assert get(shared, "manifests", "v1").body == first
    second = image_manifest(shared, REPO, layers=(b"layer two",))
    assert put_manifest(shared, REPO, sha256(second), second).code == 201
    result_of(shared.stores.metadata.put_tag(REPO, "v1", sha256(second)))
    assert get(shared, "manifests", "v1").body == second


def test_blob_unlinked_elsewhere_is_unknown_at_once(shared: Trow) -> None:
    """A blob served here, then unlinked from the repository by another replica: BLOB_UNKNOWN
    at once. What this process saw only answers during an outage, never while the database can."""
    layer = b"a layer pulled before"
    digest = push_blob(shared, REPO, layer)
    assert get(shared, "blobs", digest).body == layer
    assert result_of(shared.stores.metadata.unlink_blob(REPO, digest))
    assert_error(get(shared, "blobs", digest), 404, "BLOB_UNKNOWN")


# -- a database outage ------------------------------------------------------------------------------


def test_manifest_by_digest_served_before_is_served_during_an_outage(shared: Trow) -> None:
    """Nodes keep pulling what they pulled: a manifest served by digest is served again, byte
    for byte with its headers, while the database is down (manifests never change)."""
    content, digest, _ = push_image(shared)
    assert get(shared, "manifests", digest).code == 200
    outage(shared).down = True
    r = get(shared, "manifests", digest)
    assert r.code == 200 and r.body == content
    assert r.header("Docker-Content-Digest") == digest
    head = get(shared, "manifests", digest, "HEAD")
    assert head.code == 200 and head.body == b""
    assert outage(shared).calls_while_down, "the database was not even asked"


def test_manifest_pulled_by_tag_is_served_by_digest_during_an_outage(shared: Trow) -> None:
    """A pull by tag remembers the manifest too: during the outage its digest still answers,
    while the tag (which may move) cannot."""
    content, digest, _ = push_image(shared)
    assert get(shared, "manifests", "v1").code == 200
    outage(shared).down = True
    r = get(shared, "manifests", digest)
    assert r.code == 200 and r.body == content
    assert_unavailable(get(shared, "manifests", "v1"))


def test_unknown_manifest_during_an_outage_is_503(shared: Trow) -> None:
    """A manifest this process never served cannot be decided: 503, not 404 (it may exist)."""
    _, digest, _ = push_image(shared)
    outage(shared).down = True
    assert_unavailable(get(shared, "manifests", digest))
    assert_unavailable(get(shared, "manifests", UNKNOWN))
    r = get(shared, "manifests", UNKNOWN, "HEAD")
    assert r.code == 503 and r.body == b""


def test_blob_served_before_is_served_during_an_outage(shared: Trow) -> None:
    """A blob link this process confirmed is still honoured: the blob streams, whole."""
    _, _, layer_digest = push_image(shared, layer=b"layer one")
    assert get(shared, "blobs", layer_digest).body == b"layer one"
    outage(shared).down = True
    r = get(shared, "blobs", layer_digest)
    assert r.code == 200 and r.body == b"layer one"
    assert r.header("Docker-Content-Digest") == layer_digest


def test_blob_not_served_before_is_503_during_an_outage(shared: Trow) -> None:
    """Bytes in the store but no link this process saw, or a link seen in another repository
    only: 503 (the link cannot be checked), never a 200 that might leak a private blob."""
    layer = b"never pulled here"
    digest = push_blob(shared, REPO, layer)
    other = push_blob(shared, "team/other", b"pulled in team/other")
    assert get(shared, "blobs", other, repo="team/other").code == 200
    push_blob(shared, REPO, b"pulled in team/other")
    outage(shared).down = True
    assert_unavailable(get(shared, "blobs", digest))
    assert_unavailable(get(shared, "blobs", other))
    assert get(shared, "blobs", other, repo="team/other").code == 200


def test_writes_during_an_outage_are_503(shared: Trow) -> None:
    """A push cannot be recorded: 503 UNAVAILABLE with Retry-After, and it works again after."""
    outage(shared).down = True
    assert_unavailable(shared.client.post(f"/v2/{REPO}/blobs/uploads/"))
    outage(shared).down = False
    assert shared.client.post(f"/v2/{REPO}/blobs/uploads/").code == 202


def test_readiness_during_an_outage(shared: Trow) -> None:
    """/readiness says 503 while the metadata cannot be reached (the load balancer sends pulls
    elsewhere), and 200 again once it answers."""
    assert shared.client.get("/readiness").code == 200
    outage(shared).down = True
    r = shared.client.get("/readiness")
    assert r.code == 503
    assert r.json()["status"] == "unavailable" and "unavailable" in r.json()["reason"]
    outage(shared).down = False
    assert shared.client.get("/readiness").code == 200


def test_after_the_outage_deletes_win_over_what_was_remembered(shared: Trow) -> None:
    """A manifest deleted elsewhere during the outage (served meanwhile from memory) is unknown
    as soon as the database answers again."""
    _, digest, _ = push_image(shared)
    assert get(shared, "manifests", digest).code == 200
    metadata = outage(shared)
    metadata.down = True
    assert get(shared, "manifests", digest).code == 200
    assert result_of(shared.stores.metadata.delete_manifest(REPO, digest))
    metadata.down = False
    assert_error(get(shared, "manifests", digest), 404, "MANIFEST_UNKNOWN")
