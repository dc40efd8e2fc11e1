"""Build OCI image layouts on disk for tests: real images that skopeo can push."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar layer holding C{files}."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


class Layout:
    """An OCI image layout directory being written."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        self.index: list[dict[str, Any]] = []

    def blob(self, data: bytes) -> str:
        digest = _digest(data)
        with open(os.path.join(self.path, "blobs", "sha256", digest.split(":")[1]), "wb") as f:
            f.write(data)
        return digest

    def big_blob(self, size: int, seed: int = 1) -> tuple[str, int]:
        """A layer of C{size} pseudo-random bytes written in chunks (never whole in memory)."""
        h = hashlib.sha256()
        tmp = os.path.join(self.path, "blobs", "tmp-big")
        block = hashlib.sha256(str(seed).encode()).digest() * 32768  # 1 MiB
        with open(tmp, "wb") as f:
            written = 0
            counter = 0
            while written < size:
                chunk = (counter.to_bytes(8, "big") + block)[: min(len(block), size - written)]
                f.write(chunk)
                h.update(chunk)
                written += len(chunk)
                counter += 1
        digest = "sha256:" + h.hexdigest()
        os.rename(tmp, os.path.join(self.path, "blobs", "sha256", h.hexdigest()))
        return digest, size

    def image(self, layers: list[bytes], tag: str | None = None, big: list[int] = (), arch: str = "amd64") -> dict[str, Any]:
        """Write an image manifest (and its config and layers); return its descriptor."""
        layer_descs = []
        for data in layers:
            layer_descs.append({"mediaType": OCI_LAYER, "digest": self.blob(data), "size": len(data)})
        for i, size in enumerate(big):
            digest, size = self.big_blob(size, seed=i + 7)
            layer_descs.append({"mediaType": OCI_LAYER, "digest": digest, "size": size})
        config = json.dumps(
            {
                "architecture": arch,
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layer_descs]},
                "config": {},
            }
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": self.blob(config), "size": len(config)},
                "layers": layer_descs,
            }
        ).encode()
        desc: dict[str, Any] = {
            "mediaType": OCI_MANIFEST,
            "digest": self.blob(manifest),
            "size": len(manifest),
            "platform": {"architecture": arch, "os": "linux"},
        }
        if tag:
            self.add_ref(desc, tag)
        return desc

    def image_index(self, children: list[dict[str, Any]], tag: str) -> dict[str, Any]:
        """Write an index over C{children} and tag it."""
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}).encode()
        desc = {"mediaType": OCI_INDEX, "digest": self.blob(index), "size": len(index)}
        self.add_ref(desc, tag)
        return desc

    def add_ref(self, desc: dict[str, Any], tag: str) -> None:
        entry = dict(desc)
        entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self.index.append(entry)
        with open(os.path.join(self.path, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": self.index}, f)
