"""trow.webhook.references: image references normalised like distribution, and trow's proxy path.

Reference: section 6 (normalisation) and section 5 (f/<host>/<repo>, aliases) of the product
reference.
"""

from __future__ import annotations

import pytest

from trow.config import UpstreamRegistry
from trow.webhook.references import (
    InvalidHostname,
    InvalidReference,
    Reference,
    TrowProxy,
    aliases_from,
    parse_reference,
)

SHA256 = "sha256:" + "ab" * 32
SHA512 = "sha512:" + "cd" * 64
TROW = "trow.example.com"


def canonical(text: str) -> str:
    """The canonical string of the parsed reference."""
    return str(parse_reference(text))


# -- where the registry is ---------------------------------------------------------------------


@pytest.mark.parametrize("written", ["nginx", "library/nginx", "docker.io/nginx", "docker.io/library/nginx"])
def test_official_image_spellings_normalise_to_library(written: str) -> None:
    """Every spelling of Docker Hub's official nginx means docker.io/library/nginx."""
    assert canonical(written) == "docker.io/library/nginx:latest"


def test_first_component_without_dot_colon_or_localhost_is_a_docker_hub_namespace() -> None:
    """team/app is a Docker Hub user repository, and gets no library/ (it has two components)."""
    assert parse_reference("team/app:1") == Reference("docker.io", "team/app", "1")


@pytest.mark.parametrize("alias", ["index.docker.io", "registry-1.docker.io", "DOCKER.IO"])
def test_docker_hub_host_aliases_mean_docker_io(alias: str) -> None:
    """index.docker.io and registry-1.docker.io (any case) fold into docker.io, library/ included."""
    assert canonical(f"{alias}/nginx:1") == "docker.io/library/nginx:1"


def test_first_component_with_a_dot_is_a_host() -> None:
    """quay.io/org/app is on quay.io, with no library/ (that is for Docker Hub only)."""
    assert parse_reference("quay.io/app:2") == Reference("quay.io", "app", "2")


@pytest.mark.parametrize(
    ("written", "host", "path", "tag"),
    [("localhost:5000/x", "localhost:5000", "x", "latest"), ("myreg:5000/a/b:1", "myreg:5000", "a/b", "1")],
)
def test_first_component_with_a_port_is_a_host(written: str, host: str, path: str, tag: str) -> None:
    """A ':' in the first component is a port, not a tag: the host keeps it."""
    assert parse_reference(written) == Reference(host, path, tag)


def test_localhost_is_a_host() -> None:
    """localhost, alone of dotless names, is a registry host."""
    assert parse_reference("localhost/app") == Reference("localhost", "app", "latest")


def test_ipv6_host_in_brackets() -> None:
    """[::1]:5000/x is on the IPv6 loopback, port 5000."""
    assert parse_reference("[::1]:5000/x:2") == Reference("[::1]:5000", "x", "2")


def test_capitalised_first_component_is_a_host_lowercased() -> None:
    """As in distribution, a first component with capitals cannot be a path, so it is a host;
    hosts are case-insensitive, so it is compared in lower case."""
    assert parse_reference("Quay.IO/app").host == "quay.io"


@pytest.mark.parametrize(("written", "expected"), [("localhost", "localhost:latest"), ("localhost:5000", "localhost:5000")])
def test_a_single_component_is_never_a_host(written: str, expected: str) -> None:
    """As in distribution, a lone component is a Docker Hub name: localhost:5000 is tag 5000."""
    assert canonical(written) == f"docker.io/library/{expected}"


# -- tags and digests --------------------------------------------------------------------------


def test_no_tag_and_no_digest_means_latest() -> None:
    """An untagged reference pulls :latest."""
    assert parse_reference("quay.io/app").tag == "latest"


def test_digest_alone_gets_no_latest_tag() -> None:
    """A digest pins the image: no :latest is invented next to it."""
    assert parse_reference(f"quay.io/app@{SHA256}") == Reference("quay.io", "app", None, SHA256)


def test_tag_and_digest_are_both_kept() -> None:
    """name:tag@digest keeps both, in that order."""
    assert canonical(f"nginx:1.25@{SHA256}") == f"docker.io/library/nginx:1.25@{SHA256}"


def test_sha512_digest_is_preserved() -> None:
    """Digests other than sha256 are kept as written."""
    assert parse_reference(f"localhost:5000/x@{SHA512}").digest == SHA512


@pytest.mark.parametrize(
    "written",
    ["docker.io/library/nginx:latest", f"quay.io/a/b:1@{SHA256}", "localhost:5000/x:latest", "[::1]:5000/x@" + SHA512],
)
def test_canonical_form_parses_back_to_itself(written: str) -> None:
    """The canonical string is a fixed point: parsing it gives the same reference."""
    ref = parse_reference(written)
    assert str(ref) == written
    assert parse_reference(str(ref)) == ref


def test_name_is_host_and_path() -> None:
    """Reference.name is the repository with its registry, without tag or digest."""
    assert parse_reference(f"nginx:1@{SHA256}").name == "docker.io/library/nginx"


# -- malformed references ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "why"),
    [
        ("", "empty"),
        ("Nginx", "must be lowercase"),
        ("quay.io/Org/app", "must be lowercase"),
        ("ab" * 32, "image ID"),
        ("nginx:", "tag ''"),
        ("nginx:-1", "tag '-1'"),
        ("nginx:" + "a" * 129, "tag"),
        ("nginx@sha256:abc", "64 lowercase hex"),
        ("nginx@sha256:" + "AB" * 32, "64 lowercase hex"),
        ("nginx@md5:" + "ab" * 16, "unsupported digest algorithm 'md5'"),
        ("nginx@" + "ab" * 32, "algorithm:hex"),
        ("a//b", "separated by single '/'"),
        ("quay.io/", "repository ''"),
        ("quay.io:port/x", "not a registry host"),
        ("-bad.io/x", "not a registry host"),
        (" nginx", "repository ' nginx'"),
        ("nginx:1 ", "tag '1 '"),
    ],
)
def test_malformed_reference_raises_with_the_reason(written: str, why: str) -> None:
    """Malformed references raise InvalidReference, a ValueError whose message says what is wrong."""
    with pytest.raises(InvalidReference) as caught:
        parse_reference(written)
    assert isinstance(caught.value, ValueError)
    assert why in caught.value.reason
    assert repr(written) in str(caught.value)


def test_name_longer_than_255_characters_is_refused() -> None:
    """Like distribution, the whole name, host included, stays within 255 characters."""
    with pytest.raises(InvalidReference, match="255"):
        parse_reference("quay.io/" + "a" * 248)


# -- trow's proxy path -------------------------------------------------------------------------


def proxy(hostname: str = TROW, **aliases: str) -> TrowProxy:
    """trow's proxy address with the given alias -> host map."""
    return TrowProxy(hostname, aliases)


def test_proxy_path_maps_back_to_the_upstream_image() -> None:
    """<trow>/f/<host>/<repo>:<tag> is the upstream <host>/<repo>:<tag>."""
    assert proxy().upstream_of(parse_reference(f"{TROW}/f/quay.io/org/app:1")) == Reference("quay.io", "org/app", "1")


def test_proxy_path_to_docker_hub_gets_library() -> None:
    """f/docker.io/nginx is read like the proxy reads it: docker.io/library/nginx."""
    assert proxy().upstream_of(parse_reference(f"{TROW}/f/docker.io/nginx")) == parse_reference("nginx")


def test_proxy_path_keeps_tag_and_digest() -> None:
    """Mapping back keeps both the tag and the digest."""
    upstream = proxy().upstream_of(parse_reference(f"{TROW}/f/quay.io/app:1@{SHA256}"))
    assert upstream == Reference("quay.io", "app", "1", SHA256)


def test_proxy_path_through_an_alias_maps_to_the_aliased_host() -> None:
    """f/<alias>/<repo> is the aliased upstream, whatever case the alias is written in."""
    upstream = proxy(Corp="registry.corp.example:5000").upstream_of(parse_reference(f"{TROW}/f/corp/team/app:3"))
    assert upstream == Reference("registry.corp.example:5000", "team/app", "3")


def test_image_on_trow_outside_f_is_not_a_proxy_path() -> None:
    """trow's own repositories are images of trow, not of an upstream."""
    assert proxy().upstream_of(parse_reference(f"{TROW}/team/app")) is None


def test_f_without_a_repository_is_not_a_proxy_path() -> None:
    """<trow>/f/docker.io names no upstream repository, so it maps back to nothing."""
    assert proxy().upstream_of(parse_reference(f"{TROW}/f/docker.io")) is None


def test_f_path_on_another_host_is_not_trows_proxy() -> None:
    """Only trow's hostname is trow: evil.com/f/docker.io/nginx is an image of evil.com."""
    assert proxy().upstream_of(parse_reference("evil.com/f/docker.io/nginx")) is None


@pytest.mark.parametrize(
    ("hostname", "image_host", "serves"),
    [
        (TROW, TROW, True),
        (TROW, f"{TROW}:8443", True),
        (f"{TROW}:8443", TROW, True),
        (f"{TROW}:8443", f"{TROW}:8443", True),
        (f"{TROW}:8443", f"{TROW}:9000", False),
        (TROW, f"x.{TROW}", False),
        (TROW, "trow.example.co", False),
    ],
)
def test_proxy_host_matches_with_or_without_port(hostname: str, image_host: str, serves: bool) -> None:
    """The host names must be equal; ports only have to agree when both sides write one."""
    assert proxy(hostname).serves(image_host) is serves


def test_nested_proxy_paths_resolve_to_the_last_upstream() -> None:
    """trow proxying itself (f/<trow>/f/<host>/...) still resolves to the real upstream."""
    ref = parse_reference(f"{TROW}/f/{TROW}/f/quay.io/app:1")
    assert proxy().resolve(ref) == Reference("quay.io", "app", "1")


def test_resolve_leaves_other_images_alone() -> None:
    """An image not on trow's proxy path resolves to itself."""
    ref = parse_reference("quay.io/app:1")
    assert proxy().resolve(ref) == ref


def test_through_writes_the_host_form() -> None:
    """An upstream image pulled through trow is <trow>/f/<host>/<repo> with its tag and digest."""
    through = proxy().through(parse_reference(f"nginx:1.25@{SHA256}"))
    assert str(through) == f"{TROW}/f/docker.io/library/nginx:1.25@{SHA256}"


def test_through_names_a_host_with_a_port_by_its_alias() -> None:
    """A host:port cannot be a path component, so its alias is used instead."""
    through = proxy(corp="registry.corp.example:5000").through(parse_reference("registry.corp.example:5000/team/app:3"))
    assert str(through) == f"{TROW}/f/corp/team/app:3"


def test_through_a_host_with_a_port_and_no_alias_is_impossible() -> None:
    """Without an alias, a host with a port (or an IPv6 host) cannot be proxied by path."""
    assert proxy().through(parse_reference("registry.corp.example:5000/team/app")) is None
    assert proxy().through(parse_reference("[::1]/app")) is None


def test_through_refuses_a_name_that_would_be_too_long() -> None:
    """A rewrite that would pass 255 characters is not offered."""
    assert proxy().through(parse_reference("quay.io/" + "a" * 230)) is None


@pytest.mark.parametrize("written", ["nginx:1", f"quay.io/org/app@{SHA256}", f"ghcr.io/a/b:2@{SHA512}"])
def test_through_then_upstream_of_is_the_original(written: str) -> None:
    """Going through trow and mapping back gives the same image: a rewrite never changes it."""
    ref = parse_reference(written)
    through = proxy().through(ref)
    assert through is not None
    assert proxy().upstream_of(through) == ref


def test_hostname_is_lowercased() -> None:
    """Host names are case-insensitive; trow compares them in lower case."""
    assert TrowProxy("Trow.Example.COM").hostname == TROW


@pytest.mark.parametrize("hostname", ["trow", "trow.example.com/x", "https://trow.example.com", ""])
def test_hostname_that_image_references_cannot_name_is_refused(hostname: str) -> None:
    """A dotless, portless name other than localhost would be read as a Docker Hub name."""
    with pytest.raises(InvalidHostname, match="cannot be written in an image reference"):
        TrowProxy(hostname)


def test_aliases_from_maps_lowercase_alias_to_canonical_host() -> None:
    """aliases_from reads registry_proxies entries the way the proxy does."""
    entries = [
        UpstreamRegistry("index.docker.io", alias="Hub"),
        UpstreamRegistry("quay.io"),
        UpstreamRegistry("r.corp:5000", alias="corp"),
    ]
    assert aliases_from(entries) == {"hub": "docker.io", "corp": "r.corp:5000"}
