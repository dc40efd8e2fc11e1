"""The metadata logic in SQL, shared by the sqlite and PostgreSQL backends.

Every query is written once, with C{?} placeholders and a few dialect words (L{SqlMetadata.GREATEST},
L{SqlMetadata.NO_INDEX}); a backend supplies the connection handling: where a call runs, what a
transaction is, and how links are serialised against garbage collection (L{SqlMetadata._lock}).
The tables, indexes and triggers are each backend's schema (the same tables in both).

Cache repositories are the byte range [CACHE_LOW, CACHE_HIGH) of repository names (C{f/...}): a
range an index answers, passed as parameters so that the prefix is written in one place.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence, TypeVar

from twisted.internet.defer import Deferred, succeed

from trow.storage.metadata import (
    CACHE_HIGH,
    CACHE_LOW,
    CACHE_PREFIX,
    ManifestRecord,
    RepositoryOverview,
    Scan,
    TagRecord,
    UploadRecord,
)
from trow.workers import Worker

T = TypeVar("T")

# "No limit" for LIMIT ?: sqlite refuses NULL there, PostgreSQL refuses -1.
NO_LIMIT = 1 << 62


class Cursor(Protocol):
    """What the shared code uses of a DB-API cursor."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """A connection inside one transaction, with C{?} placeholders whatever the driver."""

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Any: ...


def _marks(count: int) -> str:
    return ", ".join("?" * count)


class SqlMetadata:
    """Tags, manifests, repository links, upload sessions and garbage collection bookkeeping.

    Subclasses provide L{_read} and L{_write} (run a function with a L{Connection} on a worker;
    C{_write} inside one transaction), L{_lock} and the dialect words below.
    """

    # Scalar maximum of two values.
    GREATEST = "max"
    # Prefix that keeps the planner off an index for one column ("+r.repo" in sqlite: left to
    # itself, it looks manifest references up by repository, every reference of it, rather than
    # by child, a handful of rows). PostgreSQL plans this right on its own.
    NO_INDEX = "+"
    # When a claim on an upload session (L{claim_upload}) no longer stands though another writer
    # made it: sqlite has one process, whose claims start-up clears; PostgreSQL adds "or that
    # writer's replica stopped beating".
    DEAD_WRITER = ""

    def __init__(self, worker: Worker, clock: Callable[[], float] = time.time) -> None:
        self._worker = worker
        self._now = clock
        # Puts a quarantined blob file back (garbage collection installs it): called inside every
        # transaction that links a quarantined digest, before it commits.
        self._restore: Callable[[str, str], None] | None = None

    # -- what a backend provides -----------------------------------------------------------------

    def _read(self, f: Callable[[Connection], T]) -> "Deferred[T]":
        raise NotImplementedError

    def _write(self, f: Callable[[Connection], T], undo: Callable[[], None] | None = None) -> "Deferred[T]":
        """Run C{f} in one transaction; if it fails or the commit does, roll back and call C{undo}."""
        raise NotImplementedError

    def _lock(self, c: Connection, digests: Iterable[str]) -> None:
        """Serialise, until the transaction ends, with every other transaction that links, dooms or
        releases one of C{digests} (sqlite: nothing to do, one thread writes)."""

    def close(self) -> None:
        """Release the connections (at service stop)."""

    def ping(self) -> "Deferred[None]":
        """Fire once the store answers a query (readiness); fail with MetadataUnavailable if not."""

        def query(c: Connection) -> None:
            c.execute("SELECT 1").fetchone()

        return self._read(query)

    # -- links to quarantined files ---------------------------------------------------------------

    def _linking(self, c: Connection, digests: Iterable[str]) -> None:
        """Called first in every transaction that adds a row naming C{digests}: a digest whose file
        garbage collection moved aside gets it back before the row commits (see trow.registry.gc).
        If that fails, so does the transaction: no committed row ever names a missing file."""
        wanted = sorted(set(digests))
        if not wanted:
            return
        self._lock(c, wanted)
        if self._restore is None:
            return
        rows = c.execute(
            f"SELECT digest, path FROM gc_quarantine WHERE digest IN ({_marks(len(wanted))})", wanted
        ).fetchall()
        for digest, path in rows:
            self._restore(digest, path)
            c.execute("DELETE FROM gc_quarantine WHERE digest = ?", (digest,))

    # -- repositories and blob links --------------------------------------------------------------

    def link_blob(self, repo: str, digest: str) -> "Deferred[None]":
        """Make a verified blob visible in C{repo}."""
        now = self._now()

        def link(c: Connection) -> None:
            self._linking(c, [digest])
            c.execute(
                "INSERT INTO repo_blobs (repo, digest, created) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (repo, digest, now),
            )

        return self._write(link)

    def unlink_blob(self, repo: str, digest: str) -> "Deferred[bool]":
        """Remove a blob from C{repo}; False if it was not linked there."""
        return self._write(
            lambda c: c.execute("DELETE FROM repo_blobs WHERE repo = ? AND digest = ?", (repo, digest)).rowcount > 0
        )

    def blob_linked(self, repo: str, digest: str) -> "Deferred[bool]":
        """Is the blob visible in C{repo}?"""
        return self._read(
            lambda c: c.execute("SELECT 1 FROM repo_blobs WHERE repo = ? AND digest = ?", (repo, digest)).fetchone()
            is not None
        )

    def blobs_linked(self, repo: str, digests: Iterable[str]) -> "Deferred[set[str]]":
        """Which of C{digests} are blobs visible in C{repo}."""
        return self._present("repo_blobs", repo, digests)

    def _present(self, table: str, repo: str, digests: Iterable[str]) -> "Deferred[set[str]]":
        """Which of C{digests} have a row of C{repo} in C{table}, in one query."""
        wanted = sorted(set(digests))

        def query(c: Connection) -> set[str]:
            if not wanted:
                return set()
            rows = c.execute(
                f"SELECT digest FROM {table} WHERE repo = ? AND digest IN ({_marks(len(wanted))})", (repo, *wanted)
            )
            return {r[0] for r in rows}

        return self._read(query)

    # The table C{repositories} lists each repository that holds a manifest or a blob link; the
    # backends' triggers add it with its first row and remove it with its last, in the same
    # transaction. Both reads below go through its primary key: a catalog page costs its size.
    CATALOG_QUERY = "SELECT repo FROM repositories WHERE repo > ? ORDER BY repo LIMIT ?"

    def repo_exists(self, repo: str) -> "Deferred[bool]":
        """Does C{repo} hold any manifest or blob?"""
        return self._read(
            lambda c: c.execute("SELECT 1 FROM repositories WHERE repo = ?", (repo,)).fetchone() is not None
        )

    def catalog(self, limit: int | None, last: str | None) -> "Deferred[list[str]]":
        """Repository names in lexical (byte) order, after C{last}, at most C{limit}."""

        def query(c: Connection) -> list[str]:
            rows = c.execute(self.CATALOG_QUERY, (last or "", NO_LIMIT if limit is None else limit))
            return [r[0] for r in rows]

        return self._read(query)

    def repository_names(self, after: str, limit: int, cached: bool) -> "Deferred[list[str]]":
        """Up to C{limit} repository names after C{after}, in byte order: the cache repositories
        (C{f/...}) when C{cached}, else the pushed ones."""

        def query(c: Connection) -> list[str]:
            if cached:
                rows = c.execute(
                    "SELECT repo FROM repositories WHERE repo > ? AND repo >= ? AND repo < ? ORDER BY repo LIMIT ?",
                    (after, CACHE_LOW, CACHE_HIGH, limit),
                )
                return [r[0] for r in rows]
            # Two ranges, each an index range: below the cache prefix, then above it.
            below = c.execute(
                "SELECT repo FROM repositories WHERE repo > ? AND repo < ? ORDER BY repo LIMIT ?",
                (after, CACHE_LOW, limit),
            ).fetchall()
            names = [r[0] for r in below]
            if len(names) < limit:
                above = c.execute(
                    "SELECT repo FROM repositories WHERE repo > ? AND repo >= ? ORDER BY repo LIMIT ?",
                    (after, CACHE_HIGH, limit - len(names)),
                )
                names += [r[0] for r in above]
            return names

        return self._read(query)

    def repository_overview(
        self, repos: Sequence[str], tags: int, count_cap: int
    ) -> "Deferred[list[RepositoryOverview]]":
        """An overview of each of C{repos}: its C{tags} most recently set tags, its tag count up
        to C{count_cap}, when content last arrived and when it was last read. A few index
        lookups per repository, in one read."""
        names = list(repos)

        def query(c: Connection) -> list[RepositoryOverview]:
            found: list[RepositoryOverview] = []
            for repo in names:
                recent = c.execute(
                    "SELECT tag, digest, updated FROM tags WHERE repo = ? ORDER BY updated DESC, tag LIMIT ?",
                    (repo, tags),
                ).fetchall()
                counted = c.execute(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM tags WHERE repo = ? LIMIT ?) capped", (repo, count_cap + 1)
                ).fetchone()[0]
                pushed = c.execute(
                    "SELECT MAX(t) FROM (SELECT MAX(updated) AS t FROM tags WHERE repo = ? "
                    "UNION ALL SELECT MAX(created) FROM manifests WHERE repo = ? "
                    "UNION ALL SELECT MAX(created) FROM repo_blobs WHERE repo = ?) times",
                    (repo, repo, repo),
                ).fetchone()[0]
                pulled = c.execute("SELECT MAX(atime) FROM gc_access WHERE repo = ?", (repo,)).fetchone()[0]
                found.append(
                    RepositoryOverview(
                        repo,
                        tuple(TagRecord(str(t), str(d), float(u)) for t, d, u in recent),
                        min(int(counted), count_cap),
                        int(counted) > count_cap,
                        None if pushed is None else float(pushed),
                        None if pulled is None else float(pulled),
                    )
                )
            return found

        return self._read(query)

    def recent_uploads(self, limit: int) -> "Deferred[list[UploadRecord]]":
        """The C{limit} upload sessions written to most recently."""
        return self._read(
            lambda c: [
                UploadRecord(str(u), str(r), float(created), int(size))
                for u, r, created, size in c.execute(
                    "SELECT uuid, repo, created, size FROM uploads ORDER BY updated DESC, uuid LIMIT ?", (limit,)
                )
            ]
        )

    # -- manifests and tags -----------------------------------------------------------------------

    def put_manifest(
        self, record: ManifestRecord, children: Iterable[str], tags: Iterable[str] = ()
    ) -> "Deferred[None]":
        """Store a manifest's metadata (its bytes are already in the blob store), and tag it."""
        tags = list(tags)
        now = self._now()
        children = list(children)

        def put(c: Connection) -> None:
            self._linking(c, [record.digest, *children])
            c.execute(
                "INSERT INTO manifests "
                "(repo, digest, media_type, size, subject, artifact_type, annotations, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (repo, digest) DO UPDATE SET "
                "media_type = excluded.media_type, size = excluded.size, subject = excluded.subject, "
                "artifact_type = excluded.artifact_type, annotations = excluded.annotations, created = excluded.created",
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
                "INSERT INTO manifest_refs (repo, digest, child) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [(record.repo, record.digest, child) for child in children],
            )
            c.executemany(
                "INSERT INTO tags (repo, tag, digest, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (repo, tag) DO UPDATE SET digest = excluded.digest, updated = excluded.updated",
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

        def get(c: Connection) -> ManifestRecord | None:
            row = c.execute(
                f"SELECT {self._COLUMNS} FROM manifests WHERE repo = ? AND digest = ?", (repo, digest)
            ).fetchone()
            return None if row is None else self._record(row)

        return self._read(get)

    def resolve_tag(self, repo: str, tag: str) -> "Deferred[ManifestRecord | None]":
        """The manifest that C{repo:tag} points at, or None."""

        def get(c: Connection) -> ManifestRecord | None:
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
        return self._present("manifests", repo, digests)

    def delete_manifest(self, repo: str, digest: str) -> "Deferred[bool]":
        """Delete a manifest and every tag pointing at it; False if it was not there."""

        def delete(c: Connection) -> bool:
            gone = c.execute("DELETE FROM manifests WHERE repo = ? AND digest = ?", (repo, digest)).rowcount > 0
            c.execute("DELETE FROM tags WHERE repo = ? AND digest = ?", (repo, digest))
            c.execute("DELETE FROM manifest_refs WHERE repo = ? AND digest = ?", (repo, digest))
            return gone

        return self._write(delete)

    def put_tag(self, repo: str, tag: str, digest: str) -> "Deferred[None]":
        """Point C{repo:tag} at a stored manifest."""
        now = self._now()

        def put(c: Connection) -> None:
            c.execute(
                "INSERT INTO tags (repo, tag, digest, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (repo, tag) DO UPDATE SET digest = excluded.digest, updated = excluded.updated",
                (repo, tag, digest, now),
            )

        return self._write(put)

    def delete_tag(self, repo: str, tag: str) -> "Deferred[bool]":
        """Remove a tag (the manifest stays); False if there was no such tag."""
        return self._write(
            lambda c: c.execute("DELETE FROM tags WHERE repo = ? AND tag = ?", (repo, tag)).rowcount > 0
        )

    def list_tags(self, repo: str, limit: int | None, last: str | None) -> "Deferred[list[str]]":
        """Tags of C{repo} in lexical (byte) order, after C{last}, at most C{limit}."""
        return self._read(
            lambda c: [
                r[0]
                for r in c.execute(
                    "SELECT tag FROM tags WHERE repo = ? AND tag > ? ORDER BY tag LIMIT ?",
                    (repo, last or "", NO_LIMIT if limit is None else limit),
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

    # -- upload sessions --------------------------------------------------------------------------

    def create_upload(self, upload_id: str, repo: str) -> "Deferred[None]":
        """Record a new, empty upload session."""
        now = self._now()

        def create(c: Connection) -> None:
            c.execute(
                "INSERT INTO uploads (uuid, repo, created, updated, size) VALUES (?, ?, ?, ?, 0)",
                (upload_id, repo, now, now),
            )

        return self._write(create)

    def get_upload(self, upload_id: str) -> "Deferred[UploadRecord | None]":
        """The upload session C{upload_id}, or None."""

        def get(c: Connection) -> UploadRecord | None:
            row = c.execute("SELECT uuid, repo, created, size FROM uploads WHERE uuid = ?", (upload_id,)).fetchone()
            return None if row is None else UploadRecord(row[0], row[1], float(row[2]), int(row[3]))

        return self._read(get)

    def claim_upload(self, upload_id: str, offset: int, writer: str) -> "Deferred[bool]":
        """Take the right to write the session's next chunk at C{offset}: only if it still holds
        C{offset} bytes and no other live writer holds the right. Replicas writing one session at
        once (two PATCHes at one offset) then never both touch its file: one is refused first.
        A claim of a writer that is gone no longer stands (L{DEAD_WRITER}). Counts as activity."""
        now = self._now()
        return self._write(
            lambda c: c.execute(
                "UPDATE uploads SET writer = ?, updated = ? WHERE uuid = ? AND (size = ? OR size = -1) "
                f"AND (writer IS NULL OR writer = ? {self.DEAD_WRITER})",
                (writer, now, upload_id, offset, writer),
            ).rowcount
            > 0
        )

    def advance_upload(self, upload_id: str, expected: int, size: int, writer: str) -> "Deferred[bool]":
        """Record that the session now holds C{size} bytes and end C{writer}'s claim, if it still
        holds C{expected} bytes and the claim (L{claim_upload}) still stands."""
        now = self._now()
        return self._write(
            lambda c: c.execute(
                "UPDATE uploads SET size = ?, updated = ?, writer = NULL "
                "WHERE uuid = ? AND (size = ? OR size = -1) AND writer = ?",
                (size, now, upload_id, expected, writer),
            ).rowcount
            > 0
        )

    def release_upload(self, upload_id: str, writer: str) -> "Deferred[None]":
        """End C{writer}'s claim without moving the offset (its chunk failed)."""

        def release(c: Connection) -> None:
            c.execute("UPDATE uploads SET writer = NULL WHERE uuid = ? AND writer = ?", (upload_id, writer))

        return self._write(release)

    def touch_upload(self, upload_id: str) -> "Deferred[None]":
        """Note activity on an upload (stale uploads expire by this time)."""
        now = self._now()

        def touch(c: Connection) -> None:
            c.execute("UPDATE uploads SET updated = ? WHERE uuid = ?", (now, upload_id))

        return self._write(touch)

    def delete_upload(self, upload_id: str) -> "Deferred[bool]":
        """Forget an upload session; False if it was unknown."""
        return self._write(lambda c: c.execute("DELETE FROM uploads WHERE uuid = ?", (upload_id,)).rowcount > 0)

    def finish_upload(self, upload_id: str, repo: str, digest: str) -> "Deferred[None]":
        """In one transaction: forget the upload and make its blob visible in C{repo}."""
        now = self._now()

        def finish(c: Connection) -> None:
            self._linking(c, [digest])
            c.execute("DELETE FROM uploads WHERE uuid = ?", (upload_id,))
            c.execute(
                "INSERT INTO repo_blobs (repo, digest, created) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (repo, digest, now),
            )

        return self._write(finish)

    def upload_ids(self) -> "Deferred[set[str]]":
        """Every known upload session id."""
        return self._read(lambda c: {r[0] for r in c.execute("SELECT uuid FROM uploads")})

    # -- garbage collection (trow.registry.gc) ----------------------------------------------------

    def gc_record_access(self, entries: Iterable[tuple[str, str, float]]) -> "Deferred[None]":
        """Note reads of (repository, digest) at the given times; a time never moves back."""
        # In key order: replicas flushing the same popular keys then never deadlock.
        rows = sorted(entries)

        def record(c: Connection) -> None:
            c.executemany(
                "INSERT INTO gc_access (repo, digest, atime) VALUES (?, ?, ?) ON CONFLICT (repo, digest) "
                f"DO UPDATE SET atime = {self.GREATEST}(gc_access.atime, excluded.atime)",
                rows,
            )

        return self._write(record)

    def gc_access_times(self, repo: str) -> "Deferred[dict[str, float]]":
        """Last recorded read of each digest of C{repo}."""
        return self._read(
            lambda c: {d: float(t) for d, t in c.execute("SELECT digest, atime FROM gc_access WHERE repo = ?", (repo,))}
        )

    def gc_stale_uploads(self, cutoff: float) -> "Deferred[list[UploadRecord]]":
        """Upload sessions with no activity since C{cutoff}."""
        return self._read(
            lambda c: [
                UploadRecord(row[0], row[1], float(row[2]), int(row[3]))
                for row in c.execute(
                    "SELECT uuid, repo, created, size FROM uploads WHERE updated < ? ORDER BY updated", (cutoff,)
                )
            ]
        )

    def gc_drop_stale_upload(self, upload_id: str, cutoff: float) -> "Deferred[bool]":
        """Forget a session if it still has had no activity since C{cutoff}."""
        return self._write(
            lambda c: c.execute("DELETE FROM uploads WHERE uuid = ? AND updated < ?", (upload_id, cutoff)).rowcount > 0
        )

    # The scans below page through their table in key order, SCAN rows per call, and return the
    # key to go on from (None at the end): each call holds a db connection for milliseconds, not
    # for a walk of every row, so requests keep flowing during a pass however big the store.

    def gc_sweep_links(
        self, cutoff: float, now: float, after: Scan = ("", ""), scan: int = 1000
    ) -> "Deferred[tuple[list[tuple[str, str]], Scan | None]]":
        """Look at the next C{scan} blob links after C{after}; remove those made (and, in cache
        repositories, last read) before C{cutoff} that no manifest of their repository references
        (config, layer, child, subject). Returns what was removed and where to go on.

        A repository with a push in progress (an upload session active, or a blob linked, since
        C{cutoff}) keeps all its links: a slow push sends its manifest last, maybe hours after
        its first layers.

        Each is remembered in C{gc_swept}, so that a manifest stored just after, by a push that
        saw the link, brings it back (trigger C{gc_swept_referenced}).
        """
        g, x = self.GREATEST, self.NO_INDEX

        def sweep(c: Connection) -> tuple[list[tuple[str, str]], Scan | None]:
            rows = c.execute(
                "WITH page AS (SELECT repo, digest, created FROM repo_blobs WHERE (repo, digest) > (?, ?) "
                "ORDER BY repo, digest LIMIT ?) "
                f"SELECT p.repo, p.digest, {g}(COALESCE(l.linked, p.created), COALESCE(a.atime, 0)) < ? "
                f"AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child = p.digest AND {x}r.repo = p.repo) "
                "AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repo = p.repo AND m.digest = p.digest) "
                "AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repo = p.repo AND m.subject = p.digest) "
                "AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.repo = p.repo AND u.updated >= ?) "
                "AND NOT EXISTS (SELECT 1 FROM gc_links n WHERE n.repo = p.repo AND n.linked >= ?) "
                "FROM page p LEFT JOIN gc_links l ON l.repo = p.repo AND l.digest = p.digest "
                "LEFT JOIN gc_access a ON a.repo = p.repo AND a.digest = p.digest ORDER BY p.repo, p.digest",
                (*after, scan, cutoff, cutoff, cutoff),
            ).fetchall()
            dead = [(repo, digest) for repo, digest, gone in rows if gone]
            # Under each digest's link lock, and checked again as it is deleted: a manifest
            # stored by another process since the look above (PostgreSQL: READ COMMITTED, and
            # its gc_swept row would not be seen yet) keeps the link.
            self._lock(c, sorted({digest for _, digest in dead}))
            swept: list[tuple[str, str]] = []
            for repo, digest in dead:
                still = c.execute(
                    "DELETE FROM repo_blobs WHERE repo = ? AND digest = ? "
                    f"AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child = ? AND {x}r.repo = ?) "
                    "AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repo = ? AND m.digest = ?) "
                    "AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repo = ? AND m.subject = ?) "
                    "AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.repo = ? AND u.updated >= ?) "
                    "AND NOT EXISTS (SELECT 1 FROM gc_links n WHERE n.repo = ? AND n.linked >= ?)",
                    (repo, digest, digest, repo, repo, digest, repo, digest, repo, cutoff, repo, cutoff),
                ).rowcount
                if not still:
                    continue
                swept.append((repo, digest))
                c.execute("DELETE FROM gc_access WHERE repo = ? AND digest = ?", (repo, digest))
                c.execute(
                    "INSERT INTO gc_swept (repo, digest, at) VALUES (?, ?, ?) "
                    "ON CONFLICT (repo, digest) DO UPDATE SET at = excluded.at",
                    (repo, digest, now),
                )
            return swept, ((rows[-1][0], rows[-1][1]) if len(rows) == scan else None)

        return self._write(sweep)

    def gc_forget_swept(self, before: float) -> "Deferred[None]":
        """Drop sweep records older than C{before} (a small table: the last pass's sweep)."""

        def forget(c: Connection) -> None:
            c.execute("DELETE FROM gc_swept WHERE at < ?", (before,))

        return self._write(forget)

    def gc_tidy_tags(self, after: Scan = (CACHE_PREFIX, ""), scan: int = 1000) -> "Deferred[Scan | None]":
        """Remove cache tags whose manifest is gone (a tag update racing an eviction), among the
        next C{scan} cache tags after C{after}. Tags of pushed repositories are never looked at."""

        def tidy(c: Connection) -> Scan | None:
            rows = c.execute(
                "SELECT t.repo, t.tag, EXISTS (SELECT 1 FROM manifests m WHERE m.repo = t.repo AND m.digest = t.digest) "
                "FROM tags t WHERE (t.repo, t.tag) > (?, ?) AND t.repo < ? ORDER BY t.repo, t.tag LIMIT ?",
                (*after, CACHE_HIGH, scan),
            ).fetchall()
            c.executemany("DELETE FROM tags WHERE repo = ? AND tag = ?", [(r, t) for r, t, alive in rows if not alive])
            return (rows[-1][0], rows[-1][1]) if len(rows) == scan else None

        return self._write(tidy)

    def gc_tidy_access(self, after: Scan = ("", ""), scan: int = 1000) -> "Deferred[Scan | None]":
        """Forget read times of content no longer there, among the next C{scan} after C{after}."""

        def tidy(c: Connection) -> Scan | None:
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

    def gc_unsized(self, after: Scan = (CACHE_PREFIX, ""), scan: int = 1000) -> "Deferred[tuple[list[str], Scan | None]]":
        """Among the next C{scan} cache blob links after C{after}, the digests whose size is not
        recorded yet (the caller stats them once: content-addressed sizes never change)."""

        def unsized(c: Connection) -> tuple[list[str], Scan | None]:
            rows = c.execute(
                "SELECT b.repo, b.digest, EXISTS (SELECT 1 FROM gc_sizes s WHERE s.digest = b.digest) "
                "FROM repo_blobs b WHERE (b.repo, b.digest) > (?, ?) AND b.repo < ? ORDER BY b.repo, b.digest LIMIT ?",
                (*after, CACHE_HIGH, scan),
            ).fetchall()
            missing = sorted({digest for _, digest, sized in rows if not sized})
            return missing, ((rows[-1][0], rows[-1][1]) if len(rows) == scan else None)

        return self._read(unsized)

    def gc_size_manifests(self, after: Scan = (CACHE_PREFIX, ""), scan: int = 1000) -> "Deferred[Scan | None]":
        """Record the sizes of the next C{scan} cached manifests after C{after} (from their rows)."""

        def record(c: Connection) -> Scan | None:
            rows = c.execute(
                "SELECT repo, digest, size FROM manifests WHERE (repo, digest) > (?, ?) AND repo < ? "
                "ORDER BY repo, digest LIMIT ?",
                (*after, CACHE_HIGH, scan),
            ).fetchall()
            c.executemany(
                "INSERT INTO gc_sizes (digest, size) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(d, size) for _, d, size in rows],
            )
            return (rows[-1][0], rows[-1][1]) if len(rows) == scan else None

        return self._write(record)

    def gc_record_sizes(self, sizes: dict[str, int]) -> "Deferred[None]":
        """Record blob sizes (stat on the disk worker)."""
        rows = sorted(sizes.items())

        def record(c: Connection) -> None:
            c.executemany(
                "INSERT INTO gc_sizes (digest, size) VALUES (?, ?) ON CONFLICT (digest) DO UPDATE SET size = excluded.size",
                rows,
            )

        return self._write(record)

    # A digest only cache repositories hold: some cache row names it, and no row of a pushed
    # repository does. Six parameters: CACHE_LOW and CACHE_HIGH three times.
    _PROXIED_ONLY = (
        "(EXISTS (SELECT 1 FROM repo_blobs b WHERE b.digest = s.digest AND b.repo >= ? AND b.repo < ?) "
        "OR EXISTS (SELECT 1 FROM manifests m WHERE m.digest = s.digest AND m.repo >= ? AND m.repo < ?) "
        "OR EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child = s.digest AND r.repo >= ? AND r.repo < ?)) "
        "AND NOT EXISTS (SELECT 1 FROM repo_blobs b WHERE b.digest = s.digest AND (b.repo < ? OR b.repo >= ?)) "
        "AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = s.digest AND (m.repo < ? OR m.repo >= ?)) "
        "AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child = s.digest AND (r.repo < ? OR r.repo >= ?))"
    )

    def gc_proxied_bytes(self, after: str = "", scan: int = 1000) -> "Deferred[tuple[int, str | None]]":
        """The size of what only cache repositories hold, among the next C{scan} sized digests
        after C{after}: summed over all pages, what C{max_size} limits. Content also linked in,
        or referenced by a manifest of, a pushed repository is not counted: it is never evicted."""

        def total(c: Connection) -> tuple[int, str | None]:
            rows = c.execute(
                "WITH page AS (SELECT digest, size FROM gc_sizes WHERE digest > ? ORDER BY digest LIMIT ?) "
                f"SELECT s.digest, CASE WHEN {self._PROXIED_ONLY} THEN s.size ELSE 0 END FROM page s ORDER BY s.digest",
                (after, scan, *(CACHE_LOW, CACHE_HIGH) * 6),
            ).fetchall()
            return sum(int(size) for _, size in rows), (rows[-1][0] if len(rows) == scan else None)

        return self._read(total)

    def gc_lru_page(
        self, kind: int, after: Scan = (CACHE_PREFIX, ""), scan: int = 1000
    ) -> "Deferred[tuple[list[tuple[int, str, str, float]], Scan | None]]":
        """Units of cached content among the next C{scan} rows after C{after}, as (kind, repo,
        digest, last use). Kind 0 (C{manifests} rows): a manifest that no other manifest of its
        cache repository references; evicting it takes what only it holds. Kind 1
        (C{repo_blobs} rows): a blob link that no manifest of its repository references. Last use
        is the later of its last read and when it was stored (or linked)."""
        g, x = self.GREATEST, self.NO_INDEX

        def page(c: Connection) -> tuple[list[tuple[int, str, str, float]], Scan | None]:
            if kind == 0:
                rows = c.execute(
                    "WITH page AS (SELECT repo, digest, created FROM manifests WHERE (repo, digest) > (?, ?) "
                    "AND repo < ? ORDER BY repo, digest LIMIT ?) "
                    f"SELECT p.repo, p.digest, {g}(p.created, COALESCE(a.atime, 0)), "
                    f"NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child = p.digest AND {x}r.repo = p.repo) "
                    "FROM page p LEFT JOIN gc_access a ON a.repo = p.repo AND a.digest = p.digest ORDER BY p.repo, p.digest",
                    (*after, CACHE_HIGH, scan),
                ).fetchall()
            else:
                rows = c.execute(
                    "WITH page AS (SELECT repo, digest, created FROM repo_blobs WHERE (repo, digest) > (?, ?) "
                    "AND repo < ? ORDER BY repo, digest LIMIT ?) "
                    f"SELECT p.repo, p.digest, {g}(COALESCE(l.linked, p.created), COALESCE(a.atime, 0)), "
                    f"NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child = p.digest AND {x}r.repo = p.repo) "
                    "AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repo = p.repo AND m.digest = p.digest) "
                    "FROM page p LEFT JOIN gc_links l ON l.repo = p.repo AND l.digest = p.digest "
                    "LEFT JOIN gc_access a ON a.repo = p.repo AND a.digest = p.digest ORDER BY p.repo, p.digest",
                    (*after, CACHE_HIGH, scan),
                ).fetchall()
            units = [(kind, repo, digest, float(used)) for repo, digest, used, unit in rows if unit]
            return units, ((rows[-1][0], rows[-1][1]) if len(rows) == scan else None)

        return self._read(page)

    @staticmethod
    def _gc_has_rows(c: Connection, digest: str) -> bool:
        return (
            c.execute(
                "SELECT 1 FROM repo_blobs WHERE digest = ? UNION ALL SELECT 1 FROM manifests WHERE digest = ? "
                "UNION ALL SELECT 1 FROM manifest_refs WHERE child = ? LIMIT 1",
                (digest, digest, digest),
            ).fetchone()
            is not None
        )

    def _gc_evict_manifest(
        self, c: Connection, repo: str, digest: str, evicted: list[tuple[str, str]], touched: set[str]
    ) -> None:
        x = self.NO_INDEX
        children = [r[0] for r in c.execute("SELECT child FROM manifest_refs WHERE repo = ? AND digest = ?", (repo, digest))]
        c.execute("DELETE FROM manifests WHERE repo = ? AND digest = ?", (repo, digest))
        c.execute("DELETE FROM tags WHERE repo = ? AND digest = ?", (repo, digest))
        c.execute("DELETE FROM manifest_refs WHERE repo = ? AND digest = ?", (repo, digest))
        c.execute("DELETE FROM gc_access WHERE repo = ? AND digest = ?", (repo, digest))
        evicted.append((repo, digest))
        touched.add(digest)
        for child in children:
            touched.add(child)
            if c.execute(f"SELECT 1 FROM manifest_refs WHERE child = ? AND {x}repo = ? LIMIT 1", (child, repo)).fetchone():
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
        """Evict units from L{gc_lru_page}, in order, until C{need} bytes are freed. Units read,
        stored or referenced again since they were listed are skipped. Returns the manifests
        evicted (index children included) and the digests left with no row anywhere, with their
        recorded sizes: what the eviction frees."""
        wanted = list(units)
        x = self.NO_INDEX

        def evict(c: Connection) -> tuple[list[tuple[str, str]], dict[str, int]]:
            evicted: list[tuple[str, str]] = []
            freed: dict[str, int] = {}
            for kind, repo, digest, used in wanted:
                if sum(freed.values()) >= need:
                    break
                touched: set[str] = set()
                atime = c.execute("SELECT atime FROM gc_access WHERE repo = ? AND digest = ?", (repo, digest)).fetchone()
                if atime is not None and atime[0] > used:
                    continue
                if c.execute(f"SELECT 1 FROM manifest_refs WHERE child = ? AND {x}repo = ? LIMIT 1", (digest, repo)).fetchone():
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
                for gone in sorted(touched):
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

        def take(c: Connection) -> tuple[dict[str, bool], str | None]:
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
        rows = [(d,) for d in sorted(digests)]

        def drop(c: Connection) -> None:
            c.executemany("DELETE FROM gc_candidates WHERE digest = ?", rows)
            c.executemany("DELETE FROM gc_sizes WHERE digest = ?", rows)

        return self._write(drop)

    def gc_add_candidates(self, digests: Iterable[str]) -> "Deferred[None]":
        """Consider C{digests} (found by walking the blob store) at the next look."""
        rows = [(d,) for d in sorted(digests)]

        def add(c: Connection) -> None:
            c.executemany("INSERT INTO gc_candidates (digest) VALUES (?) ON CONFLICT DO NOTHING", rows)

        return self._write(add)

    def gc_without_rows(self, digests: Iterable[str]) -> "Deferred[list[str]]":
        """Which of C{digests} no repository links, no manifest is and no manifest references."""
        wanted = list(digests)
        return self._read(lambda c: [d for d in wanted if not self._gc_has_rows(c, d)])

    def gc_quarantine(
        self,
        digests: Iterable[str],
        aside_name: Callable[[], str],
        move_to: Callable[[str, str], bool],
        put_back: Callable[[str, str], None],
        now: float,
    ) -> "Deferred[list[tuple[str, str]]]":
        """Doom the blobs of C{digests} that still have no row: record each in C{gc_quarantine}
        with the name it will have aside (C{aside_name()}), commit, then move the files there
        (C{move_to(digest, path)}, False if there was no file). Returns (digest, path aside) of
        the files moved.

        The record commits before the file moves, so a process killed at any point leaves no
        file aside without its record: the link that needs it, or the next pass, finds it. Both
        steps hold each digest's link lock (L{_lock}) and look again: no link can come between a
        check and a move, and a link made between the two steps ended the quarantine (L{_linking}
        removes the record), so that file is not moved at all.
        """
        wanted = sorted(set(digests))

        def plan(c: Connection) -> list[tuple[str, str]]:
            self._lock(c, wanted)
            planned: list[tuple[str, str]] = []
            for digest in wanted:
                c.execute("DELETE FROM gc_candidates WHERE digest = ?", (digest,))
                if self._gc_has_rows(c, digest):
                    continue
                if c.execute("SELECT 1 FROM gc_quarantine WHERE digest = ?", (digest,)).fetchone():
                    continue
                aside = aside_name()
                planned.append((digest, aside))
                c.execute("INSERT INTO gc_quarantine (digest, path, since) VALUES (?, ?, ?)", (digest, aside, now))
            return planned

        moved: list[tuple[str, str]] = []

        def doom(c: Connection, planned: list[tuple[str, str]]) -> list[tuple[str, str]]:
            moved.clear()
            self._lock(c, [digest for digest, _ in planned])
            for digest, aside in planned:
                row = c.execute("SELECT path FROM gc_quarantine WHERE digest = ?", (digest,)).fetchone()
                if row is None or row[0] != aside:
                    continue  # a link ended the quarantine meanwhile: the file stays
                if move_to(digest, aside):
                    moved.append((digest, aside))
                else:
                    c.execute("DELETE FROM gc_quarantine WHERE digest = ?", (digest,))
            return list(moved)

        def undo() -> None:
            # The records stand (committed): put the files back, the next look ends them.
            for digest, aside in moved:
                put_back(digest, aside)

        def move(planned: list[tuple[str, str]]) -> "Deferred[list[tuple[str, str]]]":
            if not planned:
                return succeed([])

            def doom_planned(c: Connection) -> list[tuple[str, str]]:
                return doom(c, planned)

            doom_planned.__name__ = "doom"
            return self._write(doom_planned, undo)

        return self._write(plan).addCallback(move)

    def gc_quarantined(self, before: float) -> "Deferred[list[tuple[str, str]]]":
        """Blob files moved aside before C{before} and not dealt with yet (a pass that did not finish)."""
        return self._read(
            lambda c: [
                (d, p) for d, p in c.execute("SELECT digest, path FROM gc_quarantine WHERE since < ? ORDER BY digest", (before,))
            ]
        )

    def gc_release(
        self, digests: Iterable[str], keep: set[str], put_back: Callable[[str, str], None]
    ) -> "Deferred[list[tuple[str, str]]]":
        """End the quarantine of C{digests}: a digest that gained a row, or is in C{keep}, gets
        its file back with C{put_back(digest, path)}; the others are forgotten for good and
        returned as (digest, path aside) for the caller to delete. Digests whose quarantine a
        link already ended are skipped."""
        wanted = sorted(set(digests))

        def release(c: Connection) -> list[tuple[str, str]]:
            self._lock(c, wanted)
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

    def gc_try_lock(self, min_interval: float = 0.0) -> "Deferred[bool]":
        """Take the right to run a garbage collection pass (True), unless another process has it
        or ran one less than C{min_interval} seconds ago. One process per sqlite data dir (its
        flock): always True there."""
        return self._read(lambda c: True)

    def gc_unlock(self) -> "Deferred[None]":
        """Give back the right taken by L{gc_try_lock}."""
        return self._read(lambda c: None)

    def gc_install_restore(self, restore: Callable[[str, str], None]) -> "Deferred[None]":
        """Make every new link, manifest or manifest reference to a quarantined digest put its
        file back (C{restore(digest, path aside)}, run inside the linking transaction), so that a
        push, mount or cache fill that saw the file before it was moved aside never ends up
        linking a missing file. An exception in C{restore} fails the link."""
        self._restore = restore
        return self._read(lambda c: None)
