"""The pull-through cache against an upstream that misbehaves on purpose.

A small threaded stand-in registry (L{tests.integration.upstream.StandIn}) serves manifests and
blobs from memory and, on demand, corrupts a blob, drops a connection mid-body, stalls, answers
500 or 429, hangs, or wants the Bearer token flow. reference.md section 5: a blob joins the cache
only when its digest and size check out and the connections streaming a bad download are cut; an
upstream that drops mid-blob is resumed with Range; a failing upstream leaves cached tags
servable and costs at most one short timeout; errors are clear OCI errors, never a 500.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.images import OCI_INDEX, OCI_MANIFEST
from tests.integration.conftest import (
    MIB,
    Images,
    RawResponse,
    Skopeo,
    TrowProcess,
    assert_same_image,
    get_and_hash,
)
from tests.integration.upstream import (  # noqa: F401 - fixtures
    ALIAS,
    DEADLINE,
    BodyStream,
    ConnectionCounter,
    StandIn,
    assert_clean_log,
    assert_json_error,
    cached_blob_path,
    proxy_entry,
    stand_in,
    start_proxy_trow,
    wait_idle,
    wait_until,
)

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


@pytest.fixture
def trow(
    request: pytest.FixtureRequest, trow_factory: Callable[..., TrowProcess], tmp_path: Path, stand_in: StandIn
) -> Iterator[TrowProcess]:
    """A trow of this test's own proxying the stand-in as C{up}; its log must show no error
    (unless the test is a known bug, whose traceback is expected)."""
    instance = start_proxy_trow(trow_factory, tmp_path, [proxy_entry(stand_in.host)])
    yield instance
    if request.node.get_closest_marker("xfail") is None:
        assert_clean_log(instance)


def blob_path(digest: str, repo: str = "r") -> str:
    return f"/v2/f/{ALIAS}/{repo}/blobs/{digest}"


def manifest_path(reference: str, repo: str = "r") -> str:
    return f"/v2/f/{ALIAS}/{repo}/manifests/{reference}"


def read_blob(trow: TrowProcess, digest: str) -> BodyStream:
    """GET a blob through trow and read until the end or a cut."""
    stream = BodyStream(trow.port or 0, blob_path(digest), timeout=DEADLINE)
    try:
        return stream.read_to_end()
    finally:
        stream.close()


# -- (a) corrupt bytes -----------------------------------------------------------------------


def test_corrupt_blob_cuts_clients_and_is_not_cached(trow: TrowProcess, stand_in: StandIn) -> None:
    """The upstream sends a blob with the right length and wrong content: both clients streaming
    it are cut before a complete body, nothing is cached (a HEAD through trow makes a fresh
    upstream attempt, a GET is cut again), and once the upstream is fixed the blob is served
    byte-exact."""
    layer = os.urandom(8 * MIB + 5)
    _, (digest,) = stand_in.add_image("r", "v1", [layer])
    stand_in.faults.corrupt.add(digest)

    clients = [BodyStream(trow.port or 0, blob_path(digest), timeout=DEADLINE) for _ in range(2)]
    try:
        for client in clients:
            assert client.status == 200 and client.length == len(layer)
        for client in clients:
            client.read_to_end()
            assert client.cut and client.received < len(layer), "a client got a complete-looking wrong body"
    finally:
        for client in clients:
            client.close()
    assert not cached_blob_path(trow, digest).exists()

    head = trow.request("HEAD", blob_path(digest), timeout=DEADLINE)
    assert head.status in (200, 502, 503), head
    assert wait_until(lambda: len(stand_in.blob_gets(digest)) >= 2, timeout=DEADLINE), "HEAD made no new attempt"
    again = read_blob(trow, digest)
    assert again.status != 200 or again.cut, "a GET of the corrupt blob returned a full 200 body"
    assert not cached_blob_path(trow, digest).exists()

    stand_in.faults.corrupt.clear()
    fixed = read_blob(trow, digest)
    assert (fixed.status, fixed.cut, fixed.received, fixed.digest) == (200, False, len(layer), digest)
    assert wait_until(lambda: cached_blob_path(trow, digest).exists(), timeout=DEADLINE)


def test_corrupt_blob_range_is_never_complete_and_wrong(trow: TrowProcess, stand_in: StandIn) -> None:
    """A Range over the corrupt part of a blob that is still downloading (the upstream has sent the
    wrong bytes, then stalls before the end): the 206 body never completes with the wrong bytes;
    it is cut once the download fails verification (or holds the right bytes)."""
    layer = os.urandom(8 * MIB)
    _, (digest,) = stand_in.add_image("r", "v1", [layer])
    stand_in.faults.corrupt.add(digest)  # flips the byte at 4 MiB
    gate = threading.Event()
    stand_in.faults.gates[digest] = (6 * MIB, gate)
    # The upstream goes on a little later, whether trow holds the range back (as it should, until
    # the download is verified) or not; nothing below depends on when.
    opener = threading.Timer(2.0, gate.set)
    opener.start()
    start, end = 4 * MIB - 10, 4 * MIB + 10
    ranged = BodyStream(trow.port or 0, blob_path(digest), [("Range", f"bytes={start}-{end}")], timeout=DEADLINE, keep=True)
    try:
        assert ranged.status == 206
        ranged.read_to_end()
        if not ranged.cut:
            assert bytes(ranged.body or b"") == layer[start : end + 1], "a complete 206 body with the corrupt bytes"
    finally:
        opener.cancel()
        gate.set()
        ranged.close()
    assert not cached_blob_path(trow, digest).exists()


# -- (b) a dropped connection, resumed ------------------------------------------------------------


@pytest.mark.parametrize("honour_range", [True, False], ids=["206", "ignores-range"])
def test_dropped_upstream_is_resumed_with_range(trow: TrowProcess, stand_in: StandIn, honour_range: bool) -> None:
    """The upstream drops the connection 3 MiB into a blob, once: trow asks again with
    C{Range: bytes=N-} and the client gets exactly the blob (also when the upstream answers the
    Range with the whole blob again), which is then cached."""
    layer = os.urandom(8 * MIB + 3)
    _, (digest,) = stand_in.add_image("r", "v1", [layer])
    dropped_at = 3 * MIB + 17
    stand_in.faults.drop_once[digest] = dropped_at
    stand_in.faults.honour_range = honour_range

    status, got, length = get_and_hash(trow, blob_path(digest))
    assert (status, got, length) == (200, digest, len(layer))
    gets = stand_in.blob_gets(digest)
    assert len(gets) == 2, [g.headers.get("range") for g in gets]
    assert "range" not in gets[0].headers
    wanted = gets[1].headers.get("range", "")
    assert wanted.startswith("bytes=") and wanted.endswith("-"), wanted
    assert 0 < int(wanted[len("bytes=") : -1]) <= dropped_at, wanted
    assert wait_until(lambda: cached_blob_path(trow, digest).exists(), timeout=DEADLINE)
    assert get_and_hash(trow, blob_path(digest)) == (200, digest, len(layer))
    # The stand-in records a request as it arrives: once trow is idle, every GET it made shows.
    wait_idle(trow)
    assert len(stand_in.blob_gets(digest)) == 2


def test_upstream_that_keeps_dropping_is_given_up_cleanly(trow: TrowProcess, stand_in: StandIn) -> None:
    """An upstream that drops every response 1 MiB in: trow retries a bounded number of times,
    then gives up; the client is cut (never a complete body), nothing is cached, no 500."""
    layer = os.urandom(6 * MIB)
    _, (digest,) = stand_in.add_image("r", "v1", [layer])
    stand_in.faults.drop_always[digest] = MIB

    result = read_blob(trow, digest)
    assert result.status in (200, 502, 503), result.status
    if result.status == 200:
        assert result.cut and result.received < len(layer)
    assert 1 < len(stand_in.blob_gets(digest)) <= 10
    assert not cached_blob_path(trow, digest).exists()


def test_chunked_upstream_blob_is_served_exact(trow: TrowProcess, stand_in: StandIn) -> None:
    """An upstream that sends a blob chunked, with no Content-Length: the client still gets
    exactly the blob with its Content-Length, and it is cached."""
    layer = os.urandom(3 * MIB + 1)
    _, (digest,) = stand_in.add_image("r", "v1", [layer])
    stand_in.faults.chunked.add(digest)
    assert get_and_hash(trow, blob_path(digest)) == (200, digest, len(layer))
    assert wait_until(lambda: cached_blob_path(trow, digest).exists(), timeout=DEADLINE)


# -- (c) 500 and 429 --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 429])
def test_failing_upstream_serves_cached_tag(trow: TrowProcess, stand_in: StandIn, status: int) -> None:
    """The upstream answers every manifest request with 500 (or 429): a tag trow has cached is
    still served, byte-exact, after the revalidation HEAD failed."""
    digest, _ = stand_in.add_image("r", "v1", [b"layer"])
    first = trow.request("GET", manifest_path("v1"))
    assert first.status == 200, first
    stand_in.faults.manifest_status = status
    heads_before = len(stand_in.requests("HEAD", "/manifests/v1"))

    response = trow.request("GET", manifest_path("v1"), timeout=DEADLINE)
    assert response.status == 200, response
    assert response.body == stand_in.manifests[digest][0]
    assert response.header("Docker-Content-Digest") == digest
    assert len(stand_in.requests("HEAD", "/manifests/v1")) > heads_before, "trow did not revalidate the tag"


@pytest.mark.parametrize("status", [500, 429])
def test_failing_upstream_without_cache_is_502_or_503(trow: TrowProcess, stand_in: StandIn, status: int) -> None:
    """The upstream answers 500 (or 429) and nothing is cached: a tag, a manifest digest and a blob
    get a 502 or 503 OCI error, never a 500."""
    digest, (layer,) = stand_in.add_image("r", "v2", [b"never fetched"])
    stand_in.faults.manifest_status = status
    stand_in.faults.blob_status = status
    for path in (manifest_path("v2"), manifest_path(digest), blob_path(layer)):
        assert_json_error(trow.request("GET", path, timeout=DEADLINE), (502, 503), ("UNAVAILABLE", "TOOMANYREQUESTS"))
        head = trow.request("HEAD", path, timeout=DEADLINE)
        assert head.status in (502, 503) and head.body == b"", head


@pytest.mark.parametrize("status", [429, 500])
def test_moved_tag_with_failing_get_serves_cached_tag(trow: TrowProcess, stand_in: StandIn, status: int) -> None:
    """The tag moved upstream and the upstream answers the HEAD but fails the GET (Docker Hub
    rate-limits GETs, not HEADs): trow serves the tag it holds rather than an error."""
    old, _ = stand_in.add_image("r", "v1", [b"old layer"])
    assert trow.request("GET", manifest_path("v1")).status == 200
    stand_in.add_image("r", "v1", [b"new layer"])
    stand_in.faults.manifest_get_status = status

    response = trow.request("GET", manifest_path("v1"), timeout=DEADLINE)
    assert response.status == 200, response
    assert response.header("Docker-Content-Digest") == old
    assert response.body == stand_in.manifests[old][0]


def test_tag_revalidation_sends_the_full_accept_set(trow: TrowProcess, stand_in: StandIn) -> None:
    """The HEAD that revalidates a tag accepts every manifest type trow stores (OCI and Docker,
    images and indexes), so the upstream never down-converts and reports the real digest."""
    stand_in.add_image("r", "v1", [b"layer"])
    for _ in range(2):
        assert trow.request("GET", manifest_path("v1")).status == 200
    heads = stand_in.requests("HEAD", "/manifests/v1")
    assert len(heads) == 2
    for head in heads:
        accepted = {part.split(";")[0].strip() for part in head.headers.get("accept", "").split(",")}
        assert {OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST} <= accepted, head.headers


def test_manifest_not_matching_its_digest_is_refused(trow: TrowProcess, stand_in: StandIn) -> None:
    """The upstream claims digest D for a tag but sends bytes that hash to something else: trow
    answers 502 and caches nothing, by tag or by digest, never a 500 and never the wrong bytes."""
    digest, _ = stand_in.add_image("r", "v1", [b"layer"])
    content, media_type = stand_in.manifests[digest]
    stand_in.manifests[digest] = (content.replace(b'"schemaVersion": 2', b'"schemaVersion":  2'), media_type)

    assert_json_error(trow.request("GET", manifest_path("v1")), (502,), ("UNAVAILABLE", "MANIFEST_INVALID"))
    assert_json_error(trow.request("GET", manifest_path(digest)), (502,), ("UNAVAILABLE", "MANIFEST_INVALID"))
    assert trow.request("GET", f"/v2/f/{ALIAS}/r/tags/list").json().get("tags") in ([], None)


@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
def test_oversized_manifest_is_refused(trow: TrowProcess, stand_in: StandIn, cached: bool) -> None:
    """The upstream answers a tag with a 5 MiB "manifest" (over trow's 4 MiB limit): trow never
    stores it; with the tag's earlier manifest cached that one is served, otherwise a 502."""
    digest, _ = stand_in.add_image("r", "v1", [b"layer"])
    if cached:
        assert trow.request("GET", manifest_path("v1")).status == 200
    huge = b'{"schemaVersion": 2, "junk": "' + b"x" * (5 * MIB) + b'"}'
    huge_digest = "sha256:" + hashlib.sha256(huge).hexdigest()
    stand_in.manifests[huge_digest] = (huge, OCI_MANIFEST)
    stand_in.tags[("r", "v1")] = huge_digest

    response = trow.request("GET", manifest_path("v1"), timeout=DEADLINE)
    if cached:
        assert response.status == 200 and response.header("Docker-Content-Digest") == digest, response
    else:
        assert_json_error(response, (502,), ("UNAVAILABLE", "MANIFEST_INVALID"))
    assert_json_error(trow.request("GET", manifest_path(huge_digest), timeout=DEADLINE), (502,), ("UNAVAILABLE", "MANIFEST_INVALID"))


# -- (d) the Bearer token flow ----------------------------------------------------------------


def test_bearer_token_flow_fetches_one_token(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, stand_in: StandIn, images: Images, skopeo: Skopeo
) -> None:
    """An upstream that wants a Bearer token from its realm, for Basic credentials that trow's
    config holds: skopeo pulls an image through trow, byte-exact, and trow fetched the token once
    (with the credentials, service and scope) and reused it for every later request."""
    stand_in.auth = ("robot", "s3cret")
    stand_in.add_layout_image(images, "multi", "r")
    entry = proxy_entry(stand_in.host, username="robot", password="s3cret")
    trow = start_proxy_trow(trow_factory, tmp_path, [entry])

    skopeo.pull(trow.ref(f"f/{ALIAS}/r:multi"), f"oci:{tmp_path / 'pulled'}:multi")
    assert_same_image(images.layout, "multi", tmp_path / "pulled", "multi")
    # Once more by raw HTTP: the tag revalidation and a blob already cached need no new token.
    assert trow.request("GET", manifest_path("multi")).status == 200

    tokens = stand_in.requests("GET", "/token")
    assert len(tokens) == 1, [t.path for t in tokens]
    assert tokens[0].query.get("service") == ["x"] and tokens[0].query.get("scope") == ["repository:r:pull"]
    assert tokens[0].headers.get("authorization", "").startswith("Basic ")
    registry_requests = stand_in.requests(contains="/v2/r/")
    anonymous = [s for s in registry_requests if "authorization" not in s.headers]
    assert len(anonymous) == 1, "only the very first request should have gone without the token"
    assert len(registry_requests) > 3
    assert_clean_log(trow)


# -- (e) Range from the partial file --------------------------------------------------------------


def test_range_is_served_from_the_partial_file_while_upstream_stalls(trow: TrowProcess, stand_in: StandIn) -> None:
    """The upstream sends the first 16 MiB of a 32 MiB blob and stalls: a Range inside those
    16 MiB gets 206 and all its bytes but the last while the upstream is still stalled (the last
    byte of every answer waits for the blob to be verified, so a bad download can only ever look
    truncated); it completes byte-exact, like a Range past them and a whole-blob client, once the
    upstream sends the rest."""
    layer = os.urandom(32 * MIB)
    _, (digest,) = stand_in.add_image("r", "v1", [layer])
    gate = threading.Event()
    stand_in.faults.gates[digest] = (16 * MIB, gate)

    whole = BodyStream(trow.port or 0, blob_path(digest), timeout=60)
    start, end = 4 * MIB + 1, 8 * MIB - 2
    early = BodyStream(trow.port or 0, blob_path(digest), headers=[("Range", f"bytes={start}-{end}")], keep=True)
    try:
        assert whole.status == 200
        whole.read_at_least(MIB)
        assert early.status == 206
        assert early.headers["content-range"] == f"bytes {start}-{end}/{len(layer)}"
        assert early.read_at_least(end - start) == end - start
        assert not gate.is_set()
        assert early.body == layer[start:end]

        late: list[RawResponse] = []
        start2, end2 = 20 * MIB, 21 * MIB
        waiter = threading.Thread(
            target=lambda: late.append(
                trow.request("GET", blob_path(digest), headers=[("Range", f"bytes={start2}-{end2}")], timeout=60)
            ),
            daemon=True,
        )
        waiter.start()
        gate.set()
        waiter.join(60)
        assert late and late[0].status == 206, late
        assert late[0].body == layer[start2 : end2 + 1]
        whole.read_to_end()
        assert (whole.cut, whole.received, whole.digest) == (False, len(layer), digest)
        early.read_to_end()
        assert (early.cut, early.body) == (False, layer[start : end + 1])
    finally:
        gate.set()
        whole.close()
        early.close()
    wait_idle(trow)
    assert len(stand_in.blob_gets(digest)) == 1


# -- a hung upstream ------------------------------------------------------------------------------


def test_hung_upstream_costs_one_timeout(trow: TrowProcess, stand_in: StandIn) -> None:
    """The upstream accepts requests and never answers: the first request for a cached tag waits
    for trow's upstream timeout and is then served from the cache; the requests after it (cached
    tag, uncached tag) all answer well within the time one upstream timeout each would take."""
    digest, _ = stand_in.add_image("r", "v1", [b"layer"])
    stand_in.add_image("r", "v2", [b"other layer"])
    assert trow.request("GET", manifest_path("v1")).status == 200
    stand_in.faults.hang = True

    first = trow.request("GET", manifest_path("v1"), timeout=60)
    assert first.status == 200 and first.header("Docker-Content-Digest") == digest, first

    started = time.monotonic()
    for _ in range(4):
        cached = trow.request("GET", manifest_path("v1"), timeout=60)
        assert cached.status == 200, cached
        uncached = trow.request("GET", manifest_path("v2"), timeout=60)
        assert_json_error(uncached, (502, 503), ("UNAVAILABLE",))
    # Eight requests: one upstream timeout each would be well over a minute.
    assert time.monotonic() - started < 30, "every request waited on the hung upstream"


def test_unreachable_upstream_costs_one_connect_timeout(trow: TrowProcess, stand_in: StandIn) -> None:
    """The upstream's address stops answering connection attempts at all (they time out, as behind
    a firewall): the first request for a cached tag waits for trow's connect timeout and is served
    from the cache; the requests after it (cached tag, uncached tag) all answer well within the
    time one connect timeout each would take."""
    stand_in.faults.no_keepalive = True
    digest, _ = stand_in.add_image("r", "v1", [b"layer"])
    stand_in.add_image("r", "v2", [b"other layer"])
    assert trow.request("GET", manifest_path("v1")).status == 200
    stand_in.blackhole()

    first = trow.request("GET", manifest_path("v1"), timeout=60)
    assert first.status == 200 and first.header("Docker-Content-Digest") == digest, first

    started = time.monotonic()
    for _ in range(4):
        cached = trow.request("GET", manifest_path("v1"), timeout=60)
        assert cached.status == 200, cached
        uncached = trow.request("GET", manifest_path("v2"), timeout=60)
        assert_json_error(uncached, (502, 503), ("UNAVAILABLE",))
    # Eight requests: one connect timeout each would be well over half a minute.
    assert time.monotonic() - started < 20, "every request waited on the unreachable upstream"


# -- chunked bodies, redirects, other auth ----------------------------------------------------


def test_chunked_upstream_that_drops_is_a_clean_error(trow: TrowProcess, stand_in: StandIn) -> None:
    """An upstream that sends a blob chunked (no size) and drops the connection half-way: trow
    cannot resume without a size, so the client gets a 502/503 OCI error (or a cut body), never
    a 500; nothing is cached, and the next GET fetches the blob afresh, byte-exact."""
    layer = os.urandom(4 * MIB)
    _, (digest,) = stand_in.add_image("r", "v1", [layer])
    stand_in.faults.chunked.add(digest)
    stand_in.faults.drop_once[digest] = MIB

    response = trow.request("GET", blob_path(digest), timeout=DEADLINE)
    if response.status == 200:
        assert len(response.body) < len(layer)
    else:
        assert_json_error(response, (502, 503), ("UNAVAILABLE",))
    assert not cached_blob_path(trow, digest).exists()
    assert get_and_hash(trow, blob_path(digest)) == (200, digest, len(layer))


def test_blob_redirect_never_carries_credentials(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, stand_in: StandIn
) -> None:
    """The upstream (Bearer auth) redirects blob downloads to storage on another host: trow follows
    the redirect and serves the blob byte-exact, and the storage host never sees trow's
    Authorization header."""
    cdn = StandIn()
    try:
        stand_in.auth = ("robot", "s3cret")
        layer = os.urandom(2 * MIB)
        _, (digest,) = stand_in.add_image("r", "v1", [layer])
        cdn.add_blob(layer)
        stand_in.faults.redirect_blobs = f"http://{cdn.host}"
        trow = start_proxy_trow(
            trow_factory, tmp_path, [proxy_entry(stand_in.host, username="robot", password="s3cret")]
        )
        assert get_and_hash(trow, blob_path(digest)) == (200, digest, len(layer))
        fetched = cdn.requests("GET", f"/cdn/{digest}")
        assert len(fetched) == 1
        assert "authorization" not in fetched[0].headers, "credentials leaked to the redirect target"
        assert any("authorization" in s.headers for s in stand_in.blob_gets(digest)), "the upstream never got the token"
        assert_clean_log(trow)
    finally:
        cdn.close()


def test_basic_auth_upstream(trow_factory: Callable[..., TrowProcess], tmp_path: Path, stand_in: StandIn) -> None:
    """An upstream that answers 401 with a Basic challenge: trow resends with the configured
    credentials and serves the manifest and blob byte-exact."""
    stand_in.auth = ("robot", "s3cret")
    stand_in.auth_scheme = "basic"
    layer = os.urandom(MIB + 1)
    digest, (layer_digest,) = stand_in.add_image("r", "v1", [layer])
    trow = start_proxy_trow(trow_factory, tmp_path, [proxy_entry(stand_in.host, username="robot", password="s3cret")])
    response = trow.request("GET", manifest_path("v1"))
    assert response.status == 200 and response.body == stand_in.manifests[digest][0], response
    assert get_and_hash(trow, blob_path(layer_digest)) == (200, layer_digest, len(layer))
    assert_clean_log(trow)


def test_upstream_wanting_credentials_trow_lacks_is_4xx_not_500(trow: TrowProcess, stand_in: StandIn) -> None:
    """An upstream that wants a token for credentials trow's config does not hold: the manifest
    and the blob get a 401/403/404 OCI error that says so, never a 500."""
    stand_in.auth = ("robot", "s3cret")
    digest, (layer,) = stand_in.add_image("r", "v1", [b"layer"])
    for path in (manifest_path("v1"), manifest_path(digest), blob_path(layer)):
        response = trow.request("GET", path, timeout=DEADLINE)
        assert_json_error(response, (401, 403, 404), ("NAME_UNKNOWN", "UNAUTHORIZED", "DENIED", "MANIFEST_UNKNOWN", "BLOB_UNKNOWN"))


# -- any_registry never reaches private addresses ------------------------------------------------


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "127.1:{port}", "2130706433:{port}", "ns"])
def test_any_registry_never_proxies_loopback(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, form: str
) -> None:
    """With C{any_registry: true}, hosts that resolve to loopback (written plainly, shortened or as
    a number) are refused with a 4xx OCI error and trow opens no connection to them."""
    counter = ConnectionCounter()
    try:
        trow = start_proxy_trow(trow_factory, tmp_path, [], any_registry=True)
        host = f"127.0.0.1:{counter.port}"
        if form == "ns":
            paths = [f"/v2/r/manifests/v1?ns={host}", f"/v2/r/blobs/sha256:{'ab' * 32}?ns={host}"]
        else:
            host = form.format(port=counter.port)
            paths = [f"/v2/f/{host}/r/manifests/v1", f"/v2/f/{host}/r/blobs/sha256:{'ab' * 32}"]
        for path in paths:
            response = trow.request("GET", path, timeout=DEADLINE)
            assert 400 <= response.status < 500, (path, response)
            assert response.json()["errors"], response
        assert counter.settled_accepted(trow) == 0, "trow connected to a loopback address"
        assert_clean_log(trow)
    finally:
        counter.close()


# -- shutdown in the middle of a download ------------------------------------------------------


def test_sigterm_during_download_shuts_down_cleanly(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, stand_in: StandIn
) -> None:
    """SIGTERM while a blob download is in flight (the upstream stalled half-way, a client
    waiting): trow shuts down in order with no error logged, and after a restart tmp/ is clean and
    the blob is fetched afresh, byte-exact."""
    layer = os.urandom(8 * MIB)
    _, (digest,) = stand_in.add_image("r", "v1", [layer])
    gate = threading.Event()
    stand_in.faults.gates[digest] = (4 * MIB, gate)
    trow = start_proxy_trow(trow_factory, tmp_path, [proxy_entry(stand_in.host)])

    client = BodyStream(trow.port or 0, blob_path(digest), timeout=DEADLINE)
    try:
        assert client.status == 200
        client.read_at_least(MIB)
        trow.stop_cleanly()
    finally:
        client.close()
        gate.set()
    del stand_in.faults.gates[digest]
    trow.start()
    assert trow.tmp_entries() == []
    assert get_and_hash(trow, blob_path(digest)) == (200, digest, len(layer))
    assert_clean_log(trow)


def test_close_delimited_upstream_blob_is_served_exact(trow: TrowProcess, stand_in: StandIn) -> None:
    """An upstream that sends a blob with neither Content-Length nor chunking, ending the body by
    closing the connection (valid HTTP/1.1): the client gets exactly the blob, which is cached."""
    layer = os.urandom(2 * MIB + 7)
    _, (digest,) = stand_in.add_image("r", "v1", [layer])
    stand_in.faults.close_delimited.add(digest)
    assert get_and_hash(trow, blob_path(digest)) == (200, digest, len(layer))
    assert wait_until(lambda: cached_blob_path(trow, digest).exists(), timeout=DEADLINE)


def test_empty_blob_is_proxied(trow: TrowProcess, stand_in: StandIn) -> None:
    """The empty blob (sha256 of nothing, common as an artifact config) is fetched, verified and
    served: 200 with Content-Length 0, then cached."""
    digest = stand_in.add_blob(b"")
    head = trow.request("HEAD", blob_path(digest), timeout=DEADLINE)
    assert head.status == 200 and head.header("Content-Length") == "0", head
    response = trow.request("GET", blob_path(digest), timeout=DEADLINE)
    assert response.status == 200 and response.body == b"" and response.header("Content-Length") == "0", response
    assert wait_until(lambda: cached_blob_path(trow, digest).exists(), timeout=DEADLINE)


def test_credentials_apply_only_under_their_path_prefix(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, stand_in: StandIn
) -> None:
    """Credentials configured with C{path_prefix: team-a} are sent for team-a/... and never for
    team-b/... of the same upstream (which then gets a 4xx OCI error, not a 500)."""
    stand_in.auth = ("robot", "s3cret")
    stand_in.auth_scheme = "basic"
    digest_a, _ = stand_in.add_image("team-a/app", "v1", [b"a"])
    stand_in.add_image("team-b/app", "v1", [b"b"])
    entries = [
        proxy_entry(stand_in.host),
        {"host": stand_in.host, "insecure": True, "username": "robot", "password": "s3cret", "path_prefix": "team-a"},
    ]
    trow = start_proxy_trow(trow_factory, tmp_path, entries)
    team_a = trow.request("GET", manifest_path("v1", repo="team-a/app"))
    assert team_a.status == 200 and team_a.header("Docker-Content-Digest") == digest_a, team_a
    team_b = trow.request("GET", manifest_path("v1", repo="team-b/app"))
    assert_json_error(team_b, (401, 403, 404), ("NAME_UNKNOWN", "UNAUTHORIZED", "DENIED", "MANIFEST_UNKNOWN"))
    sent_to_b = stand_in.requests(contains="/v2/team-b/")
    assert sent_to_b and all("authorization" not in s.headers for s in sent_to_b), "team-a's credentials went to team-b"
    assert_clean_log(trow)
