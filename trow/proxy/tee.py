"""The streaming tee: one upstream download per digest, read by every client as it lands on disk.

A L{Download} fetches a blob once into a file of C{tmp/}, hashing it on the way in, and keeps
C{available}, the number of bytes already in the file. Any number of L{TeeReader}s stream from that
file at their own pace, each a push producer paused and resumed by its own client, so a slow client
slows no one else. The download does not belong to any client and runs to the end when they leave.

A blob joins the cache only when its size and digest check out. Until then readers hold back the
last byte of the blob: a bad download is discarded and the connections streaming it are cut, so no
client ever receives a complete-looking wrong body. An upstream that drops mid-blob is asked for
the rest with C{Range}, a few times, before the download is given up.
"""

from __future__ import annotations

import re
from collections import deque
from typing import IO, Any, Callable

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from zope.interface import implementer

from trow.metrics import Metrics
from trow.proxy.names import ProxiedName
from trow.proxy.peers import DownloadCoordinator, PeerUnavailable, StoredResponse
from trow.proxy.upstream import UpstreamClient, UpstreamStatus, UpstreamUnavailable, discard_body
from trow.registry.names import Digest
from trow.storage.blobs import BlobStore, HashingWriter, discard_file
from trow.storage.metadata import Metadata
from trow.storage.reader import FileRangeProducer
from trow.workers import Worker

_log = Logger()

RESUME_ATTEMPTS = 3
# Bytes of the blob kept in memory after they arrive, for readers that keep up with the download.
WINDOW = 16 << 20
# The smallest piece that window holds: smaller ones (TLS records) are read from the file.
PIECE = 64 << 10
# File reads of a reader that fell behind that window.
BEHIND_CHUNK = 256 << 10
# What all the downloads of this process may hold at once, and what they hold.
WINDOW_BUDGET = 64 << 20
_HELD = [0]
# How long a download keeps asking an unreachable upstream for the rest of a blob it dropped.
RESUME_BUDGET = 30.0
# How long a follower keeps trying to reach a leader (or to take over its lease) before the
# download fails: longer than a lease, so that a dead leader is always replaced first.
FOLLOW_BUDGET = 60.0


class DownloadFailed(Exception):
    """The download was given up: bad digest or size, or the upstream went away for good."""


class Download:
    """One upstream fetch of one blob, shared by every client that wants it."""

    def __init__(
        self,
        name: ProxiedName,
        digest: Digest,
        blobs: BlobStore,
        metadata: Metadata,
        upstream: UpstreamClient,
        clock: IReactorTime,
        idle_timeout: float = 60.0,
        on_done: Callable[["Download"], None] | None = None,
        metrics: Metrics | None = None,
        coordinator: DownloadCoordinator | None = None,
        follow_budget: float = FOLLOW_BUDGET,
        resume_budget: float = RESUME_BUDGET,
    ) -> None:
        self.name = name
        self.metrics = metrics or Metrics()
        self.digest = digest
        self.repos = {name.cache_repo}
        self._blobs = blobs
        self._metadata = metadata
        self._upstream = upstream
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._on_done = on_done
        self.path = blobs.temp_path("proxy")
        self.size: int | None = None
        self.available = 0
        # verified: every byte is in the file and checked; complete: committed to the blob store.
        self.verified = False
        self.complete = False
        self.failure: Failure | None = None
        self._sized: list[Deferred[int]] = []
        self._listeners: set[Callable[[], None]] = set()
        self._handle: IO[bytes] | None = None
        self._writer: HashingWriter | None = None
        self._receiver: _BodyReceiver | None = None
        self._aborted: str | None = None
        self.ended: Deferred[None] | None = None
        # Replicas (--database): leading means this replica fetches from the upstream for the
        # set; otherwise it reads from the leader (see trow.proxy.peers).
        self._coordinator = coordinator
        self._follow_budget = follow_budget
        self._resume_budget = resume_budget
        self.leading = coordinator is None
        self._followed = False
        self._confirmed = False
        self._from_peer = False
        self._unreported = 0
        self._stop_renewing: Callable[[], None] | None = None
        # The last bytes received, for readers that keep up (see TeeReader._from_memory): about
        # the writer's own queue again, so memory stays flat.
        self._window: deque[tuple[int, bytes]] = deque()
        self._window_bytes = 0
        self.received_end = 0
        self.started_at: float | None = None
        # Verified, but the blob store could not keep it (disk full).
        self._not_stored = False

    # -- observing ---------------------------------------------------------------------------

    def wait_size(self) -> "Deferred[int]":
        """Fire with the blob size once the upstream has told it (or the download failed)."""
        if self.failure is not None:
            return fail(self.failure)
        d: Deferred[int] = Deferred()
        if self.size is not None:
            d.callback(self.size)
        else:
            self._sized.append(d)
        return d

    def listen(self, listener: Callable[[], None]) -> None:
        """Call C{listener} whenever bytes arrive, or the download ends, until unlistened."""
        self._listeners.add(listener)

    def unlisten(self, listener: Callable[[], None]) -> None:
        self._listeners.discard(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()

    def _set_size(self, size: int) -> None:
        self.size = size
        sized, self._sized = self._sized, []
        for d in sized:
            d.callback(size)

    # -- running -----------------------------------------------------------------------------

    def start(self) -> "Deferred[None]":
        """Run the download to its end, whoever is still listening; fires when it has ended."""
        self.metrics.download_started()
        self.started_at = self._clock.seconds()
        self.ended = ensureDeferred(self._run()).addErrback(self._fail)
        return self.ended

    @property
    def done(self) -> int:
        """Bytes of the blob this replica has received so far."""
        return max(self.available, self.received_end)

    @property
    def clients(self) -> int:
        """Clients streaming this download now."""
        return len(self._listeners)

    def abort(self, why: str) -> None:
        """Give the download up (trow is stopping): the readers are cut, nothing is cached."""
        self._aborted = why
        if self._receiver is not None:
            self._receiver.stopProducing()

    async def _run(self) -> None:
        try:
            await self._fetch()
        except BaseException:
            # Let writes already handed to the disk workers finish before the file goes.
            if self._writer is not None:
                try:
                    await self._writer.drain()
                except Exception:
                    pass
            raise

    async def _open(self, offset: int) -> IResponse:
        """The next response to read the blob from, from C{offset}: the upstream's when this
        replica leads the download (or there are no replicas), else the leader replica's."""
        digest = str(self.digest)
        self._report_bytes()  # counted against the source they came from
        if self.leading:
            return await self._upstream.get_blob(self.name, digest, offset=offset)
        assert self._coordinator is not None
        coordinator = self._coordinator
        # The budget is clock time: an attempt that hangs until its timeout counts too.
        started = self._clock.seconds()
        delay = 0.1
        while True:
            if self._aborted:
                raise DownloadFailed(f"download of {digest} given up: {self._aborted}")
            stored = await self._blobs.stat_size(self.digest)
            if stored is not None and offset < stored:
                # The leader finished while this replica followed it: read on from the blob, if
                # this repository may have it (the bytes may be a private repository's).
                await self._confirm(digest)
                self._from_peer = True
                return StoredResponse(self._blobs.path(self.digest), offset, stored, self._blobs.worker)  # type: ignore[return-value]
            lease = await coordinator.claim(digest, self.name.cache_repo)
            if lease.ours:
                self.leading = True
                self._from_peer = False
                self._stop_renewing = coordinator.keep(digest)
                self.metrics.download_lease("took_over" if self._followed else "led")
                if self._followed:
                    _log.info("took over the download of {digest} at {offset} bytes", digest=digest, offset=offset)
                return await self._upstream.get_blob(self.name, digest, offset=offset)
            if lease.repo == self.name.cache_repo:
                # The leader fetches it from this repository's upstream: that vouches for it.
                self._confirmed = True
            else:
                # The leader fetches for another repository, maybe a private one: only this
                # repository's upstream can say it has the blob too (one HEAD).
                await self._confirm(digest)
            try:
                response = await coordinator.fetch(lease.peer_url, digest, offset)
            except PeerUnavailable as e:
                waited = self._clock.seconds() - started
                if waited >= self._follow_budget:
                    raise DownloadFailed(f"no replica could stream {digest} for {waited:.0f}s: {e}") from None
                _log.debug("{why}; trying again", why=str(e))
                await deferLater(self._clock, delay, lambda: None)
                delay = min(delay * 2, 1.0)
                continue
            if not self._followed:
                self.metrics.download_lease("followed")
                self._followed = True
            self._from_peer = True
            return response

    async def _resume(self, offset: int) -> IResponse:
        """Ask the upstream again from C{offset}, after it dropped the body. An upstream that
        restarts (its pod, its load balancer) refuses connections for a moment: try again with
        backoff for up to L{RESUME_BUDGET} seconds, past the breaker, which is there to spare new
        requests a dead upstream's timeouts, not to fail a download already under way."""
        if not self.leading:
            return await self._open(offset)
        digest = str(self.digest)
        started = self._clock.seconds()
        delay = 0.25
        while True:
            try:
                return await self._upstream.get_blob(self.name, digest, offset=offset, resuming=True)
            except UpstreamUnavailable as e:
                if self._aborted:
                    raise DownloadFailed(f"download of {digest} given up: {self._aborted}") from None
                if self._clock.seconds() - started + delay > self._resume_budget:
                    raise
                _log.info(
                    "upstream unreachable while resuming {digest} at {offset} bytes ({why}); trying again in {delay}s",
                    digest=digest,
                    offset=offset,
                    why=str(e),
                    delay=delay,
                )
                await deferLater(self._clock, delay, lambda: None)
                delay = min(delay * 2, 4.0)

    async def _confirm(self, digest: str) -> None:
        """Raise unless this repository's upstream has the blob (one HEAD, once): bytes another
        repository brought in are served here only then."""
        if self._confirmed:
            return
        if not await self._upstream.has_blob(self.name, digest):
            raise UpstreamStatus(404, f"blob {digest} is not in {self.name.repo} upstream")
        self._confirmed = True

    async def _fetch(self) -> None:
        response = await self._open(0)
        length = _content_length(response)
        # On the disk worker: creating a file on a network volume can stall.
        try:
            handle: IO[bytes] = await self._blobs.worker.run(open, self.path, "wb")
        except BaseException:
            discard_body(response)  # or its pooled connection stays stuck
            raise
        self._handle = handle
        hasher = self.digest.hasher()
        self._writer = HashingWriter(
            self._blobs.worker, handle, [hasher], high_water=16 << 20, low_water=4 << 20, on_written=self._written
        )
        if length is not None:
            self._set_size(length)
        received = 0
        attempts = 0
        while True:
            receiver = _BodyReceiver(
                self._writer, self._clock, self._idle_timeout, skip=0, on_data=self._received, on_chunk=self._hold
            )
            if response.code == 200 and received:
                # The upstream ignored our Range: drop what we already have.
                receiver.skip = received
            self._receiver = receiver
            if self._aborted:
                # Given up while the request was on its way: do not read the body at all.
                receiver.received = 0
                response.deliverBody(receiver)
                receiver.stopProducing()
            else:
                response.deliverBody(receiver)
            await receiver.done
            self._receiver = None
            reason = receiver.reason
            received += receiver.received
            if self._aborted:
                raise DownloadFailed(f"download of {self.digest} given up: {self._aborted}")
            if reason.check(ResponseDone) and (self.size is None or received >= self.size):
                break
            if reason.check(PotentialDataLoss) and self.size is None:
                # A body delimited by closing the connection (valid HTTP/1.1): this is its end,
                # and the digest check below tells whether it is whole.
                break
            if self._from_peer and self.size is not None:
                # The leader replica went away mid-stream: follow the next leader, or lead.
                _log.info("the replica streaming {digest} stopped at {received} bytes", digest=str(self.digest), received=received)
                response = await self._open(received)
                continue
            attempts += 1
            self.metrics.upstream_error(self.name.upstream.host, "truncated")
            if attempts > RESUME_ATTEMPTS or self.size is None:
                raise DownloadFailed(
                    f"upstream {self.name.upstream.host} dropped {self.digest} after {received} bytes: {reason.getErrorMessage()}"
                )
            _log.info(
                "upstream dropped {digest} at {received} of {size} bytes; resuming with Range",
                digest=str(self.digest),
                received=received,
                size=self.size,
            )
            response = await self._resume(received)
            if response.code == 206 and _range_start(response) != received:
                # A 206 must say where its body starts (RFC 9110): one that does not, or starts
                # elsewhere, cannot be spliced in. Its body is dropped, so its connection is freed.
                discard_body(response)
                self.metrics.upstream_error(self.name.upstream.host, "protocol")
                found = (response.headers.getRawHeaders("content-range") or ["none"])[0]
                raise DownloadFailed(
                    f"upstream answered our Range (from byte {received}) for {self.digest} with Content-Range {found!r}"
                )
        await self._writer.drain()
        handle.close()
        self._handle = None
        actual = hasher.hexdigest()
        if self.size is None:
            self._set_size(received)
        if received != self.size:
            self.metrics.upstream_error(self.name.upstream.host, "size")
            raise DownloadFailed(f"upstream sent {received} bytes for {self.digest}, expected {self.size}")
        if actual != self.digest.hex:
            self.metrics.upstream_error(self.name.upstream.host, "digest")
            raise DownloadFailed(
                f"upstream content for {self.digest} hashes to {self.digest.algorithm}:{actual}; discarded"
            )
        # The bytes are right: readers may finish now, while the file is made durable (the fsync
        # of a large blob takes seconds, and a client has no reason to wait for it).
        self.verified = True
        self._notify()
        await self._blobs.commit(self.path, self.digest)
        # Readers keep reading the file they opened; new readers open the committed blob.
        self.path = self._blobs.path(self.digest)
        for repo in sorted(self.repos):
            await self._metadata.link_blob(repo, str(self.digest))
        self.complete = True
        _log.info("cached {digest} ({size} bytes) from {host}", digest=str(self.digest), size=self.size, host=self.name.upstream.host)
        self._finish()

    def _hold(self, data: bytes) -> None:
        """Keep C{data}, the next bytes of the blob, for readers that keep up; drop the oldest.

        Only large pieces (plain TCP reads of up to 1 MiB): small ones (TLS hands the body over
        in records of 16 KiB) would cost the reactor, already the bound with TLS, a copy each to
        gather them; readers read those from the file, on the disk workers."""
        start = self.received_end
        self.received_end += len(data)
        # Only while a reader may want it, and within one budget for the whole process: with
        # many downloads at once, or none of their clients keeping up, memory stays flat.
        if len(data) < PIECE or not self._listeners or _HELD[0] + len(data) > WINDOW_BUDGET:
            return  # readers get these bytes from the file once written (_written wakes them)
        self._window.append((start, data))
        self._window_bytes += len(data)
        _HELD[0] += len(data)
        while self._window_bytes > WINDOW and len(self._window) > 1:
            _, old = self._window.popleft()
            self._window_bytes -= len(old)
            _HELD[0] -= len(old)
        self._notify()

    def recent(self, position: int, size: int) -> bytes | None:
        """Up to C{size} bytes of the blob at C{position} if they are among the last received."""
        for start, data in reversed(self._window):
            if start <= position < start + len(data):
                cut = position - start
                if cut == 0 and len(data) <= size:
                    return data
                return data[cut : cut + size]
            if start + len(data) <= position:
                return None
        return None

    def _received(self, nbytes: int) -> None:
        # Counted in batches: a metric update per 16 KiB TLS record costs the reactor.
        self._unreported += nbytes
        if self._unreported >= 1 << 20:
            self._report_bytes()

    def _report_bytes(self) -> None:
        nbytes, self._unreported = self._unreported, 0
        if self._from_peer:
            self.metrics.peer_bytes("read", nbytes)
        else:
            self.metrics.upstream_bytes(self.name.upstream.host, nbytes)

    def _written(self, total: int) -> None:
        self.available = total
        self._notify()

    def _fail(self, failure: Failure) -> None:
        if self.verified and not self.complete:
            # Verified bytes that could not be stored (disk full...): the readers still got them
            # right, the cache just does not keep them (and the metrics count it failed).
            _log.failure("verified download of {digest} could not be stored", failure, digest=str(self.digest))
            if self.path != self._blobs.path(self.digest):
                discard_file(self.path)
            self.complete = True
            self._not_stored = True
        elif self.failure is None and not self.complete:
            self.failure = failure
            if not failure.check(DownloadFailed, UpstreamStatus, UpstreamUnavailable):
                _log.failure("download of {digest} failed", failure, digest=str(self.digest))
            else:
                _log.warn("download of {digest} failed: {why}", digest=str(self.digest), why=failure.getErrorMessage())
            if self._handle is not None:
                self._handle.close()
                self._handle = None
            discard_file(self.path)
            sized, self._sized = self._sized, []
            for d in sized:
                d.errback(failure)
        self._finish()

    def _finish(self) -> None:
        self._report_bytes()
        self._window.clear()
        _HELD[0] -= self._window_bytes
        self._window_bytes = 0
        if self._coordinator is not None and self.leading:
            if self._stop_renewing is not None:
                self._stop_renewing()
                self._stop_renewing = None
            self._coordinator.release(str(self.digest))
        if self.failure is None and not self._not_stored:
            self.metrics.download_finished("complete")
        elif self.failure is None:
            self.metrics.download_finished("failed")
        else:
            self.metrics.download_finished("abandoned" if self._aborted else "failed")
        self._notify()
        self._listeners.clear()
        if self._on_done is not None:
            self._on_done(self)


def _content_length(response: IResponse) -> int | None:
    length = response.length
    if isinstance(length, int):
        if response.code == 206:
            total = _range_total(response)
            return total
        return length
    return None


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


def _range_start(response: IResponse) -> int | None:
    """Where a 206's body starts, from a well-formed C{Content-Range}; None otherwise."""
    value = (response.headers.getRawHeaders("content-range") or [None])[0]
    match = _CONTENT_RANGE.match(str(value)) if value is not None else None
    if match is None or int(match.group(2)) < int(match.group(1)):
        return None
    return int(match.group(1))


def _range_total(response: IResponse) -> int | None:
    value = (response.headers.getRawHeaders("content-range") or [None])[0]
    try:
        return int(str(value).rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return None


@implementer(IPushProducer)
class _BodyReceiver(Protocol):
    """Feeds an upstream body into the download's writer, pausing the upstream when it is ahead.

    It is the writer's producer itself, so that the idle timer only runs while trow is reading:
    an upstream that trow paused is not idle.
    """

    def __init__(
        self,
        writer: HashingWriter,
        clock: IReactorTime,
        idle_timeout: float,
        skip: int,
        on_data: Callable[[int], None] = lambda n: None,
        on_chunk: Callable[[bytes], None] = lambda data: None,
    ) -> None:
        self._writer = writer
        self._on_data = on_data
        self._on_chunk = on_chunk
        self._clock = clock
        self._idle_timeout = idle_timeout
        self.skip = skip
        self.received = 0
        # Fires (with None) when the body ended; reason says how: ResponseDone, or a loss.
        self.done: Deferred[None] = Deferred()
        self.reason: Failure = Failure(ResponseDone())
        self._idle: IDelayedCall | None = None
        self._last = 0.0
        self._paused = False

    def connectionMade(self) -> None:
        self._writer.set_producer(self)
        self._arm()

    def pauseProducing(self) -> None:
        self._paused = True
        self._disarm()
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        self._paused = False
        self._arm()
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        self._disarm()
        self.transport.stopProducing()  # type: ignore[union-attr]

    def _disarm(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _arm(self) -> None:
        # One timer, looking at when bytes last came when it fires: not a timer reset per chunk
        # (TLS delivers a body 16 KiB at a time, and the reactor is its bound).
        self._last = self._clock.seconds()
        if self._paused or (self._idle is not None and self._idle.active()):
            return
        self._idle = self._clock.callLater(self._idle_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._idle = None
        quiet = self._clock.seconds() - self._last
        if quiet < self._idle_timeout:
            self._idle = self._clock.callLater(self._idle_timeout - quiet, self._timed_out)
            return
        _log.warn("upstream sent nothing for {seconds}s; dropping the connection", seconds=self._idle_timeout)
        self.transport.stopProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self._last = self._clock.seconds()
        if self.skip:
            cut = min(self.skip, len(data))
            self.skip -= cut
            data = data[cut:]
            if not data:
                return
        self.received += len(data)
        self._on_data(len(data))
        self._writer.write(data)
        self._on_chunk(data)

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]
        self._disarm()
        self._writer.set_producer(None)
        self.reason = reason
        self.done.callback(None)


class TeeReader(FileRangeProducer):
    """Streams C{length} bytes from C{offset} of a download's file to one client, as they land.

    The file is opened on the download's disk worker when streaming starts: the download's file
    in C{tmp/}, or, if it was committed meanwhile, the blob (C{final_path})."""

    def __init__(self, download: Download, offset: int, length: int, final_path: str, worker: Worker | None = None) -> None:
        def open_file() -> IO[bytes]:
            try:
                return open(download.path, "rb")
            except FileNotFoundError:
                # Committed (renamed into the blob store) since we looked.
                return open(final_path, "rb")

        super().__init__(None, offset, length, worker=worker, open_file=open_file)
        # A reader that fell behind the memory window reads the file in smaller pieces than a
        # stored blob's reader: many clients of one download each hold a piece or two.
        self._chunk = min(self._chunk, BEHIND_CHUNK)
        self._download = download
        self._waiting = False

    def start(self, consumer: IConsumer) -> "Deferred[None]":
        """Stream to C{consumer}; fires when all is sent or the client left, fails if the download did."""
        self._download.metrics.download_waiter_added()
        self._waiting = True
        self._download.listen(self._produce)
        return super().start(consumer)

    def _limit(self) -> int:
        download = self._download
        if download.verified:
            return self._end
        # Hold back the last byte of this response until the blob is verified: a bad download
        # must look truncated, for a Range that ends early as for the whole blob.
        return min(max(download.available, download.received_end), self._end - 1)

    def _file_limit(self) -> int:
        return self._end if self._download.verified else self._download.available

    def _from_memory(self, position: int, size: int) -> bytes | None:
        # A reader that keeps up is sent the bytes the upstream just delivered, before they are
        # even written: no read back from the file, and an earlier first byte.
        return self._download.recent(position, size)

    def _failure(self) -> Failure | None:
        return self._download.failure

    def _stop(self, failure: Failure | None) -> None:
        self._download.unlisten(self._produce)
        if self._waiting:
            self._waiting = False
            self._download.metrics.download_waiter_removed()
        super()._stop(failure)


class Fetcher:
    """Single-flight downloads: at most one upstream GET per digest, whatever the repository."""

    def __init__(
        self,
        blobs: BlobStore,
        metadata: Metadata,
        upstream: UpstreamClient,
        clock: IReactorTime,
        metrics: Metrics | None = None,
        coordinator: DownloadCoordinator | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        # Set with --database: downloads are then shared by the replicas (trow.proxy.peers).
        self.coordinator = coordinator
        self._blobs = blobs
        self._metadata = metadata
        self._upstream = upstream
        self._clock = clock
        self.downloads: dict[str, Download] = {}
        self.started = 0

    def get(self, name: ProxiedName, digest: Digest) -> Download:
        """The download of C{digest}, joined if running, started otherwise."""
        key = str(digest)
        download = self.downloads.get(key)
        if download is None:
            download = Download(
                name,
                digest,
                self._blobs,
                self._metadata,
                self._upstream,
                self._clock,
                on_done=self._done,
                metrics=self.metrics,
                coordinator=self.coordinator,
            )
            self.downloads[key] = download
            self.started += 1
            download.start()
        else:
            download.repos.add(name.cache_repo)
        return download

    def stop(self) -> "Deferred[Any]":
        """Give up every running download and fire once they have all ended (service stop)."""
        running = list(self.downloads.values())
        for download in running:
            download.abort("trow is stopping")
        return DeferredList([d.ended for d in running if d.ended is not None], consumeErrors=True)

    def _done(self, download: Download) -> None:
        if self.downloads.get(str(download.digest)) is download:
            del self.downloads[str(download.digest)]
