"""Liveness and readiness endpoints, shared by every listener that serves them."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.web.iweb import IRequest

from trow.api.http import send_json
from trow.storage.blobs import BlobStore
from trow.storage.metadata import Metadata, MetadataUnavailable


def healthz(request: IRequest) -> bytes:
    """The process is up and its reactor turns."""
    return send_json(request, 200, {"status": "ok"})


def readiness(request: IRequest, store: BlobStore, metadata: Metadata | None = None) -> Any:
    """Ready only if the data dir takes a durable write (a full or read-only disk says no) and
    the metadata store answers (with --database: PostgreSQL is reachable and migrated)."""

    async def check() -> bytes:
        try:
            await store.check_writable()
        except OSError as e:
            return send_json(request, 503, {"status": "unavailable", "reason": f"data dir is not writable: {e.strerror or e}"})
        if metadata is not None:
            try:
                await metadata.ping()
            except MetadataUnavailable as e:
                return send_json(request, 503, {"status": "unavailable", "reason": str(e)})
        return send_json(request, 200, {"status": "ready"})

    return ensureDeferred(check())
