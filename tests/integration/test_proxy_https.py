"""The pull-through cache in front of an HTTPS upstream, as every public registry is.

The upstream is Debian's C{docker-registry} serving the session upstream's storage over TLS, with
a certificate from a CA made for the test; trow trusts that CA through the entry's C{ca_file}.
Blob bodies from an HTTPS upstream are read with the stdlib C{ssl} module on a thread per
download (trow.proxy.streams); manifests, tokens and HEADs go through Twisted's client.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.integration.conftest import Images, Skopeo, TrowProcess, assert_same_image, get_and_hash
from tests.integration.test_tls import make_pki
from tests.integration.upstream import (  # noqa: F401 - fixtures
    ALIAS,
    Distribution,
    TlsFiles,
    Upstream,
    UpstreamLog,
    assert_clean_log,
    assert_json_error,
    cached_blob_path,
    start_proxy_trow,
    upstream,
    wait_until,
)


def tls_files(directory: Path) -> TlsFiles:
    key, cert, cert_dir = make_pki(directory)
    return TlsFiles(cert=cert, key=key, ca=cert_dir / "ca.crt")


@pytest.fixture(scope="session")
def https_upstream(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Distribution]:
    """docker-registry over HTTPS on the session upstream's storage: the same content."""
    workdir = tmp_path_factory.mktemp("https-upstream")
    registry = Distribution(workdir, storage=upstream.registry.storage, tls=tls_files(workdir / "pki"))
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


def https_entry(registry: Distribution, ca: Path) -> dict[str, object]:
    return {"host": registry.host, "alias": ALIAS, "ca_file": str(ca)}


def test_skopeo_pulls_an_image_through_an_https_upstream(
    trow_factory: Callable[..., TrowProcess],
    tmp_path: Path,
    upstream: Upstream,
    https_upstream: Distribution,
    images: Images,
    skopeo: Skopeo,
) -> None:
    """Every blob and manifest keeps its digest, and a second pull sends no GET upstream."""
    assert https_upstream.tls is not None
    repo = upstream.image("multi", "https/multi")
    trow = start_proxy_trow(trow_factory, tmp_path, [https_entry(https_upstream, https_upstream.tls.ca)])
    ref = trow.ref(f"f/{ALIAS}/{repo}:multi")
    skopeo.pull(ref, f"oci:{tmp_path / 'first'}:multi")
    assert len(assert_same_image(images.layout, "multi", tmp_path / "first", "multi")) == 1 + 1 + 3

    log = UpstreamLog(https_upstream, trow)
    skopeo.pull(ref, f"oci:{tmp_path / 'second'}:multi")
    assert_same_image(images.layout, "multi", tmp_path / "second", "multi")
    seen = log.requests()
    assert [r for r in seen if r.method == "GET"] == [], f"the second pull reached the upstream: {seen}"
    assert_clean_log(trow)


def test_concurrent_clients_of_a_blob_from_an_https_upstream_cost_one_get(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, upstream: Upstream, https_upstream: Distribution
) -> None:
    """Eight clients of one uncached 64 MiB blob: each gets the right bytes, from one upstream GET,
    and the blob is cached."""
    assert https_upstream.tls is not None
    blob = upstream.blob_64m
    trow = start_proxy_trow(trow_factory, tmp_path, [https_entry(https_upstream, https_upstream.tls.ca)])
    log = UpstreamLog(https_upstream, trow)
    path = f"/v2/f/{ALIAS}/big/one/blobs/{blob.digest}"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: get_and_hash(trow, path), range(8)))
    assert results == [(200, blob.digest, blob.size)] * 8
    assert log.blob_gets(blob.digest) == 1
    assert wait_until(lambda: cached_blob_path(trow, blob.digest).exists())
    assert_clean_log(trow)


def test_an_upstream_certificate_from_another_ca_is_refused(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, upstream: Upstream, https_upstream: Distribution
) -> None:
    """trow trusts only the entry's ca_file: an upstream whose certificate another CA signed gets
    no request, the client gets a clear error, and nothing is cached."""
    other = tls_files(tmp_path / "other-pki")
    blob = upstream.blob_64m
    trow = start_proxy_trow(trow_factory, tmp_path, [https_entry(https_upstream, other.ca)])
    log = UpstreamLog(https_upstream, trow)
    response = trow.request("GET", f"/v2/f/{ALIAS}/big/one/blobs/{blob.digest}")
    assert_json_error(response, (502, 503), ("UNAVAILABLE", "BLOB_UNKNOWN"))
    assert "certificate" in response.body.decode(errors="replace").lower() or "certificate" in trow.log().lower()
    assert not cached_blob_path(trow, blob.digest).exists()
    # The handshake failed: no HTTP request reached the upstream's access log.
    assert log.requests() == []
