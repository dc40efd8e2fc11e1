"""Upstream blob bodies read on a thread of their own, off the reactor.

A cold blob is the one request with a large body. Read through the reactor, every piece of it
costs the thread that serves every client a receive, a pass through the HTTP parser and, over
TLS, pyOpenSSL's decryption through a memory BIO 16 KiB at a time. Here each blob GET gets a
thread that connects, sends the request and reads the body with blocking calls (http.client,
over the stdlib C{ssl} module for HTTPS), which release the GIL while they wait and decrypt. The
body reaches the reactor in pieces of 1 MiB, at most L{AHEAD} of them queued, and only while the
reader of the body does not pause it: memory per download stays bounded.

L{UpstreamClient} keeps everything else (auth, redirects, the breaker, metrics): a
L{ThreadedHTTP} answers its C{request} with an C{IResponse} like treq's.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
from typing import Any, Mapping
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionLost
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from trow.proxy.names import Upstream

# Bytes per read from the upstream, and per piece handed to the reactor.
PIECE = 1 << 20
# Pieces read and not yet delivered on the reactor, per body.
AHEAD = 4
# Idle keep-alive connections kept per upstream: the next blob skips the TCP and TLS handshakes.
IDLE_CONNECTIONS = 8
# A body that is dropped (a 401's, a redirect's) is read to its end to keep the connection only
# when it is this small; a larger one closes the connection instead.
DISCARD_LIMIT = 64 << 10


class ThreadedHTTP:
    """Requests to one upstream, each on a thread of its own (see the module docstring).

    C{body_timeout}: how long a blocked read of the body may wait before the thread gives up;
    the download's own idle timer normally acts first.
    """

    def __init__(self, reactor: Any, upstream: Upstream, connect_timeout: float, body_timeout: float = 120.0) -> None:
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._body_timeout = body_timeout
        self._context: ssl.SSLContext | None = None
        if not upstream.insecure:
            # The same trust as the reactor's client: the upstream's own CA file, else the system's.
            self._context = ssl.create_default_context(cafile=upstream.ca_file)
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def request(
        self, method: str, url: str, headers: Mapping[str, list[str]] | None = None, timeout: float | None = None, **_: Any
    ) -> "Deferred[ThreadedResponse]":
        """Send the request on a new thread; fire with the response once its headers are in.
        Fails with an C{OSError} (refused, reset, timed out, TLS) when there is no response."""
        started: Deferred[ThreadedResponse] = Deferred()
        flat = {name: values[-1] for name, values in (headers or {}).items()}
        thread = threading.Thread(
            target=self._run, args=(method, url, flat, timeout or self._connect_timeout, started), name="trow-upstream", daemon=True
        )
        thread.start()
        return started

    def close(self) -> None:
        """Close the idle connections; the ones in use close when their body ends."""
        with self._lock:
            self._closed = True
            idle = [c for conns in self._idle.values() for c in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()

    # -- on the request's thread ---------------------------------------------------------------

    def _run(self, method: str, url: str, headers: dict[str, str], timeout: float, started: "Deferred[ThreadedResponse]") -> None:
        try:
            parts = urlsplit(url)
            key = (parts.scheme, parts.netloc)
            path = parts.path + ("?" + parts.query if parts.query else "")
            conn, response = self._send(key, parts.hostname or "", parts.port, method, path, headers, timeout)
        except BaseException as e:  # noqa: B036 - whatever it is, the reactor must hear of it
            self._reactor.callFromThread(started.errback, Failure(_network_error(e)))
            return
        body = _Body(self, key, conn, response, method == "HEAD")
        result = ThreadedResponse(response, body)
        self._reactor.callFromThread(started.callback, result)
        body.pump()

    def _send(
        self, key: tuple[str, str], host: str, port: int | None, method: str, path: str, headers: dict[str, str], timeout: float
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        while True:
            conn, reused = self._connection(key, host, port, timeout)
            try:
                conn.request(method, path, headers=headers)
                return conn, conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                if not reused:
                    raise
                # A kept-alive connection the upstream had closed meanwhile: once more, afresh.
            except BaseException:
                conn.close()
                raise

    def _connection(self, key: tuple[str, str], host: str, port: int | None, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                kept = idle.pop()
                if kept.sock is not None:
                    kept.sock.settimeout(timeout)
                return kept, True
        conn: http.client.HTTPConnection
        if key[0] == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=self._connect_timeout, context=self._context)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self._connect_timeout)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(timeout)  # then the wait for the response
        return conn, False

    def _release(self, key: tuple[str, str], conn: http.client.HTTPConnection) -> None:
        """Keep a connection whose response was read to its end, for the next request."""
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if not self._closed and len(idle) < IDLE_CONNECTIONS:
                idle.append(conn)
                return
        conn.close()


class ThreadedResponse:
    """The C{IResponse} of a L{ThreadedHTTP} request: status and headers are in, the body is
    read by its thread once C{deliverBody} names a protocol for it."""

    def __init__(self, response: http.client.HTTPResponse, body: "_Body") -> None:
        self.code = response.status
        self.phrase = response.reason.encode("latin-1", "replace")
        self.version = (b"HTTP", response.version // 10, response.version % 10)
        self.headers = Headers()
        for name, value in response.getheaders():
            self.headers.addRawHeader(name, value)
        self.length: int | object = response.length if response.length is not None else UNKNOWN_LENGTH
        self.request = None
        self.previousResponse = None
        self._body = body

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(self._body)
        self._body.start(protocol)

    def setPreviousResponse(self, response: Any) -> None:
        self.previousResponse = response


class _Body:
    """The body of one response, read by its request's thread; the transport its protocol sees
    (paused, resumed and stopped from the reactor).

    The thread reads while fewer than L{AHEAD} of its pieces wait for the protocol. A paused
    protocol gets nothing: pieces that land meanwhile are held (and keep their places) until it
    resumes, so a pause stops the reading within AHEAD pieces.
    """

    def __init__(
        self,
        client: ThreadedHTTP,
        key: tuple[str, str],
        conn: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
        head: bool,
    ) -> None:
        self._client = client
        self._reactor = client._reactor
        self._key = key
        self._conn = conn
        self._response = response
        self._head = head
        self._protocol: Any = None
        self._given = threading.Event()  # deliverBody was called
        self._slots = threading.Semaphore(AHEAD)
        self._stopped = False
        # On the reactor: pieces (and then the end) that arrived while the protocol was paused.
        self._paused = False
        self._held: list[bytes] = []
        # On the thread: read the body from the socket itself (see _next_piece), into this.
        self._direct = False
        self._buffer: memoryview | None = None
        self._poller: select.poll | None = None
        self._ended: Failure | None = None

    # -- on the reactor ------------------------------------------------------------------------

    def start(self, protocol: Any) -> None:
        self._protocol = protocol
        self._given.set()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        while self._held and not self._paused and not self._stopped:
            self._slots.release()
            self._protocol.dataReceived(self._held.pop(0))
        if not self._held and self._ended is not None and not self._paused:
            self._end(self._ended)

    def stopProducing(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._held.clear()
        self._slots.release()  # a thread waiting for a slot sees the stop
        sock = self._conn.sock
        if sock is not None:
            try:
                # The plain socket's shutdown: it wakes the thread's blocked read, TLS or not,
                # without touching the TLS object that thread is using.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass
        if self._ended is not None:
            self._end(self._ended)

    def _deliver(self, data: bytes) -> None:
        if self._stopped:
            return
        if self._paused or self._held:
            self._held.append(data)
            return
        self._slots.release()
        self._protocol.dataReceived(data)

    def _end(self, reason: Failure) -> None:
        if self._held and not self._stopped:
            self._ended = reason  # after the held pieces, on resume
            return
        protocol, self._protocol = self._protocol, None
        self._ended = None
        if protocol is not None:
            protocol.connectionLost(reason)

    # -- on the request's thread ---------------------------------------------------------------

    def pump(self) -> None:
        """Wait for a protocol, then read the body to it; the connection is kept for another
        request only when the body was read to its end."""
        response = self._response
        # A response nobody reads within the body timeout is dropped.
        if not self._given.wait(self._client._body_timeout):
            self._conn.close()
            return
        reason: Failure
        reusable = False
        try:
            if self._conn.sock is not None:
                self._conn.sock.settimeout(self._client._body_timeout)
            if self._head or getattr(self._protocol, "discards", False) is True:
                reusable = self._drain()
                reason = Failure(ResponseDone())
            else:
                reason = self._read()
                reusable = reason.check(ResponseDone) is not None and not response.will_close
        except BaseException as e:  # noqa: B036
            reason = Failure(ConnectionAborted() if self._stopped else _network_error(e))
        if reusable and not self._stopped:
            self._client._release(self._key, self._conn)
        else:
            self._conn.close()
        self._reactor.callFromThread(self._end, reason)

    def _drain(self) -> bool:
        response = self._response
        if response.length is not None and response.length <= DISCARD_LIMIT:
            response.read()
            return not response.will_close
        return False

    def _read(self) -> Failure:
        response = self._response
        while True:
            self._slots.acquire()
            if self._stopped:
                return Failure(ConnectionAborted())
            try:
                data = self._next_piece()
            except http.client.IncompleteRead as e:
                if e.partial and not self._stopped:
                    self._reactor.callFromThread(self._deliver, e.partial)
                return Failure(ConnectionLost(f"the upstream closed the connection mid-body: {e}"))
            if self._stopped:
                return Failure(ConnectionAborted())
            if data:
                self._reactor.callFromThread(self._deliver, data)
                continue
            self._slots.release()
            if response.length:  # bytes still due by Content-Length
                return Failure(ConnectionLost(f"the upstream closed the connection {response.length} bytes short"))
            response.close()  # read to its end: the connection may serve another request
            if response.length is None and not response.chunked:
                # Delimited by the close of the connection: the digest check tells the rest.
                return Failure(PotentialDataLoss())
            return Failure(ResponseDone())

    def _next_piece(self) -> bytes:
        """What the upstream has sent by now, up to L{PIECE} bytes, or, when it has sent nothing
        yet, the next bytes it sends (a slow upstream's bytes go on at once, a fast one's in large
        pieces); empty at the end of the body."""
        response = self._response
        sock = self._conn.sock
        if self._direct and sock is not None and response.length is not None and not response.chunked:
            return self._from_socket(sock)
        # The first read1 takes what http.client buffered with the headers (its buffer is smaller
        # than a piece, and read1 never refills it): a Content-Length body may then be read from
        # the socket itself.
        self._direct = True
        first = response.read1(PIECE)
        if not first:
            return first
        parts = [first]
        got = len(first)
        while got < PIECE and self._waiting():
            more = response.read1(PIECE - got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _from_socket(self, sock: socket.socket) -> bytes:
        """The next piece of a Content-Length body, received straight into one reused buffer:
        over TLS, one call per record into the buffer, no object per record."""
        response = self._response
        assert response.length is not None
        want = min(PIECE, response.length)
        if not want:
            return b""
        if self._buffer is None:
            self._buffer = memoryview(bytearray(PIECE))
        view = self._buffer
        got = sock.recv_into(view, want)
        while got and got < want and self._waiting():
            more = sock.recv_into(view[got:], want - got)
            if not more:
                break
            got += more
        response.length -= got
        return bytes(view[:got])

    def _waiting(self) -> bool:
        """Can the connection be read without blocking?"""
        sock = self._conn.sock
        if sock is None:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted, in OpenSSL's buffer
        # poll, not select: select cannot watch a descriptor numbered 1024 or more. One poller
        # per body: this runs once per TLS record.
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(sock, select.POLLIN)
        return bool(self._poller.poll(0))


def _network_error(e: BaseException) -> OSError:
    """What the reactor's client raises for the same trouble: an C{OSError} for anything that
    went wrong with the connection (an unexpected HTTP answer is one too)."""
    if isinstance(e, OSError):
        return e
    return ConnectionError(f"{type(e).__name__}: {e}")
