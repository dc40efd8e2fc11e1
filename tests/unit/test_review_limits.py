"""Review of issue 5 (limits): defects found by review, each a strict xfail."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from tests.unit.test_limits import LIMITS, Conn, _App
from trow.api.site import TrowSite, UploadSlots
from trow.metrics import Metrics


@pytest.mark.xfail(
    strict=True,
    reason="max_connections is one pool per listener: a single client address holding it (one "
    "keep-alive request a minute per connection) locks every other client out",
)
def test_one_client_cannot_take_every_connection() -> None:
    clock = Clock()
    site = TrowSite(_App(), limits=LIMITS, metrics=Metrics(), uploads=UploadSlots(1), reactor=clock)
    flood = [Conn(site, peer="10.6.6.6") for _ in range(LIMITS.max_connections)]
    for _ in range(60):  # an hour: each connection stays inside idle_timeout with a tiny request
        for conn in flood:
            conn.send(b"GET /v2/ HTTP/1.1\r\nHost: trow\r\n\r\n")
        clock.advance(LIMITS.idle_timeout - 1)
    assert not any(conn.closing for conn in flood)
    kubelet = Conn(site, peer="10.0.0.7")
    assert not kubelet.transport.disconnected
    kubelet.send(b"GET /v2/ HTTP/1.1\r\nHost: trow\r\n\r\n")
    assert kubelet.statuses() == [200]
