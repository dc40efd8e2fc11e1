"""The upstream client: auth (anonymous, Basic, Bearer tokens), redirects, the breaker, manifests.

Upstreams are in memory: a scripted L{FakeRegistry} or a C{RequestSequence} behind StubTreq, with
time on a L{Clock}. Reference: section 5, "Upstream auth" and "Offline".
"""

from __future__ import annotations

import base64
from typing import Any, Iterator

import attrs
import pytest
from treq import content
from treq.testing import HasHeaders, RequestSequence, StringStubbingResource, StubTreq
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import Clock

from tests.unit.harness import result_of
from tests.unit.proxy_fakes import FakeRegistry, FakeResponse, StubHTTP, failure_of, image_manifest, pending, run, sha256
from trow.config import ProxyConfig, UpstreamRegistry
from trow.proxy.names import ProxiedName, UpstreamDirectory
from trow.proxy.upstream import MANIFEST_ACCEPT, UpstreamClient, UpstreamStatus, UpstreamUnavailable, same_domain
from trow.registry.manifests import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST

DOWN_FOR = 30.0
RESPONSE_TIMEOUT = 10.0

CONFIG = ProxyConfig(
    registries=(
        UpstreamRegistry(host="docker.io", username="robot", password="secret"),
        UpstreamRegistry(host="docker.io", username="team", password="t-pass", path_prefix="team-a"),
        UpstreamRegistry(host="ghcr.io"),
        UpstreamRegistry(host="registry.example.co.uk", username="robot", password="secret"),
    ),
    configured=True,
)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class ResolvingClock(Clock):
    """A test clock that also answers C{resolve}, as the reactor does, from a table."""

    def __init__(self, addresses: dict[str, str]) -> None:
        super().__init__()
        self.addresses = addresses
        self.resolved: list[str] = []

    def resolve(self, name: str, timeout: Any = None) -> "Deferred[str]":
        self.resolved.append(name)
        return succeed(self.addresses[name])


@attrs.define
class World:
    """An upstream client talking to a fake registry, on a test clock."""

    clock: Clock
    fake: FakeRegistry
    http: StubHTTP
    client: UpstreamClient
    names: UpstreamDirectory

    def name(self, cache_name: str) -> ProxiedName:
        proxied = self.names.for_cache_name(cache_name)
        assert proxied is not None
        return proxied


def make_world(config: ProxyConfig = CONFIG, clock: Clock | None = None) -> World:
    clock = clock or Clock()
    fake = FakeRegistry()
    http = StubHTTP(fake.resource(), clock)
    client = UpstreamClient(
        clock, response_timeout=RESPONSE_TIMEOUT, down_for=DOWN_FOR, http_for=lambda _upstream: http
    )
    return World(clock, fake, http, client, UpstreamDirectory(config))


@pytest.fixture
def world() -> Iterator[World]:
    w = make_world()
    yield w
    w.client.close()


def publish(world: World, repo: str, tag: str = "latest") -> str:
    return world.fake.add_manifest(repo, tag, image_manifest(note=repo))


def sequence_client(
    exchanges: list[Any], name: str = "f/ghcr.io/org/app"
) -> tuple[UpstreamClient, RequestSequence, list[str], ProxiedName]:
    """An upstream client whose upstream answers a scripted C{RequestSequence}."""
    failures: list[str] = []
    sequence = RequestSequence(exchanges, failures.append)
    clock = Clock()
    http = StubHTTP(StringStubbingResource(sequence), clock)
    client = UpstreamClient(clock, http_for=lambda _upstream: http)
    proxied = UpstreamDirectory(CONFIG).for_cache_name(name)
    assert proxied is not None
    return client, sequence, failures, proxied


# -- anonymous and Basic -------------------------------------------------------------------------


def test_anonymous_head_is_one_request_with_the_accept_set() -> None:
    """An upstream without credentials gets exactly one HEAD, carrying the full Accept set."""
    digest = sha256(b"m")
    client, sequence, failures, name = sequence_client(
        [
            (
                (b"head", "https://ghcr.io/v2/org/app/manifests/v1", {}, HasHeaders({"Accept": [MANIFEST_ACCEPT]}), b""),
                (200, {"Docker-Content-Digest": digest, "Content-Type": OCI_MANIFEST}, b""),
            )
        ]
    )
    with sequence.consume(pytest.fail):
        head = run(client.head_manifest(name, "v1"))
    assert failures == []
    assert head.digest == digest
    assert head.media_type == OCI_MANIFEST


def test_anonymous_request_carries_no_authorization(world: World) -> None:
    """Nothing configured for ghcr.io: no Authorization header is ever sent."""
    publish(world, "org/app")
    run(world.client.head_manifest(world.name("f/ghcr.io/org/app"), "latest"))
    [seen] = world.fake.seen
    assert seen.header("authorization") is None
    assert seen.host == "ghcr.io"


def test_head_accepts_every_manifest_type_trow_stores(world: World) -> None:
    """HEAD must see the real digest, so it accepts OCI and Docker images and indexes alike."""
    publish(world, "org/app")
    run(world.client.head_manifest(world.name("f/ghcr.io/org/app"), "latest"))
    accept = world.fake.seen[0].header("accept") or ""
    offered = {part.strip() for part in accept.split(",")}
    assert {OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST} <= offered


def test_head_returns_digest_media_type_and_size(world: World) -> None:
    """head_manifest reports the upstream's digest, media type and size, and reads no body."""
    content = image_manifest(note="sized")
    digest = world.fake.add_manifest("org/app", "v2", content, DOCKER_MANIFEST)
    head = run(world.client.head_manifest(world.name("f/ghcr.io/org/app"), "v2"))
    assert (head.digest, head.media_type, head.size) == (digest, DOCKER_MANIFEST, len(content))
    assert [s.method for s in world.fake.seen] == ["HEAD"]


def test_basic_challenge_is_answered_with_configured_credentials() -> None:
    """A 401 with a Basic challenge is retried once with the upstream's username and password."""
    digest = sha256(b"m")
    exchanges: list[Any] = [
        (
            (b"head", "https://registry-1.docker.io/v2/library/nginx/manifests/latest", {}, HasHeaders({}), b""),
            (401, {"WWW-Authenticate": 'Basic realm="hub"'}, b""),
        ),
        (
            (
                b"head",
                "https://registry-1.docker.io/v2/library/nginx/manifests/latest",
                {},
                HasHeaders({"Authorization": [basic("robot", "secret")]}),
                b"",
            ),
            (200, {"Docker-Content-Digest": digest, "Content-Type": OCI_MANIFEST}, b""),
        ),
    ]
    client, sequence, failures, name = sequence_client(exchanges, "f/docker.io/nginx")
    with sequence.consume(pytest.fail):
        head = run(client.head_manifest(name, "latest"))
    assert failures == []
    assert head.digest == digest


def test_basic_challenge_without_credentials_is_a_401_status() -> None:
    """With no credentials to offer, the 401 stands: UpstreamStatus(401), no retry."""
    exchanges: list[Any] = [
        (
            (b"head", "https://ghcr.io/v2/org/app/manifests/v1", {}, HasHeaders({}), b""),
            (401, {"WWW-Authenticate": 'Basic realm="ghcr"'}, b""),
        )
    ]
    client, sequence, failures, name = sequence_client(exchanges)
    with sequence.consume(pytest.fail):
        with pytest.raises(UpstreamStatus) as caught:
            run(client.head_manifest(name, "v1"))
    assert caught.value.status == 401
    assert failures == []


# -- Bearer tokens ------------------------------------------------------------------------------


def test_bearer_realm_in_upstream_domain_gets_basic_credentials(world: World) -> None:
    """registry-1.docker.io's realm auth.docker.io is in its domain: the token request carries the
    configured credentials, the requested scope and service, and the retry carries the token."""
    world.fake.bearer = True
    publish(world, "library/nginx")
    head = run(world.client.head_manifest(world.name("f/docker.io/nginx"), "latest"))
    assert head.digest is not None
    [token_request] = world.fake.token_requests()
    assert token_request.host == "auth.docker.io"
    assert token_request.header("authorization") == basic("robot", "secret")
    assert token_request.args["scope"] == ["repository:library/nginx:pull"]
    assert token_request.args["service"] == ["fake.registry"]
    first, retry = world.fake.registry_requests()
    assert first.header("authorization") is None
    assert retry.header("authorization") == "Bearer tok-1"


def test_bearer_realm_outside_upstream_domain_gets_no_credentials(world: World) -> None:
    """A realm on another domain is asked anonymously: the credentials never leave the upstream's
    domain (the token it hands out is still used)."""
    world.fake.bearer = True
    world.fake.realm = "https://evil.example/token"
    publish(world, "library/nginx")
    run(world.client.head_manifest(world.name("f/docker.io/nginx"), "latest"))
    [token_request] = world.fake.token_requests()
    assert token_request.host == "evil.example"
    assert token_request.header("authorization") is None
    assert world.fake.registry_requests()[-1].header("authorization") == "Bearer tok-1"


def test_bearer_realm_under_same_public_suffix_gets_no_credentials() -> None:
    """registry.example.co.uk and auth.attacker.co.uk are different domains: no credentials."""
    world = make_world()
    world.fake.bearer = True
    world.fake.realm = "https://auth.attacker.co.uk/token"
    publish(world, "team/app")
    run(world.client.head_manifest(world.name("f/registry.example.co.uk/team/app"), "latest"))
    [token_request] = world.fake.token_requests()
    assert token_request.host == "auth.attacker.co.uk"
    assert token_request.header("authorization") is None


# same_domain(realm host, upstream host): both as a URL's netloc, so with a port, and an IPv6
# address in brackets. Credentials go to the realm only when this is True.
SAME_DOMAIN = [
    # the same host, whatever the ports
    ("registry.example.com", "registry.example.com"),
    ("registry.example.com:5000", "registry.example.com"),
    ("REGISTRY.Example.com", "registry.example.com:443"),
    # a sibling in the same registrable domain (Docker Hub's own layout)
    ("auth.docker.io", "registry-1.docker.io"),
    ("auth.example.co.uk:8443", "registry.example.co.uk"),
    # the same IP address, on any port
    ("127.0.0.1:5001", "127.0.0.1:5000"),
    ("10.0.0.1", "10.0.0.1:5000"),
    # the same IPv6 address, bracketed with or without a port, or bare
    ("[::1]:5000", "[::1]"),
    ("[::1]", "[::1]:5000"),
    ("[::1]:5001", "[::1]:5000"),
    ("[fd00::1]:443", "fd00::1"),
    ("[FD00::1]", "[fd00::1]:5000"),
]

OTHER_DOMAIN = [
    # another registrable domain, also under the same public suffix
    ("evil.example", "registry-1.docker.io"),
    ("auth.attacker.co.uk", "registry.example.co.uk"),
    ("docker.io.evil.example", "registry-1.docker.io"),
    ("auth.docker.io", "registry.docker.io.evil.example"),
    # sites under a private public suffix (github.io) belong to different owners
    ("alice.github.io", "bob.github.io"),
    # both hosts a bare public suffix, or under an unknown TLD, but different
    ("auth.local", "registry.local"),
    ("localhost", "otherhost"),
    # another IPv4 address: even one whose last two labels match (10.0.0.1 and 10.1.0.1 end in
    # "0.1", which the public suffix list would call the same "domain")
    ("127.0.0.2:5000", "127.0.0.1:5000"),
    ("10.1.0.1", "10.0.0.1"),
    ("192.168.0.1:443", "10.0.0.1:443"),
    # an IP address against a host name, either way; a name ending like the address
    ("127.0.0.1", "localhost"),
    ("localhost:5000", "127.0.0.1:5000"),
    ("93.184.216.34", "example.com"),
    ("attacker.0.1", "10.0.0.1"),
    ("10.0.0.1", "attacker.0.1"),
    # another IPv6 address, bracketed or not; an IPv6 address against IPv4 or a name
    ("[::2]", "[::1]"),
    ("[::2]:5000", "[::1]:5000"),
    ("[fd00::2]:5000", "fd00::1"),
    ("[fd00:0:0:1::1]", "[fd00::1]"),
    ("[::ffff:127.0.0.1]", "127.0.0.1"),
    ("[::1]", "localhost"),
    ("[::1]:5000", "127.0.0.1:5000"),
]


@pytest.mark.parametrize("realm,upstream", SAME_DOMAIN)
def test_same_domain_accepts_the_upstreams_own_domain(realm: str, upstream: str) -> None:
    """The realm is the upstream itself (any port, any case, any IPv6 spelling) or a sibling in its
    registrable domain: the upstream's credentials may go there."""
    assert same_domain(realm, upstream) is True


@pytest.mark.parametrize("realm,upstream", OTHER_DOMAIN)
def test_same_domain_refuses_any_other_host(realm: str, upstream: str) -> None:
    """Another registrable domain, another IP address (v4 or v6, with or without brackets and
    ports), or an address against a name: no credentials go there."""
    assert same_domain(realm, upstream) is False


IP_UPSTREAMS = ProxyConfig(
    registries=(
        UpstreamRegistry(host="10.0.0.1:5000", alias="four", username="robot", password="secret", insecure=True),
        UpstreamRegistry(host="[fd00::1]:5000", alias="six", username="robot", password="secret", insecure=True),
    ),
    configured=True,
)


@pytest.mark.parametrize(
    "name,realm,sent",
    [
        ("f/four/app", "http://10.0.0.1:5001/token", True),
        ("f/four/app", "http://10.1.0.1:5000/token", False),
        ("f/four/app", "http://10.0.0.2:5000/token", False),
        pytest.param("f/six/app", "http://[fd00::1]:5001/token", True),
        pytest.param("f/six/app", "http://[fd00::2]:5000/token", False),
        pytest.param("f/six/app", "http://10.0.0.1:5000/token", False),
    ],
)
def test_bearer_realm_of_an_ip_upstream_gets_credentials_only_on_the_same_address(
    name: str, realm: str, sent: bool
) -> None:
    """An upstream configured by IP address sends its credentials to a token realm on that same
    address (another port is fine) and to no other address; the token is asked anonymously then."""
    world = make_world(IP_UPSTREAMS)
    world.fake.bearer = True
    world.fake.realm = realm
    publish(world, "app")
    run(world.client.head_manifest(world.name(name), "latest"))
    [token_request] = world.fake.token_requests()
    assert token_request.header("authorization") == (basic("robot", "secret") if sent else None)
    assert world.fake.registry_requests()[-1].header("authorization") == "Bearer tok-1"


def test_token_credentials_follow_longest_path_prefix(world: World) -> None:
    """The token for team-a/... is asked with team-a's credentials, others with the general ones."""
    world.fake.bearer = True
    publish(world, "team-a/app")
    publish(world, "other/app")
    run(world.client.head_manifest(world.name("f/docker.io/team-a/app"), "latest"))
    run(world.client.head_manifest(world.name("f/docker.io/other/app"), "latest"))
    team, other = world.fake.token_requests()
    assert team.header("authorization") == basic("team", "t-pass")
    assert other.header("authorization") == basic("robot", "secret")


def test_token_is_cached_per_scope_until_it_expires(world: World) -> None:
    """A token is reused for its scope until expires_in has passed; another scope gets its own;
    once expired, a new one is fetched."""
    world.fake.bearer = True
    world.fake.expires_in = 300
    publish(world, "library/nginx")
    publish(world, "library/redis")
    nginx = world.name("f/docker.io/nginx")

    run(world.client.head_manifest(nginx, "latest"))
    assert len(world.fake.token_requests()) == 1

    world.clock.advance(100)
    before = len(world.fake.registry_requests())
    run(world.client.head_manifest(nginx, "latest"))
    assert len(world.fake.token_requests()) == 1, "the cached token was not reused"
    [reused] = world.fake.registry_requests()[before:]
    assert reused.header("authorization") == "Bearer tok-1"

    run(world.client.head_manifest(world.name("f/docker.io/redis"), "latest"))
    assert len(world.fake.token_requests()) == 2, "another scope needs its own token"

    world.clock.advance(250)  # 350 s after the first token was issued
    before = len(world.fake.registry_requests())
    run(world.client.head_manifest(nginx, "latest"))
    assert len(world.fake.token_requests()) == 3, "an expired token was not refreshed"
    assert world.fake.registry_requests()[-1].header("authorization") == "Bearer tok-3"
    assert world.fake.registry_requests()[before].header("authorization") is None


def test_revoked_cached_token_is_replaced(world: World) -> None:
    """A cached token the upstream no longer accepts (401) is replaced by a fresh one at once."""
    world.fake.bearer = True
    publish(world, "library/nginx")
    nginx = world.name("f/docker.io/nginx")
    run(world.client.head_manifest(nginx, "latest"))
    world.fake.tokens.clear()  # the upstream forgets every token it issued
    head = run(world.client.head_manifest(nginx, "latest"))
    assert head.digest is not None
    assert len(world.fake.token_requests()) == 2
    assert world.fake.registry_requests()[-1].header("authorization") == "Bearer tok-1"


def test_access_token_field_is_accepted(world: World) -> None:
    """OAuth2-style token services answer access_token instead of token."""
    world.fake.bearer = True
    world.fake.token_field = "access_token"
    publish(world, "org/app")
    head = run(world.client.head_manifest(world.name("f/ghcr.io/org/app"), "latest"))
    assert head.digest is not None
    assert world.fake.registry_requests()[-1].header("authorization") == "Bearer tok-1"


def test_token_service_refusal_is_an_upstream_status(world: World) -> None:
    """A token service that refuses (bad credentials) is an UpstreamStatus, not a crash."""
    world.fake.bearer = True
    world.fake.token_status = 401
    publish(world, "library/nginx")
    with pytest.raises(UpstreamStatus) as caught:
        run(world.client.head_manifest(world.name("f/docker.io/nginx"), "latest"))
    assert caught.value.status == 401


# -- redirects ----------------------------------------------------------------------------------


def test_redirect_to_another_host_drops_authorization(world: World) -> None:
    """Blob downloads redirect to storage hosts: they get no Authorization header."""
    world.fake.bearer = True
    world.fake.blob_redirect = "https://cdn.example"
    data = b"layer bytes"
    digest = world.fake.add_blob(data)
    response = run(world.client.get_blob(world.name("f/docker.io/nginx"), digest))
    assert result_of(content(response)) == data
    cdn = [s for s in world.fake.seen if s.path.startswith("/cdn/")]
    assert [s.host for s in cdn] == ["cdn.example"]
    assert cdn[0].header("authorization") is None
    assert world.fake.registry_requests()[-1].header("authorization") == "Bearer tok-1"


def test_redirect_to_the_same_host_keeps_authorization(world: World) -> None:
    """A redirect within the upstream's own host still needs (and gets) the token."""
    world.fake.bearer = True
    world.fake.blob_redirect = "https://registry-1.docker.io"
    digest = world.fake.add_blob(b"layer")
    run(world.client.get_blob(world.name("f/docker.io/nginx"), digest))
    [cdn] = [s for s in world.fake.seen if s.path.startswith("/cdn/")]
    assert cdn.header("authorization") == "Bearer tok-1"


def test_redirect_downgrade_to_http_drops_authorization(world: World) -> None:
    """An https upstream redirecting to http:// (same host) must not get credentials in clear."""
    world.fake.bearer = True
    world.fake.blob_redirect = "http://registry-1.docker.io"
    digest = world.fake.add_blob(b"layer")
    run(world.client.get_blob(world.name("f/docker.io/nginx"), digest))
    [cdn] = [s for s in world.fake.seen if s.path.startswith("/cdn/")]
    assert cdn.header("authorization") is None


def test_redirected_head_stays_head() -> None:
    """A HEAD that is redirected (302) is repeated as a HEAD at the new location."""
    digest = sha256(b"m")
    exchanges: list[Any] = [
        (
            (b"head", "https://ghcr.io/v2/org/app/manifests/v1", {}, HasHeaders({}), b""),
            (302, {"Location": "/v2/org/app/manifests/v1-moved"}, b""),
        ),
        (
            (b"head", "https://ghcr.io/v2/org/app/manifests/v1-moved", {}, HasHeaders({}), b""),
            (200, {"Docker-Content-Digest": digest, "Content-Type": OCI_MANIFEST}, b""),
        ),
    ]
    client, sequence, failures, name = sequence_client(exchanges)
    d = ensureDeferred(client.head_manifest(name, "v1"))
    assert failures == [], failures[0]
    assert sequence.consumed()
    assert result_of(d).digest == digest


# -- the breaker --------------------------------------------------------------------------------


def test_connection_failure_marks_upstream_down_and_next_request_fails_at_once(world: World) -> None:
    """After a refused connection, requests to that upstream fail without touching the network."""
    name = world.name("f/ghcr.io/org/app")
    world.http.refuse = True
    with pytest.raises(UpstreamUnavailable):
        run(world.client.head_manifest(name, "latest"))
    assert len(world.http.attempts) == 1
    assert world.client.is_down(name.upstream)

    world.http.refuse = False  # even if it is back, the breaker holds for down_for
    with pytest.raises(UpstreamUnavailable):
        run(world.client.head_manifest(name, "latest"))
    assert len(world.http.attempts) == 1


def test_breaker_is_per_upstream(world: World) -> None:
    """One dead upstream does not stop requests to another."""
    world.http.refuse = True
    with pytest.raises(UpstreamUnavailable):
        run(world.client.head_manifest(world.name("f/ghcr.io/org/app"), "latest"))
    world.http.refuse = False
    publish(world, "library/nginx")
    assert run(world.client.head_manifest(world.name("f/docker.io/nginx"), "latest")).digest is not None


def test_breaker_recovers_after_down_for(world: World) -> None:
    """Once down_for has passed, the upstream is tried again, and a success clears the mark."""
    name = world.name("f/ghcr.io/org/app")
    publish(world, "org/app")
    world.http.refuse = True
    with pytest.raises(UpstreamUnavailable):
        run(world.client.head_manifest(name, "latest"))
    world.http.refuse = False
    world.clock.advance(DOWN_FOR / 2)
    assert world.client.is_down(name.upstream)
    world.clock.advance(DOWN_FOR)
    assert not world.client.is_down(name.upstream)
    assert run(world.client.head_manifest(name, "latest")).digest is not None
    assert len(world.http.attempts) == 2


def test_error_status_does_not_mark_upstream_down(world: World) -> None:
    """An upstream that answers, even with 500, is reachable: the next request goes out."""
    name = world.name("f/ghcr.io/org/app")
    world.fake.status = 500
    with pytest.raises(UpstreamStatus):
        run(world.client.head_manifest(name, "latest"))
    assert not world.client.is_down(name.upstream)
    with pytest.raises(UpstreamStatus):
        run(world.client.head_manifest(name, "latest"))
    assert len(world.fake.seen) == 2


def test_response_timeout_is_unavailable_and_marks_down(world: World) -> None:
    """An upstream that never answers costs one response timeout, then it is marked down."""
    name = world.name("f/ghcr.io/org/app")
    world.fake.hang_paths.add("org/app/manifests/latest")
    d = ensureDeferred(world.client.head_manifest(name, "latest"))
    world.clock.advance(RESPONSE_TIMEOUT / 2)
    assert pending(d)
    world.clock.advance(RESPONSE_TIMEOUT)
    world.http.flush()
    assert failure_of(d).check(UpstreamUnavailable)
    assert world.client.is_down(name.upstream)


def test_response_timeout_runs_on_the_injected_clock() -> None:
    """With a plain treq client, the response timeout still follows the clock UpstreamClient got."""
    fake = FakeRegistry()
    fake.hang_paths.add("org/app/manifests/latest")
    stub = StubTreq(fake.resource())  # treq-like, and it uses whatever reactor treq is given
    clock = Clock()
    client = UpstreamClient(clock, response_timeout=RESPONSE_TIMEOUT, http_for=lambda _upstream: stub)
    name = UpstreamDirectory(CONFIG).for_cache_name("f/ghcr.io/org/app")
    assert name is not None
    d = ensureDeferred(client.head_manifest(name, "latest"))
    try:
        clock.advance(RESPONSE_TIMEOUT * 3)
        stub.flush()
        assert not pending(d), "the response timeout did not fire on the injected clock"
        assert failure_of(d).check(UpstreamUnavailable)
    finally:
        # Let the hung request end, which also cancels the timer it left on the global reactor.
        for hung in fake.hang:
            if not hung.called:
                hung.callback(b"")
        stub.flush()


# -- manifests and blobs ------------------------------------------------------------------------


def test_get_manifest_returns_exact_bytes_type_and_digest(world: World) -> None:
    """get_manifest hands back the upstream's bytes unchanged, with media type and digest header."""
    content = image_manifest(note="exact")
    digest = world.fake.add_manifest("org/app", "v1", content)
    body, media_type, header = run(world.client.get_manifest(world.name("f/ghcr.io/org/app"), digest, 1 << 20))
    assert (body, media_type, header) == (content, OCI_MANIFEST, digest)


def test_get_manifest_over_max_size_is_refused(world: World) -> None:
    """A manifest larger than the limit is refused (502), whatever the upstream says."""
    content = image_manifest(note="x" * 2000)
    digest = world.fake.add_manifest("org/app", "big", content)
    with pytest.raises(UpstreamStatus) as caught:
        run(world.client.get_manifest(world.name("f/ghcr.io/org/app"), digest, 1000))
    assert caught.value.status == 502


def test_get_manifest_refuses_announced_oversize_without_reading_the_body(world: World) -> None:
    """An upstream announcing a 1 MB manifest against a 1000-byte limit is refused at once."""
    world.fake.stall["org/app/manifests/huge"] = (1_000_000, b"{" * 100)
    d = ensureDeferred(world.client.get_manifest(world.name("f/ghcr.io/org/app"), "huge", 1000))
    assert not pending(d), "get_manifest is still reading an oversized body"
    error = failure_of(d).value
    assert isinstance(error, UpstreamStatus)
    assert error.status == 502


def test_get_manifest_body_stall_times_out(world: World) -> None:
    """A manifest body that stops arriving ends in UpstreamUnavailable, not an endless wait."""
    world.fake.stall["org/app/manifests/slow"] = (500, b"{" * 100)
    d = ensureDeferred(world.client.get_manifest(world.name("f/ghcr.io/org/app"), "slow", 1 << 20))
    world.clock.advance(3600)
    world.http.flush()
    assert not pending(d), "get_manifest never gave up on a stalled body"
    assert failure_of(d).check(UpstreamUnavailable)


@pytest.mark.parametrize("status", [400, 403, 404, 429, 500, 503])
def test_error_statuses_raise_upstream_status(world: World, status: int) -> None:
    """Every error status is an UpstreamStatus carrying it, for HEAD, GET manifest and blob GET."""
    world.fake.status = status
    name = world.name("f/ghcr.io/org/app")
    for call in (
        lambda: world.client.head_manifest(name, "latest"),
        lambda: world.client.get_manifest(name, "latest", 1 << 20),
        lambda: world.client.get_blob(name, sha256(b"x")),
    ):
        with pytest.raises(UpstreamStatus) as caught:
            run(call())
        assert caught.value.status == status


def test_get_blob_from_offset_asks_for_a_range(world: World) -> None:
    """A resumed blob download asks for the rest with Range and gets a 206."""
    data = b"0123456789"
    digest = world.fake.add_blob(data)
    response = run(world.client.get_blob(world.name("f/ghcr.io/org/app"), digest, offset=4))
    assert response.code == 206
    assert world.fake.seen[-1].header("range") == "bytes=4-"
    assert result_of(content(response)) == data[4:]


# -- any_registry: never into private networks ----------------------------------------------------


ANY = ProxyConfig(registries=(UpstreamRegistry(host="ghcr.io"),), any_registry=True, configured=True)


def test_unlisted_host_resolving_to_private_address_is_refused() -> None:
    """A host proxied only through any_registry that resolves to 10.x is refused (403) before any
    request is sent."""
    clock = ResolvingClock({"internal.example": "10.1.2.3"})
    world = make_world(ANY, clock)
    with pytest.raises(UpstreamStatus) as caught:
        run(world.client.head_manifest(world.name("f/internal.example/app"), "latest"))
    assert caught.value.status == 403
    assert world.http.attempts == []
    assert clock.resolved == ["internal.example"]


@pytest.mark.parametrize("host", ["127.0.0.1:5000", "169.254.169.254"])
def test_unlisted_private_ip_literal_is_refused(host: str) -> None:
    """Loopback and link-local literals are refused without a lookup."""
    world = make_world(ANY, ResolvingClock({}))
    with pytest.raises(UpstreamStatus) as caught:
        run(world.client.head_manifest(world.name(f"f/{host}/app"), "latest"))
    assert caught.value.status == 403
    assert world.http.attempts == []


def test_unlisted_public_host_is_proxied() -> None:
    """A public host under any_registry is reached normally."""
    world = make_world(ANY, ResolvingClock({"registry.example.org": "93.184.216.34"}))
    publish(world, "app")
    assert run(world.client.head_manifest(world.name("f/registry.example.org/app"), "latest")).digest
    assert world.fake.seen[0].host == "registry.example.org"


def test_unlisted_host_cannot_redirect_into_a_private_network() -> None:
    """A public any_registry upstream redirecting a blob to a link-local address is refused."""
    world = make_world(ANY, ResolvingClock({"registry.example.org": "93.184.216.34"}))
    world.fake.blob_redirect = "http://169.254.169.254"
    digest = world.fake.add_blob(b"layer")
    with pytest.raises(UpstreamStatus) as caught:
        run(world.client.get_blob(world.name("f/registry.example.org/app"), digest))
    assert caught.value.status == 403
    assert all(s.host != "169.254.169.254" for s in world.fake.seen)


class _HandHTTP:
    """An HTTP client whose responses the test gives by hand, in the order requests were made."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, "Deferred[Any]"]] = []

    def request(self, method: str, url: str, **_: Any) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        self.calls.append((method, url, d))
        return d


def test_concurrent_first_requests_share_one_token_fetch() -> None:
    """Several requests that meet the same Bearer challenge at once wait for one token request
    (token services rate-limit too), and all of them then use that token."""
    http = _HandHTTP()
    client = UpstreamClient(Clock(), http_for=lambda upstream: http)
    name = UpstreamDirectory(ProxyConfig()).for_cache_name("f/ghcr.io/org/app")
    assert name is not None
    heads = [ensureDeferred(client.head_manifest(name, "v1")) for _ in range(3)]
    challenge = {"WWW-Authenticate": 'Bearer realm="https://ghcr.io/token",service="ghcr.io"'}
    for _, _, d in list(http.calls):
        response = FakeResponse(401, 0, challenge)
        d.callback(response)
        response.finish()
    token_calls = [call for call in http.calls if "/token" in call[1]]
    assert len(token_calls) == 1
    token = FakeResponse(200, None, {"Content-Type": "application/json"})
    token_calls[0][2].callback(token)
    token.write(b'{"token": "tok-shared", "expires_in": 300}')
    token.finish()
    retries = [call for call in http.calls if call[0] == "HEAD"][3:]
    assert len(retries) == 3
    for _, _, d in retries:
        ok = FakeResponse(200, 0, {"Docker-Content-Digest": "sha256:" + "a" * 64})
        d.callback(ok)
        ok.finish()
    assert [result_of(h).digest for h in heads] == ["sha256:" + "a" * 64] * 3


def test_an_ipv6_upstream_url_reaches_the_http_client_intact() -> None:
    """treq's hyperlink would run an IPv6 literal through IDNA and fail on its colons: trow hands
    such a URL over as one that is ASCII already, and leaves every other URL as it is."""
    from trow.proxy.upstream import _treq_url

    url = "http://[fd00::1]:5000/v2/six/app/manifests/1?ns=x"
    literal = _treq_url(url)
    assert literal.to_uri().to_text() == url
    assert _treq_url("https://registry-1.docker.io/v2/") == "https://registry-1.docker.io/v2/"
