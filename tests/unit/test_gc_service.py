"""The garbage collection service and the read-time tracker, on a hand-driven clock: schedule,
one pass at a time, failures logged and survived, stop, logs and the on_pass observer; touch
never waiting on sqlite, batched flushes, flush at stop, and failed writes kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Iterator

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.logger import LogEvent, formatEvent

from tests.unit.harness import result_of
from tests.unit.test_gc import CACHE, HOUR, World, open_world, blob
from tests.unit.test_gc_races import StepWorker
from trow.config import Config, GCConfig, ProxyConfig
from trow.registry.access import AccessTracker
from trow.registry.gc import Collector, GarbageCollector, PassResult

INTERVAL = 600.0


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from open_world(tmp_path)


def texts(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events]


def orphan(world: World, name: str) -> str:
    value = world.push_blob("team/a", blob(name))
    return value


# -- the service --------------------------------------------------------------------------------


def test_passes_run_every_interval_and_reach_the_observer(world: World, logged: list[LogEvent]) -> None:
    """A first pass after first_delay, then one per interval; each result goes to on_pass and to
    the log with what it removed."""
    seen: list[PassResult] = []
    service = GarbageCollector(world.collector(grace=HOUR), world.clock, INTERVAL, on_pass=seen.append, first_delay=5)
    service.startService()
    orphan(world, "one")
    world.later(4)
    assert seen == []
    world.later(1)
    assert len(seen) == 1 and seen[0].blobs == 0
    world.later(2 * HOUR)  # several intervals in one jump: the clock fires one call per advance
    world.later(INTERVAL)
    assert len(seen) >= 2
    assert sum(r.blobs for r in seen) == 1 and sum(r.bytes for r in seen) == 1000
    lines = [t for t in texts(logged) if t.startswith("gc pass removed")]
    assert "gc pass removed 1 blobs (1000 bytes), 0 uploads, 0 evicted manifests in" in "\n".join(lines)
    event = next(e for e in logged if e.get("blobs") == 1)
    assert event["links"] == 1 and event["bytes"] == 1000
    result_of(service.stopService())


def test_an_interval_of_zero_runs_no_pass(world: World) -> None:
    """gc.interval 0 switches the periodic passes off (run_pass still works)."""
    service = GarbageCollector(world.collector(), world.clock, 0)
    service.startService()
    assert world.clock.getDelayedCalls() == []
    assert isinstance(result_of(service.run_pass()), PassResult)
    result_of(service.stopService())


def test_never_two_passes_at_once(world: World) -> None:
    """A pass that is still running (here: in its settle time) is joined, not doubled, and the
    collector refuses a second run outright."""
    orphan(world, "slow")
    world.later(2 * HOUR)
    collector = world.collector(grace=HOUR, settle=30)
    service = GarbageCollector(collector, world.clock, INTERVAL)
    first = service.run_pass()
    second = service.run_pass()
    assert not first.called and not second.called
    with pytest.raises(RuntimeError):
        collector.run()
    assert collector.passes == 1
    world.later(30)
    one, two = result_of(first), result_of(second)
    assert one is two and one.blobs == 1


def test_a_failing_pass_is_logged_and_the_next_one_runs(world: World, logged: list[LogEvent]) -> None:
    """An exception in a pass is logged with its traceback; the service keeps its schedule."""
    collector = world.collector(grace=HOUR)
    real = world.metadata.gc_stale_uploads
    calls = {"n": 0}

    def flaky(cutoff: float) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            return fail(sqlite3.OperationalError("disk I/O error"))
        return real(cutoff)

    world.metadata.gc_stale_uploads = flaky  # type: ignore[method-assign]
    seen: list[PassResult] = []
    service = GarbageCollector(collector, world.clock, INTERVAL, on_pass=seen.append, first_delay=1)
    service.startService()
    world.later(1)
    assert seen == [] and service.failures == 1
    failures = [e for e in logged if e.get("log_failure") is not None]
    assert failures and "garbage collection pass failed" in formatEvent(failures[0])
    assert failures[0]["log_failure"].check(sqlite3.OperationalError)
    world.later(INTERVAL)
    assert len(seen) == 1
    result_of(service.stopService())


def test_an_observer_that_raises_does_not_stop_the_service(world: World, logged: list[LogEvent]) -> None:
    def broken(result: PassResult) -> None:
        raise ValueError("metrics are down")

    service = GarbageCollector(world.collector(), world.clock, INTERVAL, on_pass=broken, first_delay=1)
    service.startService()
    world.later(1)
    world.later(INTERVAL)
    assert sum("the gc on_pass observer failed" in t for t in texts(logged)) == 2
    result_of(service.stopService())


def test_stopping_cuts_a_pass_short_and_waits_for_it(world: World) -> None:
    """stopService during a pass's settle time ends that pass and fires once it has ended; no
    later pass is scheduled."""
    orphan(world, "pending")
    world.later(2 * HOUR)
    service = GarbageCollector(world.collector(grace=HOUR, settle=30), world.clock, INTERVAL, first_delay=1)
    service.startService()
    world.later(1)
    assert service.collector.running
    stopped = service.stopService()
    assert stopped.called
    assert not service.collector.running
    assert len(service.results) == 1 and service.results[0].interrupted
    assert world.clock.getDelayedCalls() == []


def test_read_times_are_flushed_before_each_pass(world: World) -> None:
    """The tracker's pending reads reach sqlite before the pass looks at recency."""
    world.cache_image(CACHE, "v1", [blob("layer")])
    tracker = AccessTracker(world.metadata, world.clock, flush_interval=3600)
    tracker.touch(CACHE, "sha256:" + "a" * 64)
    service = GarbageCollector(world.collector(), world.clock, INTERVAL, tracker=tracker)
    result_of(service.run_pass())
    assert tracker.pending == 0 and tracker.flushed == 1


def test_from_config_takes_the_gc_section_and_max_size(world: World) -> None:
    config = Config(gc=GCConfig(interval=60, upload_expiry=7200, grace=90), registry_proxies=ProxyConfig(max_size=12345))
    collector = Collector.from_config(config, world.blobs, world.uploads, world.metadata, world.clock)
    assert (collector.grace, collector.upload_expiry, collector.max_size) == (90, 7200, 12345)
    with pytest.raises(ValueError):
        world.collector(low_water=1.5)


# -- the read-time tracker ----------------------------------------------------------------------


def test_touch_does_no_io(world: World) -> None:
    """touch() only notes the time in memory: nothing reaches the db worker until a flush."""
    worker = StepWorker()
    world.metadata._worker = worker
    tracker = AccessTracker(world.metadata, world.clock)
    for i in range(1000):
        tracker.touch(CACHE, f"sha256:{i:064x}")
    assert worker.queue == []
    d = tracker.flush()
    assert len(worker.queue) == 1  # one batch, one db call
    worker.drain()
    assert d.called and tracker.flushed == 1000


def test_pushed_and_cache_repositories_are_both_tracked(world: World) -> None:
    """The status page shows when any repository was last pulled; GC reads only the cache's."""
    tracker = AccessTracker(world.metadata, world.clock)
    tracker.touch("team/app", "sha256:" + "b" * 64)
    tracker.touch(CACHE, "sha256:" + "b" * 64)
    assert tracker.pending == 2
    result_of(tracker.flush())
    assert result_of(world.metadata.gc_access_times("team/app")) == {"sha256:" + "b" * 64: world.clock.seconds()}


def test_flushes_run_on_a_timer_and_at_stop(world: World) -> None:
    """Every flush_interval the pending reads are written in one batch; stop writes the rest."""
    tracker = AccessTracker(world.metadata, world.clock, flush_interval=5)
    tracker.startService()
    tracker.touch(CACHE, "sha256:" + "c" * 64)
    world.later(5)
    assert result_of(world.metadata.gc_access_times(CACHE)) == {"sha256:" + "c" * 64: world.clock.seconds() - 5}
    world.later(1)
    tracker.touch(CACHE, "sha256:" + "d" * 64)
    result_of(tracker.stopService())
    assert "sha256:" + "d" * 64 in result_of(world.metadata.gc_access_times(CACHE))
    assert world.clock.getDelayedCalls() == []


def test_a_time_never_moves_back(world: World) -> None:
    """A later touch wins; a write that carries an older time does not undo a newer one."""
    value = "sha256:" + "e" * 64
    tracker = AccessTracker(world.metadata, world.clock)
    tracker.touch(CACHE, value)
    first = world.clock.seconds()
    world.later(10)
    tracker.touch(CACHE, value)
    result_of(tracker.flush())
    result_of(world.metadata.gc_record_access([(CACHE, value, first)]))
    assert result_of(world.metadata.gc_access_times(CACHE)) == {value: first + 10}


def test_a_failed_flush_keeps_the_reads_for_the_next_one(world: World, logged: list[LogEvent]) -> None:
    value = "sha256:" + "f" * 64
    tracker = AccessTracker(world.metadata, world.clock)
    real = world.metadata.gc_record_access
    world.metadata.gc_record_access = lambda entries: fail(sqlite3.OperationalError("database is locked"))  # type: ignore[method-assign]
    tracker.touch(CACHE, value)
    d: Deferred[None] = tracker.flush()
    assert d.called and result_of(d) is None  # never fails
    assert tracker.pending == 1
    assert any("cache read times failed" in t for t in texts(logged))
    world.metadata.gc_record_access = real  # type: ignore[method-assign]
    result_of(tracker.flush())
    assert value in result_of(world.metadata.gc_access_times(CACHE))


def test_the_restore_hook_is_installed_at_start(tmp_path: Path) -> None:
    """Files a previous run left in quarantine (here: a stop, then a restart that did not empty
    tmp/) come back the moment something links them, before the first pass has run."""
    world = World(str(tmp_path / "data"))
    value = orphan(world, "left")
    world.later(2 * HOUR)
    collector = world.collector(grace=HOUR, settle=30)
    d = collector.run()
    collector.stop()
    assert result_of(d).interrupted and not world.stored(value)
    world = world.reopen()
    try:
        service = GarbageCollector(world.collector(), world.clock, INTERVAL)
        service.startService()
        result_of(world.metadata.link_blob("team/b", value))
        assert world.servable("team/b", value)
        result_of(service.stopService())
    finally:
        world.metadata.close()
