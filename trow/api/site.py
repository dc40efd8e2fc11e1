"""The twisted.web Site that serves trow's Klein apps.

What plain twisted.web does not do for a registry:

- request bodies that are large or of unknown length (blob uploads) are spooled into the data
  dir's C{tmp/} and hashed as they arrive, with backpressure on the client, instead of landing in
  an anonymous temp file that would have to be copied and hashed again;
- a plain-HTTP listener that receives a TLS ClientHello drops the connection at once. skopeo,
  podman and CRI-O try TLS first and fall back to HTTP only when that fails; a server that waits
  for a request line makes every pull stall until the client's TLS timeout;
- one access-log event and one set of metrics per request (L{trow.logs}, L{trow.metrics});
- the C{limits:} of the config (L{trow.config.LimitsConfig}), so that neither a slow client nor a
  crowd of them can take trow down:

  - C{max_connections}: each site counts its open connections (app.py builds one site per
    listener); one more is closed as soon as it is accepted.
  - C{max_header_size}: request line plus headers; over it, 431 and the connection closes.
  - C{header_timeout}: the request line and headers must be complete this long after their
    first byte. twisted.web's own timeout restarts at every byte received, so a slowloris
    client sending a byte a minute would hold a connection forever; this one does not restart.
  - C{idle_timeout}: twisted.web's idle timeout covers a connection between requests and while
    a body arrives, and stops while a request is being answered: a client that asked for a blob
    and stopped reading would hold its connection and the file open forever. So while
    answering, the transport's pause (its buffer is full: the client is not reading) starts a
    timer, and its resume (the buffer drained) stops it. A slow reader that drains twisted's
    buffer (64 KiB plus one write) within C{idle_timeout} is never cut; one that reads
    nothing that long is. A pause trow asks for itself (the disk falling behind an upload)
    does not count against the client.
  - C{max_concurrent_uploads}: request bodies being received, counted from their headers to
    their answer, across the registry's listeners. Beyond it the body is read and thrown away
    (nothing reaches the disk, and the connection stays usable) and the answer is 429
    C{TOOMANYREQUESTS} with C{Retry-After}.
"""

from __future__ import annotations

import json
import resource as rlimit
from typing import Any, Callable, cast

from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from zope.interface import implementer

from trow import logs
from trow.api.http import send_error
from trow.config import LimitsConfig
from trow.metrics import Metrics, route_label
from trow.registry.errors import RegistryError
from trow.storage.blobs import BlobStore

# Bodies under this many bytes (manifests, small chunks) stay in memory, like twisted.web does.
SPOOL_THRESHOLD = 100_000

# What a client must send per idle_timeout to count as active (16KiB a minute is ~270 bytes/s:
# any real client, however slow its link, sends more).
MIN_PROGRESS = 16 * 1024

TLS_HANDSHAKE = 0x16

# Seconds a client refused for max_concurrent_uploads is asked to wait: uploads in progress
# usually free a slot within seconds.
RETRY_AFTER = 5
# --cors (Trow's): what a browser may do, and which answer headers its scripts may read.
CORS_METHODS = "GET, POST, OPTIONS"
CORS_EXPOSED = "Docker-Content-Digest, Docker-Distribution-API-Version, Location, Link, Range, WWW-Authenticate"
# How long a refused client may go on sending (and we on dropping it) before it is cut.
LINGER = 5.0

# Status reported for a request whose client left before any answer was sent (as nginx does).
CLIENT_GONE = 499

_log = Logger()
_DEFAULTS = LimitsConfig()


class UploadSlots:
    """How many request bodies the registry receives at once, across all its listeners."""

    def __init__(self, limit: int, metrics: Metrics | None = None) -> None:
        self.limit = limit
        self.active = 0
        self._metrics = metrics

    def acquire(self) -> bool:
        """Take a slot; False when all are taken."""
        if self.active >= self.limit:
            return False
        self.active += 1
        if self._metrics is not None:
            self._metrics.uploads_in_progress.inc()
        return True

    def release(self) -> None:
        """Give back a slot taken by L{acquire}."""
        self.active -= 1
        if self._metrics is not None:
            self._metrics.uploads_in_progress.dec()


class _Discard:
    """The body of a request refused before its body arrived: read and dropped."""

    def write(self, data: bytes) -> None:
        pass

    def tell(self) -> int:
        return 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


@implementer(IPushProducer)
class _ReadPauser:
    """What a L{Spool} pauses when the disk falls behind: the client's transport, without the
    idle timeout holding that pause against the client."""

    def __init__(self, channel: "TrowChannel", transport: IPushProducer) -> None:
        self._channel = channel
        self._transport = transport

    def pauseProducing(self) -> None:
        self._channel.reading_paused = True
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._channel.reading_paused = False
        self._channel.count_as_active()
        self._transport.resumeProducing()

    def stopProducing(self) -> None:
        self._transport.stopProducing()


class TrowRequest(server.Request):
    """A request whose large bodies go to a L{trow.storage.blobs.Spool}, that holds an upload
    slot while its body arrives, and that is logged and counted once when it ends.

    Handlers name their route for the metrics with C{request.trow_route = "manifest"}.
    """

    trow_route = "other"

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        site = getattr(channel, "site", None)
        self._trow_site: TrowSite | None = site if isinstance(site, TrowSite) else None
        self.started = self._trow_site.reactor.seconds() if self._trow_site is not None else 0.0
        self.received = 0
        self._headers_done = False
        self._holds_upload_slot = False
        self._refused: RegistryError | None = None
        self._ended = False
        # (bytes, what) for a body the API caps (a manifest, the login form), else None.
        self._body_limit: tuple[int, str] | None = None
        self._answered_early = False

    def process(self) -> None:
        if self._answered_early:
            return  # refused from its headers (413) and answered already: the body is not handled
        # Headers every response of this site carries, errors and health checks included.
        for name, value in getattr(getattr(self.channel, "site", None), "default_headers", ()):
            self.setHeader(name, value)
        if self._trow_site is not None and self._trow_site.cors and self._cors(self._trow_site.cors):
            return  # a preflight, answered
        if self._refused is not None:
            self.site = getattr(self.channel, "site", None)
            self.write(send_error(self, self._refused))
            self.finish()
            return
        super().process()

    def _cors(self, allowed: tuple[str, ...]) -> bool:
        """Trow's --cors: let the browsers of the C{allowed} origins read the answers, with
        credentials; answer their preflights (True) for GET, POST and OPTIONS."""
        # Whether an answer carries CORS headers depends on Origin: caches must know it.
        self.setHeader("Vary", "Origin")
        origin = self.getHeader("Origin")
        if not origin or origin.rstrip("/").lower() not in allowed:
            return False
        # With credentials the origin is named, never "*" (browsers refuse that).
        self.setHeader("Access-Control-Allow-Origin", origin)
        self.setHeader("Access-Control-Allow-Credentials", "true")
        self.setHeader("Access-Control-Expose-Headers", CORS_EXPOSED)
        if self.method != b"OPTIONS" or not self.getHeader("Access-Control-Request-Method"):
            return False
        self.setResponseCode(204)
        self.setHeader("Access-Control-Allow-Methods", CORS_METHODS)
        self.setHeader("Access-Control-Allow-Headers", self.getHeader("Access-Control-Request-Headers") or "Authorization")
        self.setHeader("Access-Control-Max-Age", "600")
        self.trow_route = "cors"
        self.finish()
        return True

    def gotLength(self, length: int | None) -> None:
        self._headers_done = True
        # twisted.web sets method and uri only once the body is in; a request cut during its
        # body is logged with them too.
        self.method = getattr(self.channel, "_command", self.method)
        self.uri = getattr(self.channel, "_path", self.uri)
        site = self._trow_site
        self._body_limit = site.body_limit(self) if site is not None and site.body_limit is not None else None
        if self._body_limit is not None and length is not None and length > self._body_limit[0]:
            # Refused from its Content-Length, before any of the body is read.
            self._refuse_body(length)
            return
        if length != 0 and site is not None and site.body_guard is not None:
            refusal = site.body_guard(self)
            if refusal is not None:
                # Nothing of this body reaches the disk: it is dropped as it arrives.
                self._refused = refusal
                self.content = _Discard()
                return
        if length != 0 and site is not None and site.uploads is not None:
            if not site.uploads.acquire():
                site.limit_hit("max_concurrent_uploads")
                self._refused = RegistryError(
                    "TOOMANYREQUESTS",
                    f"more than {site.uploads.limit} uploads at once; try again in a few seconds",
                    headers={"Retry-After": str(RETRY_AFTER)},
                )
                self.content = _Discard()
                return
            self._holds_upload_slot = True
        store: BlobStore | None = getattr(site, "spool_store", None)
        if store is None or (length is not None and length < SPOOL_THRESHOLD):
            super().gotLength(length)
            return
        # The transport is what to pause when the disk or the hasher falls behind the client
        # (a TCP transport, or the TLS wrapper around one: both can pause their reading).
        transport = self.channel.transport
        producer: IPushProducer | None = None
        if hasattr(transport, "pauseProducing"):
            producer = cast(IPushProducer, transport)
            if isinstance(self.channel, TrowChannel):
                producer = _ReadPauser(self.channel, producer)
        self.content = store.spool(producer)

    def handleContentChunk(self, data: bytes) -> None:
        self.received += len(data)
        if self._body_limit is not None and self.received > self._body_limit[0]:
            # A chunked body that has grown past the limit.
            self._refuse_body(None)
            return
        super().handleContentChunk(data)

    def _refuse_body(self, length: int | None) -> None:
        """Answer 413 at once, then close: nothing more of the body is read or kept."""
        assert self._body_limit is not None
        limit, what = self._body_limit
        sent = f"{length} bytes" if length is not None else f"more than {limit} bytes"
        error = RegistryError(
            "SIZE_INVALID",
            f"the request body is {sent}, more than this registry's limit of {limit} bytes for {what}",
            {"size": length, "limit": limit},
            status=413,
        )
        self._answered_early = True
        spooled, self.content = getattr(self, "content", None), _Discard()
        if spooled is not None and hasattr(spooled, "close"):
            spooled.close()  # a spool of a chunked body: its temp file goes
        if isinstance(self.channel, TrowChannel):
            self.channel.answer_and_close(self, error, what)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        if not self.finished:
            self.ended(completed=False)

    def ended(self, completed: bool) -> None:
        """The request is over: answered (C{completed}), or its connection lost. Once only."""
        if self._ended:
            return
        self._ended = True
        site = self._trow_site
        if site is None:
            return
        if self._holds_upload_slot:
            self._holds_upload_slot = False
            if site.uploads is not None:
                site.uploads.release()
        if self._headers_done:
            site.record(self, completed)


class TrowChannel(http.HTTPChannel):
    """HTTP/1.1 channel: hangs up on a TLS handshake instead of waiting for a request line, and
    enforces the header size, header timeout and idle timeout (see the module docstring)."""

    _first = True
    site: "TrowSite"
    header_timeout: float | None = _DEFAULTS.header_timeout
    max_header_size = _DEFAULTS.max_header_size
    # twisted.web's timeOut is switched off while a request is answered; this one is not.
    idle_timeout: float | None = _DEFAULTS.idle_timeout
    # Set while trow itself paused reading (an upload's disk is behind): not the client's idling.
    reading_paused = False
    _header_bytes = 0
    _header_call: IDelayedCall | None = None
    _stall_call: IDelayedCall | None = None
    # When the transport last paused us (its buffer full) without resuming since, else None.
    _paused_since: float | None = None
    _abort_call: IDelayedCall | None = None
    _counted = False
    _refusing = False
    # Bytes received since the idle timer was last restarted (see resetTimeout).
    _progress = 0
    _client: str | None = None

    def count_as_active(self) -> None:
        """Restart the idle timer whatever the client sent (trow itself held it back)."""
        self._progress = MIN_PROGRESS
        self.resetTimeout()

    def resetTimeout(self) -> None:
        # twisted.web restarts the idle timer on every byte, so a body trickled a byte a minute
        # would hold its connection (and its upload slot) for ever. The timer restarts only once
        # the client has sent MIN_PROGRESS bytes since the last restart.
        if self._progress < MIN_PROGRESS:
            return
        self._progress = 0
        super().resetTimeout()

    def dataReceived(self, data: bytes) -> None:
        self._progress += len(data)
        if self._refusing:
            return
        if self._first and data:
            self._first = False
            if data[0] == TLS_HANDSHAKE:
                assert self.transport is not None
                self.transport.abortConnection()  # type: ignore[attr-defined]
                return
        # The first byte of a request line starts its header clock (blank lines between
        # requests, which twisted.web tolerates, do not).
        if self.line_mode and self._header_call is None and self.header_timeout and data.strip(b"\r\n"):
            self._header_call = self.callLater(self.header_timeout, self._header_timed_out)
            # A new request is activity, however short; its headers have header_timeout.
            self._progress = MIN_PROGRESS
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if self._refusing:
            return  # answered and closing: the rest of this read (a body, a pipelined request) is dropped
        super().rawDataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._refusing:
            return
        self._header_bytes += len(line) + 2
        if self._header_bytes > self.max_header_size:
            self._refuse(b"431 Request Header Fields Too Large", "max_header_size")
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse(b"431 Request Header Fields Too Large", "max_header_size")

    def allHeadersReceived(self) -> None:
        self._header_bytes = 0
        self._cancel_header_timer()
        super().allHeadersReceived()

    def _cancel_header_timer(self) -> None:
        if self._header_call is not None:
            if self._header_call.active():
                self._header_call.cancel()
            self._header_call = None

    def _header_timed_out(self) -> None:
        self._header_call = None
        _log.info(
            "closing connection from {peer}: request headers not complete after {timeout}s",
            peer=_peer(self),
            timeout=self.header_timeout,
        )
        self._refuse(b"408 Request Timeout", "header_timeout")

    def answer_and_close(self, request: TrowRequest, error: RegistryError, limit: str) -> None:
        """Answer C{request} with C{error} now, whatever of its body is still on its way, then
        close: the client gets the whole OCI error (our side of the connection is shut for
        writing, and what it still sends is read and dropped), and is cut if it keeps sending."""
        transport = self.transport
        if self._refusing or transport is None or getattr(transport, "disconnecting", False):
            return
        self._refusing = True
        self.persistent = False
        self.site.limit_hit(limit)
        body = json.dumps(error.to_json()).encode()
        headers = [
            *getattr(self.site, "default_headers", ()),
            (b"Content-Type", b"application/json"),
            (b"Content-Length", str(len(body)).encode()),
            (b"Connection", b"close"),
        ]
        head = b"HTTP/1.1 %d %s\r\n" % (error.status, http.RESPONSES.get(error.status, b"Error"))
        head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        transport.write(head + b"\r\n" + body)
        request.code = error.status
        request.sentLength = len(body)
        request.ended(completed=True)
        if hasattr(transport, "loseWriteConnection"):
            transport.loseWriteConnection()
        else:
            self.loseConnection()
        # A client that keeps sending (or never closes) is cut.
        self._abort_call = self.callLater(LINGER, self._abort)

    def _send100Continue(self) -> None:
        if not self._refusing:  # a refused body must not be asked for after the refusal
            super()._send100Continue()

    def _refuse(self, status: bytes, limit: str) -> None:
        """Answer C{status} outside of any request, close, and ignore what else comes."""
        self._cancel_header_timer()
        transport = self.transport
        if self._refusing or transport is None or getattr(transport, "disconnecting", False):
            return
        self._refusing = True
        self.site.limit_hit(limit)
        transport.write(b"HTTP/1.1 " + status + b"\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        self.loseConnection()
        # A client that does not read even that much is cut.
        if self.abortTimeout is not None:
            self._abort_call = self.callLater(self.abortTimeout, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def timeoutConnection(self) -> None:
        if self.reading_paused:
            # trow paused this client's upload (its disk is behind): wait another period.
            self.setTimeout(self.timeOut)
            return
        self.site.limit_hit("idle_timeout")
        super().timeoutConnection()

    def pauseProducing(self) -> None:
        # The transport's buffer is full: the client is not reading what we send.
        super().pauseProducing()
        if self.idle_timeout:
            self._paused_since = self.site.reactor.seconds()
            # A download pauses and resumes for every buffer-full, thousands of times a second:
            # one timer per idle period that looks at _paused_since, not one per pause.
            if self._stall_call is None:
                self._stall_call = self.callLater(self.idle_timeout, self._check_stall)

    def resumeProducing(self) -> None:
        self._paused_since = None
        super().resumeProducing()

    def _cancel_stall_timer(self) -> None:
        self._paused_since = None
        if self._stall_call is not None:
            if self._stall_call.active():
                self._stall_call.cancel()
            self._stall_call = None

    def _check_stall(self) -> None:
        self._stall_call = None
        if self._paused_since is None or not self.idle_timeout:
            return
        waited = self.site.reactor.seconds() - self._paused_since
        if waited < self.idle_timeout:
            self._stall_call = self.callLater(self.idle_timeout - waited, self._check_stall)
            return
        _log.info(
            "closing connection from {peer}: it read nothing of its response for {timeout}s",
            peer=_peer(self),
            timeout=self.idle_timeout,
        )
        self.site.limit_hit("idle_timeout")
        if self.transport is not None:
            # Nothing more can be delivered, and a clean close would wait for the buffer.
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_header_timer()
        self._cancel_stall_timer()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        if self._counted:
            self._counted = False
            self.site.connection_closed(self._client)
        super().connectionLost(reason)


def _peer(channel: http.HTTPChannel) -> str:
    transport = channel.transport
    if transport is None:
        return "-"
    address = transport.getPeer()
    return str(getattr(address, "host", address))


class _Refused(Protocol):
    """A connection over C{max_connections}: closed as soon as it is accepted."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]


class TrowSite(server.Site):
    """A Site with trow's request and channel classes, limits, access log and metrics.

    @param name: what the site serves (C{registry}, C{webhook}, C{metrics}): the C{site} label
        of the connection metrics and the name in log messages.
    @param uploads: the registry's upload slots, shared by its listeners (None: no limit).
    @param record: count requests in the metrics and log them; off for the metrics listener,
        whose scrapes are not traffic.
    @param kwargs: twisted.web's (C{reactor}, ...); the idle timeout comes from C{limits}.
    """

    protocol = TrowChannel  # type: ignore[assignment]
    requestFactory = TrowRequest

    def __init__(
        self,
        resource: IResource,
        spool_store: BlobStore | None = None,
        default_headers: tuple[tuple[bytes, bytes], ...] = (),
        *,
        limits: LimitsConfig = _DEFAULTS,
        metrics: Metrics | None = None,
        uploads: UploadSlots | None = None,
        name: str = "registry",
        record: bool = True,
        body_guard: Callable[[IRequest], RegistryError | None] | None = None,
        body_limit: Callable[[IRequest], tuple[int, str] | None] | None = None,
        cors: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("timeout", limits.idle_timeout)
        # trow reads no form fields; parsing them would read a whole upload into memory.
        super().__init__(resource, requestFactory=TrowRequest, parsePOSTFormSubmission=False, **kwargs)
        self.spool_store = spool_store
        self.default_headers = default_headers
        self.limits = limits
        self.metrics = metrics
        self.uploads = uploads
        # Asked before a large body is read: an error to answer with instead of storing it.
        self.body_guard = body_guard
        # Asked when a request's headers are in: (the most bytes its body may have, what the
        # limit is called), or None; a larger body is answered 413 at once.
        self.body_limit = body_limit
        # Origins whose browsers may call this site (Trow's --cors), "*" for any.
        self.cors = cors
        self.name = name
        self.record_requests = record
        self.open_connections = 0
        self._per_client: dict[str, int] = {}
        self._full = False

    def buildProtocol(self, addr: IAddress | None) -> Any:
        client = getattr(addr, "host", None)
        if client is not None and self._per_client.get(client, 0) >= self.limits.max_connections_per_client:
            # One address must not hold every connection (behind an ingress, raise the limit).
            self.limit_hit("max_connections_per_client")
            return _Refused()
        if self.open_connections >= self.limits.max_connections:
            self.limit_hit("max_connections")
            if not self._full:
                # Logged once per episode: a flood must not become a flood of log lines.
                self._full = True
                _log.warn(
                    "{site}: {count} connections open (limits.max_connections); closing new ones",
                    site=self.name,
                    count=self.open_connections,
                )
            return _Refused()
        channel = super().buildProtocol(addr)
        if isinstance(channel, TrowChannel):
            channel.header_timeout = self.limits.header_timeout
            channel.idle_timeout = self.limits.idle_timeout
            channel.max_header_size = self.limits.max_header_size
            # twisted.web's own checks stay as a backstop behind trow's (which counts CRLFs).
            channel.totalHeadersSize = self.limits.max_header_size
            channel.MAX_LENGTH = self.limits.max_header_size
            channel._counted = True
            channel._client = client
            if client is not None:
                self._per_client[client] = self._per_client.get(client, 0) + 1
            self.open_connections += 1
            if self.metrics is not None:
                self.metrics.connection_opened(self.name)
        return channel

    def connection_closed(self, client: str | None = None) -> None:
        """A channel built by this site (for C{client}, its address) lost its connection."""
        self.open_connections -= 1
        if client is not None:
            left = self._per_client.get(client, 0) - 1
            if left > 0:
                self._per_client[client] = left
            else:
                self._per_client.pop(client, None)
        if self._full and self.open_connections < self.limits.max_connections:
            self._full = False
        if self.metrics is not None:
            self.metrics.connection_closed(self.name)

    def limit_hit(self, limit: str) -> None:
        """A C{limits:} setting refused or cut something."""
        if self.metrics is not None:
            self.metrics.limit_hit(self.name, limit)

    def log(self, request: Any) -> None:
        # Called by Request.finish: trow's access log replaces twisted.web's combined log.
        if isinstance(request, TrowRequest):
            request.ended(completed=True)

    def record(self, request: TrowRequest, completed: bool) -> None:
        """Count and log one request that ended (see L{trow.logs.access})."""
        if not self.record_requests:
            return
        duration = self.reactor.seconds() - request.started
        status = request.code if completed or request.startedWriting else CLIENT_GONE
        route = route_label(getattr(request, "trow_route", "other"))
        if self.metrics is not None:
            self.metrics.http_request(request.method, route, status, duration, request.sentLength, request.received)
        logs.access(request, status, request.sentLength, duration, route, completed)


def ensure_fd_headroom(connections: int, reserve: int = 512) -> None:
    """Make room for C{connections} sockets plus C{reserve} files (blobs, sqlite, upstreams).

    A connection limit above the process's file descriptor limit protects nothing: the flood
    would use up the descriptors that blob files and upstream connections need. The soft limit
    is raised towards the hard one; if even that is too low, a warning says so.
    """
    needed = connections + reserve
    soft, hard = rlimit.getrlimit(rlimit.RLIMIT_NOFILE)
    if soft != rlimit.RLIM_INFINITY and soft < needed:
        target = needed if hard == rlimit.RLIM_INFINITY else min(needed, hard)
        try:
            rlimit.setrlimit(rlimit.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != rlimit.RLIM_INFINITY and soft < needed:
        _log.warn(
            "open file limit {soft} leaves no room for {connections} connections (limits.max_connections "
            "per listener) and trow's own files; raise 'ulimit -n' or lower max_connections",
            soft=soft,
            connections=connections,
        )
