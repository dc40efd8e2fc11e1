"""The pull-through cache across replicas: one upstream download per digest for the whole set.

Three real C{twistd -n trow} replicas share one PostgreSQL database and one data dir, and proxy
the session's real C{docker-registry} upstream. The upstream's access log counts its GETs. The
replica asked first leads the download; the others stream from it as bytes arrive; if the leader
is killed, another takes its lease over and resumes from the upstream with C{Range}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from tests.integration.conftest import TrowProcess, get_and_hash, run_concurrently
from tests.integration.upstream import (  # noqa: F401 - fixtures
    ALIAS,
    BodyStream,
    Upstream,
    UpstreamLog,
    assert_clean_log,
    cached_blob_path,
    proxy_entry,
    upstream,
    wait_until,
    write_proxy_config,
)


def blob_path(repo: str, digest: str) -> str:
    return f"/v2/f/{ALIAS}/{repo}/blobs/{digest}"


@pytest.fixture
def replicas(tmp_path: Path, pg_url: str, upstream: Upstream) -> Iterator[list[TrowProcess]]:
    """Three replicas on one data dir and one database, proxying the upstream as C{up}."""
    config = write_proxy_config(tmp_path / "config.yml", [proxy_entry(upstream.registry.host)])
    processes = [
        TrowProcess(
            tmp_path / f"replica{i}",
            data_dir=tmp_path / "data",
            extra_args=["--database", pg_url, "--config", str(config)],
        )
        for i in range(3)
    ]
    try:
        for process in processes:
            process.start()
        yield processes
    finally:
        for process in processes:
            process.close()


def lease_holder(pg_url: str, digest: str) -> str | None:
    """The peer URL of the replica holding C{digest}'s download lease, if any."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute("SELECT peer_url FROM download_leases WHERE digest = %s", (digest,)).fetchone()
    return None if row is None else str(row[0])


def test_twelve_cold_clients_over_three_replicas_cost_one_upstream_get(
    replicas: list[TrowProcess], upstream: Upstream
) -> None:
    """12 clients, 4 on each replica, GET one uncached 64 MiB blob at once: each gets the exact
    bytes, the upstream sees exactly one GET for it, and the blob is stored once for all."""
    blob = upstream.blob_64m
    registry = upstream.registry
    log = UpstreamLog(registry, *replicas)
    path = blob_path("big/one", blob.digest)
    calls = [lambda trow=trow: get_and_hash(trow, path) for trow in replicas for _ in range(4)]
    results = run_concurrently(calls)
    assert results == [(200, blob.digest, blob.size)] * 12
    assert log.blob_gets(blob.digest) == 1
    assert wait_until(lambda: cached_blob_path(replicas[0], blob.digest).exists())
    # Stored once, served by every replica with no further upstream request.
    for trow in replicas:
        assert get_and_hash(trow, path) == (200, blob.digest, blob.size)
    assert log.blob_gets(blob.digest) == 1
    for trow in replicas:
        assert_clean_log(trow)


def test_followers_finish_when_the_leader_is_killed(replicas: list[TrowProcess], upstream: Upstream, pg_url: str) -> None:
    """The replica downloading a 200 MiB blob for the set is killed with -9 while clients on the
    two others stream it from there: another replica takes the lease over and resumes from the
    upstream, and every client on a live replica gets the whole, right body without retrying.
    The blob ends up cached."""
    blob = upstream.blob_200m
    registry = upstream.registry
    log = UpstreamLog(registry, *replicas)  # the leader, once killed, counts no more
    mark = log.start
    leader, *followers = replicas
    path = blob_path("big/two", blob.digest)
    first = BodyStream(leader.port or 0, path)
    assert first.status == 200
    assert wait_until(lambda: lease_holder(pg_url, blob.digest) == f"http://127.0.0.1:{leader.port}")
    streams = [BodyStream(trow.port or 0, path) for trow in followers for _ in range(2)]
    for stream in streams:
        assert stream.status == 200 and stream.length == blob.size
        stream.read_at_least(1 << 20)
    leader.kill()
    first.close()
    for stream in streams:
        stream.read_to_end()
        stream.close()
        assert not stream.cut, "a follower's client saw a truncated body"
        assert (stream.received, stream.digest) == (blob.size, blob.digest)
    assert wait_until(lambda: cached_blob_path(followers[0], blob.digest).exists())
    # One GET by the leader, one resumed GET by the replica that took over (a Range request).
    gets = registry.wait_for(lambda: registry.blob_gets(blob.digest, mark), at_least=2, log=log)
    assert 2 <= gets <= 3, f"{gets} upstream GETs"
    logs = "".join(trow.log() for trow in followers)
    assert "took over the download of " + blob.digest in logs
    for trow in followers:
        assert get_and_hash(trow, path) == (200, blob.digest, blob.size)
        assert_clean_log(trow)
