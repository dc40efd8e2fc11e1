"""``python -m trow migrate`` in process: a data dir filled by a real registry (sqlite) copied
into a real PostgreSQL database, read back through both backends; re-runs, foreign targets,
the lock, the shared mark and bad input. (tests/integration/test_migrate.py runs it between a
real single-node trow and two real replicas.)"""

from __future__ import annotations

import io
import socket
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest
from psycopg import conninfo

import trow.migrate
from tests.unit.harness import open_postgres, result_of
from tests.unit.test_gc import CACHE, HOUR, World, blob, digest, run
from trow import __main__ as entry
from trow.migrate import TABLES, main
from trow.registry.service import UploadStarted
from trow.storage.lock import SHARED_MARK, DataDirLocked, lock_data_dir, shared_mark
from trow.storage.postgres import redact
from trow.storage.sqlite import SqliteMetadata
from trow.workers import InlineWorker

PASSWORD = "s3cret-Pa55"


@pytest.fixture
def source(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A data dir as a single-node trow leaves it: two pushed images (one tag moved), a cached
    image, a blob linked again later (its gc_links time differs from its link's), an upload
    session holding 5 bytes and one of an older trow (size -1, the file says 11 bytes)."""
    root = tmp_path / "data"
    world = World(str(root))
    world.clock.advance(-2 * HOUR)
    app_v1 = world.push_image("team/app", "v1", [blob("layer-a")])
    world.later(HOUR)
    app_v2 = world.push_image("team/app", "v2", [blob("layer-b"), blob("layer-a")])
    run(world.registry.put_manifest("team/app", "latest", None, world.content(app_v2)))  # type: ignore[arg-type]
    world.push_image("other/tool", "1.0", [blob("tool")])
    world.cache_image(CACHE, "stable", [blob("cached")])
    world.later(HOUR)
    world.push_blob("team/app", blob("layer-a"))  # linked again: gc_links moves, repo_blobs does not
    started = run(world.registry.start_upload("team/app", None, None))
    assert isinstance(started, UploadStarted)
    run(world.registry.append_upload("team/app", started.upload_id, b"hello", None))
    # Garbage collection's bookkeeping, a row or more in each table.
    result_of(world.metadata.gc_record_access([(CACHE, digest(blob("cached")), world.clock.seconds())]))
    result_of(world.metadata.gc_record_sizes({digest(blob("cached")): 1000}))
    result_of(world.metadata.gc_add_candidates([digest(blob("gone"))]))
    legacy = "00000000-0000-4000-8000-000000000001"
    (root / "uploads" / legacy).write_bytes(b"old session")
    world.metadata.close()
    with sqlite3.connect(str(root / "trow.db")) as db:
        db.execute("INSERT INTO uploads (uuid, repo, created, updated, size) VALUES (?, 'team/old', 1.5, 2.5, -1)", (legacy,))
        db.execute("INSERT INTO gc_quarantine (digest, path, since) VALUES ('sha256:00', '/data/tmp/gc/00', 3.5)")
        db.execute("INSERT INTO gc_swept (repo, digest, at) VALUES ('team/app', 'sha256:01', 4.5)")
    db.close()
    yield {
        "root": root,
        "app_v1": app_v1,
        "app_v2": app_v2,
        "upload": started.upload_id,
        "legacy": legacy,
    }


def migrate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the command in process: (status, stdout, stderr)."""
    out = io.StringIO()
    try:
        status = main(list(args), out=out)
    except SystemExit as e:
        status = int(e.code or 0)
    captured = capsys.readouterr()
    return status, out.getvalue() + captured.out, captured.err


def sqlite_rows(root: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(str(root / "trow.db"))
    try:
        return {t: sorted(conn.execute(f"SELECT {', '.join(c)} FROM {t}").fetchall()) for t, c in TABLES}
    finally:
        conn.close()


def pg_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return {t: sorted(conn.execute(f"SELECT {', '.join(c)} FROM {t}").fetchall()) for t, c in TABLES}


def with_password(url: str) -> str:
    """C{url} with a password: the test server trusts local connections and never asks for it,
    so the URL still works, and the password must never be printed."""
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)


@pytest.fixture
def target(pg_url: str) -> str:
    url = with_password(pg_url)
    assert PASSWORD in url and conninfo.conninfo_to_dict(url)["password"] == PASSWORD
    return url


def read_back(metadata: Any, s: dict[str, Any]) -> list[Any]:
    """What the registry sees through C{metadata}: manifests, tags, links, uploads, listings."""
    return [
        result_of(metadata.get_manifest("team/app", s["app_v1"])),
        result_of(metadata.resolve_tag("team/app", "latest")),
        result_of(metadata.resolve_tag(CACHE, "stable")),
        result_of(metadata.blob_linked("team/app", digest(blob("layer-b")))),
        result_of(metadata.blob_linked("other/tool", digest(blob("layer-b")))),
        result_of(metadata.get_upload(s["upload"])),
        result_of(metadata.list_tags("team/app", None, None)),
        result_of(metadata.catalog(None, None)),
        result_of(metadata.referrers("team/app", s["app_v1"])),
        result_of(metadata.upload_ids()),
    ]


def test_copies_every_row_and_reads_back_the_same(
    source: dict[str, Any], target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every row of every table arrives as it was; the registry's reads answer the same through
    PostgresMetadata as through SqliteMetadata; the summary counts rows and says what next."""
    root = source["root"]
    before = sqlite_rows(root)
    status, out, err = migrate(capsys, "--data-dir", str(root), "--to", target)
    assert status == 0, err
    assert err == ""
    after = pg_rows(target)
    for table, _ in TABLES:
        expected = before[table]
        if table == "uploads":
            # The older trow's session gets its file's size: replicas go by the recorded offset.
            expected = sorted((u, r, c, up, 11 if u == source["legacy"] else s) for u, r, c, up, s in expected)
        assert after[table] == expected, table
        assert f"  {table} " in out
    assert all(before[table] for table, _ in TABLES), "the fixture fills every table"
    total = sum(len(rows) for rows in before.values())
    assert f"total: {total} rows, {total} copied, 0 already there\n" in out
    assert "next: start the replicas with --data-dir" in out and "--database" in out

    sqlite_view = SqliteMetadata(str(root / "trow.db"), InlineWorker())
    postgres_view = open_postgres(target)
    try:
        expected_view = read_back(sqlite_view, source)
        assert read_back(postgres_view, source) == expected_view
        assert expected_view[0] is not None and expected_view[1].digest == source["app_v2"]
        assert result_of(postgres_view.get_upload(source["upload"])).size == 5
        assert result_of(postgres_view.get_upload(source["legacy"])).size == 11
        # The triggers are back on: a new link is recorded for garbage collection as usual.
        result_of(postgres_view.link_blob("new/repo", digest(blob("tool"))))
        links = result_of(postgres_view._read(lambda c: c.execute("SELECT count(*) FROM gc_links WHERE repo = 'new/repo'").fetchone()))
        assert links[0] == 1
    finally:
        sqlite_view.close()
        postgres_view.close()
    assert shared_mark(str(root)) == redact(target)


def test_the_data_dir_is_marked_shared_and_a_sqlite_server_refuses_it(
    source: dict[str, Any], target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = source["root"]
    assert shared_mark(str(root)) is None
    status, _, err = migrate(capsys, "--data-dir", str(root), "--to", target)
    assert status == 0, err
    assert (root / SHARED_MARK).read_text().strip() == redact(target)
    with pytest.raises(DataDirLocked, match="start trow with --database"):
        lock_data_dir(str(root))


def test_running_again_changes_nothing(source: dict[str, Any], target: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A second run on the same target (the data dir now marked for it) succeeds, copies nothing
    and reports every row as already there; no value moves (gc_links included: the link
    trigger must not fire on the rows found)."""
    root = source["root"]
    status, first, err = migrate(capsys, "--data-dir", str(root), "--to", target)
    assert status == 0, err
    copied = pg_rows(target)
    status, second, err = migrate(capsys, "--data-dir", str(root), "--to", target)
    assert status == 0, err
    assert pg_rows(target) == copied
    total = sum(len(rows) for rows in copied.values())
    assert f"total: {total} rows, 0 copied, {total} already there\n" in second
    assert "  repo_blobs " in second and ": 0 copied, " in second


def test_many_rows_in_batches(
    source: dict[str, Any], target: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """120k rows in one table, and small batches everywhere: every row arrives once."""
    root = source["root"]
    with sqlite3.connect(str(root / "trow.db")) as db:
        db.executemany(
            "INSERT INTO gc_sizes (digest, size) VALUES (?, ?)",
            ((f"sha256:{i:064x}", i) for i in range(120_000)),
        )
    db.close()
    monkeypatch.setattr(trow.migrate, "BATCH", 7_000)
    before = sqlite_rows(root)
    status, out, err = migrate(capsys, "--data-dir", str(root), "--to", target)
    assert status == 0, err
    with psycopg.connect(target) as conn:
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t, _ in TABLES}  # type: ignore[index]
    assert counts == {t: len(rows) for t, rows in before.items()}
    assert counts["gc_sizes"] > 120_000
    assert f"  gc_sizes       {counts['gc_sizes']} rows: {counts['gc_sizes']} copied, 0 already there" in out


def foreign_target(url: str, tmp_path: Path) -> str:
    """Fill C{url} with another registry's image (pushed through PostgresMetadata); return its
    manifest digest."""
    other = World(str(tmp_path / "elsewhere"), database=url)
    try:
        return other.push_image("elsewhere/app", "v9", [blob("elsewhere")])
    finally:
        other.metadata.close()


def test_a_foreign_target_is_refused_and_force_merges(
    source: dict[str, Any], target: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A database holding another registry's tags and manifests: refused, saying what is there
    and about --force, with nothing copied and no mark; --force copies this data dir's rows
    beside the others."""
    root = source["root"]
    elsewhere = foreign_target(target, tmp_path)
    theirs = pg_rows(target)
    status, out, err = migrate(capsys, "--data-dir", str(root), "--to", target)
    assert status == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("trow: error: the database ")
    assert "already holds metadata that is not from this data dir" in err
    assert "2 blob links, 1 manifests, 1 tags" in err and "1 tags" in err and "tag elsewhere/app:v9" in err and "--force" in err
    assert PASSWORD not in err
    assert pg_rows(target) == theirs, "a refused run copies nothing"
    assert shared_mark(str(root)) is None

    status, out, err = migrate(capsys, "--data-dir", str(root), "--to", target, "--force")
    assert status == 0, err
    merged = pg_rows(target)
    mine = sqlite_rows(root)
    for table in ("repo_blobs", "manifests", "manifest_refs", "tags"):
        assert set(theirs[table]) <= set(merged[table])
        assert set(mine[table]) <= set(merged[table])
    metadata = open_postgres(target)
    try:
        assert result_of(metadata.resolve_tag("elsewhere/app", "v9")).digest == elsewhere
        assert result_of(metadata.resolve_tag("team/app", "latest")).digest == source["app_v2"]
    finally:
        metadata.close()
    assert shared_mark(str(root)) == redact(target)


def test_a_target_that_lost_rows_since_the_migration_is_refused(
    source: dict[str, Any], target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """After the migration the replicas delete a tag; running the migration again would bring
    the tag back from the stale trow.db: refused (with --force it does)."""
    root = source["root"]
    status, _, err = migrate(capsys, "--data-dir", str(root), "--to", target)
    assert status == 0, err
    metadata = open_postgres(target)
    try:
        assert result_of(metadata.delete_tag("team/app", "v1"))
        status, out, err = migrate(capsys, "--data-dir", str(root), "--to", target)
        assert status == 1 and out == "" and err.count("\n") == 1
        assert "stale" in err and "--force" in err
        assert result_of(metadata.resolve_tag("team/app", "v1")) is None
        status, _, err = migrate(capsys, "--data-dir", str(root), "--to", target, "--force")
        assert status == 0, err
        assert result_of(metadata.resolve_tag("team/app", "v1")) is not None
    finally:
        metadata.close()


def test_refused_while_a_server_holds_the_data_dir(
    source: dict[str, Any], target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = source["root"]
    lock = lock_data_dir(str(root))
    try:
        status, out, err = migrate(capsys, "--data-dir", str(root), "--to", target)
    finally:
        lock.release()
    assert status == 1 and out == "" and err.count("\n") == 1
    assert "in use by another trow process" in err and "stop the single-node trow" in err
    assert shared_mark(str(root)) is None
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT to_regclass('trow_schema')").fetchone() == (None,), "nothing done there"


def test_refused_when_shared_with_another_database(
    source: dict[str, Any], target: str, capsys: pytest.CaptureFixture[str], postgres: Any
) -> None:
    root = source["root"]
    status, _, err = migrate(capsys, "--data-dir", str(root), "--to", target)
    assert status == 0, err
    other = postgres.fresh_database()
    status, out, err = migrate(capsys, "--data-dir", str(root), "--to", other)
    assert status == 1 and out == "" and err.count("\n") == 1
    assert "already shared by replicas whose metadata is in" in err and PASSWORD not in err


@pytest.mark.parametrize(
    "case",
    [
        "no data dir",
        "not a directory",
        "no trow.db",
        "no --to",
        "not a URL",
        "bad URL",
        "unparsable URL",
        "bad port",
        "unreachable",
        "extra argument",
    ],
)
def test_bad_input_is_one_line_and_status_1(
    case: str, source: dict[str, Any], target: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = str(source["root"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "file").write_text("x")
    closed = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{_free_port()}/trow"
    args = {
        "no data dir": ["--data-dir", str(tmp_path / "missing"), "--to", target],
        "not a directory": ["--data-dir", str(tmp_path / "file"), "--to", target],
        "no trow.db": ["--data-dir", str(empty), "--to", target],
        "no --to": ["--data-dir", root],
        "not a URL": ["--data-dir", root, "--to", f"mysql://root:{PASSWORD}@db/trow"],
        "bad URL": ["--data-dir", root, "--to", f"postgresql://postgres:{PASSWORD}@127.0.0.1/x?nope=1"],
        # libpq's own message quotes this URL whole, password and all.
        "unparsable URL": ["--data-dir", root, "--to", f"postgresql://postgres:{PASSWORD}@[::1/x"],
        "bad port": ["--data-dir", root, "--to", f"postgresql://postgres:{PASSWORD}@127.0.0.1:notaport/x"],
        "unreachable": ["--data-dir", root, "--to", closed],
        "extra argument": ["--data-dir", root, "--to", target, "surplus"],
    }[case]
    expected = {
        "no data dir": "is not a directory",
        "not a directory": "is not a directory",
        "no trow.db": "is not a trow data dir (it has no trow.db)",
        "no --to": "--to is required",
        "not a URL": "is not a PostgreSQL URL",
        "bad URL": 'is not a valid PostgreSQL URL: invalid URI query parameter: "nope"',
        "unparsable URL": "--to",
        "bad port": "the port 'notaport' is not a port number",
        "unreachable": "is unreachable",
        "extra argument": "unexpected argument",
    }[case]
    status, out, err = migrate(capsys, *args)
    assert status == 1 and out == ""
    assert err.startswith("trow: error: ") and err.count("\n") == 1, err
    assert expected in err
    assert PASSWORD not in err
    assert shared_mark(root) is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_no_password_in_any_output(source: dict[str, Any], target: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The password is in the URL given, and nowhere in what the command prints or writes."""
    root = source["root"]
    status, out, err = migrate(capsys, "--data-dir", str(root), "--to", target)
    assert status == 0, err
    assert PASSWORD not in out + err
    assert "postgres:***@" in out
    assert PASSWORD not in (root / SHARED_MARK).read_text()


def test_the_entry_point_dispatches_migrate(source: dict[str, Any], target: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert entry.main(["migrate", "--data-dir", str(source["root"]), "--to", target]) == 0
    assert "next: start the replicas" in capsys.readouterr().out
    entry.main(["--help"])
    assert "migrate" in capsys.readouterr().out


def test_an_unopened_target_is_left_unmigrated_by_a_missing_data_dir(
    target: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Input is checked before anything is connected to: a bad data dir leaves the database
    without even a schema."""
    status, _, _ = migrate(capsys, "--data-dir", str(tmp_path / "missing"), "--to", target)
    assert status == 1
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT to_regclass('trow_schema')").fetchone() == (None,)
