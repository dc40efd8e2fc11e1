"""Push workflow: every way to upload a blob, cross-repository mounts, and manifest uploads.

Blob uploads: streamed PATCH, monolithic POST C{?digest=}, POST then PUT, chunked PATCHes with
C{Content-Range} (in order, out of order, the last chunk on the PUT), upload status, cancel, and
digest verification on every completion path with sha256 and sha512. Manifest uploads: every data
set (with chunked transfer encoding on the live target), subjects and C{OCI-Subject}, C{?tag=}
parameters, and refusals of bodies that do not match their digest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tests.conformance.conftest import (
    ACCEPT_BOTH,
    Reply,
    Repo,
    Target,
    assert_blob_reply,
    assert_digest_header,
    assert_error,
    assert_manifest_reply,
    assert_range_header,
    location_path,
)
from tests.conformance.data import (
    ALGORITHMS,
    DATASETS,
    EMPTY_JSON_DIGEST,
    INDEX,
    MANIFEST,
    Blob,
    Content,
    V11Image,
    bad_digest_image,
    digest_of,
    tag_param_set,
    v11_empty_layer_manifest,
    v11_image,
    v11_layer,
    v11_referrers,
)

NEVER_PUSHED = digest_of(b"hello world")
OCTET = {"Content-Type": "application/octet-stream"}


def chunk_min_length(reply: Reply) -> int:
    """The registry's C{OCI-Chunk-Min-Length}, or 0 if it does not ask for one."""
    value = reply.header("OCI-Chunk-Min-Length")
    return int(value) if value else 0


def assert_created(repo: Repo, reply: Reply, blob: Blob) -> None:
    """A finished blob push: 201, digest header, and the Location serves exactly the blob."""
    assert reply.status == 201, reply.describe()
    assert_digest_header(reply, blob.digest)
    assert_blob_reply(repo.request("GET", location_path(reply.header("Location"))), blob)


def assert_lifecycle(repo: Repo, blob: Blob) -> None:
    """What the newer suite does after every successful push: HEAD, GET, DELETE (202), HEAD (404)."""
    assert_blob_reply(repo.head_blob(blob.digest), blob, head=True)
    assert_blob_reply(repo.get_blob(blob.digest), blob)
    deleted = repo.delete_blob(blob.digest)
    assert deleted.status == 202, deleted.describe()
    assert repo.head_blob(blob.digest).status == 404


def assert_upload_status(repo: Repo, location: str, received: int) -> str:
    """GET on an upload session: 204 with a Location and C{Range: 0-<last byte>}; returns the Location.

    Before any byte arrived the spec's format cannot say "nothing", so only a C{0-<int>} shape is
    required then.
    """
    reply = repo.request("GET", location)
    assert reply.status == 204, reply.describe()
    assert_range_header(reply, received - 1)
    return location_path(reply.header("Location"))


# -- monolithic and two-step uploads ----------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_monolithic_post(repo: Repo, content: Content, algorithm: str) -> None:
    """POST C{?digest=} with the blob as body: 201, the blob Location, and the blob is served."""
    blob = content.using(algorithm).random_blob(512)
    reply = repo.request("POST", f"blobs/uploads/?digest={blob.digest}", blob.data, OCTET)
    assert location_path(reply.header("Location")) == repo.path(f"blobs/{blob.digest}")
    assert_created(repo, reply, blob)
    assert_lifecycle(repo, blob)


def test_monolithic_post_of_existing_blob(repo: Repo, content: Content) -> None:
    """A single POST of a blob the repository already has is still 201, and the blob stays.

    The v1.1 suite reads a 202 here as "no single POST" and then expects the blob to be missing.
    """
    config = content.v11_config()
    assert repo.get_blob(config.digest).status == 404
    repo.push_blob(config, "post-put")
    reply = repo.request("POST", f"blobs/uploads/?digest={config.digest}", config.data, OCTET)
    assert_created(repo, reply, config)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_post_then_put(repo: Repo, content: Content, algorithm: str) -> None:
    """POST opens a session (exactly 202 with a Location); PUT C{?digest=} with the body closes it (201)."""
    blob = content.using(algorithm).random_blob(512)
    started = repo.start_upload()
    assert started.status == 202, started.describe()
    location = location_path(started.header("Location"))
    assert location.startswith(repo.path("blobs/uploads/"))
    reply = repo.put_upload(location, blob.digest, blob.data)
    assert location_path(reply.header("Location")) == repo.path(f"blobs/{blob.digest}")
    assert_created(repo, reply, blob)
    assert_lifecycle(repo, blob)


@pytest.mark.parametrize("how", ["post-put", "stream", "chunked"])
def test_session_closed_after_put(repo: Repo, content: Content, how: str) -> None:
    """Once the closing PUT succeeded, the session is gone: GET on it is 404."""
    blob = content.random_blob(64)
    location = repo.open_session()
    if how == "post-put":
        final = repo.put_upload(location, blob.digest, blob.data)
    elif how == "stream":
        assert repo.patch(location, blob.data).status == 202
        final = repo.put_upload(location, blob.digest)
    else:
        assert repo.patch(location, blob.data[:32], "0-31").status == 202
        final = repo.put_upload(location, blob.digest, blob.data[32:], {"Content-Range": "32-63"})
    assert_created(repo, final, blob)
    assert_error(repo.request("GET", location), 404, ["BLOB_UPLOAD_UNKNOWN"])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("how", ["monolithic", "post-put", "stream", "chunked"])
def test_large_blob(repo: Repo, content: Content, how: str, algorithm: str) -> None:
    """A 1.5 MB blob goes up every way (large enough to be spooled to disk, not kept in memory)."""
    blob = content.using(algorithm).random_blob(1_500_000)
    assert_created(repo, repo.push_blob(blob, how), blob)
    assert_lifecycle(repo, blob)


def test_sessions_are_unique(repo: Repo) -> None:
    """Each POST opens its own session, at its own location."""
    assert repo.open_session() != repo.open_session()


def test_v11_layer_post_then_put(repo: Repo, content: Content) -> None:
    """The v1.1 layer and configs go up by POST then PUT and read back."""
    layer = v11_layer(content)
    image = v11_image(content, layer)
    for blob in (image.config, layer):
        assert_created(repo, repo.push_blob(blob, "post-put"), blob)


# -- streamed uploads -------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_streamed_patch(repo: Repo, content: Content, algorithm: str) -> None:
    """One PATCH without Content-Range (202, Location, Range), then PUT C{?digest=} with no body (201)."""
    blob = content.using(algorithm).random_blob(42)
    location = repo.open_session()
    patched = repo.patch(location, blob.data)
    assert patched.status == 202, patched.describe()
    assert_range_header(patched, blob.size - 1)
    closing = location_path(patched.header("Location"))
    reply = repo.put_upload(closing, blob.digest, headers={"Content-Length": "0"})
    assert location_path(reply.header("Location")) == repo.path(f"blobs/{blob.digest}")
    assert_created(repo, reply, blob)
    assert_lifecycle(repo, blob)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("size", [0, 42, 200_000])
def test_streamed_patch_chunked_transfer(
    chunked_target: Target, repo: Repo, content: Content, algorithm: str, size: int
) -> None:
    """A PATCH sent with Transfer-Encoding: chunked and no Content-Range (the newer suite's stream)."""
    blob = content.using(algorithm).random_blob(size)
    location = repo.open_session()
    patched = repo.patch(location, blob.data, chunked=True)
    assert patched.status == 202, patched.describe()
    assert_range_header(patched, blob.size - 1)
    reply = repo.put_upload(location_path(patched.header("Location")), blob.digest, headers={"Content-Length": "0"})
    assert_created(repo, reply, blob)
    assert_lifecycle(repo, blob)


def test_streamed_patches_append(repo: Repo, content: Content) -> None:
    """Two streamed PATCHes without Content-Range append, and Range grows with them."""
    blob = content.random_blob(100)
    location = repo.open_session()
    first = repo.patch(location, blob.data[:60])
    assert first.status == 202 and first.values("Range") == ["0-59"], first.describe()
    second = repo.patch(location_path(first.header("Location")), blob.data[60:])
    assert second.status == 202 and second.values("Range") == ["0-99"], second.describe()
    assert_created(repo, repo.put_upload(location_path(second.header("Location")), blob.digest), blob)


def test_streamed_patches_append_chunked_transfer(chunked_target: Target, repo: Repo, content: Content) -> None:
    """Streamed PATCHes with chunked transfer encoding append to what the session holds."""
    blob = content.random_blob(300_000)
    location = repo.open_session()
    for start, end in ((0, 150_000), (150_000, 150_010), (150_010, 300_000)):
        patched = repo.patch(location, blob.data[start:end], chunked=True)
        assert patched.status == 202, patched.describe()
        assert_range_header(patched, end - 1)
        location = location_path(patched.header("Location"))
    assert_created(repo, repo.put_upload(location, blob.digest), blob)


# -- chunked uploads: the v1.1 sequence -------------------------------------------------------


@dataclass
class V11Chunks:
    """The v1.1 two-chunk blob, sized by the registry's minimum chunk length."""

    blob: Blob
    split: int

    @property
    def first(self) -> bytes:
        return self.blob.data[: self.split]

    @property
    def second(self) -> bytes:
        return self.blob.data[self.split :]

    @property
    def first_range(self) -> str:
        return f"0-{self.split - 1}"

    @property
    def second_range(self) -> str:
        return f"{self.split}-{self.blob.size - 1}"


def v11_chunks(content: Content, started: Reply) -> V11Chunks:
    """42 bytes as 22 + 20, or min*2-2 bytes as min + (min-2) when the registry asks for more."""
    minimum = chunk_min_length(started)
    size, split = (42, 22) if minimum <= 22 else (minimum * 2 - 2, minimum)
    return V11Chunks(content.random_blob(size), split)


def test_out_of_order_first_chunk(repo: Repo, content: Content) -> None:
    """A first PATCH whose Content-Range does not start at 0 is 416, and the session survives."""
    started = repo.start_upload()
    assert started.status == 202, started.describe()
    chunks = v11_chunks(content, started)
    location = location_path(started.header("Location"))
    refused = repo.patch(location, chunks.second, chunks.second_range)
    assert refused.status == 416, refused.describe()
    assert_upload_status(repo, location, 0)
    accepted = repo.patch(location, chunks.first, chunks.first_range)
    assert accepted.status == 202, accepted.describe()


def test_first_chunk(repo: Repo, content: Content) -> None:
    """The first chunk (C{Content-Range: 0-21} style) is 202 with C{Range: 0-21} and a Location."""
    started = repo.start_upload()
    chunks = v11_chunks(content, started)
    reply = repo.patch(location_path(started.header("Location")), chunks.first, chunks.first_range)
    assert reply.status == 202, reply.describe()
    assert_range_header(reply, chunks.split - 1)
    assert reply.header("Location")


def test_retry_of_previous_chunk_at_original_location(repo: Repo, content: Content) -> None:
    """Sending the first chunk again to the POST's Location is 416: that URL still names the session."""
    started = repo.start_upload()
    chunks = v11_chunks(content, started)
    original = location_path(started.header("Location"))
    assert repo.patch(original, chunks.first, chunks.first_range).status == 202
    reply = repo.patch(original, chunks.first, chunks.first_range)
    assert reply.status == 416, reply.describe()


def test_status_of_upload_with_one_chunk(repo: Repo, content: Content) -> None:
    """GET on the original Location after a chunk is 204 with a Location and C{Range: 0-21} style."""
    started = repo.start_upload()
    chunks = v11_chunks(content, started)
    original = location_path(started.header("Location"))
    assert repo.patch(original, chunks.first, chunks.first_range).status == 202
    assert_upload_status(repo, original, chunks.split)


def test_v11_chunked_sequence(repo: Repo, content: Content) -> None:
    """The whole v1.1 chunked sequence: chunk, retry (416), status (204), last chunk, PUT (201)."""
    started = repo.start_upload()
    chunks = v11_chunks(content, started)
    original = location_path(started.header("Location"))
    first = repo.patch(original, chunks.first, chunks.first_range)
    assert first.status == 202 and first.values("Range") == [chunks.first_range], first.describe()
    assert repo.patch(original, chunks.first, chunks.first_range).status == 416
    resumed = assert_upload_status(repo, original, chunks.split)
    second = repo.patch(resumed, chunks.second, chunks.second_range)
    assert second.status == 202, second.describe()
    assert_range_header(second, chunks.blob.size - 1)
    reply = repo.put_upload(location_path(second.header("Location")), chunks.blob.digest, headers={"Content-Length": "0"})
    assert location_path(reply.header("Location")) == repo.path(f"blobs/{chunks.blob.digest}")
    assert_created(repo, reply, chunks.blob)


def test_upload_status_before_any_data(repo: Repo) -> None:
    """GET on a fresh session is 204 with a Location and a C{0-<n>} Range header."""
    assert_upload_status(repo, repo.open_session(), 0)


def test_status_of_unknown_upload(repo: Repo) -> None:
    """GET, PATCH and PUT on a session that never existed are 404 BLOB_UPLOAD_UNKNOWN."""
    location = repo.path("blobs/uploads/00000000-0000-0000-0000-000000000000")
    assert_error(repo.request("GET", location), 404, ["BLOB_UPLOAD_UNKNOWN"])
    assert_error(repo.patch(location, b"abc", "0-2"), 404, ["BLOB_UPLOAD_UNKNOWN"])
    assert_error(repo.put_upload(location, digest_of(b"abc"), b"abc"), 404, ["BLOB_UPLOAD_UNKNOWN"])


# -- chunked uploads: the newer suite's algorithm ----------------------------------------------


@dataclass
class ChunkedResult:
    """What a chunked upload sent and what closed it."""

    blob: Blob
    chunk_size: int
    minimum: int
    final: Reply


def chunked_upload(
    repo: Repo,
    content: Content,
    *,
    out_of_order: bool = False,
    put_last_chunk: bool = False,
    single: bool = False,
    tamper: bytes = b"",
) -> ChunkedResult:
    """Upload a blob in chunks the way the newer suite does, checking every step on the way.

    The blob is C{3*m-5} bytes with C{m = max(1024, OCI-Chunk-Min-Length)} (512 bytes in one chunk
    with C{single}); chunks are C{max(size/3+1, OCI-Chunk-Min-Length, 1024)} bytes. With
    C{out_of_order}, a chunk at the wrong offset goes first each time (by PUT when it reaches the
    last byte and C{put_last_chunk} is set): it must be 416, and the session must then report
    exactly what it holds and carry on. C{tamper} is appended to the data but not to the digest.
    """
    started = repo.start_upload()
    assert started.status == 202, started.describe()
    location = location_path(started.header("Location"))
    minimum = chunk_min_length(started)
    size = 512 if single else 3 * max(1024, minimum) - 5
    blob = content.random_blob(size)
    data = blob.data + tamper
    chunk_size = len(data) if single else min(max(len(data) // 3 + 1, minimum, 1024), len(data))
    assert single or chunk_size >= minimum, "chunks must honour OCI-Chunk-Min-Length"
    for start in range(0, len(data), chunk_size):
        end = min(start + chunk_size, len(data)) - 1
        if out_of_order:
            bad_start = start + chunk_size if start + chunk_size < len(data) else 0
            bad_end = min(bad_start + chunk_size, len(data)) - 1
            bad_range = f"{bad_start}-{bad_end}"
            bad_body = data[bad_start : bad_end + 1]
            if put_last_chunk and bad_end == len(data) - 1:
                refused = repo.put_upload(location, blob.digest, bad_body, {"Content-Range": bad_range})
            else:
                refused = repo.patch(location, bad_body, bad_range)
            assert refused.status == 416, f"chunk {bad_range} sent when {start} bytes are in: {refused.describe()}"
            if refused.header("Location"):
                location = location_path(refused.header("Location"))
            location = assert_upload_status(repo, location, start)
        if put_last_chunk and end == len(data) - 1:
            final = repo.put_upload(location, blob.digest, data[start : end + 1], {"Content-Range": f"{start}-{end}"})
            return ChunkedResult(blob, chunk_size, minimum, final)
        patched = repo.patch(location, data[start : end + 1], f"{start}-{end}")
        assert patched.status == 202, patched.describe()
        assert_range_header(patched, end)
        location = location_path(patched.header("Location"))
    final = repo.put_upload(location, blob.digest, headers={"Content-Length": "0"})
    return ChunkedResult(blob, chunk_size, minimum, final)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_chunked_single(repo: Repo, content: Content, algorithm: str) -> None:
    """One chunk C{0-511}, then PUT: 201."""
    result = chunked_upload(repo, content.using(algorithm), single=True)
    assert_created(repo, result.final, result.blob)
    assert_lifecycle(repo, result.blob)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("put_last_chunk", [False, True], ids=["patch-last", "put-last"])
def test_chunked_multi(repo: Repo, content: Content, put_last_chunk: bool, algorithm: str) -> None:
    """Three chunks of at least OCI-Chunk-Min-Length, the last one by PATCH or on the closing PUT."""
    result = chunked_upload(repo, content.using(algorithm), put_last_chunk=put_last_chunk)
    assert result.blob.size > 2 * result.chunk_size
    assert_created(repo, result.final, result.blob)
    assert_lifecycle(repo, result.blob)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("put_last_chunk", [False, True], ids=["patch-last", "put-last"])
def test_chunked_out_of_order(repo: Repo, content: Content, put_last_chunk: bool, algorithm: str) -> None:
    """Every out-of-order chunk (PATCH, or the closing PUT) is 416 and the upload then completes."""
    result = chunked_upload(repo, content.using(algorithm), out_of_order=True, put_last_chunk=put_last_chunk)
    assert_created(repo, result.final, result.blob)
    assert_lifecycle(repo, result.blob)


def test_out_of_order_put_keeps_session(repo: Repo, content: Content) -> None:
    """A closing PUT whose Content-Range skips ahead is 416, and leaves the session as it was."""
    blob = content.random_blob(3000)
    location = repo.open_session()
    assert repo.patch(location, blob.data[:1000], "0-999").status == 202
    refused = repo.put_upload(location, blob.digest, blob.data[2000:], {"Content-Range": "2000-2999"})
    assert refused.status == 416, refused.describe()
    location = assert_upload_status(repo, location, 1000)
    assert repo.patch(location, blob.data[1000:2000], "1000-1999").status == 202
    final = repo.put_upload(location, blob.digest, blob.data[2000:], {"Content-Range": "2000-2999"})
    assert_created(repo, final, blob)


# -- upload cancel ---------------------------------------------------------------------------


@pytest.mark.parametrize("with_data", [False, True], ids=["empty", "after-chunk"])
def test_cancel_upload(repo: Repo, content: Content, with_data: bool) -> None:
    """DELETE on an upload session is 204, and the session is then unknown (404)."""
    blob = content.random_blob(64)
    location = repo.open_session()
    if with_data:
        assert repo.patch(location, blob.data[:32], "0-31").status == 202
    reply = repo.request("DELETE", location, b"", {"Content-Length": "0"})
    assert reply.status == 204, reply.describe()
    assert_error(repo.request("GET", location), 404, ["BLOB_UPLOAD_UNKNOWN"])
    assert_error(repo.patch(location, blob.data[32:], "32-63"), 404, ["BLOB_UPLOAD_UNKNOWN"])
    assert repo.head_blob(blob.digest).status == 404


def test_no_content_length_on_204(wire_target: Target, repo: Repo, content: Content) -> None:
    """The 204 answers of the upload API (end-13 status, end-14 cancel) carry no Content-Length.

    RFC 9110, section 8.6: "A server MUST NOT send a Content-Length header field in any response
    with a status code of 1xx (Informational) or 204 (No Content)."
    """
    location = repo.open_session()
    assert repo.patch(location, b"0123456789", "0-9").status == 202
    status = repo.request("GET", location)
    assert status.status == 204, status.describe()
    cancelled = repo.request("DELETE", location, b"", {"Content-Length": "0"})
    assert cancelled.status == 204, cancelled.describe()
    assert status.values("Content-Length") == [], status.describe()
    assert cancelled.values("Content-Length") == [], cancelled.describe()


# -- digests that do not match -----------------------------------------------------------------

TAMPER = b"oh no"


def tampered(content: Content, started: Reply) -> tuple[Blob, bytes]:
    """A blob of 3*m-5 bytes and its data with bytes appended (the digest is of the original)."""
    blob = content.random_blob(3 * max(1024, chunk_min_length(started)) - 5)
    return blob, blob.data + TAMPER


def assert_digest_refused(repo: Repo, reply: Reply, blob: Blob) -> None:
    """400 DIGEST_INVALID, and nothing was stored under the digest."""
    assert_error(reply, 400, ["DIGEST_INVALID"])
    assert repo.head_blob(blob.digest).status == 404


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bad_digest_monolithic(repo: Repo, content: Content, algorithm: str) -> None:
    """POST C{?digest=} with a body that does not hash to it is 400."""
    blob, data = tampered(content.using(algorithm), repo.start_upload())
    reply = repo.request("POST", f"blobs/uploads/?digest={blob.digest}", data, OCTET)
    assert_digest_refused(repo, reply, blob)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bad_digest_post_put(repo: Repo, content: Content, algorithm: str) -> None:
    """The closing PUT of a POST+PUT upload is 400 when the body does not match its digest."""
    started = repo.start_upload()
    blob, data = tampered(content.using(algorithm), started)
    reply = repo.put_upload(location_path(started.header("Location")), blob.digest, data)
    assert_digest_refused(repo, reply, blob)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bad_digest_stream(repo: Repo, content: Content, algorithm: str) -> None:
    """The closing PUT of a streamed upload is 400 when the data does not match."""
    started = repo.start_upload()
    blob, data = tampered(content.using(algorithm), started)
    patched = repo.patch(location_path(started.header("Location")), data)
    assert patched.status == 202, patched.describe()
    reply = repo.put_upload(location_path(patched.header("Location")), blob.digest)
    assert_digest_refused(repo, reply, blob)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("put_last_chunk", [False, True], ids=["patch-last", "put-last"])
def test_bad_digest_chunked(repo: Repo, content: Content, algorithm: str, put_last_chunk: bool) -> None:
    """The closing PUT of a chunked upload is 400 when the chunks do not match the digest."""
    result = chunked_upload(repo, content.using(algorithm), put_last_chunk=put_last_chunk, tamper=TAMPER)
    assert_digest_refused(repo, result.final, result.blob)


def test_malformed_digest_parameter(repo: Repo, content: Content) -> None:
    """A digest parameter that is not a digest at all is 400 on POST and on the closing PUT."""
    blob = content.random_blob(16)
    assert_error(repo.request("POST", "blobs/uploads/?digest=sha256:nothex", blob.data, OCTET), 400, ["DIGEST_INVALID"])
    location = repo.open_session()
    assert_error(repo.put_upload(location, "sha256:nothex", blob.data), 400, ["DIGEST_INVALID"])


# -- empty blobs ------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("how", ["monolithic", "post-put", "stream", "chunked"])
def test_push_empty_blob(repo: Repo, content: Content, how: str, algorithm: str) -> None:
    """The 0-byte blob can be pushed every way, and then reads back with Content-Length: 0."""
    empty = content.using(algorithm).blob(b"")
    assert_created(repo, repo.push_blob(empty, how), empty)
    assert_lifecycle(repo, empty)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_push_empty_json_blob(repo: Repo, content: Content, algorithm: str) -> None:
    """The C{{}} blob pushes like any other."""
    blob = content.using(algorithm).empty_json()
    assert_created(repo, repo.push_blob(blob, "post-put"), blob)
    assert_lifecycle(repo, blob)


# -- cross-repository mounts --------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_mount_from(repo: Repo, repo2: Repo, content: Content, algorithm: str) -> None:
    """C{?mount=&from=} a repository holding the blob: 201 with exactly the blob's path as Location."""
    blob = content.using(algorithm).random_blob(512)
    repo2.push_blob(blob)
    reply = repo.request("POST", f"blobs/uploads/?mount={blob.digest}&from={repo2.name}", b"", {"Content-Length": "0"})
    assert reply.status == 201, reply.describe()
    assert location_path(reply.header("Location")) == repo.path(f"blobs/{blob.digest}")
    assert_created(repo, reply, blob)
    assert_lifecycle(repo, blob)
    assert_lifecycle(repo2, blob)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_mount_without_from(repo: Repo, repo2: Repo, content: Content, algorithm: str) -> None:
    """C{?mount=} without C{from} for a blob the registry holds: 201 (automatic content discovery)."""
    blob = content.using(algorithm).random_blob(512)
    repo2.push_blob(blob)
    reply = repo.request("POST", f"blobs/uploads/?mount={blob.digest}", b"", {"Content-Length": "0"})
    assert reply.status == 201, reply.describe()
    assert_created(repo, reply, blob)
    assert_lifecycle(repo, blob)
    assert_lifecycle(repo2, blob)


def test_mount_without_from_of_missing_blob(repo: Repo, content: Content) -> None:
    """C{?mount=} without C{from} for a digest nobody pushed starts an upload: 202, upload Location."""
    reply = repo.request("POST", f"blobs/uploads/?mount={NEVER_PUSHED}", b"", {"Content-Length": "0"})
    assert reply.status == 202, reply.describe()
    assert location_path(reply.header("Location")).startswith(repo.path("blobs/uploads/"))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_mount_of_missing_blob(repo: Repo, repo2: Repo, content: Content, algorithm: str) -> None:
    """Mounting a blob that exists nowhere is 202 (not 201), and the session it opens works."""
    blob = content.using(algorithm).random_blob(512)
    reply = repo.request("POST", f"blobs/uploads/?mount={blob.digest}&from={repo2.name}", b"", {"Content-Length": "0"})
    assert reply.status == 202, reply.describe()
    location = location_path(reply.header("Location"))
    assert location.startswith(repo.path("blobs/uploads/"))
    assert_created(repo, repo.put_upload(location, blob.digest, blob.data), blob)


def test_mount_into_new_repository(target: Target, repo2: Repo, namespace: str, content: Content) -> None:
    """A mount creates the target repository on the fly (v1.1 uses a new name every run)."""
    blob = content.random_blob(100)
    repo2.push_blob(blob)
    fresh = Repo(target, f"{namespace}/fresh-{content.text(8).lower()}")
    reply = fresh.request("POST", f"blobs/uploads/?mount={blob.digest}&from={repo2.name}", b"", {"Content-Length": "0"})
    assert reply.status == 201, reply.describe()
    assert_blob_reply(fresh.get_blob(blob.digest), blob)


# -- manifest uploads ---------------------------------------------------------------------------


@pytest.fixture
def v11_seed(repo: Repo, content: Content) -> V11Image:
    """The v1.1 push setup: the config and the layer of one image, pushed by POST then PUT."""
    layer = v11_layer(content)
    image = v11_image(content, layer)
    repo.push_blob(image.config, "post-put")
    repo.push_blob(layer, "post-put")
    return image


def test_get_invalid_reference_before_push(repo: Repo) -> None:
    """GET C{.INVALID_MANIFEST_NAME} is 404."""
    assert_error(repo.get_manifest(".INVALID_MANIFEST_NAME", [MANIFEST]), 404)


def test_manifest_to_several_tags(repo: Repo, v11_seed: V11Image) -> None:
    """The same manifest PUT to four tags: 201 and a Location each time; every tag resolves."""
    manifest = v11_seed.manifest
    for tag in ("test0", "test1", "test2", "test3"):
        repo.push_manifest(manifest, tag, chunked=False)
    for tag in ("test0", "test1", "test2", "test3"):
        assert_manifest_reply(repo.get_manifest(tag, [MANIFEST]), manifest)
    assert_manifest_reply(repo.get_manifest(manifest.digest, [MANIFEST]), manifest)


def test_empty_layer_manifest(repo: Repo, v11_seed: V11Image, content: Content) -> None:
    """A manifest with C{layers: []} and no mediaType field is accepted (201 with a Location)."""
    manifest = v11_empty_layer_manifest(content, v11_seed.config)
    assert "mediaType" not in json.loads(manifest.content)
    reply = repo.push_manifest(manifest, "emptylayer", chunked=False)
    assert reply.header("Location")


def test_same_manifest_pushed_twice(repo: Repo, v11_seed: V11Image) -> None:
    """Pushing a manifest again (same tag, same bytes) is 201 again."""
    manifest = v11_seed.manifest
    repo.push_manifest(manifest, "again")
    repo.push_manifest(manifest, "again")
    repo.push_manifest(manifest)


@pytest.mark.parametrize("name", list(DATASETS))
def test_push_dataset(repo: Repo, content: Content, name: str) -> None:
    """Every manifest of a data set goes up by digest, then by tag (201, Location, OCI-Subject),
    and its Location serves it exactly (both Accept lines)."""
    dataset = DATASETS[name](content)
    for blob in dataset.blobs:
        repo.push_blob(blob)
    for manifest in dataset.manifests:
        reply = repo.push_manifest(manifest)
        assert_manifest_reply(repo.request("GET", location_path(reply.header("Location")), headers={"Accept": ACCEPT_BOTH}), manifest)
    for tag, manifest in dataset.tags.items():
        reply = repo.push_manifest(manifest, tag)
        assert_manifest_reply(repo.request("GET", location_path(reply.header("Location")), headers={"Accept": ACCEPT_BOTH}), manifest)


@pytest.mark.parametrize("name", ["image", "index", "large-manifest", "sha512"])
def test_push_manifest_chunked_transfer(chunked_target: Target, repo: Repo, content: Content, name: str) -> None:
    """Manifest PUTs with Transfer-Encoding: chunked (no Content-Length) are read whole."""
    dataset = DATASETS[name](content)
    for blob in dataset.blobs:
        repo.push_blob(blob)
    for manifest in dataset.manifests:
        repo.push_manifest(manifest, chunked=True)
        assert_manifest_reply(repo.get_manifest(manifest.digest), manifest)
    for tag, manifest in dataset.tags.items():
        repo.push_manifest(manifest, tag, chunked=True)


def test_v11_referrers_push(repo: Repo, content: Content) -> None:
    """Referrers with a subject that is not (yet, or ever) pushed are accepted, images and indexes
    alike, and each answer names the subject in OCI-Subject."""
    layer = v11_layer(content)
    subject = v11_image(content, layer)
    missing = v11_image(content, layer)
    referrers = v11_referrers(content, subject.manifest, missing.manifest)
    assert referrers.blobs[0].digest == EMPTY_JSON_DIGEST
    for blob in referrers.blobs:
        repo.push_blob(blob, "post-put")
    for manifest in (referrers.a_config, referrers.a_layer):
        repo.push_manifest(manifest, chunked=False)
    reply = repo.put_manifest(referrers.index, chunked=False)
    assert reply.status == 201, reply.describe()
    assert reply.values("OCI-Subject") == [subject.manifest.digest]
    repo.push_blob(subject.config, "post-put")
    repo.push_blob(layer, "post-put")
    repo.push_manifest(subject.manifest, "tagtest0", chunked=False)
    for manifest in (referrers.b_config, referrers.b_layer, referrers.c_layer):
        repo.push_manifest(manifest, chunked=False)
    assert repo.head_manifest(missing.manifest.digest).status == 404


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_tag_parameters(repo: Repo, content: Content, algorithm: str) -> None:
    """PUT by digest with C{?tag=a&tag=b}: 201 and one OCI-Tag line per tag; each tag resolves."""
    dataset = tag_param_set(content.using(algorithm))
    for blob in dataset.blobs:
        repo.push_blob(blob)
    *children, index = dataset.manifests
    for child in children:
        repo.push_manifest(child)
    tags = [f"tag-param-{algorithm}", f"tag-param-{algorithm}-1", f"tag-param-{algorithm}-2"]
    query = "?" + "&".join(f"tag={t}" for t in tags)
    reply = repo.put_manifest(index, query=query)
    assert reply.status == 201, reply.describe()
    assert_digest_header(reply, index.digest)
    assert sorted(reply.values("OCI-Tag")) == sorted(tags), reply.describe()
    for tag in tags:
        assert_manifest_reply(repo.head_manifest(tag), index, head=True)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bad_digest_manifest(repo: Repo, content: Content, algorithm: str) -> None:
    """A manifest body that does not hash to the digest it is pushed under is 400, and not stored."""
    dataset, body = bad_digest_image(content.using(algorithm))
    for blob in dataset.blobs:
        repo.push_blob(blob)
    good_digest = digest_of(body[:-2], algorithm)
    reply = repo.request("PUT", f"manifests/{good_digest}", body, {"Content-Type": MANIFEST})
    assert_error(reply, 400, ["DIGEST_INVALID"])
    assert repo.head_manifest(good_digest).status == 404
    assert repo.head_manifest(digest_of(body, algorithm)).status == 404


def test_bad_digest_string(repo: Repo, content: Content) -> None:
    """PUT to C{sha256:baddigeststring} with a valid image is 400; GET of it is 400 or 404."""
    dataset = DATASETS["image"](content)
    for blob in dataset.blobs:
        repo.push_blob(blob)
    manifest = dataset.tags["image"]
    assert_error(repo.put_manifest(manifest, "sha256:baddigeststring"), 400)
    assert_error(repo.get_manifest("sha256:baddigeststring"), (400, 404))


def test_invalid_manifest_body(repo: Repo) -> None:
    """A body that is not a manifest at all is 400 MANIFEST_INVALID."""
    reply = repo.request("PUT", "manifests/broken", b"blablabla", {"Content-Type": MANIFEST})
    assert_error(reply, 400, ["MANIFEST_INVALID"])


def test_manifest_with_missing_blob(repo: Repo, content: Content) -> None:
    """A manifest whose layer was never pushed is accepted, or refused as MANIFEST_BLOB_UNKNOWN."""
    dataset = DATASETS["image"](content)
    for blob in dataset.blobs[1:]:
        repo.push_blob(blob)
    reply = repo.put_manifest(dataset.tags["image"], "image")
    if reply.status != 201:
        assert_error(reply, 400, ["MANIFEST_BLOB_UNKNOWN"])


def test_index_with_missing_child(repo: Repo, content: Content) -> None:
    """An index whose child manifest was never pushed is accepted, or refused as MANIFEST_BLOB_UNKNOWN."""
    dataset = DATASETS["index"](content)
    for blob in dataset.blobs:
        repo.push_blob(blob)
    repo.push_manifest(dataset.manifests[0])
    reply = repo.put_manifest(dataset.tags["index"], "index")
    if reply.status != 201:
        assert_error(reply, 400, ["MANIFEST_BLOB_UNKNOWN"])


def test_four_megabyte_manifest(repo: Repo, content: Content) -> None:
    """A manifest of 4,000,000 bytes (the spec's "at least 4 MB") is accepted and served exactly."""
    config = content.image_config([])
    repo.push_blob(config)
    probe = content.image(config.descriptor(), [], annotations={"org.trow.big": ""})
    manifest = content.image(config.descriptor(), [], annotations={"org.trow.big": "M" * (4_000_000 - probe.size)})
    assert manifest.size == 4_000_000
    repo.push_manifest(manifest, "four-mb")
    assert_manifest_reply(repo.get_manifest("four-mb"), manifest)


def test_oversized_manifest(repo: Repo, content: Content) -> None:
    """A manifest over trow's default 4 MiB limit (the spec lets a registry set one) is refused
    with 413 and an OCI error that names the limit, and nothing is stored."""
    config = content.image_config([])
    repo.push_blob(config)
    manifest = content.image(config.descriptor(), [], annotations={"org.trow.big": "B" * (4 * 2**20 + 1024)})
    reply = repo.put_manifest(manifest)
    assert reply.status == 413, reply.describe()
    [error] = reply.json()["errors"]
    assert error["code"] == "SIZE_INVALID" and str(4 * 2**20) in error["message"], error
    assert repo.get_manifest(manifest.digest).status == 404


def test_index_content_type(repo: Repo, content: Content) -> None:
    """An index pushed with the index Content-Type is served with it (HEAD and GET agree)."""
    dataset = DATASETS["index"](content)
    repo.push_dataset(dataset)
    index = dataset.tags["index"]
    assert index.media_type == INDEX
    head = repo.head_manifest("index")
    get = repo.get_manifest("index")
    assert head.values("Content-Type") == get.values("Content-Type") == [INDEX]
    assert head.values("Content-Length") == get.values("Content-Length") == [str(index.size)]
