"""Garbage collection: stale uploads, unreferenced blobs, and eviction of cached content.

One pass (L{Collector.run}) does, in order:

1. Upload sessions with no activity for C{upload_expiry} lose their row and their file.
2. The sweep: a blob link that no manifest of its repository references (config, layer, index
   child, subject) and that was made more than C{grace} ago is removed. The time is that of the
   latest link (C{gc_links}, kept by a trigger, since an C{INSERT OR IGNORE} of an existing link
   leaves C{repo_blobs.created} alone): blobs pushed again just before their manifest are fresh.
   In cache repositories the last read counts too: a blob pulled by digest alone stays while used.
3. Above C{max_size}, eviction: the total size of what only cache repositories (C{f/...}) hold is
   brought under C{low_water * max_size} by removing, least recently used first, manifests of
   cache repositories that no other manifest there references (with their tags, and the index
   children and blob links that only they kept) and blob links that no manifest references.
   Recency is the later of the last read (L{trow.registry.access.AccessTracker}) and when the
   content was stored. Anything linked in, or referenced by a manifest of, a pushed repository is
   not counted and never evicted; a blob another cache repository still uses keeps its file.
4. Blob files left with no row anywhere (no link, no manifest, no manifest reference) are
   deleted, unless something is reading them (C{in_use}), or, except for what this pass evicted,
   the file is younger than C{grace}. Candidates come from C{gc_candidates} (a trigger records
   every digest that loses a row), plus, on the first pass and every C{walk_every} passes after,
   a walk of C{blobs/} that finds what a crash left behind, so a pass does not walk every blob.

Every table scan pages through its table in key order, C{scan} rows per db call, so a pass
never holds the single db worker for more than a few milliseconds at a time; blob sizes are
stat'ed once per digest and kept in sqlite (C{gc_sizes}).

Why deleting a file cannot race a push, a mount or a cache fill of the same digest:

Those paths look at the file (C{BlobStore._commit_sync} finds it there and drops its own copy;
a mount or a cache hit stats it) and only then link it, on the db worker, a moment later. A
collector that checked "no row" and then deleted would lose content such a path had already
decided to use. So deletion goes through a quarantine, with the single db worker (C{trow-db})
as the serialisation point:

- I{doom}: one transaction re-checks that the digest has no row and records it in
  C{gc_quarantine} with the name its file will have in C{tmp/}; a second one, once that record
  is committed, looks at the record again and renames the file there (a rename: cheap, and it
  must sit inside that look). Both hold the digest's link lock (with sqlite, the single db
  thread): no link can come between a check and a move, and a link made between the two
  transactions ends the quarantine, so the file is not moved. The record commits first, so a
  process killed at any point never leaves a file aside that no record names.
- a link, manifest or manifest reference made afterwards to a quarantined digest finds it in
  C{gc_quarantine} (every linking transaction looks first, L{trow.storage.sql.SqlMetadata._linking},
  with the restore function L{Metadata.gc_install_restore} installed): the file is renamed back
  and its directory fsynced I{inside the linking transaction, before it commits}. So a committed
  link never points to a file that is not in place; if the file cannot be put back, the link
  fails instead (the client sees an error, never a missing blob). A path that finds the file
  gone stores its own copy as usual, and the copy aside is simply dropped.
- I{settle}: the pass waits C{settle} seconds, so that every path that saw the file before it was
  moved has long made its link (and so restored it), then in one call on the db worker ends the
  quarantine: files of digests that gained a row or are being read go back, the others are
  forgotten, and their copies aside are unlinked on the disk worker (unlinking a large file can
  take a while). A path that saw the file and links only after the settle time could still link
  a deleted blob: that would take a thread stalled for C{settle} seconds between a stat and a
  db call that follows it at once. C{settle} is a constructor parameter (30 s by default).
- a crash or a stop mid-quarantine leaves the files in C{tmp/}, which start-up empties: right,
  since no link was made to them while the hook was there to restore them. Their rows are
  dropped by the next pass.

The sweep has the mirror problem: a manifest push checks that its blobs are linked, then stores
the manifest. A link swept between the two comes back when the manifest is stored (trigger
C{gc_swept_referenced}, fed by C{gc_swept}), so a stored manifest never lacks a blob its push
checked.

The one-shot command (L{trow.gccli}) holds the data dir's lock, so no server runs beside it: it
passes C{settle=0} and walks every time.

Replicas on one PostgreSQL database and one shared data dir (C{--database}) run the same passes,
one at a time across the set (L{Metadata.gc_try_lock}, an advisory lock). The serialisation point
is then each digest's transaction lock (L{trow.storage.sql.SqlMetadata._lock}) instead of the one
db thread: doom, release and every link of a digest take it, and every replica installs the
restore hook, so a link on any replica puts back a file that any replica's pass moved aside. The
files aside stay on the shared volume, in the pass's replica's scratch dir. C{in_use} covers the
digests every live replica reports in its heartbeat (L{trow.replicas.ReplicaSet}).
"""

from __future__ import annotations

import heapq
import time
from typing import Any, Callable, Iterator, Sequence, TypeVar

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from trow.config import Config
from trow.registry.access import AccessTracker
from trow.storage.blobs import BlobStore
from trow.storage.metadata import Metadata
from trow.storage.uploads import UploadFiles

_log = Logger()

T = TypeVar("T")

MANIFEST = 0
BLOB = 1

# Rows a scan looks at per db call: big enough to amortise the thread hand-off, small enough
# that requests waiting on the same db worker see a few milliseconds of delay, not a whole scan.
SCAN = 1000
# Files moved aside, or put back, per db call (each is a rename, a few tenths of a millisecond).
MOVES = 64
# Eviction units per db call (a manifest unit deletes a handful of rows per child).
EVICTIONS = 32
# Units of cached content listed per eviction round (the oldest first).
ROUND = 2048


def _never(digest: str) -> bool:
    return False


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@attrs.frozen
class PassResult:
    """What one pass removed (or, with C{dry_run}, would remove)."""

    blobs: int
    bytes: int
    uploads: int
    manifests: int
    links: int
    seconds: float
    dry_run: bool = False
    # (digest, size) of every blob file deleted.
    removed: tuple[tuple[str, int], ...] = ()
    expired_uploads: tuple[str, ...] = ()
    # (cache repository, manifest digest) evicted, index children included.
    evicted: tuple[tuple[str, str], ...] = ()
    # (repository, digest) blob links removed by the sweep.
    swept: tuple[tuple[str, str], ...] = ()
    # Blobs that eviction took out of the cache (with or without a manifest), and their bytes.
    evicted_blobs: int = 0
    evicted_bytes: int = 0
    # Size of what only cache repositories hold, after the pass (None without max_size).
    proxied_bytes: int | None = None
    # Unreferenced blobs kept this time: being read, or younger than the grace period.
    in_use: int = 0
    young: int = 0
    # True if the pass was cut short by a stop (what it had quarantined waits for the next one).
    interrupted: bool = False


class _Stopped(Exception):
    """The collector was stopped during a pass."""


class Collector:
    """The pass logic: what to remove and in what order. See the module docstring.

    C{in_use(digest)} says whether a blob is being read or downloaded right now (checked on the
    reactor thread); such blobs are never deleted in that pass. C{dry_run} touches no file:
    run it on a copy of the metadata (it still writes there), as L{trow.gccli} does.
    """

    def __init__(
        self,
        blobs: BlobStore,
        uploads: UploadFiles,
        metadata: Metadata,
        clock: IReactorTime,
        grace: float = 3600.0,
        upload_expiry: float = 86400.0,
        max_size: int | None = None,
        low_water: float = 0.9,
        in_use: Callable[[str], bool] = _never,
        settle: float = 30.0,
        walk_every: int = 144,
        dry_run: bool = False,
        scan: int = SCAN,
    ) -> None:
        if not 0 <= low_water <= 1:
            raise ValueError(f"low_water is a fraction of max_size, got {low_water}")
        self.blobs = blobs
        self.uploads = uploads
        self.metadata = metadata
        self._clock = clock
        self.grace = grace
        self.upload_expiry = upload_expiry
        self.max_size = max_size
        self.low_water = low_water
        self.in_use = in_use
        self.settle = settle
        self.walk_every = max(1, walk_every)
        self.dry_run = dry_run
        self.scan = scan
        self.passes = 0
        self._hooked = False
        self._running = False
        self._stopping = False
        self._sleep: Deferred[None] | None = None

    @classmethod
    def from_config(
        cls, config: Config, blobs: BlobStore, uploads: UploadFiles, metadata: Metadata, clock: IReactorTime, **kwargs: Any
    ) -> "Collector":
        """A collector with the C{gc:} section's grace and upload expiry and C{registry_proxies.max_size}."""
        kwargs.setdefault("grace", config.gc.grace)
        kwargs.setdefault("upload_expiry", config.gc.upload_expiry)
        kwargs.setdefault("settle", config.gc.settle)
        kwargs.setdefault("max_size", config.registry_proxies.max_size)
        return cls(blobs, uploads, metadata, clock, **kwargs)

    @property
    def running(self) -> bool:
        """Is a pass in progress?"""
        return self._running

    def prepare(self) -> "Deferred[None]":
        """Install the restore hook on the db connection (done by the first pass otherwise):
        files a previous run left in quarantine then come back the moment something links them."""
        if self._hooked or self.dry_run:
            return succeed(None)

        def hooked(_: object) -> None:
            self._hooked = True

        return self.metadata.gc_install_restore(self.blobs.put_back_sync).addCallback(hooked)

    def stop(self) -> None:
        """Cut a running pass short at its next step (at once if it waits for files to settle).
        Files it moved aside stay in quarantine: safe, and dealt with by a later pass or start-up."""
        self._stopping = True
        if self._sleep is not None:
            self._sleep.cancel()

    def run(self) -> "Deferred[PassResult]":
        """Run one pass. Refused (RuntimeError) while another is running."""
        if self._running:
            raise RuntimeError("a garbage collection pass is already running")
        self._running = True
        self._stopping = False

        def done(result: object) -> object:
            self._running = False
            return result

        return ensureDeferred(self._run()).addBoth(done)

    # -- the pass --------------------------------------------------------------------------

    def _check(self) -> None:
        if self._stopping:
            raise _Stopped()

    async def _run(self) -> PassResult:
        started = time.monotonic()
        now = self._clock.seconds()
        walk = self.passes % self.walk_every == 0
        self.passes += 1
        state = _PassState()
        try:
            if not self.dry_run:
                await self.prepare()
                await self._leftovers(now, state)
            self._check()
            await self._expire_uploads(now, state)
            self._check()
            await self._tidy(now)
            await self._sweep(now, state)
            self._check()
            await self._evict(state)
            self._check()
            await self._delete_files(now, walk, state)
        except _Stopped:
            state.interrupted = True
        return state.result(self.dry_run, time.monotonic() - started)

    async def _tidy(self, now: float) -> None:
        # Sweep records outlive the settle time of the pass that made them, no more.
        await self.metadata.gc_forget_swept(before=now - self.settle)
        tags: tuple[str, str] | None = ("f/", "")
        while tags is not None:
            tags = await self.metadata.gc_tidy_tags(tags, self.scan)
            self._check()
        access: tuple[str, str] | None = ("", "")
        while access is not None:
            access = await self.metadata.gc_tidy_access(access, self.scan)
            self._check()

    async def _leftovers(self, now: float, state: "_PassState") -> None:
        """Quarantines an earlier pass did not end (stopped, crashed): end them now."""
        left = await self.metadata.gc_quarantined(before=now - self.settle)
        if left:
            await self._release(left, {}, state)

    async def _expire_uploads(self, now: float, state: "_PassState") -> None:
        cutoff = now - self.upload_expiry
        for record in await self.metadata.gc_stale_uploads(cutoff):
            if self.dry_run:
                state.uploads.append(record.uuid)
            elif await self.metadata.gc_drop_stale_upload(record.uuid, cutoff):
                # The row goes first: a crash in between leaves a file that start-up removes.
                await self.uploads.delete(record.uuid)
                state.uploads.append(record.uuid)

    async def _sweep(self, now: float, state: "_PassState") -> None:
        cutoff = now - self.grace
        after: tuple[str, str] | None = ("", "")
        while after is not None:
            swept, after = await self.metadata.gc_sweep_links(cutoff, now, after, self.scan)
            state.swept += swept
            self._check()

    async def _refresh_sizes(self) -> None:
        """Record the size of every cached blob not sized yet (a stat each, once per digest)."""
        after: tuple[str, str] | None = ("f/", "")
        while after is not None:
            after = await self.metadata.gc_size_manifests(after, self.scan)
            self._check()
        after = ("f/", "")
        while after is not None:
            unsized, after = await self.metadata.gc_unsized(after, self.scan)
            if unsized:
                stats = await self.blobs.stat_many(unsized)
                if stats:
                    await self.metadata.gc_record_sizes({d: size for d, (size, _) in stats.items()})
            self._check()

    async def _proxied_bytes(self) -> int:
        total = 0
        after: str | None = ""
        while after is not None:
            part, after = await self.metadata.gc_proxied_bytes(after, self.scan)
            total += part
            self._check()
        return total

    async def oldest_units(self, count: int) -> list[tuple[int, str, str, float]]:
        """The C{count} least recently used units of cached content, oldest first."""
        oldest: list[tuple[float, int, str, str]] = []
        for kind in (MANIFEST, BLOB):
            after: tuple[str, str] | None = ("f/", "")
            while after is not None:
                units, after = await self.metadata.gc_lru_page(kind, after, self.scan)
                merged = oldest + [(used, k, repo, digest) for k, repo, digest, used in units]
                oldest = heapq.nsmallest(count, merged)
                self._check()
        return [(k, repo, digest, used) for used, k, repo, digest in oldest]

    async def _evict(self, state: "_PassState") -> None:
        if self.max_size is None:
            return
        await self._refresh_sizes()
        total = await self._proxied_bytes()
        target = int(self.max_size * self.low_water)
        if total > self.max_size:
            _log.info(
                "cached content takes {total} bytes, above max_size {max_size}: evicting down to {target}",
                total=total,
                max_size=self.max_size,
                target=target,
            )
            while total > target:
                units = await self.oldest_units(ROUND)
                progress = False
                for chunk in _chunks(units, EVICTIONS):
                    evicted, freed = await self.metadata.gc_evict(chunk, need=total - target)
                    state.evicted += evicted
                    state.freed.update(freed)
                    total -= sum(freed.values())
                    progress = progress or bool(evicted or freed)
                    self._check()
                    if total <= target:
                        break
                if not progress:
                    # Nothing left, or everything offered was read again meanwhile: next pass.
                    break
        state.proxied_bytes = total

    async def _delete_files(self, now: float, walk: bool, state: "_PassState") -> None:
        listed: dict[str, bool] = {}
        after: str | None = ""
        while after is not None:
            page, after = await self.metadata.gc_candidates(after, self.scan)
            listed.update(page)
            self._check()
        candidates = set(listed)
        candidates.update(state.freed)
        # Freed by eviction, now or by an earlier pass that had to keep the file (being read).
        evicted = {d for d, freed in listed.items() if freed} | state.freed.keys()
        if walk:
            stored = await self.blobs.walk()
            for chunk in _chunks(stored, self.scan):
                candidates.update(await self.metadata.gc_without_rows(chunk))
                self._check()
        if not candidates:
            return
        stats = await self.blobs.stat_many(sorted(candidates))
        gone = candidates - stats.keys()
        if gone and not self.dry_run:
            await self.metadata.gc_drop_candidates(gone)
        ready: list[str] = []
        for digest in sorted(stats):
            if self.in_use(digest):
                state.in_use += 1
            elif digest not in evicted and stats[digest][1] > now - self.grace:
                # A file this young may be a push that has not linked it yet: next pass.
                state.young += 1
            else:
                ready.append(digest)
        if self.dry_run:
            # The copy of the metadata is the one thing a dry run may change: check rows there.
            for chunk in _chunks(ready, self.scan):
                for digest in await self.metadata.gc_without_rows(chunk):
                    state.removed.append((digest, stats[digest][0]))
            return
        moved: list[tuple[str, str]] = []
        try:
            for chunk in _chunks(ready, MOVES):
                moved += await self.metadata.gc_quarantine(
                    chunk, self.blobs.aside_name, self.blobs.move_to_sync, self.blobs.put_back_sync, now
                )
                self._check()
            if moved and self.settle > 0:
                self._sleep = deferLater(self._clock, self.settle, lambda: None)
                try:
                    await self._sleep
                except CancelledError:
                    raise _Stopped() from None
                finally:
                    self._sleep = None
        except _Stopped:
            if moved:
                _log.info("gc stopped with {count} blob files in quarantine; the next pass ends it", count=len(moved))
            raise
        await self._release(moved, {d: stats[d][0] for d, _ in moved}, state)

    async def _release(self, moved: list[tuple[str, str]], sizes: dict[str, int], state: "_PassState") -> None:
        keep = {digest for digest, _ in moved if self.in_use(digest)}
        state.in_use += len(keep)
        doomed: list[tuple[str, str]] = []
        for chunk in _chunks([d for d, _ in moved], MOVES):
            doomed += await self.metadata.gc_release(chunk, keep, self.blobs.put_back_sync)
        # Every path aside of these digests: doomed copies, and copies left aside because the
        # blob was stored again meanwhile. Files put back are no longer there.
        unlinked = await self.blobs.remove_aside([path for _, path in moved])
        for digest, path in doomed:
            state.removed.append((digest, unlinked.get(path, sizes.get(digest, 0))))


@attrs.define
class _PassState:
    uploads: list[str] = attrs.Factory(list)
    swept: list[tuple[str, str]] = attrs.Factory(list)
    evicted: list[tuple[str, str]] = attrs.Factory(list)
    freed: dict[str, int] = attrs.Factory(dict)
    removed: list[tuple[str, int]] = attrs.Factory(list)
    proxied_bytes: int | None = None
    in_use: int = 0
    young: int = 0
    interrupted: bool = False

    def result(self, dry_run: bool, seconds: float) -> PassResult:
        return PassResult(
            blobs=len(self.removed),
            bytes=sum(size for _, size in self.removed),
            uploads=len(self.uploads),
            manifests=len(self.evicted),
            links=len(self.swept),
            seconds=seconds,
            dry_run=dry_run,
            removed=tuple(self.removed),
            expired_uploads=tuple(self.uploads),
            evicted=tuple(self.evicted),
            swept=tuple(self.swept),
            evicted_blobs=len(self.freed),
            evicted_bytes=sum(self.freed.values()),
            proxied_bytes=self.proxied_bytes,
            in_use=self.in_use,
            young=self.young,
            interrupted=self.interrupted,
        )


class GarbageCollector(Service):
    """Runs a L{Collector} pass every C{interval} seconds (none if C{interval} is 0).

    Never two passes at once; a pass that fails is logged and the next one runs as planned. Read
    times are flushed (C{tracker}) before each pass. C{on_pass(result)} sees every result (for
    metrics; an exception there is logged). Stopping cuts a running pass short and waits for it.
    """

    def __init__(
        self,
        collector: Collector,
        clock: IReactorTime,
        interval: float,
        tracker: AccessTracker | None = None,
        on_pass: Callable[[PassResult], object] | None = None,
        first_delay: float | None = None,
        on_failure: Callable[[float], object] | None = None,
    ) -> None:
        self.collector = collector
        self._clock = clock
        self.interval = interval
        self._tracker = tracker
        self._on_pass = on_pass
        self._on_failure = on_failure
        self._first_delay = min(interval, 60.0) if first_delay is None else first_delay
        self._call: IDelayedCall | None = None
        self._current: Deferred[PassResult | None] | None = None
        self._waiters: list[Deferred[PassResult | None]] = []
        # The last few results, and how many passes failed (for a metrics gauge or counter).
        self.results: list[PassResult] = []
        self.failures = 0
        # Passes not run because another replica was running one.
        self.skipped = 0
        # When the last result came (clock seconds).
        self.last_at: float | None = None

    def startService(self) -> None:
        super().startService()
        self.collector.prepare().addErrback(lambda f: _log.failure("installing the gc restore hook failed", f))
        if self.interval > 0:
            self._schedule(self._first_delay)

    @property
    def next_at(self) -> float | None:
        """When the next pass is planned (clock seconds), or None (none planned, or one runs)."""
        call = self._call
        return call.getTime() if call is not None and call.active() else None

    @property
    def running_pass(self) -> bool:
        """Is a pass running now?"""
        return self._current is not None

    def _schedule(self, delay: float) -> None:
        self._call = self._clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._call = None
        self.run_pass().addBoth(self._next)

    def _next(self, _: object) -> None:
        if self.running and self.interval > 0 and self._call is None:
            self._schedule(self.interval)

    def run_pass(self) -> "Deferred[PassResult | None]":
        """Run a pass now, or join the one running. Fires with its result (None if it failed)."""
        waiter: Deferred[PassResult | None] = Deferred()
        self._waiters.append(waiter)
        if self._current is None:
            self._current = ensureDeferred(self._pass())
            self._current.addBoth(self._finished)
        return waiter

    def _finished(self, result: PassResult | None) -> None:
        self._current = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(result)

    async def _pass(self) -> PassResult | None:
        started = self._clock.seconds()
        metadata = self.collector.metadata
        try:
            if self._tracker is not None:
                await self._tracker.flush()
            # Replicas on one database run one pass at a time between them, about one per
            # interval in all: a replica skips while another runs or ran one lately.
            if not await metadata.gc_try_lock(self.interval / 2):
                self.skipped += 1
                _log.debug("another replica is collecting garbage; skipping this pass")
                return None
            try:
                result = await self.collector.run()
            finally:
                await metadata.gc_unlock()
        except Exception:
            self.failures += 1
            _log.failure("garbage collection pass failed; the next one runs as planned")
            if self._on_failure is not None:
                try:
                    self._on_failure(self._clock.seconds() - started)
                except Exception:
                    _log.failure("the gc on_failure observer failed")
            return None
        self.results = self.results[-9:] + [result]
        self.last_at = self._clock.seconds()
        _log.info(
            "gc pass removed {blobs} blobs ({bytes} bytes), {uploads} uploads, {manifests} evicted manifests "
            "in {seconds:.2f}s",
            blobs=result.blobs,
            bytes=result.bytes,
            uploads=result.uploads,
            manifests=result.manifests,
            links=result.links,
            proxied_bytes=result.proxied_bytes,
            in_use=result.in_use,
            young=result.young,
            seconds=result.seconds,
        )
        if self._on_pass is not None:
            try:
                self._on_pass(result)
            except Exception:
                _log.failure("the gc on_pass observer failed")
        return result

    def stopService(self) -> "Deferred[None]":
        """Cancel the next pass, cut a running one short, and fire once it has ended."""
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._current is None:
            return succeed(None)
        # Join the running pass before stopping it: stop() may end it at once.
        ended = self.run_pass()
        self.collector.stop()
        return ended.addCallback(lambda _: None)

