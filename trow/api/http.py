"""HTTP helpers shared by the Klein apps: JSON and error responses, bodies, cancellation shields."""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Mapping, TypeVar

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from trow.registry.errors import RegistryError
from trow.storage.blobs import Spool, SpooledBody

T = TypeVar("T")
_log = Logger()

API_VERSION_HEADER = (b"Docker-Distribution-API-Version", b"registry/2.0")


# Reason phrases twisted.web does not know (it would write "Unknown Status").
_REASONS = {429: b"Too Many Requests", 431: b"Request Header Fields Too Large"}


def set_status(request: IRequest, status: int) -> None:
    """Set the response status, with a reason phrase even where twisted.web has none."""
    request.setResponseCode(status, _REASONS.get(status))


def set_headers(request: IRequest, headers: Mapping[str, str | int]) -> None:
    """Set several response headers at once."""
    for name, value in headers.items():
        request.setHeader(name.encode("latin-1"), str(value).encode("latin-1"))


def send_bytes(
    request: IRequest, status: int, body: bytes, content_type: str, headers: Mapping[str, str | int] | None = None
) -> bytes:
    """Answer with a complete body, always with Content-Type and Content-Length."""
    set_status(request, status)
    set_headers(request, {"Content-Type": content_type, "Content-Length": len(body), **(headers or {})})
    return b"" if request.method == b"HEAD" else body


def send_json(request: IRequest, status: int, document: Any, headers: Mapping[str, str | int] | None = None) -> bytes:
    """Answer with a JSON document."""
    return send_bytes(request, status, json.dumps(document).encode(), "application/json", headers)


def send_empty(request: IRequest, status: int, headers: Mapping[str, str | int] | None = None) -> bytes:
    """Answer with no body (202, 201, 204...)."""
    set_status(request, status)
    # RFC 9110: a 204 carries no Content-Length at all.
    set_headers(request, {**({} if status == 204 else {"Content-Length": 0}), **(headers or {})})
    return b""


def send_error(request: IRequest, error: RegistryError) -> bytes:
    """The one place a L{RegistryError} becomes the spec's JSON error response."""
    return send_json(request, error.status, error.to_json(), error.headers)


def query(request: IRequest, name: str) -> str | None:
    """The first value of a query parameter, decoded, or None."""
    values = query_all(request, name)
    return values[0] if values else None


def query_all(request: IRequest, name: str) -> list[str]:
    """Every value of a repeated query parameter, decoded."""
    values = request.args.get(name.encode()) if request.args else None
    try:
        return [v.decode("utf-8") for v in values or []]
    except UnicodeDecodeError:
        raise RegistryError("UNSUPPORTED", f"query parameter {name} is not UTF-8", status=400) from None


def header(request: IRequest, name: str) -> str | None:
    """A request header, decoded, or None."""
    value = request.getHeader(name)
    return value.decode("latin-1") if isinstance(value, bytes) else value


def headers_all(request: IRequest, name: str) -> list[str]:
    """Every value of a repeated request header (skopeo sends one Accept per media type)."""
    values = request.requestHeaders.getRawHeaders(name.encode()) or []
    return [v.decode("latin-1") if isinstance(v, bytes) else v for v in values]


async def request_body(request: IRequest) -> SpooledBody | bytes:
    """The request body: a claimed spool file for large or streamed bodies, else bytes."""
    content = request.content
    if isinstance(content, Spool):
        return await content.claim()
    if content is None:
        return b""
    content.seek(0)
    return content.read()


def shielded(work: Callable[[], Awaitable[T]]) -> "Deferred[T]":
    """Run C{work} so that a client hanging up cannot cancel it half-way.

    Klein cancels the handler's Deferred when the connection drops. A push must then still finish
    or fail as a whole (its file moves, its metadata commits), so the returned Deferred gives up
    at once but the work itself runs on; its own failures are logged.
    """
    inner: Deferred[T] = ensureDeferred(work())  # type: ignore[arg-type]
    outer: Deferred[T] = Deferred(lambda _: None)

    def forward(result: Any) -> None:
        if outer.called:
            if isinstance(result, Failure) and not result.check(RegistryError, CancelledError):
                _log.failure("request work failed after the client went away", result)
            return
        if isinstance(result, Failure):
            outer.errback(result)
        else:
            outer.callback(result)

    inner.addBoth(forward)
    return outer
