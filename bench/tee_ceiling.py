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

Usage: python bench/tee_ceiling.py [--blob-mib 512] [--reps 3] [--modes buffered,direct,inline]
Needs Debian's docker-registry, like proxy_bench.py, whose helpers it reuses.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import mmap
import os
import shutil
import socket
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

    def __init__(self, mode: str, upstream_port: int, path: str, size: int, digest: str, workdir: str) -> None:
        self.mode = mode
        self.upstream_port = upstream_port
        self.path = path
        self.size = size
        self.digest = digest
        self.available = 0
        self.error: BaseException | None = None
        self.changed = threading.Condition()
        self.file = os.path.join(workdir, "tee.blob")

    def download(self, client: socket.socket) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if self.mode != "buffered" else 0)
        fd = os.open(self.file, flags, 0o600)
        hasher = hashlib.sha256()
        buffer = mmap.mmap(-1, 4 * MIB)  # page-aligned, as O_DIRECT needs; reused for every read
        view = memoryview(buffer)
        conn = http.client.HTTPConnection(pb.LOOPBACK, self.upstream_port, timeout=60)
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

    def serve(self, listener: socket.socket) -> None:
        client, _ = listener.accept()
        request = b""
        while b"\r\n\r\n" not in request:
            request += client.recv(65536)
        client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % self.size)
        worker = threading.Thread(target=self.download, args=(client,))
        worker.start()
        if self.mode != "inline":
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
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    workdir = tempfile.mkdtemp(prefix="trow-tee-ceiling-")
    upstream: Any = None
    try:
        upstream = pb.Distribution("upstream", workdir, os.path.join(workdir, "upstream")).start(pb.Deadline(600))
        content = pb.push_content(upstream.port, workdir, args.blob_mib * MIB, 4 * MIB)
        path = f"/v2/{pb.REPO}/blobs/{content.big}"
        samples: dict[tuple[str, bool], list[float]] = {}
        for _rep in range(args.reps):
            for verify in (True, False):
                for mode in ["direct GET", *modes]:
                    if mode == "direct GET":
                        fetch = pb.fetch_blob(upstream.port, path, content.big_size, content.big, verify, 120)
                    else:
                        tee = Tee(mode, upstream.port, path, content.big_size, content.big, workdir)
                        listener = socket.create_server((pb.LOOPBACK, 0))
                        server = threading.Thread(target=tee.serve, args=(listener,))
                        server.start()
                        fetch = pb.fetch_blob(listener.getsockname()[1], path, content.big_size, content.big, verify, 120)
                        server.join()
                        listener.close()
                        if tee.error is not None:
                            raise tee.error
                    samples.setdefault((mode, verify), []).append(fetch.mb_per_s)
        print(f"cold {args.blob_mib} MiB blob, median of {args.reps}, MB/s (x direct GET)")
        print("| client | direct GET | " + " | ".join(modes) + " |")
        print("|---|---|" + "---|" * len(modes))
        for verify in (True, False):
            direct = statistics.median(samples[("direct GET", verify)])
            cells = [f"{statistics.median(samples[(m, verify)]):,.0f} ({statistics.median(samples[(m, verify)]) / direct:.2f}x)" for m in modes]
            print(f"| {'sha256 verified' if verify else 'not verified'} | {direct:,.0f} | " + " | ".join(cells) + " |")
    finally:
        if upstream is not None:
            upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
