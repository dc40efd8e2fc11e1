"""Replicas on one PostgreSQL database and one shared data dir (C{--database}).

L{ReplicaSet} is this process's membership of the set. At start it connects to the database and
applies the schema migrations, retrying with backoff while the database cannot be reached (the
listeners are up meanwhile: C{/readiness} says 503, metadata calls answer 503). Then, every few
seconds, it writes a heartbeat (this replica's id, its peer URL, and the digests it is reading or
downloading now) and reads the others': which peers are alive, and which digests they are using,
which garbage collection keeps. It removes the scratch dirs of replicas that died, and the upload
files that no session owns, once they are old: never the work of a live peer.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import Any, Callable, Iterable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from trow.metrics import Metrics
from trow.storage.blobs import BlobStore
from trow.storage.metadata import MetadataUnavailable
from trow.storage.postgres import PostgresMetadata, SchemaTooNew
from trow.storage.uploads import UploadFiles

_log = Logger()

# Heartbeat period, and how long a silent replica counts as alive: a few missed beats.
BEAT = 5.0
DEAD_AFTER = 30.0
# Leftovers (a dead replica's scratch dir, an upload file without a session) younger than this
# are left alone: a peer may be about to use them.
LEFTOVER_AGE = 3600.0
# Backoff while the database cannot be reached at start-up.
FIRST_RETRY = 0.5
MAX_RETRY = 10.0


def new_replica_id() -> str:
    """A name for this process, unique across the set and its restarts: host, pid, random."""
    host = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class ReplicaSet(Service):
    """This replica's connection to the set: migrations, heartbeats, peers, leftovers."""

    def __init__(
        self,
        metadata: PostgresMetadata,
        blobs: BlobStore,
        uploads: UploadFiles,
        clock: IReactorTime,
        replica_id: str,
        peer_url: str,
        busy: Callable[[], Iterable[str]],
        on_fatal: Callable[[str], object] | None = None,
        metrics: Metrics | None = None,
        beat: float = BEAT,
        dead_after: float = DEAD_AFTER,
    ) -> None:
        self.metadata = metadata
        self.blobs = blobs
        self.uploads = uploads
        self._clock = clock
        self.replica_id = replica_id
        self.peer_url = peer_url
        self._busy = busy
        self._on_fatal = on_fatal
        self.metrics = metrics or Metrics()
        self._beat = beat
        self._dead_after = dead_after
        self._call: IDelayedCall | None = None
        self._retry = FIRST_RETRY
        self._running: Deferred[None] | None = None
        self._reported_down = False
        # id -> peer URL of every live replica (this one included), and what they are reading.
        # Set by the wiring: the bound port of the first listener, for a peer URL given with
        # port 0 (tests, or --listen tcp:0).
        self.resolve_port: Callable[[], int | None] = lambda: None
        self.peers: dict[str, str] = {}
        self.peer_busy: frozenset[str] = frozenset()
        self.beats = 0

    @property
    def ready(self) -> bool:
        """Migrated and connected: metadata calls can succeed."""
        return self.metadata.migrated

    def in_use(self, digest: str) -> bool:
        """Is a peer reading or downloading C{digest} (as of its last heartbeat)?"""
        return digest in self.peer_busy

    def startService(self) -> None:
        super().startService()
        self._schedule(0)

    def _schedule(self, delay: float) -> None:
        if self.running:
            self._call = self._clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._call = None
        self._running = ensureDeferred(self._step())
        self._running.addErrback(lambda f: _log.failure("replica heartbeat failed", f))

        def next_step(_: object) -> None:
            self._running = None

        self._running.addBoth(next_step)

    async def _step(self) -> None:
        try:
            if not self.metadata.migrated:
                await self.metadata.migrate()
                if not self.running:
                    return  # stopped while migrating: no heartbeat after the stop
                _log.info(
                    "replica {replica} connected to {where}; other replicas reach it at {peer_url}",
                    replica=self.replica_id,
                    where=self.metadata.where,
                    peer_url=self.peer_url,
                )
            await self._heartbeat()
        except SchemaTooNew as e:
            _log.critical("{message}", message=str(e))
            if self._on_fatal is not None:
                self._on_fatal(str(e))
            return
        except MetadataUnavailable as e:
            self.metrics.database_up.set(0)
            if not self._reported_down:
                _log.warn("{reason}; retrying (readiness answers 503 meanwhile)", reason=str(e))
                self._reported_down = True
            delay, self._retry = self._retry, min(self._retry * 2, MAX_RETRY)
            self._schedule(delay)
            return
        if self._reported_down:
            _log.info("the database {where} answers again", where=self.metadata.where)
            self._reported_down = False
        self._retry = FIRST_RETRY
        self._schedule(self._beat)

    def _own_url(self) -> str:
        if self.peer_url.endswith(":0"):
            port = self.resolve_port()
            if port:
                self.peer_url = f"{self.peer_url[:-2]}:{port}"
        return self.peer_url

    async def _heartbeat(self) -> None:
        live = await self.metadata.replica_beat(self.replica_id, self._own_url(), self._busy(), self._dead_after)
        self.peers = {replica: url for replica, url, _ in live}
        self.metrics.database_up.set(1)
        self.metrics.replicas_alive.set(len(self.peers))
        self.peer_busy = frozenset(d for replica, _, busy in live if replica != self.replica_id for d in busy)
        self.beats += 1
        if self.beats % 60 == 1:
            await self.clean_leftovers()

    async def clean_leftovers(self) -> None:
        """Remove what dead replicas left: their scratch dirs, and upload files no session owns,
        both only once old (see L{LEFTOVER_AGE})."""
        alive = set(self.peers)
        scratch = await self.blobs.worker.run(self.blobs.clean_dead_scratch, alive, LEFTOVER_AGE)
        known = await self.metadata.upload_ids()
        orphans = await self.blobs.worker.run(self.uploads.remove_orphans, known, LEFTOVER_AGE)
        if scratch or orphans:
            _log.info(
                "removed the scratch dirs of {scratch} dead replicas and {orphans} orphaned upload files",
                scratch=scratch,
                orphans=orphans,
            )

    def stopService(self) -> "Deferred[Any]":
        """Stop beating and leave the set (peers stop counting on this replica at once). A step
        in flight (a migration or a heartbeat) is let finish first, so that the leave is this
        replica's last write and no heartbeat follows it."""
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

        async def leave() -> None:
            if self._running is not None:
                await self._running
            if not self.metadata.migrated:
                return
            try:
                await self.metadata.replica_leave(self.replica_id)
            except Exception as e:
                _log.warn("could not leave the replica set cleanly: {why}", why=str(e))

        return ensureDeferred(leave())
