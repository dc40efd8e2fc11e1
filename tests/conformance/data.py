"""Test content for the conformance workflows, generated fresh for every test.

Everything here is plain data: blobs, manifests and indexes as the exact bytes a client pushes,
with the digests, sizes and referrers descriptors a registry must report back. Nothing talks to
a registry. Content is random (from the test's C{random.Random}), so every run pushes new
digests, as the official suites do, and nothing left over from an earlier run against a live
registry can make a test pass.

Two families of content, both written from the spec and from the checklist of what the OCI
conformance suites send (never from their code):

- the v1.1 family: indented configs with a random author, one small gzip layer, a config
  descriptor carrying C{data} and an unknown field, C{null} unknown fields elsewhere, a manifest
  without C{mediaType} or layers, and the five-plus-one referrers of a subject;
- the newer family (L{DATASETS}): compact JSON, images, indexes, nested and empty indexes,
  artifacts, subjects (present, missing, an index), C{data} fields, non-distributable layers
  whose blobs are never pushed, custom fields, a ~3.9 MB manifest, and an all-sha512 set.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import random
import string
import tarfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
NONDIST_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
EMPTY = "application/vnd.oci.empty.v1+json"
OCTET_STREAM = "application/octet-stream"

# Artifact types of our own (any string of the media type grammar must be accepted).
ARTIFACT_ONE = "application/vnd.trow.conformance.one"
ARTIFACT_TWO = "application/vnd.trow.conformance.two"
SPREAD_A = "application/vnd.trow.test.spread.a"
SPREAD_B = "application/vnd.trow.test.spread.b"
FOOD_STAND = "application/vnd.trow.test.stand"

# The one annotation every v1.1-style referrer carries.
TEST_ANNOTATION = "org.opencontainers.conformance.test"

# The empty JSON object: its digest is fixed by the image spec.
EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

ALGORITHMS = ("sha256", "sha512")


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    """The OCI digest string of C{data}."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def compact(document: Any) -> bytes:
    """JSON the way Go's C{json.Marshal} writes it: no spaces."""
    return json.dumps(document, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Blob:
    """A blob to push (or, for non-distributable layers, to reference and never push)."""

    data: bytes
    media_type: str = OCTET_STREAM
    algorithm: str = "sha256"

    @property
    def digest(self) -> str:
        return digest_of(self.data, self.algorithm)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        """A descriptor of this blob, with extra fields (data, urls, platform...) appended."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Manifest:
    """An image manifest or index as pushed: exact bytes plus what the registry must report.

    @ivar media_type: the Content-Type it is pushed with, and the one it must be served with.
    @ivar subject: the digest its C{subject} names, if any (expected back in C{OCI-Subject}).
    @ivar artifact_type: what the referrers API must say: the C{artifactType} field, else (for
        an image manifest) the config media type, else nothing.
    """

    content: bytes
    media_type: str
    algorithm: str = "sha256"
    subject: str | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None

    @property
    def digest(self) -> str:
        return digest_of(self.content, self.algorithm)

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def is_index(self) -> bool:
        return self.media_type == INDEX

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        """A descriptor of this manifest, to use in an index or as a subject."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}

    def referrer_descriptor(self) -> dict[str, Any]:
        """The descriptor the referrers API must list for this manifest, exactly."""
        descriptor = self.descriptor()
        if self.artifact_type is not None:
            descriptor["artifactType"] = self.artifact_type
        if self.annotations:
            descriptor["annotations"] = dict(self.annotations)
        return descriptor


def random_text(rng: random.Random, length: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    """A random string."""
    return "".join(rng.choice(alphabet) for _ in range(length))


def random_bytes(rng: random.Random, size: int) -> bytes:
    """C{size} random bytes."""
    return rng.randbytes(size)


class Content:
    """Builds blobs and manifests with one digest algorithm from one random source."""

    def __init__(self, rng: random.Random, algorithm: str = "sha256") -> None:
        self.rng = rng
        self.algorithm = algorithm

    def using(self, algorithm: str) -> "Content":
        """The same random source, digesting with C{algorithm}."""
        return Content(self.rng, algorithm)

    def text(self, length: int = 16) -> str:
        return random_text(self.rng, length)

    # Blobs.

    def blob(self, data: bytes, media_type: str = OCTET_STREAM) -> Blob:
        return Blob(data, media_type, self.algorithm)

    def random_blob(self, size: int = 2048, media_type: str = OCTET_STREAM) -> Blob:
        """Random bytes (2048 by default, like the newer suite's blobs)."""
        return self.blob(random_bytes(self.rng, size), media_type)

    def empty_json(self) -> Blob:
        """The C{{}} blob with the empty media type."""
        return self.blob(EMPTY_JSON, EMPTY)

    def tar(self) -> bytes:
        """An uncompressed tar holding one random text file."""
        out = io.BytesIO()
        text = (self.text(64) + "\n").encode() * 4
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
            info = tarfile.TarInfo(f"conformance/{self.text(8)}.txt")
            info.size = len(text)
            info.mtime = 0
            archive.addfile(info, io.BytesIO(text))
        return out.getvalue()

    def layer(self, compressed: bool = True, media_type: str | None = None) -> tuple[Blob, str]:
        """A tar layer (gzip unless told otherwise) and its diff_id."""
        raw = self.tar()
        data = gzip.compress(raw, mtime=0) if compressed else raw
        kind = media_type or (LAYER_GZIP if compressed else LAYER_TAR)
        return self.blob(data, kind), digest_of(raw, self.algorithm)

    def image_config(
        self, diff_ids: Iterable[str], arch: str = "amd64", extra: dict[str, Any] | None = None
    ) -> Blob:
        """A compact image config (newer-suite style)."""
        document: dict[str, Any] = {
            "author": "trow conformance " + self.text(8),
            "architecture": arch,
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        }
        document.update(extra or {})
        return self.blob(compact(document), CONFIG)

    def v11_config(self) -> Blob:
        """A v1.1-style config: tab-indented JSON with a random 16-character author."""
        document = {
            "author": self.text(16),
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
        }
        return self.blob(json.dumps(document, indent="\t").encode(), CONFIG)

    # Manifests.

    def image(
        self,
        config: dict[str, Any],
        layers: list[dict[str, Any]],
        *,
        media_type_field: bool = True,
        artifact_type: str | None = None,
        subject: Manifest | dict[str, Any] | None = None,
        annotations: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Manifest:
        """An image manifest over the given config and layer descriptors."""
        document: dict[str, Any] = {"schemaVersion": 2}
        if media_type_field:
            document["mediaType"] = MANIFEST
        if artifact_type is not None:
            document["artifactType"] = artifact_type
        document["config"] = config
        document["layers"] = layers
        subject_digest = self._subject(document, subject)
        if annotations is not None:
            document["annotations"] = annotations
        document.update(extra or {})
        return Manifest(
            compact(document),
            MANIFEST,
            self.algorithm,
            subject=subject_digest,
            artifact_type=artifact_type if artifact_type is not None else config["mediaType"],
            annotations=annotations,
        )

    def index(
        self,
        children: list[dict[str, Any]],
        *,
        artifact_type: str | None = None,
        subject: Manifest | dict[str, Any] | None = None,
        annotations: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Manifest:
        """An image index over the given child descriptors."""
        document: dict[str, Any] = {"schemaVersion": 2, "mediaType": INDEX}
        if artifact_type is not None:
            document["artifactType"] = artifact_type
        document["manifests"] = children
        subject_digest = self._subject(document, subject)
        if annotations is not None:
            document["annotations"] = annotations
        document.update(extra or {})
        return Manifest(
            compact(document),
            INDEX,
            self.algorithm,
            subject=subject_digest,
            artifact_type=artifact_type,
            annotations=annotations,
        )

    @staticmethod
    def _subject(document: dict[str, Any], subject: Manifest | dict[str, Any] | None) -> str | None:
        if subject is None:
            return None
        descriptor = subject.descriptor() if isinstance(subject, Manifest) else subject
        document["subject"] = descriptor
        return str(descriptor["digest"])


# ------------------------------------------------------------------------------------------
# Data sets: what one workflow pushes, reads, lists and deletes.


@dataclass
class DataSet:
    """Content pushed together, in push order, with what the registry must report about it.

    @ivar blobs: blobs to push first (no duplicates).
    @ivar manifests: manifests in push order: children before parents, subjects before referrers.
    @ivar tags: tag -> manifest, pushed after every manifest was pushed by digest.
    @ivar absent: blobs that manifests reference but that are never pushed (non-distributable).
    """

    name: str
    blobs: list[Blob] = field(default_factory=list)
    manifests: list[Manifest] = field(default_factory=list)
    tags: dict[str, Manifest] = field(default_factory=dict)
    absent: list[Blob] = field(default_factory=list)

    def add_blob(self, blob: Blob) -> Blob:
        if all(b.digest != blob.digest for b in self.blobs):
            self.blobs.append(blob)
        return blob

    def add(self, manifest: Manifest, *tags: str) -> Manifest:
        if all(m.digest != manifest.digest for m in self.manifests):
            self.manifests.append(manifest)
        for tag in tags:
            self.tags[tag] = manifest
        return manifest

    def referrers(self) -> dict[str, list[Manifest]]:
        """Subject digest -> the manifests of this set that refer to it, in push order."""
        found: dict[str, list[Manifest]] = {}
        for manifest in self.manifests:
            if manifest.subject is not None:
                found.setdefault(manifest.subject, []).append(manifest)
        return found

    def simple_image(
        self,
        content: Content,
        layers: int = 2,
        compressed: bool = True,
        arch: str = "amd64",
        **image_kw: Any,
    ) -> Manifest:
        """Add an image with C{layers} fresh tar layers and its config; return the manifest."""
        layer_blobs = [content.layer(compressed) for _ in range(layers)]
        for blob, _ in layer_blobs:
            self.add_blob(blob)
        config = self.add_blob(content.image_config([d for _, d in layer_blobs], arch))
        return content.image(config.descriptor(), [b.descriptor() for b, _ in layer_blobs], **image_kw)


def _image(c: Content) -> DataSet:
    ds = DataSet("image")
    ds.add(ds.simple_image(c), "image")
    return ds


def _image_uncompressed(c: Content) -> DataSet:
    ds = DataSet("image-uncompressed")
    ds.add(ds.simple_image(c, compressed=False), "image-uncompressed")
    return ds


LARGE_ANNOTATIONS = 390
LARGE_ANNOTATION_SIZE = 10_000


def _large_manifest(c: Content) -> DataSet:
    """An image whose manifest is ~3.9 MB of annotations: under the 4 MB the spec asks for."""
    ds = DataSet("large-manifest")
    annotations = {f"org.trow.conformance.large.{i:03d}": "A" * LARGE_ANNOTATION_SIZE for i in range(LARGE_ANNOTATIONS)}
    ds.add(ds.simple_image(c, annotations=annotations), "large-manifest")
    return ds


def _platform(arch: str) -> dict[str, str]:
    return {"architecture": arch, "os": "linux"}


def _index(c: Content) -> DataSet:
    ds = DataSet("index")
    children = [ds.add(ds.simple_image(c, arch=arch)) for arch in ("amd64", "arm64")]
    ds.add(
        c.index([m.descriptor(platform=_platform(a)) for m, a in zip(children, ("amd64", "arm64"))]),
        "index",
    )
    return ds


def _nested_index(c: Content) -> DataSet:
    """An index of two indexes; no descriptor carries a platform."""
    ds = DataSet("nested-index")
    inner = []
    for _ in range(2):
        images = [ds.add(ds.simple_image(c, layers=1, arch=arch)) for arch in ("amd64", "arm64")]
        inner.append(ds.add(c.index([m.descriptor() for m in images])))
    ds.add(c.index([m.descriptor() for m in inner]), "index-of-index")
    return ds


def _empty_index(c: Content) -> DataSet:
    ds = DataSet("empty-index")
    ds.add(c.index([]), "index")
    return ds


def _artifact(c: Content) -> DataSet:
    """An artifact: artifactType set, the empty config, one layer of an arbitrary media type."""
    ds = DataSet("artifact")
    config = ds.add_blob(c.empty_json())
    layer = ds.add_blob(c.random_blob(2048, ARTIFACT_ONE))
    ds.add(c.image(config.descriptor(), [layer.descriptor()], artifact_type=ARTIFACT_ONE), "artifact")
    return ds


def _artifact_index(c: Content) -> DataSet:
    ds = DataSet("artifact-index")
    config = ds.add_blob(c.empty_json())
    children = []
    for _ in range(2):
        layer = ds.add_blob(c.random_blob(2048, ARTIFACT_ONE))
        children.append(ds.add(c.image(config.descriptor(), [layer.descriptor()], artifact_type=ARTIFACT_ONE)))
    ds.add(c.index([m.descriptor() for m in children], artifact_type=ARTIFACT_ONE), "artifact-index")
    return ds


def _artifact_without_layers(c: Content) -> DataSet:
    """The empty blob is both config and only layer."""
    ds = DataSet("artifact-without-layers")
    empty = ds.add_blob(c.empty_json())
    ds.add(c.image(empty.descriptor(), [empty.descriptor()], artifact_type=ARTIFACT_ONE), "artifact-without-layers")
    return ds


def _artifacts_with_subject(c: Content) -> DataSet:
    """An image, and three referrers of it: a plain image, and two artifacts (one annotated)."""
    ds = DataSet("artifacts-with-subject")
    subject = ds.add(ds.simple_image(c), "image")
    ds.add(ds.simple_image(c, layers=1, subject=subject))
    empty = ds.add_blob(c.empty_json())
    one = ds.add_blob(c.random_blob(2048, ARTIFACT_ONE))
    annotations = {"org.opencontainers.conformance": "hello conformance test", f"org.example.{c.text(8).lower()}": c.text(24)}
    ds.add(
        c.image(empty.descriptor(), [one.descriptor()], artifact_type=ARTIFACT_ONE, subject=subject, annotations=annotations),
        "tagged-artifact1",
    )
    two = ds.add_blob(c.random_blob(2048, OCTET_STREAM))
    ds.add(c.image(empty.descriptor(), [two.descriptor()], artifact_type=ARTIFACT_TWO, subject=subject), "tagged-artifact2")
    return ds


def _index_with_subject(c: Content) -> DataSet:
    """The subject is an index; the referrer is an index whose two children also refer to it."""
    ds = DataSet("index-with-subject")
    images = [ds.add(ds.simple_image(c, layers=1, arch=a)) for a in ("amd64", "arm64")]
    subject = ds.add(c.index([m.descriptor(platform=_platform(a)) for m, a in zip(images, ("amd64", "arm64"))]), "index")
    empty = ds.add_blob(c.empty_json())
    children = []
    for _ in range(2):
        layer = ds.add_blob(c.random_blob(2048, ARTIFACT_ONE))
        children.append(ds.add(c.image(empty.descriptor(), [layer.descriptor()], artifact_type=ARTIFACT_ONE, subject=subject)))
    annotations = {"org.opencontainers.conformance": "index referrer", f"org.example.{c.text(8).lower()}": c.text(24)}
    ds.add(
        c.index([m.descriptor() for m in children], artifact_type=ARTIFACT_ONE, subject=subject, annotations=annotations),
        "tagged-artifact",
    )
    return ds


def _missing_subject(c: Content) -> DataSet:
    """An artifact whose subject is never pushed: the registry must accept and list it."""
    ds = DataSet("missing-subject")
    missing = {"mediaType": MANIFEST, "size": 123, "digest": digest_of(b"missing content " + c.text().encode(), c.algorithm)}
    empty = ds.add_blob(c.empty_json())
    layer = ds.add_blob(c.random_blob(2048, ARTIFACT_ONE))
    ds.add(c.image(empty.descriptor(), [layer.descriptor()], artifact_type=ARTIFACT_ONE, subject=missing), "tagged-artifact")
    return ds


def _data_field(c: Content) -> DataSet:
    """Every descriptor embeds its content in C{data}."""
    ds = DataSet("data-field")
    layer, diff_id = c.layer()
    ds.add_blob(layer)
    config = ds.add_blob(c.image_config([diff_id]))

    def embedded(blob: Blob) -> dict[str, Any]:
        return blob.descriptor(data=base64.b64encode(blob.data).decode())

    ds.add(c.image(embedded(config), [embedded(layer)]), "data-field")
    return ds


def _non_distributable(c: Content) -> DataSet:
    """Two non-distributable layers with urls, whose blobs are never pushed, and a normal one."""
    ds = DataSet("non-distributable-layers")
    foreign_gzip, d1 = c.layer(True, NONDIST_GZIP)
    foreign_tar, d2 = c.layer(False, NONDIST_TAR)
    ds.absent.extend([foreign_gzip, foreign_tar])
    normal, d3 = c.layer()
    ds.add_blob(normal)
    config = ds.add_blob(c.image_config([d1, d2, d3]))
    layers = [
        foreign_gzip.descriptor(urls=[f"https://example.invalid/layers/{foreign_gzip.digest}"]),
        foreign_tar.descriptor(urls=[f"https://example.invalid/layers/{foreign_tar.digest}"]),
        normal.descriptor(),
    ]
    ds.add(c.image(config.descriptor(), layers), "non-distributable-image")
    return ds


def _custom_fields(c: Content) -> DataSet:
    """An index, images and configs that each carry an unknown top-level field."""
    ds = DataSet("custom-fields")
    images = []
    for arch in ("amd64", "arm64"):
        layer, diff_id = c.layer()
        ds.add_blob(layer)
        config = ds.add_blob(c.image_config([diff_id], arch, extra={f"org.{c.text(8).lower()}": c.text(12)}))
        images.append(ds.add(c.image(config.descriptor(), [layer.descriptor()], extra={f"org.{c.text(8).lower()}": c.text(12)})))
    ds.add(
        c.index(
            [m.descriptor(platform=_platform(a)) for m, a in zip(images, ("amd64", "arm64"))],
            extra={f"org.{c.text(8).lower()}": c.text(12)},
        ),
        "custom-fields",
    )
    return ds


def _no_layers(c: Content) -> DataSet:
    ds = DataSet("no-layers")
    config = ds.add_blob(c.image_config([]))
    ds.add(c.image(config.descriptor(), []), "no-layers")
    return ds


def _sha512(c: Content) -> DataSet:
    """An index, its images, configs and layers, all digested with sha512, and no tags."""
    c512 = c.using("sha512")
    ds = DataSet("sha512")
    images = [ds.add(ds.simple_image(c512, arch=a)) for a in ("amd64", "arm64")]
    ds.add(c512.index([m.descriptor(platform=_platform(a)) for m, a in zip(images, ("amd64", "arm64"))]))
    return ds


# The newer suite's data sets, in the order it runs them.
DATASETS: dict[str, Callable[[Content], DataSet]] = {
    "image": _image,
    "image-uncompressed": _image_uncompressed,
    "large-manifest": _large_manifest,
    "index": _index,
    "nested-index": _nested_index,
    "empty-index": _empty_index,
    "artifact": _artifact,
    "artifact-index": _artifact_index,
    "artifact-without-layers": _artifact_without_layers,
    "artifacts-with-subject": _artifacts_with_subject,
    "index-with-subject": _index_with_subject,
    "missing-subject": _missing_subject,
    "data-field": _data_field,
    "non-distributable-layers": _non_distributable,
    "custom-fields": _custom_fields,
    "no-layers": _no_layers,
    "sha512": _sha512,
}

TAGGED_DATASETS = [name for name in DATASETS if name != "sha512"]
REFERRER_DATASETS = ["artifacts-with-subject", "index-with-subject", "missing-subject"]


def bad_digest_image(c: Content) -> tuple[DataSet, bytes]:
    """A valid image and, for its digest, a body with two spaces appended (must be refused)."""
    ds = DataSet("bad-digest-image")
    good = ds.simple_image(c, layers=1)
    return ds, good.content + b"  "


def tag_param_set(c: Content) -> DataSet:
    """An index of two images, to push by digest with C{?tag=} parameters."""
    ds = DataSet(f"tag-param-{c.algorithm}")
    images = [ds.add(ds.simple_image(c, layers=1, arch=a)) for a in ("amd64", "arm64")]
    ds.add(c.index([m.descriptor(platform=_platform(a)) for m, a in zip(images, ("amd64", "arm64"))]))
    return ds


# ------------------------------------------------------------------------------------------
# The v1.1 family.


@dataclass
class V11Image:
    """A v1.1-style image: its config, the shared layer, and the manifest."""

    config: Blob
    layer: Blob
    manifest: Manifest


def v11_layer(c: Content) -> Blob:
    """The small tar+gzip layer the v1.1 images share."""
    blob, _ = c.layer(True)
    return blob


def v11_image(c: Content, layer: Blob) -> V11Image:
    """An image whose config descriptor carries C{data} and an unknown field, as v1.1 pushes.

    Every other descriptor carries the unknown field as C{null}: the registry must store all of it
    byte for byte.
    """
    config = c.v11_config()
    config_descriptor = config.descriptor(
        data=base64.b64encode(config.data).decode(),
        newUnspecifiedField=base64.b64encode(b"hello world").decode(),
    )
    manifest = c.image(config_descriptor, [layer.descriptor(newUnspecifiedField=None)])
    return V11Image(config, layer, manifest)


def v11_empty_layer_manifest(c: Content, config: Blob) -> Manifest:
    """An image with C{layers: []} and no C{mediaType} field, pushed as an image manifest."""
    return c.image(config.descriptor(), [], media_type_field=False)


@dataclass
class V11Referrers:
    """The referrers the v1.1 suite pushes: five of one subject, one of a missing subject."""

    blobs: list[Blob]
    a_config: Manifest
    a_layer: Manifest
    index: Manifest
    b_config: Manifest
    b_layer: Manifest
    c_layer: Manifest

    @property
    def of_subject(self) -> list[Manifest]:
        """Every referrer of the main subject."""
        return [self.a_config, self.a_layer, self.index, self.b_config, self.b_layer]


def v11_referrers(c: Content, subject: Manifest, missing_subject: Manifest) -> V11Referrers:
    """Build the v1.1 referrer set.

    - A/B "config" artifacts: the artifact type is the config media type (no artifactType field),
      the config blob is the spread text, the only layer is C{{}};
    - A/B "layer" artifacts: artifactType set, the config is C{{}}, the layer is the spread text;
    - an index artifact over the two A artifacts, with artifactType;
    - C: like the B layer artifact but its subject is never pushed, and it has no annotations.
    Each of the first five has exactly one annotation.
    """
    empty = c.empty_json()
    spread_a = c.blob(b"Peanut butter on a test bagel " + c.text(8).encode(), SPREAD_A)
    spread_b = c.blob(b"Strawberry jam on a test croissant " + c.text(8).encode(), SPREAD_B)

    def note(value: str) -> dict[str, str]:
        return {TEST_ANNOTATION: value}

    a_config = c.image(spread_a.descriptor(), [empty.descriptor()], subject=subject, annotations=note("test config a"))
    b_config = c.image(spread_b.descriptor(), [empty.descriptor()], subject=subject, annotations=note("test config b"))
    a_layer = c.image(
        empty.descriptor(), [spread_a.descriptor()], artifact_type=SPREAD_A, subject=subject, annotations=note("test layer a")
    )
    b_layer = c.image(
        empty.descriptor(), [spread_b.descriptor()], artifact_type=SPREAD_B, subject=subject, annotations=note("test layer b")
    )
    index = c.index(
        [a_config.descriptor(), a_layer.descriptor()], artifact_type=FOOD_STAND, subject=subject, annotations=note("test index")
    )
    c_layer = c.image(empty.descriptor(), [spread_b.descriptor()], artifact_type=SPREAD_B, subject=missing_subject)
    return V11Referrers([empty, spread_a, spread_b], a_config, a_layer, index, b_config, b_layer, c_layer)
