"""Review of issue 5 (limits): one client address cannot hold every connection of a listener."""

from __future__ import annotations

import attrs
from twisted.internet.task import Clock

from tests.unit.test_limits import LIMITS, Conn, _App
from trow.api.site import TrowSite, UploadSlots
from trow.metrics import Metrics


def test_one_client_cannot_take_every_connection() -> None:
    """With room for three connections and two per client, a flood from one address gets two;
    its third is closed at once (and counted), and a kubelet from another address is served."""
    clock = Clock()
    metrics = Metrics()
    limits = attrs.evolve(LIMITS, max_connections_per_client=2)
    site = TrowSite(_App(), limits=limits, metrics=metrics, uploads=UploadSlots(1), reactor=clock)
    flood = [Conn(site, peer="10.6.6.6") for _ in range(limits.max_connections)]
    assert [conn.closing or conn.transport.disconnected for conn in flood] == [False, False, True]
    assert metrics.value("trow_http_limit_hits_total", site="registry", limit="max_connections_per_client") == 1
    kubelet = Conn(site, peer="10.0.0.7")
    kubelet.send(b"GET /v2/ HTTP/1.1\r\nHost: trow\r\n\r\n")
    assert kubelet.statuses() == [200]
    # A connection of the flood that closes makes room for that address again.
    flood[0].gone()
    again = Conn(site, peer="10.6.6.6")
    again.send(b"GET /v2/ HTTP/1.1\r\nHost: trow\r\n\r\n")
    assert again.statuses() == [200]
