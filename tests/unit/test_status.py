"""The status page (trow.status, trow.api.status): its JSON, its HTML, what a visitor may see."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from tests.unit.harness import Client, Trow, make_trow, result_of
from tests.unit.proxy_fakes import Cache, image_manifest, make_cache, sha256
from tests.unit.test_auth_helpers import RecordingWorker, bcrypt_hash, fake_clock, write_file
from trow.api.auth import AuthAPI
from trow.api.registry import RegistryAPI
from trow.api.status import StatusAPI, render_page
from trow.auth.service import Authenticator
from trow.config import config_from_dict
from trow.proxy.names import ProxiedName
from trow.registry.access import AccessTracker
from trow.registry.gc import Collector, GarbageCollector
from trow.registry.names import Digest
from trow.status import REPOS_PER_PAGE, ProcessInfo, StatusBoard, config_summary
from trow.tap import Settings

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
RULES = [
    {"users": ["alice"], "repositories": ["secret/"], "actions": ["pull", "push", "delete"]},
    {"users": ["*"], "repositories": ["public/"], "actions": ["pull", "push"]},
]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class Site:
    """An in-memory trow with its cache, and the status page in front of both."""

    def __init__(self, tmp_path: Path, auth: dict[str, Any] | None = None, max_size: int | None = None) -> None:
        self.trow: Trow = make_trow(str(tmp_path / "data"))
        self.cache: Cache = make_cache(self.trow)
        self.clock = self.cache.clock
        self.tracker = AccessTracker(self.trow.stores.metadata, self.clock)
        authenticator = Authenticator.disabled()
        if auth is not None:
            htpasswd = str(tmp_path / "htpasswd")
            write_file(htpasswd, f"alice:{bcrypt_hash('alice-pw')}\nbob:{bcrypt_hash('bob-pw')}\n")
            authenticator = Authenticator.build(
                user=None,
                password=None,
                htpasswd=htpasswd,
                config=config_from_dict({"auth": auth}).auth,
                data_dir=str(tmp_path / "data"),
                worker=RecordingWorker(),
                clock=fake_clock().seconds,
            )
            authenticator.canonical = self.cache.proxy.canonical_repository
        self.auth = AuthAPI(authenticator)
        collector = Collector.from_config(
            config_from_dict({}),
            self.trow.stores.blobs,
            self.trow.stores.uploads,
            self.trow.stores.metadata,
            self.clock,
            in_use=lambda digest: False,
        )
        self.gc = GarbageCollector(collector, self.clock, 600.0)
        process = ProcessInfo(started=self.clock.seconds(), config={"data_dir": "/data"}, max_size=max_size)
        self.board = StatusBoard(self.trow.registry, self.cache.proxy, self.cache.proxy.metrics, self.clock, process, self.gc)
        resource = RegistryAPI(
            self.trow.registry, self.cache.proxy, self.auth, status=StatusAPI(self.board, self.auth), access=self.tracker
        ).resource()
        self.client = Client(resource)

    def push(self, repo: str, tag: str, layer: bytes, headers: dict[str, str] | None = None) -> tuple[str, int]:
        """Push a one-layer image; return its manifest digest and its size (manifest, config, layer)."""
        config = b'{"architecture": "amd64"}'
        for blob in (layer, config):
            r = self.client.post(f"/v2/{repo}/blobs/uploads/?digest={sha256(blob)}", body=blob, headers=headers)
            assert r.code == 201, r.body
        content = image_manifest(layer, config)
        r = self.client.put(
            f"/v2/{repo}/manifests/{tag}",
            body=content,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json", **(headers or {})},
        )
        assert r.code == 201, r.body
        return sha256(content), len(content) + len(config) + len(layer)

    def status(self, query: str = "", headers: dict[str, str] | None = None) -> dict[str, Any]:
        r = self.client.get("/status.json" + query, headers=headers)
        assert r.code == 200, r.body
        assert r.header("Content-Type") == "application/json"
        document: dict[str, Any] = r.json()
        return document


def repo_names(status: dict[str, Any]) -> list[str]:
    return [r["name"] for r in status["repositories"]["items"]] + [r["name"] for r in status["cached"]["items"]]


def test_a_pushed_repository_shows_with_its_tags_size_and_times(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.clock.advance(1000)
    digest, size = site.push("team/app", "v1", b"layer " * 1000)
    site.clock.advance(5)
    site.push("team/app", "v2", b"another layer")
    status = site.status()
    [repo] = status["repositories"]["items"]
    assert repo["name"] == "team/app"
    assert [t["tag"] for t in repo["tags"]] == ["v2", "v1"]  # the last set first
    v1 = repo["tags"][1]
    assert (v1["digest"], v1["size"], v1["platforms"]) == (digest, size, 1)
    assert repo["tag_count"] == 2 and repo["tag_count_capped"] is False
    assert repo["size"] == size  # the largest image shown
    assert repo["pushed"] is not None and repo["pulled"] is None

    # A pull is noted (by manifest), and shows once the read times are written.
    site.clock.advance(60)
    assert site.client.get("/v2/team/app/manifests/v1").code == 200
    result_of(site.tracker.flush())
    [repo] = site.status()["repositories"]["items"]
    assert repo["pulled"] == site.clock.seconds()


def test_the_status_page_itself_is_not_a_pull(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.push("team/app", "v1", b"layer")
    site.status()
    site.client.get("/", headers=HTML)
    assert site.tracker.pending == 0


def test_repositories_come_a_bounded_page_at_a_time(tmp_path: Path) -> None:
    site = Site(tmp_path)
    names = sorted(f"many/r{i:03d}" for i in range(REPOS_PER_PAGE + 5))
    for name in names:
        site.push(name, "v1", b"layer")
    first = site.status()["repositories"]
    assert [r["name"] for r in first["items"]] == names[:REPOS_PER_PAGE]
    assert first["next"] == names[REPOS_PER_PAGE - 1]
    second = site.status(f"?after={first['next']}")["repositories"]
    assert [r["name"] for r in second["items"]] == names[REPOS_PER_PAGE:]
    assert second["next"] is None


def test_cached_repositories_are_grouped_by_upstream(tmp_path: Path) -> None:
    site = Site(tmp_path)
    fake = site.cache.fake
    layer = b"cached layer"
    config = b"{}"
    content = image_manifest(layer, config)
    fake.blobs.update({sha256(layer): layer, sha256(config): config})
    fake.manifests[sha256(content)] = (content, "application/vnd.oci.image.manifest.v1+json")
    fake.tags[("library/alpine", "3")] = sha256(content)
    r = site.client.get("/v2/f/docker/library/alpine/manifests/3")
    assert r.code == 200, r.body
    status = site.status()
    assert status["repositories"]["items"] == []
    [group] = status["cached"]["upstreams"]
    assert group["upstream"] == "docker.io"
    assert [r["name"] for r in group["repositories"]] == ["f/docker.io/library/alpine"]
    assert status["cache"]["misses"] >= 1


def test_a_download_in_flight_shows_its_progress_and_clients(tmp_path: Path) -> None:
    site = Site(tmp_path)
    fake = site.cache.fake
    blob = bytes(range(256)) * 4096  # 1 MiB
    digest = sha256(blob)
    fake.blobs[digest] = blob
    fake.stall[f"library/alpine/blobs/{digest}"] = (len(blob), blob[:300_000])
    name = ProxiedName(site.cache.proxy.directory.upstream("docker.io"), "library/alpine")
    download = site.cache.proxy.fetcher.get(name, Digest.parse(digest))
    site.clock.advance(2)
    status = site.status("?live=1")
    assert "repositories" not in status and "config" not in status  # live: what moves only
    [item] = status["downloads"]["items"]
    assert item["digest"] == digest and item["repository"] == "f/docker.io/library/alpine"
    assert item["upstream"] == "docker.io" and item["size"] == len(blob)
    assert 0 < item["done"] <= 300_000 and item["clients"] == 0
    assert item["bytes_per_second"] == item["done"] / 2
    html = site.client.get("/", headers=HTML).body.decode()
    assert f'data-digest="{digest}"' in html
    assert re.search(rf'<progress value="{item["done"]}" max="{len(blob)}"', html)
    download.abort("test over")


def test_browsers_get_the_page_other_clients_todays_answer(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.push("team/app", "v1", b"layer")
    page = site.client.get("/", headers=HTML)
    assert page.code == 200 and page.header("Content-Type") == "text/html; charset=utf-8"
    html = page.body.decode()
    assert html.startswith("<!DOCTYPE html>")
    assert 'data-repo="team/app"' in html and '<span class="tag"' in html and ">v1</span>" in html
    assert '<script src="/status.js">' in html
    plain = site.client.get("/")
    assert plain.code == 404 and plain.json()["errors"][0]["code"] == "UNSUPPORTED"
    script = site.client.get("/status.js")
    assert script.code == 200 and b"/status.json?live=1" in script.body and b"innerHTML" not in script.body


def test_text_from_outside_is_escaped(tmp_path: Path) -> None:
    site = Site(tmp_path)
    status = site.status()
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    status["upstreams"] = [
        {
            "host": "evil.example",
            "alias": None,
            "state": "down",
            "breaker": "open",
            "down_since": status["now"] - 5,
            "retry_at": status["now"] + 25,
            "last_error": f"answered 500 {hostile} to GET /v2/x/manifests/1",
            "last_error_at": status["now"] - 5,
        }
    ]
    status["visitor"] = {"auth": False, "user": None}
    html = result_of(_flatten(render_page(status))).decode()
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(\"x\")&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html


def _flatten(tag: Any) -> Any:
    from twisted.web.template import flattenString

    return flattenString(None, tag)


def test_an_upstream_error_and_the_breaker_show(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.cache.fake.status = 500
    r = site.client.get("/v2/f/docker/library/alpine/manifests/3")
    assert r.code >= 500
    [docker, ghcr] = site.status()["upstreams"]
    assert (docker["host"], docker["alias"], ghcr["host"]) == ("docker.io", "docker", "ghcr.io")
    assert docker["last_error"] == "answered 500 Internal Server Error to a HEAD"
    assert docker["state"] == "up" and ghcr["last_error"] is None


def test_upstream_errors_name_no_repository(tmp_path: Path) -> None:
    """Anyone may see the upstreams' health, even under anonymous: none: an error there never
    quotes the path it was about (it names a private repository and tag), however it came."""
    site = Site(tmp_path, auth={"anonymous": "none", "rules": [{"users": ["alice"], "repositories": ["f/"], "actions": ["pull"]}]})
    site.cache.fake.status = 500
    assert site.client.get("/v2/f/docker/acme-secret/payroll/manifests/v9-internal", headers=basic("alice", "alice-pw")).code >= 500
    upstream = site.cache.proxy.directory.upstream("docker.io")
    # An error text that quotes a URL (a timeout, say): its path goes.
    site.cache.upstream._mark_down(upstream, "TimeoutError: GET https://registry-1.docker.io/v2/acme-secret/payroll/blobs/sha256:0 took too long")
    anonymous = site.client.get("/status.json").body + site.client.get("/", headers=HTML).body
    assert b"acme-secret" not in anonymous and b"payroll" not in anonymous and b"v9-internal" not in anonymous
    [docker, _] = site.status()["upstreams"]
    assert "https://registry-1.docker.io/..." in docker["last_error"]


def test_anonymous_visitors_see_no_repository_names_under_anonymous_none(tmp_path: Path) -> None:
    site = Site(tmp_path, auth={"anonymous": "none", "rules": RULES})
    site.push("secret/app", "v1", b"secret layer", headers=basic("alice", "alice-pw"))
    site.push("public/app", "v1", b"public layer", headers=basic("bob", "bob-pw"))
    anonymous = site.status()
    assert repo_names(anonymous) == [] and anonymous["repositories"]["hidden"] == 2
    raw = site.client.get("/status.json").body + site.client.get("/", headers=HTML).body
    assert b"secret/app" not in raw and b"public/app" not in raw
    assert b'href="/status-login"' in site.client.get("/", headers=HTML).body

    assert repo_names(site.status(headers=basic("alice", "alice-pw"))) == ["public/app", "secret/app"]
    bob = site.status(headers=basic("bob", "bob-pw"))
    assert repo_names(bob) == ["public/app"] and bob["repositories"]["hidden"] == 1
    assert bob["visitor"] == {"auth": True, "user": "bob"}
    # Wrong credentials are an error, as on every other route, not an anonymous view.
    assert site.client.get("/status.json", headers=basic("bob", "wrong")).code == 401


def test_the_login_route_asks_the_browser_for_credentials(tmp_path: Path) -> None:
    site = Site(tmp_path, auth={"anonymous": "none", "rules": RULES})
    asked = site.client.get("/status-login")
    assert asked.code == 401 and (asked.header("WWW-Authenticate") or "").startswith("Basic ")
    # Good credentials: back to the page (the test client follows the 303), now signed in.
    signed_in = site.client.get("/status-login", headers={**basic("alice", "alice-pw"), **HTML})
    assert signed_in.code == 200 and b"signed in as <strong>alice</strong>" in signed_in.body
    # Without auth there is nothing to sign in to: straight to the page.
    page = Site(tmp_path / "open").client.get("/status-login", headers=HTML)
    assert page.code == 200 and b"sign in" not in page.body


def test_space_and_gc_show(tmp_path: Path) -> None:
    site = Site(tmp_path, max_size=10 * 2**20)
    site.cache.proxy.metrics.set_cache_size(1234)
    status = site.status("?live=1")
    space = status["space"]
    assert space["max_size"] == 10 * 2**20 and space["cache_bytes"] == 1234
    assert 0 < space["disk_used"] <= space["disk_total"]
    assert status["gc"]["last"] is None and status["gc"]["enabled"] is True
    site.clock.advance(30)
    result_of(site.gc.run_pass())
    last = site.status("?live=1")["gc"]["last"]
    assert last is not None and last["at"] == site.clock.seconds() and last["freed_bytes"] == 0


def test_the_configuration_summary_holds_no_secret(tmp_path: Path) -> None:
    config = config_from_dict(
        {
            "registry_proxies": {
                "registries": [{"host": "ghcr.io", "alias": "gh", "username": "me", "password": "upstream-secret"}],
                "max_size": "1GiB",
            }
        }
    )
    settings = Settings(
        listen=("tcp:8000",),
        data_dir="/data",
        config=config,
        user="admin",
        password="admin-secret",
        database="postgresql://trow:db-secret@db:5432/trow",
    )
    summary = config_summary(settings)
    text = json.dumps(summary)
    for secret in ("upstream-secret", "admin-secret", "db-secret"):
        assert secret not in text
    assert summary["upstreams"] == [{"host": "ghcr.io", "alias": "gh", "tls": True, "ca_file": False, "credentials": True}]
    assert summary["auth"] is True and summary["max_size"] == 2**30


def test_an_index_counts_its_platforms_and_their_sizes(tmp_path: Path) -> None:
    site = Site(tmp_path)
    amd, amd_size = site.push("multi/app", "amd64", b"amd64 layer" * 10)
    arm, arm_size = site.push("multi/app", "arm64", b"arm64 layer" * 20)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": 1}
                for d in (amd, arm)
            ],
        }
    ).encode()
    r = site.client.put(
        "/v2/multi/app/manifests/latest", body=index, headers={"Content-Type": "application/vnd.oci.image.index.v1+json"}
    )
    assert r.code == 201, r.body
    [repo] = site.status()["repositories"]["items"]
    latest = next(t for t in repo["tags"] if t["tag"] == "latest")
    assert latest["platforms"] == 2
    assert latest["digest"] == "sha256:" + hashlib.sha256(index).hexdigest()
    assert latest["size"] == len(index) + amd_size + arm_size


def test_the_page_shows_what_it_can_while_the_database_is_down(tmp_path: Path) -> None:
    """An operator looks at the page most when something is wrong: without the metadata it
    still answers, with everything else, and says what is missing."""
    from twisted.internet.defer import fail

    from trow.storage.metadata import MetadataUnavailable

    site = Site(tmp_path)
    site.push("team/app", "v1", b"layer")
    metadata: Any = site.trow.registry.metadata
    down = lambda *a, **k: fail(MetadataUnavailable("the database at db:5432 is unreachable"))  # noqa: E731
    metadata.repository_names = metadata.recent_uploads = down
    status = site.status()
    assert status["metadata_error"] == "the database at db:5432 is unreachable"
    assert status["repositories"]["items"] == [] and status["uploads"]["items"] == []
    assert status["cache"]["hit_rate"] is None and status["space"]["disk_total"] > 0
    page = site.client.get("/", headers=HTML)
    assert page.code == 200 and b"The metadata database is unavailable" in page.body


def test_upstream_requests_say_who_sends_them(tmp_path: Path) -> None:
    """Registries tell clients apart by User-Agent (some treat none as a bot): trow names itself."""
    from trow import __version__

    site = Site(tmp_path)
    site.client.get("/v2/f/docker/library/alpine/manifests/3")
    seen = site.cache.fake.seen
    assert seen and all(s.header("User-Agent") == f"trow/{__version__} (pull-through cache)" for s in seen), seen
