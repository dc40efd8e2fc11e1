"""The registry API: OCI Distribution v1.1 routes on a Klein app.

Repository names contain slashes, so one catch-all route takes everything under C{/v2/} and the
tail of the path (C{/manifests/<ref>}, C{/blobs/uploads/<id>}, ...) picks the operation, the way
the spec's endpoint table reads. Handlers only translate HTTP to L{Registry} calls and back.
"""

from __future__ import annotations

import re
from typing import Any, Awaitable, Callable
from urllib.parse import quote

from klein import Klein
from werkzeug.routing import PathConverter
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from trow.api import health
from trow.api.status import StatusAPI, wants_html
from trow.registry.access import AccessTracker
from trow.api.auth import LOGIN_PATH, MAX_FORM_BYTES, AuthAPI, required_actions
from trow.api.http import (
    API_VERSION_HEADER,
    header,
    headers_all,
    query,
    query_all,
    request_body,
    send_bytes,
    send_empty,
    send_error,
    send_json,
    set_headers,
    shielded,
)
from trow.auth.service import Authenticator, Identity
from trow.registry.errors import RegistryError
from trow.proxy.peers import PEER_PATH, SIGNATURE_HEADER, peer_signature_ok
from trow.storage.metadata import MetadataUnavailable
from trow.proxy.service import ProxyRegistry
from trow.registry.interface import Repositories
from trow.registry.service import CHUNK_MIN_LENGTH, BlobCreated, BlobSource, Page, Registry, UploadStarted
from trow.storage.reader import FileRangeProducer
from trow.registry.service import DEFAULT_PAGE

_log = Logger()

_ROUTES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(?P<name>.+)/manifests/(?P<reference>[^/]+)$"), "manifest"),
    (re.compile(r"^(?P<name>.+)/blobs/uploads/?$"), "uploads"),
    (re.compile(r"^(?P<name>.+)/blobs/uploads/(?P<upload_id>[^/]+)$"), "upload"),
    (re.compile(r"^(?P<name>.+)/blobs/(?P<digest>[^/]+)$"), "blob"),
    (re.compile(r"^(?P<name>.+)/tags/list$"), "tags"),
    (re.compile(r"^(?P<name>.+)/referrers/(?P<digest>[^/]+)$"), "referrers"),
]

# What a client may read from a cache repository (uploads are writes, whatever the method).
_CACHE_READS = {"manifest", "blob", "tags", "referrers"}

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_MANIFEST_PATH = re.compile(rb"^/v2/.+/manifests/[^/]+$")



class _AnyPath(PathConverter):
    """The rest of the path, empty components and leading slashes included."""

    regex = ".*"
    part_isolating = False  # werkzeug would infer True from a regex without "/"


def _range(value: str | None, size: int) -> tuple[int, int] | None:
    """Parse a single-range C{Range} header into inclusive (start, end); None means whole body."""
    if not value:
        return None
    match = _RANGE.match(value.strip().replace(" ", ""))
    if not match or (not match.group(1) and not match.group(2)):
        # Multiple ranges or another unit: RFC 9110 lets a server ignore Range and send it all.
        return None
    first, last = match.group(1), match.group(2)
    unsatisfiable = RegistryError(
        "SIZE_INVALID",
        f"requested range {value} is not satisfiable: the blob is {size} bytes",
        {"size": size},
        status=416,
        headers={"Content-Range": f"bytes */{size}"},
    )
    if first:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            raise unsatisfiable
    else:
        suffix = int(last)
        if suffix == 0:
            start, end = size, size - 1
        else:
            start, end = max(size - suffix, 0), size - 1
    if start >= size:
        raise unsatisfiable
    return start, end


# Blob bodies leave in sends of up to this much. Twisted's default (128 KiB a send) costs a
# system call and a pass through its write loop per 128 KiB: at a few GB/s, most of the CPU.
BLOB_SEND_LIMIT = 4 << 20


def _send_in_large_pieces(request: IRequest) -> None:
    """Let the connection of C{request} hand the kernel large pieces of a blob at once (the TCP
    transport, under TLS too)."""
    transport = getattr(getattr(request, "channel", None), "transport", None)
    for _ in range(3):
        if transport is None:
            return
        if hasattr(transport, "SEND_LIMIT") and hasattr(transport, "socket"):
            transport.SEND_LIMIT = BLOB_SEND_LIMIT
            return
        transport = getattr(transport, "transport", None)


class RegistryAPI:
    """Klein app for C{/v2/}: routes requests to a L{Registry}."""

    app = Klein()
    # Repository names are checked by the registry, not by the router: "//" must reach it as an
    # invalid name (NAME_INVALID), not be merged into another repository by a redirect.
    app.url_map.merge_slashes = False
    app.url_map.converters["anypath"] = _AnyPath

    def __init__(
        self,
        registry: Registry,
        proxy: ProxyRegistry | None = None,
        auth: AuthAPI | None = None,
        peer_key: bytes | None = None,
        status: StatusAPI | None = None,
        access: AccessTracker | None = None,
    ) -> None:
        self.registry = registry
        self.proxy = proxy
        self.auth = auth or AuthAPI(Authenticator.disabled())
        # With --database: the key that signs requests between replicas (the peer path).
        self.peer_key = peer_key
        # The status page (GET / from a browser, /status.json), and when repositories were pulled.
        self.status = status
        self.access = access

    def resource(self) -> Any:
        """The twisted.web resource to serve."""
        return self.app.resource()

    def body_limit(self, request: IRequest) -> tuple[int, str] | None:
        """The most bytes the body of C{request} may have, and what that limit is called, known
        from its headers alone (see L{trow.api.site.TrowSite}): a larger one is answered 413
        before it is read."""
        path = (request.uri or b"").split(b"?", 1)[0]
        if request.method == b"PUT" and _MANIFEST_PATH.match(path):
            return self.registry.max_manifest_size, "max_manifest_size"
        if request.method == b"POST" and path == LOGIN_PATH.encode():
            return MAX_FORM_BYTES, "max_form_size"
        return None

    # -- routing ----------------------------------------------------------------------------

    @app.route("/v2")
    @app.route("/v2/")
    def base(self, request: IRequest) -> Any:
        return self._handle(request, self._base)

    @app.route("/v2/<anypath:rest>")
    def dispatch(self, request: IRequest, rest: str) -> Any:
        if rest == "_catalog":
            return self._handle(request, self._catalog, route="catalog")
        for pattern, kind in _ROUTES:
            match = pattern.match(rest)
            if match:
                method = request.method.decode("ascii", "replace").upper()
                handler = getattr(self, f"_{kind}_{method.lower()}", None)
                if handler is None and method == "HEAD":
                    handler = getattr(self, f"_{kind}_get", None)
                if handler is None:
                    handler = self._unsupported(method, kind)
                return self._handle(request, handler, routed=kind, route=kind, **match.groupdict())
        return self._handle(request, self._unknown_path, route="unknown")

    def _route(self, request: IRequest, name: str) -> tuple[Any, str]:
        """Pick the local registry or the cache for a repository name (and C{?ns=})."""
        if self.proxy is not None:
            cache_name = self.proxy.cache_name(name, query(request, "ns"))
            if cache_name is not None:
                return self.proxy, cache_name
        return self.registry, name

    def _handle(
        self,
        request: IRequest,
        handler: Callable[..., Awaitable[Any]],
        routed: str | None = None,
        route: str = "base",
        **kwargs: Any,
    ) -> "Deferred[Any]":
        request.setHeader(*API_VERSION_HEADER)
        # A short, bounded label for metrics and logs (never the raw path).
        request.trow_route = route  # type: ignore[attr-defined]

        async def run() -> Any:
            try:
                if routed:
                    name = kwargs["name"]
                    actions = required_actions(request.method, routed)
                    identity = await self.auth.identify(request)
                    kwargs["registry"], kwargs["name"] = self._route(request, name)
                    # The token's scope names the repository as the client wrote it; the rules
                    # judge the repository really read (the cache repository of an alias or of
                    # ?ns=), so a rule on f/docker.io/ holds whichever way it is addressed.
                    cache = kwargs["name"] if kwargs["name"] != name else None
                    self.auth.authorize(request, identity, name, actions, cache)
                    if kwargs["registry"] is self.proxy and (
                        request.method not in (b"GET", b"HEAD") or routed not in _CACHE_READS
                    ):
                        raise self.proxy.read_only(kwargs["name"])
                    kwargs["identity"] = identity
                return await handler(request, **kwargs)
            except RegistryError as e:
                return send_error(request, e)
            except MetadataUnavailable as e:
                # PostgreSQL down or restarting: a clear, retryable answer, never a 500 or a hang.
                return send_error(request, RegistryError("UNAVAILABLE", str(e), status=503, headers={"Retry-After": "5"}))

        return shielded(run)

    @staticmethod
    def _unsupported(method: str, kind: str) -> Callable[..., Awaitable[Any]]:
        async def handler(request: IRequest, **_: Any) -> Any:
            raise RegistryError("UNSUPPORTED", f"{method} is not supported on this endpoint ({kind})")

        return handler

    async def _unknown_path(self, request: IRequest) -> Any:
        raise RegistryError("UNSUPPORTED", f"no such endpoint: {request.path.decode('latin-1')}", status=404)

    async def _base(self, request: IRequest) -> Any:
        await self.auth.require(request, None)
        return send_json(request, 200, {})

    @app.route(PEER_PATH + "<digest>", methods=["GET"])
    def peer_blob(self, request: IRequest, digest: str) -> Any:
        """A download in progress here, streamed to another replica that follows it (see
        trow.proxy.peers). Only replicas can ask: the request carries an HMAC of the digest."""
        request.setHeader(*API_VERSION_HEADER)
        request.trow_route = "peer"  # type: ignore[attr-defined]

        async def run() -> Any:
            try:
                if self.peer_key is None or self.proxy is None:
                    raise RegistryError("UNSUPPORTED", "this trow runs alone: it has no peer replicas", status=404)
                if not peer_signature_ok(self.peer_key, digest, header(request, SIGNATURE_HEADER)):
                    raise RegistryError("DENIED", "the peer path is for trow replicas only", status=403)
                metrics = self.proxy.metrics
                metrics.peer_stream("served")
                source = await self.proxy.peer_source(digest)
                return await self._send_source(request, source, lambda sent: metrics.peer_bytes("served", sent))
            except RegistryError as e:
                return send_error(request, e)

        return shielded(run)

    @app.route("/login", methods=["GET", "POST"])
    def login(self, request: IRequest) -> Any:
        request.trow_route = "login"  # type: ignore[attr-defined]
        request.setHeader(*API_VERSION_HEADER)
        return self.auth.login(request)

    @app.route("/", branch=True)
    def not_found(self, request: IRequest) -> Any:
        if (
            self.status is not None
            and request.path == b"/"
            and request.method in (b"GET", b"HEAD")
            and wants_html(request)
        ):
            request.trow_route = "status"  # type: ignore[attr-defined]
            return self.status.page(request)
        return self._handle(request, self._unknown_path, route="unknown")

    @app.route("/status.json", methods=["GET", "HEAD"])
    def status_json(self, request: IRequest) -> Any:
        if self.status is None:
            return self._handle(request, self._unknown_path, route="unknown")
        request.trow_route = "status"  # type: ignore[attr-defined]
        return self.status.json(request)

    @app.route("/status.js", methods=["GET", "HEAD"])
    def status_script(self, request: IRequest) -> Any:
        if self.status is None:
            return self._handle(request, self._unknown_path, route="unknown")
        request.trow_route = "status"  # type: ignore[attr-defined]
        return self.status.script(request)

    @app.route("/status-login", methods=["GET", "HEAD"])
    def status_login(self, request: IRequest) -> Any:
        if self.status is None:
            return self._handle(request, self._unknown_path, route="unknown")
        request.trow_route = "status"  # type: ignore[attr-defined]
        return self.status.login(request)

    @app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: IRequest) -> Any:
        request.trow_route = "healthz"  # type: ignore[attr-defined]
        return health.healthz(request)

    @app.route("/readiness", methods=["GET", "HEAD"])
    def readiness(self, request: IRequest) -> Any:
        request.trow_route = "readiness"  # type: ignore[attr-defined]
        return health.readiness(request, self.registry.unready)

    # -- manifests --------------------------------------------------------------------------

    async def _manifest_get(self, request: IRequest, registry: Repositories, name: str, reference: str, identity: Identity) -> Any:
        manifest = await registry.get_manifest(name, reference, headers_all(request, "Accept"))
        if self.access is not None and registry is self.registry:
            # A pull of a pushed repository (the cache notes its own reads).
            self.access.touch(name, manifest.record.digest)
        return send_bytes(
            request,
            200,
            manifest.content,
            manifest.record.media_type,
            {"Docker-Content-Digest": manifest.record.digest, "ETag": f'"{manifest.record.digest}"'},
        )

    async def _manifest_put(self, request: IRequest, registry: Registry, name: str, reference: str, identity: Identity) -> Any:
        body = await request_body(request)
        stored = await registry.put_manifest(
            name, reference, header(request, "Content-Type"), body, query_all(request, "tag")
        )
        headers: dict[str, str | int] = {
            "Location": f"/v2/{name}/manifests/{stored.digest}",
            "Docker-Content-Digest": str(stored.digest),
        }
        if stored.subject is not None:
            headers["OCI-Subject"] = str(stored.subject)
        if query_all(request, "tag"):
            # One header line per tag, as the spec's tag parameter asks.
            request.responseHeaders.setRawHeaders(b"OCI-Tag", [t.encode() for t in stored.tags])
        return send_empty(request, 201, headers)

    async def _manifest_delete(self, request: IRequest, registry: Registry, name: str, reference: str, identity: Identity) -> Any:
        await registry.delete_manifest(name, reference)
        return send_empty(request, 202)

    # -- blobs ------------------------------------------------------------------------------

    async def _blob_get(self, request: IRequest, registry: Repositories, name: str, digest: str, identity: Identity) -> Any:
        # From the lookup to the last byte sent, garbage collection leaves this blob alone.
        with self.registry.reading_blob(digest):
            return await self._send_blob(request, registry, name, digest)

    async def _send_blob(self, request: IRequest, registry: Repositories, name: str, digest: str) -> Any:
        source = await registry.blob_source(name, digest)
        if self.proxy is not None and registry is self.proxy:
            return await self._send_source(request, source, self.proxy.metrics.cache_served)
        return await self._send_source(request, source)

    async def _send_source(
        self, request: IRequest, source: BlobSource, on_sent: Callable[[int], object] | None = None
    ) -> Any:
        size = source.size
        wanted = _range(header(request, "Range"), size)
        headers: dict[str, str | int] = {
            "Docker-Content-Digest": str(source.digest),
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": f'"{source.digest}"',
        }
        start, end = wanted if wanted is not None else (0, size - 1)
        length = end - start + 1
        if wanted is not None:
            request.setResponseCode(206)
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = length
        if request.method == b"HEAD" or length <= 0:
            set_headers(request, headers)
            return b""
        producer = source.open_range(start, length)
        set_headers(request, headers)
        _send_in_large_pieces(request)
        try:
            await producer.start(IConsumer(request))
            if on_sent is not None:
                on_sent(length)
        except Exception as e:
            if not request.startedWriting:  # type: ignore[attr-defined]
                # Nothing of the answer has left yet (the download failed before its first
                # byte reached this client): an OCI error says what happened.
                for name in headers:
                    request.responseHeaders.removeHeader(name)
                _log.warn("answering {path} 502: {why}", path=request.path.decode("latin-1"), why=str(e))
                return send_error(
                    request,
                    RegistryError("UNAVAILABLE", f"blob {source.digest} is not cached and its download failed: {e}", status=502),
                )
            # The content went bad mid-stream (a proxied download failed verification): the
            # headers are gone, so cut the connection; the client sees a truncated body.
            _log.warn("cutting {path}: {why}", path=request.path.decode("latin-1"), why=str(e))
            transport = getattr(getattr(request, "channel", None), "transport", None)
            if transport is None:
                return b""  # the client is gone already
            transport.abortConnection()
            try:
                await request.notifyFinish()  # type: ignore[attr-defined]
            except Exception:
                pass
        return b""

    async def _blob_delete(self, request: IRequest, registry: Registry, name: str, digest: str, identity: Identity) -> Any:
        await registry.delete_blob(name, digest)
        return send_empty(request, 202)

    # -- uploads ----------------------------------------------------------------------------

    @staticmethod
    def _upload_headers(name: str, upload_id: str, offset: int) -> dict[str, str | int]:
        return {
            "Location": f"/v2/{name}/blobs/uploads/{upload_id}",
            "Range": f"0-{max(offset - 1, 0)}",
            "Docker-Upload-UUID": upload_id,
        }

    @staticmethod
    def _created(request: IRequest, name: str, created: BlobCreated) -> Any:
        return send_empty(
            request,
            201,
            {"Location": f"/v2/{name}/blobs/{created.digest}", "Docker-Content-Digest": str(created.digest)},
        )

    async def _uploads_post(self, request: IRequest, registry: Registry, name: str, identity: Identity) -> Any:
        digest = query(request, "digest")
        mount = query(request, "mount")
        source = query(request, "from")
        if mount is not None and self.auth.enabled and (source is None or not self.auth.permits(identity, source, "pull")):
            # No pull right on the source (or no source named, so none can be checked): a plain
            # upload session instead, as the spec allows. Knowing a digest is not a right to it.
            mount = None
        if mount is None and digest is not None:
            body = await request_body(request)
            return self._created(request, name, await registry.put_blob(name, digest, body))
        result = await registry.start_upload(name, mount, source)
        if isinstance(result, BlobCreated):
            return self._created(request, name, result)
        assert isinstance(result, UploadStarted)
        headers = self._upload_headers(name, result.upload_id, 0)
        headers["OCI-Chunk-Min-Length"] = CHUNK_MIN_LENGTH
        return send_empty(request, 202, headers)

    async def _upload_get(self, request: IRequest, registry: Registry, name: str, upload_id: str, identity: Identity) -> Any:
        offset = await registry.upload_status(name, upload_id)
        return send_empty(request, 204, self._upload_headers(name, upload_id, offset))

    async def _upload_patch(self, request: IRequest, registry: Registry, name: str, upload_id: str, identity: Identity) -> Any:
        body = await request_body(request)
        offset = await registry.append_upload(name, upload_id, body, header(request, "Content-Range"))
        return send_empty(request, 202, self._upload_headers(name, upload_id, offset))

    async def _upload_put(self, request: IRequest, registry: Registry, name: str, upload_id: str, identity: Identity) -> Any:
        body = await request_body(request)
        created = await registry.finish_upload(
            name, upload_id, query(request, "digest"), body, header(request, "Content-Range")
        )
        return self._created(request, name, created)

    async def _upload_delete(self, request: IRequest, registry: Registry, name: str, upload_id: str, identity: Identity) -> Any:
        await registry.cancel_upload(name, upload_id)
        return send_empty(request, 204)

    # -- discovery --------------------------------------------------------------------------

    @staticmethod
    def _link(request: IRequest, path: str, page: Page, n: str | None) -> dict[str, str | int]:
        if page.next_last is None:
            return {}
        return {"Link": f'<{path}?n={n}&last={quote(page.next_last, safe="")}>; rel="next"'}

    async def _tags_get(self, request: IRequest, registry: Repositories, name: str, identity: Identity) -> Any:
        n = query(request, "n")
        page = await registry.list_tags(name, n, query(request, "last"))
        return send_json(
            request, 200, {"name": name, "tags": page.items}, self._link(request, f"/v2/{name}/tags/list", page, n)
        )

    async def _catalog(self, request: IRequest) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            raise RegistryError("UNSUPPORTED", "only GET is supported on /v2/_catalog")
        identity = await self.auth.require_catalog(request)
        n = query(request, "n")
        # Only what this client may pull: the registry reads on past hidden names to fill the page.
        visible = (lambda repo: self.auth.can_pull(identity, repo)) if self.auth.enabled else None
        page = await self.registry.catalog(n, query(request, "last"), visible)
        return send_json(
            request,
            200,
            {"repositories": page.items},
            # Without n, the next page is a default one too (a filtered page may be short).
            self._link(request, "/v2/_catalog", page, n or str(DEFAULT_PAGE)),
        )

    async def _referrers_get(self, request: IRequest, registry: Repositories, name: str, digest: str, identity: Identity) -> Any:
        artifact_type = query(request, "artifactType")
        body = await registry.referrers(name, digest, artifact_type)
        headers: dict[str, str | int] = {}
        if artifact_type is not None:
            headers["OCI-Filters-Applied"] = "artifactType"
        return send_bytes(request, 200, body, "application/vnd.oci.image.index.v1+json", headers)

