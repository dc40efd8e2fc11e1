"""Stream part of a file to an HTTP consumer, with backpressure.

A push producer, like twisted.web.static's range producers but without the cooperator: it writes
chunks until the transport's buffer is full and it is paused, and goes on when resumed. A slow
client therefore holds about one send buffer of the file in memory, never the file.
"""

from __future__ import annotations

from typing import IO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

CHUNK_SIZE = 256 * 1024


@implementer(IPushProducer)
class FileRangeProducer:
    """Send C{length} bytes of C{handle} from C{offset} to a consumer.

    Subclasses stream files that are still growing: L{_limit} says how far may be read now, and
    L{_produce} is called again when that changes.
    """

    def __init__(self, handle: IO[bytes], offset: int, length: int) -> None:
        self._handle: IO[bytes] | None = handle
        self._position = offset
        self._end = offset + length  # exclusive
        self._consumer: IConsumer | None = None
        self._paused = False
        self._done: Deferred[None] = Deferred()

    def start(self, consumer: IConsumer) -> "Deferred[None]":
        """Stream to C{consumer}; fires when all is written or the consumer went away."""
        self._consumer = consumer
        consumer.registerProducer(self, True)
        self._produce()
        return self._done

    def _limit(self) -> int:
        """How far the file may be read now (exclusive)."""
        return self._end

    def _failure(self) -> Failure | None:
        """A reason to stop with an error (the content went bad), or None."""
        return None

    def _produce(self) -> None:
        while not self._paused and self._consumer is not None:
            failure = self._failure()
            if self._position >= self._end or failure is not None:
                self._stop(failure)
                return
            limit = self._limit()
            if self._position >= limit:
                return  # wait: whoever grows the file calls _produce again
            assert self._handle is not None
            self._handle.seek(self._position)
            data = self._handle.read(min(CHUNK_SIZE, limit - self._position))
            if not data:
                # Shorter than promised (it cannot be: blobs are verified and immutable).
                self._stop(Failure(EOFError(f"file ended at {self._position} of {self._end} bytes")))
                return
            self._position += len(data)
            self._consumer.write(data)

    def _stop(self, failure: Failure | None) -> None:
        consumer, self._consumer = self._consumer, None
        if self._handle is not None:
            self._handle.close()
            self._handle = None
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
