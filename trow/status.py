"""What the status page shows: what trow holds, what it is doing, how well the cache works.

A L{StatusBoard} gathers it from the parts that know it: the registry's metadata, the proxy's
downloads and breaker, the metrics, the garbage collector. L{trow.api.status} serves it as JSON
and HTML. Every list is capped, so one look costs a bounded amount of work however much trow
holds; repositories come a page at a time. A visitor sees only the repositories it may pull
(C{may_pull}), and nothing of the others but a count; no secret is ever part of it.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Mapping, Sequence

import attrs
from twisted.internet.interfaces import IReactorTime

from trow import __version__
from trow.metrics import Metrics
from trow.proxy.service import ProxyRegistry
from trow.registry.gc import GarbageCollector
from trow.registry.names import Digest
from trow.registry.service import Registry
from trow.storage.metadata import CACHE_PREFIX, MetadataUnavailable, RepositoryOverview

REPOS_PER_PAGE = 25
TAGS_PER_REPO = 5
TAG_COUNT_CAP = 1000
UPLOADS_SHOWN = 20
DOWNLOADS_SHOWN = 50
# Manifest digests whose image size is known (content-addressed: a size never changes).
SIZES_REMEMBERED = 4096
# An index's size is the sum of its images': at most this many are read.
INDEX_CHILDREN = 16
# Names a page reads past when the visitor may not see them, before it stops.
HIDDEN_SCAN = 500

MayPull = Callable[[str], bool]


@attrs.frozen
class ProcessInfo:
    """What the status page says of the process and its configuration (never a secret)."""

    started: float
    config: Mapping[str, Any]
    replica: str | None = None
    max_size: int | None = None


class StatusBoard:
    """Gathers the status page's data; see the module docstring."""

    def __init__(
        self,
        registry: Registry,
        proxy: ProxyRegistry | None,
        metrics: Metrics,
        clock: IReactorTime,
        process: ProcessInfo,
        gc: GarbageCollector | None = None,
    ) -> None:
        self.registry = registry
        self.proxy = proxy
        self.metrics = metrics
        self.clock = clock
        self.process = process
        self.gc = gc
        self._sizes: OrderedDict[str, tuple[int | None, int]] = OrderedDict()

    async def snapshot(self, may_pull: MayPull, after: str = "", cached_after: str = "", live: bool = False) -> dict[str, Any]:
        """The status as plain data (what C{/status.json} sends). C{live}: only what changes by
        the second (activity, cache, upstreams, space and GC), not the repository lists."""
        now = self.clock.seconds()
        unavailable: list[str] = []

        async def metadata(part: Callable[[], Awaitable[dict[str, Any]]], empty: dict[str, Any]) -> dict[str, Any]:
            # The page is most wanted while the database is down: it shows the rest, and says so.
            try:
                return await part()
            except MetadataUnavailable as e:
                unavailable.append(str(e))
                return empty

        status: dict[str, Any] = {
            "version": __version__,
            "now": now,
            "started": self.process.started,
            "uptime_seconds": max(0.0, now - self.process.started),
            "replica": self.process.replica,
            "downloads": self._downloads(may_pull, now),
            "uploads": await metadata(lambda: self._uploads(may_pull), {"items": [], "hidden": 0, "in_progress": None}),
            "cache": self._cache(),
            "upstreams": self._upstreams(),
            "space": await self._space(),
            "gc": self._gc(),
        }
        if not live:
            status["config"] = dict(self.process.config)
            empty: dict[str, Any] = {"items": [], "hidden": 0, "next": None}
            status["repositories"] = await metadata(lambda: self._repositories(may_pull, after, cached=False), empty)
            status["cached"] = await metadata(
                lambda: self._repositories(may_pull, cached_after, cached=True), {**empty, "upstreams": []}
            )
        status["metadata_error"] = unavailable[0] if unavailable else None
        return status

    # -- what is stored ----------------------------------------------------------------------

    async def _repositories(self, may_pull: MayPull, after: str, cached: bool) -> dict[str, Any]:
        metadata = self.registry.metadata
        shown: list[str] = []
        hidden = 0
        cursor = after
        more = False
        # Read past names the visitor may not see, a bounded number of them.
        while len(shown) < REPOS_PER_PAGE and hidden < HIDDEN_SCAN:
            names = await metadata.repository_names(cursor, REPOS_PER_PAGE + 1, cached)
            for name in names:
                if len(shown) == REPOS_PER_PAGE:
                    more = True
                    break
                cursor = name
                if may_pull(name):
                    shown.append(name)
                else:
                    hidden += 1
            if more or len(names) <= REPOS_PER_PAGE:
                break
        overviews = await metadata.repository_overview(shown, TAGS_PER_REPO, TAG_COUNT_CAP) if shown else []
        items = [await self._repository(overview) for overview in overviews]
        page: dict[str, Any] = {"items": items, "hidden": hidden, "next": shown[-1] if more else None}
        if cached:
            page["upstreams"] = _group_by_upstream(items)
        return page

    async def _repository(self, overview: RepositoryOverview) -> dict[str, Any]:
        tags: list[dict[str, Any]] = []
        sizes: list[int] = []
        for tag in overview.tags:
            size, platforms = await self._image_size(tag.digest)
            tags.append({"tag": tag.tag, "digest": tag.digest, "updated": tag.updated, "size": size, "platforms": platforms})
            if size is not None:
                sizes.append(size)
        return {
            "name": overview.name,
            "tags": tags,
            "tag_count": overview.tag_count,
            "tag_count_capped": overview.tag_count_capped,
            "pushed": overview.pushed,
            "pulled": overview.pulled,
            # The largest of the tags shown: what pulling the repository's biggest image costs.
            "size": max(sizes, default=None),
        }

    async def _image_size(self, digest: str, depth: int = 0) -> tuple[int | None, int]:
        """The bytes of an image (manifest, config and layers; an index: all its images) and
        how many platforms it has; None when its manifest is not stored here."""
        known = self._sizes.get(digest)
        if known is not None:
            self._sizes.move_to_end(digest)
            return known
        try:
            content = await self.registry.blobs.read_bytes(Digest.parse(digest))
        except ValueError:
            return None, 0
        if content is None:
            return None, 0
        size: int | None
        try:
            document = json.loads(content)
        except ValueError:
            document = {}
        platforms = 1
        if isinstance(document.get("manifests"), list) and depth == 0:
            children = [m.get("digest") for m in document["manifests"] if isinstance(m, dict)][:INDEX_CHILDREN]
            sizes = [(await self._image_size(child, depth + 1))[0] for child in children if isinstance(child, str)]
            platforms = len(document["manifests"])
            size = len(content) + sum(s for s in sizes if s is not None)
        else:
            parts = [document.get("config"), *(document.get("layers") or [])]
            size = len(content) + sum(int(p.get("size") or 0) for p in parts if isinstance(p, dict))
        self._sizes[digest] = (size, platforms)
        if len(self._sizes) > SIZES_REMEMBERED:
            self._sizes.popitem(last=False)
        return size, platforms

    # -- what is happening now ------------------------------------------------------------------

    def _downloads(self, may_pull: MayPull, now: float) -> dict[str, Any]:
        items: list[dict[str, Any]] = []
        hidden = 0
        downloads = self.proxy.fetcher.downloads.values() if self.proxy is not None else ()
        for download in downloads:
            repos = sorted(download.repos)
            if not any(may_pull(repo) for repo in repos):
                hidden += 1
                continue
            if len(items) == DOWNLOADS_SHOWN:
                continue
            started = download.started_at if download.started_at is not None else now
            elapsed = now - started
            done = download.done
            items.append(
                {
                    "digest": str(download.digest),
                    "repository": next(repo for repo in repos if may_pull(repo)),
                    "upstream": download.name.upstream.host,
                    "size": download.size,
                    "done": done,
                    "started": started,
                    "bytes_per_second": done / elapsed if elapsed > 0 else None,
                    "clients": download.clients,
                    "source": "upstream" if download.leading else "replica",
                    "verified": download.verified,
                }
            )
        return {"items": items, "count": len(items) + hidden, "hidden": hidden}

    async def _uploads(self, may_pull: MayPull) -> dict[str, Any]:
        records = await self.registry.metadata.recent_uploads(UPLOADS_SHOWN)
        items = [
            {"repository": r.repo, "size": r.size, "started": r.created} for r in records if may_pull(r.repo)
        ]
        return {"items": items, "hidden": len(records) - len(items), "in_progress": self.metrics.total("trow_http_uploads_in_progress")}

    # -- how well the cache works ---------------------------------------------------------------

    def _cache(self) -> dict[str, Any]:
        metrics = self.metrics
        hits = metrics.total("trow_cache_requests_total", result="hit")
        misses = metrics.total("trow_cache_requests_total", result="miss")
        return {
            "hits": int(hits),
            "misses": int(misses),
            "hit_rate": hits / (hits + misses) if hits + misses else None,
            "bytes_served": int(metrics.total("trow_cache_served_bytes_total")),
            "bytes_fetched": int(metrics.total("trow_upstream_bytes_total")),
        }

    def _upstreams(self) -> list[dict[str, Any]]:
        if self.proxy is None:
            return []
        found = []
        for entry in self.proxy.directory.config.registries:
            upstream = self.proxy.directory.upstream(entry.host)
            health = self.proxy.upstream.health(upstream)
            found.append(
                {
                    "host": upstream.host,
                    "alias": entry.alias,
                    "state": "down" if health.down else "up",
                    # The breaker fails new requests at once while the upstream is down.
                    "breaker": "open" if health.down else "closed",
                    "down_since": health.down_since,
                    "retry_at": health.retry_at,
                    "last_error": health.last_error,
                    "last_error_at": health.last_error_at,
                }
            )
        return found

    # -- space and garbage collection -------------------------------------------------------------

    async def _space(self) -> dict[str, Any]:
        used, total = await self.registry.blobs.disk_usage()
        measured = self.metrics.total("trow_cache_size_bytes")
        return {
            "disk_used": used,
            "disk_total": total,
            "max_size": self.process.max_size,
            # Measured by each GC pass, and only with max_size set.
            "cache_bytes": int(measured) if self.process.max_size is not None else None,
        }

    def _gc(self) -> dict[str, Any]:
        gc = self.gc
        if gc is None:
            return {"enabled": False}
        last = gc.results[-1] if gc.results else None
        return {
            "enabled": gc.interval > 0,
            "interval": gc.interval,
            "running": gc.running_pass,
            "next": gc.next_at,
            "failures": gc.failures,
            "last": None
            if last is None or gc.last_at is None
            else {
                "at": gc.last_at,
                "seconds": last.seconds,
                "freed_bytes": last.bytes,
                "blobs": last.blobs,
                "uploads": last.uploads,
                "manifests": last.manifests,
            },
        }


def _group_by_upstream(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cache repositories (C{f/<upstream>/<repo>}) grouped by upstream, in order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        upstream = item["name"][len(CACHE_PREFIX) :].split("/", 1)[0]
        groups.setdefault(upstream, []).append(item)
    return [{"upstream": upstream, "repositories": repos} for upstream, repos in groups.items()]


def config_summary(settings: Any) -> dict[str, Any]:
    """The configuration as the status page shows it: what and where, never a credential."""
    from trow.storage.postgres import redact

    config = settings.config
    proxies = config.registry_proxies
    return {
        "listen": list(settings.listen),
        "data_dir": settings.data_dir,
        "hostname": settings.hostname,
        "database": redact(settings.database) if settings.database else "sqlite (in the data dir)",
        "auth": bool(settings.user or settings.htpasswd),
        "upstreams": [
            {
                "host": entry.host,
                "alias": entry.alias,
                "tls": not entry.insecure,
                "ca_file": entry.ca_file is not None,
                "credentials": entry.username is not None,
            }
            for entry in proxies.registries
        ],
        "max_size": proxies.max_size,
        "offline": proxies.offline,
        "any_registry": proxies.any_registry,
        "gc_interval": config.gc.interval,
        "webhook": bool(settings.webhook_listen),
        "metrics_listen": settings.metrics_listen,
    }
