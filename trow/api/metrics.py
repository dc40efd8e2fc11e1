"""The ``--metrics-listen`` listener: ``GET /metrics`` in Prometheus text, and nothing else.

The metrics have a listener of their own so that they are never exposed on the registry's port
(to image pullers, possibly across the cluster) and can be firewalled separately.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.exposition import choose_encoder
from twisted.web.resource import Resource
from twisted.web.server import Request

from trow.api.site import TrowSite
from trow.config import LimitsConfig
from trow.metrics import Metrics


class MetricsResource(Resource):
    """Serves the metrics of one L{Metrics} registry at C{/metrics}; every other path is 404."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render(self, request: Request) -> bytes:
        if request.path != b"/metrics":
            return _plain(request, 404, b"not found: metrics are served at /metrics\n")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return _plain(request, 405, b"method not allowed\n")
        accept = request.getHeader(b"accept")
        # Prometheus asks for OpenMetrics when it can; anything else gets the text format.
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        body = encoder(self._metrics.registry)
        request.setHeader(b"Content-Type", content_type.encode("latin-1"))
        request.setHeader(b"Content-Length", str(len(body)).encode())
        return b"" if request.method == b"HEAD" else body


def _plain(request: Request, status: int, body: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return b"" if request.method == b"HEAD" else body


class MetricsSite(TrowSite):
    """The site of the metrics listener. Its own class name keeps its start-up log line
    (C{MetricsSite starting on <port>}) apart from the registry's C{TrowSite} lines."""


def metrics_site(metrics: Metrics, limits: LimitsConfig, reactor: Any) -> MetricsSite:
    """The site to put on the C{--metrics-listen} endpoint: the listener's own connections are
    counted and limited like the others, but scrapes are neither logged nor counted."""
    return MetricsSite(MetricsResource(metrics), limits=limits, metrics=metrics, name="metrics", record=False, reactor=reactor)
