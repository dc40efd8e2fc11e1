"""trow.registry.names: repository names, tags and digests against the distribution spec grammar."""

from __future__ import annotations

import hashlib

import pytest

from trow.registry.errors import RegistryError
from trow.registry.names import MAX_NAME_LENGTH, Digest, check_name, check_tag, is_digest, is_tag

HEX64 = "0123456789abcdef" * 4
HEX128 = HEX64 * 2


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a", "library/nginx", "a.b", "a_b", "a__b", "a-b", "a--b", "0", "a/b/c/d/e", "f/docker.io/library/nginx", "x" * 255],
)
def test_valid_names(name: str) -> None:
    """Names in the spec's grammar are returned unchanged."""
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "A", "a/B", "-a", ".a", "_a", "a-", "a.", "a_", "a..b", "a._b", "a___b", "/a", "a/", "a//b", "a/../b", "a b", "a:b", "é"],
)
def test_invalid_names(name: str) -> None:
    """Names outside the grammar raise NAME_INVALID, with the name in the detail."""
    with pytest.raises(RegistryError) as caught:
        check_name(name)
    assert caught.value.code == "NAME_INVALID"
    assert caught.value.status == 400
    assert caught.value.detail == {"name": name}


def test_name_longer_than_limit() -> None:
    """A name over 255 characters raises NAME_INVALID even when every component is valid."""
    name = "/".join(["a" * 50] * 6)
    assert len(name) > MAX_NAME_LENGTH
    with pytest.raises(RegistryError) as caught:
        check_name(name)
    assert caught.value.code == "NAME_INVALID"
    assert "255" in caught.value.message


def test_name_length_detail_is_truncated() -> None:
    """An enormous name is not echoed whole in the error detail."""
    with pytest.raises(RegistryError) as caught:
        check_name("a" * 100_000)
    assert len(caught.value.detail["name"]) <= 300


def test_name_with_trailing_newline_is_invalid() -> None:
    """'abc\\n' is not in the grammar ('$' in a regex would let the newline through)."""
    with pytest.raises(RegistryError) as caught:
        check_name("abc\n")
    assert caught.value.code == "NAME_INVALID"


# -- tags --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["latest", "v1.2.3", "_under", "A", "0", "a-b_c.d", "t" * 128])
def test_valid_tags(tag: str) -> None:
    """Tags in [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127} are valid."""
    assert is_tag(tag)
    assert check_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", ".a", "-a", "a/b", "a:b", "a b", "t" * 129, "sha256:" + HEX64, "é"])
def test_invalid_tags(tag: str) -> None:
    """Anything else is not a tag; check_tag raises MANIFEST_INVALID (the spec has no TAG_INVALID)."""
    assert not is_tag(tag)
    with pytest.raises(RegistryError) as caught:
        check_tag(tag)
    assert caught.value.code == "MANIFEST_INVALID"
    assert caught.value.detail == {"tag": tag}


def test_tag_with_trailing_newline_is_invalid() -> None:
    """'v1\\n' is not in the tag grammar ('$' in a regex would let the newline through)."""
    assert not is_tag("v1\n")


# -- digests -----------------------------------------------------------------------------------


def test_parse_sha256() -> None:
    """A sha256 digest parses into algorithm and hex, and prints back the same."""
    d = Digest.parse("sha256:" + HEX64)
    assert (d.algorithm, d.hex) == ("sha256", HEX64)
    assert str(d) == "sha256:" + HEX64


def test_parse_sha512() -> None:
    """sha512 digests are supported."""
    d = Digest.parse("sha512:" + HEX128)
    assert d.algorithm == "sha512" and d.hex == HEX128


@pytest.mark.parametrize(
    "value",
    [
        "",
        "sha256",
        "sha256:",
        ":" + HEX64,
        "sha256:" + HEX64[:-1],
        "sha256:" + HEX64 + "0",
        "sha256:" + HEX64.upper(),
        "sha256:" + HEX64[:-1] + "g",
        "sha512:" + HEX64,
        "SHA256:" + HEX64,
        "sha256:" + HEX64 + "\n",
        "sha256:" + HEX64[:-1] + "\n",
    ],
)
def test_invalid_digests(value: str) -> None:
    """Malformed digests raise DIGEST_INVALID with the digest in the detail."""
    with pytest.raises(RegistryError) as caught:
        Digest.parse(value)
    assert caught.value.code == "DIGEST_INVALID"
    assert caught.value.detail == {"digest": value}


@pytest.mark.parametrize("value", ["md5:" + "a" * 32, "sha384:" + "a" * 96, "blake3:" + HEX64, "sha256+b64:abc="])
def test_unsupported_algorithms(value: str) -> None:
    """Well-formed digests with an algorithm trow cannot verify are refused as unsupported."""
    with pytest.raises(RegistryError) as caught:
        Digest.parse(value)
    assert caught.value.code == "DIGEST_INVALID"
    assert "unsupported" in caught.value.message


def test_parse_with_other_code() -> None:
    """The caller may choose the error code a bad digest raises."""
    with pytest.raises(RegistryError) as caught:
        Digest.parse("nope", code="MANIFEST_INVALID")
    assert caught.value.code == "MANIFEST_INVALID"


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_of_hashes_data(algorithm: str) -> None:
    """Digest.of is the digest of the bytes with the given algorithm."""
    d = Digest.of(b"hello", algorithm)
    assert d == Digest(algorithm, hashlib.new(algorithm, b"hello").hexdigest())


def test_of_defaults_to_sha256() -> None:
    """Without an algorithm, Digest.of uses sha256."""
    assert Digest.of(b"") == Digest.parse("sha256:" + hashlib.sha256(b"").hexdigest())


def test_hasher_is_fresh_and_of_the_digest_algorithm() -> None:
    """hasher() gives a new hash object of the digest's algorithm."""
    d = Digest.of(b"abc", "sha512")
    h = d.hasher()
    h.update(b"abc")
    assert h.hexdigest() == d.hex
    assert d.hasher().hexdigest() == hashlib.sha512().hexdigest()


def test_digests_compare_by_value() -> None:
    """Two parses of one digest are equal and hash equal; order is by algorithm then hex."""
    a = Digest.parse("sha256:" + HEX64)
    assert a == Digest.parse("sha256:" + HEX64)
    assert len({a, Digest.parse("sha256:" + HEX64)}) == 1
    assert Digest("sha256", "0" * 64) < Digest("sha256", "1" * 64) < Digest("sha512", "0" * 128)


@pytest.mark.parametrize("reference, expected", [("sha256:abc", True), ("x:y", True), ("latest", False), ("v1.0", False)])
def test_is_digest(reference: str, expected: bool) -> None:
    """A reference with a colon is treated as a digest (tags cannot contain one)."""
    assert is_digest(reference) is expected
