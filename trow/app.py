"""Wiring: build the stores, the registry and the listeners from L{trow.tap.Settings}."""

from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import ensureDeferred, maybeDeferred
from twisted.logger import Logger

from trow.api.http import API_VERSION_HEADER
from trow.api.auth import AuthAPI
from trow.api.metrics import metrics_site
from trow.api.registry import RegistryAPI
from trow.api.site import TrowSite, UploadSlots, ensure_fd_headroom
from trow.api.webhook import WebhookAPI
from trow.auth.service import Authenticator
from trow.config import ProxyConfig
from trow.metrics import Metrics, ReactorLagMonitor
from trow.proxy.names import UpstreamDirectory
from trow.proxy.service import ProxyRegistry
from trow.proxy.tee import Fetcher
from trow.proxy.upstream import UpstreamClient
from trow.registry.access import AccessTracker
from trow.registry.gc import Collector, GarbageCollector, PassResult
from trow.registry.service import Registry
from trow.storage.blobs import BlobStore
from trow.storage.lock import lock_data_dir
from trow.storage.metadata import Metadata
from trow.storage.sqlite import SqliteMetadata
from trow.storage.uploads import UploadFiles
from trow.webhook.rules import Mutator, Validator
from trow.webhook.tls import reloading_ssl_endpoint
from trow.workers import ThreadWorker, Worker

_log = Logger()


@attrs.define
class Stores:
    """The storage layer of one data dir."""

    blobs: BlobStore
    uploads: UploadFiles
    metadata: Metadata


def open_stores(data_dir: str, disk: Worker, db: Worker) -> Stores:
    """Open (creating if needed) the stores of C{data_dir}."""
    os.makedirs(data_dir, exist_ok=True)
    blobs = BlobStore(data_dir, disk)
    return Stores(
        blobs=blobs,
        uploads=UploadFiles(data_dir, blobs, disk),
        metadata=SqliteMetadata(os.path.join(data_dir, "trow.db"), db),
    )


def recover(stores: Stores) -> dict[str, int]:
    """Clean what a crash left behind. Runs once at start-up, before any listener exists."""
    tmp = stores.blobs.clean_tmp()
    assert isinstance(stores.metadata, SqliteMetadata)
    known = stores.metadata.upload_ids_sync()
    orphans = stores.uploads.remove_orphans(known)
    return {"tmp": tmp, "orphan_uploads": orphans}


class _CloseMetadata(Service):
    """Closes the sqlite connection after everything else has stopped."""

    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    def stopService(self) -> None:
        super().stopService()
        self._metadata.close()


def build_proxy(
    registry: Registry,
    config: ProxyConfig,
    reactor: Any,
    hostname: str | None,
    metrics: Metrics | None = None,
    access: AccessTracker | None = None,
) -> ProxyRegistry:
    """The pull-through cache over the local registry's stores."""
    upstream = UpstreamClient(reactor, metrics=metrics)
    fetcher = Fetcher(registry.blobs, registry.metadata, upstream, reactor, metrics=metrics)
    return ProxyRegistry(
        registry,
        UpstreamDirectory(config),
        upstream,
        fetcher,
        offline=config.offline,
        own_hosts=(hostname,) if hostname else (),
        metrics=metrics,
        access=access,
    )


def add_gc(
    root: MultiService,
    settings: Any,
    reactor: Any,
    stores: Stores,
    registry: Registry,
    fetcher: Fetcher,
    tracker: AccessTracker,
    metrics: Metrics,
) -> None:
    """The garbage collector (the gc: section and max_size), fed the read times of C{tracker}."""

    def in_use(digest: str) -> bool:
        # Streamed or looked up right now, or still downloading: never deleted under a client.
        return registry.reading[digest] > 0 or digest in fetcher.downloads

    def observe(result: PassResult) -> None:
        for repo, digest in result.evicted:
            registry.forget_manifest(repo, digest)
        metrics.gc_pass(
            duration=result.seconds,
            uploads=result.uploads,
            blobs=result.blobs,
            manifests=result.manifests,
            freed_bytes=result.bytes,
        )
        metrics.cache_evicted(len(result.evicted) + result.evicted_blobs, result.evicted_bytes)
        if result.proxied_bytes is not None:  # measured only when max_size is set
            metrics.set_cache_size(result.proxied_bytes)

    collector = Collector.from_config(
        settings.config, stores.blobs, stores.uploads, stores.metadata, reactor, in_use=in_use
    )
    GarbageCollector(
        collector,
        reactor,
        settings.config.gc.interval,
        tracker=tracker,
        on_pass=observe,
        on_failure=lambda seconds: metrics.gc_pass(duration=seconds, failed=True),
    ).setServiceParent(root)


class _UpstreamPool(Service):
    """At shutdown: give up running downloads (before the disk and db workers stop under them),
    then close the upstream connection pool."""

    def __init__(self, proxy: ProxyRegistry) -> None:
        self._proxy = proxy

    def stopService(self) -> Any:
        super().stopService()
        stopped = self._proxy.fetcher.stop()
        return stopped.addBoth(lambda _: self._proxy.upstream.close())


class SequentialMultiService(MultiService):
    """Stops its children one after the other, the last added first, each once the one before
    it has finished stopping: listeners, then downloads, then the workers they write through."""

    def stopService(self) -> Any:
        Service.stopService(self)
        children = list(self)
        children.reverse()

        async def stop_all() -> None:
            for child in children:
                try:
                    await maybeDeferred(child.stopService)
                except Exception:
                    _log.failure("stopping {service} failed", service=child)

        return ensureDeferred(stop_all())


def build_service(settings: Any, reactor: Any) -> MultiService:
    """The whole trow process as one service tree."""
    root = SequentialMultiService()
    # Two trow processes on one data dir would corrupt each other's view of it: refuse the second
    # (and `python -m trow gc` while a server runs). Held until the process exits.
    root.data_dir_lock = lock_data_dir(settings.data_dir)  # type: ignore[attr-defined]
    metrics = Metrics(clock=reactor, process=True)
    disk = ThreadWorker(reactor, "trow-disk", max_threads=4)
    db = ThreadWorker(reactor, "trow-db", max_threads=1)
    stores = open_stores(settings.data_dir, disk, db)
    # Stopped last (services stop in reverse order): the db closes after the pools drained.
    _CloseMetadata(stores.metadata).setServiceParent(root)
    disk.setServiceParent(root)
    db.setServiceParent(root)
    cleaned = recover(stores)
    _log.info(
        "data dir {data_dir}: removed {tmp} temp files and {orphans} orphaned uploads left by an earlier run",
        data_dir=os.path.abspath(settings.data_dir),
        tmp=cleaned["tmp"],
        orphans=cleaned["orphan_uploads"],
    )
    registry = Registry(stores.blobs, stores.uploads, stores.metadata, settings.config.limits.max_manifest_size)
    tracker = AccessTracker(stores.metadata, reactor)
    proxy = build_proxy(registry, settings.config.registry_proxies, reactor, settings.hostname, metrics, tracker)
    # Stopped after the listeners and downloads, before the workers they run on.
    tracker.setServiceParent(root)
    add_gc(root, settings, reactor, stores, registry, proxy.fetcher, tracker, metrics)
    _UpstreamPool(proxy).setServiceParent(root)
    limits = settings.config.limits
    # bcrypt on a pool of its own: a flood of logins must not queue ahead of fsyncs and hashing.
    auth_worker = ThreadWorker(reactor, "trow-auth", max_threads=2)
    auth_worker.setServiceParent(root)
    # Raises AuthSetupError (an unwritable key file, say): trow.tap turns it into one error line.
    authenticator = Authenticator.build(
        user=settings.user,
        password=settings.password,
        htpasswd=settings.htpasswd,
        config=settings.config.auth,
        data_dir=settings.data_dir,
        worker=auth_worker,
        clock=reactor.seconds,
    )
    authenticator.canonical = proxy.canonical_repository
    auth = AuthAPI(authenticator, settings.hostname)
    resource = RegistryAPI(registry, proxy, auth).resource()
    uploads = UploadSlots(limits.max_concurrent_uploads, metrics)
    # One site per listener, so that max_connections counts per listener; the upload slots are
    # shared, as the disk is.
    for description in settings.listen:
        site = TrowSite(
            resource,
            spool_store=stores.blobs,
            default_headers=(API_VERSION_HEADER,),
            limits=limits,
            metrics=metrics,
            uploads=uploads,
            reactor=reactor,
            body_guard=auth.refuse_body if auth.enabled else None,
        )
        strports.service(description, site, reactor=reactor).setServiceParent(root)
    if settings.webhook_listen:
        add_webhook(root, settings, reactor, metrics)
    if settings.metrics_listen:
        add_metrics(root, settings, reactor, metrics)
    listeners = len(settings.listen) + len(settings.webhook_listen) + (1 if settings.metrics_listen else 0)
    ensure_fd_headroom(limits.max_connections * listeners)
    return root


def add_metrics(root: MultiService, settings: Any, reactor: Any, metrics: Metrics) -> None:
    """C{--metrics-listen}: /metrics on a listener of its own, and the reactor lag it reports."""
    ReactorLagMonitor(metrics, reactor).setServiceParent(root)
    site = metrics_site(metrics, settings.config.limits, reactor)
    strports.service(settings.metrics_listen, site, reactor=reactor).setServiceParent(root)


def add_webhook(root: MultiService, settings: Any, reactor: Any, metrics: Metrics | None = None) -> None:
    """The admission webhook on its own listeners (normally TLS, with certificates followed)."""
    config = settings.config
    validator = Validator.from_config(config, settings.hostname)
    mutator = Mutator.from_config(config, settings.hostname) if config.image_mutation.registries else None
    resource = WebhookAPI(validator, mutator, metrics).resource()
    for description in settings.webhook_listen:
        site = TrowSite(resource, limits=config.limits, metrics=metrics, name="webhook", reactor=reactor)
        endpoint = reloading_ssl_endpoint(reactor, description)
        if endpoint is None:
            strports.service(description, site, reactor=reactor).setServiceParent(root)
            continue
        service = StreamServerEndpointService(endpoint, site)
        # Fail start-up on a port that cannot be bound, as strports services do.
        service._raiseSynchronously = True
        service.setServiceParent(root)
