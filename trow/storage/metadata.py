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
