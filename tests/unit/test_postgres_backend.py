"""trow.storage.postgres beyond the shared metadata suite: URL checks and redaction, schema
migrations (too new, concurrent, out of order), unreachable servers, the replica heartbeat
rows, download leases and the set-wide GC lock.

Against a real PostgreSQL (the C{pg_url} fixture: a fresh database per test). Calls run on an
L{InlineWorker}, so their Deferreds have fired when they return.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator

import psycopg
import pytest

from tests.postgres import free_port
from tests.unit.harness import open_postgres, result_of
from trow.storage.metadata import MetadataUnavailable
from trow.storage.postgres import (
    MIGRATIONS,
    SCHEMA_VERSION,
    DatabaseURLError,
    PostgresMetadata,
    SchemaTooNew,
    check_url,
    redact,
)
from trow.workers import InlineWorker

SECRET = "hunter2-secret"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


@pytest.fixture
def opened(pg_url: str) -> Iterator[Callable[[], PostgresMetadata]]:
    """Make migrated PostgresMetadata on the test's database (two of them act as two replicas);
    all are closed after the test."""
    made: list[PostgresMetadata] = []

    def make() -> PostgresMetadata:
        metadata = open_postgres(pg_url)
        made.append(metadata)
        return metadata

    yield make
    for metadata in made:
        metadata.close()


def sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the database directly (as an operator, or another replica, would)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def versions(url: str) -> list[int]:
    return sorted(int(r[0]) for r in sql(url, "SELECT version FROM trow_schema"))


def table_exists(url: str, name: str) -> bool:
    return bool(sql(url, "SELECT to_regclass(%s) IS NOT NULL", (name,))[0][0])


# -- check_url and redact -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://trow@db/trow",
        "postgres://trow:pw@db:5433/trow?sslmode=require",
        "host=db dbname=trow user=trow",
    ],
)
def test_check_url_parses_without_connecting(url: str) -> None:
    """libpq URLs (both schemes) and key=value strings parse into their parameters; nothing
    listens on host "db", so a connection attempt would fail the test."""
    params = check_url(url)
    assert params["host"] == "db" and params["dbname"] == "trow"


@pytest.mark.parametrize("url", ["mysql://db/trow", "trow", "", "postgresql://db/trow?nosuchoption=1", "host=db bogus=1"])
def test_check_url_refuses(url: str) -> None:
    """Other schemes, bare words and unknown options are DatabaseURLErrors naming --database."""
    with pytest.raises(DatabaseURLError) as caught:
        check_url(url)
    assert "--database" in str(caught.value)


def test_check_url_error_hides_the_password() -> None:
    with pytest.raises(DatabaseURLError) as caught:
        check_url(f"mysql://trow:{SECRET}@db/trow")
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"postgresql://trow:{SECRET}@db:5432/trow", "postgresql://trow:***@db:5432/trow"),
        (f"postgres://trow:{SECRET}@db/trow?sslmode=require", "postgresql://trow:***@db/trow"),
        (f"postgresql://trow@db/trow?password={SECRET}", "postgresql://trow:***@db/trow"),
        ("postgresql://trow@db/trow", "postgresql://trow@db/trow"),
        ("postgresql://db/trow", "postgresql://db/trow"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    """A URL keeps user, host, port and database; any password becomes ***."""
    assert redact(url) == expected


def test_redact_key_value() -> None:
    """The key=value form keeps every parameter but the password's value."""
    redacted = redact(f"host=db port=5433 dbname=trow user=trow password='{SECRET} x'")
    assert SECRET not in redacted
    assert check_url(redacted) == {"host": "db", "port": "5433", "dbname": "trow", "user": "trow", "password": "***"}


def test_metadata_refuses_a_bad_url_and_shows_no_password() -> None:
    """PostgresMetadata checks its URL (before any pool starts), and C{where} is redacted."""
    with pytest.raises(DatabaseURLError):
        PostgresMetadata("mysql://db/trow", InlineWorker())
    metadata = PostgresMetadata(f"postgresql://trow:{SECRET}@127.0.0.1:1/trow", InlineWorker())
    assert SECRET not in metadata.where


# -- migrations -----------------------------------------------------------------------------------


def test_migrate_applies_every_version_once(pg_url: str) -> None:
    """A fresh database gets every migration; a second migrate finds it current."""
    first = PostgresMetadata(pg_url, InlineWorker())
    try:
        assert first.migrate_sync() == 0
        assert first.migrated
        assert versions(pg_url) == sorted(v for v, _ in MIGRATIONS)
        assert first.migrate_sync() == SCHEMA_VERSION
        assert versions(pg_url) == sorted(v for v, _ in MIGRATIONS)
    finally:
        first.close()


def test_concurrent_migrations_run_once(pg_url: str) -> None:
    """Two replicas starting at once on one database: one migrates, the other waits for it and
    finds the schema current. Every version is recorded once, and both can work at once."""
    replicas = [PostgresMetadata(pg_url, InlineWorker()) for _ in range(2)]
    start = threading.Barrier(2)
    found: list[int] = []
    errors: list[BaseException] = []

    def migrate(metadata: PostgresMetadata) -> None:
        start.wait()
        try:
            found.append(metadata.migrate_sync())
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=migrate, args=(m,)) for m in replicas]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        # Serialised by the migration lock: one saw an empty database, the other a current one.
        assert sorted(found) == [0, SCHEMA_VERSION]
        assert versions(pg_url) == sorted(v for v, _ in MIGRATIONS)
        for metadata in replicas:
            metadata.open()
        result_of(replicas[0].link_blob("team/app", D1))
        assert result_of(replicas[1].blob_linked("team/app", D1))
    finally:
        for metadata in replicas:
            metadata.close()


def test_migration_added_out_of_order_still_runs(pg_url: str) -> None:
    """A database that has a newer migration but lacks an older one (released out of order)
    gets the missing one: migrations go by the set applied, not by the highest."""
    known = sorted(v for v, _ in MIGRATIONS)
    assert len(known) >= 2
    missing = known[-2]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE trow_schema (version INTEGER NOT NULL)")
        for version, statements in sorted(MIGRATIONS):
            if version == missing:
                continue
            with conn.transaction():
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO trow_schema (version) VALUES (%s)", (version,))
    metadata = PostgresMetadata(pg_url, InlineWorker())
    try:
        assert metadata.migrate_sync() == SCHEMA_VERSION
        assert versions(pg_url) == known
    finally:
        metadata.close()


def test_schema_too_new_is_refused(pg_url: str) -> None:
    """A database a newer trow migrated: SchemaTooNew naming both versions, nothing applied,
    and the store stays unusable (not migrated)."""
    sql(pg_url, "CREATE TABLE trow_schema (version INTEGER NOT NULL)")
    sql(pg_url, "INSERT INTO trow_schema (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    metadata = PostgresMetadata(pg_url, InlineWorker())
    try:
        with pytest.raises(SchemaTooNew) as caught:
            metadata.migrate_sync()
        assert str(SCHEMA_VERSION + 1) in str(caught.value) and str(SCHEMA_VERSION) in str(caught.value)
        assert not metadata.migrated
        assert not table_exists(pg_url, "repo_blobs")
        with pytest.raises(SchemaTooNew):
            result_of(metadata.migrate())
    finally:
        metadata.close()


def test_schema_too_new_after_a_current_one(opened: Callable[[], PostgresMetadata], pg_url: str) -> None:
    """A newer trow migrated a database this trow knew: the next start of this one refuses it."""
    opened()
    sql(pg_url, "INSERT INTO trow_schema (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    later = PostgresMetadata(pg_url, InlineWorker())
    try:
        with pytest.raises(SchemaTooNew):
            later.migrate_sync()
    finally:
        later.close()


# -- an unreachable server -------------------------------------------------------------------------


@pytest.fixture
def unreachable() -> Iterator[Callable[..., PostgresMetadata]]:
    """PostgresMetadata pointed at a port nothing listens on; closed after the test."""
    made: list[PostgresMetadata] = []

    def make(**kwargs: Any) -> PostgresMetadata:
        metadata = PostgresMetadata(f"postgresql://postgres@127.0.0.1:{free_port()}/trow", InlineWorker(), **kwargs)
        metadata.open()
        made.append(metadata)
        return metadata

    yield make
    for metadata in made:
        metadata.close()


def within(seconds: float, call: Callable[[], Any]) -> BaseException:
    """The exception C{call} raises, checking that it raised rather than hanging: a bound on
    liveness (the store promises an answer within a few seconds), not a benchmark."""
    began = time.monotonic()
    with pytest.raises(Exception) as caught:
        call()
    assert time.monotonic() - began < seconds, "the call hung instead of failing fast"
    return caught.value


def test_migrate_on_unreachable_server_is_unavailable(unreachable: Callable[..., PostgresMetadata]) -> None:
    """Start-up against a database that is down: MetadataUnavailable at once, not migrated."""
    metadata = unreachable()
    error = within(10, metadata.migrate_sync)
    assert isinstance(error, MetadataUnavailable)
    assert "unreachable" in str(error)
    assert not metadata.migrated


def test_calls_before_migration_are_unavailable(unreachable: Callable[..., PostgresMetadata]) -> None:
    """Until migrated, every call answers MetadataUnavailable (503), never a query on a
    schema that may not exist."""
    metadata = unreachable()
    with pytest.raises(MetadataUnavailable, match="not ready"):
        result_of(metadata.blob_linked("team/app", D1))


def test_calls_on_a_server_gone_after_migration_fail_within_seconds(unreachable: Callable[..., PostgresMetadata]) -> None:
    """The database went away after start-up (here: it never answers, with the store marked
    migrated as it was before): calls fail with MetadataUnavailable after the pool timeout, with
    the default settings, instead of hanging."""
    metadata = unreachable()
    metadata.migrated = True
    error = within(10, lambda: result_of(metadata.ping()))
    assert isinstance(error, MetadataUnavailable)


def test_gc_lock_on_an_unreachable_server_is_unavailable(unreachable: Callable[..., PostgresMetadata]) -> None:
    """The GC lock takes a connection of its own: it fails the same way (within the pool
    timeout, shortened here), not with a pool error."""
    metadata = unreachable(pool_timeout=0.3)
    error = within(10, lambda: result_of(metadata.gc_try_lock()))
    assert isinstance(error, MetadataUnavailable)


# -- the replica heartbeat rows ---------------------------------------------------------------------


def test_replica_beat_lists_live_replicas(opened: Callable[[], PostgresMetadata]) -> None:
    """Each beat records its replica and returns every live one, sorted by id, with what each
    is reading; a second beat updates the row in place."""
    a, b = opened(), opened()
    assert result_of(a.replica_beat("a", "http://10.0.0.1:8000", {D1}, 30)) == [("a", "http://10.0.0.1:8000", [D1])]
    live = result_of(b.replica_beat("b", "http://10.0.0.2:8000", [D2, D1], 30))
    assert live == [("a", "http://10.0.0.1:8000", [D1]), ("b", "http://10.0.0.2:8000", sorted([D1, D2]))]
    live = result_of(a.replica_beat("a", "http://10.0.0.9:8000", [], 30))
    assert live == [("a", "http://10.0.0.9:8000", []), ("b", "http://10.0.0.2:8000", sorted([D1, D2]))]


def test_silent_replica_is_not_live_and_is_forgotten_after_an_hour(opened: Callable[[], PostgresMetadata], pg_url: str) -> None:
    """A replica silent for longer than dead_after is left out; one silent for an hour is
    deleted by the next beat of any replica."""
    a = opened()
    result_of(a.replica_beat("a", "http://a", [D1], 30))
    result_of(a.replica_beat("b", "http://b", [D2], 30))
    sql(pg_url, "UPDATE replicas SET seen = seen - 60 WHERE id = 'b'")
    assert [r[0] for r in result_of(a.replica_beat("a", "http://a", [], 30))] == ["a"]
    assert [r[0] for r in result_of(a.replica_beat("a", "http://a", [], 120))] == ["a", "b"]
    sql(pg_url, "UPDATE replicas SET seen = seen - 7200 WHERE id = 'b'")
    result_of(a.replica_beat("a", "http://a", [], 30))
    assert sql(pg_url, "SELECT id FROM replicas ORDER BY id") == [("a",)]


def test_replica_leave(opened: Callable[[], PostgresMetadata]) -> None:
    """A replica that leaves is gone from its peers' next beat at once."""
    a, b = opened(), opened()
    result_of(a.replica_beat("a", "http://a", [], 30))
    result_of(b.replica_beat("b", "http://b", [D2], 30))
    result_of(b.replica_leave("b"))
    assert result_of(a.replica_beat("a", "http://a", [], 30)) == [("a", "http://a", [])]


# -- download leases ------------------------------------------------------------------------------


def test_lease_goes_to_the_first_claimer(opened: Callable[[], PostgresMetadata]) -> None:
    """The first replica takes the lease; a second one gets the holder back (to follow it)."""
    a, b = opened(), opened()
    assert result_of(a.lease_claim(D1, "a", "http://a", "f/docker.io/nginx", 10)) == ("a", "http://a", "f/docker.io/nginx")
    assert result_of(b.lease_claim(D1, "b", "http://b", "f/ghcr.io/x", 10)) == ("a", "http://a", "f/docker.io/nginx")
    # Leases are per digest.
    assert result_of(b.lease_claim(D2, "b", "http://b", "f/ghcr.io/x", 10)) == ("b", "http://b", "f/ghcr.io/x")


def test_holder_claiming_again_keeps_it(opened: Callable[[], PostgresMetadata]) -> None:
    """The holder's own claim renews its lease (a follower that took over claims again)."""
    a, b = opened(), opened()
    result_of(a.lease_claim(D1, "a", "http://a", "f/docker.io/nginx", 10))
    assert result_of(a.lease_claim(D1, "a", "http://a:1", "f/docker.io/nginx", 10))[0] == "a"
    assert result_of(b.lease_claim(D1, "b", "http://b", "f/docker.io/nginx", 10))[0] == "a"


def test_expired_lease_is_taken_over(opened: Callable[[], PostgresMetadata]) -> None:
    """A lease not renewed in time goes to the next claimer; its old holder cannot renew it."""
    a, b = opened(), opened()
    result_of(a.lease_claim(D1, "a", "http://a", "f/docker.io/nginx", -1))  # already expired
    assert result_of(b.lease_claim(D1, "b", "http://b", "f/docker.io/nginx", 10)) == ("b", "http://b", "f/docker.io/nginx")
    assert result_of(a.lease_renew(D1, "a", 10)) is False
    assert result_of(b.lease_renew(D1, "b", 10)) is True


def test_renew_keeps_a_lease_alive(opened: Callable[[], PostgresMetadata], pg_url: str) -> None:
    """Renewing pushes the expiry forward: a lease about to expire is renewed, not taken."""
    a, b = opened(), opened()
    result_of(a.lease_claim(D1, "a", "http://a", "f/docker.io/nginx", 10))
    sql(pg_url, "UPDATE download_leases SET expires = expires - 100")
    assert result_of(a.lease_renew(D1, "a", 10)) is True
    assert result_of(b.lease_claim(D1, "b", "http://b", "f/docker.io/nginx", 10))[0] == "a"


def test_renew_by_a_non_holder_is_false(opened: Callable[[], PostgresMetadata]) -> None:
    """Only the holder renews; nobody renews a lease that does not exist."""
    a, b = opened(), opened()
    assert result_of(a.lease_renew(D1, "a", 10)) is False
    result_of(a.lease_claim(D1, "a", "http://a", "f/docker.io/nginx", 10))
    assert result_of(b.lease_renew(D1, "b", 10)) is False
    assert result_of(b.lease_claim(D1, "b", "http://b", "f/docker.io/nginx", 10))[0] == "a"


def test_release_only_by_the_holder(opened: Callable[[], PostgresMetadata]) -> None:
    """A non-holder's release changes nothing; the holder's frees the lease for the next claimer."""
    a, b = opened(), opened()
    result_of(a.lease_claim(D1, "a", "http://a", "f/docker.io/nginx", 10))
    result_of(b.lease_release(D1, "b"))
    assert result_of(b.lease_claim(D1, "b", "http://b", "f/docker.io/nginx", 10))[0] == "a"
    result_of(a.lease_release(D1, "a"))
    assert result_of(b.lease_claim(D1, "b", "http://b", "f/docker.io/nginx", 10))[0] == "b"


def test_concurrent_claims_elect_one_leader(opened: Callable[[], PostgresMetadata]) -> None:
    """Replicas claiming one digest at the same moment all agree on one holder."""
    replicas = [opened() for _ in range(4)]
    start = threading.Barrier(len(replicas))
    holders: list[str] = []

    def claim(i: int) -> None:
        start.wait()
        holders.append(result_of(replicas[i].lease_claim(D1, f"r{i}", f"http://r{i}", "f/docker.io/nginx", 10))[0])

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(replicas))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(holders) == len(replicas)
    assert len(set(holders)) == 1


# -- the set-wide GC lock ---------------------------------------------------------------------------


def test_gc_lock_is_exclusive_across_replicas(opened: Callable[[], PostgresMetadata]) -> None:
    """One GC pass at a time in the whole set: a second replica cannot take the lock until the
    first lets it go, and then can."""
    a, b = opened(), opened()
    assert result_of(a.gc_try_lock()) is True
    assert result_of(b.gc_try_lock()) is False
    result_of(a.gc_unlock())
    assert result_of(b.gc_try_lock()) is True
    assert result_of(a.gc_try_lock()) is False
    result_of(b.gc_unlock())
    assert result_of(a.gc_try_lock()) is True
    result_of(a.gc_unlock())


def test_gc_unlock_without_the_lock_is_harmless(opened: Callable[[], PostgresMetadata]) -> None:
    a, b = opened(), opened()
    result_of(a.gc_unlock())
    assert result_of(b.gc_try_lock()) is True
    # a never held it: its unlock must not free b's.
    result_of(a.gc_unlock())
    assert result_of(a.gc_try_lock()) is False
    result_of(b.gc_unlock())


def test_gc_lock_goes_with_a_dead_replica(opened: Callable[[], PostgresMetadata], pg_url: str) -> None:
    """A replica that dies holding the lock (its session ends) does not block GC forever."""
    a, b = opened(), opened()
    assert result_of(a.gc_try_lock()) is True
    [(holder,)] = sql(pg_url, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted")
    sql(pg_url, "SELECT pg_terminate_backend(%s)", (holder,))
    # pg_terminate_backend only signals: the session ends (and its locks go) a moment later.
    deadline = time.monotonic() + 10
    while sql(pg_url, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (holder,)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert result_of(b.gc_try_lock()) is True
    result_of(b.gc_unlock())
