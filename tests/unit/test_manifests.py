"""trow.registry.manifests: parsing pushed manifests and matching Accept headers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from trow.registry.errors import RegistryError
from trow.registry.manifests import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    ParsedManifest,
    accepts,
    media_type_of,
    parse_manifest,
)
from trow.registry.names import Digest

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def desc(digest: str, media_type: str = LAYER, size: int = 10, **extra: Any) -> dict[str, Any]:
    """A descriptor document."""
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def image(media_type: str | None = OCI_MANIFEST, **extra: Any) -> dict[str, Any]:
    """An image manifest document with config D1 and layer D2."""
    document: dict[str, Any] = {"schemaVersion": 2, "config": desc(D1, OCI_CONFIG), "layers": [desc(D2)]}
    if media_type is not None:
        document["mediaType"] = media_type
    document.update(extra)
    return document


def index(media_type: str | None = OCI_INDEX, **extra: Any) -> dict[str, Any]:
    """An index document with child D3."""
    document: dict[str, Any] = {"schemaVersion": 2, "manifests": [desc(D3, OCI_MANIFEST)]}
    if media_type is not None:
        document["mediaType"] = media_type
    document.update(extra)
    return document


def parse(document: Any, content_type: str | None = None) -> ParsedManifest:
    """Parse C{document} as pushed with C{content_type}."""
    return parse_manifest(json.dumps(document).encode(), content_type)


def invalid(document: Any, content_type: str | None = None) -> RegistryError:
    """Parse and expect MANIFEST_INVALID; return the error."""
    with pytest.raises(RegistryError) as caught:
        parse(document, content_type)
    assert caught.value.code == "MANIFEST_INVALID"
    return caught.value


# -- parse_manifest: what it extracts ----------------------------------------------------------


def test_image_blobs_are_config_then_layers() -> None:
    """An image manifest references its config and layers, in that order, and no children."""
    parsed = parse(image(), OCI_MANIFEST)
    assert [str(d.digest) for d in parsed.blobs] == [D1, D2]
    assert parsed.children == ()
    assert parsed.media_type == OCI_MANIFEST
    assert not parsed.is_index


def test_index_children() -> None:
    """An index references its manifests as children and no blobs."""
    parsed = parse(index(), OCI_INDEX)
    assert [str(d.digest) for d in parsed.children] == [D3]
    assert parsed.blobs == ()
    assert parsed.is_index


def test_docker_types() -> None:
    """Docker v2 manifests and manifest lists parse with their own media types."""
    assert parse(image(DOCKER_MANIFEST), DOCKER_MANIFEST).media_type == DOCKER_MANIFEST
    parsed = parse(index(DOCKER_LIST), DOCKER_LIST)
    assert parsed.media_type == DOCKER_LIST and parsed.is_index


def test_descriptor_fields() -> None:
    """Descriptors carry media type, parsed digest, size and urls."""
    parsed = parse(image(layers=[desc(D2, size=99, urls=["https://example.com/l"])]), OCI_MANIFEST)
    layer = parsed.blobs[1]
    assert layer == Descriptor(LAYER, Digest.parse(D2), 99, ("https://example.com/l",))


def test_subject_is_extracted() -> None:
    """The subject descriptor is returned when present, None when absent."""
    assert parse(image(subject=desc(D3, OCI_MANIFEST)), OCI_MANIFEST).subject == Descriptor(OCI_MANIFEST, Digest.parse(D3), 10)
    assert parse(image(), OCI_MANIFEST).subject is None
    assert parse(image(subject=None), OCI_MANIFEST).subject is None


def test_artifact_type_explicit() -> None:
    """An explicit artifactType wins."""
    assert parse(image(artifactType="application/x.sig"), OCI_MANIFEST).artifact_type == "application/x.sig"


def test_artifact_type_defaults_to_config_for_oci_images() -> None:
    """An OCI image manifest without artifactType reports its config media type."""
    assert parse(image(), OCI_MANIFEST).artifact_type == OCI_CONFIG


def test_artifact_type_of_index_without_one_is_none() -> None:
    """An index has no config to fall back on."""
    assert parse(index(), OCI_INDEX).artifact_type is None
    assert parse(index(artifactType="application/x.b"), OCI_INDEX).artifact_type == "application/x.b"


def test_annotations_are_returned() -> None:
    """Annotations are returned as given."""
    assert parse(image(annotations={"a": "1"}), OCI_MANIFEST).annotations == {"a": "1"}
    assert parse(image(), OCI_MANIFEST).annotations is None


def test_layers_may_be_absent() -> None:
    """An image manifest with no layers key has only its config."""
    document = image()
    del document["layers"]
    assert [str(d.digest) for d in parse(document, OCI_MANIFEST).blobs] == [D1]


# -- parse_manifest: the media type ------------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "application/json", "application/octet-stream"])
def test_generic_content_type_uses_declared_media_type(content_type: str | None) -> None:
    """Without a specific Content-Type, the manifest's own mediaType decides."""
    assert parse(image(DOCKER_MANIFEST), content_type).media_type == DOCKER_MANIFEST


def test_no_type_anywhere_guesses_image() -> None:
    """No Content-Type and no mediaType: an image manifest is taken as OCI manifest."""
    assert parse(image(None)).media_type == OCI_MANIFEST


def test_no_type_anywhere_guesses_index() -> None:
    """No Content-Type and no mediaType: a document with 'manifests' is taken as OCI index."""
    assert parse(index(None)).media_type == OCI_INDEX


def test_content_type_types_a_manifest_without_media_type() -> None:
    """The Content-Type types a manifest that has no mediaType field."""
    assert parse(image(None), DOCKER_MANIFEST).media_type == DOCKER_MANIFEST


def test_content_type_parameters_and_case_are_ignored() -> None:
    """'Application/VND...; charset=utf-8' is the same media type."""
    assert parse(image(), OCI_MANIFEST.upper() + "; charset=utf-8").media_type == OCI_MANIFEST


def test_mismatch_between_content_type_and_media_type() -> None:
    """A mediaType that contradicts the Content-Type is invalid, and the detail names it."""
    error = invalid(image(OCI_MANIFEST), DOCKER_MANIFEST)
    assert error.detail == {"mediaType": OCI_MANIFEST}


@pytest.mark.parametrize(
    "media_type",
    ["application/vnd.docker.distribution.manifest.v1+json", "application/vnd.docker.distribution.manifest.v1+prettyjws"],
)
def test_schema1_is_refused(media_type: str) -> None:
    """Docker schema 1 is refused with a message that says so."""
    error = invalid({"schemaVersion": 1}, media_type)
    assert "schema 1" in error.message


def test_schema1_declared_in_body_is_refused() -> None:
    """Schema 1 named by the body's mediaType is refused as well."""
    invalid({"schemaVersion": 1, "mediaType": "application/vnd.docker.distribution.manifest.v1+json"})


def test_unknown_media_type_is_refused() -> None:
    """A media type that is no manifest type is refused, naming the type."""
    error = invalid(image("application/x.thing"), "application/x.thing")
    assert error.detail == {"mediaType": "application/x.thing"}


def test_non_string_media_type_is_refused() -> None:
    """mediaType must be a string."""
    invalid(image(OCI_MANIFEST) | {"mediaType": 5})


# -- parse_manifest: structure -----------------------------------------------------------------


@pytest.mark.parametrize("body", [b"not json", b"\xff", b"[]", b"1", b"null"])
def test_not_a_json_object(body: bytes) -> None:
    """Bodies that are not a JSON object are invalid."""
    with pytest.raises(RegistryError) as caught:
        parse_manifest(body, OCI_MANIFEST)
    assert caught.value.code == "MANIFEST_INVALID"


@pytest.mark.parametrize("version", [None, 1, 3, "2"])
def test_schema_version_must_be_2(version: Any) -> None:
    """schemaVersion must be 2."""
    document = image()
    document["schemaVersion"] = version
    invalid(document, OCI_MANIFEST)


def test_image_without_config() -> None:
    """An image manifest needs a config."""
    document = image()
    del document["config"]
    invalid(document, OCI_MANIFEST)


def test_index_without_manifests_list() -> None:
    """An index needs a manifests list."""
    invalid({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": {}}, OCI_INDEX)
    invalid({"schemaVersion": 2, "mediaType": OCI_INDEX}, OCI_INDEX)


def test_layers_must_be_a_list() -> None:
    """layers must be a list."""
    invalid(image(layers={"a": 1}), OCI_MANIFEST)


@pytest.mark.parametrize(
    "bad",
    [
        "not an object",
        {"digest": D2, "size": 1},
        {"mediaType": "", "digest": D2, "size": 1},
        {"mediaType": LAYER, "size": 1},
        {"mediaType": LAYER, "digest": "sha256:short", "size": 1},
        {"mediaType": LAYER, "digest": D2},
        {"mediaType": LAYER, "digest": D2, "size": -1},
        {"mediaType": LAYER, "digest": D2, "size": True},
        {"mediaType": LAYER, "digest": D2, "size": 1.5},
        {"mediaType": LAYER, "digest": D2, "size": 1, "urls": "https://x"},
        {"mediaType": LAYER, "digest": D2, "size": 1, "urls": [1]},
    ],
)
def test_bad_layer_descriptor(bad: Any) -> None:
    """Each malformed descriptor field makes the manifest invalid, with a message naming where."""
    error = invalid(image(layers=[bad]), OCI_MANIFEST)
    assert "layers[0]" in error.message


def test_bad_subject_descriptor() -> None:
    """A malformed subject makes the manifest invalid."""
    error = invalid(image(subject={"mediaType": OCI_MANIFEST, "digest": "x", "size": 1}), OCI_MANIFEST)
    assert "subject" in error.message


def test_bad_index_child_descriptor() -> None:
    """A malformed index entry makes the index invalid, naming it."""
    error = invalid(index(manifests=[desc(D1, OCI_MANIFEST), {"mediaType": OCI_MANIFEST}]), OCI_INDEX)
    assert "manifests[1]" in error.message


def test_artifact_type_must_be_a_string() -> None:
    """artifactType must be a string."""
    invalid(image(artifactType=["x"]), OCI_MANIFEST)


@pytest.mark.parametrize("annotations", [["a"], {"a": 1}, "x"])
def test_annotations_must_map_strings_to_strings(annotations: Any) -> None:
    """annotations must be a mapping of strings."""
    invalid(image(annotations=annotations), OCI_MANIFEST)


# -- foreign layers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "media_type, urls, foreign",
    [
        ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", ("https://x",), True),
        ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", ("https://x",), True),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", (), False),
        (LAYER, ("https://x",), False),
    ],
)
def test_foreign_needs_both_type_and_urls(media_type: str, urls: tuple[str, ...], foreign: bool) -> None:
    """Only non-distributable layer types that carry urls are foreign (need not be in the registry)."""
    assert Descriptor(media_type, Digest.parse(D1), 1, urls).foreign is foreign


# -- media_type_of -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [(None, None), ("", None), (" ; x=y", None), ("Application/JSON", "application/json"), (f" {OCI_MANIFEST} ; q=0.5", OCI_MANIFEST)],
)
def test_media_type_of(value: str | None, expected: str | None) -> None:
    """The bare, lower-cased media type of a header value, or None."""
    assert media_type_of(value) == expected


# -- accepts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [""],
        ["*/*"],
        ["application/*"],
        [OCI_MANIFEST],
        [f"{DOCKER_MANIFEST}, {OCI_MANIFEST}"],
        [DOCKER_MANIFEST, OCI_MANIFEST],
        [f"{OCI_MANIFEST};q=0.1"],
        ["application/json"],
        ["text/html, application/json"],
        [DOCKER_MANIFEST, "*/*"],
    ],
)
def test_accepts_yes(headers: list[str]) -> None:
    """Absent Accept, wildcards, the type itself (alone, in a list, on its own line, with
    parameters), and lists naming no manifest type at all, all accept an OCI manifest."""
    assert accepts(headers, OCI_MANIFEST)


@pytest.mark.parametrize(
    "headers",
    [
        [DOCKER_MANIFEST],
        [f"{DOCKER_MANIFEST}, {DOCKER_LIST}"],
        [DOCKER_MANIFEST, OCI_INDEX],
        ["application/json", DOCKER_MANIFEST],
        ["application/vnd.docker.distribution.manifest.v1+prettyjws"],
    ],
)
def test_accepts_no(headers: list[str]) -> None:
    """A list that names manifest types but not the stored one refuses it."""
    assert not accepts(headers, OCI_MANIFEST)


def test_accepts_is_case_insensitive() -> None:
    """Media types compare case-insensitively."""
    assert accepts([OCI_INDEX.upper(), DOCKER_MANIFEST], OCI_INDEX)
