"""trow.config: the YAML config file, its sections, durations, sizes, and errors that name the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest

from trow.config import (
    AuthConfig,
    AuthRule,
    Config,
    ConfigError,
    GCConfig,
    LimitsConfig,
    MutationConfig,
    ProxyConfig,
    UpstreamRegistry,
    ValidationConfig,
    config_from_dict,
    config_summary,
    load_config,
    parse_duration,
    parse_size,
)

# The example of reference.md section 3, plus the limits section trow adds.
REFERENCE_YAML = """
registry_proxies:
  registries:
    - host: docker.io
      alias: docker
      username: robot
      password: secret
      path_prefix: team-a
      insecure: false
      ca_file: /etc/ssl/corp.pem
  max_size: 50GiB
  offline: false
  any_registry: false
image_validation:
  default: Deny
  allow: [registry.k8s.io/, my-trow.example.com/]
  deny:  [my-trow.example.com/secret/]
image_mutation:
  registries: [docker.io, ghcr.io]
  ignore: [ghcr.io/trow-registry/]
auth:
  htpasswd: /etc/trow/htpasswd
  anonymous: pull
  token_ttl: 1h
  rules:
    - users: [deployer]
      repositories: [team-a/]
      actions: [pull, push, delete]
    - users: ["*"]
      repositories: [""]
      actions: [pull]
gc:
  interval: 10m
  upload_expiry: 24h
  grace: 1h
limits:
  max_manifest_size: 8MiB
"""


@pytest.fixture
def reference(tmp_path: Path) -> Config:
    """The reference example, loaded from a file."""
    path = tmp_path / "trow.yaml"
    path.write_text(REFERENCE_YAML)
    return load_config(str(path))


def error_of(document: Any) -> ConfigError:
    """The ConfigError that C{document} raises."""
    with pytest.raises(ConfigError) as caught:
        config_from_dict(document)
    return caught.value


# -- defaults ----------------------------------------------------------------------------------


def test_no_document_is_the_default_config() -> None:
    """An empty file (None) and an empty mapping both mean the embedded defaults."""
    assert config_from_dict(None) == Config()
    assert config_from_dict({}) == Config()


def test_defaults() -> None:
    """The defaults: no proxies section, Allow, no auth rules, gc 10m/24h/1h, 4MiB manifests."""
    config = Config()
    assert config.registry_proxies == ProxyConfig(registries=(), max_size=None, offline=False, any_registry=False, configured=False)
    assert config.image_validation == ValidationConfig(default="Allow", allow=(), deny=(), configured=False)
    assert config.image_mutation == MutationConfig()
    assert config.auth == AuthConfig(htpasswd=None, anonymous="none", token_ttl=3600.0, rules=None, configured=False)
    assert config.gc == GCConfig(interval=600.0, upload_expiry=86400.0, grace=3600.0)
    assert config.limits == LimitsConfig(max_manifest_size=4 * 2**20)


def test_empty_sections_take_defaults_but_count_as_configured() -> None:
    """A section written with no keys takes the defaults, but counts as present: a proxies section
    switches off the built-in public upstream list, an auth section switches auth on."""
    config = config_from_dict({"registry_proxies": None, "image_validation": {}, "gc": None, "auth": None})
    assert config.registry_proxies == ProxyConfig(configured=True)
    assert config.image_validation == ValidationConfig(configured=True)
    assert config.gc == GCConfig()
    assert config.auth == AuthConfig(configured=True)


def test_config_is_frozen() -> None:
    """Config objects cannot be changed after parsing."""
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Config().gc.interval = 1  # type: ignore[misc]


# -- every section, from the reference example -------------------------------------------------


def test_reference_registry_proxies(reference: Config) -> None:
    """registry_proxies: every key of an upstream entry, max_size in bytes, the flags."""
    proxies = reference.registry_proxies
    assert proxies.registries == (
        UpstreamRegistry(
            host="docker.io",
            alias="docker",
            username="robot",
            password="secret",
            path_prefix="team-a",
            insecure=False,
            ca_file="/etc/ssl/corp.pem",
        ),
    )
    assert proxies.max_size == 50 * 2**30
    assert (proxies.offline, proxies.any_registry, proxies.configured) == (False, False, True)


def test_reference_image_validation(reference: Config) -> None:
    """image_validation: default and prefix lists."""
    assert reference.image_validation == ValidationConfig(
        default="Deny",
        allow=("registry.k8s.io/", "my-trow.example.com/"),
        deny=("my-trow.example.com/secret/",),
        configured=True,
    )


def test_reference_image_mutation(reference: Config) -> None:
    """image_mutation: registries and ignore lists."""
    assert reference.image_mutation == MutationConfig(registries=("docker.io", "ghcr.io"), ignore=("ghcr.io/trow-registry/",))


def test_reference_auth(reference: Config) -> None:
    """auth: htpasswd, anonymous, token_ttl in seconds, and the rules."""
    assert reference.auth == AuthConfig(
        htpasswd="/etc/trow/htpasswd",
        anonymous="pull",
        token_ttl=3600.0,
        rules=(
            AuthRule(users=("deployer",), repositories=("team-a/",), actions=("pull", "push", "delete")),
            AuthRule(users=("*",), repositories=("",), actions=("pull",)),
        ),
        configured=True,
    )


def test_reference_gc(reference: Config) -> None:
    """gc: durations in seconds."""
    assert reference.gc == GCConfig(interval=600.0, upload_expiry=86400.0, grace=3600.0)


def test_reference_limits(reference: Config) -> None:
    """limits: the manifest size limit in bytes."""
    assert reference.limits == LimitsConfig(max_manifest_size=8 * 2**20)


def test_upstream_host_is_normalised() -> None:
    """Hosts are lower-cased and trimmed; path prefixes lose surrounding slashes; ports stay."""
    config = config_from_dict(
        {"registry_proxies": {"registries": [{"host": " Registry.Example.COM:5000 ", "path_prefix": "/team/a/"}]}}
    )
    [upstream] = config.registry_proxies.registries
    assert upstream.host == "registry.example.com:5000"
    assert upstream.path_prefix == "team/a"


def test_upstream_defaults() -> None:
    """An entry with only a host has no credentials, no prefix, TLS on."""
    [upstream] = config_from_dict({"registry_proxies": {"registries": [{"host": "ghcr.io"}]}}).registry_proxies.registries
    assert upstream == UpstreamRegistry(host="ghcr.io")


@pytest.mark.parametrize("written, expected", [("allow", "Allow"), ("DENY", "Deny"), ("Deny", "Deny")])
def test_validation_default_any_case(written: str, expected: str) -> None:
    """Allow and Deny are accepted in any case and normalised."""
    assert config_from_dict({"image_validation": {"default": written}}).image_validation.default == expected


def test_auth_rules_absent_is_none_and_empty_is_empty() -> None:
    """No rules key means 'no rules given' (None); an empty list means no grants at all."""
    assert config_from_dict({"auth": {}}).auth.rules is None
    assert config_from_dict({"auth": {}}).auth.configured
    assert config_from_dict({"auth": {"rules": []}}).auth.rules == ()


def test_auth_token_key_is_read() -> None:
    """auth.token_key is kept for token signing."""
    assert config_from_dict({"auth": {"token_key": "k"}}).auth.token_key == "k"


# -- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, seconds",
    [("90s", 90), ("10m", 600), ("1h", 3600), ("7d", 604800), ("1.5h", 5400), ("500ms", 0.5), ("45", 45), (30, 30), (2.5, 2.5), (" 5 m ", 300), (0, 0)],
)
def test_durations(value: object, seconds: float) -> None:
    """Durations with s, m, h, d (or ms), or plain seconds."""
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["10x", "", "h", "1w", "ten minutes", "1h30m", True, None, [1], "-5s"])
def test_bad_durations(value: object) -> None:
    """Anything else is refused with an example of what works."""
    with pytest.raises(ConfigError) as caught:
        parse_duration(value, "gc.interval")
    assert caught.value.path == "gc.interval"
    assert "90s" in caught.value.message


def test_negative_duration() -> None:
    """A negative number of seconds is refused as negative."""
    with pytest.raises(ConfigError) as caught:
        parse_duration(-1, "gc.grace")
    assert "negative" in caught.value.message


# -- sizes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, size",
    [
        ("500MiB", 500 * 2**20),
        ("50GiB", 50 * 2**30),
        ("10GB", 10 * 10**9),
        ("1KB", 1000),
        ("1KiB", 1024),
        ("2TiB", 2 * 2**40),
        ("3TB", 3 * 10**12),
        ("10gb", 10 * 10**9),
        ("1.5KiB", 1536),
        ("100B", 100),
        ("123", 123),
        (4096, 4096),
        (0, 0),
    ],
)
def test_sizes(value: object, size: int) -> None:
    """Sizes in SI or binary units, or plain bytes."""
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["10XB", "abc", "", "1.5.5GB", "GB", True, None, [1], "-1GB"])
def test_bad_sizes(value: object) -> None:
    """Anything else is refused with an example of what works."""
    with pytest.raises(ConfigError) as caught:
        parse_size(value, "registry_proxies.max_size")
    assert caught.value.path == "registry_proxies.max_size"
    assert "500MiB" in caught.value.message


def test_negative_size() -> None:
    """A negative number of bytes is refused as negative."""
    with pytest.raises(ConfigError) as caught:
        parse_size(-5, "x")
    assert "negative" in caught.value.message


# -- every error names its key path ------------------------------------------------------------

UP = "registry_proxies.registries"


@pytest.mark.parametrize(
    "document, path",
    [
        ({"bogus": 1}, "bogus"),
        ({"registry_proxies": 5}, "registry_proxies"),
        ({"registry_proxies": {"nope": 1}}, "registry_proxies.nope"),
        ({"registry_proxies": {"registries": "docker.io"}}, UP),
        ({"registry_proxies": {"registries": [{"alias": "x"}]}}, f"{UP}[0].host"),
        ({"registry_proxies": {"registries": [{"host": "docker.io"}, {"host": 5}]}}, f"{UP}[1].host"),
        ({"registry_proxies": {"registries": [{"host": "a/b"}]}}, f"{UP}[0].host"),
        ({"registry_proxies": {"registries": [{"host": ""}]}}, f"{UP}[0].host"),
        ({"registry_proxies": {"registries": ["docker.io"]}}, f"{UP}[0]"),
        ({"registry_proxies": {"registries": [{"host": "x", "alias": 5}]}}, f"{UP}[0].alias"),
        ({"registry_proxies": {"registries": [{"host": "x", "username": 5}]}}, f"{UP}[0].username"),
        ({"registry_proxies": {"registries": [{"host": "x", "password": 5}]}}, f"{UP}[0].password"),
        ({"registry_proxies": {"registries": [{"host": "x", "path_prefix": 5}]}}, f"{UP}[0].path_prefix"),
        ({"registry_proxies": {"registries": [{"host": "x", "insecure": "yes"}]}}, f"{UP}[0].insecure"),
        ({"registry_proxies": {"registries": [{"host": "x", "ca_file": 5}]}}, f"{UP}[0].ca_file"),
        ({"registry_proxies": {"registries": [{"host": "x", "port": 5}]}}, f"{UP}[0].port"),
        ({"registry_proxies": {"max_size": "huge"}}, "registry_proxies.max_size"),
        ({"registry_proxies": {"offline": "no"}}, "registry_proxies.offline"),
        ({"registry_proxies": {"any_registry": 1}}, "registry_proxies.any_registry"),
        ({"image_validation": []}, "image_validation"),
        ({"image_validation": {"default": "Maybe"}}, "image_validation.default"),
        ({"image_validation": {"default": 1}}, "image_validation.default"),
        ({"image_validation": {"allow": "quay.io"}}, "image_validation.allow"),
        ({"image_validation": {"allow": [1]}}, "image_validation.allow[0]"),
        ({"image_validation": {"deny": ["a", None]}}, "image_validation.deny[1]"),
        ({"image_validation": {"other": 1}}, "image_validation.other"),
        ({"image_mutation": {"registries": "docker.io"}}, "image_mutation.registries"),
        ({"image_mutation": {"ignore": [1]}}, "image_mutation.ignore[0]"),
        ({"image_mutation": {"other": 1}}, "image_mutation.other"),
        ({"auth": {"anonymous": "all"}}, "auth.anonymous"),
        ({"auth": {"token_ttl": "forever"}}, "auth.token_ttl"),
        ({"auth": {"htpasswd": 5}}, "auth.htpasswd"),
        ({"auth": {"token_key": 5}}, "auth.token_key"),
        ({"auth": {"rules": "all"}}, "auth.rules"),
        ({"auth": {"rules": [5]}}, "auth.rules[0]"),
        ({"auth": {"rules": [{"actions": ["pull", "fly"]}]}}, "auth.rules[0].actions[1]"),
        ({"auth": {"rules": [{"users": "bob"}]}}, "auth.rules[0].users"),
        ({"auth": {"rules": [{"repositories": [1]}]}}, "auth.rules[0].repositories[0]"),
        ({"auth": {"rules": [{}, {"bogus": 1}]}}, "auth.rules[1].bogus"),
        ({"auth": {"other": 1}}, "auth.other"),
        ({"gc": 5}, "gc"),
        ({"gc": {"interval": "x"}}, "gc.interval"),
        ({"gc": {"upload_expiry": "soon"}}, "gc.upload_expiry"),
        ({"gc": {"grace": -1}}, "gc.grace"),
        ({"gc": {"nope": 1}}, "gc.nope"),
        ({"limits": {"max_manifest_size": 100}}, "limits.max_manifest_size"),
        ({"limits": {"max_manifest_size": "big"}}, "limits.max_manifest_size"),
        ({"limits": {"other": 1}}, "limits.other"),
    ],
)
def test_error_names_the_key_path(document: Any, path: str) -> None:
    """Each mistake raises a ConfigError whose path and message start with the key path."""
    error = error_of(document)
    assert error.path == path
    assert str(error).startswith(f"{path}: ")
    assert error.message


def test_unknown_key_lists_the_known_ones() -> None:
    """An unknown key's message lists the keys that would be valid there."""
    assert "interval, upload_expiry, grace" in error_of({"gc": {"intervall": "1m"}}).message


def test_top_level_must_be_a_mapping() -> None:
    """A document that is not a mapping is refused."""
    error = error_of(["gc"])
    assert "mapping" in error.message


def test_top_level_keys_must_be_strings() -> None:
    """Non-string keys are refused."""
    assert "strings" in error_of({1: "x"}).message


def test_manifest_size_limit_floor() -> None:
    """max_manifest_size below 1KiB is refused, and 1KiB itself is accepted."""
    assert "1KiB" in error_of({"limits": {"max_manifest_size": 1023}}).message
    assert config_from_dict({"limits": {"max_manifest_size": "1KiB"}}).limits.max_manifest_size == 1024


# -- files -------------------------------------------------------------------------------------


def test_load_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming the file."""
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert path in str(caught.value)
    assert "cannot read" in str(caught.value)


def test_load_invalid_yaml(tmp_path: Path) -> None:
    """A file that is not YAML is a ConfigError naming the file."""
    path = tmp_path / "bad.yaml"
    path.write_text("gc: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert "not valid YAML" in str(caught.value)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)  # one line, like every other config error


def test_load_error_names_key_and_file(tmp_path: Path) -> None:
    """An error inside a file keeps its key path and adds the file name."""
    path = tmp_path / "trow.yaml"
    path.write_text("gc:\n  interval: 10x\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.path == "gc.interval"
    assert str(caught.value).startswith("gc.interval: ")
    assert str(path) in str(caught.value)


def test_load_empty_file(tmp_path: Path) -> None:
    """An empty file is the default config."""
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(str(path)) == Config()


# -- summary -----------------------------------------------------------------------------------


def test_summary_masks_secrets(reference: Config) -> None:
    """The dry-run summary masks upstream passwords and the token key, and shows the rest."""
    summary = config_summary(attrs.evolve(reference, auth=attrs.evolve(reference.auth, token_key="sign-me")))
    text = json.dumps(summary)
    assert '"secret"' not in text  # the upstream password (the deny list holds ".../secret/")
    assert "sign-me" not in text
    assert summary["registry_proxies"]["registries"][0]["password"] == "***"
    assert summary["auth"]["token_key"] == "***"
    assert summary["registry_proxies"]["registries"][0]["username"] == "robot"


def test_summary_keeps_absent_secrets_as_null() -> None:
    """An unset secret is shown as null, not masked (so the operator sees it is missing)."""
    summary = config_summary(config_from_dict({"registry_proxies": {"registries": [{"host": "ghcr.io"}]}}))
    assert summary["registry_proxies"]["registries"][0]["password"] is None
    assert summary["auth"]["token_key"] is None


def test_summary_is_plain_json(reference: Config) -> None:
    """The summary is plain data: lists, not tuples; it round-trips through JSON."""
    summary = config_summary(reference)
    assert summary["image_validation"]["allow"] == ["registry.k8s.io/", "my-trow.example.com/"]
    assert json.loads(json.dumps(summary)) == summary
    assert summary["gc"] == {"interval": 600.0, "upload_expiry": 86400.0, "grace": 3600.0, "settle": 30.0}


def test_gc_settle_time() -> None:
    """gc.settle: how long a blob set aside for deletion waits for a late link (30s by default)."""
    assert Config().gc.settle == 30.0
    assert config_from_dict({"gc": {"settle": "2s"}}).gc.settle == 2.0
    with pytest.raises(ConfigError, match="gc.settle"):
        config_from_dict({"gc": {"settle": "soon"}})


@pytest.mark.parametrize(
    "document, path",
    [
        ({"registry_proxies": {"max_size": 0}}, "registry_proxies.max_size"),
        ({"registry_proxies": {"max_size": "100KiB"}}, "registry_proxies.max_size"),
        ({"auth": {"anonymous": "pull", "token_ttl": "5s"}}, "auth.token_ttl"),
    ],
)
def test_settings_too_small_to_work_are_refused(document: dict[str, Any], path: str) -> None:
    """A max_size under 1MiB (0 would evict every cached image at every pass) and tokens that
    live under a minute are mistakes: refused, naming the key."""
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")) as raised:
        config_from_dict(document)
    assert "at least" in str(raised.value)
