"""``python -m trow gc`` in process: arguments, the data-dir lock, what it prints, and --dry-run
changing nothing. (tests/integration/test_gc.py runs it as a real process on a real trow's data.)"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import time
from pathlib import Path

import pytest

from tests.unit.test_gc import CACHE, HOUR, World, blob, digest, run
from trow import __main__ as entry
from trow.gccli import main
from trow.storage.lock import DataDirLocked, lock_data_dir

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
    assert err.count("\n") == 1
    assert snapshot(data_dir) == before


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
