"""``python -m trow gc``: one garbage collection pass over a data dir no server is using.

    python -m trow gc --data-dir DIR [--dry-run] [--config FILE]

The config file gives ``gc.grace``, ``gc.upload_expiry`` and ``registry_proxies.max_size``.
The command takes the data dir's lock (L{trow.storage.lock}), so it refuses to run beside a trow
server on the same data dir, and a server refuses to start while it runs. Everything runs on the
calling thread (L{InlineWorker}): there is no reactor to keep free here, and nobody else to
race, so files are deleted at once (no settle time).

With ``--dry-run`` nothing in the data dir changes: the pass runs on a copy of the database in a
temporary directory and touches no file, and the command lists what it would remove.
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
from trow.storage.lock import DataDirLocked, lock_data_dir
from trow.storage.sqlite import SqliteMetadata
from trow.storage.uploads import UploadFiles
from trow.tap import fail
from trow.workers import InlineWorker

DB_NAME = "trow.db"


class GCOptions(usage.Options):
    """Options of ``python -m trow gc``."""

    synopsis = "--data-dir DIR [--dry-run] [--config FILE]"
    longdesc = "Remove expired uploads, unreferenced blobs and, above max_size, least recently used cached content."

    optParameters = [
        ["data-dir", None, None, "The data dir of a trow that is not running."],
        ["config", None, None, "trow's YAML config file: gc.grace, gc.upload_expiry, registry_proxies.max_size."],
    ]
    optFlags = [["dry-run", None, "List what would be removed; remove nothing."]]

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
        if not os.path.isfile(os.path.join(data_dir, DB_NAME)):
            raise usage.UsageError(f"--data-dir {data_dir!r} is not a trow data dir (it has no {DB_NAME})")
        self.config = Config()
        if self["config"]:
            try:
                self.config = load_config(self["config"])
            except ConfigError as e:
                raise usage.UsageError(f"bad config: {e}") from None


def _copy_database(source: str, target: str) -> None:
    """A consistent copy of the sqlite database (WAL included), through sqlite's backup API."""
    src = sqlite3.connect(source)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def _result(d: "Deferred[PassResult]") -> PassResult:
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    if not outcome:
        raise RuntimeError("the pass did not complete synchronously")
    if hasattr(outcome[0], "raiseException"):
        outcome[0].raiseException()
    result: PassResult = outcome[0]
    return result


def collect_once(data_dir: str, config: Config, dry_run: bool = False) -> PassResult:
    """Run one pass over C{data_dir} on this thread; the caller holds the data dir's lock."""
    worker = InlineWorker()
    scratch = tempfile.mkdtemp(prefix="trow-gc-") if dry_run else None
    try:
        db_path = os.path.join(data_dir, DB_NAME)
        if scratch is not None:
            copy = os.path.join(scratch, DB_NAME)
            _copy_database(db_path, copy)
            db_path = copy
        metadata = SqliteMetadata(db_path, worker)
        try:
            blobs = BlobStore(data_dir, worker)
            uploads = UploadFiles(data_dir, blobs, worker)
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
    try:
        lock = lock_data_dir(data_dir)
    except DataDirLocked as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot lock --data-dir {data_dir!r}: {e.strerror}")
    try:
        result = collect_once(data_dir, options.config, dry_run=bool(options["dry-run"]))
    except (OSError, sqlite3.Error) as e:
        fail(f"garbage collection of {data_dir!r} failed: {e}")
    finally:
        lock.release()
    report(result, stdout)
    stdout.flush()
    return 0
