"""The shared metadata backend: PostgreSQL (C{--database URL}), for several trow replicas.

Every call runs on trow's own db thread pool with a connection from a psycopg pool, one
transaction per write (READ COMMITTED). Links are serialised against garbage collection of the
same digest by transaction-scoped advisory locks (L{PostgresMetadata._lock}), which is what the
single db thread does for sqlite. Repository names and tags are C{COLLATE "C"}: ordering and the
cache-repository range test are byte-wise, as in sqlite, whatever the database's locale.

The schema is versioned (table C{trow_schema}); L{PostgresMetadata.migrate} applies what is
missing under an advisory lock, so N replicas starting at once migrate once, and refuses a
schema newer than this code. A database that cannot be reached, or is too slow, makes calls fail
with L{MetadataUnavailable} within a few seconds; the pool reconnects by itself.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any, Callable, Iterable, Sequence, TypeVar

import psycopg
import psycopg.errors
import psycopg_pool
from psycopg import conninfo
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from trow.storage.metadata import MetadataUnavailable
from trow.storage.sql import Cursor, SqlMetadata
from trow.workers import Worker

T = TypeVar("T")
_log = Logger()

# Advisory lock keys (one 64-bit space per database): schema migrations, the one GC pass of the
# whole set of replicas. Digest locks are hashtextextended(digest, DIGEST_SEED).
MIGRATION_LOCK = 0x7472_6F77_0001
GC_LOCK = 0x7472_6F77_0002
DIGEST_SEED = 0x7472

# How long a request waits for a connection, and for one statement, before it is told the
# database is unavailable (503): a few seconds, never a hang.
CONNECT_TIMEOUT = 3
POOL_TIMEOUT = 3.0
STATEMENT_TIMEOUT_MS = 10_000
# How long start-up waits for another replica's schema migration before it goes on (and tries again).
MIGRATION_WAIT = 10.0
# After a failure, calls fail at once for this long, then one call probes the database.
BREAKER_OPEN = 1.0

TEXT = 'TEXT COLLATE "C"'
TIME = "DOUBLE PRECISION"

# (version, statements). Append only: a released migration is never edited.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            f"""CREATE TABLE repo_blobs (
                repo {TEXT} NOT NULL, digest {TEXT} NOT NULL, created {TIME} NOT NULL,
                PRIMARY KEY (repo, digest))""",
            "CREATE INDEX repo_blobs_digest ON repo_blobs (digest)",
            f"""CREATE TABLE manifests (
                repo {TEXT} NOT NULL, digest {TEXT} NOT NULL, media_type TEXT NOT NULL, size BIGINT NOT NULL,
                subject {TEXT}, artifact_type TEXT, annotations TEXT, created {TIME} NOT NULL,
                PRIMARY KEY (repo, digest))""",
            "CREATE INDEX manifests_subject ON manifests (repo, subject)",
            "CREATE INDEX manifests_digest ON manifests (digest)",
            f"""CREATE TABLE manifest_refs (
                repo {TEXT} NOT NULL, digest {TEXT} NOT NULL, child {TEXT} NOT NULL,
                PRIMARY KEY (repo, digest, child))""",
            "CREATE INDEX manifest_refs_child ON manifest_refs (child)",
            f"""CREATE TABLE tags (
                repo {TEXT} NOT NULL, tag {TEXT} NOT NULL, digest {TEXT} NOT NULL, updated {TIME} NOT NULL,
                PRIMARY KEY (repo, tag))""",
            "CREATE INDEX tags_digest ON tags (repo, digest)",
            f"""CREATE TABLE uploads (
                uuid {TEXT} PRIMARY KEY, repo {TEXT} NOT NULL, created {TIME} NOT NULL, updated {TIME} NOT NULL,
                size BIGINT NOT NULL DEFAULT 0)""",
            f"""CREATE TABLE gc_access (
                repo {TEXT} NOT NULL, digest {TEXT} NOT NULL, atime {TIME} NOT NULL, PRIMARY KEY (repo, digest))""",
            f"""CREATE TABLE gc_links (
                repo {TEXT} NOT NULL, digest {TEXT} NOT NULL, linked {TIME} NOT NULL, PRIMARY KEY (repo, digest))""",
            f"CREATE TABLE gc_sizes (digest {TEXT} PRIMARY KEY, size BIGINT NOT NULL)",
            f"CREATE TABLE gc_candidates (digest {TEXT} PRIMARY KEY, evicted INTEGER NOT NULL DEFAULT 0)",
            f"CREATE TABLE gc_quarantine (digest {TEXT} PRIMARY KEY, path TEXT NOT NULL, since {TIME} NOT NULL)",
            f"""CREATE TABLE gc_swept (
                repo {TEXT} NOT NULL, digest {TEXT} NOT NULL, at {TIME} NOT NULL, PRIMARY KEY (repo, digest))""",
            # The triggers of the sqlite schema (see trow.storage.sqlite), in PL/pgSQL. BEFORE
            # INSERT also fires for an INSERT ... ON CONFLICT DO NOTHING that finds the link.
            """CREATE FUNCTION trow_gc_link_made() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO gc_links (repo, digest, linked) VALUES (NEW.repo, NEW.digest, NEW.created)
                    ON CONFLICT (repo, digest) DO UPDATE SET linked = EXCLUDED.linked;
                RETURN NEW;
            END $$""",
            "CREATE TRIGGER gc_link_made BEFORE INSERT ON repo_blobs FOR EACH ROW EXECUTE FUNCTION trow_gc_link_made()",
            """CREATE FUNCTION trow_gc_link_gone() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                DELETE FROM gc_links WHERE repo = OLD.repo AND digest = OLD.digest;
                INSERT INTO gc_candidates (digest) VALUES (OLD.digest) ON CONFLICT DO NOTHING;
                RETURN OLD;
            END $$""",
            "CREATE TRIGGER gc_link_gone AFTER DELETE ON repo_blobs FOR EACH ROW EXECUTE FUNCTION trow_gc_link_gone()",
            """CREATE FUNCTION trow_gc_manifest_gone() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO gc_candidates (digest) VALUES (OLD.digest) ON CONFLICT DO NOTHING;
                RETURN OLD;
            END $$""",
            "CREATE TRIGGER gc_manifest_gone AFTER DELETE ON manifests FOR EACH ROW EXECUTE FUNCTION trow_gc_manifest_gone()",
            """CREATE FUNCTION trow_gc_reference_gone() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO gc_candidates (digest) VALUES (OLD.child) ON CONFLICT DO NOTHING;
                RETURN OLD;
            END $$""",
            "CREATE TRIGGER gc_reference_gone AFTER DELETE ON manifest_refs "
            "FOR EACH ROW EXECUTE FUNCTION trow_gc_reference_gone()",
            # A manifest stored right after the sweep removed the link its push had just checked:
            # the link comes back (see trow.registry.gc).
            """CREATE FUNCTION trow_gc_swept_referenced() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF EXISTS (SELECT 1 FROM gc_swept WHERE repo = NEW.repo AND digest = NEW.child) THEN
                    INSERT INTO repo_blobs (repo, digest, created)
                        SELECT NEW.repo, NEW.child, COALESCE(
                            (SELECT created FROM manifests WHERE repo = NEW.repo AND digest = NEW.digest),
                            (SELECT at FROM gc_swept WHERE repo = NEW.repo AND digest = NEW.child))
                        ON CONFLICT DO NOTHING;
                    DELETE FROM gc_swept WHERE repo = NEW.repo AND digest = NEW.child;
                END IF;
                RETURN NULL;
            END $$""",
            "CREATE TRIGGER gc_swept_referenced AFTER INSERT ON manifest_refs "
            "FOR EACH ROW EXECUTE FUNCTION trow_gc_swept_referenced()",
        ],
    ),
]
MIGRATIONS.append(
    (
        2,
        [
            # The replicas sharing this database: heartbeats (database time), how to reach each,
            # and the digests each is reading or downloading now (kept by garbage collection).
            f"""CREATE TABLE replicas (
                id {TEXT} PRIMARY KEY, peer_url TEXT NOT NULL, started {TIME} NOT NULL, seen {TIME} NOT NULL,
                busy TEXT[] NOT NULL DEFAULT '{{}}')""",
        ],
    )
)
MIGRATIONS.append(
    (
        4,
        [
            # Who is downloading a blob from its upstream for the whole set of replicas: the one
            # replica that fetches it, until its lease expires (renewed while it downloads).
            f"""CREATE TABLE download_leases (
                digest {TEXT} PRIMARY KEY, replica {TEXT} NOT NULL, peer_url TEXT NOT NULL,
                repo {TEXT} NOT NULL, expires {TIME} NOT NULL)""",
        ],
    )
)
MIGRATIONS.append(
    (
        6,
        [
            # When a garbage collection pass last started on any replica: each replica has its
            # own timer, and without this N replicas would run N passes per interval.
            f"CREATE TABLE gc_state (id INTEGER PRIMARY KEY, last_pass {TIME} NOT NULL)",
        ],
    )
)
MIGRATIONS.append(
    (
        7,
        [
            # The status page: a repository's most recently set tags, and the upload sessions
            # written to last, read from an index instead of sorting every row.
            "CREATE INDEX tags_updated ON tags (repo, updated)",
            "CREATE INDEX uploads_updated ON uploads (updated)",
        ],
    )
)
MIGRATIONS.append(
    (
        5,
        [
            # Which replica is writing an upload session's next chunk (see SqlMetadata.claim_upload).
            "ALTER TABLE uploads ADD COLUMN writer TEXT",
        ],
    )
)
MIGRATIONS.append(
    (
        3,
        [
            # Every repository that holds a manifest or a blob link, what the catalog pages
            # through by its primary key; the triggers keep it exact, as in the sqlite schema.
            f"CREATE TABLE repositories (repo {TEXT} PRIMARY KEY)",
            # Under READ COMMITTED a transaction that adds a row to a repository and one that
            # deletes its last other row could each miss the other's: the repository's row is
            # the lock they meet on. Adding takes it FOR KEY SHARE (concurrent pushes do not
            # wait on each other) or inserts it; a delete takes it FOR UPDATE, then looks again
            # (a new snapshot per statement) for rows of the repository.
            """CREATE FUNCTION trow_repo_listed() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                LOOP
                    PERFORM 1 FROM repositories WHERE repo = NEW.repo FOR KEY SHARE;
                    IF FOUND THEN
                        RETURN NULL;
                    END IF;
                    INSERT INTO repositories (repo) VALUES (NEW.repo) ON CONFLICT DO NOTHING;
                    IF FOUND THEN
                        RETURN NULL;
                    END IF;
                END LOOP;
            END $$""",
            "CREATE TRIGGER repo_listed_by_link AFTER INSERT ON repo_blobs FOR EACH ROW EXECUTE FUNCTION trow_repo_listed()",
            "CREATE TRIGGER repo_listed_by_manifest AFTER INSERT ON manifests "
            "FOR EACH ROW EXECUTE FUNCTION trow_repo_listed()",
            """CREATE FUNCTION trow_repo_unlisted() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM 1 FROM repositories WHERE repo = OLD.repo FOR UPDATE;
                IF NOT EXISTS (SELECT 1 FROM repo_blobs WHERE repo = OLD.repo)
                        AND NOT EXISTS (SELECT 1 FROM manifests WHERE repo = OLD.repo) THEN
                    DELETE FROM repositories WHERE repo = OLD.repo;
                END IF;
                RETURN NULL;
            END $$""",
            "CREATE TRIGGER repo_unlisted_by_link AFTER DELETE ON repo_blobs "
            "FOR EACH ROW EXECUTE FUNCTION trow_repo_unlisted()",
            "CREATE TRIGGER repo_unlisted_by_manifest AFTER DELETE ON manifests "
            "FOR EACH ROW EXECUTE FUNCTION trow_repo_unlisted()",
            # The repositories of rows made before this migration. Replicas of an older trow
            # writing meanwhile wait: CREATE TRIGGER locked both tables against writes.
            "INSERT INTO repositories (repo) SELECT repo FROM manifests UNION SELECT repo FROM repo_blobs",
        ],
    )
)

_NOW = "extract(epoch from clock_timestamp())"
# Seconds without a heartbeat after which a replica's claims on upload sessions are void.
WRITER_DEAD_AFTER = 30


class DatabaseURLError(ValueError):
    """C{--database} is not a usable PostgreSQL connection URL."""


class SchemaTooNew(Exception):
    """The database was migrated by a newer trow: this one refuses to run on it."""


def check_url(url: str) -> dict[str, Any]:
    """Parse a libpq URL or key=value string; raise L{DatabaseURLError} saying what is wrong, in
    one line, without the password. Nothing is connected to."""
    if not url.startswith(("postgresql://", "postgres://")) and "=" not in url:
        raise DatabaseURLError(
            f"--database {redact(url)!r} is not a PostgreSQL URL: write postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME"
        )
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        raise DatabaseURLError(f"--database {redact(url)!r} is not a valid PostgreSQL URL: {_scrub(str(e), url)}") from None
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise DatabaseURLError(f"--database {redact(url)!r}: the port {port!r} is not a port number")
    return params


def _scrub(message: str, url: str) -> str:
    """One line of a driver's message about C{url}, with the URL's password (and any URL the
    message quotes) hidden."""
    line = " ".join(message.split())
    line = _URL_SECRET.sub(r"\1***@", line)
    line = _KV_SECRET.sub(r"\1***", line)
    return line.replace(url, redact(url))


# The password of scheme://user:PASSWORD@host, and of password=PASSWORD in key=value form.
_URL_SECRET = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@")
_KV_SECRET = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def redact(url: str) -> str:
    """C{url} with any password replaced, for messages and logs."""
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        # Unparseable: hide whatever looks like a password rather than echo it.
        return _KV_SECRET.sub(r"\1***", _URL_SECRET.sub(r"\1***@", url))
    if "password" in params:
        params["password"] = "***"
    if url.startswith(("postgresql://", "postgres://")):
        host = params.get("host", "")
        port = f":{params['port']}" if "port" in params else ""
        user = params.get("user", "")
        auth = f"{user}{':***' if 'password' in params else ''}@" if user else ""
        return f"postgresql://{auth}{host}{port}/{params.get('dbname', '')}"
    return conninfo.make_conninfo("", **params)


class _PgConnection:
    """A psycopg connection with the shared code's C{?} placeholders."""

    _translated: dict[str, str] = {}

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    @classmethod
    def _sql(cls, sql: str) -> str:
        translated = cls._translated.get(sql)
        if translated is None:
            translated = cls._translated[sql] = sql.replace("%", "%%").replace("?", "%s")
        return translated

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self._conn.execute(self._sql(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            self._conn.cursor().executemany(self._sql(sql), rows)


# Failures that mean "the database is not there right now", as opposed to a bug in a query.
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed)


class PostgresMetadata(SqlMetadata):
    """The metadata in a PostgreSQL database, shared by every replica that names it."""

    GREATEST = "GREATEST"
    NO_INDEX = ""
    # A claim on an upload session stands while its replica beats (see trow.replicas).
    DEAD_WRITER = f"OR writer NOT IN (SELECT id FROM replicas WHERE seen >= {_NOW} - {WRITER_DEAD_AFTER})"

    def __init__(
        self,
        url: str,
        worker: Worker,
        clock: Callable[[], float] = time.time,
        max_connections: int = 8,
        pool_timeout: float = POOL_TIMEOUT,
    ) -> None:
        super().__init__(worker, clock)
        check_url(url)
        self.url = url
        self.where = redact(url)
        self._pool_timeout = pool_timeout
        self.migrated = False
        self._gc_conn: psycopg.Connection[Any] | None = None
        # The breaker: once the database failed, calls fail at once for a moment, and then one
        # call at a time probes it, instead of every request waiting out the pool timeout.
        self._breaker = threading.Lock()
        self._down_until = 0.0
        self._down_reason = ""
        self._probing = False
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            # One more than the db threads: a GC pass keeps one aside for its set-wide lock.
            max_size=max_connections + 1,
            open=False,
            timeout=pool_timeout,
            # One reconnection attempt backs off (1, 2, 4, 8 s) for this long, then gives up; the
            # next call starts a fresh one at once. So after an outage of any length the pool is
            # back within seconds, not after a backoff as long as the outage.
            reconnect_timeout=15.0,
            kwargs={"connect_timeout": CONNECT_TIMEOUT, "autocommit": True},
            configure=self._configure,
            name="trow-db",
        )

    @staticmethod
    def _configure(conn: psycopg.Connection[Any]) -> None:
        conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        conn.execute("SET lock_timeout = 5000")

    # -- life cycle -------------------------------------------------------------------------------

    def open(self) -> None:
        """Start the pool; it connects in the background and reconnects by itself."""
        self._pool.open(wait=False)

    def close(self) -> None:
        """Close every connection (at service stop)."""
        self._pool.close(timeout=5.0)

    def migrate_sync(self) -> int:
        """Bring the schema to this code's version under the migration lock; return the version
        found. Blocking: on a worker, or at start-up. Raises L{SchemaTooNew}, or
        L{MetadataUnavailable} when the database cannot be reached."""
        try:
            with psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
                # Session lock: held across the migrations' own transactions, dropped with the
                # connection however this process ends. Waited for a bounded time: a replica
                # still migrating (or one stuck holding it) must not keep this one from starting
                # its listeners; the replica set tries again later.
                deadline = time.monotonic() + MIGRATION_WAIT
                while not conn.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK,)).fetchone()[0]:  # type: ignore[index]
                    if time.monotonic() > deadline:
                        raise MetadataUnavailable(
                            f"the database {self.where} is being migrated by another replica; trying again"
                        )
                    time.sleep(0.2)
                conn.execute("CREATE TABLE IF NOT EXISTS trow_schema (version INTEGER NOT NULL)")
                applied = {int(r[0]) for r in conn.execute("SELECT version FROM trow_schema").fetchall()}
                found = max(applied, default=0)
                if found > SCHEMA_VERSION:
                    raise SchemaTooNew(
                        f"the database {self.where} has trow schema version {found}, newer than this trow's "
                        f"{SCHEMA_VERSION}: run a trow at least as new as the one that migrated it"
                    )
                for version, statements in sorted(MIGRATIONS, key=lambda m: m[0]):
                    if version in applied:
                        continue
                    with conn.transaction():
                        for statement in statements:
                            conn.execute(statement)
                        conn.execute("INSERT INTO trow_schema (version) VALUES (%s)", (version,))
                    _log.info("database {where}: schema migrated to version {version}", where=self.where, version=version)
                conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        except _UNAVAILABLE as e:
            raise MetadataUnavailable(f"the database {self.where} is unreachable: {_reason(e)}") from None
        self.migrated = True
        return found

    def migrate(self) -> "Deferred[int]":
        """L{migrate_sync} on the worker."""
        return self._worker.run(self.migrate_sync)

    # -- calls ------------------------------------------------------------------------------------

    def _admit(self) -> bool:
        """Let a call through, or fail it at once while the breaker is open. Returns whether the
        call is the one probe of a database that failed lately."""
        with self._breaker:
            if not self._down_until:
                return False
            if time.monotonic() < self._down_until or self._probing:
                raise MetadataUnavailable(self._down_reason)
            self._probing = True
            return True

    def _trip(self, reason: str) -> None:
        with self._breaker:
            self._down_until = time.monotonic() + BREAKER_OPEN
            self._down_reason = reason
            self._probing = False

    def _close_breaker(self) -> None:
        with self._breaker:
            self._down_until = 0.0
            self._probing = False

    def _run(self, f: Callable[[_PgConnection], T], write: bool, undo: Callable[[], None] | None) -> T:
        if not self.migrated:
            raise MetadataUnavailable(f"the database {self.where} is not ready yet (trow is still connecting to it)")
        probe = self._admit()
        # A read that meets a pooled connection the server dropped (a restart) is run again on a
        # fresh one: pooled connections are not checked on the way out, which would cost every
        # call a round trip. A write is not: it may have committed before the connection broke.
        # A transaction that lost a deadlock (or a serialization check) is run again once.
        reconnects = 0 if write else 1
        rollbacks = 1
        while True:
            conn: psycopg.Connection[Any] | None = None
            try:
                with self._pool.connection(timeout=self._pool_timeout) as conn:
                    if not write:
                        result = f(_PgConnection(conn))
                    else:
                        try:
                            with conn.transaction():
                                result = f(_PgConnection(conn))
                        except BaseException:
                            if undo is not None:
                                undo()
                            raise
                break
            except psycopg.errors.TransactionRollback as e:
                if rollbacks > 0:
                    rollbacks -= 1
                    continue
                raise MetadataUnavailable(f"the database {self.where} could not complete a call: {_reason(e)}") from None
            except (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable) as e:
                # The database answers; this call took too long or waited too long for a lock.
                # Unavailable for this call only: the breaker is for a database that is gone.
                if probe:
                    self._close_breaker()
                raise MetadataUnavailable(f"the database {self.where} is too slow: {_reason(e)}") from None
            except psycopg.OperationalError as e:
                if conn is not None and conn.broken:
                    # A connection the server dropped: have the pool look at the others too.
                    self._pool.check()
                    if reconnects > 0:
                        reconnects -= 1
                        continue
                reason = f"the database {self.where} is unavailable: {_reason(e)}"
                self._trip(reason)
                raise MetadataUnavailable(reason) from None
            except _UNAVAILABLE as e:
                reason = f"the database {self.where} is unavailable: {_reason(e)}"
                self._trip(reason)
                raise MetadataUnavailable(reason) from None
            except BaseException:
                if probe:
                    self._close_breaker()  # it answered: the failure is the call's own
                raise
        if probe or self._down_until:
            self._close_breaker()
        return result

    def _call(self, f: Callable[[Any], T], write: bool, undo: Callable[[], None] | None) -> "Deferred[T]":
        def call() -> T:
            return self._run(f, write, undo)

        # Named after the work it wraps: what a thread dump, or a test stepping the worker, sees.
        call.__name__ = getattr(f, "__name__", "call")
        return self._worker.run(call)

    def _read(self, f: Callable[[Any], T]) -> "Deferred[T]":
        return self._call(f, False, None)

    def _write(self, f: Callable[[Any], T], undo: Callable[[], None] | None = None) -> "Deferred[T]":
        return self._call(f, True, undo)

    # -- the set of replicas ----------------------------------------------------------------------

    def replica_beat(
        self, replica: str, peer_url: str, busy: Iterable[str], dead_after: float
    ) -> "Deferred[list[tuple[str, str, list[str]]]]":
        """Record that C{replica} is alive (database time) and what it is reading; return every
        replica seen within C{dead_after} seconds as (id, peer URL, busy digests). Replicas gone
        for an hour are forgotten."""
        reading = sorted(busy)

        def beat(c: Any) -> list[tuple[str, str, list[str]]]:
            c.execute(
                f"INSERT INTO replicas (id, peer_url, started, seen, busy) VALUES (?, ?, {_NOW}, {_NOW}, ?) "
                "ON CONFLICT (id) DO UPDATE SET peer_url = excluded.peer_url, seen = excluded.seen, busy = excluded.busy",
                (replica, peer_url, reading),
            )
            c.execute(f"DELETE FROM replicas WHERE seen < {_NOW} - 3600")
            c.execute(f"DELETE FROM download_leases WHERE expires < {_NOW} - 3600")
            rows = c.execute(
                f"SELECT id, peer_url, busy FROM replicas WHERE seen >= {_NOW} - ? ORDER BY id", (dead_after,)
            ).fetchall()
            return [(r[0], r[1], list(r[2] or [])) for r in rows]

        return self._write(beat)

    def replica_leave(self, replica: str) -> "Deferred[None]":
        """Forget C{replica} (a clean stop): its peers need not wait for its heartbeat to age."""

        def leave(c: Any) -> None:
            c.execute("DELETE FROM replicas WHERE id = ?", (replica,))

        return self._write(leave)

    # -- download leases: one upstream fetch per digest across the replicas ------------------------

    def lease_claim(
        self, digest: str, replica: str, peer_url: str, repo: str, ttl: float
    ) -> "Deferred[tuple[str, str, str]]":
        """Take the download lease of C{digest} for C{replica} if nobody holds it, it expired, or
        C{replica} holds it already (then it is renewed). Returns the holder: (replica, peer URL,
        the cache repository it downloads for)."""

        def claim(c: Any) -> tuple[str, str, str]:
            row = c.execute(
                "INSERT INTO download_leases (digest, replica, peer_url, repo, expires) "
                f"VALUES (?, ?, ?, ?, {_NOW} + ?) ON CONFLICT (digest) DO UPDATE SET replica = excluded.replica, "
                "peer_url = excluded.peer_url, repo = excluded.repo, expires = excluded.expires "
                f"WHERE download_leases.expires < {_NOW} OR download_leases.replica = excluded.replica "
                "RETURNING replica, peer_url, repo",
                (digest, replica, peer_url, repo, ttl),
            ).fetchone()
            if row is None:
                row = c.execute(
                    "SELECT replica, peer_url, repo FROM download_leases WHERE digest = ?", (digest,)
                ).fetchone()
            return (row[0], row[1], row[2])

        return self._write(claim)

    def lease_renew(self, digest: str, replica: str, ttl: float) -> "Deferred[bool]":
        """Extend C{replica}'s lease of C{digest}; False if it no longer holds it."""
        return self._write(
            lambda c: c.execute(
                f"UPDATE download_leases SET expires = {_NOW} + ? WHERE digest = ? AND replica = ?",
                (ttl, digest, replica),
            ).rowcount
            > 0
        )

    def lease_release(self, digest: str, replica: str) -> "Deferred[None]":
        """Give up C{replica}'s lease of C{digest} (the download ended, either way)."""

        def release(c: Any) -> None:
            c.execute("DELETE FROM download_leases WHERE digest = ? AND replica = ?", (digest, replica))

        return self._write(release)

    # -- one garbage collection pass at a time, across the replicas --------------------------------

    def gc_try_lock(self, min_interval: float = 0.0) -> "Deferred[bool]":
        """Take the set-wide GC lock if no other replica holds it and no pass started on any
        replica in the last C{min_interval} seconds (database time). A session lock on a
        connection kept aside until L{gc_unlock}: a replica that dies lets it go with its
        connection."""

        def take() -> bool:
            try:
                conn = self._pool.getconn(timeout=self._pool_timeout)
            except _UNAVAILABLE as e:
                raise MetadataUnavailable(f"the database {self.where} is unavailable: {_reason(e)}") from None
            try:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (GC_LOCK,)).fetchone()
                if not (row and row[0]):
                    self._pool.putconn(conn)
                    return False
                last = conn.execute(
                    f"SELECT {_NOW} - last_pass FROM gc_state WHERE id = 1"
                ).fetchone()
                if min_interval > 0 and last is not None and last[0] < min_interval:
                    # Another replica ran a pass lately: this one is not due.
                    conn.execute("SELECT pg_advisory_unlock(%s)", (GC_LOCK,))
                    self._pool.putconn(conn)
                    return False
                conn.execute(
                    f"INSERT INTO gc_state (id, last_pass) VALUES (1, {_NOW}) "
                    "ON CONFLICT (id) DO UPDATE SET last_pass = excluded.last_pass"
                )
            except _UNAVAILABLE as e:
                self._pool.putconn(conn)
                raise MetadataUnavailable(f"the database {self.where} is unavailable: {_reason(e)}") from None
            self._gc_conn = conn
            return True

        return self._worker.run(take)

    def gc_unlock(self) -> "Deferred[None]":
        """Let the set-wide GC lock go."""

        def release() -> None:
            conn, self._gc_conn = self._gc_conn, None
            if conn is None:
                return
            try:
                conn.execute("SELECT pg_advisory_unlock(%s)", (GC_LOCK,))
            except _UNAVAILABLE:
                pass  # the connection is gone, and the lock with it
            finally:
                self._pool.putconn(conn)

        return self._worker.run(release)

    def _lock(self, c: Any, digests: Iterable[str]) -> None:
        # In the order given (sorted by the callers): two transactions never wait on each other
        # in a cycle.
        wanted = list(digests)
        if wanted:
            c.execute(
                "SELECT pg_advisory_xact_lock(k) FROM (SELECT hashtextextended(d, ?) AS k "
                "FROM unnest(?::text[]) WITH ORDINALITY AS t(d, i) ORDER BY i) AS s",
                (DIGEST_SEED, wanted),
            ).fetchall()


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# The newest migration this code knows (migrations are appended above, in any order).
SCHEMA_VERSION = max(version for version, _ in MIGRATIONS)
