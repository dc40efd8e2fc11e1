"""trow.webhook.rules: allow/deny prefixes on component boundaries, and rewrites through trow.

Reference: sections 3 (image_validation, image_mutation) and 6 of the product reference.
"""

from __future__ import annotations

from typing import Any

import pytest

from trow.config import config_from_dict
from trow.webhook.references import InvalidHostname, parse_reference
from trow.webhook.rules import InvalidRule, Mutator, Prefix, Validator

SHA256 = "sha256:" + "ab" * 32
TROW = "trow.example.com"


def covers(prefix: str, image: str) -> bool:
    """True if the rule prefix covers the image."""
    return Prefix.parse(prefix).match(parse_reference(image)) is not None


def validator(
    default: str = "Allow", allow: Any = (), deny: Any = (), hostname: str | None = TROW, proxies: Any = None
) -> Validator:
    """A validator built from YAML-shaped config sections, as trow builds it."""
    document: dict[str, Any] = {"image_validation": {"default": default, "allow": list(allow), "deny": list(deny)}}
    if proxies is not None:
        document["registry_proxies"] = proxies
    return Validator.from_config(config_from_dict(document), hostname)


def mutator(
    registries: Any = ("docker.io", "ghcr.io"), ignore: Any = (), proxies: Any = None, hostname: str = TROW
) -> Mutator:
    """A mutator built from YAML-shaped config sections (no registry_proxies: the well-known hosts)."""
    document: dict[str, Any] = {"image_mutation": {"registries": list(registries), "ignore": list(ignore)}}
    if proxies is not None:
        document["registry_proxies"] = proxies
    return Mutator.from_config(config_from_dict(document), hostname)


# -- prefixes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("image", "covered"), [("quay.io/x", True), ("quay.io/a/b:1", True), ("quay.io.evil.com/x", False)])
def test_host_prefix_matches_on_the_host_boundary(image: str, covered: bool) -> None:
    """quay.io covers images on quay.io, not on quay.io.evil.com."""
    assert covers("quay.io", image) is covered


@pytest.mark.parametrize(
    ("image", "covered"),
    [
        ("quay.io/good", True),
        ("quay.io/good/x", True),
        ("quay.io/good:tag", True),
        (f"quay.io/good@{SHA256}", True),
        ("quay.io/goodness", False),
        ("quay.io/goo", False),
        ("quay.io/bad/good", False),
    ],
)
def test_path_prefix_matches_on_component_boundaries(image: str, covered: bool) -> None:
    """quay.io/good covers that repository, below it, and any tag or digest of it; not goodness."""
    assert covers("quay.io/good", image) is covered


@pytest.mark.parametrize("image", ["registry.k8s.io/pause:3.9", "quay.io/good/x", "quay.io/goodness"])
def test_trailing_slash_changes_nothing(image: str) -> None:
    """registry.k8s.io/ (as Trow configs write it) means registry.k8s.io."""
    for prefix in ("registry.k8s.io", "quay.io/good"):
        assert covers(prefix + "/", image) is covers(prefix, image)


def test_empty_prefix_covers_every_image_with_length_zero() -> None:
    """"" is the least specific rule there is: it covers everything and loses to any other."""
    assert Prefix.parse("").match(parse_reference("anything.example/x")) == 0


@pytest.mark.parametrize("image", ["nginx", "library/nginx:1", "docker.io/nginx", "index.docker.io/library/busybox"])
def test_docker_io_library_prefix_covers_normalised_official_images(image: str) -> None:
    """docker.io/library/ covers official images however they are written."""
    assert covers("docker.io/library/", image)


@pytest.mark.parametrize("prefix", ["nginx", "docker.io/nginx", "docker.io/nginx/", "index.docker.io/nginx"])
def test_one_component_docker_hub_prefix_covers_the_official_image(prefix: str) -> None:
    """nginx (any Docker Hub spelling) covers the official image that `docker pull nginx` gets."""
    assert covers(prefix, "nginx:1.25")
    assert not covers(prefix, "nginxinc/nginx")


def test_one_component_docker_hub_prefix_covers_the_namespace() -> None:
    """docker.io/bitnami/ covers the bitnami namespace: the one-component prefix reads both ways."""
    assert covers("docker.io/bitnami/", "bitnami/redis:7")
    assert covers("bitnami", "docker.io/bitnami/redis:7")


@pytest.mark.parametrize("prefix", ["docker.io", "index.docker.io/", "registry-1.docker.io"])
def test_docker_hub_host_prefix_covers_all_of_docker_hub(prefix: str) -> None:
    """Every spelling of Docker Hub's host covers every Docker Hub image."""
    assert covers(prefix, "nginx") and covers(prefix, "team/app")


@pytest.mark.parametrize("image", ["quay.io:443/x", "quay.io:8443/x"])
def test_host_prefix_without_a_port_covers_every_port(image: str) -> None:
    """A port does not change who runs the registry: deny evil.com must catch evil.com:443/x."""
    assert covers("quay.io", image)


@pytest.mark.parametrize(
    ("image", "covered"), [("localhost:5000/x", True), ("localhost:5001/x", False), ("localhost/x", False)]
)
def test_host_prefix_with_a_port_covers_that_port_only(image: str, covered: bool) -> None:
    """localhost:5000/ covers localhost:5000 and no other port."""
    assert covers("localhost:5000/", image) is covered


def test_longer_normalised_prefix_is_more_specific() -> None:
    """Specificity is measured on the normalised form, so nginx equals docker.io/library/nginx."""
    ref = parse_reference("nginx")
    lengths = [Prefix.parse(p).match(ref) for p in ("docker.io/library/", "nginx", "docker.io/library/nginx")]
    assert lengths == [len("docker.io/library"), len("docker.io/library/nginx"), len("docker.io/library/nginx")]


@pytest.mark.parametrize(
    ("prefix", "why"),
    [
        ("nginx:1.25", "not a registry host"),
        ("quay.io/app:1", "cannot hold a tag"),
        (f"quay.io/app@{SHA256}", "digest"),
        ("quay.io//app", "empty path component"),
        ("/quay.io", "empty path component"),
        ("quay.io/App", "not a repository prefix"),
    ],
)
def test_prefix_that_is_not_a_name_prefix_is_refused(prefix: str, why: str) -> None:
    """Tags, digests, empty components and capitals in paths are errors, not silent no-ops."""
    with pytest.raises(ValueError, match=why):
        Prefix.parse(prefix)


# -- validation --------------------------------------------------------------------------------


def test_default_allow_with_no_rules_allows() -> None:
    """With no rule matching, default Allow lets the image run and says so."""
    decision = validator("Allow").check("nginx")
    assert decision.allowed
    assert decision.rule is None
    assert "image_validation.default is Allow" in decision.reason


def test_default_deny_with_no_rules_denies() -> None:
    """With no rule matching, default Deny refuses the image and says why."""
    decision = validator("Deny").check("nginx")
    assert not decision.allowed
    assert decision.reason == (
        "docker.io/library/nginx:latest matches no allow or deny rule, and image_validation.default is Deny"
    )


def test_allow_rule_overrides_default_deny() -> None:
    """An allow prefix lets matching images through a default Deny."""
    decision = validator("Deny", allow=["registry.k8s.io/"]).check("registry.k8s.io/pause:3.9")
    assert decision.allowed
    assert decision.rule == "registry.k8s.io/"


def test_longer_deny_beats_shorter_allow() -> None:
    """allow quay.io, deny quay.io/evil: the deny is longer, so it decides for quay.io/evil/*."""
    rules = validator("Deny", allow=["quay.io"], deny=["quay.io/evil"])
    assert not rules.check("quay.io/evil/miner:1").allowed
    assert rules.check("quay.io/good/app:1").allowed


def test_longer_allow_beats_shorter_deny() -> None:
    """deny quay.io, allow quay.io/good/: the allow is longer, so it decides for quay.io/good/*."""
    rules = validator("Allow", allow=["quay.io/good/"], deny=["quay.io"])
    assert rules.check("quay.io/good/app").allowed
    assert not rules.check("quay.io/other/app").allowed


def test_deny_wins_a_tie() -> None:
    """The same prefix in both lists denies."""
    decision = validator("Allow", allow=["quay.io/app"], deny=["quay.io/app/"]).check("quay.io/app:1")
    assert not decision.allowed
    assert decision.rule == "quay.io/app/"


def test_deny_wins_a_tie_between_two_spellings_of_one_prefix() -> None:
    """nginx and docker.io/library/nginx are the same prefix once normalised: deny wins."""
    assert not validator("Allow", allow=["docker.io/library/nginx"], deny=["nginx"]).check("nginx:1").allowed


def test_decision_names_the_deciding_rule_as_written() -> None:
    """The reason quotes the rule as the config writes it, and the normalised image."""
    decision = validator("Allow", deny=["my-trow.example.com/secret/"]).check("my-trow.example.com/secret/db:1")
    assert decision.reason == 'my-trow.example.com/secret/db:1 matches deny rule "my-trow.example.com/secret/"'


def test_component_boundary_stops_a_lookalike_host() -> None:
    """allow quay.io does not let quay.io.evil.com through a default Deny."""
    assert not validator("Deny", allow=["quay.io"]).check("quay.io.evil.com/x").allowed


def test_deny_rule_is_not_dodged_with_a_port() -> None:
    """deny evil.com also denies evil.com:443/x under a default Allow."""
    assert not validator("Allow", deny=["evil.com"]).check("evil.com:443/x").allowed


def test_invalid_image_is_denied_with_the_reason() -> None:
    """trow cannot tell what a runtime pulls for a malformed reference, so it refuses it."""
    decision = validator("Allow").check("Nginx:1")
    assert not decision.allowed
    assert decision.reference is None
    assert decision.reason == "not a valid image reference: repository 'Nginx' must be lowercase"


def test_proxy_path_is_judged_as_its_upstream_image() -> None:
    """An image pulled through trow is allowed when its upstream image is, under a default Deny."""
    decision = validator("Deny", allow=["docker.io/library/"]).check(f"{TROW}/f/docker.io/library/nginx:1")
    assert decision.allowed
    assert decision.reference == parse_reference("nginx:1")


def test_proxy_path_cannot_launder_a_denied_image() -> None:
    """Allowing trow itself does not allow a denied upstream image pulled through trow."""
    decision = validator("Allow", allow=[f"{TROW}/"], deny=["quay.io/evil/"]).check(f"{TROW}/f/quay.io/evil/miner:1")
    assert not decision.allowed
    assert decision.reason == "trow's proxy path for quay.io/evil/miner:1, which matches deny rule \"quay.io/evil/\""


def test_proxy_path_through_an_alias_is_judged_as_its_upstream() -> None:
    """f/<alias>/... is judged as the aliased host's image."""
    hub = {"registries": [{"host": "docker.io", "alias": "hub"}]}
    rules = validator("Allow", deny=["docker.io/library/busybox"], proxies=hub)
    assert not rules.check(f"{TROW}/f/hub/busybox:1.36").allowed


def test_trows_own_repositories_are_judged_by_trows_rules() -> None:
    """Images trow hosts (outside f/) are trow's images: an allow for trow lets them run."""
    assert validator("Deny", allow=[f"{TROW}/"]).check(f"{TROW}/team/app:1").allowed


def test_unusable_hostname_switches_proxy_mapping_off() -> None:
    """A hostname no image can name cannot be in any image, so there is nothing to map back."""
    assert validator(hostname="trow").proxy is None


@pytest.mark.parametrize(
    "image",
    ["nginx:1", "busybox@" + SHA256, "ghcr.io/acme/app:2", "ghcr.io/trow-registry/trow:1", "quay.io/x:1", "docker.io/evil/x"],
)
@pytest.mark.parametrize("default", ["Allow", "Deny"])
def test_rewrite_never_changes_the_verdict(image: str, default: str) -> None:
    """Validation of the rewritten image agrees with validation of the image as written: pulling
    through trow neither launders a denied image nor blocks an allowed one."""
    rules = validator(
        default, allow=["docker.io/library/", "ghcr.io/acme/", f"{TROW}/"], deny=["docker.io/evil", "ghcr.io/trow-registry"]
    )
    rewritten = mutator(ignore=["ghcr.io/trow-registry/"]).rewrite(image) or image
    assert rules.check(rewritten).allowed is rules.check(image).allowed


@pytest.mark.parametrize("key", ["allow", "deny"])
def test_bad_validation_rule_names_its_config_key(key: str) -> None:
    """A rule that is not a prefix is refused with the key path, for a config error at start-up."""
    with pytest.raises(InvalidRule) as caught:
        validator(**{key: ["quay.io", "quay.io/app:1"]})
    assert caught.value.path == f"image_validation.{key}[1]"
    assert "'quay.io/app:1'" in caught.value.message


# -- mutation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "rewritten"),
    [
        ("nginx", f"{TROW}/f/docker.io/library/nginx:latest"),
        ("nginx:1.25", f"{TROW}/f/docker.io/library/nginx:1.25"),
        ("index.docker.io/team/app:2", f"{TROW}/f/docker.io/team/app:2"),
        ("ghcr.io/acme/app:2", f"{TROW}/f/ghcr.io/acme/app:2"),
    ],
)
def test_listed_registry_is_rewritten_through_trow(image: str, rewritten: str) -> None:
    """Images of listed registries become <hostname>/f/<host>/<repo>:<tag>, normalised."""
    assert mutator().rewrite(image) == rewritten


def test_rewrite_keeps_a_digest() -> None:
    """A digest-pinned image stays pinned to the same digest, with no tag invented."""
    assert mutator().rewrite(f"ghcr.io/acme/app@{SHA256}") == f"{TROW}/f/ghcr.io/acme/app@{SHA256}"


def test_rewrite_keeps_tag_and_digest() -> None:
    """name:tag@digest keeps both."""
    assert mutator().rewrite(f"nginx:1.25@{SHA256}") == f"{TROW}/f/docker.io/library/nginx:1.25@{SHA256}"


def test_unlisted_registry_is_left_alone() -> None:
    """Only the registries in image_mutation.registries are rewritten."""
    assert mutator().rewrite("quay.io/app:1") is None


@pytest.mark.parametrize(
    ("image", "rewritten"), [("ghcr.io/trow-registry/trow:0.10", False), ("ghcr.io/trow-registry-fork/x:1", True)]
)
def test_ignore_prefix_matches_on_component_boundaries(image: str, rewritten: bool) -> None:
    """ghcr.io/trow-registry/ is never rewritten; ghcr.io/trow-registry-fork is another repository."""
    assert (mutator(ignore=["ghcr.io/trow-registry/"]).rewrite(image) is not None) is rewritten


def test_ignore_prefix_is_normalised() -> None:
    """An ignore entry written as the official image's short name covers its normalised form."""
    assert mutator(ignore=["busybox"]).rewrite("docker.io/library/busybox:1.36") is None


@pytest.mark.parametrize("image", ["nginx", "nginx:1@" + SHA256, "ghcr.io/acme/app", "team/app:3"])
def test_rewrite_is_idempotent(image: str) -> None:
    """A rewritten image points at trow already, so rewriting it again changes nothing."""
    once = mutator().rewrite(image)
    assert once is not None
    assert mutator().rewrite(once) is None


def test_image_on_trow_is_never_rewritten() -> None:
    """trow's own images are left alone even if trow's host were listed (no self-proxy loop)."""
    assert mutator(registries=[TROW], proxies={"registries": [{"host": TROW}]}).rewrite(f"{TROW}/team/app:1") is None


def test_invalid_image_is_left_alone() -> None:
    """Mutation never breaks anything: a malformed reference is for validation to refuse."""
    assert mutator().rewrite("Nginx") is None


def test_registry_with_a_port_is_rewritten_through_its_alias() -> None:
    """A host:port cannot sit inside a path, so its registry_proxies alias is used."""
    corp = {"registries": [{"host": "registry.corp.example:5000", "alias": "corp"}]}
    rules = mutator(registries=["registry.corp.example:5000"], proxies=corp)
    assert rules.rewrite("registry.corp.example:5000/team/app:3") == f"{TROW}/f/corp/team/app:3"


def test_registry_with_a_port_and_no_alias_is_a_config_error() -> None:
    """Without an alias, rewrites of a host:port registry cannot be written: refuse the config."""
    with pytest.raises(InvalidRule, match="give it an alias") as caught:
        mutator(registries=["registry.corp.example:5000"], proxies={"registries": [{"host": "registry.corp.example:5000"}]})
    assert caught.value.path == "image_mutation.registries[0]"


def test_registry_trow_does_not_proxy_is_a_config_error() -> None:
    """Rewriting to a host trow refuses to proxy would break every pull: refuse the config."""
    with pytest.raises(InvalidRule, match="trow does not proxy 'quay.io'"):
        mutator(registries=["quay.io"], proxies={"registries": [{"host": "docker.io"}]})


def test_registry_entry_with_a_path_is_a_config_error() -> None:
    """image_mutation.registries holds hosts; a prefix there is a mistake worth stopping on."""
    with pytest.raises(InvalidRule, match="hosts, not prefixes"):
        mutator(registries=["ghcr.io/acme"])


def test_registry_entry_with_a_trailing_slash_is_its_host() -> None:
    """docker.io/ is docker.io, as in the rule lists."""
    assert mutator(registries=["docker.io/"]).rewrite("nginx") == f"{TROW}/f/docker.io/library/nginx:latest"


def test_mutation_needs_a_hostname_images_can_name() -> None:
    """Rewriting to a dotless hostname would send pulls to Docker Hub: refuse it."""
    with pytest.raises(InvalidHostname):
        mutator(hostname="trow")


def test_rewrite_to_a_hostname_with_a_port() -> None:
    """trow's hostname keeps its port in rewritten images."""
    assert mutator(hostname=f"{TROW}:8443").rewrite("nginx:1") == f"{TROW}:8443/f/docker.io/library/nginx:1"
