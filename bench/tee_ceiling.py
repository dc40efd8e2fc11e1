"""How fast could any tee go on this machine? An ideal cold-blob tee without Twisted, measured
against a direct GET from the same upstream, in the same run.

bench/proxy_bench.py measures trow's cold blob GET at about 0.5x a direct GET here. This script
asks whether a different design could reach the 0.9x target: it replaces trow with the leanest
Python tee imaginable, one blocking thread per download doing large C{readinto}s from the upstream
into one reused buffer, hashing and writing each piece (the work any verifying cache must do),
while the client is served from the file with C{os.sendfile} (or, in "inline" mode, straight from
the receive buffer). No HTTP parsing on the client side, no event loop, no copies in Python.

Modes (C{--modes}):
  buffered  write through the page cache, client served from the file with sendfile
  direct    write with O_DIRECT from a page-aligned reused buffer (no page-cache pages to fault
            in), client served from the file with sendfile
  inline    O_DIRECT write, and the client sent each piece from the receive buffer before it is
            hashed and written
  pipelined as inline, but the hash and the O_DIRECT write run on a second thread, fed the same
            buffers (a ring of four) while the first thread receives and sends the next piece

With an HTTPS upstream (the default runs both kinds) the tee reads it with the stdlib ssl module
on its blocking thread. Unless --no-proxies, trow and distribution's proxy are measured in the
same run, each restarted on empty storage before its cold GET (proxy_bench.py's Bench).

Usage: python bench/tee_ceiling.py [--blob-mib 512] [--reps 3] [--modes buffered,direct,inline,pipelined]
Needs Debian's docker-registry, like proxy_bench.py, whose helpers it reuses.
"""

from __future__ import annotations

import argparse
import hashlib
import mmap
import os
import queue
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import threading
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxy_bench as pb  # noqa: E402

MIB = 1 << 20
BLOCK = 4096


class Tee:
    """Serves one GET: downloads the blob from the upstream once and streams it to the client."""

    def __init__(
        self,
        mode: str,
        upstream_port: int,
        path: str,
        size: int,
        digest: str,
        workdir: str,
        context: ssl.SSLContext | None = None,
    ) -> None:
        self.mode = mode
        self.upstream_port = upstream_port
        self.context = context  # HTTPS upstream: the stdlib ssl module, on this blocking thread
        self.path = path
        self.size = size
        self.digest = digest
        self.available = 0
        self.error: BaseException | None = None
        self.changed = threading.Condition()
        self.file = os.path.join(workdir, "tee.blob")

    def download(self, client: socket.socket) -> None:
        if self.mode == "pipelined":
            self._download_pipelined(client)
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if self.mode != "buffered" else 0)
        fd = os.open(self.file, flags, 0o600)
        hasher = hashlib.sha256()
        buffer = mmap.mmap(-1, 4 * MIB)  # page-aligned, as O_DIRECT needs; reused for every read
        view = memoryview(buffer)
        conn = pb.connect(self.upstream_port, 60, self.context)
        try:
            conn.request("GET", self.path)
            response = conn.getresponse()
            received = 0
            while received < self.size:
                n = response.readinto(view)
                if not n:
                    raise RuntimeError(f"upstream stopped after {received} bytes")
                piece = view[:n]
                if self.mode == "inline":
                    client.sendall(piece)
                hasher.update(piece)
                if self.mode != "buffered" and n % BLOCK:
                    # O_DIRECT writes whole blocks: pad the tail (the last read), then cut the file.
                    os.write(fd, view[: (n + BLOCK - 1) // BLOCK * BLOCK])
                    os.ftruncate(fd, received + n)
                else:
                    os.write(fd, piece)
                received += n
                with self.changed:
                    self.available = received
                    self.changed.notify_all()
            if "sha256:" + hasher.hexdigest() != self.digest:
                raise RuntimeError("digest mismatch")
        except BaseException as e:
            self.error = e
            with self.changed:
                self.changed.notify_all()
        finally:
            del piece, view
            buffer.close()
            conn.close()
            os.close(fd)

    def _download_pipelined(self, client: socket.socket) -> None:
        fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
        free: queue.Queue[mmap.mmap] = queue.Queue()
        for _ in range(4):
            free.put(mmap.mmap(-1, 4 * MIB))
        work: queue.Queue[tuple[mmap.mmap, int] | None] = queue.Queue()
        hasher = hashlib.sha256()

        def store() -> None:  # hash and write, one piece behind the receiving thread
            written = 0
            while (item := work.get()) is not None:
                buffer, n = item
                with memoryview(buffer) as view:
                    hasher.update(view[:n])
                    os.write(fd, view[: (n + BLOCK - 1) // BLOCK * BLOCK])
                    if n % BLOCK:
                        os.ftruncate(fd, written + n)
                written += n
                free.put(buffer)

        storer = threading.Thread(target=store)
        storer.start()
        conn = pb.connect(self.upstream_port, 60, self.context)
        try:
            conn.request("GET", self.path)
            response = conn.getresponse()
            received = 0
            while received < self.size:
                buffer = free.get()
                with memoryview(buffer) as view:
                    n = response.readinto(view)
                    if not n:
                        raise RuntimeError(f"upstream stopped after {received} bytes")
                    client.sendall(view[:n])
                work.put((buffer, n))
                received += n
            work.put(None)
            storer.join()
            if "sha256:" + hasher.hexdigest() != self.digest:
                raise RuntimeError("digest mismatch")
        except BaseException as e:
            self.error = e
        finally:
            work.put(None)
            storer.join()
            conn.close()
            os.close(fd)

    def serve(self, listener: socket.socket) -> None:
        client, _ = listener.accept()
        request = b""
        while b"\r\n\r\n" not in request:
            request += client.recv(65536)
        client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % self.size)
        worker = threading.Thread(target=self.download, args=(client,))
        worker.start()
        if self.mode not in ("inline", "pipelined"):
            while not os.path.exists(self.file):
                pass
            fd = os.open(self.file, os.O_RDONLY)
            sent = 0
            while sent < self.size:
                with self.changed:
                    while self.available <= sent and self.error is None:
                        self.changed.wait()
                    available = self.available
                if self.error is not None:
                    break
                while sent < available:
                    sent += os.sendfile(client.fileno(), fd, sent, available - sent)
            os.close(fd)
        worker.join()
        client.close()
        os.unlink(self.file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blob-mib", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--modes", default="buffered,direct,inline")
    parser.add_argument(
        "--proxies",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure trow and distribution's proxy, each restarted on empty storage before its cold GET",
    )
    parser.add_argument(
        "--https",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run everything against an HTTPS upstream (the tee reads it with the stdlib ssl module)",
    )
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    workdir = tempfile.mkdtemp(prefix="trow-tee-ceiling-")
    deadline = pb.Deadline(1800)
    # proxy_bench's Bench starts the upstream and the proxies; the smaller rows' blobs are tiny.
    bench_args = pb.parse_args(
        ["--blob-mib", str(args.blob_mib), "--fanout-mib", "1", "--first-byte-samples", "1", "--first-byte-mib", "1", "--quiet"]
    )
    benches: list[pb.Bench] = [pb.Bench(bench_args, workdir, deadline)]
    if args.https:
        benches.append(pb.Bench(bench_args, workdir, deadline, tls=pb.make_tls(os.path.join(workdir, "tls"))))
    try:
        hashes = [pb.sha256_mb_per_s(512, deadline) for _ in range(3)]
        columns = ["direct GET", *[f"tee: {m}" for m in modes], *(["trow", "distribution"] if args.proxies else [])]
        tables = []
        for bench in benches:
            # One kind of upstream at a time (two cores); the HTTPS upstream serves the same storage.
            bench.setup(benches[0].content)
            content = bench.content
            assert content is not None and bench.upstream.port is not None
            context = bench.tls.client_context() if bench.tls is not None else None
            path = f"/v2/{pb.REPO}/blobs/{content.big}"
            samples: dict[tuple[str, bool], list[float]] = {}
            for rep in range(args.reps):
                for verify in (True, False):
                    order = columns[rep % len(columns) :] + columns[: rep % len(columns)]
                    for column in order:
                        if column in ("trow", "distribution"):
                            bench.restart_fresh(column, "cold")
                        bench.settle()
                        if column == "direct GET":
                            fetch = bench.fetch("direct", content.big, content.big_size, verify)
                        elif column in ("trow", "distribution"):
                            fetch = bench.fetch(column, content.big, content.big_size, verify)
                        else:
                            tee = Tee(column[5:], bench.upstream.port, path, content.big_size, content.big, workdir, context)
                            listener = socket.create_server((pb.LOOPBACK, 0))
                            server = threading.Thread(target=tee.serve, args=(listener,))
                            server.start()
                            fetch = pb.fetch_blob(listener.getsockname()[1], path, content.big_size, content.big, verify, 120)
                            server.join()
                            listener.close()
                            if tee.error is not None:
                                raise tee.error
                        samples.setdefault((column, verify), []).append(fetch.mb_per_s)
                        print(f"{bench.kind} rep {rep + 1} {'verified' if verify else 'not verified'} {column}: {fetch.mb_per_s:,.0f} MB/s", file=sys.stderr, flush=True)
            lines = [
                f"{bench.kind} upstream: cold {args.blob_mib} MiB blob, median of {args.reps}, MB/s (x direct GET)",
                "| client | " + " | ".join(columns) + " |",
                "|---|" + "---|" * len(columns),
            ]
            for verify in (True, False):
                direct = statistics.median(samples[("direct GET", verify)])
                cells = [f"{direct:,.0f}"] + [
                    f"{statistics.median(samples[(c, verify)]):,.0f} ({statistics.median(samples[(c, verify)]) / direct:.2f}x)"
                    for c in columns[1:]
                ]
                lines.append(f"| {'sha256 verified' if verify else 'not verified'} | " + " | ".join(cells) + " |")
            tables.append("\n".join(lines))
            bench.stop_all()
        hashes += [pb.sha256_mb_per_s(512, deadline) for _ in range(3)]
        print("sha256 on one core (MB/s): " + ", ".join(f"{h:,.0f}" for h in hashes))
        print("\n\n".join(tables))
    finally:
        for bench in benches:
            bench.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
