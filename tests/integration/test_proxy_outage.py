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
from typing import Any, Callable, Iterator

import pytest

from tests.integration.conftest import MIB, TrowProcess, get_and_hash
from tests.integration.upstream import (  # noqa: F401 - fixtures
    ALIAS,
    BodyStream,
    Distribution,
    TlsFiles,
    assert_clean_log,
    cached_blob_path,
    make_big_blob,
    proxy_entry,
    start_proxy_trow,
    wait_until,
)
from tests.integration.test_tls import make_pki


@pytest.fixture(params=["http", "https"])
def restartable_upstream(request: Any, tmp_path: Path) -> Iterator[tuple[Distribution, dict[str, Any]]]:
    """A registry of this test's own, plain or HTTPS (with its CA in trow's entry), and that entry."""
    tls: TlsFiles | None = None
    if request.param == "https":
        key, cert, cert_dir = make_pki(tmp_path / "pki")
        tls = TlsFiles(cert=cert, key=key, ca=cert_dir / "ca.crt")
    registry = Distribution(tmp_path / "restartable-upstream", tls=tls)
    entry = proxy_entry(registry.host) if tls is None else {"host": registry.host, "alias": ALIAS, "ca_file": str(tls.ca)}
    registry.start()
    try:
        yield registry, entry
    finally:
        registry.stop()


def test_download_resumes_after_the_upstream_restarts(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, restartable_upstream: tuple[Distribution, dict[str, Any]]
) -> None:
    """The upstream dies mid-blob and refuses connections for about a second: the client's body is
    whole and right, the upstream saw a Range request for the rest, and the blob is cached."""
    registry, entry = restartable_upstream
    blob = make_big_blob(registry, 200 * MIB, 7, ["big/one"])
    trow = start_proxy_trow(trow_factory, tmp_path, [entry])
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
