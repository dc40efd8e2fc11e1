"""The YAML config file: parsed into frozen attrs classes.

Trow v0.10 keys are accepted as they are (reference.md section 3); trow adds ``ca_file``,
``image_mutation``, ``auth``, ``gc`` and ``limits``. Every error names the key path that is wrong,
so an operator can fix the file from the message alone.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence, TypeVar

import attrs
import yaml

T = TypeVar("T")


class ConfigError(Exception):
    """The config file is unusable; the message names the key path and the cause."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_duration(value: object, path: str = "") -> float:
    """Parse ``90s``, ``10m``, ``1h``, ``7d`` (or a plain number of seconds) into seconds."""
    if isinstance(value, bool):
        raise ConfigError(path, f"expected a duration such as 90s, 10m, 1h or 7d, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ConfigError(path, f"expected a duration such as 90s, 10m, 1h or 7d, got {value!r}")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds < 0:
        raise ConfigError(path, f"a duration cannot be negative, got {value!r}")
    return seconds


def parse_size(value: object, path: str = "") -> int:
    """Parse ``500MiB``, ``50GiB``, ``10GB`` (or a plain number of bytes) into bytes."""
    if isinstance(value, bool):
        raise ConfigError(path, f"expected a size such as 500MiB, 50GiB or 10GB, got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ConfigError(path, f"expected a size such as 500MiB, 50GiB or 10GB, got {value!r}")
        size = int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()])
    if size < 0:
        raise ConfigError(path, f"a size cannot be negative, got {value!r}")
    return size


@attrs.frozen
class UpstreamRegistry:
    """One entry of ``registry_proxies.registries``."""

    host: str
    alias: str | None = None
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    path_prefix: str = ""
    insecure: bool = False
    ca_file: str | None = None


@attrs.frozen
class ProxyConfig:
    """The ``registry_proxies`` section. ``configured`` is False when the section is absent."""

    registries: tuple[UpstreamRegistry, ...] = ()
    max_size: int | None = None
    offline: bool = False
    any_registry: bool = False
    configured: bool = False


@attrs.frozen
class ValidationConfig:
    """The ``image_validation`` section (validating webhook)."""

    default: str = "Allow"
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    configured: bool = False


@attrs.frozen
class MutationConfig:
    """The ``image_mutation`` section (mutating webhook)."""

    registries: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()


@attrs.frozen
class AuthRule:
    """One grant: these users may do these actions on these repository prefixes."""

    users: tuple[str, ...]
    repositories: tuple[str, ...]
    actions: tuple[str, ...]


@attrs.frozen
class AuthConfig:
    """The ``auth`` section."""

    htpasswd: str | None = None
    anonymous: str = "none"
    token_ttl: float = 3600.0
    rules: tuple[AuthRule, ...] | None = None
    token_key: str | None = attrs.field(default=None, repr=False)
    configured: bool = False


@attrs.frozen
class GCConfig:
    """The ``gc`` section."""

    interval: float = 600.0
    upload_expiry: float = 86400.0
    grace: float = 3600.0
    # How long a blob file set aside for deletion waits for a late link before it goes.
    settle: float = 30.0


@attrs.frozen
class LimitsConfig:
    """The ``limits`` section: what one client, or a crowd of them, may cost trow.

    Every key is optional; the defaults are safe for a registry inside a cluster:

    - ``max_manifest_size`` (4MiB): largest manifest accepted on push or from an upstream; a
      larger push is answered 413 from its headers, before its body is read.
    - ``max_concurrent_uploads`` (64): request bodies the registry listeners receive at once;
      beyond it a request gets 429 ``TOOMANYREQUESTS`` with ``Retry-After``.
    - ``max_header_size`` (16KiB): request line plus headers of one request; beyond it the
      client gets 431 and the connection is closed.
    - ``idle_timeout`` (60s): how long a connection may move no bytes, whether it is between
      requests, sending a body, or not reading the response it asked for.
    - ``header_timeout`` (30s): a request line and its headers must be complete this long after
      their first byte (a client sending one byte a minute is cut: 408).
    - ``max_connections`` (1024): open connections per listener; more are closed at once.
    - ``max_connections_per_client`` (256): open connections per listener from one client
      address, so that one client cannot hold them all. Behind an ingress or a proxy every
      client has its address: raise it to ``max_connections`` there.

    A connection also counts as idle while it sends less than 16KiB per ``idle_timeout``, so a
    request body trickled a few bytes at a time is cut like a silent one.
    """

    max_manifest_size: int = 4 * 2**20
    max_concurrent_uploads: int = 64
    max_header_size: int = 16 * 2**10
    idle_timeout: float = 60.0
    header_timeout: float = 30.0
    max_connections: int = 1024
    max_connections_per_client: int = 256


@attrs.frozen
class Config:
    """The whole config file. ``Config()`` is the embedded default: no file at all."""

    registry_proxies: ProxyConfig = ProxyConfig()
    image_validation: ValidationConfig = ValidationConfig()
    image_mutation: MutationConfig = MutationConfig()
    auth: AuthConfig = AuthConfig()
    gc: GCConfig = GCConfig()
    limits: LimitsConfig = LimitsConfig()


def _mapping(value: object, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"expected a mapping of keys, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(path, f"keys must be strings, got {key!r}")
    return value


def _check_keys(section: Mapping[str, Any], path: str, known: Sequence[str]) -> None:
    for key in section:
        if key not in known:
            where = f"{path}.{key}" if path else key
            raise ConfigError(where, f"unknown key; expected one of: {', '.join(known)}")


def _str(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, f"expected a string, got {value!r}")
    return value


def _opt_str(value: object, path: str) -> str | None:
    return None if value is None else _str(value, path)


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, f"expected true or false, got {value!r}")
    return value


def _str_list(value: object, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(path, f"expected a list of strings, got {value!r}")
    return tuple(_str(item, f"{path}[{i}]") for i, item in enumerate(value))


def _list_of(value: object, path: str, parse: Callable[[object, str], T]) -> tuple[T, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(path, "expected a list")
    return tuple(parse(item, f"{path}[{i}]") for i, item in enumerate(value))


def _upstream(value: object, path: str) -> UpstreamRegistry:
    section = _mapping(value, path)
    _check_keys(
        section,
        path,
        ["host", "alias", "username", "password", "path_prefix", "insecure", "ca_file"],
    )
    if "host" not in section:
        raise ConfigError(f"{path}.host", "missing: every registry entry needs a host")
    host = _str(section["host"], f"{path}.host").strip().lower()
    if not host or "/" in host or " " in host:
        raise ConfigError(f"{path}.host", f"expected a host name such as docker.io, got {host!r}")
    return UpstreamRegistry(
        host=host,
        alias=_opt_str(section.get("alias"), f"{path}.alias"),
        username=_opt_str(section.get("username"), f"{path}.username"),
        password=_opt_str(section.get("password"), f"{path}.password"),
        path_prefix=(_opt_str(section.get("path_prefix"), f"{path}.path_prefix") or "").strip("/"),
        insecure=_bool(section.get("insecure", False), f"{path}.insecure"),
        ca_file=_opt_str(section.get("ca_file"), f"{path}.ca_file"),
    )


def _proxies(value: object, path: str) -> ProxyConfig:
    section = _mapping(value, path)
    _check_keys(section, path, ["registries", "max_size", "offline", "any_registry"])
    max_size = section.get("max_size")
    return ProxyConfig(
        registries=_list_of(section.get("registries"), f"{path}.registries", _upstream),
        max_size=None if max_size is None else _size_at_least(max_size, 2**20, "1MiB", f"{path}.max_size"),
        offline=_bool(section.get("offline", False), f"{path}.offline"),
        any_registry=_bool(section.get("any_registry", False), f"{path}.any_registry"),
        configured=True,
    )


def _validation(value: object, path: str) -> ValidationConfig:
    section = _mapping(value, path)
    _check_keys(section, path, ["default", "allow", "deny"])
    default = _str(section.get("default", "Allow"), f"{path}.default")
    if default.lower() not in ("allow", "deny"):
        raise ConfigError(f"{path}.default", f"expected Allow or Deny, got {default!r}")
    return ValidationConfig(
        default=default.capitalize(),
        allow=_str_list(section.get("allow"), f"{path}.allow"),
        deny=_str_list(section.get("deny"), f"{path}.deny"),
        configured=True,
    )


def _mutation(value: object, path: str) -> MutationConfig:
    section = _mapping(value, path)
    _check_keys(section, path, ["registries", "ignore"])
    return MutationConfig(
        registries=_str_list(section.get("registries"), f"{path}.registries"),
        ignore=_str_list(section.get("ignore"), f"{path}.ignore"),
    )


_ACTIONS = ("pull", "push", "delete")


def _rule(value: object, path: str) -> AuthRule:
    section = _mapping(value, path)
    _check_keys(section, path, ["users", "repositories", "actions"])
    actions = _str_list(section.get("actions"), f"{path}.actions")
    for i, action in enumerate(actions):
        if action not in _ACTIONS:
            raise ConfigError(f"{path}.actions[{i}]", f"expected one of {', '.join(_ACTIONS)}, got {action!r}")
    return AuthRule(
        users=_str_list(section.get("users"), f"{path}.users"),
        repositories=_str_list(section.get("repositories"), f"{path}.repositories"),
        actions=actions,
    )


def _size_at_least(value: object, minimum: int, written: str, path: str) -> int:
    """A size of at least C{minimum} bytes (a smaller one is a mistake, not a setting)."""
    size = parse_size(value, path)
    if size < minimum:
        raise ConfigError(path, f"must be at least {written}")
    return size


def _duration_at_least(value: object, minimum: float, written: str, path: str) -> float:
    """A duration of at least C{minimum} seconds."""
    seconds = parse_duration(value, path)
    if seconds < minimum:
        raise ConfigError(path, f"must be at least {written}")
    return seconds


def _auth(value: object, path: str) -> AuthConfig:
    section = _mapping(value, path)
    _check_keys(section, path, ["htpasswd", "anonymous", "token_ttl", "rules", "token_key"])
    anonymous = _str(section.get("anonymous", "none"), f"{path}.anonymous")
    if anonymous not in ("none", "pull"):
        raise ConfigError(f"{path}.anonymous", f"expected none or pull, got {anonymous!r}")
    rules = section.get("rules")
    return AuthConfig(
        htpasswd=_opt_str(section.get("htpasswd"), f"{path}.htpasswd"),
        anonymous=anonymous,
        token_ttl=_duration_at_least(section.get("token_ttl", "1h"), 60, "1m", f"{path}.token_ttl"),
        rules=None if rules is None else _list_of(rules, f"{path}.rules", _rule),
        token_key=_opt_str(section.get("token_key"), f"{path}.token_key"),
        configured=True,
    )


def _gc(value: object, path: str) -> GCConfig:
    section = _mapping(value, path)
    _check_keys(section, path, ["interval", "upload_expiry", "grace", "settle"])
    return GCConfig(
        interval=parse_duration(section.get("interval", "10m"), f"{path}.interval"),
        upload_expiry=parse_duration(section.get("upload_expiry", "24h"), f"{path}.upload_expiry"),
        grace=parse_duration(section.get("grace", "1h"), f"{path}.grace"),
        settle=parse_duration(section.get("settle", "30s"), f"{path}.settle"),
    )


def _limits(value: object, path: str) -> LimitsConfig:
    section = _mapping(value, path)
    keys = [f.name for f in attrs.fields(LimitsConfig)]
    _check_keys(section, path, keys)
    defaults = LimitsConfig()

    def size(key: str, lowest: int, highest: int, shown: str) -> int:
        where = f"{path}.{key}"
        got = parse_size(section.get(key, getattr(defaults, key)), where)
        if not lowest <= got <= highest:
            raise ConfigError(where, f"must be {shown}, got {got} bytes")
        return got

    def count(key: str, highest: int) -> int:
        where = f"{path}.{key}"
        got = section.get(key, getattr(defaults, key))
        if isinstance(got, bool) or not isinstance(got, int):
            raise ConfigError(where, f"expected a whole number, got {got!r}")
        if not 1 <= got <= highest:
            raise ConfigError(where, f"must be between 1 and {highest}, got {got}")
        return got

    def seconds(key: str) -> float:
        where = f"{path}.{key}"
        got = parse_duration(section.get(key, getattr(defaults, key)), where)
        # Zero would mean "cut at once" or "never", both of which defeat the limit.
        if not 1 <= got <= 86400:
            raise ConfigError(where, f"must be between 1s and 1d, got {got:g}s")
        return got

    return LimitsConfig(
        max_manifest_size=size("max_manifest_size", 1024, 2**63, "at least 1KiB"),
        max_concurrent_uploads=count("max_concurrent_uploads", 1_000_000),
        # Under 1KiB not even a registry request with a bearer token fits.
        max_header_size=size("max_header_size", 1024, 2**20, "between 1KiB and 1MiB"),
        idle_timeout=seconds("idle_timeout"),
        header_timeout=seconds("header_timeout"),
        max_connections=count("max_connections", 1_000_000),
        max_connections_per_client=count("max_connections_per_client", 1_000_000),
    )


_SECTIONS: dict[str, Callable[[object, str], object]] = {
    "registry_proxies": _proxies,
    "image_validation": _validation,
    "image_mutation": _mutation,
    "auth": _auth,
    "gc": _gc,
    "limits": _limits,
}


def config_from_dict(document: object) -> Config:
    """Build a L{Config} from a parsed YAML document, raising L{ConfigError} on any problem."""
    top = _mapping(document, "")
    _check_keys(top, "", list(_SECTIONS))
    return Config(**{key: _SECTIONS[key](top[key], key) for key in top})  # type: ignore[arg-type]


def load_config(path: str) -> Config:
    """Read and validate the YAML config file at C{path}."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except OSError as e:
        raise ConfigError("", f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        # PyYAML's messages span several lines; the contract is one line naming the problem.
        where = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        raise ConfigError("", f"config file {path} is not valid YAML{at}: {' '.join(str(problem).split())}") from None
    try:
        return config_from_dict(document)
    except ConfigError as e:
        raise ConfigError(e.path, f"{e.message} (in {path})") from None


def config_summary(config: Config) -> dict[str, Any]:
    """The effective settings as plain data, secrets masked, for ``--dry-run``."""

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: ("***" if k in ("password", "token_key") and v is not None else scrub(v))
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [scrub(v) for v in value]
        return value

    return scrub(attrs.asdict(config))
