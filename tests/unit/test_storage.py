"""trow.storage: the blob store, upload files, sqlite metadata, the hashing writer, range producer."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import psycopg
import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer
from twisted.internet.interfaces import IConsumer, IPushProducer

import trow.storage.uploads as uploads_module
from tests.unit.harness import result_of
from trow.registry.names import Digest
from trow.storage.blobs import BlobStore, HashingWriter, SpooledBody, hash_file
from trow.storage.metadata import ManifestRecord, Metadata, UploadRecord
from trow.storage.sqlite import SCHEMA_VERSION, SchemaTooNew, SqliteMetadata
from tests.unit.harness import open_postgres
from trow.storage.postgres import PostgresMetadata
from tests.unit.test_gc import CACHE, HOUR, OTHER_CACHE, World, blob, digest, run, world
import trow.registry.service as service
from trow.registry.service import Registry
from trow.storage.reader import CHUNK_SIZE, FileRangeProducer
from trow.storage.uploads import UploadFiles
from trow.workers import InlineWorker

__all__ = ["world"]

DATA = b"the quick brown fox jumps over the lazy dog"


def digest_of(data: bytes, algorithm: str = "sha256") -> Digest:
    """The digest of C{data}."""
    return Digest.of(data, algorithm)


# -- workers and producers the tests drive by hand ---------------------------------------------


class ManualWorker:
    """A worker whose calls run only when the test says so, oldest first."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []
        self.calls = 0

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        self.queue.append((lambda *a: f(*a, **kwargs), args, d))
        self.calls += 1
        return d

    def step(self) -> None:
        """Run every call queued so far, oldest first, and fire their Deferreds.

        A writer queues a batch as two calls at once (write and hash), so one step is one batch;
        calls queued by the callbacks wait for the next step.
        """
        current, self.queue = self.queue, []
        for f, args, d in current:
            try:
                result = f(*args)
            except BaseException:
                d.errback(Failure())
            else:
                d.callback(result)


@implementer(IPushProducer)
class FakeProducer:
    """Records pause and resume calls, like a TCP transport would receive them."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


@implementer(IConsumer)
class FakeConsumer:
    """Collects writes; can pause its producer after each write, like a full send buffer."""

    def __init__(self, pause_after_write: bool = False) -> None:
        self.data: list[bytes] = []
        self.producer: Any = None
        self.unregistered = False
        self.pause_after_write = pause_after_write

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.unregistered = True
        self.producer = None

    def write(self, data: bytes) -> None:
        self.data.append(data)
        if self.pause_after_write and self.producer is not None:
            self.producer.pauseProducing()


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    """A blob store on a fresh data dir, doing its work inline."""
    return BlobStore(str(tmp_path / "data"), InlineWorker())


@pytest.fixture
def uploads(tmp_path: Path, store: BlobStore) -> UploadFiles:
    """Upload session files in the same data dir as C{store}."""
    return UploadFiles(str(tmp_path / "data"), store, InlineWorker())


class Clock:
    """A clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """A hand-driven clock for the metadata's timestamps."""
    return Clock()


@pytest.fixture
def postgres_metadata(pg_schema_url: str, clock: Clock) -> Iterator[Metadata]:
    """A fresh PostgreSQL metadata store (for what only that backend has)."""
    db = open_postgres(pg_schema_url, InlineWorker(), clock)
    yield db
    db.close()


@pytest.fixture(params=["sqlite", "postgres"])
def metadata(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[Metadata]:
    """A fresh metadata store on C{clock}, closed afterwards: every test that uses it runs on
    both backends, sqlite and PostgreSQL (a fresh schema on the test server)."""
    db: Metadata
    if request.param == "sqlite":
        db = SqliteMetadata(str(tmp_path / "trow.db"), InlineWorker(), clock=clock)
    else:
        db = open_postgres(request.getfixturevalue("pg_schema_url"), InlineWorker(), clock)
    yield db
    db.close()


def spooled(store: BlobStore, data: bytes) -> SpooledBody:
    """A complete spooled request body holding C{data}."""
    spool = store.spool(None)
    spool.write(data)
    body = result_of(spool.claim())
    assert isinstance(body, SpooledBody)
    return body


# -- BlobStore ---------------------------------------------------------------------------------


def test_store_creates_its_directories(store: BlobStore) -> None:
    """A new store has blobs/ and tmp/."""
    assert os.path.isdir(store.blob_root) and os.path.isdir(store.tmp_root)


def test_blob_path_layout(store: BlobStore) -> None:
    """Blobs live at blobs/<algorithm>/<first two hex>/<hex>."""
    d = digest_of(DATA)
    assert store.path(d) == os.path.join(store.root, "blobs", "sha256", d.hex[:2], d.hex)


def test_put_bytes_then_read(store: BlobStore) -> None:
    """put_bytes stores content that read_bytes, size and open give back."""
    d = digest_of(DATA)
    result_of(store.put_bytes(DATA, d))
    assert result_of(store.read_bytes(d)) == DATA
    assert store.size(d) == len(DATA)
    handle = store.open(d)
    assert handle is not None
    with handle:
        assert handle.read() == DATA


def test_put_bytes_twice_is_harmless(store: BlobStore) -> None:
    """Putting the same content again keeps the one copy and leaves no temp file."""
    d = digest_of(DATA)
    result_of(store.put_bytes(DATA, d))
    result_of(store.put_bytes(DATA, d))
    assert result_of(store.read_bytes(d)) == DATA
    assert os.listdir(store.tmp_root) == []


def test_put_bytes_leaves_no_temp_file(store: BlobStore) -> None:
    """A put goes through tmp/ and leaves nothing there."""
    result_of(store.put_bytes(DATA, digest_of(DATA)))
    assert os.listdir(store.tmp_root) == []


def test_unknown_blob(store: BlobStore) -> None:
    """A blob that is not stored has no size, no handle, no bytes."""
    d = digest_of(b"absent")
    assert store.size(d) is None
    assert store.open(d) is None
    assert result_of(store.read_bytes(d)) is None


def test_commit_moves_the_file_into_place(store: BlobStore) -> None:
    """commit renames a temp file to the blob's path; the temp file is gone."""
    source = store.temp_path()
    Path(source).write_bytes(DATA)
    d = digest_of(DATA)
    result_of(store.commit(source, d))
    assert not os.path.exists(source)
    assert Path(store.path(d)).read_bytes() == DATA


def test_commit_of_existing_blob_discards_the_source(store: BlobStore) -> None:
    """Committing content that is already stored drops the new file and keeps the stored one."""
    d = digest_of(DATA)
    result_of(store.put_bytes(DATA, d))
    source = store.temp_path()
    Path(source).write_bytes(DATA)
    result_of(store.commit(source, d))
    assert not os.path.exists(source)
    assert Path(store.path(d)).read_bytes() == DATA


def test_temp_paths_are_unique_and_in_tmp(store: BlobStore) -> None:
    """temp_path names fresh files inside tmp/ with the given prefix."""
    a, b = store.temp_path("x"), store.temp_path("x")
    assert a != b
    assert os.path.dirname(a) == store.tmp_root
    assert os.path.basename(a).startswith("x-")


def test_clean_tmp_removes_files_and_directories(store: BlobStore) -> None:
    """clean_tmp empties tmp/ and counts what it removed."""
    Path(store.temp_path()).write_bytes(b"partial")
    Path(store.temp_path()).write_bytes(b"partial")
    nested = Path(store.temp_path())
    nested.mkdir()
    (nested / "inner").write_bytes(b"x")
    assert store.clean_tmp() == 3
    assert os.listdir(store.tmp_root) == []


def test_clean_tmp_keeps_blobs(store: BlobStore) -> None:
    """Cleaning tmp/ never touches committed blobs; on an empty tmp/ it removes nothing."""
    d = digest_of(DATA)
    result_of(store.put_bytes(DATA, d))
    assert store.clean_tmp() == 0
    assert store.size(d) == len(DATA)


def test_delete_blob(store: BlobStore) -> None:
    """delete removes a stored blob; deleting it again is harmless."""
    d = digest_of(DATA)
    result_of(store.put_bytes(DATA, d))
    result_of(store.delete(d))
    assert store.size(d) is None
    result_of(store.delete(d))


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_hash_file(store: BlobStore, algorithm: str) -> None:
    """hash_file hashes a whole file with either algorithm."""
    path = store.temp_path()
    Path(path).write_bytes(DATA)
    assert result_of(store.hash_file(path, algorithm)) == hashlib.new(algorithm, DATA).hexdigest()


def test_hash_file_with_limit(tmp_path: Path) -> None:
    """hash_file can hash only the first bytes of a file."""
    path = tmp_path / "f"
    path.write_bytes(DATA)
    assert hash_file(str(path), "sha256", limit=9) == hashlib.sha256(DATA[:9]).hexdigest()


def test_check_writable_leaves_nothing(store: BlobStore) -> None:
    """The readiness probe writes and removes its file."""
    result_of(store.check_writable())
    assert os.listdir(store.tmp_root) == []


def test_take_spooled_reads_and_deletes(store: BlobStore) -> None:
    """take_spooled returns a spooled body's bytes and removes its file."""
    body = spooled(store, DATA)
    assert result_of(store.take_spooled(body)) == DATA
    assert not os.path.exists(body.path)


# -- Spool -------------------------------------------------------------------------------------


def test_spool_claim_gives_file_size_and_hash(store: BlobStore) -> None:
    """Claiming a spool gives its file, its size and the sha256 computed on arrival."""
    spool = store.spool(None)
    spool.write(DATA[:10])
    spool.write(DATA[10:])
    assert spool.tell() == spool.size == len(DATA)
    body = result_of(spool.claim())
    assert Path(body.path).read_bytes() == DATA
    assert body.size == len(DATA)
    assert body.sha256.hexdigest() == hashlib.sha256(DATA).hexdigest()
    assert os.path.dirname(body.path) == store.tmp_root


def test_spool_never_reads_into_memory(store: BlobStore) -> None:
    """twisted.web's read() and seek() on a spool do nothing: bodies are only claimed."""
    spool = store.spool(None)
    spool.write(DATA)
    assert spool.seek(0) == 0
    assert spool.read() == b""


def test_unclaimed_spool_is_deleted_on_close(store: BlobStore) -> None:
    """A spool closed without a claim (the client went away) removes its file."""
    spool = store.spool(None)
    spool.write(DATA)
    spool.close()
    assert os.listdir(store.tmp_root) == []


def test_claimed_spool_survives_close(store: BlobStore) -> None:
    """Closing a claimed spool (twisted.web does at request end) leaves the claimed file alone."""
    spool = store.spool(None)
    spool.write(DATA)
    body = result_of(spool.claim())
    spool.close()
    assert Path(body.path).read_bytes() == DATA


def test_spool_claims_once(store: BlobStore) -> None:
    """A spool can be claimed only once."""
    spool = store.spool(None)
    result_of(spool.claim())
    with pytest.raises(RuntimeError):
        spool.claim()


def test_claim_waits_for_pending_writes(store: BlobStore) -> None:
    """A claim fires only once every received byte is on disk and hashed."""
    worker = ManualWorker()
    spool = BlobStore(store.root, worker).spool(None)
    spool.write(DATA)
    claimed = spool.claim()
    assert not claimed.called
    worker.step()
    body = result_of(claimed)
    assert Path(body.path).read_bytes() == DATA
    assert body.sha256.hexdigest() == hashlib.sha256(DATA).hexdigest()


def test_close_waits_for_pending_writes_before_deleting(store: BlobStore) -> None:
    """An abandoned spool is deleted only after the write in flight is done with the file."""
    worker = ManualWorker()
    spool = BlobStore(store.root, worker).spool(None)
    spool.write(DATA)
    spool.close()
    assert os.path.exists(spool.path)
    worker.step()
    assert not os.path.exists(spool.path)


def test_spooled_body_discard(store: BlobStore) -> None:
    """discard removes the file and may be called twice."""
    body = spooled(store, DATA)
    body.discard()
    body.discard()
    assert not os.path.exists(body.path)


# -- HashingWriter: order, batching, backpressure ------------------------------------------------


def test_writer_keeps_order_across_batches(tmp_path: Path) -> None:
    """Chunks reach the file and the hasher in the order written, one batch at a time."""
    worker = ManualWorker()
    with open(tmp_path / "out", "wb") as handle:
        writer = HashingWriter(worker, handle, [hashlib.sha256()])
        writer.write(b"one ")
        writer.write(b"two ")
        writer.write(b"three")
        assert len(worker.queue) == 2  # one batch in flight: its write and its hash
        worker.step()
        assert len(worker.queue) == 2  # the two queued chunks go as the next batch
        worker.step()
        assert worker.queue == []
    assert (tmp_path / "out").read_bytes() == b"one two three"
    assert writer.hashers[0].hexdigest() == hashlib.sha256(b"one two three").hexdigest()
    assert writer.size == len(b"one two three")
    assert worker.calls == 4


def test_writer_ignores_empty_writes() -> None:
    """An empty write queues no work."""
    worker = ManualWorker()
    writer = HashingWriter(worker, io.BytesIO())
    writer.write(b"")
    assert worker.queue == []
    assert writer.size == 0


def test_drain_waits_for_every_write() -> None:
    """drain fires only after everything queued so far has been written."""
    worker = ManualWorker()
    out = io.BytesIO()
    writer = HashingWriter(worker, out)
    writer.write(b"a")
    writer.write(b"b")
    fired: list[object] = []
    writer.drain().addCallback(fired.append)
    worker.step()
    assert fired == []
    worker.step()
    assert fired == [None]
    assert out.getvalue() == b"ab"


def test_drain_when_idle_fires_at_once() -> None:
    """drain on a writer with nothing queued fires immediately."""
    writer = HashingWriter(ManualWorker(), io.BytesIO())
    assert result_of(writer.drain()) is None


def test_writer_pauses_producer_above_high_water() -> None:
    """When more than high_water bytes wait, the producer is paused, once."""
    worker = ManualWorker()
    producer = FakeProducer()
    writer = HashingWriter(worker, io.BytesIO(), high_water=10, low_water=4)
    writer.set_producer(producer)
    writer.write(b"x" * 6)
    assert producer.events == []
    writer.write(b"x" * 6)
    assert producer.events == ["pause"]
    writer.write(b"x" * 6)
    assert producer.events == ["pause"]


def test_writer_resumes_producer_after_queue_drains() -> None:
    """The paused producer is resumed only once the queue falls to low_water."""
    worker = ManualWorker()
    producer = FakeProducer()
    out = io.BytesIO()
    writer = HashingWriter(worker, out, high_water=10, low_water=4)
    writer.set_producer(producer)
    for _ in range(3):
        writer.write(b"y" * 6)  # 18 bytes waiting: paused
    worker.step()  # first batch (6 bytes) written; 12 still wait, above low water
    assert producer.events == ["pause"]
    worker.step()  # the rest written: the queue is empty
    assert producer.events == ["pause", "resume"]
    assert out.getvalue() == b"y" * 18


def test_writer_without_producer_never_pauses() -> None:
    """With no producer registered, a long queue is simply written."""
    worker = ManualWorker()
    out = io.BytesIO()
    writer = HashingWriter(worker, out, high_water=4, low_water=1)
    for _ in range(5):
        writer.write(b"zz")
    while worker.queue:
        worker.step()
    assert out.getvalue() == b"z" * 10


def test_replacing_a_paused_producer_resumes_it() -> None:
    """Taking a paused producer away resumes it: nobody else would."""
    worker = ManualWorker()
    producer = FakeProducer()
    writer = HashingWriter(worker, io.BytesIO(), high_water=2, low_water=1)
    writer.set_producer(producer)
    writer.write(b"abc")
    assert producer.events == ["pause"]
    writer.set_producer(None)
    assert producer.events == ["pause", "resume"]
    worker.step()
    assert producer.events == ["pause", "resume"]


def test_write_failure_reaches_drain_and_resumes_producer() -> None:
    """A failed write is reported by drain, the paused producer is resumed, later writes are
    dropped."""
    worker = ManualWorker()
    producer = FakeProducer()
    handle = io.BytesIO()
    handle.close()  # every write raises ValueError
    writer = HashingWriter(worker, handle, high_water=2, low_water=1)
    writer.set_producer(producer)
    writer.write(b"abc")
    errors: list[Failure] = []
    writer.drain().addErrback(errors.append)
    worker.step()
    assert len(errors) == 1 and errors[0].check(ValueError)
    assert producer.events == ["pause", "resume"]
    writer.write(b"more")
    assert worker.queue == []


def test_spool_pauses_its_producer(store: BlobStore) -> None:
    """A spool pauses the transport it reads from when its writes fall behind."""
    worker = ManualWorker()
    producer = FakeProducer()
    spool = BlobStore(store.root, worker).spool(producer)
    spool.write(b"x" * (9 << 20))  # over the 8 MiB high-water mark
    assert producer.events == ["pause"]
    worker.step()
    assert producer.events == ["pause", "resume"]
    spool.close()
    assert os.listdir(store.tmp_root) == []


# -- UploadFiles -------------------------------------------------------------------------------


def append(uploads: UploadFiles, upload_id: str, body: SpooledBody | bytes) -> "Deferred[int]":
    """Write C{body} where the session's file ends (the offset a single process would record)."""
    return uploads.append(upload_id, body, uploads.size(upload_id) or 0)


def test_create_makes_an_empty_session(uploads: UploadFiles) -> None:
    """A new session has an empty file: offset 0."""
    result_of(uploads.create("u1"))
    assert uploads.size("u1") == 0
    assert os.path.isfile(uploads.path("u1"))


def test_unknown_session_has_no_size(uploads: UploadFiles) -> None:
    """A session without a file has no offset."""
    assert uploads.size("nope") is None


def test_append_bytes_returns_new_offset(uploads: UploadFiles) -> None:
    """Appending returns the new offset, and the file holds the chunks in order."""
    result_of(uploads.create("u1"))
    assert result_of(append(uploads, "u1", b"abc")) == 3
    assert result_of(append(uploads, "u1", b"defg")) == 7
    assert Path(uploads.path("u1")).read_bytes() == b"abcdefg"


def test_digest_from_memory(uploads: UploadFiles, store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sha256 of a session comes from the running hasher, without reading the file again."""
    result_of(uploads.create("u1"))
    result_of(append(uploads, "u1", DATA[:5]))
    result_of(append(uploads, "u1", DATA[5:]))
    monkeypatch.setattr(store, "hash_file", lambda *a: pytest.fail("the file was hashed again"))
    assert result_of(uploads.digest_hex("u1", "sha256", uploads.size("u1") or 0)) == hashlib.sha256(DATA).hexdigest()


def test_digest_after_forgetting_the_hasher(uploads: UploadFiles, store: BlobStore) -> None:
    """Without the in-memory hasher (as after a restart) the file is hashed again, correctly."""
    result_of(uploads.create("u1"))
    result_of(append(uploads, "u1", DATA))
    uploads.forget("u1")
    hashed: list[str] = []
    real = store.hash_file

    def counting(path: str, algorithm: str, limit: int | None = None) -> "Deferred[str]":
        hashed.append(path)
        return real(path, algorithm, limit)

    store.hash_file = counting  # type: ignore[method-assign]
    assert result_of(uploads.digest_hex("u1", "sha256", uploads.size("u1") or 0)) == hashlib.sha256(DATA).hexdigest()
    assert hashed == [uploads.path("u1")]


def test_append_after_forgetting_the_hasher(uploads: UploadFiles) -> None:
    """Appending to a session whose hasher was lost still ends with the right digest."""
    result_of(uploads.create("u1"))
    result_of(append(uploads, "u1", DATA[:7]))
    uploads.forget("u1")
    result_of(append(uploads, "u1", DATA[7:]))
    assert result_of(uploads.digest_hex("u1", "sha256", uploads.size("u1") or 0)) == hashlib.sha256(DATA).hexdigest()


def test_digest_after_restart(tmp_path: Path, uploads: UploadFiles, store: BlobStore) -> None:
    """A new UploadFiles over the same directory (a restarted process) resumes a session."""
    result_of(uploads.create("u1"))
    result_of(append(uploads, "u1", DATA[:7]))
    again = UploadFiles(str(tmp_path / "data"), store, InlineWorker())
    assert again.size("u1") == 7
    result_of(append(again, "u1", DATA[7:]))
    assert result_of(again.digest_hex("u1", "sha256", again.size("u1") or 0)) == hashlib.sha256(DATA).hexdigest()


def test_digest_sha512(uploads: UploadFiles) -> None:
    """A sha512 digest of a session is computed from its file."""
    result_of(uploads.create("u1"))
    result_of(append(uploads, "u1", DATA))
    assert result_of(uploads.digest_hex("u1", "sha512", uploads.size("u1") or 0)) == hashlib.sha512(DATA).hexdigest()


def test_first_spooled_chunk_becomes_the_session_file(uploads: UploadFiles, store: BlobStore) -> None:
    """A spooled first chunk is moved, not copied, and its arrival hash is adopted."""
    result_of(uploads.create("u1"))
    body = spooled(store, DATA)
    assert result_of(append(uploads, "u1", body)) == len(DATA)
    assert not os.path.exists(body.path)
    assert Path(uploads.path("u1")).read_bytes() == DATA
    assert result_of(uploads.digest_hex("u1", "sha256", uploads.size("u1") or 0)) == hashlib.sha256(DATA).hexdigest()


def test_later_spooled_chunk_is_appended(uploads: UploadFiles, store: BlobStore) -> None:
    """A spooled chunk after the first is appended and its spool file removed."""
    result_of(uploads.create("u1"))
    result_of(append(uploads, "u1", DATA[:4]))
    body = spooled(store, DATA[4:])
    assert result_of(append(uploads, "u1", body)) == len(DATA)
    assert not os.path.exists(body.path)
    assert Path(uploads.path("u1")).read_bytes() == DATA
    assert result_of(uploads.digest_hex("u1", "sha256", uploads.size("u1") or 0)) == hashlib.sha256(DATA).hexdigest()


class _FailingAppend:
    """An append-mode file whose second write fails, like a disk filling up mid-chunk."""

    def __init__(self, real: IO[bytes]) -> None:
        self._real = real
        self._writes = 0

    def __enter__(self) -> "_FailingAppend":
        return self

    def __exit__(self, *exc: object) -> None:
        self._real.close()

    def tell(self) -> int:
        return self._real.tell()

    def seek(self, offset: int) -> int:
        return self._real.seek(offset)

    def truncate(self, size: int) -> int:
        return self._real.truncate(size)

    def write(self, data: bytes) -> int:
        self._writes += 1
        if self._writes == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._real.write(data)


@pytest.fixture
def disk_full_once(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Calling the result makes the next chunk appended to a session file fail on its second
    write, as a disk filling up would; later appends work again."""
    import builtins

    real_open = builtins.open
    armed = [False]

    def fake_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(path, mode, *args, **kwargs)
        if mode == "r+b" and armed[0]:
            armed[0] = False
            return _FailingAppend(handle)
        return handle

    def arm() -> None:
        armed[0] = True

    monkeypatch.setattr(uploads_module, "open", fake_open, raising=False)
    monkeypatch.setattr(uploads_module, "_CHUNK", 4)  # several writes per chunk
    return arm


def test_failed_append_keeps_the_offset(uploads: UploadFiles, store: BlobStore, disk_full_once: Callable[[], None]) -> None:
    """A chunk that fails half-way is cut back off: the offset stays where the client saw it."""
    result_of(uploads.create("u1"))
    result_of(append(uploads, "u1", DATA[:4]))
    disk_full_once()
    with pytest.raises(OSError):
        result_of(append(uploads, "u1", spooled(store, DATA[4:])))
    assert uploads.size("u1") == 4
    assert Path(uploads.path("u1")).read_bytes() == DATA[:4]


def test_retry_after_failed_append_has_right_digest(uploads: UploadFiles, store: BlobStore, disk_full_once: Callable[[], None]) -> None:
    """After a failed chunk is retried, the session's digest is the digest of its file."""
    result_of(uploads.create("u1"))
    result_of(append(uploads, "u1", DATA[:4]))
    disk_full_once()
    with pytest.raises(OSError):
        result_of(append(uploads, "u1", spooled(store, DATA[4:])))
    result_of(append(uploads, "u1", spooled(store, DATA[4:])))
    assert Path(uploads.path("u1")).read_bytes() == DATA
    assert result_of(uploads.digest_hex("u1", "sha256", uploads.size("u1") or 0)) == hashlib.sha256(DATA).hexdigest()


def test_a_chunk_is_written_at_the_offset_given(uploads: UploadFiles) -> None:
    """A chunk goes where the metadata says the session ends, over whatever lies past it (a peer's
    chunk that failed half-way), not after the end of the file."""
    result_of(uploads.create("u1"))
    result_of(uploads.append("u1", b"abc", 0))
    with open(uploads.path("u1"), "ab") as handle:
        handle.write(b"garbage")
    assert result_of(uploads.append("u1", b"def", 3)) == 6
    assert Path(uploads.path("u1")).read_bytes() == b"abcdef"
    assert result_of(uploads.digest_hex("u1", "sha256", 6)) == hashlib.sha256(b"abcdef").hexdigest()


def test_digest_covers_the_offset_only(uploads: UploadFiles) -> None:
    """Without the running hasher (another replica wrote the chunks), the digest is of the first
    C{offset} bytes, and truncate cuts the file there before it is committed."""
    result_of(uploads.create("u1"))
    result_of(uploads.append("u1", DATA, 0))
    uploads.forget("u1")
    assert result_of(uploads.digest_hex("u1", "sha256", 9)) == hashlib.sha256(DATA[:9]).hexdigest()
    result_of(uploads.truncate("u1", 9))
    assert Path(uploads.path("u1")).read_bytes() == DATA[:9]


def test_remove_orphans_by_age_spares_young_files(uploads: UploadFiles) -> None:
    """On a shared volume, cleaning removes unknown session files only once they are old: a peer
    may have just created one."""
    for upload_id in ("young", "old", "known"):
        result_of(uploads.create(upload_id))
    long_ago = os.stat(uploads.path("old")).st_mtime - 7200
    for upload_id in ("old", "known"):
        os.utime(uploads.path(upload_id), (long_ago, long_ago))
    assert uploads.remove_orphans({"known"}, older_than=3600) == 1
    assert sorted(uploads.existing_ids()) == ["known", "young"]


def test_delete_session(uploads: UploadFiles) -> None:
    """delete removes the session's file; deleting again is harmless."""
    result_of(uploads.create("u1"))
    result_of(append(uploads, "u1", DATA))
    result_of(uploads.delete("u1"))
    assert uploads.size("u1") is None
    result_of(uploads.delete("u1"))


def test_remove_orphans(uploads: UploadFiles) -> None:
    """Start-up cleaning removes session files and directories the metadata does not know."""
    for upload_id in ("keep", "orphan"):
        result_of(uploads.create(upload_id))
    os.mkdir(os.path.join(uploads.root, "stray-dir"))
    assert sorted(uploads.existing_ids()) == ["keep", "orphan", "stray-dir"]
    assert uploads.remove_orphans({"keep"}) == 2
    assert uploads.existing_ids() == ["keep"]


# -- Metadata ----------------------------------------------------------------------------------

M1 = "sha256:" + "1" * 64
M2 = "sha256:" + "2" * 64
M3 = "sha256:" + "3" * 64
SUBJECT = "sha256:" + "5" * 64


def record(repo: str, digest: str, **extra: Any) -> ManifestRecord:
    """A manifest record of an OCI image manifest of 100 bytes."""
    return ManifestRecord(repo=repo, digest=digest, media_type="application/vnd.oci.image.manifest.v1+json", size=100, **extra)


def test_blob_links(metadata: Metadata) -> None:
    """A linked blob is visible in its repository only; unlinking reports whether it was there."""
    result_of(metadata.link_blob("r", M1))
    result_of(metadata.link_blob("r", M1))  # idempotent
    assert result_of(metadata.blob_linked("r", M1))
    assert not result_of(metadata.blob_linked("s", M1))
    assert result_of(metadata.unlink_blob("r", M1)) is True
    assert result_of(metadata.unlink_blob("r", M1)) is False
    assert not result_of(metadata.blob_linked("r", M1))


def test_blobs_linked_is_the_subset_present(metadata: Metadata) -> None:
    """blobs_linked answers which of several digests the repository has."""
    result_of(metadata.link_blob("r", M1))
    result_of(metadata.link_blob("r", M3))
    assert result_of(metadata.blobs_linked("r", [M1, M2, M3])) == {M1, M3}
    assert result_of(metadata.blobs_linked("r", [])) == set()


def test_repo_exists(metadata: Metadata) -> None:
    """A repository exists once it holds a blob or a manifest."""
    assert not result_of(metadata.repo_exists("r"))
    result_of(metadata.link_blob("r", M1))
    result_of(metadata.put_manifest(record("s", M2), []))
    assert result_of(metadata.repo_exists("r"))
    assert result_of(metadata.repo_exists("s"))
    assert not result_of(metadata.repo_exists("t"))


def test_catalog(metadata: Metadata) -> None:
    """The catalog lists repositories with blobs or manifests once each, sorted, paged."""
    result_of(metadata.link_blob("c", M1))
    result_of(metadata.link_blob("a", M1))
    result_of(metadata.put_manifest(record("b", M2), []))
    result_of(metadata.put_manifest(record("a", M2), []))
    assert result_of(metadata.catalog(None, None)) == ["a", "b", "c"]
    assert result_of(metadata.catalog(2, None)) == ["a", "b"]
    assert result_of(metadata.catalog(None, "a")) == ["b", "c"]


def listed(metadata: Metadata) -> list[str]:
    """The table of repositories, read directly."""
    rows = result_of(metadata._read(lambda c: c.execute("SELECT repo FROM repositories ORDER BY repo").fetchall()))  # type: ignore[attr-defined]
    return [r[0] for r in rows]


def test_repositories_follow_links_and_manifests(metadata: Metadata) -> None:
    """A repository is listed from its first blob link or manifest to the removal of its last
    one, whichever kind goes last; a delete that leaves a row keeps it listed."""
    result_of(metadata.link_blob("blobs", M1))
    result_of(metadata.link_blob("blobs", M2))
    result_of(metadata.put_manifest(record("both", M1), [M2], ["v1"]))
    result_of(metadata.link_blob("both", M2))
    result_of(metadata.put_manifest(record("images", M1), []))
    assert listed(metadata) == ["blobs", "both", "images"]
    # The same rows again (ON CONFLICT paths) change nothing.
    result_of(metadata.link_blob("blobs", M1))
    result_of(metadata.put_manifest(record("images", M1), []))
    assert listed(metadata) == ["blobs", "both", "images"]

    assert result_of(metadata.unlink_blob("blobs", M1))
    assert listed(metadata) == ["blobs", "both", "images"]
    assert result_of(metadata.unlink_blob("blobs", M2))
    assert listed(metadata) == ["both", "images"]
    assert not result_of(metadata.repo_exists("blobs"))

    assert result_of(metadata.delete_manifest("both", M1))
    assert listed(metadata) == ["both", "images"]  # its blob link is left
    assert result_of(metadata.unlink_blob("both", M2))
    assert result_of(metadata.delete_manifest("images", M1))
    assert listed(metadata) == []
    assert result_of(metadata.catalog(None, None)) == []

    # Pushed again: listed again.
    result_of(metadata.finish_upload("u1", "blobs", M3))
    assert result_of(metadata.catalog(None, None)) == ["blobs"]
    assert result_of(metadata.repo_exists("blobs"))


def test_a_failed_write_leaves_the_repositories_alone(metadata: Metadata) -> None:
    """A repository added by a transaction that rolls back is not listed (same transaction)."""

    def fail(c: Any) -> None:
        c.execute("INSERT INTO repo_blobs (repo, digest, created) VALUES (?, ?, ?)", ("ghost", M1, 1.0))
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        result_of(metadata._write(fail))  # type: ignore[attr-defined]
    assert listed(metadata) == []


def test_catalog_pages_in_byte_order(metadata: Metadata) -> None:
    """Pages of the catalog, each after the last name of the one before, list every repository
    once in byte order (upper case before '_' before lower case, '/' before letters)."""
    names = ["a", "a/b", "a-b", "a.b", "a_b", "ab", "B", "f/docker.io/x", "z/9", "z/10"]
    for name in names:
        result_of(metadata.link_blob(name, M1))
    seen: list[str] = []
    last = None
    while True:
        page = result_of(metadata.catalog(3, last))
        seen += page
        if len(page) < 3:
            break
        last = page[-1]
    assert seen == sorted(names, key=lambda n: n.encode())


def test_catalog_page_reads_the_repositories_index(metadata: Metadata) -> None:
    """A catalog page is a range read on the primary key of the repositories table: no scan of
    manifests or links, no sort (the plan of the backend's own query planner, with enough rows
    that PostgreSQL prefers the index)."""
    from trow.storage.sql import SqlMetadata

    query = SqlMetadata.CATALOG_QUERY
    assert "FROM repositories" in query and "manifests" not in query and "repo_blobs" not in query
    if isinstance(metadata, SqliteMetadata):
        for name in ("a", "b", "c"):
            result_of(metadata.link_blob(name, M1))
        plan = " ".join(r[3] for r in metadata._conn.execute("EXPLAIN QUERY PLAN " + query, ("b", 10)))
        assert "SEARCH repositories USING PRIMARY KEY (repo>?)" in plan, plan
        assert "TEMP B-TREE" not in plan, plan
    else:

        def explain(c: Any) -> str:
            c.execute("INSERT INTO repositories (repo) SELECT 'r' || lpad(i::text, 6, '0') FROM generate_series(1, 20000) i")
            c.execute("ANALYZE repositories")
            return "\n".join(r[0] for r in c.execute("EXPLAIN " + query, ("r010000", 100)))

        plan = result_of(metadata._write(explain))  # type: ignore[attr-defined]
        assert "Index Only Scan using repositories_pkey" in plan or "Index Scan using repositories_pkey" in plan, plan
        assert "Sort" not in plan and "Seq Scan" not in plan, plan


def test_sweeps_and_evictions_unlist_what_they_empty(world: World) -> None:
    """Garbage collection deletes rows too: a repository whose only link is swept, or whose
    cached images are all evicted, leaves the catalog; the others stay."""
    world.push_image("team/app", "v1", [blob("kept")])
    world.push_blob("team/scratch", blob("orphan"))
    world.cache_image(CACHE, "v1", [blob("cached", 10_000)])
    world.cache_image(OTHER_CACHE, "v1", [blob("other", 10_000)])
    assert result_of(world.metadata.catalog(None, None)) == [CACHE, OTHER_CACHE, "team/app", "team/scratch"]
    world.later(2 * HOUR)
    assert world.gc(grace=HOUR).swept == (("team/scratch", digest(blob("orphan"))),)
    assert result_of(world.metadata.catalog(None, None)) == [CACHE, OTHER_CACHE, "team/app"]
    world.later(60)
    world.gc(max_size=1, low_water=0.0)
    assert result_of(world.metadata.catalog(None, None)) == ["team/app"]
    assert not result_of(world.metadata.repo_exists(CACHE))
    # Cached again: listed again.
    world.cache_image(CACHE, "v2", [blob("again", 10_000)])
    assert result_of(world.metadata.catalog(None, None)) == [CACHE, "team/app"]


def fill_repositories(metadata: Metadata, names: list[str]) -> None:
    """One blob link in each of C{names}, in one transaction (the triggers list them)."""

    def fill(c: Any) -> None:
        c.executemany("INSERT INTO repo_blobs (repo, digest, created) VALUES (?, ?, ?)", [(n, M1, 1.0) for n in names])

    result_of(metadata._write(fill))  # type: ignore[attr-defined]


class CountingMetadata:
    """Counts the names the catalog hands out (what a request reads of the index)."""

    def __init__(self, metadata: Metadata) -> None:
        self.metadata = metadata
        self.read = 0

    def catalog(self, limit: int | None, last: str | None) -> "Deferred[list[str]]":
        def count(names: list[str]) -> list[str]:
            self.read += len(names)
            return names

        return self.metadata.catalog(limit, last).addCallback(count)


def walk_catalog(registry: Registry, n: int, visible: Callable[[str], bool]) -> list[tuple[list[str], str | None]]:
    """Every page of a filtered catalog, following each page's next C{last}."""
    pages = []
    last = None
    while True:
        page = run(registry.catalog(str(n), last, visible))
        pages.append((page.items, page.next_last))
        if page.next_last is None:
            return pages
        assert page.next_last > (last or ""), "pages must move forward"
        last = page.next_last


@pytest.mark.parametrize("every", [1, 7, 100])
def test_filtered_catalog_pages_are_full_and_complete(
    metadata: Metadata, store: BlobStore, uploads: UploadFiles, every: int
) -> None:
    """A client who may see 1 repository in C{every} gets full pages: every page but the last
    holds n names, together they list each visible repository once, in order; when the page
    is full and more follow, the next page starts after its last (visible) name."""
    names = [f"r{i:05d}" for i in range(2000)]
    fill_repositories(metadata, names)
    shown = set(names[::every])
    registry = Registry(store, uploads, metadata, 4 << 20)
    pages = walk_catalog(registry, 3, shown.__contains__)
    assert [name for items, _ in pages for name in items] == sorted(shown)
    assert all(len(items) == 3 for items, _ in pages[:-1])
    assert 0 < len(pages[-1][0]) <= 3
    if every < 100:
        # The next visible name was found within the budget: the Link names the page's last.
        assert all(last == items[-1] for items, last in pages[:-1])


def test_filtered_catalog_bounds_the_names_read(metadata: Metadata, store: BlobStore, uploads: UploadFiles) -> None:
    """A client who sees almost nothing gets short (even empty) pages, each read of at most the
    budget of names, that still lead through the whole list without skipping a name."""
    names = [f"r{i:05d}" for i in range(2000)]
    fill_repositories(metadata, names)
    shown = {"r00000", "r00999", "r01998"}
    counting = CountingMetadata(metadata)
    registry = Registry(store, uploads, counting, 4 << 20)  # type: ignore[arg-type]
    budget = 3 * service.CATALOG_SCAN_PER_NAME
    reads = []
    last = None
    seen: list[str] = []
    while True:
        counting.read = 0
        page = run(registry.catalog("3", last, shown.__contains__))
        reads.append(counting.read)
        seen += page.items
        if page.next_last is None:
            break
        last = page.next_last
    assert seen == sorted(shown)
    assert max(reads) <= budget
    assert len(reads) <= len(names) // budget + 1


def test_filtered_catalog_scan_is_capped(
    metadata: Metadata, store: BlobStore, uploads: UploadFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever n, one request reads at most CATALOG_SCAN_MAX names."""
    monkeypatch.setattr(service, "CATALOG_SCAN_MAX", 250)
    fill_repositories(metadata, [f"r{i:05d}" for i in range(1000)])
    counting = CountingMetadata(metadata)
    registry = Registry(store, uploads, counting, 4 << 20)  # type: ignore[arg-type]
    page = run(registry.catalog("100", None, lambda name: name == "r00999"))
    assert page.items == [] and page.next_last == "r00249"
    assert counting.read == 250


def test_manifest_round_trip(metadata: Metadata) -> None:
    """A stored manifest record comes back whole, by digest and by tag."""
    rec = record("r", M1, subject=SUBJECT, artifact_type="application/x.sig", annotations={"k": "v", "a": "b"})
    result_of(metadata.put_manifest(rec, [M2], ["v1"]))
    assert result_of(metadata.get_manifest("r", M1)) == rec
    assert result_of(metadata.resolve_tag("r", "v1")) == rec
    assert result_of(metadata.get_manifest("s", M1)) is None
    assert result_of(metadata.resolve_tag("r", "v2")) is None


def test_manifest_known(metadata: Metadata) -> None:
    """manifest_known answers which digests are manifests in the repository."""
    result_of(metadata.put_manifest(record("r", M1), []))
    assert result_of(metadata.manifest_known("r", [M1, M2])) == {M1}
    assert result_of(metadata.manifest_known("s", [M1])) == set()


def test_retag_moves_the_tag(metadata: Metadata) -> None:
    """Putting a manifest under an existing tag moves the tag."""
    result_of(metadata.put_manifest(record("r", M1), [], ["t"]))
    result_of(metadata.put_manifest(record("r", M2), [], ["t"]))
    resolved = result_of(metadata.resolve_tag("r", "t"))
    assert resolved is not None and resolved.digest == M2


def test_delete_tag_keeps_the_manifest(metadata: Metadata) -> None:
    """delete_tag removes only the tag and reports whether it existed."""
    result_of(metadata.put_manifest(record("r", M1), [], ["t", "u"]))
    assert result_of(metadata.delete_tag("r", "t")) is True
    assert result_of(metadata.delete_tag("r", "t")) is False
    assert result_of(metadata.resolve_tag("r", "t")) is None
    assert result_of(metadata.get_manifest("r", M1)) is not None
    assert result_of(metadata.list_tags("r", None, None)) == ["u"]


def test_delete_manifest_removes_its_tags(metadata: Metadata) -> None:
    """delete_manifest removes the manifest and every tag on it, and reports whether it existed."""
    result_of(metadata.put_manifest(record("r", M1), [M2], ["t", "u"]))
    result_of(metadata.put_manifest(record("r", M3), [], ["other"]))
    assert result_of(metadata.delete_manifest("r", M1)) is True
    assert result_of(metadata.delete_manifest("r", M1)) is False
    assert result_of(metadata.get_manifest("r", M1)) is None
    assert result_of(metadata.list_tags("r", None, None)) == ["other"]


def test_list_tags_order_limit_last(metadata: Metadata) -> None:
    """Tags list in byte order, after 'last', at most 'limit'."""
    result_of(metadata.put_manifest(record("r", M1), [], ["b", "a", "B", "c"]))
    assert result_of(metadata.list_tags("r", None, None)) == ["B", "a", "b", "c"]
    assert result_of(metadata.list_tags("r", 2, None)) == ["B", "a"]
    assert result_of(metadata.list_tags("r", 2, "a")) == ["b", "c"]
    assert result_of(metadata.list_tags("s", None, None)) == []


def test_referrers_oldest_first(metadata: Metadata, clock: Clock) -> None:
    """Referrers are the repository's manifests with that subject, oldest first."""
    result_of(metadata.put_manifest(record("r", M2, subject=SUBJECT), []))
    clock.now += 10
    result_of(metadata.put_manifest(record("r", M1, subject=SUBJECT), []))
    result_of(metadata.put_manifest(record("r", M3), []))
    result_of(metadata.put_manifest(record("s", M3, subject=SUBJECT), []))
    assert [r.digest for r in result_of(metadata.referrers("r", SUBJECT))] == [M2, M1]
    assert result_of(metadata.referrers("r", M3)) == []


def test_upload_sessions(metadata: Metadata, clock: Clock) -> None:
    """Upload sessions are created, read, touched and deleted."""
    result_of(metadata.create_upload("u1", "r"))
    assert result_of(metadata.get_upload("u1")) == UploadRecord("u1", "r", 1000.0)
    clock.now += 5
    result_of(metadata.touch_upload("u1"))
    assert result_of(metadata.upload_ids()) == {"u1"}
    assert result_of(metadata.delete_upload("u1")) is True
    assert result_of(metadata.delete_upload("u1")) is False
    assert result_of(metadata.get_upload("u1")) is None


def test_one_writer_at_a_time_claims_an_upload(metadata: Metadata, clock: Clock) -> None:
    """Two writers (two replicas) at one offset: the first claim wins, the second is refused
    before it touches the file; the winner's advance moves the offset and ends its claim; a
    claim counts as activity; a claim at a stale offset is refused."""
    result_of(metadata.create_upload("u1", "r"))
    if isinstance(metadata, PostgresMetadata):
        # Claims stand while their replica beats.
        for replica in ("replica-a", "replica-b"):
            result_of(metadata.replica_beat(replica, "http://" + replica, [], 30))
    clock.now += 7
    assert result_of(metadata.claim_upload("u1", 0, "replica-a")) is True
    assert result_of(metadata.claim_upload("u1", 0, "replica-b")) is False
    assert result_of(metadata.gc_stale_uploads(1000.0 + 5)) == []
    assert result_of(metadata.advance_upload("u1", 0, 10, "replica-b")) is False
    assert result_of(metadata.advance_upload("u1", 0, 10, "replica-a")) is True
    record = result_of(metadata.get_upload("u1"))
    assert record is not None and record.size == 10
    assert result_of(metadata.claim_upload("u1", 0, "replica-b")) is False  # the offset moved on
    assert result_of(metadata.claim_upload("u1", 10, "replica-b")) is True
    result_of(metadata.release_upload("u1", "replica-b"))
    assert result_of(metadata.claim_upload("u1", 10, "replica-a")) is True
    assert result_of(metadata.claim_upload("nope", 0, "replica-a")) is False


def test_a_claim_of_a_dead_replica_is_void(postgres_metadata: Any) -> None:
    """PostgreSQL: a claim by a replica whose heartbeat stopped no longer stands, so a session a
    killed replica was writing can go on on another."""
    db = postgres_metadata
    result_of(db.create_upload("u1", "r"))
    result_of(db.replica_beat("replica-a", "http://a", [], 30))
    assert result_of(db.claim_upload("u1", 0, "replica-a")) is True
    assert result_of(db.claim_upload("u1", 0, "replica-b")) is False
    result_of(db._write(lambda c: c.execute("UPDATE replicas SET seen = seen - 60 WHERE id = ?", ("replica-a",))))
    assert result_of(db.claim_upload("u1", 0, "replica-b")) is True


def test_finish_upload_links_the_blob(metadata: Metadata) -> None:
    """Finishing an upload forgets the session and links the blob, together."""
    result_of(metadata.create_upload("u1", "r"))
    result_of(metadata.finish_upload("u1", "r", M1))
    assert result_of(metadata.get_upload("u1")) is None
    assert result_of(metadata.blob_linked("r", M1))


def test_failed_write_rolls_back(metadata: Metadata) -> None:
    """A write that fails changes nothing and leaves the connection usable."""
    result_of(metadata.create_upload("u1", "r"))
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        result_of(metadata.create_upload("u1", "other"))
    assert result_of(metadata.get_upload("u1")).repo == "r"
    result_of(metadata.link_blob("r", M1))
    assert result_of(metadata.blob_linked("r", M1))


def test_sqlite_data_dir_of_an_older_trow_is_migrated(tmp_path: Path) -> None:
    """A trow.db from before schema versions gains the upload offset column; its sessions are
    marked to take their offset from their file (-1), and nothing else changes."""
    path = str(tmp_path / "trow.db")
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE uploads (uuid TEXT PRIMARY KEY, repo TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL)")
    old.execute("INSERT INTO uploads VALUES ('u1', 'r', 1.0, 2.0)")
    old.commit()
    old.close()
    db = SqliteMetadata(path, InlineWorker())
    try:
        assert result_of(db.get_upload("u1")) == UploadRecord("u1", "r", 1.0, -1)
        assert db._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()


def test_sqlite_data_dir_of_version_1_lists_its_repositories(tmp_path: Path) -> None:
    """A trow.db of schema version 1 (no repositories table) gains it, filled from its manifests
    and links; the triggers keep it from there."""
    path = str(tmp_path / "trow.db")
    db = SqliteMetadata(path, InlineWorker())
    result_of(db.put_manifest(record("images", M1), [], ["v1"]))
    result_of(db.link_blob("blobs", M2))
    result_of(db.link_blob("images", M2))
    db.close()
    # Back to version 1: what an older trow left.
    old = sqlite3.connect(path)
    for (trigger,) in old.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'repo_%'").fetchall():
        old.execute(f"DROP TRIGGER {trigger}")
    old.execute("DROP TABLE repositories")
    old.execute("PRAGMA user_version = 1")
    old.commit()
    old.close()
    again = SqliteMetadata(path, InlineWorker())
    try:
        assert again._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert result_of(again.catalog(None, None)) == ["blobs", "images"]
        assert result_of(again.unlink_blob("blobs", M2))
        assert result_of(again.catalog(None, None)) == ["images"]
    finally:
        again.close()


def test_postgres_migration_3_lists_existing_repositories(pg_schema_url: str) -> None:
    """A PostgreSQL database migrated before version 3 gains the repositories table, filled from
    its manifests and links; the triggers keep it from there."""
    db = open_postgres(pg_schema_url)
    try:
        result_of(db.put_manifest(record("images", M1), [], ["v1"]))
        result_of(db.link_blob("blobs", M2))
        result_of(db.link_blob("images", M2))
    finally:
        db.close()
    with psycopg.connect(pg_schema_url, autocommit=True) as conn:
        conn.execute("DROP TABLE repositories")
        conn.execute("DROP FUNCTION trow_repo_listed, trow_repo_unlisted CASCADE")
        conn.execute("DELETE FROM trow_schema WHERE version = 3")
    again = open_postgres(pg_schema_url)
    try:
        assert result_of(again.catalog(None, None)) == ["blobs", "images"]
        assert result_of(again.unlink_blob("blobs", M2))
        assert result_of(again.catalog(None, None)) == ["images"]
    finally:
        again.close()


def _blocked_on_a_lock(url: str, pid: int) -> bool:
    """Wait (up to 10 s) until backend C{pid} waits for a lock; False if it never does."""
    with psycopg.connect(url, autocommit=True) as watcher:
        for _ in range(200):
            if watcher.execute("SELECT 1 FROM pg_locks WHERE pid = %s AND NOT granted", (pid,)).fetchone():
                return True
            time.sleep(0.05)
    return False


@pytest.mark.parametrize("first", ["delete", "insert"])
def test_postgres_concurrent_add_and_last_delete_keep_the_repository_exact(pg_schema_url: str, first: str) -> None:
    """One transaction deletes the last link of a repository while another stores a manifest in
    it (READ COMMITTED: neither sees the other's row). Whichever goes first, the second waits on
    the repository's row and then sees the first's outcome: the repository stays listed."""
    db = open_postgres(pg_schema_url)
    try:
        result_of(db.link_blob("r", M1))
    finally:
        db.close()
    delete = "DELETE FROM repo_blobs WHERE repo = 'r'"
    insert = "INSERT INTO manifests (repo, digest, media_type, size, created) VALUES ('r', %s, 'x', 1, 1)"
    with psycopg.connect(pg_schema_url) as one, psycopg.connect(pg_schema_url) as two:
        if first == "delete":
            one.execute(delete)
            second, statement, params = two, insert, (M2,)
        else:
            one.execute(insert, (M2,))
            second, statement, params = two, delete, ()
        errors: list[BaseException] = []

        def run_second() -> None:
            try:
                second.execute(statement, params)
                second.commit()
            except BaseException as e:  # reported by the test thread
                errors.append(e)

        thread = threading.Thread(target=run_second)
        thread.start()
        assert _blocked_on_a_lock(pg_schema_url, second.info.backend_pid)
        one.commit()
        thread.join(10)
        assert not thread.is_alive() and not errors, errors
        listed_now = [r[0] for r in one.execute("SELECT repo FROM repositories").fetchall()]
        one.commit()
    assert listed_now == ["r"]


def test_sqlite_schema_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    """A trow.db written by a newer trow is not touched: opening it says why."""
    path = str(tmp_path / "trow.db")
    newer = sqlite3.connect(path)
    newer.execute("PRAGMA user_version = 99")
    newer.close()
    with pytest.raises(SchemaTooNew, match=f"version 99, newer than this trow's {SCHEMA_VERSION}"):
        SqliteMetadata(path, InlineWorker())


def test_metadata_survives_reopen(tmp_path: Path) -> None:
    """Committed metadata is there after closing and reopening the database."""
    path = str(tmp_path / "trow.db")
    db = SqliteMetadata(path, InlineWorker())
    result_of(db.put_manifest(record("r", M1), [], ["v1"]))
    result_of(db.link_blob("r", M2))
    db.close()
    again = SqliteMetadata(path, InlineWorker())
    try:
        assert result_of(again.resolve_tag("r", "v1")) == record("r", M1)
        assert result_of(again.blob_linked("r", M2))
    finally:
        again.close()


# -- FileRangeProducer -------------------------------------------------------------------------


def test_producer_sends_the_range() -> None:
    """The producer writes exactly length bytes from offset, unregisters, and fires."""
    handle = io.BytesIO(DATA)
    consumer = FakeConsumer()
    done = FileRangeProducer(handle, 4, 5).start(consumer)
    assert b"".join(consumer.data) == DATA[4:9]
    assert consumer.unregistered
    assert result_of(done) is None
    assert handle.closed


def test_producer_sends_large_files_in_chunks() -> None:
    """A file larger than one chunk goes in CHUNK_SIZE pieces."""
    data = b"\x01" * (CHUNK_SIZE * 2 + 3)
    consumer = FakeConsumer()
    FileRangeProducer(io.BytesIO(data), 0, len(data)).start(consumer)
    assert [len(c) for c in consumer.data] == [CHUNK_SIZE, CHUNK_SIZE, 3]


def test_producer_stops_while_paused() -> None:
    """A paused producer writes nothing more until resumed, then finishes."""
    data = b"\x02" * (CHUNK_SIZE * 3)
    consumer = FakeConsumer(pause_after_write=True)
    producer = FileRangeProducer(io.BytesIO(data), 0, len(data))
    done = producer.start(consumer)
    assert len(consumer.data) == 1
    assert not done.called
    consumer.pause_after_write = False
    producer.resumeProducing()
    assert b"".join(consumer.data) == data
    assert done.called


def test_producer_stop_ends_the_stream() -> None:
    """stopProducing (the client went away) ends the stream: no more writes, unregistered,
    handle closed, the Deferred fires."""
    handle = io.BytesIO(b"\x03" * (CHUNK_SIZE * 3))
    consumer = FakeConsumer(pause_after_write=True)
    producer = FileRangeProducer(handle, 0, CHUNK_SIZE * 3)
    done = producer.start(consumer)
    producer.stopProducing()
    assert done.called
    assert consumer.unregistered
    assert handle.closed
    producer.resumeProducing()
    assert len(consumer.data) == 1


def test_producer_zero_length() -> None:
    """A zero-length range writes nothing and finishes at once."""
    consumer = FakeConsumer()
    done = FileRangeProducer(io.BytesIO(DATA), 3, 0).start(consumer)
    assert consumer.data == []
    assert done.called


# -- InlineWorker ------------------------------------------------------------------------------


def test_inline_worker_result_and_failure() -> None:
    """InlineWorker runs at once: a result is a fired Deferred, an exception a failed one."""
    worker = InlineWorker()
    assert result_of(worker.run(lambda a, b=0: a + b, 1, b=2)) == 3
    with pytest.raises(ZeroDivisionError):
        result_of(worker.run(lambda: 1 / 0))



def test_repository_names_split_pushed_and_cached(metadata: Metadata) -> None:
    """The status page's pages: pushed names (both sides of the cache range), then cache names."""
    for repo in ("zz/app", "a/app", "f/docker.io/library/alpine", "f/ghcr.io/x", "e/app", "g/app"):
        result_of(metadata.link_blob(repo, M1))
    assert result_of(metadata.repository_names("", 10, cached=False)) == ["a/app", "e/app", "g/app", "zz/app"]
    assert result_of(metadata.repository_names("e/app", 2, cached=False)) == ["g/app", "zz/app"]
    assert result_of(metadata.repository_names("", 1, cached=True)) == ["f/docker.io/library/alpine"]
    assert result_of(metadata.repository_names("f/docker.io/library/alpine", 5, cached=True)) == ["f/ghcr.io/x"]


def test_repository_overview(metadata: Metadata, clock: Clock) -> None:
    """Recent tags first, a capped tag count, and when content last came and was last read."""
    result_of(metadata.put_manifest(record("r", M1), [], tags=["old"]))
    clock.now += 10
    result_of(metadata.put_manifest(record("r", M2), [], tags=["new", "newer"]))
    pushed = clock()
    result_of(metadata.link_blob("quiet", M3))
    result_of(metadata.gc_record_access([("r", M1, pushed + 5)]))
    [r, quiet] = result_of(metadata.repository_overview(["r", "quiet"], 2, 2))
    assert [t.tag for t in r.tags] == ["new", "newer"] and r.tags[0].digest == M2
    assert (r.tag_count, r.tag_count_capped) == (2, True)
    assert (r.pushed, r.pulled) == (pushed, pushed + 5)
    assert (quiet.tags, quiet.tag_count, quiet.tag_count_capped, quiet.pulled) == ((), 0, False, None)
    assert quiet.pushed is not None


def test_recent_uploads(metadata: Metadata, clock: Clock) -> None:
    result_of(metadata.create_upload("u1", "r"))
    clock.now += 1
    result_of(metadata.create_upload("u2", "s"))
    assert [(u.uuid, u.repo) for u in result_of(metadata.recent_uploads(1))] == [("u2", "s")]
    assert len(result_of(metadata.recent_uploads(10))) == 2
