"""When cached content was last read: the recency that least-recently-used eviction goes by.

Reads of the cache are the hot path (every node pulling every layer), so L{AccessTracker.touch}
only writes into a dict on the reactor thread. The times are written to sqlite in one batch every
few seconds, before each garbage collection pass, and when trow stops, on the db worker: a GET
never waits for sqlite, and a restart keeps what was flushed (at most the last few seconds of
reads are lost to a crash, which only makes that content look a little older).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from trow.storage.metadata import Metadata

_log = Logger()

# Cache repositories: the only content eviction looks at, so the only reads worth recording.


class AccessTracker(Service):
    """Collects reads of cached manifests and blobs in memory and flushes them in batches."""

    def __init__(self, metadata: Metadata, clock: IReactorTime, flush_interval: float = 5.0) -> None:
        self._metadata = metadata
        self._clock = clock
        self._interval = flush_interval
        self._pending: dict[tuple[str, str], float] = {}
        self._lock = DeferredLock()
        self._loop: LoopingCall | None = None
        self.flushed = 0

    def touch(self, repo: str, digest: str) -> None:
        """Note that C{digest} was read from C{repo} now. Cheap: no I/O.

        Garbage collection uses the read times of cache repositories only (pushed content is
        never evicted); the status page shows when any repository was last pulled.
        """
        self._pending[(repo, digest)] = self._clock.seconds()

    @property
    def pending(self) -> int:
        """How many (repository, digest) reads wait to be written."""
        return len(self._pending)

    def flush(self) -> "Deferred[None]":
        """Write every read noted so far; fires once it is in sqlite. Never fails: a failed
        write is logged and its reads are kept for the next flush."""
        return self._lock.run(self._flush_once)

    def _flush_once(self) -> "Deferred[None]":
        batch, self._pending = self._pending, {}
        if not batch:
            return succeed(None)
        entries = [(repo, digest, when) for (repo, digest), when in batch.items()]

        def done(_: object) -> None:
            self.flushed += len(entries)

        def failed(failure: Any) -> None:
            _log.failure("writing {count} cache read times failed; keeping them for the next try", failure, count=len(entries))
            for key, when in batch.items():
                if self._pending.get(key, when) <= when:
                    self._pending[key] = when

        return self._metadata.gc_record_access(entries).addCallbacks(done, failed)

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.flush)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=False).addErrback(
            lambda f: _log.failure("the cache read-time flusher stopped", f)
        )

    def stopService(self) -> "Deferred[None]":
        """Stop the timer and write what is left (before the db worker stops: add this service
        after the workers, so that it stops before them)."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return self.flush()
