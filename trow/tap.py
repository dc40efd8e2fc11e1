"""Command line of ``twistd trow`` / ``twist trow``: options, validation, and the service tree.

Everything an operator can get wrong is checked in L{Options.postOptions}, before any port is
bound: a bad option or config file prints one line naming the problem and exits 1.
"""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
import sys
from typing import Any, NoReturn

import attrs
from twisted.application.service import IService
from twisted.internet.endpoints import quoteStringArgument
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
    # --cors: origins whose browsers may call the registry API (Trow's flag).
    cors: tuple[str, ...] = ()


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


# Trow's bare --tls: its certificate and key where Trow's documentation puts them.
DEFAULT_TLS = "./certs/domain.crt,./certs/domain.key"
BIND_PORT = 8000


def bind_endpoint(value: str, tls: tuple[str, str] | None = None) -> str:
    """The endpoint description for Trow's C{--bind IP[:PORT]} (port 8000 when missing;
    C{[::]} listens on IPv6 and IPv4 alike), over TLS with C{tls} (certificate, key)."""
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            fail(f"--bind {value!r}: write an IPv6 address in brackets, as [::] or [::1]:8000")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        fail(f"--bind {value!r}: {host!r} is not an IP address (--bind takes IP[:PORT], e.g. 0.0.0.0:8000 or [::])")
    if ":" in text and not text.startswith("[") and address.version == 6:
        fail(f"--bind {value!r}: write an IPv6 address in brackets, as [::] or [::1]:8000")
    port = BIND_PORT
    if port_text:
        if not port_text.isdigit() or int(port_text) > 65535:
            fail(f"--bind {value!r}: the port must be a number from 0 to 65535")
        port = int(port_text)
    interface = quoteStringArgument(str(address))
    if tls is None:
        return f"tcp:{port}:interface={interface}"
    cert, key = (quoteStringArgument(path) for path in tls)
    return f"ssl:{port}:interface={interface}:privateKey={key}:certKey={cert}"


def check_tls(value: str) -> tuple[str, str]:
    """Trow's C{--tls=CERT,KEY}: both files, loadable as a pair (one line and exit 1 if not)."""
    parts = value.split(",")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        fail(f"--tls={value}: give the certificate and its key, separated by a comma (--tls=CERT,KEY)")
    cert, key = (p.strip() for p in parts)
    for what, path in (("certificate", cert), ("key", key)):
        if not os.path.isfile(path):
            fail(f"--tls: no TLS {what} at {path!r}" + (" (a bare --tls means --tls=" + DEFAULT_TLS + ")" if value == DEFAULT_TLS else ""))
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as e:
        fail(f"--tls: the certificate {cert!r} and key {key!r} do not load as a pair: {getattr(e, 'reason', None) or e}")
    return cert, key


def check_cors(values: list[str]) -> tuple[str, ...]:
    """Trow's C{--cors} (repeatable): comma-separated origins such as C{https://ui.example.com},
    in lower case as browsers send them."""
    origins = tuple(o.strip().rstrip("/").lower() for value in values for o in value.split(",") if o.strip())
    if not origins:
        fail("--cors: give the allowed origins, comma-separated (e.g. --cors https://ui.example.com)")
    for origin in origins:
        if origin == "*":
            # Trow refuses it too: with credentials allowed, any website could read the registry
            # with its visitors' credentials.
            fail("--cors: '*' is not allowed with credentials (any website could then read the registry as its visitor); name the origins")
        scheme, sep, rest = origin.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
            fail(f"--cors: {origin!r} is not an origin; write scheme://host[:port], e.g. https://ui.example.com")
    return origins


class Options(usage.Options):
    """Options of the trow plugin (reference.md section 2)."""

    synopsis = "[options]"
    longdesc = "trow: OCI registry, pull-through cache and Kubernetes admission webhook."

    optParameters = [
        ["data-dir", "d", "./data", "Directory that holds all state: blobs, metadata, uploads."],
        ["config", None, None, "YAML config file (Trow v0.10 keys accepted)."],
        ["hostname", "n", None, "Public name of this registry (auth realms, rewritten images)."],
        ["metrics-listen", None, None, "Endpoint description for a separate /metrics listener."],
        ["log-format", None, None, "Log format: text or json (one JSON object per line); default: the runner's."],
        ["user", "U", None, "Single user name (Trow-compatible)."],
        ["password", "P", None, "Password of --user; may be file:///path."],
        ["htpasswd", None, None, "bcrypt htpasswd file with many users."],
        [
            "database",
            None,
            None,
            "PostgreSQL URL (libpq) for metadata: several replicas then share one --data-dir. Default: sqlite in the data dir.",
        ],
        ["peer-url", None, None, "URL the other replicas reach this one at (with --database)."],
        ["tls", None, None, "Trow's: serve the registry over HTTPS with CERT,KEY (bare --tls: " + DEFAULT_TLS + ")."],
    ]
    optFlags = [
        ["dry-run", None, "Validate options and config, print the effective settings, exit."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["webhook-listen"] = []
        self["bind"] = []
        self["cors"] = []

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

    def opt_bind(self, address: str) -> None:
        """Trow's way to write --listen: IP[:PORT] (port 8000 when missing; [::] is dual-stack)."""
        self["bind"].append(address)

    def opt_cors(self, origins: str) -> None:
        """Trow's: comma-separated origins whose browsers may call the registry (credentials
        allowed; repeatable)."""
        self["cors"].append(origins)

    def opt_name(self, name: str) -> None:
        """Trow's long form of -n: alias of --hostname."""
        self["hostname"] = name

    def parseOptions(self, options: Any = None) -> None:
        if options is None:
            options = sys.argv[1:]
        # Trow's --tls takes its value only after "=", and may have none: getopt cannot say that.
        for arg, after in zip(options, list(options[1:]) + [""]):
            if arg == "--tls" and "," in after and not after.startswith("-"):
                fail(f"--tls takes its files after '=': --tls={after}")
        options = ["--tls=" + DEFAULT_TLS if arg == "--tls" else arg for arg in options]
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            fail(f"{e} (see 'twistd trow --help')")

    def postOptions(self) -> None:
        if self["bind"] and self["listen"]:
            fail("--bind and --listen both say where to listen: give one of them (--bind IP[:PORT] is Trow's way to write --listen)")
        if len(self["bind"]) > 1:
            fail("--bind is given once (to listen on more addresses, use --listen, which repeats)")
        tls = check_tls(self["tls"]) if self["tls"] is not None else None
        if tls is not None and self["listen"]:
            fail("--tls serves --bind (or the default port 8000) over HTTPS; with --listen, give an ssl: endpoint instead")
        cors = check_cors(self["cors"]) if self["cors"] else ()
        if self["bind"]:
            listen: tuple[str, ...] = (bind_endpoint(self["bind"][0], tls),)
        elif tls is not None:
            listen = (bind_endpoint(f"0.0.0.0:{BIND_PORT}", tls),)
        else:
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
            cors=cors,
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
                "cors": list(cors),
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
