"""Push and pull real images with skopeo: every digest survives the round trip, byte-exact."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import struct
import termios
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.images import OCI_INDEX, OCI_MANIFEST, Layout
from tests.integration.conftest import (
    LOOPBACK,
    MIB,
    Images,
    Skopeo,
    StreamingRequest,
    TrowProcess,
    assert_same_image,
    digest_of_stream,
    layout_blob,
    layout_ref,
)

BIG_LAYER_SIZE = 1 << 30  # 1 GiB of layer content
PEAK_RSS_LIMIT = 200 * 10**6  # bytes: "under 200 MB"
# How far trow may read a blob ahead of a client that reads nothing: the connection's kernel
# buffers (a few MiB each way on loopback), Twisted's write buffer and a chunk read ahead.
READ_AHEAD_LIMIT = 64 * MIB


def test_multi_layer_image_round_trip(shared_trow: TrowProcess, images: Images, skopeo: Skopeo, tmp_path: Path) -> None:
    """A multi-layer image pushed with skopeo comes back with the same manifest, config and
    layers, byte for byte, and trow serves the manifest exactly as it was pushed."""
    ref = shared_trow.ref("roundtrip/multi:v1")
    skopeo.push(images.source("multi"), ref)

    pulled = tmp_path / "pulled"
    skopeo.pull(ref, f"oci:{pulled}:v1")

    compared = assert_same_image(images.layout, "multi", pulled, "v1")
    assert len(compared) == 1 + 1 + 3, "manifest, config and three layers"
    assert skopeo.inspect_raw(ref, "--tls-verify=false") == images.manifest_bytes("multi")
    by_digest = shared_trow.ref(f"roundtrip/multi@{images.refs['multi']['digest']}")
    assert skopeo.inspect_raw(by_digest, "--tls-verify=false") == images.manifest_bytes("multi")


def test_index_round_trip_with_all(shared_trow: TrowProcess, images: Images, skopeo: Skopeo, tmp_path: Path) -> None:
    """An OCI index of two platform images, copied with C{--all} both ways, keeps the digest of
    the index, of both image manifests, and of every config and layer."""
    ref = shared_trow.ref("roundtrip/multiarch:v1")
    skopeo.push(images.source("multiarch"), ref, "--all")

    pulled = tmp_path / "pulled"
    skopeo.pull(ref, f"oci:{pulled}:v1", "--all")

    compared = assert_same_image(images.layout, "multiarch", pulled, "v1")
    assert len(compared) == 1 + 2 * (1 + 1 + 2), "index, then per platform: manifest, config, two layers"
    served = skopeo.inspect_raw(ref, "--tls-verify=false")
    assert served == images.manifest_bytes("multiarch")
    assert json.loads(served)["mediaType"] == OCI_INDEX
    platforms = {m["platform"]["architecture"] for m in json.loads(served)["manifests"]}
    assert platforms == {"amd64", "arm64"}


@pytest.fixture
def big_image(tmp_path: Path) -> Iterator[Path]:
    """A layout with one image whose single gzip layer holds about 1 GiB, written in chunks.

    The layout and the pulled copy (C{big-pulled} beside it) are removed afterwards: pytest
    keeps the temp dirs of recent runs, and gigabytes should not pile up there.
    """
    path = tmp_path / "big-src"
    Layout(str(path)).image([], tag="big", big_gzip=[BIG_LAYER_SIZE])
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(tmp_path / "big-pulled", ignore_errors=True)


def test_large_image_round_trip_in_flat_memory(
    trow_factory: Callable[..., TrowProcess], big_image: Path, skopeo: Skopeo, tmp_path: Path
) -> None:
    """A 1 GiB layer goes up and comes back down intact, and trow's peak resident memory stays
    far below the blob size: uploads are spooled to disk and downloads streamed with
    backpressure, never held whole in memory."""
    trow = trow_factory("big")
    ref = trow.ref("big/image:v1")

    skopeo.push(f"oci:{big_image}:big", ref)
    peak_after_push = trow.peak_rss_bytes()

    pulled = tmp_path / "big-pulled"
    skopeo.pull(ref, f"oci:{pulled}:v1")
    peak_after_pull = trow.peak_rss_bytes()

    manifest = json.loads(layout_blob(big_image, layout_ref(big_image, "big")["digest"]).read_bytes())
    assert manifest["mediaType"] == OCI_MANIFEST
    (layer,) = manifest["layers"]
    assert layer["size"] >= BIG_LAYER_SIZE
    assert_same_image(big_image, "big", pulled, "v1")
    assert peak_after_push < PEAK_RSS_LIMIT, f"trow peaked at {peak_after_push / 1e6:.0f} MB during a 1 GiB push"
    assert peak_after_pull < PEAK_RSS_LIMIT, f"trow peaked at {peak_after_pull / 1e6:.0f} MB during a 1 GiB pull"


def test_slow_reader_keeps_memory_flat(trow_factory: Callable[..., TrowProcess]) -> None:
    """A client that stops reading a 300 MiB blob after the response header holds trow to about a socket
    buffer of it: downloads are paced by the client (backpressure), never read ahead into memory.
    The blob then arrives complete once the client reads on."""
    trow = trow_factory("slow")
    size = 300 * MIB
    digest = digest_of_stream(size, 21)
    pushed = StreamingRequest(trow, "POST", f"/v2/slow/blob/blobs/uploads/?digest={digest}", size, 21).finish()
    assert pushed.status == 201, pushed

    assert trow.port is not None
    with socket.create_connection((LOOPBACK, trow.port), timeout=60) as sock:
        sock.sendall(f"GET /v2/slow/blob/blobs/{digest} HTTP/1.1\r\nHost: {trow.host}\r\nConnection: close\r\n\r\n".encode())
        head = bytearray()
        while b"\r\n\r\n" not in head:
            data = sock.recv(65536)
            assert data, "the connection closed before the response header"
            head += data
        header, _, body = bytes(head).partition(b"\r\n\r\n")
        assert header.startswith(b"HTTP/1.1 200"), header
        # Stall: a server that ignored backpressure would now read the rest into memory.
        read_ahead = _stalled_read_position(trow, blob_file(trow, digest), sock, size)
        peak_while_stalled = trow.peak_rss_bytes()
        h = hashlib.sha256(body)
        received = len(body)
        while data := sock.recv(MIB):
            h.update(data)
            received += len(data)
    assert received == size
    assert "sha256:" + h.hexdigest() == digest
    assert read_ahead > 0, "trow never read the blob's file: the test watches the wrong file"
    assert read_ahead < READ_AHEAD_LIMIT, f"trow read {read_ahead / MIB:.0f} MiB of the blob for a client that read none"
    assert peak_while_stalled < PEAK_RSS_LIMIT, f"trow peaked at {peak_while_stalled / 1e6:.0f} MB for a stalled reader"


def blob_file(trow: TrowProcess, digest: str) -> Path:
    """Where trow keeps a pushed blob (the layout of trow/storage/blobs.py)."""
    algorithm, hexdigest = digest.split(":", 1)
    return trow.data_dir / "blobs" / algorithm / hexdigest[:2] / hexdigest


def read_position(trow: TrowProcess, path: Path) -> int:
    """How far trow has read the file C{path}: the offset of its descriptor (0 if not open)."""
    wanted = os.path.realpath(path)
    for fd in os.listdir(f"/proc/{trow.pid}/fd"):
        try:
            if os.readlink(f"/proc/{trow.pid}/fd/{fd}") != wanted:
                continue
            with open(f"/proc/{trow.pid}/fdinfo/{fd}") as info:
                for line in info:
                    if line.startswith("pos:"):
                        return int(line.split()[1])
        except OSError:  # closed meanwhile
            continue
    return 0


def _stalled_read_position(trow: TrowProcess, path: Path, sock: socket.socket, size: int, timeout: float = 60.0) -> int:
    """Wait, while the client reads nothing, until trow has read from C{path} all it is going to,
    and return how far that is.

    No fixed sleep: trow's reading is watched through its own progress. Each round asks trow for
    C{/v2/} (one more turn of its reactor, where each chunk read is handed on and the next one
    started) and looks at how far trow has read the file and how much waits in our receive
    buffer. When neither moves over three rounds in a row while our buffer holds data, trow has
    stopped: a server that ignored backpressure moves on at every turn until it has read the whole
    blob, and is caught there at once.
    """
    deadline = time.monotonic() + timeout
    last: tuple[int, int] | None = None
    still = 0
    while True:
        position = read_position(trow, path)
        if position >= size:
            return position  # read to the end for a client that took nothing
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, struct.pack("i", 0)))[0]
        state = (position, queued)
        still = still + 1 if state == last and queued > 0 else 0
        if still == 3:
            return position
        last = state
        if time.monotonic() > deadline:
            pytest.fail(f"trow's read of the blob never came to rest: at {position}, {queued} bytes waiting")
        assert trow.request("GET", "/v2/").status == 200
