"""Exact protocol behaviour of the real process, checked over raw sockets on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path
from typing import Callable

import pytest

from tests.images import OCI_INDEX, OCI_MANIFEST
from tests.integration.conftest import (
    LOOPBACK,
    Published,
    RawResponse,
    Skopeo,
    TrowProcess,
    layout_blob,
    parse_response,
)
from tests.integration.upstream import wait_until

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def client_hello() -> bytes:
    """The start of a TLS 1.2/1.3 ClientHello record, as skopeo or curl would send it."""
    body = b"\x03\x03" + os.urandom(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + b"\x00\x00"
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def assert_api_version(response: RawResponse) -> None:
    assert response.header(API_VERSION[0]) == API_VERSION[1], response.headers


# -- 5: TLS on the plain-HTTP listener ---------------------------------------------------------


def test_plain_listener_drops_tls_client_hello(shared_trow: TrowProcess) -> None:
    """A TLS ClientHello on the plain-HTTP port is answered by closing the connection at once,
    so clients that try TLS first fall back to HTTP instead of waiting for a TLS timeout."""
    assert shared_trow.port is not None
    with socket.create_connection((LOOPBACK, shared_trow.port), timeout=5) as sock:
        sock.sendall(client_hello())
        sock.settimeout(2.0)
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            data = b""
        except socket.timeout:
            pytest.fail("the connection was still open 2s after a TLS ClientHello")
    assert data == b"", f"expected the connection to be closed, got {data[:100]!r}"


def test_skopeo_with_tls_verify_off_uses_plain_http(published: Published, skopeo: Skopeo) -> None:
    """skopeo with --tls-verify=false tries TLS first, then HTTP: against the plain port that
    works (the dropped handshake makes it fall back rather than stall)."""
    repo = published.repos["multi"]
    result = skopeo.run("inspect", "--tls-verify=false", published.trow.ref(f"{repo}:multi"), timeout=60)
    assert json.loads(result.stdout)["Digest"] == published.images.refs["multi"]["digest"]


# -- 6: repeated Accept header lines ------------------------------------------------------------


def test_repeated_accept_lines_select_the_index(published: Published) -> None:
    """Two separate Accept lines (index, image manifest) are both honoured: the index is served
    with its own Content-Type, byte-exact."""
    repo = published.repos["multiarch"]
    response = published.trow.request(
        "GET", f"/v2/{repo}/manifests/multiarch", headers=[("Accept", OCI_INDEX), ("Accept", OCI_MANIFEST)]
    )
    assert response.status == 200, response
    assert response.header("Content-Type") == OCI_INDEX
    assert response.header("Docker-Content-Digest") == published.images.refs["multiarch"]["digest"]
    assert response.body == published.images.manifest_bytes("multiarch")


def test_docker_only_accept_gets_manifest_unknown_for_an_index(published: Published) -> None:
    """A client that accepts only Docker schema 2 image manifests gets 404 MANIFEST_UNKNOWN as a
    JSON error for an OCI index, never the index itself."""
    repo = published.repos["multiarch"]
    response = published.trow.request("GET", f"/v2/{repo}/manifests/multiarch", headers=[("Accept", DOCKER_MANIFEST)])
    assert response.status == 404, response
    assert response.header("Content-Type") == "application/json"
    assert response.error_codes() == ["MANIFEST_UNKNOWN"]
    assert_api_version(response)


# -- 9: health ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/readiness"])
def test_health_endpoints_answer_200(shared_trow: TrowProcess, path: str) -> None:
    """Liveness and readiness (data dir writable) both say yes on a running trow."""
    response = shared_trow.request("GET", path)
    assert response.status == 200, response


@pytest.mark.parametrize("path", ["/healthz", "/readiness", "/no-such-path"])
def test_responses_outside_v2_carry_api_version(shared_trow: TrowProcess, path: str) -> None:
    """Every response of the registry listener carries Docker-Distribution-API-Version, also
    those of the health endpoints and of paths that do not exist."""
    assert_api_version(shared_trow.request("GET", path))


# -- 10: headers of blobs and manifests -----------------------------------------------------


def test_blob_head_and_get_headers(published: Published) -> None:
    """HEAD and GET of a blob (the config, and a 2 MiB layer that streams) carry the API
    version, the digest, the exact length and a Content-Type; HEAD sends no body."""
    repo = published.repos["multi"]
    manifest = json.loads(published.images.manifest_bytes("multi"))
    for desc in [manifest["config"], max(manifest["layers"], key=lambda d: d["size"])]:
        content = layout_blob(published.images.layout, desc["digest"]).read_bytes()
        for method in ("HEAD", "GET"):
            response = published.trow.request(method, f"/v2/{repo}/blobs/{desc['digest']}")
            assert response.status == 200, response
            assert_api_version(response)
            assert response.header("Docker-Content-Digest") == desc["digest"]
            assert response.header("Content-Length") == str(len(content))
            assert response.header("Content-Type") == "application/octet-stream"
            assert response.body == (content if method == "GET" else b"")


def test_manifest_head_and_get_headers(published: Published) -> None:
    """HEAD and GET of a manifest, by tag and by digest, carry the API version, the digest, the
    exact length and the manifest's own media type; HEAD sends no body."""
    for tag, media_type in (("multi", OCI_MANIFEST), ("multiarch", OCI_INDEX)):
        repo = published.repos[tag]
        digest = published.images.refs[tag]["digest"]
        content = published.images.manifest_bytes(tag)
        for reference in (tag, digest):
            for method in ("HEAD", "GET"):
                response = published.trow.request(
                    method, f"/v2/{repo}/manifests/{reference}", headers=[("Accept", media_type)]
                )
                assert response.status == 200, response
                assert_api_version(response)
                assert response.header("Docker-Content-Digest") == digest
                assert response.header("Content-Length") == str(len(content))
                assert response.header("Content-Type") == media_type
                assert response.body == (content if method == "GET" else b"")


def test_blob_range_get(published: Published) -> None:
    """A Range GET of a blob answers 206 with Content-Range and exactly the requested bytes."""
    repo = published.repos["multi"]
    manifest = json.loads(published.images.manifest_bytes("multi"))
    desc = max(manifest["layers"], key=lambda d: d["size"])
    content = layout_blob(published.images.layout, desc["digest"]).read_bytes()
    size = len(content)
    for header, start, end in (
        ("bytes=100-1099", 100, 1099),
        (f"bytes={size - 10}-", size - 10, size - 1),
        ("bytes=-4096", size - 4096, size - 1),
    ):
        response = published.trow.request("GET", f"/v2/{repo}/blobs/{desc['digest']}", headers=[("Range", header)])
        assert response.status == 206, (header, response)
        assert_api_version(response)
        assert response.header("Content-Range") == f"bytes {start}-{end}/{size}"
        assert response.header("Content-Length") == str(end - start + 1)
        assert response.header("Docker-Content-Digest") == desc["digest"]
        assert response.body == content[start : end + 1]


# -- bodies over a limit: 413 at once, with the OCI error, then the connection closes ------------


def _exchange(trow: TrowProcess, head: bytes, body_pieces: tuple[bytes, ...] = ()) -> tuple[RawResponse, bool]:
    """Send C{head} (and C{body_pieces}, as far as trow takes them), read until trow closes;
    the response, and whether trow stopped the body before all of it was sent."""
    assert trow.port is not None
    with socket.create_connection((LOOPBACK, trow.port), timeout=15) as sock:
        sock.sendall(head)
        cut = False
        for piece in body_pieces:
            try:
                sock.sendall(piece)
            except OSError:
                cut = True
                break
        received = b""
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
    return parse_response(received), cut


def _assert_manifest_refusal(response: RawResponse, size: str) -> None:
    assert response.status == 413, response
    assert response.header("Connection") == "close" and (response.header("Content-Type") or "").startswith("application/json")
    assert_api_version(response)
    [error] = response.json()["errors"]
    assert error["code"] == "SIZE_INVALID"
    assert f"is {size}" in error["message"] and "limit of 4194304 bytes for max_manifest_size" in error["message"], error


def test_a_manifest_over_the_limit_is_refused_from_its_headers(shared_trow: TrowProcess) -> None:
    """Content-Length over max_manifest_size: the 413 comes before any of the body is sent,
    also to a client that waits for 100 Continue (which it never gets), and nothing is stored."""
    head = (
        b"PUT /v2/limits/app/manifests/big HTTP/1.1\r\nHost: trow\r\n"
        b"Content-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 9000000\r\n"
    )
    response, _ = _exchange(shared_trow, head + b"\r\n")
    _assert_manifest_refusal(response, "9000000 bytes")
    # The first response read is the 413: no "100 Continue" came before it.
    response, _ = _exchange(shared_trow, head + b"Expect: 100-continue\r\n\r\n")
    _assert_manifest_refusal(response, "9000000 bytes")
    assert shared_trow.request("GET", "/v2/limits/app/manifests/big").status == 404


def test_a_client_that_sends_the_whole_oversized_body_still_reads_the_413(shared_trow: TrowProcess) -> None:
    """The body is read and dropped while the answer waits in the client's buffer: no reset
    loses it, whether the body has a length or comes chunked."""
    body = b"{" + b" " * (6 * 2**20) + b"}"
    head = (
        b"PUT /v2/limits/app/manifests/big HTTP/1.1\r\nHost: trow\r\n"
        b"Content-Type: application/vnd.oci.image.manifest.v1+json\r\n"
    )
    pieces = tuple(body[i : i + 2**20] for i in range(0, len(body), 2**20))
    response, _ = _exchange(shared_trow, head + b"Content-Length: %d\r\n\r\n" % len(body), pieces)
    _assert_manifest_refusal(response, f"{len(body)} bytes")
    chunks = tuple(b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces) + (b"0\r\n\r\n",)
    response, _ = _exchange(shared_trow, head + b"Transfer-Encoding: chunked\r\n\r\n", chunks)
    _assert_manifest_refusal(response, "more than 4194304 bytes")
    # The part of the chunked body spooled before the refusal is not left in tmp/.
    spools = lambda: list((shared_trow.data_dir / "tmp").glob("**/body-*"))  # noqa: E731
    assert wait_until(lambda: not spools(), timeout=10), spools()


def test_a_manifest_at_the_limit_is_accepted(shared_trow: TrowProcess) -> None:
    """Exactly max_manifest_size bytes is not over it (the refusal is for larger bodies only)."""
    document = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": []}
    padding = 4 * 2**20 - len(json.dumps({**document, "annotations": {"p": ""}}).encode())
    content = json.dumps({**document, "annotations": {"p": "x" * padding}}).encode()
    assert len(content) == 4 * 2**20
    response = shared_trow.request(
        "PUT", "/v2/limits/app/manifests/exact", body=content, headers=[("Content-Type", OCI_MANIFEST)]
    )
    # Past the size check: refused for what it says (an empty config descriptor), not its size.
    assert response.status == 400 and response.error_codes() == ["MANIFEST_INVALID"], response


def test_a_small_oversized_body_in_one_read_gets_one_answer(trow_factory: Callable[..., TrowProcess], tmp_path: Path) -> None:
    """With a limit small enough for headers and body to come in one read, the refused request
    is not handled after its 413 (no second answer), nor is a request pipelined behind it."""
    config = tmp_path / "limits.yaml"
    config.write_text("limits:\n  max_manifest_size: 2KiB\n")
    trow = trow_factory("small-limit", extra_args=["--config", str(config)])
    body = b"{" + b" " * 3000 + b"}"
    head = (
        b"PUT /v2/limits/app/manifests/t HTTP/1.1\r\nHost: trow\r\n"
        b"Content-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    pipelined = b"GET /v2/ HTTP/1.1\r\nHost: trow\r\n\r\n"
    assert trow.port is not None
    with socket.create_connection((LOOPBACK, trow.port), timeout=15) as sock:
        sock.sendall(head + body + pipelined)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.count(b"HTTP/1.1 ") == 1, received
    response = parse_response(received)
    assert response.status == 413 and response.error_codes() == ["SIZE_INVALID"], response
    assert "limit of 2048 bytes" in response.json()["errors"][0]["message"]
