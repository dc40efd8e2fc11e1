"""Pushing blobs: upload sessions (POST, PATCH, PUT, GET, DELETE), monolithic pushes, mounts."""

from __future__ import annotations

import os

import pytest

from tests.unit.harness import Trow
from tests.unit.test_api_misc import (
    API_VERSION,
    Fetched,
    SpoolingClient,
    assert_error,
    fetch,
    push_blob,
    sha256,
    sha512,
)
from trow.api.site import SPOOL_THRESHOLD
from trow.registry.names import Digest

CHUNK1 = b"first chunk of 22 byte"  # 22 bytes
CHUNK2 = b"and the second one"  # 18 bytes
WHOLE = CHUNK1 + CHUNK2
assert len(CHUNK1) == 22


def start(trow: Trow, repo: str = "a/b") -> str:
    """Open an upload session; return its Location."""
    r = fetch(trow, "POST", f"/v2/{repo}/blobs/uploads/")
    assert r.code == 202, r.body
    location = r.header("Location")
    assert location is not None
    return location


def upload_files(trow: Trow) -> list[str]:
    """Session files left in uploads/."""
    return os.listdir(trow.stores.uploads.root)


def tmp_files(trow: Trow) -> list[str]:
    """Files left in tmp/."""
    return os.listdir(trow.stores.blobs.tmp_root)


# -- POST: opening a session -------------------------------------------------------------------


def test_post_opens_a_session(trow: Trow) -> None:
    """POST /blobs/uploads/ answers 202 with an empty body and the API version header."""
    r = fetch(trow, "POST", "/v2/a/b/blobs/uploads/")
    assert r.code == 202
    assert r.body == b""
    assert r.content_length == 0
    assert r.header("Docker-Distribution-API-Version") == API_VERSION


def test_post_location_names_the_session(trow: Trow) -> None:
    """The Location is /v2/<name>/blobs/uploads/<id>, and Docker-Upload-UUID is that id."""
    r = fetch(trow, "POST", "/v2/a/b/blobs/uploads/")
    location = r.header("Location")
    assert location is not None
    prefix = "/v2/a/b/blobs/uploads/"
    assert location.startswith(prefix)
    upload_id = location[len(prefix) :]
    assert upload_id and "/" not in upload_id
    assert r.header("Docker-Upload-UUID") == upload_id


def test_post_range_is_0_0(trow: Trow) -> None:
    """A new session holds no bytes: Range is 0-0."""
    r = fetch(trow, "POST", "/v2/a/b/blobs/uploads/")
    assert r.header("Range") == "0-0"


def test_post_advertises_chunk_min_length(trow: Trow) -> None:
    """POST carries OCI-Chunk-Min-Length, a positive number of bytes."""
    r = fetch(trow, "POST", "/v2/a/b/blobs/uploads/")
    value = r.header("OCI-Chunk-Min-Length")
    assert value is not None and value.isdigit() and int(value) > 0


def test_post_without_trailing_slash_opens_a_session(trow: Trow) -> None:
    """POST /blobs/uploads (no slash) is the same endpoint."""
    r = fetch(trow, "POST", "/v2/a/b/blobs/uploads")
    assert r.code == 202
    assert (r.header("Location") or "").startswith("/v2/a/b/blobs/uploads/")


def test_each_post_opens_a_new_session(trow: Trow) -> None:
    """Two POSTs give two different sessions."""
    assert start(trow) != start(trow)


# -- monolithic POST ?digest= ------------------------------------------------------------------


def test_monolithic_post_is_201_with_location(trow: Trow) -> None:
    """POST ?digest= with the whole blob answers 201, Location /v2/<name>/blobs/<digest>, and
    Docker-Content-Digest."""
    digest = sha256(WHOLE)
    r = fetch(trow, "POST", f"/v2/a/b/blobs/uploads/?digest={digest}", WHOLE)
    assert r.code == 201
    assert r.header("Location") == f"/v2/a/b/blobs/{digest}"
    assert r.header("Docker-Content-Digest") == digest
    assert r.content_length == 0


def test_monolithic_post_makes_the_blob_pullable(trow: Trow) -> None:
    """After a monolithic POST the blob is served byte-exact."""
    digest = push_blob(trow, "a/b", WHOLE)
    r = fetch(trow, "GET", f"/v2/a/b/blobs/{digest}")
    assert r.code == 200 and r.body == WHOLE


def test_monolithic_post_leaves_no_session(trow: Trow) -> None:
    """A monolithic POST opens no upload session and leaves no files behind."""
    push_blob(trow, "a/b", WHOLE)
    assert upload_files(trow) == []
    assert tmp_files(trow) == []


def test_monolithic_post_digest_mismatch_stores_nothing(trow: Trow) -> None:
    """POST ?digest= whose body hashes to something else is 400 DIGEST_INVALID; nothing is kept."""
    claimed = sha256(b"something else")
    r = fetch(trow, "POST", f"/v2/a/b/blobs/uploads/?digest={claimed}", WHOLE)
    assert_error(r, 400, "DIGEST_INVALID")
    assert fetch(trow, "HEAD", f"/v2/a/b/blobs/{claimed}").code == 404
    assert fetch(trow, "HEAD", f"/v2/a/b/blobs/{sha256(WHOLE)}").code == 404
    assert trow.stores.blobs.size(Digest.parse(sha256(WHOLE))) is None
    assert tmp_files(trow) == []


def test_monolithic_post_invalid_digest_is_400(trow: Trow) -> None:
    """POST ?digest= with a malformed digest is 400 DIGEST_INVALID."""
    r = fetch(trow, "POST", "/v2/a/b/blobs/uploads/?digest=sha256:short", WHOLE)
    assert_error(r, 400, "DIGEST_INVALID")


def test_monolithic_post_sha512(trow: Trow) -> None:
    """A monolithic push under a sha512 digest is verified with sha512 and served by it."""
    digest = sha512(WHOLE)
    r = fetch(trow, "POST", f"/v2/a/b/blobs/uploads/?digest={digest}", WHOLE)
    assert r.code == 201
    assert r.header("Docker-Content-Digest") == digest
    assert fetch(trow, "GET", f"/v2/a/b/blobs/{digest}").body == WHOLE


def test_monolithic_post_sha512_mismatch_is_400(trow: Trow) -> None:
    """A sha512 digest that does not match the body is refused."""
    r = fetch(trow, "POST", f"/v2/a/b/blobs/uploads/?digest={sha512(b'other')}", WHOLE)
    assert_error(r, 400, "DIGEST_INVALID")


# -- POST then PUT -----------------------------------------------------------------------------


def test_post_then_put_whole_blob(trow: Trow) -> None:
    """POST, then PUT <location>?digest= with the whole blob: 201 with Location and digest."""
    location = start(trow)
    digest = sha256(WHOLE)
    r = fetch(trow, "PUT", f"{location}?digest={digest}", WHOLE)
    assert r.code == 201
    assert r.header("Location") == f"/v2/a/b/blobs/{digest}"
    assert r.header("Docker-Content-Digest") == digest
    assert fetch(trow, "GET", f"/v2/a/b/blobs/{digest}").body == WHOLE


def test_finished_session_is_gone(trow: Trow) -> None:
    """After the closing PUT the session no longer exists and its file is moved away."""
    location = start(trow)
    fetch(trow, "PUT", f"{location}?digest={sha256(WHOLE)}", WHOLE)
    assert_error(fetch(trow, "GET", location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert upload_files(trow) == []


def test_put_of_already_stored_content_succeeds(trow: Trow) -> None:
    """Uploading bytes the store already holds finishes normally and leaves no upload file."""
    push_blob(trow, "other", WHOLE)
    location = start(trow)
    r = fetch(trow, "PUT", f"{location}?digest={sha256(WHOLE)}", WHOLE)
    assert r.code == 201
    assert upload_files(trow) == []
    assert fetch(trow, "GET", f"/v2/a/b/blobs/{sha256(WHOLE)}").body == WHOLE


def test_put_empty_blob(trow: Trow) -> None:
    """An upload of zero bytes, closed with the empty blob's digest, is a 0-byte blob."""
    location = start(trow)
    digest = sha256(b"")
    r = fetch(trow, "PUT", f"{location}?digest={digest}")
    assert r.code == 201
    assert fetch(trow, "HEAD", f"/v2/a/b/blobs/{digest}").content_length == 0


# -- PATCH: chunks -----------------------------------------------------------------------------


def _patch(trow: Trow, location: str, body: bytes, content_range: str | None) -> Fetched:
    """PATCH a chunk to the session at C{location}, with a Content-Range unless it is None."""
    headers = {"Content-Type": "application/octet-stream"}
    if content_range is not None:
        headers["Content-Range"] = content_range
    return fetch(trow, "PATCH", location, body, headers)


def test_patch_with_content_range_is_202(trow: Trow) -> None:
    """A first chunk 0-21 answers 202 with Range 0-21, the Location and the upload id."""
    location = start(trow)
    r = _patch(trow, location, CHUNK1, "0-21")
    assert r.code == 202
    assert r.header("Range") == "0-21"
    assert r.header("Location") == location
    assert r.header("Docker-Upload-UUID") == location.rsplit("/", 1)[1]
    assert r.content_length == 0


def test_patch_second_chunk_extends_range(trow: Trow) -> None:
    """The next chunk starts at 22 and the Range grows to cover it."""
    location = start(trow)
    _patch(trow, location, CHUNK1, "0-21")
    r = _patch(trow, location, CHUNK2, f"22-{len(WHOLE) - 1}")
    assert r.code == 202
    assert r.header("Range") == f"0-{len(WHOLE) - 1}"


def test_chunked_upload_then_put_without_body(trow: Trow) -> None:
    """Chunks, then a PUT with only the digest: the blob is the chunks in order."""
    location = start(trow)
    _patch(trow, location, CHUNK1, "0-21")
    _patch(trow, location, CHUNK2, f"22-{len(WHOLE) - 1}")
    digest = sha256(WHOLE)
    r = fetch(trow, "PUT", f"{location}?digest={digest}")
    assert r.code == 201
    assert fetch(trow, "GET", f"/v2/a/b/blobs/{digest}").body == WHOLE


def test_content_range_with_bytes_prefix_is_tolerated(trow: Trow) -> None:
    """Some clients send Content-Range as 'bytes 0-21/40'; trow accepts it."""
    location = start(trow)
    r = _patch(trow, location, CHUNK1, f"bytes 0-21/{len(WHOLE)}")
    assert r.code == 202
    assert r.header("Range") == "0-21"


def test_out_of_order_chunk_is_416_with_range(trow: Trow) -> None:
    """A chunk that does not start at the current offset is 416 with the current Range."""
    location = start(trow)
    _patch(trow, location, CHUNK1, "0-21")
    r = _patch(trow, location, CHUNK2, f"30-{30 + len(CHUNK2) - 1}")
    assert r.code == 416
    assert r.header("Range") == "0-21"
    assert r.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"


def test_session_survives_out_of_order_chunk(trow: Trow) -> None:
    """After a 416 the session is intact: the right chunk is taken and the blob completes."""
    location = start(trow)
    _patch(trow, location, CHUNK1, "0-21")
    _patch(trow, location, CHUNK2, "0-17")  # a retry from the wrong offset
    r = _patch(trow, location, CHUNK2, f"22-{len(WHOLE) - 1}")
    assert r.code == 202
    digest = sha256(WHOLE)
    assert fetch(trow, "PUT", f"{location}?digest={digest}").code == 201
    assert fetch(trow, "GET", f"/v2/a/b/blobs/{digest}").body == WHOLE


def test_first_chunk_not_at_zero_is_416(trow: Trow) -> None:
    """The first chunk must start at 0."""
    location = start(trow)
    r = _patch(trow, location, CHUNK1, "1-22")
    assert r.code == 416
    assert r.header("Range") == "0-0"


def test_chunk_length_mismatch_is_refused_and_offset_kept(trow: Trow) -> None:
    """A Content-Range that does not cover exactly the body is refused; nothing is appended."""
    location = start(trow)
    r = _patch(trow, location, CHUNK1, "0-30")
    assert r.code == 416
    assert fetch(trow, "GET", location).header("Range") == "0-0"


@pytest.mark.parametrize("value", ["nonsense", "5-2", "-3", "0-"])
def test_malformed_content_range_is_416_and_session_survives(trow: Trow, value: str) -> None:
    """An unparseable Content-Range (or end before start) is 416; the session stays usable."""
    location = start(trow)
    r = _patch(trow, location, CHUNK1, value)
    assert r.code == 416
    assert _patch(trow, location, CHUNK1, "0-21").code == 202


def test_patch_without_content_range_streams(trow: Trow) -> None:
    """A PATCH with no Content-Range is a streamed chunk appended at the current offset."""
    location = start(trow)
    r = _patch(trow, location, CHUNK1, None)
    assert r.code == 202
    assert r.header("Range") == "0-21"
    r = _patch(trow, location, CHUNK2, None)
    assert r.header("Range") == f"0-{len(WHOLE) - 1}"
    digest = sha256(WHOLE)
    assert fetch(trow, "PUT", f"{location}?digest={digest}").code == 201
    assert fetch(trow, "GET", f"/v2/a/b/blobs/{digest}").body == WHOLE


# -- GET: status -------------------------------------------------------------------------------


def test_status_is_204_with_range_and_location(trow: Trow) -> None:
    """GET on the session answers 204 with its Range and Location."""
    location = start(trow)
    _patch(trow, location, CHUNK1, "0-21")
    r = fetch(trow, "GET", location)
    assert r.code == 204
    assert r.header("Range") == "0-21"
    assert r.header("Location") == location
    assert r.body == b""


def test_status_of_new_session_is_0_0(trow: Trow) -> None:
    """A session with no bytes reports Range 0-0."""
    location = start(trow)
    r = fetch(trow, "GET", location)
    assert r.code == 204
    assert r.header("Range") == "0-0"


# -- PUT: closing ------------------------------------------------------------------------------


def test_put_with_final_chunk(trow: Trow) -> None:
    """The last chunk may ride on the closing PUT, without Content-Range."""
    location = start(trow)
    _patch(trow, location, CHUNK1, "0-21")
    digest = sha256(WHOLE)
    r = fetch(trow, "PUT", f"{location}?digest={digest}", CHUNK2)
    assert r.code == 201
    assert fetch(trow, "GET", f"/v2/a/b/blobs/{digest}").body == WHOLE


def test_put_with_final_chunk_and_content_range(trow: Trow) -> None:
    """The closing PUT may carry the last chunk with its Content-Range."""
    location = start(trow)
    _patch(trow, location, CHUNK1, "0-21")
    digest = sha256(WHOLE)
    headers = {"Content-Range": f"22-{len(WHOLE) - 1}"}
    r = fetch(trow, "PUT", f"{location}?digest={digest}", CHUNK2, headers)
    assert r.code == 201
    assert fetch(trow, "GET", f"/v2/a/b/blobs/{digest}").body == WHOLE


def test_put_out_of_order_final_chunk_is_416(trow: Trow) -> None:
    """A final chunk on the PUT that does not start at the offset is 416 with the current Range."""
    location = start(trow)
    _patch(trow, location, CHUNK1, "0-21")
    headers = {"Content-Range": f"10-{10 + len(CHUNK2) - 1}"}
    r = fetch(trow, "PUT", f"{location}?digest={sha256(WHOLE)}", CHUNK2, headers)
    assert r.code == 416
    assert r.header("Range") == "0-21"


def test_session_survives_out_of_order_put(trow: Trow) -> None:
    """After an out-of-order closing PUT, the session still holds its bytes and can be closed."""
    location = start(trow)
    _patch(trow, location, CHUNK1, "0-21")
    fetch(trow, "PUT", f"{location}?digest={sha256(WHOLE)}", CHUNK2, {"Content-Range": "0-17"})
    assert fetch(trow, "GET", location).header("Range") == "0-21"
    headers = {"Content-Range": f"22-{len(WHOLE) - 1}"}
    r = fetch(trow, "PUT", f"{location}?digest={sha256(WHOLE)}", CHUNK2, headers)
    assert r.code == 201
    assert fetch(trow, "GET", f"/v2/a/b/blobs/{sha256(WHOLE)}").body == WHOLE


def test_put_without_digest_is_400(trow: Trow) -> None:
    """Closing a session without the digest parameter is 400 DIGEST_INVALID; no blob appears."""
    location = start(trow)
    _patch(trow, location, CHUNK1, "0-21")
    r = fetch(trow, "PUT", location)
    assert_error(r, 400, "DIGEST_INVALID")
    assert fetch(trow, "HEAD", f"/v2/a/b/blobs/{sha256(CHUNK1)}").code == 404


def test_put_with_invalid_digest_is_400(trow: Trow) -> None:
    """A malformed digest parameter on the closing PUT is 400 DIGEST_INVALID."""
    location = start(trow)
    r = fetch(trow, "PUT", f"{location}?digest=sha256:zz", WHOLE)
    assert_error(r, 400, "DIGEST_INVALID")


def test_put_digest_mismatch_is_400(trow: Trow) -> None:
    """Closing with a digest the bytes do not hash to is 400 DIGEST_INVALID."""
    location = start(trow)
    _patch(trow, location, CHUNK1, "0-21")
    r = fetch(trow, "PUT", f"{location}?digest={sha256(b'not this')}", CHUNK2)
    assert_error(r, 400, "DIGEST_INVALID")


def test_put_digest_mismatch_stores_nothing(trow: Trow) -> None:
    """After a mismatch neither the claimed nor the real digest is visible."""
    location = start(trow)
    claimed = sha256(b"not this")
    fetch(trow, "PUT", f"{location}?digest={claimed}", WHOLE)
    assert fetch(trow, "HEAD", f"/v2/a/b/blobs/{claimed}").code == 404
    assert fetch(trow, "HEAD", f"/v2/a/b/blobs/{sha256(WHOLE)}").code == 404


def test_put_digest_mismatch_ends_the_session(trow: Trow) -> None:
    """A failed upload is gone: status is 404 BLOB_UPLOAD_UNKNOWN and its file is removed."""
    location = start(trow)
    fetch(trow, "PUT", f"{location}?digest={sha256(b'not this')}", WHOLE)
    assert_error(fetch(trow, "GET", location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert upload_files(trow) == []


def test_chunked_sha512_upload(trow: Trow) -> None:
    """A chunked upload closed with a sha512 digest is verified with sha512."""
    location = start(trow)
    _patch(trow, location, CHUNK1, "0-21")
    digest = sha512(WHOLE)
    r = fetch(trow, "PUT", f"{location}?digest={digest}", CHUNK2)
    assert r.code == 201
    assert r.header("Docker-Content-Digest") == digest
    assert fetch(trow, "GET", f"/v2/a/b/blobs/{digest}").body == WHOLE


def test_chunked_sha512_mismatch_is_400(trow: Trow) -> None:
    """A sha512 digest that the upload does not hash to is refused."""
    location = start(trow)
    r = fetch(trow, "PUT", f"{location}?digest={sha512(b'x')}", WHOLE)
    assert_error(r, 400, "DIGEST_INVALID")


# -- DELETE: cancel ----------------------------------------------------------------------------


def test_delete_upload_is_204(trow: Trow) -> None:
    """DELETE on the session cancels it with 204."""
    location = start(trow)
    _patch(trow, location, CHUNK1, "0-21")
    r = fetch(trow, "DELETE", location)
    assert r.code == 204
    assert upload_files(trow) == []


def test_cancelled_upload_is_404(trow: Trow) -> None:
    """After cancel, the session is 404 BLOB_UPLOAD_UNKNOWN for status, PATCH and DELETE."""
    location = start(trow)
    fetch(trow, "DELETE", location)
    assert_error(fetch(trow, "GET", location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(_patch(trow, location, CHUNK1, "0-21"), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(fetch(trow, "DELETE", location), 404, "BLOB_UPLOAD_UNKNOWN")


# -- sessions are bound to their repository, and must exist --------------------------------------


@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
def test_upload_id_in_another_repository_is_404(trow: Trow, method: str) -> None:
    """A session opened for a/b is unknown under another repository name."""
    location = start(trow)
    upload_id = location.rsplit("/", 1)[1]
    r = fetch(trow, method, f"/v2/other/blobs/uploads/{upload_id}?digest={sha256(WHOLE)}", WHOLE)
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")


def test_upload_survives_access_from_another_repository(trow: Trow) -> None:
    """A wrong-repository DELETE does not cancel the real session."""
    location = start(trow)
    upload_id = location.rsplit("/", 1)[1]
    fetch(trow, "DELETE", f"/v2/other/blobs/uploads/{upload_id}")
    assert fetch(trow, "GET", location).code == 204


@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
def test_unknown_upload_is_404(trow: Trow, method: str) -> None:
    """A session id the registry never issued is 404 BLOB_UPLOAD_UNKNOWN."""
    r = fetch(trow, method, f"/v2/a/b/blobs/uploads/no-such-session?digest={sha256(WHOLE)}", WHOLE)
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")


# -- cross-repository mount --------------------------------------------------------------------


def test_mount_from_repository_is_201(trow: Trow) -> None:
    """Mounting a blob from a repository that holds it answers 201 with Location exactly
    /v2/<target>/blobs/<digest>."""
    digest = push_blob(trow, "source/repo", WHOLE)
    r = fetch(trow, "POST", f"/v2/target/blobs/uploads/?mount={digest}&from=source/repo")
    assert r.code == 201
    assert r.header("Location") == f"/v2/target/blobs/{digest}"
    assert r.header("Docker-Content-Digest") == digest


def test_mounted_blob_is_pullable_in_target(trow: Trow) -> None:
    """After a mount the blob is served from the target repository."""
    digest = push_blob(trow, "source/repo", WHOLE)
    fetch(trow, "POST", f"/v2/target/blobs/uploads/?mount={digest}&from=source/repo")
    r = fetch(trow, "GET", f"/v2/target/blobs/{digest}")
    assert r.code == 200 and r.body == WHOLE


def test_mount_from_repository_without_the_blob_opens_a_session(trow: Trow) -> None:
    """A mount from a repository that lacks the blob falls back to a 202 upload session, even if
    another repository holds it: 'from' must be honoured."""
    digest = push_blob(trow, "elsewhere", WHOLE)
    r = fetch(trow, "POST", f"/v2/target/blobs/uploads/?mount={digest}&from=source")
    assert r.code == 202
    assert (r.header("Location") or "").startswith("/v2/target/blobs/uploads/")
    assert fetch(trow, "HEAD", f"/v2/target/blobs/{digest}").code == 404


def test_mount_without_from_of_known_blob_is_201(trow: Trow) -> None:
    """A mount without 'from' of a blob the registry holds is answered by content discovery: 201."""
    digest = push_blob(trow, "source", WHOLE)
    r = fetch(trow, "POST", f"/v2/target/blobs/uploads/?mount={digest}")
    assert r.code == 201
    assert r.header("Location") == f"/v2/target/blobs/{digest}"
    assert fetch(trow, "GET", f"/v2/target/blobs/{digest}").body == WHOLE


def test_mount_of_unknown_blob_opens_a_session(trow: Trow) -> None:
    """Mounting a blob that exists nowhere answers 202 with an upload session."""
    digest = sha256(b"nowhere")
    r = fetch(trow, "POST", f"/v2/target/blobs/uploads/?mount={digest}&from=source")
    assert r.code == 202
    location = r.header("Location")
    assert location is not None and location.startswith("/v2/target/blobs/uploads/")
    assert fetch(trow, "GET", location).code == 204


def test_mount_with_invalid_digest_is_400(trow: Trow) -> None:
    """A malformed mount digest is 400 DIGEST_INVALID."""
    r = fetch(trow, "POST", "/v2/target/blobs/uploads/?mount=sha256:bad&from=source")
    assert_error(r, 400, "DIGEST_INVALID")


# -- repository names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Upper",
        "a/Upper",
        "-leading",
        ".leading",
        "_leading",
        "a/-b",
        "trailing-",
        "a..b",
        "a/../b",
        "a/./b",
        "a//b",
        "a___b",
        "a@b",
        "a:b",
    ],
)
def test_invalid_name_is_400_name_invalid(trow: Trow, name: str) -> None:
    """Names outside the spec's grammar are refused with 400 NAME_INVALID."""
    r = fetch(trow, "POST", f"/v2/{name}/blobs/uploads/")
    assert_error(r, 400, "NAME_INVALID")


def test_name_with_leading_slash_is_400_name_invalid(trow: Trow) -> None:
    """/v2//abc/... names the repository '/abc', which the grammar refuses: 400 NAME_INVALID,
    and never a redirect of the push to 'abc'."""
    r = fetch(trow, "POST", "/v2//abc/blobs/uploads/")
    assert r.code != 308
    assert_error(r, 400, "NAME_INVALID")


def test_name_over_255_characters_is_400(trow: Trow) -> None:
    """A name longer than 255 characters is NAME_INVALID, however it is split."""
    name = "/".join(["abcdefghij"] * 24)  # 24*10 + 23 = 263 characters
    r = fetch(trow, "POST", f"/v2/{name}/blobs/uploads/")
    assert_error(r, 400, "NAME_INVALID")


def test_name_of_exactly_255_characters_is_accepted(trow: Trow) -> None:
    """255 characters is still a valid name."""
    name = "a" * 255
    assert fetch(trow, "POST", f"/v2/{name}/blobs/uploads/").code == 202


def test_name_with_many_components_is_accepted(trow: Trow) -> None:
    """The grammar has no limit on components: 30 short ones form a valid name."""
    name = "/".join(f"c{i}" for i in range(30))
    digest = push_blob(trow, name, WHOLE)
    assert fetch(trow, "GET", f"/v2/{name}/blobs/{digest}").body == WHOLE


@pytest.mark.parametrize("name", ["a.b", "a_b", "a__b", "a-b", "a---b", "a/b.c/d_e", "0/9"])
def test_valid_separators_are_accepted(trow: Trow, name: str) -> None:
    """Names joining components with '.', '_', '__' or dashes are valid."""
    assert fetch(trow, "POST", f"/v2/{name}/blobs/uploads/").code == 202


@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
def test_invalid_name_on_session_endpoint_is_400(trow: Trow, method: str) -> None:
    """Every session endpoint checks the repository name first."""
    r = fetch(trow, method, "/v2/Bad/blobs/uploads/some-id?digest=" + sha256(WHOLE), WHOLE)
    assert_error(r, 400, "NAME_INVALID")


def test_invalid_mount_source_name_is_refused(trow: Trow) -> None:
    """A mount 'from' that is not a valid name is refused with NAME_INVALID."""
    digest = push_blob(trow, "source", WHOLE)
    r = fetch(trow, "POST", f"/v2/target/blobs/uploads/?mount={digest}&from=Bad..Name")
    assert_error(r, 400, "NAME_INVALID")


# -- large bodies, spooled into tmp/ as in production --------------------------------------------

BIG = bytes(range(256)) * ((SPOOL_THRESHOLD // 256) + 40)  # over the spool threshold


def test_spooled_monolithic_post(trow: Trow) -> None:
    """A body over the spool threshold is received into tmp/, verified and moved into place."""
    client = SpoolingClient(trow)
    digest = sha256(BIG)
    r = client.request("POST", f"/v2/a/b/blobs/uploads/?digest={digest}", BIG)
    assert r.code == 201, r.body
    assert client.spooled == 1
    assert fetch(trow, "GET", f"/v2/a/b/blobs/{digest}").body == BIG
    assert tmp_files(trow) == []


def test_spooled_monolithic_post_mismatch_leaves_nothing(trow: Trow) -> None:
    """A spooled body with the wrong digest is refused and its spool file removed."""
    client = SpoolingClient(trow)
    r = client.request("POST", f"/v2/a/b/blobs/uploads/?digest={sha256(b'x')}", BIG)
    assert_error(r, 400, "DIGEST_INVALID")
    assert tmp_files(trow) == []
    assert fetch(trow, "HEAD", f"/v2/a/b/blobs/{sha256(BIG)}").code == 404


def test_spooled_monolithic_post_sha512(trow: Trow) -> None:
    """A spooled body is verified against a sha512 digest too."""
    client = SpoolingClient(trow)
    digest = sha512(BIG)
    r = client.request("POST", f"/v2/a/b/blobs/uploads/?digest={digest}", BIG)
    assert r.code == 201, r.body
    assert fetch(trow, "GET", f"/v2/a/b/blobs/{digest}").body == BIG


def test_spooled_chunks_then_small_chunk(trow: Trow) -> None:
    """A spooled first chunk, then a small chunk, then a spooled final chunk on the PUT: the
    blob is all three in order and the digest check passes."""
    client = SpoolingClient(trow)
    location = start(trow)
    r = client.request("PATCH", location, BIG, {"Content-Range": f"0-{len(BIG) - 1}"})
    assert r.code == 202 and r.header("Range") == f"0-{len(BIG) - 1}"
    r = client.request("PATCH", location, CHUNK1)
    assert r.code == 202
    whole = BIG + CHUNK1 + BIG
    r = client.request("PUT", f"{location}?digest={sha256(whole)}", BIG)
    assert r.code == 201, r.body
    assert fetch(trow, "GET", f"/v2/a/b/blobs/{sha256(whole)}").body == whole
    assert tmp_files(trow) == [] and upload_files(trow) == []


def test_spooled_out_of_order_chunk_is_discarded(trow: Trow) -> None:
    """A spooled chunk refused with 416 leaves no spool file and does not move the offset."""
    client = SpoolingClient(trow)
    location = start(trow)
    r = client.request("PATCH", location, BIG, {"Content-Range": f"5-{len(BIG) + 4}"})
    assert r.code == 416
    assert tmp_files(trow) == []
    assert fetch(trow, "GET", location).header("Range") == "0-0"


def test_spooled_body_of_a_plain_post_is_discarded(trow: Trow) -> None:
    """A body sent with a POST that only opens a session is thrown away, not left in tmp/."""
    client = SpoolingClient(trow)
    r = client.request("POST", "/v2/a/b/blobs/uploads/", BIG)
    assert r.code == 202
    assert tmp_files(trow) == []


def test_spooled_body_for_unknown_session_is_discarded(trow: Trow) -> None:
    """A large PATCH to an unknown session is 404 and its spool file is removed."""
    client = SpoolingClient(trow)
    r = client.request("PATCH", "/v2/a/b/blobs/uploads/nope", BIG)
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
    assert tmp_files(trow) == []
