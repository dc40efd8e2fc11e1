"""The twisted.web Site that serves trow's Klein apps.

Two things plain twisted.web does not do for a registry:
- request bodies that are large or of unknown length (blob uploads) are spooled into the data
  dir's C{tmp/} and hashed as they arrive, with backpressure on the client, instead of landing in
  an anonymous temp file that would have to be copied and hashed again;
- a plain-HTTP listener that receives a TLS ClientHello drops the connection at once. skopeo,
  podman and CRI-O try TLS first and fall back to HTTP only when that fails; a server that waits
  for a request line makes every pull stall until the client's TLS timeout.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.interfaces import IPushProducer
from twisted.web import http, server
from twisted.web.resource import IResource

from trow.storage.blobs import BlobStore

# Bodies under this many bytes (manifests, small chunks) stay in memory, like twisted.web does.
SPOOL_THRESHOLD = 100_000

TLS_HANDSHAKE = 0x16


class TrowRequest(server.Request):
    """A request whose large bodies go to a L{trow.storage.blobs.Spool}."""

    def process(self) -> None:
        # Headers every response of this site carries, errors and health checks included.
        for name, value in getattr(getattr(self.channel, "site", None), "default_headers", ()):
            self.setHeader(name, value)
        super().process()

    def gotLength(self, length: int | None) -> None:
        store: BlobStore | None = getattr(getattr(self.channel, "site", None), "spool_store", None)
        if store is None or (length is not None and length < SPOOL_THRESHOLD):
            super().gotLength(length)
            return
        # The transport is what to pause when the disk or the hasher falls behind the client
        # (a TCP transport, or the TLS wrapper around one: both can pause their reading).
        transport = self.channel.transport
        producer = cast(IPushProducer, transport) if hasattr(transport, "pauseProducing") else None
        self.content = store.spool(producer)


class TrowChannel(http.HTTPChannel):
    """HTTP/1.1 channel that hangs up on a TLS handshake instead of waiting for a request line."""

    _first = True

    def dataReceived(self, data: bytes) -> None:
        if self._first and data:
            self._first = False
            if data[0] == TLS_HANDSHAKE:
                assert self.transport is not None
                self.transport.abortConnection()  # type: ignore[attr-defined]
                return
        super().dataReceived(data)


class TrowSite(server.Site):
    """A Site with trow's request and channel classes."""

    protocol = TrowChannel  # type: ignore[assignment]
    requestFactory = TrowRequest

    def __init__(
        self,
        resource: IResource,
        spool_store: BlobStore | None = None,
        default_headers: tuple[tuple[bytes, bytes], ...] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(resource, requestFactory=TrowRequest, **kwargs)
        self.spool_store = spool_store
        self.default_headers = default_headers
