"""Which images may run (validation) and which are rewritten to pull through trow (mutation).

Rules are name prefixes, matched on component boundaries against normalised references
(L{trow.webhook.references}): C{quay.io/good} covers C{quay.io/good}, C{quay.io/good/x},
C{quay.io/good:1} and C{quay.io/good@sha256:...}, but neither C{quay.io/goodness} nor
C{quay.io.evil.com/x}. A prefix is normalised like a reference:

    prefix                      covers
    ""  (or "/")                every image
    quay.io  =  quay.io/        every image on quay.io, on any port
    localhost:5000/             images on localhost:5000 only
    docker.io/library/          Docker Hub's official images
    nginx  =  docker.io/nginx   the official image docker.io/library/nginx, and the
                                namespace docker.io/nginx/... (see below)
    bitnami/                    docker.io/bitnami/..., and docker.io/library/bitnami

A trailing C{/} changes nothing. A Docker Hub prefix of one component is ambiguous: C{nginx} is
the official image (what C{docker pull nginx} pulls) and C{docker.io/bitnami/} reads as a
namespace. It covers both, so that either intent works. A host written without a port covers
every port of that host: a port does not change who runs the registry, and C{deny: [evil.com]}
must not be dodged with C{evil.com:443/x}. Prefixes hold no tag or digest; one that does is
refused when the rules are built.

Validation starts from C{default}; the longest matching prefix (measured in its normalised form)
among C{allow} and C{deny} decides; on equal length, deny wins.
"""

from __future__ import annotations

from typing import Sequence

import attrs

from trow.config import Config
from trow.proxy.names import DOCKER_HUB, UpstreamDirectory
from trow.registry.errors import RegistryError
from trow.registry.names import NAME_RE
from trow.webhook.references import (
    InvalidReference,
    Reference,
    TrowProxy,
    aliases_from,
    check_host,
    looks_like_host,
    parse_reference,
    split_port,
)


class InvalidRule(ValueError):
    """A rule of C{image_validation} or C{image_mutation} that cannot be used.

    @ivar path: the config key, such as C{image_validation.allow[2]}.
    @ivar message: what is wrong with it.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


@attrs.frozen
class Prefix:
    """One normalised rule prefix.

    @ivar written: the prefix as the config writes it, for messages.
    @ivar host: the canonical registry host, or None for the empty prefix (every image).
    @ivar paths: repository prefixes on that host that the rule covers (C{""}: the whole host).
    """

    written: str
    host: str | None
    paths: tuple[str, ...] = ("",)

    @classmethod
    def parse(cls, written: str) -> "Prefix":
        """Normalise a prefix; raise C{ValueError} saying why when it is not one."""
        body = written.rstrip("/")
        if not body:
            return cls(written, None)
        if "@" in body:
            raise ValueError("a rule is a name prefix such as quay.io/org/; it cannot hold a digest")
        parts = body.split("/")
        if "" in parts:
            raise ValueError("empty path component ('//' or a leading '/')")
        if looks_like_host(parts[0]):
            try:
                host = check_host(parts[0])
            except ValueError as e:
                raise ValueError(f"{e} (a rule is a name prefix; it cannot hold a tag)") from None
            path_parts = parts[1:]
        else:
            host, path_parts = DOCKER_HUB, parts
        path = "/".join(path_parts)
        if path and not NAME_RE.fullmatch(path):
            raise ValueError(
                f"{path!r} is not a repository prefix: lowercase components joined by '.', '_', '__' "
                "or '-', separated by '/' (a rule cannot hold a tag)"
            )
        if host == DOCKER_HUB and len(path_parts) == 1 and path != "library":
            # nginx: the official image, or the namespace nginx/ (see the module docstring).
            return cls(written, host, (f"library/{path}", path))
        return cls(written, host, (path,))

    def _host_matches(self, host: str) -> bool:
        if host == self.host:
            return True
        name, _ = split_port(host)
        return split_port(self.host or "")[1] is None and name == self.host

    def match(self, ref: Reference) -> int | None:
        """How specific this prefix is for C{ref} (the length of its normalised form), or None
        if it does not cover C{ref}."""
        if self.host is None:
            return 0
        if not self._host_matches(ref.host):
            return None
        for path in self.paths:
            if not path:
                return len(self.host)
            if ref.path == path or ref.path.startswith(path + "/"):
                return len(self.host) + 1 + len(path)
        return None


def _prefixes(written: Sequence[str], key: str) -> tuple[Prefix, ...]:
    prefixes = []
    for i, text in enumerate(written):
        try:
            prefixes.append(Prefix.parse(text))
        except ValueError as e:
            raise InvalidRule(f"{key}[{i}]", f"{text!r}: {e}") from None
    return tuple(prefixes)


def _proxy(config: Config, hostname: str) -> TrowProxy:
    return TrowProxy(hostname, aliases_from(config.registry_proxies.registries))


@attrs.frozen
class Decision:
    """The verdict on one image.

    @ivar image: the image as written.
    @ivar allowed: whether it may run.
    @ivar reason: why, as a clause for a message: the rule that decided, or the default.
    @ivar reference: what was judged: the normalised image, mapped back from trow's proxy path
        to the upstream image; None when C{image} is not a valid reference.
    @ivar rule: the deciding rule as written in the config; None when the default decided.
    """

    image: str
    allowed: bool
    reason: str
    reference: Reference | None = None
    rule: str | None = None


@attrs.frozen
class Validator:
    """C{image_validation}: allow and deny prefixes over a default.

    @ivar proxy: trow's proxy address, so that images pulled through trow are judged as the
        upstream images they are; None when trow has no usable hostname.
    """

    default_allow: bool
    allow: tuple[Prefix, ...] = ()
    deny: tuple[Prefix, ...] = ()
    proxy: TrowProxy | None = None

    @classmethod
    def from_config(cls, config: Config, hostname: str | None = None) -> "Validator":
        """Build from the config and trow's C{--hostname}; raise L{InvalidRule} naming the key
        of a bad prefix. A hostname that image references cannot name is ignored: no image can
        point at it anyway."""
        section = config.image_validation
        proxy: TrowProxy | None = None
        if hostname is not None:
            try:
                proxy = _proxy(config, hostname)
            except ValueError:
                pass
        return cls(
            default_allow=section.default.lower() == "allow",
            allow=_prefixes(section.allow, "image_validation.allow"),
            deny=_prefixes(section.deny, "image_validation.deny"),
            proxy=proxy,
        )

    def check(self, image: str) -> Decision:
        """Judge one image as written in a pod spec. Invalid references are denied: trow cannot
        tell what a runtime would pull for them."""
        try:
            written = parse_reference(image)
        except InvalidReference as e:
            return Decision(image, False, f"not a valid image reference: {e.reason}")
        ref = written if self.proxy is None else self.proxy.resolve(written)
        subject = str(ref) if ref == written else f"trow's proxy path for {ref}, which"
        best: tuple[int, bool, Prefix] | None = None
        for denies, prefixes in ((False, self.allow), (True, self.deny)):
            for prefix in prefixes:
                length = prefix.match(ref)
                # Tuples compare length first, then deny (True) over allow (False) on a tie.
                if length is not None and (best is None or (length, denies) > best[:2]):
                    best = (length, denies, prefix)
        if best is None:
            default = "Allow" if self.default_allow else "Deny"
            return Decision(
                image,
                self.default_allow,
                f"{subject} matches no allow or deny rule, and image_validation.default is {default}",
                ref,
            )
        _, denies, prefix = best
        kind = "deny" if denies else "allow"
        return Decision(image, not denies, f'{subject} matches {kind} rule "{prefix.written}"', ref, prefix.written)


@attrs.frozen
class Mutator:
    """C{image_mutation}: rewrite images of some registries to pull through trow.

    @ivar proxy: trow's proxy address, which rewritten images point at.
    @ivar registries: canonical hosts whose images are rewritten (the port, if any, must match:
        a different port could be a registry trow does not proxy).
    @ivar ignore: prefixes never rewritten.
    """

    proxy: TrowProxy
    registries: frozenset[str] = frozenset()
    ignore: tuple[Prefix, ...] = ()

    @classmethod
    def from_config(cls, config: Config, hostname: str) -> "Mutator":
        """Build from the config and trow's C{--hostname}; raise L{InvalidRule} naming the key
        when a registry cannot be rewritten (not a host, not proxied by trow, or a host with a
        port and no alias) and C{InvalidHostname} when image references cannot name trow."""
        proxy = _proxy(config, hostname)
        section = config.image_mutation
        directory = UpstreamDirectory(config.registry_proxies)
        registries = set()
        for i, written in enumerate(section.registries):
            key = f"image_mutation.registries[{i}]"
            try:
                host = check_host(written.rstrip("/"))
            except ValueError as e:
                raise InvalidRule(key, f"{e}; this list holds hosts, not prefixes") from None
            try:
                directory.upstream(host)
            except RegistryError as e:
                raise InvalidRule(key, f"rewritten images would not pull: {e.message}") from None
            if proxy.path_key(host) is None:
                raise InvalidRule(
                    key,
                    f"{host} cannot be written inside an image path (f/{host}/...): give it an alias "
                    "in registry_proxies.registries so rewritten images can use f/<alias>/...",
                )
            registries.add(host)
        return cls(proxy, frozenset(registries), _prefixes(section.ignore, "image_mutation.ignore"))

    def rewrite(self, image: str) -> str | None:
        """The image to write instead of C{image}, or None to leave it as it is: not a valid
        reference, not from a listed registry, ignored, or already pulled from trow (so the
        rewrite is idempotent)."""
        try:
            ref = parse_reference(image)
        except InvalidReference:
            return None
        if self.proxy.serves(ref.host) or ref.host not in self.registries:
            return None
        if any(prefix.match(ref) is not None for prefix in self.ignore):
            return None
        proxied = self.proxy.through(ref)
        return None if proxied is None else str(proxied)
