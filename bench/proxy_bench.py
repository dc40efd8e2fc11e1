#!/usr/bin/env python3
"""Pull-through cache benchmark: trow against distribution's proxy mode, in one run, on one upstream.

Everything runs on 127.0.0.1 in a temporary directory that is removed at the end:

    upstream      docker-registry (distribution), filesystem storage, access log on stdout
    distribution  docker-registry with proxy.remoteurl = the upstream, its own storage
    trow          twistd -n --pidfile= trow, with the upstream as registry_proxies entry "up"

With --https (the default), the same measurements (except the manifest loop) run a second time
against an HTTPS upstream, after the plain-HTTP daemons have stopped:

    upstream-tls      docker-registry on the same storage, over TLS with a certificate for
                      127.0.0.1 and localhost signed by a CA made for this run (in the temp dir)
    distribution-tls  proxy.remoteurl = https://127.0.0.1:PORT, trusting the CA via SSL_CERT_FILE
    trow-tls          registry_proxies entry "up" with insecure: false and ca_file: the CA

and the direct reference is this script's client over http.client.HTTPSConnection with an ssl
context that trusts the CA. The run also measures sha256 on one core (hashlib over in-memory
data) and prints "the limit" of a verified cold GET for each kind of upstream, min(direct speed,
sha256 speed), with each target's ratio to it, and the CPU seconds per GB that the serving
process, the client and the upstream used during the cold rows.

The same client code fetches the same content directly from the upstream, through trow
(/v2/f/up/<repo>/...) and through distribution (/v2/<repo>/...), and the script prints a markdown
table of the measured values and of the ratios against the reference measured in the same run.
Cold measurements restart the proxy on empty storage before every request, then warm the new
process (not its cache) up with a GET of a small blob, so that they time a cold cache in a running
server rather than the first request of a new process (reported separately, for information).

The trow under test is whatever C{twistd} beside this interpreter imports: the installed package
(C{pip install .}), or a tree put first with PYTHONPATH. The children never run in the repository.

    python bench/proxy_bench.py                   # defaults: 512 MiB blob, 3 repetitions
    python bench/proxy_bench.py --blob-mib 128 --reps 5 --json out.json
    python bench/proxy_bench.py --profile /tmp/prof   # also profile trow with py-spy afterwards
    python bench/proxy_bench.py --no-https            # plain-HTTP upstream only

Every loop is bounded by a count and by the --max-seconds deadline; every child process and the
temporary directory are removed on the way out, whatever happened.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import hashlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"
MIB = 1 << 20
MB = 1_000_000
REPO = "bench/app"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
READ_BUFFER = 1 * MIB
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

_TROW_LISTENING = re.compile(rb"TrowSite starting on (\d+)")


class BenchError(Exception):
    """Something in the set-up or a measurement went wrong; the message says what."""


# -- deadline ----------------------------------------------------------------------------------


class Deadline:
    """The run's time budget: every wait and every loop checks it."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise BenchError(f"the --max-seconds budget ran out during {what}")

    def cap(self, seconds: float) -> float:
        """C{seconds}, or what is left of the budget if that is less (at least 1s)."""
        return max(1.0, min(seconds, self.left()))


# -- child processes ---------------------------------------------------------------------------

# Every child started by this script, so that any exit path can end them (by pid).
_CHILDREN: list[subprocess.Popen[bytes]] = []


def _end_children() -> None:
    for process in list(_CHILDREN):
        if process.poll() is None:
            try:
                process.terminate()
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            except ProcessLookupError:
                pass
        _CHILDREN.remove(process)


atexit.register(_end_children)


def _exit_on_signal(signum: int, _frame: Any) -> None:
    # Raise, so that the finally blocks run and remove the children and the temp dir.
    raise SystemExit(128 + signum)


def script(name: str) -> str:
    """The console script C{name} of this interpreter (beside it, not a pyenv shim)."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(beside):
        return beside
    found = shutil.which(name)
    if found is None:
        raise BenchError(f"{name} is not installed (run 'pip install .' in the trow repository)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def vm_hwm_bytes(pid: int) -> int | None:
    """The peak resident set size of a live process (VmHWM), in bytes."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, irq + softirq) CPU seconds of the whole machine so far, all cores, from /proc/stat.

    Interrupt time (loopback TCP runs largely in softirq) is counted in no process's stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, (values[5] + values[6]) / tick


# -- TLS material for the HTTPS upstream -------------------------------------------------------


@dataclass
class Tls:
    """A CA made for this run and a serving certificate it signed, for 127.0.0.1 and localhost."""

    ca_path: str
    cert_path: str
    key_path: str

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this run's CA (and checks the name: 127.0.0.1)."""
        return ssl.create_default_context(cafile=self.ca_path)


def make_tls(directory: str) -> Tls:
    """Write ca.crt, tls.crt and tls.key into C{directory}.

    The same recipe as trow/certs.py (ECDSA P-256, a path-length-0 CA, a server-auth leaf), with
    an IP address in the leaf's subjectAltName: the upstream is dialled as 127.0.0.1.
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    os.makedirs(directory, exist_ok=True)
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    end = start + datetime.timedelta(days=1)

    def usage(ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trow proxy_bench CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = Tls(*(os.path.join(directory, n) for n in ("ca.crt", "tls.crt", "tls.key")))
    with open(paths.ca_path, "wb") as handle:
        handle.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths.cert_path, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(paths.key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    return paths


# -- sha256 speed ------------------------------------------------------------------------------


def sha256_mb_per_s(total_mib: int, deadline: Deadline, piece_mib: int = 16) -> float:
    """hashlib.sha256 over C{total_mib} MiB of in-memory data, on one core (this thread), in MB/s.

    One piece of pseudo-random data, already touched, is fed again and again, so that neither
    fresh memory nor the disk is in the measurement: only the hash.
    """
    piece = memoryview(next(pseudo_random_chunks(piece_mib * MIB, seed=99, chunk=piece_mib * MIB)))
    hashlib.sha256(piece).digest()  # touch the pages, warm the code
    hasher = hashlib.sha256()
    start = time.perf_counter()
    for _ in range(max(1, total_mib // piece_mib)):
        deadline.check("the sha256 measurement")
        hasher.update(piece)
    seconds = time.perf_counter() - start
    return max(1, total_mib // piece_mib) * piece_mib * MIB / MB / seconds


class Daemon:
    """One child server process with its own log files."""

    def __init__(self, name: str, workdir: str) -> None:
        self.name = name
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.starts = 0
        self.peak_rss = 0  # the largest VmHWM seen over all of this daemon's processes
        self.label = "start"  # what the current process is used for (set by the benchmark)
        self.peak_by_label: dict[str, int] = {}
        self.stdout_path = ""
        self.stderr_path = ""
        # The context clients of this daemon use, if it serves HTTPS (None: plain HTTP).
        self.ssl_context: ssl.SSLContext | None = None
        # Extra environment for the child (SSL_CERT_FILE for distribution's proxy).
        self.env: dict[str, str] = {}

    def _spawn(self, argv: Sequence[str]) -> None:
        self.starts += 1
        self.stdout_path = os.path.join(self.workdir, f"{self.name}-{self.starts}.out")
        self.stderr_path = os.path.join(self.workdir, f"{self.name}-{self.starts}.err")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            env = {**os.environ, **self.env} if self.env else None
            self.process = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=self.workdir, env=env
            )
        _CHILDREN.append(self.process)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu_seconds(self) -> float:
        """User plus system CPU time the current process has used so far."""
        if not self.running():
            return float("nan")
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def sample_rss(self) -> None:
        """Record the current process's VmHWM (a high-water mark: reading it last is enough)."""
        if self.running():
            hwm = vm_hwm_bytes(self.pid)
            if hwm is not None:
                self.peak_rss = max(self.peak_rss, hwm)
                self.peak_by_label[self.label] = max(self.peak_by_label.get(self.label, 0), hwm)

    def stop(self) -> None:
        """SIGTERM (kill after STOP_TIMEOUT), recording the peak RSS first."""
        self.sample_rss()
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process in _CHILDREN:
            _CHILDREN.remove(process)

    def tail(self, lines: int = 20) -> str:
        out = []
        for path in (self.stdout_path, self.stderr_path):
            if path and os.path.exists(path):
                with open(path, "rb") as handle:
                    text = handle.read()[-8000:].decode("utf-8", "replace")
                out.append("\n".join(text.splitlines()[-lines:]))
        return "\n".join(out)

    def wait_http(self, deadline: Deadline, path: str = "/v2/") -> None:
        """Wait until C{GET path} answers 200 (the process may still be binding)."""
        assert self.port is not None
        end = time.monotonic() + deadline.cap(START_TIMEOUT)
        while True:
            if not self.running():
                raise BenchError(f"{self.name} exited before answering; its log:\n{self.tail()}")
            try:
                status, _, _ = http_request(self.port, "GET", path, timeout=2, context=self.ssl_context)
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > end:
                raise BenchError(f"{self.name} did not answer {path} in time; its log:\n{self.tail()}")
            time.sleep(0.05)


class Distribution(Daemon):
    """docker-registry (distribution 2.8) on its own storage dir: the upstream or a proxy."""

    def __init__(
        self,
        name: str,
        workdir: str,
        storage: str,
        remote: str | None = None,
        access_log: bool = False,
        level: str = "info",
        tls: Tls | None = None,
        trust_ca: str | None = None,
    ) -> None:
        super().__init__(name, workdir)
        self.storage = storage
        self.remote = remote
        self.access_log = access_log
        self.level = level
        self.tls = tls  # serve HTTPS with this certificate
        if tls is not None:
            self.ssl_context = tls.client_context()
        if trust_ca is not None:  # Go reads the roots from SSL_CERT_FILE on Linux
            self.env["SSL_CERT_FILE"] = trust_ca

    def _config(self, port: int) -> str:
        # JSON is YAML: no YAML writer needed.
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": self.level, "accesslog": {"disabled": not self.access_log}},
            "storage": {
                "filesystem": {"rootdirectory": self.storage},
                "cache": {"blobdescriptor": "inmemory"},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"{LOOPBACK}:{port}", "secret": "trow-bench-not-a-secret"},
        }
        if self.tls is not None:
            config["http"]["tls"] = {"certificate": self.tls.cert_path, "key": self.tls.key_path}
        if self.remote is not None:
            config["proxy"] = {"remoteurl": self.remote}
        path = os.path.join(self.workdir, f"{self.name}.yml")
        with open(path, "w") as handle:
            json.dump(config, handle, indent=2)
        return path

    def start(self, deadline: Deadline, fresh: bool = False) -> "Distribution":
        if fresh:
            shutil.rmtree(self.storage, ignore_errors=True)
        os.makedirs(self.storage, exist_ok=True)
        for _attempt in range(3):  # another process may take the free port before we bind it
            self.port = free_port()
            self._spawn(["docker-registry", "serve", self._config(self.port)])
            try:
                self.wait_http(deadline)
                return self
            except BenchError:
                if "address already in use" not in self.tail():
                    raise
                self.stop()
                self.port = None
        raise BenchError(f"{self.name}: could not bind a free port")

    def restart_fresh(self, deadline: Deadline) -> None:
        self.stop()
        self.start(deadline, fresh=True)

    def blob_stored(self, digest: str, repo: str) -> bool:
        """Has this proxy committed the blob to its storage and linked it into C{repo}?"""
        algorithm, hex_ = digest.split(":", 1)
        root = os.path.join(self.storage, "docker", "registry", "v2")
        data = os.path.join(root, "blobs", algorithm, hex_[:2], hex_, "data")
        link = os.path.join(root, "repositories", repo, "_layers", algorithm, hex_, "link")
        return os.path.exists(data) and os.path.exists(link)


class Trow(Daemon):
    """twistd -n --pidfile= trow, proxying the upstream under the alias C{up}."""

    def __init__(self, workdir: str, data_dir: str, upstream_port: int, name: str = "trow", ca_file: str | None = None) -> None:
        super().__init__(name, workdir)
        self.data_dir = data_dir
        self.config_path = os.path.join(workdir, f"{name}.yml")
        entry: dict[str, Any] = {"host": f"{LOOPBACK}:{upstream_port}", "alias": "up", "insecure": True}
        if ca_file is not None:  # HTTPS, verified against this run's CA
            entry.update(insecure=False, ca_file=ca_file)
        config = {"registry_proxies": {"registries": [entry]}}
        with open(self.config_path, "w") as handle:
            json.dump(config, handle, indent=2)

    def start(self, deadline: Deadline, fresh: bool = False) -> "Trow":
        if fresh:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        argv = [
            script("twistd"),
            "-n",
            "--pidfile=",
            "trow",
            "--listen",
            f"tcp:0:interface={LOOPBACK}",
            "--data-dir",
            self.data_dir,
            "--config",
            self.config_path,
        ]
        self._spawn(argv)
        end = time.monotonic() + deadline.cap(START_TIMEOUT)
        while True:
            with open(self.stdout_path, "rb") as handle:
                match = _TROW_LISTENING.search(handle.read())
            if match:
                self.port = int(match.group(1))
                break
            if not self.running():
                raise BenchError(f"trow exited before listening; its log:\n{self.tail()}")
            if time.monotonic() > end:
                raise BenchError(f"trow did not log its port in time; its log:\n{self.tail()}")
            time.sleep(0.05)
        self.wait_http(deadline)
        return self

    def restart_fresh(self, deadline: Deadline) -> None:
        self.stop()
        self.start(deadline, fresh=True)


# -- HTTP client -------------------------------------------------------------------------------


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
    context: ssl.SSLContext | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = connect(port, timeout, context)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def connect(port: int, timeout: float, context: ssl.SSLContext | None = None, **kwargs: Any) -> http.client.HTTPConnection:
    """An HTTP connection to 127.0.0.1:C{port}, or an HTTPS one verified with C{context}."""
    if context is not None:
        return http.client.HTTPSConnection(LOOPBACK, port, timeout=timeout, context=context, **kwargs)
    return http.client.HTTPConnection(LOOPBACK, port, timeout=timeout, **kwargs)


@dataclass
class Fetch:
    """One blob GET as the client saw it."""

    first_byte: float  # seconds from sending the request to the first body byte
    seconds: float  # from sending the request to the last byte read (and hashed)
    size: int

    @property
    def mb_per_s(self) -> float:
        return self.size / MB / self.seconds


def fetch_blob(
    port: int, path: str, size: int, digest: str, verify: bool, timeout: float, context: ssl.SSLContext | None = None
) -> Fetch:
    """GET a blob, read the whole body into one reused buffer and (if C{verify}) sha256 it.

    With C{context}, over HTTPS (the TLS handshake is part of the first-byte time)."""
    hasher = hashlib.sha256() if verify else None
    buffer = memoryview(bytearray(READ_BUFFER))
    conn = connect(port, timeout, context)
    try:
        start = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        if response.status != 200:
            raise BenchError(f"GET {path} on port {port}: {response.status} {response.read()[:300]!r}")
        # read1 returns as soon as any body bytes arrived: that is the first-byte time.
        first = response.read1(64 * 1024)
        first_byte = time.perf_counter() - start
        if hasher is not None:
            hasher.update(first)
        received = len(first)
        while received < size:
            n = response.readinto(buffer)
            if n == 0:
                break
            if hasher is not None:
                hasher.update(buffer[:n])
            received += n
        if hasher is not None and received == size:
            actual = "sha256:" + hasher.hexdigest()
            if actual != digest:
                raise BenchError(f"GET {path} on port {port}: body hashes to {actual}, not {digest}")
        seconds = time.perf_counter() - start
    finally:
        conn.close()
    if received != size:
        raise BenchError(f"GET {path} on port {port}: got {received} of {size} bytes")
    return Fetch(first_byte, seconds, size)


def manifest_loop(port: int, path: str, accept: str, count: int, conns: int, deadline: Deadline) -> tuple[float, int, int]:
    """C{count} GETs of C{path} spread over C{conns} keep-alive connections, one thread each.

    A small raw-socket HTTP/1.1 client rather than http.client, so that the client (which shares
    the two cores and the GIL) costs as little as possible per request. Returns (requests per
    second, requests done, non-200 answers).
    """
    request = (f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nAccept: {accept}\r\nUser-Agent: trow-bench\r\n\r\n").encode()
    per_conn = [count // conns + (1 if i < count % conns else 0) for i in range(conns)]
    done = [0] * conns
    bad = [0] * conns
    errors: list[BaseException] = []
    barrier = threading.Barrier(conns + 1)
    stop_at = time.monotonic() + deadline.cap(120.0)

    def worker(index: int) -> None:
        try:
            sock = socket.create_connection((LOOPBACK, port), timeout=30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            barrier.abort()
            return
        pending = b""
        try:
            barrier.wait(30)
            for _ in range(per_conn[index]):
                if time.monotonic() > stop_at:
                    break
                sock.sendall(request)
                while b"\r\n\r\n" not in pending:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise BenchError("server closed the connection")
                    pending += chunk
                head, _, pending = pending.partition(b"\r\n\r\n")
                status = int(head[9:12])
                match = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
                if match is None:
                    raise BenchError(f"response without Content-Length: {head[:200]!r}")
                length = int(match.group(1))
                while len(pending) < length:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise BenchError("server closed the connection mid-body")
                    pending += chunk
                pending = pending[length:]
                done[index] += 1
                if status != 200:
                    bad[index] += 1
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            sock.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(conns)]
    for thread in threads:
        thread.start()
    try:
        barrier.wait(30)
    except threading.BrokenBarrierError:
        pass  # a worker failed to connect: reported below
    start = time.perf_counter()
    for thread in threads:
        thread.join(deadline.cap(180.0))
    seconds = time.perf_counter() - start
    if errors:
        raise BenchError(f"manifest loop on port {port}: {errors[0]!r}")
    total = sum(done)
    return total / seconds, total, sum(bad)


# -- test content ------------------------------------------------------------------------------


def pseudo_random_chunks(size: int, seed: int, chunk: int = 4 * MIB) -> Iterator[bytes]:
    """C{size} reproducible pseudo-random bytes, one chunk at a time (never the whole blob).

    One random block is made and repeated, each copy starting with its own counter, so that no
    two chunks are equal and nothing larger than a chunk is in memory.
    """
    import random

    block = bytearray(random.Random(seed).randbytes(chunk))
    sent = 0
    counter = 0
    while sent < size:
        block[:16] = counter.to_bytes(8, "big") + seed.to_bytes(8, "big")
        n = min(chunk, size - sent)
        yield bytes(block[:n])
        sent += n
        counter += 1


def write_blob(path: str, size: int, seed: int) -> str:
    """Write a pseudo-random blob file in chunks; return its sha256 digest."""
    hasher = hashlib.sha256()
    with open(path, "wb") as handle:
        for chunk in pseudo_random_chunks(size, seed):
            hasher.update(chunk)
            handle.write(chunk)
    return "sha256:" + hasher.hexdigest()


def push_blob(port: int, repo: str, digest: str, size: int, path: str | None = None, data: bytes | None = None) -> None:
    """Monolithic upload: POST for a session, then one PUT with the whole body and the digest."""
    status, headers, body = http_request(port, "POST", f"/v2/{repo}/blobs/uploads/")
    if status != 202:
        raise BenchError(f"upstream refused an upload session: {status} {body[:300]!r}")
    location = urlsplit(headers["Location"])
    target = location.path + "?" + (location.query + "&" if location.query else "") + f"digest={digest}"
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=300, blocksize=READ_BUFFER)
    try:
        put_headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        if path is not None:
            with open(path, "rb") as handle:
                conn.request("PUT", target, body=handle, headers=put_headers)
                response = conn.getresponse()
        else:
            conn.request("PUT", target, body=data, headers=put_headers)
            response = conn.getresponse()
        answer = response.read()
        if response.status != 201:
            raise BenchError(f"upstream refused blob {digest}: {response.status} {answer[:300]!r}")
    finally:
        conn.close()


@dataclass
class Content:
    """What was pushed to the upstream."""

    big: str
    big_size: int
    fanout: str
    fanout_size: int
    manifest: str
    manifest_size: int
    config: str
    config_size: int
    # Distinct small blobs: each is a cold blob for each proxy once, with no restart needed.
    small: list[str] = field(default_factory=list)
    small_size: int = 0


def push_content(
    upstream_port: int, workdir: str, blob_size: int, fanout_size: int, small_count: int = 0, small_size: int = 0
) -> Content:
    """Generate the layer blobs and a config, push them, and push a manifest naming them."""
    small = []
    for index in range(small_count):
        data = b"".join(pseudo_random_chunks(small_size, seed=1000 + index))
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        push_blob(upstream_port, REPO, digest, small_size, data=data)
        small.append(digest)
    blobs = {}
    for label, size, seed in (("big", blob_size, 1), ("fanout", fanout_size, 2)):
        path = os.path.join(workdir, f"{label}.blob")
        digest = write_blob(path, size, seed)
        push_blob(upstream_port, REPO, digest, size, path=path)
        os.unlink(path)  # the upstream has its own copy: keep the disk footprint at one per store
        blobs[label] = (digest, size)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    push_blob(upstream_port, REPO, config_digest, len(config), data=config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER, "digest": digest, "size": size}
                for digest, size in [*blobs.values(), *((d, small_size) for d in small)]
            ],
        },
        indent=3,
    ).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    status, _, body = http_request(
        upstream_port, "PUT", f"/v2/{REPO}/manifests/latest", body=manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    if status != 201:
        raise BenchError(f"upstream refused the manifest: {status} {body[:300]!r}")
    return Content(
        big=blobs["big"][0],
        big_size=blobs["big"][1],
        fanout=blobs["fanout"][0],
        fanout_size=blobs["fanout"][1],
        manifest=manifest_digest,
        manifest_size=len(manifest),
        config=config_digest,
        config_size=len(config),
        small=small,
        small_size=small_size,
    )


# -- upstream access log -----------------------------------------------------------------------


class AccessLog:
    """The upstream's access log (combined format, on its stdout), read from an offset."""

    def __init__(self, upstream: Distribution) -> None:
        self.upstream = upstream

    def offset(self) -> int:
        return os.path.getsize(self.upstream.stdout_path)

    def lines(self, since: int) -> list[str]:
        with open(self.upstream.stdout_path, "rb") as handle:
            handle.seek(since)
            return handle.read().decode("utf-8", "replace").splitlines()

    def count(self, since: int, method: str, path: str) -> int:
        needle = f'"{method} {path} '
        return sum(1 for line in self.lines(since) if needle in line)

    def wait_quiet(self, since: int, deadline: Deadline, quiet: float = 1.5, limit: float = 60.0) -> None:
        """Wait until the log has not grown for C{quiet} seconds (requests finish before logging)."""
        end = time.monotonic() + deadline.cap(limit)
        size = self.offset()
        still_since = time.monotonic()
        while time.monotonic() < end:
            time.sleep(0.1)
            now = self.offset()
            if now != size:
                size, still_since = now, time.monotonic()
            elif time.monotonic() - still_since >= quiet:
                return


# -- measurements ------------------------------------------------------------------------------


@dataclass
class CpuSample:
    """CPU seconds used while one cold GET was served, from sending the request to the last byte.

    C{server} is the process the client talked to (the upstream itself for direct); C{upstream}
    is the upstream while a proxy was served (None for direct); C{client} is the fetching thread
    (recv, TLS, sha256); C{machine} is every core's busy time, other processes included, and
    C{interrupts} the part of it spent in irq and softirq (loopback TCP, block I/O completions).
    """

    server: float
    client: float
    upstream: float | None
    machine: float
    interrupts: float
    seconds: float
    size: int


@dataclass
class Results:
    cold: dict[tuple[str, bool], list[Fetch]] = field(default_factory=dict)
    warm: dict[tuple[str, bool], list[Fetch]] = field(default_factory=dict)
    first_byte: dict[str, list[Fetch]] = field(default_factory=dict)
    # CPU seconds the serving process used per GB it served (the upstream for direct).
    cold_cpu_per_gb: dict[str, list[float]] = field(default_factory=dict)
    warm_cpu_per_gb: dict[str, list[float]] = field(default_factory=dict)
    fanout_gets: dict[str, int] = field(default_factory=dict)
    fanout_heads: dict[str, int] = field(default_factory=dict)
    fanout_seconds: dict[str, float] = field(default_factory=dict)
    manifest_rps: dict[str, list[float]] = field(default_factory=dict)
    manifest_upstream_requests: dict[str, int] = field(default_factory=dict)
    warm_upstream_gets: int = 0
    peak_rss: dict[str, int] = field(default_factory=dict)
    trow_peak_by_phase: dict[str, int] = field(default_factory=dict)
    # The warm-up GET of the small config blob right after each restart: a cold process too.
    first_after_start: dict[str, list[Fetch]] = field(default_factory=dict)
    # Every process's CPU time during each cold GET of the big blob.
    cold_cpu: dict[tuple[str, bool], list[CpuSample]] = field(default_factory=dict)


TARGETS = ("direct", "trow", "distribution")


class Bench:
    """The daemons and the measurements of one kind of upstream: plain HTTP, or HTTPS with C{tls}.

    The HTTPS bench serves the plain bench's content: its upstream runs on the same storage
    directory (nothing is pushed twice), and its daemons have names and directories of their own.
    """

    def __init__(self, args: argparse.Namespace, workdir: str, deadline: Deadline, tls: Tls | None = None) -> None:
        self.args = args
        self.workdir = workdir
        self.deadline = deadline
        self.tls = tls
        self.kind = "HTTPS" if tls is not None else "HTTP"
        self.suffix = "-tls" if tls is not None else ""
        self.upstream = Distribution(
            "upstream" + self.suffix, workdir, os.path.join(workdir, "upstream-storage"), access_log=True, level="warn", tls=tls
        )
        self.distribution: Distribution | None = None
        self.trow: Trow | None = None
        self.log = AccessLog(self.upstream)
        self.content: Content | None = None
        self.results = Results()
        self.trow_location = "?"

    def say(self, message: str) -> None:
        if not self.args.quiet:
            prefix = f"{self.kind} upstream: " if self.tls is not None else ""
            print(f"[{time.strftime('%H:%M:%S')}] {prefix}{message}", file=sys.stderr, flush=True)

    # -- set-up ----------------------------------------------------------------------------------

    def setup(self, content: Content | None = None) -> None:
        """Start the upstream, push the content (unless given: already on the shared storage),
        and start both proxies on empty storage."""
        # The trow the children run: whatever this interpreter imports outside the repository
        # (an installed package, or PYTHONPATH).
        self.trow_location = version_of(
            [sys.executable, "-c", "import os, trow; print(os.path.dirname(trow.__file__))"], cwd=self.workdir
        )
        commit = version_of(["git", "-C", os.path.dirname(self.trow_location), "rev-parse", "--short", "HEAD"])
        if commit != "unknown":  # an editable install (pip install -e .) runs the checkout itself
            self.trow_location += f" (git {commit})"
        self.say("starting the upstream registry")
        self.upstream.start(self.deadline)
        assert self.upstream.port is not None
        if content is not None:
            self.content = content
            self._start_proxies()
            return
        self.say(
            f"pushing a {self.args.blob_mib} MiB blob, a {self.args.fanout_mib} MiB blob, "
            f"{self.args.first_byte_samples} blobs of {self.args.first_byte_mib} MiB and a manifest"
        )
        self.content = push_content(
            self.upstream.port,
            self.workdir,
            self.args.blob_mib * MIB,
            self.args.fanout_mib * MIB,
            self.args.first_byte_samples,
            self.args.first_byte_mib * MIB,
        )
        self._start_proxies()

    def _start_proxies(self) -> None:
        assert self.upstream.port is not None
        scheme = "https" if self.tls is not None else "http"
        remote = f"{scheme}://{LOOPBACK}:{self.upstream.port}"
        name = "distribution" + self.suffix
        ca = self.tls.ca_path if self.tls is not None else None
        self.distribution = Distribution(
            name, self.workdir, os.path.join(self.workdir, f"{name}-storage"), remote=remote, trust_ca=ca
        )
        name = "trow" + self.suffix
        self.trow = Trow(self.workdir, os.path.join(self.workdir, f"{name}-data"), self.upstream.port, name=name, ca_file=ca)
        self.say("starting distribution (proxy mode) and trow")
        self.distribution.start(self.deadline, fresh=True)
        self.trow.start(self.deadline, fresh=True)

    # -- addressing ------------------------------------------------------------------------------

    def port(self, target: str) -> int:
        port = self.daemon(target).port
        assert port is not None
        return port

    @staticmethod
    def path(target: str, kind: str, reference: str) -> str:
        repo = f"f/up/{REPO}" if target == "trow" else REPO
        return f"/v2/{repo}/{kind}/{reference}"

    def daemon(self, target: str) -> Daemon:
        daemon = {"direct": self.upstream, "trow": self.trow, "distribution": self.distribution}[target]
        assert daemon is not None
        return daemon

    def fetch(
        self,
        target: str,
        digest: str,
        size: int,
        verify: bool,
        cpu: dict[str, list[float]] | None = None,
        breakdown: dict[tuple[str, bool], list[CpuSample]] | None = None,
    ) -> Fetch:
        """GET a blob through C{target}; with C{cpu}, also record the server's CPU seconds per GB;
        with C{breakdown}, the CPU seconds of the server, this thread, the upstream and the machine."""
        self.deadline.check(f"a GET through {target}")
        daemon = self.daemon(target)
        before = daemon.cpu_seconds()
        upstream_before = self.upstream.cpu_seconds()
        machine_before, interrupts_before = machine_busy_seconds()
        client_before = time.thread_time()
        fetch = fetch_blob(
            self.port(target),
            self.path(target, "blobs", digest),
            size,
            digest,
            verify,
            self.deadline.cap(300.0),
            context=daemon.ssl_context,
        )
        client = time.thread_time() - client_before
        machine, interrupts = (now - then for now, then in zip(machine_busy_seconds(), (machine_before, interrupts_before)))
        server = daemon.cpu_seconds() - before
        upstream = self.upstream.cpu_seconds() - upstream_before
        if cpu is not None:
            cpu.setdefault(target, []).append(server / (size / 1e9))
        if breakdown is not None:
            sample = CpuSample(
                server, client, None if target == "direct" else upstream, machine, interrupts, fetch.seconds, size
            )
            breakdown.setdefault((target, verify), []).append(sample)
        return fetch

    def restart_fresh(self, target: str, label: str) -> None:
        """Restart a proxy on empty storage, then warm the process (not the cache) up.

        The warm-up GET of the small config blob goes through the whole proxy path (upstream
        client, connection pool, threads, streaming), so that the next cold blob measures a cold
        cache in a running server, not the first request of a new process.
        """
        assert self.content is not None
        daemon = self.trow if target == "trow" else self.distribution
        assert daemon is not None
        daemon.restart_fresh(self.deadline)
        daemon.label = label
        first = self.fetch(target, self.content.config, self.content.config_size, verify=True)
        self.results.first_after_start.setdefault(target, []).append(first)

    def settle(self, limit: float = 30.0, window: float = 0.25, busy: float = 0.02) -> float:
        """Wait until this bench's daemons are idle (each under C{busy} CPU seconds per C{window});
        return the seconds waited.

        distribution keeps filling its cache (a second upstream GET and a disk write) after its
        client is served, and would otherwise compete with the next cold GET (usually direct's).
        """
        daemons = [d for d in (self.upstream, self.trow, self.distribution) if d is not None and d.running()]
        start = time.monotonic()
        end = start + self.deadline.cap(limit)
        before = [d.cpu_seconds() for d in daemons]
        while time.monotonic() < end:
            time.sleep(window)
            now = [d.cpu_seconds() for d in daemons]
            if all(n - b < busy for n, b in zip(now, before)):
                break
            before = now
        return time.monotonic() - start

    @staticmethod
    def order(rep: int) -> list[str]:
        """Rotate the order of the targets between repetitions, so none always goes first."""
        shift = rep % len(TARGETS)
        return list(TARGETS[shift:] + TARGETS[:shift])

    # -- 1: cold GETs of the big blob -------------------------------------------------------------

    def cold(self) -> None:
        assert self.content is not None
        c = self.content
        for rep in range(self.args.reps):
            for verify in (True, False):
                for target in self.order(rep):
                    if target != "direct":
                        self.restart_fresh(target, "cold and warm rows")
                    # Distribution keeps filling its cache in the background after the client is
                    # served, so the CPU it used by then is only part of its cost: not recorded.
                    cpu = self.results.cold_cpu_per_gb if target != "distribution" else None
                    waited = self.settle()
                    fetch = self.fetch(target, c.big, c.big_size, verify, cpu, self.results.cold_cpu)
                    self.results.cold.setdefault((target, verify), []).append(fetch)
                    self.say(
                        f"cold rep {rep + 1}/{self.args.reps} {'verified' if verify else 'unverified'} {target}: "
                        f"{fetch.mb_per_s:.0f} MB/s, first byte {fetch.first_byte * 1000:.1f} ms "
                        f"(after {waited:.1f}s waiting for the daemons to go idle)"
                    )

    # -- 2: first byte of cold blobs ------------------------------------------------------------

    def first_bytes(self) -> None:
        """Time to first byte on distinct small cold blobs, in running (warmed-up) proxies."""
        assert self.content is not None
        c = self.content
        for index, digest in enumerate(c.small):
            for target in self.order(index):
                self.settle(limit=5.0)  # no cache fill of the previous blob still running
                fetch = self.fetch(target, digest, c.small_size, verify=True)
                self.results.first_byte.setdefault(target, []).append(fetch)
        self.say(
            "first byte, medians over "
            + ", ".join(f"{t} {ms_first_byte(fs):.1f} ms" for t, fs in self.results.first_byte.items())
        )

    # -- 3: warm GETs ----------------------------------------------------------------------------

    def warm(self) -> None:
        assert self.content is not None and self.distribution is not None
        c = self.content
        # The last cold GETs filled both caches; distribution stores in the background, so wait
        # until its copy is committed before calling anything it serves "warm".
        end = time.monotonic() + self.deadline.cap(120.0)
        while not self.distribution.blob_stored(c.big, REPO):
            if time.monotonic() > end:
                raise BenchError("distribution did not store the blob it proxied")
            time.sleep(0.1)
        self.log.wait_quiet(self.log.offset(), self.deadline, quiet=1.0)
        for target in ("trow", "distribution"):  # one unmeasured GET: caches hot, links made
            self.fetch(target, c.big, c.big_size, verify=False)
        since = self.log.offset()
        for rep in range(self.args.warm_reps):
            for verify in (True, False):
                for target in self.order(rep):
                    fetch = self.fetch(target, c.big, c.big_size, verify, self.results.warm_cpu_per_gb)
                    self.results.warm.setdefault((target, verify), []).append(fetch)
                    self.say(
                        f"warm rep {rep + 1}/{self.args.warm_reps} {'verified' if verify else 'unverified'} {target}: "
                        f"{fetch.mb_per_s:.0f} MB/s"
                    )
        direct_gets = 2 * self.args.warm_reps  # the direct GETs are in the upstream's log too
        self.results.warm_upstream_gets = self.log.count(since, "GET", f"/v2/{REPO}/blobs/{c.big}") - direct_gets

    # -- 4: concurrent clients on one uncached blob ---------------------------------------------

    def fanout(self) -> None:
        assert self.content is not None and self.distribution is not None
        c = self.content
        clients = self.args.clients
        for target in ("trow", "distribution"):
            self.restart_fresh(target, "concurrent clients row")
            since = self.log.offset()
            barrier = threading.Barrier(clients + 1)
            errors: list[BaseException] = []

            def client() -> None:
                try:
                    barrier.wait(30)
                    self.fetch(target, c.fanout, c.fanout_size, verify=True)
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
            for thread in threads:
                thread.start()
            barrier.wait(30)
            start = time.perf_counter()
            for thread in threads:
                thread.join(self.deadline.cap(300.0))
            self.results.fanout_seconds[target] = time.perf_counter() - start
            if errors:
                raise BenchError(f"{clients} concurrent GETs through {target}: {errors[0]!r}")
            if target == "distribution":
                end = time.monotonic() + self.deadline.cap(60.0)
                while not self.distribution.blob_stored(c.fanout, REPO) and time.monotonic() < end:
                    time.sleep(0.1)
            self.log.wait_quiet(since, self.deadline)
            path = f"/v2/{REPO}/blobs/{c.fanout}"
            self.results.fanout_gets[target] = self.log.count(since, "GET", path)
            self.results.fanout_heads[target] = self.log.count(since, "HEAD", path)
            self.say(
                f"{clients} concurrent cold GETs through {target}: {self.results.fanout_gets[target]} upstream GETs, "
                f"{self.results.fanout_heads[target]} HEADs, {self.results.fanout_seconds[target]:.1f}s"
            )

    # -- 5: cached manifest by digest ------------------------------------------------------------

    def manifests(self) -> None:
        assert self.content is not None
        c = self.content
        for target in ("trow", "distribution"):
            self.restart_fresh(target, "manifest row")
        for target in TARGETS:  # prime the caches
            port = self.port(target)
            status, _, body = http_request(port, "GET", self.path(target, "manifests", c.manifest), headers={"Accept": OCI_MANIFEST})
            if status != 200 or "sha256:" + hashlib.sha256(body).hexdigest() != c.manifest:
                raise BenchError(f"manifest GET through {target}: {status} {body[:300]!r}")
        self.log.wait_quiet(self.log.offset(), self.deadline, quiet=0.5)
        warmup = max(1, self.args.manifest_requests // 10)
        for rep in range(self.args.reps):
            for target in self.order(rep):
                self.deadline.check(f"the manifest loop through {target}")
                port = self.port(target)
                path = self.path(target, "manifests", c.manifest)
                manifest_loop(port, path, OCI_MANIFEST, warmup, self.args.manifest_conns, self.deadline)
                since = self.log.offset()
                rps, done, bad = manifest_loop(
                    port, path, OCI_MANIFEST, self.args.manifest_requests, self.args.manifest_conns, self.deadline
                )
                if bad:
                    raise BenchError(f"manifest loop through {target}: {bad} of {done} answers were not 200")
                if done < self.args.manifest_requests:
                    raise BenchError(f"manifest loop through {target} stopped after {done} requests (deadline)")
                self.results.manifest_rps.setdefault(target, []).append(rps)
                if target != "direct":
                    self.log.wait_quiet(since, self.deadline, quiet=0.3, limit=5)
                    extra = len(self.log.lines(since))
                    self.results.manifest_upstream_requests[target] = (
                        self.results.manifest_upstream_requests.get(target, 0) + extra
                    )
                self.say(f"manifest rep {rep + 1}/{self.args.reps} {target}: {rps:.0f} req/s")

    # -- profiling (optional, after the measured run) --------------------------------------------

    def profile(self, out_dir: str) -> None:
        """Run the cold, warm and manifest work again on a fresh trow under py-spy record."""
        assert self.content is not None and self.trow is not None
        spy = shutil.which("py-spy")
        if spy is None:
            self.say("py-spy is not installed (pip install py-spy): no profile")
            return
        os.makedirs(out_dir, exist_ok=True)
        c = self.content
        self.restart_fresh("trow", "profile")
        def cold() -> None:
            self.fetch("trow", c.big, c.big_size, verify=False)

        def warm() -> None:
            for _ in range(self.args.reps):
                self.fetch("trow", c.big, c.big_size, verify=False)

        def manifests() -> None:
            path = self.path("trow", "manifests", c.manifest)
            manifest_loop(
                self.port("trow"), path, OCI_MANIFEST, self.args.manifest_requests, self.args.manifest_conns, self.deadline
            )

        phases: list[tuple[str, Callable[[], None]]] = [("cold", cold), ("warm", warm), ("manifest", manifests)]
        for phase, work in phases:
            if phase == "manifest":  # fetched from the upstream before, so that only hits are profiled
                path = self.path("trow", "manifests", c.manifest)
                for _ in range(3):
                    http_request(self.port("trow"), "GET", path, headers={"Accept": OCI_MANIFEST})
            raw = os.path.join(out_dir, f"trow-{phase}.txt")
            argv = [spy, "record", "--pid", str(self.trow.pid), "--rate", "250", "--nonblocking", "--threads", "--format", "raw", "-o", raw]
            with open(os.path.join(out_dir, f"py-spy-{phase}.log"), "wb") as log:
                recorder = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            _CHILDREN.append(recorder)
            try:
                time.sleep(1.0)  # py-spy attaches
                work()
            finally:
                recorder.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                try:
                    recorder.wait(30)
                except subprocess.TimeoutExpired:
                    recorder.kill()
                    recorder.wait()
                _CHILDREN.remove(recorder)
            if os.path.exists(raw):
                summary = summarize_profile(raw)
                with open(os.path.join(out_dir, f"trow-{phase}-summary.txt"), "w") as handle:
                    handle.write(summary)
                print(f"\n### trow under py-spy: {phase}\n\n```\n{summary}```")
            else:
                self.say(f"py-spy wrote no profile for {phase}; see {out_dir}/py-spy-{phase}.log")

    def collect_rss(self) -> None:
        """Read every daemon's peak RSS into the results (VmHWM: reading it last is enough)."""
        for role, daemon in (("trow", self.trow), ("distribution", self.distribution), ("upstream", self.upstream)):
            if daemon is not None:
                daemon.sample_rss()
                self.results.peak_rss[role] = daemon.peak_rss
        if self.trow is not None:
            self.results.trow_peak_by_phase = dict(self.trow.peak_by_label)

    def stop_all(self) -> None:
        for daemon in (self.trow, self.distribution, self.upstream):
            if daemon is not None:
                daemon.stop()


def summarize_profile(raw_path: str, top: int = 12) -> str:
    """Samples per thread, each thread's hottest leaf frames (with their caller), and trow's own
    functions by inclusive time, from a py-spy C{--threads --format raw} file."""
    threads: dict[str, dict[str, int]] = {}
    inclusive: dict[str, int] = {}
    total = 0
    with open(raw_path) as handle:
        for line in handle:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
            frames = [f for f in frames if not f.startswith(("thread", "process"))]
            if not frames:
                continue
            total += count
            caller = frames[-2].split(" (")[0] + " > " if len(frames) > 1 else ""
            leaves = threads.setdefault(thread, {})
            leaves[caller + frames[-1]] = leaves.get(caller + frames[-1], 0) + count
            for frame in set(frames):
                if "(trow/" in frame:
                    inclusive[frame] = inclusive.get(frame, 0) + count
    lines = [f"{total} samples of busy threads at 250 Hz ({total / 250:.1f} thread-seconds)"]
    for thread, leaves in sorted(threads.items(), key=lambda kv: -sum(kv[1].values())):
        samples = sum(leaves.values())
        lines += ["", f"{thread}: {100 * samples / max(total, 1):.1f}% of the samples; its hottest frames:"]
        for name, n in sorted(leaves.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"  {100 * n / samples:5.1f}%  {name}")
    lines += ["", "trow's own functions, inclusive (share of all samples):"]
    for name, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / max(total, 1):5.1f}%  {name}")
    return "\n".join(lines) + "\n"


# -- report ------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mbps(fetches: Sequence[Fetch]) -> float:
    return median([f.mb_per_s for f in fetches])


def ms_first_byte(fetches: Sequence[Fetch]) -> float:
    return median([f.first_byte * 1000 for f in fetches])


def machine() -> str:
    model = ""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    sha = "with SHA extensions" if "sha_ni" in flags else "no SHA extensions"
    return f"{os.cpu_count()} cores ({model or platform.processor()}, {sha}), {mem:.0f} GiB RAM, Linux {platform.release()}"


def table(args: argparse.Namespace, results: Results) -> str:
    r = results
    rows: list[list[str]] = []

    def fmt(value: float, digits: int = 0) -> str:
        return "n/a" if value != value else f"{value:,.{digits}f}"

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    def mark(ok: bool) -> str:
        return "yes" if ok else "**no**"

    def near(value: float, threshold: float) -> str:
        # Two decimals, or three where two would round a miss (or a pass) onto the threshold.
        return f"{value:.3f}" if round(value, 2) == threshold else f"{value:.2f}"

    def blob_rows(number: str, kind: str, samples: Any, cpu_per_gb: Any, distribution_cpu: bool) -> None:
        """The throughput rows (verified, not verified) and the CPU-per-GB row of one cache state."""
        for verify in (True, False):
            label = "sha256 verified" if verify else "not verified"
            direct = mbps(samples.get(("direct", verify), []))
            trow = mbps(samples.get(("trow", verify), []))
            dist = mbps(samples.get(("distribution", verify), []))
            rows.append(
                [
                    number,
                    f"{kind} blob GET, {label} (MB/s)",
                    fmt(direct),
                    fmt(trow),
                    fmt(dist),
                    f"{near(ratio(trow, direct), 0.9)}x direct",
                    f"{ratio(dist, direct):.2f}x",
                    ">= 0.9x direct",
                    mark(ratio(trow, direct) >= 0.9),
                ]
            )
        cpu = {t: median(v) for t, v in cpu_per_gb.items()}
        nan = float("nan")
        # Distribution's cold CPU is not comparable: it keeps filling its cache after the client is served.
        rows.append(
            [
                number,
                "  same, server CPU seconds per GB served (information)",
                fmt(cpu.get("direct", nan), 2),
                fmt(cpu.get("trow", nan), 2),
                fmt(cpu.get("distribution", nan), 2) if distribution_cpu else "",
                f"{ratio(cpu.get('trow', nan), cpu.get('direct', nan)):.1f}x direct",
                f"{ratio(cpu.get('distribution', nan), cpu.get('direct', nan)):.1f}x" if distribution_cpu else "",
                "(information)",
                "",
            ]
        )

    blob_rows("1", "cold", r.cold, r.cold_cpu_per_gb, distribution_cpu=False)
    first_trow = ms_first_byte(r.first_byte.get("trow", []))
    first_dist = ms_first_byte(r.first_byte.get("distribution", []))
    first_direct = ms_first_byte(r.first_byte.get("direct", []))
    rows.append(
        [
            "2",
            f"cold blob GET, time to first byte, median of {args.first_byte_samples} {args.first_byte_mib} MiB blobs (ms)",
            fmt(first_direct, 1),
            fmt(first_trow, 1),
            fmt(first_dist, 1),
            f"{near(ratio(first_trow, first_dist), 1.0)}x distribution",
            f"{ratio(first_dist, first_direct):.2f}x",
            "<= distribution",
            mark(first_trow <= first_dist),
        ]
    )
    after_trow = ms_first_byte(r.first_after_start.get("trow", []))
    after_dist = ms_first_byte(r.first_after_start.get("distribution", []))
    rows.append(
        [
            "2",
            "  same, first request after a restart (small blob; the process is cold too) (ms)",
            "",
            fmt(after_trow, 1),
            fmt(after_dist, 1),
            f"{ratio(after_trow, after_dist):.2f}x distribution",
            "",
            "(information)",
            "",
        ]
    )
    blob_rows("3", "warm", r.warm, r.warm_cpu_per_gb, distribution_cpu=True)
    gets_trow = r.fanout_gets.get("trow", -1)
    gets_dist = r.fanout_gets.get("distribution", -1)
    rows.append(
        [
            "4",
            f"upstream GETs for 1 uncached blob, {args.clients} concurrent clients",
            "1",
            str(gets_trow),
            str(gets_dist),
            f"{gets_trow - 1:+d} vs ideal",
            "",
            "exactly 1",
            mark(gets_trow == 1),
        ]
    )
    rows.append(
        [
            "4",
            f"  same: wall time until all {args.clients} had the {args.fanout_mib} MiB blob (s)",
            "",
            fmt(r.fanout_seconds.get("trow", float("nan")), 1),
            fmt(r.fanout_seconds.get("distribution", float("nan")), 1),
            f"{ratio(r.fanout_seconds.get('trow', float('nan')), r.fanout_seconds.get('distribution', float('nan'))):.2f}x distribution",
            "",
            "(information)",
            "",
        ]
    )
    rps = {t: median(v) for t, v in r.manifest_rps.items()}
    rows.append(
        [
            "5",
            f"cached manifest GET by digest, {args.manifest_conns} keep-alive conns (req/s)",
            fmt(rps.get("direct", float("nan"))),
            fmt(rps.get("trow", float("nan"))),
            fmt(rps.get("distribution", float("nan"))),
            f"{near(ratio(rps.get('trow', float('nan')), rps.get('distribution', float('nan'))), 1.0)}x distribution",
            f"{ratio(rps.get('distribution', float('nan')), rps.get('direct', float('nan'))):.2f}x",
            ">= distribution",
            mark(rps.get("trow", 0) >= rps.get("distribution", float("inf"))),
        ]
    )
    rss_trow = r.peak_rss.get("trow", 0) / MB
    rss_dist = r.peak_rss.get("distribution", 0) / MB
    rss_up = r.peak_rss.get("upstream", 0) / MB
    rows.append(
        [
            "6",
            "peak RSS over the run, VmHWM (MB; direct = the upstream)",
            fmt(rss_up),
            fmt(rss_trow),
            fmt(rss_dist),
            f"{ratio(rss_trow, rss_dist):.2f}x distribution",
            "",
            "< 150 MB",
            mark(0 < rss_trow < 150),
        ]
    )
    header = ["#", "measurement", "direct", "trow", "distribution", "trow ratio", "distribution / direct", "target", "met"]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def version_of(argv: Sequence[str], cwd: str | None = None) -> str:
    """The first line a short command prints ("unknown" if it fails)."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, cwd=cwd)
        return done.stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--blob-mib", type=int, default=512, help="size of the blob for the throughput rows (1-3)")
    parser.add_argument("--fanout-mib", type=int, default=64, help="size of the blob the concurrent clients fetch (4)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each measurement (the table shows medians)")
    parser.add_argument(
        "--warm-reps", type=int, default=None, help="repetitions of the warm rows, which are cheap (default: 3 x --reps)"
    )
    parser.add_argument("--first-byte-samples", type=int, default=10, help="distinct cold blobs for the first-byte row (2)")
    parser.add_argument("--first-byte-mib", type=int, default=4, help="size of each of those blobs")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients on one uncached blob (4)")
    parser.add_argument("--manifest-requests", type=int, default=5000, help="measured manifest GETs per target and repetition (5)")
    parser.add_argument("--manifest-conns", type=int, default=8, help="keep-alive connections for the manifest GETs (5)")
    parser.add_argument("--max-seconds", type=float, default=900, help="give up (and clean up) after this long")
    parser.add_argument("--tmp", default=None, help="parent of the temporary directory (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs) for a post-mortem")
    parser.add_argument("--json", default=None, help="also write every raw sample to this JSON file")
    parser.add_argument("--profile", default=None, metavar="DIR", help="afterwards, profile trow with py-spy and write to DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--https",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run rows 1-4 against an HTTPS upstream with a certificate from the run's own CA (rows 7-10)",
    )
    args = parser.parse_args(argv)
    for name in ("blob_mib", "fanout_mib", "reps", "clients", "manifest_requests", "manifest_conns", "first_byte_samples", "first_byte_mib"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warm_reps is None:
        args.warm_reps = 3 * args.reps
    elif args.warm_reps < 1:
        parser.error("--warm-reps must be at least 1")
    return args


def raw_results(r: Results) -> dict[str, Any]:
    """Every raw sample of one bench, for --json."""
    return {
        "cold": {f"{t}/{'verified' if v else 'unverified'}": [vars(f) for f in fs] for (t, v), fs in r.cold.items()},
        "warm": {f"{t}/{'verified' if v else 'unverified'}": [vars(f) for f in fs] for (t, v), fs in r.warm.items()},
        "fanout_gets": r.fanout_gets,
        "fanout_heads": r.fanout_heads,
        "fanout_seconds": r.fanout_seconds,
        "manifest_rps": r.manifest_rps,
        "manifest_upstream_requests": r.manifest_upstream_requests,
        "peak_rss": r.peak_rss,
        "trow_peak_rss_by_phase": r.trow_peak_by_phase,
        "first_after_start": {t: [vars(f) for f in fs] for t, fs in r.first_after_start.items()},
        "first_byte": {t: [vars(f) for f in fs] for t, fs in r.first_byte.items()},
        "cold_cpu_per_gb": r.cold_cpu_per_gb,
        "warm_cpu_per_gb": r.warm_cpu_per_gb,
        "cold_cpu": {f"{t}/{'verified' if v else 'unverified'}": [vars(c) for c in cs] for (t, v), cs in r.cold_cpu.items()},
    }


def _fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None or value != value else f"{value:,.{digits}f}"


def _ratio(a: float, b: float) -> float:
    return a / b if b and b == b and a == a else float("nan")


def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def side_by_side_table(args: argparse.Namespace, benches: Sequence["Bench"]) -> str:
    """Rows 7-10: the cold, first-byte, warm, concurrent and memory rows for each kind of upstream."""
    rows: list[list[str]] = []
    nan = float("nan")

    def speed_rows(number: str, state: str, label: str, verify: bool, target: str) -> None:
        for bench in benches:
            samples = bench.results.cold if state == "cold" else bench.results.warm
            direct, trow, dist = (mbps(samples.get((t, verify), [])) for t in TARGETS)
            ok = trow > dist if target == "> distribution" else _ratio(trow, direct) >= 0.9
            rows.append(
                [
                    number,
                    f"{state} blob GET, {label} (MB/s)",
                    bench.kind,
                    _fmt(direct),
                    _fmt(trow),
                    _fmt(dist),
                    f"{_ratio(trow, direct):.2f}x",
                    f"{_ratio(trow, dist):.2f}x",
                    f"{_ratio(dist, direct):.2f}x",
                    target,
                    _mark(ok),
                ]
            )

    speed_rows("7", "cold", "sha256 verified", True, "> distribution")
    speed_rows("7", "cold", "not verified", False, "> distribution")
    for bench in benches:
        direct, trow, dist = (ms_first_byte(bench.results.first_byte.get(t, [])) for t in TARGETS)
        rows.append(
            [
                "8",
                f"cold blob GET, time to first byte, median of {args.first_byte_samples} {args.first_byte_mib} MiB blobs (ms)",
                bench.kind,
                _fmt(direct, 1),
                _fmt(trow, 1),
                _fmt(dist, 1),
                f"{_ratio(trow, direct):.2f}x",
                f"{_ratio(trow, dist):.2f}x",
                f"{_ratio(dist, direct):.2f}x",
                "<= distribution",
                _mark(trow <= dist),
            ]
        )
    speed_rows("9", "warm", "sha256 verified", True, ">= 0.9x direct")
    speed_rows("9", "warm", "not verified", False, ">= 0.9x direct")
    for bench in benches:
        gets_trow = bench.results.fanout_gets.get("trow", -1)
        gets_dist = bench.results.fanout_gets.get("distribution", -1)
        rows.append(
            [
                "10",
                f"upstream GETs for 1 uncached {args.fanout_mib} MiB blob, {args.clients} concurrent clients "
                f"(wall time until all had it, s)",
                bench.kind,
                "1",
                f"{gets_trow} ({_fmt(bench.results.fanout_seconds.get('trow', nan), 1)} s)",
                f"{gets_dist} ({_fmt(bench.results.fanout_seconds.get('distribution', nan), 1)} s)",
                "",
                "",
                "",
                "exactly 1",
                _mark(gets_trow == 1),
            ]
        )
    for bench in benches:
        rss = {role: bench.results.peak_rss.get(role, 0) / MB for role in ("upstream", "trow", "distribution")}
        rows.append(
            [
                "10",
                "peak RSS of every trow process of this section, VmHWM (MB; direct = the upstream)",
                bench.kind,
                _fmt(rss["upstream"]),
                _fmt(rss["trow"]),
                _fmt(rss["distribution"]),
                "",
                f"{_ratio(rss['trow'], rss['distribution']):.2f}x",
                "",
                "< 150 MB",
                _mark(0 < rss["trow"] < 150),
            ]
        )
    header = [
        "#", "measurement", "upstream", "direct", "trow", "distribution",
        "trow / direct", "trow / distribution", "distribution / direct", "target", "met",
    ]
    return _markdown(header, rows)


def limit_table(benches: Sequence["Bench"], sha: Sequence[float]) -> str:
    """The limit of a verified cold GET for each kind of upstream, and each target's ratio to it."""
    sha_best = max(sha) if sha else float("nan")
    rows = []
    for bench in benches:
        cold = bench.results.cold
        direct_raw = mbps(cold.get(("direct", False), []))
        limit = min(direct_raw, sha_best)
        trow_v = mbps(cold.get(("trow", True), []))
        trow_u = mbps(cold.get(("trow", False), []))
        dist_v = mbps(cold.get(("distribution", True), []))
        dist_u = mbps(cold.get(("distribution", False), []))
        direct_v = mbps(cold.get(("direct", True), []))
        bound = "sha256" if sha_best < direct_raw else "direct"
        rows.append(
            [
                bench.kind,
                _fmt(direct_raw),
                _fmt(sha_best),
                f"{_fmt(limit)} ({bound})",
                f"{_fmt(trow_v)} = {_ratio(trow_v, limit):.2f}x",
                f"{_fmt(trow_u)} = {_ratio(trow_u, limit):.2f}x",
                f"{_fmt(dist_v)} = {_ratio(dist_v, limit):.2f}x",
                f"{_fmt(dist_u)} = {_ratio(dist_u, limit):.2f}x",
                f"{_fmt(direct_v)} = {_ratio(direct_v, limit):.2f}x",
                ">= 0.9x the limit (trow, verified)",
                _mark(_ratio(trow_v, limit) >= 0.9),
            ]
        )
    header = [
        "upstream", "direct, not verified (MB/s)", "sha256, one core (MB/s)", "the limit (MB/s)",
        "trow cold, verified", "trow cold, not verified", "distribution cold, verified",
        "distribution cold, not verified", "direct, verified (the client hashes in line)", "target", "met",
    ]
    return _markdown(header, rows)


def cpu_table(benches: Sequence["Bench"]) -> str:
    """CPU seconds per GB of each process during the cold GETs, and how many cores were busy."""
    rows = []
    cores = os.cpu_count() or 0
    for bench in benches:
        for verify in (True, False):
            for target in TARGETS:
                samples = bench.results.cold_cpu.get((target, verify), [])
                if not samples:
                    continue

                def per_gb(value: Callable[[CpuSample], float | None]) -> float:
                    values = [value(c) for c in samples]
                    known = [v / (c.size / 1e9) for v, c in zip(values, samples) if v is not None]
                    return median(known) if known else float("nan")

                def busy(value: Callable[[CpuSample], float]) -> float:
                    return median([value(c) / c.seconds for c in samples])

                def three(c: CpuSample) -> float:
                    return c.server + c.client + (c.upstream or 0.0)

                rows.append(
                    [
                        bench.kind,
                        {"direct": "direct (server = the upstream)", "trow": "trow", "distribution": "distribution"}[target],
                        "verified" if verify else "not verified",
                        _fmt(median([c.size / MB / c.seconds for c in samples])),
                        _fmt(per_gb(lambda c: c.server), 2),
                        _fmt(per_gb(lambda c: c.client), 2),
                        _fmt(per_gb(lambda c: c.upstream), 2) if target != "direct" else "",
                        _fmt(per_gb(three), 2),
                        f"{_fmt(per_gb(lambda c: c.machine), 2)} ({_fmt(per_gb(lambda c: c.interrupts), 2)})",
                        _fmt(busy(three), 2),
                        f"{_fmt(busy(lambda c: c.machine), 2)} of {cores}",
                    ]
                )
    header = [
        "upstream", "target", "client", "MB/s", "serving process (s/GB)", "client thread (s/GB)", "upstream (s/GB)",
        "the three (s/GB)", "whole machine (s/GB) (of which irq + softirq)", "the three / wall time (cores)", "whole machine / wall time (cores)",
    ]
    return _markdown(header, rows)


def report(
    args: argparse.Namespace,
    bench: "Bench",
    seconds: float,
    load_before: float,
    load_after: float,
    secure: "Bench | None" = None,
    sha: Sequence[float] = (),
) -> None:
    """Print the header lines and the tables (and write the JSON file if asked)."""
    r = bench.results
    print(f"## trow pull-through cache benchmark, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}\n")
    print(f"- machine: {machine()}")
    print(
        f"- versions: {version_of(['docker-registry', '--version'])}; Python {platform.python_version()}; "
        f"Twisted {version_of([sys.executable, '-c', 'import twisted; print(twisted.__version__)'])}; "
        f"trow imported from {bench.trow_location}"
    )
    print(
        f"- work: {args.blob_mib} MiB blob (rows 1 and 3), {args.fanout_mib} MiB blob (row 4), {args.reps} repetitions "
        f"({args.warm_reps} for row 3; medians shown), {args.manifest_requests} manifest GETs over {args.manifest_conns} "
        f"connections per repetition; "
        f"MB = 10^6 bytes"
    )
    print(f"- run took {seconds:.0f}s; 1-minute load average before {load_before:.2f}, after {load_after:.2f}")
    for b in (bench, secure):
        if b is None:
            continue
        phases = ", ".join(f"{label} {hwm / MB:.0f}" for label, hwm in b.results.trow_peak_by_phase.items())
        manifests = (
            f"upstream requests during the manifest rows: trow {b.results.manifest_upstream_requests.get('trow', 0)}, "
            f"distribution {b.results.manifest_upstream_requests.get('distribution', 0)}; "
            if b is bench
            else ""
        )
        print(
            f"- checks{'' if b is bench else ' (' + b.kind + ' upstream)'}: upstream GETs during the warm rows: "
            f"{b.results.warm_upstream_gets} (want 0); {manifests}upstream HEADs in row {4 if b is bench else 10}: trow "
            f"{b.results.fanout_heads.get('trow', 0)}, distribution {b.results.fanout_heads.get('distribution', 0)}; "
            f"trow peak RSS (MB) by process: {phases}"
        )
    if sha:
        print(f"- sha256 on one core (hashlib, {SHA_MIB} MiB in memory), MB/s: {', '.join(f'{v:,.0f}' for v in sha)}")
    print()
    print(table(args, r), flush=True)
    benches = [b for b in (bench, secure) if b is not None]
    if secure is not None:
        print(f"\n### Plain-HTTP and HTTPS upstreams side by side (rows 1-4 again, for each kind)\n")
        print(side_by_side_table(args, benches), flush=True)
    print("\n### The limit of a verified cold GET: min(direct not verified, sha256 on one core)\n")
    print(limit_table(benches, sha), flush=True)
    print("\n### CPU during the cold GETs (medians; CPU seconds per GB served, from the request to the last byte)\n")
    print(cpu_table(benches), flush=True)
    if args.json:
        raw = raw_results(r)
        raw["args"] = vars(args)
        raw["sha256_mb_per_s"] = list(sha)
        if secure is not None:
            raw["https"] = raw_results(secure.results)
        with open(args.json, "w") as handle:
            json.dump(raw, handle, indent=2)


# hashlib.sha256 over this much in-memory data per sample of the limit's sha256 speed.
SHA_MIB = 512
SHA_SAMPLES = 3


def measure_sha256(bench: "Bench", deadline: Deadline, into: list[float]) -> None:
    for _ in range(SHA_SAMPLES):
        into.append(sha256_mb_per_s(SHA_MIB, deadline))
    bench.say("sha256 on one core: " + ", ".join(f"{v:,.0f}" for v in into[-SHA_SAMPLES:]) + " MB/s")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("docker-registry") is None:
        print("docker-registry is not installed (apt-get install docker-registry)", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    deadline = Deadline(args.max_seconds)
    workdir = tempfile.mkdtemp(prefix="trow-bench-", dir=args.tmp)
    bench = Bench(args, workdir, deadline)
    secure: Bench | None = None
    sha: list[float] = []
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    try:
        bench.setup()
        measure_sha256(bench, deadline, sha)
        bench.cold()
        bench.first_bytes()
        bench.warm()
        bench.fanout()
        bench.manifests()
        bench.collect_rss()
        if args.https:
            # The plain proxies stop (the profile restarts trow if asked); the plain upstream stays
            # up, idle, and the HTTPS upstream serves the same storage.
            for daemon in (bench.trow, bench.distribution):
                if daemon is not None:
                    daemon.stop()
            secure = Bench(args, workdir, deadline, tls=make_tls(os.path.join(workdir, "tls")))
            assert bench.content is not None
            secure.setup(bench.content)
            secure.cold()
            secure.first_bytes()
            secure.warm()
            secure.fanout()
            secure.collect_rss()
            secure.stop_all()
        measure_sha256(bench, deadline, sha)
        report(args, bench, time.monotonic() - started, load_before, os.getloadavg()[0], secure, sha)
        if args.profile:
            bench.profile(args.profile)
    except BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        if args.keep:
            print(f"logs kept in {workdir}", file=sys.stderr)
        return 1
    finally:
        if secure is not None:
            secure.stop_all()
        bench.stop_all()
        _end_children()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
