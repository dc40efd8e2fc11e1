"""Content discovery: tags list, _catalog and the referrers API, with Link pagination."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

import trow.registry.service as service
from tests.unit.harness import Client, Trow, make_trow, result_of
from tests.unit.test_auth_helpers import RecordingWorker, bcrypt_hash, fake_clock, write_file
from trow.api.auth import AuthAPI
from trow.api.registry import RegistryAPI
from trow.auth.service import Authenticator
from trow.config import config_from_dict
from tests.unit.test_api_misc import (
    Fetched,
    OCI_INDEX,
    OCI_MANIFEST,
    assert_error,
    descriptor,
    fetch,
    image_manifest,
    index_manifest,
    push_blob,
    put_manifest,
    sha256,
)

EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
SUBJECT_DIGEST = "sha256:" + "e" * 64
SUBJECT = {"mediaType": OCI_MANIFEST, "digest": SUBJECT_DIGEST, "size": 7}


def tag_all(trow: Trow, repo: str, tags: list[str]) -> None:
    """Push one image to C{repo} and give it every tag in C{tags}."""
    body = image_manifest(trow, repo)
    for tag in tags:
        assert put_manifest(trow, repo, tag, body).code == 201


# -- tags list ---------------------------------------------------------------------------------


def test_tags_list_names_the_repository(trow: Trow) -> None:
    """GET tags/list answers 200 JSON with the repository's name and its tags."""
    tag_all(trow, "a/b", ["v1"])
    r = fetch(trow, "GET", "/v2/a/b/tags/list")
    assert r.code == 200
    assert r.header("Content-Type") == "application/json"
    assert r.json() == {"name": "a/b", "tags": ["v1"]}


def test_tags_are_in_byte_order(trow: Trow) -> None:
    """Tags come back sorted by byte value: upper case before '_' before lower case, '10' < '9'."""
    tags = ["b", "B", "a", "A", "_x", "10", "9", "a-1", "a.1", "a_1", "Z"]
    tag_all(trow, "r", tags)
    r = fetch(trow, "GET", "/v2/r/tags/list")
    assert r.json()["tags"] == sorted(tags, key=lambda t: t.encode())


def test_tags_list_of_unknown_repository_is_404(trow: Trow) -> None:
    """A repository that holds nothing is 404 NAME_UNKNOWN."""
    assert_error(fetch(trow, "GET", "/v2/nothing/here/tags/list"), 404, "NAME_UNKNOWN")


def test_tags_list_of_invalid_name_is_400(trow: Trow) -> None:
    """An invalid repository name is NAME_INVALID."""
    assert_error(fetch(trow, "GET", "/v2/No/tags/list"), 400, "NAME_INVALID")


def test_tags_list_of_repository_with_only_blobs_is_empty(trow: Trow) -> None:
    """A repository that holds blobs but no tags exists: 200 with an empty tag list."""
    push_blob(trow, "r", b"data")
    r = fetch(trow, "GET", "/v2/r/tags/list")
    assert r.code == 200
    assert r.json() == {"name": "r", "tags": []}


def test_tags_list_without_n_has_no_link(trow: Trow) -> None:
    """Without n every tag comes back and there is no Link header."""
    tags = [f"t{i:02d}" for i in range(25)]
    tag_all(trow, "r", tags)
    r = fetch(trow, "GET", "/v2/r/tags/list")
    assert r.json()["tags"] == tags
    assert r.header("Link") is None


def test_tags_first_page_has_link(trow: Trow) -> None:
    """n=2 of five tags gives the first two and a Link to the next page."""
    tag_all(trow, "a/b", ["a", "b", "c", "d", "e"])
    r = fetch(trow, "GET", "/v2/a/b/tags/list?n=2")
    assert r.json()["tags"] == ["a", "b"]
    assert r.header("Link") == '</v2/a/b/tags/list?n=2&last=b>; rel="next"'


def test_tags_pages_follow_links_to_the_end(trow: Trow) -> None:
    """Following Link headers visits every tag once, in order; the last page has no Link."""
    tags = ["a", "b", "c", "d", "e"]
    tag_all(trow, "r", tags)
    seen: list[str] = []
    url: str | None = "/v2/r/tags/list?n=2"
    pages = 0
    while url is not None:
        r = fetch(trow, "GET", url)
        seen += r.json()["tags"]
        link = r.header("Link")
        url = link[1 : link.index(">")] if link else None
        pages += 1
    assert seen == tags
    assert pages == 3


def test_tags_no_link_when_page_ends_exactly(trow: Trow) -> None:
    """When the last page is exactly full there is no Link: nothing remains."""
    tag_all(trow, "r", ["a", "b", "c", "d"])
    r = fetch(trow, "GET", "/v2/r/tags/list?n=2&last=b")
    assert r.json()["tags"] == ["c", "d"]
    assert r.header("Link") is None


def test_tags_n_larger_than_count(trow: Trow) -> None:
    """n above the number of tags gives them all and no Link."""
    tag_all(trow, "r", ["a", "b"])
    r = fetch(trow, "GET", "/v2/r/tags/list?n=10")
    assert r.json()["tags"] == ["a", "b"]
    assert r.header("Link") is None


@pytest.mark.parametrize("last, expected", [("b", ["c", "d"]), ("bb", ["c", "d"]), ("0", ["a", "b", "c", "d"]), ("d", [])])
def test_tags_last_is_exclusive(trow: Trow, last: str, expected: list[str]) -> None:
    """'last' starts the list strictly after that value, whether or not it is a tag."""
    tag_all(trow, "r", ["a", "b", "c", "d"])
    r = fetch(trow, "GET", f"/v2/r/tags/list?last={last}")
    assert r.json()["tags"] == expected


def test_tags_n_zero_is_empty(trow: Trow) -> None:
    """n=0 gives an empty list and no Link."""
    tag_all(trow, "r", ["a", "b"])
    r = fetch(trow, "GET", "/v2/r/tags/list?n=0")
    assert r.code == 200
    assert r.json() == {"name": "r", "tags": []}
    assert r.header("Link") is None


@pytest.mark.parametrize("n", ["abc", "-1", "1.5", "2x"])
def test_tags_invalid_n_is_400(trow: Trow, n: str) -> None:
    """An n that is not a non-negative integer is 400 with a JSON error."""
    tag_all(trow, "r", ["a"])
    r = fetch(trow, "GET", f"/v2/r/tags/list?n={n}")
    assert r.code == 400
    assert r.json()["errors"]


def test_deleted_tags_leave_the_list(trow: Trow) -> None:
    """A deleted tag is no longer listed."""
    tag_all(trow, "r", ["a", "b"])
    fetch(trow, "DELETE", "/v2/r/manifests/a")
    assert fetch(trow, "GET", "/v2/r/tags/list").json()["tags"] == ["b"]


# -- _catalog ----------------------------------------------------------------------------------


def test_catalog_of_empty_registry(trow: Trow) -> None:
    """An empty registry has an empty catalog."""
    r = fetch(trow, "GET", "/v2/_catalog")
    assert r.code == 200
    assert r.json() == {"repositories": []}
    assert r.header("Link") is None


def test_catalog_lists_repositories_in_order(trow: Trow) -> None:
    """Repositories with blobs or manifests are listed once each, in byte order."""
    push_blob(trow, "zeta", b"z")
    tag_all(trow, "alpha/one", ["v1"])
    push_blob(trow, "alpha", b"a")
    push_blob(trow, "alpha", b"b")
    r = fetch(trow, "GET", "/v2/_catalog")
    assert r.json() == {"repositories": ["alpha", "alpha/one", "zeta"]}


def test_catalog_pagination_link(trow: Trow) -> None:
    """n=2 gives two names and a Link whose last is the URL-encoded last name."""
    for name in ["a/x", "b/y", "c/z"]:
        push_blob(trow, name, b"blob")
    r = fetch(trow, "GET", "/v2/_catalog?n=2")
    assert r.json()["repositories"] == ["a/x", "b/y"]
    assert r.header("Link") == f'</v2/_catalog?n=2&last={quote("b/y", safe="")}>; rel="next"'


def test_catalog_pages_follow_links_to_the_end(trow: Trow) -> None:
    """Following catalog Links visits every repository once; the last page has no Link."""
    names = [f"repo{i}" for i in range(7)]
    for name in names:
        push_blob(trow, name, b"blob")
    seen: list[str] = []
    url: str | None = "/v2/_catalog?n=3"
    while url is not None:
        r = fetch(trow, "GET", url)
        seen += r.json()["repositories"]
        link = r.header("Link")
        url = link[1 : link.index(">")] if link else None
    assert seen == names


def test_catalog_last_is_exclusive(trow: Trow) -> None:
    """'last' starts the catalog strictly after that name."""
    for name in ["a", "b", "c"]:
        push_blob(trow, name, b"blob")
    assert fetch(trow, "GET", "/v2/_catalog?last=a").json()["repositories"] == ["b", "c"]


def test_catalog_n_zero_is_empty(trow: Trow) -> None:
    """n=0 gives an empty catalog page and no Link."""
    push_blob(trow, "a", b"blob")
    r = fetch(trow, "GET", "/v2/_catalog?n=0")
    assert r.json() == {"repositories": []}
    assert r.header("Link") is None


def test_catalog_no_link_on_last_page(trow: Trow) -> None:
    """A page that reaches the end has no Link."""
    for name in ["a", "b"]:
        push_blob(trow, name, b"blob")
    assert fetch(trow, "GET", "/v2/_catalog?n=2").header("Link") is None


def _guarded_catalog(tmp_path: Path, names: list[str], bob_sees: list[str]) -> Client:
    """A registry holding C{names}, with auth on: bob may pull only C{bob_sees}."""
    trow = make_trow(str(tmp_path / "data"))

    def fill(c: Any) -> None:
        c.executemany(
            "INSERT INTO repo_blobs (repo, digest, created) VALUES (?, ?, ?)", [(n, "sha256:" + "1" * 64, 1.0) for n in names]
        )

    result_of(trow.stores.metadata._write(fill))  # type: ignore[attr-defined]
    htpasswd = str(tmp_path / "htpasswd")
    write_file(htpasswd, f"bob:{bcrypt_hash('bob-pw')}\n")
    rules = [{"users": ["bob"], "repositories": bob_sees, "actions": ["pull"]}]
    authenticator = Authenticator.build(
        user=None,
        password=None,
        htpasswd=htpasswd,
        config=config_from_dict({"auth": {"rules": rules}}).auth,
        data_dir=str(tmp_path / "data"),
        worker=RecordingWorker(),
        clock=fake_clock().seconds,
    )
    return Client(RegistryAPI(trow.registry, None, AuthAPI(authenticator)).resource())


BOB = {"Authorization": "Basic " + base64.b64encode(b"bob:bob-pw").decode()}


def test_filtered_catalog_pages_are_full(tmp_path: Path) -> None:
    """bob may pull 1 repository in 10: each page still holds n of them, the Links lead on from
    the last name shown, and following them lists each of bob's repositories once."""
    names = [f"g{i:03d}/app" for i in range(300)]
    visible = names[::10]
    client = _guarded_catalog(tmp_path, names, [n.split("/")[0] for n in visible])
    pages: list[list[str]] = []
    url: str | None = "/v2/_catalog?n=4"
    while url is not None:
        r = client.get(url, headers=BOB)
        assert r.code == 200, r.body
        pages.append(r.json()["repositories"])
        link = r.header("Link")
        if link is not None:
            assert link == f'</v2/_catalog?n=4&last={quote(pages[-1][-1], safe="")}>; rel="next"'
        url = link[1 : link.index(">")] if link else None
    assert [name for page in pages for name in page] == visible
    assert [len(page) for page in pages] == [4] * 7 + [2]
    # Without n: one default page holds them all.
    r = client.get("/v2/_catalog", headers=BOB)
    assert r.json()["repositories"] == visible and r.header("Link") is None


def test_filtered_catalog_without_n_links_to_a_default_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page cut short by the scan budget, asked without n, links to a page of the default size
    (not of its own, maybe empty, length): the listing goes on to the end."""
    # A default page reads at least its own size plus one, whatever the cap.
    monkeypatch.setattr(service, "CATALOG_SCAN_MAX", 50)
    names = [f"g{i:04d}/app" for i in range(service.DEFAULT_PAGE + 100)]
    client = _guarded_catalog(tmp_path, names, [names[-1].split("/")[0]])
    r = client.get("/v2/_catalog", headers=BOB)
    assert r.json()["repositories"] == []
    after = names[service.DEFAULT_PAGE]
    assert r.header("Link") == f'</v2/_catalog?n={service.DEFAULT_PAGE}&last={quote(after, safe="")}>; rel="next"'
    seen: list[str] = []
    url: str | None = "/v2/_catalog"
    while url is not None:
        r = client.get(url, headers=BOB)
        seen += r.json()["repositories"]
        link = r.header("Link")
        url = link[1 : link.index(">")] if link else None
    assert seen == names[-1:]


@pytest.mark.parametrize("n", ["x", "-5"])
def test_catalog_invalid_n_is_400(trow: Trow, n: str) -> None:
    """An invalid n on _catalog is 400."""
    r = fetch(trow, "GET", f"/v2/_catalog?n={n}")
    assert r.code == 400
    assert r.json()["errors"]


# -- referrers ---------------------------------------------------------------------------------


def artifact(trow: Trow, repo: str, payload: bytes, artifact_type: str | None, **extra: Any) -> bytes:
    """An OCI artifact manifest in C{repo} that refers to SUBJECT."""
    push_blob(trow, repo, b"{}")
    push_blob(trow, repo, payload)
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(EMPTY_CONFIG, b"{}"),
        "layers": [descriptor("application/octet-stream", payload)],
        "subject": SUBJECT,
    }
    if artifact_type is not None:
        document["artifactType"] = artifact_type
    document.update(extra)
    body = json.dumps(document).encode()
    assert put_manifest(trow, repo, sha256(body), body).code == 201
    return body


def referrers(trow: Trow, repo: str = "r", digest: str = SUBJECT_DIGEST, query: str = "") -> Fetched:
    """GET the referrers of C{digest} in C{repo}; it must answer 200."""
    r = fetch(trow, "GET", f"/v2/{repo}/referrers/{digest}{query}")
    assert r.code == 200, r.body
    return r


@pytest.mark.parametrize("repo", ["r", "never/pushed"])
def test_referrers_of_unknown_subject_is_empty_index(trow: Trow, repo: str) -> None:
    """With no referrers, in a known or unknown repository, the answer is 200 with an empty
    image index, never 404."""
    artifact(trow, "r", b"sig", "application/vnd.example.sig")
    r = referrers(trow, repo, "sha256:" + "f" * 64)
    assert r.header("Content-Type") == OCI_INDEX
    assert r.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    assert r.content_length == len(r.body)


def test_referrer_descriptor(trow: Trow) -> None:
    """A manifest with a subject is listed with its media type, digest, size and artifactType."""
    body = artifact(trow, "r", b"sig", "application/vnd.example.sig")
    r = referrers(trow)
    assert r.header("Content-Type") == OCI_INDEX
    assert r.json()["manifests"] == [
        {"mediaType": OCI_MANIFEST, "digest": sha256(body), "size": len(body), "artifactType": "application/vnd.example.sig"}
    ]


def test_referrer_artifact_type_defaults_to_config_media_type(trow: Trow) -> None:
    """Without artifactType, the referrer's artifactType is its config's mediaType."""
    artifact(trow, "r", b"sbom", None)
    [entry] = referrers(trow).json()["manifests"]
    assert entry["artifactType"] == EMPTY_CONFIG


def test_referrer_annotations_are_copied(trow: Trow) -> None:
    """The referrer's annotations are copied into its descriptor as they are."""
    annotations = {"org.opencontainers.image.created": "2024-01-01T00:00:00Z", "z": "1", "a": "caf\u00e9"}
    artifact(trow, "r", b"sig", "application/vnd.example.sig", annotations=annotations)
    [entry] = referrers(trow).json()["manifests"]
    assert entry["annotations"] == annotations
    assert list(entry["annotations"]) == list(annotations)


def test_index_referrer_is_listed(trow: Trow) -> None:
    """An image index with a subject is a referrer too, listed as an index with its artifactType."""
    child = image_manifest(trow, "r")
    put_manifest(trow, "r", sha256(child), child)
    body = index_manifest([child], subject=SUBJECT, artifactType="application/vnd.example.bundle")
    assert put_manifest(trow, "r", sha256(body), body, OCI_INDEX).code == 201
    assert referrers(trow).json()["manifests"] == [
        {"mediaType": OCI_INDEX, "digest": sha256(body), "size": len(body), "artifactType": "application/vnd.example.bundle"}
    ]


def test_every_referrer_is_listed(trow: Trow) -> None:
    """Several manifests with the same subject are all listed."""
    one = artifact(trow, "r", b"sig", "application/vnd.example.sig")
    two = artifact(trow, "r", b"sbom", "application/vnd.example.sbom")
    digests = {m["digest"] for m in referrers(trow).json()["manifests"]}
    assert digests == {sha256(one), sha256(two)}


def test_referrers_filter_by_artifact_type(trow: Trow) -> None:
    """?artifactType= keeps only matching referrers and says so with OCI-Filters-Applied."""
    artifact(trow, "r", b"sig", "application/vnd.example.sig")
    sbom = artifact(trow, "r", b"sbom", "application/vnd.example.sbom")
    r = referrers(trow, query="?artifactType=application/vnd.example.sbom")
    assert [m["digest"] for m in r.json()["manifests"]] == [sha256(sbom)]
    assert r.header("OCI-Filters-Applied") == "artifactType"


def test_referrers_filter_matching_nothing(trow: Trow) -> None:
    """A filter that matches nothing gives an empty index, still with OCI-Filters-Applied."""
    artifact(trow, "r", b"sig", "application/vnd.example.sig")
    r = referrers(trow, query="?artifactType=application/vnd.example.none")
    assert r.json()["manifests"] == []
    assert r.header("OCI-Filters-Applied") == "artifactType"


def test_referrers_without_filter_has_no_filters_header(trow: Trow) -> None:
    """Without a filter there is no OCI-Filters-Applied header."""
    artifact(trow, "r", b"sig", "application/vnd.example.sig")
    assert referrers(trow).header("OCI-Filters-Applied") is None


def test_referrers_are_per_repository(trow: Trow) -> None:
    """A referrer pushed to r is not listed for the same subject in another repository."""
    artifact(trow, "r", b"sig", "application/vnd.example.sig")
    assert referrers(trow, "other").json()["manifests"] == []


def test_deleted_referrer_leaves_the_index(trow: Trow) -> None:
    """Deleting a referrer by digest removes it from the referrers index."""
    body = artifact(trow, "r", b"sig", "application/vnd.example.sig")
    assert fetch(trow, "DELETE", f"/v2/r/manifests/{sha256(body)}").code == 202
    assert referrers(trow).json()["manifests"] == []


@pytest.mark.parametrize("digest", ["sha256:nope", "latest", "md5:" + "a" * 32])
def test_referrers_invalid_digest_is_400(trow: Trow, digest: str) -> None:
    """A referrers request for something that is not a valid digest is 400 DIGEST_INVALID."""
    assert_error(fetch(trow, "GET", f"/v2/r/referrers/{digest}"), 400, "DIGEST_INVALID")


def test_referrers_invalid_name_is_400(trow: Trow) -> None:
    """An invalid repository name on referrers is NAME_INVALID."""
    assert_error(fetch(trow, "GET", f"/v2/BAD/referrers/{SUBJECT_DIGEST}"), 400, "NAME_INVALID")
