"""Blobs in use are never deleted by garbage collection: the C{in_use} that L{trow.app.add_gc}
builds (from C{registry.reading}, C{fetcher.downloads} and, with replicas, C{replicas.in_use}) as
the collector it wires really runs it, in memory.

Each test builds the GC the way L{trow.app.build_service} does, through C{add_gc} itself (a
L{MultiService} root, the stores, the registry, a fetcher, a tracker, metrics, and a
L{ReplicaSet} where replicas matter), and runs passes of the L{GarbageCollector} it returns by
hand. The world is the one of L{tests.unit.test_gc} (a real registry and stores on a temp dir,
sqlite, inline workers, one hand-driven clock for the metadata and the GC); the upstream of the
fetcher is hand-driven (L{FakeBlobUpstream}); the replica set runs over
L{tests.unit.test_replicas.FakeReplicaMetadata} on a clock of its own. Only sqlite: C{in_use} is
asked on the reactor, the same whatever the metadata backend.

Every test first shows the blob kept while it is in use, then removed by the next pass once it
is not: an C{in_use} that always said False (or True) fails each of them.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import attrs
import pytest
from twisted.application.service import MultiService
from twisted.internet.task import Clock

from tests.unit.harness import result_of
from tests.unit.proxy_fakes import FakeBlobUpstream, full_response
from tests.unit.test_gc import HOUR, World, blob, open_world
from tests.unit.test_replicas import ME, PEER, URL, FakeBlobs, FakeReplicaMetadata, FakeUploads
from trow.app import Stores, add_gc
from trow.config import Config, GCConfig, ProxyConfig
from trow.metrics import Metrics
from trow.proxy.names import ProxiedName, UpstreamDirectory
from trow.proxy.tee import Download, Fetcher
from trow.proxy.upstream import UpstreamStatus
from trow.registry.access import AccessTracker
from trow.registry.gc import GarbageCollector, PassResult
from trow.registry.names import Digest
from trow.replicas import BEAT, ReplicaSet

# The config's settle time: a pass that moved files aside waits this long before it deletes them.
SETTLE = 30.0
ORPHAN = blob("orphan", 4096)


def cache_name() -> ProxiedName:
    name = UpstreamDirectory(ProxyConfig()).for_cache_name("f/docker.io/library/nginx")
    assert name is not None
    return name


@attrs.define
class Wired:
    """A world with a GC wired by add_gc, and what feeds its in_use."""

    world: World
    root: MultiService
    gc: GarbageCollector
    fetcher: Fetcher
    upstream: FakeBlobUpstream
    metrics: Metrics
    replicas: ReplicaSet | None = None
    replica_clock: Clock | None = None
    peers: FakeReplicaMetadata | None = None

    def gc_pass(self) -> PassResult:
        """One pass, as the service runs it (tracker flushed, lock taken), through its settle time."""
        d = self.gc.run_pass()
        self.world.clock.advance(SETTLE)
        result: PassResult | None = result_of(d)
        assert result is not None, "the pass failed (see the log)"
        return result

    def orphan(self) -> str:
        """A blob pushed to team/app that no manifest references, past the grace period."""
        value = self.world.push_blob("team/app", ORPHAN)
        self.world.later(2 * HOUR)
        return value

    def beat(self, busy: list[str]) -> None:
        """The peer replica's next heartbeat reports C{busy}; ours reads it."""
        assert self.peers is not None and self.replica_clock is not None
        self.peers.others = [(PEER, URL, busy)]
        self.replica_clock.advance(BEAT)


def wire(world: World, with_replicas: bool = False) -> Wired:
    """The GC of trow.app: add_gc over C{world}'s stores and registry, a fetcher beside them,
    and a replica set if asked, all as build_service passes them."""
    root = MultiService()
    upstream = FakeBlobUpstream()
    metrics = Metrics()
    fetcher = Fetcher(world.blobs, world.metadata, upstream, world.clock, metrics=metrics)  # type: ignore[arg-type]
    replicas = replica_clock = peers = None
    if with_replicas:
        replica_clock = Clock()
        peers = FakeReplicaMetadata(replica_clock)
        replicas = ReplicaSet(
            peers,  # type: ignore[arg-type]
            FakeBlobs(),  # type: ignore[arg-type]
            FakeUploads(),  # type: ignore[arg-type]
            replica_clock,
            ME,
            URL,
            # What this replica reports to the others: a copy of build_service's lambda (not
            # reachable from add_gc; these tests look at what the peers report, not at this).
            busy=lambda: world.registry.blobs_in_use() | set(fetcher.downloads),
        )
        replicas.setServiceParent(root)
        replicas.startService()
        replica_clock.advance(0)  # migrated, first heartbeat
        assert replicas.ready
    settings = SimpleNamespace(config=Config(gc=GCConfig(grace=HOUR, settle=SETTLE)))
    stores = Stores(blobs=world.blobs, uploads=world.uploads, metadata=world.metadata)
    tracker = AccessTracker(world.metadata, world.clock)
    gc = add_gc(root, settings, world.clock, stores, world.registry, fetcher, tracker, metrics, replicas)
    assert gc.parent is root and gc.collector.in_use is not None
    return Wired(world, root, gc, fetcher, upstream, metrics, replicas, replica_clock, peers)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from open_world(tmp_path)


@pytest.fixture
def wired(world: World) -> Wired:
    return wire(world)


# -- a blob GET in progress -----------------------------------------------------------------------


def test_a_blob_being_read_is_kept_then_deleted_once_the_read_ended(wired: Wired) -> None:
    """An unreferenced blob past the grace period whose GET is in progress (the
    registry.reading_blob context of the API's _blob_get) keeps its file through a pass, which
    still sweeps its link; the next pass after the read ended deletes the file."""
    world = wired.world
    orphan = wired.orphan()
    with world.registry.reading_blob(orphan):
        assert orphan in world.registry.reading
        result = wired.gc_pass()
        assert result.swept == (("team/app", orphan),)
        assert result.in_use == 1 and result.blobs == 0
        assert world.stored(orphan) and world.content(orphan) == ORPHAN
    assert world.registry.reading == {}
    result = wired.gc_pass()
    assert result.removed == ((orphan, len(ORPHAN)),)
    assert not world.stored(orphan)
    assert world.tmp() == []


def test_overlapping_reads_keep_a_blob_until_the_last_one_ended(wired: Wired) -> None:
    """Two GETs of one blob: the first to end does not end the protection of the other."""
    world = wired.world
    orphan = wired.orphan()
    first = world.registry.reading_blob(orphan)
    second = world.registry.reading_blob(orphan)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    result = wired.gc_pass()
    assert result.in_use == 1 and world.stored(orphan)
    second.__exit__(None, None, None)
    assert [d for d, _ in wired.gc_pass().removed] == [orphan]
    assert not world.stored(orphan)


def test_a_read_that_fails_ends_its_protection(wired: Wired) -> None:
    """A GET that ends with an error (the client went away) stops counting as a read too."""
    world = wired.world
    orphan = wired.orphan()
    with pytest.raises(ConnectionError):
        with world.registry.reading_blob(orphan):
            assert wired.gc_pass().in_use == 1
            raise ConnectionError("client went away")
    assert [d for d, _ in wired.gc_pass().removed] == [orphan]


# -- a download in flight ---------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["fails", "completes"])
def test_a_blob_being_downloaded_is_kept(wired: Wired, ending: str) -> None:
    """An unreferenced blob file past the grace period whose download is in flight (the cache
    fetching the same digest from an upstream, nobody reading it here) keeps its file through a
    pass. Then: if the download fails, the next pass deletes the file; if it completes, the blob
    is in the cache repository and the next pass keeps it."""
    world = wired.world
    orphan = wired.orphan()
    name = cache_name()
    download: Download = wired.fetcher.get(name, Digest.parse(orphan))
    assert orphan in wired.fetcher.downloads and orphan not in world.registry.reading
    result = wired.gc_pass()
    assert result.in_use == 1 and result.blobs == 0
    assert world.stored(orphan) and world.content(orphan) == ORPHAN
    request = wired.upstream.requests[-1]
    if ending == "fails":
        request.deferred.errback(UpstreamStatus(404, "blob unknown to the upstream"))
        assert download.failure is not None and wired.fetcher.downloads == {}
        assert [d for d, _ in wired.gc_pass().removed] == [orphan]
        assert not world.stored(orphan)
    else:
        request.respond(full_response(ORPHAN))
        assert download.complete and wired.fetcher.downloads == {}
        result = wired.gc_pass()
        assert result.blobs == 0 and result.in_use == 0
        assert world.servable(name.cache_repo, orphan)


# -- another replica's reads and downloads ------------------------------------------------------


def test_a_digest_another_replica_reports_in_use_is_kept(world: World) -> None:
    """A digest that a live peer replica reports in its heartbeat (reading or downloading it
    there) keeps its file through a pass here, though nothing here uses it; once the peer's next
    heartbeat no longer lists it, the next pass deletes it."""
    wired = wire(world, with_replicas=True)
    assert wired.replicas is not None
    orphan = wired.orphan()
    wired.beat([orphan])
    assert wired.replicas.in_use(orphan)
    assert orphan not in world.registry.reading and orphan not in wired.fetcher.downloads
    result = wired.gc_pass()
    assert result.in_use == 1 and result.blobs == 0
    assert world.stored(orphan)
    wired.beat([])
    assert [d for d, _ in wired.gc_pass().removed] == [orphan]
    assert not world.stored(orphan)
    result_of(wired.replicas.stopService())

