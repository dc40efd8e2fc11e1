"""Pulling and deleting blobs: GET, HEAD, Range and DELETE on /v2/<name>/blobs/<digest>."""

from __future__ import annotations

import pytest

from tests.unit.harness import Trow
from tests.unit.test_api_misc import API_VERSION, Fetched, assert_error, fetch, push_blob, sha256, sha512

DATA = b"0123456789abcdefghijklmnopqrstuvwxyz"  # 36 bytes
UNKNOWN = "sha256:" + "c" * 64


@pytest.fixture
def stored(trow: Trow) -> str:
    """DATA pushed to repository a/b; its digest."""
    return push_blob(trow, "a/b", DATA)


# -- GET and HEAD ------------------------------------------------------------------------------


def test_get_returns_exact_bytes(trow: Trow, stored: str) -> None:
    """GET answers 200 with the blob's bytes."""
    r = fetch(trow, "GET", f"/v2/a/b/blobs/{stored}")
    assert r.code == 200
    assert r.body == DATA


def test_get_has_digest_length_and_type_headers(trow: Trow, stored: str) -> None:
    """GET carries Docker-Content-Digest, the exact Content-Length, a binary Content-Type and the
    API version."""
    r = fetch(trow, "GET", f"/v2/a/b/blobs/{stored}")
    assert r.header("Docker-Content-Digest") == stored
    assert r.content_length == len(DATA)
    assert r.header("Content-Type") == "application/octet-stream"
    assert r.header("Docker-Distribution-API-Version") == API_VERSION


def test_head_has_headers_and_no_body(trow: Trow, stored: str) -> None:
    """HEAD answers 200 with Docker-Content-Digest and the blob's exact Content-Length, no body."""
    r = fetch(trow, "HEAD", f"/v2/a/b/blobs/{stored}")
    assert r.code == 200
    assert r.body == b""
    assert r.content_length == len(DATA)
    assert r.header("Docker-Content-Digest") == stored
    assert r.header("Content-Type") == "application/octet-stream"


def test_get_advertises_byte_ranges(trow: Trow, stored: str) -> None:
    """A blob GET tells clients they may resume with Range."""
    r = fetch(trow, "GET", f"/v2/a/b/blobs/{stored}")
    assert r.header("Accept-Ranges") == "bytes"


def test_empty_blob_get_has_zero_length(trow: Trow) -> None:
    """A 0-byte blob is served with 200, Content-Length 0 and an empty body."""
    digest = push_blob(trow, "a/b", b"")
    r = fetch(trow, "GET", f"/v2/a/b/blobs/{digest}")
    assert r.code == 200
    assert r.body == b""
    assert r.content_length == 0
    assert r.header("Docker-Content-Digest") == digest


def test_empty_blob_head_has_zero_length(trow: Trow) -> None:
    """HEAD of a 0-byte blob declares Content-Length 0."""
    digest = push_blob(trow, "a/b", b"")
    r = fetch(trow, "HEAD", f"/v2/a/b/blobs/{digest}")
    assert r.code == 200
    assert r.content_length == 0


def test_large_blob_is_streamed_whole(trow: Trow) -> None:
    """A blob larger than the producer's chunk size arrives complete and in order."""
    data = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4, several producer chunks
    digest = push_blob(trow, "a/b", data)
    r = fetch(trow, "GET", f"/v2/a/b/blobs/{digest}")
    assert r.code == 200
    assert r.content_length == len(data)
    assert r.body == data


def test_unknown_blob_get_is_404_blob_unknown(trow: Trow) -> None:
    """GET of a digest the registry does not hold is 404 BLOB_UNKNOWN, JSON."""
    r = fetch(trow, "GET", f"/v2/a/b/blobs/{UNKNOWN}")
    assert_error(r, 404, "BLOB_UNKNOWN")
    assert r.json()["errors"][0]["detail"] == {"digest": UNKNOWN}


def test_unknown_blob_head_is_404_without_body(trow: Trow) -> None:
    """HEAD of an unknown digest is 404 and sends no body."""
    r = fetch(trow, "HEAD", f"/v2/a/b/blobs/{UNKNOWN}")
    assert r.code == 404
    assert r.body == b""


def test_blob_is_only_visible_in_its_repository(trow: Trow, stored: str) -> None:
    """A blob pushed to a/b is not served from another repository: links are per repository."""
    r = fetch(trow, "GET", f"/v2/other/blobs/{stored}")
    assert_error(r, 404, "BLOB_UNKNOWN")


def test_blob_in_parent_repository_is_not_visible_in_child(trow: Trow, stored: str) -> None:
    """Repository names are not prefixes of each other: a/b/c does not see a/b's blobs."""
    r = fetch(trow, "HEAD", f"/v2/a/b/c/blobs/{stored}")
    assert r.code == 404


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:xyz",
        "sha256:" + "a" * 63,
        "sha256:" + "A" * 64,
        "sha256",
        "nodigest",
        "sha256:" + "a" * 65,
    ],
)
def test_invalid_digest_is_400_digest_invalid(trow: Trow, digest: str) -> None:
    """A malformed digest is refused with 400 DIGEST_INVALID."""
    r = fetch(trow, "GET", f"/v2/a/b/blobs/{digest}")
    assert_error(r, 400, "DIGEST_INVALID")


def test_unsupported_algorithm_is_400_digest_invalid(trow: Trow) -> None:
    """A well-formed digest with an algorithm trow cannot verify (md5) is 400 DIGEST_INVALID."""
    r = fetch(trow, "GET", "/v2/a/b/blobs/md5:" + "a" * 32)
    assert_error(r, 400, "DIGEST_INVALID")
    assert "unsupported" in r.json()["errors"][0]["message"]


def test_sha512_blob_is_served_under_its_sha512_digest(trow: Trow) -> None:
    """A blob pushed under a sha512 digest is served by that digest with that digest header."""
    digest = push_blob(trow, "a/b", DATA, sha512(DATA))
    r = fetch(trow, "GET", f"/v2/a/b/blobs/{digest}")
    assert r.code == 200
    assert r.body == DATA
    assert r.header("Docker-Content-Digest") == digest


def test_sha512_blob_is_not_visible_under_its_sha256_digest(trow: Trow) -> None:
    """Pushing by sha512 does not make the sha256 name of the same bytes exist."""
    push_blob(trow, "a/b", DATA, sha512(DATA))
    r = fetch(trow, "HEAD", f"/v2/a/b/blobs/{sha256(DATA)}")
    assert r.code == 404


def test_manifest_is_also_served_as_a_blob(trow: Trow) -> None:
    """A manifest's bytes are content too: the blob endpoint serves them in its repository."""
    config = b"{}"
    push_blob(trow, "a/b", config)
    manifest = (
        '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        f'"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{sha256(config)}","size":2}},'
        '"layers":[]}'
    ).encode()
    headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    assert fetch(trow, "PUT", "/v2/a/b/manifests/v1", manifest, headers).code == 201
    r = fetch(trow, "GET", f"/v2/a/b/blobs/{sha256(manifest)}")
    assert r.code == 200
    assert r.body == manifest
    assert fetch(trow, "GET", f"/v2/other/blobs/{sha256(manifest)}").code == 404


def test_invalid_name_on_blob_get_is_400_name_invalid(trow: Trow, stored: str) -> None:
    """An invalid repository name is refused before the digest is looked up."""
    r = fetch(trow, "GET", f"/v2/A/B/blobs/{stored}")
    assert_error(r, 400, "NAME_INVALID")


# -- Range -------------------------------------------------------------------------------------


def _get_range(trow: Trow, digest: str, value: str, method: str = "GET") -> Fetched:
    """Fetch blob C{digest} of a/b with the Range header C{value}."""
    return fetch(trow, method, f"/v2/a/b/blobs/{digest}", headers={"Range": value})


def test_range_start_end(trow: Trow, stored: str) -> None:
    """Range: bytes=a-b answers 206 with those bytes (inclusive) and their Content-Range."""
    r = _get_range(trow, stored, "bytes=2-5")
    assert r.code == 206
    assert r.body == DATA[2:6]
    assert r.header("Content-Range") == f"bytes 2-5/{len(DATA)}"
    assert r.content_length == 4
    assert r.header("Docker-Content-Digest") == stored


def test_range_open_end(trow: Trow, stored: str) -> None:
    """Range: bytes=a- answers from a to the end."""
    r = _get_range(trow, stored, "bytes=30-")
    assert r.code == 206
    assert r.body == DATA[30:]
    assert r.header("Content-Range") == f"bytes 30-35/{len(DATA)}"


def test_range_suffix(trow: Trow, stored: str) -> None:
    """Range: bytes=-n answers the last n bytes."""
    r = _get_range(trow, stored, "bytes=-4")
    assert r.code == 206
    assert r.body == DATA[-4:]
    assert r.header("Content-Range") == f"bytes 32-35/{len(DATA)}"


def test_range_suffix_longer_than_blob_gives_whole_blob(trow: Trow, stored: str) -> None:
    """A suffix longer than the blob is the whole blob, as a 206."""
    r = _get_range(trow, stored, "bytes=-1000")
    assert r.code == 206
    assert r.body == DATA
    assert r.header("Content-Range") == f"bytes 0-35/{len(DATA)}"


def test_range_end_beyond_size_is_clamped(trow: Trow, stored: str) -> None:
    """An end past the last byte is clamped to the last byte."""
    r = _get_range(trow, stored, "bytes=10-1000")
    assert r.code == 206
    assert r.body == DATA[10:]
    assert r.header("Content-Range") == f"bytes 10-35/{len(DATA)}"
    assert r.content_length == len(DATA) - 10


def test_range_single_last_byte(trow: Trow, stored: str) -> None:
    """bytes=35-35 is exactly the last byte."""
    r = _get_range(trow, stored, "bytes=35-35")
    assert r.code == 206
    assert r.body == DATA[35:]


def test_range_on_head_declares_range_length(trow: Trow, stored: str) -> None:
    """HEAD with Range answers 206 with the range's Content-Length and no body."""
    r = _get_range(trow, stored, "bytes=0-9", method="HEAD")
    assert r.code == 206
    assert r.body == b""
    assert r.content_length == 10
    assert r.header("Content-Range") == f"bytes 0-9/{len(DATA)}"


def test_range_start_beyond_size_is_416(trow: Trow, stored: str) -> None:
    """A range starting at or after the end is 416 with Content-Range bytes */size."""
    r = _get_range(trow, stored, f"bytes={len(DATA)}-")
    assert r.code == 416
    assert r.header("Content-Range") == f"bytes */{len(DATA)}"
    assert r.json()["errors"][0]["code"] == "SIZE_INVALID"


def test_range_end_before_start_is_416(trow: Trow, stored: str) -> None:
    """A range whose end is before its start is 416."""
    r = _get_range(trow, stored, "bytes=9-3")
    assert r.code == 416
    assert r.header("Content-Range") == f"bytes */{len(DATA)}"


def test_range_zero_suffix_is_416(trow: Trow, stored: str) -> None:
    """bytes=-0 asks for nothing: not satisfiable."""
    r = _get_range(trow, stored, "bytes=-0")
    assert r.code == 416


@pytest.mark.parametrize("value", ["bytes=0-1,4-5", "items=0-3", "bytes=-", "garbage"])
def test_unusable_range_is_ignored(trow: Trow, stored: str, value: str) -> None:
    """Multiple ranges, other units and nonsense may be ignored (RFC 9110): 200 with everything."""
    r = _get_range(trow, stored, value)
    assert r.code == 200
    assert r.body == DATA
    assert r.header("Content-Range") is None


# -- DELETE ------------------------------------------------------------------------------------


def test_delete_is_202(trow: Trow, stored: str) -> None:
    """DELETE of a blob in the repository answers 202."""
    r = fetch(trow, "DELETE", f"/v2/a/b/blobs/{stored}")
    assert r.code == 202
    assert r.header("Docker-Distribution-API-Version") == API_VERSION


def test_deleted_blob_is_404(trow: Trow, stored: str) -> None:
    """After DELETE the blob is gone from the repository: GET is 404 BLOB_UNKNOWN."""
    fetch(trow, "DELETE", f"/v2/a/b/blobs/{stored}")
    r = fetch(trow, "GET", f"/v2/a/b/blobs/{stored}")
    assert_error(r, 404, "BLOB_UNKNOWN")


def test_delete_twice_is_404(trow: Trow, stored: str) -> None:
    """A second DELETE of the same blob is 404: it had already been deleted."""
    fetch(trow, "DELETE", f"/v2/a/b/blobs/{stored}")
    r = fetch(trow, "DELETE", f"/v2/a/b/blobs/{stored}")
    assert_error(r, 404, "BLOB_UNKNOWN")


def test_delete_unknown_blob_is_404(trow: Trow) -> None:
    """DELETE of a blob the repository never held is 404 BLOB_UNKNOWN."""
    r = fetch(trow, "DELETE", f"/v2/a/b/blobs/{UNKNOWN}")
    assert_error(r, 404, "BLOB_UNKNOWN")


def test_delete_in_one_repository_keeps_the_other(trow: Trow, stored: str) -> None:
    """Deleting a blob from one repository leaves it in another that also holds it."""
    push_blob(trow, "c", DATA)
    fetch(trow, "DELETE", f"/v2/a/b/blobs/{stored}")
    r = fetch(trow, "GET", f"/v2/c/blobs/{stored}")
    assert r.code == 200
    assert r.body == DATA


def test_delete_invalid_digest_is_400(trow: Trow) -> None:
    """DELETE with a malformed digest is 400 DIGEST_INVALID."""
    r = fetch(trow, "DELETE", "/v2/a/b/blobs/sha256:nope")
    assert_error(r, 400, "DIGEST_INVALID")
