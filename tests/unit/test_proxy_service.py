"""The pull-through cache end to end in memory: ProxyRegistry over a real Registry on a temp dir,
a fake upstream registry behind StubTreq, and the registry API in front (RegistryAPI(registry,
proxy) behind StubTreq too).

Reference: section 5, "Tags", "Digests", "Blobs", "Offline" and "Writes".
"""

from __future__ import annotations

from typing import Any, Coroutine, Iterator

import pytest
from twisted.internet.defer import ensureDeferred
from twisted.internet.testing import StringTransport

from tests.unit.harness import Trow, result_of
from tests.unit.proxy_fakes import (
    Cache,
    FakeBlobUpstream,
    FakeResponse,
    failure_of,
    fetch,
    image_manifest,
    make_cache,
    run,
    sha256,
)
from trow.proxy.service import ProxyRegistry
from trow.proxy.tee import Fetcher
from trow.registry.errors import RegistryError
from trow.registry.manifests import DOCKER_MANIFEST, OCI_MANIFEST
from trow.registry.names import Digest
from trow.registry.service import Manifest

NGINX = "f/docker.io/library/nginx"
UPSTREAM_REPO = "library/nginx"


@pytest.fixture
def cache(trow: Trow) -> Iterator[Cache]:
    instance = make_cache(trow)
    yield instance
    instance.upstream.close()


def publish(cache: Cache, tag: str = "latest", note: str = "v1", repo: str = UPSTREAM_REPO) -> tuple[bytes, str]:
    """Put a manifest on the upstream under C{tag}; return its bytes and digest."""
    content = image_manifest(note=note)
    return content, cache.fake.add_manifest(repo, tag, content)


def get(cache: Cache, reference: str, name: str = NGINX, accept: list[str] | None = None) -> Manifest:
    return run(cache.proxy.get_manifest(name, reference, accept or []))


def error_of(coro: Coroutine[Any, Any, Any]) -> RegistryError:
    """The RegistryError a call raises; any other exception (a would-be 500) fails the test."""
    with pytest.raises(RegistryError) as caught:
        run(coro)
    return caught.value


def methods(cache: Cache) -> list[tuple[str, str]]:
    """(method, reference) of each manifest request the upstream received."""
    return [(s.method, s.path.rsplit("/", 1)[1]) for s in cache.fake.registry_requests()]


def stored_tag(cache: Cache, tag: str, name: str = NGINX) -> str | None:
    record = result_of(cache.trow.stores.metadata.resolve_tag(name, tag))
    return None if record is None else record.digest


def break_upstream(cache: Cache, how: str) -> None:
    """Make the upstream fail: refuse connections, or answer every request with a status."""
    if how == "refused":
        cache.http.refuse = True
    else:
        cache.fake.status = int(how)


# -- tags ---------------------------------------------------------------------------------------


def test_first_tag_pull_heads_gets_by_digest_and_stores_byte_exact(cache: Cache) -> None:
    """An uncached tag: one HEAD, one GET by the digest it named, and the bytes are stored and
    served exactly as the upstream sent them, with the tag pointing at them."""
    content, digest = publish(cache)
    manifest = get(cache, "latest")
    assert manifest.content == content
    assert manifest.record.digest == digest
    assert manifest.record.media_type == OCI_MANIFEST
    assert methods(cache) == [("HEAD", "latest"), ("GET", digest)]
    assert result_of(cache.trow.stores.blobs.read_bytes(Digest.parse(digest))) == content
    assert stored_tag(cache, "latest") == digest


def test_tag_revalidation_with_cached_digest_is_a_single_head(cache: Cache) -> None:
    """Pulling a cached tag again costs one HEAD and no GET when the digest has not changed."""
    content, _ = publish(cache)
    get(cache, "latest")
    cache.fake.seen.clear()
    assert get(cache, "latest").content == content
    assert methods(cache) == [("HEAD", "latest")]


def test_tag_moved_upstream_fetches_the_new_manifest_and_moves_the_tag(cache: Cache) -> None:
    """When the upstream tag now names another digest, that manifest is fetched and the tag moves."""
    publish(cache, note="old")
    get(cache, "latest")
    new_content, new_digest = publish(cache, note="new")
    assert get(cache, "latest").content == new_content
    assert stored_tag(cache, "latest") == new_digest


def test_tag_already_cached_under_another_tag_needs_no_get(cache: Cache) -> None:
    """A new tag for a digest the cache repo holds is recorded from the HEAD alone."""
    content, digest = publish(cache, "v1")
    get(cache, "v1")
    cache.fake.tags[(UPSTREAM_REPO, "stable")] = digest
    cache.fake.seen.clear()
    assert get(cache, "stable").content == content
    assert methods(cache) == [("HEAD", "stable")]
    assert stored_tag(cache, "stable") == digest


def test_head_without_digest_gets_by_tag_and_stores_what_hashes(cache: Cache) -> None:
    """An upstream that sends no Docker-Content-Digest: the manifest is fetched by tag and stored
    under the digest of its bytes."""
    cache.fake.omit_digest_on = {"HEAD", "GET"}
    content, _ = publish(cache, note="nodigest")
    manifest = get(cache, "latest")
    assert manifest.content == content
    assert manifest.record.digest == sha256(content)
    assert methods(cache) == [("HEAD", "latest"), ("GET", "latest")]


def test_docker_media_type_is_kept(cache: Cache) -> None:
    """The upstream's media type is stored and served as it was (no conversion)."""
    content = image_manifest(note="docker").replace(OCI_MANIFEST.encode(), DOCKER_MANIFEST.encode())
    cache.fake.add_manifest(UPSTREAM_REPO, "latest", content, DOCKER_MANIFEST)
    manifest = get(cache, "latest")
    assert manifest.record.media_type == DOCKER_MANIFEST
    assert manifest.content == content


def test_upstream_digest_mismatch_is_502_and_nothing_is_stored(cache: Cache) -> None:
    """Bytes that do not hash to the digest the upstream named: 502, and neither the manifest,
    the bytes nor the tag are kept."""
    _, digest = publish(cache)
    wrong = image_manifest(note="tampered")
    cache.fake.serve_instead[digest] = wrong
    error = error_of(cache.proxy.get_manifest(NGINX, "latest", []))
    assert (error.code, error.status) == ("UNAVAILABLE", 502)
    assert result_of(cache.trow.stores.metadata.get_manifest(NGINX, digest)) is None
    assert cache.trow.stores.blobs.size(Digest.parse(digest)) is None
    assert cache.trow.stores.blobs.size(Digest.parse(sha256(wrong))) is None
    assert stored_tag(cache, "latest") is None


def test_digest_header_contradicting_the_body_is_502(cache: Cache) -> None:
    """Fetched by tag (the HEAD named no digest), a body whose Docker-Content-Digest header
    disagrees with its bytes is refused with 502 and not stored."""
    content, _ = publish(cache)
    cache.fake.omit_digest_on = {"HEAD"}
    cache.fake.digest_header["latest"] = sha256(b"not this")
    error = error_of(cache.proxy.get_manifest(NGINX, "latest", []))
    assert (error.code, error.status) == ("UNAVAILABLE", 502)
    assert methods(cache) == [("HEAD", "latest"), ("GET", "latest")]
    assert stored_tag(cache, "latest") is None
    assert cache.trow.stores.blobs.size(Digest.of(content)) is None


@pytest.mark.parametrize("how", ["refused", "500", "502", "503", "429"])
def test_failing_upstream_serves_the_cached_tag(cache: Cache, how: str) -> None:
    """Upstream refused, failing (5xx) or rate-limiting (429): the cached tag is served."""
    content, _ = publish(cache)
    get(cache, "latest")
    break_upstream(cache, how)
    assert get(cache, "latest").content == content


@pytest.mark.parametrize("how, status", [("refused", 503), ("500", 502), ("503", 502), ("429", 503)])
def test_failing_upstream_without_cache_is_unavailable(cache: Cache, how: str, status: int) -> None:
    """Nothing cached and the upstream failing: a RegistryError UNAVAILABLE (503 unreachable or
    rate-limited, 502 upstream error), never another exception."""
    publish(cache)
    break_upstream(cache, how)
    error = error_of(cache.proxy.get_manifest(NGINX, "latest", []))
    assert (error.code, error.status) == ("UNAVAILABLE", status)


def test_dead_upstream_costs_one_attempt(cache: Cache) -> None:
    """After a refused connection, further pulls of cached tags do not try the upstream again."""
    content, _ = publish(cache)
    get(cache, "latest")
    cache.http.refuse = True
    cache.http.attempts.clear()
    for _ in range(3):
        assert get(cache, "latest").content == content
    assert len(cache.http.attempts) == 1


def test_upstream_404_is_manifest_unknown(cache: Cache) -> None:
    """A tag the upstream does not have: 404 MANIFEST_UNKNOWN."""
    error = error_of(cache.proxy.get_manifest(NGINX, "nope", []))
    assert (error.code, error.status) == ("MANIFEST_UNKNOWN", 404)


@pytest.mark.parametrize("status", [401, 403])
def test_upstream_refusing_access_is_name_unknown(cache: Cache, status: int) -> None:
    """401/403 from the upstream (private or missing repository): 404 NAME_UNKNOWN."""
    cache.fake.status = status
    error = error_of(cache.proxy.get_manifest(NGINX, "latest", []))
    assert (error.code, error.status) == ("NAME_UNKNOWN", 404)


@pytest.mark.parametrize("status", [429, 503])
def test_failing_get_after_head_serves_the_cached_tag(cache: Cache, status: int) -> None:
    """Docker Hub answers HEAD but rate-limits GET: the stale cached tag beats an error."""
    old, _ = publish(cache, note="old")
    get(cache, "latest")
    publish(cache, note="new")
    cache.fake.manifest_get_status = status
    assert get(cache, "latest").content == old


def test_manifest_body_cut_midway_is_unavailable(cache: Cache) -> None:
    """A manifest GET whose connection drops mid-body is an UNAVAILABLE error, not a crash."""
    publish(cache)
    cache.fake.drop_manifest_body = True
    error = error_of(cache.proxy.get_manifest(NGINX, "latest", []))
    assert error.code == "UNAVAILABLE"


def test_malformed_upstream_digest_header_is_not_blamed_on_the_client(cache: Cache) -> None:
    """An upstream sending 'sha256:zzz' as its digest is an upstream problem (served by tag, or a
    5xx), never a 4xx DIGEST_INVALID."""
    content, _ = publish(cache)
    cache.fake.digest_header["latest"] = "sha256:zzz"
    try:
        assert get(cache, "latest").content == content
    except RegistryError as e:
        assert (e.code, e.status) == ("UNAVAILABLE", 502), f"{e.code} {e.status}: {e.message}"


# -- digests ------------------------------------------------------------------------------------


def test_cached_digest_is_served_without_contacting_the_upstream(cache: Cache) -> None:
    """A digest reference the cache holds never reaches the upstream, even a dead one."""
    content, digest = publish(cache)
    get(cache, "latest")
    cache.fake.seen.clear()
    cache.http.refuse = True
    cache.http.attempts.clear()
    assert get(cache, digest).content == content
    assert cache.http.attempts == []


def test_uncached_digest_is_fetched_by_digest_without_a_tag(cache: Cache) -> None:
    """An uncached digest: one GET by digest (no HEAD), verified and stored, no tag invented."""
    content, digest = publish(cache, tag="v1")
    assert get(cache, digest).content == content
    assert methods(cache) == [("GET", digest)]
    assert result_of(cache.trow.stores.metadata.get_manifest(NGINX, digest)) is not None
    assert stored_tag(cache, "v1") is None


def test_uncached_digest_with_dead_upstream_is_unavailable(cache: Cache) -> None:
    """An uncached digest and an unreachable upstream: 503 UNAVAILABLE."""
    _, digest = publish(cache)
    cache.http.refuse = True
    error = error_of(cache.proxy.get_manifest(NGINX, digest, []))
    assert (error.code, error.status) == ("UNAVAILABLE", 503)


def test_uncached_digest_unknown_upstream_is_manifest_unknown(cache: Cache) -> None:
    """A digest the upstream does not have: 404 MANIFEST_UNKNOWN."""
    error = error_of(cache.proxy.get_manifest(NGINX, sha256(b"nothing"), []))
    assert (error.code, error.status) == ("MANIFEST_UNKNOWN", 404)


# -- offline ------------------------------------------------------------------------------------


def test_offline_mode_never_contacts_the_upstream(trow: Trow) -> None:
    """Offline, cached tags and digests are served; everything else is unknown; the upstream is
    never asked anything."""
    online = make_cache(trow)
    content, digest = publish(online)
    get(online, "latest")
    layer = b"cached layer"
    online.fake.add_blob(layer)

    offline = make_cache(trow, offline=True)
    publish(offline)
    offline.fake.add_blob(layer)
    assert get(offline, "latest").content == content
    assert get(offline, digest).content == content
    for reference in ("other", sha256(b"unknown")):
        assert error_of(offline.proxy.get_manifest(NGINX, reference, [])).code == "MANIFEST_UNKNOWN"
    assert error_of(offline.proxy.blob_source(NGINX, sha256(layer))).code == "BLOB_UNKNOWN"
    assert offline.http.attempts == []
    assert offline.fake.seen == []


# -- blobs --------------------------------------------------------------------------------------


def stream(source: Any, offset: int = 0, length: int | None = None) -> bytes:
    """Read a BlobSource range through its producer into memory."""
    consumer = StringTransport()
    producer = source.open_range(offset, source.size - offset if length is None else length)
    result_of(producer.start(consumer))
    return bytes(consumer.value())


def test_a_blob_stored_for_another_repository_costs_one_head(cache: Cache) -> None:
    """A blob already in the store (from another repository) is served from it and linked into
    the cache repository once the upstream confirms, with one HEAD, that this repository has it:
    no download."""
    data = b"verified elsewhere"
    digest = Digest.of(data)
    cache.fake.add_blob(data)
    result_of(cache.trow.stores.blobs.put_bytes(data, digest))
    assert not result_of(cache.trow.stores.metadata.blob_linked(NGINX, str(digest)))
    source = run(cache.proxy.blob_source(NGINX, str(digest)))
    assert source.size == len(data)
    assert stream(source) == data
    assert result_of(cache.trow.stores.metadata.blob_linked(NGINX, str(digest)))
    assert [s.method for s in cache.fake.seen if "/blobs/" in s.path] == ["HEAD"]
    # Linked now: served with no upstream contact at all.
    cache.fake.seen.clear()
    assert stream(run(cache.proxy.blob_source(NGINX, str(digest)))) == data
    assert [s for s in cache.fake.seen if "/blobs/" in s.path] == []


def test_a_stored_blob_the_upstream_repository_lacks_is_not_served(cache: Cache) -> None:
    """Bytes pushed to a private repository (or cached from another upstream) are not readable
    through a cache repository whose upstream does not have them: BLOB_UNKNOWN, nothing linked.
    Offline, such a blob cannot be confirmed either."""
    data = b"someone's private layer"
    digest = Digest.of(data)
    result_of(cache.trow.stores.blobs.put_bytes(data, digest))
    error = error_of(cache.proxy.blob_source(NGINX, str(digest)))
    assert (error.code, error.status) == ("BLOB_UNKNOWN", 404)
    assert not result_of(cache.trow.stores.metadata.blob_linked(NGINX, str(digest)))
    cache.proxy.offline = True
    assert error_of(cache.proxy.blob_source(NGINX, str(digest))).code == "BLOB_UNKNOWN"


def test_blob_source_downloads_streams_caches_and_links(cache: Cache) -> None:
    """An uncached blob is downloaded once, streamed, then cached and linked."""
    data = bytes(range(256)) * 10
    digest = cache.fake.add_blob(data)
    source = run(cache.proxy.blob_source(NGINX, digest))
    assert source.size == len(data)
    assert stream(source) == data
    assert stream(source, 100, 50) == data[100:150]
    assert cache.trow.stores.blobs.size(Digest.parse(digest)) == len(data)
    assert result_of(cache.trow.stores.metadata.blob_linked(NGINX, digest))
    run(cache.proxy.blob_source(NGINX, digest))
    assert len([s for s in cache.fake.seen if "/blobs/" in s.path]) == 1


def test_blob_unknown_upstream_is_blob_unknown(cache: Cache) -> None:
    """A blob the upstream does not have: 404 BLOB_UNKNOWN."""
    error = error_of(cache.proxy.blob_source(NGINX, sha256(b"missing")))
    assert (error.code, error.status) == ("BLOB_UNKNOWN", 404)


def test_blob_with_dead_upstream_is_unavailable(cache: Cache) -> None:
    """An uncached blob and an unreachable upstream: 503 UNAVAILABLE."""
    cache.http.refuse = True
    error = error_of(cache.proxy.blob_source(NGINX, sha256(b"anything")))
    assert (error.code, error.status) == ("UNAVAILABLE", 503)


def test_chunked_blob_cut_midway_is_unavailable(cache: Cache) -> None:
    """A blob streamed without Content-Length whose connection drops: an UNAVAILABLE error."""
    upstream = FakeBlobUpstream()
    cache.proxy.fetcher = Fetcher(cache.trow.stores.blobs, cache.trow.stores.metadata, upstream, cache.clock)  # type: ignore[arg-type]
    data = b"chunked layer bytes"
    d = ensureDeferred(cache.proxy.blob_source(NGINX, sha256(data)))
    response = upstream.requests[0].respond(FakeResponse(200, None))
    response.write(data[:5])
    response.drop()
    error = failure_of(d).value
    assert isinstance(error, RegistryError), f"blob_source raised {error!r}"
    assert error.code == "UNAVAILABLE"


# -- addressing and writes ----------------------------------------------------------------------


def test_cache_name_forms(cache: Cache) -> None:
    """f/<alias>/<repo>, f/<host>/<repo> and <repo>?ns=<host> all name one cache repository."""
    proxy: ProxyRegistry = cache.proxy
    assert proxy.cache_name("f/docker/nginx", None) == NGINX
    assert proxy.cache_name("f/index.docker.io/library/nginx", None) == NGINX
    assert proxy.cache_name("nginx", "docker.io") == NGINX
    assert proxy.cache_name("library/nginx", "registry-1.docker.io") == NGINX
    assert proxy.cache_name("org/tool", "ghcr.io") == "f/ghcr.io/org/tool"
    assert proxy.cache_name("library/nginx", None) is None


def test_canonical_repository_for_auth_rules(cache: Cache) -> None:
    """Auth rules see one name per cache repository: the alias and host forms map to it; local
    names, and f/ names of hosts trow does not proxy, stay as they are."""
    proxy: ProxyRegistry = cache.proxy
    assert proxy.canonical_repository("f/docker/nginx") == NGINX
    assert proxy.canonical_repository("f/index.docker.io/library/nginx") == NGINX
    assert proxy.canonical_repository("team/app") == "team/app"
    assert proxy.canonical_repository("f/unknown.example/x") == "f/unknown.example/x"


def test_cache_name_with_ns_of_trow_itself_stays_local(trow: Trow) -> None:
    """?ns=<trow's own hostname> (containerd mirroring trow's own images) is a local repository."""
    cache = make_cache(trow, own_hosts=("trow.example.com",))
    assert cache.proxy.cache_name("team/app", "trow.example.com") is None
    assert cache.proxy.cache_name("team/app", "TROW.example.com") is None


def test_cache_name_with_unlisted_ns_is_name_unknown(cache: Cache) -> None:
    """?ns= of a host trow may not proxy: NAME_UNKNOWN, not a local repository."""
    error = error_of_sync(lambda: cache.proxy.cache_name("team/app", "evil.example"))
    assert (error.code, error.status) == ("NAME_UNKNOWN", 404)


def test_cache_name_with_ns_checks_the_repository_name(cache: Cache) -> None:
    """The repository part of an ns request is checked like any name."""
    assert error_of_sync(lambda: cache.proxy.cache_name("Bad//Name", "docker.io")).code == "NAME_INVALID"


def error_of_sync(call: Any) -> RegistryError:
    with pytest.raises(RegistryError) as caught:
        call()
    return caught.value


def test_read_only_error_is_405_unsupported(cache: Cache) -> None:
    """Writes to a cache repository are refused with 405 UNSUPPORTED naming the repository."""
    error = cache.proxy.read_only(NGINX)
    assert (error.code, error.status) == ("UNSUPPORTED", 405)
    assert NGINX in error.message


def test_cached_tags_are_listed(cache: Cache) -> None:
    """The tag list of a cache repository is what the cache holds."""
    publish(cache, "v1", note="1")
    publish(cache, "v2", note="2")
    get(cache, "v2")
    get(cache, "v1")
    assert run(cache.proxy.list_tags(NGINX, None, None)).items == ["v1", "v2"]


# -- through the API ----------------------------------------------------------------------------


def test_api_manifest_by_alias(cache: Cache) -> None:
    """GET /v2/f/<alias>/<repo>/manifests/<tag> serves the upstream manifest byte-exact."""
    content, digest = publish(cache)
    r = fetch(cache.api, "GET", "/v2/f/docker/nginx/manifests/latest")
    assert r.code == 200
    assert r.body == content
    assert r.header("Docker-Content-Digest") == digest
    assert r.header("Content-Type") == OCI_MANIFEST
    assert r.content_length == len(content)


def test_api_manifest_head_by_host(cache: Cache) -> None:
    """HEAD /v2/f/<host>/<repo>/manifests/<tag> answers the digest and length with no body."""
    content, digest = publish(cache)
    r = cache.api.head("/v2/f/docker.io/library/nginx/manifests/latest")
    assert r.code == 200
    assert r.body == b""
    assert r.header("Docker-Content-Digest") == digest
    assert r.header("Content-Length") == str(len(content))


def test_api_manifest_with_ns(cache: Cache) -> None:
    """GET /v2/<repo>/manifests/<tag>?ns=<host> (containerd) is served through the cache, and
    short Docker Hub names land in the same cache repository."""
    content, digest = publish(cache)
    r = cache.api.get("/v2/library/nginx/manifests/latest?ns=docker.io")
    assert (r.code, r.body) == (200, content)
    cache.fake.seen.clear()
    r = cache.api.get(f"/v2/nginx/manifests/{digest}?ns=registry-1.docker.io")
    assert (r.code, r.body) == (200, content)
    assert cache.fake.seen == [], "the short name did not hit the same cache repository"
    assert cache.api.get("/v2/library/nginx/tags/list").code == 404, "a local repository was created"


def test_api_ns_of_trow_itself_is_local(trow: Trow) -> None:
    """?ns=<trow's hostname> reaches the local registry and never the upstream."""
    cache = make_cache(trow, own_hosts=("trow.example.com",))
    publish(cache)
    r = cache.api.get("/v2/library/nginx/manifests/latest?ns=trow.example.com")
    assert (r.code, r.error_code()) == (404, "MANIFEST_UNKNOWN")
    assert cache.fake.seen == []


def test_api_blob_through_the_tee(cache: Cache) -> None:
    """GET of an uncached blob streams it from the upstream, then serves it from the cache."""
    data = bytes(range(256)) * 40
    digest = cache.fake.add_blob(data)
    r = fetch(cache.api, "GET", f"/v2/f/docker/nginx/blobs/{digest}")
    assert r.code == 200
    assert r.body == data
    assert r.content_length == len(data)
    assert r.header("Docker-Content-Digest") == digest
    cache.fake.seen.clear()
    again = cache.api.get(f"/v2/f/docker/nginx/blobs/{digest}")
    assert (again.code, again.body) == (200, data)
    assert cache.fake.seen == []


def test_api_concurrent_blob_gets_share_one_upstream_download(cache: Cache) -> None:
    """Clients asking for one blob at once, from two cache repositories and with a Range, are
    all served from a single upstream GET; both repositories hold the blob afterwards."""
    data = bytes(range(256)) * 64
    digest = cache.fake.add_blob(data)
    cache.fake.hold_blobs = True
    stub = cache.api.stub
    requests = [
        stub.request("GET", f"http://trow.test/v2/f/docker/nginx/blobs/{digest}"),  # type: ignore[attr-defined]
        stub.request("GET", f"http://trow.test/v2/library/alpine/blobs/{digest}?ns=docker.io"),  # type: ignore[attr-defined]
        stub.request(  # type: ignore[attr-defined]
            "GET", f"http://trow.test/v2/f/docker/nginx/blobs/{digest}", headers={"Range": "bytes=1000-1999"}
        ),
    ]
    responses: dict[int, Any] = {}
    for i, d in enumerate(requests):
        d.addBoth(lambda response, i=i: responses.__setitem__(i, response))
    stub.flush()
    assert responses == {}, "answered before the upstream sent anything"
    # One GET; the second repository joined it after one HEAD confirmed the upstream has it there.
    assert sorted(s.method for s in cache.fake.seen if "/blobs/" in s.path) == ["GET", "HEAD"]
    cache.fake.release_blobs()
    cache.http.flush()
    stub.flush()
    assert sorted(responses) == [0, 1, 2]
    bodies: dict[int, Any] = {}
    for i, response in responses.items():
        response.content().addBoth(lambda body, i=i: bodies.__setitem__(i, body))
    stub.flush()
    assert [bodies.get(i) for i in range(3)] == [data, data, data[1000:2000]]
    assert [responses[i].code for i in range(3)] == [200, 200, 206]
    assert len([s for s in cache.fake.seen if "/blobs/" in s.path and s.method == "GET"]) == 1
    for repo in (NGINX, "f/docker.io/library/alpine"):
        assert result_of(cache.trow.stores.metadata.blob_linked(repo, digest))


def test_api_chunked_upstream_blob_is_served_whole(cache: Cache) -> None:
    """An upstream that streams a blob without Content-Length: the blob is still verified,
    cached and served with its exact length."""
    data = b"chunked" * 500
    digest = cache.fake.add_blob(data)
    cache.fake.send_length = False
    r = fetch(cache.api, "GET", f"/v2/f/docker/nginx/blobs/{digest}")
    assert (r.code, r.body, r.content_length) == (200, data, len(data))
    assert cache.trow.stores.blobs.size(Digest.parse(digest)) == len(data)


def test_api_blob_range_through_the_tee(cache: Cache) -> None:
    """A first request with Range is answered 206 from the download."""
    data = bytes(range(256)) * 4
    digest = cache.fake.add_blob(data)
    r = cache.api.get(f"/v2/f/docker.io/library/nginx/blobs/{digest}", headers={"Range": "bytes=100-199"})
    assert r.code == 206
    assert r.body == data[100:200]
    assert r.header("Content-Range") == f"bytes 100-199/{len(data)}"


def test_api_blob_head_starts_the_fetch(cache: Cache) -> None:
    """HEAD of an uncached blob answers its size and digest, with no body."""
    data = b"head me" * 100
    digest = cache.fake.add_blob(data)
    r = cache.api.head(f"/v2/f/docker/nginx/blobs/{digest}")
    assert r.code == 200
    assert r.body == b""
    assert r.header("Content-Length") == str(len(data))
    assert r.header("Docker-Content-Digest") == digest


def test_api_bad_blob_never_reaches_a_client_whole(cache: Cache) -> None:
    """Upstream bytes that fail verification: the client's body is cut short and nothing is
    cached."""
    data = b"the real layer" * 50
    digest = cache.fake.add_blob(data)
    cache.fake.serve_instead[digest] = b"X" * len(data)
    url = f"http://trow.test/v2/f/docker/nginx/blobs/{digest}"
    d = cache.api.stub.request("GET", url)  # type: ignore[attr-defined]
    cache.api.stub.flush()
    received: list[Any] = []
    response = result_of(d)
    response.content().addBoth(received.append)
    cache.api.stub.flush()
    assert received, "the response never ended"
    body = received[0]
    assert not (isinstance(body, bytes) and len(body) == len(data)), "a complete wrong body was served"
    assert cache.trow.stores.blobs.size(Digest.parse(digest)) is None


@pytest.mark.parametrize(
    "method, path",
    [
        ("PUT", "/v2/f/docker/nginx/manifests/latest"),
        ("DELETE", "/v2/f/docker/nginx/manifests/latest"),
        ("POST", "/v2/f/docker/nginx/blobs/uploads/"),
        ("PATCH", "/v2/f/docker/nginx/blobs/uploads/some-id"),
        ("PUT", "/v2/f/docker/nginx/blobs/uploads/some-id?digest=" + sha256(b"x")),
        ("DELETE", "/v2/f/docker/nginx/blobs/" + sha256(b"x")),
        ("PUT", "/v2/library/nginx/manifests/latest?ns=docker.io"),
    ],
)
def test_api_writes_to_cache_repositories_are_405(cache: Cache, method: str, path: str) -> None:
    """Every write to a cache repository (f/... or ?ns=) is 405 UNSUPPORTED JSON; the upstream is
    not contacted."""
    r = cache.api.request(method, path, body=b"{}")
    assert r.code == 405
    assert r.header("Content-Type") == "application/json"
    assert r.error_code() == "UNSUPPORTED"
    assert cache.fake.seen == []


def test_api_upload_status_on_cache_repository_is_an_oci_error(cache: Cache) -> None:
    """Asking for an upload session under f/ is an OCI error (there are none), never a 500."""
    r = cache.api.get("/v2/f/docker/nginx/blobs/uploads/some-id")
    assert r.code in (404, 405)
    assert r.error_code() in ("BLOB_UPLOAD_UNKNOWN", "UNSUPPORTED")


def test_api_unknown_upstream_is_404_name_unknown(cache: Cache) -> None:
    """A host trow may not proxy: 404 NAME_UNKNOWN JSON saying how to allow it."""
    r = cache.api.get("/v2/f/quay.io/coreos/etcd/manifests/latest")
    assert r.code == 404
    assert r.error_code() == "NAME_UNKNOWN"
    assert "registry_proxies" in r.json()["errors"][0]["message"]


def test_api_dead_upstream_with_nothing_cached_is_503_json(cache: Cache) -> None:
    """Unreachable upstream, nothing cached: 503 UNAVAILABLE as OCI JSON, not a 500."""
    cache.http.refuse = True
    r = cache.api.get("/v2/f/docker/nginx/manifests/latest")
    assert r.code == 503
    assert r.error_code() == "UNAVAILABLE"
    r = cache.api.get(f"/v2/f/docker/nginx/blobs/{sha256(b'x')}")
    assert (r.code, r.error_code()) == (503, "UNAVAILABLE")


# -- metrics and recency ------------------------------------------------------------------------


def cache_count(cache: Cache, kind: str, result: str) -> float:
    return cache.proxy.metrics.value("trow_cache_requests_total", kind=kind, result=result)


def test_cache_lookups_are_counted_as_hits_and_misses(cache: Cache) -> None:
    """Each client lookup counts once: an uncached tag is a miss, the same tag again a hit (a HEAD
    that found the digest cached), its digest a manifest hit; a blob misses, then hits."""
    _, digest = publish(cache)
    get(cache, "latest")
    assert (cache_count(cache, "tag", "miss"), cache_count(cache, "tag", "hit")) == (1, 0)
    get(cache, "latest")
    get(cache, digest)
    assert (cache_count(cache, "tag", "hit"), cache_count(cache, "manifest", "hit")) == (1, 1)
    blob = cache.fake.add_blob(b"layer bytes" * 100)
    stream(run(cache.proxy.blob_source(NGINX, blob)))
    stream(run(cache.proxy.blob_source(NGINX, blob)))
    assert (cache_count(cache, "blob", "miss"), cache_count(cache, "blob", "hit")) == (1, 1)


def test_upstream_requests_bytes_and_downloads_are_counted(cache: Cache) -> None:
    """Upstream exchanges by status, body bytes by upstream, and downloads by outcome."""
    metrics = cache.proxy.metrics
    data = bytes(range(256)) * 40
    blob = cache.fake.add_blob(data)
    source = run(cache.proxy.blob_source(NGINX, blob))
    assert stream(source) == data
    assert metrics.value("trow_downloads_in_flight") == 0
    assert metrics.value("trow_download_waiters") == 0
    assert metrics.value("trow_downloads_total", outcome="complete") == 1
    assert metrics.value("trow_upstream_requests_total", upstream="docker.io", code="200") >= 1
    assert metrics.value("trow_upstream_bytes_total", upstream="docker.io") == len(data)
    error_of(cache.proxy.blob_source(NGINX, sha256(b"missing")))
    assert metrics.value("trow_upstream_requests_total", upstream="docker.io", code="404") == 1
    assert metrics.value("trow_upstream_errors_total", upstream="docker.io", reason="status") == 1


def test_a_dead_upstream_is_counted_as_a_connect_error(cache: Cache) -> None:
    """No response at all: code "none" and a connect error, once (the breaker holds the rest)."""
    cache.http.refuse = True
    error_of(cache.proxy.blob_source(NGINX, sha256(b"anything")))
    error_of(cache.proxy.blob_source(NGINX, sha256(b"anything else")))
    metrics = cache.proxy.metrics
    assert metrics.value("trow_upstream_requests_total", upstream="docker.io", code="none") == 1
    assert metrics.value("trow_upstream_errors_total", upstream="docker.io", reason="connect") == 1


def test_a_bad_download_is_counted_as_failed_with_its_reason(cache: Cache) -> None:
    """Content that does not hash to its digest: a digest error and a failed download."""
    data = b"the real bytes" * 50
    blob = cache.fake.add_blob(data)
    cache.fake.blobs[blob] = b"something else" * 50  # same length, wrong content
    # In memory the whole download has ended before the client could start reading.
    assert error_of(cache.proxy.blob_source(NGINX, blob)).status == 502
    metrics = cache.proxy.metrics
    assert metrics.value("trow_upstream_errors_total", upstream="docker.io", reason="digest") == 1
    assert metrics.value("trow_downloads_total", outcome="failed") == 1
    assert metrics.value("trow_download_waiters") == 0


def test_reads_of_cached_content_refresh_its_recency(cache: Cache) -> None:
    """Every manifest and blob served from a cache repository is noted for LRU eviction."""
    _, digest = publish(cache)
    get(cache, "latest")
    blob = cache.fake.add_blob(b"layer" * 10)
    stream(run(cache.proxy.blob_source(NGINX, blob)))
    assert cache.proxy.access is not None
    assert cache.proxy.access.pending == 2
    result_of(cache.proxy.access.flush())
    assert cache.proxy.access.pending == 0


def test_a_download_for_another_repository_is_joined_only_once_confirmed(cache: Cache) -> None:
    """A blob downloading for one repository (a private one, fetched with its credentials) is
    not streamed to a client of another cache repository unless that repository's upstream has
    it too: one HEAD decides, and a repository that lacks it gets BLOB_UNKNOWN."""
    data = b"private layer" * 100
    digest = cache.fake.add_blob(data)
    cache.fake.blob_repos[digest] = {"team/private"}
    cache.fake.hold_blobs = True
    private = "f/docker.io/team/private"

    def lookup(name: str) -> "Any":
        d = ensureDeferred(cache.proxy.blob_source(name, digest))
        cache.http.flush()
        return d

    private_source = lookup(private)  # waits for the upstream's answer, held back
    refused = lookup(NGINX)
    assert refused.called, "a refusal must not wait for the other repository's download"
    error = failure_of(refused).value
    assert isinstance(error, RegistryError) and (error.code, error.status) == ("BLOB_UNKNOWN", 404)
    # A repository that does have it joins the same download: no second GET.
    cache.fake.blob_repos[digest].add("team/public")
    public_source = lookup("f/docker.io/team/public")
    cache.fake.release_blobs()
    cache.http.flush()
    assert stream(result_of(public_source)) == data
    assert stream(result_of(private_source)) == data
    gets = [s for s in cache.fake.seen if s.method == "GET" and "/blobs/" in s.path]
    assert len(gets) == 1
    assert not result_of(cache.trow.stores.metadata.blob_linked(NGINX, digest))


def test_a_digest_stored_by_a_concurrent_pull_meanwhile_is_served(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two clients pull one uncached digest at once: the second looked before the first stored
    it and finds it stored when it checks again. It is served that manifest (not a 404), with no
    upstream fetch of its own."""
    content, digest = publish(cache)
    get(cache, digest)  # the first pull has stored it
    cache.fake.seen.clear()
    real = cache.proxy.local.get_manifest
    calls = []

    async def looked_too_early(name: str, reference: str, accept: list[str]) -> Manifest:
        calls.append(reference)
        if len(calls) == 1:
            raise RegistryError("MANIFEST_UNKNOWN", f"manifest {reference} is not in repository {name}")
        return await real(name, reference, accept)

    monkeypatch.setattr(cache.proxy.local, "get_manifest", looked_too_early)
    assert get(cache, digest).content == content
    assert methods(cache) == []


def test_api_a_download_that_fails_before_its_first_byte_is_a_502(cache: Cache) -> None:
    """A client whose download failed verification before any byte of the answer left (a small
    blob: the reader holds back the last byte until the digest checks out) gets an OCI error,
    not a connection cut with no answer."""
    data = b"the real layer" * 50
    digest = cache.fake.add_blob(data)
    cache.fake.serve_instead[digest] = b"X" * len(data)
    r = cache.api.get(f"/v2/f/docker/nginx/blobs/{digest}")
    assert r.code == 502 and r.error_code() == "UNAVAILABLE", (r.code, r.body)
    assert digest in r.json()["errors"][0]["message"] and r.header("Docker-Content-Digest") is None
    assert cache.trow.stores.blobs.size(Digest.parse(digest)) is None
