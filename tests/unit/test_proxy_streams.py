"""trow.proxy.streams: upstream bodies read on a thread of their own.

The client is a blocking one, so these tests give it a real server on 127.0.0.1 that answers
from a script (which can stall, drop a body half-way or close a kept-alive connection), and a
reactor that only queues the calls the threads make: the test thread runs them, in order.
"""

from __future__ import annotations

import queue
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from twisted.internet.error import ConnectionAborted, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from trow.certs import make_bundle
from trow.proxy.names import Upstream
from trow.proxy.streams import AHEAD, PIECE, ThreadedHTTP, ThreadedResponse
from trow.proxy.upstream import discard_body

Reply = Callable[[socket.socket], None]


class ThreadCalls:
    """The reactor as the threads see it: C{callFromThread} queues, L{run_until} runs."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.calls.put((f, args))

    def run_until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while not done():
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out")
            try:
                f, args = self.calls.get(timeout=left)
            except queue.Empty:
                raise AssertionError("timed out waiting for the client's thread") from None
            f(*args)


class ScriptedServer:
    """Answers each request, on any connection, with the next reply of its script."""

    def __init__(self, replies: list[Reply], context: ssl.SSLContext | None = None) -> None:
        self._replies = list(replies)
        self._context = context
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.connections = 0
        self.requests: list[str] = []
        self.release = threading.Event()  # stalled replies wait for this
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self._context is not None:
                conn = self._context.wrap_socket(conn, server_side=True)
            while True:
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(65536)
                    if not data:
                        return
                    head += data
                self.requests.append(head.split(b"\r\n", 1)[0].decode())
                self._replies.pop(0)(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.release.set()
        self._listener.close()


def fixed(body: bytes, status: str = "200 OK", extra: bytes = b"") -> Reply:
    def reply(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n" % (status.encode(), len(body), extra) + body)

    return reply


class Collect(Protocol):
    """A body's protocol that keeps what it gets."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.reason: Failure | None = None

    @property
    def received(self) -> bytes:
        return b"".join(self.pieces)

    def dataReceived(self, data: bytes) -> None:
        self.pieces.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self.reason = reason


@pytest.fixture
def reactor() -> ThreadCalls:
    return ThreadCalls()


@pytest.fixture
def servers() -> Iterator[list[ScriptedServer]]:
    made: list[ScriptedServer] = []
    yield made
    for server in made:
        server.close()


def serve(servers: list[ScriptedServer], replies: list[Reply], context: ssl.SSLContext | None = None) -> ScriptedServer:
    server = ScriptedServer(replies, context)
    servers.append(server)
    return server


def client(reactor: ThreadCalls, **upstream: Any) -> ThreadedHTTP:
    return ThreadedHTTP(reactor, Upstream(upstream.pop("host", "127.0.0.1"), **{"insecure": True, **upstream}), 5.0, body_timeout=10.0)


def get(reactor: ThreadCalls, http: ThreadedHTTP, url: str, headers: dict[str, list[str]] | None = None) -> ThreadedResponse:
    results: list[Any] = []
    http.request("GET", url, headers=headers).addBoth(results.append)
    reactor.run_until(lambda: bool(results))
    if isinstance(results[0], Failure):
        results[0].raiseException()
    response: ThreadedResponse = results[0]
    return response


def read(reactor: ThreadCalls, response: ThreadedResponse) -> Collect:
    body = Collect()
    response.deliverBody(body)
    reactor.run_until(lambda: body.reason is not None)
    return body


def test_a_body_arrives_in_pieces_and_its_connection_is_kept(reactor: ThreadCalls, servers: list[ScriptedServer]) -> None:
    blob = bytes(range(256)) * (3 * PIECE // 256) + b"tail"
    server = serve(servers, [fixed(blob, extra=b"Docker-Content-Digest: sha256:abc\r\n"), fixed(b"again")])
    http = client(reactor)
    url = f"http://127.0.0.1:{server.port}/v2/r/blobs/sha256:abc"

    response = get(reactor, http, url, {"Range": ["bytes=0-"]})
    assert (response.code, response.length) == (200, len(blob))
    assert response.headers.getRawHeaders("docker-content-digest") == ["sha256:abc"]
    body = read(reactor, response)
    assert body.received == blob
    assert all(len(piece) <= PIECE for piece in body.pieces) and len(body.pieces) >= 4
    assert body.reason is not None and body.reason.check(ResponseDone)

    assert read(reactor, get(reactor, http, url)).received == b"again"
    assert server.connections == 1  # the second GET reused the first's connection
    assert server.requests == ["GET /v2/r/blobs/sha256:abc HTTP/1.1"] * 2


def test_a_chunked_body_ends_cleanly(reactor: ThreadCalls, servers: list[ScriptedServer]) -> None:
    def chunked(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")

    server = serve(servers, [chunked])
    body = read(reactor, get(reactor, client(reactor), f"http://127.0.0.1:{server.port}/b"))
    assert body.received == b"hello world"
    assert body.reason is not None and body.reason.check(ResponseDone)


def test_a_body_ended_by_closing_the_connection_may_be_short(reactor: ThreadCalls, servers: list[ScriptedServer]) -> None:
    def until_close(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        conn.shutdown(socket.SHUT_WR)

    server = serve(servers, [until_close])
    body = read(reactor, get(reactor, client(reactor), f"http://127.0.0.1:{server.port}/b"))
    assert body.received == b"all of it"
    # As Twisted's client says it: the caller checks the digest to know whether it is whole.
    assert body.reason is not None and body.reason.check(PotentialDataLoss)


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_dropped_half_way_is_a_lost_connection(reactor: ThreadCalls, servers: list[ScriptedServer], chunked: bool) -> None:
    def drop(conn: socket.socket) -> None:
        if chunked:
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n" + b"x" * 300_000)
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 300_000)
        conn.shutdown(socket.SHUT_RDWR)

    server = serve(servers, [drop])
    body = read(reactor, get(reactor, client(reactor), f"http://127.0.0.1:{server.port}/b"))
    assert body.reason is not None and body.reason.check(ConnectionLost), body.reason
    if not chunked:  # the bytes that did come are delivered: a resume asks only for the rest
        assert body.received == b"x" * 300_000


def test_stopping_wakes_a_read_blocked_on_a_silent_upstream(reactor: ThreadCalls, servers: list[ScriptedServer]) -> None:
    def stall(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"y" * 100)
        server.release.wait(30)

    server = serve(servers, [stall])
    response = get(reactor, client(reactor), f"http://127.0.0.1:{server.port}/b")
    body = Collect()
    response.deliverBody(body)
    reactor.run_until(lambda: len(body.received) == 100)
    assert body.transport is not None
    body.transport.stopProducing()
    reactor.run_until(lambda: body.reason is not None, timeout=5)
    assert body.reason is not None and body.reason.check(ConnectionAborted)


def test_reads_stay_a_few_pieces_ahead_and_stop_while_paused(reactor: ThreadCalls, servers: list[ScriptedServer]) -> None:
    size = 64 * PIECE
    server = serve(servers, [fixed(b"z" * size)])
    response = get(reactor, client(reactor), f"http://127.0.0.1:{server.port}/b")
    body = Collect()
    response.deliverBody(body)
    # Nobody runs the deliveries: the thread reads AHEAD pieces, then waits for them to land.
    deadline = time.monotonic() + 10
    while reactor.calls.qsize() < AHEAD and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # an unbounded reader would queue far more than AHEAD by now, on loopback
    assert reactor.calls.qsize() == AHEAD

    # Paused, the protocol gets nothing: what lands is held, and nothing more is read.
    assert body.transport is not None
    body.transport.pauseProducing()
    reactor.run_until(lambda: reactor.calls.empty())
    time.sleep(0.3)
    assert reactor.calls.empty() and body.received == b""

    body.transport.resumeProducing()
    reactor.run_until(lambda: body.reason is not None)
    assert len(body.received) == size and body.reason is not None and body.reason.check(ResponseDone)


def test_a_slow_upstreams_bytes_go_on_at_once(reactor: ThreadCalls, servers: list[ScriptedServer]) -> None:
    def trickle(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nfirst" % (5 + PIECE))
        server.release.wait(30)
        conn.sendall(b"r" * PIECE)

    server = serve(servers, [trickle])
    response = get(reactor, client(reactor), f"http://127.0.0.1:{server.port}/b")
    body = Collect()
    response.deliverBody(body)
    # Not held back until a whole piece has come: a client's first byte waits on nothing.
    reactor.run_until(lambda: body.received == b"first")
    server.release.set()
    reactor.run_until(lambda: body.reason is not None)
    assert body.received == b"first" + b"r" * PIECE


def test_a_small_discarded_body_keeps_the_connection(reactor: ThreadCalls, servers: list[ScriptedServer]) -> None:
    challenge = fixed(b'{"errors":[]}', "401 Unauthorized", b'WWW-Authenticate: Bearer realm="x"\r\n')
    server = serve(servers, [challenge, fixed(b"blob")])
    http = client(reactor)
    url = f"http://127.0.0.1:{server.port}/b"
    first = get(reactor, http, url)
    assert first.code == 401
    # What discard_body hands the body to: a protocol that discards.
    sink = Collect()
    sink.discards = True  # type: ignore[attr-defined]
    first.deliverBody(sink)
    reactor.run_until(lambda: sink.reason is not None)
    assert sink.received == b"" and sink.reason is not None and sink.reason.check(ResponseDone)
    assert read(reactor, get(reactor, http, url)).received == b"blob"
    assert server.connections == 1


def test_discard_body_marks_its_protocol_as_discarding() -> None:
    class Response:
        def deliverBody(self, protocol: Any) -> None:
            self.protocol = protocol

    response = Response()
    discard_body(response)  # type: ignore[arg-type]
    assert response.protocol.discards is True


def test_a_kept_connection_the_upstream_closed_is_replaced(reactor: ThreadCalls, servers: list[ScriptedServer]) -> None:
    def then_close(conn: socket.socket) -> None:
        fixed(b"one")(conn)
        conn.shutdown(socket.SHUT_RDWR)  # keep-alive announced, closed anyway (an idle timeout)

    server = serve(servers, [then_close, fixed(b"two")])
    http = client(reactor)
    url = f"http://127.0.0.1:{server.port}/b"
    assert read(reactor, get(reactor, http, url)).received == b"one"
    assert read(reactor, get(reactor, http, url)).received == b"two"
    assert server.connections == 2


def test_a_refused_connection_fails_as_an_os_error(reactor: ThreadCalls) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        get(reactor, client(reactor), f"http://127.0.0.1:{port}/b")


@pytest.fixture
def tls_pair(tmp_path: Path) -> tuple[ssl.SSLContext, Path, Path]:
    """A server context for "localhost" and two CA files: the one that signed it, and another."""
    bundle = make_bundle("localhost", "test")
    (tmp_path / "cert.pem").write_bytes(bundle.cert_pem)
    (tmp_path / "key.pem").write_bytes(bundle.key_pem)
    (tmp_path / "ca.pem").write_bytes(bundle.ca_pem)
    (tmp_path / "other.pem").write_bytes(make_bundle("localhost", "test").ca_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context, tmp_path / "ca.pem", tmp_path / "other.pem"


def test_https_is_verified_against_the_upstreams_ca_file(
    reactor: ThreadCalls, servers: list[ScriptedServer], tls_pair: tuple[ssl.SSLContext, Path, Path]
) -> None:
    context, ca, other = tls_pair
    server = serve(servers, [fixed(b"secret" * 100_000)], context)
    url = f"https://localhost:{server.port}/b"
    trusted = client(reactor, host="localhost", insecure=False, ca_file=str(ca))
    assert read(reactor, get(reactor, trusted, url)).received == b"secret" * 100_000

    untrusted = client(reactor, host="localhost", insecure=False, ca_file=str(other))
    with pytest.raises(ssl.SSLCertVerificationError):
        get(reactor, untrusted, url)


def test_closing_drops_the_idle_connections(reactor: ThreadCalls, servers: list[ScriptedServer]) -> None:
    server = serve(servers, [fixed(b"one"), fixed(b"two"), fixed(b"three")])
    http = client(reactor)
    url = f"http://127.0.0.1:{server.port}/b"
    read(reactor, get(reactor, http, url))
    http.close()
    # A request after close still works, on a connection of its own, which is not kept either.
    assert read(reactor, get(reactor, http, url)).received == b"two"
    assert read(reactor, get(reactor, http, url)).received == b"three"
    assert server.connections == 3


def test_a_body_reads_on_a_socket_numbered_past_1024(reactor: ThreadCalls, servers: list[ScriptedServer]) -> None:
    """select() cannot watch a descriptor numbered 1024 or more: a busy trow has such sockets."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    filler = [open("/dev/null") for _ in range(1100)]
    try:
        blob = b"f" * (3 * PIECE)
        server = serve(servers, [fixed(blob)])
        body = read(reactor, get(reactor, client(reactor), f"http://127.0.0.1:{server.port}/b"))
        assert body.received == blob and body.reason is not None and body.reason.check(ResponseDone)
    finally:
        for handle in filler:
            handle.close()


def test_a_url_the_thread_cannot_parse_fails_the_request(reactor: ThreadCalls) -> None:
    """Whatever goes wrong on the request's thread, the caller hears of it (never a hang)."""
    results: list[Any] = []
    client(reactor).request("GET", object()).addBoth(results.append)  # type: ignore[arg-type]
    reactor.run_until(lambda: bool(results))
    assert isinstance(results[0], Failure)
