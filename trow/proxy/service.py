"""The pull-through cache: the registry interface for C{f/<host>/<repo>} repositories.

L{ProxyRegistry} answers the same calls as L{trow.registry.service.Registry}, for cache
repositories, by wrapping it: what is cached is served by the local registry; what is not is
fetched from the upstream, verified, stored, and then served the same way. Blobs stream through
the L{trow.proxy.tee.Fetcher} while they download.
"""

from __future__ import annotations


from twisted.logger import Logger

from trow.metrics import Metrics
from trow.proxy.names import PREFIX, ProxiedName, UpstreamDirectory
from trow.proxy.tee import DownloadFailed, Fetcher, TeeReader
from trow.proxy.upstream import UpstreamClient, UpstreamStatus, UpstreamUnavailable
from trow.registry.access import AccessTracker
from trow.registry.errors import RegistryError
from trow.registry.manifests import parse_manifest
from trow.registry.names import Digest, check_name, is_digest, is_tag
from trow.registry.service import BlobSource, Manifest, Page, Registry

_log = Logger()


def _digest_or_none(value: str | None) -> Digest | None:
    """An upstream's digest header, or None if it is missing or malformed (then trow hashes)."""
    if not value:
        return None
    try:
        return Digest.parse(value)
    except RegistryError:
        _log.warn("ignoring a malformed digest header from an upstream: {value!r}", value=value[:200])
        return None


def upstream_error(error: Exception, unknown_code: str, what: str) -> RegistryError:
    """The client-facing error for an upstream failure when nothing is cached. Never a 500."""
    if isinstance(error, UpstreamUnavailable):
        return RegistryError("UNAVAILABLE", f"{what} is not cached and {error}", status=503)
    assert isinstance(error, UpstreamStatus)
    if error.status == 404:
        return RegistryError(unknown_code, f"{what} does not exist upstream ({error})")
    if error.status in (401, 403):
        return RegistryError(
            "NAME_UNKNOWN",
            f"{what}: the upstream refused access ({error.status}); the repository does not exist there "
            "or needs credentials in registry_proxies",
        )
    if error.status == 429:
        return RegistryError("UNAVAILABLE", f"{what} is not cached and the upstream is rate-limiting trow (429)", status=503)
    return RegistryError("UNAVAILABLE", f"{what} is not cached and {error}", status=502)


class ProxyRegistry:
    """Pull-through cache of upstream registries, stored under C{f/<host>/<repo>}."""

    def __init__(
        self,
        local: Registry,
        directory: UpstreamDirectory,
        upstream: UpstreamClient,
        fetcher: Fetcher,
        offline: bool = False,
        own_hosts: tuple[str, ...] = (),
        metrics: Metrics | None = None,
        access: AccessTracker | None = None,
    ) -> None:
        self.local = local
        self.directory = directory
        self.upstream = upstream
        self.fetcher = fetcher
        self.offline = offline
        self._own_hosts = {h.lower() for h in own_hosts}
        self.blobs = local.blobs
        self.metrics = metrics or Metrics()
        self.access = access

    def _served(self, name: str, digest: Digest | str, kind: str, hit: bool) -> None:
        """Count a cache lookup, and refresh the recency of what was read (for LRU eviction)."""
        self.metrics.cache_lookup(kind, hit)
        if self.access is not None:
            self.access.touch(name, str(digest))

    # -- addressing -------------------------------------------------------------------------

    def cache_name(self, name: str, ns: str | None) -> str | None:
        """The cache repository a request is for, or None if it is for a local repository."""
        proxied = self.directory.for_cache_name(name)
        if proxied is None and ns and ns.lower() not in self._own_hosts:
            check_name(name)
            proxied = self.directory.for_namespace(ns, name)
        return None if proxied is None else proxied.cache_repo

    def canonical_repository(self, name: str) -> str:
        """The cache repository C{f/<alias>/x} or C{f/<host>/x} stands for (for auth rules); any
        other name, or one trow does not proxy, is itself."""
        try:
            proxied = self.directory.for_cache_name(name)
        except RegistryError:
            return name
        return name if proxied is None else proxied.cache_repo

    def _proxied(self, cache_name: str) -> ProxiedName:
        proxied = self.directory.for_cache_name(cache_name)
        assert proxied is not None
        return proxied

    # -- manifests --------------------------------------------------------------------------

    async def get_manifest(self, name: str, reference: str, accept: list[str]) -> Manifest:
        """Serve a proxied manifest: revalidate tags with one HEAD, fetch what is not cached."""
        proxied = self._proxied(name)
        if is_digest(reference):
            digest = Digest.parse(reference)
            try:
                # The hot path: a node pulling a digest it knows, served from memory.
                manifest = await self.local.get_manifest(name, reference, accept)
                self._served(name, digest, "manifest", True)
                return manifest
            except RegistryError as e:
                if e.code != "MANIFEST_UNKNOWN":
                    raise
                if await self.local.has_manifest(name, str(digest)):
                    # Stored after all: by a concurrent pull of the same digest since we looked
                    # (then this answers it), or cached but not acceptable to this client (then
                    # that answer stands).
                    manifest = await self.local.get_manifest(name, reference, accept)
                    self._served(name, digest, "manifest", True)
                    return manifest
            if self.offline:
                raise RegistryError("MANIFEST_UNKNOWN", f"{reference} is not cached and trow is offline")
            self._served(name, digest, "manifest", False)
            try:
                await self._fetch_manifest(proxied, str(digest), digest, tag=None)
            except (UpstreamUnavailable, UpstreamStatus) as e:
                raise upstream_error(e, "MANIFEST_UNKNOWN", f"{proxied.repo}@{reference}") from None
            return await self.local.get_manifest(name, reference, accept)
        if not is_tag(reference):
            raise RegistryError("MANIFEST_UNKNOWN", f"manifest {reference} is not in repository {name}")
        if self.offline:
            return self._tag_served(name, await self.local.get_manifest(name, reference, accept), True)
        try:
            head = await self.upstream.head_manifest(proxied, reference)
            known = _digest_or_none(head.digest)
            if known is not None and await self.local.has_manifest(name, str(known)):
                await self.local.tag_manifest(name, reference, str(known))
                return self._tag_served(name, await self.local.get_manifest(name, str(known), accept), True)
            await self._fetch_manifest(proxied, str(known) if known else reference, known, tag=reference)
        except (UpstreamUnavailable, UpstreamStatus) as e:
            what = f"{proxied.repo}:{reference}"
            if isinstance(e, UpstreamStatus) and e.status in (401, 403, 404):
                raise upstream_error(e, "MANIFEST_UNKNOWN", what) from None
            # Upstream down, failing, rate-limiting or sending garbage: the cached tag is the
            # best answer (Docker Hub rate-limits the GET after a free HEAD, for one).
            try:
                return self._tag_served(name, await self.local.get_manifest(name, reference, accept), True)
            except RegistryError as cached_error:
                if cached_error.code != "MANIFEST_UNKNOWN":
                    raise
            raise upstream_error(e, "MANIFEST_UNKNOWN", what) from None
        return self._tag_served(name, await self.local.get_manifest(name, reference, accept), False)

    def _tag_served(self, name: str, manifest: Manifest, hit: bool) -> Manifest:
        self._served(name, manifest.record.digest, "tag", hit)
        return manifest

    async def _fetch_manifest(self, proxied: ProxiedName, reference: str, digest: Digest | None, tag: str | None) -> None:
        """GET a manifest from the upstream, verify it, and store it byte-exact.

        Raises L{UpstreamUnavailable} or L{UpstreamStatus} (502 for content that does not check
        out), for the caller to fall back on the cache or turn into a client error.
        """
        content, media_type, header_digest = await self.upstream.get_manifest(
            proxied, reference, self.local.max_manifest_size
        )
        if digest is None:
            digest = _digest_or_none(header_digest)
        actual = Digest.of(content, digest.algorithm if digest else "sha256")
        if digest is not None and actual != digest:
            raise UpstreamStatus(502, f"the upstream sent a manifest that hashes to {actual}, not {digest}")
        try:
            parsed = parse_manifest(content, media_type)
        except RegistryError as e:
            raise UpstreamStatus(502, f"the upstream sent an unusable manifest: {e.message}") from None
        await self.local.store_manifest(proxied.cache_repo, content, parsed, actual, [tag] if tag else [])

    # -- blobs ------------------------------------------------------------------------------

    async def blob_source(self, name: str, reference: str) -> BlobSource:
        """A cached blob, or the download that is fetching it (started if need be)."""
        proxied = self._proxied(name)
        digest = Digest.parse(reference)
        size = await self.local.blobs.stat_size(digest)
        if size is not None:
            if not await self.local.blob_linked(name, str(digest)):
                # The bytes are here, but they may belong to a private repository (pushed, or
                # cached from another upstream with credentials): only the upstream can say this
                # repository has them. One HEAD instead of a download, when it does.
                await self._confirm_upstream(proxied, name, digest)
                await self.local.link_blob(name, str(digest))
            self._served(name, digest, "blob", True)
            return self.local.stored_source(digest, size)
        if self.offline:
            raise RegistryError("BLOB_UNKNOWN", f"blob {digest} is not cached and trow is offline", {"digest": str(digest)})
        self._served(name, digest, "blob", False)
        running = self.fetcher.downloads.get(str(digest))
        if running is not None and name not in running.repos:
            # A download for another repository (perhaps private, fetched with its credentials):
            # joined only once this repository's upstream confirms it has the blob too.
            await self._confirm_upstream(proxied, name, digest)
        download = self.fetcher.get(proxied, digest)
        try:
            size = await download.wait_size()
        except (UpstreamUnavailable, UpstreamStatus) as e:
            raise upstream_error(e, "BLOB_UNKNOWN", f"blob {digest} of {proxied.repo}") from None
        except DownloadFailed as e:
            raise upstream_error(UpstreamStatus(502, str(e)), "BLOB_UNKNOWN", f"blob {digest} of {proxied.repo}") from None
        final = self.local.blobs.path(digest)
        return BlobSource(digest, size, lambda offset, length: TeeReader(download, offset, length, final, self.local.blobs.worker))

    async def peer_source(self, reference: str) -> BlobSource:
        """The download of C{reference} running here, for a replica that follows it. Only
        downloads in progress: a stored blob is on the shared volume for every replica."""
        digest = Digest.parse(reference)
        download = self.fetcher.downloads.get(str(digest))
        if download is None or download.failure is not None:
            raise RegistryError(
                "BLOB_UNKNOWN", f"no download of {digest} is in progress on this replica", {"digest": str(digest)}
            )
        try:
            size = await download.wait_size()
        except Exception as e:
            raise RegistryError("BLOB_UNKNOWN", f"the download of {digest} failed: {e}", {"digest": str(digest)}) from None
        final = self.local.blobs.path(digest)
        return BlobSource(digest, size, lambda offset, length: TeeReader(download, offset, length, final, self.local.blobs.worker))

    async def _confirm_upstream(self, proxied: ProxiedName, name: str, digest: Digest) -> None:
        """Raise the client's error unless the upstream has C{digest} in this repository."""
        unknown = RegistryError("BLOB_UNKNOWN", f"blob {digest} is not in repository {name}", {"digest": str(digest)})
        if self.offline:
            raise unknown
        try:
            found = await self.upstream.has_blob(proxied, str(digest))
        except (UpstreamUnavailable, UpstreamStatus) as e:
            raise upstream_error(e, "BLOB_UNKNOWN", f"blob {digest} of {proxied.repo}") from None
        if not found:
            raise unknown

    # -- discovery: what is cached ----------------------------------------------------------

    async def list_tags(self, name: str, n: str | None, last: str | None) -> Page:
        """The tags trow has cached for this repository."""
        return await self.local.list_tags(name, n, last)

    async def referrers(self, name: str, reference: str, artifact_type: str | None) -> bytes:
        """The referrers trow has cached for this repository."""
        return await self.local.referrers(name, reference, artifact_type)

    # -- writes: a cache is read-only -------------------------------------------------------

    @staticmethod
    def read_only(name: str) -> RegistryError:
        """The answer to any write to a cache repository."""
        return RegistryError(
            "UNSUPPORTED",
            f"{name} is a read-only cache of an upstream registry ({PREFIX}/<host>/...); push elsewhere",
            {"name": name},
        )
