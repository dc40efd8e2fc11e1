"""Manifest media types and parsing: what a manifest references, its subject and artifact type."""

from __future__ import annotations

import json
from typing import Any

import attrs

from trow.registry.errors import RegistryError
from trow.registry.names import Digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_V1 = ("application/vnd.docker.distribution.manifest.v1+json", "application/vnd.docker.distribution.manifest.v1+prettyjws")

IMAGE_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = IMAGE_TYPES + INDEX_TYPES

# Layers that registries are not expected to hold (foreign / non-distributable).
_FOREIGN_PREFIXES = (
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
    "application/vnd.oci.image.layer.nondistributable.",
)


@attrs.frozen
class Descriptor:
    """A content descriptor inside a manifest."""

    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()

    @property
    def foreign(self) -> bool:
        """Non-distributable content that lives elsewhere (it need not be in the registry)."""
        return bool(self.urls) and self.media_type.startswith(_FOREIGN_PREFIXES)


@attrs.frozen
class ParsedManifest:
    """The parts of a manifest that the registry acts on."""

    media_type: str
    blobs: tuple[Descriptor, ...]
    children: tuple[Descriptor, ...]
    subject: Descriptor | None
    artifact_type: str | None
    annotations: dict[str, str] | None

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def _invalid(message: str, **detail: Any) -> RegistryError:
    return RegistryError("MANIFEST_INVALID", message, detail or None)


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise _invalid(f"{where} must be a descriptor object")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{where}.mediaType must be a non-empty string")
    raw_digest = value.get("digest")
    if not isinstance(raw_digest, str):
        raise _invalid(f"{where}.digest must be a string")
    try:
        digest = Digest.parse(raw_digest)
    except RegistryError as e:
        raise _invalid(f"{where}.digest: {e.message}", digest=raw_digest) from None
    size = value.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise _invalid(f"{where}.size must be a non-negative integer")
    urls = value.get("urls")
    if urls is None:
        urls = []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise _invalid(f"{where}.urls must be a list of strings")
    return Descriptor(media_type, digest, size, tuple(urls))


def media_type_of(content_type: str | None) -> str | None:
    """The bare media type of a Content-Type header value."""
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    """Parse and check a manifest pushed with C{content_type}; raise C{MANIFEST_INVALID} if bad."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise _invalid(f"manifest is not valid JSON: {e}") from None
    if not isinstance(document, dict):
        raise _invalid("manifest must be a JSON object")
    declared = document.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise _invalid("mediaType must be a string")
    media_type = media_type_of(content_type)
    if media_type in (None, "application/json", "application/octet-stream"):
        media_type = declared
        if media_type is None:
            # No type anywhere: guess the way OCI clients expect (an index has "manifests").
            media_type = OCI_INDEX if "manifests" in document else OCI_MANIFEST
    if media_type in DOCKER_V1:
        raise _invalid("Docker schema 1 manifests are deprecated and not supported; push schema 2 or OCI")
    if media_type not in MANIFEST_TYPES:
        raise _invalid(
            f"unsupported manifest media type {media_type!r}; expected one of {', '.join(MANIFEST_TYPES)}",
            mediaType=media_type,
        )
    if declared is not None and declared != media_type:
        raise _invalid(
            f"mediaType {declared!r} in the manifest does not match Content-Type {media_type!r}",
            mediaType=declared,
        )
    if document.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")
    subject = None
    if document.get("subject") is not None:
        subject = _descriptor(document["subject"], "subject")
    artifact_type = document.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid("artifactType must be a string")
    annotations = document.get("annotations")
    if annotations is not None and (
        not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values())
    ):
        raise _invalid("annotations must map strings to strings")

    blobs: list[Descriptor] = []
    children: list[Descriptor] = []
    if media_type in INDEX_TYPES:
        manifests = document.get("manifests")
        if not isinstance(manifests, list):
            raise _invalid("an index must have a manifests list")
        children = [_descriptor(m, f"manifests[{i}]") for i, m in enumerate(manifests)]
    else:
        if "config" not in document:
            raise _invalid("an image manifest must have a config descriptor")
        config = _descriptor(document["config"], "config")
        layers = document.get("layers", [])
        if not isinstance(layers, list):
            raise _invalid("layers must be a list")
        blobs = [config] + [_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(layers)]
        if not artifact_type and media_type == OCI_MANIFEST:
            # The referrers API reports the config media type when artifactType is absent.
            artifact_type = config.media_type
    return ParsedManifest(
        media_type=media_type,
        blobs=tuple(blobs),
        children=tuple(children),
        subject=subject,
        artifact_type=artifact_type or None,
        annotations=annotations,
    )


def accepts(accept_headers: list[str], media_type: str) -> bool:
    """Does a client that sent these C{Accept} headers (repeated or comma-joined) take C{media_type}?

    No Accept header, a wildcard, or a list that names no manifest type at all all mean yes:
    old clients send only C{*/*} or nothing, and they must still get what was pushed.
    """
    offered: set[str] = set()
    for header in accept_headers:
        for part in header.split(","):
            value = media_type_of(part)
            if value:
                offered.add(value)
    if not offered or "*/*" in offered or "application/*" in offered or media_type in offered:
        return True
    return not (offered & set(MANIFEST_TYPES + DOCKER_V1))
