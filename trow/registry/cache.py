"""In-memory LRUs: manifests by (repository, digest), and blob links seen lately.

Content under a digest never changes, so an entry stays right until the manifest is deleted, which
L{trow.registry.service.Registry} reports here. Serving a cached manifest by digest then costs no
sqlite query and no file read: the hot path of every node pulling an image it already knows.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trow.registry.service import Manifest


class ManifestCache:
    """Manifests by (repository, digest), the least recently used dropped past C{max_bytes}."""

    def __init__(self, max_bytes: int = 32 << 20) -> None:
        self._max = max_bytes
        self._size = 0
        self._entries: OrderedDict[tuple[str, str], Manifest] = OrderedDict()

    def get(self, repo: str, digest: str) -> "Manifest | None":
        entry = self._entries.get((repo, digest))
        if entry is not None:
            self._entries.move_to_end((repo, digest))
        return entry

    def put(self, manifest: "Manifest") -> None:
        key = (manifest.record.repo, manifest.record.digest)
        if key in self._entries or len(manifest.content) > self._max:
            return
        self._entries[key] = manifest
        self._size += len(manifest.content)
        while self._size > self._max:
            _, dropped = self._entries.popitem(last=False)
            self._size -= len(dropped.content)

    def discard(self, repo: str, digest: str) -> None:
        dropped = self._entries.pop((repo, digest), None)
        if dropped is not None:
            self._size -= len(dropped.content)


class LinkMemo:
    """(repository, digest) links this process confirmed lately, at most C{size}: what it can
    still answer while the metadata store cannot be reached. Never used while it can."""

    def __init__(self, size: int = 100_000) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[str, str], None] = OrderedDict()

    def add(self, repo: str, digest: str) -> None:
        key = (repo, digest)
        self._entries[key] = None
        self._entries.move_to_end(key)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def has(self, repo: str, digest: str) -> bool:
        return (repo, digest) in self._entries

    def discard_repo_digest(self, repo: str, digest: str) -> None:
        self._entries.pop((repo, digest), None)
