"""Downloads shared by replicas (trow.proxy.peers, the follower side of trow.proxy.tee, and the
peer endpoint GET /_trow/peer/blobs/<digest>).

- The signature: an HMAC of the digest under the replicas' key.
- L{DownloadCoordinator}: leases through a fake lease store whose Deferreds the test fires,
  renewals on a L{Clock}, and the HTTP request to a leader over a L{MemoryReactorClock}
  connection the test reads and answers byte by byte.
- L{StoredResponse}: the rest of a stored blob, delivered like a 206 body, paused and resumed.
- L{Download} with a coordinator: a fake one (claim, keep, release, fetch) whose leases the test
  sets and whose peer responses are hand-driven L{FakeResponse}s; the upstream is
  L{FakeBlobUpstream} (plus has_blob); the disk a L{GatedWorker}; time a L{Clock}.
- The peer endpoint through the real API in memory (StubTreq), over a ProxyRegistry whose
  download the test drives.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import attrs
import pytest
import treq
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from tests.unit.harness import Client, Trow, result_of
from tests.unit.proxy_fakes import (
    Cache,
    FakeBlobUpstream,
    FakeResponse,
    GatedWorker,
    failure_of,
    full_response,
    make_cache,
    pending,
    sha256,
)
from tests.unit.test_proxy_tee import DATA, DIGEST, proxied
from trow.api.registry import RegistryAPI
from trow.metrics import Metrics
from trow.proxy.peers import (
    PEER_PATH,
    SIGNATURE_HEADER,
    DownloadCoordinator,
    Lease,
    PeerUnavailable,
    StoredResponse,
    peer_signature,
    peer_signature_ok,
)
from trow.proxy.tee import FOLLOW_BUDGET, Download, DownloadFailed, Fetcher, TeeReader
from trow.proxy.upstream import UpstreamStatus
from trow.storage.blobs import BlobStore
from trow.storage.metadata import MetadataUnavailable
from trow.workers import InlineWorker

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
ME = "replica-me"
LEADER_URL = "http://10.0.0.2:8000"
NGINX = proxied("f/docker.io/nginx")
GHCR = proxied("f/ghcr.io/org/tool")
SIZE = len(DATA)


# -- the signature --------------------------------------------------------------------------------


def test_signature_is_an_hmac_of_the_digest() -> None:
    """Deterministic per key and digest, different for another key or another digest."""
    digest = str(DIGEST)
    assert peer_signature(KEY, digest) == peer_signature(KEY, digest)
    assert peer_signature(KEY, digest) != peer_signature(OTHER_KEY, digest)
    assert peer_signature(KEY, digest) != peer_signature(KEY, sha256(b"other"))
    assert len(peer_signature(KEY, digest)) == 64


def test_signature_check() -> None:
    """Only the exact signature of this digest under this key passes."""
    digest = str(DIGEST)
    good = peer_signature(KEY, digest)
    assert peer_signature_ok(KEY, digest, good)
    assert not peer_signature_ok(KEY, digest, None)
    assert not peer_signature_ok(KEY, digest, "")
    assert not peer_signature_ok(KEY, digest, good[:-1])
    assert not peer_signature_ok(KEY, digest, good.upper())
    assert not peer_signature_ok(OTHER_KEY, digest, good)
    assert not peer_signature_ok(KEY, sha256(b"other"), good)


# -- DownloadCoordinator: leases ------------------------------------------------------------------


class FakeLeases:
    """The lease rows: each call is recorded with its Deferred, answered at once from C{holder}
    (claim) or C{held} (renew), or failed while C{down}."""

    def __init__(self) -> None:
        self.holder: tuple[str, str, str] | None = None
        self.held = True
        self.down = False
        self.calls: list[tuple[Any, ...]] = []
        self.release_result: Deferred[None] | None = None

    def _answer(self, value: Any) -> "Deferred[Any]":
        if self.down:
            return fail(MetadataUnavailable("the database is unavailable"))
        return succeed(value)

    def lease_claim(self, digest: str, replica: str, peer_url: str, repo: str, ttl: float) -> "Deferred[tuple[str, str, str]]":
        self.calls.append(("claim", digest, replica, peer_url, repo, ttl))
        return self._answer(self.holder or (replica, peer_url, repo))

    def lease_renew(self, digest: str, replica: str, ttl: float) -> "Deferred[bool]":
        self.calls.append(("renew", digest, replica, ttl))
        return self._answer(self.held)

    def lease_release(self, digest: str, replica: str) -> "Deferred[None]":
        self.calls.append(("release", digest, replica))
        if self.release_result is not None:
            return self.release_result
        return self._answer(None)


@pytest.fixture
def leases() -> FakeLeases:
    return FakeLeases()


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


@pytest.fixture
def coordinator(leases: FakeLeases, reactor: MemoryReactorClock) -> Iterator[DownloadCoordinator]:
    own_url = ["http://10.0.0.1:8000"]
    instance = DownloadCoordinator(leases, ME, lambda: own_url[0], KEY, reactor, Metrics(), ttl=10.0, renew=3.0)
    instance.own_url = own_url  # type: ignore[attr-defined]
    yield instance
    instance.close()


def test_claim_when_nobody_leads_is_ours(coordinator: DownloadCoordinator, leases: FakeLeases) -> None:
    """A claim sends this replica's id, its URL (as of now), the repository and the TTL."""
    coordinator.own_url[0] = "http://10.0.0.1:8123"  # type: ignore[attr-defined]
    lease = result_of(ensureDeferred(coordinator.claim(str(DIGEST), NGINX.cache_repo)))
    assert lease == Lease(ME, "http://10.0.0.1:8123", NGINX.cache_repo, True)
    assert leases.calls == [("claim", str(DIGEST), ME, "http://10.0.0.1:8123", NGINX.cache_repo, 10.0)]


def test_claim_held_by_another_replica_is_not_ours(coordinator: DownloadCoordinator, leases: FakeLeases) -> None:
    leases.holder = ("replica-2", LEADER_URL, GHCR.cache_repo)
    lease = result_of(ensureDeferred(coordinator.claim(str(DIGEST), NGINX.cache_repo)))
    assert lease == Lease("replica-2", LEADER_URL, GHCR.cache_repo, False)


def test_claim_fails_when_the_database_does(coordinator: DownloadCoordinator, leases: FakeLeases) -> None:
    leases.down = True
    with pytest.raises(MetadataUnavailable):
        result_of(ensureDeferred(coordinator.claim(str(DIGEST), NGINX.cache_repo)))


def renewals(leases: FakeLeases) -> list[tuple[Any, ...]]:
    return [c for c in leases.calls if c[0] == "renew"]


def test_keep_renews_every_period_until_stopped(
    coordinator: DownloadCoordinator, leases: FakeLeases, reactor: MemoryReactorClock
) -> None:
    """The leader renews its lease every C{renew} seconds (well inside the TTL), not at once,
    and stops when told."""
    stop = coordinator.keep(str(DIGEST))
    assert renewals(leases) == []
    reactor.advance(3.0)
    assert renewals(leases) == [("renew", str(DIGEST), ME, 10.0)]
    reactor.advance(3.0)
    reactor.advance(3.0)
    assert len(renewals(leases)) == 3
    stop()
    reactor.advance(30.0)
    assert len(renewals(leases)) == 3
    stop()  # twice is harmless


def test_keep_goes_on_through_failed_or_lost_renewals(
    coordinator: DownloadCoordinator, leases: FakeLeases, reactor: MemoryReactorClock
) -> None:
    """A renewal that fails (database blip) or finds the lease lost is logged, and the next
    one still happens: the download runs to its end either way."""
    stop = coordinator.keep(str(DIGEST))
    leases.down = True
    reactor.advance(3.0)
    leases.down = False
    leases.held = False
    reactor.advance(3.0)
    leases.held = True
    reactor.advance(3.0)
    assert len(renewals(leases)) == 3
    stop()


def test_release_gives_the_lease_up_and_swallows_failures(coordinator: DownloadCoordinator, leases: FakeLeases) -> None:
    """release() asks once; a failure is only logged (the lease expires anyway), never left
    as an unhandled error."""
    held: Deferred[None] = Deferred()
    leases.release_result = held
    coordinator.release(str(DIGEST))
    assert leases.calls == [("release", str(DIGEST), ME)]
    held.errback(MetadataUnavailable("the database is unavailable"))
    outcome: list[Any] = []
    held.addBoth(outcome.append)
    assert outcome == [None]


# -- DownloadCoordinator.fetch: the request to the leader -----------------------------------------


@attrs.define
class Connection:
    """The client side of one connection the coordinator opened on the memory reactor."""

    host: str
    port: int
    timeout: float
    factory: Any
    transport: StringTransport | None = None
    protocol: Any = None

    def accept(self) -> None:
        """The leader accepts: the HTTP client writes its request."""
        self.protocol = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def request(self) -> tuple[str, dict[str, str]]:
        """The request line and headers (lower-cased names) sent so far."""
        assert self.transport is not None
        head = self.transport.value().decode("latin-1").split("\r\n\r\n", 1)[0]
        lines = head.split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        return lines[0], headers

    def answer(self, data: bytes) -> None:
        self.protocol.dataReceived(data)


def connection(reactor: MemoryReactorClock, index: int = -1) -> Connection:
    host, port, factory, timeout, _ = reactor.tcpClients[index]
    return Connection(host, port, timeout, factory)


def test_fetch_sends_a_signed_range_request_and_returns_the_206(
    coordinator: DownloadCoordinator, reactor: MemoryReactorClock
) -> None:
    """The follower asks the leader's peer path for the rest of the blob, from its offset, with
    the signature; the 206's body is left unread for the download to stream."""
    digest = str(DIGEST)
    d = ensureDeferred(coordinator.fetch(LEADER_URL, digest, 40))
    conn = connection(reactor)
    # (The memory reactor resolves every name to 127.0.0.1: the Host header says where.)
    assert (conn.port, conn.timeout) == (8000, 3)
    conn.accept()
    line, headers = conn.request()
    assert headers["host"] == "10.0.0.2:8000"
    assert line == f"GET {PEER_PATH}{digest} HTTP/1.1"
    assert headers["range"] == "bytes=40-"
    assert headers[SIGNATURE_HEADER.lower()] == peer_signature(KEY, digest)
    assert pending(d)
    conn.answer(
        f"HTTP/1.1 206 Partial Content\r\nContent-Length: {SIZE - 40}\r\n"
        f"Content-Range: bytes 40-{SIZE - 1}/{SIZE}\r\n\r\n".encode()
    )
    response = result_of(d)
    assert response.code == 206
    body = treq.content(response)
    assert pending(body), "the body was read before the download asked for it"
    conn.answer(DATA[40:])
    assert result_of(body) == DATA[40:]
    assert coordinator.metrics.value("trow_peer_streams_total", role="read") == 1


@pytest.mark.parametrize("status", [403, 404, 500])
def test_fetch_refused_by_the_leader_is_peer_unavailable(
    coordinator: DownloadCoordinator, reactor: MemoryReactorClock, status: int
) -> None:
    """Anything but a 206 (no such download there any more, a bad key, a crash) is
    PeerUnavailable naming the status, after the error body was read."""
    d = ensureDeferred(coordinator.fetch(LEADER_URL, str(DIGEST), 0))
    conn = connection(reactor)
    conn.accept()
    conn.answer(f"HTTP/1.1 {status} Nope\r\nContent-Length: 2\r\n\r\n".encode())
    assert pending(d), "gave up before reading the error body (the connection would stay stuck)"
    conn.answer(b"{}")
    error = failure_of(d).value
    assert isinstance(error, PeerUnavailable) and str(status) in str(error)
    assert coordinator.metrics.value("trow_peer_streams_total", role="read") == 0


def test_fetch_from_a_dead_leader_is_peer_unavailable(coordinator: DownloadCoordinator, reactor: MemoryReactorClock) -> None:
    """A refused connection (the leader's process is gone) is PeerUnavailable, not a crash."""
    d = ensureDeferred(coordinator.fetch(LEADER_URL, str(DIGEST), 0))
    conn = connection(reactor)
    conn.factory.clientConnectionFailed(None, Failure(ConnectionRefusedError("10.0.0.2")))
    reactor.advance(1)  # the endpoint reports the last failed attempt on its own timer
    error = failure_of(d).value
    assert isinstance(error, PeerUnavailable) and LEADER_URL in str(error)


def test_fetch_from_a_silent_leader_times_out(coordinator: DownloadCoordinator, reactor: MemoryReactorClock) -> None:
    """A leader that accepts but never answers: PeerUnavailable after the request timeout."""
    d = ensureDeferred(coordinator.fetch(LEADER_URL, str(DIGEST), 0))
    connection(reactor).accept()
    reactor.advance(9)
    assert pending(d)
    reactor.advance(2)
    assert isinstance(failure_of(d).value, PeerUnavailable)


# -- StoredResponse -------------------------------------------------------------------------------


class BodyProtocol:
    """Receives a response body; pauses its transport after each chunk while C{pause_each}."""

    def __init__(self, pause_each: bool = False) -> None:
        self.chunks: list[bytes] = []
        self.reason: Failure | None = None
        self.transport: Any = None
        self.pause_each = pause_each

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        if self.pause_each:
            self.transport.pauseProducing()

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


@pytest.fixture
def stored_file(tmp_path: Any) -> tuple[str, bytes]:
    """A file of 2.5 MiB (more than two reads of the producer)."""
    data = os.urandom(5 << 19)
    path = tmp_path / "blob"
    path.write_bytes(data)
    return str(path), data


def test_stored_response_is_the_rest_of_the_blob_as_a_206(stored_file: tuple[str, bytes]) -> None:
    """From the offset to the end, with the Content-Range and length a leader's 206 would
    carry, then a normal end."""
    path, data = stored_file
    offset = 1000
    response = StoredResponse(path, offset, len(data), InlineWorker())
    assert response.code == 206
    assert response.length == len(data) - offset
    assert response.headers.getRawHeaders("content-range") == [f"bytes {offset}-{len(data) - 1}/{len(data)}"]
    protocol = BodyProtocol()
    response.deliverBody(protocol)
    assert protocol.body == data[offset:]
    assert protocol.reason is not None and protocol.reason.check(ResponseDone)


def test_stored_response_pauses_and_resumes(stored_file: tuple[str, bytes]) -> None:
    """A paused reader gets no more data and no more disk reads are queued until it resumes."""
    path, data = stored_file
    worker = GatedWorker()
    worker.holding = True
    response = StoredResponse(path, 0, len(data), worker)
    protocol = BodyProtocol(pause_each=True)
    response.deliverBody(protocol)
    assert len(worker.queue) == 1
    worker.step()  # the open, on the worker too
    assert len(worker.queue) == 1
    worker.step()
    assert len(protocol.chunks) == 1
    assert worker.queue == [], "read on while paused"
    response.resumeProducing()
    assert len(worker.queue) == 1
    worker.step()
    assert len(protocol.chunks) == 2 and worker.queue == []
    protocol.pause_each = False
    response.resumeProducing()
    worker.release()
    assert protocol.body == data
    assert protocol.reason is not None and protocol.reason.check(ResponseDone)


def test_stored_response_stops_when_told(stored_file: tuple[str, bytes]) -> None:
    """stopProducing (the download gave up, or timed out) ends the body early; nothing more
    is read."""
    path, data = stored_file
    worker = GatedWorker()
    worker.holding = True
    response = StoredResponse(path, 0, len(data), worker)
    protocol = BodyProtocol(pause_each=True)
    response.deliverBody(protocol)
    worker.step()  # the open
    worker.step()
    response.stopProducing()
    assert worker.queue == []
    assert protocol.reason is not None
    assert len(protocol.body) < len(data)


# -- Download following a leader ------------------------------------------------------------------


@attrs.define
class PeerFetch:
    """One fetch of the leader's stream: the test answers by firing C{deferred}."""

    peer_url: str
    digest: str
    offset: int
    deferred: "Deferred[Any]"

    def respond(self, size: int = SIZE) -> FakeResponse:
        """Answer with the leader's 206 from the offset asked for; the test sends the body."""
        response = FakeResponse(
            206, size - self.offset, {"Content-Range": f"bytes {self.offset}-{size - 1}/{size}"}
        )
        self.deferred.callback(response)
        return response


class FakeCoordinator:
    """What a Download asks of the DownloadCoordinator: claim, keep, release, fetch.

    C{holder} is the lease a claim returns; C{fail_fetches} makes every fetch fail at once
    (the leader cannot be reached), else fetches wait for the test.
    """

    def __init__(self, holder: Lease) -> None:
        self.holder = holder
        self.claims: list[tuple[str, str]] = []
        self.kept: list[str] = []
        self.stopped: list[str] = []
        self.released: list[str] = []
        self.fetches: list[PeerFetch] = []
        self.fail_fetches = False

    async def claim(self, digest: str, repo: str) -> Lease:
        self.claims.append((digest, repo))
        return self.holder

    def keep(self, digest: str) -> Any:
        self.kept.append(digest)
        return lambda: self.stopped.append(digest)

    def release(self, digest: str) -> None:
        self.released.append(digest)

    def fetch(self, peer_url: str, digest: str, offset: int) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        self.fetches.append(PeerFetch(peer_url, digest, offset, d))
        if self.fail_fetches:
            d.errback(PeerUnavailable(f"replica {peer_url} cannot be reached: connection refused"))
        return d


def lease(repo: str = NGINX.cache_repo, ours: bool = False) -> Lease:
    if ours:
        return Lease(ME, "http://10.0.0.1:8000", repo, True)
    return Lease("replica-leader", LEADER_URL, repo, False)


class UpstreamWithHead(FakeBlobUpstream):
    """FakeBlobUpstream plus has_blob, whose answers the test gives."""

    def __init__(self) -> None:
        super().__init__()
        self.heads: list[tuple[str, Deferred[bool]]] = []

    def has_blob(self, name: Any, digest: str) -> "Deferred[bool]":
        d: Deferred[bool] = Deferred()
        self.heads.append((name.cache_repo, d))
        return d


@attrs.define
class Follow:
    """A fetcher with a fake coordinator, over a real blob store and metadata."""

    trow: Trow
    blobs: BlobStore
    worker: GatedWorker
    upstream: UpstreamWithHead
    clock: Clock
    coordinator: FakeCoordinator
    metrics: Metrics
    fetcher: Fetcher

    def download(self, name: Any = NGINX) -> Download:
        return self.fetcher.get(name, DIGEST)

    def standalone(self, follow_budget: float) -> Download:
        """A download outside the fetcher, with its own follow budget."""
        download = Download(
            NGINX,
            DIGEST,
            self.blobs,
            self.trow.stores.metadata,
            self.upstream,  # type: ignore[arg-type]
            self.clock,
            metrics=self.metrics,
            coordinator=self.coordinator,  # type: ignore[arg-type]
            follow_budget=follow_budget,
        )
        download.start()
        return download

    def cached(self) -> bytes | None:
        handle = self.blobs.open(DIGEST)
        if handle is None:
            return None
        with handle:
            return handle.read()

    def linked(self, name: Any) -> bool:
        return bool(result_of(self.trow.stores.metadata.blob_linked(name.cache_repo, str(DIGEST))))

    def lease_outcomes(self) -> dict[str, float]:
        return {o: self.metrics.value("trow_download_leases_total", outcome=o) for o in ("led", "followed", "took_over")}

    def read(self, download: Download) -> tuple[StringTransport, "Deferred[None]"]:
        """A client reading the whole blob from the download's file, as it lands."""
        assert download.size is not None
        consumer = StringTransport()
        reader = TeeReader(download, 0, download.size, self.blobs.path(DIGEST))
        return consumer, reader.start(consumer)


@pytest.fixture
def follow(trow: Trow) -> Follow:
    worker = GatedWorker()
    blobs = BlobStore(trow.root, worker)
    upstream = UpstreamWithHead()
    clock = Clock()
    coordinator = FakeCoordinator(lease())
    metrics = Metrics()
    fetcher = Fetcher(blobs, trow.stores.metadata, upstream, clock, metrics=metrics, coordinator=coordinator)  # type: ignore[arg-type]
    return Follow(trow, blobs, worker, upstream, clock, coordinator, metrics, fetcher)


def test_leads_when_the_lease_is_ours(follow: Follow) -> None:
    """The first replica to claim fetches from its upstream, renews its lease meanwhile, and
    releases it (and stops renewing) when the blob is cached."""
    follow.coordinator.holder = lease(ours=True)
    download = follow.download()
    assert follow.coordinator.claims == [(str(DIGEST), NGINX.cache_repo)]
    assert [r.offset for r in follow.upstream.requests] == [0]
    assert follow.coordinator.kept == [str(DIGEST)]
    assert follow.coordinator.released == []
    follow.upstream.requests[0].respond(full_response(DATA))
    assert download.complete and follow.cached() == DATA
    assert follow.coordinator.released == [str(DIGEST)]
    assert follow.coordinator.stopped == [str(DIGEST)]
    assert follow.coordinator.fetches == []
    assert follow.lease_outcomes() == {"led": 1, "followed": 0, "took_over": 0}


def test_follows_the_leader(follow: Follow) -> None:
    """Another replica leads for the same repository: no upstream request at all; the bytes
    come from the leader's stream, land in this replica's own file for its readers, are
    verified and cached here, and linked. A follower never releases a lease it does not hold."""
    download = follow.download()
    assert follow.upstream.requests == [] and follow.upstream.heads == []
    [fetch] = follow.coordinator.fetches
    assert (fetch.peer_url, fetch.digest, fetch.offset) == (LEADER_URL, str(DIGEST), 0)
    peer = fetch.respond()
    assert result_of(download.wait_size()) == SIZE
    consumer, reading = follow.read(download)
    peer.write(DATA[:50])
    assert consumer.value() == DATA[:50]
    peer.write(DATA[50:])
    peer.finish()
    assert download.complete and follow.cached() == DATA
    assert consumer.value() == DATA and reading.called
    assert follow.linked(NGINX)
    assert follow.coordinator.released == [] and follow.coordinator.kept == []
    assert follow.lease_outcomes() == {"led": 0, "followed": 1, "took_over": 0}
    assert follow.metrics.value("trow_peer_bytes_total", role="read") == SIZE
    assert follow.metrics.value("trow_upstream_bytes_total", upstream="docker.io") == 0


def test_follower_pauses_the_leader_stream(follow: Follow) -> None:
    """Backpressure works on the peer stream as on an upstream's: a slow disk here pauses the
    leader's stream, and it is resumed once the writes drain."""
    follow.download()
    peer = follow.coordinator.fetches[0].respond()
    follow.worker.holding = True
    chunk = 1 << 20
    big = b"x" * chunk
    written = 0
    while not peer.transport.paused and written < 64 * chunk:
        peer.protocol.dataReceived(big)  # past the writer's high water mark, straight in
        written += chunk
    assert peer.transport.paused, "the leader's stream was never paused"
    follow.worker.release()
    assert not peer.transport.paused, "the leader's stream was not resumed"


def test_broken_peer_stream_is_followed_again(follow: Follow) -> None:
    """The leader's stream breaks while it still holds the lease: the follower claims again
    and follows it from the offset it holds; counted as one followed download."""
    download = follow.download()
    first = follow.coordinator.fetches[0].respond()
    consumer, _ = follow.read(download)
    first.write(DATA[:40])
    first.drop()
    assert len(follow.coordinator.claims) == 2
    second = follow.coordinator.fetches[1]
    assert second.offset == 40
    rest = second.respond()
    rest.write(DATA[40:])
    rest.finish()
    assert download.complete and follow.cached() == DATA
    assert consumer.value() == DATA
    assert follow.upstream.requests == []
    assert follow.lease_outcomes() == {"led": 0, "followed": 1, "took_over": 0}


def test_leader_gone_the_lease_is_taken_over_and_resumed_upstream(follow: Follow) -> None:
    """The leader died mid-stream and its lease ran out: this replica takes it over, resumes
    from the upstream with Range at the offset it holds, renews, finishes, and releases."""
    download = follow.download()
    first = follow.coordinator.fetches[0].respond()
    consumer, _ = follow.read(download)
    first.write(DATA[:40])
    follow.coordinator.holder = lease(ours=True)
    first.drop()
    [request] = follow.upstream.requests
    assert request.offset == 40
    assert follow.coordinator.kept == [str(DIGEST)]
    rest = request.respond(FakeResponse(206, SIZE - 40, {"Content-Range": f"bytes 40-{SIZE - 1}/{SIZE}"}))
    rest.write(DATA[40:])
    rest.finish()
    assert download.complete and follow.cached() == DATA
    assert consumer.value() == DATA
    assert follow.coordinator.released == [str(DIGEST)]
    assert follow.coordinator.stopped == [str(DIGEST)]
    assert follow.lease_outcomes() == {"led": 0, "followed": 1, "took_over": 1}
    assert follow.metrics.value("trow_peer_bytes_total", role="read") == 40
    assert follow.metrics.value("trow_upstream_bytes_total", upstream="docker.io") == SIZE - 40


def test_taken_over_upstream_ignoring_range_is_cut_to_the_rest(follow: Follow) -> None:
    """The upstream answers the take-over's Range with the whole blob (200): the bytes the
    follower already holds are skipped, and the blob still checks out."""
    download = follow.download()
    first = follow.coordinator.fetches[0].respond()
    first.write(DATA[:40])
    follow.coordinator.holder = lease(ours=True)
    first.drop()
    follow.upstream.requests[0].respond(full_response(DATA))
    assert download.complete and follow.cached() == DATA


def test_unreachable_leader_is_retried_with_growing_delays(follow: Follow) -> None:
    """PeerUnavailable (the leader restarting): tried again after 0.1 s, then twice as long each
    time up to a second, from the same offset, until it answers."""
    download = follow.download()
    for delay in [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]:
        follow.coordinator.fetches[-1].deferred.errback(PeerUnavailable("connection refused"))
        fetched = len(follow.coordinator.fetches)
        follow.clock.advance(delay - 0.01)
        assert len(follow.coordinator.fetches) == fetched, f"tried again before {delay}s"
        follow.clock.advance(0.01)
        assert len(follow.coordinator.fetches) == fetched + 1, f"not tried again after {delay}s"
    last = follow.coordinator.fetches[-1]
    assert last.offset == 0 and pending(last.deferred)
    peer = last.respond()
    peer.write(DATA)
    peer.finish()
    assert download.complete


def test_follower_gives_up_after_its_budget_and_keeps_no_lease(follow: Follow) -> None:
    """No replica can stream it for longer than the follow budget: DownloadFailed, nothing
    cached, and no lease released (this replica never held one)."""
    follow.coordinator.fail_fetches = True
    download = follow.standalone(follow_budget=3.0)
    for _ in range(100):
        follow.clock.advance(0.5)
    assert download.failure is not None and download.failure.check(DownloadFailed)
    assert "no replica could stream" in download.failure.getErrorMessage()
    assert follow.cached() is None
    assert follow.coordinator.released == []
    assert follow.clock.getDelayedCalls() == []


def test_follow_budget_is_clock_time(follow: Follow) -> None:
    """A leader whose every fetch takes 10 s to fail: the download fails once about the budget
    has passed (here: by twice the budget), not after 60 budget-seconds of sleeps alone."""
    download = follow.standalone(follow_budget=FOLLOW_BUDGET)
    answered = 0
    while download.failure is None and follow.clock.seconds() < 2 * FOLLOW_BUDGET:
        if len(follow.coordinator.fetches) > answered:
            follow.clock.advance(10)  # the request timeout of DownloadCoordinator.fetch
            follow.coordinator.fetches[answered].deferred.errback(PeerUnavailable("timed out"))
            answered += 1
        else:
            follow.clock.advance(0.1)
    assert download.failure is not None, f"still following after {follow.clock.seconds():.0f}s"


def test_leader_for_another_repository_is_confirmed_upstream_first(follow: Follow) -> None:
    """The leader downloads for another cache repository (maybe private): this repository's
    upstream must confirm the blob (one HEAD) before its stream is followed; once is enough."""
    follow.coordinator.holder = lease(repo=GHCR.cache_repo)
    download = follow.download(NGINX)
    assert [repo for repo, _ in follow.upstream.heads] == [NGINX.cache_repo]
    assert follow.coordinator.fetches == []
    follow.upstream.heads[0][1].callback(True)
    first = follow.coordinator.fetches[0].respond()
    first.write(DATA[:10])
    first.drop()
    assert len(follow.upstream.heads) == 1, "confirmed again"
    rest = follow.coordinator.fetches[1].respond()
    rest.write(DATA[10:])
    rest.finish()
    assert download.complete
    assert follow.linked(NGINX) and not follow.linked(GHCR)


def test_leader_for_another_repository_the_upstream_denies(follow: Follow) -> None:
    """This repository's upstream does not have the blob: 404 for this download, and the
    leader's (private) stream is never read."""
    follow.coordinator.holder = lease(repo=GHCR.cache_repo)
    download = follow.download(NGINX)
    follow.upstream.heads[0][1].callback(False)
    assert download.failure is not None and download.failure.check(UpstreamStatus)
    assert download.failure.value.status == 404  # type: ignore[union-attr]
    assert follow.coordinator.fetches == []
    assert follow.cached() is None and not follow.linked(NGINX)


def test_leader_finished_meanwhile_the_rest_is_read_from_the_stored_blob(follow: Follow) -> None:
    """The leader's stream ends because it finished and stored the blob on the shared volume:
    the follower reads the rest from there (no claim, no upstream), and still verifies it."""
    download = follow.download()
    first = follow.coordinator.fetches[0].respond()
    consumer, _ = follow.read(download)
    first.write(DATA[:40])
    result_of(follow.blobs.put_bytes(DATA, DIGEST))  # the leader's commit
    first.drop()
    assert len(follow.coordinator.claims) == 1
    assert len(follow.coordinator.fetches) == 1 and follow.upstream.requests == []
    assert download.complete and download.failure is None
    assert consumer.value() == DATA
    assert follow.linked(NGINX)


def test_failed_leading_download_releases_the_lease(follow: Follow) -> None:
    """A leading download that fails gives its lease up at once, so another replica may try."""
    follow.coordinator.holder = lease(ours=True)
    download = follow.download()
    follow.upstream.requests[0].deferred.errback(UpstreamStatus(503, "busy"))
    assert download.failure is not None
    assert follow.coordinator.released == [str(DIGEST)]
    assert follow.coordinator.stopped == [str(DIGEST)]


def test_failed_take_over_releases_the_lease(follow: Follow) -> None:
    """A follower that took over the lease and then fails releases it too."""
    download = follow.download()
    first = follow.coordinator.fetches[0].respond()
    first.write(DATA[:40])
    follow.coordinator.holder = lease(ours=True)
    first.drop()
    follow.upstream.requests[0].deferred.errback(UpstreamStatus(502, "bad gateway"))
    assert download.failure is not None
    assert follow.coordinator.released == [str(DIGEST)]


def test_bad_bytes_from_the_leader_are_not_cached(follow: Follow) -> None:
    """A follower trusts nothing it did not verify: wrong bytes from the leader fail the
    digest check here, and nothing is cached or linked."""
    download = follow.download()
    peer = follow.coordinator.fetches[0].respond()
    peer.write(b"y" * SIZE)
    peer.finish()
    assert download.failure is not None and download.failure.check(DownloadFailed)
    assert follow.cached() is None and not follow.linked(NGINX)


def test_abort_while_waiting_for_the_leader(follow: Follow) -> None:
    """trow stops while the follower waits to retry the leader: the download ends, given up."""
    follow.coordinator.fail_fetches = True
    download = follow.download()
    download.abort("trow is stopping")
    follow.clock.advance(1)
    assert download.failure is not None and download.failure.check(DownloadFailed)
    assert "stopping" in download.failure.getErrorMessage()


# -- the peer endpoint ------------------------------------------------------------------------------


@attrs.define
class Leader:
    """A trow with a proxy and a peer key (a leader replica), its download driven by the test."""

    cache: Cache
    upstream: FakeBlobUpstream
    api: Client
    metrics: Metrics


@pytest.fixture
def leader(trow: Trow) -> Iterator[Leader]:
    cache = make_cache(trow)
    upstream = FakeBlobUpstream()
    cache.proxy.fetcher = Fetcher(trow.stores.blobs, trow.stores.metadata, upstream, cache.clock)  # type: ignore[arg-type]
    api = Client(RegistryAPI(trow.registry, cache.proxy, peer_key=KEY).resource())
    yield Leader(cache, upstream, api, cache.proxy.metrics)
    cache.upstream.close()


def peer_get(client: Client, digest: str = str(DIGEST), signature: str | None = "sign", range_: str | None = None) -> Any:
    headers = {}
    if signature == "sign":
        signature = peer_signature(KEY, digest)
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    if range_ is not None:
        headers["Range"] = range_
    return client.get(f"{PEER_PATH}{digest}", headers=headers)


def start_download(leader: Leader) -> FakeResponse:
    """A client of the leader asked for the blob: its download runs, headers received."""
    leader.cache.proxy.fetcher.get(NGINX, DIGEST)
    return leader.upstream.requests[-1].respond(FakeResponse(200, SIZE))


def test_peer_path_is_404_for_a_trow_alone(trow: Trow) -> None:
    """Without --database (no peer key) the path does not exist, signature or not."""
    cache = make_cache(trow)
    try:
        alone = Client(RegistryAPI(trow.registry, cache.proxy).resource())
        assert peer_get(alone).code == 404
        no_proxy = Client(RegistryAPI(trow.registry, None, peer_key=KEY).resource())
        assert peer_get(no_proxy).code == 404
    finally:
        cache.upstream.close()


@pytest.mark.parametrize(
    "signature",
    [None, "", peer_signature(OTHER_KEY, str(DIGEST)), peer_signature(KEY, sha256(b"another blob"))],
    ids=["none", "empty", "other-key", "other-digest"],
)
def test_peer_path_needs_the_signature(leader: Leader, signature: str | None) -> None:
    """Only replicas may read downloads in progress: 403 DENIED without the right signature,
    even while the download runs, and no stream counted."""
    response = start_download(leader)
    response.write(DATA[:30])
    r = peer_get(leader.api, signature=signature)
    assert r.code == 403 and r.error_code() == "DENIED"
    assert leader.metrics.value("trow_peer_streams_total", role="served") == 0


def test_peer_path_is_404_without_a_download(leader: Leader) -> None:
    """Signed, but no download of that digest runs here: 404 BLOB_UNKNOWN."""
    r = peer_get(leader.api)
    assert r.code == 404 and r.error_code() == "BLOB_UNKNOWN"


def test_peer_path_is_404_once_the_download_finished(leader: Leader) -> None:
    """Only downloads in progress: a blob already stored is on the shared volume for anyone."""
    leader.cache.proxy.fetcher.get(NGINX, DIGEST)
    leader.upstream.requests[-1].respond(full_response(DATA))
    assert leader.cache.trow.stores.blobs.size(DIGEST) == SIZE
    r = peer_get(leader.api)
    assert r.code == 404 and r.error_code() == "BLOB_UNKNOWN"


def test_peer_path_streams_a_download_in_progress_from_an_offset(leader: Leader) -> None:
    """Signed, with Range from the follower's offset: 206 with Content-Range, and the bytes as
    they land here, before the download ended; the rest follows when it does."""
    response = start_download(leader)
    response.write(DATA[:30])
    stub = leader.api.stub
    d = stub.request(  # type: ignore[attr-defined]
        "GET",
        f"http://trow.test{PEER_PATH}{DIGEST}",
        headers={SIGNATURE_HEADER: peer_signature(KEY, str(DIGEST)), "Range": "bytes=10-"},
        unbuffered=True,
    )
    stub.flush()
    r = result_of(d)
    assert r.code == 206
    assert r.headers.getRawHeaders("content-range") == [f"bytes 10-{SIZE - 1}/{SIZE}"]
    assert r.length == SIZE - 10
    chunks: list[bytes] = []
    collected = treq.collect(r, chunks.append)
    stub.flush()
    assert b"".join(chunks) == DATA[10:30]
    assert pending(collected)
    response.write(DATA[30:])
    response.finish()
    stub.flush()
    result_of(collected)
    assert b"".join(chunks) == DATA[10:]
    assert leader.metrics.value("trow_peer_streams_total", role="served") == 1


def test_peer_path_bad_digest_is_400(leader: Leader) -> None:
    r = peer_get(leader.api, digest="sha256:nothex", signature=peer_signature(KEY, "sha256:nothex"))
    assert r.code == 400


def test_a_blob_stored_by_another_repository_is_confirmed_before_it_is_followed(follow: Follow) -> None:
    """A follower that finds the blob already stored (a leader for another, perhaps private,
    repository finished just before) reads it only once this repository's upstream confirms it
    has the blob: refused, nothing is served or linked here."""
    result_of(follow.blobs.put_bytes(DATA, DIGEST))
    download = follow.download()
    assert [repo for repo, _ in follow.upstream.heads] == [NGINX.cache_repo]
    follow.upstream.heads[0][1].callback(False)
    assert download.failure is not None and download.failure.check(UpstreamStatus)
    assert not follow.linked(NGINX)
