"""Stream part of a stored file to an HTTP consumer, with backpressure.

A push producer, like twisted.web.static's range producers but without the cooperator: it writes
chunks until the transport's buffer is full and it is paused, and goes on when resumed. A slow
client therefore holds about one send buffer of the file in memory, never the file.
"""

from __future__ import annotations

from typing import IO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

CHUNK_SIZE = 256 * 1024


@implementer(IPushProducer)
class FileRangeProducer:
    """Send C{length} bytes of C{handle} from C{offset} to a consumer."""

    def __init__(self, handle: IO[bytes], offset: int, length: int) -> None:
        self._handle = handle
        self._remaining = length
        self._handle.seek(offset)
        self._consumer: IConsumer | None = None
        self._paused = False
        self._done: Deferred[None] = Deferred()

    def start(self, consumer: IConsumer) -> "Deferred[None]":
        """Stream to C{consumer}; fires when all is written or the consumer went away."""
        self._consumer = consumer
        consumer.registerProducer(self, True)
        self._produce()
        return self._done

    def _produce(self) -> None:
        while not self._paused and self._consumer is not None:
            data = self._handle.read(min(CHUNK_SIZE, self._remaining)) if self._remaining > 0 else b""
            if not data:
                self._finish()
                return
            self._remaining -= len(data)
            self._consumer.write(data)

    def _finish(self) -> None:
        consumer, self._consumer = self._consumer, None
        self._handle.close()
        if consumer is not None:
            consumer.unregisterProducer()
        if not self._done.called:
            self._done.callback(None)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._produce()

    def stopProducing(self) -> None:
        # The client went away: stop, and leave the request with no producer registered, since it
        # may still be finished (and checked for a forgotten producer) before it hears of the loss.
        self._remaining = 0
        self._finish()
