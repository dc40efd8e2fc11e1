"""trow.replicas.ReplicaSet: start-up migration with backoff, heartbeats, peers, leaving the set.

Time is a L{Clock}; the database is L{FakeReplicaMetadata}, a stand-in for PostgresMetadata that
records every call with the clock's time and answers from a script (or, when the test wants to
decide when a call ends, with a Deferred it fires by hand).
"""

from __future__ import annotations

from typing import Any, Iterable

import attrs
import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from trow.replicas import BEAT, DEAD_AFTER, FIRST_RETRY, LEFTOVER_AGE, MAX_RETRY, ReplicaSet
from trow.storage.metadata import MetadataUnavailable
from trow.storage.postgres import SchemaTooNew
from trow.workers import InlineWorker

ME = "trow-0-1-aaaaaa"
PEER = "trow-1-1-bbbbbb"
URL = "http://10.0.0.1:8000"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


@attrs.define
class Beat:
    """One replica_beat call: when, and what it said."""

    at: float
    replica: str
    peer_url: str
    busy: list[str]
    dead_after: float
    deferred: "Deferred[Any] | None" = None


class FakeReplicaMetadata:
    """The part of PostgresMetadata a ReplicaSet uses.

    C{down}: migrate and replica_beat fail with MetadataUnavailable. C{too_new}: migrate fails
    with SchemaTooNew. C{others}: the rows of the other live replicas. C{hold_*}: the call waits
    for the test (its Deferred is recorded).
    """

    where = "postgresql://db.example/trow"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.migrated = False
        self.down = False
        self.too_new = False
        self.others: list[tuple[str, str, list[str]]] = []
        self.migrations: list[float] = []
        self.held_migrations: list[Deferred[int]] = []
        self.hold_migrate = False
        self.beats: list[Beat] = []
        self.hold_beats = False
        self.left: list[tuple[float, str]] = []
        self.uploads: set[str] = {"upload-1"}

    def migrate(self) -> "Deferred[int]":
        self.migrations.append(self.clock.seconds())
        if self.too_new:
            return fail(SchemaTooNew("the database has trow schema version 99, newer than this trow's"))
        if self.down:
            return fail(MetadataUnavailable("the database is unreachable: connection refused"))
        if self.hold_migrate:
            d: Deferred[int] = Deferred()

            def done(version: int) -> int:
                self.migrated = True
                return version

            d.addCallback(done)
            self.held_migrations.append(d)
            return d
        self.migrated = True
        return succeed(0)

    def _rows(self, replica: str, peer_url: str, busy: list[str]) -> list[tuple[str, str, list[str]]]:
        return sorted([(replica, peer_url, busy), *self.others])

    def replica_beat(
        self, replica: str, peer_url: str, busy: Iterable[str], dead_after: float
    ) -> "Deferred[list[tuple[str, str, list[str]]]]":
        beat = Beat(self.clock.seconds(), replica, peer_url, sorted(busy), dead_after)
        self.beats.append(beat)
        if self.down:
            return fail(MetadataUnavailable("the database is unavailable: connection refused"))
        if self.hold_beats:
            beat.deferred = Deferred()
            return beat.deferred.addCallback(lambda _: self._rows(replica, peer_url, beat.busy))
        return succeed(self._rows(replica, peer_url, beat.busy))

    def replica_leave(self, replica: str) -> "Deferred[None]":
        self.left.append((self.clock.seconds(), replica))
        if self.down:
            return fail(MetadataUnavailable("the database is unavailable"))
        return succeed(None)

    def upload_ids(self) -> "Deferred[set[str]]":
        return succeed(set(self.uploads))


class FakeBlobs:
    """The blob store's leftover cleaning, recorded."""

    def __init__(self) -> None:
        self.worker = InlineWorker()
        self.cleaned: list[tuple[set[str], float]] = []

    def clean_dead_scratch(self, alive: set[str], age: float) -> int:
        self.cleaned.append((set(alive), age))
        return 0


class FakeUploads:
    def __init__(self) -> None:
        self.orphan_checks: list[tuple[set[str], float]] = []

    def remove_orphans(self, known: set[str], age: float) -> int:
        self.orphan_checks.append((set(known), age))
        return 0


@attrs.define
class Set:
    """A ReplicaSet over the fakes, not started yet."""

    clock: Clock
    metadata: FakeReplicaMetadata
    blobs: FakeBlobs
    uploads: FakeUploads
    replicas: ReplicaSet
    busy: set[str]
    fatal: list[str]

    def beat_times(self) -> list[float]:
        return [b.at for b in self.metadata.beats]


@pytest.fixture
def replica_set() -> Set:
    clock = Clock()
    metadata = FakeReplicaMetadata(clock)
    blobs, uploads = FakeBlobs(), FakeUploads()
    busy: set[str] = set()
    fatal: list[str] = []
    replicas = ReplicaSet(
        metadata,  # type: ignore[arg-type]
        blobs,  # type: ignore[arg-type]
        uploads,  # type: ignore[arg-type]
        clock,
        ME,
        URL,
        busy=lambda: set(busy),
        on_fatal=fatal.append,
    )
    return Set(clock, metadata, blobs, uploads, replicas, busy, fatal)


def advance_to(clock: Clock, when: float, step: float = 0.25) -> None:
    """Move the clock to C{when} in small steps, so every timer on the way fires in order
    (those due now first)."""
    clock.advance(0)
    while clock.seconds() < when:
        clock.advance(min(step, when - clock.seconds()))


# -- start-up ---------------------------------------------------------------------------------


def test_start_migrates_then_beats_at_once(replica_set: Set) -> None:
    """Started with the database up: migrated, then a first heartbeat, at once."""
    replica_set.replicas.startService()
    assert not replica_set.replicas.ready
    replica_set.clock.advance(0)
    assert replica_set.metadata.migrations == [0.0]
    assert replica_set.replicas.ready
    assert replica_set.beat_times() == [0.0]
    beat = replica_set.metadata.beats[0]
    assert (beat.replica, beat.peer_url, beat.dead_after) == (ME, URL, DEAD_AFTER)


def test_migration_retried_with_growing_delays(replica_set: Set) -> None:
    """While the database cannot be reached, migrate is retried, the delay doubling from
    FIRST_RETRY up to MAX_RETRY; no heartbeat is written meanwhile, and it is not ready."""
    metadata = replica_set.metadata
    metadata.down = True
    replica_set.replicas.startService()
    advance_to(replica_set.clock, 60)
    times = metadata.migrations
    delays = [round(b - a, 6) for a, b in zip(times, times[1:])]
    expected = [FIRST_RETRY]
    while len(expected) < len(delays):
        expected.append(min(expected[-1] * 2, MAX_RETRY))
    assert delays == expected
    assert delays[-1] == MAX_RETRY and delays[0] < delays[1] < delays[2]
    assert metadata.beats == []
    assert not replica_set.replicas.ready


def test_heartbeats_once_the_database_answers(replica_set: Set) -> None:
    """The database comes up: the next retry migrates and beats, then beats every BEAT seconds."""
    metadata = replica_set.metadata
    metadata.down = True
    replica_set.replicas.startService()
    advance_to(replica_set.clock, 3.6)  # retries at 0, 0.5, 1.5, 3.5
    assert len(metadata.migrations) == 4
    metadata.down = False
    advance_to(replica_set.clock, 7.5)  # the retry due at 7.5
    assert replica_set.replicas.ready
    assert replica_set.beat_times() == [7.5]
    advance_to(replica_set.clock, 7.5 + 3 * BEAT)
    assert replica_set.beat_times() == [7.5 + i * BEAT for i in range(4)]
    assert len(metadata.migrations) == 5, "migrated again after success"


def test_schema_too_new_is_fatal(replica_set: Set) -> None:
    """A database a newer trow migrated: on_fatal is called once with the reason, and nothing
    more is tried (no retry, no heartbeat)."""
    replica_set.metadata.too_new = True
    replica_set.replicas.startService()
    replica_set.clock.advance(0)
    assert len(replica_set.fatal) == 1 and "newer" in replica_set.fatal[0]
    assert replica_set.clock.getDelayedCalls() == []
    advance_to(replica_set.clock, 60)
    assert replica_set.metadata.migrations == [0.0]
    assert replica_set.metadata.beats == []


# -- heartbeats and peers -----------------------------------------------------------------------


def test_each_heartbeat_says_what_is_read_now(replica_set: Set) -> None:
    """Every beat sends the digests being read or downloaded at that moment."""
    replica_set.busy.add(D1)
    replica_set.replicas.startService()
    replica_set.clock.advance(0)
    replica_set.busy.clear()
    replica_set.busy.update({D2, D3})
    replica_set.clock.advance(BEAT)
    assert [b.busy for b in replica_set.metadata.beats] == [[D1], sorted([D2, D3])]


def test_peers_and_what_they_use(replica_set: Set) -> None:
    """peers: every live replica's URL (this one included); peer_busy and in_use: what the
    others read, not what this one does (its own readers are counted locally)."""
    replica_set.metadata.others = [(PEER, "http://10.0.0.2:8000", [D2])]
    replica_set.busy.add(D1)
    replica_set.replicas.startService()
    replica_set.clock.advance(0)
    replicas = replica_set.replicas
    assert replicas.peers == {ME: URL, PEER: "http://10.0.0.2:8000"}
    assert replicas.peer_busy == frozenset({D2})
    assert replicas.in_use(D2)
    assert not replicas.in_use(D1)
    assert not replicas.in_use(D3)
    # The peer finished with D2 and started on D3; it is seen at the next beat, not before.
    replica_set.metadata.others = [(PEER, "http://10.0.0.2:8000", [D3])]
    assert replicas.in_use(D2)
    replica_set.clock.advance(BEAT)
    assert replicas.in_use(D3) and not replicas.in_use(D2)
    # The peer died (no longer listed as live): nothing of it is in use any more.
    replica_set.metadata.others = []
    replica_set.clock.advance(BEAT)
    assert replicas.peers == {ME: URL}
    assert replicas.peer_busy == frozenset()


def test_heartbeat_outage_backs_off_then_resumes_the_beat(replica_set: Set) -> None:
    """A database outage after start-up: heartbeats are retried with backoff (not every BEAT),
    the last known peers are kept, and once it answers the beat resumes at its period, with the
    backoff starting from FIRST_RETRY again at the next outage."""
    metadata = replica_set.metadata
    metadata.others = [(PEER, "http://10.0.0.2:8000", [D2])]
    replica_set.replicas.startService()
    replica_set.clock.advance(0)
    metadata.down = True
    advance_to(replica_set.clock, BEAT + 1.5 + 0.1)  # fails at 5, retries at 5.5 and 6.5
    assert replica_set.beat_times() == [0, BEAT, BEAT + 0.5, BEAT + 1.5]
    assert replica_set.replicas.in_use(D2)
    metadata.down = False
    advance_to(replica_set.clock, BEAT + 3.5)  # the retry due at 8.5 succeeds
    assert replica_set.beat_times()[-1] == BEAT + 3.5
    advance_to(replica_set.clock, BEAT + 3.5 + BEAT)
    assert replica_set.beat_times()[-1] == BEAT + 3.5 + BEAT
    metadata.down = True
    start = replica_set.beat_times()[-1]
    advance_to(replica_set.clock, start + BEAT + FIRST_RETRY)
    assert replica_set.beat_times()[-2:] == [start + BEAT, start + BEAT + FIRST_RETRY]


def test_port_zero_is_resolved_to_the_bound_port(replica_set: Set) -> None:
    """A peer URL given with port 0 (--listen tcp:0) is sent with the port actually bound."""
    replicas = ReplicaSet(
        replica_set.metadata,  # type: ignore[arg-type]
        replica_set.blobs,  # type: ignore[arg-type]
        replica_set.uploads,  # type: ignore[arg-type]
        replica_set.clock,
        ME,
        "http://10.0.0.1:0",
        busy=lambda: (),
    )
    replicas.resolve_port = lambda: 8123
    replicas.startService()
    replica_set.clock.advance(0)
    assert replica_set.metadata.beats[0].peer_url == "http://10.0.0.1:8123"
    assert replicas.peer_url == "http://10.0.0.1:8123"
    replicas.stopService()


def test_leftovers_cleaned_on_the_first_beat_and_every_sixtieth(replica_set: Set) -> None:
    """Dead replicas' scratch dirs and orphan uploads are looked for at the first beat, then
    every 60 beats, with the live replicas and the known upload sessions, only when old."""
    replica_set.metadata.others = [(PEER, "http://10.0.0.2:8000", [])]
    replica_set.replicas.startService()
    replica_set.clock.advance(0)
    assert replica_set.blobs.cleaned == [({ME, PEER}, LEFTOVER_AGE)]
    assert replica_set.uploads.orphan_checks == [({"upload-1"}, LEFTOVER_AGE)]
    for _ in range(59):
        replica_set.clock.advance(BEAT)
    assert len(replica_set.blobs.cleaned) == 1
    replica_set.clock.advance(BEAT)
    assert replica_set.replicas.beats == 61
    assert len(replica_set.blobs.cleaned) == 2


# -- stopping ---------------------------------------------------------------------------------------


def test_stop_leaves_the_set_and_stops_beating(replica_set: Set) -> None:
    """A clean stop deletes this replica's row at once, and no heartbeat follows."""
    replica_set.replicas.startService()
    replica_set.clock.advance(BEAT)
    stopped = replica_set.replicas.stopService()
    assert stopped.called
    assert replica_set.metadata.left == [(BEAT, ME)]
    assert replica_set.clock.getDelayedCalls() == []
    beats = len(replica_set.metadata.beats)
    advance_to(replica_set.clock, 10 * BEAT)
    assert len(replica_set.metadata.beats) == beats


def test_stop_before_migration_does_not_touch_the_database(replica_set: Set) -> None:
    """Stopped while still retrying the database: no leave (there is no row), no more retries."""
    replica_set.metadata.down = True
    replica_set.replicas.startService()
    advance_to(replica_set.clock, 2)
    tries = len(replica_set.metadata.migrations)
    assert replica_set.replicas.stopService().called
    advance_to(replica_set.clock, 60)
    assert len(replica_set.metadata.migrations) == tries
    assert replica_set.metadata.left == []


def test_stop_when_leaving_fails_still_stops(replica_set: Set) -> None:
    """The database is down at stop: the failure to leave is only logged (the row ages out)."""
    replica_set.replicas.startService()
    replica_set.clock.advance(0)
    replica_set.metadata.down = True
    stopped = replica_set.replicas.stopService()
    results: list[Any] = []
    stopped.addBoth(results.append)
    assert results == [None]


def test_no_heartbeat_after_stop_when_migration_was_in_flight(replica_set: Set) -> None:
    """Stopped while the start-up migration runs: once it completes, no heartbeat is written
    (the replica would count as alive, with its busy digests, for DEAD_AFTER seconds)."""
    replica_set.metadata.hold_migrate = True
    replica_set.replicas.startService()
    replica_set.clock.advance(0)
    assert len(replica_set.metadata.held_migrations) == 1
    replica_set.replicas.stopService()
    replica_set.metadata.held_migrations[0].callback(4)
    assert replica_set.metadata.beats == []


def test_leave_waits_for_a_heartbeat_in_flight(replica_set: Set) -> None:
    """Stopped during a heartbeat: the leave is sent only after that beat ended, so it is the
    last write of this replica."""
    replica_set.replicas.startService()
    replica_set.clock.advance(0)
    replica_set.metadata.hold_beats = True
    replica_set.clock.advance(BEAT)
    in_flight = replica_set.metadata.beats[-1]
    assert in_flight.deferred is not None and not in_flight.deferred.called
    stopped = replica_set.replicas.stopService()
    assert replica_set.metadata.left == [], "left the set while a heartbeat was still being written"
    in_flight.deferred.callback(None)
    assert replica_set.metadata.left == [(BEAT, ME)]
    assert stopped.called
