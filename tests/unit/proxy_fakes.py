"""Fakes for in-memory tests of the pull-through cache: no sockets, no running reactor.

- L{FakeRegistry}: a scripted upstream registry (a Klein app) with a token service, served
  in memory through L{StubHTTP}, a treq-like client over C{treq.testing.StubTreq} whose timeouts
  run on the test's L{Clock}.
- L{FakeResponse} and L{FakeBlobUpstream}: hand-driven upstream blob responses for the tee, with
  a transport that records C{pauseProducing}/C{resumeProducing}/C{stopProducing}.
- L{GatedWorker}: a storage worker whose calls the test releases by hand, to decide when bytes
  "reach the disk".
- L{make_cache}: a L{ProxyRegistry} over a real L{Registry} (from the unit harness) wired to a
  L{FakeRegistry}.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Coroutine, Iterable
from urllib.parse import urlsplit

import attrs
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IRequest
from zope.interface import implementer

from tests.unit.harness import Client, Response, Trow, result_of
from trow.metrics import Metrics
from trow.registry.access import AccessTracker
from trow.config import ProxyConfig, UpstreamRegistry
from trow.proxy.names import UpstreamDirectory
from trow.proxy.service import ProxyRegistry
from trow.proxy.tee import Fetcher
from trow.proxy.upstream import UpstreamClient
from trow.api.registry import RegistryAPI
from trow.registry.manifests import OCI_MANIFEST
from trow.workers import InlineWorker


# -- running coroutines synchronously -----------------------------------------------------------


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that must finish without the reactor; return its result or raise."""
    return result_of(ensureDeferred(coro))


def pending(d: "Deferred[Any]") -> bool:
    """True if C{d} has not fired yet (without consuming its result)."""
    return not d.called


def failure_of(d: "Deferred[Any]") -> Failure:
    """The failure a fired Deferred holds (the test fails if it succeeded or is still waiting)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    assert isinstance(results[0], Failure), f"expected a failure, got {results[0]!r}"
    return results[0]


def sha256(data: bytes) -> str:
    """The OCI digest string of C{data}."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_manifest(layer: bytes = b"layer", config: bytes = b"{}", note: str = "") -> bytes:
    """An OCI image manifest, deliberately not in canonical JSON, so byte-exactness shows."""
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config), "size": len(config)},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(layer), "size": len(layer)}
        ],
        "annotations": {"note": note or "x"},
    }
    return json.dumps(document, indent=3).encode() + b"\n"


# -- a storage worker the test releases by hand ---------------------------------------------------


class GatedWorker:
    """Runs calls inline, or, while held, queues them until the test releases them.

    A held call is a write batch still "on its way to the disk": it lets a test observe what
    readers see, and what backpressure does, before bytes land.
    """

    def __init__(self) -> None:
        self.holding = False
        self.queue: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Deferred[Any]]] = []

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> "Deferred[Any]":
        if not self.holding:
            return InlineWorker().run(f, *args, **kwargs)
        d: Deferred[Any] = Deferred()
        self.queue.append((f, args, kwargs, d))
        return d

    def step(self) -> None:
        """Run the oldest queued call (calls it queues stay queued)."""
        f, args, kwargs, d = self.queue.pop(0)
        InlineWorker().run(f, *args, **kwargs).chainDeferred(d)

    def release(self) -> None:
        """Stop holding and run everything queued, including calls queued meanwhile."""
        self.holding = False
        while self.queue:
            self.step()


# -- hand-driven upstream blob responses (for the tee) ------------------------------------------


@implementer(IPushProducer)
class FakeTransport:
    """The upstream connection under a response body: records flow control calls."""

    def __init__(self, on_stop: Callable[[], None]) -> None:
        self.calls: list[str] = []
        self._on_stop = on_stop

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")
        self._on_stop()

    @property
    def paused(self) -> bool:
        """Paused by the last flow control call."""
        flow = [c for c in self.calls if c in ("pause", "resume")]
        return bool(flow) and flow[-1] == "pause"


class FakeResponse:
    """An upstream response whose body the test delivers chunk by chunk.

    Like twisted's client responses, C{length} carries Content-Length and C{headers} does not,
    and stopping the body's transport ends the body with L{ResponseFailed}.
    """

    def __init__(self, code: int = 200, length: int | None = None, headers: dict[str, str] | None = None) -> None:
        self.code = code
        self.phrase = b"OK"
        self.version = (b"HTTP", 1, 1)
        self.length: Any = UNKNOWN_LENGTH if length is None else length
        self.headers = Headers({k: [v] for k, v in (headers or {}).items()})
        self.request = None
        self.previousResponse = None
        self.transport = FakeTransport(self.drop)
        self.protocol: Any = None
        self._buffer: list[bytes] = []
        self._end: Failure | None = None
        self.ended = False

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        buffered, self._buffer = self._buffer, []
        for chunk in buffered:
            protocol.dataReceived(chunk)
        if self._end is not None:
            end, self._end = self._end, None
            protocol.connectionLost(end)

    def write(self, data: bytes) -> None:
        """The upstream sends C{data}."""
        assert not self.ended, "the body already ended"
        if self.protocol is None:
            self._buffer.append(data)
        else:
            self.protocol.dataReceived(data)

    def _finish_with(self, reason: Failure) -> None:
        if self.ended:
            return
        self.ended = True
        if self.protocol is None:
            self._end = reason
        else:
            self.protocol.connectionLost(reason)

    def finish(self) -> None:
        """The body ends normally."""
        self._finish_with(Failure(ResponseDone()))

    def drop(self) -> None:
        """The connection is lost mid-body."""
        self._finish_with(Failure(ResponseFailed([Failure(ConnectionLost("upstream went away"))])))


def full_response(data: bytes, length: int | None = -1) -> FakeResponse:
    """A 200 whose whole body (C{data}) has arrived; C{length} defaults to C{len(data)}."""
    response = FakeResponse(200, len(data) if length == -1 else length)
    response.write(data)
    response.finish()
    return response


@attrs.define
class BlobRequest:
    """One C{get_blob} call the tee made: the test answers it by firing C{deferred}."""

    digest: str
    offset: int
    deferred: "Deferred[Any]"
    # Asked by a download that resumes (past the upstream's breaker).
    resuming: bool = False

    def respond(self, response: FakeResponse) -> FakeResponse:
        self.deferred.callback(response)
        return response


class FakeBlobUpstream:
    """Stands in for L{UpstreamClient} as the tee uses it: C{get_blob} waits for the test."""

    def __init__(self) -> None:
        self.requests: list[BlobRequest] = []

    def get_blob(self, name: Any, digest: str, offset: int = 0, resuming: bool = False) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        self.requests.append(BlobRequest(digest, offset, d, resuming))
        return d


# -- an in-memory upstream registry over HTTP -----------------------------------------------------


@attrs.define
class Seen:
    """One request the fake upstream received."""

    method: str
    host: str
    path: str
    args: dict[str, list[str]]
    headers: dict[str, str]

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class FakeRegistry:
    """A small upstream registry with a Bearer token service, scripted by the test.

    It answers C{/v2/<repo>/manifests/<ref>} and C{/v2/<repo>/blobs/<digest>} on any host, a token
    service at C{/token}, and C{/cdn/<digest>} for blob redirects. Switches make it misbehave.
    """

    app = Klein()

    def __init__(self) -> None:
        self.manifests: dict[str, tuple[bytes, str]] = {}
        self.tags: dict[tuple[str, str], str] = {}
        self.blobs: dict[str, bytes] = {}
        # digest -> the only repositories that have it (a private blob); absent: every repository.
        self.blob_repos: dict[str, set[str]] = {}
        self.seen: list[Seen] = []
        # Misbehaviour switches.
        self.status: int | None = None  # answer every /v2/ request with this status
        self.serve_instead: dict[str, bytes] = {}  # digest -> wrong bytes to serve for it
        self.digest_header: dict[str, str] = {}  # tag or digest -> Docker-Content-Digest to send
        self.send_length = True  # send Content-Length on blobs (False: chunked)
        self.omit_digest_on: set[str] = set()  # methods whose manifest answers carry no digest
        self.manifest_get_status: int | None = None  # answer manifest GETs (not HEADs) with this
        self.drop_manifest_body = False  # cut the connection half-way through a manifest GET body
        self.drop_blob_after: int | None = None  # cut the connection after this many blob bytes
        self.hold_blobs = False  # send blob headers, then wait for release_blobs() to send the body
        self.held_blobs: list[tuple[Deferred[Any], bytes]] = []
        self.blob_redirect: str | None = None  # redirect blob GETs to this base URL + /cdn/<digest>
        self.hang: list[Deferred[Any]] = []  # requests left unanswered (when hang_paths match)
        self.hang_paths: set[str] = set()
        # path under /v2/ -> (announced Content-Length, bytes to send) before the body stalls
        self.stall: dict[str, tuple[int, bytes]] = {}
        # Token auth.
        self.bearer = False
        self.realm = "https://auth.docker.io/token"
        self.tokens: dict[str, str] = {}  # token -> scope
        self.token_field = "token"
        self.expires_in: int | None = 300
        self.token_status = 200

    def resource(self) -> Any:
        return self.app.resource()

    # -- content ------------------------------------------------------------------------------

    def add_manifest(self, repo: str, tag: str | None, content: bytes, media_type: str = OCI_MANIFEST) -> str:
        """Publish a manifest (under C{tag} if given); return its digest."""
        digest = sha256(content)
        self.manifests[digest] = (content, media_type)
        if tag is not None:
            self.tags[(repo, tag)] = digest
        return digest

    def add_blob(self, data: bytes) -> str:
        digest = sha256(data)
        self.blobs[digest] = data
        return digest

    def release_blobs(self) -> None:
        """Send the bodies of the blob GETs held so far."""
        held, self.held_blobs = self.held_blobs, []
        for d, body in held:
            d.callback(body)

    def registry_requests(self) -> list[Seen]:
        """What reached C{/v2/} (not the token service nor the CDN)."""
        return [s for s in self.seen if s.path.startswith("/v2/")]

    def token_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.path == "/token"]

    # -- serving ------------------------------------------------------------------------------

    def _record(self, request: IRequest) -> Seen:
        seen = Seen(
            method=request.method.decode(),
            host=request.getRequestHostname().decode(),
            path=request.path.decode(),
            args={k.decode(): [v.decode() for v in vs] for k, vs in (request.args or {}).items()},
            headers={k.decode().lower(): vs[0].decode() for k, vs in request.requestHeaders.getAllRawHeaders()},
        )
        self.seen.append(seen)
        return seen

    @app.route("/token", methods=["GET"])
    def token(self, request: IRequest) -> Any:
        seen = self._record(request)
        request.setResponseCode(self.token_status)
        if self.token_status != 200:
            return b"no"
        token = f"tok-{len(self.tokens) + 1}"
        self.tokens[token] = (seen.args.get("scope") or [""])[0]
        document: dict[str, Any] = {self.token_field: token}
        if self.expires_in is not None:
            document["expires_in"] = self.expires_in
        request.setHeader("Content-Type", "application/json")
        return json.dumps(document).encode()

    @app.route("/cdn/<digest>", methods=["GET", "HEAD"])
    def cdn(self, request: IRequest, digest: str) -> Any:
        self._record(request)
        data = self.blobs.get(digest)
        if data is None:
            request.setResponseCode(404)
            return b""
        request.setHeader("Content-Length", str(len(data)))
        return data

    @app.route("/v2/<path:rest>", methods=["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"])
    def v2(self, request: IRequest, rest: str) -> Any:
        seen = self._record(request)
        if rest in self.hang_paths:
            d: Deferred[Any] = Deferred()
            self.hang.append(d)
            return d
        if rest in self.stall:
            announced, sent = self.stall[rest]
            request.setHeader("Content-Type", OCI_MANIFEST)
            request.setHeader("Content-Length", str(announced))
            request.write(sent)
            stalled: Deferred[Any] = Deferred()
            self.hang.append(stalled)
            return stalled
        if self.bearer:
            authorization = seen.header("authorization") or ""
            scope = self.tokens.get(authorization.removeprefix("Bearer "))
            repo = rest.split("/manifests/")[0].split("/blobs/")[0]
            if scope != f"repository:{repo}:pull":
                request.setResponseCode(401)
                request.setHeader(
                    "WWW-Authenticate",
                    f'Bearer realm="{self.realm}",service="fake.registry",scope="repository:{repo}:pull"',
                )
                return b'{"errors":[{"code":"UNAUTHORIZED"}]}'
        if self.status is not None:
            request.setResponseCode(self.status)
            return b'{"errors":[{"code":"UNKNOWN"}]}'
        if "/manifests/" in rest:
            repo, reference = rest.rsplit("/manifests/", 1)
            digest = reference if ":" in reference else self.tags.get((repo, reference))
            if digest is None or digest not in self.manifests:
                request.setResponseCode(404)
                return b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}'
            if self.manifest_get_status is not None and seen.method == "GET":
                request.setResponseCode(self.manifest_get_status)
                return b'{"errors":[{"code":"TOOMANYREQUESTS"}]}'
            content, media_type = self.manifests[digest]
            content = self.serve_instead.get(digest, content)
            request.setHeader("Content-Type", media_type)
            if seen.method not in self.omit_digest_on:
                request.setHeader("Docker-Content-Digest", self.digest_header.get(reference, digest))
            request.setHeader("Content-Length", str(len(content)))
            if self.drop_manifest_body and seen.method == "GET":
                request.write(content[: len(content) // 2])
                request.channel.transport.abortConnection()  # type: ignore[attr-defined]
                return Deferred()
            return content
        if "/blobs/" in rest:
            repo, digest = rest.rsplit("/blobs/", 1)
            data = self.blobs.get(digest)
            if digest in self.blob_repos and repo not in self.blob_repos[digest]:
                data = None
            if data is None:
                request.setResponseCode(404)
                return b'{"errors":[{"code":"BLOB_UNKNOWN"}]}'
            if self.blob_redirect is not None:
                request.setResponseCode(307)
                request.setHeader("Location", f"{self.blob_redirect}/cdn/{digest}")
                return b""
            data = self.serve_instead.get(digest, data)
            start = 0
            wanted = seen.header("range")
            if wanted:
                start = int(wanted.removeprefix("bytes=").split("-")[0])
                request.setResponseCode(206)
                request.setHeader("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            request.setHeader("Docker-Content-Digest", digest)
            request.setHeader("Content-Type", "application/octet-stream")
            if self.send_length:
                request.setHeader("Content-Length", str(len(data) - start))
            if self.hold_blobs and seen.method == "GET":
                held: Deferred[Any] = Deferred()
                self.held_blobs.append((held, data[start:]))
                return held
            if self.drop_blob_after is not None and seen.method == "GET":
                request.write(data[start : start + self.drop_blob_after])
                request.channel.transport.abortConnection()  # type: ignore[attr-defined]
                return Deferred()
            return data[start:]
        request.setResponseCode(404)
        return b""


class StubHTTP:
    """A treq-like client for L{UpstreamClient}'s C{http_for}: requests go to an in-memory resource.

    Every host reaches the same resource (which sees the Host header). Timeouts run on the test's
    clock. C{refuse} makes every request fail as a refused connection, without reaching the
    resource, the way a dead upstream does.
    """

    def __init__(self, resource: Any, clock: Clock) -> None:
        self._stub = StubTreq(resource)
        self._clock = clock
        self.refuse = False
        self.attempts: list[tuple[str, str]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> "Deferred[Any]":
        self.attempts.append((method, url))
        if self.refuse:
            return fail(ConnectionRefusedError(urlsplit(url).hostname))
        kwargs.setdefault("reactor", self._clock)
        d = self._stub.request(method, url, **kwargs)  # type: ignore[attr-defined]
        self._stub.flush()
        return d

    def flush(self) -> None:
        """Move bytes between the in-memory client and server connections."""
        self._stub.flush()


# -- reading API responses ------------------------------------------------------------------------


@attrs.define
class Fetched(Response):
    """An API response plus the Content-Length the server declared (twisted's client keeps it out
    of C{headers} except for HEAD)."""

    content_length: int | None = None


def fetch(client: Client, method: str, url: str, body: bytes | None = None, headers: dict[str, Any] | None = None) -> Fetched:
    """Send one request through the harness client's StubTreq and read the whole answer."""
    stub = client.stub
    d = stub.request(method, "http://trow.test" + url, data=body, headers=headers or {})  # type: ignore[attr-defined]
    stub.flush()
    response = result_of(d)
    content = result_of(response.content())
    raw = {k.decode().lower(): [v.decode() for v in vs] for k, vs in response.headers.getAllRawHeaders()}
    length = response.length if isinstance(response.length, int) else None
    if method == "HEAD" and "content-length" in raw:
        length = int(raw["content-length"][0])
    return Fetched(response.code, raw, content, length)


# -- the pull-through cache over a real registry ------------------------------------------------


DOCKER_ALIAS = ProxyConfig(
    registries=(UpstreamRegistry(host="docker.io", alias="docker"), UpstreamRegistry(host="ghcr.io")),
    configured=True,
)


@attrs.define
class Cache:
    """A pull-through cache on a temp dir, its fake upstream, and an API client in front of it."""

    trow: Trow
    clock: Clock
    fake: FakeRegistry
    http: StubHTTP
    upstream: UpstreamClient
    proxy: ProxyRegistry
    api: Client


def make_cache(
    trow: Trow,
    config: ProxyConfig = DOCKER_ALIAS,
    offline: bool = False,
    own_hosts: Iterable[str] = (),
    fake: FakeRegistry | None = None,
) -> Cache:
    """Wire a L{ProxyRegistry} over C{trow}'s registry to a L{FakeRegistry} upstream."""
    clock = Clock()
    fake = fake or FakeRegistry()
    http = StubHTTP(fake.resource(), clock)
    # One set of metrics for the whole cache, as trow.app wires it.
    metrics = Metrics()
    upstream = UpstreamClient(clock, http_for=lambda _upstream: http, metrics=metrics)
    fetcher = Fetcher(trow.stores.blobs, trow.stores.metadata, upstream, clock, metrics=metrics)
    proxy = ProxyRegistry(
        trow.registry,
        UpstreamDirectory(config),
        upstream,
        fetcher,
        offline=offline,
        own_hosts=tuple(own_hosts),
        metrics=metrics,
        access=AccessTracker(trow.stores.metadata, clock),
    )
    api = Client(RegistryAPI(trow.registry, proxy).resource())
    return Cache(trow, clock, fake, http, upstream, proxy, api)
