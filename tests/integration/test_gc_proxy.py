"""Garbage collection and metrics of the pull-through cache, on a real trow (issue 5, point 7).

reference.md sections 5 and 7, trow/registry/gc.py: above C{registry_proxies.max_size} the
collector evicts the least recently used cached content, never what a client is being served
(C{Registry.reading}) or what is downloading (C{Fetcher.downloads}), and never pushed content.

Everything is real: a C{twistd trow} child process, Debian's C{docker-registry} as the upstream
(one of this module's own, holding small images pushed with raw HTTP), skopeo and raw sockets as
clients, all on 127.0.0.1. GC runs every second (C{gc: {interval: 1s, grace: 1s, settle: 1s}}),
so the tests wait for state changes (files gone, counters moved) with deadlines and never assert
on how long anything took. A "slow" client is a raw socket with a small receive buffer that reads
a few KiB at a time, so that its response outlives several GC passes; it keeps reading more
slowly still when little of the body is left, so that trow is still sending (not just the
kernel's socket buffers) when the test looks.

Covered: eviction while an uncached, and a cached, blob is streamed slowly (the stream is whole
and right, the file stays while it is sent and goes afterwards); a pull while evicted files wait
out C{settle} in quarantine (they are put back, not fetched again) and a kill -9 at that moment;
pushed content never evicted (nor a cached blob a pushed image shares); the proxy's metrics over
two skopeo pulls, and the eviction counters (bytes, and blobs cached by digest alone); no
warning, error or traceback in any trow log.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.images import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, gzip_layer, pseudo_random_chunks
from tests.integration.conftest import (
    LOOPBACK,
    MIB,
    Skopeo,
    TrowProcess,
    get_and_hash,
)
from tests.integration.test_metrics import metrics_port, sample, scrape
from tests.integration.upstream import (
    ALIAS,
    DEADLINE,
    Distribution,
    UpstreamLog,
    assert_clean_log,
    cached_blob_path,
    proxy_entry,
    wait_until,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

GC = {"interval": "1s", "grace": "1s", "settle": "1s"}
# Size of each "fill" image's one layer: the unit the tests fill the cache with.
FILL_LAYER = 1 * MIB
# The blobs read slowly: far more than the ~4 MiB a loopback connection can buffer, so that trow
# is still reading its file while the test checks what GC did.
STREAM_LAYER = 16 * MIB
# Once this little of a slow stream is left unread, read even more slowly: the kernel may hold up
# to ~4 MiB of it, trow must still be sending the rest when the test looks.
KEEP_UNREAD = 7 * MIB
# A response to a slow reader is checked this often (between reads).
STEP_READS = 4


# -- upstream content ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    """A blob pushed upstream (its bytes are kept: everything here is a few MiB)."""

    digest: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class UpImage:
    """An OCI image (config, then layers) pushed upstream as C{repo:tag}."""

    repo: str
    tag: str
    manifest: bytes
    digest: str
    blobs: tuple[Blob, ...]

    @property
    def layer(self) -> Blob:
        return self.blobs[-1]

    def manifest_path(self, reference: str | None = None) -> str:
        """The path of this image's manifest through trow's alias (C{f/up/...})."""
        return f"/v2/f/{ALIAS}/{self.repo}/manifests/{reference or self.tag}"

    def blob_path(self, digest: str) -> str:
        return f"/v2/f/{ALIAS}/{self.repo}/blobs/{digest}"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_image(repo: str, layers: list[bytes], layer_type: str = OCI_LAYER, tag: str = "v1") -> UpImage:
    """An image of C{layers} whose config names C{repo} (so that every image has its own)."""
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "comment": repo}
    ).encode()
    blobs = tuple(Blob(sha256(data), data) for data in [config, *layers])
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": blobs[0].digest, "size": blobs[0].size},
            "layers": [{"mediaType": layer_type, "digest": b.digest, "size": b.size} for b in blobs[1:]],
        }
    ).encode()
    return UpImage(repo, tag, manifest, sha256(manifest), blobs)


def random_bytes(size: int, seed: int) -> bytes:
    return b"".join(pseudo_random_chunks(size, seed))


def push_manifest(port: int, repo: str, reference: str, manifest: bytes) -> None:
    """PUT an OCI manifest (raw HTTP) to a registry on 127.0.0.1:C{port}; expects 201."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    try:
        connection.request("PUT", f"/v2/{repo}/manifests/{reference}", body=manifest, headers={"Content-Type": OCI_MANIFEST})
        response = connection.getresponse()
        body = response.read()
        assert response.status == 201, f"manifest PUT {repo}:{reference}: {response.status} {body!r}"
    finally:
        connection.close()


def push_upstream(registry: Distribution, image: UpImage) -> UpImage:
    """Push an image's blobs (monolithic) and manifest to the upstream registry."""
    for blob in image.blobs:
        registry.push_blob(image.repo, [blob.data], blob.size, blob.digest)
    push_manifest(registry.port, image.repo, image.tag, image.manifest)
    return image


@dataclass
class GcUpstream:
    """This module's upstream registry and the images it holds."""

    registry: Distribution
    # fill/n0 ... fill/n9: one FILL_LAYER of its own each
    fills: list[UpImage]
    # stream/big and stream/cached: one STREAM_LAYER of its own each
    big: UpImage
    cached: UpImage
    # metrics/app: two small gzip layers (a real image skopeo handles)
    app: UpImage


@pytest.fixture(scope="module")
def gc_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcUpstream]:
    """A docker-registry of this module's own (the session one holds 260 MiB we do not need)."""
    registry = Distribution(tmp_path_factory.mktemp("gc-upstream"))
    registry.start()
    try:
        fills = [push_upstream(registry, make_image(f"fill/n{i}", [random_bytes(FILL_LAYER, 1000 + i)])) for i in range(10)]
        big = push_upstream(registry, make_image("stream/big", [random_bytes(STREAM_LAYER, 2000)]))
        cached = push_upstream(registry, make_image("stream/cached", [random_bytes(STREAM_LAYER, 3000)]))
        app_layers = [
            gzip_layer({"etc/app.conf": b"metrics test\n"}),
            gzip_layer({"bin/data": random_bytes(300_000, 4000)}),
        ]
        app = push_upstream(registry, make_image("metrics/app", app_layers, layer_type="application/vnd.oci.image.layer.v1.tar+gzip"))
        yield GcUpstream(registry, fills, big, cached, app)
    finally:
        registry.stop()


# -- trow ----------------------------------------------------------------------------------------


def start_gc_trow(
    trow_factory: Callable[..., TrowProcess],
    tmp_path: Path,
    upstream: GcUpstream,
    name: str,
    max_size: str | None,
    gc: dict[str, str] | None = None,
) -> tuple[TrowProcess, int]:
    """A trow proxying the upstream as C{up}, with GC every second (or the C{gc} section given),
    C{max_size} and a metrics listener; returns it and the metrics port."""
    section: dict[str, Any] = {"registries": [proxy_entry(upstream.registry.host)]}
    if max_size is not None:
        section["max_size"] = max_size
    config = tmp_path / f"{name}-config.yml"
    config.write_text(json.dumps({"registry_proxies": section, "gc": gc or GC}, indent=2))
    trow = trow_factory(name, extra_args=["--config", str(config), "--metrics-listen", f"tcp:0:interface={LOOPBACK}"])
    return trow, metrics_port(trow)


def pull_raw(trow: TrowProcess, image: UpImage) -> None:
    """Pull an image through trow as a client does (manifest by tag, then every blob), checking
    every byte."""
    response = trow.request("GET", image.manifest_path(), headers=[("Accept", OCI_MANIFEST)], timeout=DEADLINE)
    assert response.status == 200, response
    assert response.body == image.manifest and response.header("Docker-Content-Digest") == image.digest
    for blob in image.blobs:
        assert get_and_hash(trow, image.blob_path(blob.digest)) == (200, blob.digest, blob.size)


def gc_ok(samples: Samples) -> float:
    return sample(samples, "trow_gc_runs_total", result="ok")


def wait_gc_passes(port: int, count: int, timeout: float = DEADLINE) -> Samples:
    """Wait until C{count} more GC passes have ended successfully; returns the last scrape."""
    target = gc_ok(scrape(port)) + count
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if gc_ok(samples) >= target:
            return samples
        assert sample(samples, "trow_gc_runs_total", result="failed") == 0, "a GC pass failed"
        assert time.monotonic() < deadline, f"fewer than {count} GC passes within {timeout:.0f}s"
        time.sleep(0.1)


_BAD_LINE = re.compile(r"#(?:warn|error|critical)\]|Traceback|Unhandled")


def finish_cleanly(trow: TrowProcess) -> None:
    """Stop trow (SIGTERM: an orderly shutdown) and check that no run of it logged a traceback,
    an unhandled error, or anything at warn level or above: in these tests every client is
    served right, so any such line is a failure that no response showed."""
    trow.stop_cleanly()
    assert_clean_log(trow)
    for log in sorted(trow.workdir.glob("trow-*.log")):
        bad = [line for line in log.read_text(errors="replace").splitlines() if _BAD_LINE.search(line)]
        assert bad == [], f"{log.name}:\n" + "\n".join(bad[:20])


def stored(trow: TrowProcess, digest: str) -> bool:
    """Is the blob file of C{digest} in C{<data-dir>/blobs/}?"""
    return cached_blob_path(trow, digest).exists()


# -- a client that reads slowly ------------------------------------------------------------------


class SlowReader:
    """A blob GET on a raw socket with a small receive buffer, read a little at a time."""

    def __init__(self, port: int, path: str, chunk: int = 32 * 1024, pause: float = 0.02) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        self.sock.settimeout(DEADLINE)
        self.sock.connect((LOOPBACK, port))
        self.chunk = chunk
        self.pause = pause
        request = f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nConnection: close\r\n\r\n"
        self.sock.sendall(request.encode())
        head = bytearray()
        while b"\r\n\r\n" not in head:
            data = self.sock.recv(4096)
            assert data, f"connection closed before the response headers: {bytes(head)!r}"
            head += data
        status_line, _, rest = bytes(head).partition(b"\r\n\r\n")
        lines = status_line.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        self.length = int(self.headers.get("content-length", "-1"))
        self.hash = hashlib.sha256(rest)
        self.received = len(rest)
        self.ended = False

    @property
    def unread(self) -> int:
        return self.length - self.received

    def step(self) -> None:
        """Read a little, then pause; much less, and a longer pause, near the end of the body."""
        near_end = self.unread < KEEP_UNREAD
        self._recv(4096 if near_end else self.chunk)
        time.sleep(0.1 if near_end else self.pause)

    def _recv(self, size: int) -> None:
        if self.ended:
            return
        data = self.sock.recv(size)
        if not data:
            self.ended = True
            return
        self.received += len(data)
        self.hash.update(data)

    def read_while(self, waiting: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
        """Keep reading slowly until C{waiting()} is false; the body must not end before."""
        deadline = time.monotonic() + timeout
        while waiting():
            assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
            for _ in range(STEP_READS):
                self.step()
            assert not self.ended and self.unread > 0, f"{what}: the slow stream ended first"

    def finish(self) -> tuple[int, str, int]:
        """Read the rest at full speed: (status, sha256 digest, body length)."""
        while not self.ended:
            self._recv(MIB)
        self.sock.close()
        return self.status, "sha256:" + self.hash.hexdigest(), self.received


# -- 1. eviction under a slow stream ----------------------------------------------------------


def test_eviction_while_an_uncached_blob_streams_slowly(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, gc_upstream: GcUpstream
) -> None:
    """max_size 3 MiB. Two 1 MiB images are cached (no eviction below max_size). A client then
    reads the uncached 16 MiB layer of another image very slowly while other images are pulled:
    GC evicts the older images (their blob files go, the eviction counter moves) and, since the
    streamed blob is itself the least recently used once the new images arrive, its link too,
    while its file stays as long as it is being sent. The slow client gets every byte right; the
    file goes once the stream has ended; a later GET of the blob (re-fetched) is still right, and
    an evicted manifest asked for by digest is fetched again (it left the in-memory cache too)."""
    trow, port = start_gc_trow(trow_factory, tmp_path, gc_upstream, "uncached", max_size="3MiB")
    old, new = gc_upstream.fills[:2], gc_upstream.fills[2:4]
    big = gc_upstream.big
    for image in old:
        pull_raw(trow, image)
    samples = wait_gc_passes(port, 2)
    assert sample(samples, "trow_cache_evictions_total") == 0, "evicted below max_size"
    assert all(stored(trow, b.digest) for image in old for b in image.blobs)

    response = trow.request("GET", big.manifest_path(), headers=[("Accept", OCI_MANIFEST)])
    assert response.status == 200 and response.body == big.manifest, response
    stream = SlowReader(trow.port or 0, big.blob_path(big.layer.digest))
    assert (stream.status, stream.length) == (200, big.layer.size), stream.headers
    passes_at_start = gc_ok(scrape(port))
    for image in new:
        stream.step()
        pull_raw(trow, image)

    def evicting() -> bool:
        samples = scrape(port)
        return not (
            sample(samples, "trow_cache_evictions_total") >= 1
            and gc_ok(samples) >= passes_at_start + 3
            and not any(stored(trow, image.layer.digest) for image in old)
            # the streamed blob's link went too: what the cache counts is under max_size
            and sample(samples, "trow_cache_size_bytes") <= 3 * MIB
        )

    stream.read_while(evicting, "older images evicted while the blob streams")
    assert stored(trow, big.layer.digest), "the blob being streamed lost its file mid-stream"
    samples = scrape(port)
    # Two older images (manifest, config, layer each) and the streamed image's manifest so far.
    assert sample(samples, "trow_gc_removed_total", kind="blob") >= 6
    assert sample(samples, "trow_gc_removed_total", kind="manifest") >= 3
    assert sample(samples, "trow_gc_freed_bytes_total") >= 2 * FILL_LAYER
    assert all(stored(trow, image.layer.digest) for image in new), "the newest images were evicted"

    assert stream.finish() == (200, big.layer.digest, big.layer.size)
    assert wait_until(lambda: not stored(trow, big.layer.digest), timeout=DEADLINE), (
        "the evicted blob's file was kept after its stream ended"
    )
    assert get_and_hash(trow, big.blob_path(big.layer.digest)) == (200, big.layer.digest, big.layer.size)
    # An evicted manifest has left the in-memory cache too: by digest, it is a miss, fetched again.
    misses = sample(scrape(port), "trow_cache_requests_total", kind="manifest", result="miss")
    by_digest = trow.request("GET", old[0].manifest_path(old[0].digest), headers=[("Accept", OCI_MANIFEST)])
    assert by_digest.status == 200 and by_digest.body == old[0].manifest, by_digest
    assert sample(scrape(port), "trow_cache_requests_total", kind="manifest", result="miss") == misses + 1
    for image in [*old, *new]:
        pull_raw(trow, image)
    finish_cleanly(trow)


def test_eviction_while_a_cached_blob_streams_slowly(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, gc_upstream: GcUpstream
) -> None:
    """max_size 18 MiB holds a cached 16 MiB image and a 1 MiB one. A client starts reading the
    16 MiB layer (a cache hit) very slowly; two more images are pulled, GC evicts the 1 MiB image
    and then the streamed image (least recently read), but keeps the file being sent: the slow
    client gets every byte right, and the blob is still served right afterwards."""
    trow, port = start_gc_trow(trow_factory, tmp_path, gc_upstream, "cached", max_size="18MiB")
    cached, first = gc_upstream.cached, gc_upstream.fills[0]
    pull_raw(trow, first)
    pull_raw(trow, cached)
    samples = wait_gc_passes(port, 2)
    assert sample(samples, "trow_cache_evictions_total") == 0, "evicted below max_size"
    hits = sample(samples, "trow_cache_requests_total", kind="blob", result="hit")

    stream = SlowReader(trow.port or 0, cached.blob_path(cached.layer.digest))
    assert (stream.status, stream.length) == (200, cached.layer.size), stream.headers
    assert sample(scrape(port), "trow_cache_requests_total", kind="blob", result="hit") == hits + 1
    passes_at_start = gc_ok(scrape(port))
    newer = gc_upstream.fills[1:3]
    for image in newer:
        stream.step()
        pull_raw(trow, image)

    def evicting() -> bool:
        samples = scrape(port)
        return not (
            sample(samples, "trow_cache_evictions_total") >= 2
            and gc_ok(samples) >= passes_at_start + 3
            and not stored(trow, first.layer.digest)
            and sample(samples, "trow_cache_size_bytes") <= 4 * MIB
        )

    stream.read_while(evicting, "the streamed image evicted while its layer is read")
    assert stored(trow, cached.layer.digest), "the blob being streamed lost its file mid-stream"
    assert stream.finish() == (200, cached.layer.digest, cached.layer.size)
    assert wait_until(lambda: not stored(trow, cached.layer.digest), timeout=DEADLINE), (
        "the evicted blob's file was kept after its stream ended"
    )
    pull_raw(trow, cached)
    assert all(stored(trow, image.layer.digest) for image in newer)
    finish_cleanly(trow)


def quarantined(trow: TrowProcess) -> list[str]:
    """The blob files GC has moved aside into C{tmp/} (C{gc-<uuid>}), waiting out C{settle}."""
    return [name for name in trow.tmp_entries() if name.startswith("gc-")]


def test_quarantine_pull_during_settle_restores_and_kill_loses_nothing(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, gc_upstream: GcUpstream
) -> None:
    """max_size 1.5 MiB (one 1 MiB image fits under the 90% low-water mark, two do not), settle
    2s. Two 1 MiB images are pulled; GC evicts the older one and moves
    its blob files aside. Pulled again while they wait out the settle time, the image is served
    right, its files come back from the quarantine (its blobs are cache hits, the upstream sees no
    blob GET) and stay once the pass has ended. The next eviction (now of the other image) is cut
    by kill -9 while its files are aside: trow starts again with an empty tmp/, serves the kept
    image from the cache, and fetches the lost one again, right."""
    gc = {"interval": "1s", "grace": "1s", "settle": "2s"}
    trow, port = start_gc_trow(trow_factory, tmp_path, gc_upstream, "quarantine", max_size="1.5MiB", gc=gc)
    registry = gc_upstream.registry
    older, newer = gc_upstream.fills[6], gc_upstream.fills[7]
    pull_raw(trow, older)
    pull_raw(trow, newer)

    def aside(image: UpImage) -> bool:
        return bool(quarantined(trow)) and not any(stored(trow, b.digest) for b in image.blobs)

    assert wait_until(lambda: aside(older), timeout=DEADLINE, interval=0.005), "the older image never went aside"
    passes = gc_ok(scrape(port))
    misses = sample(scrape(port), "trow_cache_requests_total", kind="blob", result="miss")
    mark = registry.mark()
    pull_raw(trow, older)
    assert all(stored(trow, b.digest) for b in older.blobs), "the re-pulled image's files are not in place"
    samples = scrape(port)
    assert gc_ok(samples) == passes, "the quarantine ended before the image was pulled again: test too slow"
    assert sample(samples, "trow_cache_requests_total", kind="blob", result="miss") == misses, (
        "a blob that was waiting in quarantine was fetched again instead of being put back"
    )
    wait_gc_passes(port, 1)
    assert all(stored(trow, b.digest) for b in older.blobs), "a file put back from quarantine was deleted"
    assert sum(registry.blob_gets(b.digest, mark) for b in older.blobs) == 0, registry.requests(mark)

    # The re-pulled image is now the newest: the other one goes aside next. Crash then.
    assert wait_until(lambda: aside(newer), timeout=DEADLINE, interval=0.005), "the other image never went aside"
    assert all(stored(trow, b.digest) for b in older.blobs), "the newest image was evicted too"
    trow.kill()
    trow.start()
    assert quarantined(trow) == [] and trow.tmp_entries() == [], trow.tmp_entries()
    port = metrics_port(trow)
    log = UpstreamLog(registry, trow)
    pull_raw(trow, older)
    pull_raw(trow, newer)
    assert log.blob_gets(newer.layer.digest) == 1
    assert sum(log.blob_gets(b.digest) for b in older.blobs) == 0, log.requests()
    wait_gc_passes(port, 2)
    finish_cleanly(trow)


# -- 2. pushed content is never evicted -----------------------------------------------------------


def push_to_trow(trow: TrowProcess, repo: str, tag: str, image: UpImage) -> None:
    """Push an image's blobs (monolithic POST ?digest=) and manifest to trow with raw HTTP."""
    for blob in image.blobs:
        response = trow.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/?digest={blob.digest}",
            headers=[("Content-Type", "application/octet-stream")],
            body=blob.data,
        )
        assert response.status == 201, response
    response = trow.request("PUT", f"/v2/{repo}/manifests/{tag}", headers=[("Content-Type", OCI_MANIFEST)], body=image.manifest)
    assert response.status == 201, response


def test_pushed_content_is_never_evicted(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, gc_upstream: GcUpstream
) -> None:
    """max_size 3 MiB. An image is pushed to a local repository: a 2 MiB layer of its own and a
    layer that is also the layer of a cached image. Six 1 MiB images are pulled through the
    cache, and GC evicts down to max_size over several passes: the pushed image is served
    byte-exact throughout and after, its shared layer keeps its file although the cached image
    holding it was evicted, and, since pushed bytes do not count towards max_size, the newest
    cached image is still cached."""
    trow, port = start_gc_trow(trow_factory, tmp_path, gc_upstream, "pushed", max_size="3MiB")
    fills = gc_upstream.fills[4:10]
    shared = fills[0].layer
    pushed = make_image("team/app", [random_bytes(2 * MIB, 5000), shared.data])
    pull_raw(trow, fills[0])  # the image whose layer the pushed one shares: cached first, evicted first
    push_to_trow(trow, "team/app", "v1", pushed)

    def check_pushed() -> None:
        response = trow.request("GET", "/v2/team/app/manifests/v1", headers=[("Accept", OCI_MANIFEST)])
        assert response.status == 200 and response.body == pushed.manifest, response
        for blob in pushed.blobs:
            assert get_and_hash(trow, f"/v2/team/app/blobs/{blob.digest}") == (200, blob.digest, blob.size)

    for image in fills[1:]:
        pull_raw(trow, image)
        check_pushed()
    assert wait_until(lambda: not stored(trow, fills[0].blobs[0].digest), timeout=DEADLINE), (
        "the oldest cached image was never evicted"
    )
    samples = wait_gc_passes(port, 3)
    assert sample(samples, "trow_cache_evictions_total") >= 1
    assert 0 < sample(samples, "trow_cache_size_bytes") <= 3 * MIB
    check_pushed()
    for blob in pushed.blobs:
        assert stored(trow, blob.digest), f"pushed blob {blob.digest} lost its file"
    assert stored(trow, fills[-1].layer.digest), "pushed content was counted towards max_size"
    finish_cleanly(trow)


# -- 3. metrics of the proxy ------------------------------------------------------------------------


def test_proxy_metrics_move_as_an_image_is_pulled_twice(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, gc_upstream: GcUpstream, skopeo: Skopeo
) -> None:
    """skopeo pulls an uncached image through trow, then again. /metrics shows: the first pull's
    tag and blobs as cache misses, one complete download per blob, the upstream requests and
    bytes under the upstream's host; the second pull as hits, with no new download or upstream
    GET; nothing downloading afterwards; successful GC passes; the manifest and blob routes in
    the HTTP counters."""
    trow, port = start_gc_trow(trow_factory, tmp_path, gc_upstream, "metrics", max_size=None)
    app = gc_upstream.app
    host = gc_upstream.registry.host
    blobs = len(app.blobs)
    before = scrape(port)
    ref = trow.ref(f"f/{ALIAS}/{app.repo}:{app.tag}")

    skopeo.pull(ref, f"oci:{tmp_path / 'first'}:{app.tag}")
    after_first = scrape(port)
    skopeo.pull(ref, f"oci:{tmp_path / 'second'}:{app.tag}")
    for layout in ("first", "second"):
        index = json.loads((tmp_path / layout / "index.json").read_text())
        assert [m["digest"] for m in index["manifests"]] == [app.digest]
        for blob in app.blobs:
            path = tmp_path / layout / "blobs" / "sha256" / blob.digest.split(":", 1)[1]
            assert sha256(path.read_bytes()) == blob.digest

    def settled() -> bool:
        samples = scrape(port)
        return (
            sample(samples, "trow_downloads_in_flight") == 0
            and sample(samples, "trow_downloads_total", outcome="complete") == blobs
            and gc_ok(samples) >= 1
        )

    assert wait_until(settled, timeout=DEADLINE), scrape(port)
    after = scrape(port)

    def moved(samples: Samples, since: Samples, name: str, **labels: str) -> float:
        return sample(samples, name, **labels) - sample(since, name, **labels)

    # First pull: everything missed, one download per blob, upstream contacted.
    assert moved(after_first, before, "trow_cache_requests_total", kind="tag", result="miss") >= 1
    assert moved(after_first, before, "trow_cache_requests_total", kind="tag", result="hit") == 0
    assert moved(after_first, before, "trow_cache_requests_total", kind="blob", result="miss") == blobs
    assert moved(after_first, before, "trow_cache_requests_total", kind="blob", result="hit") == 0
    # Each tag request costs one HEAD upstream, each miss one GET more, each blob one GET.
    tag_requests = moved(after_first, before, "trow_cache_requests_total", kind="tag", result="miss")
    assert moved(after_first, before, "trow_upstream_requests_total", upstream=host, code="200") == 2 * tag_requests + blobs
    assert moved(after_first, before, "trow_upstream_bytes_total", upstream=host) >= sum(b.size for b in app.blobs)
    # Second pull: hits only, nothing fetched again.
    assert moved(after, after_first, "trow_cache_requests_total", kind="tag", result="hit") >= 1
    assert moved(after, after_first, "trow_cache_requests_total", kind="tag", result="miss") == 0
    assert moved(after, after_first, "trow_cache_requests_total", kind="blob", result="hit") == blobs
    assert moved(after, after_first, "trow_cache_requests_total", kind="blob", result="miss") == 0
    hits = moved(after, after_first, "trow_cache_requests_total", kind="tag", result="hit")
    assert moved(after, after_first, "trow_upstream_requests_total", upstream=host, code="200") == hits
    assert moved(after, after_first, "trow_upstream_bytes_total", upstream=host) == 0
    assert sample(after, "trow_downloads_total", outcome="complete") == blobs
    assert sample(after, "trow_downloads_total", outcome="failed") == 0
    assert sample(after, "trow_downloads_in_flight") == 0
    assert sample(after, "trow_download_waiters") == 0
    assert sample(after, "trow_upstream_errors_total", upstream=host, reason="status") == 0
    assert gc_ok(after) > 0 and sample(after, "trow_gc_runs_total", result="failed") == 0
    assert sample(after, "trow_gc_last_success_timestamp_seconds") > 0
    # The HTTP routes: two manifest GETs at least, every blob twice.
    assert moved(after, before, "trow_http_requests_total", method="GET", route="manifest", status="200") >= 2
    assert moved(after, before, "trow_http_requests_total", method="GET", route="blob", status="200") == 2 * blobs
    assert moved(after, before, "trow_http_response_bytes_total", route="blob") == 2 * sum(b.size for b in app.blobs)
    finish_cleanly(trow)


# -- known bugs ---------------------------------------------------------------------------------------


def test_evicted_bytes_are_counted(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, gc_upstream: GcUpstream
) -> None:
    """max_size 1 MiB, two 1 MiB images pulled: GC evicts the older one, and
    C{trow_cache_evicted_bytes_total} ("Bytes of proxied content evicted") counts at least its
    layer, as C{trow_gc_freed_bytes_total} does."""
    trow, port = start_gc_trow(trow_factory, tmp_path, gc_upstream, "evicted-bytes", max_size="1MiB")
    older, newer = gc_upstream.fills[8], gc_upstream.fills[9]
    pull_raw(trow, older)
    pull_raw(trow, newer)
    assert wait_until(lambda: not stored(trow, older.layer.digest), timeout=DEADLINE), "nothing was evicted"
    samples = wait_gc_passes(port, 1)
    assert sample(samples, "trow_cache_evictions_total") >= 1
    assert sample(samples, "trow_gc_freed_bytes_total") >= FILL_LAYER
    try:
        assert sample(samples, "trow_cache_evicted_bytes_total") >= FILL_LAYER
    finally:
        finish_cleanly(trow)


def test_evicted_blobs_pulled_by_digest_are_counted(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, gc_upstream: GcUpstream
) -> None:
    """max_size 1.5 MiB, grace 1h (so the sweep leaves the links alone). Two 1 MiB blobs are
    pulled by digest alone (no manifest): GC evicts the older one to stay under max_size (its
    file goes, the cache size drops to 1 MiB), and C{trow_cache_evictions_total} ("Proxied items
    evicted to stay under max_size") counts it."""
    gc = {"interval": "1s", "grace": "1h", "settle": "1s"}
    trow, port = start_gc_trow(trow_factory, tmp_path, gc_upstream, "blob-only", max_size="1.5MiB", gc=gc)
    older, newer = gc_upstream.fills[8], gc_upstream.fills[9]
    for image in (older, newer):
        assert get_and_hash(trow, image.blob_path(image.layer.digest)) == (200, image.layer.digest, image.layer.size)
    assert wait_until(lambda: not stored(trow, older.layer.digest), timeout=DEADLINE), "nothing was evicted"
    samples = wait_gc_passes(port, 1)
    assert stored(trow, newer.layer.digest)
    assert sample(samples, "trow_cache_size_bytes") == newer.layer.size
    assert sample(samples, "trow_gc_freed_bytes_total") >= older.layer.size
    try:
        assert sample(samples, "trow_cache_evictions_total") >= 1
    finally:
        finish_cleanly(trow)
