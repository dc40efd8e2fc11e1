"""Repository names, tags and digests, checked against the distribution spec's grammar."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import attrs

from trow.registry.errors import RegistryError

# The spec's grammars, always used with fullmatch ("$" would let a trailing newline through).
# Names: path components separated by "/", at any depth.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
# Cache repositories of upstreams with a port (f/<host>:<port>/<repo>): the cache stores them
# under the upstream's real address; clients reach them through an alias.
CACHE_NAME_RE = re.compile(rf"f/[a-z0-9.-]+:[0-9]{{1,5}}/{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")

# Like distribution: the whole name, host included, stays under 256 characters.
MAX_NAME_LENGTH = 255

# Digest algorithms trow verifies, with the length of their hex encoding.
ALGORITHMS = {"sha256": 64, "sha512": 128}


def check_name(name: str) -> str:
    """Return C{name} if it is a valid repository name, else raise C{NAME_INVALID}."""
    if len(name) > MAX_NAME_LENGTH:
        raise RegistryError("NAME_INVALID", f"repository name is longer than {MAX_NAME_LENGTH} characters", {"name": name[:300]})
    if not NAME_RE.fullmatch(name) and not CACHE_NAME_RE.fullmatch(name):
        raise RegistryError(
            "NAME_INVALID",
            "invalid repository name: components are lowercase letters and digits, "
            "joined by '.', '_', '__' or '-', separated by '/'",
            {"name": name},
        )
    return name


def is_tag(reference: str) -> bool:
    """True if C{reference} is a syntactically valid tag."""
    return bool(TAG_RE.fullmatch(reference))


def check_tag(tag: str) -> str:
    """Return C{tag} if valid, else raise C{MANIFEST_INVALID}... as the spec has no TAG_INVALID."""
    if not is_tag(tag):
        raise RegistryError(
            "MANIFEST_INVALID",
            "invalid tag: up to 128 characters of letters, digits, '_', '.' and '-', not starting with '.' or '-'",
            {"tag": tag},
        )
    return tag


@attrs.frozen(order=True)
class Digest:
    """A verified-syntax content digest such as C{sha256:abc...}."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, value: str, code: str = "DIGEST_INVALID") -> "Digest":
        """Parse and check a digest string; raise C{code} (default C{DIGEST_INVALID}) if bad."""
        if not DIGEST_RE.fullmatch(value):
            raise RegistryError(code, f"invalid digest {value!r}: expected algorithm:hex", {"digest": value})
        algorithm, _, encoded = value.partition(":")
        length = ALGORITHMS.get(algorithm)
        if length is None:
            raise RegistryError(
                code,
                f"unsupported digest algorithm {algorithm!r}: trow accepts {', '.join(ALGORITHMS)}",
                {"digest": value},
            )
        if len(encoded) != length or not re.fullmatch(r"[a-f0-9]+", encoded):
            raise RegistryError(
                code, f"invalid {algorithm} digest: expected {length} lowercase hex characters", {"digest": value}
            )
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> "Digest":
        """The digest of C{data}."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> Any:
        """A fresh hashlib object for this digest's algorithm."""
        return hashlib.new(self.algorithm)


def is_digest(reference: str) -> bool:
    """True if C{reference} looks like a digest (it may still use an unsupported algorithm)."""
    return ":" in reference
