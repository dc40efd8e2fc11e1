"""Manifests: PUT, GET, HEAD and DELETE on /v2/<name>/manifests/<reference>."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import pytest

from tests.unit.harness import Trow, make_trow
from tests.unit.test_api_misc import (
    API_VERSION,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    SpoolingClient,
    assert_error,
    descriptor,
    fetch,
    image_manifest,
    index_manifest,
    push_blob,
    put_manifest,
    sha256,
    sha512,
)
from trow.api.site import SPOOL_THRESHOLD

UNKNOWN = "sha256:" + "d" * 64


def tags_of(trow: Trow, repo: str) -> list[str]:
    """The repository's tags."""
    r = fetch(trow, "GET", f"/v2/{repo}/tags/list")
    assert r.code == 200, r.body
    return list(r.json()["tags"])


@pytest.fixture
def manifest(trow: Trow) -> bytes:
    """An OCI image manifest whose blobs are in repository r."""
    return image_manifest(trow, "r")


# -- PUT ---------------------------------------------------------------------------------------


def test_put_by_tag_is_201(trow: Trow, manifest: bytes) -> None:
    """PUT by tag answers 201 with Location /v2/<name>/manifests/<digest> and the digest header."""
    r = put_manifest(trow, "r", "v1", manifest)
    digest = sha256(manifest)
    assert r.code == 201, r.body
    assert r.header("Location") == f"/v2/r/manifests/{digest}"
    assert r.header("Docker-Content-Digest") == digest
    assert r.content_length == 0
    assert r.header("Docker-Distribution-API-Version") == API_VERSION


def test_put_by_digest_is_201(trow: Trow, manifest: bytes) -> None:
    """PUT by digest answers 201 with Location and Docker-Content-Digest."""
    digest = sha256(manifest)
    r = put_manifest(trow, "r", digest, manifest)
    assert r.code == 201, r.body
    assert r.header("Location") == f"/v2/r/manifests/{digest}"
    assert r.header("Docker-Content-Digest") == digest


def test_put_by_digest_creates_no_tag(trow: Trow, manifest: bytes) -> None:
    """A manifest pushed by digest alone is untagged."""
    put_manifest(trow, "r", sha256(manifest), manifest)
    assert tags_of(trow, "r") == []


def test_put_with_content_type_parameters(trow: Trow, manifest: bytes) -> None:
    """A Content-Type with parameters is read by its media type; GET answers the bare type."""
    r = put_manifest(trow, "r", "v1", manifest, OCI_MANIFEST + "; charset=utf-8")
    assert r.code == 201, r.body
    assert fetch(trow, "GET", "/v2/r/manifests/v1").header("Content-Type") == OCI_MANIFEST


def test_put_invalid_tag_is_400(trow: Trow, manifest: bytes) -> None:
    """A reference that is neither a digest nor a valid tag is refused with MANIFEST_INVALID."""
    r = put_manifest(trow, "r", ".bad", manifest)
    assert_error(r, 400, "MANIFEST_INVALID")


def test_put_tag_of_129_characters_is_400(trow: Trow, manifest: bytes) -> None:
    """Tags are at most 128 characters."""
    r = put_manifest(trow, "r", "t" * 129, manifest)
    assert_error(r, 400, "MANIFEST_INVALID")


def test_put_tag_of_128_characters_is_accepted(trow: Trow, manifest: bytes) -> None:
    """A 128-character tag is valid."""
    assert put_manifest(trow, "r", "t" * 128, manifest).code == 201


def test_put_invalid_name_is_400(trow: Trow, manifest: bytes) -> None:
    """An invalid repository name is NAME_INVALID."""
    r = put_manifest(trow, "R", "v1", manifest)
    assert_error(r, 400, "NAME_INVALID")


# -- GET and HEAD, byte-exact ------------------------------------------------------------------


@pytest.mark.parametrize("by", ["tag", "digest"])
def test_get_is_byte_exact(trow: Trow, manifest: bytes, by: str) -> None:
    """GET by tag or digest returns exactly the pushed bytes, their digest, type and length."""
    put_manifest(trow, "r", "v1", manifest)
    reference = "v1" if by == "tag" else sha256(manifest)
    r = fetch(trow, "GET", f"/v2/r/manifests/{reference}")
    assert r.code == 200
    assert r.body == manifest
    assert r.header("Content-Type") == OCI_MANIFEST
    assert r.header("Docker-Content-Digest") == sha256(manifest)
    assert r.content_length == len(manifest)


@pytest.mark.parametrize("by", ["tag", "digest"])
def test_head_has_headers_and_no_body(trow: Trow, manifest: bytes, by: str) -> None:
    """HEAD by tag or digest answers 200 with type, digest and exact length, and no body."""
    put_manifest(trow, "r", "v1", manifest)
    reference = "v1" if by == "tag" else sha256(manifest)
    r = fetch(trow, "HEAD", f"/v2/r/manifests/{reference}")
    assert r.code == 200
    assert r.body == b""
    assert r.header("Content-Type") == OCI_MANIFEST
    assert r.header("Docker-Content-Digest") == sha256(manifest)
    assert r.content_length == len(manifest)


def test_unknown_fields_and_formatting_are_kept(trow: Trow) -> None:
    """Unknown fields, key order, whitespace, unicode and descriptor 'data' fields survive: the
    registry stores bytes, never a re-serialisation."""
    config = b"{}"
    push_blob(trow, "r", config)
    body = (
        '{\n  "zzz-unknown": {"nested": [1, 2.50, null]},\n'
        '  "schemaVersion": 2,\n'
        f'  "mediaType": "{OCI_MANIFEST}",\n'
        f'  "config": {{"mediaType": "{OCI_CONFIG}", "digest": "{sha256(config)}", "size": 2, "data": "e30="}},\n'
        '  "layers": [],\n'
        '  "annotations": {"note": "caf\\u00e9 \u2603"}\n}\n'
    ).encode()
    put_manifest(trow, "r", "v1", body)
    r = fetch(trow, "GET", "/v2/r/manifests/v1")
    assert r.body == body
    assert r.header("Docker-Content-Digest") == sha256(body)


def test_get_unknown_tag_is_404(trow: Trow, manifest: bytes) -> None:
    """GET of a tag the repository lacks is 404 MANIFEST_UNKNOWN."""
    put_manifest(trow, "r", "v1", manifest)
    assert_error(fetch(trow, "GET", "/v2/r/manifests/v2"), 404, "MANIFEST_UNKNOWN")


def test_get_unknown_digest_is_404(trow: Trow) -> None:
    """GET of a digest the repository lacks is 404 MANIFEST_UNKNOWN."""
    assert_error(fetch(trow, "GET", f"/v2/r/manifests/{UNKNOWN}"), 404, "MANIFEST_UNKNOWN")


def test_get_invalid_tag_is_404(trow: Trow) -> None:
    """GET of a reference that cannot be a tag, like .INVALID, is 404 MANIFEST_UNKNOWN."""
    assert_error(fetch(trow, "GET", "/v2/r/manifests/.INVALID"), 404, "MANIFEST_UNKNOWN")


def test_unknown_manifest_head_is_404_without_body(trow: Trow) -> None:
    """HEAD of an unknown manifest is 404 with no body."""
    r = fetch(trow, "HEAD", "/v2/r/manifests/nope")
    assert r.code == 404
    assert r.body == b""


def test_manifest_is_only_visible_in_its_repository(trow: Trow, manifest: bytes) -> None:
    """A manifest pushed to r is unknown in another repository, by tag and by digest."""
    put_manifest(trow, "r", "v1", manifest)
    assert fetch(trow, "GET", "/v2/other/manifests/v1").code == 404
    assert fetch(trow, "GET", f"/v2/other/manifests/{sha256(manifest)}").code == 404


# -- media types -------------------------------------------------------------------------------


def _oci_index(trow: Trow) -> bytes:
    """An OCI index over an image manifest already pushed to r."""
    child = image_manifest(trow, "r")
    assert put_manifest(trow, "r", sha256(child), child).code == 201
    return index_manifest([child])


def _docker_list(trow: Trow) -> bytes:
    """A Docker manifest list over a Docker v2 manifest already pushed to r."""
    child = image_manifest(trow, "r", media_type=DOCKER_MANIFEST)
    assert put_manifest(trow, "r", sha256(child), child, DOCKER_MANIFEST).code == 201
    return index_manifest([child], media_type=DOCKER_LIST)


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
def test_each_manifest_type_round_trips(trow: Trow, media_type: str) -> None:
    """OCI manifest, OCI index, Docker v2 manifest and Docker manifest list are stored byte-exact
    and served with the media type they were pushed as."""
    body = {
        OCI_MANIFEST: lambda: image_manifest(trow, "r"),
        OCI_INDEX: lambda: _oci_index(trow),
        DOCKER_MANIFEST: lambda: image_manifest(trow, "r", media_type=DOCKER_MANIFEST),
        DOCKER_LIST: lambda: _docker_list(trow),
    }[media_type]()
    r = put_manifest(trow, "r", "t", body, media_type)
    assert r.code == 201, r.body
    for method in ("GET", "HEAD"):
        got = fetch(trow, method, "/v2/r/manifests/t")
        assert got.header("Content-Type") == media_type
        assert got.content_length == len(body)
    assert fetch(trow, "GET", "/v2/r/manifests/t").body == body


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_MANIFEST])
def test_manifest_without_media_type_field_takes_content_type(trow: Trow, media_type: str) -> None:
    """A manifest with no mediaType field is typed by the Content-Type it was pushed with."""
    document = json.loads(image_manifest(trow, "r", media_type=media_type))
    del document["mediaType"]
    body = json.dumps(document).encode()
    assert put_manifest(trow, "r", "t", body, media_type).code == 201
    assert fetch(trow, "GET", "/v2/r/manifests/t").header("Content-Type") == media_type


def test_index_without_media_type_field_takes_content_type(trow: Trow) -> None:
    """An index with no mediaType field, pushed as an OCI index, is served as one."""
    document = json.loads(_oci_index(trow))
    del document["mediaType"]
    body = json.dumps(document).encode()
    assert put_manifest(trow, "r", "t", body, OCI_INDEX).code == 201
    assert fetch(trow, "GET", "/v2/r/manifests/t").header("Content-Type") == OCI_INDEX


def test_content_type_media_type_mismatch_is_400(trow: Trow, manifest: bytes) -> None:
    """A Content-Type that contradicts the manifest's mediaType is 400 MANIFEST_INVALID."""
    r = put_manifest(trow, "r", "v1", manifest, DOCKER_MANIFEST)
    assert_error(r, 400, "MANIFEST_INVALID")


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe", b"[1, 2]", b'"string"'])
def test_invalid_json_is_400(trow: Trow, body: bytes) -> None:
    """A body that is not a JSON object is 400 MANIFEST_INVALID."""
    assert_error(put_manifest(trow, "r", "v1", body), 400, "MANIFEST_INVALID")


@pytest.mark.parametrize("version", [1, 3, "2", None])
def test_schema_version_other_than_2_is_400(trow: Trow, version: object) -> None:
    """schemaVersion must be the number 2."""
    document = json.loads(image_manifest(trow, "r"))
    document["schemaVersion"] = version
    r = put_manifest(trow, "r", "v1", json.dumps(document).encode())
    assert_error(r, 400, "MANIFEST_INVALID")


@pytest.mark.parametrize(
    "content_type",
    ["application/vnd.docker.distribution.manifest.v1+json", "application/vnd.docker.distribution.manifest.v1+prettyjws"],
)
def test_schema1_is_refused(trow: Trow, content_type: str) -> None:
    """Docker schema 1 manifests are refused with MANIFEST_INVALID."""
    body = json.dumps({"schemaVersion": 1, "name": "r", "tag": "v1", "fsLayers": [], "history": []}).encode()
    r = put_manifest(trow, "r", "v1", body, content_type)
    assert_error(r, 400, "MANIFEST_INVALID")


def test_unknown_media_type_is_refused(trow: Trow) -> None:
    """A manifest type trow does not know is refused with MANIFEST_INVALID."""
    document = json.loads(image_manifest(trow, "r"))
    document["mediaType"] = "application/vnd.example.thing+json"
    body = json.dumps(document).encode()
    r = put_manifest(trow, "r", "v1", body, "application/vnd.example.thing+json")
    assert_error(r, 400, "MANIFEST_INVALID")


def test_image_manifest_without_config_is_400(trow: Trow) -> None:
    """An image manifest must have a config descriptor."""
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()
    assert_error(put_manifest(trow, "r", "v1", body), 400, "MANIFEST_INVALID")


def test_descriptor_with_bad_digest_is_400(trow: Trow) -> None:
    """A descriptor whose digest is malformed makes the manifest invalid."""
    document = json.loads(image_manifest(trow, "r"))
    document["layers"][0]["digest"] = "sha256:short"
    assert_error(put_manifest(trow, "r", "v1", json.dumps(document).encode()), 400, "MANIFEST_INVALID")


def test_invalid_manifest_creates_no_tag(trow: Trow, manifest: bytes) -> None:
    """A refused manifest leaves no tag behind."""
    put_manifest(trow, "r", "good", manifest)
    put_manifest(trow, "r", "bad", b"{broken")
    assert tags_of(trow, "r") == ["good"]


# -- references --------------------------------------------------------------------------------


def test_missing_layer_is_manifest_blob_unknown(trow: Trow) -> None:
    """A layer that is not in the repository is 400 MANIFEST_BLOB_UNKNOWN naming its digest."""
    body = image_manifest(trow, "r", layers=(b"never pushed",), push=False)
    push_blob(trow, "r", b'{"architecture":"amd64","os":"linux"}')
    r = put_manifest(trow, "r", "v1", body)
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert r.json()["errors"][0]["detail"] == [{"digest": sha256(b"never pushed")}]


def test_every_missing_blob_is_named(trow: Trow) -> None:
    """When config and layers are all missing, the detail lists every missing digest."""
    config = b'{"architecture":"amd64","os":"linux"}'
    body = image_manifest(trow, "r", layers=(b"one", b"two"), push=False)
    r = put_manifest(trow, "r", "v1", body)
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    missing = {d["digest"] for d in r.json()["errors"][0]["detail"]}
    assert missing == {sha256(config), sha256(b"one"), sha256(b"two")}


def test_blob_in_another_repository_does_not_count(trow: Trow) -> None:
    """Blobs must be in the manifest's own repository, not merely somewhere in the registry."""
    body = image_manifest(trow, "elsewhere")
    r = put_manifest(trow, "r", "v1", body)
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")


def test_missing_index_child_is_manifest_blob_unknown(trow: Trow) -> None:
    """An index whose child manifest is not in the repository is MANIFEST_BLOB_UNKNOWN."""
    child = image_manifest(trow, "r")
    body = index_manifest([child])
    r = put_manifest(trow, "r", "v1", body, OCI_INDEX)
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert r.json()["errors"][0]["detail"] == [{"digest": sha256(child)}]


def test_index_child_in_another_repository_does_not_count(trow: Trow) -> None:
    """An index child pushed to another repository is missing in this one."""
    child = image_manifest(trow, "elsewhere")
    put_manifest(trow, "elsewhere", sha256(child), child)
    r = put_manifest(trow, "r", "v1", index_manifest([child]), OCI_INDEX)
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")


@pytest.mark.parametrize(
    "layer_type",
    ["application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"],
)
def test_non_distributable_layer_with_urls_needs_no_blob(trow: Trow, layer_type: str) -> None:
    """Foreign layers that carry urls live elsewhere: the manifest is accepted without them."""
    document = json.loads(image_manifest(trow, "r", layers=()))
    document["layers"] = [descriptor(layer_type, b"windows base layer", urls=["https://example.com/layer"])]
    body = json.dumps(document).encode()
    assert put_manifest(trow, "r", "v1", body).code == 201
    assert fetch(trow, "GET", "/v2/r/manifests/v1").body == body


def test_non_distributable_layer_without_urls_needs_its_blob(trow: Trow) -> None:
    """Without urls there is nowhere else to fetch a layer from: it must be in the repository."""
    document = json.loads(image_manifest(trow, "r", layers=()))
    document["layers"] = [descriptor("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", b"x")]
    r = put_manifest(trow, "r", "v1", json.dumps(document).encode())
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")


# -- subject -----------------------------------------------------------------------------------


def test_subject_gives_oci_subject_header(trow: Trow) -> None:
    """A manifest with a subject is answered with OCI-Subject: the subject's digest, which need
    not exist in the registry."""
    subject = {"mediaType": OCI_MANIFEST, "digest": UNKNOWN, "size": 123}
    body = image_manifest(trow, "r", subject=subject)
    r = put_manifest(trow, "r", sha256(body), body)
    assert r.code == 201, r.body
    assert r.header("OCI-Subject") == UNKNOWN


def test_index_with_subject_gives_oci_subject_header(trow: Trow) -> None:
    """An index may carry a subject too, and is answered with OCI-Subject."""
    child = image_manifest(trow, "r")
    put_manifest(trow, "r", sha256(child), child)
    body = index_manifest([child], subject={"mediaType": OCI_MANIFEST, "digest": UNKNOWN, "size": 1})
    r = put_manifest(trow, "r", sha256(body), body, OCI_INDEX)
    assert r.code == 201, r.body
    assert r.header("OCI-Subject") == UNKNOWN


def test_no_subject_no_oci_subject_header(trow: Trow, manifest: bytes) -> None:
    """Without a subject there is no OCI-Subject header."""
    r = put_manifest(trow, "r", "v1", manifest)
    assert r.header("OCI-Subject") is None


def test_subject_with_bad_digest_is_400(trow: Trow) -> None:
    """A subject descriptor with a malformed digest makes the manifest invalid."""
    body = image_manifest(trow, "r", subject={"mediaType": OCI_MANIFEST, "digest": "nope", "size": 1})
    assert_error(put_manifest(trow, "r", "v1", body), 400, "MANIFEST_INVALID")


# -- digests -----------------------------------------------------------------------------------


def test_put_by_digest_mismatch_is_400(trow: Trow, manifest: bytes) -> None:
    """A manifest pushed under a digest its bytes do not hash to is 400 DIGEST_INVALID, and
    neither digest becomes visible."""
    r = put_manifest(trow, "r", UNKNOWN, manifest)
    assert_error(r, 400, "DIGEST_INVALID")
    assert fetch(trow, "HEAD", f"/v2/r/manifests/{UNKNOWN}").code == 404
    assert fetch(trow, "HEAD", f"/v2/r/manifests/{sha256(manifest)}").code == 404


def test_put_by_invalid_digest_is_400(trow: Trow, manifest: bytes) -> None:
    """A malformed digest reference on PUT is DIGEST_INVALID."""
    assert_error(put_manifest(trow, "r", "sha256:abc", manifest), 400, "DIGEST_INVALID")


def test_sha512_manifest_by_digest(trow: Trow, manifest: bytes) -> None:
    """A manifest pushed under its sha512 digest is stored and served under that digest."""
    digest = sha512(manifest)
    r = put_manifest(trow, "r", digest, manifest)
    assert r.code == 201, r.body
    assert r.header("Docker-Content-Digest") == digest
    assert r.header("Location") == f"/v2/r/manifests/{digest}"
    got = fetch(trow, "GET", f"/v2/r/manifests/{digest}")
    assert got.body == manifest
    assert got.header("Docker-Content-Digest") == digest


def test_sha512_manifest_digest_mismatch_is_400(trow: Trow, manifest: bytes) -> None:
    """A sha512 digest its bytes do not hash to is refused."""
    assert_error(put_manifest(trow, "r", sha512(b"other"), manifest), 400, "DIGEST_INVALID")


# -- ?tag= on PUT by digest --------------------------------------------------------------------


def test_tag_parameters_give_one_oci_tag_line_each(trow: Trow, manifest: bytes) -> None:
    """PUT by digest with ?tag=a&tag=b answers one OCI-Tag header line per tag."""
    r = put_manifest(trow, "r", f"{sha256(manifest)}?tag=a&tag=b", manifest)
    assert r.code == 201, r.body
    assert r.headers["oci-tag"] == ["a", "b"]


def test_tag_parameters_all_resolve(trow: Trow, manifest: bytes) -> None:
    """Every tag given as a parameter then resolves to the manifest."""
    put_manifest(trow, "r", f"{sha256(manifest)}?tag=a&tag=b", manifest)
    for tag in ("a", "b"):
        r = fetch(trow, "GET", f"/v2/r/manifests/{tag}")
        assert r.code == 200 and r.body == manifest
    assert tags_of(trow, "r") == ["a", "b"]


def test_invalid_tag_parameter_is_400(trow: Trow, manifest: bytes) -> None:
    """An invalid tag parameter refuses the whole push."""
    r = put_manifest(trow, "r", f"{sha256(manifest)}?tag=ok&tag=-bad", manifest)
    assert_error(r, 400, "MANIFEST_INVALID")
    assert fetch(trow, "HEAD", "/v2/r/manifests/ok").code == 404


def test_tag_parameter_with_trailing_newline_is_400(trow: Trow, manifest: bytes) -> None:
    """'ok\\n' does not match the spec's tag grammar [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}."""
    r = put_manifest(trow, "r", f"{sha256(manifest)}?tag=ok%0A", manifest)
    assert_error(r, 400, "MANIFEST_INVALID")


# -- size limit --------------------------------------------------------------------------------


@pytest.fixture
def small_trow(tmp_path: Path) -> Iterator[Trow]:
    """A trow whose manifest size limit is 2048 bytes."""
    instance = make_trow(str(tmp_path / "small"), max_manifest_size=2048)
    yield instance
    instance.stores.metadata.close()


def _padded(trow: Trow, size: int) -> bytes:
    """A valid manifest of exactly C{size} bytes (JSON allows trailing whitespace)."""
    body = image_manifest(trow, "r")
    assert len(body) <= size
    return body + b" " * (size - len(body))


def test_manifest_over_the_limit_is_413(small_trow: Trow) -> None:
    """A manifest larger than the configured limit is refused with 413 and nothing is stored."""
    body = _padded(small_trow, 2049)
    r = put_manifest(small_trow, "r", "v1", body)
    assert r.code == 413
    assert r.json()["errors"][0]["code"] == "SIZE_INVALID"
    assert fetch(small_trow, "HEAD", "/v2/r/manifests/v1").code == 404


def test_manifest_at_the_limit_is_accepted(small_trow: Trow) -> None:
    """A manifest of exactly the limit is accepted byte-exact."""
    body = _padded(small_trow, 2048)
    assert put_manifest(small_trow, "r", "v1", body).code == 201
    assert fetch(small_trow, "GET", "/v2/r/manifests/v1").body == body


def test_spooled_manifest_over_the_limit_is_413(small_trow: Trow) -> None:
    """A manifest large enough to be spooled to disk is refused with 413 and its spool removed."""
    body = _padded(small_trow, SPOOL_THRESHOLD + 10)
    r = SpoolingClient(small_trow).request("PUT", "/v2/r/manifests/v1", body, {"Content-Type": OCI_MANIFEST})
    assert r.code == 413
    assert os.listdir(small_trow.stores.blobs.tmp_root) == []


def test_spooled_manifest_under_the_limit_is_accepted(trow: Trow) -> None:
    """A manifest over the spool threshold but under the limit is read from its spool, stored
    byte-exact, and leaves no spool file."""
    body = _padded(trow, SPOOL_THRESHOLD + 10)
    client = SpoolingClient(trow)
    r = client.request("PUT", "/v2/r/manifests/v1", body, {"Content-Type": OCI_MANIFEST})
    assert r.code == 201, r.body
    assert client.spooled == 1
    assert fetch(trow, "GET", "/v2/r/manifests/v1").body == body
    assert os.listdir(trow.stores.blobs.tmp_root) == []


# -- Accept ------------------------------------------------------------------------------------


def test_accept_several_header_lines(trow: Trow, manifest: bytes) -> None:
    """Accept sent as several header lines (skopeo style) that include the stored type: 200."""
    put_manifest(trow, "r", "v1", manifest)
    r = fetch(trow, "GET", "/v2/r/manifests/v1", headers={"Accept": [DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST]})
    assert r.code == 200 and r.body == manifest


def test_accept_comma_separated_list(trow: Trow, manifest: bytes) -> None:
    """Accept as one comma-separated list with q-values that includes the stored type: 200."""
    put_manifest(trow, "r", "v1", manifest)
    accept = f"{DOCKER_MANIFEST};q=0.9, {OCI_MANIFEST};q=0.5"
    assert fetch(trow, "GET", "/v2/r/manifests/v1", headers={"Accept": accept}).code == 200


@pytest.mark.parametrize("accept", ["*/*", "application/*", "application/json", f"{DOCKER_MANIFEST}, */*"])
def test_accept_wildcards_and_non_manifest_types_get_the_manifest(trow: Trow, manifest: bytes, accept: str) -> None:
    """Wildcards, and Accept values that name no manifest type at all, get what was pushed."""
    put_manifest(trow, "r", "v1", manifest)
    r = fetch(trow, "GET", "/v2/r/manifests/v1", headers={"Accept": accept})
    assert r.code == 200
    assert r.header("Content-Type") == OCI_MANIFEST


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_accept_without_the_stored_type_is_404(trow: Trow, manifest: bytes, method: str) -> None:
    """An Accept list of manifest types that leaves out the stored one is 404 MANIFEST_UNKNOWN."""
    put_manifest(trow, "r", "v1", manifest)
    r = fetch(trow, method, "/v2/r/manifests/v1", headers={"Accept": [DOCKER_MANIFEST, DOCKER_LIST]})
    assert r.code == 404
    if method == "GET":
        assert r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


# -- tags move; DELETE -------------------------------------------------------------------------


def test_retag_moves_the_tag(trow: Trow) -> None:
    """Pushing another manifest under an existing tag moves the tag; the old one stays by digest."""
    first = image_manifest(trow, "r", layers=(b"one",))
    second = image_manifest(trow, "r", layers=(b"two",))
    put_manifest(trow, "r", "v1", first)
    put_manifest(trow, "r", "v1", second)
    assert fetch(trow, "GET", "/v2/r/manifests/v1").body == second
    assert fetch(trow, "GET", f"/v2/r/manifests/{sha256(first)}").body == first
    assert tags_of(trow, "r") == ["v1"]


def test_delete_by_tag_is_202(trow: Trow, manifest: bytes) -> None:
    """DELETE by tag answers 202."""
    put_manifest(trow, "r", "v1", manifest)
    r = fetch(trow, "DELETE", "/v2/r/manifests/v1")
    assert r.code == 202
    assert r.header("Docker-Distribution-API-Version") == API_VERSION


def test_delete_by_tag_removes_only_the_tag(trow: Trow, manifest: bytes) -> None:
    """After DELETE by tag the tag is gone but the manifest is still there by digest."""
    put_manifest(trow, "r", "v1", manifest)
    put_manifest(trow, "r", "v2", manifest)
    fetch(trow, "DELETE", "/v2/r/manifests/v1")
    assert_error(fetch(trow, "GET", "/v2/r/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    assert fetch(trow, "GET", f"/v2/r/manifests/{sha256(manifest)}").body == manifest
    assert tags_of(trow, "r") == ["v2"]


def test_delete_by_digest_is_202_and_removes_every_tag(trow: Trow, manifest: bytes) -> None:
    """DELETE by digest answers 202, and the manifest and all its tags are gone."""
    put_manifest(trow, "r", "v1", manifest)
    put_manifest(trow, "r", "v2", manifest)
    digest = sha256(manifest)
    assert fetch(trow, "DELETE", f"/v2/r/manifests/{digest}").code == 202
    assert fetch(trow, "HEAD", f"/v2/r/manifests/{digest}").code == 404
    assert fetch(trow, "HEAD", "/v2/r/manifests/v1").code == 404
    assert fetch(trow, "HEAD", "/v2/r/manifests/v2").code == 404
    assert tags_of(trow, "r") == []


def test_deleted_manifest_can_be_pushed_again(trow: Trow, manifest: bytes) -> None:
    """A manifest deleted by digest can be pushed again and is served."""
    put_manifest(trow, "r", "v1", manifest)
    fetch(trow, "DELETE", f"/v2/r/manifests/{sha256(manifest)}")
    assert put_manifest(trow, "r", "v1", manifest).code == 201
    assert fetch(trow, "GET", "/v2/r/manifests/v1").body == manifest


@pytest.mark.parametrize("reference", ["nope", UNKNOWN])
def test_delete_unknown_is_404(trow: Trow, manifest: bytes, reference: str) -> None:
    """DELETE of an unknown tag or digest is 404 MANIFEST_UNKNOWN."""
    put_manifest(trow, "r", "v1", manifest)
    assert_error(fetch(trow, "DELETE", f"/v2/r/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")


def test_delete_tag_twice_is_404(trow: Trow, manifest: bytes) -> None:
    """The second DELETE of a tag finds nothing."""
    put_manifest(trow, "r", "v1", manifest)
    fetch(trow, "DELETE", "/v2/r/manifests/v1")
    assert_error(fetch(trow, "DELETE", "/v2/r/manifests/v1"), 404, "MANIFEST_UNKNOWN")


def test_delete_invalid_digest_is_400(trow: Trow) -> None:
    """DELETE by a malformed digest is DIGEST_INVALID."""
    assert_error(fetch(trow, "DELETE", "/v2/r/manifests/sha256:zz"), 400, "DIGEST_INVALID")


def test_delete_in_one_repository_keeps_the_other(trow: Trow) -> None:
    """Deleting a manifest from one repository leaves the same manifest in another."""
    body = image_manifest(trow, "r")
    image_manifest(trow, "s")
    put_manifest(trow, "r", "v1", body)
    put_manifest(trow, "s", "v1", body)
    fetch(trow, "DELETE", f"/v2/r/manifests/{sha256(body)}")
    assert fetch(trow, "GET", "/v2/s/manifests/v1").body == body

