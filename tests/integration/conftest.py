"""Integration fixtures: the real trow process, skopeo as the client, and raw HTTP.

Every test here talks to a real ``twistd trow`` child process on 127.0.0.1, started on port 0;
the bound port is read back from the log line ``TrowSite starting on <port>``. L{TrowProcess}
starts, stops (SIGTERM), kills (SIGKILL) and restarts trow on the same data dir, and the fixtures
make sure that no process outlives the test that started it.
"""

from __future__ import annotations

import atexit
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest

from tests.images import OCI_INDEX, Layout, pseudo_random_chunks, sha256_file
from tests.tools import require_tool

LOOPBACK = "127.0.0.1"
MIB = 1 << 20
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
SKOPEO_TIMEOUT = 180.0

# "TrowSite starting on 8000" for tcp:, "TrowSite (TLS) starting on 8443" for ssl:.
_LISTENING = re.compile(rb"TrowSite(?: \(TLS\))? starting on (\d+)")


def _script(name: str) -> str:
    """The console script C{name} of this interpreter (not a pyenv shim, which costs a fork)."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(beside):
        return beside
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run 'pip install .' in the repository first")
    return found


TWISTD = _script("twistd")
TWIST = _script("twist")

# Processes still running when the interpreter exits (a test run interrupted hard): killed.
_LIVE: set[subprocess.Popen[bytes]] = set()


def spawn(argv: Sequence[str], log_path: Path, cwd: Path | None = None) -> "subprocess.Popen[bytes]":
    """Start a helper process of the tests (a registry, containerd), its output appended to
    C{log_path}; it is killed at exit if a test left it running (see L{terminate})."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(list(argv), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    _LIVE.add(process)
    return process


def terminate(process: "subprocess.Popen[bytes] | None", timeout: float = 10.0) -> None:
    """Stop a helper process of the tests (a registry, containerd): SIGTERM, then SIGKILL if it
    lingers past C{timeout}; forget it."""
    if process is None:
        return
    _LIVE.discard(process)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_LIVE):
        if process.poll() is None:
            process.kill()
            process.wait()


def trow_command(args: Sequence[str], runner: str = "twistd") -> list[str]:
    """The argv that runs trow with C{args}: C{twistd -n --pidfile= trow ...} or C{twist trow ...}."""
    if runner == "twistd":
        return [TWISTD, "-n", "--pidfile=", "trow", *args]
    if runner == "twist":
        return [TWIST, "trow", *args]
    raise ValueError(f"unknown runner {runner!r}")


class TrowProcess:
    """One trow daemon on a data dir: start, stop (SIGTERM), kill -9 and restart.

    Each start writes its own log file (C{trow-<n>.log} in C{workdir}) and binds whatever the
    listen description says (port 0 by default, read back from the log). L{close} always leaves
    no process behind.
    """

    def __init__(
        self,
        workdir: Path,
        data_dir: Path | None = None,
        listen: str = f"tcp:0:interface={LOOPBACK}",
        extra_args: Sequence[str] = (),
        runner: str = "twistd",
        cwd: Path | None = None,
        use_defaults: bool = False,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir if data_dir is not None else workdir / "data"
        self.listen = listen
        self.extra_args = list(extra_args)
        self.runner = runner
        self.cwd = cwd if cwd is not None else workdir
        # use_defaults: run with no --listen and no --data-dir at all (trow's own defaults).
        self.use_defaults = use_defaults
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.log_path: Path | None = None
        self.starts = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def argv(self) -> list[str]:
        """The command line of the next start."""
        args: list[str] = []
        if not self.use_defaults:
            args += ["--listen", self.listen, "--data-dir", str(self.data_dir)]
        return trow_command(args + self.extra_args, self.runner)

    def start(self, timeout: float = START_TIMEOUT) -> "TrowProcess":
        """Start trow and wait until it listens; fail with the log if it never does."""
        assert not self.running, "trow is already running"
        self.starts += 1
        self.log_path = self.workdir / f"trow-{self.starts}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv(),
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _LIVE.add(self.process)
        self.port = self._wait_for_port(timeout)
        return self

    def _wait_for_port(self, timeout: float) -> int:
        assert self.process is not None and self.log_path is not None
        deadline = time.monotonic() + timeout
        while True:
            match = _LISTENING.search(self.log_path.read_bytes())
            if match:
                return int(match.group(1))
            if self.process.poll() is not None:
                pytest.fail(
                    f"trow exited with status {self.process.returncode} before listening; log:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"trow did not log its port within {timeout:.0f}s; log:\n{self.log()}")
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait for a clean exit; returns the exit status (kill -9 if it hangs)."""
        process = self._take()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                pytest.fail(f"trow did not stop within {timeout:.0f}s of SIGTERM; log:\n{self.log()}")
        return process.returncode

    def stop_cleanly(self) -> None:
        """SIGTERM, and check that trow shut down in order with no error logged on the way.

        Twisted re-raises the terminating signal after an orderly shutdown, so a clean exit is
        status -SIGTERM (0 is accepted too).
        """
        status = self.stop()
        log = self.log()
        assert status in (0, -signal.SIGTERM), f"trow exited with status {status}; log:\n{log}"
        assert "Main loop terminated" in log, f"no orderly shutdown in the log:\n{log}"
        assert "Traceback" not in log and "Unhandled" not in log, f"errors were logged:\n{log}"

    def kill(self) -> None:
        """kill -9: no shutdown code runs, exactly like a crash or an OOM kill."""
        process = self._take()
        if process.poll() is None:
            process.kill()
        process.wait()

    def restart(self, timeout: float = START_TIMEOUT) -> "TrowProcess":
        """Stop (SIGTERM) if still running, then start again on the same data dir."""
        if self.running:
            self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """Leave no process behind (for fixture teardown)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _LIVE.discard(self.process)

    def _take(self) -> subprocess.Popen[bytes]:
        assert self.process is not None, "trow was never started"
        _LIVE.discard(self.process)
        return self.process

    # -- what tests look at -----------------------------------------------------------------

    @property
    def host(self) -> str:
        """C{127.0.0.1:<port>}: the registry host part of image references."""
        assert self.port is not None
        return f"{LOOPBACK}:{self.port}"

    def ref(self, repo_and_tag: str) -> str:
        """A skopeo docker:// reference to C{repo:tag} (or C{repo@digest}) on this trow."""
        return f"docker://{self.host}/{repo_and_tag}"

    def ports(self) -> list[int]:
        """Every port this run logged it listens on (one per --listen), in order."""
        assert self.log_path is not None
        # dict.fromkeys: twist's JSON log repeats each message in several fields.
        return list(dict.fromkeys(int(port) for port in _LISTENING.findall(self.log_path.read_bytes())))

    def log(self) -> str:
        """The log of the current (or last) run."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def status_kib(self, field_name: str) -> int:
        """A C{kB} field of /proc/<pid>/status, e.g. VmHWM (peak RSS) or VmRSS."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
        raise AssertionError(f"{field_name} not in /proc/{self.pid}/status")

    def peak_rss_bytes(self) -> int:
        """Peak resident memory of the trow process so far (VmHWM)."""
        return self.status_kib("VmHWM") * 1024

    def tmp_entries(self) -> list[str]:
        """What the data dir's C{tmp/} holds right now."""
        tmp = self.data_dir / "tmp"
        return sorted(os.listdir(tmp)) if tmp.exists() else []

    def request(self, method: str, path: str, **kwargs: Any) -> "RawResponse":
        """A raw HTTP request to this trow (see L{raw_request})."""
        assert self.port is not None
        return raw_request(self.port, method, path, **kwargs)


# -- raw HTTP --------------------------------------------------------------------------------


@dataclass
class RawResponse:
    """A response exactly as it came off the socket."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header C{name} (case-insensitive), or None."""
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)

    def error_codes(self) -> list[str]:
        return [e["code"] for e in self.json()["errors"]]


def raw_request(
    port: int,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    timeout: float = 30.0,
) -> RawResponse:
    """Send one HTTP/1.1 request, byte for byte as given, on a fresh connection, and read it all.

    Header lines go out in order and may repeat (two C{Accept:} lines are two lines). The request
    says C{Connection: close}, so the body is everything up to EOF: a HEAD that wrongly sent a
    body would show one.
    """
    lines = [f"{method} {path} HTTP/1.1", f"Host: {LOOPBACK}:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(request)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
    return parse_response(bytes(received))


def parse_response(raw: bytes) -> RawResponse:
    """Split a complete non-chunked HTTP/1.1 response into its parts."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response header in {raw[:200]!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    _, status, reason = (status_line.split(" ", 2) + [""])[:3]
    headers = []
    for line in header_lines:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return RawResponse(int(status), reason, headers, body)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Can we bind C{port} ourselves, so that nobody listens on it?

    SO_REUSEADDR, as Twisted's listeners use it: connections of an earlier run lingering in
    TIME_WAIT do not count, only a socket that is bound or listening.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class PortWatcher:
    """Tries to connect to a port over and over while a process runs: did it ever accept?"""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                    self.accepted = True
                    return
            except OSError:
                time.sleep(0.005)

    def __enter__(self) -> "PortWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


class StreamingRequest:
    """A request whose body (C{size} pseudo-random bytes, with Content-Length) is sent a MiB at
    a time, so that a test can act in the middle of it (kill trow, hang up)."""

    def __init__(self, trow: TrowProcess, method: str, path: str, size: int, seed: int) -> None:
        assert trow.port is not None
        self.size = size
        self.sent = 0
        self._chunks = pseudo_random_chunks(size, seed)
        self.sock = socket.create_connection((LOOPBACK, trow.port), timeout=60)
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {trow.host}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
        )
        self.sock.sendall(head.encode())

    def send_until(self, done: Callable[[], bool]) -> bool:
        """Send chunks until C{done()} holds (True) or one chunk is left unsent (False)."""
        for chunk in self._chunks:
            self.sock.sendall(chunk)
            self.sent += len(chunk)
            if done():
                return True
            if self.sent >= self.size - MIB:
                return False
        return False

    def finish(self) -> RawResponse:
        """Send the rest and read the response."""
        for chunk in self._chunks:
            self.sock.sendall(chunk)
            self.sent += len(chunk)
        received = bytearray()
        while data := self.sock.recv(65536):
            received += data
        self.sock.close()
        return parse_response(bytes(received))

    def abandon(self) -> None:
        """Hang up without sending the rest."""
        self.sock.close()


def digest_of_stream(size: int, seed: int) -> str:
    """The digest of the body a L{StreamingRequest} with C{size} and C{seed} sends."""
    h = hashlib.sha256()
    for chunk in pseudo_random_chunks(size, seed):
        h.update(chunk)
    return "sha256:" + h.hexdigest()


def run_concurrently(calls: Sequence[Callable[[], Any]], timeout: float = 180.0) -> list[Any]:
    """Run every call at once, each on its own thread, released together; their results in order.
    A call that raised fails the test with its exception."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [RuntimeError("not run")] * len(calls)

    def run(i: int) -> None:
        try:
            barrier.wait(30)
            results[i] = calls[i]()
        except BaseException as e:  # reported below
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    for result in results:
        if isinstance(result, BaseException):
            raise AssertionError(f"a client failed: {result!r}")
    return results


def get_and_hash(trow: TrowProcess, path: str) -> tuple[int, str, int]:
    """GET C{path}, hashing the body as it streams in: (status, sha256 digest, body length)."""
    assert trow.port is not None
    connection = http.client.HTTPConnection(LOOPBACK, trow.port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        h = hashlib.sha256()
        length = 0
        while chunk := response.read(MIB):
            h.update(chunk)
            length += len(chunk)
        return response.status, "sha256:" + h.hexdigest(), length
    finally:
        connection.close()


# -- skopeo ----------------------------------------------------------------------------------


class Skopeo:
    """Runs skopeo with a policy of our own, failing the test with skopeo's stderr on error."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.policy = workdir / "policy.json"
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        self.auth = workdir / "auth.json"
        self.auth.write_text("{}")

    def run(self, *args: str, check: bool = True, timeout: float = SKOPEO_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
        argv = ["skopeo", "--policy", str(self.policy), *args]
        # An empty auth file of our own: no credentials of the machine's user are ever read.
        env = dict(os.environ, REGISTRY_AUTH_FILE=str(self.auth))
        result = subprocess.run(argv, capture_output=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            pytest.fail(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr.decode(errors='replace')}"
            )
        return result

    def push(self, source: str, dest: str, *flags: str) -> None:
        """skopeo copy to a plain-HTTP trow, digests preserved (fails if skopeo would change one)."""
        self.run("copy", "--preserve-digests", "--dest-tls-verify=false", *flags, source, dest)

    def pull(self, source: str, dest: str, *flags: str) -> None:
        """skopeo copy from a plain-HTTP trow, digests preserved."""
        self.run("copy", "--preserve-digests", "--src-tls-verify=false", *flags, source, dest)

    def inspect_raw(self, ref: str, *flags: str) -> bytes:
        """The manifest bytes exactly as the registry served them."""
        return self.run("inspect", "--raw", *flags, ref).stdout


# -- OCI layouts -----------------------------------------------------------------------------


def layout_blob(layout: Path, digest: str) -> Path:
    """The file of C{digest} inside an OCI image layout."""
    algorithm, hexdigest = digest.split(":", 1)
    return layout / "blobs" / algorithm / hexdigest


def layout_ref(layout: Path, tag: str) -> dict[str, Any]:
    """The descriptor that C{index.json} of a layout holds for C{tag}."""
    index = json.loads((layout / "index.json").read_text())
    for desc in index["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return dict(desc)
    raise AssertionError(f"{tag} not in {layout}/index.json: {index}")


def walk_image(layout: Path, digest: str) -> list[tuple[str, int]]:
    """Every blob reachable from manifest or index C{digest}, in manifest order, with its size.

    The root manifest comes first, then (for an index) each child's tree, or (for an image) the
    config and the layers.
    """
    path = layout_blob(layout, digest)
    document = json.loads(path.read_bytes())
    found = [(digest, path.stat().st_size)]
    if document.get("mediaType") == OCI_INDEX or "manifests" in document:
        for child in document["manifests"]:
            found += walk_image(layout, child["digest"])
    else:
        for desc in [document["config"], *document["layers"]]:
            found.append((desc["digest"], desc["size"]))
    return found


def assert_same_image(source: Path, source_tag: str, pulled: Path, pulled_tag: str) -> list[str]:
    """The pulled layout holds exactly the source image: same root digest, same tree, every blob
    intact (hashed again here, not taken from file names). Returns the digests compared."""
    source_root = layout_ref(source, source_tag)["digest"]
    pulled_root = layout_ref(pulled, pulled_tag)["digest"]
    assert pulled_root == source_root, "the pulled image has another manifest digest"
    expected = walk_image(source, source_root)
    got = walk_image(pulled, pulled_root)
    assert got == expected, "the pulled image references other blobs than the pushed one"
    for digest, size in got:
        path = layout_blob(pulled, digest)
        assert path.stat().st_size == size, f"{digest}: pulled {path.stat().st_size} bytes, expected {size}"
        assert sha256_file(str(path)) == digest, f"{digest}: pulled bytes do not hash to their digest"
    return [digest for digest, _ in got]


@dataclass
class Images:
    """The small test images, built once per session in one OCI layout."""

    layout: Path
    # tag -> descriptor, for "multi" (one image, three gzip layers) and "multiarch" (an index).
    refs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def source(self, tag: str) -> str:
        """The skopeo reference of a tag in the source layout."""
        return f"oci:{self.layout}:{tag}"

    def manifest_bytes(self, tag: str) -> bytes:
        return layout_blob(self.layout, self.refs[tag]["digest"]).read_bytes()

    def tree(self, tag: str) -> list[tuple[str, int]]:
        return walk_image(self.layout, self.refs[tag]["digest"])


def build_images(path: Path) -> Images:
    """A layout with a multi-layer image (tag C{multi}) and a two-platform index (C{multiarch})."""
    layout = Layout(str(path))
    # About 2 MiB of incompressible bytes: big enough that trow spools the body to disk.
    big_file = b"".join(pseudo_random_chunks(2 * (1 << 20) + 12345, seed=3))
    images = Images(path)
    images.refs["multi"] = layout.image(
        [],
        tag="multi",
        gzip_layers=[
            {"etc/hostname": b"trow-test\n"},
            {"usr/share/data.bin": big_file},
            {"app/run.sh": b"#!/bin/sh\necho hello\n", "app/README": b"multi-layer test image\n"},
        ],
    )
    children = [
        layout.image([], arch=arch, gzip_layers=[{"arch": arch.encode()}, {f"bin/{arch}": arch.encode() * 5000}])
        for arch in ("amd64", "arm64")
    ]
    images.refs["multiarch"] = layout.image_index(children, tag="multiarch")
    return images


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    """The small test images (read-only: tests pull into layouts of their own)."""
    return build_images(tmp_path_factory.mktemp("images") / "layout")


@pytest.fixture(scope="session")
def skopeo(tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    require_tool("skopeo", "skopeo")
    return Skopeo(tmp_path_factory.mktemp("skopeo"))


@pytest.fixture
def trow_factory(tmp_path: Path) -> Iterator[Callable[..., TrowProcess]]:
    """Make (and start) trow processes for one test; all of them are gone after it.

    Call it as C{trow_factory(name="a", start=True, **TrowProcess-arguments)}. After the test
    their data dirs are removed too (some hold hundreds of MB); their logs are kept.
    """
    made: list[TrowProcess] = []

    def make(name: str = "trow", start: bool = True, **kwargs: Any) -> TrowProcess:
        instance = TrowProcess(tmp_path / name, **kwargs)
        made.append(instance)
        if start:
            instance.start()
        return instance

    try:
        yield make
    finally:
        for instance in made:
            instance.close()
        for instance in made:
            shutil.rmtree(instance.data_dir, ignore_errors=True)


@pytest.fixture
def trow(trow_factory: Callable[..., TrowProcess]) -> TrowProcess:
    """A running trow of this test's own, on a fresh data dir."""
    return trow_factory()


@pytest.fixture(scope="session")
def shared_trow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrowProcess]:
    """One trow for the whole session, for tests that never stop or crash it. Tests use
    repository names of their own, so they do not see each other's content.

    At the end it must shut down in order with no error in its log: a traceback that no test
    response showed (a failure after a client hung up, say) still fails the run.
    """
    instance = TrowProcess(tmp_path_factory.mktemp("shared-trow"))
    try:
        instance.start()
        yield instance
        instance.stop_cleanly()
    finally:
        instance.close()


@dataclass
class Published:
    """The session images, pushed to the shared trow."""

    trow: TrowProcess
    images: Images
    # tag -> repository it was pushed to (with the same tag)
    repos: dict[str, str]


@pytest.fixture(scope="session")
def published(shared_trow: TrowProcess, images: Images, skopeo: Skopeo) -> Published:
    """C{multi} and C{multiarch} pushed once to the shared trow, for read-only protocol tests."""
    repos = {"multi": "fixture/multi", "multiarch": "fixture/multiarch"}
    skopeo.push(images.source("multi"), shared_trow.ref(f"{repos['multi']}:multi"))
    skopeo.push(images.source("multiarch"), shared_trow.ref(f"{repos['multiarch']}:multiarch"), "--all")
    return Published(shared_trow, images, repos)
