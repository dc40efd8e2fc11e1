"""Upstream credentials never go to a token service on another IP address.

An upstream registry (a L{StandIn} on 127.0.0.1, wanting a Bearer token) names as its token realm
a REAL token service (L{TokenServer}) on another loopback address, 127.0.0.2. trow holds
credentials for the upstream. An upstream configured by IP address has no registrable domain, so
the realm must be on the very same address for the credentials to go there
(C{trow.proxy.upstream.same_domain}): trow asks the token service on 127.0.0.2 anonymously and logs
a warning, but uses the token it gets. With the token service on 127.0.0.1 (another port), the
credentials are sent. The token service records every request with its headers.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.images import OCI_MANIFEST
from tests.integration.conftest import TrowProcess, get_and_hash
from tests.integration.upstream import (  # noqa: F401 - fixtures
    ALIAS,
    StandIn,
    TokenServer,
    assert_clean_log,
    proxy_entry,
    stand_in,
    start_proxy_trow,
)

USER = "robot"
PASSWORD = "realm-test-" + os.urandom(6).hex()
OTHER_ADDRESS = "127.0.0.2"
WARNING = "sent a token realm outside its domain"


@pytest.fixture(params=[OTHER_ADDRESS, "127.0.0.1"], ids=["realm-on-127.0.0.2", "realm-on-127.0.0.1"])
def token_server(request: pytest.FixtureRequest, stand_in: StandIn) -> Iterator[TokenServer]:
    """A token service on 127.0.0.2 or on 127.0.0.1 (another port than the stand-in's), named as
    the stand-in's realm; the stand-in wants Bearer tokens."""
    server = TokenServer(stand_in, request.param)
    stand_in.auth = (USER, PASSWORD)
    stand_in.realm = server.realm
    try:
        yield server
    finally:
        server.close()


def test_credentials_go_only_to_a_realm_on_the_upstreams_address(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, stand_in: StandIn, token_server: TokenServer
) -> None:
    """trow pulls a manifest and a layer through the cache from an upstream whose token realm is
    on 127.0.0.2: the token service there gets no Authorization header and nothing of the
    password, trow logs a warning and still uses the token it got. With the realm on 127.0.0.1
    (the upstream's address, another port) the token request carries the Basic credentials."""
    manifest_digest, (layer,) = stand_in.add_image("lib/app", "v1", [os.urandom(4096)])
    entry = proxy_entry(stand_in.host, username=USER, password=PASSWORD)
    trow = start_proxy_trow(trow_factory, tmp_path, [entry])

    response = trow.request("GET", f"/v2/f/{ALIAS}/lib/app/manifests/v1", headers=[("Accept", OCI_MANIFEST)])
    assert response.status == 200, response
    assert response.body == stand_in.manifests[manifest_digest][0]
    assert get_and_hash(trow, f"/v2/f/{ALIAS}/lib/app/blobs/{layer}") == (200, layer, 4096)

    asked = token_server.requests()
    assert asked, "trow never asked the token service: the test proves nothing"
    assert all(seen.path.startswith("/token?") for seen in asked), [s.path for s in asked]
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    leaked = [seen for seen in asked if PASSWORD in repr(seen) or basic.split()[1] in repr(seen)]
    if token_server.address == OTHER_ADDRESS:
        assert [seen.headers.get("authorization") for seen in asked] == [None] * len(asked), asked
        assert leaked == [], f"the password reached {OTHER_ADDRESS}"
        assert WARNING in trow.log() and f"{OTHER_ADDRESS}:{token_server.port}" in trow.log(), trow.log()
    else:
        assert [seen.headers.get("authorization") for seen in asked] == [basic] * len(asked), asked
        assert WARNING not in trow.log(), trow.log()
    # Either way the upstream was answered with the token the service handed out.
    with_token = [s for s in stand_in.requests(contains="/v2/lib/app/") if s.headers.get("authorization") == f"Bearer {stand_in.token}"]
    assert with_token, [(s.method, s.path, s.headers.get("authorization")) for s in stand_in.seen]
    assert_clean_log(trow)
