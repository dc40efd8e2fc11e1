"""Content-addressed blob files, temp files and the hashing writer.

On-disk layout of the data dir (built here and in L{trow.storage.metadata}):

    <data-dir>/
      trow.db                      sqlite metadata: tags, manifests, repository links, uploads
      blobs/<alg>/<hh>/<hex>       verified content, named by its digest (layers, configs, manifests)
      uploads/<uuid>               the bytes of an upload session so far (file size == offset)
      tmp/                         request bodies being received and files being written;
                                   anything here is garbage after a restart and is removed

Every file reaches C{blobs/} by C{rename} from C{tmp/} or C{uploads/} after it was fsynced and its
digest checked, so a blob path either does not exist or holds exactly the bytes of its digest.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
import uuid
from typing import IO, Any, Callable, Iterable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure

from trow.registry.names import Digest
from trow.workers import Worker

_CHUNK = 1 << 20
_BATCH_BYTES = 2 << 20


def fsync_dir(path: str) -> None:
    """fsync a directory, so that a rename inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hash_file(path: str, algorithm: str, limit: int | None = None) -> str:
    """Hash a whole file (or its first C{limit} bytes). Blocking: call through a worker."""
    hasher = hashlib.new(algorithm)
    remaining = limit
    with open(path, "rb") as handle:
        while remaining is None or remaining > 0:
            chunk = handle.read(_CHUNK if remaining is None else min(_CHUNK, remaining))
            if not chunk:
                break
            hasher.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    return hasher.hexdigest()


class _Lane:
    """One serial stream of batches through a worker: C{work} sees the chunks in order."""

    def __init__(
        self,
        worker: Worker,
        work: Callable[[list[bytes]], None],
        on_batch: Callable[[int], None],
        on_failure: Callable[[Failure], None],
    ) -> None:
        self._worker = worker
        self._work = work
        self._on_batch = on_batch
        self._on_failure = on_failure
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.busy = False
        self.done_bytes = 0

    @property
    def idle(self) -> bool:
        return not self.busy and not self.pending

    def push(self, data: bytes) -> None:
        self.pending.append(data)
        self.pending_bytes += len(data)
        self.kick()

    def kick(self) -> None:
        if self.busy or not self.pending:
            return
        # Batches of a few MiB: big enough to amortise the thread hand-off, small enough that
        # readers of the file and the sender see steady progress rather than long stalls.
        size = 0
        cut = 0
        while cut < len(self.pending) and size < _BATCH_BYTES:
            size += len(self.pending[cut])
            cut += 1
        batch, self.pending = self.pending[:cut], self.pending[cut:]
        self.busy = True
        self._worker.run(self._work, batch).addCallbacks(self._done, self._failed, callbackArgs=(size,))

    def _done(self, _: object, nbytes: int) -> None:
        self.busy = False
        self.pending_bytes -= nbytes
        self.done_bytes += nbytes
        self._on_batch(nbytes)
        self.kick()

    def _failed(self, failure: Failure) -> None:
        self.busy = False
        self.pending = []
        self.pending_bytes = 0
        self._on_failure(failure)


class HashingWriter:
    """Appends chunks to an open file and hashes them, on workers, in order, with backpressure.

    The reactor thread only queues chunks. Two lanes take them in batches: one writes the file,
    the other hashes (hashlib releases the GIL on large buffers). They run side by side, so the
    slower sets the pace, not their sum, and bytes are readable from the file as soon as they are
    written, while the hash may still be behind. When more than C{high_water} bytes wait in either
    lane, the registered producer is paused until both fall under C{low_water}: memory stays flat
    however fast the sender is.
    """

    _log = Logger()

    def __init__(
        self,
        worker: Worker,
        handle: IO[bytes],
        hashers: Iterable[Any] = (),
        high_water: int = 8 << 20,
        low_water: int = 2 << 20,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        self._handle = handle
        self.hashers = list(hashers)
        self._on_written = on_written
        self._high = high_water
        self._low = low_water
        self._lanes = [_Lane(worker, self._write_batch, self._written, self._lane_failed)]
        if self.hashers:
            self._lanes.append(_Lane(worker, self._hash_batch, self._hashed, self._lane_failed))
        self._failure: Failure | None = None
        self._waiters: list[Deferred[None]] = []
        self._producer: IPushProducer | None = None
        self._paused = False
        # Bytes accepted so far, and bytes that have reached the file (readable by others).
        self.size = 0
        self.written = 0

    def set_producer(self, producer: IPushProducer | None) -> None:
        """Pause and resume C{producer} to keep the queue bounded.

        Replacing a producer this writer paused resumes it first: nobody else would.
        """
        if self._paused and self._producer is not None:
            self._producer.resumeProducing()
        self._paused = False
        self._producer = producer

    def _backlog(self) -> int:
        return max(lane.pending_bytes for lane in self._lanes)

    def write(self, data: bytes) -> None:
        """Queue C{data} to be written and hashed."""
        if not data or self._failure is not None:
            return
        self.size += len(data)
        for lane in self._lanes:
            lane.push(data)
        if self._backlog() > self._high and self._producer is not None and not self._paused:
            self._paused = True
            self._producer.pauseProducing()

    def _write_batch(self, batch: list[bytes]) -> None:
        for chunk in batch:
            self._handle.write(chunk)
        # Flushed at once, so readers of the file see these bytes as soon as the batch is done.
        self._handle.flush()

    def _hash_batch(self, batch: list[bytes]) -> None:
        for chunk in batch:
            for hasher in self.hashers:
                hasher.update(chunk)

    def _written(self, nbytes: int) -> None:
        self.written += nbytes
        if self._on_written is not None:
            self._on_written(self.written)
        self._progress()

    def _hashed(self, nbytes: int) -> None:
        self._progress()

    def _progress(self) -> None:
        if self._paused and self._backlog() <= self._low:
            self._paused = False
            if self._producer is not None:
                self._producer.resumeProducing()
        self._maybe_drained()

    def _lane_failed(self, failure: Failure) -> None:
        if self._failure is None:
            self._failure = failure
        for lane in self._lanes:
            lane.pending = []
            lane.pending_bytes = 0
        if self._paused and self._producer is not None:
            self._paused = False
            self._producer.resumeProducing()
        self._maybe_drained()

    def _maybe_drained(self) -> None:
        if not all(lane.idle for lane in self._lanes):
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if self._failure is not None:
                waiter.errback(self._failure)
            else:
                waiter.callback(None)

    def drain(self) -> "Deferred[None]":
        """Fire when everything queued so far is written and hashed (or with the write error)."""
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        self._maybe_drained()
        return waiter


class Spool:
    """A request body being received into C{tmp/}, hashed with sha256 as it arrives.

    It has the small file API that C{twisted.web} expects of C{request.content}. The handler
    calls L{claim}, which waits for the writes and hands over the file; a spool never claimed (the
    client went away, or the request failed early) deletes its file when twisted.web closes it.
    """

    def __init__(self, worker: Worker, path: str, producer: IPushProducer | None) -> None:
        self.path = path
        self._handle: IO[bytes] | None = open(path, "wb")
        self._writer = HashingWriter(worker, self._handle, [hashlib.sha256()])
        self._writer.set_producer(producer)
        self._worker = worker
        self._claimed = False

    # The file API twisted.web uses on request.content.
    def write(self, data: bytes) -> None:
        self._writer.write(data)

    def tell(self) -> int:
        return self._writer.size

    def seek(self, offset: int, whence: int = 0) -> int:
        # twisted.web rewinds the body before processing; trow reads spools only through claim().
        return 0

    def read(self, size: int = -1) -> bytes:
        # twisted.web parses form bodies through read(); a registry has none, and reading a
        # spooled upload into memory is exactly what must not happen.
        return b""

    def close(self) -> None:
        if self._claimed:
            return
        self._claimed = True
        handle, self._handle = self._handle, None
        self._writer.set_producer(None)

        def discard(_: object) -> None:
            if handle is not None:
                handle.close()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

        self._writer.drain().addBoth(discard)

    @property
    def size(self) -> int:
        """Bytes received so far."""
        return self._writer.size

    def claim(self) -> "Deferred[SpooledBody]":
        """Wait for every byte to reach the file, then take ownership of it."""
        if self._claimed:
            raise RuntimeError("spool already claimed or closed")
        self._claimed = True
        self._writer.set_producer(None)

        def done(_: object) -> SpooledBody:
            assert self._handle is not None
            self._handle.close()
            self._handle = None
            return SpooledBody(self.path, self._writer.size, self._writer.hashers[0])

        def failed(failure: Failure) -> Failure:
            if self._handle is not None:
                self._handle.close()
            discard_file(self.path)
            return failure

        return self._writer.drain().addCallbacks(done, failed)


class SpooledBody:
    """A complete request body in a file of C{tmp/}, with its sha256 computed on arrival.

    Whoever holds it must either move the file (L{BlobStore.commit}) or call L{discard}.
    """

    def __init__(self, path: str, size: int, sha256: Any) -> None:
        self.path = path
        self.size = size
        self.sha256 = sha256

    def discard(self) -> None:
        """Delete the file (blocking unlink of one file: cheap)."""
        discard_file(self.path)


def discard_file(path: str) -> None:
    """Remove C{path} if it exists."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_entries(directory: str, keep: frozenset[str] | set[str] = frozenset()) -> int:
    """Remove every file and folder in C{directory} but those named in C{keep}; return a count."""
    removed = 0
    for name in os.listdir(directory):
        if name in keep:
            continue
        path = os.path.join(directory, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            discard_file(path)
        removed += 1
    return removed


class BlobStore:
    """Verified blobs stored by digest under C{blobs/}, plus the C{tmp/} area for writes."""

    def __init__(self, root: str, worker: Worker, scratch: str | None = None) -> None:
        self.root = root
        self.worker = worker
        self.blob_root = os.path.join(root, "blobs")
        self.tmp_base = os.path.join(root, "tmp")
        # Replicas sharing the data dir each write in a scratch dir of their own (tmp/<replica>/),
        # so that temp names never collide and one's clean-up never touches another's work.
        self.scratch = scratch
        self.tmp_root = self.tmp_base if scratch is None else os.path.join(self.tmp_base, scratch)
        for path in (self.blob_root, self.tmp_root):
            os.makedirs(path, exist_ok=True)

    def clean_tmp(self) -> int:
        """Remove every leftover in this process's temp dir (start-up only: nothing is in flight).
        Returns a count."""
        return remove_entries(self.tmp_root)

    def clean_dead_scratch(self, alive: set[str], older_than: float) -> int:
        """Remove the scratch dirs (tmp/<replica>/) of replicas not in C{alive} whose contents
        have not changed for C{older_than} seconds: what a replica that died left behind.
        Blocking: call through the worker. Returns how many dirs went."""
        removed = 0
        cutoff = time.time() - older_than
        for name in os.listdir(self.tmp_base):
            path = os.path.join(self.tmp_base, name)
            if name == self.scratch or name in alive or not os.path.isdir(path):
                continue
            try:
                newest = max([os.stat(path).st_mtime] + [e.stat().st_mtime for e in os.scandir(path)])
            except FileNotFoundError:
                continue
            if newest < cutoff:
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed

    def path(self, digest: Digest) -> str:
        """Where the blob with C{digest} lives (it may not exist)."""
        return os.path.join(self.blob_root, digest.algorithm, digest.hex[:2], digest.hex)

    def temp_path(self, prefix: str = "tmp") -> str:
        """A fresh file name in C{tmp/}."""
        return os.path.join(self.tmp_root, f"{prefix}-{uuid.uuid4().hex}")

    def size(self, digest: Digest) -> int | None:
        """The size of a stored blob, or None if it is not stored."""
        try:
            return os.stat(self.path(digest)).st_size
        except FileNotFoundError:
            return None

    def stat_size(self, digest: Digest) -> "Deferred[int | None]":
        """L{size} on the worker: a stat on a network volume can stall."""
        return self.worker.run(self.size, digest)

    def open_existing(self, digest: Digest) -> IO[bytes]:
        """Open a stored blob for reading; FileNotFoundError if it is gone. Blocking."""
        return open(self.path(digest), "rb")

    def open(self, digest: Digest) -> IO[bytes] | None:
        """Open a stored blob for reading, or None if it is not stored."""
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            return None

    def spool(self, producer: IPushProducer | None) -> Spool:
        """Start receiving a request body into C{tmp/}."""
        return Spool(self.worker, self.temp_path("body"), producer)

    def _commit_sync(self, source: str, digest: Digest) -> None:
        target = self.path(digest)
        parent = os.path.dirname(target)
        if os.path.exists(target):
            # Content-addressed: the same digest is the same bytes, already durable.
            discard_file(source)
            return
        os.makedirs(parent, exist_ok=True)
        fd = os.open(source, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # A link, not a rename: if another replica put the same blob in place meanwhile, its
        # file stays (a rename would replace an inode that a client elsewhere may be reading).
        try:
            os.link(source, target)
        except FileExistsError:
            pass
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            os.rename(source, target)  # a file system without hard links
        discard_file(source)
        fsync_dir(parent)

    def commit(self, source: str, digest: Digest) -> "Deferred[None]":
        """fsync C{source} and rename it into place as C{digest}. The caller checked the digest."""
        return self.worker.run(self._commit_sync, source, digest)

    def _put_bytes_sync(self, data: bytes, digest: Digest) -> None:
        if os.path.exists(self.path(digest)):
            return
        temp = self.temp_path("put")
        with open(temp, "wb") as handle:
            handle.write(data)
        self._commit_sync(temp, digest)

    def put_bytes(self, data: bytes, digest: Digest) -> "Deferred[None]":
        """Store small verified content (a manifest) durably under C{digest} (nothing to do if
        it is there: the check runs on the worker too)."""
        return self.worker.run(self._put_bytes_sync, data, digest)

    def disk_usage(self) -> "Deferred[tuple[int, int]]":
        """(bytes used, bytes in all) of the file system that holds the data dir."""

        def usage() -> tuple[int, int]:
            found = shutil.disk_usage(self.root)
            return found.used, found.total

        return self.worker.run(usage)

    def read_bytes(self, digest: Digest) -> "Deferred[bytes | None]":
        """Read a small stored blob (a manifest) whole."""

        def read() -> bytes | None:
            try:
                with open(self.path(digest), "rb") as handle:
                    return handle.read()
            except FileNotFoundError:
                return None

        return self.worker.run(read)

    def take_spooled(self, body: SpooledBody) -> "Deferred[bytes]":
        """Read a small spooled body whole and delete its file."""

        def take() -> bytes:
            try:
                with open(body.path, "rb") as handle:
                    return handle.read()
            finally:
                body.discard()

        return self.worker.run(take)

    def _check_writable_sync(self) -> None:
        path = self.temp_path("ready")
        try:
            with open(path, "wb") as handle:
                handle.write(b"ok")
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            discard_file(path)

    def check_writable(self) -> "Deferred[None]":
        """Write, fsync and remove a probe file in C{tmp/}; fails with OSError if the disk refuses."""
        return self.worker.run(self._check_writable_sync)

    def hash_file(self, path: str, algorithm: str, limit: int | None = None) -> "Deferred[str]":
        """Hash a whole file (or its first C{limit} bytes) on the worker."""
        return self.worker.run(hash_file, path, algorithm, limit)

    def delete(self, digest: Digest) -> "Deferred[None]":
        """Remove a stored blob (garbage collection)."""
        return self.worker.run(discard_file, self.path(digest))

    # Garbage collection (trow.registry.gc): the walk, and moving doomed files aside and back.

    def _walk_sync(self) -> list[str]:
        found: list[str] = []
        for algorithm in sorted(os.listdir(self.blob_root)):
            top = os.path.join(self.blob_root, algorithm)
            if not os.path.isdir(top):
                continue
            for prefix in sorted(os.listdir(top)):
                folder = os.path.join(top, prefix)
                if not os.path.isdir(folder):
                    continue
                with os.scandir(folder) as entries:
                    for entry in entries:
                        if not entry.is_file(follow_symlinks=False) or not entry.name.startswith(prefix):
                            continue
                        try:
                            digest = Digest.parse(f"{algorithm}:{entry.name}")
                        except Exception:
                            # Not a digest trow wrote (RegistryError): never touch what we did not make.
                            continue
                        if self.path(digest) == entry.path:
                            found.append(str(digest))
        return found

    def walk(self) -> "Deferred[list[str]]":
        """Every digest stored under C{blobs/}, by walking the tree on the worker. Files whose
        names are not digests in their right place are left out (and so never deleted)."""
        return self.worker.run(self._walk_sync)

    def _stat_sync(self, digests: list[str]) -> dict[str, tuple[int, float]]:
        found: dict[str, tuple[int, float]] = {}
        for value in digests:
            try:
                st = os.stat(self.path(Digest.parse(value)))
            except FileNotFoundError:
                continue
            except Exception:
                continue  # not a digest: nothing stored under it
            found[value] = (st.st_size, st.st_mtime)
        return found

    def stat_many(self, digests: Iterable[str]) -> "Deferred[dict[str, tuple[int, float]]]":
        """(size, mtime) of each stored blob of C{digests}; those not stored are left out."""
        return self.worker.run(self._stat_sync, list(digests))

    def aside_name(self) -> str:
        """A fresh name in this process's temp dir for a blob file garbage collection sets aside."""
        return self.temp_path("gc")

    def move_to_sync(self, digest: str, aside: str) -> bool:
        """Rename the blob file of C{digest} to C{aside}; False if it is not stored. Blocking but
        cheap (one rename): the collector runs it on the db worker, under the digest's lock."""
        try:
            source = self.path(Digest.parse(digest))
        except Exception:
            return False
        try:
            os.rename(source, aside)
        except FileNotFoundError:
            return False
        return True

    def move_aside_sync(self, digest: str) -> str | None:
        """Rename the blob file of C{digest} to a fresh name in C{tmp/}; return that name, or
        None if it is not stored. Blocking."""
        aside = self.aside_name()
        return aside if self.move_to_sync(digest, aside) else None

    def put_back_sync(self, digest: str, aside: str) -> None:
        """Move a file moved aside back into place, durably, unless the blob was stored again
        meanwhile (the copy aside is then simply left for the caller to delete). Blocking."""
        target = self.path(Digest.parse(digest))
        if os.path.exists(target):
            return
        parent = os.path.dirname(target)
        os.makedirs(parent, exist_ok=True)
        try:
            os.rename(aside, target)
        except FileNotFoundError:
            return  # nothing aside: there is nothing to put back
        # The link that asked for it commits right after: the rename must not be lost first.
        fsync_dir(parent)

    def _remove_sync(self, paths: list[str]) -> dict[str, int]:
        removed: dict[str, int] = {}
        for path in paths:
            try:
                size = os.stat(path).st_size
                os.unlink(path)
            except FileNotFoundError:
                continue
            removed[path] = size
        return removed

    def remove_aside(self, paths: Iterable[str]) -> "Deferred[dict[str, int]]":
        """Delete files moved aside (on the worker: unlinking a large file takes a while); returns
        the size of each file that was there."""
        return self.worker.run(self._remove_sync, list(paths))
