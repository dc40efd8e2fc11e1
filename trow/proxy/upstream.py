"""The HTTP client for upstream registries: token auth, redirects, timeouts and a breaker.

- Auth: anonymous first; on a 401 the C{WWW-Authenticate} challenge decides. C{Basic} resends with
  the configured credentials. C{Bearer} fetches a token from the realm (with the credentials only
  when the realm is in the upstream's own domain) and caches it per scope until C{expires_in}.
- Redirects (blob downloads go to CDNs) are followed by hand, and C{Authorization} is never sent
  to another host.
- A dead upstream costs one short timeout: after a connection failure the upstream is marked down
  for C{down_for} seconds and requests fail at once, so cached content is served without delay.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import socket
from typing import Any, Callable, Mapping
from urllib.parse import urlencode, urljoin, urlsplit

import attrs
import treq
from hyperlink import EncodedURL
from publicsuffixlist import PublicSuffixList
from treq.client import HTTPClient
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeout
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.logger import Logger
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseFailed
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from trow import __version__
from trow.metrics import Metrics
from trow.proxy.names import ProxiedName, Upstream, is_private_address
from trow.proxy.streams import ThreadedHTTP
from trow.registry.manifests import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST

_log = Logger()

USER_AGENT = f"trow/{__version__} (pull-through cache)"
# A URL's path, as error messages may quote it (kept: the scheme and host).
_URL_PATH = re.compile(r"((?:https?://[^/\s'\"]+)?)/v2/[^\s'\"]*")

# Everything trow can store, so the upstream never down-converts (HEAD must see the real digest).
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])

_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')
_NETWORK_ERRORS = (
    net_error.ConnectError,
    net_error.DNSLookupError,
    net_error.TimeoutError,
    net_error.ConnectionLost,
    ResponseFailed,
    DeferredTimeout,
    CancelledError,
    OSError,
)


class UpstreamUnavailable(Exception):
    """The upstream could not be reached (refused, timeout, DNS, TLS) or is marked down."""


class UpstreamStatus(Exception):
    """The upstream answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@attrs.frozen
class UpstreamHealth:
    """An upstream as the breaker sees it (the status page): down (and since when, and when the
    next request may try again), and the last error seen, whenever it was."""

    host: str
    down: bool
    down_since: float | None
    retry_at: float | None
    last_error: str | None
    last_error_at: float | None


@attrs.frozen
class ManifestHead:
    """What a manifest HEAD tells: its digest and media type."""

    digest: str | None
    media_type: str | None
    size: int | None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split C{Bearer realm="...",service="..."} into the scheme and its parameters."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3) for m in _CHALLENGE_PARAM.finditer(rest)}
    return scheme.lower(), params


def same_domain(realm_host: str, upstream_host: str) -> bool:
    """Is a token realm inside the upstream's own domain (so credentials may go there)?

    Registries put their token service on a sibling host (registry-1.docker.io uses
    auth.docker.io): both must have the same registrable domain by the public suffix list, so
    registry.example.co.uk and auth.attacker.co.uk do not match. IP addresses must be equal.
    """
    realm_host = _bare_host(realm_host)
    upstream_host = _bare_host(upstream_host)
    if realm_host == upstream_host:
        return True
    if _is_ip(realm_host) or _is_ip(upstream_host):
        return False
    realm_domain = _suffixes().privatesuffix(realm_host)
    return realm_domain is not None and realm_domain == _suffixes().privatesuffix(upstream_host)


def _bare_host(host: str) -> str:
    host = host.lower()
    if host.startswith("["):
        return host.split("]", 1)[0].strip("[")
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@functools.lru_cache(maxsize=1)
def _suffixes() -> PublicSuffixList:
    # Loading the bundled list takes a moment: once per process, on first use.
    return PublicSuffixList()


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host.strip("[]"))
        return True
    except OSError:
        return False


class _LiteralURL(EncodedURL):
    """A URL that is ASCII already: treq turns URLs into URIs with hyperlink, whose IDNA
    encoding of the host fails on an IPv6 literal (the colons), so such a URL skips it."""

    def to_uri(self) -> "_LiteralURL":
        return self


def _treq_url(url: str) -> Any:
    """C{url} as treq may take it: unchanged, or for an IPv6-literal host, a L{_LiteralURL}."""
    host = urlsplit(url).hostname or ""
    return _LiteralURL.from_text(url) if ":" in host else url


def load_ca_file(path: str) -> list[Certificate]:
    """The PEM certificates of a C{ca_file}; ValueError saying what is wrong with it."""
    try:
        with open(path, "rb") as handle:
            pem = handle.read()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    try:
        certificates = [
            Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + part)
            for part in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]
        ]
    except Exception as e:
        raise ValueError(f"{path} holds a certificate that cannot be read: {e}") from None
    if not certificates:
        raise ValueError(f"{path} holds no PEM certificate")
    return certificates


@implementer(IPolicyForHTTPS)
class _ExtraCAPolicy:
    """Verify an upstream against its configured CA file (a private registry's own CA)."""

    def __init__(self, ca_file: str) -> None:
        self._trust = trustRootFromCertificates(load_ca_file(ca_file))

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._trust)


# Upstream connections carry whole layers: read them in large pieces, so the reactor spends its
# time moving bytes rather than running the HTTP parser once per 64 KiB.
UPSTREAM_READ_SIZE = 1 << 20


@implementer(IAgentEndpointFactory)
class _LargeReadEndpoints:
    """Endpoints for upstream URLs whose TCP connections read L{UPSTREAM_READ_SIZE} at a time."""

    def __init__(self, reactor: Any, policy: IPolicyForHTTPS, connect_timeout: float) -> None:
        self._reactor = reactor
        self._policy = policy
        self._timeout = connect_timeout

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        host = uri.host.decode("idna") if isinstance(uri.host, bytes) else uri.host
        endpoint: IStreamClientEndpoint = _LargeReads(HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout))
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


@implementer(IStreamClientEndpoint)
class _LargeReads:
    """Wraps a TCP endpoint to raise the read size of the connections it makes."""

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def connect(self, factory: Any) -> Any:
        def enlarge(protocol: Any) -> Any:
            transport = getattr(protocol, "transport", None)
            if transport is not None and hasattr(transport, "bufferSize"):
                transport.bufferSize = UPSTREAM_READ_SIZE
            return protocol

        return self._endpoint.connect(factory).addCallback(enlarge)


class UpstreamClient:
    """Talks to upstream registries on behalf of the cache."""

    def __init__(
        self,
        reactor: Any,
        connect_timeout: float = 5.0,
        response_timeout: float = 10.0,
        down_for: float = 30.0,
        http_for: Callable[[Upstream], Any] | None = None,
        metrics: Metrics | None = None,
        streams_for: Callable[[Upstream], Any] | None = None,
    ) -> None:
        self._reactor = reactor
        self.metrics = metrics or Metrics()
        self._clock: IReactorTime = reactor
        self._connect_timeout = connect_timeout
        self._response_timeout = response_timeout
        self._down_for = down_for
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 8
        self._clients: dict[str, Any] = {}
        self._http_for = http_for or self._default_http
        # Blob bodies: read on a thread per download (trow.proxy.streams), unless the caller
        # gives its own client for everything (tests in memory).
        self._streams_for = streams_for or (self._http_for if http_for is not None else self._default_streams)
        self._stream_clients: dict[str, Any] = {}
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._token_waiters: dict[tuple[str, str, str], list[Deferred[str]]] = {}
        self._down_until: dict[str, float] = {}
        # For the status page: since when each upstream is unreachable, and its last error.
        self._down_since: dict[str, float] = {}
        self._last_error: dict[str, tuple[str, float]] = {}

    def close(self) -> Any:
        """Close pooled connections (service stop, test teardown)."""
        for client in self._stream_clients.values():
            if isinstance(client, ThreadedHTTP):
                client.close()
        return self._pool.closeCachedConnections()

    def _default_streams(self, upstream: Upstream) -> ThreadedHTTP:
        return ThreadedHTTP(self._reactor, upstream, self._connect_timeout)

    def _default_http(self, upstream: Upstream) -> HTTPClient:
        policy: IPolicyForHTTPS = (
            _ExtraCAPolicy(upstream.ca_file) if upstream.ca_file else BrowserLikePolicyForHTTPS()
        )
        endpoints = _LargeReadEndpoints(self._reactor, policy, self._connect_timeout)
        return HTTPClient(Agent.usingEndpointFactory(self._reactor, endpoints, pool=self._pool))

    def _http(self, upstream: Upstream, stream: bool = False) -> Any:
        clients, make = (self._stream_clients, self._streams_for) if stream else (self._clients, self._http_for)
        client = clients.get(upstream.host)
        if client is None:
            client = clients[upstream.host] = make(upstream)
        return client

    # -- the breaker ------------------------------------------------------------------------

    def is_down(self, upstream: Upstream) -> bool:
        """Was the upstream unreachable a moment ago (so do not wait on it again)?"""
        until = self._down_until.get(upstream.host)
        return until is not None and self._clock.seconds() < until

    def health(self, upstream: Upstream) -> UpstreamHealth:
        """What the breaker knows of C{upstream} now."""
        host = upstream.host
        error = self._last_error.get(host)
        down = self.is_down(upstream)
        return UpstreamHealth(
            host=host,
            down=down,
            down_since=self._down_since.get(host) if down else None,
            retry_at=self._down_until.get(host) if down else None,
            last_error=error[0] if error else None,
            last_error_at=error[1] if error else None,
        )

    def _note_error(self, upstream: Upstream, message: str) -> None:
        # Whatever the message quotes of a URL, its path names a repository: not kept.
        message = _URL_PATH.sub(lambda m: m.group(1) + "/...", message)
        self._last_error[upstream.host] = (message[:500], self._clock.seconds())

    def _mark_down(self, upstream: Upstream, why: str) -> None:
        self._note_error(upstream, f"unreachable: {why}")
        if not self.is_down(upstream):
            self._down_since[upstream.host] = self._clock.seconds()
            _log.warn(
                "upstream {host} unreachable ({why}); serving from cache only for {seconds}s",
                host=upstream.host,
                why=why,
                seconds=self._down_for,
            )
        self._down_until[upstream.host] = self._clock.seconds() + self._down_for

    # -- requests ---------------------------------------------------------------------------

    async def _send(
        self,
        upstream: Upstream,
        method: str,
        url: str,
        headers: Mapping[str, str],
        despite_breaker: bool = False,
        stream: bool = False,
    ) -> IResponse:
        if self.is_down(upstream) and not despite_breaker:
            raise UpstreamUnavailable(f"upstream {upstream.host} is unreachable (retrying in a few seconds)")
        if not upstream.listed:
            # Hosts proxied only through any_registry must not lead trow into private networks.
            await self._refuse_private(upstream, urlsplit(url).hostname or "")
        try:
            response: IResponse = await self._http(upstream, stream).request(
                method,
                url if stream else _treq_url(url),  # the stream client parses it with urllib
                headers={k: [v] for k, v in headers.items()},
                # Bodies are read by our own bounded readers, never buffered whole by treq.
                unbuffered=True,
                allow_redirects=False,
                timeout=self._response_timeout,
                reactor=self._reactor,
            )
        except _NETWORK_ERRORS as e:
            self.metrics.upstream_request(upstream.host, None)
            timed_out = isinstance(e, (net_error.TimeoutError, DeferredTimeout, CancelledError))
            self.metrics.upstream_error(upstream.host, "timeout" if timed_out else "connect")
            self._mark_down(upstream, f"{type(e).__name__}: {e}")
            raise UpstreamUnavailable(f"upstream {upstream.host} is unreachable: {e}") from None
        self._down_until.pop(upstream.host, None)
        self._down_since.pop(upstream.host, None)
        self.metrics.upstream_request(upstream.host, response.code)
        if response.code >= 400 and response.code != 401:
            # A 401 is the start of the token dance, not a failure.
            self.metrics.upstream_error(upstream.host, "status")
            if response.code != 404:  # a missing image is the client's news, not the upstream's
                phrase = response.phrase.decode("latin-1", "replace") if isinstance(response.phrase, bytes) else str(response.phrase)
                # No path: it names a repository, and the status page shows this to anyone.
                self._note_error(upstream, f"answered {response.code} {phrase} to a {method}")
        return response

    async def _refuse_private(self, upstream: Upstream, hostname: str) -> None:
        address = hostname.strip("[]")
        if not _is_ip(address):
            try:
                address = await self._reactor.resolve(hostname)
            except Exception:
                return  # the request itself fails with a DNS error
        if is_private_address(address):
            raise UpstreamStatus(
                403, f"refusing to proxy {upstream.host}: it resolves to a non-public address ({address})"
            )

    async def request(
        self,
        name: ProxiedName,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        scope_action: str = "pull",
        despite_breaker: bool = False,
        stream: bool = False,
    ) -> IResponse:
        """Send a request for C{/v2/<repo>/<path>} with auth and redirects handled.

        Returns the final response whatever its status; raises L{UpstreamUnavailable} when the
        upstream cannot be reached. C{despite_breaker}: try even while the upstream is marked
        down (a download in progress resuming: the breaker is there for new requests).
        C{stream}: a large body follows (a blob), read on a thread of its own.
        """
        upstream = name.upstream
        url = f"{upstream.base_url}/v2/{name.repo}/{path}"
        scope = f"repository:{name.repo}:{scope_action}"
        credentials = upstream.credentials_for(name.repo)
        # Registries (and their operators) tell clients apart by this; some treat none as a bot.
        sent = {"User-Agent": USER_AGENT, **(headers or {})}
        token_key = (upstream.host, scope, (credentials.username or "") if credentials else "")
        cached = self._tokens.get(token_key)
        if cached and cached[1] > self._clock.seconds():
            sent["Authorization"] = f"Bearer {cached[0]}"
        response = await self._send(upstream, method, url, sent, despite_breaker, stream)
        if response.code == 401:
            challenge = (response.headers.getRawHeaders("www-authenticate") or [""])[0]
            authorization = await self._authorize(upstream, challenge, scope, credentials, token_key)
            if authorization is not None:
                _discard(response)
                sent["Authorization"] = authorization
                response = await self._send(upstream, method, url, sent, despite_breaker, stream)
        for _ in range(5):
            if response.code not in (301, 302, 303, 307, 308):
                break
            location = (response.headers.getRawHeaders("location") or [""])[0]
            if not location:
                break
            _discard(response)
            target = urljoin(url, location)
            if urlsplit(target)[:2] != urlsplit(url)[:2]:
                # Storage redirects (S3, CDNs) carry their own signature: never our credentials,
                # and never in clear text after an https -> http redirect.
                sent.pop("Authorization", None)
            if response.code == 303 and method != "HEAD":
                method = "GET"
            url = target
            response = await self._send(upstream, method, url, sent, despite_breaker, stream)
        return response

    async def _authorize(
        self,
        upstream: Upstream,
        challenge: str,
        scope: str,
        credentials: Any,
        token_key: tuple[str, str, str],
    ) -> str | None:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if credentials is None:
                return None
            raw = f"{credentials.username}:{credentials.password or ''}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        if scheme != "bearer" or "realm" not in params:
            return None
        realm = params["realm"]
        realm_host = urlsplit(realm).netloc
        query = {"scope": params.get("scope", scope)}
        if "service" in params:
            query["service"] = params["service"]
        headers: dict[str, str] = {"User-Agent": USER_AGENT}
        if credentials is not None:
            if same_domain(realm_host, upstream.host) or same_domain(realm_host, urlsplit(upstream.base_url).netloc):
                raw = f"{credentials.username}:{credentials.password or ''}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
            else:
                _log.warn(
                    "upstream {host} sent a token realm outside its domain ({realm}); asking it anonymously",
                    host=upstream.host,
                    realm=realm_host,
                )
        token_url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        # Single-flight: the first pull of an image asks for a token once per scope, not once per
        # concurrent blob request (token services rate-limit too).
        waiting = self._token_waiters.get(token_key)
        if waiting is not None:
            shared: Deferred[str] = Deferred()
            waiting.append(shared)
            return await shared
        waiters: list[Deferred[str]] = []
        self._token_waiters[token_key] = waiters
        try:
            authorization = await self._fetch_token(upstream, token_url, headers, token_key)
        except Exception:
            failure = Failure()
            for waiter in waiters:
                waiter.errback(failure)
            raise
        finally:
            del self._token_waiters[token_key]
        for waiter in waiters:
            waiter.callback(authorization)
        return authorization

    async def _fetch_token(
        self, upstream: Upstream, token_url: str, headers: dict[str, str], token_key: tuple[str, str, str]
    ) -> str:
        response = await self._send(upstream, "GET", token_url, headers)
        body = await self._read_body(upstream, response, _MAX_TOKEN_RESPONSE)
        if response.code != 200:
            self.metrics.upstream_error(upstream.host, "auth")
            raise UpstreamStatus(
                response.code, f"token service of {upstream.host} refused us ({response.code})"
            )
        try:
            document = json.loads(body)
            token = document.get("token") or document.get("access_token")
            expires_in = float(document.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            raise UpstreamStatus(502, f"token service of {upstream.host} sent no usable token") from None
        if not token:
            raise UpstreamStatus(502, f"token service of {upstream.host} sent no token")
        # Refresh a little early, so a token never expires between check and use.
        self._tokens[token_key] = (token, self._clock.seconds() + max(expires_in - 10, 1))
        return f"Bearer {token}"

    # -- manifests --------------------------------------------------------------------------

    async def head_manifest(self, name: ProxiedName, reference: str) -> ManifestHead:
        """The digest the upstream has for a tag (one HEAD, which Docker Hub does not count)."""
        response = await self.request(name, "HEAD", f"manifests/{reference}", {"Accept": MANIFEST_ACCEPT})
        _discard(response)
        _raise_for_status(response, name, reference)
        digest = _header(response, "docker-content-digest")
        length = _header(response, "content-length")
        return ManifestHead(digest, _media_type(response), int(length) if length and length.isdigit() else None)

    async def get_manifest(self, name: ProxiedName, reference: str, max_size: int) -> tuple[bytes, str | None, str | None]:
        """The manifest bytes, media type and the upstream's digest header."""
        response = await self.request(
            name, "GET", f"manifests/{reference}", {"Accept": MANIFEST_ACCEPT}
        )
        if response.code != 200:
            _discard(response)
            _raise_for_status(response, name, reference)
        body = await self._read_body(name.upstream, response, max_size)
        return body, _media_type(response), _header(response, "docker-content-digest")

    async def _read_body(self, upstream: Upstream, response: IResponse, max_size: int) -> bytes:
        """Read a small body whole: at most C{max_size} bytes, within the response timeout."""
        if isinstance(response.length, int) and response.length > max_size:
            response.deliverBody(_Discard())
            raise UpstreamStatus(502, f"upstream {upstream.host} sent {response.length} bytes, more than the {max_size} allowed")
        reader = _LimitedBody(max_size)
        response.deliverBody(reader)
        timer = self._clock.callLater(self._response_timeout, reader.give_up)
        try:
            body = await reader.done
            self.metrics.upstream_bytes(upstream.host, len(body))
            return body
        except _TooLarge:
            raise UpstreamStatus(502, f"upstream {upstream.host} sent more than the {max_size} bytes allowed") from None
        except _NETWORK_ERRORS + (_BodyTimeout,) as e:
            raise UpstreamUnavailable(f"upstream {upstream.host} broke off a response: {e}") from None
        finally:
            if timer.active():
                timer.cancel()

    async def has_blob(self, name: ProxiedName, digest: str) -> bool:
        """Does the upstream serve this blob in this repository (one HEAD, no body)?

        Raises L{UpstreamStatus} for an answer that is neither yes nor no, and
        L{UpstreamUnavailable} when the upstream cannot be reached.
        """
        response = await self.request(name, "HEAD", f"blobs/{digest}")
        _discard(response)
        if response.code == 200:
            return True
        if response.code == 404:
            return False
        _raise_for_status(response, name, digest)
        raise UpstreamStatus(502, f"upstream {name.upstream.host} answered HEAD of {digest} with {response.code}")

    async def get_blob(self, name: ProxiedName, digest: str, offset: int = 0, resuming: bool = False) -> IResponse:
        """Start a blob download (from C{offset}, with C{Range}); the body is not read yet.
        C{resuming}: the download was under way, so the breaker does not stop this request."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = await self.request(name, "GET", f"blobs/{digest}", headers, despite_breaker=resuming, stream=True)
        if response.code not in (200, 206):
            _discard(response)
            _raise_for_status(response, name, digest)
        return response


_MAX_TOKEN_RESPONSE = 1 << 20


class _TooLarge(Exception):
    pass


class _BodyTimeout(Exception):
    def __str__(self) -> str:
        return "no complete body within the response timeout"


class _LimitedBody(Protocol):
    """Collects a body up to a size limit; stops the transfer past it or when given up on."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self.done.errback(_TooLarge())
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self._parts.append(data)

    def give_up(self) -> None:
        if not self.done.called:
            self.done.errback(_BodyTimeout())
            self.transport.stopProducing()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)


class _Discard(Protocol):
    """Drops a body (so the connection is closed or reused)."""

    discards = True  # a threaded body (trow.proxy.streams) then keeps only a small one's connection

    def dataReceived(self, data: bytes) -> None:
        pass


def _header(response: IResponse, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    if not values:
        return None
    value = values[0]
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _media_type(response: IResponse) -> str | None:
    value = _header(response, "content-type")
    return value.split(";", 1)[0].strip() if value else None


def _raise_for_status(response: IResponse, name: ProxiedName, reference: str) -> None:
    if 200 <= response.code < 300:
        return
    raise UpstreamStatus(
        response.code,
        f"upstream {name.upstream.host} answered {response.code} for {name.repo}:{reference}",
    )


def discard_body(response: IResponse) -> None:
    """Drop a body unread into memory (the pooled connection is reused once it has passed)."""
    response.deliverBody(_Discard())


_discard = discard_body
