"""Command line of ``twistd trow`` / ``twist trow``: options, validation, and the service tree.

Everything an operator can get wrong is checked in L{Options.postOptions}, before any port is
bound: a bad option or config file prints one line naming the problem and exits 1.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import attrs
from twisted.application.service import IService
from twisted.python import usage

from trow.auth.service import check_settings
from trow.auth.users import AuthSetupError, read_secret
from trow.config import Config, ConfigError, config_summary, load_config
from trow.storage.lock import DataDirLocked
from trow.storage.postgres import SchemaTooNew
from trow.storage.sqlite import SchemaTooNew as SqliteSchemaTooNew
from trow.logs import LogFormatError, use_log_format


@attrs.frozen
class Settings:
    """Everything the command line decided: what L{trow.app.build_service} is built from."""

    listen: tuple[str, ...]
    data_dir: str
    config: Config
    config_path: str | None = None
    hostname: str | None = None
    webhook_listen: tuple[str, ...] = ()
    metrics_listen: str | None = None
    user: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    htpasswd: str | None = None
    # --database: PostgreSQL for metadata, shared by the replicas on one data dir; --peer-url:
    # how those replicas reach this one.
    database: str | None = attrs.field(default=None, repr=False)
    peer_url: str | None = None


def fail(message: str) -> NoReturn:
    """Print one clear line and exit 1: the contract for bad options and config files."""
    sys.stderr.write(f"trow: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(1)


def _check_endpoint(description: str, option: str) -> None:
    from twisted.internet import endpoints, reactor

    try:
        endpoints.serverFromString(reactor, description)
    except Exception as e:  # parse errors are ValueError; ssl: key/cert problems are OSError & co
        detail = str(e) or type(e).__name__
        fail(f"{option} {description!r} is not a usable Twisted endpoint description: {detail}")


def _check_webhook_endpoint(description: str) -> None:
    from twisted.internet import reactor

    from trow.webhook.tls import CertificateError, reloading_ssl_endpoint

    try:
        endpoint = reloading_ssl_endpoint(reactor, description)
    except CertificateError as e:
        fail(f"--webhook-listen: {e}")
    if endpoint is None:
        _check_endpoint(description, "--webhook-listen")


def _check_database(url: str) -> None:
    from trow.storage.postgres import DatabaseURLError, check_url

    try:
        check_url(url)
    except DatabaseURLError as e:
        fail(str(e))


def _check_peer_url(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fail(f"--peer-url {url!r} must be an http:// or https:// URL with a host, e.g. http://10.1.2.3:8000")
    try:
        parts.port
    except ValueError:
        fail(f"--peer-url {url!r} has an invalid port")
    return url.rstrip("/")


def default_peer_url(listen: tuple[str, ...]) -> str:
    """How other replicas reach this one when --peer-url is not given: the interface and port of
    the first --listen when it names an address, else this host's first non-loopback address (the
    pod IP) with that port."""
    import ipaddress

    from twisted.internet import endpoints, reactor

    description = listen[0]
    scheme = "https" if description.startswith("ssl:") else "http"
    endpoint = endpoints.serverFromString(reactor, description)
    port = getattr(endpoint, "_port", 8000)
    interface = getattr(endpoint, "_interface", "") or ""
    try:
        wildcard = not interface or ipaddress.ip_address(interface).is_unspecified
    except ValueError:
        wildcard = False
    if wildcard:
        interface = _first_address()
    host = f"[{interface}]" if ":" in interface else interface
    return f"{scheme}://{host}:{port}"


def _first_address() -> str:
    """This host's first non-loopback address: the one a UDP socket towards a routable address
    would use (nothing is sent), else what the host name resolves to."""
    import socket

    for family, target in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((target, 9))
                address = str(probe.getsockname()[0])
            if not address.startswith("127.") and address != "::1":
                return address
        except OSError:
            continue
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            address = str(info[4][0])
            if not address.startswith("127.") and address != "::1":
                return address
    except OSError:
        pass
    return "127.0.0.1"


def _check_ca_files(config: Config) -> None:
    """Each upstream's ca_file must hold certificates now, not fail the first pull as a 503."""
    from trow.proxy.upstream import load_ca_file

    for i, registry in enumerate(config.registry_proxies.registries):
        if registry.ca_file:
            try:
                load_ca_file(registry.ca_file)
            except ValueError as e:
                fail(f"registry_proxies.registries[{i}].ca_file: {e}")


def _check_webhook_rules(config: Config, hostname: str | None) -> None:
    """The image_validation and image_mutation sections must make sense before trow starts."""
    from trow.webhook.references import InvalidHostname
    from trow.webhook.rules import InvalidRule, Mutator, Validator

    try:
        Validator.from_config(config, hostname)
        if config.image_mutation.registries:
            if not hostname:
                fail("bad config: image_mutation needs --hostname, the name nodes pull trow by")
            Mutator.from_config(config, hostname)
    except InvalidRule as e:
        fail(f"bad config: {e.path}: {e.message}")
    except InvalidHostname as e:
        fail(f"--hostname {hostname!r} cannot be used in rewritten image references: {e}")


def _check_data_dir(path: str) -> None:
    target = os.path.abspath(path)
    if os.path.exists(target):
        if not os.path.isdir(target):
            fail(f"--data-dir {path!r} exists and is not a directory")
        if not os.access(target, os.W_OK | os.X_OK):
            fail(f"--data-dir {path!r} is not writable")
        return
    parent = os.path.dirname(target)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        fail(f"--data-dir {path!r} does not exist and cannot be created under {parent!r}")


class Options(usage.Options):
    """Options of the trow plugin (reference.md section 2)."""

    synopsis = "[options]"
    longdesc = "trow: OCI registry, pull-through cache and Kubernetes admission webhook."

    optParameters = [
        ["data-dir", None, "./data", "Directory that holds all state: blobs, metadata, uploads."],
        ["config", None, None, "YAML config file (Trow v0.10 keys accepted)."],
        ["hostname", None, None, "Public name of this registry (auth realms, rewritten images)."],
        ["metrics-listen", None, None, "Endpoint description for a separate /metrics listener."],
        ["log-format", None, None, "Log format: text or json (one JSON object per line); default: the runner's."],
        ["user", None, None, "Single user name (Trow-compatible)."],
        ["password", None, None, "Password of --user; may be file:///path."],
        ["htpasswd", None, None, "bcrypt htpasswd file with many users."],
        [
            "database",
            None,
            None,
            "PostgreSQL URL (libpq) for metadata: several replicas then share one --data-dir. Default: sqlite in the data dir.",
        ],
        ["peer-url", None, None, "URL the other replicas reach this one at (with --database)."],
    ]
    optFlags = [
        ["dry-run", None, "Validate options and config, print the effective settings, exit."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["webhook-listen"] = []

    def opt_listen(self, description: str) -> None:
        """Endpoint description for the registry API, e.g. tcp:8000 or ssl:8443:privateKey=...
        (repeatable; default tcp:8000)."""
        self["listen"].append(description)

    def opt_webhook_listen(self, description: str) -> None:
        """Endpoint for the admission webhook, normally ssl:8443:privateKey=tls.key:certKey=tls.crt
        (repeatable)."""
        self["webhook-listen"].append(description)

    def opt_config_file(self, path: str) -> None:
        """Alias of --config."""
        self["config"] = path

    def parseOptions(self, options: Any = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            fail(f"{e} (see 'twistd trow --help')")

    def postOptions(self) -> None:
        listen = tuple(self["listen"]) or ("tcp:8000",)
        for description in listen:
            _check_endpoint(description, "--listen")
        for description in self["webhook-listen"]:
            _check_webhook_endpoint(description)
        if self["metrics-listen"]:
            _check_endpoint(self["metrics-listen"], "--metrics-listen")
        _check_data_dir(self["data-dir"])
        config = Config()
        if self["config"]:
            try:
                config = load_config(self["config"])
            except ConfigError as e:
                fail(f"bad config: {e}")
        database: str | None = self["database"]
        peer_url: str | None = None
        if database is not None:
            _check_database(database)
        if self["peer-url"] is not None:
            if database is None:
                fail("--peer-url is for replicas sharing a --database; give --database too")
            peer_url = _check_peer_url(self["peer-url"])
        elif database is not None:
            peer_url = default_peer_url(listen)
        if bool(self["user"]) != bool(self["password"]):
            fail("--user and --password go together")
        if self["htpasswd"] and not os.path.isfile(self["htpasswd"]):
            fail(f"--htpasswd {self['htpasswd']!r} is not a readable file")
        try:
            # Tells the runner (twistd or twist) which log observer to create; see trow.logs.
            use_log_format(self.parent, self["log-format"])
        except LogFormatError as e:
            fail(str(e))
        _check_webhook_rules(config, self["hostname"])
        _check_ca_files(config)
        try:
            password = read_secret(self["password"], "--password") if self["password"] else None
            check_settings(user=self["user"], password=password, htpasswd=self["htpasswd"], config=config.auth)
        except AuthSetupError as e:
            fail(str(e))
        self.settings = Settings(
            listen=listen,
            data_dir=self["data-dir"],
            config=config,
            config_path=self["config"],
            hostname=self["hostname"],
            webhook_listen=tuple(self["webhook-listen"]),
            metrics_listen=self["metrics-listen"],
            user=self["user"],
            password=password,
            htpasswd=self["htpasswd"],
            database=database,
            peer_url=peer_url,
        )
        if self["dry-run"]:
            summary = {
                "listen": list(listen),
                "data_dir": os.path.abspath(self["data-dir"]),
                "config_file": self["config"],
                "hostname": self["hostname"],
                "webhook_listen": list(self["webhook-listen"]),
                "metrics_listen": self["metrics-listen"],
                "log_format": self["log-format"],
                "user": self["user"],
                "htpasswd": self["htpasswd"],
                "database": _redacted(database),
                "peer_url": peer_url,
                "config": config_summary(config),
            }
            sys.stdout.write(json.dumps(summary, indent=2) + "\n")
            sys.stdout.flush()
            raise SystemExit(0)


def _redacted(url: str | None) -> str | None:
    from trow.storage.postgres import redact

    return None if url is None else redact(url)


def makeService(options: Options) -> IService:
    """Build trow's service tree from parsed options."""
    from twisted.internet import reactor

    from trow.app import build_service

    try:
        return build_service(options.settings, reactor)
    except (AuthSetupError, DataDirLocked, SchemaTooNew, SqliteSchemaTooNew) as e:
        fail(str(e))
