"""Downloads shared by replicas: one upstream fetch per digest across the whole set.

With C{--database}, the first replica asked for an uncached blob takes its download lease (a row
in PostgreSQL, L{trow.storage.postgres.PostgresMetadata.lease_claim}) and fetches it from the
upstream as a single replica would, renewing the lease while it downloads. Any other replica
asked for the same digest meanwhile follows: its L{trow.proxy.tee.Download} reads the bytes from
the leader over HTTP (the internal path L{PEER_PATH}, served by L{trow.api.registry.RegistryAPI.peer_blob}) as they arrive,
writes and hashes them itself, and serves its own clients from its own file, exactly as from an
upstream. So a follower trusts nothing it did not verify, and never depends on seeing another
host's appends to a shared file (NFS shows them only after a close).

If the leader dies, its stream breaks and its lease stops being renewed: within L{LEASE_TTL}
seconds one follower takes the lease over and resumes from the upstream with C{Range} at the
offset it holds; the others follow the new leader from theirs. Clients see one whole, verified
body either way. If the leader finished meanwhile, a follower reads the rest from the stored blob.

Requests on the peer path carry an HMAC of the digest under a key on the shared volume, so that
only replicas can use it, and only for downloads in progress.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import IO, Any, Callable, Protocol

import attrs
import treq
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface import implementer

from trow.metrics import Metrics
from trow.workers import Worker

_log = Logger()

PEER_PATH = "/_trow/peer/blobs/"
SIGNATURE_HEADER = "X-Trow-Peer-Signature"
# A lease lasts this long unless renewed; the leader renews it every RENEW seconds.
LEASE_TTL = 10.0
RENEW = 3.0
_READ = 1 << 20


def peer_signature(key: bytes, digest: str) -> str:
    """What proves a request for C{digest} on the peer path comes from a replica."""
    return hmac.new(key, b"trow-peer-blob:" + digest.encode(), hashlib.sha256).hexdigest()


def peer_signature_ok(key: bytes, digest: str, given: str | None) -> bool:
    """Does C{given} prove the request comes from a replica (constant time)?"""
    return given is not None and hmac.compare_digest(peer_signature(key, digest), given)


class PeerUnavailable(Exception):
    """The leader replica could not stream the blob (gone, restarted, or no such download)."""


class Leases(Protocol):
    """The lease rows (L{trow.storage.postgres.PostgresMetadata})."""

    def lease_claim(self, digest: str, replica: str, peer_url: str, repo: str, ttl: float) -> "Deferred[tuple[str, str, str]]": ...
    def lease_renew(self, digest: str, replica: str, ttl: float) -> "Deferred[bool]": ...
    def lease_release(self, digest: str, replica: str) -> "Deferred[None]": ...


@attrs.frozen
class Lease:
    """Who downloads a digest for the set: a replica, its peer URL, the cache repository."""

    replica: str
    peer_url: str
    repo: str
    ours: bool


class DownloadCoordinator:
    """This replica's side of the shared downloads: leases, and the client that follows leaders."""

    def __init__(
        self,
        leases: Leases,
        replica_id: str,
        own_url: Callable[[], str],
        key: bytes,
        reactor: Any,
        metrics: Metrics | None = None,
        ttl: float = LEASE_TTL,
        renew: float = RENEW,
    ) -> None:
        self._leases = leases
        self.replica_id = replica_id
        self._own_url = own_url
        self.key = key
        self._reactor = reactor
        self.clock: IReactorTime = reactor
        self.metrics = metrics or Metrics()
        self.ttl = ttl
        self._renew = renew
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._http = treq.client.HTTPClient(Agent(reactor, pool=self._pool, connectTimeout=3))

    async def claim(self, digest: str, repo: str) -> Lease:
        """Lead the download of C{digest} if nobody does (or the leader's lease ran out)."""
        replica, url, leader_repo = await self._leases.lease_claim(digest, self.replica_id, self._own_url(), repo, self.ttl)
        return Lease(replica, url, leader_repo, replica == self.replica_id)

    def keep(self, digest: str) -> Callable[[], None]:
        """Renew this replica's lease of C{digest} until the returned function is called."""
        loop = LoopingCall(self._renew_once, digest)
        loop.clock = self.clock
        loop.start(self._renew, now=False).addErrback(lambda f: _log.failure("lease renewal stopped", f))

        def stop() -> None:
            if loop.running:
                loop.stop()

        return stop

    def _renew_once(self, digest: str) -> "Deferred[None]":
        def renewed(held: bool) -> None:
            if not held:
                _log.warn("lost the download lease of {digest}; another replica may fetch it too", digest=digest)

        def failed(failure: Failure) -> None:
            _log.warn("could not renew the download lease of {digest}: {why}", digest=digest, why=failure.getErrorMessage())

        return self._leases.lease_renew(digest, self.replica_id, self.ttl).addCallbacks(renewed, failed)

    def release(self, digest: str) -> None:
        """Give the lease up (the download ended); failures are only logged: it expires anyway."""
        self._leases.lease_release(digest, self.replica_id).addErrback(
            lambda f: _log.warn("could not release the download lease of {digest}: {why}", digest=digest, why=f.getErrorMessage())
        )

    async def fetch(self, peer_url: str, digest: str, offset: int) -> IResponse:
        """Start streaming C{digest} from C{offset} from the leader at C{peer_url}."""
        headers = Headers({"Range": [f"bytes={offset}-"], SIGNATURE_HEADER: [peer_signature(self.key, digest)]})
        try:
            response: IResponse = await self._http.get(
                f"{peer_url}{PEER_PATH}{digest}", headers=headers, unbuffered=True, timeout=10, reactor=self._reactor
            )
        except Exception as e:
            raise PeerUnavailable(f"replica {peer_url} cannot be reached: {e}") from None
        if response.code != 206:
            await treq.content(response).addErrback(lambda _: None)
            raise PeerUnavailable(f"replica {peer_url} answered {response.code} for {digest}")
        self.metrics.peer_stream("read")
        return response

    def close(self) -> Any:
        """Close the connections to peers (service stop, test teardown)."""
        return self._pool.closeCachedConnections()


@implementer(IPushProducer)
class StoredResponse:
    """A blob a peer finished and stored, from C{offset}, delivered like an upstream's 206 body
    (so the download that was following it simply reads on). Reads run on the disk worker."""

    code = 206
    phrase = b"Partial Content"

    def __init__(self, path: str, offset: int, size: int, worker: Worker) -> None:
        self._path = path
        self._offset = offset
        self._handle: IO[bytes] | None = None
        self._worker = worker
        self.length = size - offset
        self.headers = Headers({"Content-Range": [f"bytes {offset}-{size - 1}/{size}"]})
        self._paused = False
        self._stopped = False
        self._wake: Deferred[None] | None = None

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(self)
        ensureDeferred(self._pump(protocol))

    async def _pump(self, protocol: Any) -> None:
        reason: Failure = Failure(ResponseDone())
        try:
            # Opened on the worker: an open on a network volume can stall.
            self._handle = await self._worker.run(self._open)
            while not self._stopped:
                if self._paused:
                    self._wake = Deferred()
                    await self._wake
                    continue
                chunk = await self._worker.run(self._handle.read, _READ)
                if not chunk:
                    break
                protocol.dataReceived(chunk)
        except Exception:
            reason = Failure()
        finally:
            if self._handle is not None:
                self._handle.close()
        protocol.connectionLost(reason)

    def _open(self) -> IO[bytes]:
        handle = open(self._path, "rb")
        handle.seek(self._offset)
        return handle

    def _resume(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.callback(None)

    # The transport the body's protocol pauses and resumes.
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._resume()

    def stopProducing(self) -> None:
        self._stopped = True
        self._paused = False
        self._resume()
