"""``python -m trow migrate``: copy a single-node data dir's metadata into PostgreSQL.

    python -m trow migrate --data-dir DIR --to postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME [--force]

A one-replica trow keeps its metadata in C{<data-dir>/trow.db}; replicas keep it in PostgreSQL
and share the data dir itself (blobs and upload files stay where they are). This command moves
the metadata only, so an install becomes highly available without pushing anything again:

 1. It takes the data dir's lock (L{trow.storage.lock}): the single-node server must be stopped.
 2. It migrates the target schema (L{PostgresMetadata.migrate_sync}).
 3. It copies every row of every metadata table, streamed from sqlite in batches through COPY
    into a temporary table and then C{INSERT ... ON CONFLICT DO NOTHING}, all in one PostgreSQL
    transaction: everything is copied, or nothing.
 4. It marks the data dir as shared (L{mark_shared}): from then on a server on sqlite refuses the
    data dir, so nobody keeps writing to a trow.db that no replica reads.

Running it again is harmless: rows already there are counted, not changed. A target that holds
repositories, manifests or tags that this data dir lacks is somebody else's registry: refused
unless C{--force}, which merges (existing rows win).
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
from typing import IO, Any, Iterator, NoReturn, Sequence
from urllib.parse import unquote

import attrs
import psycopg
from psycopg import sql
from twisted.python import usage

from trow.storage.lock import DataDirLocked, lock_data_dir, mark_shared, shared_mark
from trow.storage.metadata import MetadataUnavailable
from trow.storage.postgres import CONNECT_TIMEOUT, DatabaseURLError, PostgresMetadata, SchemaTooNew, check_url, redact
from trow.storage.sqlite import SchemaTooNew as SqliteSchemaTooNew
from trow.storage.sqlite import SqliteMetadata
from trow.tap import fail as _fail
from trow.workers import InlineWorker

DB_NAME = "trow.db"

# Rows per COPY: enough that round trips do not dominate, few enough to keep memory flat.
BATCH = 5000

# Every metadata table and its columns, in copy order. Not copied: PostgreSQL's own tables
# (trow_schema, replicas, leases), which describe the replicas rather than the registry.
TABLES: list[tuple[str, tuple[str, ...]]] = [
    ("repo_blobs", ("repo", "digest", "created")),
    ("manifests", ("repo", "digest", "media_type", "size", "subject", "artifact_type", "annotations", "created")),
    ("manifest_refs", ("repo", "digest", "child")),
    ("tags", ("repo", "tag", "digest", "updated")),
    ("uploads", ("uuid", "repo", "created", "updated", "size")),
    ("gc_access", ("repo", "digest", "atime")),
    ("gc_links", ("repo", "digest", "linked")),
    ("gc_sizes", ("digest", "size")),
    ("gc_candidates", ("digest", "evicted")),
    ("gc_quarantine", ("digest", "path", "since")),
    ("gc_swept", ("repo", "digest", "at")),
]

# What a registry holds, as the columns that identify it: a target row of these that the source
# lacks is data from elsewhere (a tag counts with its digest: a tag moved elsewhere is foreign).
# With how a refusal names them, and how it shows one of them.
CONTENT: dict[str, tuple[tuple[str, ...], str, str]] = {
    "repo_blobs": (("repo", "digest"), "blob links", "'blob link ' || t.repo || '@' || t.digest"),
    "manifests": (("repo", "digest"), "manifests", "'manifest ' || t.repo || '@' || t.digest"),
    "tags": (("repo", "tag", "digest"), "tags", "'tag ' || t.repo || ':' || t.tag"),
}

# Tables whose triggers would rewrite other tables as rows arrive (gc_links from repo_blobs,
# repo_blobs from manifest_refs): off for the copy, which brings those tables' rows as they are.
TRIGGERED = ("repo_blobs", "manifest_refs")

# How long the copy waits for a table a running replica uses before it gives up.
LOCK_TIMEOUT = "10s"


class MigrationRefused(Exception):
    """The target holds data the command will not mix with this data dir's without --force."""


@attrs.frozen
class TableCount:
    """The rows of one table: how many the data dir has, and how many of them were new."""

    table: str
    rows: int
    copied: int

    @property
    def already(self) -> int:
        """Rows that the target held already (identical key; left as they were)."""
        return self.rows - self.copied


class MigrateOptions(usage.Options):
    """Options of ``python -m trow migrate``."""

    synopsis = "--data-dir DIR --to postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME [--force]"
    longdesc = "Copy the metadata of a stopped single-node trow into PostgreSQL, for replicas sharing its data dir."

    optParameters = [
        ["data-dir", None, None, "The data dir of a trow that is not running."],
        ["to", None, None, "The PostgreSQL database the replicas will use (their --database)."],
    ]
    optFlags = [["force", None, "Merge into a database that already holds other data (existing rows win)."]]

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError(f"unexpected argument {redact(args[0])!r}")

    def postOptions(self) -> None:
        data_dir = self["data-dir"]
        if not data_dir:
            raise usage.UsageError("--data-dir is required")
        if not self["to"]:
            raise usage.UsageError("--to is required (the PostgreSQL URL the replicas will use)")
        if not os.path.isdir(data_dir):
            raise usage.UsageError(f"--data-dir {data_dir!r} is not a directory")
        if not os.path.isfile(os.path.join(data_dir, DB_NAME)):
            raise usage.UsageError(f"--data-dir {data_dir!r} is not a trow data dir (it has no {DB_NAME})")
        try:
            check_url(self["to"])
        except DatabaseURLError as e:
            # The message names --database (the server's option); here it is --to.
            raise usage.UsageError(_reason(e).replace("--database", "--to", 1)) from None


# The password of a URL that libpq cannot parse (which libpq's own message may quote whole).
_URL_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*:([^@/?#]+)@")
_KEYWORD_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def _scrub(text: str, url: str) -> str:
    """C{text} without the password of C{url}, whatever put it there (a driver's message)."""
    passwords: set[str] = set()
    try:
        parsed = psycopg.conninfo.conninfo_to_dict(url).get("password")
        if parsed:
            passwords.add(str(parsed))
    except psycopg.Error:
        pass
    for pattern in (_URL_PASSWORD, _KEYWORD_PASSWORD):
        found = pattern.search(url)
        if found:
            passwords.add(found.group(1))
            passwords.add(unquote(found.group(1)))
    # Longest first: a password that contains another is replaced whole.
    for password in sorted(passwords, key=len, reverse=True):
        text = text.replace(password, "***")
    return text


def _reason(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _batches(cursor: sqlite3.Cursor) -> Iterator[list[Any]]:
    while rows := cursor.fetchmany(BATCH):
        yield rows


def _upload_rows(data_dir: str, rows: list[Any]) -> list[Any]:
    """Sessions of an older trow (size -1: "the file's size") get their file's size now, since
    replicas go by the recorded offset; a session without a file holds nothing."""
    fixed = []
    for uuid, repo, created, updated, size in rows:
        if size is not None and size < 0:
            try:
                size = os.path.getsize(os.path.join(data_dir, "uploads", uuid))
            except FileNotFoundError:
                size = 0
        fixed.append((uuid, repo, created, updated, size))
    return fixed


def copy_metadata(
    source: sqlite3.Connection, conn: psycopg.Connection[Any], data_dir: str, force: bool, rerun: bool, where: str
) -> list[TableCount]:
    """Copy every table of C{source} into C{conn}'s database in the caller's transaction; raise
    L{MigrationRefused} (the caller rolls back) when the target holds foreign data and not
    C{force}, or, on a C{rerun}, when rows of the data dir are gone from the target."""
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
    conn.execute("SET LOCAL statement_timeout = 0")
    for table in TRIGGERED:
        conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(sql.Identifier(table)))
    counts: list[TableCount] = []
    for table, columns in TABLES:
        stage = sql.Identifier(f"trow_migrate_{table}")
        names = sql.SQL(", ").join(map(sql.Identifier, columns))
        conn.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP").format(stage, sql.Identifier(table)))
        # --force checks nothing, so it needs no record of the keys.
        keys = CONTENT[table][0] if table in CONTENT and not force else None
        seen = sql.Identifier(f"trow_migrate_seen_{table}")
        if keys is not None:
            # The data dir's keys, kept for the comparison with what the target held.
            key_names = sql.SQL(", ").join(map(sql.Identifier, keys))
            conn.execute(
                sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                    seen, key_names, sql.Identifier(table)
                )
            )
        rows = copied = 0
        cursor = source.execute(f"SELECT {', '.join(columns)} FROM {table}")
        for batch in _batches(cursor):
            if table == "uploads":
                batch = _upload_rows(data_dir, batch)
            with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(stage, names)) as copy:
                for row in batch:
                    copy.write_row(row)
            inserted = conn.execute(
                sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING").format(
                    sql.Identifier(table), names, names, stage
                )
            )
            copied += max(inserted.rowcount, 0)
            rows += len(batch)
            if keys is not None:
                conn.execute(sql.SQL("INSERT INTO {} SELECT {} FROM {}").format(seen, key_names, stage))
            conn.execute(sql.SQL("TRUNCATE {}").format(stage))
        counts.append(TableCount(table, rows, copied))
    _check_target(conn, counts, force, rerun, where)
    for table in TRIGGERED:
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER USER").format(sql.Identifier(table)))
    # The catalog's table, kept by the triggers that were off for the copy: listed from the rows.
    conn.execute(
        "INSERT INTO repositories (repo) SELECT repo FROM repo_blobs UNION SELECT repo FROM manifests "
        "ON CONFLICT DO NOTHING"
    )
    return counts


def _check_target(conn: psycopg.Connection[Any], counts: list[TableCount], force: bool, rerun: bool, where: str) -> None:
    """Refuse (L{MigrationRefused}) a target that held repositories, manifests or tags that the
    data dir lacks; or, when the data dir was migrated before (C{rerun}), one that had lost some
    of the data dir's: the replicas deleted them since, and trow.db is stale."""
    if force:
        return
    foreign: list[str] = []
    examples: list[str] = []
    for table, (keys, plural, label) in CONTENT.items():
        seen = sql.Identifier(f"trow_migrate_seen_{table}")
        conn.execute(sql.SQL("ANALYZE {}").format(seen))
        match = sql.SQL(" AND ").join(sql.SQL("s.{0} = t.{0}").format(sql.Identifier(k)) for k in keys)
        found = conn.execute(
            sql.SQL("SELECT count(*), min({}) FROM {} AS t WHERE NOT EXISTS (SELECT 1 FROM {} AS s WHERE {})").format(
                sql.SQL(label), sql.Identifier(table), seen, match
            )
        ).fetchone()
        if found and found[0]:
            foreign.append(f"{found[0]} {plural}")
            examples.append(str(found[1]))
    if foreign:
        # The example from the last table found: a tag when there is one, the most telling.
        raise MigrationRefused(
            f"the database {where} already holds metadata that is not from this data dir "
            f"({', '.join(foreign)}; e.g. {examples[-1]}); nothing was copied. Migrate into an empty database, "
            "or add --force to merge this data dir's metadata into it (rows already there win)"
        )
    if rerun:
        lost = sum(c.copied for c in counts if c.table in CONTENT)
        if lost:
            raise MigrationRefused(
                f"the data dir was migrated to {where} before, and {lost} of its blob links, manifests or tags "
                "are gone from there since (deleted through the replicas): its trow.db is stale; nothing was "
                "copied. Add --force to copy them back anyway"
            )


def migrate(data_dir: str, url: str, force: bool = False) -> list[TableCount]:
    """The whole command but its output; the caller holds the data dir's lock. Raises
    L{MigrationRefused}, L{MetadataUnavailable}, L{SchemaTooNew}, C{psycopg.Error},
    C{sqlite3.Error} (nothing is written to PostgreSQL then but the schema)."""
    where = redact(url)
    rerun = shared_mark(data_dir) == where
    db_path = os.path.join(data_dir, DB_NAME)
    # Opened once as trow opens it: a trow.db of an older trow gains today's tables and columns.
    SqliteMetadata(db_path, InlineWorker()).close()
    target = PostgresMetadata(url, InlineWorker())
    try:
        target.migrate_sync()
    finally:
        target.close()
    source = sqlite3.connect(db_path, isolation_level=None)
    try:
        # One read transaction: a consistent snapshot (nobody writes; the lock is held anyway).
        source.execute("BEGIN")
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT) as conn:
            with conn.transaction():
                counts = copy_metadata(source, conn, data_dir, force, rerun, where)
        source.execute("COMMIT")
    finally:
        source.close()
    mark_shared(data_dir, where)
    return counts


def report(counts: list[TableCount], data_dir: str, where: str, out: IO[str]) -> None:
    """Rows per table, the totals, and what to do next."""
    out.write(f"migrated the metadata of {os.path.abspath(data_dir)} into {where}:\n")
    width = max(len(c.table) for c in counts)
    for c in counts:
        out.write(f"  {c.table:<{width}}  {c.rows} rows: {c.copied} copied, {c.already} already there\n")
    rows = sum(c.rows for c in counts)
    copied = sum(c.copied for c in counts)
    out.write(f"total: {rows} rows, {copied} copied, {rows - copied} already there\n")
    out.write(
        f"the data dir is now marked as shared ({os.path.join(data_dir, 'trow.database')}): "
        "a trow without --database refuses it\n"
    )
    out.write(
        f"next: start the replicas with --data-dir {os.path.abspath(data_dir)} --database URL "
        f"(URL: this database, {where})\n"
    )


def main(argv: Sequence[str], out: IO[str] | None = None) -> int:
    """Run the command with C{argv} (the arguments after ``migrate``); returns the exit status."""
    stdout = out if out is not None else sys.stdout
    options = MigrateOptions()
    url = ""

    def fail(message: str) -> NoReturn:
        _fail(_scrub(message, url) if url else message)

    try:
        options.parseOptions(list(argv))
    except usage.UsageError as e:
        url = options["to"] or ""
        fail(f"{e} (usage: python -m trow migrate {MigrateOptions.synopsis})")
    url = options["to"]
    data_dir = options["data-dir"]
    where = redact(url)
    mark = shared_mark(data_dir)
    if mark is not None and mark != where:
        fail(
            f"data dir {os.path.abspath(data_dir)} is already shared by replicas whose metadata is in {mark}, "
            f"not {where}"
        )
    try:
        # A data dir marked for this very database is one migrated before: run again, idempotently.
        lock = lock_data_dir(data_dir, shared_with=where)
    except DataDirLocked as e:
        fail(f"{e} (stop the single-node trow before migrating its data dir)")
    except OSError as e:
        fail(f"cannot lock --data-dir {data_dir!r}: {e.strerror}")
    try:
        counts = migrate(data_dir, url, force=bool(options["force"]))
    except MigrationRefused as e:
        fail(str(e))
    except (MetadataUnavailable, SchemaTooNew, SqliteSchemaTooNew) as e:
        fail(str(e))
    except psycopg.errors.LockNotAvailable:
        fail(f"the tables of {where} are in use (are replicas already running on it?); nothing was copied")
    except psycopg.OperationalError as e:
        fail(f"the database {where} is unreachable or refused the copy (nothing was copied): {_reason(e)}")
    except psycopg.Error as e:
        fail(f"copying into {where} failed (nothing was copied): {_reason(e)}")
    except (OSError, sqlite3.Error) as e:
        fail(f"reading the metadata of {data_dir!r} failed (nothing was copied): {e}")
    finally:
        lock.release()
    report(counts, data_dir, where, stdout)
    stdout.flush()
    return 0
