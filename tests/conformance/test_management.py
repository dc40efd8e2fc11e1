"""Content management workflow: deleting tags, manifests and blobs, and pushing them again.

Deletes are answered 202 and take effect at once: the next HEAD is 404. Deleting a manifest by
digest removes every tag that pointed at it. Blobs can be deleted and pushed again any number of
times (the C{{}} blob is shared by many data sets). Data sets are torn down the way the newer
suite does it: tags, then manifests in reverse push order (referrers before their subjects,
indexes before their children), then blobs.
"""

from __future__ import annotations

import pytest

from tests.conformance.conftest import (
    Reply,
    Repo,
    Target,
    assert_error,
    assert_exact_referrers,
    assert_manifest_reply,
    location_path,
    referrers_index,
    tag_list,
)
from tests.conformance.data import (
    ALGORITHMS,
    DATASETS,
    EMPTY_JSON_DIGEST,
    MANIFEST,
    SPREAD_A,
    Content,
    DataSet,
    digest_of,
    v11_empty_layer_manifest,
    v11_image,
    v11_layer,
    v11_referrers,
)


def tags_or_none(repo: Repo) -> list[str]:
    """The repository's tags; a 404 (the repository is gone or empty) counts as none."""
    reply = repo.tags()
    if reply.status == 404:
        return []
    return tag_list(reply, repo)


def delete_dataset(repo: Repo, dataset: DataSet) -> None:
    """Delete tags, then manifests in reverse push order, then blobs: each 202, then HEAD 404 at once."""
    for tag in dataset.tags:
        reply = repo.delete_manifest(tag)
        assert reply.status == 202, f"DELETE tag {tag}: {reply.describe()}"
        assert repo.head_manifest(tag).status == 404
    for manifest in reversed(dataset.manifests):
        reply = repo.delete_manifest(manifest.digest)
        assert reply.status == 202, f"DELETE manifest {manifest.digest}: {reply.describe()}"
        assert repo.head_manifest(manifest.digest).status == 404
    for blob in dataset.blobs:
        reply = repo.delete_blob(blob.digest)
        assert reply.status == 202, f"DELETE blob {blob.digest}: {reply.describe()}"
        assert repo.head_blob(blob.digest).status == 404


# -- the v1.1 sequence -------------------------------------------------------------------------


def test_v11_management_sequence(repo: Repo, content: Content) -> None:
    """Tag delete (202), manifest delete by digest (202, then 404), the tag list shrinks, blob deletes
    (202) and the config is then 404."""
    layer = v11_layer(content)
    image = v11_image(content, layer)
    repo.push_blob(image.config, "post-put")
    repo.push_blob(layer, "post-put")
    repo.push_manifest(image.manifest, "tagtest0", chunked=False)
    before = len(tag_list(repo.tags(), repo))
    assert repo.delete_manifest("tagtest0").status == 202
    assert repo.delete_manifest(image.manifest.digest).status == 202
    assert repo.get_manifest(image.manifest.digest, [MANIFEST]).status == 404
    assert len(tags_or_none(repo)) < before
    assert repo.delete_blob(image.config.digest).status == 202
    assert repo.delete_blob(layer.digest).status == 202
    assert_error(repo.get_blob(image.config.digest), 404, ["BLOB_UNKNOWN"])


def accepted(reply: Reply, *statuses: int) -> Reply:
    """Assert the reply has one of C{statuses} (2xx when none are given); return it."""
    ok = reply.status in statuses if statuses else 200 <= reply.status < 300
    assert ok, f"expected {statuses or '2xx'}: {reply.describe()}"
    return reply


def test_v11_workflows_in_one_namespace(repo: Repo, repo2: Repo, content: Content) -> None:
    """The v1.1 run end to end in one namespace: pull, push, discovery and management, each with its
    setup and teardown, so that what one workflow leaves (tags, deleted blobs, the shared layer and
    C{tagtest0}) meets the next one as it does in the real suite."""
    layer = v11_layer(content)
    images = [v11_image(content, layer) for _ in range(5)]
    configs = [i.config for i in images]
    manifests = [i.manifest for i in images]

    # Pull.
    for blob in (configs[0], configs[1], layer):
        accepted(repo.push_blob(blob, "post-put"))
    accepted(repo.push_manifest(manifests[0], "tagtest0", chunked=False))
    accepted(repo.push_manifest(manifests[1], chunked=False))
    assert repo.head_blob(configs[0].digest).status == 200
    assert repo.get_manifest("tagtest0", [MANIFEST]).status == 200
    for manifest in manifests[:2]:
        accepted(repo.delete_manifest(manifest.digest))
    for blob in (configs[0], configs[1], layer):
        accepted(repo.delete_blob(blob.digest), 202, 404)

    # Push.
    blob_a = content.random_blob(42)
    accepted(repo.push_blob(blob_a, "stream"), 201)
    assert repo.get_blob(digest_of(b"hello world")).status == 404
    accepted(repo.request("POST", f"blobs/uploads/?digest={configs[1].digest}", configs[1].data), 201)
    assert repo.get_blob(configs[1].digest).status == 200
    accepted(repo.push_blob(configs[1], "post-put"), 201)
    accepted(repo.push_blob(layer, "post-put"), 201)
    accepted(repo2.request("POST", f"blobs/uploads/?mount={digest_of(b'hello world')}", b""), 202)
    mounted = accepted(repo2.request("POST", f"blobs/uploads/?mount={blob_a.digest}&from={repo.name}", b""), 201)
    assert repo2.request("GET", location_path(mounted.header("Location"))).status == 200
    for tag in ("test0", "test1", "test2", "test3"):
        accepted(repo.push_manifest(manifests[1], tag, chunked=False), 201)
    empty_layer = v11_empty_layer_manifest(content, configs[1])
    accepted(repo.push_manifest(empty_layer, "emptylayer", chunked=False), 201)
    accepted(repo.get_manifest(manifests[1].digest, [MANIFEST]), 200)
    accepted(repo.delete_manifest(manifests[1].digest))
    accepted(repo.delete_manifest(empty_layer.digest))
    for blob in (configs[1], layer):
        accepted(repo.delete_blob(blob.digest), 202, 404)

    # Content discovery.
    accepted(repo.push_blob(configs[2], "post-put"))
    accepted(repo.push_blob(layer, "post-put"))
    for tag in ("test0", "test1", "test2", "test3"):
        accepted(repo.push_manifest(manifests[2], tag, chunked=False))
    refs = v11_referrers(content, manifests[4], manifests[3])
    empty, spread_a, spread_b = refs.blobs
    assert empty.digest == EMPTY_JSON_DIGEST
    accepted(repo.push_blob(empty, "post-put"))
    accepted(repo.push_blob(spread_a, "post-put"))
    for manifest in (refs.a_config, refs.a_layer, refs.index):
        accepted(repo.push_manifest(manifest, chunked=False))
    accepted(repo.push_blob(configs[4], "post-put"))
    accepted(repo.push_blob(layer, "post-put"))
    accepted(repo.push_manifest(manifests[4], "tagtest0", chunked=False))
    accepted(repo.push_blob(spread_b, "post-put"))
    for manifest in (refs.b_config, refs.b_layer, refs.c_layer):
        accepted(repo.push_manifest(manifest, chunked=False))
    tags = tag_list(repo.tags(), repo)
    assert tags == ["tagtest0", "test0", "test1", "test2", "test3"]
    half = tag_list(repo.tags(f"?n={len(tags) // 2}"), repo)
    assert len(half) == len(tags) // 2
    assert tag_list(repo.tags(f"?n=2&last={half[-1]}"), repo) == tags[2:4]
    assert referrers_index(repo.referrers(digest_of(b"hello world"))) == []
    assert_exact_referrers(repo.referrers(manifests[4].digest), refs.of_subject)
    assert_exact_referrers(repo.referrers(manifests[4].digest, SPREAD_A), [refs.a_config, refs.a_layer])
    assert_exact_referrers(repo.referrers(manifests[3].digest), [refs.c_layer])
    teardown = [refs.index.digest, manifests[2].digest, manifests[4].digest, refs.a_config.digest, refs.a_layer.digest]
    teardown += ["tagtest0", refs.b_config.digest, refs.b_layer.digest, refs.c_layer.digest]
    for reference in teardown:
        accepted(repo.delete_manifest(reference), 202, 404)
    accepted(repo.delete_blob(configs[2].digest), 202)
    accepted(repo.delete_blob(layer.digest), 202)
    for blob in (configs[4], spread_a, spread_b, empty):
        accepted(repo.delete_blob(blob.digest), 202, 404)

    # Content management.
    accepted(repo.push_blob(configs[3], "post-put"))
    accepted(repo.push_blob(layer, "post-put"))
    accepted(repo.push_manifest(manifests[3], "tagtest0", chunked=False))
    before = len(tag_list(repo.tags(), repo))
    accepted(repo.delete_manifest("tagtest0"), 202)
    accepted(repo.delete_manifest(manifests[3].digest), 202)
    assert repo.get_manifest(manifests[3].digest, [MANIFEST]).status == 404
    assert len(tag_list(repo.tags(), repo)) < before
    accepted(repo.delete_blob(configs[3].digest), 202)
    accepted(repo.delete_blob(layer.digest), 202)
    assert repo.get_blob(configs[3].digest).status == 404


# -- tags ------------------------------------------------------------------------------------------


@pytest.fixture
def tagged(repo: Repo, content: Content) -> DataSet:
    """An image under three tags, and a second image under one."""
    dataset = DATASETS["image"](content)
    other = DATASETS["no-layers"](content)
    for blob in dataset.blobs + other.blobs:
        repo.push_blob(blob)
    image = dataset.tags.pop("image")
    repo.push_manifest(image)
    for tag in ("one", "two", "three"):
        repo.push_manifest(image, tag)
        dataset.tags[tag] = image
    repo.push_manifest(other.manifests[0], "other")
    dataset.tags["other"] = other.manifests[0]
    dataset.manifests.append(other.manifests[0])
    dataset.blobs.extend(other.blobs)
    return dataset


def test_delete_tag(repo: Repo, tagged: DataSet) -> None:
    """DELETE of a tag is 202; the tag is 404 at once; the manifest and other tags stay."""
    image = tagged.tags["one"]
    reply = repo.delete_manifest("one")
    assert reply.status == 202, reply.describe()
    assert repo.head_manifest("one").status == 404
    assert_error(repo.get_manifest("one"), 404, ["MANIFEST_UNKNOWN"])
    assert_manifest_reply(repo.get_manifest(image.digest), image)
    assert_manifest_reply(repo.head_manifest("two"), image, head=True)
    assert tag_list(repo.tags(), repo) == ["other", "three", "two"]


def test_delete_unknown_tag(repo: Repo, tagged: DataSet) -> None:
    """DELETE of a tag that does not exist is 404."""
    assert_error(repo.delete_manifest("no-such-tag"), 404, ["MANIFEST_UNKNOWN"])


def test_delete_tag_twice(repo: Repo, tagged: DataSet) -> None:
    """A tag can only be deleted once."""
    assert repo.delete_manifest("two").status == 202
    assert repo.delete_manifest("two").status == 404


# -- manifests --------------------------------------------------------------------------------------


def test_delete_manifest_removes_its_tags(repo: Repo, tagged: DataSet) -> None:
    """DELETE by digest is 202; the digest and every tag that pointed at it are 404 at once."""
    image = tagged.tags["one"]
    reply = repo.delete_manifest(image.digest)
    assert reply.status == 202, reply.describe()
    assert repo.head_manifest(image.digest).status == 404
    for tag in ("one", "two", "three"):
        assert repo.head_manifest(tag).status == 404
        assert repo.get_manifest(tag).status == 404
    assert tag_list(repo.tags(), repo) == ["other"]
    assert_manifest_reply(repo.get_manifest("other"), tagged.tags["other"])


def test_delete_unknown_manifest(repo: Repo, tagged: DataSet, content: Content) -> None:
    """DELETE of a digest that is not a manifest here is 404."""
    assert_error(repo.delete_manifest(digest_of(content.text().encode())), 404, ["MANIFEST_UNKNOWN"])


def test_delete_manifest_twice(repo: Repo, tagged: DataSet) -> None:
    """A manifest can only be deleted once."""
    digest = tagged.tags["other"].digest
    assert repo.delete_manifest(digest).status == 202
    assert repo.delete_manifest(digest).status == 404


def test_delete_manifest_in_unknown_repository(target: Target, namespace: str, content: Content) -> None:
    """DELETE in a repository that does not exist is 404."""
    repo = Repo(target, f"{namespace}/never-pushed")
    assert_error(repo.delete_manifest(digest_of(content.text().encode())), 404)


def test_delete_manifest_only_in_its_repository(repo: Repo, repo2: Repo, content: Content) -> None:
    """The same manifest in two repositories: deleting it from one leaves the other untouched."""
    dataset = DATASETS["no-layers"](content)
    repo.push_dataset(dataset)
    repo2.push_dataset(dataset)
    manifest = dataset.manifests[0]
    assert repo.delete_manifest(manifest.digest).status == 202
    assert repo.head_manifest("no-layers").status == 404
    assert_manifest_reply(repo2.get_manifest("no-layers"), manifest)


def test_delete_then_repush_manifest(repo: Repo, tagged: DataSet) -> None:
    """A deleted manifest can be pushed again and is served again."""
    image = tagged.tags["one"]
    assert repo.delete_manifest(image.digest).status == 202
    repo.push_manifest(image, "back")
    assert_manifest_reply(repo.get_manifest("back"), image)
    assert_manifest_reply(repo.get_manifest(image.digest), image)


def test_delete_index_before_children(repo: Repo, content: Content) -> None:
    """Deleting an index leaves its children; they can then be deleted too."""
    dataset = DATASETS["index"](content)
    repo.push_dataset(dataset)
    *children, index = dataset.manifests
    assert repo.delete_manifest(index.digest).status == 202
    assert repo.head_manifest("index").status == 404
    for child in children:
        assert_manifest_reply(repo.get_manifest(child.digest), child)
        assert repo.delete_manifest(child.digest).status == 202
        assert repo.head_manifest(child.digest).status == 404


def test_delete_referrers_then_subject(repo: Repo, content: Content) -> None:
    """Deleting a referrer removes it from its subject's list at once; the subject goes last."""
    dataset = DATASETS["artifacts-with-subject"](content)
    repo.push_dataset(dataset)
    subject = dataset.tags["image"]
    remaining = list(dataset.referrers()[subject.digest])
    while remaining:
        gone = remaining.pop()
        assert repo.delete_manifest(gone.digest).status == 202
        assert_exact_referrers(repo.referrers(subject.digest), remaining)
    assert repo.delete_manifest(subject.digest).status == 202
    assert repo.head_manifest("image").status == 404
    assert referrers_index(repo.referrers(subject.digest)) == []


# -- blobs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_delete_blob(repo: Repo, content: Content, algorithm: str) -> None:
    """DELETE of a blob is 202; HEAD and GET are 404 at once; a second DELETE is 404."""
    blob = content.using(algorithm).random_blob(512)
    repo.push_blob(blob)
    reply = repo.delete_blob(blob.digest)
    assert reply.status == 202, reply.describe()
    assert repo.head_blob(blob.digest).status == 404
    assert_error(repo.get_blob(blob.digest), 404, ["BLOB_UNKNOWN"])
    assert_error(repo.delete_blob(blob.digest), 404, ["BLOB_UNKNOWN"])


def test_delete_blob_that_was_never_pushed(repo: Repo, content: Content) -> None:
    """DELETE of a well-formed digest nobody pushed is 404 (or 405), never 400."""
    repo.push_blob(content.random_blob(10))
    reply = repo.delete_blob(digest_of(content.text().encode()))
    assert reply.status in (404, 405), reply.describe()


def test_delete_blob_only_in_its_repository(repo: Repo, repo2: Repo, content: Content) -> None:
    """Deleting a blob from one repository leaves it in another."""
    blob = content.random_blob(100)
    repo.push_blob(blob)
    repo2.push_blob(blob)
    assert repo.delete_blob(blob.digest).status == 202
    assert repo.head_blob(blob.digest).status == 404
    assert repo2.head_blob(blob.digest).status == 200


@pytest.mark.parametrize("how", ["monolithic", "post-put", "stream", "chunked"])
def test_delete_then_repush_blob(repo: Repo, content: Content, how: str) -> None:
    """A deleted blob can be pushed again, any way, and is served again."""
    blob = content.random_blob(300)
    repo.push_blob(blob, how)
    assert repo.delete_blob(blob.digest).status == 202
    assert repo.head_blob(blob.digest).status == 404
    repo.push_blob(blob, how)
    assert repo.get_blob(blob.digest).body == blob.data


def test_empty_json_blob_deleted_and_pushed_repeatedly(repo: Repo, content: Content) -> None:
    """The shared C{{}} blob survives many delete-and-push rounds."""
    empty = content.empty_json()
    for how in ("monolithic", "post-put", "stream", "monolithic"):
        repo.push_blob(empty, how)
        assert repo.head_blob(empty.digest).status == 200
        assert repo.delete_blob(empty.digest).status == 202
        assert repo.head_blob(empty.digest).status == 404


# -- whole data sets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DATASETS))
def test_delete_dataset(repo: Repo, content: Content, name: str) -> None:
    """A data set is torn down tag by tag, manifest by manifest, blob by blob, each at once."""
    dataset = DATASETS[name](content)
    repo.push_dataset(dataset)
    delete_dataset(repo, dataset)
    assert set(dataset.tags).isdisjoint(tags_or_none(repo))


def test_every_dataset_in_one_repository(repo: Repo, content: Content) -> None:
    """The newer suite's run: each data set in turn in the same repository (same tags, shared
    blobs): push, read, list referrers, delete, and the next one starts clean."""
    for name, make in DATASETS.items():
        dataset = make(content)
        repo.push_dataset(dataset)
        for tag, manifest in dataset.tags.items():
            assert_manifest_reply(repo.head_manifest(tag), manifest, head=True)
        for subject, referrers in dataset.referrers().items():
            assert_exact_referrers(repo.referrers(subject), referrers)
        delete_dataset(repo, dataset)
        assert tags_or_none(repo) == [], name
