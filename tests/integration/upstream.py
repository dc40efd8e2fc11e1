"""Upstreams for the pull-through cache tests: a real registry, a misbehaving stand-in, fixtures.

- L{Distribution}: Debian's C{docker-registry} (distribution 2.8) on 127.0.0.1, with its own
  config, filesystem storage and access log in a temp dir. Tests count the requests trow sent it
  in that log (C{"GET /v2/<repo>/blobs/<digest> HTTP/1.1"}), and stop and restart it on the same
  port and storage to play a dead upstream.
- L{StandIn}: a small threaded C{http.server} registry that serves manifests and blobs from
  memory, records every request, and misbehaves on demand (corrupt bytes, a dropped connection,
  a stalled body, error statuses, a hung socket, the Bearer token flow).
- Client-side helpers for trow: a body stream that can stop reading half-way, reads that survive
  a cut connection, and the expected bytes of any slice of a pseudo-random blob.

Fixtures are defined here and imported by the test modules that use them.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.tools import require_tool
from tests.images import OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST, pseudo_random_chunks
from tests.integration.conftest import (
    LOOPBACK,
    MIB,
    Images,
    RawResponse,
    Skopeo,
    TrowProcess,
    free_port,
    layout_blob,
    spawn,
    terminate,
    walk_image,
)

REGISTRY_BINARY = "docker-registry"
UPSTREAM_START_TIMEOUT = 20.0
ALIAS = "up"
# How long a request may take before a test calls it hung (a deadline, never a timing assertion).
DEADLINE = 30.0

# 127.0.0.1 - - [28/Nov/2026:04:58:20 +0000] "GET /v2/foo/blobs/sha256:... HTTP/1.1" 200 2 "" "ua"
_ACCESS_LINE = re.compile(rb'^\S+ \S+ \S+ \[[^\]]*\] "([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3}) (\d+|-) ', re.MULTILINE)


@dataclass(frozen=True)
class TlsFiles:
    """A serving certificate and key for 127.0.0.1, and the CA that signed it (PEM files)."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class Logged:
    """One line of the upstream's access log."""

    method: str
    path: str
    status: int
    # the response body bytes the registry wrote (for a HEAD: the bytes it would have sent)
    size: int = 0


# -- a real registry ----------------------------------------------------------------------------


class Distribution:
    """C{docker-registry serve} on 127.0.0.1: start, stop, restart on the same port and storage.

    Its stdout and stderr go to one log file, opened for appending, so that a mark taken with
    L{mark} stays valid across restarts.
    """

    def __init__(self, workdir: Path, port: int | None = None, storage: Path | None = None, tls: TlsFiles | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        # Another registry's storage: this one serves the same content (over HTTPS, say).
        self.storage = storage or workdir / "storage"
        self.config_path = workdir / "config.yml"
        self.log_path = workdir / "registry.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.tls = tls
        tls_lines = (
            ["  tls:", f"    certificate: {tls.cert}", f"    key: {tls.key}"] if tls is not None else []
        )
        self.config_path.write_text(
            "\n".join(
                [
                    "version: 0.1",
                    "log:",
                    "  level: warn",
                    "  accesslog:",
                    "    disabled: false",
                    "storage:",
                    "  filesystem:",
                    f"    rootdirectory: {self.storage}",
                    "  delete:",
                    "    enabled: true",
                    "  maintenance:",
                    "    uploadpurging:",
                    "      enabled: false",
                    "http:",
                    f"  addr: {LOOPBACK}:{self.port}",
                    "  secret: trow-integration-tests",
                    *tls_lines,
                    "",
                ]
            )
        )

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        """A connection to this registry (HTTPS verified against its CA, when it has one)."""
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            return http.client.HTTPSConnection(LOOPBACK, self.port, timeout=timeout, context=context)
        return http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)

    @property
    def host(self) -> str:
        """C{127.0.0.1:<port>}: the host trow's config lists and C{?ns=} names."""
        return f"{LOOPBACK}:{self.port}"

    def ref(self, repo_and_tag: str) -> str:
        """A skopeo docker:// reference into this registry."""
        return f"docker://{self.host}/{repo_and_tag}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = UPSTREAM_START_TIMEOUT) -> "Distribution":
        """Start the registry and wait until C{/v2/} answers 200."""
        assert not self.running, "the upstream registry is already running"
        binary = require_tool(REGISTRY_BINARY, "docker-registry", why="the real upstream of the proxy tests")
        self.process = spawn([binary, "serve", str(self.config_path)], self.log_path, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"docker-registry exited with {self.process.returncode}; log:\n{self.log()}")
            try:
                connection = self.connect(timeout=2)
                try:
                    connection.request("GET", "/v2/")
                    if connection.getresponse().status == 200:
                        return self
                finally:
                    connection.close()
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                pytest.fail(f"docker-registry did not answer /v2/ within {timeout:.0f}s; log:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL if it lingers): the port then refuses connections."""
        process, self.process = self.process, None
        terminate(process)

    def restart(self) -> "Distribution":
        """Stop if running, then start again on the same port and storage."""
        self.stop()
        return self.start()

    close = stop

    # -- the access log ---------------------------------------------------------------------

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def mark(self) -> int:
        """A position in the log: L{requests} since it shows only what came after."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def requests(self, since: int = 0) -> list[Logged]:
        """Every request the access log shows after C{since}."""
        with open(self.log_path, "rb") as handle:
            handle.seek(since)
            data = handle.read()
        return [
            Logged(m.group(1).decode(), m.group(2).decode("latin-1"), int(m.group(3)), int(m.group(4).replace(b"-", b"0")))
            for m in _ACCESS_LINE.finditer(data)
        ]

    def blob_gets(self, digest: str, since: int = 0) -> int:
        """How many C{GET /v2/<any repo>/blobs/<digest>} the log shows after C{since}."""
        return sum(1 for r in self.requests(since) if r.method == "GET" and r.path.endswith(f"/blobs/{digest}"))

    def wait_for(
        self,
        count: Callable[[], int],
        at_least: int = 1,
        timeout: float = 30.0,
        *,
        log: "UpstreamLog",
    ) -> int:
        """Wait until C{count()} reaches C{at_least}, then until C{log} (an L{UpstreamLog} begun
        before the requests counted) proves it holds everything; returns the final count. No
        fixed settle time: a loaded machine can outlast any, and a wrong extra request would
        then go unseen."""
        deadline = time.monotonic() + timeout
        while count() < at_least and time.monotonic() < deadline:
            time.sleep(0.05)
        log.settle()
        return count()

    # -- pushing content (raw HTTP, digests known in advance) -------------------------------

    def push_blob(self, repo: str, chunks: Iterable[bytes], size: int, digest: str) -> None:
        """Upload a blob streamed from C{chunks} (POST, then one PUT with the whole body)."""
        connection = self.connect(timeout=120)
        try:
            connection.request("POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
            response = connection.getresponse()
            response.read()
            assert response.status == 202, f"upload start: {response.status}"
            location = urlsplit(response.getheader("Location") or "")
            target = f"{location.path}?{location.query}&digest={digest}"
            connection.request(
                "PUT",
                target,
                body=iter(chunks),
                headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
            )
            response = connection.getresponse()
            body = response.read()
            assert response.status == 201, f"upload finish: {response.status} {body!r}"
        finally:
            connection.close()

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> None:
        """Make a blob of C{from_repo} part of C{repo} too (cross-repository mount)."""
        connection = self.connect(timeout=30)
        try:
            connection.request(
                "POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={from_repo}", headers={"Content-Length": "0"}
            )
            response = connection.getresponse()
            response.read()
            assert response.status == 201, f"mount of {digest} into {repo}: {response.status}"
        finally:
            connection.close()

    def push_image(self, skopeo: Skopeo, images: Images, tag: str, repo: str) -> None:
        """Push a session image (C{multi} or C{multiarch}) as C{repo:tag} with skopeo."""
        flags = ("--all",) if images.refs[tag]["mediaType"] == OCI_INDEX else ()
        skopeo.run(
            "copy", "--preserve-digests", "--dest-tls-verify=false", *flags, images.source(tag), self.ref(f"{repo}:{tag}")
        )


# -- trow configured for an upstream ---------------------------------------------------------------


def write_proxy_config(path: Path, entries: Sequence[dict[str, Any]], **section: Any) -> Path:
    """A trow config file whose C{registry_proxies.registries} are C{entries}, plus other keys of
    that section (C{offline}, C{any_registry}). JSON is YAML."""
    document = {"registry_proxies": {"registries": list(entries), **section}}
    path.write_text(json.dumps(document, indent=2))
    return path


def proxy_entry(host: str, **extra: Any) -> dict[str, Any]:
    """A plain-HTTP upstream entry reachable as C{f/up/...}."""
    return {"host": host, "alias": ALIAS, "insecure": True, **extra}


def start_proxy_trow(
    trow_factory: Callable[..., TrowProcess],
    tmp_path: Path,
    entries: Sequence[dict[str, Any]],
    name: str = "trow",
    **section: Any,
) -> TrowProcess:
    """Start a trow of this test's own whose config lists C{entries} as upstreams.

    The config file is C{<tmp_path>/<name>-config.yml}: a test may rewrite it and restart trow."""
    config = write_proxy_config(tmp_path / f"{name}-config.yml", entries, **section)
    return trow_factory(name, extra_args=["--config", str(config)])


def assert_clean_log(trow: TrowProcess) -> None:
    """No traceback and no unhandled error in any log trow wrote (a failure no response showed)."""
    for log in sorted(trow.workdir.glob("trow-*.log")):
        text = log.read_text(errors="replace")
        assert "Traceback" not in text and "Unhandled" not in text, f"errors in {log.name}:\n{text}"


def assert_json_error(response: RawResponse, statuses: tuple[int, ...], codes: tuple[str, ...]) -> None:
    """An OCI error body with one of C{codes}, under one of C{statuses} (so never a 500)."""
    assert response.status in statuses, f"{response.status} {response.body[:500]!r}"
    assert (response.header("Content-Type") or "").startswith("application/json"), response.headers
    errors = response.json()["errors"]
    assert errors and errors[0]["code"] in codes, errors
    assert errors[0].get("message"), errors


def cached_blob_path(trow: TrowProcess, digest: str) -> Path:
    """Where trow keeps a verified blob (the layout of trow/storage/blobs.py)."""
    algorithm, hexdigest = digest.split(":", 1)
    return trow.data_dir / "blobs" / algorithm / hexdigest[:2] / hexdigest


def wait_cached(trow: TrowProcess, digests: Iterable[str], timeout: float = DEADLINE) -> None:
    """Wait until trow has stored these blobs, recorded them, and its tmp/ is empty.

    A client has every byte of a proxied blob as soon as it is verified; trow makes it durable and
    records it after that. Tests that stop trow on purpose wait for this first. A download leaves
    trow's table of downloads (C{/status.json}) only after the blob is committed and linked to its
    repositories, so no download in flight means that every one of them is recorded."""
    wanted = list(digests)
    assert wait_until(
        lambda: all(cached_blob_path(trow, d).exists() for d in wanted) and trow.tmp_entries() == [], timeout
    ), f"not stored: {[d for d in wanted if not cached_blob_path(trow, d).exists()]}, tmp: {trow.tmp_entries()}"
    wait_idle(trow, timeout)


def live_status(trow: TrowProcess) -> dict[str, Any]:
    """trow's C{/status.json?live=1} (anonymous: with auth on, downloads the visitor may not see
    still count in C{downloads.count}, and C{cache} is whole)."""
    response = trow.request("GET", "/status.json?live=1", timeout=DEADLINE)
    assert response.status == 200, f"/status.json: {response.status} {response.body[:300]!r}"
    status: dict[str, Any] = response.json()
    return status


def wait_idle(trow: TrowProcess, timeout: float = DEADLINE) -> dict[str, Any]:
    """Wait until trow has no download in flight; returns its live status at that moment.

    Downloads are the only upstream work trow does on its own, after or beside a client's request
    (one runs on when its client hangs up); every other upstream request is made while a client
    request is answered. So once the test's own requests have returned and no download is in
    flight, trow has had the whole answer to everything it asked upstream, and asks nothing more.
    """
    deadline = time.monotonic() + timeout
    while True:
        status = live_status(trow)
        if status["downloads"]["count"] == 0:
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"trow still has downloads in flight after {timeout:.0f}s: {status['downloads']}")
        time.sleep(0.02)


class UpstreamLog:
    """What trows asked a L{Distribution} from a point on, read only once its access log provably
    holds every request they made: no fixed sleep, however loaded the machine.

    Begin one before the requests it is to see (before the trows fetch anything, or with L{next}
    once the earlier ones are settled): it notes where the log ends and how many body bytes each
    trow has fetched from upstreams so far (C{cache.bytes_fetched} of C{/status.json}).
    L{requests} and L{blob_gets} first L{settle}:

      1. every trow is idle (L{wait_idle}): it has the whole answer to every request it sent, and
         sends nothing more by itself;
      2. the log's GET lines since the start account for at least the body bytes the trows
         fetched since then (each line says how many bytes the registry wrote).

    Why that is everything: distribution (Go's net/http under gorilla's access-log handler) writes
    a request's log line when its handler returns, and Go holds a small response (a few KiB:
    HEADs, manifests, error bodies) in its buffers until then, so such a line is written before
    the client gets a byte of the answer. A big body (a blob) is sent while the handler runs, and
    its line can follow the client's last byte (measured: a third of the time for a 2 MiB blob);
    but trow counts every body byte it reads, so once the log shows as many bytes as trow
    fetched, every GET that brought a byte is logged. (Other clients' GETs of the same registry in
    the window only make condition 2 hold sooner: keep them out of the window.) A trow that is
    stopped sends nothing; one restarted since the start counts from its restart.
    """

    def __init__(self, registry: Distribution, *trows: TrowProcess, timeout: float = DEADLINE) -> None:
        self.registry = registry
        self.trows = trows
        self.timeout = timeout
        self._fetched: dict[int, tuple[int, int]] = {}
        for trow in trows:
            if trow.running:
                status = wait_idle(trow, timeout)
                self._fetched[id(trow)] = (trow.starts, int(status["cache"]["bytes_fetched"]))
        self.start = registry.mark()

    def settle(self) -> None:
        """Wait until the log holds every request the trows made since the start (see above)."""
        deadline = time.monotonic() + self.timeout
        fetched = 0
        for trow in self.trows:
            if not trow.running:
                continue
            status = wait_idle(trow, max(deadline - time.monotonic(), 1.0))
            starts, before = self._fetched.get(id(trow), (-1, 0))
            fetched += int(status["cache"]["bytes_fetched"]) - (before if starts == trow.starts else 0)
        while (logged := self.logged_bytes()) < fetched:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"trow fetched {fetched} body bytes but the upstream's log shows GETs of only "
                    f"{logged} after {self.timeout:.0f}s: {self.registry.requests(self.start)}"
                )
            time.sleep(0.02)

    def logged_bytes(self) -> int:
        """The body bytes of the GETs logged since the start."""
        return sum(r.size for r in self.registry.requests(self.start) if r.method == "GET")

    def requests(self) -> list[Logged]:
        """Every request logged since the start, once settled."""
        self.settle()
        return self.registry.requests(self.start)

    def blob_gets(self, digest: str) -> int:
        """How many GETs of blob C{digest} (in any repository) since the start, once settled."""
        self.settle()
        return self.registry.blob_gets(digest, self.start)

    def next(self) -> "UpstreamLog":
        """Settle this one, then begin another where it ends (for the same trows)."""
        self.settle()
        return UpstreamLog(self.registry, *self.trows, timeout=self.timeout)


def wait_until(check: Callable[[], bool], timeout: float = 60.0, interval: float = 0.05) -> bool:
    """Poll C{check} until it holds or C{timeout} passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return check()
        time.sleep(interval)
    return True


# -- pseudo-random blobs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BigBlob:
    """A blob of C{size} bytes from L{pseudo_random_chunks}(size, seed), pushed upstream."""

    size: int
    seed: int
    digest: str
    repos: tuple[str, ...]

    def chunks(self) -> Iterator[bytes]:
        return pseudo_random_chunks(self.size, self.seed)

    def slice(self, start: int, length: int) -> bytes:
        """The bytes C{[start, start+length)} of the blob, built without the whole blob in memory."""
        out = bytearray()
        position = 0
        for chunk in self.chunks():
            end = position + len(chunk)
            if end > start and position < start + length:
                out += chunk[max(start - position, 0) : min(start + length - position, len(chunk))]
            position = end
            if position >= start + length:
                break
        return bytes(out)


def stream_digest(chunks: Iterable[bytes]) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    for chunk in chunks:
        h.update(chunk)
        size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def make_big_blob(distribution: Distribution, size: int, seed: int, repos: Sequence[str]) -> BigBlob:
    """Push a pseudo-random blob to the first of C{repos} and mount it into the others."""
    digest, _ = stream_digest(pseudo_random_chunks(size, seed))
    distribution.push_blob(repos[0], pseudo_random_chunks(size, seed), size, digest)
    for repo in repos[1:]:
        distribution.mount_blob(repo, digest, repos[0])
    return BigBlob(size, seed, digest, tuple(repos))


# -- client-side streams of trow responses --------------------------------------------------------


class BodyStream:
    """A GET to trow read at the test's own pace, on a raw socket (so it can be dropped at will)."""

    def __init__(
        self, port: int, path: str, headers: Sequence[tuple[str, str]] = (), timeout: float = 60.0, keep: bool = False
    ) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        lines = [f"GET {path} HTTP/1.1", f"Host: {LOOPBACK}:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        buffered = bytearray()
        while b"\r\n\r\n" not in buffered:
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"connection closed before the response headers: {bytes(buffered)!r}")
            buffered += data
        head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split(" ", 2)[1])
        self.headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.length = int(self.headers.get("content-length", "-1"))
        self.received = len(rest)
        self.hash = hashlib.sha256(rest)
        # keep=True: the body is kept in memory too (small bodies only)
        self.body: bytearray | None = bytearray(rest) if keep else None
        self.cut = False  # the connection ended by a reset, or before Content-Length bytes

    def read_at_least(self, amount: int) -> int:
        """Read until C{amount} body bytes arrived in all (or the stream ended); returns the total."""
        while self.received < amount:
            if not self._recv():
                break
        return self.received

    def read_to_end(self) -> "BodyStream":
        """Read until EOF or a reset."""
        while self._recv():
            pass
        if self.length >= 0 and self.received < self.length:
            self.cut = True
        return self

    def _recv(self) -> bool:
        try:
            data = self.sock.recv(1 << 20)
        except ConnectionResetError:
            self.cut = True
            return False
        if not data:
            return False
        self.received += len(data)
        self.hash.update(data)
        if self.body is not None:
            self.body += data
        return True

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()

    def close(self) -> None:
        self.sock.close()


# -- a registry stand-in that misbehaves on purpose ------------------------------------------------


@dataclass
class Seen:
    """One request the stand-in received."""

    method: str
    path: str
    headers: dict[str, str]

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)


@dataclass
class Faults:
    """What the stand-in does wrong; tests change these while it runs."""

    # blob digests served with the right length and wrong content
    corrupt: set[str] = field(default_factory=set)
    # digest -> offset: the next full GET of it sends this many bytes and then drops the connection
    drop_once: dict[str, int] = field(default_factory=dict)
    # digest -> offset: every GET (ranged or not) sends this many bytes of its body and drops
    drop_always: dict[str, int] = field(default_factory=dict)
    # honour Range with 206 (False: answer 200 with the whole blob, as some servers do)
    honour_range: bool = True
    # digest -> (offset, gate): a full GET sends this many bytes, then waits for the gate to open
    gates: dict[str, tuple[int, threading.Event]] = field(default_factory=dict)
    # blob digests sent with Transfer-Encoding: chunked and no Content-Length
    chunked: set[str] = field(default_factory=set)
    # blob digests sent with neither Content-Length nor chunking: the body ends when the
    # connection closes (valid HTTP/1.1, RFC 9112 section 6.3)
    close_delimited: set[str] = field(default_factory=set)
    # answer every manifest request with this status (500, 429, ...)
    manifest_status: int | None = None
    # answer every manifest GET (not HEAD) with this status: Docker Hub rate-limits GETs only
    manifest_get_status: int | None = None
    # answer every blob request with this status
    blob_status: int | None = None
    # read requests and never answer them (a hung upstream)
    hang: bool = False
    # answer blob GETs with a 307 to <this base URL>/cdn/<digest> (storage behind a CDN)
    redirect_blobs: str | None = None
    # close every connection after its response (Connection: close), so trow pools none
    no_keepalive: bool = False


class StandIn:
    """A registry on 127.0.0.1 serving content from memory, for faults a real registry never makes.

    Content: C{tags[(repo, tag)] -> digest}, C{manifests[digest] -> (bytes, media type)} and
    C{blobs[digest] -> bytes}, served for any repository. Every request is recorded in C{seen}.
    With C{auth} set (user, password), it wants C{Authorization: Bearer <token>} and hands the token
    out at C{/token} for those Basic credentials, the way Docker Hub's token service does.
    """

    def __init__(self) -> None:
        self.tags: dict[tuple[str, str], str] = {}
        self.manifests: dict[str, tuple[bytes, str]] = {}
        self.blobs: dict[str, bytes] = {}
        self.faults = Faults()
        self.auth: tuple[str, str] | None = None
        # "bearer": a token from /token (the Docker Hub way); "basic": the credentials on every request
        self.auth_scheme = "bearer"
        # The Bearer challenge's realm (default: this stand-in's own /token), e.g. a TokenServer's
        self.realm: str | None = None
        self.token = "tok-" + os.urandom(8).hex()
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._holes: list[socket.socket] = []
        self._server = ThreadingHTTPServer((LOOPBACK, 0), _handler_for(self))
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="stand-in", daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def close(self) -> None:
        """Release hung handlers and stop serving."""
        self._release.set()
        for _, gate in self.faults.gates.values():
            gate.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
        for sock in self._holes:
            sock.close()
        self._holes = []

    def blackhole(self) -> None:
        """Stop serving and leave the port so that connecting to it times out: a listener whose
        one-connection backlog is full (filled here) makes the kernel drop further SYNs, as a
        firewall or a vanished host does. Use with C{no_keepalive}, so that no pooled connection
        to the old server survives."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
        hole = socket.socket()
        hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hole.bind((LOOPBACK, self.port))
        hole.listen(0)
        filler = socket.create_connection((LOOPBACK, self.port), timeout=5)
        self._holes = [hole, filler]

    # -- content ------------------------------------------------------------------------------

    def add_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest

    def add_image(self, repo: str, tag: str, layers: Sequence[bytes]) -> tuple[str, list[str]]:
        """An OCI image of C{layers} tagged C{repo:tag}; returns the manifest and layer digests."""
        layer_digests = [self.add_blob(layer) for layer in layers]
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": self.add_blob(config), "size": len(config)},
                "layers": [
                    {"mediaType": OCI_LAYER_GZIP, "digest": d, "size": len(layer)}
                    for d, layer in zip(layer_digests, layers)
                ],
            }
        ).encode()
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        self.manifests[digest] = (manifest, OCI_MANIFEST)
        self.tags[(repo, tag)] = digest
        return digest, layer_digests

    def add_layout_image(self, images: Images, tag: str, repo: str) -> str:
        """Serve a session image (its whole tree, from the OCI layout) as C{repo:tag}."""
        root = images.refs[tag]["digest"]
        for digest, _ in walk_image(images.layout, root):
            data = layout_blob(images.layout, digest).read_bytes()
            try:
                media_type = json.loads(data).get("mediaType")
            except (ValueError, UnicodeDecodeError, AttributeError):
                media_type = None
            if media_type in (OCI_MANIFEST, OCI_INDEX):
                self.manifests[digest] = (data, media_type)
            else:
                self.blobs[digest] = data
        self.tags[(repo, tag)] = root
        return root

    # -- what it saw --------------------------------------------------------------------------

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def requests(self, method: str | None = None, contains: str = "") -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if (method is None or s.method == method) and contains in s.path]

    def blob_gets(self, digest: str) -> list[Seen]:
        return self.requests("GET", f"/blobs/{digest}")


def _handler_for(stand_in: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(_StandInHandler):
        owner = stand_in

    return Handler


_MANIFEST_PATH = re.compile(r"^/v2/(?P<repo>.+)/manifests/(?P<ref>[^/]+)$")
_BLOB_PATH = re.compile(r"^/v2/(?P<repo>.+)/blobs/(?P<digest>[^/]+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _StandInHandler(BaseHTTPRequestHandler):
    owner: StandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:
        self._serve()

    def end_headers(self) -> None:
        if self.owner.faults.no_keepalive:
            self.send_header("Connection", "close")  # also makes http.server close the socket
        super().end_headers()

    def do_HEAD(self) -> None:
        self._serve()

    # -- plumbing -----------------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"errors": [{"code": code, "message": code.lower()}]}).encode()
        self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

    def _authorized(self, path: str) -> bool:
        owner = self.owner
        if owner.auth is None:
            return True
        if owner.auth_scheme == "basic":
            expected = "Basic " + base64.b64encode(f"{owner.auth[0]}:{owner.auth[1]}".encode()).decode()
            if self.headers.get("Authorization") == expected:
                return True
            self._error(401, "UNAUTHORIZED", {"WWW-Authenticate": 'Basic realm="stand-in"'})
            return False
        if self.headers.get("Authorization") == f"Bearer {owner.token}":
            return True
        repo = "r"
        match = _MANIFEST_PATH.match(path) or _BLOB_PATH.match(path)
        if match:
            repo = match.group("repo")
        realm = owner.realm or f"http://{owner.host}/token"
        challenge = f'Bearer realm="{realm}",service="x",scope="repository:{repo}:pull"'
        self._error(401, "UNAUTHORIZED", {"WWW-Authenticate": challenge})
        return False

    def _token(self) -> None:
        owner = self.owner
        assert owner.auth is not None
        expected = "Basic " + base64.b64encode(f"{owner.auth[0]}:{owner.auth[1]}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self._error(401, "UNAUTHORIZED")
            return
        self._send(200, json.dumps({"token": owner.token, "expires_in": 300}).encode(), {"Content-Type": "application/json"})

    def _serve(self) -> None:
        owner = self.owner
        owner.record(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        faults = owner.faults
        if faults.hang:
            owner._release.wait(120)
            self.close_connection = True
            return
        path = urlsplit(self.path).path
        if path == "/token" and owner.auth is not None:
            self._token()
            return
        if path.startswith("/cdn/"):
            # Storage behind a redirect: no auth of its own (a signed URL in real life).
            self._blob(path[len("/cdn/") :])
            return
        if not self._authorized(path):
            return
        if path in ("/v2", "/v2/"):
            self._send(200, b"{}", {"Content-Type": "application/json"})
            return
        match = _MANIFEST_PATH.match(path)
        if match:
            self._manifest(match.group("repo"), match.group("ref"))
            return
        match = _BLOB_PATH.match(path)
        if match:
            self._blob(match.group("digest"))
            return
        self._error(404, "NAME_UNKNOWN")

    def _manifest(self, repo: str, reference: str) -> None:
        owner = self.owner
        status = owner.faults.manifest_status
        if status is None and self.command == "GET":
            status = owner.faults.manifest_get_status
        if status is not None:
            self._error(status, "TOOMANYREQUESTS" if status == 429 else "UNAVAILABLE", {"Retry-After": "30"} if status == 429 else {})
            return
        digest = reference if reference.startswith("sha256:") else owner.tags.get((repo, reference))
        if digest is None or digest not in owner.manifests:
            self._error(404, "MANIFEST_UNKNOWN")
            return
        content, media_type = owner.manifests[digest]
        self._send(200, content, {"Content-Type": media_type, "Docker-Content-Digest": digest})

    def _blob(self, digest: str) -> None:
        owner = self.owner
        faults = owner.faults
        if faults.blob_status is not None:
            self._error(faults.blob_status, "UNAVAILABLE")
            return
        data = owner.blobs.get(digest)
        if data is None:
            self._error(404, "BLOB_UNKNOWN")
            return
        if faults.redirect_blobs is not None and not self.path.startswith("/cdn/"):
            self._send(307, b"", {"Location": f"{faults.redirect_blobs}/cdn/{digest}"})
            return
        if digest in faults.corrupt:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        status = 200
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest, "Accept-Ranges": "bytes"}
        wanted = _RANGE.match(self.headers.get("Range", "").replace(" ", ""))
        if wanted and faults.honour_range:
            start = int(wanted.group(1))
            end = int(wanted.group(2)) if wanted.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            status, data = 206, data[start : end + 1]
        if self.command == "HEAD":
            self._head(status, len(data), headers)
            return
        drop = faults.drop_always.get(digest)
        if drop is None and status == 200:
            drop = faults.drop_once.pop(digest, None)
        if digest in faults.chunked and status == 200:
            self._chunked(data, headers, drop)
            return
        if digest in faults.close_delimited and status == 200:
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            self.close_connection = True
            return
        gate = faults.gates.get(digest) if status == 200 else None
        self._head(status, len(data), headers)
        if drop is not None:
            self.wfile.write(data[:drop])
            self.wfile.flush()
            self.close_connection = True  # the server then shuts the socket down: a short body
            return
        if gate is not None:
            offset, event = gate
            self.wfile.write(data[:offset])
            self.wfile.flush()
            event.wait(120)
            data = data[offset:]
        for start in range(0, len(data), MIB):
            self.wfile.write(data[start : start + MIB])

    def _head(self, status: int, length: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _chunked(self, data: bytes, headers: dict[str, str], drop: int | None) -> None:
        """Send C{data} chunked, with no Content-Length; with C{drop}, hang up after that many bytes."""
        self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        piece_size = 256 * 1024
        for start in range(0, len(data), piece_size):
            if drop is not None and start >= drop:
                self.wfile.flush()
                self.close_connection = True
                return
            piece = data[start : start + piece_size]
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")


# -- fixtures ---------------------------------------------------------------------------------------


@dataclass
class Upstream:
    """The session's real upstream registry, and what was pushed to it."""

    registry: Distribution
    images: Images
    skopeo: Skopeo
    # the large blobs, in repositories big/one and big/two
    blob_64m: BigBlob
    blob_200m: BigBlob
    _pushed: set[str] = field(default_factory=set)

    def image(self, tag: str, repo: str) -> str:
        """Push session image C{tag} to C{repo} (once per session); returns C{repo}."""
        if repo not in self._pushed:
            self.registry.push_image(self.skopeo, self.images, tag, repo)
            self._pushed.add(repo)
        return repo


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory, images: Images, skopeo: Skopeo) -> Iterator[Upstream]:
    """One distribution registry for the session, holding a 64 MiB and a 200 MiB blob, each in
    two repositories (big/one, big/two). Tests that need a blob uncached start a trow of their own;
    tests push the small images to repositories of their own with L{Upstream.image}."""
    registry = Distribution(tmp_path_factory.mktemp("upstream"))
    registry.start()
    try:
        repos = ("big/one", "big/two")
        blob_64m = make_big_blob(registry, 64 * MIB, 64, repos)
        blob_200m = make_big_blob(registry, 200 * MIB, 200, repos)
        yield Upstream(registry, images, skopeo, blob_64m, blob_200m)
    finally:
        registry.stop()
        shutil.rmtree(registry.storage, ignore_errors=True)  # some 300 MB; the log is kept


@pytest.fixture
def proxy_trow(
    request: pytest.FixtureRequest, trow_factory: Callable[..., TrowProcess], tmp_path: Path, upstream: Upstream
) -> Iterator[TrowProcess]:
    """A trow of this test's own (so nothing is cached yet) proxying the session upstream as C{up}.
    Its log must show no error, unless the test is a known bug (xfail)."""
    trow = start_proxy_trow(trow_factory, tmp_path, [proxy_entry(upstream.registry.host)])
    yield trow
    if request.node.get_closest_marker("xfail") is None:
        assert_clean_log(trow)


@pytest.fixture
def private_upstream(tmp_path: Path) -> Iterator[Distribution]:
    """A distribution registry of this test's own, which the test may stop and restart."""
    registry = Distribution(tmp_path / "private-upstream")
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    """A misbehaving registry stand-in of this test's own."""
    server = StandIn()
    try:
        yield server
    finally:
        server.close()


class TokenServer:
    """A token service on an address of its own (127.0.0.2, say), for a L{StandIn}'s realm.

    It hands the stand-in's token to anyone who asks at C{/token}, with or without credentials
    (as a public registry's token service does for public repositories), and records every
    request with its headers, so a test sees whether credentials were sent to it.
    """

    def __init__(self, stand_in: StandIn, address: str = LOOPBACK) -> None:
        self.stand_in = stand_in
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:
                with owner._lock:
                    owner.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                if urlsplit(self.path).path != "/token":
                    body = b'{"errors": [{"code": "NOT_FOUND", "message": "no such path"}]}'
                    self.send_response(404)
                else:
                    body = json.dumps({"token": owner.stand_in.token, "expires_in": 300}).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer((address, 0), Handler)
        self._server.daemon_threads = True
        self.address = address
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="token-server", daemon=True)
        self._thread.start()

    @property
    def realm(self) -> str:
        """The realm URL to set as the stand-in's C{realm}."""
        return f"http://{self.address}:{self.port}/token"

    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


class ConnectionCounter:
    """A listener on 127.0.0.1 that accepts and counts connections, and answers nothing."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._lock = threading.Lock()
        # source ports of our own marker connections (never counted), and those accepted so far
        self._markers: set[int] = set()
        self._markers_seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        """C{127.0.0.1:<port>}, as an upstream host in trow's config."""
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                connection, peer = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            with self._lock:
                if peer[1] in self._markers:
                    self._markers_seen.add(peer[1])
                else:
                    self.accepted += 1
            connection.close()

    def settled_accepted(self, *trows: TrowProcess, timeout: float = DEADLINE) -> int:
        """How many connections were made to it, once it is proved that every connection the
        C{trows} made is counted.

        Each trow is idle first (L{wait_idle}: it tries nothing more by itself); then a marker
        connection of our own is made, and waited for. The kernel hands a listener its
        connections in the order they were established (the accept queue is first in, first
        out), and this listener counts them in the order it accepts them: once the marker is
        accepted, every connection made before it has been counted. The marker is not counted.
        """
        for trow in trows:
            if trow.running:
                wait_idle(trow, timeout)
        marker = socket.socket()
        try:
            marker.bind((LOOPBACK, 0))
            marker_port = int(marker.getsockname()[1])
            with self._lock:
                self._markers.add(marker_port)
            marker.settimeout(timeout)
            marker.connect((LOOPBACK, self.port))
            seen = wait_until(lambda: marker_port in self._markers_seen, timeout)
            assert seen, "the connection counter never accepted the marker connection"
        finally:
            marker.close()
        with self._lock:
            return self.accepted

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
