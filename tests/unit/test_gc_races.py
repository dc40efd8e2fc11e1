"""Garbage collection against pushes, mounts and cache fills of the same digest, interleaved by
hand: the pass is held in its settle time by the test's clock, or the db worker runs one call at a
time (L{StepWorker}). No sleeps: every interleaving below happens exactly as written.

The rule under test (trow.registry.gc module docstring): a committed link never points to a
blob file that is not in place, and content that something links is never deleted.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from tests.unit.harness import result_of
from tests.unit.test_gc import CACHE, HOUR, World, open_world, blob, digest, image_manifest, run
from trow.registry.gc import Collector, PassResult
from trow.registry.manifests import parse_manifest
from trow.registry.names import Digest
from trow.storage.metadata import ManifestRecord

SETTLE = 30.0


@pytest.fixture(params=["sqlite", "postgres"])
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    """A world on each metadata backend: the races are the same, the serialisation differs (one
    db thread for sqlite, digest locks for PostgreSQL)."""
    database = request.getfixturevalue("pg_schema_url") if request.param == "postgres" else None
    yield from open_world(tmp_path, database=database)


def orphan(world: World, repo: str = "team/a", name: str = "orphan") -> tuple[str, bytes]:
    """A blob linked long ago in C{repo} and referenced by nothing: the next pass removes it."""
    data = blob(name)
    world.push_blob(repo, data)
    world.later(2 * HOUR)
    return digest(data), data


def hold(world: World, **kwargs: Any) -> tuple[Collector, "Deferred[PassResult]"]:
    """Start a pass and leave it waiting in its settle time (the files are in quarantine)."""
    kwargs.setdefault("grace", HOUR)
    collector = world.collector(settle=SETTLE, **kwargs)
    d = collector.run()
    assert collector.running, "the pass should wait for its settle time"
    return collector, d


def finish(world: World, d: "Deferred[PassResult]") -> PassResult:
    world.later(SETTLE)
    result: PassResult = result_of(d)
    return result


def in_quarantine(world: World, value: str) -> bool:
    return bool(world.sql("SELECT 1 FROM gc_quarantine WHERE digest = ?", value))


def test_the_file_is_moved_aside_during_the_settle_time(world: World) -> None:
    """Quarantine: the file leaves blobs/ for tmp/ and is recorded; deleted only at the end."""
    value, data = orphan(world)
    _, d = hold(world)
    assert not world.stored(value)
    assert in_quarantine(world, value)
    assert len(world.tmp()) == 1
    result = finish(world, d)
    assert [x for x, _ in result.removed] == [value]
    assert result.bytes == len(data)
    assert world.tmp() == [] and not in_quarantine(world, value)


def test_a_mount_that_saw_the_file_before_the_move_gets_it_back(world: World) -> None:
    """A mount stats the file (there), the pass moves it aside, then the mount links it: the
    link puts the file back before it commits, and the pass then leaves it alone."""
    value, data = orphan(world)
    assert world.stored(value)  # what the mount saw
    _, d = hold(world)
    assert not world.stored(value)
    result_of(world.metadata.link_blob("team/b", value))  # the mount's link, a moment later
    assert world.content(value) == data
    assert world.servable("team/b", value)
    result = finish(world, d)
    assert result.removed == ()
    assert world.servable("team/b", value)
    assert world.tmp() == []


def test_a_push_that_dropped_its_copy_because_the_file_was_there(world: World) -> None:
    """_commit_sync found the blob stored and discarded its own copy, the pass moved the stored
    one aside, then the push linked: the link brings the file back."""
    value, data = orphan(world)
    _, d = hold(world)
    # The push's link (finish_upload's row), after its commit saw the file in place.
    result_of(world.metadata.link_blob("team/c", value))
    assert world.servable("team/c", value)  # at once, not at the end of the pass
    finish(world, d)
    assert world.servable("team/c", value)
    assert world.content(value) == data


def test_a_push_of_the_same_bytes_during_the_quarantine(world: World) -> None:
    """A push that finds the path empty stores its own copy; the copy aside is dropped and the
    blob is whole."""
    value, data = orphan(world)
    _, d = hold(world)
    assert world.push_blob("team/c", data) == value
    result = finish(world, d)
    assert result.removed == ()
    assert world.servable("team/c", value)
    assert world.tmp() == []


def test_a_cache_fill_of_the_same_digest_during_the_quarantine(world: World) -> None:
    """A download commits its verified file and links it to the cache repository."""
    value, data = orphan(world)
    _, d = hold(world)
    world.cache_blob(CACHE, data)
    finish(world, d)
    assert world.servable(CACHE, value)
    assert world.tmp() == []


def test_a_manifest_stored_over_a_quarantined_layer_brings_it_back(world: World) -> None:
    """A cached manifest that references the quarantined blob (a manifest reference, no link
    yet) keeps the file: the proxy will link it when a client asks for it."""
    value, data = orphan(world)
    _, d = hold(world)
    world.cache_manifest(CACHE, "v1", image_manifest(blob("cfg", 10), [data]))
    assert world.content(value) == data
    result = finish(world, d)
    assert value not in {x for x, _ in result.removed}
    assert world.content(value) == data


def test_manifest_bytes_seen_before_the_move_come_back_with_the_manifest(world: World) -> None:
    """store_manifest skips writing bytes it finds stored, then stores the row: the row brings
    the quarantined bytes back."""
    config = blob("cfg", 10)
    world.push_blob("team/a", config)
    content = image_manifest(config, [])
    manifest = world.push_manifest("team/a", "v1", content)
    run(world.registry.delete_manifest("team/a", manifest))
    world.later(2 * HOUR)
    assert world.stored(manifest)  # what put_bytes saw: nothing to write
    _, d = hold(world, grace=HOUR)
    assert not world.stored(manifest)
    record = ManifestRecord("team/a", manifest, "application/vnd.oci.image.manifest.v1+json", len(content))
    result_of(world.metadata.put_manifest(record, [], ["v1"]))
    assert world.content(manifest) == content
    finish(world, d)
    assert world.content(manifest) == content


def test_a_blob_read_starts_during_the_settle_time(world: World) -> None:
    """in_use is asked again at the end of the quarantine: a blob being read by then goes back."""
    value, data = orphan(world)
    _, d = hold(world)
    world.busy.add(value)
    result = finish(world, d)
    assert result.removed == () and result.in_use == 1
    assert world.content(value) == data


def test_a_failed_restore_fails_the_link_instead_of_leaving_it_dangling(world: World) -> None:
    """If the file cannot be put back, the link is refused (the client gets an error), never
    committed over a missing file."""
    value, _ = orphan(world)

    def broken(value: str, aside: str) -> None:
        raise OSError(5, "Input/output error")

    world.blobs.put_back_sync = broken  # type: ignore[method-assign]
    _, d = hold(world)
    failures: list[Failure] = []
    world.metadata.link_blob("team/b", value).addErrback(failures.append)
    assert failures and failures[0].check(OSError)
    assert not world.linked("team/b", value)
    assert in_quarantine(world, value)
    finish(world, d)
    assert not world.linked("team/b", value)


def test_a_stopped_pass_leaves_the_quarantine_to_the_next_one(world: World) -> None:
    """stop() during the settle time ends the pass at once. Files stay aside, still restored by
    any link; the next pass ends the quarantine (here: deletes what nothing linked)."""
    value, _ = orphan(world)
    kept, kept_data = orphan(world, "team/k", "kept")
    collector, d = hold(world)
    collector.stop()
    result: PassResult = result_of(d)
    assert result.interrupted and result.removed == ()
    assert in_quarantine(world, value) and in_quarantine(world, kept)
    # A link after the stop still brings the file back.
    result_of(world.metadata.link_blob("team/b", kept))
    assert world.content(kept) == kept_data
    world.later(SETTLE + 1)
    result = world.gc(settle=SETTLE, grace=HOUR, walk_every=1000)
    assert value in {x for x, _ in result.removed}
    assert not in_quarantine(world, value)
    assert world.servable("team/b", kept)
    assert world.tmp() == []


def test_a_restart_during_the_quarantine_loses_nothing_linked(tmp_path: Path) -> None:
    """A crash mid-quarantine: start-up empties tmp/ (the files aside go, rightly: nothing linked
    them), and the next pass drops the stale records."""
    world = World(str(tmp_path / "data"))
    value, _ = orphan(world)
    hold(world)
    world.blobs.clean_tmp()  # what recover() does at start-up
    world = world.reopen()
    try:
        world.later(SETTLE + 1)
        world.gc(settle=SETTLE)
        assert not in_quarantine(world, value)
        assert not world.stored(value)
        # The digest can be pushed again as if new.
        world.push_blob("team/a", blob("orphan"))
        assert world.servable("team/a", value)
    finally:
        world.metadata.close()


def test_a_manifest_push_whose_check_came_before_the_sweep(world: World) -> None:
    """A push checks its blob is linked, the sweep removes that (old, unreferenced) link, then
    the manifest is stored: the link comes back, and the image pulls."""
    value, data = orphan(world)
    assert result_of(world.metadata.blobs_linked("team/a", [value])) == {value}  # the push's check
    _, d = hold(world)
    assert not world.linked("team/a", value)
    # put_manifest goes on after its check: store_manifest, the part after the check.
    content = image_manifest(data, [])
    run(world.registry.store_manifest("team/a", content, parse_manifest(content, None), Digest.of(content), ["v1"]))
    assert world.servable("team/a", value)
    finish(world, d)
    assert world.servable("team/a", value)


def test_no_link_comes_back_for_a_blob_already_deleted(world: World) -> None:
    """Once a pass has deleted a blob, a manifest referencing it does not bring a link to a
    missing file back."""
    value, data = orphan(world)
    world.gc(grace=HOUR)
    assert not world.stored(value)
    record = ManifestRecord("team/a", digest(b"m"), "application/vnd.oci.image.manifest.v1+json", 1)
    result_of(world.metadata.put_manifest(record, [value]))
    assert not world.linked("team/a", value)


# -- one db call at a time ---------------------------------------------------------------------


class StepWorker:
    """A worker whose calls run only when the test says so."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Deferred[Any]]] = []

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        self.queue.append((f, args, kwargs, d))
        return d

    def next_name(self) -> str:
        return getattr(self.queue[0][0], "__name__", "") if self.queue else ""

    def step(self, index: int = 0) -> None:
        f, args, kwargs, d = self.queue.pop(index)
        try:
            result = f(*args, **kwargs)
        except BaseException:
            d.errback(Failure())
        else:
            d.callback(result)

    def drain(self) -> None:
        while self.queue:
            self.step()


def test_a_link_made_between_the_listing_and_the_quarantine(world: World) -> None:
    """The pass lists the blob as unreferenced; a link is made before the quarantine call runs:
    the quarantine re-checks in the same db call as the move and leaves the file in place."""
    value, data = orphan(world)
    worker = StepWorker()
    world.metadata._worker = worker
    d = world.collector(grace=HOUR).run()
    while worker.queue and worker.next_name() != "doom":
        worker.step()
    assert worker.next_name() == "doom", "the pass should be about to quarantine"
    linked = world.metadata.link_blob("team/b", value)
    worker.step(index=len(worker.queue) - 1)  # the link runs first
    assert linked.called
    worker.step()  # the quarantine call: it must see the link and leave the file
    assert world.content(value) == data
    worker.drain()
    result: PassResult = result_of(d)
    assert result.removed == ()
    assert world.content(value) == data
    world.metadata._worker = world.db
    assert world.servable("team/b", value)


def test_a_link_made_right_after_the_quarantine_call(world: World) -> None:
    """The same, with the link queued just behind the quarantine: the file is moved, then put
    back by the link's own transaction, so no moment exists where the link is committed and
    the file missing."""
    value, data = orphan(world)
    worker = StepWorker()
    world.metadata._worker = worker
    d = world.collector(grace=HOUR, settle=SETTLE).run()
    while worker.queue and worker.next_name() != "doom":
        worker.step()
    linked = world.metadata.link_blob("team/b", value)
    worker.step()  # doom: the file goes aside
    assert not world.stored(value)
    worker.step()  # the link: the file comes back inside it
    assert linked.called and world.content(value) == data
    world.later(SETTLE)
    worker.drain()
    while not d.called and worker.queue:
        worker.drain()
    result: PassResult = result_of(d)
    assert result.removed == ()
    world.metadata._worker = world.db
    assert world.servable("team/b", value)
    assert os.listdir(os.path.join(world.root, "tmp")) == []


def test_digest_objects_and_paths_agree(world: World) -> None:
    """move_aside_sync and put_back_sync are exact inverses for a stored blob."""
    data = blob("roundtrip")
    result_of(world.blobs.put_bytes(data, Digest.of(data)))
    aside = world.blobs.move_aside_sync(digest(data))
    assert aside is not None and not world.stored(digest(data))
    world.blobs.put_back_sync(digest(data), aside)
    assert world.content(digest(data)) == data and not os.path.exists(aside)
    assert world.blobs.move_aside_sync("sha256:" + "0" * 64) is None
    assert world.blobs.move_aside_sync("not a digest") is None


def test_a_manifest_committed_during_the_sweep_keeps_its_link(tmp_path: Path, pg_schema_url: str) -> None:
    """PostgreSQL, two processes: the sweep finds an old link unreferenced, and before it deletes
    it another replica commits a manifest that references the blob (READ COMMITTED: the sweep's
    first look did not see it, and the push did not see the sweep's record). The sweep checks
    again under the digest's lock as it deletes: the link stays, the image stays whole."""
    from tests.unit.harness import open_postgres

    world = World(str(tmp_path / "data"), database=pg_schema_url)
    try:
        layer = world.push_blob("team/app", blob("layer"))
        config = world.push_blob("team/app", blob("config"))
        world.later(2 * HOUR)
        other = open_postgres(pg_schema_url)
        real_lock = world.metadata._lock
        pushed: list[str] = []

        def push_then_lock(c: Any, digests: Any) -> None:
            wanted = list(digests)
            if layer in wanted and not pushed:
                # The other replica's push, committed between the sweep's look and its delete.
                manifest = image_manifest(blob("config"), [blob("layer")])
                record = ManifestRecord("team/app", digest(manifest), "application/vnd.oci.image.manifest.v1+json", len(manifest))
                result_of(other.put_manifest(record, [config, layer], ["v1"]))
                pushed.append(record.digest)
            real_lock(c, wanted)

        world.metadata._lock = push_then_lock  # type: ignore[method-assign]
        try:
            result = world.gc(grace=HOUR)
        finally:
            other.close()
        assert pushed, "the sweep never came to delete the layer's link"
        assert ("team/app", layer) not in result.swept
        assert result_of(world.metadata.blob_linked("team/app", layer))
        assert world.stored(layer)
    finally:
        world.metadata.close()
