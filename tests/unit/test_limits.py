"""The limits: section at work on TrowSite, deterministically in memory (a Clock for time, a
StringTransport per connection): slowloris, oversized headers, idle and stalled clients, a flood
of connections, too many uploads at once."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from trow.api import site as site_module
from trow.api.site import TrowSite, UploadSlots, ensure_fd_headroom
from trow.config import LimitsConfig
from trow.metrics import Metrics

LIMITS = LimitsConfig(
    max_header_size=4096, idle_timeout=60, header_timeout=30, max_connections=3, max_concurrent_uploads=1
)


class _App(Resource):
    """200 "ok" at once, or (at /hold) an answer the test finishes by hand."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Request] = []
        self.bodies: list[bytes] = []

    def render(self, request: Request) -> Any:
        assert request.content is not None
        self.bodies.append(request.content.read())
        if request.path == b"/hold":
            self.held.append(request)
            return NOT_DONE_YET
        return b"ok"


class Conn:
    """One client connection to a site, in memory."""

    def __init__(self, site: TrowSite, peer: str = "10.0.0.7") -> None:
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        self.channel = site.buildProtocol(self.transport.getPeer())
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def output(self) -> bytes:
        return self.transport.value()

    def statuses(self) -> list[int]:
        """The status of every response written so far."""
        return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", self.output())]

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)

    def gone(self) -> None:
        """The reactor finished closing the connection."""
        self.channel.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def app() -> _App:
    return _App()


@pytest.fixture
def site(app: _App, clock: Clock, metrics: Metrics) -> TrowSite:
    return TrowSite(app, limits=LIMITS, metrics=metrics, uploads=UploadSlots(1, metrics), reactor=clock)


def hits(metrics: Metrics, limit: str) -> float:
    return metrics.value("trow_http_limit_hits_total", site="registry", limit=limit)


# -- header_timeout: slowloris -----------------------------------------------------------------


def test_slowloris_is_cut_when_the_header_timeout_runs_out(site: TrowSite, clock: Clock, metrics: Metrics) -> None:
    """A byte every 10s keeps twisted.web's idle timer happy forever; the header clock does not
    restart, so 30s after the first byte the client gets 408 and the connection closes."""
    conn = Conn(site)
    conn.send(b"GET /v2/ HTTP/1.1\r\n")
    for _ in range(2):
        clock.advance(10)
        conn.send(b"X")
    clock.advance(9.9)
    assert not conn.closing
    clock.advance(0.1)
    assert conn.closing
    assert conn.statuses() == [408]
    assert hits(metrics, "header_timeout") == 1
    conn.gone()
    assert clock.getDelayedCalls() == []


def test_headers_in_time_are_served(site: TrowSite, clock: Clock, metrics: Metrics) -> None:
    """Slow, but complete within the header timeout: served, and the timer is gone."""
    conn = Conn(site)
    conn.send(b"GET /v2/ HTTP/1.1\r\n")
    clock.advance(29)
    conn.send(b"Host: trow\r\n\r\n")
    clock.advance(30)
    assert conn.statuses() == [200]
    assert not conn.closing
    assert hits(metrics, "header_timeout") == 0


def test_header_clock_starts_again_for_each_request(site: TrowSite, clock: Clock) -> None:
    """On a kept-alive connection each request gets its own header_timeout, counted from its
    own first byte, not from the connection's."""
    conn = Conn(site)
    for _ in range(3):
        conn.send(b"GET /v2/ HTTP/1.1\r\n")
        clock.advance(20)
        conn.send(b"Host: trow\r\n\r\n")
        clock.advance(50)  # idle between requests, under idle_timeout
    assert conn.statuses() == [200, 200, 200]
    assert not conn.closing


# -- max_header_size ---------------------------------------------------------------------------


def test_oversized_headers_get_431_and_close(site: TrowSite, metrics: Metrics) -> None:
    """Headers adding up to more than max_header_size: 431, connection closed, nothing served."""
    conn = Conn(site)
    conn.send(b"GET /v2/ HTTP/1.1\r\n")
    for i in range(10):
        conn.send(b"X-Filler-%d: %s\r\n" % (i, b"a" * 500))
    conn.send(b"\r\n")
    assert conn.statuses() == [431]
    assert conn.closing
    assert hits(metrics, "max_header_size") == 1


def test_one_overlong_line_gets_431(site: TrowSite, metrics: Metrics) -> None:
    """A single line longer than the limit, even with no line end yet."""
    conn = Conn(site)
    conn.send(b"GET /v2/" + b"a" * 5000)
    assert conn.statuses() == [431]
    assert conn.closing


def test_headers_just_under_the_limit_are_served(site: TrowSite) -> None:
    conn = Conn(site)
    request = b"GET /v2/ HTTP/1.1\r\nX-Filler: " + b"a" * 3000 + b"\r\n\r\n"
    assert len(request) < LIMITS.max_header_size
    conn.send(request)
    assert conn.statuses() == [200]


# -- idle_timeout ------------------------------------------------------------------------------


def test_silent_connection_is_closed_after_idle_timeout(site: TrowSite, clock: Clock, metrics: Metrics) -> None:
    conn = Conn(site)
    clock.advance(59)
    assert not conn.closing
    clock.advance(1)
    assert conn.closing
    assert hits(metrics, "idle_timeout") == 1


def test_client_that_stops_reading_its_answer_is_cut(
    site: TrowSite, app: _App, clock: Clock, metrics: Metrics
) -> None:
    """twisted.web turns its idle timer off while answering. When the transport's buffer stays
    full (the transport paused us and never resumed) for idle_timeout, the connection is cut."""
    conn = Conn(site)
    conn.send(b"GET /hold HTTP/1.1\r\nHost: trow\r\n\r\n")
    [request] = app.held
    request.write(b"x" * 1000)
    conn.channel.pauseProducing()  # what a TCP transport does when its buffer is full
    clock.advance(59)
    assert not conn.closing
    clock.advance(1)
    assert conn.closing and conn.transport.disconnected  # aborted: a clean close would wait forever
    assert hits(metrics, "idle_timeout") == 1


def test_slow_reader_that_keeps_reading_is_not_cut(site: TrowSite, app: _App, clock: Clock) -> None:
    """Buffer full, drained 50s later, full again...: ten minutes of a slow download are fine."""
    conn = Conn(site)
    conn.send(b"GET /hold HTTP/1.1\r\nHost: trow\r\n\r\n")
    [request] = app.held
    for _ in range(12):
        request.write(b"x" * 1000)
        conn.channel.pauseProducing()
        clock.advance(50)
        conn.channel.resumeProducing()
    request.finish()
    assert not conn.closing
    assert conn.statuses() == [200]


def test_pauses_of_a_fast_download_cost_one_timer(site: TrowSite, app: _App, clock: Clock) -> None:
    """A fast download pauses and resumes thousands of times a second: that must not become
    thousands of timers."""
    conn = Conn(site)
    conn.send(b"GET /hold HTTP/1.1\r\nHost: trow\r\n\r\n")
    for _ in range(1000):
        conn.channel.pauseProducing()
        conn.channel.resumeProducing()
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(120)
    assert not conn.closing
    assert clock.getDelayedCalls() == []


def test_long_answer_without_backpressure_is_not_cut(site: TrowSite, app: _App, clock: Clock) -> None:
    """Work that takes long on trow's side (an upstream fetch) is not the client's idling."""
    conn = Conn(site)
    conn.send(b"GET /hold HTTP/1.1\r\nHost: trow\r\n\r\n")
    clock.advance(600)
    assert not conn.closing
    app.held[0].finish()
    assert conn.statuses() == [200]


class _PausingStore:
    """A spool store whose spool pauses the client at once, as a Spool does when the disk is
    behind; the test resumes it by hand."""

    def __init__(self) -> None:
        self.producer: IPushProducer | None = None

    def spool(self, producer: IPushProducer | None) -> Any:
        assert producer is not None
        self.producer = producer
        producer.pauseProducing()
        return io.BytesIO()


def test_upload_paused_by_trow_is_not_idle(app: _App, clock: Clock, metrics: Metrics) -> None:
    """While trow itself holds an upload back (its disk is behind), the client cannot send:
    that does not count against it. Once resumed, a client that then sends nothing is idle."""
    store = _PausingStore()
    site = TrowSite(app, spool_store=store, limits=LIMITS, metrics=metrics, reactor=clock)  # type: ignore[arg-type]
    conn = Conn(site)
    conn.send(b"PUT /up HTTP/1.1\r\nHost: trow\r\nContent-Length: 200000\r\n\r\n" + b"a" * 1000)
    assert conn.transport.producerState == "paused"
    clock.advance(300)
    assert not conn.closing
    assert store.producer is not None
    store.producer.resumeProducing()
    assert conn.transport.producerState == "producing"
    clock.advance(59)
    assert not conn.closing
    clock.advance(1)
    assert conn.closing
    assert hits(metrics, "idle_timeout") == 1


# -- max_connections ---------------------------------------------------------------------------


def test_connections_over_the_limit_are_closed_at_once(site: TrowSite, metrics: Metrics) -> None:
    """The fourth connection of a listener limited to three is aborted as soon as it is made,
    and counted; once one of the three is gone, a new one is served."""
    conns = [Conn(site) for _ in range(3)]
    assert metrics.value("trow_http_connections", site="registry") == 3
    refused = Conn(site)
    assert refused.transport.disconnected
    assert hits(metrics, "max_connections") == 1
    for conn in conns:
        conn.send(b"GET /v2/ HTTP/1.1\r\nHost: trow\r\n\r\n")
        assert conn.statuses() == [200]
    conns[0].gone()
    assert metrics.value("trow_http_connections", site="registry") == 2
    again = Conn(site)
    again.send(b"GET /v2/ HTTP/1.1\r\nHost: trow\r\n\r\n")
    assert again.statuses() == [200]


def test_a_flood_is_logged_once(site: TrowSite, metrics: Metrics) -> None:
    """A thousand refused connections are a thousand counts but one log line."""
    from twisted.logger import LogEvent, globalLogPublisher

    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        kept = [Conn(site) for _ in range(3)]
        for _ in range(1000):
            Conn(site)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert hits(metrics, "max_connections") == 1000
    assert len([e for e in seen if "max_connections" in e.get("log_format", "")]) == 1
    assert len(kept) == 3


def test_refusal_works_behind_tls(app: _App, clock: Clock, metrics: Metrics) -> None:
    """On a TLS listener (the webhook's) the extra connection is cut before any handshake."""
    from twisted.internet import ssl
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from trow.certs import make_bundle

    bundle = make_bundle("trow", "default")
    options = ssl.PrivateCertificate.loadPEM(bundle.key_pem + bundle.cert_pem).options()
    site = TrowSite(app, limits=LimitsConfig(max_connections=1), metrics=metrics, name="webhook", reactor=clock)
    factory = TLSMemoryBIOFactory(options, False, site)
    peer = IPv4Address("TCP", "10.0.0.9", 40000)

    class TCPTransport(StringTransport):
        def setTcpNoDelay(self, enabled: bool) -> None:
            pass

    first = TCPTransport()
    factory.buildProtocol(peer).makeConnection(first)
    assert not first.disconnecting
    second = TCPTransport()
    factory.buildProtocol(peer).makeConnection(second)
    assert second.disconnected
    assert metrics.value("trow_http_limit_hits_total", site="webhook", limit="max_connections") == 1


def test_limits_are_per_site(app: _App, clock: Clock, metrics: Metrics) -> None:
    """app.py builds one site per listener: a full listener does not refuse another's clients."""
    a = TrowSite(app, limits=LIMITS, metrics=metrics, reactor=clock)
    b = TrowSite(app, limits=LIMITS, metrics=metrics, reactor=clock)
    for _ in range(3):
        Conn(a)
    assert Conn(a).transport.disconnected
    assert not Conn(b).transport.disconnected


# -- max_concurrent_uploads --------------------------------------------------------------------


def test_uploads_over_the_limit_get_429_with_retry_after(site: TrowSite, app: _App, metrics: Metrics) -> None:
    """With one upload in progress and a limit of one, a second gets the spec's 429 JSON error
    with Retry-After; its body is read and dropped, and the connection stays usable. Requests
    without a body are not affected. Once the first upload is answered, uploads are taken
    again."""
    first = Conn(site)
    first.send(b"PUT /hold HTTP/1.1\r\nHost: trow\r\nContent-Length: 5\r\n\r\nhello")
    assert metrics.value("trow_http_uploads_in_progress") == 1

    second = Conn(site, peer="10.0.0.8")
    second.send(b"PUT /up HTTP/1.1\r\nHost: trow\r\nContent-Length: 6\r\n\r\nsecret")
    assert second.statuses() == [429]
    assert second.output().startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    head, _, body = second.output().partition(b"\r\n\r\n")
    assert b"Retry-After: 5" in head
    assert json.loads(body)["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert b"secret" not in app.bodies  # never reached the application
    assert not second.closing
    assert hits(metrics, "max_concurrent_uploads") == 1

    second.send(b"GET /v2/ HTTP/1.1\r\nHost: trow\r\n\r\n")
    assert second.statuses() == [429, 200]

    app.held[0].finish()
    assert metrics.value("trow_http_uploads_in_progress") == 0
    second.send(b"PUT /up HTTP/1.1\r\nHost: trow\r\nContent-Length: 2\r\n\r\nok")
    assert second.statuses() == [429, 200, 200]


def test_upload_slot_is_freed_when_the_client_leaves(site: TrowSite, metrics: Metrics) -> None:
    """A client that hangs up half-way through its body gives its slot back."""
    first = Conn(site)
    first.send(b"PUT /up HTTP/1.1\r\nHost: trow\r\nContent-Length: 100\r\n\r\nhalf")
    assert metrics.value("trow_http_uploads_in_progress") == 1
    first.gone()
    assert metrics.value("trow_http_uploads_in_progress") == 0
    second = Conn(site)
    second.send(b"PUT /up HTTP/1.1\r\nHost: trow\r\nContent-Length: 2\r\n\r\nok")
    assert second.statuses() == [200]


def test_chunked_uploads_count_too(site: TrowSite, app: _App) -> None:
    first = Conn(site)
    first.send(b"PATCH /hold HTTP/1.1\r\nHost: trow\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n")
    second = Conn(site)
    second.send(b"PATCH /up HTTP/1.1\r\nHost: trow\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n")
    assert second.statuses() == [429]


# -- the TLS check still holds -----------------------------------------------------------------


def test_tls_client_hello_is_still_refused(site: TrowSite) -> None:
    conn = Conn(site)
    conn.send(b"\x16\x03\x01\x02\x00")
    assert conn.transport.disconnected


# -- file descriptors ----------------------------------------------------------------------------


def test_fd_limit_is_raised_to_make_room(monkeypatch: pytest.MonkeyPatch) -> None:
    """A soft limit below max_connections plus trow's own files is raised towards the hard one."""
    limits = {"soft": 1024, "hard": 65536}
    monkeypatch.setattr(site_module.rlimit, "getrlimit", lambda which: (limits["soft"], limits["hard"]))

    def setrlimit(which: int, values: tuple[int, int]) -> None:
        limits["soft"] = values[0]

    monkeypatch.setattr(site_module.rlimit, "setrlimit", setrlimit)
    ensure_fd_headroom(2048)
    assert limits["soft"] == 2048 + 512


def test_fd_limit_too_low_is_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.logger import LogEvent, LogLevel, globalLogPublisher

    monkeypatch.setattr(site_module.rlimit, "getrlimit", lambda which: (1024, 1024))
    monkeypatch.setattr(site_module.rlimit, "setrlimit", lambda which, values: None)
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        ensure_fd_headroom(4096)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    [warning] = [e for e in seen if e.get("log_level") == LogLevel.warn]
    assert "max_connections" in warning["log_format"]
