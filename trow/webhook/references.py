"""Image references as pod specs write them, normalised the way distribution does it.

C{parse_reference("nginx")} is C{docker.io/library/nginx:latest}, the image a container runtime
pulls for it, so that rules are judged against what is really pulled and not against its
spelling. The grammar is distribution's (github.com/distribution/reference, C{regexp.go} and
C{normalize.go}):

    reference := [host[:port]/]path[:tag][@digest]
    host      := domain components joined by "." | "[" IPv6 "]"
    path      := lowercase components joined by "/"       (trow.registry.names.NAME_RE)

The first component is a host when it contains C{.} or C{:}, is C{localhost}, or has capitals
(a path never does); otherwise the image is on C{docker.io}. Beyond distribution,
C{registry-1.docker.io} also means C{docker.io}, as it does for trow's proxy.

L{TrowProxy} knows the other spelling of an upstream image: trow's own pull-through path,
C{<hostname>/f/<host>/<repo>} (or C{f/<alias>/<repo>}). The webhook maps such images back to the
upstream image before judging them, so that going through trow never changes a verdict.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import attrs

from trow.config import UpstreamRegistry
from trow.proxy.names import DOCKER_HUB, PREFIX, canonical_host, canonical_repo
from trow.registry.names import MAX_NAME_LENGTH, NAME_RE, TAG_RE

DEFAULT_TAG = "latest"

# distribution's domainAndPort: DNS-like labels (capitals allowed, folded later) or a bracketed
# IPv6 address, then an optional port.
_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
HOST_RE = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
# A bare 64-hex string is an image ID; distribution refuses it as a name, and so do we.
_IMAGE_ID_RE = re.compile(r"[a-f0-9]{64}")
# Digest algorithms go-digest knows, with the length of their lowercase hex encoding.
_DIGEST_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}


class InvalidReference(ValueError):
    """A string that is not an image reference; C{reason} says what is wrong with it."""

    def __init__(self, reference: str, reason: str) -> None:
        self.reference = reference
        self.reason = reason
        super().__init__(f"invalid image reference {reference!r}: {reason}")


class InvalidHostname(ValueError):
    """A hostname for trow that image references cannot name."""


def looks_like_host(component: str) -> bool:
    """True if C{component}, written first in a reference, names a registry host.

    distribution's rule: a C{.} or a C{:} (domain, IP address, port), C{localhost}, or capitals,
    which a repository path cannot have.
    """
    return "." in component or ":" in component or component == "localhost" or component != component.lower()


def split_port(host: str) -> tuple[str, str | None]:
    """Split C{host[:port]} (or C{[v6]:port}) into the host name and the port, or None."""
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :]
        return host[: end + 1], (rest[1:] if rest.startswith(":") else None)
    name, _, port = host.partition(":")
    return name, (port or None)


def check_host(host: str) -> str:
    """Return the canonical form of a registry host (lower case, Docker Hub folded), or raise
    C{ValueError} if it is not one."""
    if not HOST_RE.fullmatch(host):
        raise ValueError(f"{host!r} is not a registry host such as quay.io, localhost:5000 or [::1]:5000")
    return canonical_host(host)


@attrs.frozen
class Reference:
    """A normalised image reference.

    @ivar host: the registry, canonical: lower case, C{docker.io} for every Docker Hub spelling,
        the port kept (C{localhost:5000}).
    @ivar path: the repository on that registry, with C{library/} added on Docker Hub.
    @ivar tag: the tag; C{latest} when neither a tag nor a digest was written.
    @ivar digest: the digest, such as C{sha256:...}, or None.
    """

    host: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The repository with its registry, such as C{docker.io/library/nginx}."""
        return f"{self.host}/{self.path}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _check_digest(text: str, digest: str) -> str:
    algorithm, colon, encoded = digest.partition(":")
    if not colon:
        raise InvalidReference(text, f"digest {digest!r} is not algorithm:hex")
    length = _DIGEST_LENGTHS.get(algorithm)
    if length is None:
        raise InvalidReference(
            text, f"unsupported digest algorithm {algorithm!r}: expected one of {', '.join(_DIGEST_LENGTHS)}"
        )
    if len(encoded) != length or not re.fullmatch(r"[a-f0-9]+", encoded):
        raise InvalidReference(text, f"a {algorithm} digest is {length} lowercase hex characters, got {encoded!r}")
    return digest


def parse_reference(text: str) -> Reference:
    """Parse and normalise an image reference, or raise L{InvalidReference} saying why not.

    C{nginx} -> C{docker.io/library/nginx:latest}; C{localhost:5000/x} keeps its host and port;
    C{name:tag@sha256:...} keeps both the tag and the digest.
    """
    if not text:
        raise InvalidReference(text, "it is empty")
    if _IMAGE_ID_RE.fullmatch(text):
        raise InvalidReference(text, "a 64-character hex string is an image ID, not a reference")
    remainder, at, digest = text.partition("@")
    if at:
        _check_digest(text, digest)
    # A ":" after the last "/" starts the tag; one before it belongs to a host's port.
    tag: str | None = None
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not TAG_RE.fullmatch(tag):
            raise InvalidReference(
                text, f"tag {tag!r} is not 1 to 128 letters, digits, '_', '.' or '-' (not starting with '.' or '-')"
            )
    first, slash, rest = remainder.partition("/")
    # distribution: a single component is always a Docker Hub name, even "localhost".
    if slash and looks_like_host(first):
        if not HOST_RE.fullmatch(first):
            raise InvalidReference(text, f"{first!r} is not a registry host such as quay.io or localhost:5000")
        host, path = first, rest
    else:
        host, path = DOCKER_HUB, remainder
    if not NAME_RE.fullmatch(path):
        why = "must be lowercase" if NAME_RE.fullmatch(path.lower()) else (
            "must be components of lowercase letters and digits joined by '.', '_', '__' or '-', "
            "separated by single '/'"
        )
        raise InvalidReference(text, f"repository {path!r} {why}")
    host = canonical_host(host)
    path = canonical_repo(host, path)
    if len(host) + 1 + len(path) > MAX_NAME_LENGTH:
        raise InvalidReference(text, f"the name is longer than {MAX_NAME_LENGTH} characters")
    if tag is None and not at:
        tag = DEFAULT_TAG
    return Reference(host, path, tag, digest if at else None)


def aliases_from(registries: Iterable[UpstreamRegistry]) -> dict[str, str]:
    """The C{alias -> host} map of C{registry_proxies.registries}, as the proxy resolves it."""
    return {entry.alias.lower(): canonical_host(entry.host) for entry in registries if entry.alias}


def _alias_map(aliases: Mapping[str, str] | None) -> dict[str, str]:
    return {alias.lower(): canonical_host(host) for alias, host in (aliases or {}).items()}


def _lower(text: str) -> str:
    return text.lower()


def _check_hostname(_: object, __: object, hostname: str) -> None:
    if not HOST_RE.fullmatch(hostname) or not looks_like_host(hostname):
        raise InvalidHostname(
            f"hostname {hostname!r} cannot be written in an image reference: a registry host needs a "
            "'.' or a ':port', or must be localhost (otherwise runtimes read it as a Docker Hub name)"
        )


@attrs.frozen
class TrowProxy:
    """Where trow serves its pull-through cache, as image references name it.

    @ivar hostname: trow's public name, with or without a port (C{trow.example.com:8443}).
    @ivar aliases: C{alias -> host} from C{registry_proxies}, for C{f/<alias>/<repo>}.
    """

    hostname: str = attrs.field(converter=_lower, validator=_check_hostname)
    aliases: Mapping[str, str] = attrs.field(factory=dict, converter=_alias_map)

    def serves(self, host: str) -> bool:
        """True if images on C{host} are pulled from trow.

        The host names must be equal; ports must be too when both sides write one. A reference
        that leaves out the port trow was configured with (or the reverse) still means trow, and
        mapping it back to its upstream only ever applies the upstream's rules.
        """
        if host == self.hostname:
            return True
        name, port = split_port(host)
        own_name, own_port = split_port(self.hostname)
        return name == own_name and (port is None or own_port is None)

    def upstream_of(self, ref: Reference) -> Reference | None:
        """The upstream image that C{ref} pulls through trow's proxy, or None if C{ref} does not
        point at the proxy. Resolves one level, exactly as trow's proxy reads the path."""
        if not self.serves(ref.host):
            return None
        parts = ref.path.split("/", 2)
        if len(parts) < 3 or parts[0] != PREFIX:
            return None
        key, repo = parts[1], parts[2]
        host = self.aliases.get(key) or canonical_host(key)
        return Reference(host, canonical_repo(host, repo), ref.tag, ref.digest)

    def resolve(self, ref: Reference) -> Reference:
        """C{ref} with every level of trow's proxy path removed (C{f/<trow>/f/...} included)."""
        # Each step shortens the path, so this ends.
        while (upstream := self.upstream_of(ref)) is not None:
            ref = upstream
        return ref

    def path_key(self, host: str) -> str | None:
        """How C{f/<key>/...} names C{host}: the host itself, or an alias when the host cannot be
        a path component (a port, an IPv6 address). None when it cannot be named at all."""
        if NAME_RE.fullmatch(host) and "/" not in host:
            return host
        # Sorted, so that two aliases of one host always give the same rewrite.
        for alias in sorted(self.aliases):
            if self.aliases[alias] == host and NAME_RE.fullmatch(alias) and "/" not in alias:
                return alias
        return None

    def through(self, ref: Reference) -> Reference | None:
        """C{ref} as pulled through trow, C{<hostname>/f/<host>/<repo>}, keeping its tag and
        digest; None when the result would not be a valid reference that trow reads back as
        C{ref} (a host with a port and no alias, a name too long)."""
        key = self.path_key(ref.host)
        if key is None:
            return None
        written = f"{self.hostname}/{PREFIX}/{key}/{ref.path}"
        if ref.tag is not None:
            written += f":{ref.tag}"
        if ref.digest is not None:
            written += f"@{ref.digest}"
        try:
            proxied = parse_reference(written)
        except InvalidReference:
            return None
        return proxied if self.upstream_of(proxied) == ref else None
