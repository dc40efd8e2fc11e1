"""An upstream that restarts mid-blob: trow resumes the download once it is back.

The upstream is a real C{docker-registry}, frozen (SIGSTOP) while it streams a 200 MiB blob through
trow, killed (SIGKILL: its connections reset, its port refuses), and started again on the same port
and storage about a second later, as a restarting pod or load balancer would behave. trow must ask
again with C{Range}, with backoff and past its breaker, and the client must get the whole, right
body without retrying, and the blob must be cached.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Callable

from tests.integration.conftest import MIB, TrowProcess, get_and_hash
from tests.integration.upstream import (  # noqa: F401 - fixtures
    ALIAS,
    BodyStream,
    Distribution,
    assert_clean_log,
    cached_blob_path,
    make_big_blob,
    private_upstream,
    proxy_entry,
    start_proxy_trow,
    wait_until,
)


def test_download_resumes_after_the_upstream_restarts(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, private_upstream: Distribution
) -> None:
    """The upstream dies mid-blob and refuses connections for about a second: the client's body is
    whole and right, the upstream saw a Range request for the rest, and the blob is cached."""
    registry = private_upstream
    blob = make_big_blob(registry, 200 * MIB, 7, ["big/one"])
    trow = start_proxy_trow(trow_factory, tmp_path, [proxy_entry(registry.host)])
    mark = registry.mark()
    assert registry.process is not None
    stream = BodyStream(trow.port or 0, f"/v2/f/{ALIAS}/big/one/blobs/{blob.digest}", timeout=120)
    assert stream.status == 200 and stream.length == blob.size
    stream.read_at_least(1)
    # Frozen mid-body, then killed: the connection to trow resets and the port refuses.
    registry.process.send_signal(signal.SIGSTOP)
    registry.process.kill()
    registry.process.wait()
    registry.process = None
    time.sleep(1.0)
    registry.start()
    stream.read_to_end()
    stream.close()
    assert not stream.cut, "the client saw a truncated body"
    assert (stream.received, stream.digest) == (blob.size, blob.digest)
    assert wait_until(lambda: cached_blob_path(trow, blob.digest).exists())
    resumed = [r for r in registry.requests(mark) if r.method == "GET" and r.path.endswith(blob.digest)]
    assert [r.status for r in resumed] == [206], resumed
    assert get_and_hash(trow, f"/v2/f/{ALIAS}/big/one/blobs/{blob.digest}") == (200, blob.digest, blob.size)
    assert "trying again" in trow.log()
    assert_clean_log(trow)
