"""``python -m trow gc``: one garbage collection pass over a data dir, or a dry run beside a server.

    python -m trow gc --data-dir DIR [--dry-run] [--config FILE]

The config file gives ``gc.grace``, ``gc.upload_expiry`` and ``registry_proxies.max_size``.

A real pass takes the data dir's lock (L{trow.storage.lock}), so it refuses to run beside a trow
server on the same data dir (which runs passes of its own), and a server refuses to start while
it runs. Everything runs on the calling thread (L{InlineWorker}): there is no reactor to keep
free here, and nobody else to race, so files are deleted at once (no settle time).

``--dry-run`` takes no lock and changes nothing, so it also runs beside a server: the pass runs
on a snapshot of the database in a temporary directory (L{snapshot_database}: a consistent copy
that never makes the server's writes wait), against a read-only view of the blob store (it walks
C{blobs/} and stats files; anything that would change a file raises), and the command lists
what it would remove. A server goes on working meanwhile, so the list is what a pass would do
on the database as it was at the snapshot, with the files as they are a moment later.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import tempfile
from typing import IO, Any, Sequence

from twisted.internet.defer import Deferred
from twisted.python import usage

from trow.config import Config, ConfigError, load_config
from trow.registry.gc import Collector, PassResult
from trow.storage.blobs import BlobStore
from trow.storage.lock import LOCK_NAME, DataDirLocked, lock_data_dir, shared_mark
from trow.storage.sqlite import SchemaTooNew, SqliteMetadata, snapshot_database
from trow.storage.uploads import UploadFiles
from trow.tap import fail
from trow.workers import InlineWorker

DB_NAME = "trow.db"


class GCOptions(usage.Options):
    """Options of ``python -m trow gc``."""

    synopsis = "--data-dir DIR [--dry-run] [--config FILE]"
    longdesc = "Remove expired uploads, unreferenced blobs and, above max_size, least recently used cached content."

    optParameters = [
        ["data-dir", None, None, "The data dir (of a running trow: with --dry-run only)."],
        ["config", None, None, "trow's YAML config file: gc.grace, gc.upload_expiry, registry_proxies.max_size."],
    ]
    optFlags = [["dry-run", None, "List what would be removed; remove nothing, take no lock."]]

    def opt_config_file(self, path: str) -> None:
        """Alias of --config."""
        self["config"] = path

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError(f"unexpected argument {args[0]!r}")

    def postOptions(self) -> None:
        data_dir = self["data-dir"]
        if not data_dir:
            raise usage.UsageError("--data-dir is required")
        if not os.path.isdir(data_dir):
            raise usage.UsageError(f"--data-dir {data_dir!r} is not a directory")
        where = shared_mark(data_dir)
        if where is not None:
            raise usage.UsageError(
                f"data dir {os.path.abspath(data_dir)} belongs to trow replicas whose metadata is in PostgreSQL "
                f"({where}); their garbage collection runs inside the replicas"
            )
        if not os.path.isfile(os.path.join(data_dir, DB_NAME)):
            raise usage.UsageError(f"--data-dir {data_dir!r} is not a trow data dir (it has no {DB_NAME})")
        self.config = Config()
        if self["config"]:
            try:
                self.config = load_config(self["config"])
            except ConfigError as e:
                raise usage.UsageError(f"bad config: {e}") from None


def _result(d: "Deferred[PassResult]") -> PassResult:
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    if not outcome:
        raise RuntimeError("the pass did not complete synchronously")
    if hasattr(outcome[0], "raiseException"):
        outcome[0].raiseException()
    result: PassResult = outcome[0]
    return result


class ReadOnlyBlobs(BlobStore):
    """The blob store as a dry run sees it: it walks C{blobs/} and stats files, and that is all.
    It creates no directory, and every call that would change a file raises."""

    def __init__(self, root: str, worker: InlineWorker) -> None:
        # BlobStore.__init__ without its makedirs (tests/unit/test_gc_cli.py checks the fields).
        self.root = root
        self.worker = worker
        self.blob_root = os.path.join(root, "blobs")
        self.tmp_base = os.path.join(root, "tmp")
        self.scratch = None
        self.tmp_root = self.tmp_base

    def _walk_sync(self) -> list[str]:
        # No blobs/ yet: nothing stored (a real pass would create the directory).
        return super()._walk_sync() if os.path.isdir(self.blob_root) else []

    def _refuse(self, *args: object, **kwargs: object) -> Any:
        raise RuntimeError("a dry run changes no file")

    clean_tmp = clean_dead_scratch = temp_path = spool = commit = put_bytes = take_spooled = _refuse
    check_writable = delete = aside_name = move_to_sync = move_aside_sync = put_back_sync = remove_aside = _refuse


class ReadOnlyUploads(UploadFiles):
    """The upload files as a dry run sees them: no directory made, no file changed."""

    def __init__(self, root: str, blobs: BlobStore, worker: InlineWorker) -> None:
        # UploadFiles.__init__ without its makedirs.
        self.root = os.path.join(root, "uploads")
        self._blobs = blobs
        self._worker = worker
        self._hashers = {}

    def _refuse(self, *args: object, **kwargs: object) -> Any:
        raise RuntimeError("a dry run changes no file")

    create = append = truncate = delete = remove_orphans = _refuse


def collect_once(data_dir: str, config: Config, dry_run: bool = False) -> PassResult:
    """Run one pass over C{data_dir} on this thread. For a real pass the caller holds the data
    dir's lock; a dry run needs none (see the module docstring)."""
    worker = InlineWorker()
    scratch = tempfile.mkdtemp(prefix="trow-gc-") if dry_run else None
    try:
        db_path = os.path.join(data_dir, DB_NAME)
        blobs: BlobStore
        uploads: UploadFiles
        if scratch is not None:
            copy = os.path.join(scratch, DB_NAME)
            snapshot_database(db_path, copy)
            db_path = copy
            blobs = ReadOnlyBlobs(data_dir, worker)
            uploads = ReadOnlyUploads(data_dir, blobs, worker)
        else:
            blobs = BlobStore(data_dir, worker)
            uploads = UploadFiles(data_dir, blobs, worker)
        # The pass writes to db_path (in a dry run, the copy: sizes, sweeps, evictions it tries).
        metadata = SqliteMetadata(db_path, worker)
        try:
            # The reactor only as a clock (it never runs here): with no settle time, nothing is scheduled.
            from twisted.internet import reactor

            collector = Collector.from_config(
                config, blobs, uploads, metadata, reactor, settle=0.0, walk_every=1, dry_run=dry_run
            )
            return _result(collector.run())
        finally:
            metadata.close()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def report(result: PassResult, out: IO[str]) -> None:
    """Print what a pass removed (or would remove), one line each, then a summary line."""
    verb = "would remove" if result.dry_run else "removed"
    for upload_id in result.expired_uploads:
        out.write(f"{verb} upload {upload_id}\n")
    for repo, digest in result.swept:
        out.write(f"{verb} link {repo}@{digest}\n")
    for repo, digest in result.evicted:
        out.write(f"{verb} cached manifest {repo}@{digest}\n")
    for digest, size in result.removed:
        out.write(f"{verb} blob {digest} ({size} bytes)\n")
    summary = (
        f"{verb} {result.blobs} blobs ({result.bytes} bytes), {result.uploads} uploads, "
        f"{result.manifests} evicted manifests, {result.links} unreferenced links in {result.seconds:.2f}s"
    )
    if result.young:
        summary += f"; kept {result.young} unreferenced blobs younger than the grace period"
    if result.proxied_bytes is not None:
        summary += f"; cached content now {result.proxied_bytes} bytes"
    out.write(summary + "\n")


def main(argv: Sequence[str], out: IO[str] | None = None) -> int:
    """Run the command with C{argv} (the arguments after ``gc``); returns the exit status."""
    stdout = out if out is not None else sys.stdout
    options = GCOptions()
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as e:
        fail(f"{e} (usage: python -m trow gc {GCOptions.synopsis})")
    data_dir = options["data-dir"]
    dry_run = bool(options["dry-run"])
    lock = None
    if not dry_run:
        try:
            lock = lock_data_dir(data_dir)
        except DataDirLocked:
            where = os.path.abspath(data_dir)
            fail(
                f"data dir {where} is in use by another trow process (it holds {os.path.join(where, LOCK_NAME)}); "
                "a trow server runs its own garbage collection (gc.interval): stop it first, "
                "or add --dry-run to see what a pass would remove now"
            )
        except OSError as e:
            fail(f"cannot lock --data-dir {data_dir!r}: {e.strerror}")
    try:
        result = collect_once(data_dir, options.config, dry_run=dry_run)
    except (OSError, sqlite3.Error, SchemaTooNew) as e:
        fail(f"garbage collection of {data_dir!r} failed: {e}")
    finally:
        if lock is not None:
            lock.release()
    report(result, stdout)
    stdout.flush()
    return 0
