#!/usr/bin/env python3
"""Scale benchmark: the cost of one request as the number of repositories grows, on sqlite and on
PostgreSQL, through a real C{twistd -n trow}.

For each backend the data dir (and, for PostgreSQL, a throwaway server: tests.postgres) is grown
in stages, 1,000 then 10,000 then 100,000 repositories. Each repository holds one image (a tagged
manifest, its config and its layer, the same few real files for all of them), written straight
into the metadata in large transactions through the store's own connection, so that the triggers
that keep the table of repositories run as for a push. At each stage trow is started (the restart
time is measured), then, over one keep-alive connection:

    catalog start   GET /v2/_catalog?n=100
    catalog end     GET /v2/_catalog?n=100&last=<the 101st name from the end>
    tags list       GET /v2/<repo>/tags/list, repositories picked at random
    manifest GET    GET /v2/<repo>/manifests/<digest>, repositories picked at random
    push            PUT /v2/<repo>/manifests/<tag> of a new small manifest (its bytes fsynced, one
                    metadata transaction), sequentially
    RSS             trow's resident memory after all that

and, straight on the database (no HTTP), the catalog page query against the query it replaced (a
UNION of manifests and repo_blobs before the filter) at the end of the list. The table gives the
median time per request and the ratio between the largest and the smallest stage: flat means ~1x.

    python bench/scale_bench.py                  # 1k, 10k, 100k repositories, both backends
    python bench/scale_bench.py --quick          # 1k and 10k
    python bench/scale_bench.py --backends sqlite --json out.json

The trow under test is this tree (PYTHONPATH is set for the child). Every child process and the
temporary directory are removed on the way out.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Sequence
from urllib.parse import quote

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]
# The child twistd imports this tree, not an installed trow.
os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])

from proxy_bench import (  # noqa: E402
    LOOPBACK,
    START_TIMEOUT,
    BenchError,
    Daemon,
    Deadline,
    _exit_on_signal,
    machine,
    script,
)
from trow.registry.names import Digest  # noqa: E402
from trow.storage.blobs import BlobStore  # noqa: E402
from trow.storage.postgres import PostgresMetadata  # noqa: E402
from trow.storage.sql import SqlMetadata  # noqa: E402
from trow.storage.sqlite import SqliteMetadata  # noqa: E402
from trow.workers import InlineWorker  # noqa: E402

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
PAGE = 100
FILL_BATCH = 10_000


def name(i: int) -> str:
    """The C{i}th repository: two components, a hundred top-level namespaces."""
    return f"team{i % 100:02d}/app{i:07d}"


def image(seed: str) -> tuple[bytes, bytes, bytes]:
    """(config, layer, manifest) of a tiny image; C{seed} makes the manifest unique."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": "scale"}).encode()
    layer = b"scale bench layer\n" * 64
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha(layer), "size": len(layer)}],
            "annotations": {"seed": seed},
        },
        sort_keys=True,
    ).encode()
    return config, layer, manifest


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- the stores -----------------------------------------------------------------------------------


class Store:
    """The data dir and the metadata of one backend, filled while trow is stopped."""

    def __init__(self, backend: str, workdir: str) -> None:
        self.backend = backend
        self.data_dir = os.path.join(workdir, f"data-{backend}")
        os.makedirs(self.data_dir)
        self.server: Any = None
        self.url: str | None = None
        if backend == "postgres":
            from tests.postgres import PostgresServer

            self.server = PostgresServer()
            self.url = self.server.create_database("trow_scale")
        self.count = 0
        config, layer, manifest = image("shared")
        self.config, self.layer, self.manifest = sha(config), sha(layer), sha(manifest)
        self.manifest_size = len(manifest)
        blobs = BlobStore(self.data_dir, InlineWorker())
        for data in (config, layer, manifest):
            blobs.put_bytes(data, Digest.of(data))

    def open(self) -> SqlMetadata:
        if self.url is not None:
            pg = PostgresMetadata(self.url, InlineWorker())
            pg.open()
            pg.migrate_sync()
            return pg
        db = SqliteMetadata(os.path.join(self.data_dir, "trow.db"), InlineWorker())
        # The fill only: durability buys nothing here (trow reopens the file with its own settings).
        db._conn.execute("PRAGMA synchronous=OFF")
        return db

    def fill(self, total: int) -> float:
        """Grow to C{total} repositories of one image each; returns the seconds it took."""
        started = time.monotonic()
        db = self.open()
        try:
            while self.count < total:
                batch = range(self.count, min(total, self.count + FILL_BATCH))
                self._write(db, [name(i) for i in batch])
                self.count = batch[-1] + 1
        finally:
            db.close()
        return time.monotonic() - started

    def _write(self, db: SqlMetadata, names: list[str]) -> None:
        now = time.time()
        manifest, config, layer = self.manifest, self.config, self.layer

        def fill(c: Any) -> None:
            c.executemany(
                "INSERT INTO repo_blobs (repo, digest, created) VALUES (?, ?, ?)",
                [(n, d, now) for n in names for d in (config, layer)],
            )
            c.executemany(
                "INSERT INTO manifests (repo, digest, media_type, size, created) VALUES (?, ?, ?, ?, ?)",
                [(n, manifest, OCI_MANIFEST, self.manifest_size, now) for n in names],
            )
            c.executemany(
                "INSERT INTO manifest_refs (repo, digest, child) VALUES (?, ?, ?)",
                [(n, manifest, d) for n in names for d in (config, layer)],
            )
            c.executemany(
                "INSERT INTO tags (repo, tag, digest, updated) VALUES (?, ?, ?, ?)", [(n, "v1", manifest, now) for n in names]
            )

        done: list[Any] = []
        db._write(fill).addBoth(done.append)
        if done and hasattr(done[0], "raiseException"):
            done[0].raiseException()
        if isinstance(db, PostgresMetadata):
            # Fresh statistics, as autovacuum would gather them in a while.
            db._read(lambda c: c.execute("ANALYZE")).addBoth(done.append)

    def time_queries(self, reps: int) -> dict[str, float]:
        """Median ms of the catalog page query at the end of the list, straight on the database:
        the query trow runs (the table of repositories) and the one it replaced."""
        db = self.open()
        last = name_sorted_near_end(self.count)
        queries = {
            "db: catalog query, end": SqlMetadata.CATALOG_QUERY,
            "db: old union query, end": "SELECT repo FROM (SELECT repo FROM manifests UNION SELECT repo FROM repo_blobs) "
            "AS r WHERE repo > ? ORDER BY repo LIMIT ?",
        }
        out = {}
        try:
            for label, query in queries.items():
                times = []
                for _ in range(reps):
                    started = time.perf_counter()
                    db._read(lambda c: c.execute(query, (last, PAGE + 1)).fetchall())
                    times.append((time.perf_counter() - started) * 1000)
                out[label] = statistics.median(times)
        finally:
            db.close()
        return out

    def destroy(self) -> None:
        if self.server is not None:
            self.server.destroy()


def name_sorted_near_end(count: int) -> str:
    """The name after which the last full catalog page of C{count} repositories starts."""
    return sorted(name(i) for i in range(count))[-(PAGE + 1)]


# -- trow ---------------------------------------------------------------------------------------


class TrowServer(Daemon):
    """twistd -n --pidfile= trow on a data dir, with --database for PostgreSQL."""

    def __init__(self, workdir: str, store: Store) -> None:
        super().__init__(f"trow-{store.backend}", workdir)
        self.store = store

    def start(self, deadline: Deadline) -> float:
        """Start and wait until /v2/ answers; returns the seconds that took."""
        argv = [script("twistd"), "-n", "--pidfile=", "trow", "--listen", f"tcp:0:interface={LOOPBACK}"]
        argv += ["--data-dir", self.store.data_dir]
        if self.store.url is not None:
            argv += ["--database", self.store.url]
        started = time.monotonic()
        self._spawn(argv)
        end = started + deadline.cap(START_TIMEOUT)
        while self.port is None:
            with open(self.stdout_path, "rb") as handle:
                for line in handle.read().splitlines():
                    if b"TrowSite starting on " in line:
                        self.port = int(line.rsplit(b"TrowSite starting on ", 1)[1].split()[0])
            if not self.running():
                raise BenchError(f"trow exited before listening; its log:\n{self.tail()}")
            if time.monotonic() > end:
                raise BenchError(f"trow did not log its port in time; its log:\n{self.tail()}")
            time.sleep(0.01)
        self.wait_http(deadline)
        return time.monotonic() - started

    def stop(self) -> None:
        super().stop()
        self.port = None

    def rss_mib(self) -> float:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")


class Client:
    """One keep-alive connection to trow."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(LOOPBACK, port, timeout=60)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
        self.conn.request(method, path, body=body, headers=headers or {})
        response = self.conn.getresponse()
        return response.status, response.headers, response.read()

    def timed(self, count: int, make: Callable[[int], tuple[str, str, bytes | None, dict[str, str]]], want: int) -> float:
        """Median ms of C{count} requests made by C{make(i)}; each must answer C{want}."""
        times = []
        for i in range(count):
            method, path, body, headers = make(i)
            started = time.perf_counter()
            status, _, data = self.request(method, path, body, headers)
            times.append((time.perf_counter() - started) * 1000)
            if status != want:
                raise BenchError(f"{method} {path}: {status} {data[:300]!r}")
        return statistics.median(times)

    def close(self) -> None:
        self.conn.close()


def measure(store: Store, trow: TrowServer, reps: int, pushes: int, rng: random.Random) -> dict[str, float]:
    """Every per-request measure at the current size (trow running)."""
    assert trow.port is not None
    client = Client(trow.port)
    out: dict[str, float] = {}
    count = store.count
    last = name_sorted_near_end(count)
    accept = {"Accept": OCI_MANIFEST}
    try:
        # Warm up the connection and trow's first-request paths.
        client.timed(5, lambda i: ("GET", f"/v2/_catalog?n={PAGE}", None, {}), 200)
        out["catalog page, start"] = client.timed(reps, lambda i: ("GET", f"/v2/_catalog?n={PAGE}", None, {}), 200)
        out["catalog page, end"] = client.timed(reps, lambda i: ("GET", f"/v2/_catalog?n={PAGE}&last={quote(last, safe='')}", None, {}), 200)
        picks = [name(rng.randrange(count)) for _ in range(reps)]
        out["tags list"] = client.timed(reps, lambda i: ("GET", f"/v2/{picks[i]}/tags/list", None, {}), 200)
        picks = [name(rng.randrange(count)) for _ in range(reps)]
        out["manifest GET by digest"] = client.timed(
            reps, lambda i: ("GET", f"/v2/{picks[i]}/manifests/{store.manifest}", None, accept), 200
        )
        picks = [name(rng.randrange(count)) for _ in range(pushes)]
        bodies = [image(f"push-{count}-{i}")[2] for i in range(pushes)]
        out["manifest push (new, small)"] = client.timed(
            pushes,
            lambda i: ("PUT", f"/v2/{picks[i]}/manifests/p{count}-{i}", bodies[i], {"Content-Type": OCI_MANIFEST}),
            201,
        )
    finally:
        client.close()
    out["RSS after (MiB)"] = trow.rss_mib()
    return out


# -- the run ------------------------------------------------------------------------------------


def run_backend(backend: str, sizes: Sequence[int], args: argparse.Namespace, workdir: str, deadline: Deadline) -> dict[int, dict[str, float]]:
    results: dict[int, dict[str, float]] = {}
    store = Store(backend, workdir)
    trow = TrowServer(workdir, store)
    rng = random.Random(12)
    try:
        for size in sizes:
            deadline.check(f"{backend} at {size} repositories")
            filled = store.fill(size)
            row: dict[str, float] = {}
            row.update(store.time_queries(args.reps))
            row["restart (s)"] = trow.start(deadline)
            row.update(measure(store, trow, args.reps, args.pushes, rng))
            trow.stop()
            results[size] = row
            print(f"  {backend}: {size:>7} repositories (filled in {filled:.1f} s, trow up in {row['restart (s)']:.2f} s)", flush=True)
    finally:
        trow.stop()
        store.destroy()
    return results


def table(results: dict[str, dict[int, dict[str, float]]]) -> str:
    lines = []
    for backend, by_size in results.items():
        sizes = sorted(by_size)
        labels = list(by_size[sizes[0]])
        lines.append(f"\n### {backend}\n")
        header = ["measure (median ms per request unless said)", *(f"{s:,} repos" for s in sizes)]
        if len(sizes) > 1:
            header.append(f"{sizes[-1] // 1000}k / {sizes[0] // 1000}k")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for label in labels:
            values = [by_size[s][label] for s in sizes]
            cells = [label, *(f"{v:.3f}" if v < 10 else f"{v:.1f}" for v in values)]
            if len(sizes) > 1:
                cells.append(f"{values[-1] / values[0]:.2f}x" if values[0] else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="stop at 10,000 repositories")
    parser.add_argument("--max", type=int, default=100_000, help="the largest stage (default 100,000)")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--reps", type=int, default=200, help="requests per GET measure")
    parser.add_argument("--pushes", type=int, default=100, help="manifest pushes per stage")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    top = min(args.max, 10_000) if args.quick else args.max
    sizes = [s for s in (1_000, 10_000, 100_000, 1_000_000) if s <= top]
    signal.signal(signal.SIGTERM, _exit_on_signal)
    deadline = Deadline(args.max_seconds)
    workdir = tempfile.mkdtemp(prefix="trow-scale-")
    os.chmod(workdir, 0o755)  # the PostgreSQL server's user walks through it
    results: dict[str, dict[int, dict[str, float]]] = {}
    started = time.monotonic()
    try:
        for backend in args.backends.split(","):
            print(f"{backend}:", flush=True)
            results[backend] = run_backend(backend.strip(), sizes, args, workdir, deadline)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n## trow at scale ({machine()}; {time.monotonic() - started:.0f} s)")
    print(table(results))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({b: {str(s): r for s, r in by.items()} for b, by in results.items()}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
