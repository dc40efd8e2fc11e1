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
from trow.api.status import StatusAPI
from trow.api.webhook import WebhookAPI
from trow.auth.service import Authenticator
from trow.auth.tokens import load_or_create_key
from trow.auth.users import AuthSetupError
from trow.config import ProxyConfig
from trow.metrics import Metrics, ReactorLagMonitor
from trow.proxy.names import UpstreamDirectory
from trow.proxy.service import ProxyRegistry
from trow.proxy.peers import DownloadCoordinator
from trow.proxy.tee import Fetcher
from trow.proxy.upstream import UpstreamClient
from trow.registry.access import AccessTracker
from trow.registry.gc import Collector, GarbageCollector, PassResult
from trow.registry.service import Registry
from trow.storage.blobs import BlobStore
from trow.replicas import ReplicaSet, new_replica_id
from trow.storage.lock import lock_data_dir, mark_shared, shared_mark
from trow.storage.metadata import Metadata, MetadataUnavailable
from trow.storage.postgres import PostgresMetadata
from trow.storage.sqlite import SqliteMetadata
from trow.status import ProcessInfo, StatusBoard, config_summary
from trow.storage.uploads import UploadFiles
from trow.webhook.rules import Mutator, Validator
from trow.webhook.tls import reloading_ssl_endpoint
from trow.workers import ThreadWorker, Worker

_log = Logger()

# Connections to PostgreSQL per replica, and threads of the db pool that use them.
DB_CONNECTIONS = 8
# Beside the token key: signs the peer path between replicas (trow.proxy.peers).
PEER_KEY_FILE = "peer.key"


@attrs.define
class Stores:
    """The storage layer of one data dir."""

    blobs: BlobStore
    uploads: UploadFiles
    metadata: Metadata


def open_stores(data_dir: str, disk: Worker, db: Worker) -> Stores:
    """Open (creating if needed) the stores of C{data_dir}, with the metadata in its sqlite file."""
    os.makedirs(data_dir, exist_ok=True)
    blobs = BlobStore(data_dir, disk)
    return Stores(
        blobs=blobs,
        uploads=UploadFiles(data_dir, blobs, disk),
        metadata=SqliteMetadata(os.path.join(data_dir, "trow.db"), db),
    )


def open_shared_stores(data_dir: str, database: str, replica_id: str, disk: Worker, db: Worker) -> Stores:
    """Open the stores of one replica among several: blobs and uploads on the shared C{data_dir}
    (temp files in a scratch dir of this replica's), metadata in PostgreSQL. The schema is
    migrated now if the database answers (a schema newer than this code stops start-up here);
    otherwise the L{ReplicaSet} keeps trying while trow serves 503s."""
    os.makedirs(data_dir, exist_ok=True)
    metadata = PostgresMetadata(database, db, max_connections=DB_CONNECTIONS)
    marked = shared_mark(data_dir)
    if marked is not None and marked != metadata.where:
        # Two sets of replicas on one volume would each take the other's blobs for garbage.
        _log.warn(
            "data dir {data_dir} was marked as shared with {marked}; it now is with {where}: "
            "make sure no replica still runs on the other database",
            data_dir=os.path.abspath(data_dir),
            marked=marked,
            where=metadata.where,
        )
    mark_shared(data_dir, metadata.where)
    blobs = BlobStore(data_dir, disk, scratch=replica_id)
    metadata.open()
    try:
        metadata.migrate_sync()
    except MetadataUnavailable as e:
        _log.warn("{reason}; trow starts and keeps trying", reason=str(e))
    return Stores(blobs=blobs, uploads=UploadFiles(data_dir, blobs, disk), metadata=metadata)


def recover(stores: Stores) -> dict[str, int]:
    """Clean what a crash left behind. Runs once at start-up, before any listener exists. On a
    shared data dir only this replica's (new) scratch dir is emptied: the leftovers of dead peers
    are the L{ReplicaSet}'s to remove, by age."""
    tmp = stores.blobs.clean_tmp()
    orphans = 0
    if isinstance(stores.metadata, SqliteMetadata):
        orphans = stores.uploads.remove_orphans(stores.metadata.upload_ids_sync())
    return {"tmp": tmp, "orphan_uploads": orphans}


class _CloseMetadata(Service):
    """Closes the metadata's connections after everything else has stopped."""

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
    coordinator: DownloadCoordinator | None = None,
) -> ProxyRegistry:
    """The pull-through cache over the local registry's stores (downloads shared with the other
    replicas through C{coordinator}, with --database)."""
    upstream = UpstreamClient(reactor, metrics=metrics)
    fetcher = Fetcher(registry.blobs, registry.metadata, upstream, reactor, metrics=metrics, coordinator=coordinator)
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
    replicas: "ReplicaSet | None" = None,
) -> GarbageCollector:
    """The garbage collector (the gc: section and max_size), fed the read times of C{tracker}."""

    def in_use(digest: str) -> bool:
        # Streamed or looked up right now, or still downloading, here or on a peer replica:
        # never deleted under a client.
        return (
            digest in registry.reading
            or digest in fetcher.downloads
            or (replicas is not None and replicas.in_use(digest))
        )

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
    gc = GarbageCollector(
        collector,
        reactor,
        settings.config.gc.interval,
        tracker=tracker,
        on_pass=observe,
        on_failure=lambda seconds: metrics.gc_pass(duration=seconds, failed=True),
    )
    gc.setServiceParent(root)
    return gc


class _UpstreamPool(Service):
    """At shutdown: give up running downloads (before the disk and db workers stop under them),
    then close the upstream connection pool."""

    def __init__(self, proxy: ProxyRegistry) -> None:
        self._proxy = proxy

    def stopService(self) -> Any:
        super().stopService()
        stopped = self._proxy.fetcher.stop()
        coordinator = self._proxy.fetcher.coordinator

        def close(_: object) -> Any:
            if coordinator is not None:
                coordinator.close()
            return self._proxy.upstream.close()

        return stopped.addBoth(close)


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
    metrics = Metrics(clock=reactor, process=True)
    disk = ThreadWorker(reactor, "trow-disk", max_threads=4)
    replica_id = new_replica_id() if settings.database else None
    if settings.database and replica_id:
        # Many replicas share this data dir: no lock; each writes in its own scratch dir.
        db = ThreadWorker(reactor, "trow-db", max_threads=DB_CONNECTIONS)
        stores = open_shared_stores(settings.data_dir, settings.database, replica_id, disk, db)
    else:
        # Two trow processes on one sqlite data dir would corrupt each other's view of it: refuse
        # the second (and `python -m trow gc` while a server runs). Held until the process exits.
        root.data_dir_lock = lock_data_dir(settings.data_dir)  # type: ignore[attr-defined]
        db = ThreadWorker(reactor, "trow-db", max_threads=1)
        stores = open_stores(settings.data_dir, disk, db)
        metrics.database_up.set(1)  # sqlite in the data dir: there whenever trow is
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
    registry = Registry(
        stores.blobs,
        stores.uploads,
        stores.metadata,
        settings.config.limits.max_manifest_size,
        shared=settings.database is not None,
        writer=replica_id or "local",
    )
    tracker = AccessTracker(stores.metadata, reactor)
    replicas: ReplicaSet | None = None
    coordinator: DownloadCoordinator | None = None
    peer_key: bytes | None = None
    if isinstance(stores.metadata, PostgresMetadata) and replica_id and settings.peer_url:
        # Signs requests between replicas; on the shared volume, made once for the whole set.
        try:
            peer_key = load_or_create_key(settings.data_dir, PEER_KEY_FILE)
        except AuthSetupError as e:
            raise AuthSetupError(f"replicas' peer key: {e}") from None
        own_url: list[str] = [settings.peer_url]
        coordinator = DownloadCoordinator(
            stores.metadata, replica_id, lambda: replicas.peer_url if replicas else own_url[0], peer_key, reactor, metrics
        )
    proxy = build_proxy(
        registry, settings.config.registry_proxies, reactor, settings.hostname, metrics, tracker, coordinator
    )
    if isinstance(stores.metadata, PostgresMetadata) and replica_id and settings.peer_url:
        fetcher = proxy.fetcher
        replicas = ReplicaSet(
            stores.metadata,
            stores.blobs,
            stores.uploads,
            reactor,
            replica_id,
            settings.peer_url,
            busy=lambda: registry.blobs_in_use() | set(fetcher.downloads),
            on_fatal=lambda _: reactor.stop(),
            metrics=metrics,
        )
        replicas.setServiceParent(root)
    # Stopped after the listeners and downloads, before the workers they run on.
    tracker.setServiceParent(root)
    gc = add_gc(root, settings, reactor, stores, registry, proxy.fetcher, tracker, metrics, replicas)
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
    process = ProcessInfo(
        started=reactor.seconds(),
        config=config_summary(settings),
        replica=replica_id,
        max_size=settings.config.registry_proxies.max_size,
    )
    status = StatusAPI(StatusBoard(registry, proxy, metrics, reactor, process, gc), auth)
    api = RegistryAPI(registry, proxy, auth, peer_key=peer_key, status=status, access=tracker)
    resource = api.resource()
    uploads = UploadSlots(limits.max_concurrent_uploads, metrics)
    # One site per listener, so that max_connections counts per listener; the upload slots are
    # shared, as the disk is.
    first_listener: Any = None
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
            body_limit=api.body_limit,
            cors=settings.cors,
        )
        listener = strports.service(description, site, reactor=reactor)
        listener.setServiceParent(root)
        first_listener = first_listener or listener
    if replicas is not None:
        replicas.resolve_port = lambda: bound_port(first_listener)
    if settings.webhook_listen:
        add_webhook(root, settings, reactor, metrics)
    if settings.metrics_listen:
        add_metrics(root, settings, reactor, metrics)
    listeners = len(settings.listen) + len(settings.webhook_listen) + (1 if settings.metrics_listen else 0)
    ensure_fd_headroom(limits.max_connections * listeners)
    return root


def bound_port(listener: Any) -> int | None:
    """The port a started strports listener is bound to (for --listen tcp:0), or None."""
    # StreamServerEndpointService keeps the listen() Deferred; once fired it holds the port.
    port: Any = getattr(getattr(listener, "_waitingForPort", None), "result", None)
    host = port.getHost() if hasattr(port, "getHost") else None
    return getattr(host, "port", None)


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
