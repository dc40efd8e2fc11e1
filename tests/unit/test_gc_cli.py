"""``python -m trow gc`` in process: arguments, the data-dir lock, what it prints, and --dry-run
changing nothing, with or without a process on the data dir; the database snapshot a dry run
reads. (tests/integration/test_gc.py runs it as a real process on a real trow's data.)"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import time
from pathlib import Path

import pytest

from tests.unit.harness import result_of
from tests.unit.test_gc import CACHE, HOUR, World, blob, digest, run
from trow import __main__ as entry
from trow.gccli import ReadOnlyBlobs, ReadOnlyUploads, main
from trow.storage import sqlite as sqlite_module
from trow.storage.blobs import BlobStore
from trow.storage.lock import DataDirLocked, lock_data_dir, mark_shared
from trow.storage.sqlite import snapshot_database
from trow.storage.uploads import UploadFiles
from trow.workers import InlineWorker

# Above the smallest max_size trow accepts (1MiB), so that a config can ask for its eviction.
CACHED_SIZE = 2 * 2**20


def snapshot(root: Path) -> dict[str, str]:
    """Every file under C{root} (the lock file aside) with a hash of its bytes, and every row of
    the database: what --dry-run must leave exactly as it was."""
    found: dict[str, str] = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if name == "trow.lock" or name.startswith("trow.db"):
                continue
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    conn = sqlite3.connect(str(root / "trow.db"))
    try:
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
            rows = sorted(map(repr, conn.execute(f"SELECT * FROM {table}")))
            found[f"table:{table}"] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    finally:
        conn.close()
    return found


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data dir with an image, a cached image and an orphan blob, made two days ago, and an
    upload session started just now (the command goes by wall time)."""
    root = tmp_path / "data"
    world = World(str(root))
    world.clock.advance(-2 * 24 * HOUR)  # content made "two days ago"
    world.push_image("team/app", "v1", [blob("kept")])
    world.push_blob("team/app", blob("orphan"))
    world.cache_image(CACHE, "v1", [blob("cached", CACHED_SIZE)])
    world.clock.advance(2 * 24 * HOUR)
    run(world.registry.start_upload("team/other", None, None))  # a fresh upload session elsewhere
    for folder, _, files in os.walk(root / "blobs"):
        for name in files:
            old = time.time() - 2 * 24 * HOUR
            os.utime(os.path.join(folder, name), (old, old))
    world.metadata.close()
    return root


def run_gc(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    out = io.StringIO()
    try:
        status = main(list(args), out=out)
    except SystemExit as e:
        status = int(e.code or 0)
    captured = capsys.readouterr()
    return status, out.getvalue(), captured.err


def test_a_pass_removes_the_orphan_and_reports_it(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_gc(capsys, "--data-dir", str(data_dir))
    assert status == 0, err
    assert f"removed link team/app@{digest(blob('orphan'))}\n" in out
    assert f"removed blob {digest(blob('orphan'))} (1000 bytes)\n" in out
    assert out.splitlines()[-1].startswith("removed 1 blobs (1000 bytes), 0 uploads, 0 evicted manifests, 1 unreferenced links in ")
    assert not (data_dir / "blobs" / "sha256" / digest(blob("orphan"))[7:9] / digest(blob("orphan"))[7:]).exists()
    # The image and the cache are untouched.
    assert (data_dir / "blobs" / "sha256" / digest(blob("kept"))[7:9] / digest(blob("kept"))[7:]).exists()
    # A second pass finds nothing left to do.
    status, out, _ = run_gc(capsys, "--data-dir", str(data_dir))
    assert out.splitlines()[-1].startswith("removed 0 blobs (0 bytes)")


def test_dry_run_lists_and_changes_nothing(data_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--dry-run with a config that would evict the cache and expire uploads: everything is
    listed with "would remove", and no byte of the data dir changes."""
    config = tmp_path / "gc.yaml"
    config.write_text("gc:\n  grace: 1h\n  upload_expiry: 0s\nregistry_proxies:\n  max_size: 1MiB\n")
    before = snapshot(data_dir)
    status, out, err = run_gc(capsys, "--data-dir", str(data_dir), "--dry-run", "--config", str(config))
    assert status == 0, err
    assert f"would remove blob {digest(blob('orphan'))} (1000 bytes)" in out
    assert f"would remove blob {digest(blob('cached', CACHED_SIZE))} ({CACHED_SIZE} bytes)" in out
    assert "would remove cached manifest f/docker.io/library/nginx@sha256:" in out
    assert "would remove upload " in out
    assert out.splitlines()[-1].startswith("would remove 4 blobs")
    assert snapshot(data_dir) == before
    # The same command without --dry-run removes what it listed.
    status, real, _ = run_gc(capsys, "--data-dir", str(data_dir), "--config", str(config))
    assert [line.replace("would remove", "removed") for line in out.splitlines()[:-1]] == real.splitlines()[:-1]
    assert snapshot(data_dir) != before


def test_refused_while_another_process_holds_the_data_dir(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(data_dir)
    lock = lock_data_dir(str(data_dir))
    try:
        status, out, err = run_gc(capsys, "--data-dir", str(data_dir))
    finally:
        lock.release()
    assert status == 1 and out == ""
    assert err.startswith("trow: error: data dir ") and "in use by another trow process" in err
    assert "runs its own garbage collection" in err and "--dry-run" in err
    assert err.count("\n") == 1
    assert snapshot(data_dir) == before


def files(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """C{root} and every file and directory in it: inode, size, mtime and a hash of its bytes."""
    top = os.stat(root)
    found: dict[str, tuple[int, int, int, str]] = {".": (top.st_ino, top.st_size, top.st_mtime_ns, "")}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(folder, name)
            st = os.stat(path)
            content = ""
            if os.path.isfile(path):
                with open(path, "rb") as handle:
                    content = hashlib.sha256(handle.read()).hexdigest()
            found[os.path.relpath(path, root)] = (st.st_ino, st.st_size, st.st_mtime_ns, content)
    return found


def server_connection(path: Path) -> sqlite3.Connection:
    """A connection like a running trow's: WAL, autocommit, and no patience for locks
    (timeout=0: a write that had to wait fails at once)."""
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")  # what it commits stays in the WAL
    return conn


def test_dry_run_beside_a_server_takes_no_lock_and_changes_nothing(
    data_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A process holding the data dir's lock and the database open, in the middle of a write
    transaction: the dry run neither waits nor fails, reports the orphan, leaves every file
    (trow.lock, trow.db, its WAL) as it was, and the holder commits at once afterwards."""
    config = tmp_path / "gc.yaml"
    config.write_text("gc:\n  grace: 1h\n  upload_expiry: 1h\n")
    lock = lock_data_dir(str(data_dir))
    server = server_connection(data_dir / "trow.db")
    try:
        server.execute("INSERT INTO tags (repo, tag, digest, updated) VALUES ('team/app', 'committed', 'sha256:x', 0)")
        server.execute("BEGIN IMMEDIATE")
        server.execute("INSERT INTO tags (repo, tag, digest, updated) VALUES ('team/app', 'pending', 'sha256:y', 0)")
        before = files(data_dir)
        started = time.monotonic()
        status, out, err = run_gc(capsys, "--data-dir", str(data_dir), "--dry-run", "--config", str(config))
        assert status == 0, err
        assert time.monotonic() - started < 4  # sqlite's busy timeout is 5s: it never waited
        assert f"would remove blob {digest(blob('orphan'))} (1000 bytes)" in out
        assert out.splitlines()[-1].startswith("would remove 1 blobs (1000 bytes), 0 uploads")
        assert files(data_dir) == before
        # The lock is still ours alone, and the write goes through without waiting.
        assert lock.held
        with pytest.raises(DataDirLocked):
            lock_data_dir(str(data_dir))
        server.execute("COMMIT")
    finally:
        server.close()
        lock.release()


def test_dry_run_creates_no_directory(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without tmp/ and uploads/ (a data dir restored from a backup), a dry run makes neither,
    nor -wal or -shm beside trow.db (nobody has it open), nor trow.lock."""
    for name in ("tmp", "uploads"):
        for entry in os.listdir(data_dir / name):
            os.unlink(data_dir / name / entry)
        os.rmdir(data_dir / name)
    before = files(data_dir)
    assert sorted(name for name in before if "/" not in name) == [".", "blobs", "trow.db"]
    status, out, err = run_gc(capsys, "--data-dir", str(data_dir), "--dry-run")
    assert status == 0, err
    assert "would remove 1 blobs" in out
    assert files(data_dir) == before


def test_the_read_only_views_refuse_to_change_files(data_dir: Path) -> None:
    """What a dry run hands the collector: the same fields as the real stores (so the methods it
    inherits work), reads that work, and every change refused."""
    worker = InlineWorker()
    blobs = ReadOnlyBlobs(str(data_dir), worker)
    assert vars(blobs).keys() == vars(BlobStore(str(data_dir), worker)).keys()
    uploads = ReadOnlyUploads(str(data_dir), blobs, worker)
    assert vars(uploads).keys() == vars(UploadFiles(str(data_dir), blobs, worker)).keys()
    orphan = digest(blob("orphan"))
    assert orphan in result_of(blobs.walk())
    assert result_of(blobs.stat_many([orphan]))[orphan][0] == 1000
    before = files(data_dir)
    for call in (
        lambda: blobs.move_to_sync(orphan, str(data_dir / "tmp" / "aside")),
        lambda: blobs.remove_aside([str(data_dir / "tmp" / "aside")]),
        lambda: blobs.aside_name(),
        lambda: blobs.clean_tmp(),
        lambda: uploads.delete("some-upload"),
        lambda: uploads.remove_orphans(set()),
    ):
        with pytest.raises(RuntimeError, match="a dry run changes no file"):
            call()
    assert files(data_dir) == before


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_data_dir_of_replicas_is_refused(data_dir: Path, capsys: pytest.CaptureFixture[str], dry_run: bool) -> None:
    """Metadata in PostgreSQL (the trow.database mark): its trow.db is stale, and the replicas
    collect their own garbage. Refused, --dry-run included, with one line, nothing changed."""
    mark_shared(str(data_dir), "postgresql://db.example/trow")
    before = files(data_dir)
    status, out, err = run_gc(capsys, "--data-dir", str(data_dir), *(["--dry-run"] if dry_run else []))
    assert status == 1 and out == ""
    assert err.startswith("trow: error: data dir ") and err.count("\n") == 1
    assert "PostgreSQL (postgresql://db.example/trow)" in err and "inside the replicas" in err
    assert files(data_dir) == before


# -- the snapshot ------------------------------------------------------------------------------


def rows(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute("SELECT * FROM t ORDER BY x").fetchall()
    finally:
        conn.close()


def test_snapshot_beside_a_writer_reads_the_wal_and_never_waits(tmp_path: Path) -> None:
    """The committed rows, including those only in the WAL, and not the writer's open
    transaction; the writer, which would fail rather than wait, commits right after."""
    source = tmp_path / "db" / "trow.db"
    source.parent.mkdir()
    writer = server_connection(source)
    try:
        writer.execute("CREATE TABLE t (x INTEGER)")
        writer.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(3)])
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO t VALUES (99)")
        before = files(source.parent)
        assert os.path.getsize(str(source) + "-wal") > 0
        started = time.monotonic()
        snapshot_database(str(source), str(tmp_path / "copy.db"))
        assert time.monotonic() - started < 4
        assert files(source.parent) == before
        writer.execute("COMMIT")
    finally:
        writer.close()
    assert rows(tmp_path / "copy.db") == [(0,), (1,), (2,)]


def test_snapshot_of_a_closed_database_makes_no_file(tmp_path: Path) -> None:
    source = tmp_path / "db" / "trow.db"
    source.parent.mkdir()
    writer = server_connection(source)
    writer.execute("CREATE TABLE t (x INTEGER)")
    writer.execute("INSERT INTO t VALUES (1)")
    writer.close()
    before = files(source.parent)
    assert sorted(before) == [".", "trow.db"]
    snapshot_database(str(source), str(tmp_path / "copy.db"))
    assert files(source.parent) == before
    assert rows(tmp_path / "copy.db") == [(1,)]


def test_snapshot_is_taken_again_when_a_writer_opens_the_database_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that starts while the unlocked copy is read: that copy is not trusted, the next
    one goes through the WAL and has what the server committed."""
    source = tmp_path / "db" / "trow.db"
    source.parent.mkdir()
    first = server_connection(source)
    first.execute("CREATE TABLE t (x INTEGER)")
    first.execute("INSERT INTO t VALUES (1)")
    first.close()
    calls: list[str] = []
    real = sqlite_module._backup
    writer: list[sqlite3.Connection] = []

    def backup(uri: str, target: str) -> None:
        calls.append(uri.rsplit("?", 1)[1])
        real(uri, target)
        if not writer:
            writer.append(server_connection(source))
            writer[0].execute("INSERT INTO t VALUES (2)")

    monkeypatch.setattr(sqlite_module, "_backup", backup)
    try:
        snapshot_database(str(source), str(tmp_path / "copy.db"))
    finally:
        for conn in writer:
            conn.close()
    assert calls == ["immutable=1", "mode=ro"]
    assert rows(tmp_path / "copy.db") == [(1,), (2,)]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "--data-dir is required"),
        (["--data-dir"], "--data-dir"),
        (["--data-dir", "/nonexistent/trow"], "is not a directory"),
        (["--data-dir", "{empty}"], "is not a trow data dir"),
        (["--data-dir", "{data}", "--bogus"], "bogus"),
        (["--data-dir", "{data}", "extra"], "unexpected argument 'extra'"),
        (["--data-dir", "{data}", "--config", "{bad_config}"], "bad config: gc.grace"),
        (["--data-dir", "{data}", "--config", "/nonexistent.yaml"], "cannot read config file"),
    ],
)
def test_bad_arguments_get_one_line_and_status_1(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad.yaml"
    bad.write_text("gc:\n  grace: soon\n")
    filled = [a.format(empty=tmp_path / "empty", data=data_dir, bad_config=bad) for a in args]
    before = snapshot(data_dir)
    status, out, err = run_gc(capsys, *filled)
    assert status == 1 and out == ""
    assert err.startswith("trow: error: ") and err.count("\n") == 1, err
    assert message in err
    assert snapshot(data_dir) == before


def test_the_lock_is_exclusive_and_released() -> None:
    """Two holders never coexist, in one process or two; release lets the next one in."""
    import tempfile

    folder = tempfile.mkdtemp()
    first = lock_data_dir(folder)
    with pytest.raises(DataDirLocked, match="in use by another trow process"):
        lock_data_dir(folder)
    first.release()
    assert not first.held
    first.release()  # idempotent
    second = lock_data_dir(folder)
    assert second.held
    second.release()


# -- python -m trow ----------------------------------------------------------------------------


def test_no_command_prints_usage_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert entry.main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m trow <command>") and "gc" in err


def test_an_unknown_command_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert entry.main(["frobnicate"]) == 1
    err = capsys.readouterr().err
    assert "usage:" in err and err.rstrip().endswith("trow: error: unknown command 'frobnicate'")


def test_help_goes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert entry.main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: python -m trow")


def test_gc_is_dispatched(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert entry.main(["gc", "--data-dir", str(data_dir), "--dry-run"]) == 0
    assert "would remove 1 blobs" in capsys.readouterr().out
