"""Stream part of a file to an HTTP consumer, with backpressure, reading off the reactor.

A push producer, like twisted.web.static's range producers but without the cooperator: it writes
chunks until the transport's buffer is full and it is paused, and goes on when resumed. A slow
client therefore holds about one send buffer of the file in memory, never the file.

With a worker, the file is opened and every chunk read on that worker's threads, one read in
flight at a time: on a network volume (NFS, CephFS) an open or a read can stall for as long as the
server takes, and it must stall one response, not the reactor and every client with it. Without
one (tests, in-memory handles), reads happen inline.
"""

from __future__ import annotations

from typing import IO, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from trow.workers import Worker

CHUNK_SIZE = 256 * 1024
# Reads through a worker are larger: each costs a thread hand-off.
THREADED_CHUNK_SIZE = 1024 * 1024


@implementer(IPushProducer)
class FileRangeProducer:
    """Send C{length} bytes of a file from C{offset} to a consumer.

    The file is C{handle}, or, with C{open_file}, what that returns when streaming starts (run on
    C{worker}). Subclasses stream files that are still growing: L{_limit} says how far may be read
    now, and L{_produce} is called again when that changes.
    """

    def __init__(
        self,
        handle: IO[bytes] | None,
        offset: int,
        length: int,
        worker: Worker | None = None,
        open_file: Callable[[], IO[bytes]] | None = None,
    ) -> None:
        assert handle is not None or open_file is not None, "a handle or a way to open the file"
        self._handle: IO[bytes] | None = handle
        self._open_file = open_file
        self._worker = worker
        self._chunk = CHUNK_SIZE if worker is None else THREADED_CHUNK_SIZE
        self._position = offset  # the next byte to send
        self._read_to = offset  # the next byte to read: one chunk ahead of sending, at most
        self._end = offset + length  # exclusive
        # A chunk read ahead: while the client's connection drains one chunk, the worker reads
        # the next, so that a resume writes at once instead of waiting for a read.
        self._ahead: bytes | None = None
        self._consumer: IConsumer | None = None
        self._paused = False
        self._done: Deferred[None] = Deferred()
        # A read (or the open) is running on the worker: no other starts, and the handle is not
        # closed under it. _producing keeps reads that complete at once from recursing per chunk.
        self._busy = False
        self._closing = False
        self._producing = False

    def start(self, consumer: IConsumer) -> "Deferred[None]":
        """Stream to C{consumer}; fires when all is written or the consumer went away, fails if
        the file cannot be read (or the content went bad)."""
        self._consumer = consumer
        consumer.registerProducer(self, True)
        if self._handle is None:
            assert self._open_file is not None
            self._busy = True
            self._run(self._open_file).addCallbacks(self._opened, self._read_failed)
        else:
            self._produce()
        return self._done

    def _run(self, f: Callable[..., object], *args: object) -> "Deferred[object]":
        if self._worker is None:
            from twisted.internet.defer import maybeDeferred

            return maybeDeferred(f, *args)
        return self._worker.run(f, *args)

    def _opened(self, handle: object) -> None:
        self._busy = False
        self._handle = handle  # type: ignore[assignment]
        if self._closing or self._consumer is None:
            self._close_handle()
            return
        self._produce()

    def _limit(self) -> int:
        """How far the file may be read now (exclusive)."""
        return self._end

    def _failure(self) -> Failure | None:
        """A reason to stop with an error (the content went bad), or None."""
        return None

    def _file_limit(self) -> int:
        """How far the file itself may be read now (subclasses may send more, from memory)."""
        return self._end

    def _from_memory(self, position: int, size: int) -> bytes | None:
        """Up to C{size} bytes at C{position} held in memory, or None: read the file."""
        return None

    def _read_at(self, position: int, size: int) -> bytes:
        assert self._handle is not None
        self._handle.seek(position)
        return self._handle.read(size)

    def _produce(self) -> None:
        if self._producing:
            return  # a read's callback, inside the loop below: the loop goes on
        self._producing = True
        try:
            while self._consumer is not None:
                failure = self._failure()
                if failure is not None:
                    self._stop(failure)
                    return
                if self._ahead is not None:
                    if self._paused:
                        return
                    data, self._ahead = self._ahead, None
                    self._position += len(data)
                    self._consumer.write(data)
                    continue
                if self._position >= self._end:
                    self._stop(None)
                    return
                limit = self._limit()
                if self._busy or self._read_to >= limit:
                    return  # a read is running, or whoever grows the file calls _produce again
                # Bytes held in memory come as they are held, in pieces of their own size.
                held = self._from_memory(self._read_to, limit - self._read_to)
                if held is not None:
                    self._took(held)
                    continue
                limit = min(limit, self._file_limit())
                if self._read_to >= limit:
                    return  # not in the file yet: whoever grows it calls _produce again
                size = min(self._chunk, limit - self._read_to)
                if self._worker is None:
                    self._took(self._read_at(self._read_to, size))
                    continue
                self._busy = True
                self._worker.run(self._read_at, self._read_to, size).addCallbacks(self._read_done, self._read_failed)
        finally:
            self._producing = False

    def _read_done(self, data: bytes) -> None:
        self._busy = False
        if self._closing or self._consumer is None:
            self._close_handle()
            return
        self._took(data)
        self._produce()

    def _read_failed(self, failure: Failure) -> None:
        self._busy = False
        self._stop(failure)

    def _took(self, data: bytes) -> None:
        """A chunk was read: it is sent next (when the consumer wants it)."""
        if not data:
            # Shorter than promised (it cannot be: blobs are verified and immutable).
            self._stop(Failure(EOFError(f"file ended at {self._read_to} of {self._end} bytes")))
            return
        self._read_to += len(data)
        self._ahead = data

    def _close_handle(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()

    def _stop(self, failure: Failure | None) -> None:
        consumer, self._consumer = self._consumer, None
        self._closing = True
        if not self._busy:
            # Else the read running on the worker closes it when it returns.
            self._close_handle()
        if consumer is not None:
            consumer.unregisterProducer()
        if not self._done.called:
            if failure is None:
                self._done.callback(None)
            else:
                self._done.errback(failure)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._produce()

    def stopProducing(self) -> None:
        # The client went away: stop, and leave the request with no producer registered, since it
        # may still be finished (and checked for a forgotten producer) before it hears of the loss.
        self._stop(None)
