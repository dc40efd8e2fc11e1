"""Which upstream a proxied name means, whether trow may proxy it, and how it is reached.

Reference: section 5 (addressing) and section 3 (registry_proxies) of the product reference.
"""

from __future__ import annotations

from typing import Any

import pytest

from trow.config import ProxyConfig, UpstreamRegistry, config_from_dict
from trow.proxy.names import WELL_KNOWN, ProxiedName, UpstreamDirectory
from trow.registry.errors import RegistryError


def directory(section: Any = None) -> UpstreamDirectory:
    """A directory built from a YAML-shaped C{registry_proxies} section (None: no section)."""
    document = {} if section is None else {"registry_proxies": section}
    return UpstreamDirectory(config_from_dict(document).registry_proxies)


def unknown(call: Any) -> RegistryError:
    """The C{RegistryError} that C{call()} raises."""
    with pytest.raises(RegistryError) as caught:
        call()
    return caught.value


# -- f/<host>/<repo>, f/<alias>/<repo>, ?ns= ---------------------------------------------------


def test_host_form_names_upstream_and_cache_repo() -> None:
    """f/<host>/<repo> names the host's upstream, the repo there, and is cached under itself."""
    proxied = directory({"registries": [{"host": "ghcr.io"}]}).for_cache_name("f/ghcr.io/org/tool")
    assert proxied is not None
    assert proxied.upstream.host == "ghcr.io"
    assert proxied.repo == "org/tool"
    assert proxied.cache_repo == "f/ghcr.io/org/tool"


def test_alias_form_is_cached_under_the_real_host() -> None:
    """f/<alias>/<repo> reaches the aliased upstream, and the cache repo names the real host (so
    both spellings share one cache)."""
    names = directory({"registries": [{"host": "registry.corp.example:5000", "alias": "corp"}]})
    by_alias = names.for_cache_name("f/corp/team/app")
    assert by_alias is not None
    assert by_alias.upstream.host == "registry.corp.example:5000"
    assert by_alias.repo == "team/app"
    assert by_alias.cache_repo == "f/registry.corp.example:5000/team/app"


def test_alias_lookup_ignores_case() -> None:
    """An alias written with capitals in the config still matches the lower-case path component."""
    names = directory({"registries": [{"host": "docker.io", "alias": "Hub"}]})
    proxied = names.for_cache_name("f/hub/nginx")
    assert proxied is not None and proxied.cache_repo == "f/docker.io/library/nginx"


def test_ns_form_maps_to_the_same_cache_repo_as_f_form() -> None:
    """containerd's <repo>?ns=<host> and f/<host>/<repo> are the same cache repository."""
    names = directory({"registries": [{"host": "quay.io"}]})
    by_ns = names.for_namespace("quay.io", "coreos/etcd")
    by_f = names.for_cache_name("f/quay.io/coreos/etcd")
    assert by_ns == by_f
    assert by_ns.cache_repo == "f/quay.io/coreos/etcd"


def test_name_outside_f_is_not_proxied() -> None:
    """Names not under f/ are local repositories (None), even if they look like hosts."""
    names = directory()
    assert names.for_cache_name("docker.io/library/nginx") is None
    assert names.for_cache_name("fx/docker.io/nginx") is None


@pytest.mark.parametrize("name", ["f/docker.io", "f/docker.io/", "f"])
def test_f_without_a_repository_is_name_invalid(name: str) -> None:
    """f/<host> without a repository is not a name: NAME_INVALID, not a crash or a lookup."""
    error = unknown(lambda: directory().for_cache_name(name))
    assert error.code == "NAME_INVALID"


# -- Docker Hub ---------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["docker.io", "index.docker.io", "registry-1.docker.io", "Docker.IO"])
def test_docker_hub_spellings_fold_into_docker_io(host: str) -> None:
    """index.docker.io, registry-1.docker.io and docker.io are one upstream and one cache."""
    proxied = directory().for_namespace(host, "bitnami/redis")
    assert proxied.upstream.host == "docker.io"
    assert proxied.cache_repo == "f/docker.io/bitnami/redis"


@pytest.mark.parametrize("host", ["docker.io", "index.docker.io", "registry-1.docker.io"])
def test_docker_hub_one_component_names_get_library(host: str) -> None:
    """A one-component Docker Hub name is an official image under library/."""
    names = directory()
    assert names.for_cache_name(f"f/{host}/nginx") == names.for_namespace(host, "library/nginx")
    assert names.for_namespace(host, "nginx").repo == "library/nginx"


def test_library_prefix_only_for_docker_hub() -> None:
    """Other registries keep one-component names as they are."""
    proxied = directory({"registries": [{"host": "registry.example.com"}]}).for_cache_name(
        "f/registry.example.com/nginx"
    )
    assert proxied is not None and proxied.repo == "nginx"


def test_docker_hub_listed_as_index_docker_io() -> None:
    """A config entry for index.docker.io is Docker Hub, reached at registry-1.docker.io."""
    names = directory({"registries": [{"host": "index.docker.io"}]})
    proxied = names.for_cache_name("f/docker.io/nginx")
    assert proxied is not None
    assert proxied.upstream.base_url == "https://registry-1.docker.io"


# -- which hosts may be proxied ------------------------------------------------------------------


@pytest.mark.parametrize("host", WELL_KNOWN)
def test_well_known_hosts_without_registry_proxies_section(host: str) -> None:
    """With no registry_proxies section at all, the well-known public registries are proxied."""
    proxied = directory().for_cache_name(f"f/{host}/org/app")
    assert proxied is not None and proxied.upstream.host == host


def test_default_set_is_exactly_the_documented_public_registries() -> None:
    """The out-of-the-box set is the one the reference lists, nothing more."""
    assert set(directory().hosts) == {
        "docker.io",
        "ghcr.io",
        "quay.io",
        "registry.k8s.io",
        "gcr.io",
        "public.ecr.aws",
        "mcr.microsoft.com",
    }


def test_with_a_section_only_listed_hosts() -> None:
    """Once registry_proxies lists registries, well-known hosts that are not listed are refused."""
    names = directory({"registries": [{"host": "ghcr.io"}]})
    assert names.for_cache_name("f/ghcr.io/a/b") is not None
    error = unknown(lambda: names.for_cache_name("f/docker.io/nginx"))
    assert error.code == "NAME_UNKNOWN"
    assert error.status == 404


def test_empty_section_proxies_nothing() -> None:
    """A registry_proxies section with no registries is a decision: nothing is proxied."""
    names = directory({"offline": False})
    assert list(names.hosts) == []
    assert unknown(lambda: names.for_namespace("docker.io", "nginx")).code == "NAME_UNKNOWN"


@pytest.mark.parametrize("key", ["evil.example", "10.0.0.1:5000", "localhost", "nope"])
def test_unknown_host_is_name_unknown_saying_how_to_allow_it(key: str) -> None:
    """An unlisted host is a 404 NAME_UNKNOWN whose message names the config keys that allow it."""
    error = unknown(lambda: directory({"registries": [{"host": "ghcr.io"}]}).for_namespace(key, "a/b"))
    assert error.code == "NAME_UNKNOWN"
    assert error.status == 404
    assert "registry_proxies" in error.message
    assert "any_registry" in error.message
    assert key in error.message


def test_any_registry_proxies_unlisted_hosts_as_unlisted() -> None:
    """any_registry lets unlisted hosts through, marked unlisted (so they get the private-address
    check); listed hosts keep their settings."""
    names = directory({"any_registry": True, "registries": [{"host": "ghcr.io", "insecure": True}]})
    other = names.for_cache_name("f/registry.example.org/team/app")
    assert other is not None
    assert other.upstream.host == "registry.example.org"
    assert other.upstream.listed is False
    listed = names.for_cache_name("f/ghcr.io/a/b")
    assert listed is not None and listed.upstream.listed and listed.upstream.insecure


def test_any_registry_still_refuses_keys_that_are_not_hosts() -> None:
    """Under any_registry an unknown key without a dot or port is a typo'd alias, not a host."""
    names = directory({"any_registry": True})
    assert unknown(lambda: names.for_cache_name("f/dockr/nginx")).code == "NAME_UNKNOWN"


# -- credentials and base URLs -------------------------------------------------------------------


def test_credentials_longest_path_prefix_wins() -> None:
    """Of several credential entries for one host, the longest matching path_prefix applies, on
    path-component boundaries; entries without a username never apply."""
    names = directory(
        {
            "registries": [
                {"host": "docker.io", "username": "everyone", "password": "p0"},
                {"host": "docker.io", "username": "team", "password": "p1", "path_prefix": "team-a"},
                {"host": "docker.io", "username": "deep", "password": "p2", "path_prefix": "team-a/secret/"},
                {"host": "docker.io", "path_prefix": "team-a/anon"},
            ]
        }
    )
    upstream = names.upstream("docker.io")

    def user(repo: str) -> str | None:
        entry = upstream.credentials_for(repo)
        return entry.username if entry else None

    assert user("library/nginx") == "everyone"
    assert user("team-a") == "team"
    assert user("team-a/app") == "team"
    assert user("team-ab/app") == "everyone"  # not a component boundary
    assert user("team-a/secret/app") == "deep"  # trailing '/' in the config is tolerated
    assert user("team-a/anon/app") == "team"  # no username: not a credential entry


def test_no_credentials_means_anonymous() -> None:
    """An upstream without a username is reached anonymously."""
    upstream = directory({"registries": [{"host": "ghcr.io"}]}).upstream("ghcr.io")
    assert upstream.credentials_for("a/b") is None


@pytest.mark.parametrize(
    "entry, url",
    [
        ({"host": "ghcr.io"}, "https://ghcr.io"),
        ({"host": "registry.local:5000", "insecure": True}, "http://registry.local:5000"),
        ({"host": "docker.io"}, "https://registry-1.docker.io"),
        ({"host": "registry-1.docker.io"}, "https://registry-1.docker.io"),
    ],
)
def test_base_url(entry: dict[str, Any], url: str) -> None:
    """https by default, http when insecure, and Docker Hub's API host for docker.io."""
    names = directory({"registries": [entry]})
    upstream = names.upstream(entry["host"])
    assert upstream.base_url == url


def test_insecure_entry_for_a_host_applies_to_all_its_entries() -> None:
    """Several entries for one host (per-prefix credentials) make one upstream: if one says
    insecure, the host is reached over http."""
    names = directory(
        {"registries": [{"host": "reg.local:5000"}, {"host": "reg.local:5000", "insecure": True, "username": "u"}]}
    )
    assert names.upstream("reg.local:5000").base_url == "http://reg.local:5000"


def test_proxied_name_equality_is_by_value() -> None:
    """ProxiedName is a value: the same upstream and repo compare equal (used as a cache key)."""
    names = directory()
    a = names.for_cache_name("f/ghcr.io/a/b")
    assert isinstance(a, ProxiedName)
    assert a == names.for_namespace("ghcr.io", "a/b")


def test_proxy_config_defaults_are_unconfigured() -> None:
    """The default ProxyConfig (no section) is what turns on the well-known hosts."""
    assert ProxyConfig().configured is False
    assert set(UpstreamDirectory(ProxyConfig()).hosts) == set(WELL_KNOWN)
    assert set(UpstreamDirectory(ProxyConfig(registries=(UpstreamRegistry("ghcr.io"),), configured=True)).hosts) == {
        "ghcr.io"
    }
