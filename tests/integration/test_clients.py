"""Real clients against trow: podman and containerd (ctr), pushing, pulling and pulling through the cache.

Every client runs with a store and configuration of its own (see tests/integration/clients.py)
and talks to trow over plain HTTP on 127.0.0.1. The images are the session's C{multi} (one image,
three gzip layers) and C{multiarch} (an OCI index of amd64 and arm64). Cache tests use the
session's upstream (Debian's docker-registry), which trow lists with alias C{up}; which client
asked trow for what is read back from trow's access log, and the upstream's log (with user
agents) shows that no client went around trow.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


from tests.images import OCI_INDEX, OCI_MANIFEST
from tests.integration.clients import (  # noqa: F401 - fixtures
    Access,
    Containerd,
    Podman,
    containerd,
    podman,
    trow_access,
    upstream_agents,
)
from tests.integration.conftest import Images, Skopeo, TrowProcess, assert_same_image, layout_blob
from tests.integration.upstream import (  # noqa: F401 - fixtures
    ALIAS,
    DEADLINE,
    Upstream,
    UpstreamLog,
    assert_clean_log,
    proxy_trow,
    upstream,
    wait_until,
)

ACCEPT_MANIFESTS = ", ".join([OCI_MANIFEST, OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json"])


# -- what the session images hold ---------------------------------------------------------------


def document(images: Images, digest: str) -> dict:
    return dict(json.loads(layout_blob(images.layout, digest).read_bytes()))


def image_blobs(images: Images, manifest_digest: str) -> list[str]:
    """The config and layer digests of one image manifest of the session layout."""
    manifest = document(images, manifest_digest)
    return [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]


def platform_child(images: Images, tag: str, arch: str) -> str:
    """The digest of the C{arch} image manifest of index C{tag}."""
    index = document(images, images.refs[tag]["digest"])
    (digest,) = [m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == arch]
    return str(digest)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def wait_for_blobs(trow: TrowProcess, prefix: str, digests: list[str]) -> list[Access]:
    """Wait until trow's log shows each blob fetched (GET, 200) under C{/v2/<prefix>/blobs/}
    (trow logs a request just after its last byte went out); returns every registry API
    request logged (not the tests' own looks at /status.json)."""

    def missing() -> list[str]:
        served = {a.path for a in trow_access(trow) if a.method == "GET" and a.status == 200}
        return [d for d in digests if f"/v2/{prefix}/blobs/{d}" not in served]

    wait_until(lambda: not missing(), DEADLINE)
    accesses = [a for a in trow_access(trow) if a.path.startswith("/v2/")]
    assert not missing(), f"never served under {prefix}: {missing()}; requests: {accesses}"
    return accesses


# -- podman -------------------------------------------------------------------------------------


def test_podman_push_then_pull_round_trip(trow: TrowProcess, podman: Podman, images: Images) -> None:
    """podman pushes an image from its store to trow (the manifest it pushed is what trow serves,
    byte for byte), then pulls it back into an emptied store: the same image ID (config digest)
    and the manifest digest it pushed, every blob downloaded from trow."""
    config = image_blobs(images, images.refs["multi"]["digest"])[0]
    image_id = podman.pull(images.source("multi"))
    assert "sha256:" + image_id == config

    target = f"{trow.host}/podman/multi:v1"
    podman.run("tag", image_id, target)
    pushed = podman.push(target, target, "--tls-verify=false")

    served = trow.request("GET", "/v2/podman/multi/manifests/v1", headers=[("Accept", ACCEPT_MANIFESTS)])
    assert served.status == 200, served
    assert sha256(served.body) == pushed, "trow serves another manifest than podman pushed"
    assert served.header("Docker-Content-Digest") == pushed
    manifest = json.loads(served.body)
    assert manifest["config"]["digest"] == config
    # podman recompresses the layers it stored uncompressed: other blob digests, same content.
    blobs = [config, *(layer["digest"] for layer in manifest["layers"])]
    assert len(blobs) == 1 + 3

    podman.run("rmi", "--all")
    assert podman.image_ids() == []
    assert podman.pull(target, "--tls-verify=false") == image_id
    pulled = podman.inspect(target)
    assert pulled["Digest"] == pushed
    assert f"{trow.host}/podman/multi@{pushed}" in pulled["RepoDigests"]
    # The push sent no GET: these are the pull's.
    wait_for_blobs(trow, "podman/multi", blobs)
    assert_clean_log(trow)


def test_podman_pulls_through_cache_alias(proxy_trow: TrowProcess, podman: Podman, upstream: Upstream, images: Images) -> None:
    """podman pulls C{<trow>/f/up/<repo>:<tag>}: the upstream's manifest digest and image ID,
    every blob served by trow under the cache path. From the index, C{--platform linux/arm64}
    gets the arm64 image."""
    repo = upstream.image("multi", "clients/podman/multi")
    ref = f"{proxy_trow.host}/f/{ALIAS}/{repo}:multi"
    digest = images.refs["multi"]["digest"]
    blobs = image_blobs(images, digest)

    image_id = podman.pull(ref, "--tls-verify=false")
    assert "sha256:" + image_id == blobs[0]
    assert podman.inspect(ref)["Digest"] == digest
    accesses = wait_for_blobs(proxy_trow, f"f/{ALIAS}/{repo}", blobs)
    assert ("GET", f"/v2/f/{ALIAS}/{repo}/manifests/multi", 200) in [(a.method, a.path, a.status) for a in accesses]

    index_repo = upstream.image("multiarch", "clients/podman/multiarch")
    index_ref = f"{proxy_trow.host}/f/{ALIAS}/{index_repo}:multiarch"
    arm64 = platform_child(images, "multiarch", "arm64")
    arm64_id = podman.pull(index_ref, "--tls-verify=false", "--platform", "linux/arm64")
    assert "sha256:" + arm64_id == image_blobs(images, arm64)[0]
    info = podman.inspect(index_ref)
    assert info["Architecture"] == "arm64"
    assert f"{proxy_trow.host}/f/{ALIAS}/{index_repo}@{images.refs['multiarch']['digest']}" in info["RepoDigests"]
    accesses = wait_for_blobs(proxy_trow, f"f/{ALIAS}/{index_repo}", image_blobs(images, arm64))
    assert ("GET", f"/v2/f/{ALIAS}/{index_repo}/manifests/{arm64}", 200) in [(a.method, a.path, a.status) for a in accesses]


def test_podman_pulls_through_registries_conf_mirror(
    proxy_trow: TrowProcess, podman: Podman, upstream: Upstream, images: Images
) -> None:
    """docs/proxy.md's registries.conf: C{<upstream>/<repo>:<tag>} with a C{[[registry.mirror]]}
    at C{<trow>/f/up}. podman gets the upstream's image from trow; the upstream sees only trow,
    never podman (its user agent names containers/image)."""
    registry = upstream.registry
    repo = upstream.image("multi", "clients/mirror/multi")
    podman.mirror(prefix=registry.host, location=registry.host, mirror=f"{proxy_trow.host}/f/{ALIAS}")
    digest = images.refs["multi"]["digest"]
    blobs = image_blobs(images, digest)
    log = UpstreamLog(registry, proxy_trow)
    mark = log.start

    ref = f"{registry.host}/{repo}:multi"
    assert "sha256:" + podman.pull(ref) == blobs[0]
    assert podman.inspect(ref)["Digest"] == digest
    accesses = wait_for_blobs(proxy_trow, f"f/{ALIAS}/{repo}", blobs)
    assert ("GET", f"/v2/f/{ALIAS}/{repo}/manifests/multi", 200) in [(a.method, a.path, a.status) for a in accesses]
    registry.wait_for(lambda: sum(1 for r in registry.requests(mark) if "/blobs/" in r.path), at_least=len(blobs), log=log)
    seen = upstream_agents(registry, mark)
    assert seen, "the upstream logged no request"
    around = [r for r in seen if r[2].startswith("containers/")]
    assert around == [], f"podman went to the upstream itself: {around}"


# -- containerd ---------------------------------------------------------------------------------


def test_containerd_pulls_and_pushes(
    trow: TrowProcess, containerd: Containerd, skopeo: Skopeo, images: Images, tmp_path: Path
) -> None:
    """ctr pulls (and unpacks, which checks every layer's diff ID) an image and an index that
    skopeo pushed to trow, with their digests; ctr then pushes both under new names, and skopeo
    pulls back exactly the session images: same manifests, configs and layers."""
    skopeo.push(images.source("multi"), trow.ref("ctr/multi:v1"))
    skopeo.push(images.source("multiarch"), trow.ref("ctr/multiarch:v1"), "--all")

    ref = f"{trow.host}/ctr/multi:v1"
    containerd.pull(ref, "--plain-http", "--platform", "linux/amd64")
    digest = images.refs["multi"]["digest"]
    assert containerd.images()[ref].digest == digest
    assert containerd.content(digest) == images.manifest_bytes("multi")

    pushed = f"{trow.host}/ctr/pushed:v2"
    containerd.tag(ref, pushed)
    containerd.push(pushed, "--plain-http")
    skopeo.pull(trow.ref("ctr/pushed:v2"), f"oci:{tmp_path / 'multi'}:v2")
    assert_same_image(images.layout, "multi", tmp_path / "multi", "v2")

    index_ref = f"{trow.host}/ctr/multiarch:v1"
    containerd.pull(index_ref, "--plain-http", "--all-platforms")
    index = containerd.images()[index_ref]
    assert (index.digest, index.media_type) == (images.refs["multiarch"]["digest"], OCI_INDEX)
    assert set(index.platforms.split(",")) == {"linux/amd64", "linux/arm64"}

    pushed_index = f"{trow.host}/ctr/pushed-index:v2"
    containerd.tag(index_ref, pushed_index)
    containerd.push(pushed_index, "--plain-http")
    skopeo.pull(trow.ref("ctr/pushed-index:v2"), f"oci:{tmp_path / 'index'}:v2", "--all")
    assert_same_image(images.layout, "multiarch", tmp_path / "index", "v2")
    assert_clean_log(trow)


def test_containerd_pulls_through_hosts_toml_mirror_with_ns(
    proxy_trow: TrowProcess, containerd: Containerd, upstream: Upstream, images: Images, tmp_path: Path
) -> None:
    """docs/proxy.md's hosts.toml: ctr pulls C{<upstream host:port>/<repo>:<tag>} with trow as the
    mirror host (C{--hosts-dir}, what the CRI plugin's C{config_path} gives kubelet pulls).
    containerd asks trow for every manifest and blob with C{?ns=<upstream host:port>}, trow answers
    each from its cache of that upstream, and the image has the upstream's digest; containerd never
    goes to the upstream itself. Then the arm64 image of an index, the same way."""
    registry = upstream.registry
    repo = upstream.image("multi", "clients/ctr-ns/multi")
    index_repo = upstream.image("multiarch", "clients/ctr-ns/multiarch")
    hosts_dir = tmp_path / "certs.d"
    (hosts_dir / registry.host).mkdir(parents=True)
    (hosts_dir / registry.host / "hosts.toml").write_text(
        f'server = "http://{registry.host}"\n\n'
        f'[host."http://{proxy_trow.host}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )
    digest = images.refs["multi"]["digest"]
    blobs = image_blobs(images, digest)
    log = UpstreamLog(registry, proxy_trow)
    mark = log.start

    ref = f"{registry.host}/{repo}:multi"
    containerd.pull(ref, "--hosts-dir", str(hosts_dir), "--platform", "linux/amd64")
    assert containerd.images()[ref].digest == digest
    assert containerd.content(digest) == images.manifest_bytes("multi")

    accesses = wait_for_blobs(proxy_trow, repo, blobs)
    assert all(a.ns == [registry.host] for a in accesses), f"requests without ns={registry.host}: {accesses}"
    assert all(a.status == 200 for a in accesses), accesses
    manifests = {(a.method, a.path) for a in accesses if "/manifests/" in a.path}
    assert manifests & {("HEAD", f"/v2/{repo}/manifests/multi"), ("GET", f"/v2/{repo}/manifests/multi")}, accesses
    # trow fetched them upstream (the log line comes once the response is complete) ...
    registry.wait_for(lambda: sum(1 for r in registry.requests(mark) if "/blobs/" in r.path), at_least=len(blobs), log=log)
    # ... and containerd did not fall back to the upstream: no request there in its name.
    seen = upstream_agents(registry, mark)
    assert seen, "the upstream logged no request"
    around = [r for r in seen if r[2].startswith("containerd/")]
    assert around == [], f"containerd went to the upstream itself: {around}"

    index_ref = f"{registry.host}/{index_repo}:multiarch"
    containerd.pull(index_ref, "--hosts-dir", str(hosts_dir), "--platform", "linux/arm64")
    assert containerd.images()[index_ref].digest == images.refs["multiarch"]["digest"]
    arm64 = platform_child(images, "multiarch", "arm64")
    accesses = wait_for_blobs(proxy_trow, index_repo, image_blobs(images, arm64))
    assert all(a.ns == [registry.host] and a.status == 200 for a in accesses), accesses
    assert ("GET", f"/v2/{index_repo}/manifests/{arm64}") in {(a.method, a.path) for a in accesses}, accesses
    around = [r for r in upstream_agents(registry, mark) if r[2].startswith("containerd/")]
    assert around == [], f"containerd went to the upstream itself: {around}"
