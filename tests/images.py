"""Build OCI image layouts on disk for tests: real images that skopeo can push."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import tarfile
from typing import IO, Any, Iterator, Sequence

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

_MIB = 1 << 20


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


def gzip_layer(files: dict[str, bytes]) -> bytes:
    """A gzip-compressed tar layer holding C{files}, byte-for-byte reproducible (mtime 0).

    Push gzip layers when digests must survive a skopeo push: skopeo compresses uncompressed
    layers on the way to a registry, which changes their digests.
    """
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(layer_tar(files))
    return out.getvalue()


def pseudo_random_chunks(size: int, seed: int = 1, chunk: int = _MIB) -> Iterator[bytes]:
    """C{size} reproducible bytes that gzip cannot shrink, in chunks of at most C{chunk}.

    One random block of C{chunk} bytes is made once and repeated, each copy starting with its own
    counter: deflate's 32 KiB window never sees a repeat, and nothing larger than one chunk is
    ever held in memory.
    """
    block = random.Random(seed).randbytes(chunk)
    sent = 0
    counter = 0
    while sent < size:
        n = min(chunk, size - sent)
        yield (counter.to_bytes(8, "big") + block[8:n])[:n]
        sent += n
        counter += 1


def sha256_file(path: str) -> str:
    """The sha256 digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * _MIB):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class _HashingSink:
    """Write-through file wrapper that counts and hashes what passes through it."""

    def __init__(self, target: IO[bytes] | gzip.GzipFile) -> None:
        self.target = target
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.target.write(data)
        self.hash.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.target.flush()


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

    def big_gzip_layer(self, size: int, seed: int = 1) -> tuple[dict[str, Any], str]:
        """A gzip tar layer holding one file of C{size} pseudo-random bytes, written in chunks.

        The gzip stream uses stored (level 0) deflate blocks, so the layer is about C{size} bytes
        on the wire too and costs no compression time. Returns the layer descriptor and its
        diff_id (the digest of the uncompressed tar).
        """
        tmp = os.path.join(self.path, "blobs", "tmp-big-gz")
        with open(tmp, "wb") as f:
            compressed = _HashingSink(f)
            with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=0, mtime=0) as gz:
                tar = _HashingSink(gz)
                info = tarfile.TarInfo(f"big-{seed}.bin")
                info.size = size
                info.mtime = 0
                tar.write(info.tobuf(format=tarfile.PAX_FORMAT))
                for chunk in pseudo_random_chunks(size, seed):
                    tar.write(chunk)
                tar.write(b"\0" * (-size % tarfile.BLOCKSIZE) + b"\0" * (2 * tarfile.BLOCKSIZE))
        hexdigest = compressed.hash.hexdigest()
        os.rename(tmp, os.path.join(self.path, "blobs", "sha256", hexdigest))
        desc = {"mediaType": OCI_LAYER_GZIP, "digest": "sha256:" + hexdigest, "size": compressed.size}
        return desc, "sha256:" + tar.hash.hexdigest()

    def image(
        self,
        layers: list[bytes],
        tag: str | None = None,
        big: Sequence[int] = (),
        arch: str = "amd64",
        gzip_layers: Sequence[dict[str, bytes]] = (),
        big_gzip: Sequence[int] = (),
    ) -> dict[str, Any]:
        """Write an image manifest (and its config and layers); return its descriptor.

        C{layers} and C{big} are stored uncompressed; C{gzip_layers} (file maps) and C{big_gzip}
        (sizes) become gzip layers, whose digests survive a push with skopeo.
        """
        layer_descs = []
        diff_ids = []
        for data in layers:
            layer_descs.append({"mediaType": OCI_LAYER, "digest": self.blob(data), "size": len(data)})
            diff_ids.append(layer_descs[-1]["digest"])
        for i, size in enumerate(big):
            digest, size = self.big_blob(size, seed=i + 7)
            layer_descs.append({"mediaType": OCI_LAYER, "digest": digest, "size": size})
            diff_ids.append(digest)
        for files in gzip_layers:
            data = gzip_layer(files)
            layer_descs.append({"mediaType": OCI_LAYER_GZIP, "digest": self.blob(data), "size": len(data)})
            diff_ids.append(_digest(layer_tar(files)))
        for i, size in enumerate(big_gzip):
            big_desc, diff_id = self.big_gzip_layer(size, seed=i + 11)
            layer_descs.append(big_desc)
            diff_ids.append(diff_id)
        config = json.dumps(
            {
                "architecture": arch,
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
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
