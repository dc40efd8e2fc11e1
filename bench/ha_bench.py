#!/usr/bin/env python3
"""Replicas on PostgreSQL: shared downloads and manifest GETs, against one trow, in one run.

Everything runs on 127.0.0.1, in a temporary directory and a throwaway PostgreSQL cluster that are
both removed at the end:

    upstream     docker-registry (distribution), access log on stdout (counts upstream GETs)
    postgres     tests.postgres.PostgresServer (initdb + pg_ctl as the postgres user), one fresh
                 database per replica set
    replicas     twistd -n --pidfile= trow --database URL, N of them on one shared data dir, each
                 with the upstream as registry_proxies entry "up"; the peer URL is the default (the
                 listener's interface and bound port)

Rows (each measured next to its reference in the same run; the table prints the ratios):

    1  16 concurrent cold clients on one uncached blob, spread 6/5/5 over 3 replicas, next to the
       same 16 clients on 1 replica: upstream GETs (from the upstream's access log; want 1 each)
       and the aggregate MB/s (clients x blob size / wall time until the last client is done).
    2  A client on replica A starts a cold download; once its first byte arrived, a client on
       replica B asks for the same blob (B follows A's download over HTTP). Both first-byte times,
       each from its own request, and both full-body rates. Every repetition starts a fresh set
       (new data dir, new database), so that each is cold. For reference, A's cold GET with no
       follower, on a set of its own: what having a follower costs the leader's client.
    3  Manifest GETs by digest (pulled through once, then served from the cache): 1 replica on
       sqlite (the reference; it answers from memory), 1 replica on PostgreSQL, and 3 replicas
       on PostgreSQL with the same total connections and requests spread over them.

Every fresh replica first pulls a distinct small blob through itself, so that the measurements
time a cold cache in a running process, not the first request of a new one. Clients verify every
blob body with sha256.

The trow under test is whatever C{twistd} beside this interpreter imports (C{pip install .}); the
children never run in the repository. The plumbing (daemons, client, content, access log) is
C{bench/proxy_bench.py}'s.

    python bench/ha_bench.py            # 256 MiB blob, 3 repetitions: a few minutes on 2 cores
    python bench/ha_bench.py --quick    # 64 MiB, 1 repetition

Every loop is bounded by a count and by the --max-seconds deadline; every child process, the
PostgreSQL cluster and the temporary directory are removed on the way out, whatever happened.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import http.client
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxy_bench as pb  # noqa: E402

# tests.postgres (the throwaway server of the test suite), from the repository root. Only this
# process imports from the repository; the trow under test is the installed one.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.postgres import PostgresServer  # noqa: E402

MIB = pb.MIB
MB = pb.MB
LOOPBACK = pb.LOOPBACK
BenchError = pb.BenchError


# -- replicas ----------------------------------------------------------------------------------


class Replica(pb.Trow):
    """One trow process with its own logs and config, on a data dir it may share, on PostgreSQL
    when C{database} is given (sqlite otherwise)."""

    def __init__(self, name: str, workdir: str, data_dir: str, upstream_port: int, database: str | None) -> None:
        os.makedirs(workdir, exist_ok=True)
        super().__init__(workdir, data_dir, upstream_port)
        self.name = name
        self.database = database

    def _spawn(self, argv: Sequence[str]) -> None:
        if self.database is not None:
            argv = [*argv, "--database", self.database]
        super()._spawn(argv)


class ReplicaSet:
    """C{count} replicas on one fresh data dir (and one fresh database unless C{sqlite})."""

    def __init__(self, bench: "Bench", label: str, count: int, sqlite: bool = False) -> None:
        self.bench = bench
        self.label = label
        bench.sets += 1
        self.root = os.path.join(bench.workdir, f"set{bench.sets}-{label.replace(' ', '-')}")
        self.data_dir = os.path.join(self.root, "data")
        self.database: str | None = None
        self.replicas: list[Replica] = []
        self.count = count
        self.sqlite = sqlite

    def __enter__(self) -> "ReplicaSet":
        b = self.bench
        assert b.upstream.port is not None and b.content is not None
        try:
            if not self.sqlite:
                assert b.postgres is not None
                self.database = b.postgres.fresh_database()
            for i in range(self.count):
                replica = Replica(f"r{i}", os.path.join(self.root, f"r{i}"), self.data_dir, b.upstream.port, self.database)
                self.replicas.append(replica)
                # One after the other: the first applies the migrations.
                replica.start(b.deadline)
                replica.label = self.label
            for i, replica in enumerate(self.replicas):
                # Warm the process (upstream client, pools, threads) up on a blob of its own.
                digest = b.content.small[i]
                b.fetch(replica, digest, b.content.small_size)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *_exc: Any) -> None:
        b = self.bench
        for i, replica in enumerate(self.replicas):
            replica.stop()  # records VmHWM first
            key = (self.label, f"r{i}")
            b.results.peak_rss[key] = max(b.results.peak_rss.get(key, 0), replica.peak_rss)
        self.replicas = []
        shutil.rmtree(self.root, ignore_errors=True)
        if self.database is not None and b.postgres is not None:
            try:
                b.postgres.drop_database(self.database.rsplit("/", 1)[1])
            except BaseException as e:  # noqa: BLE001 - the whole cluster goes at the end anyway
                b.say(f"could not drop {self.database}: {e!r}")
            self.database = None


# -- client ------------------------------------------------------------------------------------


def blob_path(digest: str) -> str:
    return f"/v2/f/up/{pb.REPO}/blobs/{digest}"


def fetch_signalling(port: int, path: str, size: int, digest: str, first_byte: threading.Event, timeout: float) -> pb.Fetch:
    """L{pb.fetch_blob} (sha256 verified), but setting C{first_byte} as soon as body bytes arrive."""
    hasher = hashlib.sha256()
    buffer = memoryview(bytearray(pb.READ_BUFFER))
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        start = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        if response.status != 200:
            raise BenchError(f"GET {path} on port {port}: {response.status} {response.read()[:300]!r}")
        first = response.read1(64 * 1024)
        first_seconds = time.perf_counter() - start
        first_byte.set()
        hasher.update(first)
        received = len(first)
        while received < size:
            n = response.readinto(buffer)
            if n == 0:
                break
            hasher.update(buffer[:n])
            received += n
        seconds = time.perf_counter() - start
    finally:
        first_byte.set()  # never leave the waiter hanging
        conn.close()
    if received != size:
        raise BenchError(f"GET {path} on port {port}: got {received} of {size} bytes")
    if "sha256:" + hasher.hexdigest() != digest:
        raise BenchError(f"GET {path} on port {port}: the body does not hash to {digest}")
    return pb.Fetch(first_seconds, seconds, size)


# -- CPU accounting ----------------------------------------------------------------------------


def _proc_cpu(pid: int) -> tuple[int, float]:
    """(parent pid, user + system CPU seconds) of a live process."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu(server: PostgresServer) -> float:
    """CPU seconds used so far by the postmaster and its live children (backends, writers).

    Backends that already exited are not counted: the replicas keep their connections open.
    """
    try:
        with open(os.path.join(server.datadir, "postmaster.pid")) as handle:
            postmaster = int(handle.readline())
    except (OSError, ValueError):
        return float("nan")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid, cpu = _proc_cpu(int(entry))
        except (OSError, IndexError, ValueError):
            continue
        if int(entry) == postmaster or ppid == postmaster:
            total += cpu
    return total


# -- measurements ------------------------------------------------------------------------------


@dataclass
class Results:
    fanout_gets: dict[str, list[int]] = field(default_factory=dict)
    fanout_other: dict[str, list[int]] = field(default_factory=dict)  # HEADs and other requests
    fanout_mbps: dict[str, list[float]] = field(default_factory=dict)
    leader: list[pb.Fetch] = field(default_factory=list)
    follower: list[pb.Fetch] = field(default_factory=list)
    follower_gets: list[int] = field(default_factory=list)
    alone: list[pb.Fetch] = field(default_factory=list)  # A's cold GET with no follower
    manifest_rps: dict[str, list[float]] = field(default_factory=dict)
    manifest_upstream: dict[str, int] = field(default_factory=dict)
    # CPU seconds per 1000 manifest GETs: the replicas, PostgreSQL, this client.
    manifest_cpu: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    peak_rss: dict[tuple[str, str], int] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: str, deadline: pb.Deadline) -> None:
        self.args = args
        self.workdir = workdir
        self.deadline = deadline
        self.upstream = pb.Distribution(
            "upstream", workdir, os.path.join(workdir, "upstream-storage"), access_log=True, level="warn"
        )
        self.log = pb.AccessLog(self.upstream)
        self.postgres: PostgresServer | None = None
        self.pg_version = "?"
        self.content: pb.Content | None = None
        self.results = Results()
        self.sets = 0
        self.trow_location = "?"

    def say(self, message: str) -> None:
        if not self.args.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def setup(self) -> None:
        self.trow_location = pb.version_of(
            [sys.executable, "-c", "import os, trow; print(os.path.dirname(trow.__file__))"], cwd=self.workdir
        )
        self.say("starting PostgreSQL")
        self.postgres = PostgresServer()
        import psycopg

        with psycopg.connect(self.postgres.url(), autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            self.pg_version = str(row[0]) if row else "?"
        self.say("starting the upstream registry")
        self.upstream.start(self.deadline)
        assert self.upstream.port is not None
        self.say(f"pushing a {self.args.blob_mib} MiB blob, 3 small blobs and a manifest")
        # The second ("fanout") blob of push_content is not used here: keep it tiny.
        self.content = pb.push_content(self.upstream.port, self.workdir, self.args.blob_mib * MIB, MIB, 3, MIB)

    def fetch(self, replica: Replica, digest: str, size: int) -> pb.Fetch:
        self.deadline.check(f"a GET through {replica.name}")
        assert replica.port is not None
        return pb.fetch_blob(replica.port, blob_path(digest), size, digest, True, self.deadline.cap(300.0))

    # -- 1: concurrent cold clients --------------------------------------------------------------

    def fanout(self) -> None:
        assert self.content is not None
        c = self.content
        clients = self.args.clients
        for rep in range(self.args.reps):
            # Alternate which goes first, so that neither always meets the fresher memory.
            order = [3, 1] if rep % 2 == 0 else [1, 3]
            for count in order:
                key = f"{count} replica{'s' if count > 1 else ''}"
                with ReplicaSet(self, f"row 1, {key}", count) as rset:
                    ports = [r.port for r in rset.replicas]
                    # Clients round-robin over the replicas: 6/5/5 for 16 over 3.
                    assignment = [ports[i % count] for i in range(clients)]
                    self.log.wait_quiet(self.log.offset(), self.deadline, quiet=0.5, limit=10)
                    since = self.log.offset()
                    barrier = threading.Barrier(clients + 1)
                    errors: list[BaseException] = []

                    def client(port: int | None) -> None:
                        try:
                            assert port is not None
                            barrier.wait(30)
                            pb.fetch_blob(port, blob_path(c.big), c.big_size, c.big, True, self.deadline.cap(300.0))
                        except BaseException as e:  # noqa: BLE001 - reported below
                            errors.append(e)

                    threads = [threading.Thread(target=client, args=(p,), daemon=True) for p in assignment]
                    for thread in threads:
                        thread.start()
                    barrier.wait(30)
                    start = time.perf_counter()
                    for thread in threads:
                        thread.join(self.deadline.cap(300.0))
                    seconds = time.perf_counter() - start
                    if errors or any(t.is_alive() for t in threads):
                        raise BenchError(f"{clients} concurrent GETs over {key}: {errors[0]!r}" if errors else "clients hung")
                    self.log.wait_quiet(since, self.deadline, quiet=1.0, limit=10)
                    path = f"/v2/{pb.REPO}/blobs/{c.big}"
                    gets = self.log.count(since, "GET", path)
                    other = len(self.log.lines(since)) - gets
                    mbps = clients * c.big_size / MB / seconds
                    self.results.fanout_gets.setdefault(key, []).append(gets)
                    self.results.fanout_other.setdefault(key, []).append(other)
                    self.results.fanout_mbps.setdefault(key, []).append(mbps)
                    spread = "/".join(str(assignment.count(p)) for p in ports)
                    self.say(
                        f"row 1 rep {rep + 1}/{self.args.reps}, {clients} clients over {key} ({spread}): "
                        f"{gets} upstream GETs, {other} other upstream requests, {seconds:.1f}s, {mbps:.0f} MB/s aggregate"
                    )

    # -- 2: first byte on a follower -----------------------------------------------------------

    def follower(self) -> None:
        assert self.content is not None
        c = self.content
        for rep in range(self.args.reps):
            with ReplicaSet(self, "row 2", 2) as rset:
                a, b = rset.replicas
                assert a.port is not None and b.port is not None
                self.log.wait_quiet(self.log.offset(), self.deadline, quiet=0.5, limit=10)
                since = self.log.offset()
                first_byte = threading.Event()
                leader: list[pb.Fetch] = []
                errors: list[BaseException] = []

                def lead() -> None:
                    try:
                        leader.append(
                            fetch_signalling(a.port, blob_path(c.big), c.big_size, c.big, first_byte, self.deadline.cap(300.0))
                        )
                    except BaseException as e:  # noqa: BLE001 - reported below
                        errors.append(e)

                thread = threading.Thread(target=lead, daemon=True)
                thread.start()
                if not first_byte.wait(self.deadline.cap(60.0)):
                    raise BenchError("no first byte from the leader replica")
                follower = self.fetch(b, c.big, c.big_size)
                thread.join(self.deadline.cap(300.0))
                if errors or not leader:
                    raise BenchError(f"leader GET: {errors[0]!r}" if errors else "leader GET hung")
                self.log.wait_quiet(since, self.deadline, quiet=1.0, limit=10)
                gets = self.log.count(since, "GET", f"/v2/{pb.REPO}/blobs/{c.big}")
                self.results.leader.append(leader[0])
                self.results.follower.append(follower)
                self.results.follower_gets.append(gets)
                self.say(
                    f"row 2 rep {rep + 1}/{self.args.reps}: first byte leader {leader[0].first_byte * 1000:.1f} ms, "
                    f"follower {follower.first_byte * 1000:.1f} ms; body leader {leader[0].mb_per_s:.0f} MB/s, "
                    f"follower {follower.mb_per_s:.0f} MB/s; {gets} upstream GETs"
                )
            # The same cold GET on the same kind of set, with no follower: what the follower costs A.
            with ReplicaSet(self, "row 2, leader alone", 2) as rset:
                alone = self.fetch(rset.replicas[0], c.big, c.big_size)
                self.results.alone.append(alone)
                self.say(
                    f"row 2 rep {rep + 1}/{self.args.reps}, no follower: first byte {alone.first_byte * 1000:.1f} ms, "
                    f"body {alone.mb_per_s:.0f} MB/s"
                )

    # -- 3: manifest GETs by digest --------------------------------------------------------------

    def manifests(self) -> None:
        assert self.content is not None
        c = self.content
        path = f"/v2/f/up/{pb.REPO}/manifests/{c.manifest}"
        conns = self.args.manifest_conns
        total = self.args.manifest_requests
        configs = [("sqlite, 1 replica", 1, True), ("PostgreSQL, 1 replica", 1, False), ("PostgreSQL, 3 replicas", 3, False)]
        for key, count, sqlite in configs:
            with ReplicaSet(self, f"row 3, {key}", count, sqlite=sqlite) as rset:
                ports = [r.port for r in rset.replicas]
                for port in ports:  # pull through once (the first replica), then cached
                    assert port is not None
                    status, _, body = pb.http_request(port, "GET", path, headers={"Accept": pb.OCI_MANIFEST})
                    if status != 200 or "sha256:" + hashlib.sha256(body).hexdigest() != c.manifest:
                        raise BenchError(f"manifest GET on {key}: {status} {body[:300]!r}")
                self.log.wait_quiet(self.log.offset(), self.deadline, quiet=0.5, limit=10)
                # Connections and requests spread evenly over the replicas.
                conns_of = [conns // count + (1 if i < conns % count else 0) for i in range(count)]
                count_of = [total * n // conns for n in conns_of]
                for rep in range(self.args.reps + 1):  # the first round warms up, unmeasured
                    self.deadline.check(f"the manifest loop on {key}")
                    since = self.log.offset()
                    cpu_before = self._cpus(rset)
                    out: list[tuple[float, int, int]] = [(0.0, 0, 0)] * count
                    errors: list[BaseException] = []

                    def loop(i: int, warm: bool = rep == 0) -> None:
                        try:
                            port = ports[i]
                            assert port is not None
                            n = max(conns_of[i], count_of[i] // 10) if warm else count_of[i]
                            out[i] = pb.manifest_loop(port, path, pb.OCI_MANIFEST, n, conns_of[i], self.deadline)
                        except BaseException as e:  # noqa: BLE001 - reported below
                            errors.append(e)

                    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(count)]
                    for thread in threads:
                        thread.start()
                    for thread in threads:
                        thread.join(self.deadline.cap(200.0))
                    if errors or any(t.is_alive() for t in threads):
                        raise BenchError(f"manifest loop on {key}: {errors[0]!r}" if errors else "manifest loop hung")
                    if rep == 0:
                        continue
                    cpu_after = self._cpus(rset)
                    done = sum(o[1] for o in out)
                    bad = sum(o[2] for o in out)
                    if bad:
                        raise BenchError(f"manifest loop on {key}: {bad} of {done} answers were not 200")
                    if done < sum(count_of):
                        raise BenchError(f"manifest loop on {key} stopped after {done} requests (deadline)")
                    # The loops start together (each at its own barrier); the slowest one ends the run.
                    seconds = max(o[1] / o[0] for o in out)
                    rps = done / seconds
                    self.results.manifest_rps.setdefault(key, []).append(rps)
                    cpu = self.results.manifest_cpu.setdefault(key, {})
                    for who in cpu_after:
                        cpu.setdefault(who, []).append((cpu_after[who] - cpu_before[who]) / done * 1000)
                    self.log.wait_quiet(since, self.deadline, quiet=0.3, limit=5)
                    self.results.manifest_upstream[key] = self.results.manifest_upstream.get(key, 0) + len(self.log.lines(since))
                    self.say(f"row 3 rep {rep}/{self.args.reps} {key}: {rps:.0f} req/s")

    def _cpus(self, rset: ReplicaSet) -> dict[str, float]:
        cpus = {
            "trow": sum(r.cpu_seconds() for r in rset.replicas),
            "client": time.process_time(),
        }
        if not rset.sqlite and self.postgres is not None:
            cpus["postgres"] = postgres_cpu(self.postgres)
        return cpus

    def stop_all(self) -> None:
        self.upstream.stop()
        if self.postgres is not None:
            try:
                self.postgres.destroy()
            except BaseException as e:  # noqa: BLE001 - reported, the rest of the clean-up goes on
                print(f"could not remove the PostgreSQL cluster in {self.postgres.dir}: {e!r}", file=sys.stderr)


# -- report ------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(value: float, digits: int = 0) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and a == a and b == b else "n/a"


def counts(values: Sequence[int]) -> str:
    """Each repetition's count, e.g. "1, 1, 1"."""
    return ", ".join(str(v) for v in values) or "n/a"


def table(args: argparse.Namespace, r: Results) -> str:
    rows: list[list[str]] = []
    one, three = "1 replica", "3 replicas"
    spread = "/".join(str(len(range(i, args.clients, 3))) for i in range(3))
    rows.append(
        [
            "1",
            f"upstream GETs, {args.clients} concurrent cold clients on one {args.blob_mib} MiB blob (each rep)",
            f"1 replica: {counts(r.fanout_gets.get(one, []))}",
            f"3 replicas ({spread}): {counts(r.fanout_gets.get(three, []))}",
            "",
            "1 each",
        ]
    )
    m1, m3 = median(r.fanout_mbps.get(one, [])), median(r.fanout_mbps.get(three, []))
    rows.append(
        [
            "1",
            f"  same, aggregate MB/s ({args.clients} x blob / wall time), median",
            f"1 replica: {fmt(m1)}",
            f"3 replicas: {fmt(m3)}",
            f"{ratio(m3, m1)} 1 replica",
            "(information)",
        ]
    )
    fa = median([f.first_byte * 1000 for f in r.leader])
    fb = median([f.first_byte * 1000 for f in r.follower])
    rows.append(
        [
            "2",
            f"first byte of a cold {args.blob_mib} MiB blob, each from its own request (ms), median of {len(r.leader)}",
            f"leader A: {fmt(fa, 1)}",
            f"follower B: {fmt(fb, 1)}",
            f"{ratio(fb, fa)} leader",
            "(information)",
        ]
    )
    ba = median([f.mb_per_s for f in r.leader])
    bb = median([f.mb_per_s for f in r.follower])
    rows.append(
        [
            "2",
            "  same, full body (MB/s), median",
            f"leader A: {fmt(ba)}",
            f"follower B: {fmt(bb)}",
            f"{ratio(bb, ba)} leader",
            f"upstream GETs per rep: {counts(r.follower_gets)}",
        ]
    )
    fo = median([f.first_byte * 1000 for f in r.alone])
    bo = median([f.mb_per_s for f in r.alone])
    rows.append(
        [
            "2",
            "  same, A's cold GET with no follower: first byte (ms), full body (MB/s)",
            f"A alone: {fmt(fo, 1)} ms, {fmt(bo)} MB/s",
            f"A with B: {fmt(fa, 1)} ms, {fmt(ba)} MB/s",
            f"{ratio(ba, bo)} alone (body)",
            "(information)",
        ]
    )
    base = median(r.manifest_rps.get("sqlite, 1 replica", []))
    rows.append(
        [
            "3",
            f"manifest GET by digest, {args.manifest_conns} keep-alive conns in all (req/s), median of {args.reps}",
            f"sqlite, 1 replica: {fmt(base)}",
            "",
            "1.00x",
            "reference",
        ]
    )
    for key in ("PostgreSQL, 1 replica", "PostgreSQL, 3 replicas"):
        value = median(r.manifest_rps.get(key, []))
        note = f"{args.manifest_conns // 3}+ conns per replica" if key.endswith("3 replicas") else ""
        rows.append(["3", f"  same, {key}", "", f"{key}: {fmt(value)}", f"{ratio(value, base)} sqlite", note])
    header = ["#", "measurement", "reference", "measured", "ratio", "target / note"]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def report(args: argparse.Namespace, bench: Bench, seconds: float, load: tuple[float, float], mem_free: float) -> None:
    r = bench.results
    print(f"## trow replicas on PostgreSQL, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}\n")
    print(f"- machine: {pb.machine()}")
    print(
        f"- versions: PostgreSQL {bench.pg_version}; {pb.version_of(['docker-registry', '--version'])}; "
        f"Python {platform.python_version()}; trow imported from {bench.trow_location}"
    )
    print(
        f"- work: {args.blob_mib} MiB blob, {args.clients} clients (row 1), {args.reps} repetitions (medians shown), "
        f"{args.manifest_requests} manifest GETs over {args.manifest_conns} connections per repetition (row 3); "
        f"clients verify sha256; MB = 10^6 bytes"
    )
    print(
        f"- run took {seconds:.0f}s; 1-minute load average before {load[0]:.2f}, after {load[1]:.2f}; "
        f"MemAvailable at start {mem_free:.1f} GiB"
    )
    other = {k: counts(v) for k, v in r.fanout_other.items()}
    print(
        f"- checks: other upstream requests on the blob during row 1 (HEADs etc.): {other}; upstream requests "
        f"during the manifest loops: {r.manifest_upstream} (want 0)"
    )
    cpu_lines = []
    for key, by_who in r.manifest_cpu.items():
        parts = ", ".join(f"{who} {median(v):.2f}" for who, v in by_who.items())
        cpu_lines.append(f"{key}: {parts}")
    print(f"- row 3, CPU seconds per 1000 manifest GETs: {'; '.join(cpu_lines)}")
    by_set: dict[str, list[str]] = {}
    for (label, who), hwm in r.peak_rss.items():
        by_set.setdefault(label, []).append(f"{who} {hwm / MB:.0f}")
    print("- peak RSS of each replica, VmHWM (MB): " + "; ".join(f"{k}: {', '.join(v)}" for k, v in by_set.items()))
    print()
    print(table(args, r), flush=True)


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--blob-mib", type=int, default=None, help="size of the uncached blob (default 256, 64 with --quick)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions of every row (default 3, 1 with --quick)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients of row 1")
    parser.add_argument("--manifest-requests", type=int, default=5000, help="measured manifest GETs per configuration and repetition")
    parser.add_argument("--manifest-conns", type=int, default=12, help="keep-alive connections in all for the manifest GETs")
    parser.add_argument("--quick", action="store_true", help="a 64 MiB blob and 1 repetition")
    parser.add_argument("--max-seconds", type=float, default=570, help="give up (and clean up) after this long")
    parser.add_argument("--tmp", default=None, help="parent of the temporary directory (default: the system's)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.blob_mib is None:
        args.blob_mib = 64 if args.quick else 256
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    for name in ("blob_mib", "reps", "clients", "manifest_requests"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.manifest_conns < 3:
        parser.error("--manifest-conns must be at least 3 (one per replica)")
    return args


def mem_available_gib() -> float:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("docker-registry") is None:
        print("docker-registry is not installed (apt-get install docker-registry)", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, pb._exit_on_signal)
    deadline = pb.Deadline(args.max_seconds)
    workdir = tempfile.mkdtemp(prefix="trow-ha-bench-", dir=args.tmp)
    os.chmod(workdir, 0o755)
    bench = Bench(args, workdir, deadline)
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    mem = mem_available_gib()
    try:
        bench.setup()
        bench.fanout()
        bench.follower()
        bench.manifests()
        report(args, bench, time.monotonic() - started, (load_before, os.getloadavg()[0]), mem)
    except BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        print(f"benchmark failed: {e!r}", file=sys.stderr)
        return 1
    except BaseException as e:
        # pytest.fail (tests.postgres) raises an OutcomeException, which is a BaseException.
        if isinstance(e, (SystemExit, KeyboardInterrupt)):
            raise
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    finally:
        bench.stop_all()
        pb._end_children()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
