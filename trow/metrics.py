"""trow's Prometheus metrics: one L{Metrics} per process, on a registry of its own.

Every metric lives on the L{Metrics} object's own C{CollectorRegistry}, never on
prometheus_client's global one, so unit tests and several sites in one process never collide.
``--metrics-listen`` serves that registry (L{trow.api.metrics}). Every trow metric is named
``trow_...``; with C{process=True} the standard ``process_*`` and ``python_*`` collectors are
added too.

Label values are always from small fixed sets (or capped, for upstream hosts), never raw paths or
repository names: a label value is a time series kept forever by Prometheus.

Who calls what (metric name, labels: method to call, and where from):

HTTP, recorded by L{trow.api.site} for every request and connection:
  - C{trow_http_requests_total} (method, route, status) and
    C{trow_http_request_duration_seconds} (method, route), C{trow_http_response_bytes_total}
    (route), C{trow_http_request_bytes_total} (route): L{Metrics.http_request}. The route is the
    short name a handler puts on C{request.trow_route}; status 499 means the client left first.
  - C{trow_http_connections} (site), C{trow_http_limit_hits_total} (site, limit),
    C{trow_http_uploads_in_progress}: L{Metrics.connection_opened}/L{Metrics.connection_closed},
    L{Metrics.limit_hit}, the L{Metrics.uploads_in_progress} gauge.

The pull-through cache, recorded by the proxy code:
  - C{trow_cache_requests_total} (kind=manifest|tag|blob, result=hit|miss):
    L{Metrics.cache_lookup}C{(kind, hit)}, once per client request for proxied content.
  - C{trow_upstream_requests_total} (upstream, code): L{Metrics.upstream_request}C{(host,
    status)}, once per HTTP exchange with an upstream (status None when no response came).
  - C{trow_upstream_errors_total} (upstream, reason): L{Metrics.upstream_error}C{(host, reason)}.
  - C{trow_upstream_bytes_total} (upstream): L{Metrics.upstream_bytes}C{(host, n)}, body bytes.
  - C{trow_downloads_in_flight} and C{trow_downloads_total} (outcome):
    L{Metrics.download_started} when a Download begins, L{Metrics.download_finished}C{(outcome)}
    when it ends.
  - C{trow_download_waiters}: L{Metrics.download_waiter_added}/L{Metrics.download_waiter_removed}
    around each client response that streams a download in progress (TeeReader).

Garbage collection:
  - C{trow_cache_size_bytes}: L{Metrics.set_cache_size}C{(nbytes)} after measuring.
  - C{trow_cache_evictions_total}, C{trow_cache_evicted_bytes_total}:
    L{Metrics.cache_evicted}C{(count, nbytes)}.
  - C{trow_gc_runs_total} (result), C{trow_gc_removed_total} (kind), C{trow_gc_freed_bytes_total},
    C{trow_gc_duration_seconds}, C{trow_gc_last_success_timestamp_seconds}:
    L{Metrics.gc_pass}C{(duration=..., uploads=..., blobs=..., manifests=..., freed_bytes=...,
    failed=...)}, once per pass.

Replicas (C{--database}), recorded by L{trow.proxy.peers} and the peer endpoint:
  - C{trow_download_leases_total} (outcome): L{Metrics.download_lease}.
  - C{trow_peer_streams_total} (role), C{trow_peer_bytes_total} (role): L{Metrics.peer_stream},
    L{Metrics.peer_bytes}.
  - C{trow_replicas} and C{trow_database_up}: gauges set by L{trow.replicas.ReplicaSet} at every
    heartbeat (the attributes C{replicas_alive} and C{database_up}).

The webhook, recorded by L{trow.api.webhook}: C{trow_webhook_decisions_total} (webhook,
decision): L{Metrics.webhook_decision}.

The reactor: C{trow_reactor_tick_lag_seconds}, measured by the L{ReactorLagMonitor} service.
And C{trow_build_info} (version), always 1.

The gauges C{downloads_in_flight} and C{download_waiters} are public attributes too
(C{metrics.download_waiters.inc()}), for code that prefers C{Gauge.track_inprogress()}.

Every method is cheap (a dict lookup and a lock) and safe to call from any thread.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime

import trow

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# The label values each method accepts; anything else is counted as "other", so a typo in a
# caller costs one series, not one per distinct string.
CACHE_KINDS = frozenset({"manifest", "tag", "blob"})
UPSTREAM_ERRORS = frozenset(
    {"connect", "timeout", "status", "truncated", "digest", "size", "auth", "protocol", "other"}
)
DOWNLOAD_OUTCOMES = frozenset({"complete", "failed", "abandoned"})
# With --database: how a download got its bytes (led: this replica fetched from the upstream;
# followed: from the replica holding the lease; took_over: a dead leader's lease taken), and
# the peer streams this replica served to others or read from them.
LEASE_OUTCOMES = frozenset({"led", "followed", "took_over"})
PEER_ROLES = frozenset({"served", "read"})
WEBHOOKS = frozenset({"validate", "mutate"})
WEBHOOK_DECISIONS = frozenset({"allowed", "denied", "mutated", "invalid"})
LIMITS = frozenset(
    {
        "max_connections",
        "max_connections_per_client",
        "max_concurrent_uploads",
        "max_header_size",
        "header_timeout",
        "idle_timeout",
        "max_manifest_size",
        "max_form_size",
    }
)
SITES = frozenset({"registry", "webhook", "metrics"})

# Upstream hosts become label values. With any_registry every host can be proxied, so only the
# first MAX_UPSTREAM_LABELS hosts seen get a series of their own; later ones are "other".
MAX_UPSTREAM_LABELS = 64
# A route name is chosen by trow's handlers; a long or odd one is a bug, not a label.
_ROUTE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

# Requests range from a /v2/ ping to a multi-GB blob download.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_GC_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
# A healthy reactor answers a timer within a millisecond; a blocked one, seconds later.
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _pick(value: str, allowed: Iterable[str]) -> str:
    return value if value in allowed else "other"


def method_label(method: bytes | str) -> str:
    """The C{method} label of an HTTP method: a known method, else C{other}."""
    name = method.decode("latin-1") if isinstance(method, bytes) else method
    return name if name in HTTP_METHODS else "other"


def route_label(route: object) -> str:
    """The C{route} label: the short name a handler set on the request, else C{other}."""
    if isinstance(route, str) and _ROUTE.match(route):
        return route
    return "other"


class Metrics:
    """Every trow metric, on L{registry} (a C{CollectorRegistry} of this object's own).

    @param clock: what C{gc_last_success_timestamp_seconds} reads the time from (the reactor);
        without one that gauge is not set.
    @param process: also collect the standard process and Python metrics (CPU, memory, file
        descriptors, garbage collector): the running service wants them, tests do not.
    """

    def __init__(self, clock: IReactorTime | None = None, process: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._upstreams: set[str] = set()
        self._http_children: dict[tuple[object, object, int], tuple[Any, Any, Any, Any]] = {}
        r = self.registry

        self.build_info = Gauge("trow_build_info", "trow's version; always 1.", ["version"], registry=r)
        self.build_info.labels(trow.__version__).set(1)

        self.http_requests = Counter(
            "trow_http_requests_total",
            "HTTP requests answered (or cut), by method, route and status (499: the client left first).",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "trow_http_request_duration_seconds",
            "Time from a request's first line to its last byte sent (or to the connection loss).",
            ["method", "route"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.http_response_bytes = Counter(
            "trow_http_response_bytes_total", "Response body bytes served, by route.", ["route"], registry=r
        )
        self.http_request_bytes = Counter(
            "trow_http_request_bytes_total", "Request body bytes received, by route.", ["route"], registry=r
        )
        self.http_connections = Gauge(
            "trow_http_connections", "Open HTTP connections, by site.", ["site"], registry=r
        )
        self.http_limit_hits = Counter(
            "trow_http_limit_hits_total",
            "Requests or connections refused or cut by a limits: setting (the limit label is its key).",
            ["site", "limit"],
            registry=r,
        )
        self.uploads_in_progress = Gauge(
            "trow_http_uploads_in_progress",
            "Request bodies being received, and their requests not yet answered (max_concurrent_uploads).",
            registry=r,
        )

        self._cache_requests = Counter(
            "trow_cache_requests_total",
            "Pull-through cache lookups by kind (manifest, tag, blob) and result (hit, miss).",
            ["kind", "result"],
            registry=r,
        )
        self._cache_served_bytes = Counter(
            "trow_cache_served_bytes_total",
            "Blob bytes sent to clients from cache repositories (hits and downloads in flight alike).",
            registry=r,
        )
        self.cache_size = Gauge(
            "trow_cache_size_bytes", "Bytes of proxied content held in the cache, as last measured.", registry=r
        )
        self._cache_evictions = Counter(
            "trow_cache_evictions_total", "Proxied manifests and blobs evicted to stay under max_size.", registry=r
        )
        self._cache_evicted_bytes = Counter(
            "trow_cache_evicted_bytes_total", "Bytes of proxied content evicted.", registry=r
        )

        self._upstream_requests = Counter(
            "trow_upstream_requests_total",
            "HTTP exchanges with upstream registries, by upstream and status code (none: no response).",
            ["upstream", "code"],
            registry=r,
        )
        self._upstream_errors = Counter(
            "trow_upstream_errors_total",
            "Failed upstream operations, by upstream and reason.",
            ["upstream", "reason"],
            registry=r,
        )
        self._upstream_bytes = Counter(
            "trow_upstream_bytes_total", "Body bytes received from upstream registries.", ["upstream"], registry=r
        )

        self.downloads_in_flight = Gauge(
            "trow_downloads_in_flight", "Upstream blob downloads running now (one per digest).", registry=r
        )
        self._downloads = Counter(
            "trow_downloads_total", "Upstream blob downloads finished, by outcome.", ["outcome"], registry=r
        )
        self.download_waiters = Gauge(
            "trow_download_waiters",
            "Client responses streaming from a download in progress.",
            registry=r,
        )

        self._gc_runs = Counter("trow_gc_runs_total", "Garbage collection passes, by result.", ["result"], registry=r)
        self._gc_removed = Counter(
            "trow_gc_removed_total", "Items removed by garbage collection, by kind.", ["kind"], registry=r
        )
        self._gc_freed = Counter("trow_gc_freed_bytes_total", "Bytes freed by garbage collection.", registry=r)
        self._gc_duration = Histogram(
            "trow_gc_duration_seconds", "Duration of garbage collection passes.", buckets=_GC_BUCKETS, registry=r
        )
        self._gc_last_success = Gauge(
            "trow_gc_last_success_timestamp_seconds",
            "Unix time at which the last successful garbage collection pass was recorded.",
            registry=r,
        )

        self._download_leases = Counter(
            "trow_download_leases_total",
            "Downloads by how this replica got the bytes: led (fetched from the upstream), followed "
            "(streamed from the replica holding the lease), took_over (a dead leader's lease).",
            ["outcome"],
            registry=r,
        )
        self._peer_streams = Counter(
            "trow_peer_streams_total",
            "Blob streams between replicas: served to a peer, or read from one.",
            ["role"],
            registry=r,
        )
        self.replicas_alive = Gauge(
            "trow_replicas", "Replicas sharing this one's database whose heartbeat is recent (itself included).", registry=r
        )
        self.database_up = Gauge(
            "trow_database_up", "1 while the metadata database answers this replica's heartbeat, else 0.", registry=r
        )
        self._peer_bytes = Counter(
            "trow_peer_bytes_total", "Blob bytes between replicas, served to peers or read from them.", ["role"], registry=r
        )
        self._webhook_decisions = Counter(
            "trow_webhook_decisions_total",
            "Admission reviews answered, by webhook (validate, mutate) and decision.",
            ["webhook", "decision"],
            registry=r,
        )

        self.reactor_tick_lag = Histogram(
            "trow_reactor_tick_lag_seconds",
            "How late a 1s reactor timer fires: time the reactor spent blocked.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )

        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

    # -- HTTP (trow.api.site) -----------------------------------------------------------------

    def http_request(
        self, method: bytes | str, route: object, status: int, duration: float, sent: int, received: int
    ) -> None:
        """One request ended: answered, or cut when its client left (status 499)."""
        key = (method, route if isinstance(route, str) else None, status)
        children = self._http_children.get(key)
        if children is None:
            # labels() validates and locks on every call; a request's children are looked up
            # once per (method, route, status), a set that stays small.
            m, rt = method_label(method), route_label(route)
            children = (
                self.http_requests.labels(m, rt, str(status)),
                self.http_duration.labels(m, rt),
                self.http_response_bytes.labels(rt),
                self.http_request_bytes.labels(rt),
            )
            if len(self._http_children) < 4096:
                self._http_children[key] = children
        requests, latency, sent_bytes, received_bytes = children
        requests.inc()
        latency.observe(max(0.0, duration))
        if sent:
            sent_bytes.inc(sent)
        if received:
            received_bytes.inc(received)

    def connection_opened(self, site: str) -> None:
        """A connection was accepted by a listener of C{site} (registry, webhook, metrics)."""
        self.http_connections.labels(_pick(site, SITES)).inc()

    def connection_closed(self, site: str) -> None:
        """An accepted connection of C{site} is gone."""
        self.http_connections.labels(_pick(site, SITES)).dec()

    def limit_hit(self, site: str, limit: str) -> None:
        """A limit refused or cut something; C{limit} is the config key under C{limits:}."""
        self.http_limit_hits.labels(_pick(site, SITES), _pick(limit, LIMITS)).inc()

    # -- the pull-through cache (trow.proxy) ------------------------------------------------

    def cache_lookup(self, kind: str, hit: bool) -> None:
        """A proxied C{manifest} (by digest), C{tag} or C{blob} was looked up in the cache.

        Call once per client request: a hit was served without an upstream fetch of the content
        (a tag revalidated with a HEAD that found a cached digest counts as a hit).
        """
        self._cache_requests.labels(_pick(kind, CACHE_KINDS), "hit" if hit else "miss").inc()

    def cache_served(self, nbytes: int) -> None:
        """C{nbytes} of a proxied blob reached a client."""
        self._cache_served_bytes.inc(nbytes)

    def set_cache_size(self, nbytes: int) -> None:
        """Bytes of proxied content in the cache, as GC last measured them."""
        self.cache_size.set(nbytes)

    def cache_evicted(self, count: int = 1, nbytes: int = 0) -> None:
        """LRU eviction removed C{count} proxied items totalling C{nbytes}."""
        if count:
            self._cache_evictions.inc(count)
        if nbytes:
            self._cache_evicted_bytes.inc(nbytes)

    def _upstream(self, host: str) -> str:
        host = host.lower()
        if host in self._upstreams:
            return host
        if len(self._upstreams) < MAX_UPSTREAM_LABELS:
            self._upstreams.add(host)
            return host
        return "other"

    def upstream_request(self, host: str, status: int | None) -> None:
        """One HTTP exchange with upstream C{host} (as in the config, e.g. C{docker.io}): the
        status it answered, or None when no response came (refused, timed out, TLS failure)."""
        code = str(status) if status is not None and 100 <= status <= 599 else "none"
        self._upstream_requests.labels(self._upstream(host), code).inc()

    def upstream_error(self, host: str, reason: str) -> None:
        """An upstream operation failed. C{reason} is one of L{UPSTREAM_ERRORS}: connect, timeout,
        status (an error answer), truncated (body cut), digest, size, auth, protocol, other."""
        self._upstream_errors.labels(self._upstream(host), _pick(reason, UPSTREAM_ERRORS)).inc()

    def upstream_bytes(self, host: str, nbytes: int) -> None:
        """C{nbytes} of body received from upstream C{host} (call per chunk or per response)."""
        if nbytes > 0:
            self._upstream_bytes.labels(self._upstream(host)).inc(nbytes)

    def download_started(self) -> None:
        """A blob download from an upstream began (the single flight for its digest)."""
        self.downloads_in_flight.inc()

    def download_finished(self, outcome: str) -> None:
        """A download ended: C{complete} (verified and stored), C{failed}, or C{abandoned}
        (given up at shutdown)."""
        self.downloads_in_flight.dec()
        self._downloads.labels(_pick(outcome, DOWNLOAD_OUTCOMES)).inc()

    def download_lease(self, outcome: str) -> None:
        """How a download got its bytes across replicas (see L{LEASE_OUTCOMES})."""
        self._download_leases.labels(_pick(outcome, LEASE_OUTCOMES)).inc()

    def peer_stream(self, role: str) -> None:
        """A blob stream between replicas began: C{served} to a peer, or C{read} from one."""
        self._peer_streams.labels(_pick(role, PEER_ROLES)).inc()

    def peer_bytes(self, role: str, nbytes: int) -> None:
        """C{nbytes} streamed between replicas."""
        if nbytes > 0:
            self._peer_bytes.labels(_pick(role, PEER_ROLES)).inc(nbytes)

    def download_waiter_added(self) -> None:
        """A client response started streaming from a download in progress."""
        self.download_waiters.inc()

    def download_waiter_removed(self) -> None:
        """That client response ended (sent, failed, or the client left)."""
        self.download_waiters.dec()

    # -- garbage collection -------------------------------------------------------------------

    def gc_pass(
        self,
        *,
        duration: float,
        uploads: int = 0,
        blobs: int = 0,
        manifests: int = 0,
        freed_bytes: int = 0,
        failed: bool = False,
    ) -> None:
        """One garbage collection pass ended: what it removed (stale C{uploads}, unreferenced
        C{blobs}, C{manifests}) and freed. Evictions are reported by L{cache_evicted}."""
        self._gc_runs.labels("failed" if failed else "ok").inc()
        self._gc_duration.observe(max(0.0, duration))
        for kind, n in (("upload", uploads), ("blob", blobs), ("manifest", manifests)):
            if n:
                self._gc_removed.labels(kind).inc(n)
        if freed_bytes:
            self._gc_freed.inc(freed_bytes)
        if not failed and self._clock is not None:
            self._gc_last_success.set(self._clock.seconds())

    # -- the admission webhook ----------------------------------------------------------------

    def webhook_decision(self, webhook: str, decision: str) -> None:
        """The C{validate} or C{mutate} webhook answered: C{allowed}, C{denied}, C{mutated}, or
        C{invalid} (a malformed AdmissionReview, answered 400)."""
        self._webhook_decisions.labels(_pick(webhook, WEBHOOKS), _pick(decision, WEBHOOK_DECISIONS)).inc()

    # -- the reactor --------------------------------------------------------------------------

    def reactor_tick(self, lag: float) -> None:
        """A timer fired C{lag} seconds later than asked."""
        self.reactor_tick_lag.observe(max(0.0, lag))

    # -- reading (tests, debugging) -------------------------------------------------------------

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample C{name} whose labels include C{labels} (e.g. a counter over
        all its routes)."""
        found = 0.0
        # trow's own metrics only: collecting the whole registry would read /proc for the
        # process metrics on every call (the status page asks every second).
        own = [m for m in vars(self).values() if isinstance(m, (Counter, Gauge, Histogram))]
        for family in (f for metric in own for f in metric.collect()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    if not math.isnan(sample.value):
                        found += sample.value
        return found

    def value(self, name: str, **labels: str) -> float:
        """The current value of sample C{name} with exactly C{labels}, 0.0 if it has none yet."""
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None or math.isnan(found) else found


class ReactorLagMonitor(Service):
    """Measures how late a timer fires, every C{interval} seconds, into
    C{trow_reactor_tick_lag_seconds}: the time the reactor thread spent on something else (a
    blocking call, a long computation) instead of serving connections."""

    def __init__(self, metrics: Metrics, clock: IReactorTime, interval: float = 1.0) -> None:
        self._metrics = metrics
        self._clock = clock
        self._interval = interval
        self._due = 0.0
        self._call: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        self._schedule()

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        self._due = self._clock.seconds() + self._interval
        self._call = self._clock.callLater(self._interval, self._tick)

    def _tick(self) -> None:
        self._metrics.reactor_tick(self._clock.seconds() - self._due)
        self._schedule()
