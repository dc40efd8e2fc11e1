"""Pull workflow: blobs and manifests by tag and digest, HEAD and GET, errors and ranges.

The v1.1 shape: two configs, one shared layer, one manifest pushed to a tag and one pushed by
digest, then HEAD/GET of each, 404s for what is missing or malformed. The newer shape: every data
set is read back by tag and by digest with exact Content-Type, Content-Length, digest and bytes,
and blob GET honours single byte ranges.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tests.conformance.conftest import (
    SPEC_ERROR_CODES,
    Repo,
    Target,
    assert_blob_reply,
    assert_error,
    assert_manifest_reply,
)
from tests.conformance.data import (
    DATASETS,
    EMPTY_JSON_DIGEST,
    INDEX,
    MANIFEST,
    Blob,
    Content,
    Manifest,
    digest_of,
    v11_empty_layer_manifest,
    v11_image,
    v11_layer,
)

INVALID_REFERENCE = ".INVALID_MANIFEST_NAME"
NEVER_PUSHED = digest_of(b"hello world")


@dataclass
class Seeded:
    """What the pull setup pushed."""

    configs: list[Blob]
    layer: Blob
    manifests: list[Manifest]
    tag: str


@pytest.fixture
def seeded(repo: Repo, content: Content) -> Seeded:
    """Push two configs and a layer (POST then PUT), one manifest to a tag, one by digest."""
    layer = v11_layer(content)
    images = [v11_image(content, layer) for _ in range(2)]
    for image in images:
        repo.push_blob(image.config, "post-put")
    repo.push_blob(layer, "post-put")
    repo.push_manifest(images[0].manifest, "tagtest0", chunked=False)
    repo.push_manifest(images[1].manifest, chunked=False)
    return Seeded([i.config for i in images], layer, [i.manifest for i in images], "tagtest0")


# -- the base endpoint --------------------------------------------------------------------


def test_base_endpoint(target: Target) -> None:
    """GET /v2/ answers 200 and names the API version (end-1)."""
    reply = target.request("GET", "/v2/")
    assert reply.status == 200, reply.describe()
    assert reply.values("Docker-Distribution-API-Version") == ["registry/2.0"]


# -- blobs ----------------------------------------------------------------------------------


def test_head_missing_blob(repo: Repo, seeded: Seeded) -> None:
    """HEAD of a blob that was never pushed is 404 with no body."""
    reply = repo.head_blob(NEVER_PUSHED)
    assert reply.status == 404, reply.describe()
    assert reply.body == b""


def test_get_missing_blob(repo: Repo, seeded: Seeded) -> None:
    """GET of a blob that was never pushed is 404 BLOB_UNKNOWN."""
    assert_error(repo.get_blob(NEVER_PUSHED), 404, ["BLOB_UNKNOWN"])


@pytest.mark.parametrize("which", ["config0", "config1", "layer"])
def test_head_blob(repo: Repo, seeded: Seeded, which: str) -> None:
    """HEAD of a pushed blob: 200, no body, exact Content-Length and Docker-Content-Digest."""
    blob = {"config0": seeded.configs[0], "config1": seeded.configs[1], "layer": seeded.layer}[which]
    assert_blob_reply(repo.head_blob(blob.digest), blob, head=True)


@pytest.mark.parametrize("which", ["config0", "config1", "layer"])
def test_get_blob(repo: Repo, seeded: Seeded, which: str) -> None:
    """GET of a pushed blob returns exactly its bytes, length and digest."""
    blob = {"config0": seeded.configs[0], "config1": seeded.configs[1], "layer": seeded.layer}[which]
    assert_blob_reply(repo.get_blob(blob.digest), blob)


def test_blob_in_another_repository_is_not_visible(repo: Repo, repo2: Repo, seeded: Seeded) -> None:
    """A blob pushed to one repository is 404 in another until it is pushed or mounted there."""
    assert_error(repo2.get_blob(seeded.layer.digest), 404, ["BLOB_UNKNOWN", "NAME_UNKNOWN"])
    assert repo2.head_blob(seeded.layer.digest).status == 404


@pytest.mark.parametrize("how", ["monolithic", "post-put", "stream"])
def test_empty_blob(repo: Repo, content: Content, how: str) -> None:
    """The 0-byte blob: HEAD and GET say Content-Length: 0 and GET has no body."""
    empty = content.blob(b"")
    repo.push_blob(empty, how)
    assert_blob_reply(repo.head_blob(empty.digest), empty, head=True)
    assert_blob_reply(repo.get_blob(empty.digest), empty)


def test_empty_json_blob(repo: Repo, content: Content) -> None:
    """The C{{}} blob has its well-known digest and reads back as two bytes."""
    blob = content.empty_json()
    assert blob.digest == EMPTY_JSON_DIGEST
    repo.push_blob(blob)
    assert_blob_reply(repo.head_blob(blob.digest), blob, head=True)
    assert_blob_reply(repo.get_blob(blob.digest), blob)


@pytest.mark.parametrize("how", ["monolithic", "post-put"])
def test_sha512_blob(repo: Repo, content: Content, how: str) -> None:
    """A blob pushed under a sha512 digest is served under it, with that digest in the header."""
    blob = content.using("sha512").random_blob(512)
    repo.push_blob(blob, how)
    assert_blob_reply(repo.head_blob(blob.digest), blob, head=True)
    assert_blob_reply(repo.get_blob(blob.digest), blob)


# -- manifests ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_invalid_reference_is_404(repo: Repo, seeded: Seeded, method: str) -> None:
    """A reference that is neither a tag nor a digest is 404 on GET and HEAD, not 400."""
    reply = repo.request(method, f"manifests/{INVALID_REFERENCE}", headers={"Accept": MANIFEST})
    assert_error(reply, 404)


@pytest.mark.parametrize("which", [0, 1])
def test_head_manifest_by_digest(repo: Repo, seeded: Seeded, which: int) -> None:
    """HEAD by digest (pushed by tag or by digest): 200, exact headers, no body."""
    manifest = seeded.manifests[which]
    assert_manifest_reply(repo.head_manifest(manifest.digest, [MANIFEST]), manifest, head=True)


@pytest.mark.parametrize("which", [0, 1])
def test_get_manifest_by_digest(repo: Repo, seeded: Seeded, which: int) -> None:
    """GET by digest returns the pushed bytes exactly, with data and unknown fields intact."""
    manifest = seeded.manifests[which]
    assert_manifest_reply(repo.get_manifest(manifest.digest, [MANIFEST]), manifest)


def test_head_manifest_by_tag(repo: Repo, seeded: Seeded) -> None:
    """HEAD by tag names the tagged manifest's digest."""
    assert_manifest_reply(repo.head_manifest(seeded.tag, [MANIFEST]), seeded.manifests[0], head=True)


def test_get_manifest_by_tag(repo: Repo, seeded: Seeded) -> None:
    """GET by tag returns the tagged manifest."""
    assert_manifest_reply(repo.get_manifest(seeded.tag, [MANIFEST]), seeded.manifests[0])


def test_manifest_with_two_accept_lines(repo: Repo, seeded: Seeded) -> None:
    """Two Accept header lines (index, then image) still get the image manifest."""
    assert_manifest_reply(repo.get_manifest(seeded.tag, [INDEX, MANIFEST]), seeded.manifests[0])
    assert_manifest_reply(repo.head_manifest(seeded.manifests[1].digest, [INDEX, MANIFEST]), seeded.manifests[1], head=True)


def test_index_with_two_accept_lines(repo: Repo, content: Content) -> None:
    """An index is served when the index type is on its own Accept line before the image type."""
    dataset = DATASETS["index"](content)
    repo.push_dataset(dataset)
    index = dataset.tags["index"]
    assert_manifest_reply(repo.get_manifest("index", [INDEX, MANIFEST]), index)
    assert_manifest_reply(repo.head_manifest(index.digest, [MANIFEST, INDEX]), index, head=True)


def test_missing_manifest_digest(repo: Repo, seeded: Seeded, content: Content) -> None:
    """GET and HEAD of a well-formed digest nobody pushed are 404 MANIFEST_UNKNOWN."""
    digest = digest_of(content.text(32).encode())
    assert_error(repo.get_manifest(digest), 404, ["MANIFEST_UNKNOWN"])
    assert repo.head_manifest(digest).status == 404


def test_missing_manifest_tag(repo: Repo, seeded: Seeded, content: Content) -> None:
    """GET and HEAD of a valid tag that does not exist are 404 MANIFEST_UNKNOWN."""
    tag = "missing-" + content.text(20).lower()
    assert_error(repo.get_manifest(tag), 404, ["MANIFEST_UNKNOWN"])
    assert repo.head_manifest(tag).status == 404


def test_manifest_in_unknown_repository(target: Target, namespace: str, content: Content) -> None:
    """A manifest GET in a repository that does not exist is 404."""
    reply = target.request("GET", f"/v2/{namespace}/nothing-here/manifests/latest", headers={"Accept": MANIFEST})
    assert_error(reply, 404, ["MANIFEST_UNKNOWN", "NAME_UNKNOWN"])


def test_malformed_digest_with_body(repo: Repo, seeded: Seeded) -> None:
    """GET C{sha256:totallywrong} (sent with a body, as v1.1 does) is 400 or 404 with a spec code."""
    reply = repo.request(
        "GET", "manifests/sha256:totallywrong", b"blablabla", {"Content-Type": MANIFEST, "Accept": MANIFEST}
    )
    assert_error(reply, (400, 404), sorted(SPEC_ERROR_CODES))


def test_get_bad_digest_string(repo: Repo, seeded: Seeded) -> None:
    """GET C{sha256:baddigeststring} is 400 or 404."""
    assert_error(repo.get_manifest("sha256:baddigeststring"), (400, 404))


def test_errors_carry_api_version(repo: Repo, seeded: Seeded) -> None:
    """Error answers carry Docker-Distribution-API-Version like every other answer."""
    reply = repo.get_blob(NEVER_PUSHED)
    assert reply.values("Docker-Distribution-API-Version") == ["registry/2.0"]


def test_every_answer_names_the_api_version(repo: Repo, seeded: Seeded, content: Content) -> None:
    """Successes, errors and bodiless answers of every endpoint carry Docker-Distribution-API-Version
    (trow's contract, which docker clients use to recognise a v2 registry)."""
    location = repo.open_session()
    replies = [
        repo.request("GET", "/v2/"),
        repo.get_blob(seeded.layer.digest),
        repo.head_blob(NEVER_PUSHED),
        repo.get_blob(seeded.layer.digest, {"Range": "bytes=1-2"}),
        repo.get_blob(seeded.layer.digest, {"Range": "bytes=100000-"}),
        repo.get_manifest(seeded.tag),
        repo.head_manifest(INVALID_REFERENCE),
        repo.start_upload(),
        repo.request("GET", location),
        repo.patch(location, b"abc", "5-7"),
        repo.request("DELETE", location),
        repo.tags(),
        repo.referrers(NEVER_PUSHED),
        repo.request("PUT", "tags/list", b""),
        repo.request("GET", "no/such/endpoint"),
    ]
    for reply in replies:
        assert reply.values("Docker-Distribution-API-Version") == ["registry/2.0"], reply.describe()


def test_manifest_without_media_type_field(repo: Repo, content: Content) -> None:
    """A manifest with no mediaType field is served with the Content-Type it was pushed with."""
    config = content.v11_config()
    repo.push_blob(config)
    manifest = v11_empty_layer_manifest(content, config)
    assert "mediaType" not in json.loads(manifest.content)
    repo.push_manifest(manifest, "emptylayer")
    assert_manifest_reply(repo.get_manifest("emptylayer"), manifest)
    assert_manifest_reply(repo.head_manifest(manifest.digest), manifest, head=True)


# -- every data set, by tag and digest ------------------------------------------------------


@pytest.mark.parametrize("name", list(DATASETS))
def test_pull_dataset(repo: Repo, content: Content, name: str) -> None:
    """HEAD and GET every manifest of a data set by digest and tag, and every pushed blob.

    Blobs that are referenced but never pushed (non-distributable layers) stay 404.
    """
    dataset = DATASETS[name](content)
    repo.push_dataset(dataset)
    for manifest in dataset.manifests:
        assert_manifest_reply(repo.head_manifest(manifest.digest), manifest, head=True)
        assert_manifest_reply(repo.get_manifest(manifest.digest), manifest)
    for tag, manifest in dataset.tags.items():
        assert_manifest_reply(repo.head_manifest(tag), manifest, head=True)
        assert_manifest_reply(repo.get_manifest(tag), manifest)
    for blob in dataset.blobs:
        assert_blob_reply(repo.head_blob(blob.digest), blob, head=True)
        assert_blob_reply(repo.get_blob(blob.digest), blob)
    for blob in dataset.absent:
        assert repo.head_blob(blob.digest).status == 404


# -- ranges ---------------------------------------------------------------------------------

RANGES_206 = [
    ("bytes=500-1499", 500, 1499),
    ("bytes=500-", 500, 2047),
    ("bytes=-500", 1548, 2047),
    ("bytes=2000-5000", 2000, 2047),
]


@pytest.fixture
def ranged(repo: Repo, content: Content) -> Blob:
    """A 2048-byte blob to read ranges of."""
    blob = content.random_blob(2048)
    repo.push_blob(blob)
    return blob


@pytest.mark.parametrize(("header", "first", "last"), RANGES_206, ids=[r[0] for r in RANGES_206])
def test_range_request(repo: Repo, ranged: Blob, header: str, first: int, last: int) -> None:
    """A satisfiable single range is 206 with the slice, its length and its Content-Range."""
    reply = repo.get_blob(ranged.digest, {"Range": header})
    assert reply.status == 206, reply.describe()
    assert reply.body == ranged.data[first : last + 1]
    assert reply.values("Content-Length") == [str(last - first + 1)]
    assert reply.header("Content-Range") in (f"bytes {first}-{last}/2048", f"bytes {first}-{last}/*")


@pytest.mark.parametrize("header", ["bytes=500-0", "bytes=5000-10000"])
def test_unsatisfiable_range(repo: Repo, ranged: Blob, header: str) -> None:
    """An inverted range, or one that starts past the end, is 416."""
    reply = repo.get_blob(ranged.digest, {"Range": header})
    assert reply.status == 416, reply.describe()


def test_range_on_missing_blob(repo: Repo, ranged: Blob) -> None:
    """A range request for a blob that does not exist is still a plain 404."""
    assert_error(repo.get_blob(NEVER_PUSHED, {"Range": "bytes=0-10"}), 404, ["BLOB_UNKNOWN"])
