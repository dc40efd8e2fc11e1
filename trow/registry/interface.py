"""What the API layer may ask of a registry: the seam between HTTP and the OCI rules.

L{Repositories} is what every repository answers, pushed or cached: L{trow.registry.service.Registry}
serves the pushed ones, L{trow.proxy.service.ProxyRegistry} the cache repositories C{f/...} (it
refuses writes before any handler runs). Writes, uploads, deletes and the catalog only ever go to
the L{Registry}. A request can be followed from the API, through one of these, down to the
stores of L{trow.storage} (blobs, upload files, and a L{trow.storage.metadata.Metadata}).
"""

from __future__ import annotations

from typing import Protocol

from trow.registry.service import BlobSource, Manifest, Page


class Repositories(Protocol):
    """The reads a repository answers, whoever stores it."""

    async def get_manifest(self, repo: str, reference: str, accept: list[str]) -> Manifest:
        """The manifest for a tag or digest, byte-exact, if the client accepts its media type."""

    async def blob_source(self, repo: str, reference: str) -> BlobSource:
        """Where to stream a blob of C{repo} from (a stored file or a download in progress)."""

    async def list_tags(self, repo: str, n: str | None, last: str | None) -> Page:
        """A page of C{repo}'s tags in lexical order."""

    async def referrers(self, repo: str, reference: str, artifact_type: str | None) -> bytes:
        """The referrers index (JSON) of a manifest in C{repo}."""
