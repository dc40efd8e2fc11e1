"""``python -m trow gc`` as a real process, on a data dir a real trow wrote (issue 5).

A trow daemon stores an image, a blob no manifest references and an upload session left open;
it stops; the command removes the orphan and the session and keeps the image, which the
restarted trow still serves byte for byte. ``--dry-run`` changes no byte. The command refuses a
data dir another process holds, and gets it once that process is gone, however it died.

Beside a running trow (issue 12), ``--dry-run`` reports what a pass would remove now, changes no
file (name, size, mtime, bytes) and no row, and the server serves, and stores, throughout; without
``--dry-run`` the command is refused in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.integration.conftest import TrowProcess, trow_command

ROOT = Path(__file__).resolve().parents[2]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def gc_command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run C{python -m trow gc ARGS} with this interpreter, on this working tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "trow", "gc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def push_blob(trow: TrowProcess, repo: str, data: bytes) -> str:
    value = sha256(data)
    response = trow.request(
        "POST", f"/v2/{repo}/blobs/uploads/?digest={value}", headers=[("Content-Type", "application/octet-stream")], body=data
    )
    assert response.status == 201, response
    return value


def push_image(trow: TrowProcess, repo: str, tag: str) -> tuple[str, bytes, dict[str, bytes]]:
    """Config and one layer pushed monolithically, then the manifest: (digest, bytes, blobs)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "note": repo}).encode()
    layer = os.urandom(300_000)  # above the in-memory body limit: spooled through tmp/
    blobs = {push_blob(trow, repo, data): data for data in (config, layer)}
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(layer), "size": len(layer)}],
        }
    ).encode()
    response = trow.request("PUT", f"/v2/{repo}/manifests/{tag}", headers=[("Content-Type", OCI_MANIFEST)], body=manifest)
    assert response.status == 201, response
    return sha256(manifest), manifest, blobs


def blob_file(data_dir: Path, value: str) -> Path:
    algorithm, hexdigest = value.split(":", 1)
    return data_dir / "blobs" / algorithm / hexdigest[:2] / hexdigest


def tree(data_dir: Path) -> dict[str, str]:
    """Every file of the data dir with a hash of its content (the lock file aside)."""
    found = {}
    for folder, _, files in os.walk(data_dir):
        for name in files:
            if name == "trow.lock":
                continue
            path = Path(folder) / name
            found[str(path.relative_to(data_dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def stopped_trow(trow_factory: Callable[..., TrowProcess], tmp_path: Path) -> tuple[TrowProcess, dict[str, object]]:
    """A trow that stored an image, an orphan blob and an open upload session, then stopped."""
    trow = trow_factory()
    manifest_digest, manifest, blobs = push_image(trow, "team/app", "v1")
    orphan = push_blob(trow, "team/scratch", os.urandom(200_000))
    response = trow.request("POST", "/v2/team/app/blobs/uploads/")
    assert response.status == 202, response
    session = response.header("Location")
    assert session
    trow.stop_cleanly()
    config = tmp_path / "gc.yaml"
    config.write_text("gc:\n  grace: 0s\n  upload_expiry: 0s\n")
    return trow, {
        "manifest": manifest,
        "manifest_digest": manifest_digest,
        "blobs": blobs,
        "orphan": orphan,
        "session": session,
        "config": str(config),
    }


def test_gc_removes_the_orphan_and_the_stale_upload_and_keeps_the_image(
    stopped_trow: tuple[TrowProcess, dict[str, object]],
) -> None:
    trow, made = stopped_trow
    orphan = str(made["orphan"])
    assert blob_file(trow.data_dir, orphan).exists()
    uploads_before = os.listdir(trow.data_dir / "uploads")
    assert len(uploads_before) == 1

    result = gc_command("--data-dir", str(trow.data_dir), "--config", str(made["config"]))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert f"removed blob {orphan} (200000 bytes)" in result.stdout
    assert f"removed link team/scratch@{orphan}" in result.stdout
    assert f"removed upload {uploads_before[0]}" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("removed 1 blobs (200000 bytes), 1 uploads, 0 evicted manifests")
    assert not blob_file(trow.data_dir, orphan).exists()
    assert os.listdir(trow.data_dir / "uploads") == []
    assert os.listdir(trow.data_dir / "tmp") == []

    trow.start()
    assert_serves_the_image(trow, made)
    assert trow.request("GET", f"/v2/team/scratch/blobs/{orphan}").status == 404
    assert trow.request("GET", str(made["session"])).status == 404
    trow.stop_cleanly()


def test_dry_run_changes_no_byte(stopped_trow: tuple[TrowProcess, dict[str, object]]) -> None:
    trow, made = stopped_trow
    before = tree(trow.data_dir)
    result = gc_command("--data-dir", str(trow.data_dir), "--config", str(made["config"]), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"would remove blob {made['orphan']} (200000 bytes)" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("would remove 1 blobs (200000 bytes), 1 uploads")
    assert tree(trow.data_dir) == before


def test_refused_while_another_process_holds_the_data_dir_then_allowed(
    stopped_trow: tuple[TrowProcess, dict[str, object]],
) -> None:
    """A process holding the lock (standing in for a server) blocks the command; once it is
    killed (-9: no clean-up code runs) the kernel has dropped the lock and the command runs."""
    trow, made = stopped_trow
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from trow.storage.lock import lock_data_dir\n"
            "held = lock_data_dir(sys.argv[1])\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n",
            str(trow.data_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = tree(trow.data_dir)
        result = gc_command("--data-dir", str(trow.data_dir), "--config", str(made["config"]))
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.startswith("trow: error: data dir ") and result.stderr.count("\n") == 1
        assert "in use by another trow process" in result.stderr
        assert tree(trow.data_dir) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    result = gc_command("--data-dir", str(trow.data_dir), "--config", str(made["config"]))
    assert result.returncode == 0, result.stderr


def listing(data_dir: Path) -> dict[str, tuple[int, int, int, str]]:
    """The data dir and everything in it, trow.lock and trow.db's -wal and -shm included: inode,
    size, mtime (ns) and, for files, a hash of the bytes."""
    root = data_dir.lstat()
    found = {".": (root.st_ino, root.st_size, root.st_mtime_ns, "")}
    for folder, dirs, names in os.walk(data_dir):
        for name in dirs + names:
            path = Path(folder) / name
            st = path.lstat()
            content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
            found[str(path.relative_to(data_dir))] = (st.st_ino, st.st_size, st.st_mtime_ns, content)
    return found


def rows(data_dir: Path) -> dict[str, list[str]]:
    """Every row of every table of trow.db, read through a read-only connection."""
    conn = sqlite3.connect(f"file:{data_dir / 'trow.db'}?mode=ro", uri=True)
    try:
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {table: sorted(map(repr, conn.execute(f"SELECT * FROM {table}"))) for table in tables}
    finally:
        conn.close()


@pytest.fixture
def live_trow(trow_factory: Callable[..., TrowProcess], tmp_path: Path) -> tuple[TrowProcess, dict[str, object]]:
    """A running trow (its own GC off, gc.interval: 0) holding an image, two blobs no manifest
    references and an open upload session; with grace and upload expiry 0s, in the config the
    command reads too, all three are past due."""
    config = tmp_path / "gc.yaml"
    config.write_text("gc:\n  interval: 0\n  grace: 0s\n  upload_expiry: 0s\n")
    trow = trow_factory(extra_args=["--config", str(config)])
    manifest_digest, manifest, blobs = push_image(trow, "team/app", "v1")
    orphans = {push_blob(trow, "team/scratch", os.urandom(size)): size for size in (200_000, 3000)}
    response = trow.request("POST", "/v2/team/app/blobs/uploads/")
    assert response.status == 202, response
    time.sleep(0.05)  # past the grace period of 0s by the file system's clock too
    return trow, {"manifest": manifest, "blobs": blobs, "orphans": orphans, "config": str(config)}


def assert_serves_the_image(trow: TrowProcess, made: dict[str, object]) -> None:
    response = trow.request("GET", "/v2/team/app/manifests/v1", headers=[("Accept", OCI_MANIFEST)])
    assert response.status == 200 and response.body == made["manifest"]
    blobs = made["blobs"]
    assert isinstance(blobs, dict)
    for value, data in blobs.items():
        got = trow.request("GET", f"/v2/team/app/blobs/{value}")
        assert got.status == 200 and got.body == data


def test_dry_run_beside_a_running_server_reports_and_changes_nothing(
    live_trow: tuple[TrowProcess, dict[str, object]],
) -> None:
    trow, made = live_trow
    orphans = made["orphans"]
    assert isinstance(orphans, dict)
    session = os.listdir(trow.data_dir / "uploads")
    assert len(session) == 1
    assert (trow.data_dir / "trow.db-wal").exists()  # the server has the database open
    rows_before = rows(trow.data_dir)
    before = listing(trow.data_dir)

    command = [sys.executable, "-m", "trow", "gc", "--data-dir", str(trow.data_dir), "--config", str(made["config"])]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    dry = subprocess.Popen(
        command + ["--dry-run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL
    )
    # The server answers all along (requests that write nothing: the listing must not move).
    answered = 0
    while True:
        done = dry.poll() is not None
        assert trow.request("GET", "/v2/").status == 200
        catalog = trow.request("GET", "/v2/_catalog")
        assert catalog.status == 200 and "team/app" in catalog.json()["repositories"]
        answered += 1
        if done:
            break
    out, err = dry.communicate(timeout=60)
    assert dry.returncode == 0, err
    assert err == ""
    for value, size in orphans.items():
        assert f"would remove link team/scratch@{value}\n" in out
        assert f"would remove blob {value} ({size} bytes)\n" in out
    assert f"would remove upload {session[0]}\n" in out
    assert out.splitlines()[-1].startswith("would remove 2 blobs (203000 bytes), 1 uploads, 0 evicted manifests")
    assert answered >= 2

    assert listing(trow.data_dir) == before
    assert rows(trow.data_dir) == rows_before

    # Without --dry-run: refused in one line, since the server runs its own passes.
    refused = gc_command("--data-dir", str(trow.data_dir), "--config", str(made["config"]))
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("trow: error: data dir ")
    assert "in use by another trow process" in refused.stderr
    assert "runs its own garbage collection" in refused.stderr and "--dry-run" in refused.stderr
    assert listing(trow.data_dir) == before
    assert rows(trow.data_dir) == rows_before

    # Still serving, everything still there, and still storing.
    assert_serves_the_image(trow, made)
    for value in orphans:
        assert trow.request("GET", f"/v2/team/scratch/blobs/{value}").status == 200
    push_blob(trow, "team/after", b"after the dry run")
    assert trow.log().count("Traceback") == 0


def test_dry_runs_while_the_server_stores(live_trow: tuple[TrowProcess, dict[str, object]]) -> None:
    """Dry runs back to back while a client pushes blob after blob: every push succeeds (the
    snapshot never makes the server's db writes wait long enough to fail), every dry run succeeds
    and lists only blobs that no manifest references, and the last one, after the pushes, lists
    each of them."""
    trow, made = live_trow
    orphans = made["orphans"]
    assert isinstance(orphans, dict)
    pushed: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def pusher() -> None:
        try:
            while not stop.is_set():
                pushed.append(push_blob(trow, "team/busy", os.urandom(4096)))
        except BaseException as e:  # reported by the main thread
            failures.append(e)

    thread = threading.Thread(target=pusher)
    thread.start()
    reports = []
    try:
        for _ in range(3):
            result = gc_command("--data-dir", str(trow.data_dir), "--config", str(made["config"]), "--dry-run")
            assert result.returncode == 0, result.stderr
            reports.append(result.stdout)
    finally:
        stop.set()
        thread.join(60)
    assert not failures, failures
    assert len(pushed) >= 3
    blobs = made["blobs"]
    assert isinstance(blobs, dict)
    image = set(blobs)
    for report in reports:
        listed = {line.split()[3] for line in report.splitlines() if line.startswith("would remove blob ")}
        assert listed and not listed & image
        assert listed <= set(orphans) | set(pushed)
    final = gc_command("--data-dir", str(trow.data_dir), "--config", str(made["config"]), "--dry-run")
    assert final.returncode == 0, final.stderr
    listed = {line.split()[3] for line in final.stdout.splitlines() if line.startswith("would remove blob ")}
    assert listed == set(orphans) | set(pushed)
    assert_serves_the_image(trow, made)


def test_a_second_server_on_the_same_data_dir_is_refused(trow: TrowProcess) -> None:
    """Two trow processes on one data dir would each think they own it: the second one exits
    with one clear line before binding anything, and the first keeps serving."""
    second = subprocess.run(
        trow_command(["--listen", "tcp:0:interface=127.0.0.1", "--data-dir", str(trow.data_dir)]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    errors = [line for line in second.stderr.splitlines() if line.startswith("trow: error:")]
    assert len(errors) == 1 and "in use by another trow process" in errors[0], second.stderr
    assert trow.request("GET", "/v2/").status == 200
