"""trow's own thread pools, so that fsync, hashing and sqlite never block the reactor.

Code that needs blocking work receives a L{Worker} and calls C{worker.run(f, *args)}. In
production that is a L{ThreadWorker} (a named thread pool stopped with the service); unit tests
pass an L{InlineWorker}, which runs the call at once so that in-memory tests stay synchronous.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class Worker(Protocol):
    """Something that runs blocking calls away from the reactor thread."""

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> "Deferred[T]":
        """Run C{f(*args, **kwargs)} and fire with its result."""


class ThreadWorker(Service):
    """A named thread pool of trow's own, started and stopped as a service."""

    def __init__(self, reactor: IReactorFromThreads, name: str, max_threads: int) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=max_threads, name=name)
        self.setName(name)

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> "Deferred[T]":
        if not self._pool.started:
            # Work queued before start-up (or in scripts that never start services).
            self._pool.start()
        return deferToThreadPool(self._reactor, self._pool, f, *args, **kwargs)

    def startService(self) -> None:
        super().startService()
        if not self._pool.started:
            self._pool.start()

    def stopService(self) -> None:
        super().stopService()
        self._pool.stop()


class InlineWorker:
    """Runs each call at once on the calling thread: for unit tests and one-shot commands."""

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> "Deferred[T]":
        try:
            return succeed(f(*args, **kwargs))
        except BaseException:
            return fail(Failure())
