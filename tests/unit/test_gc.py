"""Garbage collection rules, in memory: a real Registry and stores on a temp dir, inline workers
and a hand-driven clock (trow.registry.gc, reference.md sections 3 and 7, issue 5).

The helpers here (L{World}) are shared by the other test_gc_* modules.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Coroutine, Iterator

import psycopg_pool
import pytest
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from tests.unit.harness import result_of
from trow.registry.access import AccessTracker
from trow.registry.errors import RegistryError
from trow.registry.gc import Collector, PassResult
from trow.registry.manifests import OCI_INDEX, OCI_MANIFEST, parse_manifest
from trow.registry.names import Digest
from trow.registry.service import Registry
from trow.storage.blobs import BlobStore
from trow.storage.metadata import Metadata
from trow.storage.sqlite import SqliteMetadata
from tests.unit.harness import open_postgres
from trow.storage.uploads import UploadFiles
from trow.workers import InlineWorker, Worker

HOUR = 3600.0
DAY = 24 * HOUR
CACHE = "f/docker.io/library/nginx"
OTHER_CACHE = "f/ghcr.io/acme/tool"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that completes synchronously (inline workers) and return its result."""
    return result_of(ensureDeferred(coro))


def digest(data: bytes) -> str:
    return str(Digest.of(data))


def blob(tag: str, size: int = 1000) -> bytes:
    """C{size} bytes of content unique to C{tag}."""
    seed = tag.encode() + b":"
    return (seed * (size // len(seed) + 1))[:size]


def image_manifest(config: bytes, layers: list[bytes]) -> bytes:
    """An OCI image manifest over C{config} and C{layers}."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": CONFIG_TYPE, "digest": digest(config), "size": len(config)},
            "layers": [{"mediaType": LAYER_TYPE, "digest": digest(layer), "size": len(layer)} for layer in layers],
        }
    ).encode()


def index_manifest(children: list[bytes]) -> bytes:
    """An OCI index over the image manifests C{children}."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest(c), "size": len(c)} for c in children],
        }
    ).encode()


class World:
    """A registry on a data dir, its stores, a clock, and a collector factory."""

    def __init__(
        self, root: str, db: Worker | None = None, disk: Worker | None = None, scan: int = 1000, database: str | None = None
    ) -> None:
        self.root = root
        # A PostgreSQL URL: the metadata there instead of in sqlite (the same scenarios, both backends).
        self.database = database
        # Rows per db call in the collector's scans: tiny in some runs, so that paging is exercised.
        self.scan = scan
        self.clock = Clock()
        # Wall time at the start: file mtimes (the grace for files with no row) are wall times.
        self.clock.advance(time.time())
        self.disk = disk or InlineWorker()
        self.db = db or InlineWorker()
        self.blobs = BlobStore(root, self.disk)
        self.uploads = UploadFiles(root, self.blobs, self.disk)
        self.metadata = self._open_metadata(self.db)
        self.registry = Registry(self.blobs, self.uploads, self.metadata, 4 << 20)
        self.busy: set[str] = set()

    def _open_metadata(self, worker: Worker) -> Metadata:
        if self.database is not None:
            return open_postgres(self.database, worker, self.clock.seconds)
        return SqliteMetadata(os.path.join(self.root, "trow.db"), worker, clock=self.clock.seconds)

    def reopen(self) -> "World":
        """The same data dir opened again, as after a restart (the clock carries on)."""
        self.metadata.close()
        again = World(self.root, scan=self.scan, database=self.database)
        again.clock = self.clock
        again.metadata.close()
        again.metadata = again._open_metadata(again.db)
        again.registry = Registry(again.blobs, again.uploads, again.metadata, 4 << 20)
        return again

    def collector(self, **kwargs: Any) -> Collector:
        kwargs.setdefault("settle", 0.0)
        kwargs.setdefault("in_use", self.busy.__contains__)
        kwargs.setdefault("scan", self.scan)
        return Collector(self.blobs, self.uploads, self.metadata, self.clock, **kwargs)

    def gc(self, **kwargs: Any) -> PassResult:
        """One pass with a fresh collector (so it walks the blob store too)."""
        result: PassResult = result_of(self.collector(**kwargs).run())
        return result

    def later(self, seconds: float) -> None:
        self.clock.advance(seconds)

    # -- content ----------------------------------------------------------------------------

    def push_blob(self, repo: str, data: bytes) -> str:
        run(self.registry.put_blob(repo, digest(data), data))
        return digest(data)

    def push_manifest(self, repo: str, reference: str, content: bytes) -> str:
        run(self.registry.put_manifest(repo, reference, None, content))
        return digest(content)

    def push_image(self, repo: str, tag: str, layers: list[bytes], config: bytes | None = None) -> str:
        """Push config, layers and manifest as a client would; returns the manifest digest."""
        config = config if config is not None else blob(f"config-{repo}-{tag}", 100)
        for data in [config, *layers]:
            self.push_blob(repo, data)
        return self.push_manifest(repo, tag, image_manifest(config, layers))

    def cache_manifest(self, repo: str, tag: str | None, content: bytes) -> str:
        """Store a manifest the way the proxy stores a fetched one."""
        manifest_digest = Digest.of(content)
        run(self.registry.store_manifest(repo, content, parse_manifest(content, None), manifest_digest, [tag] if tag else []))
        return str(manifest_digest)

    def cache_blob(self, repo: str, data: bytes) -> str:
        """Store a blob the way a finished download does: commit, then link."""
        result_of(self.blobs.put_bytes(data, Digest.of(data)))
        result_of(self.metadata.link_blob(repo, digest(data)))
        return digest(data)

    def cache_image(self, repo: str, tag: str, layers: list[bytes], config: bytes | None = None) -> str:
        """A pulled-through image: manifest first, then its blobs as clients fetch them."""
        config = config if config is not None else blob(f"config-{repo}-{tag}", 100)
        manifest_digest = self.cache_manifest(repo, tag, image_manifest(config, layers))
        for data in [config, *layers]:
            self.cache_blob(repo, data)
        return manifest_digest

    # -- looking ----------------------------------------------------------------------------

    def stored(self, value: str) -> bool:
        return self.blobs.size(Digest.parse(value)) is not None

    def content(self, value: str) -> bytes | None:
        data: bytes | None = result_of(self.blobs.read_bytes(Digest.parse(value)))
        return data

    def linked(self, repo: str, value: str) -> bool:
        return bool(result_of(self.metadata.blob_linked(repo, value)))

    def servable(self, repo: str, value: str) -> bool:
        """Can C{repo} serve blob C{value} (visible there, and its bytes right)?"""
        try:
            found, size = run(self.registry.stat_blob(repo, value))
        except RegistryError:
            return False
        data = self.content(value)
        return data is not None and len(data) == size and digest(data) == value

    def has_manifest(self, repo: str, value: str) -> bool:
        return result_of(self.metadata.get_manifest(repo, value)) is not None

    def tmp(self) -> list[str]:
        return sorted(os.listdir(os.path.join(self.root, "tmp")))

    def age_file(self, value: str, seconds: float) -> None:
        """Make a blob file look C{seconds} old (its mtime) on the world clock."""
        when = self.clock.seconds() - seconds
        os.utime(self.blobs.path(Digest.parse(value)), (when, when))

    def sql(self, query: str, *args: Any) -> list[Any]:
        return list(result_of(self.metadata._read(lambda c: c.execute(query, args).fetchall())))


@pytest.fixture(params=[("sqlite", 1000), ("sqlite", 2), ("postgres", 1000)], ids=["scan1000", "scan2", "postgres"])
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    """A world; every test runs three times: on sqlite, on sqlite with scans of 2 rows per db
    call (paging), and on PostgreSQL."""
    backend, scan = request.param
    database = request.getfixturevalue("pg_schema_url") if backend == "postgres" else None
    yield from open_world(tmp_path, scan=scan, database=database)


def open_world(tmp_path: Path, **kwargs: Any) -> Iterator[World]:
    """A world in C{tmp_path}, its database closed afterwards (if the test has not)."""
    instance = World(str(tmp_path / "data"), **kwargs)
    yield instance
    try:
        instance.metadata.close()
    except (sqlite3.ProgrammingError, psycopg_pool.PoolClosed):
        pass


# -- uploads -------------------------------------------------------------------------------------


def test_stale_upload_expires_with_its_file(world: World) -> None:
    """An upload session idle for longer than upload_expiry loses its row and its file; the
    registry then answers BLOB_UPLOAD_UNKNOWN for it."""
    started = run(world.registry.start_upload("team/app", None, None))
    run(world.registry.append_upload("team/app", started.upload_id, b"partial", None))
    path = world.uploads.path(started.upload_id)
    world.later(DAY - 60)
    assert world.gc(upload_expiry=DAY).uploads == 0
    assert os.path.exists(path)
    world.later(120)
    result = world.gc(upload_expiry=DAY)
    assert result.expired_uploads == (started.upload_id,)
    assert not os.path.exists(path)
    with pytest.raises(RegistryError) as caught:
        run(world.registry.upload_status("team/app", started.upload_id))
    assert caught.value.code == "BLOB_UPLOAD_UNKNOWN"


def test_upload_expiry_counts_from_the_last_chunk(world: World) -> None:
    """Activity keeps a session alive: expiry counts from its last PATCH, not from its start."""
    started = run(world.registry.start_upload("team/app", None, None))
    world.later(20 * HOUR)
    run(world.registry.append_upload("team/app", started.upload_id, b"more", None))
    world.later(20 * HOUR)
    assert world.gc(upload_expiry=DAY).uploads == 0
    assert run(world.registry.upload_status("team/app", started.upload_id)) == 4
    world.later(5 * HOUR)
    assert world.gc(upload_expiry=DAY).expired_uploads == (started.upload_id,)


# -- unreferenced blobs -------------------------------------------------------------------------


def test_unreferenced_blob_is_swept_after_the_grace_period(world: World) -> None:
    """A blob no manifest references keeps its link and file during the grace period (a push in
    progress), then loses both."""
    orphan = world.push_blob("team/app", blob("orphan"))
    world.later(HOUR - 1)
    result = world.gc(grace=HOUR)
    assert result.links == 0 and result.blobs == 0
    assert world.servable("team/app", orphan)
    world.later(2)
    result = world.gc(grace=HOUR)
    assert result.swept == (("team/app", orphan),)
    assert result.removed == ((orphan, 1000),)
    assert result.bytes == 1000
    assert not world.linked("team/app", orphan)
    assert not world.stored(orphan)
    assert world.tmp() == []


def test_referenced_content_is_never_swept(world: World) -> None:
    """An image's manifest, config and layers stay, however old, and the image still pulls."""
    layers = [blob("a"), blob("b")]
    manifest = world.push_image("team/app", "v1", layers)
    world.later(30 * DAY)
    result = world.gc(grace=HOUR)
    assert (result.links, result.blobs) == (0, 0)
    assert world.has_manifest("team/app", manifest)
    for layer in layers:
        assert world.servable("team/app", digest(layer))
    assert world.stored(manifest)


def test_index_children_and_subject_count_as_references(world: World) -> None:
    """Manifests referenced by an index, and a referrer's subject linked as a blob, are kept."""
    child = image_manifest(blob("cfg", 50), [blob("layer")])
    for data in (blob("cfg", 50), blob("layer")):
        world.push_blob("team/multi", data)
    child_digest = world.push_manifest("team/multi", digest(child), child)
    world.push_manifest("team/multi", "v1", index_manifest([child]))
    # An artifact whose subject is a blob that is only linked (odd, but a reference all the same).
    subject = world.push_blob("team/multi", blob("subject"))
    config = blob("sig-config", 20)
    world.push_blob("team/multi", config)
    referrer = json.loads(image_manifest(config, []))
    referrer["subject"] = {"mediaType": LAYER_TYPE, "digest": subject, "size": 1000}
    world.push_manifest("team/multi", "sig", json.dumps(referrer).encode())
    world.later(DAY)
    assert world.gc(grace=HOUR).links == 0
    assert world.stored(child_digest)
    assert world.servable("team/multi", digest(blob("layer")))
    assert world.servable("team/multi", subject)


def test_shared_blob_keeps_its_file_while_another_repository_uses_it(world: World) -> None:
    """The same blob, orphaned in one repository and used by an image in another: only the
    orphan link goes; the file stays and the image still pulls."""
    shared = blob("shared")
    world.push_blob("team/scratch", shared)
    world.push_image("team/app", "v1", [shared])
    world.later(2 * HOUR)
    result = world.gc(grace=HOUR)
    assert result.swept == (("team/scratch", digest(shared)),)
    assert result.blobs == 0
    assert world.servable("team/app", digest(shared))


def test_pushing_a_blob_again_restarts_its_grace_period(world: World) -> None:
    """A link made long ago and made again (a client pushing the same layer before its
    manifest) counts from the new push, although INSERT OR IGNORE keeps the old row."""
    layer = blob("again")
    world.push_blob("team/app", layer)
    world.later(5 * HOUR)
    world.push_blob("team/app", layer)
    world.later(10)
    assert world.gc(grace=HOUR).links == 0
    assert world.linked("team/app", digest(layer))
    # The client goes on with its manifest: it finds its blob there.
    world.push_manifest("team/app", "v1", image_manifest(layer, []))


def test_deleting_a_manifest_frees_what_only_it_used(world: World) -> None:
    """After DELETE of a manifest, its blobs are unreferenced: swept after the grace period,
    files and manifest bytes deleted, with no walk of the blob store needed."""
    layers = [blob("x"), blob("y")]
    manifest = world.push_image("team/app", "v1", layers)
    collector = world.collector(grace=HOUR)
    result_of(collector.run())  # the first pass walks; the next ones use the candidate list
    run(world.registry.delete_manifest("team/app", manifest))
    world.later(2 * HOUR)
    result: PassResult = result_of(collector.run())
    removed = {d for d, _ in result.removed}
    assert removed == {manifest, *(digest(x) for x in layers), digest(blob("config-team/app-v1", 100))}
    assert not any(world.stored(d) for d in removed)


def test_files_left_by_a_crash_are_found_by_the_walk(world: World) -> None:
    """A verified file with no row at all (a crash between commit and link) is deleted once
    older than the grace period; a young one may be a push about to link it, and stays."""
    old, young = blob("old-leftover"), blob("young-leftover")
    for data in (old, young):
        result_of(world.blobs.put_bytes(data, Digest.of(data)))
    world.age_file(digest(old), 2 * HOUR)
    world.age_file(digest(young), 60)
    result = world.gc(grace=HOUR)
    assert [d for d, _ in result.removed] == [digest(old)]
    assert result.young == 1
    assert world.stored(digest(young)) and not world.stored(digest(old))


def test_files_that_are_not_digests_are_left_alone(world: World) -> None:
    """Anything in blobs/ that trow did not name is never deleted (bad input never loses data)."""
    folder = os.path.join(world.root, "blobs", "sha256", "ab")
    os.makedirs(folder, exist_ok=True)
    strays = [os.path.join(folder, "ab-not-a-digest"), os.path.join(folder, "ab" + "0" * 62 + ".bak")]
    # A valid digest name filed under the wrong prefix directory: not where trow would look.
    misplaced = os.path.join(folder, "cd" + "0" * 62)
    for path in [*strays, misplaced]:
        with open(path, "wb") as handle:
            handle.write(b"x")
        os.utime(path, (0, 0))
    world.later(DAY)
    assert world.gc(grace=HOUR).blobs == 0
    assert all(os.path.exists(p) for p in [*strays, misplaced])


def test_a_blob_being_read_is_never_deleted(world: World) -> None:
    """in_use(digest) keeps an unreferenced blob for as long as it holds; the next pass after
    that deletes it."""
    orphan = world.push_blob("team/app", blob("streamed"))
    world.busy.add(orphan)
    world.later(2 * HOUR)
    collector = world.collector(grace=HOUR)
    result: PassResult = result_of(collector.run())
    assert result.in_use == 1 and result.blobs == 0
    assert world.stored(orphan)
    world.busy.clear()
    result = result_of(collector.run())
    assert [d for d, _ in result.removed] == [orphan]


def test_unknown_candidates_are_dropped_without_harm(world: World) -> None:
    """A candidate that is not a digest (it came from a manifest someone wrote oddly) or whose
    file is already gone is simply forgotten."""
    result_of(world.metadata.gc_add_candidates(["not-a-digest", digest(b"never stored")]))
    world.gc(grace=0.0)
    assert world.sql("SELECT digest FROM gc_candidates") == []


# -- eviction of cached content -------------------------------------------------------------------


def cached_images(world: World, count: int, layer_size: int = 10_000, repo: str = CACHE) -> list[str]:
    """C{count} cached images with one layer each, stored one minute apart (oldest first)."""
    digests = []
    for i in range(count):
        digests.append(world.cache_image(repo, f"v{i}", [blob(f"{repo}-layer-{i}", layer_size)]))
        world.later(60)
    return digests


def image_bytes(world: World, repo: str, manifest: str) -> int:
    """What an image of L{cached_images} takes: manifest, config and layer."""
    content = world.content(manifest)
    assert content is not None
    document = json.loads(content)
    return len(content) + document["config"]["size"] + sum(layer["size"] for layer in document["layers"])


def test_a_cached_blob_read_recently_is_not_swept(world: World) -> None:
    """A cached blob no manifest references (pulled by digest) counts from its last read, not
    from when it was linked: content in use stays until eviction needs the room."""
    lone = world.cache_blob(CACHE, blob("by-digest"))
    idle = world.cache_blob(OTHER_CACHE, blob("idle"))
    world.later(2 * HOUR)
    tracker = AccessTracker(world.metadata, world.clock)
    tracker.touch(CACHE, lone)
    result_of(tracker.flush())
    world.later(60)
    result = world.gc(grace=HOUR)
    assert result.swept == ((OTHER_CACHE, idle),)
    assert world.servable(CACHE, lone)


def test_no_eviction_under_max_size(world: World) -> None:
    """Below max_size nothing cached is removed, however old."""
    images = cached_images(world, 3)
    world.later(30 * DAY)
    result = world.gc(max_size=10 << 20)
    assert result.manifests == 0 and result.blobs == 0
    assert all(world.has_manifest(CACHE, m) for m in images)
    assert result.proxied_bytes == sum(image_bytes(world, CACHE, m) for m in images)


def test_eviction_removes_least_recently_stored_first_down_to_the_low_water_mark(world: World) -> None:
    """Above max_size, whole images go, oldest first, until the total is under low_water *
    max_size; their tags go with them, and their files."""
    images = cached_images(world, 5)
    size = image_bytes(world, CACHE, images[0])
    max_size = 4 * size  # five images: one too many
    result = world.gc(max_size=max_size, low_water=0.5)
    # Down to 2 images (<= 0.5 * 4 images): the three oldest go, in order.
    assert [m for _, m in result.evicted] == images[:3]
    assert result.proxied_bytes is not None and result.proxied_bytes <= max_size * 0.5
    assert result.proxied_bytes == 2 * size
    for manifest in images[:3]:
        assert not world.has_manifest(CACHE, manifest) and not world.stored(manifest)
    for manifest in images[3:]:
        assert world.has_manifest(CACHE, manifest)
    assert sorted(result_of(world.metadata.list_tags(CACHE, None, None))) == ["v3", "v4"]
    assert result.bytes == 3 * size


def test_a_read_refreshes_recency(world: World) -> None:
    """touch() on an old image makes it the most recent: the next oldest goes instead."""
    images = cached_images(world, 3)
    tracker = AccessTracker(world.metadata, world.clock)
    tracker.touch(CACHE, images[0])
    result_of(tracker.flush())
    size = image_bytes(world, CACHE, images[0])
    result = world.gc(max_size=3 * size - 1, low_water=1.0)
    assert [m for _, m in result.evicted] == [images[1]]
    assert world.has_manifest(CACHE, images[0])


def test_reads_touched_after_the_units_were_listed_are_spared(world: World) -> None:
    """gc_evict re-checks recency in its transaction: an image read between the listing and
    the eviction is skipped."""
    images = cached_images(world, 2)
    units = run(world.collector().oldest_units(10))
    result_of(world.metadata.gc_record_access([(CACHE, images[0], world.clock.seconds() + 1)]))
    evicted, _ = result_of(world.metadata.gc_evict(units, need=1 << 40))
    assert [m for _, m in evicted] == [images[1]]


def test_pushed_content_is_never_evicted(world: World) -> None:
    """Pushed images do not count against max_size and are never evicted, even when they are
    the oldest content and the cache alone is over the limit."""
    pushed = world.push_image("team/app", "v1", [blob("pushed-layer", 50_000)])
    world.later(60)
    images = cached_images(world, 2)
    size = image_bytes(world, CACHE, images[0])
    result = world.gc(max_size=size, low_water=1.0)
    assert [m for _, m in result.evicted] == [images[0]]
    assert world.has_manifest("team/app", pushed)
    assert world.servable("team/app", digest(blob("pushed-layer", 50_000)))


def test_a_cached_blob_also_pushed_keeps_its_file(world: World) -> None:
    """Evicting a cached image whose layer a pushed image also uses removes the cache's rows,
    not the file, and the layer does not count as cached content."""
    shared = blob("shared-layer", 20_000)
    world.push_image("team/app", "v1", [shared])
    cached = world.cache_image(CACHE, "v1", [shared])
    world.later(60)
    assert world.gc(max_size=1 << 30).proxied_bytes == image_bytes(world, CACHE, cached) - len(shared)
    result = world.gc(max_size=1, low_water=0.0)
    assert [m for _, m in result.evicted] == [cached]
    assert digest(shared) not in {d for d, _ in result.removed}
    assert world.servable("team/app", digest(shared))


def test_a_blob_shared_by_two_cache_repositories_stays_while_one_uses_it(world: World) -> None:
    """Two cached images share a layer: evicting one keeps the layer's file for the other."""
    shared = blob("base-layer", 30_000)
    first = world.cache_image(CACHE, "v1", [shared])
    world.later(60)
    second = world.cache_image(OTHER_CACHE, "v1", [shared])
    world.later(60)
    result = world.gc(max_size=image_bytes(world, OTHER_CACHE, second), low_water=1.0)
    assert [m for _, m in result.evicted] == [first]
    assert world.servable(OTHER_CACHE, digest(shared))
    assert digest(shared) not in {d for d, _ in result.removed}


def test_an_index_is_evicted_with_the_children_only_it_keeps(world: World) -> None:
    """An index and its platform manifests go together; a child manifest is never evicted on
    its own while its index stays."""
    children = [image_manifest(blob(f"cfg-{arch}", 50), [blob(f"layer-{arch}", 5_000)]) for arch in ("amd64", "arm64")]
    index = world.cache_manifest(CACHE, "multi", index_manifest(children))
    for child in children:
        world.cache_manifest(CACHE, None, child)
    world.later(60)
    # The children are the oldest things here, yet the index keeps them: only whole units go.
    units = run(world.collector().oldest_units(10))
    assert [(kind, d) for kind, _, d, _ in units] == [(0, index)]
    result = world.gc(max_size=1, low_water=0.0)
    assert sorted(m for _, m in result.evicted) == sorted([index, *(digest(c) for c in children)])
    assert not any(world.stored(digest(c)) for c in children)


def test_a_cached_blob_no_manifest_references_is_a_unit_of_its_own(world: World) -> None:
    """A blob pulled by digest alone is evicted by its own recency, among the images."""
    lone = world.cache_blob(CACHE, blob("lone", 10_000))
    world.later(60)
    images = cached_images(world, 1)
    result = world.gc(max_size=image_bytes(world, CACHE, images[0]), low_water=1.0)
    assert result.evicted == ()
    assert [d for d, _ in result.removed] == [lone]
    assert world.has_manifest(CACHE, images[0])


def test_an_evicted_blob_being_read_keeps_its_file_until_the_read_ends(world: World) -> None:
    """Eviction drops the rows, but a blob being streamed keeps its file; the next pass deletes it."""
    images = cached_images(world, 2)
    old_layer = digest(blob(f"{CACHE}-layer-0", 10_000))
    world.busy.add(old_layer)
    collector = world.collector(max_size=image_bytes(world, CACHE, images[1]), low_water=1.0)
    result: PassResult = result_of(collector.run())
    assert [m for _, m in result.evicted] == [images[0]]
    assert world.stored(old_layer) and result.in_use == 1
    world.busy.clear()
    result = result_of(collector.run())
    assert old_layer in {d for d, _ in result.removed}
    assert not world.stored(old_layer)


def test_recency_survives_a_restart(tmp_path: Path) -> None:
    """Read times are in sqlite: after a restart, eviction still goes by them."""
    world = World(str(tmp_path / "data"))
    images = cached_images(world, 3)
    tracker = AccessTracker(world.metadata, world.clock)
    tracker.startService()
    tracker.touch(CACHE, images[0])
    result_of(tracker.stopService())
    size = image_bytes(world, CACHE, images[0])
    world = world.reopen()
    try:
        result = world.gc(max_size=3 * size - 1, low_water=1.0)
        assert [m for _, m in result.evicted] == [images[1]]
    finally:
        world.metadata.close()


def test_sizes_are_recorded_once(world: World) -> None:
    """Blob sizes are stat'ed once per digest and kept in sqlite, so a pass does not stat every
    cached blob again."""
    cached_images(world, 2)
    calls: list[int] = []
    stat_many = world.blobs.stat_many

    def counting(digests: Any) -> Any:
        digests = list(digests)
        calls.append(len(digests))
        return stat_many(digests)

    world.blobs.stat_many = counting  # type: ignore[method-assign]
    collector = world.collector(max_size=10 << 20, walk_every=1000)
    result_of(collector.run())
    assert sum(calls) == 4  # two configs, two layers; manifest sizes come from their rows
    calls.clear()
    result_of(collector.run())
    assert calls == []


def test_dangling_cache_tags_are_dropped(world: World) -> None:
    """A cache tag whose manifest is gone (a race between a tag update and an eviction) is
    removed; pushed repositories' tags are never touched."""
    manifest = world.cache_image(CACHE, "v1", [blob("l")])
    result_of(world.metadata.put_tag(CACHE, "dangling", digest(b"no such manifest")))
    world.gc()
    assert result_of(world.metadata.list_tags(CACHE, None, None)) == ["v1"]
    assert world.has_manifest(CACHE, manifest)


def test_existing_data_dirs_gain_the_gc_tables(tmp_path: Path) -> None:
    """A database made before garbage collection existed opens and collects: its links count
    from repo_blobs.created."""
    path = tmp_path / "data"
    os.makedirs(path)
    conn = sqlite3.connect(str(path / "trow.db"))
    conn.executescript(
        "CREATE TABLE repo_blobs (repo TEXT NOT NULL, digest TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (repo, digest));"
    )
    data = blob("legacy")
    conn.execute("INSERT INTO repo_blobs VALUES ('old/repo', ?, 0)", (digest(data),))
    conn.commit()
    conn.close()
    world = World(str(path))
    try:
        result_of(world.blobs.put_bytes(data, Digest.of(data)))
        world.age_file(digest(data), 2 * HOUR)
        result = world.gc(grace=HOUR)
        assert result.swept == (("old/repo", digest(data)),)
        assert not world.stored(digest(data))
    finally:
        world.metadata.close()
