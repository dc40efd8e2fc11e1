"""The OCI error codes, their HTTP statuses, and the exception that carries them.

One table, like distribution's ``errcode/register.go``: the API layer turns any
L{RegistryError} into the spec's JSON body ``{"errors": [{"code", "message", "detail"}]}``.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs


@attrs.frozen
class ErrorCode:
    """One code of the spec's error table, with the HTTP status trow answers it with."""

    code: str
    status: int
    message: str


def _codes(*codes: ErrorCode) -> dict[str, ErrorCode]:
    return {c.code: c for c in codes}


CODES = _codes(
    ErrorCode("BLOB_UNKNOWN", 404, "blob unknown to registry"),
    ErrorCode("BLOB_UPLOAD_INVALID", 400, "blob upload invalid"),
    ErrorCode("BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry"),
    ErrorCode("DIGEST_INVALID", 400, "provided digest did not match uploaded content"),
    ErrorCode("MANIFEST_BLOB_UNKNOWN", 400, "manifest references a manifest or blob unknown to registry"),
    ErrorCode("MANIFEST_INVALID", 400, "manifest invalid"),
    ErrorCode("MANIFEST_UNKNOWN", 404, "manifest unknown to registry"),
    ErrorCode("NAME_INVALID", 400, "invalid repository name"),
    ErrorCode("NAME_UNKNOWN", 404, "repository name not known to registry"),
    ErrorCode("SIZE_INVALID", 400, "provided length did not match content length"),
    ErrorCode("UNAUTHORIZED", 401, "authentication required"),
    ErrorCode("DENIED", 403, "requested access to the resource is denied"),
    ErrorCode("UNSUPPORTED", 405, "the operation is unsupported"),
    ErrorCode("TOOMANYREQUESTS", 429, "too many requests"),
    # Not in the OCI list: distribution's code for "try again later", used when an upstream of
    # the cache cannot be reached and nothing is cached.
    ErrorCode("UNAVAILABLE", 503, "service unavailable"),
)


class RegistryError(Exception):
    """An error a client caused or must be told about, with the spec's code.

    @ivar status: the HTTP status; defaults to the code's usual one, but some cases need another
        (416 for an out-of-order chunk, 413 for an oversized manifest, 502 for a dead upstream).
    @ivar headers: extra response headers, e.g. C{Range} on a 416.
    """

    def __init__(
        self,
        code: str,
        message: str | None = None,
        detail: Any = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        spec = CODES[code]
        self.code = code
        self.message = message or spec.message
        self.detail = detail
        self.status = status or spec.status
        self.headers = dict(headers or {})
        super().__init__(f"{code}: {self.message}")

    def to_json(self) -> dict[str, Any]:
        """The spec's error body."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return {"errors": [error]}
