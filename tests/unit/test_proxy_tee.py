"""The streaming tee: one upstream download per digest, read by every client as it lands on disk.

The upstream is hand-driven (L{FakeBlobUpstream} answers with L{FakeResponse}s whose bodies the
test delivers chunk by chunk), disk writes go through a L{GatedWorker} the test can hold, and time
is a L{Clock}. Reference: section 5, "Blobs".
"""

from __future__ import annotations

import errno
import os
from typing import Any, Iterator

import attrs
import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, formatEvent

from tests.unit.harness import Trow, result_of
from tests.unit.proxy_fakes import (
    BlobRequest,
    FakeBlobUpstream,
    FakeResponse,
    GatedWorker,
    failure_of,
    full_response,
    pending,
    sha256,
)
from trow.config import ProxyConfig
from trow.metrics import UPSTREAM_ERRORS
from trow.proxy.names import ProxiedName, UpstreamDirectory
import trow.proxy.tee as tee_module
from trow.proxy.tee import RESUME_ATTEMPTS, Download, DownloadFailed, Fetcher, TeeReader
from trow.proxy.upstream import UpstreamStatus, UpstreamUnavailable
from trow.registry.names import Digest
from trow.storage.blobs import BlobStore

DATA = bytes(range(48)) * 2  # 96 bytes
DIGEST = Digest.parse(sha256(DATA))
IDLE = 30.0



def proxied(cache_name: str) -> ProxiedName:
    name = UpstreamDirectory(ProxyConfig()).for_cache_name(cache_name)
    assert name is not None
    return name


NGINX = proxied("f/docker.io/nginx")
ALPINE = proxied("f/docker.io/alpine")
GHCR = proxied("f/ghcr.io/org/tool")


@attrs.define
class Tee:
    """A fetcher over a real blob store and metadata, a hand-driven upstream and a clock."""

    trow: Trow
    blobs: BlobStore
    worker: GatedWorker
    upstream: FakeBlobUpstream
    clock: Clock
    fetcher: Fetcher

    def download(self, name: ProxiedName = NGINX, digest: Digest = DIGEST) -> Download:
        return self.fetcher.get(name, digest)

    def standalone(self, name: ProxiedName = NGINX, digest: Digest = DIGEST) -> Download:
        """A download with a short idle timeout, started outside the fetcher."""
        download = Download(
            name, digest, self.blobs, self.trow.stores.metadata, self.upstream, self.clock, idle_timeout=IDLE  # type: ignore[arg-type]
        )
        download.start()
        return download

    def request(self, index: int = -1) -> BlobRequest:
        return self.upstream.requests[index]

    def cached(self, digest: Digest = DIGEST) -> bytes | None:
        """The committed bytes of C{digest}, or None."""
        handle = self.blobs.open(digest)
        if handle is None:
            return None
        with handle:
            return handle.read()

    def linked(self, name: ProxiedName, digest: Digest = DIGEST) -> bool:
        return bool(result_of(self.trow.stores.metadata.blob_linked(name.cache_repo, str(digest))))

    def tmp_files(self) -> list[str]:
        return os.listdir(self.blobs.tmp_root)

    def read(self, download: Download, offset: int = 0, length: int | None = None) -> "Reading":
        """Start a reader of C{length} bytes (default: to the end) at C{offset}."""
        assert download.size is not None
        length = download.size - offset if length is None else length
        reader = TeeReader(download, offset, length, self.blobs.path(download.digest))
        consumer = StringTransport()
        done = reader.start(consumer)
        return Reading(reader, consumer, done)


@pytest.fixture
def tee(trow: Trow) -> Iterator[Tee]:
    worker = GatedWorker()
    blobs = BlobStore(trow.root, worker)
    upstream = FakeBlobUpstream()
    clock = Clock()
    fetcher = Fetcher(blobs, trow.stores.metadata, upstream, clock)  # type: ignore[arg-type]
    yield Tee(trow, blobs, worker, upstream, clock, fetcher)


@attrs.define
class Reading:
    """A TeeReader streaming into an in-memory consumer."""

    reader: TeeReader
    consumer: StringTransport
    done: Any

    @property
    def received(self) -> bytes:
        return bytes(self.consumer.value())


def sized_response(tee: Tee, index: int = -1, size: int = len(DATA)) -> FakeResponse:
    """Answer a blob request with a 200 of C{size} bytes whose body the test will send."""
    return tee.request(index).respond(FakeResponse(200, size))


# -- single flight ----------------------------------------------------------------------------


def test_one_download_per_digest_however_many_gets(tee: Tee) -> None:
    """Concurrent gets of one digest share one Download and one upstream request."""
    first = tee.download()
    assert all(tee.download() is first for _ in range(5))
    assert len(tee.upstream.requests) == 1
    assert tee.fetcher.started == 1


def test_one_download_across_cache_repos_and_all_are_linked(tee: Tee) -> None:
    """A digest wanted by several cache repositories, even of several upstreams, is downloaded
    once, then linked into every one of them."""
    download = tee.download(NGINX)
    assert tee.download(ALPINE) is download
    assert tee.download(GHCR) is download
    assert len(tee.upstream.requests) == 1
    tee.request(0).respond(full_response(DATA))
    assert download.complete
    assert tee.cached() == DATA
    assert all(tee.linked(name) for name in (NGINX, ALPINE, GHCR))


def test_finished_download_leaves_the_fetcher_and_a_new_get_starts_another(tee: Tee) -> None:
    """Only running downloads are shared: after one ends (here: failed), the next get starts anew."""
    first = tee.download()
    tee.request(0).deferred.errback(UpstreamStatus(503, "busy"))
    assert first.failure is not None
    assert tee.fetcher.downloads == {}
    second = tee.download()
    assert second is not first
    assert len(tee.upstream.requests) == 2


def test_distinct_digests_download_separately(tee: Tee) -> None:
    """Single flight is per digest, not per repository."""
    other = Digest.parse(sha256(b"other"))
    assert tee.download(NGINX, DIGEST) is not tee.download(NGINX, other)
    assert len(tee.upstream.requests) == 2


# -- readers follow the writer -----------------------------------------------------------------


def test_readers_that_keep_up_get_bytes_as_they_arrive(tee: Tee, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that keeps up is sent the upstream's bytes as they arrive, from memory, before the
    disk worker has written them (no read back from the file, an earlier first byte)."""
    monkeypatch.setattr(tee_module, "PIECE", 1)
    download = tee.download()
    response = sized_response(tee)
    reading = tee.read(download)
    tee.worker.holding = True
    response.write(DATA[:10])
    response.write(DATA[10:30])
    assert reading.received == DATA[:30]
    tee.worker.release()
    assert reading.received == DATA[:30]
    assert pending(reading.done)


def test_small_pieces_are_read_from_the_file(tee: Tee, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small pieces (TLS records) are not kept in memory, which would cost a copy each on the
    reactor: a reader gets them once they are in the file."""
    monkeypatch.setattr(tee_module, "PIECE", 32)
    download = tee.download()
    response = sized_response(tee)
    reading = tee.read(download)
    tee.worker.holding = True
    response.write(DATA[:8])
    response.write(DATA[8:16])
    assert download.recent(0, 8) is None
    assert reading.received == b""
    tee.worker.release()
    assert reading.received == DATA[:16]


def test_a_reader_behind_the_window_reads_the_file(tee: Tee, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bytes kept in memory are only the last few MiB: a reader that starts later, or falls
    behind, reads what it missed from the file, as far as it is written."""
    monkeypatch.setattr(tee_module, "WINDOW", 8)
    monkeypatch.setattr(tee_module, "PIECE", 1)
    download = tee.download()
    response = sized_response(tee)
    first = tee.read(download)  # a reader that keeps up: the download holds what arrives
    for piece in (DATA[:10], DATA[10:20], DATA[20:30]):
        response.write(piece)
    assert download.recent(0, 10) is None and download.recent(20, 10) == DATA[20:30]
    late = tee.read(download)
    assert late.received == DATA[:30]
    tee.worker.holding = True
    response.write(DATA[30:40])
    assert late.received == DATA[:40], "a caught-up reader waits for no write"
    assert first.received == DATA[:40]
    tee.worker.release()


def test_nothing_is_held_without_a_reader_or_past_the_budget(tee: Tee, monkeypatch: pytest.MonkeyPatch) -> None:
    """A download nobody reads holds nothing in memory; nor does one once the process-wide
    budget is spent: memory stays flat however many downloads run."""
    monkeypatch.setattr(tee_module, "PIECE", 1)
    download = tee.download()
    response = sized_response(tee)
    response.write(DATA[:10])
    assert download.recent(0, 10) is None
    reading = tee.read(download)
    monkeypatch.setattr(tee_module, "WINDOW_BUDGET", tee_module._HELD[0] + 10)
    response.write(DATA[10:20])
    response.write(DATA[20:30])
    assert download.recent(10, 10) == DATA[10:20] and download.recent(20, 10) is None
    assert reading.received == DATA[:30]


def test_reader_never_gets_the_last_byte_before_verification(tee: Tee) -> None:
    """Even with every byte on disk, the last one waits until the digest checked out."""
    download = tee.download()
    response = sized_response(tee)
    reading = tee.read(download)
    response.write(DATA)
    assert download.available == len(DATA)
    assert reading.received == DATA[:-1]
    assert pending(reading.done)
    response.finish()
    assert reading.received == DATA
    assert result_of(reading.done) is None
    assert tee.cached() == DATA


def test_late_reader_reads_the_committed_blob(tee: Tee) -> None:
    """A reader that starts after the download finished reads the committed blob to the end."""
    download = tee.download()
    tee.request().respond(full_response(DATA))
    assert download.complete
    reading = tee.read(download, 5)
    assert reading.received == DATA[5:]
    assert result_of(reading.done) is None


@pytest.mark.parametrize("wrong", [b"X" + DATA[1:], DATA[:-1] + b"X"])
def test_digest_mismatch_fails_discards_and_fails_readers(tee: Tee, wrong: bytes) -> None:
    """Bytes that do not hash to the digest: the download fails, its temp file is deleted,
    nothing is cached or linked, and readers fail without ever seeing a complete body."""
    download = tee.download()
    response = sized_response(tee)
    reading = tee.read(download)
    response.write(wrong)
    response.finish()
    assert len(reading.received) < len(DATA)
    assert failure_of(reading.done).check(DownloadFailed)
    assert download.failure is not None and download.failure.check(DownloadFailed)
    assert tee.cached() is None
    assert not tee.linked(NGINX)
    assert tee.tmp_files() == []
    assert tee.fetcher.downloads == {}


def test_more_bytes_than_announced_fails_the_download(tee: Tee) -> None:
    """An upstream sending more than its Content-Length (even if a prefix would verify) fails."""
    download = tee.download()
    response = sized_response(tee)
    reading = tee.read(download)
    response.write(DATA + b"extra")
    response.finish()
    assert failure_of(reading.done).check(DownloadFailed)
    assert download.failure is not None
    assert tee.cached() is None
    assert tee.tmp_files() == []


def test_body_that_keeps_ending_short_is_given_up(tee: Tee) -> None:
    """A body that ends cleanly but short is resumed a bounded number of times, then the download
    fails with nothing cached."""
    download = tee.download()
    first = sized_response(tee, 0)
    first.write(DATA[:10])
    first.finish()
    for _ in range(RESUME_ATTEMPTS):
        request = tee.request()
        assert request.offset == 10
        short = request.respond(FakeResponse(206, 0, {"Content-Range": f"bytes 10-{len(DATA) - 1}/{len(DATA)}"}))
        short.finish()
    assert len(tee.upstream.requests) == 1 + RESUME_ATTEMPTS
    assert download.failure is not None and download.failure.check(DownloadFailed)
    assert tee.cached() is None
    assert tee.tmp_files() == []


def test_upstream_error_fails_size_waiters(tee: Tee) -> None:
    """If the upstream refuses the blob, whoever waits for the size gets the upstream error."""
    download = tee.download()
    waiting = download.wait_size()
    tee.request().deferred.errback(UpstreamStatus(404, "gone"))
    error = failure_of(waiting).value
    assert isinstance(error, UpstreamStatus) and error.status == 404
    assert failure_of(download.wait_size()).check(UpstreamStatus)


# -- readers are independent ----------------------------------------------------------------------


def test_paused_reader_does_not_stop_others(tee: Tee) -> None:
    """A slow client (paused reader) holds back no one: the others and the download go on, and
    the slow one catches up when resumed."""
    download = tee.download()
    response = sized_response(tee)
    slow, fast = tee.read(download), tee.read(download)
    response.write(DATA[:20])
    slow.reader.pauseProducing()
    response.write(DATA[20:])
    response.finish()
    assert fast.received == DATA
    assert result_of(fast.done) is None
    assert download.complete
    assert slow.received == DATA[:20]
    slow.reader.resumeProducing()
    assert slow.received == DATA
    assert result_of(slow.done) is None


def test_reader_that_stops_does_not_stop_the_download(tee: Tee) -> None:
    """A client that leaves (stopProducing) ends its reader only: the blob is still committed
    and linked, and other readers finish."""
    download = tee.download()
    response = sized_response(tee)
    leaving, staying = tee.read(download), tee.read(download)
    response.write(DATA[:20])
    leaving.reader.stopProducing()
    assert result_of(leaving.done) is None
    assert leaving.consumer.producer is None, "the reader did not unregister from its client"
    response.write(DATA[20:])
    response.finish()
    assert leaving.received == DATA[:20]
    assert staying.received == DATA
    assert "stop" not in response.transport.calls
    assert tee.cached() == DATA
    assert tee.linked(NGINX)


def test_download_runs_to_the_end_with_no_reader_at_all(tee: Tee) -> None:
    """Nobody listening: the download still completes and caches the blob."""
    tee.download()
    response = sized_response(tee)
    response.write(DATA)
    response.finish()
    assert tee.cached() == DATA


def test_range_reader_in_the_middle_of_a_partial_download(tee: Tee) -> None:
    """A Range reader gets its slice as it arrives, all but its last byte, which waits for the
    blob to be verified: a Range over bytes that turn out wrong must look truncated too."""
    download = tee.download()
    response = sized_response(tee)
    reading = tee.read(download, offset=40, length=20)
    response.write(DATA[:45])
    assert reading.received == DATA[40:45]
    response.write(DATA[45:70])
    assert reading.received == DATA[40:59]
    assert not reading.done.called
    response.write(DATA[70:])
    response.finish()
    assert reading.received == DATA[40:60]
    assert result_of(reading.done) is None
    assert download.complete


def test_range_reader_ending_at_the_last_byte_waits_for_verification(tee: Tee) -> None:
    """A suffix Range is held back like a whole-body read: its last byte is the blob's."""
    download = tee.download()
    response = sized_response(tee)
    reading = tee.read(download, offset=len(DATA) - 8)
    response.write(DATA)
    assert reading.received == DATA[-8:-1]
    response.finish()
    assert reading.received == DATA[-8:]


# -- resuming ---------------------------------------------------------------------------------


def test_drop_mid_body_resumes_with_range_and_hash_continues(tee: Tee) -> None:
    """An upstream that drops mid-body is asked for the rest with Range; the 206 continues the
    file and the running hash, and the blob verifies and is cached."""
    download = tee.download()
    first = sized_response(tee)
    reading = tee.read(download)
    first.write(DATA[:33])
    first.drop()
    resume = tee.request()
    assert resume.offset == 33
    rest = resume.respond(FakeResponse(206, len(DATA) - 33, {"Content-Range": f"bytes 33-{len(DATA) - 1}/{len(DATA)}"}))
    rest.write(DATA[33:])
    rest.finish()
    assert download.complete
    assert tee.cached() == DATA
    assert reading.received == DATA
    assert result_of(reading.done) is None


def test_resume_waits_out_an_upstream_that_restarts(tee: Tee) -> None:
    """The upstream drops mid-body, then refuses connections for a moment (its pod restarting):
    the download asks again with growing delays, past the breaker that spares new requests, and
    finishes whole once the upstream is back; the reader never noticed."""
    download = tee.download()
    first = sized_response(tee)
    reading = tee.read(download)
    first.write(DATA[:33])
    first.drop()
    delays = []
    for _ in range(3):
        refused = tee.request()
        assert (refused.offset, refused.resuming) == (33, True)
        refused.deferred.errback(UpstreamUnavailable("upstream example.com is unreachable: connection refused"))
        asked = len(tee.upstream.requests)
        waited = 0.0
        while len(tee.upstream.requests) == asked:
            tee.clock.advance(0.05)
            waited += 0.05
        delays.append(round(waited, 2))
    assert delays == [0.25, 0.5, 1.0]
    rest = tee.request().respond(FakeResponse(206, len(DATA) - 33, {"Content-Range": f"bytes 33-{len(DATA) - 1}/{len(DATA)}"}))
    rest.write(DATA[33:])
    rest.finish()
    assert download.complete and download.failure is None
    assert tee.cached() == DATA
    assert reading.received == DATA


def test_resume_gives_up_after_its_budget(tee: Tee) -> None:
    """An upstream that stays unreachable after dropping a blob: the download gives up once its
    resume budget (30 s) is spent, caches nothing, and its reader fails."""
    download = tee.download()
    first = sized_response(tee)
    reading = tee.read(download)
    first.write(DATA[:33])
    first.drop()
    while download.failure is None and tee.clock.seconds() < 120:
        request = tee.request()
        if not request.deferred.called:
            request.deferred.errback(UpstreamUnavailable("upstream example.com is unreachable: connection refused"))
        tee.clock.advance(0.25)
    assert download.failure is not None and download.failure.check(UpstreamUnavailable)
    assert 25 <= tee.clock.seconds() <= 35
    assert tee.cached() is None
    assert reading.done.called


def test_200_instead_of_206_on_resume_skips_what_was_received(tee: Tee) -> None:
    """An upstream that ignores Range and sends the whole blob again: the bytes already on disk
    are skipped, not appended twice."""
    download = tee.download()
    first = sized_response(tee)
    first.write(DATA[:50])
    first.drop()
    resume = tee.request()
    assert resume.offset == 50
    again = resume.respond(FakeResponse(200, len(DATA)))
    again.write(DATA[:20])
    again.write(DATA[20:70])
    again.write(DATA[70:])
    again.finish()
    assert download.complete
    assert tee.cached() == DATA


def test_resume_answered_with_another_range_fails(tee: Tee) -> None:
    """A 206 that starts somewhere else than asked cannot be spliced in: the download fails."""
    download = tee.download()
    first = sized_response(tee)
    first.write(DATA[:50])
    first.drop()
    tee.request().respond(FakeResponse(206, len(DATA), {"Content-Range": f"bytes 0-{len(DATA) - 1}/{len(DATA)}"}))
    assert download.failure is not None and download.failure.check(DownloadFailed)
    assert tee.cached() is None
    assert tee.tmp_files() == []


def test_repeated_drops_are_given_up_with_nothing_cached(tee: Tee) -> None:
    """An upstream that keeps dropping is resumed a bounded number of times, then the download
    fails, its readers fail, and nothing is cached."""
    download = tee.download()
    first = sized_response(tee)
    reading = tee.read(download)
    first.write(DATA[:10])
    first.drop()
    for attempt in range(RESUME_ATTEMPTS):
        request = tee.request()
        partial = request.respond(FakeResponse(206, len(DATA) - request.offset, {
            "Content-Range": f"bytes {request.offset}-{len(DATA) - 1}/{len(DATA)}"
        }))
        partial.write(DATA[request.offset : request.offset + 5])
        partial.drop()
    assert len(tee.upstream.requests) == 1 + RESUME_ATTEMPTS
    assert download.failure is not None
    assert failure_of(reading.done).check(DownloadFailed)
    assert tee.cached() is None
    assert tee.tmp_files() == []


def test_idle_upstream_is_dropped_and_resumed(tee: Tee) -> None:
    """An upstream that goes quiet mid-body is cut after the idle timeout and resumed with Range;
    data arriving keeps the timer from firing."""
    download = tee.standalone()
    first = sized_response(tee)
    first.write(DATA[:10])
    tee.clock.advance(IDLE * 0.8)
    first.write(DATA[10:20])
    tee.clock.advance(IDLE * 0.8)
    assert "stop" not in first.transport.calls, "an upstream that was sending was cut"
    assert len(tee.upstream.requests) == 1
    tee.clock.advance(IDLE * 0.3)
    assert "stop" in first.transport.calls
    resume = tee.request()
    assert len(tee.upstream.requests) == 2 and resume.offset == 20
    rest = resume.respond(FakeResponse(206, len(DATA) - 20, {"Content-Range": f"bytes 20-{len(DATA) - 1}/{len(DATA)}"}))
    rest.write(DATA[20:])
    rest.finish()
    assert download.complete
    assert tee.cached() == DATA


def test_no_idle_timer_left_after_the_download(tee: Tee) -> None:
    """A finished download leaves no timer behind to cut anything later."""
    tee.standalone()
    tee.request().respond(full_response(DATA))
    assert tee.clock.getDelayedCalls() == []


# -- backpressure -----------------------------------------------------------------------------


BIG_CHUNK = 4 << 20  # 4 MiB
BIG = b"".join(bytes([i]) * BIG_CHUNK for i in range(8))  # 32 MiB, well past the high-water mark
BIG_DIGEST = Digest.parse(sha256(BIG))


def test_backpressure_pauses_upstream_while_the_disk_is_behind_and_resumes_after(tee: Tee) -> None:
    """When writes queue up past the high-water mark, the upstream transport is paused (once);
    when the queue drains it is resumed, and the blob still verifies."""
    download = tee.download(NGINX, BIG_DIGEST)
    response = tee.request().respond(FakeResponse(200, len(BIG)))
    tee.worker.holding = True
    response.write(BIG[:BIG_CHUNK])
    assert response.transport.calls == [], "paused for a queue under the high-water mark"
    for start in range(BIG_CHUNK, len(BIG), BIG_CHUNK):
        response.write(BIG[start : start + BIG_CHUNK])
    assert response.transport.calls == ["pause"]
    tee.worker.release()
    assert response.transport.calls == ["pause", "resume"]
    response.finish()
    assert download.complete
    assert tee.blobs.size(BIG_DIGEST) == len(BIG)


def test_backpressure_does_not_depend_on_readers(tee: Tee) -> None:
    """A paused reader never pauses the upstream: only the disk queue does."""
    download = tee.download()
    response = sized_response(tee)
    reading = tee.read(download)
    reading.reader.pauseProducing()
    response.write(DATA)
    response.finish()
    assert response.transport.calls == []
    assert download.complete


def test_upstream_paused_for_backpressure_is_not_idle(tee: Tee) -> None:
    """While the upstream is paused because the disk is behind, it is not 'idle'."""
    download = tee.standalone(NGINX, BIG_DIGEST)
    response = tee.request().respond(FakeResponse(200, len(BIG)))
    tee.worker.holding = True
    for start in range(0, 6 * BIG_CHUNK, BIG_CHUNK):
        response.write(BIG[start : start + BIG_CHUNK])
    assert response.transport.paused
    tee.clock.advance(IDLE * 2)
    try:
        assert "stop" not in response.transport.calls
        assert len(tee.upstream.requests) == 1
    finally:
        tee.worker.release()
    assert download.failure is None


def test_downloads_and_their_waiting_clients_are_counted(tee: Tee) -> None:
    """While a download runs: one download in flight, one gauge step per client streaming from
    it; when it ends, both gauges are back to zero and the outcome is counted."""
    download = tee.download()
    metrics = download.metrics
    response = sized_response(tee)
    first, second = tee.read(download), tee.read(download)
    response.write(DATA[:10])
    assert metrics.value("trow_downloads_in_flight") == 1
    assert metrics.value("trow_download_waiters") == 2
    response.write(DATA[10:])
    response.finish()
    assert first.received == DATA and second.received == DATA
    assert metrics.value("trow_downloads_in_flight") == 0
    assert metrics.value("trow_download_waiters") == 0
    assert metrics.value("trow_downloads_total", outcome="complete") == 1


def test_a_bad_download_counts_as_failed_and_releases_its_clients(tee: Tee) -> None:
    """A digest mismatch: a failed download, a digest error, and no client left counted."""
    download = tee.download()
    metrics = download.metrics
    response = sized_response(tee)
    reading = tee.read(download)
    response.write(b"X" + DATA[1:])
    response.finish()
    assert failure_of(reading.done).check(DownloadFailed)
    assert metrics.value("trow_downloads_total", outcome="failed") == 1
    assert metrics.value("trow_upstream_errors_total", upstream="docker.io", reason="digest") == 1
    assert metrics.value("trow_download_waiters") == 0


# -- error paths: a disk that refuses the blob, a resume answered wrongly, an abort ------------


def disk_full(source: str, digest: Digest) -> None:
    """BlobStore._commit_sync on a full disk: the fsync (or the link) fails, the temp file stays."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), source)


def upstream_errors(download: Download, host: str = "docker.io") -> dict[str, float]:
    """The upstream errors counted for C{host}, by reason (only those counted)."""
    metrics = download.metrics
    counts = {r: metrics.value("trow_upstream_errors_total", upstream=host, reason=r) for r in UPSTREAM_ERRORS}
    return {reason: count for reason, count in counts.items() if count}


def test_verified_download_that_cannot_be_stored_still_serves_every_reader(
    tee: Tee, monkeypatch: pytest.MonkeyPatch, logged: list[LogEvent]
) -> None:
    """The disk is full when a verified download is committed: every client streaming it still
    gets the whole, right body (a slow one too, from the file it holds open), but nothing joins
    the cache, the temp file is removed, and the failure is logged with the digest."""
    monkeypatch.setattr(tee.blobs, "_commit_sync", disk_full)
    download = tee.download()
    response = sized_response(tee)
    fast, slow = tee.read(download), tee.read(download)
    response.write(DATA[:40])
    slow.reader.pauseProducing()
    response.write(DATA[40:])
    response.finish()
    assert fast.received == DATA
    assert result_of(fast.done) is None
    assert slow.received == DATA[:40]
    assert tee.tmp_files() == [], "the temp file of the unstored download was left behind"
    slow.reader.resumeProducing()
    assert slow.received == DATA
    assert result_of(slow.done) is None
    assert tee.cached() is None
    assert not tee.linked(NGINX)
    assert tee.fetcher.downloads == {}
    [event] = [e for e in logged if e.get("log_failure") is not None]
    assert event["log_failure"].check(OSError) and event["log_failure"].value.errno == errno.ENOSPC
    assert str(DIGEST) in formatEvent(event) and "could not be stored" in formatEvent(event)


def test_a_blob_that_could_not_be_stored_is_fetched_again(tee: Tee, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a commit failed, the next get starts a new download (none is left stuck in the
    fetcher), and once the disk has room again the blob is cached."""
    monkeypatch.setattr(tee.blobs, "_commit_sync", disk_full)
    tee.download()
    tee.request().respond(full_response(DATA))
    assert tee.cached() is None
    monkeypatch.undo()
    again = tee.download()
    assert len(tee.upstream.requests) == 2
    tee.request().respond(full_response(DATA))
    assert again.complete and tee.cached() == DATA and tee.linked(NGINX)


def test_download_that_could_not_be_stored_is_not_counted_complete(tee: Tee, monkeypatch: pytest.MonkeyPatch) -> None:
    """trow_downloads_total{outcome="complete"} means verified and stored (trow.metrics): a
    download whose commit failed is not one; it counts as failed."""
    monkeypatch.setattr(tee.blobs, "_commit_sync", disk_full)
    download = tee.download()
    tee.request().respond(full_response(DATA))
    assert tee.cached() is None
    assert download.metrics.value("trow_downloads_total", outcome="complete") == 0
    assert download.metrics.value("trow_downloads_total", outcome="failed") == 1


def resumed_at_50(tee: Tee) -> tuple[Download, Reading, BlobRequest]:
    """A download whose upstream dropped after 50 bytes, a reader of it, and the resume request."""
    download = tee.download()
    first = sized_response(tee)
    reading = tee.read(download)
    first.write(DATA[:50])
    first.drop()
    resume = tee.request()
    assert resume.offset == 50 and resume.resuming
    return download, reading, resume


def partial(content_range: str | None) -> FakeResponse:
    """A 206 for the last 46 bytes, with C{content_range} as its Content-Range (None: none)."""
    return FakeResponse(206, len(DATA) - 50, {} if content_range is None else {"Content-Range": content_range})


def failed_cleanly(tee: Tee, download: Download, reading: Reading) -> None:
    """The download failed and left nothing: its reader cut with what it had (the first 50
    bytes), no byte past those taken in, nothing cached or linked, no temp file, and no longer
    in the fetcher."""
    assert download.failure is not None and download.failure.check(DownloadFailed)
    assert failure_of(reading.done).check(DownloadFailed)
    assert reading.received == DATA[:50]
    assert download.available == 50 and download.received_end == 50
    assert tee.cached() is None and not tee.linked(NGINX)
    assert tee.tmp_files() == []
    assert tee.fetcher.downloads == {}


ANOTHER_START = f"bytes 0-{len(DATA) - 1}/{len(DATA)}"
UNREADABLE = [
    pytest.param("bytes abc-def/xyz", id="malformed"),
    pytest.param(f"bytes */{len(DATA)}", id="unsatisfied-form"),
    pytest.param(None, id="missing"),
]


def test_resume_answered_with_another_start_fails_cleanly(tee: Tee) -> None:
    """A 206 to our resume (from 50) whose Content-Range starts elsewhere (at 0) cannot be
    spliced in: the download fails as soon as its headers are in, without taking any of its
    body, and cuts its reader."""
    download, reading, resume = resumed_at_50(tee)
    resume.respond(partial(ANOTHER_START))
    failed_cleanly(tee, download, reading)


@pytest.mark.parametrize("content_range", UNREADABLE)
def test_resume_answered_with_an_unreadable_content_range_fails_cleanly(tee: Tee, content_range: str | None) -> None:
    """A 206 to our resume whose Content-Range cannot be read (or is missing; RFC 9110 requires
    it on a single-range 206) does not say where its body starts: it is not taken as data. The
    download fails as soon as its headers are in, like one answered with another start."""
    download, reading, resume = resumed_at_50(tee)
    rest = resume.respond(partial(content_range))
    assert download.failure is not None, "the 206 was accepted"
    if not rest.ended:  # its body, should it have been taken: it must change nothing
        rest.write(DATA[50:])
        rest.finish()
    failed_cleanly(tee, download, reading)


@pytest.mark.parametrize("content_range", UNREADABLE)
def test_an_unreadable_content_range_never_caches_misplaced_bytes(tee: Tee, content_range: str | None) -> None:
    """The safety net under the check above: an upstream that answers our resume with a 206
    whose Content-Range cannot be read and sends the blob from its start: whether or not the
    answer is refused at once, the digest check fails the download, the reader never gets a
    whole body, and nothing is cached."""
    download, reading, resume = resumed_at_50(tee)
    rest = resume.respond(partial(content_range))
    if download.failure is None:
        rest.write(DATA)
        rest.finish()
    assert download.failure is not None and download.failure.check(DownloadFailed)
    assert failure_of(reading.done).check(DownloadFailed)
    assert len(reading.received) < len(DATA)
    assert tee.cached() is None and not tee.linked(NGINX)
    assert tee.tmp_files() == []


# Every bad Content-Range of a 206 to a resume: another start, or none that can be read.
BAD_RANGES = [pytest.param(ANOTHER_START, id="another-start"), *UNREADABLE]


@pytest.mark.parametrize("content_range", BAD_RANGES)
def test_a_bad_resume_answer_is_counted_as_an_upstream_error(tee: Tee, content_range: str | None) -> None:
    """The upstream's misbehaviour shows in trow_upstream_errors_total, besides the drop that
    led to the resume (truncated): a reason of its own (protocol, say), once."""
    download, reading, resume = resumed_at_50(tee)
    reading.done.addErrback(lambda _: None)  # the reader's end is not what this test looks at
    resume.respond(partial(content_range))
    assert download.failure is not None, "the 206 was accepted"
    errors = upstream_errors(download)
    assert errors.pop("truncated") == 1
    assert sum(errors.values()) == 1, f"the bad 206 was not counted as an upstream error: {errors}"


@pytest.mark.parametrize("content_range", BAD_RANGES)
def test_a_refused_resume_answer_is_not_left_unread(tee: Tee, content_range: str | None) -> None:
    """The refused 206's body is not left on its connection unread (twisted pauses a response's
    connection until someone takes its body, so a pooled connection would stay stuck): it is
    taken and dropped, or the connection is cut."""
    download, reading, resume = resumed_at_50(tee)
    reading.done.addErrback(lambda _: None)  # the reader's end is not what this test looks at
    rest = resume.respond(partial(content_range))
    assert download.failure is not None, "the 206 was accepted"
    assert rest.protocol is not None or "stop" in rest.transport.calls


@pytest.mark.parametrize("disk_slow", [False, True], ids=["file-open", "file-opening"])
def test_abort_after_the_headers_before_any_body_byte(tee: Tee, disk_slow: bool) -> None:
    """trow stops (Fetcher.stop aborts every download, as at shutdown) when the upstream's
    headers are in but no byte of the body yet, with the temp file open, or still being created
    on the disk worker: the upstream connection is cut, the readers fail without a byte, nothing
    is cached, no temp file stays, and the download counts as abandoned."""
    download = tee.download()
    metrics = download.metrics
    tee.worker.holding = disk_slow
    response = sized_response(tee)
    readings = [] if disk_slow else [tee.read(download), tee.read(download, offset=10, length=20)]
    assert metrics.value("trow_download_waiters") == len(readings)
    stopped = tee.fetcher.stop()
    tee.worker.release()
    result_of(stopped)
    assert "stop" in response.transport.calls, "the upstream connection was not cut"
    assert download.failure is not None and download.failure.check(DownloadFailed)
    for reading in readings:
        assert reading.received == b""
        assert failure_of(reading.done).check(DownloadFailed)
    if disk_slow:
        # Whoever waited for the size (it came with the headers) and starts reading now gets
        # nothing (the temp file is gone: the reader fails opening it).
        late = tee.read(download)
        assert late.received == b"" and failure_of(late.done) is not None
    assert tee.cached() is None and not tee.linked(NGINX)
    assert tee.tmp_files() == []
    assert tee.fetcher.downloads == {}
    assert metrics.value("trow_downloads_total", outcome="abandoned") == 1
    assert metrics.value("trow_download_waiters") == 0
    assert metrics.value("trow_downloads_in_flight") == 0
