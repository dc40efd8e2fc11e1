"""Registry metadata in sqlite: repository links, manifests, tags, references and uploads.

One connection, used only from a single-thread worker ("trow-db"), so that sqlite never runs on
the reactor thread and writes are serialised. WAL with synchronous=FULL: a committed transaction
survives a kill -9 or a power cut; an interrupted one is rolled back by sqlite on the next open.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any, Callable, Iterable, TypeVar

import attrs
from twisted.internet.defer import Deferred

from trow.workers import Worker

T = TypeVar("T")

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
CREATE TABLE IF NOT EXISTS uploads (
    uuid TEXT PRIMARY KEY, repo TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL
);
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
"""


@attrs.frozen
class ManifestRecord:
    """What the metadata knows about one manifest in one repository."""

    repo: str
    digest: str
    media_type: str
    size: int
    subject: str | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None


@attrs.frozen
class UploadRecord:
    """An upload session: which repository it pushes to, and when it started."""

    uuid: str
    repo: str
    created: float


class Metadata:
    """Async access to the sqlite metadata; every call runs on the db worker."""

    def __init__(self, path: str, worker: Worker, clock: Callable[[], float] = time.time) -> None:
        self._worker = worker
        self._now = clock
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the connection (at service stop)."""
        self._conn.close()

    def _read(self, f: Callable[[sqlite3.Connection], T]) -> "Deferred[T]":
        return self._worker.run(f, self._conn)

    def _write(self, f: Callable[[sqlite3.Connection], T]) -> "Deferred[T]":
        def transaction(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = f(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return self._worker.run(transaction, self._conn)

    # Repositories and blob links.

    def link_blob(self, repo: str, digest: str) -> "Deferred[None]":
        """Make a verified blob visible in C{repo}."""
        now = self._now()

        def link(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR IGNORE INTO repo_blobs (repo, digest, created) VALUES (?, ?, ?)", (repo, digest, now))

        return self._write(link)

    def unlink_blob(self, repo: str, digest: str) -> "Deferred[bool]":
        """Remove a blob from C{repo}; False if it was not linked there."""
        return self._write(
            lambda c: c.execute("DELETE FROM repo_blobs WHERE repo = ? AND digest = ?", (repo, digest)).rowcount > 0
        )

    def blob_linked(self, repo: str, digest: str) -> "Deferred[bool]":
        """Is the blob visible in C{repo}?"""
        return self._read(
            lambda c: c.execute(
                "SELECT 1 FROM repo_blobs WHERE repo = ? AND digest = ?", (repo, digest)
            ).fetchone()
            is not None
        )

    def repo_exists(self, repo: str) -> "Deferred[bool]":
        """Does C{repo} hold any manifest or blob?"""
        return self._read(
            lambda c: c.execute(
                "SELECT 1 FROM manifests WHERE repo = ? UNION ALL SELECT 1 FROM repo_blobs WHERE repo = ? LIMIT 1",
                (repo, repo),
            ).fetchone()
            is not None
        )

    def catalog(self, limit: int | None, last: str | None) -> "Deferred[list[str]]":
        """Repository names in lexical order, after C{last}, at most C{limit}."""

        def query(c: sqlite3.Connection) -> list[str]:
            rows = c.execute(
                "SELECT repo FROM (SELECT repo FROM manifests UNION SELECT repo FROM repo_blobs) "
                "WHERE repo > ? ORDER BY repo LIMIT ?",
                (last or "", -1 if limit is None else limit),
            )
            return [r[0] for r in rows]

        return self._read(query)

    # Manifests and tags.

    def put_manifest(
        self, record: ManifestRecord, children: Iterable[str], tags: Iterable[str] = ()
    ) -> "Deferred[None]":
        """Store a manifest's metadata (its bytes are already in the blob store), and tag it."""
        tags = list(tags)
        now = self._now()
        children = list(children)

        def put(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT OR REPLACE INTO manifests "
                "(repo, digest, media_type, size, subject, artifact_type, annotations, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.repo,
                    record.digest,
                    record.media_type,
                    record.size,
                    record.subject,
                    record.artifact_type,
                    json.dumps(record.annotations) if record.annotations else None,
                    now,
                ),
            )
            c.executemany(
                "INSERT OR IGNORE INTO manifest_refs (repo, digest, child) VALUES (?, ?, ?)",
                [(record.repo, record.digest, child) for child in children],
            )
            c.executemany(
                "INSERT OR REPLACE INTO tags (repo, tag, digest, updated) VALUES (?, ?, ?, ?)",
                [(record.repo, tag, record.digest, now) for tag in tags],
            )

        return self._write(put)

    @staticmethod
    def _record(row: Any) -> ManifestRecord:
        return ManifestRecord(
            repo=row[0],
            digest=row[1],
            media_type=row[2],
            size=row[3],
            subject=row[4],
            artifact_type=row[5],
            annotations=json.loads(row[6]) if row[6] else None,
        )

    _COLUMNS = "repo, digest, media_type, size, subject, artifact_type, annotations"

    def get_manifest(self, repo: str, digest: str) -> "Deferred[ManifestRecord | None]":
        """The manifest C{digest} in C{repo}, or None."""

        def get(c: sqlite3.Connection) -> ManifestRecord | None:
            row = c.execute(
                f"SELECT {self._COLUMNS} FROM manifests WHERE repo = ? AND digest = ?", (repo, digest)
            ).fetchone()
            return None if row is None else self._record(row)

        return self._read(get)

    def resolve_tag(self, repo: str, tag: str) -> "Deferred[ManifestRecord | None]":
        """The manifest that C{repo:tag} points at, or None."""

        def get(c: sqlite3.Connection) -> ManifestRecord | None:
            row = c.execute(
                f"SELECT {', '.join('m.' + col for col in self._COLUMNS.split(', '))} "
                "FROM tags t JOIN manifests m ON m.repo = t.repo AND m.digest = t.digest "
                "WHERE t.repo = ? AND t.tag = ?",
                (repo, tag),
            ).fetchone()
            return None if row is None else self._record(row)

        return self._read(get)

    def manifest_known(self, repo: str, digests: Iterable[str]) -> "Deferred[set[str]]":
        """Which of C{digests} are manifests stored in C{repo}."""
        wanted = list(digests)

        def query(c: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for digest in wanted:
                if c.execute("SELECT 1 FROM manifests WHERE repo = ? AND digest = ?", (repo, digest)).fetchone():
                    found.add(digest)
            return found

        return self._read(query)

    def blobs_linked(self, repo: str, digests: Iterable[str]) -> "Deferred[set[str]]":
        """Which of C{digests} are blobs visible in C{repo}."""
        wanted = list(digests)

        def query(c: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for digest in wanted:
                if c.execute("SELECT 1 FROM repo_blobs WHERE repo = ? AND digest = ?", (repo, digest)).fetchone():
                    found.add(digest)
            return found

        return self._read(query)

    def delete_manifest(self, repo: str, digest: str) -> "Deferred[bool]":
        """Delete a manifest and every tag pointing at it; False if it was not there."""

        def delete(c: sqlite3.Connection) -> bool:
            gone = c.execute("DELETE FROM manifests WHERE repo = ? AND digest = ?", (repo, digest)).rowcount > 0
            c.execute("DELETE FROM tags WHERE repo = ? AND digest = ?", (repo, digest))
            c.execute("DELETE FROM manifest_refs WHERE repo = ? AND digest = ?", (repo, digest))
            return gone

        return self._write(delete)

    def put_tag(self, repo: str, tag: str, digest: str) -> "Deferred[None]":
        """Point C{repo:tag} at a stored manifest."""
        now = self._now()

        def put(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT OR REPLACE INTO tags (repo, tag, digest, updated) VALUES (?, ?, ?, ?)", (repo, tag, digest, now)
            )

        return self._write(put)

    def delete_tag(self, repo: str, tag: str) -> "Deferred[bool]":
        """Remove a tag (the manifest stays); False if there was no such tag."""
        return self._write(
            lambda c: c.execute("DELETE FROM tags WHERE repo = ? AND tag = ?", (repo, tag)).rowcount > 0
        )

    def list_tags(self, repo: str, limit: int | None, last: str | None) -> "Deferred[list[str]]":
        """Tags of C{repo} in lexical order, after C{last}, at most C{limit}."""
        return self._read(
            lambda c: [
                r[0]
                for r in c.execute(
                    "SELECT tag FROM tags WHERE repo = ? AND tag > ? ORDER BY tag LIMIT ?",
                    (repo, last or "", -1 if limit is None else limit),
                )
            ]
        )

    def referrers(self, repo: str, subject: str) -> "Deferred[list[ManifestRecord]]":
        """Manifests in C{repo} whose C{subject} is C{subject}, oldest first."""
        return self._read(
            lambda c: [
                self._record(row)
                for row in c.execute(
                    f"SELECT {self._COLUMNS} FROM manifests WHERE repo = ? AND subject = ? ORDER BY created, digest",
                    (repo, subject),
                )
            ]
        )

    # Upload sessions.

    def create_upload(self, upload_id: str, repo: str) -> "Deferred[None]":
        """Record a new upload session."""
        now = self._now()

        def create(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO uploads (uuid, repo, created, updated) VALUES (?, ?, ?, ?)", (upload_id, repo, now, now))

        return self._write(create)

    def get_upload(self, upload_id: str) -> "Deferred[UploadRecord | None]":
        """The upload session C{upload_id}, or None."""

        def get(c: sqlite3.Connection) -> UploadRecord | None:
            row = c.execute("SELECT uuid, repo, created FROM uploads WHERE uuid = ?", (upload_id,)).fetchone()
            return None if row is None else UploadRecord(*row)

        return self._read(get)

    def touch_upload(self, upload_id: str) -> "Deferred[None]":
        """Note activity on an upload (stale uploads expire by this time)."""
        now = self._now()

        def touch(c: sqlite3.Connection) -> None:
            c.execute("UPDATE uploads SET updated = ? WHERE uuid = ?", (now, upload_id))

        return self._write(touch)

    def delete_upload(self, upload_id: str) -> "Deferred[bool]":
        """Forget an upload session; False if it was unknown."""
        return self._write(lambda c: c.execute("DELETE FROM uploads WHERE uuid = ?", (upload_id,)).rowcount > 0)

    def finish_upload(self, upload_id: str, repo: str, digest: str) -> "Deferred[None]":
        """In one transaction: forget the upload and make its blob visible in C{repo}."""
        now = self._now()

        def finish(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM uploads WHERE uuid = ?", (upload_id,))
            c.execute(
                "INSERT OR IGNORE INTO repo_blobs (repo, digest, created) VALUES (?, ?, ?)", (repo, digest, now)
            )

        return self._write(finish)

    def upload_ids_sync(self) -> set[str]:
        """Every known upload session id. Blocking: for start-up cleaning before serving."""
        return {r[0] for r in self._conn.execute("SELECT uuid FROM uploads")}

    # Garbage collection (trow.registry.gc). Cache repositories are those under f/: the range
    # test below is what "repo LIKE 'f/%'" means, in a form sqlite can answer from an index.

    def gc_record_access(self, entries: Iterable[tuple[str, str, float]]) -> "Deferred[None]":
        """Note reads of (repository, digest) at the given times; a time never moves back."""
        rows = list(entries)

        def record(c: sqlite3.Connection) -> None:
            c.executemany(
                "INSERT INTO gc_access (repo, digest, atime) VALUES (?, ?, ?) "
                "ON CONFLICT (repo, digest) DO UPDATE SET atime = max(atime, excluded.atime)",
                rows,
            )

        return self._write(record)

    def gc_access_times(self, repo: str) -> "Deferred[dict[str, float]]":
        """Last recorded read of each digest of C{repo}."""
        return self._read(
            lambda c: {d: t for d, t in c.execute("SELECT digest, atime FROM gc_access WHERE repo = ?", (repo,))}
        )

    def gc_stale_uploads(self, cutoff: float) -> "Deferred[list[UploadRecord]]":
        """Upload sessions with no activity since C{cutoff}."""
        return self._read(
            lambda c: [
                UploadRecord(*row)
                for row in c.execute("SELECT uuid, repo, created FROM uploads WHERE updated < ? ORDER BY updated", (cutoff,))
            ]
        )

    def gc_drop_stale_upload(self, upload_id: str, cutoff: float) -> "Deferred[bool]":
        """Forget a session if it still has had no activity since C{cutoff}."""
        return self._write(
            lambda c: c.execute("DELETE FROM uploads WHERE uuid = ? AND updated < ?", (upload_id, cutoff)).rowcount > 0
        )

    # The scans below page through their table in key order, SCAN rows per call, and return the
    # key to go on from (None at the end): each call holds the db worker for milliseconds, not
    # for a walk of every row, so requests keep flowing during a pass however big the store.
    # "+r.repo": left to itself, sqlite looks manifest references up by repository (every
    # reference of the repository) rather than by child (a handful of rows).

    def gc_sweep_links(
        self, cutoff: float, now: float, after: tuple[str, str] = ("", ""), scan: int = 1000
    ) -> "Deferred[tuple[list[tuple[str, str]], tuple[str, str] | None]]":
        """Look at the next C{scan} blob links after C{after}; remove those made (and, in cache
        repositories, last read) before C{cutoff} that no manifest of their repository references
        (config, layer, child, subject). Returns what was removed and where to go on.

        A repository with a push in progress (an upload session active, or a blob linked, since
        C{cutoff}) keeps all its links: a slow push sends its manifest last, maybe hours after
        its first layers.

        Each is remembered in C{gc_swept}, so that a manifest stored just after, by a push that
        saw the link, brings it back (trigger C{gc_swept_referenced}).
        """

        def sweep(c: sqlite3.Connection) -> tuple[list[tuple[str, str]], tuple[str, str] | None]:
            rows = c.execute(
                "WITH page AS (SELECT repo, digest, created FROM repo_blobs WHERE (repo, digest) > (?, ?) "
                "ORDER BY repo, digest LIMIT ?) "
                "SELECT p.repo, p.digest, max(COALESCE(l.linked, p.created), COALESCE(a.atime, 0)) < ? "
                "AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child = p.digest AND +r.repo = p.repo) "
                "AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repo = p.repo AND m.digest = p.digest) "
                "AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repo = p.repo AND m.subject = p.digest) "
                "AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.repo = p.repo AND u.updated >= ?) "
                "AND NOT EXISTS (SELECT 1 FROM gc_links n WHERE n.repo = p.repo AND n.linked >= ?) "
                "FROM page p LEFT JOIN gc_links l ON l.repo = p.repo AND l.digest = p.digest "
                "LEFT JOIN gc_access a ON a.repo = p.repo AND a.digest = p.digest ORDER BY p.repo, p.digest",
                (*after, scan, cutoff, cutoff, cutoff),
            ).fetchall()
            swept = [(repo, digest) for repo, digest, dead in rows if dead]
            for repo, digest in swept:
                c.execute("DELETE FROM repo_blobs WHERE repo = ? AND digest = ?", (repo, digest))
                c.execute("DELETE FROM gc_access WHERE repo = ? AND digest = ?", (repo, digest))
                c.execute("INSERT OR REPLACE INTO gc_swept (repo, digest, at) VALUES (?, ?, ?)", (repo, digest, now))
            return swept, ((rows[-1][0], rows[-1][1]) if len(rows) == scan else None)

        return self._write(sweep)

    def gc_forget_swept(self, before: float) -> "Deferred[None]":
        """Drop sweep records older than C{before} (a small table: the last pass's sweep)."""

        def forget(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM gc_swept WHERE at < ?", (before,))

        return self._write(forget)

    def gc_tidy_tags(self, after: tuple[str, str] = ("f/", ""), scan: int = 1000) -> "Deferred[tuple[str, str] | None]":
        """Remove cache tags whose manifest is gone (a tag update racing an eviction), among the
        next C{scan} cache tags after C{after}. Tags of pushed repositories are never looked at."""

        def tidy(c: sqlite3.Connection) -> tuple[str, str] | None:
            rows = c.execute(
                "SELECT t.repo, t.tag, EXISTS (SELECT 1 FROM manifests m WHERE m.repo = t.repo AND m.digest = t.digest) "
                "FROM tags t WHERE (t.repo, t.tag) > (?, ?) AND t.repo < 'f0' ORDER BY t.repo, t.tag LIMIT ?",
                (*after, scan),
            ).fetchall()
            c.executemany("DELETE FROM tags WHERE repo = ? AND tag = ?", [(r, t) for r, t, alive in rows if not alive])
            return (rows[-1][0], rows[-1][1]) if len(rows) == scan else None

        return self._write(tidy)

    def gc_tidy_access(self, after: tuple[str, str] = ("", ""), scan: int = 1000) -> "Deferred[tuple[str, str] | None]":
        """Forget read times of content no longer there, among the next C{scan} after C{after}."""

        def tidy(c: sqlite3.Connection) -> tuple[str, str] | None:
            rows = c.execute(
                "SELECT a.repo, a.digest, "
                "EXISTS (SELECT 1 FROM manifests m WHERE m.repo = a.repo AND m.digest = a.digest) "
                "OR EXISTS (SELECT 1 FROM repo_blobs b WHERE b.repo = a.repo AND b.digest = a.digest) "
                "FROM gc_access a WHERE (a.repo, a.digest) > (?, ?) ORDER BY a.repo, a.digest LIMIT ?",
                (*after, scan),
            ).fetchall()
            c.executemany(
                "DELETE FROM gc_access WHERE repo = ? AND digest = ?", [(r, d) for r, d, alive in rows if not alive]
            )
            return (rows[-1][0], rows[-1][1]) if len(rows) == scan else None

        return self._write(tidy)

    # Sizes and least recently used proxied content.

    def gc_unsized(
        self, after: tuple[str, str] = ("f/", ""), scan: int = 1000
    ) -> "Deferred[tuple[list[str], tuple[str, str] | None]]":
        """Among the next C{scan} cache blob links after C{after}, the digests whose size is not
        recorded yet (the caller stats them once: content-addressed sizes never change)."""

        def unsized(c: sqlite3.Connection) -> tuple[list[str], tuple[str, str] | None]:
            rows = c.execute(
                "SELECT b.repo, b.digest, EXISTS (SELECT 1 FROM gc_sizes s WHERE s.digest = b.digest) "
                "FROM repo_blobs b WHERE (b.repo, b.digest) > (?, ?) AND b.repo < 'f0' ORDER BY b.repo, b.digest LIMIT ?",
                (*after, scan),
            ).fetchall()
            missing = sorted({digest for _, digest, sized in rows if not sized})
            return missing, ((rows[-1][0], rows[-1][1]) if len(rows) == scan else None)

        return self._read(unsized)

    def gc_size_manifests(self, after: tuple[str, str] = ("f/", ""), scan: int = 1000) -> "Deferred[tuple[str, str] | None]":
        """Record the sizes of the next C{scan} cached manifests after C{after} (from their rows)."""

        def record(c: sqlite3.Connection) -> tuple[str, str] | None:
            rows = c.execute(
                "SELECT repo, digest, size FROM manifests WHERE (repo, digest) > (?, ?) AND repo < 'f0' "
                "ORDER BY repo, digest LIMIT ?",
                (*after, scan),
            ).fetchall()
            c.executemany("INSERT OR IGNORE INTO gc_sizes (digest, size) VALUES (?, ?)", [(d, size) for _, d, size in rows])
            return (rows[-1][0], rows[-1][1]) if len(rows) == scan else None

        return self._write(record)

    def gc_record_sizes(self, sizes: dict[str, int]) -> "Deferred[None]":
        """Record blob sizes (stat on the disk worker)."""
        rows = list(sizes.items())

        def record(c: sqlite3.Connection) -> None:
            c.executemany("INSERT OR REPLACE INTO gc_sizes (digest, size) VALUES (?, ?)", rows)

        return self._write(record)

    _PROXIED_ONLY = (
        "(EXISTS (SELECT 1 FROM repo_blobs b WHERE b.digest = s.digest AND b.repo >= 'f/' AND b.repo < 'f0') "
        "OR EXISTS (SELECT 1 FROM manifests m WHERE m.digest = s.digest AND m.repo >= 'f/' AND m.repo < 'f0') "
        "OR EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child = s.digest AND r.repo >= 'f/' AND r.repo < 'f0')) "
        "AND NOT EXISTS (SELECT 1 FROM repo_blobs b WHERE b.digest = s.digest AND NOT (b.repo >= 'f/' AND b.repo < 'f0')) "
        "AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = s.digest AND NOT (m.repo >= 'f/' AND m.repo < 'f0')) "
        "AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child = s.digest AND NOT (r.repo >= 'f/' AND r.repo < 'f0'))"
    )

    def gc_proxied_bytes(self, after: str = "", scan: int = 1000) -> "Deferred[tuple[int, str | None]]":
        """The size of what only cache repositories hold, among the next C{scan} sized digests
        after C{after}: summed over all pages, what C{max_size} limits. Content also linked in,
        or referenced by a manifest of, a pushed repository is not counted: it is never evicted."""

        def total(c: sqlite3.Connection) -> tuple[int, str | None]:
            rows = c.execute(
                f"WITH page AS (SELECT digest, size FROM gc_sizes WHERE digest > ? ORDER BY digest LIMIT ?) "
                f"SELECT s.digest, CASE WHEN {self._PROXIED_ONLY} THEN s.size ELSE 0 END FROM page s ORDER BY s.digest",
                (after, scan),
            ).fetchall()
            return sum(int(size) for _, size in rows), (rows[-1][0] if len(rows) == scan else None)

        return self._read(total)

    def gc_lru_page(
        self, kind: int, after: tuple[str, str] = ("f/", ""), scan: int = 1000
    ) -> "Deferred[tuple[list[tuple[int, str, str, float]], tuple[str, str] | None]]":
        """Units of cached content among the next C{scan} rows after C{after}, as (kind, repo,
        digest, last use). Kind 0 (C{manifests} rows): a manifest that no other manifest of its
        cache repository references; evicting it takes what only it holds. Kind 1
        (C{repo_blobs} rows): a blob link that no manifest of its repository references. Last use
        is the later of its last read and when it was stored (or linked)."""

        def page(c: sqlite3.Connection) -> tuple[list[tuple[int, str, str, float]], tuple[str, str] | None]:
            if kind == 0:
                rows = c.execute(
                    "WITH page AS (SELECT repo, digest, created FROM manifests WHERE (repo, digest) > (?, ?) "
                    "AND repo < 'f0' ORDER BY repo, digest LIMIT ?) "
                    "SELECT p.repo, p.digest, max(p.created, COALESCE(a.atime, 0)), "
                    "NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child = p.digest AND +r.repo = p.repo) "
                    "FROM page p LEFT JOIN gc_access a ON a.repo = p.repo AND a.digest = p.digest ORDER BY p.repo, p.digest",
                    (*after, scan),
                ).fetchall()
            else:
                rows = c.execute(
                    "WITH page AS (SELECT repo, digest, created FROM repo_blobs WHERE (repo, digest) > (?, ?) "
                    "AND repo < 'f0' ORDER BY repo, digest LIMIT ?) "
                    "SELECT p.repo, p.digest, max(COALESCE(l.linked, p.created), COALESCE(a.atime, 0)), "
                    "NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child = p.digest AND +r.repo = p.repo) "
                    "AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repo = p.repo AND m.digest = p.digest) "
                    "FROM page p LEFT JOIN gc_links l ON l.repo = p.repo AND l.digest = p.digest "
                    "LEFT JOIN gc_access a ON a.repo = p.repo AND a.digest = p.digest ORDER BY p.repo, p.digest",
                    (*after, scan),
                ).fetchall()
            units = [(kind, repo, digest, float(used)) for repo, digest, used, unit in rows if unit]
            return units, ((rows[-1][0], rows[-1][1]) if len(rows) == scan else None)

        return self._read(page)

    @staticmethod
    def _gc_has_rows(c: sqlite3.Connection, digest: str) -> bool:
        return (
            c.execute(
                "SELECT 1 FROM repo_blobs WHERE digest = ? UNION ALL SELECT 1 FROM manifests WHERE digest = ? "
                "UNION ALL SELECT 1 FROM manifest_refs WHERE child = ? LIMIT 1",
                (digest, digest, digest),
            ).fetchone()
            is not None
        )

    def _gc_evict_manifest(
        self, c: sqlite3.Connection, repo: str, digest: str, evicted: list[tuple[str, str]], touched: set[str]
    ) -> None:
        children = [r[0] for r in c.execute("SELECT child FROM manifest_refs WHERE repo = ? AND digest = ?", (repo, digest))]
        c.execute("DELETE FROM manifests WHERE repo = ? AND digest = ?", (repo, digest))
        c.execute("DELETE FROM tags WHERE repo = ? AND digest = ?", (repo, digest))
        c.execute("DELETE FROM manifest_refs WHERE repo = ? AND digest = ?", (repo, digest))
        c.execute("DELETE FROM gc_access WHERE repo = ? AND digest = ?", (repo, digest))
        evicted.append((repo, digest))
        touched.add(digest)
        for child in children:
            touched.add(child)
            if c.execute("SELECT 1 FROM manifest_refs WHERE child = ? AND +repo = ? LIMIT 1", (child, repo)).fetchone():
                continue  # still used by another manifest of this repository
            if c.execute("SELECT 1 FROM manifests WHERE repo = ? AND digest = ?", (repo, child)).fetchone():
                # A child of an evicted index: only the index kept it.
                self._gc_evict_manifest(c, repo, child, evicted, touched)
            else:
                c.execute("DELETE FROM repo_blobs WHERE repo = ? AND digest = ?", (repo, child))
                c.execute("DELETE FROM gc_access WHERE repo = ? AND digest = ?", (repo, child))

    def gc_evict(
        self, units: Iterable[tuple[int, str, str, float]], need: int
    ) -> "Deferred[tuple[list[tuple[str, str]], dict[str, int]]]":
        """Evict units from L{gc_lru_units}, in order, until C{need} bytes are freed. Units read,
        stored or referenced again since they were listed are skipped. Returns the manifests
        evicted (index children included) and the digests left with no row anywhere, with their
        recorded sizes: what the eviction frees."""
        wanted = list(units)

        def evict(c: sqlite3.Connection) -> tuple[list[tuple[str, str]], dict[str, int]]:
            evicted: list[tuple[str, str]] = []
            freed: dict[str, int] = {}
            for kind, repo, digest, used in wanted:
                if sum(freed.values()) >= need:
                    break
                touched: set[str] = set()
                atime = c.execute("SELECT atime FROM gc_access WHERE repo = ? AND digest = ?", (repo, digest)).fetchone()
                if atime is not None and atime[0] > used:
                    continue
                if c.execute("SELECT 1 FROM manifest_refs WHERE child = ? AND +repo = ? LIMIT 1", (digest, repo)).fetchone():
                    continue
                if kind == 0:
                    row = c.execute("SELECT created FROM manifests WHERE repo = ? AND digest = ?", (repo, digest)).fetchone()
                    if row is None or row[0] > used:
                        continue
                    self._gc_evict_manifest(c, repo, digest, evicted, touched)
                else:
                    row = c.execute(
                        "SELECT COALESCE(l.linked, b.created) FROM repo_blobs b "
                        "LEFT JOIN gc_links l ON l.repo = b.repo AND l.digest = b.digest WHERE b.repo = ? AND b.digest = ?",
                        (repo, digest),
                    ).fetchone()
                    if row is None or row[0] > used:
                        continue
                    c.execute("DELETE FROM repo_blobs WHERE repo = ? AND digest = ?", (repo, digest))
                    c.execute("DELETE FROM gc_access WHERE repo = ? AND digest = ?", (repo, digest))
                    touched.add(digest)
                # A digest this unit touched is freed once nothing refers to it: every unit that
                # still did would have touched it too when evicted, so checking these is enough.
                for gone in touched:
                    if gone not in freed and not self._gc_has_rows(c, gone):
                        size = c.execute("SELECT size FROM gc_sizes WHERE digest = ?", (gone,)).fetchone()
                        freed[gone] = int(size[0]) if size else 0
                        c.execute("UPDATE gc_candidates SET evicted = 1 WHERE digest = ?", (gone,))
            return evicted, freed

        return self._write(evict)

    # Blob files with no row left: candidates, quarantine, deletion.

    def gc_candidates(self, after: str = "", scan: int = 1000) -> "Deferred[tuple[dict[str, bool], str | None]]":
        """The next C{scan} digests after C{after} that lost their last row (or may have), each
        with whether eviction freed it. Those that gained a row back (or are in quarantine) are
        dropped from the list; the others are returned and stay listed until dealt with."""

        def take(c: sqlite3.Connection) -> tuple[dict[str, bool], str | None]:
            rows = c.execute(
                "SELECT digest, evicted FROM gc_candidates WHERE digest > ? ORDER BY digest LIMIT ?", (after, scan)
            ).fetchall()
            found: dict[str, bool] = {}
            for digest, evicted in rows:
                if self._gc_has_rows(c, digest) or c.execute(
                    "SELECT 1 FROM gc_quarantine WHERE digest = ?", (digest,)
                ).fetchone():
                    c.execute("DELETE FROM gc_candidates WHERE digest = ?", (digest,))
                else:
                    found[digest] = bool(evicted)
            return found, (rows[-1][0] if len(rows) == scan else None)

        return self._write(take)

    def gc_drop_candidates(self, digests: Iterable[str]) -> "Deferred[None]":
        """Stop considering C{digests} (their files are gone, or they are not digests)."""
        rows = [(d,) for d in digests]

        def drop(c: sqlite3.Connection) -> None:
            c.executemany("DELETE FROM gc_candidates WHERE digest = ?", rows)
            c.executemany("DELETE FROM gc_sizes WHERE digest = ?", rows)

        return self._write(drop)

    def gc_add_candidates(self, digests: Iterable[str]) -> "Deferred[None]":
        """Consider C{digests} (found by walking the blob store) at the next look."""
        rows = [(d,) for d in digests]

        def add(c: sqlite3.Connection) -> None:
            c.executemany("INSERT OR IGNORE INTO gc_candidates (digest) VALUES (?)", rows)

        return self._write(add)

    def gc_without_rows(self, digests: Iterable[str]) -> "Deferred[list[str]]":
        """Which of C{digests} no repository links, no manifest is and no manifest references."""
        wanted = list(digests)
        return self._read(lambda c: [d for d in wanted if not self._gc_has_rows(c, d)])

    def gc_quarantine(
        self,
        digests: Iterable[str],
        move_aside: Callable[[str], str | None],
        put_back: Callable[[str, str], None],
        now: float,
    ) -> "Deferred[list[tuple[str, str]]]":
        """Doom the blobs of C{digests} that still have no row: move each file aside with
        C{move_aside(digest)} (which returns where it went, or None if there was no file) and
        record it in C{gc_quarantine}. Returns (digest, path aside).

        All of it is one call on the db worker, the only thread that links blobs: no link can be
        made between the check and the move. A link made later finds the digest quarantined, and
        the restore hook (L{gc_install_restore}) puts the file back before that link commits.
        """
        wanted = list(digests)

        def doom(c: sqlite3.Connection) -> list[tuple[str, str]]:
            moved: list[tuple[str, str]] = []
            c.execute("BEGIN IMMEDIATE")
            try:
                for digest in wanted:
                    c.execute("DELETE FROM gc_candidates WHERE digest = ?", (digest,))
                    if self._gc_has_rows(c, digest):
                        continue
                    if c.execute("SELECT 1 FROM gc_quarantine WHERE digest = ?", (digest,)).fetchone():
                        continue
                    aside = move_aside(digest)
                    if aside is None:
                        continue
                    moved.append((digest, aside))
                    c.execute("INSERT INTO gc_quarantine (digest, path, since) VALUES (?, ?, ?)", (digest, aside, now))
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                # Nothing records these moves: undo them, or the files would be lost for good.
                for digest, aside in moved:
                    put_back(digest, aside)
                raise
            return moved

        return self._worker.run(doom, self._conn)

    def gc_quarantined(self, before: float) -> "Deferred[list[tuple[str, str]]]":
        """Blob files moved aside before C{before} and not dealt with yet (a pass that did not finish)."""
        return self._read(
            lambda c: [(d, p) for d, p in c.execute("SELECT digest, path FROM gc_quarantine WHERE since < ?", (before,))]
        )

    def gc_release(
        self, digests: Iterable[str], keep: set[str], put_back: Callable[[str, str], None]
    ) -> "Deferred[list[tuple[str, str]]]":
        """End the quarantine of C{digests}: a digest that gained a row, or is in C{keep}, gets
        its file back with C{put_back(digest, path)}; the others are forgotten for good and
        returned as (digest, path aside) for the caller to delete. Digests whose quarantine a
        link already ended (the restore hook) are skipped."""
        wanted = list(digests)

        def release(c: sqlite3.Connection) -> list[tuple[str, str]]:
            doomed: list[tuple[str, str]] = []
            for digest in wanted:
                row = c.execute("SELECT path FROM gc_quarantine WHERE digest = ?", (digest,)).fetchone()
                if row is None:
                    continue
                if digest in keep or self._gc_has_rows(c, digest):
                    put_back(digest, row[0])
                else:
                    doomed.append((digest, row[0]))
                    c.execute("DELETE FROM gc_sizes WHERE digest = ?", (digest,))
                    c.execute("DELETE FROM gc_swept WHERE digest = ?", (digest,))
                c.execute("DELETE FROM gc_quarantine WHERE digest = ?", (digest,))
            return doomed

        return self._write(release)

    def gc_install_restore(self, restore: Callable[[str, str], None]) -> "Deferred[None]":
        """Make every new link, manifest or manifest reference to a quarantined digest put its
        file back (C{restore(digest, path aside)}, run inside the linking transaction), so that a
        push, mount or cache fill that saw the file before it was moved aside never ends up
        linking a missing file. TEMP triggers: they live as long as this connection, with the
        Python function they call; an exception in C{restore} fails the link."""

        def hook(digest: str, path: str | None) -> int:
            if path is not None:
                restore(digest, path)
            return 1

        def install(c: sqlite3.Connection) -> None:
            c.create_function("trow_gc_restore", 2, hook)
            for name, table, column in (
                ("gc_restore_link", "repo_blobs", "digest"),
                ("gc_restore_manifest", "manifests", "digest"),
                ("gc_restore_reference", "manifest_refs", "child"),
            ):
                c.execute(
                    f"CREATE TEMP TRIGGER IF NOT EXISTS {name} AFTER INSERT ON main.{table} "
                    f"WHEN EXISTS (SELECT 1 FROM main.gc_quarantine WHERE digest = NEW.{column}) BEGIN "
                    f"SELECT trow_gc_restore(NEW.{column}, (SELECT path FROM main.gc_quarantine WHERE digest = NEW.{column})); "
                    f"DELETE FROM gc_quarantine WHERE digest = NEW.{column}; "
                    "END"
                )

        return self._read(install)
