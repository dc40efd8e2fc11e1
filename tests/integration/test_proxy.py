"""The pull-through cache against a real upstream: Debian's distribution 2.8 (docker-registry).

reference.md section 5. trow's config lists the upstream as C{127.0.0.1:<port>} with alias C{up};
real clients reach it as C{f/up/<repo>} (a repository path cannot hold C{host:port}), raw HTTP
also as C{<repo>?ns=127.0.0.1:<port>}. What trow asked of the upstream is read back from the
upstream's access log, through an L{UpstreamLog}: only once it is proved that the log holds every
request trow made (no fixed sleep). Tests that need a blob uncached start a trow of their own.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
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
    free_port,
    get_and_hash,
    run_concurrently,
)
from tests.integration.upstream import (  # noqa: F401 - fixtures
    ALIAS,
    DEADLINE,
    BodyStream,
    Distribution,
    Upstream,
    UpstreamLog,
    assert_clean_log,
    assert_json_error,
    cached_blob_path,
    private_upstream,
    proxy_entry,
    proxy_trow,
    start_proxy_trow,
    upstream,
    wait_cached,
    wait_until,
    write_proxy_config,
)

ACCEPT_ALL = ", ".join(
    [
        OCI_INDEX,
        OCI_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


def manifest_path(repo: str, reference: str) -> str:
    return f"/v2/f/{ALIAS}/{repo}/manifests/{reference}"


def blob_path(repo: str, digest: str) -> str:
    return f"/v2/f/{ALIAS}/{repo}/blobs/{digest}"


# -- 1. skopeo through the alias ------------------------------------------------------------------


def test_skopeo_pulls_multi_layer_image_through_alias(
    proxy_trow: TrowProcess, upstream: Upstream, images: Images, skopeo: Skopeo, tmp_path: Path
) -> None:
    """skopeo pulls a three-layer image as f/up/<repo>:<tag>: manifest, config and every layer
    have the source's digests; a second pull is served from the cache (no GET reaches the upstream,
    only the tag's revalidation HEAD)."""
    repo = upstream.image("multi", "pull/multi")
    log = UpstreamLog(upstream.registry, proxy_trow)
    ref = proxy_trow.ref(f"f/{ALIAS}/{repo}:multi")

    skopeo.pull(ref, f"oci:{tmp_path / 'first'}:multi")
    compared = assert_same_image(images.layout, "multi", tmp_path / "first", "multi")
    assert len(compared) == 1 + 1 + 3

    log = log.next()
    skopeo.pull(ref, f"oci:{tmp_path / 'second'}:multi")
    assert_same_image(images.layout, "multi", tmp_path / "second", "multi")
    seen = log.requests()
    assert [r for r in seen if r.method == "GET"] == [], f"the second pull reached the upstream: {seen}"
    assert [(r.method, r.path) for r in seen] == [("HEAD", f"/v2/{repo}/manifests/multi")], seen


def test_skopeo_pulls_index_with_all_through_alias(
    proxy_trow: TrowProcess, upstream: Upstream, images: Images, skopeo: Skopeo, tmp_path: Path
) -> None:
    """skopeo --all pulls an OCI index of two platform images through trow: the index, both image
    manifests, configs and layers keep their digests; a second --all pull sends no GET upstream."""
    repo = upstream.image("multiarch", "pull/multiarch")
    log = UpstreamLog(upstream.registry, proxy_trow)
    ref = proxy_trow.ref(f"f/{ALIAS}/{repo}:multiarch")

    skopeo.pull(ref, f"oci:{tmp_path / 'first'}:multiarch", "--all")
    compared = assert_same_image(images.layout, "multiarch", tmp_path / "first", "multiarch")
    assert len(compared) == 1 + 2 * (1 + 1 + 2)

    log = log.next()
    skopeo.pull(ref, f"oci:{tmp_path / 'second'}:multiarch", "--all")
    assert_same_image(images.layout, "multiarch", tmp_path / "second", "multiarch")
    seen = log.requests()
    assert [r for r in seen if r.method == "GET"] == [], f"the second pull reached the upstream: {seen}"
    assert [(r.method, r.path) for r in seen] == [("HEAD", f"/v2/{repo}/manifests/multiarch")], seen


def test_manifest_by_tag_costs_exactly_one_head(proxy_trow: TrowProcess, upstream: Upstream, images: Images) -> None:
    """Once a tag is cached, each GET of it by tag revalidates with exactly one upstream HEAD of
    that tag and nothing else, and serves the cached bytes."""
    repo = upstream.image("multi", "head/multi")
    log = UpstreamLog(upstream.registry, proxy_trow)
    first = proxy_trow.request("GET", manifest_path(repo, "multi"), headers=[("Accept", ACCEPT_ALL)])
    assert first.status == 200, first

    for _ in range(2):
        log = log.next()
        again = proxy_trow.request("GET", manifest_path(repo, "multi"), headers=[("Accept", ACCEPT_ALL)])
        assert again.status == 200 and again.body == images.manifest_bytes("multi"), again
        assert again.header("Docker-Content-Digest") == images.refs["multi"]["digest"]
        seen = log.requests()
        assert [(r.method, r.path) for r in seen] == [("HEAD", f"/v2/{repo}/manifests/multi")], seen


def test_manifest_is_answered_without_fetching_layers(proxy_trow: TrowProcess, upstream: Upstream, images: Images) -> None:
    """An uncached manifest is answered as soon as the manifest itself is fetched (one HEAD, one
    GET upstream): no layer is downloaded before the client asks for it."""
    repo = upstream.image("multi", "lazy/multi")
    log = UpstreamLog(upstream.registry, proxy_trow)
    response = proxy_trow.request("GET", manifest_path(repo, "multi"), headers=[("Accept", ACCEPT_ALL)])
    assert response.status == 200 and response.body == images.manifest_bytes("multi"), response
    seen = [(r.method, r.path) for r in log.requests()]
    digest = images.refs["multi"]["digest"]
    assert ("HEAD", f"/v2/{repo}/manifests/multi") in seen
    assert [s for s in seen if "/blobs/" in s[1]] == [], seen
    assert len(seen) == 2 and seen[1][0] == "GET" and seen[1][1] in (
        f"/v2/{repo}/manifests/multi",
        f"/v2/{repo}/manifests/{digest}",
    ), seen


# -- 2. containerd's ?ns= form ----------------------------------------------------------------


def test_ns_form_serves_same_manifest_and_blobs(proxy_trow: TrowProcess, upstream: Upstream, images: Images) -> None:
    """C{/v2/<repo>/...?ns=127.0.0.1:<port>} (containerd's mirror request) gets the upstream's
    manifest byte-exact and every blob hashing to its digest."""
    repo = upstream.image("multi", "ns/multi")
    ns = f"ns={upstream.registry.host}"
    response = proxy_trow.request("GET", f"/v2/{repo}/manifests/multi?{ns}", headers=[("Accept", ACCEPT_ALL)])
    assert response.status == 200, response
    assert response.body == images.manifest_bytes("multi")
    assert response.header("Docker-Content-Digest") == images.refs["multi"]["digest"]
    assert response.header("Content-Type") == OCI_MANIFEST

    for digest, size in images.tree("multi")[1:]:
        status, got, length = get_and_hash(proxy_trow, f"/v2/{repo}/blobs/{digest}?{ns}")
        assert (status, got, length) == (200, digest, size)


def test_ns_and_alias_forms_share_one_cache(proxy_trow: TrowProcess, upstream: Upstream, images: Images) -> None:
    """What was fetched through C{?ns=} is the cache of C{f/up/...}: the same manifest by digest
    and the same blobs are served through the alias with no upstream request at all."""
    repo = upstream.image("multi", "ns/shared")
    registry = upstream.registry
    log = UpstreamLog(registry, proxy_trow)
    ns = f"ns={registry.host}"
    assert proxy_trow.request("GET", f"/v2/{repo}/manifests/multi?{ns}").status == 200
    blobs = images.tree("multi")[1:]
    for digest, _ in blobs:
        assert get_and_hash(proxy_trow, f"/v2/{repo}/blobs/{digest}?{ns}")[0] == 200

    log = log.next()
    digest = images.refs["multi"]["digest"]
    by_digest = proxy_trow.request("GET", manifest_path(repo, digest), headers=[("Accept", ACCEPT_ALL)])
    assert by_digest.status == 200 and by_digest.body == images.manifest_bytes("multi"), by_digest
    for blob, size in blobs:
        assert get_and_hash(proxy_trow, blob_path(repo, blob)) == (200, blob, size)
    assert log.requests() == []


def test_cached_digest_is_served_without_upstream_contact(
    proxy_trow: TrowProcess, upstream: Upstream, images: Images
) -> None:
    """A manifest reference by digest that is cached, and its blobs, are served with no request to
    the upstream at all (not even a HEAD), through both the alias and C{?ns=}."""
    repo = upstream.image("multiarch", "ns/digests")
    registry = upstream.registry
    log = UpstreamLog(registry, proxy_trow)
    index_digest = images.refs["multiarch"]["digest"]
    children = [m["digest"] for m in json.loads(images.manifest_bytes("multiarch"))["manifests"]]
    manifests = [index_digest, *children]
    assert proxy_trow.request("GET", manifest_path(repo, "multiarch"), headers=[("Accept", ACCEPT_ALL)]).status == 200
    for digest in children:
        assert proxy_trow.request("GET", manifest_path(repo, digest), headers=[("Accept", ACCEPT_ALL)]).status == 200

    log = log.next()
    for digest in manifests:
        for path in (manifest_path(repo, digest), f"/v2/{repo}/manifests/{digest}?ns={registry.host}"):
            for method in ("HEAD", "GET"):
                response = proxy_trow.request(method, path, headers=[("Accept", ACCEPT_ALL)])
                assert response.status == 200, (method, path, response)
                assert response.header("Docker-Content-Digest") == digest
    assert log.requests() == [], "a cached digest must not cost an upstream request"


@pytest.mark.parametrize("form", ["ns", "f"])
def test_unlisted_host_is_name_unknown_with_advice(proxy_trow: TrowProcess, upstream: Upstream, form: str) -> None:
    """A host the config does not list, as C{?ns=} or as C{f/<host>}, gets 404 NAME_UNKNOWN whose
    message says how to allow it; trow never dials it."""
    unlisted = f"127.0.0.1:{free_port()}"
    path = f"/v2/some/repo/manifests/latest?ns={unlisted}" if form == "ns" else f"/v2/f/{unlisted}/some/repo/manifests/latest"
    response = proxy_trow.request("GET", path)
    assert_json_error(response, (404,), ("NAME_UNKNOWN",))
    message = response.json()["errors"][0]["message"]
    assert "registry_proxies" in message, message


def test_host_and_port_form_reaches_the_same_cache(proxy_trow: TrowProcess, upstream: Upstream, images: Images) -> None:
    """C{/v2/f/127.0.0.1:<port>/<repo>/...} (the host as written in image references, which raw
    HTTP can send) serves the same manifest as the alias, from the same cache: no upstream GET."""
    repo = upstream.image("multi", "hostport/multi")
    registry = upstream.registry
    log = UpstreamLog(registry, proxy_trow)
    assert proxy_trow.request("GET", manifest_path(repo, "multi"), headers=[("Accept", ACCEPT_ALL)]).status == 200
    log = log.next()
    response = proxy_trow.request(
        "GET", f"/v2/f/{registry.host}/{repo}/manifests/multi", headers=[("Accept", ACCEPT_ALL)]
    )
    assert response.status == 200 and response.body == images.manifest_bytes("multi"), response
    seen = log.requests()
    assert [(r.method, r.path) for r in seen] == [("HEAD", f"/v2/{repo}/manifests/multi")], seen


BAD_NAMES = ["../../x", "a/../../../debug", "a%2F..%2F..%2Fx", "x/../big/one", "big//one", "UPPER"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_invalid_proxied_names_never_reach_the_upstream(proxy_trow: TrowProcess, upstream: Upstream, bad: str) -> None:
    """A proxied name whose repository part is not a valid repository name (dot-dot segments,
    an empty component, upper case) is refused with 400 NAME_INVALID, as C{?ns=} names are, and
    nothing is sent upstream: above all no request that escapes C{/v2/} on the upstream host."""
    blob = upstream.blob_64m
    log = UpstreamLog(upstream.registry, proxy_trow)
    for path in (manifest_path(bad, "latest"), blob_path(bad, blob.digest)):
        response = proxy_trow.request("GET", path, timeout=DEADLINE)
        assert_json_error(response, (400,), ("NAME_INVALID",))
    assert log.requests() == []


# -- 3. one upstream GET per digest ------------------------------------------------------------


def _concurrent_gets(trow: TrowProcess, paths: list[str]) -> list[tuple[int, str, int]]:
    """GET every path at once, each on its own thread and connection; (status, digest, length)."""
    return run_concurrently([lambda path=path: get_and_hash(trow, path) for path in paths], timeout=120)


def test_sixteen_concurrent_clients_cost_one_upstream_get(proxy_trow: TrowProcess, upstream: Upstream) -> None:
    """16 clients GET one uncached 64 MiB blob at once: each gets the exact bytes, and the upstream
    sees exactly one GET for that digest."""
    blob = upstream.blob_64m
    log = UpstreamLog(upstream.registry, proxy_trow)
    results = _concurrent_gets(proxy_trow, [blob_path("big/one", blob.digest)] * 16)
    assert results == [(200, blob.digest, blob.size)] * 16
    assert log.blob_gets(blob.digest) == 1


def test_two_repositories_sharing_a_blob_cost_one_upstream_get(proxy_trow: TrowProcess, upstream: Upstream) -> None:
    """8 clients through f/up/big/one and 8 through f/up/big/two GET the blob both repositories
    hold, at once: each gets the exact bytes, and the upstream sees one GET for the digest."""
    blob = upstream.blob_64m
    log = UpstreamLog(upstream.registry, proxy_trow)
    paths = [blob_path("big/one", blob.digest), blob_path("big/two", blob.digest)] * 8
    results = _concurrent_gets(proxy_trow, paths)
    assert results == [(200, blob.digest, blob.size)] * 16
    assert log.blob_gets(blob.digest) == 1


def test_head_of_uncached_blob_starts_the_fetch(proxy_trow: TrowProcess, upstream: Upstream) -> None:
    """A HEAD of an uncached blob answers with its size and digest and starts the one upstream
    download: the blob lands in the cache and a later GET costs no upstream request."""
    blob = upstream.blob_64m
    log = UpstreamLog(upstream.registry, proxy_trow)
    head = proxy_trow.request("HEAD", blob_path("big/two", blob.digest))
    assert head.status == 200, head
    assert head.header("Content-Length") == str(blob.size) and head.body == b""
    assert head.header("Docker-Content-Digest") == blob.digest
    assert wait_until(lambda: cached_blob_path(proxy_trow, blob.digest).exists()), "the HEAD fetched nothing"
    assert get_and_hash(proxy_trow, blob_path("big/two", blob.digest)) == (200, blob.digest, blob.size)
    assert log.blob_gets(blob.digest) == 1


# -- 4. Range on a blob being downloaded -----------------------------------------------------------


def _get_range(trow: TrowProcess, path: str, start: int, end: int) -> RawResponse:
    return trow.request("GET", path, headers=[("Range", f"bytes={start}-{end}")], timeout=DEADLINE)


def test_range_as_first_request_of_uncached_blob(proxy_trow: TrowProcess, upstream: Upstream) -> None:
    """The first request for an uncached 200 MiB blob is a Range in its middle: 206 with exactly
    those bytes, served from the download it started; the blob is fetched once, whole."""
    blob = upstream.blob_200m
    log = UpstreamLog(upstream.registry, proxy_trow)
    start, end = 120 * MIB + 12345, 121 * MIB + 999
    response = _get_range(proxy_trow, blob_path("big/one", blob.digest), start, end)
    assert response.status == 206, response
    assert response.header("Content-Range") == f"bytes {start}-{end}/{blob.size}"
    assert response.body == blob.slice(start, end - start + 1)
    assert get_and_hash(proxy_trow, blob_path("big/one", blob.digest)) == (200, blob.digest, blob.size)
    assert log.blob_gets(blob.digest) == 1


def test_range_while_a_slow_client_streams_the_download(proxy_trow: TrowProcess, upstream: Upstream) -> None:
    """While one client reads an uncached 200 MiB blob slowly, another asks for a Range in the
    middle: 206 with exactly those bytes; the slow client then gets the whole blob, exact."""
    blob = upstream.blob_200m
    log = UpstreamLog(upstream.registry, proxy_trow)
    slow = BodyStream(proxy_trow.port or 0, blob_path("big/one", blob.digest))
    try:
        assert slow.status == 200 and slow.length == blob.size
        slow.read_at_least(MIB)
        start, end = 100 * MIB - 7, 101 * MIB + 3
        response = _get_range(proxy_trow, blob_path("big/one", blob.digest), start, end)
        assert response.status == 206, response
        assert response.header("Content-Range") == f"bytes {start}-{end}/{blob.size}"
        assert response.body == blob.slice(start, end - start + 1)
        slow.read_to_end()
        assert not slow.cut and (slow.received, slow.digest) == (blob.size, blob.digest)
    finally:
        slow.close()
    assert log.blob_gets(blob.digest) == 1


def test_stalled_client_does_not_hold_back_others(proxy_trow: TrowProcess, upstream: Upstream) -> None:
    """A client that stops reading an uncached 200 MiB blob after 1 MiB holds back neither the
    download nor a second client, which gets the whole blob byte-exact; the stalled client then
    reads on and gets it exact too."""
    blob = upstream.blob_200m
    stalled = BodyStream(proxy_trow.port or 0, blob_path("big/two", blob.digest))
    try:
        assert stalled.status == 200
        stalled.read_at_least(MIB)
        assert get_and_hash(proxy_trow, blob_path("big/two", blob.digest)) == (200, blob.digest, blob.size)
        stalled.read_to_end()
        assert not stalled.cut and (stalled.received, stalled.digest) == (blob.size, blob.digest)
    finally:
        stalled.close()


PEAK_RSS_LIMIT = 200 * 10**6  # bytes, as for pushes (test_push_pull.py)


def test_memory_stays_flat_with_stalled_clients(proxy_trow: TrowProcess, upstream: Upstream) -> None:
    """Four clients stall on an uncached 200 MiB blob while a fifth reads it whole: trow's peak
    memory stays under 200 MB (nothing is buffered for the stalled ones; they are paused)."""
    blob = upstream.blob_200m
    stalled = [BodyStream(proxy_trow.port or 0, blob_path("big/one", blob.digest)) for _ in range(4)]
    try:
        for client in stalled:
            assert client.status == 200
            client.read_at_least(MIB)
        assert get_and_hash(proxy_trow, blob_path("big/one", blob.digest)) == (200, blob.digest, blob.size)
        assert wait_until(lambda: cached_blob_path(proxy_trow, blob.digest).exists(), timeout=DEADLINE)
        peak = proxy_trow.peak_rss_bytes()
        assert peak < PEAK_RSS_LIMIT, f"trow peaked at {peak / 1e6:.0f} MB"
    finally:
        for client in stalled:
            client.close()


# -- 5. a client that leaves ----------------------------------------------------------------------


def test_download_outlives_a_client_that_leaves(proxy_trow: TrowProcess, upstream: Upstream) -> None:
    """A client reads 1 MiB of an uncached 200 MiB blob and hangs up: the download runs on, the
    blob lands in the cache, and a later GET is served byte-exact with no new upstream GET."""
    blob = upstream.blob_200m
    log = UpstreamLog(upstream.registry, proxy_trow)
    leaver = BodyStream(proxy_trow.port or 0, blob_path("big/two", blob.digest))
    assert leaver.status == 200
    leaver.read_at_least(MIB)
    leaver.close()

    wait_until(lambda: cached_blob_path(proxy_trow, blob.digest).exists(), timeout=DEADLINE)
    assert get_and_hash(proxy_trow, blob_path("big/two", blob.digest)) == (200, blob.digest, blob.size)
    assert log.blob_gets(blob.digest) == 1
    assert wait_until(lambda: proxy_trow.tmp_entries() == [], timeout=10), proxy_trow.tmp_entries()


# -- 6, 7. upstream down ----------------------------------------------------------------------


@dataclass
class CachedThenDown:
    """A trow that pulled C{down/multi:multi} while the upstream was up; the upstream is now stopped.

    C{down/multiarch:multiarch} exists upstream but was never fetched."""

    trow: TrowProcess
    registry: Distribution
    cached_repo: str
    uncached_repo: str


@pytest.fixture
def cached_then_down(
    trow_factory: Callable[..., TrowProcess],
    tmp_path: Path,
    private_upstream: Distribution,
    images: Images,
    skopeo: Skopeo,
) -> Iterator[CachedThenDown]:
    private_upstream.push_image(skopeo, images, "multi", "down/multi")
    private_upstream.push_image(skopeo, images, "multiarch", "down/multiarch")
    trow = start_proxy_trow(trow_factory, tmp_path, [proxy_entry(private_upstream.host)])
    skopeo.pull(trow.ref(f"f/{ALIAS}/down/multi:multi"), f"oci:{tmp_path / 'warm'}:multi")
    wait_cached(trow, [d for d, _ in images.tree("multi")[1:]])
    private_upstream.stop()
    yield CachedThenDown(trow, private_upstream, "down/multi", "down/multiarch")
    assert_clean_log(trow)


def test_upstream_down_cached_tag_and_digests_still_served(cached_then_down: CachedThenDown, images: Images) -> None:
    """With the upstream stopped, the cached tag (its revalidation fails), the manifest by digest
    and every blob are served, byte-exact, without hanging."""
    trow, repo = cached_then_down.trow, cached_then_down.cached_repo
    by_tag = trow.request("GET", manifest_path(repo, "multi"), headers=[("Accept", ACCEPT_ALL)], timeout=DEADLINE)
    assert by_tag.status == 200 and by_tag.body == images.manifest_bytes("multi"), by_tag
    digest = images.refs["multi"]["digest"]
    by_digest = trow.request("GET", manifest_path(repo, digest), timeout=DEADLINE)
    assert by_digest.status == 200 and by_digest.body == images.manifest_bytes("multi"), by_digest
    for blob, size in images.tree("multi")[1:]:
        assert get_and_hash(trow, blob_path(repo, blob)) == (200, blob, size)


def test_upstream_down_uncached_content_is_a_clear_503(cached_then_down: CachedThenDown, images: Images) -> None:
    """With the upstream stopped, what is not cached (a tag, a manifest digest, a blob) gets a 502
    or 503 OCI error saying so, never a 500 and never a hang."""
    trow, repo = cached_then_down.trow, cached_then_down.uncached_repo
    tree = images.tree("multiarch")
    paths = [
        manifest_path(repo, "multiarch"),
        manifest_path(repo, tree[1][0]),
        blob_path(repo, tree[-1][0]),
        f"/v2/{repo}/blobs/{tree[-1][0]}?ns={cached_then_down.registry.host}",
    ]
    for path in paths:
        for method in ("GET", "HEAD"):
            response = trow.request(method, path, headers=[("Accept", ACCEPT_ALL)], timeout=DEADLINE)
            if method == "HEAD":
                assert response.status in (502, 503) and response.body == b"", (path, response)
            else:
                assert_json_error(response, (502, 503), ("UNAVAILABLE",))


def test_upstream_down_repeated_requests_all_answer(cached_then_down: CachedThenDown, images: Images) -> None:
    """Twenty requests in a row while the upstream is down, for cached and uncached content, all
    answer (200 or 502/503) within a generous deadline: none waits on the dead upstream for long."""
    trow = cached_then_down.trow
    deadline = time.monotonic() + 60
    for i in range(10):
        cached = trow.request("GET", manifest_path(cached_then_down.cached_repo, "multi"), timeout=DEADLINE)
        assert cached.status == 200, cached
        uncached = trow.request("GET", manifest_path(cached_then_down.uncached_repo, "multiarch"), timeout=DEADLINE)
        assert uncached.status in (502, 503), uncached
    assert time.monotonic() < deadline, "requests while the upstream is down took far too long"


def test_trow_restarts_with_upstream_down_and_serves_cache(
    cached_then_down: CachedThenDown, images: Images, skopeo: Skopeo, tmp_path: Path
) -> None:
    """trow stops and starts again while its only upstream is down: it starts, and skopeo pulls
    the cached image through it, every digest intact."""
    trow = cached_then_down.trow
    trow.stop()
    trow.start()
    skopeo.pull(trow.ref(f"f/{ALIAS}/{cached_then_down.cached_repo}:multi"), f"oci:{tmp_path / 'again'}:multi")
    assert_same_image(images.layout, "multi", tmp_path / "again", "multi")
    digest = images.refs["multi"]["digest"]
    assert trow.request("GET", manifest_path(cached_then_down.cached_repo, digest)).status == 200


def test_upstream_restart_between_requests_is_transparent(
    trow_factory: Callable[..., TrowProcess],
    tmp_path: Path,
    private_upstream: Distribution,
    images: Images,
    skopeo: Skopeo,
) -> None:
    """The upstream restarts (same port, same storage) between two requests, so trow's pooled
    connections to it are dead: the next uncached fetch still works, with no error and no
    upstream-down answer."""
    private_upstream.push_image(skopeo, images, "multi", "restart/multi")
    private_upstream.push_image(skopeo, images, "multiarch", "restart/multiarch")
    trow = start_proxy_trow(trow_factory, tmp_path, [proxy_entry(private_upstream.host)])
    assert trow.request("GET", manifest_path("restart/multi", "multi")).status == 200
    for blob, _ in images.tree("multi")[1:]:
        assert get_and_hash(trow, blob_path("restart/multi", blob))[0] == 200

    private_upstream.restart()
    response = trow.request("GET", manifest_path("restart/multiarch", "multiarch"), headers=[("Accept", ACCEPT_ALL)])
    assert response.status == 200 and response.body == images.manifest_bytes("multiarch"), response
    for blob, size in images.tree("multiarch")[-2:]:
        assert get_and_hash(trow, blob_path("restart/multiarch", blob)) == (200, blob, size)
    assert_clean_log(trow)


def test_offline_mode_serves_cache_and_never_contacts_upstream(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, upstream: Upstream, images: Images
) -> None:
    """With C{offline: true} trow never contacts the upstream: a cached tag, its digests and
    blobs are served (no revalidation HEAD), an uncached tag gets a 404 or 503 OCI error."""
    repo = upstream.image("multi", "offline/multi")
    registry = upstream.registry
    entries = [proxy_entry(registry.host)]
    trow = start_proxy_trow(trow_factory, tmp_path, entries)
    assert trow.request("GET", manifest_path(repo, "multi")).status == 200
    for blob, _ in images.tree("multi")[1:]:
        assert get_and_hash(trow, blob_path(repo, blob))[0] == 200
    wait_cached(trow, [d for d, _ in images.tree("multi")[1:]])
    trow.stop()
    write_proxy_config(tmp_path / "trow-config.yml", entries, offline=True)
    trow.start()

    log = UpstreamLog(registry, trow)
    by_tag = trow.request("GET", manifest_path(repo, "multi"), headers=[("Accept", ACCEPT_ALL)])
    assert by_tag.status == 200 and by_tag.body == images.manifest_bytes("multi"), by_tag
    for blob, size in images.tree("multi")[1:]:
        assert get_and_hash(trow, blob_path(repo, blob)) == (200, blob, size)
    assert_json_error(trow.request("GET", manifest_path(repo, "other")), (404, 503), ("MANIFEST_UNKNOWN", "UNAVAILABLE"))
    assert log.requests() == []
    assert_clean_log(trow)


# -- 8. crash mid-download ------------------------------------------------------------------------


def _partial_download(trow: TrowProcess) -> int:
    """The size of the largest proxy download file in C{tmp/}."""
    sizes = [0]
    tmp = trow.data_dir / "tmp"
    for name in trow.tmp_entries():
        try:
            sizes.append((tmp / name).stat().st_size)
        except FileNotFoundError:
            pass
    return max(sizes)


def test_kill_mid_download_then_fetch_again(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, upstream: Upstream
) -> None:
    """kill -9 while a 200 MiB blob is being fetched: after a restart tmp/ is clean, the blob is
    fetched again, in full and byte-exact, nothing waits on the dead download, and tmp/ is left
    empty."""
    trow = start_proxy_trow(trow_factory, tmp_path, [proxy_entry(upstream.registry.host)])
    blob = upstream.blob_200m
    registry = upstream.registry
    mark = registry.mark()
    client = BodyStream(trow.port or 0, blob_path("big/one", blob.digest))
    try:
        assert client.status == 200
        reached = wait_until(lambda: _partial_download(trow) >= 8 * MIB, timeout=DEADLINE, interval=0.002)
        trow.kill()
    finally:
        client.close()
    assert reached, "trow never wrote the download to tmp/"
    assert not cached_blob_path(trow, blob.digest).exists(), "the download finished before the kill: test too slow"
    assert trow.tmp_entries(), "the kill should leave a partial download in tmp/"
    # The dead trow's GET: logged once the registry's write to the closed connection failed.
    assert wait_until(lambda: registry.blob_gets(blob.digest, mark) >= 1, timeout=DEADLINE), registry.requests(mark)
    assert registry.blob_gets(blob.digest, mark) == 1, registry.requests(mark)

    trow.start()
    log = UpstreamLog(registry, trow)
    assert trow.tmp_entries() == [], "leftovers of the crashed download survived the restart"
    assert get_and_hash(trow, blob_path("big/one", blob.digest)) == (200, blob.digest, blob.size)
    assert log.blob_gets(blob.digest) == 1
    assert registry.blob_gets(blob.digest, mark) == 2
    assert cached_blob_path(trow, blob.digest).exists()
    assert wait_until(lambda: trow.tmp_entries() == [], timeout=10), trow.tmp_entries()
    assert_clean_log(trow)


STOP_ATTEMPTS = 8
# A graceful stop that takes longer than this is taken as hung (trow's own stop is immediate).
STOP_DEADLINE = 10.0


def _shutdown_errors(trow: TrowProcess) -> list[str]:
    """The lines of the current log that report an error (the shutdown should log none)."""
    return [line for line in trow.log().splitlines() if "critical" in line or "Traceback" in line or "Unhandled" in line]


def _sigterm(trow: TrowProcess) -> int | None:
    """SIGTERM and wait for the exit status; None if trow is still running after the deadline
    (it is then killed)."""
    assert trow.process is not None
    trow.process.send_signal(signal.SIGTERM)
    try:
        return trow.process.wait(STOP_DEADLINE)
    except subprocess.TimeoutExpired:
        trow.kill()
        return None


def test_graceful_stop_during_proxied_downloads_is_clean(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, upstream: Upstream
) -> None:
    """SIGTERM while a proxied blob is still downloading, or right after a client received a
    whole one (trow is still making it durable): every time, trow exits promptly and in order,
    with no error logged. The moment matters, so the test stops a fresh trow several times,
    alternating the two cases, until one stop goes wrong."""
    registry = upstream.registry
    for attempt in range(STOP_ATTEMPTS):
        trow = start_proxy_trow(trow_factory, tmp_path, [proxy_entry(registry.host)], name=f"stop-{attempt}")
        if attempt % 2 == 0:
            blob = upstream.blob_200m
            client = BodyStream(trow.port or 0, blob_path("big/one", blob.digest))
            try:
                client.read_at_least(16 * MIB)
                status = _sigterm(trow)
            finally:
                client.close()
            case = "mid-download"
        else:
            blob = upstream.blob_64m
            assert get_and_hash(trow, blob_path("big/one", blob.digest)) == (200, blob.digest, blob.size)
            status = _sigterm(trow)
            case = "right after a whole blob was served"
        assert status is not None, f"stop {attempt} ({case}): still running {STOP_DEADLINE:.0f}s after SIGTERM"
        errors = _shutdown_errors(trow)
        assert status in (0, -signal.SIGTERM) and not errors, f"stop {attempt} ({case}): exit {status}, {errors[:3]}"


# -- 9. writes --------------------------------------------------------------------------------


WRITES = [
    ("PUT", "/v2/f/up/w/multi/manifests/v1", True),
    ("POST", "/v2/f/up/w/multi/blobs/uploads/", False),
    ("POST", "/v2/f/up/w/multi/blobs/uploads/?digest=sha256:" + "0" * 64, False),
    ("PATCH", "/v2/f/up/w/multi/blobs/uploads/some-id", False),
    ("GET", "/v2/f/up/w/multi/blobs/uploads/some-id", False),
    ("DELETE", "/v2/f/up/w/multi/blobs/uploads/some-id", False),
    ("PUT", "/v2/f/up/w/multi/blobs/uploads/some-id?digest=sha256:" + "0" * 64, False),
    ("DELETE", "/v2/f/up/w/multi/manifests/v1", False),
    ("DELETE", "/v2/f/up/w/multi/blobs/sha256:" + "0" * 64, False),
    ("PUT", "/v2/w/multi/manifests/v1?ns={host}", True),
    ("POST", "/v2/w/multi/blobs/uploads/?ns={host}", False),
]


@pytest.mark.parametrize("method,path,manifest", WRITES, ids=[f"{m} {p.split('/v2/', 1)[1][:40]}" for m, p, _ in WRITES])
def test_writes_to_proxied_repositories_are_405(
    proxy_trow: TrowProcess, upstream: Upstream, images: Images, method: str, path: str, manifest: bool
) -> None:
    """Writes to a cache repository (f/... or ?ns=), and anything on its upload endpoints, get 405
    UNSUPPORTED in the OCI error JSON, and the upstream is not contacted."""
    registry = upstream.registry
    log = UpstreamLog(registry, proxy_trow)
    headers = [("Content-Type", OCI_MANIFEST)] if manifest else []
    body = images.manifest_bytes("multi") if manifest else b""
    response = proxy_trow.request(method, path.format(host=registry.host), headers=headers, body=body)
    assert_json_error(response, (405,), ("UNSUPPORTED",))
    assert log.requests() == []


# -- 10. what the upstream does not have ------------------------------------------------------


def test_unknown_tag_upstream_is_manifest_unknown(proxy_trow: TrowProcess, upstream: Upstream) -> None:
    """A tag the upstream does not have: 404 MANIFEST_UNKNOWN JSON for GET, a bare 404 for HEAD."""
    repo = upstream.image("multi", "missing/multi")
    response = proxy_trow.request("GET", manifest_path(repo, "no-such-tag"))
    assert_json_error(response, (404,), ("MANIFEST_UNKNOWN",))
    head = proxy_trow.request("HEAD", manifest_path(repo, "no-such-tag"))
    assert head.status == 404 and head.body == b"", head


def test_unknown_repository_upstream_is_404(proxy_trow: TrowProcess, upstream: Upstream) -> None:
    """A repository the upstream does not have: 404 with NAME_UNKNOWN or MANIFEST_UNKNOWN JSON."""
    response = proxy_trow.request("GET", manifest_path("no/such/repo", "latest"))
    assert_json_error(response, (404,), ("NAME_UNKNOWN", "MANIFEST_UNKNOWN"))


def test_unknown_digests_upstream_are_404(proxy_trow: TrowProcess, upstream: Upstream) -> None:
    """A manifest digest and a blob digest the upstream does not have: 404 MANIFEST_UNKNOWN and
    404 BLOB_UNKNOWN JSON (HEAD: bare 404), never a 500."""
    repo = upstream.image("multi", "missing/digests")
    absent = "sha256:" + "ab" * 32
    manifest = proxy_trow.request("GET", manifest_path(repo, absent))
    assert_json_error(manifest, (404,), ("MANIFEST_UNKNOWN",))
    blob = proxy_trow.request("GET", blob_path(repo, absent))
    assert_json_error(blob, (404,), ("BLOB_UNKNOWN",))
    head = proxy_trow.request("HEAD", blob_path(repo, absent))
    assert head.status == 404 and head.body == b"", head


# -- tags that move, clients that pull together -----------------------------------------------


def test_moved_tag_is_fetched_again(
    proxy_trow: TrowProcess, upstream: Upstream, images: Images, skopeo: Skopeo, tmp_path: Path
) -> None:
    """A tag trow has cached moves upstream (the same repo:tag now names another image): the next
    pull by tag through trow gets the new image, every digest intact."""
    registry = upstream.registry
    registry.push_image(skopeo, images, "multi", "moving/app")
    ref = proxy_trow.ref(f"f/{ALIAS}/moving/app:multi")
    skopeo.pull(ref, f"oci:{tmp_path / 'before'}:multi")
    assert_same_image(images.layout, "multi", tmp_path / "before", "multi")

    # Re-tag upstream: moving/app:multi now holds the index.
    skopeo.run(
        "copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
        images.source("multiarch"), registry.ref("moving/app:multi"),
    )
    skopeo.pull(ref, f"oci:{tmp_path / 'after'}:multi", "--all")
    pulled_root = json.loads((tmp_path / "after" / "index.json").read_text())["manifests"][0]["digest"]
    assert pulled_root == images.refs["multiarch"]["digest"], "trow served the tag's old image"


def test_concurrent_skopeo_pulls_of_an_uncached_image(
    proxy_trow: TrowProcess, upstream: Upstream, images: Images, skopeo: Skopeo, tmp_path: Path
) -> None:
    """Four skopeo processes pull the same uncached index (--all) through trow at once: each gets
    every digest intact, and the upstream sees exactly one GET per blob."""
    repo = upstream.image("multiarch", "together/multiarch")
    log = UpstreamLog(upstream.registry, proxy_trow)
    ref = proxy_trow.ref(f"f/{ALIAS}/{repo}:multiarch")
    errors: list[BaseException] = []

    def pull(i: int) -> None:
        try:
            skopeo.pull(ref, f"oci:{tmp_path / f'pulled-{i}'}:multiarch", "--all")
        except BaseException as e:  # pytest.fail raises a BaseException subclass
            errors.append(e)

    threads = [threading.Thread(target=pull, args=(i,), daemon=True) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not errors, errors
    for i in range(4):
        assert_same_image(images.layout, "multiarch", tmp_path / f"pulled-{i}", "multiarch")
    blobs = [d for d, _ in images.tree("multiarch") if d not in _manifest_digests(images, "multiarch")]
    for digest in set(blobs):
        assert log.blob_gets(digest) == 1, digest


def _manifest_digests(images: Images, tag: str) -> set[str]:
    index = images.refs[tag]["digest"]
    return {index, *(m["digest"] for m in json.loads(images.manifest_bytes(tag))["manifests"])}
