"""The embedded metadata backend: sqlite in the data dir, for one trow process.

One connection, used only from a single-thread worker ("trow-db"), so that sqlite never runs on
the reactor thread and writes are serialised: that thread is also what serialises links against
garbage collection (L{trow.storage.sql.SqlMetadata._lock} has nothing to do). WAL with
synchronous=FULL: a committed transaction survives a kill -9 or a power cut; an interrupted one is
rolled back by sqlite on the next open.
"""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.parse
from typing import Callable, TypeVar

from twisted.internet.defer import Deferred

from trow.storage.sql import Connection, SqlMetadata
from trow.workers import Worker

T = TypeVar("T")

# PRAGMA user_version of the schema below. 0: a data dir from before versions (the tables are
# made with IF NOT EXISTS, so it gains the new ones); 1: uploads.size holds the session's offset;
# 2: the repositories table lists every repository (backfilled from manifests and repo_blobs).
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS repo_blobs (
    repo TEXT NOT NULL, digest TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (repo, digest)
);
CREATE INDEX IF NOT EXISTS repo_blobs_digest ON repo_blobs (digest);
CREATE TABLE IF NOT EXISTS manifests (
    repo TEXT NOT NULL, digest TEXT NOT NULL, media_type TEXT NOT NULL, size INTEGER NOT NULL,
    subject TEXT, artifact_type TEXT, annotations TEXT, created REAL NOT NULL,
    PRIMARY KEY (repo, digest)
);
CREATE INDEX IF NOT EXISTS manifests_subject ON manifests (repo, subject);
CREATE INDEX IF NOT EXISTS manifests_digest ON manifests (digest);
CREATE TABLE IF NOT EXISTS manifest_refs (
    repo TEXT NOT NULL, digest TEXT NOT NULL, child TEXT NOT NULL,
    PRIMARY KEY (repo, digest, child)
);
CREATE INDEX IF NOT EXISTS manifest_refs_child ON manifest_refs (child);
CREATE TABLE IF NOT EXISTS tags (
    repo TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (repo, tag)
);
CREATE INDEX IF NOT EXISTS tags_digest ON tags (repo, digest);
-- The status page: a repository's most recently set tags, the upload sessions written to last.
CREATE INDEX IF NOT EXISTS tags_updated ON tags (repo, updated);
CREATE TABLE IF NOT EXISTS uploads (
    uuid TEXT PRIMARY KEY, repo TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    size INTEGER NOT NULL DEFAULT 0, writer TEXT
);
CREATE INDEX IF NOT EXISTS uploads_updated ON uploads (updated);
-- Garbage collection (trow.registry.gc). All IF NOT EXISTS: older data dirs gain them on open.
-- gc_access: when proxied content was last read. gc_links: when each link was last made (an
-- INSERT OR IGNORE of an existing link leaves repo_blobs.created alone, so a re-push would not
-- count as fresh without it). gc_sizes: blob sizes (content-addressed, so never stale).
-- gc_candidates: digests that lost a row, to check without walking blobs/ (evicted: no grace
-- period for the file, which only guards pushes that have not linked it yet). gc_quarantine: blob
-- files moved aside, not yet deleted. gc_swept: links removed by the last sweep.
CREATE TABLE IF NOT EXISTS gc_access (
    repo TEXT NOT NULL, digest TEXT NOT NULL, atime REAL NOT NULL, PRIMARY KEY (repo, digest)
);
CREATE TABLE IF NOT EXISTS gc_links (
    repo TEXT NOT NULL, digest TEXT NOT NULL, linked REAL NOT NULL, PRIMARY KEY (repo, digest)
);
CREATE TABLE IF NOT EXISTS gc_sizes (digest TEXT PRIMARY KEY, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS gc_candidates (digest TEXT PRIMARY KEY, evicted INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS gc_quarantine (digest TEXT PRIMARY KEY, path TEXT NOT NULL, since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS gc_swept (
    repo TEXT NOT NULL, digest TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (repo, digest)
);
-- BEFORE: it also fires for an INSERT OR IGNORE that finds the link already there. The outer
-- statement's OR clause overrides a trigger's own, hence UPDATE + guarded INSERT, not REPLACE.
CREATE TRIGGER IF NOT EXISTS gc_link_made BEFORE INSERT ON repo_blobs BEGIN
    UPDATE gc_links SET linked = NEW.created WHERE repo = NEW.repo AND digest = NEW.digest;
    INSERT INTO gc_links (repo, digest, linked) SELECT NEW.repo, NEW.digest, NEW.created
        WHERE NOT EXISTS (SELECT 1 FROM gc_links WHERE repo = NEW.repo AND digest = NEW.digest);
END;
CREATE TRIGGER IF NOT EXISTS gc_link_gone AFTER DELETE ON repo_blobs BEGIN
    DELETE FROM gc_links WHERE repo = OLD.repo AND digest = OLD.digest;
    INSERT INTO gc_candidates (digest) SELECT OLD.digest
        WHERE NOT EXISTS (SELECT 1 FROM gc_candidates WHERE digest = OLD.digest);
END;
CREATE TRIGGER IF NOT EXISTS gc_manifest_gone AFTER DELETE ON manifests BEGIN
    INSERT INTO gc_candidates (digest) SELECT OLD.digest
        WHERE NOT EXISTS (SELECT 1 FROM gc_candidates WHERE digest = OLD.digest);
END;
CREATE TRIGGER IF NOT EXISTS gc_reference_gone AFTER DELETE ON manifest_refs BEGIN
    INSERT INTO gc_candidates (digest) SELECT OLD.child
        WHERE NOT EXISTS (SELECT 1 FROM gc_candidates WHERE digest = OLD.child);
END;
-- A manifest stored right after the sweep removed the link its push had just checked: the
-- link comes back, so the sweep never leaves a manifest whose blob its repository cannot serve.
CREATE TRIGGER IF NOT EXISTS gc_swept_referenced AFTER INSERT ON manifest_refs
    WHEN EXISTS (SELECT 1 FROM gc_swept WHERE repo = NEW.repo AND digest = NEW.child) BEGIN
    INSERT INTO repo_blobs (repo, digest, created)
        SELECT NEW.repo, NEW.child, COALESCE(
            (SELECT created FROM manifests WHERE repo = NEW.repo AND digest = NEW.digest),
            (SELECT at FROM gc_swept WHERE repo = NEW.repo AND digest = NEW.child))
        WHERE NOT EXISTS (SELECT 1 FROM repo_blobs WHERE repo = NEW.repo AND digest = NEW.child);
    DELETE FROM gc_swept WHERE repo = NEW.repo AND digest = NEW.child;
END;
-- repositories: every repository that holds a manifest or a blob link, what the catalog pages
-- through by its primary key (a page costs its size, not the number of rows). The triggers keep it
-- exact in the transaction that adds a repository's first row or deletes its last, whatever
-- deletes it (API, sweep, eviction). Guarded INSERTs, not OR IGNORE: see gc_link_made.
CREATE TABLE IF NOT EXISTS repositories (repo TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS repo_listed_by_link AFTER INSERT ON repo_blobs BEGIN
    INSERT INTO repositories (repo) SELECT NEW.repo
        WHERE NOT EXISTS (SELECT 1 FROM repositories WHERE repo = NEW.repo);
END;
CREATE TRIGGER IF NOT EXISTS repo_listed_by_manifest AFTER INSERT ON manifests BEGIN
    INSERT INTO repositories (repo) SELECT NEW.repo
        WHERE NOT EXISTS (SELECT 1 FROM repositories WHERE repo = NEW.repo);
END;
CREATE TRIGGER IF NOT EXISTS repo_unlisted_by_link AFTER DELETE ON repo_blobs
    WHEN NOT EXISTS (SELECT 1 FROM repo_blobs WHERE repo = OLD.repo)
    AND NOT EXISTS (SELECT 1 FROM manifests WHERE repo = OLD.repo) BEGIN
    DELETE FROM repositories WHERE repo = OLD.repo;
END;
CREATE TRIGGER IF NOT EXISTS repo_unlisted_by_manifest AFTER DELETE ON manifests
    WHEN NOT EXISTS (SELECT 1 FROM repo_blobs WHERE repo = OLD.repo)
    AND NOT EXISTS (SELECT 1 FROM manifests WHERE repo = OLD.repo) BEGIN
    DELETE FROM repositories WHERE repo = OLD.repo;
END;
"""


class SchemaTooNew(Exception):
    """The database was written by a newer trow: this one refuses to touch it."""


class SqliteMetadata(SqlMetadata):
    """The metadata in C{<data-dir>/trow.db}; every call runs on the single db worker."""

    def __init__(self, path: str, worker: Worker, clock: Callable[[], float] = time.time) -> None:
        super().__init__(worker, clock)
        self.path = path
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    def _migrate(self) -> None:
        c = self._conn
        version = c.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{self.path} has metadata schema version {version}, newer than this trow's {SCHEMA_VERSION}: "
                "run the trow version that wrote it, or a newer one"
            )
        old_uploads = c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'uploads'").fetchone()
        c.execute("BEGIN IMMEDIATE")
        try:
            if version < 1 and old_uploads is not None:
                columns = {row[1] for row in c.execute("PRAGMA table_info(uploads)")}
                if "size" not in columns:
                    # Sessions of an older trow: their offset is their file's size (-1 says so).
                    c.execute("ALTER TABLE uploads ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
                    c.execute("UPDATE uploads SET size = -1")
            for statement in _statements(_SCHEMA):
                c.execute(statement)
            if version < 3 and old_uploads is not None:
                if "writer" not in {row[1] for row in c.execute("PRAGMA table_info(uploads)")}:
                    c.execute("ALTER TABLE uploads ADD COLUMN writer TEXT")
            # One process per sqlite data dir: a claim on an upload left by a crash is void.
            c.execute("UPDATE uploads SET writer = NULL WHERE writer IS NOT NULL")
            if version < 2:
                # Repositories of an older trow: listed from their rows, once (the triggers keep
                # the table from now on).
                c.execute(
                    "INSERT INTO repositories (repo) SELECT repo FROM "
                    "(SELECT repo FROM manifests UNION SELECT repo FROM repo_blobs) WHERE true ON CONFLICT DO NOTHING"
                )
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def upload_ids_sync(self) -> set[str]:
        """Every known upload session id. Blocking: for start-up cleaning before serving."""
        return {r[0] for r in self._conn.execute("SELECT uuid FROM uploads")}

    def close(self) -> None:
        """Close the connection (at service stop)."""
        self._conn.close()

    def _read(self, f: Callable[[Connection], T]) -> "Deferred[T]":
        return self._worker.run(f, self._conn)

    def _write(self, f: Callable[[Connection], T], undo: Callable[[], None] | None = None) -> "Deferred[T]":
        def transaction(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = f(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if undo is not None:
                    undo()
                raise
            return result

        # Named after the work it wraps: what a thread dump, or a test stepping the worker, sees.
        transaction.__name__ = getattr(f, "__name__", "transaction")
        return self._worker.run(transaction, self._conn)


def snapshot_database(path: str, target: str, attempts: int = 5) -> None:
    """Copy the last committed state of the sqlite database at C{path} into a new database at
    C{target}, writing nothing beside C{path} and taking no lock that could make its writer wait
    (the server's db worker goes on committing meanwhile). For C{python -m trow gc --dry-run}.

    The copy is sqlite's online backup API in one step (C{pages=-1}): one read transaction on
    the source, so one consistent state, every page as of the same commit.

    - With a C{-wal} file beside it (it exists as long as a connection, a running trow's, has the
      database open), the source is opened C{mode=ro}: a WAL reader, which sees what is committed
      in the WAL as well, neither waits for the writer nor makes it wait (at most it keeps a
      checkpoint from going past its snapshot while it reads), and never writes the database or
      the WAL, nor checkpoints at close. Like every reader of a WAL database it uses the shared
      C{-shm} index. (Should the last connection close between the look and the open, this
      reader would leave an empty C{-wal} and C{-shm} behind, which any later opener accepts.)
    - Without one, nobody has the database open, and a C{mode=ro} connection would create C{-wal}
      and C{-shm} there: it is read C{immutable=1} (no lock, no file made), and that copy is kept
      only if afterwards there is still no C{-wal} and the file has not changed. Otherwise a
      process opened it meanwhile and the copy may be torn: it is taken again, through the WAL.

    Raises C{sqlite3.Error} (C{OperationalError} after C{attempts} changing copies) or C{OSError}.
    """
    source = "file:" + urllib.parse.quote(os.path.abspath(path))
    for _ in range(attempts):
        if os.path.exists(path + "-wal"):
            _backup(source + "?mode=ro", target)
            return
        before = _stamp(path)
        _backup(source + "?immutable=1", target)
        if not os.path.exists(path + "-wal") and _stamp(path) == before:
            return
    raise sqlite3.OperationalError(f"{path} kept changing while it was copied ({attempts} attempts)")


def _stamp(path: str) -> tuple[int, int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _backup(source_uri: str, target: str) -> None:
    source = sqlite3.connect(source_uri, uri=True)
    try:
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)
        finally:
            copy.close()
    finally:
        source.close()


def _statements(script: str) -> list[str]:
    """Split a schema script into statements (executescript would commit on its own)."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements
