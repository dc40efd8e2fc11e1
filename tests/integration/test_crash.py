"""Crash safety: kill -9 at the worst moments, restart on the same data dir, lose nothing committed.

reference.md section 7: writes land in a temporary file and are renamed into place, nothing
partial is ever visible, and after a kill -9 and a restart leftovers are cleaned and nothing
committed is lost.
"""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from tests.images import pseudo_random_chunks
from tests.integration.conftest import (
    LOOPBACK,
    MIB,
    Images,
    Skopeo,
    StreamingRequest,
    TrowProcess,
    assert_same_image,
    digest_of_stream,
    get_and_hash,
)

UPLOAD_SIZE = 300 * MIB
SEED = 42
# Kill once this much was sent and trow has visibly written part of it to disk.
KILL_AFTER_SENT = 96 * MIB
KILL_AFTER_ON_DISK = 16 * MIB


def path_of(location: str) -> str:
    """The path (and query) of a Location header, relative or absolute."""
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def start_upload(trow: TrowProcess, repo: str) -> str:
    """POST a new upload session; returns its Location path."""
    response = trow.request("POST", f"/v2/{repo}/blobs/uploads/")
    assert response.status == 202, response
    location = response.header("Location")
    assert location, response
    return path_of(location)


def spooled_bytes(trow: TrowProcess) -> int:
    """The largest file in the data dir's tmp/ (a request body being received)."""
    sizes = [0]
    for entry in (trow.data_dir / "tmp").iterdir():
        try:
            sizes.append(entry.stat().st_size)
        except FileNotFoundError:  # renamed or removed since the listing
            pass
    return max(sizes)


def test_kill_during_big_upload(
    trow_factory: Callable[..., TrowProcess], images: Images, skopeo: Skopeo, tmp_path: Path
) -> None:
    """kill -9 in the middle of a streamed 300 MiB PATCH: after a restart the images pushed
    before still pull byte-exact, the interrupted blob is not visible, tmp/ has been cleaned,
    and pushing the same blob again works."""
    trow = trow_factory("crash")
    skopeo.push(images.source("multi"), trow.ref("before/crash:v1"))
    digest = digest_of_stream(UPLOAD_SIZE, SEED)

    upload = StreamingRequest(trow, "PATCH", start_upload(trow, "crash/blob"), UPLOAD_SIZE, SEED)
    try:
        reached = upload.send_until(lambda: upload.sent >= KILL_AFTER_SENT and spooled_bytes(trow) >= KILL_AFTER_ON_DISK)
        assert reached, f"trow wrote only {spooled_bytes(trow)} bytes to tmp/ while {upload.sent} were sent"
        trow.kill()
    finally:
        upload.abandon()
    assert trow.tmp_entries(), "the crash should have left a partial body in tmp/ (or the test kills too late)"

    trow.start()
    assert trow.tmp_entries() == [], "tmp/ must be cleaned at start-up"
    head = trow.request("HEAD", f"/v2/crash/blob/blobs/{digest}")
    assert head.status == 404, head
    get = trow.request("GET", f"/v2/crash/blob/blobs/{digest}")
    assert get.status == 404 and get.error_codes() == ["BLOB_UNKNOWN"], get

    pulled = tmp_path / "pulled"
    skopeo.pull(trow.ref("before/crash:v1"), f"oci:{pulled}:v1")
    assert_same_image(images.layout, "multi", pulled, "v1")

    # The same blob, pushed again from scratch, goes through.
    location = start_upload(trow, "crash/blob")
    patched = StreamingRequest(trow, "PATCH", location, UPLOAD_SIZE, SEED).finish()
    assert patched.status == 202, patched
    assert patched.header("Range") == f"0-{UPLOAD_SIZE - 1}"
    put_path = path_of(patched.header("Location") or location)
    put = trow.request("PUT", f"{put_path}{'&' if '?' in put_path else '?'}digest={digest}")
    assert put.status == 201, put
    assert put.header("Docker-Content-Digest") == digest

    head = trow.request("HEAD", f"/v2/crash/blob/blobs/{digest}")
    assert head.status == 200, head
    assert head.header("Content-Length") == str(UPLOAD_SIZE)
    assert get_and_hash(trow, f"/v2/crash/blob/blobs/{digest}") == (200, digest, UPLOAD_SIZE)
    assert trow.tmp_entries() == [], "a finished upload leaves nothing in tmp/"


def test_kill_right_after_push(
    trow_factory: Callable[..., TrowProcess], images: Images, skopeo: Skopeo, tmp_path: Path
) -> None:
    """kill -9 the moment skopeo reports success: everything it pushed (an image and an index,
    with their tags) is served byte-exact after a restart, and after a further orderly restart."""
    trow = trow_factory("crash")
    skopeo.push(images.source("multi"), trow.ref("committed/multi:v1"))
    skopeo.push(images.source("multiarch"), trow.ref("committed/multiarch:v1"), "--all")
    trow.kill()

    trow.start()
    pulled = tmp_path / "pulled"
    skopeo.pull(trow.ref("committed/multi:v1"), f"oci:{pulled}:multi")
    skopeo.pull(trow.ref("committed/multiarch:v1"), f"oci:{pulled}:multiarch", "--all")
    assert_same_image(images.layout, "multi", pulled, "multi")
    assert_same_image(images.layout, "multiarch", pulled, "multiarch")
    assert skopeo.inspect_raw(trow.ref("committed/multi:v1"), "--tls-verify=false") == images.manifest_bytes("multi")
    tags = trow.request("GET", "/v2/committed/multiarch/tags/list")
    assert tags.status == 200 and tags.json()["tags"] == ["v1"], tags

    trow.restart()  # SIGTERM this time, then start again on the same data dir
    assert skopeo.inspect_raw(trow.ref("committed/multiarch:v1"), "--tls-verify=false") == images.manifest_bytes(
        "multiarch"
    )


def chunk_of(size: int, seed: int) -> bytes:
    return b"".join(pseudo_random_chunks(size, seed))


def test_upload_session_resumes_after_kill(trow_factory: Callable[..., TrowProcess]) -> None:
    """A chunk that was acknowledged (202) survives a kill -9: after the restart the session
    reports its offset, takes the next chunk, and finishes into the right blob."""
    trow = trow_factory("resume")
    first, second = chunk_of(3 * MIB + 17, 5), chunk_of(2 * MIB + 3, 6)
    digest = "sha256:" + hashlib.sha256(first + second).hexdigest()

    location = start_upload(trow, "resume/blob")
    patched = trow.request(
        "PATCH",
        location,
        headers=[("Content-Type", "application/octet-stream"), ("Content-Range", f"0-{len(first) - 1}")],
        body=first,
    )
    assert patched.status == 202, patched
    location = path_of(patched.header("Location") or location)
    trow.kill()

    trow.start()
    status = trow.request("GET", location)
    assert status.status == 204, status
    assert status.header("Range") == f"0-{len(first) - 1}"
    patched = trow.request(
        "PATCH",
        location,
        headers=[
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", f"{len(first)}-{len(first) + len(second) - 1}"),
        ],
        body=second,
    )
    assert patched.status == 202, patched
    location = path_of(patched.header("Location") or location)
    put = trow.request("PUT", f"{location}{'&' if '?' in location else '?'}digest={digest}")
    assert put.status == 201, put
    blob = trow.request("GET", f"/v2/resume/blob/blobs/{digest}")
    assert blob.status == 200 and blob.body == first + second


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll C{condition} until it holds or C{timeout} passes (a deadline, not a timing claim)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_clients_that_hang_up_leave_nothing_behind(trow_factory: Callable[..., TrowProcess]) -> None:
    """Clients that go away in the middle of a download or an upload cost nothing lasting: the
    half-received body is removed from tmp/, the blob stays intact, and trow keeps serving and
    then stops cleanly."""
    trow = trow_factory("hangup")
    size = 64 * MIB
    digest = digest_of_stream(size, 9)
    location = start_upload(trow, "hangup/blob")
    done = StreamingRequest(trow, "PATCH", location, size, 9).finish()
    assert done.status == 202, done
    location = path_of(done.header("Location") or location)
    assert trow.request("PUT", f"{location}{'&' if '?' in location else '?'}digest={digest}").status == 201

    # A download abandoned after its first MiB.
    assert trow.port is not None
    with socket.create_connection((LOOPBACK, trow.port), timeout=30) as sock:
        sock.sendall(f"GET /v2/hangup/blob/blobs/{digest} HTTP/1.1\r\nHost: {trow.host}\r\n\r\n".encode())
        received = 0
        while received < MIB:
            data = sock.recv(65536)
            assert data, "trow closed the download early"
            received += len(data)

    # An upload abandoned after a quarter of its body.
    upload = StreamingRequest(trow, "PATCH", start_upload(trow, "hangup/other"), size, 10)
    assert upload.send_until(lambda: upload.sent >= size // 4)
    upload.abandon()

    assert wait_until(lambda: trow.tmp_entries() == []), f"tmp/ still holds {trow.tmp_entries()}"
    assert trow.request("GET", "/healthz").status == 200
    assert get_and_hash(trow, f"/v2/hangup/blob/blobs/{digest}") == (200, digest, size)
    trow.stop_cleanly()
