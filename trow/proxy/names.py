"""Which upstream a proxied repository name means, and whether trow may proxy it.

Proxied content is stored under the cache repository C{f/<host>/<repo>}. Clients reach it as
C{f/<host>/<repo>}, as C{f/<alias>/<repo>}, or as C{<repo>} with C{?ns=<host>} (containerd's
mirror protocol). C{ns} and C{f/<host>} are lookup keys, never addresses to dial blindly: the
config decides which hosts may be proxied (reference.md section 5).
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

import attrs

from trow.config import ProxyConfig, UpstreamRegistry
from trow.registry.errors import RegistryError
from trow.registry.names import check_name

PREFIX = "f"

DOCKER_HUB = "docker.io"
_DOCKER_ALIASES = {"index.docker.io", "registry-1.docker.io", "docker.io"}

# Proxied out of the box when the config has no registry_proxies section at all.
WELL_KNOWN = (
    "docker.io",
    "ghcr.io",
    "quay.io",
    "registry.k8s.io",
    "gcr.io",
    "public.ecr.aws",
    "mcr.microsoft.com",
)

# Where a host's registry API actually lives, when it is not the host itself.
_API_HOSTS = {DOCKER_HUB: "registry-1.docker.io"}


def canonical_host(host: str) -> str:
    """Lower-case a host and fold Docker Hub's several names into C{docker.io}."""
    host = host.strip().lower()
    return DOCKER_HUB if host in _DOCKER_ALIASES else host


def canonical_repo(host: str, repo: str) -> str:
    """Docker Hub's one-component names live under C{library/}."""
    if host == DOCKER_HUB and "/" not in repo:
        return f"library/{repo}"
    return repo


@attrs.frozen
class Upstream:
    """One upstream registry trow may proxy, with how to reach it."""

    host: str
    insecure: bool = False
    ca_file: str | None = None
    credentials: tuple[UpstreamRegistry, ...] = ()
    # False for hosts proxied only because of any_registry: those must resolve to public addresses.
    listed: bool = True

    @property
    def base_url(self) -> str:
        """The URL of the upstream's C{/v2/} API root, without the C{/v2/}."""
        scheme = "http" if self.insecure else "https"
        return f"{scheme}://{_API_HOSTS.get(self.host, self.host)}"

    def credentials_for(self, repo: str) -> UpstreamRegistry | None:
        """The entry with credentials whose C{path_prefix} is the longest match for C{repo}."""
        best: UpstreamRegistry | None = None
        for entry in self.credentials:
            if not entry.username:
                continue
            prefix = entry.path_prefix
            if prefix and not (repo == prefix or repo.startswith(prefix + "/")):
                continue
            if best is None or len(prefix) > len(best.path_prefix):
                best = entry
        return best


@attrs.frozen
class ProxiedName:
    """A proxied repository: the upstream, the name there, and where trow caches it."""

    upstream: Upstream
    repo: str

    @property
    def cache_repo(self) -> str:
        return f"{PREFIX}/{self.upstream.host}/{self.repo}"


def is_private_address(address: str) -> bool:
    """True for loopback, link-local, private and other non-public addresses."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return not ip.is_global


class UpstreamDirectory:
    """Resolves names to upstreams, following the config's decision about what may be proxied."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self._by_host: dict[str, Upstream] = {}
        self._aliases: dict[str, str] = {}
        entries: dict[str, list[UpstreamRegistry]] = {}
        for entry in config.registries:
            host = canonical_host(entry.host)
            entries.setdefault(host, []).append(entry)
            if entry.alias:
                self._aliases[entry.alias.lower()] = host
        for host, group in entries.items():
            self._by_host[host] = Upstream(
                host=host,
                insecure=any(e.insecure for e in group),
                ca_file=next((e.ca_file for e in group if e.ca_file), None),
                credentials=tuple(group),
            )
        if not config.configured:
            for host in WELL_KNOWN:
                self._by_host[host] = Upstream(host)

    @property
    def hosts(self) -> Iterable[str]:
        return self._by_host.keys()

    def upstream(self, key: str) -> Upstream:
        """The upstream for a host or alias, or C{NAME_UNKNOWN} saying how to allow it."""
        host = self._aliases.get(key.lower()) or canonical_host(key)
        found = self._by_host.get(host)
        if found is not None:
            return found
        if self.config.any_registry and _looks_like_host(host):
            return Upstream(host, listed=False)
        raise RegistryError(
            "NAME_UNKNOWN",
            f"trow does not proxy {key!r}: add it to registry_proxies.registries in the config "
            "(or set registry_proxies.any_registry: true to proxy any public registry)",
            {"host": key},
        )

    def for_cache_name(self, name: str) -> ProxiedName | None:
        """Interpret C{f/<host-or-alias>/<repo>}; None if C{name} is not under C{f/}."""
        parts = name.split("/", 2)
        if parts[0] != PREFIX:
            return None
        if len(parts) < 3 or not parts[2]:
            raise RegistryError(
                "NAME_INVALID", f"proxied names are f/<host>/<repository>, got {name!r}", {"name": name}
            )
        upstream = self.upstream(parts[1])
        # The repository part goes into upstream URLs: it must be a name, never a path trick.
        return ProxiedName(upstream, canonical_repo(upstream.host, check_name(parts[2])))

    def for_namespace(self, ns: str, name: str) -> ProxiedName:
        """Interpret containerd's C{<repo>?ns=<host>}."""
        upstream = self.upstream(ns)
        return ProxiedName(upstream, canonical_repo(upstream.host, check_name(name)))


def _looks_like_host(host: str) -> bool:
    return "." in host or ":" in host or host == "localhost"
