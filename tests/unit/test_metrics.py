"""trow.metrics and the /metrics resource: every count lands on the right label set, on a
registry of its own, and the reactor lag monitor measures what a Clock says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import Request

from tests.unit.harness import make_trow, result_of
from tests.unit.test_api_webhook import REVIEW
from trow.api.metrics import MetricsResource, MetricsSite, metrics_site
from trow.api.registry import RegistryAPI
from trow.api.site import TrowSite
from trow.api.webhook import WebhookAPI
from trow.config import Config, LimitsConfig, config_from_dict
from trow.metrics import MAX_UPSTREAM_LABELS, Metrics, ReactorLagMonitor, method_label, route_label
from trow.webhook.rules import Mutator, Validator


def through_site(resource: Any, site: TrowSite) -> StubTreq:
    """A StubTreq whose requests go through C{site} (and so through trow's request class)."""
    stub = StubTreq(resource)
    # treq keeps its in-memory server factory in a private attribute; swapping it is the only way
    # to put a TrowSite behind StubTreq.
    stub._agent._serverFactory = site
    return stub


def send(stub: StubTreq, method: str, url: str, **kwargs: Any) -> tuple[int, bytes, Any]:
    d = stub.request(method, "http://trow.test" + url, **kwargs)  # type: ignore[attr-defined]
    stub.flush()
    response = result_of(d)
    return response.code, result_of(response.content()), response.headers


# -- the Metrics object ------------------------------------------------------------------------


def test_each_metrics_object_has_its_own_registry() -> None:
    """Two Metrics never share a count, and nothing lands on prometheus_client's global registry."""
    a, b = Metrics(), Metrics()
    a.cache_lookup("blob", hit=True)
    assert a.value("trow_cache_requests_total", kind="blob", result="hit") == 1
    assert b.value("trow_cache_requests_total", kind="blob", result="hit") == 0
    assert REGISTRY.get_sample_value("trow_cache_requests_total", {"kind": "blob", "result": "hit"}) is None


def test_http_request_counts_method_route_status_and_bytes() -> None:
    """One request is one count under (method, route, status), one latency sample under
    (method, route), and its body bytes under its route."""
    m = Metrics()
    m.http_request(b"GET", "manifest", 404, 0.2, sent=150, received=0)
    m.http_request(b"PUT", "blob", 201, 1.5, sent=0, received=4096)
    assert m.value("trow_http_requests_total", method="GET", route="manifest", status="404") == 1
    assert m.value("trow_http_requests_total", method="GET", route="manifest", status="200") == 0
    assert m.value("trow_http_request_duration_seconds_count", method="GET", route="manifest") == 1
    assert m.value("trow_http_request_duration_seconds_sum", method="PUT", route="blob") == 1.5
    assert m.value("trow_http_request_duration_seconds_bucket", method="GET", route="manifest", le="0.25") == 1
    assert m.value("trow_http_request_duration_seconds_bucket", method="GET", route="manifest", le="0.1") == 0
    assert m.value("trow_http_response_bytes_total", route="manifest") == 150
    assert m.value("trow_http_request_bytes_total", route="blob") == 4096


@pytest.mark.parametrize(
    ("method", "label"), [(b"GET", "GET"), ("DELETE", "DELETE"), (b"BREW", "other"), (b"get", "other")]
)
def test_unknown_methods_are_other(method: bytes | str, label: str) -> None:
    """Only the methods of HTTP a registry uses get a label of their own."""
    assert method_label(method) == label


@pytest.mark.parametrize(
    ("route", "label"),
    [("manifest", "manifest"), ("blob-upload", "blob-upload"), ("/v2/x/manifests/y", "other"), (None, "other"),
     ("x" * 40, "other"), ("Manifest", "other")],
)
def test_routes_are_short_names_or_other(route: object, label: str) -> None:
    """A raw path (or anything but a short lower-case name) never becomes a label."""
    assert route_label(route) == label


def test_upstream_counts_by_host_and_code() -> None:
    """Upstream exchanges count by host and status (none: no response), errors by reason, bytes
    by host; an unknown error reason is other."""
    m = Metrics()
    m.upstream_request("Docker.io", 200)
    m.upstream_request("docker.io", None)
    m.upstream_error("docker.io", "timeout")
    m.upstream_error("docker.io", "cosmic rays")
    m.upstream_bytes("docker.io", 1000)
    m.upstream_bytes("docker.io", 24)
    assert m.value("trow_upstream_requests_total", upstream="docker.io", code="200") == 1
    assert m.value("trow_upstream_requests_total", upstream="docker.io", code="none") == 1
    assert m.value("trow_upstream_errors_total", upstream="docker.io", reason="timeout") == 1
    assert m.value("trow_upstream_errors_total", upstream="docker.io", reason="other") == 1
    assert m.value("trow_upstream_bytes_total", upstream="docker.io") == 1024


def test_upstream_hosts_are_capped() -> None:
    """With any_registry every host could become a series: past the cap they share 'other'."""
    m = Metrics()
    for i in range(MAX_UPSTREAM_LABELS + 10):
        m.upstream_request(f"r{i}.example", 200)
    assert m.value("trow_upstream_requests_total", upstream="r0.example", code="200") == 1
    assert m.value("trow_upstream_requests_total", upstream="other", code="200") == 10
    # A host seen before the cap keeps its own series.
    m.upstream_request("r1.example", 404)
    assert m.value("trow_upstream_requests_total", upstream="r1.example", code="404") == 1


def test_cache_downloads_and_waiters() -> None:
    """Hits and misses by kind; downloads in flight go up and down, and end with an outcome;
    waiters are a gauge; size and evictions."""
    m = Metrics()
    m.cache_lookup("manifest", hit=False)
    m.cache_lookup("tag", hit=True)
    m.cache_lookup("thing", hit=True)
    m.download_started()
    m.download_started()
    m.download_waiter_added()
    m.download_waiter_added()
    m.download_waiter_removed()
    assert m.value("trow_downloads_in_flight") == 2
    assert m.value("trow_download_waiters") == 1
    m.download_finished("complete")
    m.download_finished("failed")
    m.set_cache_size(5000)
    m.cache_evicted(3, 1200)
    assert m.value("trow_cache_requests_total", kind="manifest", result="miss") == 1
    assert m.value("trow_cache_requests_total", kind="tag", result="hit") == 1
    assert m.value("trow_cache_requests_total", kind="other", result="hit") == 1
    assert m.value("trow_downloads_in_flight") == 0
    assert m.value("trow_downloads_total", outcome="complete") == 1
    assert m.value("trow_downloads_total", outcome="failed") == 1
    assert m.value("trow_cache_size_bytes") == 5000
    assert m.value("trow_cache_evictions_total") == 3
    assert m.value("trow_cache_evicted_bytes_total") == 1200


def test_gc_pass_records_what_it_removed_and_when() -> None:
    """A successful pass counts its removals and sets the last-success time from the clock; a
    failed one leaves that time alone."""
    clock = Clock()
    clock.advance(1000)
    m = Metrics(clock=clock)
    m.gc_pass(duration=2.0, uploads=1, blobs=4, freed_bytes=9000)
    clock.advance(600)
    m.gc_pass(duration=1.0, failed=True)
    assert m.value("trow_gc_runs_total", result="ok") == 1
    assert m.value("trow_gc_runs_total", result="failed") == 1
    assert m.value("trow_gc_removed_total", kind="upload") == 1
    assert m.value("trow_gc_removed_total", kind="blob") == 4
    assert m.value("trow_gc_freed_bytes_total") == 9000
    assert m.value("trow_gc_duration_seconds_count") == 2
    assert m.value("trow_gc_last_success_timestamp_seconds") == 1000


# -- the reactor lag monitor -------------------------------------------------------------------


def test_reactor_lag_is_how_late_the_timer_fired() -> None:
    """On time: lag 0. A reactor that comes back 3.5s after a 1s timer was due: lag 2.5s."""
    clock = Clock()
    m = Metrics()
    monitor = ReactorLagMonitor(m, clock, interval=1.0)
    monitor.startService()
    clock.advance(1.0)
    assert m.value("trow_reactor_tick_lag_seconds_count") == 1
    assert m.value("trow_reactor_tick_lag_seconds_sum") == 0
    clock.advance(3.5)
    assert m.value("trow_reactor_tick_lag_seconds_count") == 2
    assert m.value("trow_reactor_tick_lag_seconds_sum") == 2.5
    assert m.value("trow_reactor_tick_lag_seconds_bucket", le="1.0") == 1
    monitor.stopService()
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert m.value("trow_reactor_tick_lag_seconds_count") == 2


# -- requests through TrowSite -----------------------------------------------------------------


class _Routes(Resource):
    """Sets a route name and answers 200, 404 or 500 by path."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.trow_route = "manifest"  # type: ignore[attr-defined]
        if request.path == b"/missing":
            request.setResponseCode(404)
            return b"nope"
        return b"hello"


def test_a_404_through_the_site_counts_under_its_route() -> None:
    """A 404 increments (GET, manifest, 404) and nothing under 200; its body bytes count."""
    m = Metrics()
    resource = _Routes()
    stub = through_site(resource, TrowSite(resource, metrics=m, reactor=Clock()))
    assert send(stub, "GET", "/missing")[0] == 404
    assert send(stub, "GET", "/ok")[0] == 200
    assert send(stub, "GET", "/ok")[0] == 200
    assert m.value("trow_http_requests_total", method="GET", route="manifest", status="404") == 1
    assert m.value("trow_http_requests_total", method="GET", route="manifest", status="200") == 2
    assert m.value("trow_http_response_bytes_total", route="manifest") == len(b"nope") + 2 * len(b"hello")


def test_registry_404_counts_under_the_registry_route(tmp_path: Path) -> None:
    """Through the real registry API: an unknown manifest is (GET, manifest, 404), the base is
    (GET, base, 200), an upload's body bytes count as received."""
    trow = make_trow(str(tmp_path))
    m = Metrics()
    resource = RegistryAPI(trow.registry).resource()
    stub = through_site(resource, TrowSite(resource, metrics=m, reactor=Clock()))
    assert send(stub, "GET", "/v2/nothing/here/manifests/latest")[0] == 404
    assert send(stub, "GET", "/v2/")[0] == 200
    assert m.value("trow_http_requests_total", method="GET", route="manifest", status="404") == 1
    assert m.value("trow_http_requests_total", method="GET", route="base", status="200") == 1
    total = sum(
        s.value for f in m.registry.collect() if f.name == "trow_http_requests" for s in f.samples
        if s.name == "trow_http_requests_total"
    )
    assert total == 2


def test_site_without_record_counts_nothing() -> None:
    """The metrics listener's own scrapes are not traffic."""
    m = Metrics()
    resource = _Routes()
    stub = through_site(resource, TrowSite(resource, metrics=m, record=False, reactor=Clock()))
    assert send(stub, "GET", "/ok")[0] == 200
    assert m.value("trow_http_requests_total", method="GET", route="manifest", status="200") == 0


# -- the webhook ---------------------------------------------------------------------------------



def test_webhook_decisions_are_counted() -> None:
    """Validate: allowed and denied; mutate: mutated; a malformed review: invalid. The routes
    are named for the request metrics."""
    m = Metrics()
    allow_all = Validator.from_config(Config())
    deny_hub = Validator.from_config(config_from_dict({"image_validation": {"default": "Deny"}}))
    mutator = Mutator.from_config(config_from_dict({"image_mutation": {"registries": ["docker.io"]}}), "trow.test")
    body = json.dumps(REVIEW).encode()
    for validator, path in ((allow_all, "/validate-image"), (deny_hub, "/validate-image"), (allow_all, "/mutate-image")):
        resource = WebhookAPI(validator, mutator, m).resource()
        stub = through_site(resource, TrowSite(resource, metrics=m, name="webhook", reactor=Clock()))
        assert send(stub, "POST", path, data=body)[0] == 200
    assert send(stub, "POST", "/validate-image", data=b"not json")[0] == 400
    assert m.value("trow_webhook_decisions_total", webhook="validate", decision="allowed") == 1
    assert m.value("trow_webhook_decisions_total", webhook="validate", decision="denied") == 1
    assert m.value("trow_webhook_decisions_total", webhook="mutate", decision="mutated") == 1
    assert m.value("trow_webhook_decisions_total", webhook="validate", decision="invalid") == 1
    assert m.value("trow_http_requests_total", method="POST", route="validate", status="200") == 2
    assert m.value("trow_http_requests_total", method="POST", route="mutate", status="200") == 1


# -- /metrics --------------------------------------------------------------------------------------


def test_metrics_endpoint_serves_prometheus_text() -> None:
    """GET /metrics: the registry in Prometheus text with its content type, parseable, every
    trow family named trow_*; HEAD: no body; other paths 404; POST 405."""
    m = Metrics(process=True)
    m.cache_lookup("blob", hit=False)
    resource = MetricsResource(m)
    stub = through_site(resource, metrics_site(m, LimitsConfig(), Clock()))
    code, body, headers = send(stub, "GET", "/metrics")
    assert code == 200
    assert headers.getRawHeaders("content-type")[0].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["trow_cache_requests"].samples[0].value == 1
    assert "process_cpu_seconds" in families
    ours = [name for name in families if not name.startswith(("process_", "python_"))]
    assert ours and all(name.startswith("trow_") for name in ours)
    code, body, headers = send(stub, "HEAD", "/metrics")
    assert (code, body) == (200, b"")
    assert int(headers.getRawHeaders("content-length")[0]) > 0
    assert send(stub, "GET", "/")[0] == 404
    assert send(stub, "GET", "/metrics/x")[0] == 404
    assert send(stub, "POST", "/metrics")[0] == 405
    # Scrapes are not counted as requests.
    assert m.value("trow_http_requests_total", method="GET", route="other", status="200") == 0


def test_metrics_endpoint_speaks_openmetrics_when_asked() -> None:
    """Prometheus asks for OpenMetrics; it gets it."""
    m = Metrics()
    resource = MetricsResource(m)
    stub = through_site(resource, metrics_site(m, LimitsConfig(), Clock()))
    code, body, headers = send(
        stub, "GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert code == 200
    assert headers.getRawHeaders("content-type")[0].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_metrics_site_logs_under_its_own_name() -> None:
    """Its start-up line must not look like the registry's 'TrowSite starting on' line."""
    site = metrics_site(Metrics(), LimitsConfig(), Clock())
    assert isinstance(site, MetricsSite)
    assert site.logPrefix() == "MetricsSite"
