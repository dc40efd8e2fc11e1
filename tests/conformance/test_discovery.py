"""Content discovery workflow: tag listing and the referrers API.

Tags: the full list in byte order, C{n} (exactly n, C{Link} when more exist, n=0 is empty),
C{last} (exclusive, with or without C{n}). Referrers: an empty index for unknown subjects and
repositories, exactly the expected descriptors (artifactType from the manifest, else from its
config for images, else nothing for indexes; annotations copied as they are), the C{artifactType}
filter with C{OCI-Filters-Applied}, subjects that are never pushed, index subjects and index
referrers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from tests.conformance.conftest import (
    Reply,
    Repo,
    Target,
    assert_error,
    assert_exact_referrers,
    location_path,
    referrers_index,
    tag_list,
)
from tests.conformance.data import (
    CONFIG,
    DATASETS,
    INDEX,
    REFERRER_DATASETS,
    SPREAD_A,
    SPREAD_B,
    TAGGED_DATASETS,
    TEST_ANNOTATION,
    Content,
    Manifest,
    V11Referrers,
    digest_of,
    v11_image,
    v11_layer,
    v11_referrers,
)

V11_TAGS = ["test0", "test1", "test2", "test3", "tagtest0"]
_LINK = re.compile(r'^<([^>]+)>\s*;\s*rel="?next"?$')




def next_link(reply: Reply) -> str | None:
    """The path of C{Link: <...>; rel="next"}, or None."""
    links = reply.values("Link")
    if not links:
        return None
    assert len(links) == 1, links
    match = _LINK.match(links[0].strip())
    assert match, f"Link must be <url>; rel=\"next\", got {links[0]!r}"
    return location_path(match.group(1))


def push_tags(repo: Repo, content: Content, tags: list[str]) -> Manifest:
    """Push one small image and tag it with every tag of C{tags}, in the order given."""
    dataset = DATASETS["no-layers"](content)
    for blob in dataset.blobs:
        repo.push_blob(blob)
    manifest = dataset.manifests[0]
    for tag in tags:
        repo.push_manifest(manifest, tag)
    return manifest


# -- tag listing ------------------------------------------------------------------------------


@pytest.fixture
def v11_tagged(repo: Repo, content: Content) -> list[str]:
    """The v1.1 discovery setup: one image under test0..test3 and tagtest0."""
    layer = v11_layer(content)
    image = v11_image(content, layer)
    repo.push_blob(image.config, "post-put")
    repo.push_blob(layer, "post-put")
    for tag in V11_TAGS:
        repo.push_manifest(image.manifest, tag, chunked=False)
    return sorted(V11_TAGS)


def test_list_tags(repo: Repo, v11_tagged: list[str]) -> None:
    """GET tags/list: 200, JSON with the repository name and every tag, sorted."""
    assert tag_list(repo.tags(), repo) == v11_tagged


def test_tags_in_byte_order(repo: Repo, content: Content) -> None:
    """Tags come back in byte order (upper case before lower case, digits before letters)."""
    tags = ["latest", "Zulu", "alpha", "9", "_underscore", "a.b", "a-b", "a_b", "B2", "b10", "b2", "v1.0.0"]
    content.rng.shuffle(tags)
    push_tags(repo, content, tags)
    assert tag_list(repo.tags(), repo) == sorted(tags)


def test_n_returns_exactly_n(repo: Repo, v11_tagged: list[str]) -> None:
    """C{?n=<half>} returns exactly that many tags: the first ones in order."""
    half = len(v11_tagged) // 2
    assert tag_list(repo.tags(f"?n={half}"), repo) == v11_tagged[:half]


def test_n_and_last(repo: Repo, v11_tagged: list[str]) -> None:
    """C{?n=k&last=<k-th tag>} continues right after it."""
    k = 2
    first = tag_list(repo.tags(f"?n={k}"), repo)
    second = tag_list(repo.tags(f"?n={k}&last={first[-1]}"), repo)
    assert second == v11_tagged[k : 2 * k]


def test_link_pages_through_every_tag(repo: Repo, content: Content) -> None:
    """With C{n} smaller than the list, a Link (when sent) leads through every tag exactly once."""
    tags = sorted(f"page-{i:02d}" for i in range(7))
    push_tags(repo, content, tags)
    reply = repo.tags("?n=3")
    seen = tag_list(reply, repo)
    assert seen == tags[:3]
    for _ in range(10):
        link = next_link(reply)
        if link is None:
            break
        reply = repo.request("GET", link)
        seen += tag_list(reply, repo)
    if len(seen) > 3:
        assert seen == tags


def test_no_link_on_last_page(repo: Repo, v11_tagged: list[str]) -> None:
    """When n covers every remaining tag there is no next page to point at."""
    reply = repo.tags(f"?n={len(v11_tagged) + 5}")
    assert tag_list(reply, repo) == v11_tagged
    assert next_link(reply) is None


def test_n_zero(repo: Repo, v11_tagged: list[str]) -> None:
    """C{n=0} is an empty list and no Link."""
    reply = repo.tags("?n=0")
    assert tag_list(reply, repo) == []
    assert reply.values("Link") == []


def test_last_without_n(repo: Repo, v11_tagged: list[str]) -> None:
    """C{?last=} without n returns every tag after it (exclusive) in one answer."""
    last = v11_tagged[len(v11_tagged) // 2 - 1]
    tags = tag_list(repo.tags(f"?last={last}"), repo)
    assert tags == [t for t in v11_tagged if t > last]


def test_last_that_is_not_a_tag(repo: Repo, v11_tagged: list[str]) -> None:
    """C{last} need not name a tag: results start after it in byte order."""
    tags = tag_list(repo.tags("?last=test1a"), repo)
    assert tags == [t for t in v11_tagged if t > "test1a"]


def test_tags_of_unknown_repository(target: Target, namespace: str) -> None:
    """Tags of a repository nobody pushed to: 404 NAME_UNKNOWN, or 200 with no tags."""
    repo = Repo(target, f"{namespace}/never-pushed")
    reply = repo.tags()
    if reply.status == 200:
        assert tag_list(reply, repo) == []
    else:
        assert_error(reply, 404, ["NAME_UNKNOWN"])


@pytest.mark.parametrize("name", TAGGED_DATASETS)
def test_dataset_tags(repo: Repo, content: Content, name: str) -> None:
    """Every tag of a data set is listed; with C{last} at the middle, exactly the later ones follow."""
    dataset = DATASETS[name](content)
    repo.push_dataset(dataset)
    listed = tag_list(repo.tags(), repo)
    assert set(dataset.tags) <= set(listed)
    if len(dataset.tags) >= 2:
        ordered = sorted(dataset.tags)
        last = ordered[len(ordered) // 2 - 1]
        after = tag_list(repo.tags(f"?last={last}"), repo)
        assert all(t > last for t in after), after
        assert {t for t in ordered if t > last} <= set(after)


# -- referrers: shape ---------------------------------------------------------------------------


def test_referrers_of_unknown_subject(repo: Repo, content: Content) -> None:
    """A digest nothing refers to: 200 and an empty image index (schemaVersion 2, mediaType)."""
    repo.push_blob(content.random_blob(10))
    assert referrers_index(repo.referrers(digest_of(b"hello world"))) == []


def test_referrers_in_unknown_repository(target: Target, namespace: str, content: Content) -> None:
    """Referrers in a repository that does not exist: still 200 with an empty index."""
    repo = Repo(target, f"{namespace}/{content.text(10).lower()}")
    assert referrers_index(repo.referrers(digest_of(content.text().encode()))) == []


@pytest.mark.parametrize("digest", ["sha256:nothex", "notadigest", "sha256:" + "a" * 10])
def test_referrers_of_invalid_digest(repo: Repo, digest: str) -> None:
    """A malformed digest is 400."""
    assert_error(repo.referrers(digest), 400)


# -- referrers: the v1.1 set -----------------------------------------------------------------------


@dataclass
class V11Discovery:
    """The v1.1 references setup: a subject, five referrers of it, one of a missing subject."""

    subject: Manifest
    missing_subject: Manifest
    referrers: V11Referrers


@pytest.fixture
def v11_refs(repo: Repo, content: Content) -> V11Discovery:
    """Push referrers A before their subject exists, then the subject, then B and C."""
    layer = v11_layer(content)
    subject = v11_image(content, layer)
    missing = v11_image(content, layer)
    refs = v11_referrers(content, subject.manifest, missing.manifest)
    empty, spread_a, spread_b = refs.blobs
    repo.push_blob(empty, "post-put")
    repo.push_blob(spread_a, "post-put")
    for manifest in (refs.a_config, refs.a_layer, refs.index):
        repo.push_manifest(manifest, chunked=False)
    repo.push_blob(subject.config, "post-put")
    repo.push_blob(layer, "post-put")
    repo.push_manifest(subject.manifest, "tagtest0", chunked=False)
    repo.push_blob(spread_b, "post-put")
    for manifest in (refs.b_config, refs.b_layer, refs.c_layer):
        repo.push_manifest(manifest, chunked=False)
    return V11Discovery(subject.manifest, missing.manifest, refs)


def test_referrers_list(repo: Repo, v11_refs: V11Discovery) -> None:
    """Exactly the five referrers, each with exactly its one annotation and nothing added."""
    reply = repo.referrers(v11_refs.subject.digest)
    assert_exact_referrers(reply, v11_refs.referrers.of_subject)
    for descriptor in referrers_index(reply):
        assert len(descriptor["annotations"]) == 1
        assert TEST_ANNOTATION in descriptor["annotations"]


def test_referrers_artifact_type_rules(repo: Repo, v11_refs: V11Discovery) -> None:
    """artifactType: the field if set, else the config media type (images), else none (indexes)."""
    listed = {d["digest"]: d for d in referrers_index(repo.referrers(v11_refs.subject.digest))}
    refs = v11_refs.referrers
    assert listed[refs.a_config.digest]["artifactType"] == SPREAD_A
    assert listed[refs.b_config.digest]["artifactType"] == SPREAD_B
    assert listed[refs.a_layer.digest]["artifactType"] == SPREAD_A
    assert listed[refs.index.digest]["artifactType"] == refs.index.artifact_type
    assert listed[refs.index.digest]["mediaType"] == INDEX


def test_referrers_filter(repo: Repo, v11_refs: V11Discovery) -> None:
    """C{?artifactType=} keeps the matches (through artifactType or config type) and says so."""
    reply = repo.referrers(v11_refs.subject.digest, SPREAD_A)
    assert reply.values("OCI-Filters-Applied") == ["artifactType"], reply.describe()
    assert_exact_referrers(reply, [v11_refs.referrers.a_config, v11_refs.referrers.a_layer])


def test_referrers_filter_without_match(repo: Repo, v11_refs: V11Discovery) -> None:
    """A filter that matches nothing gives an empty index, still marked as filtered."""
    reply = repo.referrers(v11_refs.subject.digest, "application/vnd.trow.nothing.like.this")
    assert reply.values("OCI-Filters-Applied") == ["artifactType"]
    assert referrers_index(reply) == []


def test_unfiltered_answer_has_no_filter_header(repo: Repo, v11_refs: V11Discovery) -> None:
    """Without a filter, nothing claims one was applied."""
    assert repo.referrers(v11_refs.subject.digest).values("OCI-Filters-Applied") == []


def test_referrers_of_missing_subject(repo: Repo, v11_refs: V11Discovery) -> None:
    """The subject that was never pushed has exactly its one referrer, without annotations."""
    assert repo.head_manifest(v11_refs.missing_subject.digest).status == 404
    assert_exact_referrers(repo.referrers(v11_refs.missing_subject.digest), [v11_refs.referrers.c_layer])


def test_referrers_stay_in_their_repository(repo: Repo, repo2: Repo, v11_refs: V11Discovery) -> None:
    """Referrers are listed per repository: the same subject elsewhere has none."""
    assert referrers_index(repo2.referrers(v11_refs.subject.digest)) == []


def test_referrer_pushed_twice_is_listed_once(repo: Repo, v11_refs: V11Discovery) -> None:
    """A referrer pushed again (here under a tag) is still listed once."""
    repo.push_manifest(v11_refs.referrers.a_layer, "a-layer", chunked=False)
    assert_exact_referrers(repo.referrers(v11_refs.subject.digest), v11_refs.referrers.of_subject)


def test_index_referrer_without_artifact_type(repo: Repo, content: Content) -> None:
    """An index referrer with no artifactType is listed without one (no config to fall back on)."""
    dataset = DATASETS["image"](content)
    repo.push_dataset(dataset)
    subject = dataset.tags["image"]
    referrer = content.index([subject.descriptor()], subject=subject, annotations={"org.trow.note": "plain index"})
    assert referrer.artifact_type is None
    repo.push_manifest(referrer)
    assert_exact_referrers(repo.referrers(subject.digest), [referrer])
    assert "artifactType" not in referrers_index(repo.referrers(subject.digest))[0]


def test_image_referrer_with_empty_artifact_type(repo: Repo, content: Content) -> None:
    """An image referrer whose artifactType is the empty string is listed with its config media type,
    and is found by filtering on that type.

    spec.md, Listing Referrers: "If the artifactType is empty or missing in the image manifest, the
    value of artifactType MUST be set to the config descriptor mediaType value."
    """
    dataset = DATASETS["image"](content)
    repo.push_dataset(dataset)
    subject = dataset.tags["image"]
    empty = content.empty_json()
    repo.push_blob(empty)
    referrer = content.image(empty.descriptor(), [], subject=subject, extra={"artifactType": ""})
    assert referrer.artifact_type == empty.media_type
    repo.push_manifest(referrer)
    assert_exact_referrers(repo.referrers(subject.digest), [referrer])
    assert_exact_referrers(repo.referrers(subject.digest, empty.media_type), [referrer])


def test_index_referrer_with_empty_artifact_type(repo: Repo, content: Content) -> None:
    """An index referrer whose artifactType is the empty string is listed without artifactType."""
    dataset = DATASETS["image"](content)
    repo.push_dataset(dataset)
    subject = dataset.tags["image"]
    referrer = content.index([], subject=subject, extra={"artifactType": ""})
    assert referrer.artifact_type is None
    repo.push_manifest(referrer)
    assert_exact_referrers(repo.referrers(subject.digest), [referrer])


# -- referrers: the newer data sets --------------------------------------------------------------------


@pytest.mark.parametrize("name", REFERRER_DATASETS)
def test_dataset_referrers(repo: Repo, content: Content, name: str) -> None:
    """Each subject of a data set lists exactly its referrers; each artifactType filter keeps exactly
    the matching ones and says it filtered."""
    dataset = DATASETS[name](content)
    repo.push_dataset(dataset)
    for subject, expected in dataset.referrers().items():
        assert_exact_referrers(repo.referrers(subject), expected)
        for artifact_type in {m.artifact_type for m in expected if m.artifact_type is not None}:
            reply = repo.referrers(subject, artifact_type)
            applied = ",".join(reply.values("OCI-Filters-Applied"))
            assert "artifactType" in applied, reply.describe()
            assert_exact_referrers(reply, [m for m in expected if m.artifact_type == artifact_type])


def test_plain_image_referrer_filtered_by_config_type(repo: Repo, content: Content) -> None:
    """A plain image referrer (no artifactType) is found by filtering on the image config type."""
    dataset = DATASETS["artifacts-with-subject"](content)
    repo.push_dataset(dataset)
    subject = dataset.tags["image"].digest
    plain = [m for m in dataset.referrers()[subject] if m.artifact_type == CONFIG]
    assert len(plain) == 1
    assert_exact_referrers(repo.referrers(subject, CONFIG), plain)


def test_index_subject_with_index_referrer(repo: Repo, content: Content) -> None:
    """An index can be a subject, and an index and its children can all refer to it."""
    dataset = DATASETS["index-with-subject"](content)
    repo.push_dataset(dataset)
    subject = dataset.tags["index"]
    expected = dataset.referrers()[subject.digest]
    assert sorted(m.media_type for m in expected) == sorted([INDEX, *(["application/vnd.oci.image.manifest.v1+json"] * 2)])
    assert_exact_referrers(repo.referrers(subject.digest), expected)


def test_sha512_subject(repo: Repo, content: Content) -> None:
    """A subject named by a sha512 digest is found by that digest."""
    dataset = DATASETS["sha512"](content)
    repo.push_dataset(dataset)
    subject = dataset.manifests[-1]
    c512 = content.using("sha512")
    empty = c512.empty_json()
    repo.push_blob(empty)
    referrer = c512.image(empty.descriptor(), [empty.descriptor()], artifact_type=SPREAD_A, subject=subject)
    repo.push_manifest(referrer)
    assert_exact_referrers(repo.referrers(subject.digest), [referrer])
