"""trow.tap: command-line options, their validation before any port is bound, and --dry-run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import attrs
import pytest
from twisted.internet.testing import MemoryReactorClock

from trow.app import build_service
from trow.config import Config
from trow.tap import Options, Settings


@attrs.frozen
class Outcome:
    """How parsing ended: the exit code (None if it returned), stdout, stderr, and the options."""

    code: int | None
    out: str
    err: str
    options: Options


def parse(capsys: pytest.CaptureFixture[str], *args: str) -> Outcome:
    """Parse C{args} as 'twistd trow' would, catching the exit."""
    options = Options()
    code: int | None = None
    try:
        options.parseOptions(list(args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else -1
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err, options)


def assert_one_line_error(outcome: Outcome, *fragments: str) -> None:
    """Exit 1, nothing on stdout, exactly one 'trow: error:' line on stderr containing C{fragments}."""
    assert outcome.code == 1
    assert outcome.out == ""
    assert outcome.err.startswith("trow: error: ")
    assert outcome.err.endswith("\n") and outcome.err.count("\n") == 1, outcome.err
    for fragment in fragments:
        assert fragment in outcome.err


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    """A data dir that does not exist yet but can be created."""
    return str(tmp_path / "data")


def write(tmp_path: Path, name: str, text: str) -> str:
    """Write a file under C{tmp_path}; return its path."""
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- good options ------------------------------------------------------------------------------


def test_defaults(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    """With no options: listen on tcp:8000, default config, nothing else switched on."""
    outcome = parse(capsys, "--data-dir", data_dir)
    assert outcome.code is None and outcome.err == ""
    settings = outcome.options.settings
    assert settings == Settings(listen=("tcp:8000",), data_dir=data_dir, config=Config())


def test_listen_is_repeatable(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    """Every --listen is kept, in order, replacing the default."""
    outcome = parse(capsys, "--data-dir", data_dir, "--listen", "tcp:0", "--listen", "tcp:0:interface=127.0.0.1")
    assert outcome.options.settings.listen == ("tcp:0", "tcp:0:interface=127.0.0.1")


def test_config_file_is_loaded(capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path) -> None:
    """--config reads the YAML file into the settings."""
    path = write(tmp_path, "trow.yaml", "gc:\n  interval: 90s\n")
    settings = parse(capsys, "--data-dir", data_dir, "--config", path).options.settings
    assert settings.config.gc.interval == 90
    assert settings.config_path == path


def test_config_file_alias(capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path) -> None:
    """--config-file is an alias of --config."""
    path = write(tmp_path, "trow.yaml", "gc:\n  grace: 2h\n")
    settings = parse(capsys, "--data-dir", data_dir, "--config-file", path).options.settings
    assert settings.config.gc.grace == 7200


def test_hostname_is_kept(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    """--hostname is carried into the settings."""
    assert parse(capsys, "--data-dir", data_dir, "--hostname", "trow.example.com").options.settings.hostname == "trow.example.com"


def test_existing_data_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """An existing writable directory is a fine data dir."""
    assert parse(capsys, "--data-dir", str(tmp_path)).code is None


def test_validation_creates_nothing(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    """Checking the options does not create the data dir: nothing happens before start-up."""
    parse(capsys, "--data-dir", data_dir)
    assert not os.path.exists(data_dir)


# -- bad options: one line, exit 1 -------------------------------------------------------------


def test_unknown_option(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown option is named, with a pointer to --help."""
    assert_one_line_error(parse(capsys, "--bogus"), "--bogus", "--help")


def test_bad_listen_description(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    """A --listen that is no Twisted endpoint description is named."""
    assert_one_line_error(parse(capsys, "--data-dir", data_dir, "--listen", "carrier-pigeon:8000"), "--listen", "carrier-pigeon")


def test_ssl_listen_with_missing_key(capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path) -> None:
    """An ssl: listener whose key file is missing is refused before start-up."""
    missing = str(tmp_path / "missing.pem")
    outcome = parse(capsys, "--data-dir", data_dir, "--listen", f"ssl:8443:privateKey={missing}")
    assert_one_line_error(outcome, "--listen", missing)


def test_data_dir_that_is_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A --data-dir that exists as a file is refused."""
    path = write(tmp_path, "file", "x")
    assert_one_line_error(parse(capsys, "--data-dir", path), "--data-dir", "not a directory")


def test_data_dir_under_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A --data-dir that could only be created inside a file is refused."""
    path = write(tmp_path, "file", "x")
    assert_one_line_error(parse(capsys, "--data-dir", os.path.join(path, "a", "b")), "--data-dir", "cannot be created")


def test_missing_config_file(capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path) -> None:
    """A --config that cannot be read is refused, naming the file."""
    missing = str(tmp_path / "absent.yaml")
    assert_one_line_error(parse(capsys, "--data-dir", data_dir, "--config", missing), "bad config", missing)


def test_config_error_names_the_key(capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path) -> None:
    """A bad value in the config file is refused in one line naming the key path and the file."""
    path = write(tmp_path, "trow.yaml", "gc:\n  interval: 10x\n")
    assert_one_line_error(parse(capsys, "--data-dir", data_dir, "--config", path), "gc.interval", path)


def test_config_unknown_key(capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path) -> None:
    """An unknown key in the config file is refused in one line naming it."""
    path = write(tmp_path, "trow.yaml", "registry_proxies:\n  registries:\n    - host: docker.io\n      pasword: x\n")
    assert_one_line_error(parse(capsys, "--data-dir", data_dir, "--config", path), "registry_proxies.registries[0].pasword")


def test_invalid_yaml_is_one_line(capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path) -> None:
    """A config file that is not YAML is refused in exactly one line, like every other bad option,
    saying where the syntax breaks."""
    path = write(tmp_path, "trow.yaml", "gc:\n  interval: [\n")
    assert_one_line_error(parse(capsys, "--data-dir", data_dir, "--config", path), "not valid YAML", path, "line 3")


def test_user_without_password(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    """--user alone is refused."""
    assert_one_line_error(parse(capsys, "--data-dir", data_dir, "--user", "admin"), "--user and --password")


def test_password_without_user(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    """--password alone is refused."""
    assert_one_line_error(parse(capsys, "--data-dir", data_dir, "--password", "pw"), "--user and --password")


def test_missing_htpasswd(capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path) -> None:
    """An --htpasswd file that does not exist is refused."""
    missing = str(tmp_path / "htpasswd")
    assert_one_line_error(parse(capsys, "--data-dir", data_dir, "--htpasswd", missing), "--htpasswd", missing)


def test_user_and_password_switch_auth_on(capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path) -> None:
    """--user with --password (also as file://) is accepted and reaches the settings."""
    secret = write(tmp_path, "pw", "s3cret\n")
    outcome = parse(capsys, "--data-dir", data_dir, "--user", "admin", "--password", f"file://{secret}")
    assert outcome.code is None
    settings = outcome.options.settings
    assert (settings.user, settings.password) == ("admin", "s3cret")


def test_auth_section_with_anonymous_pull_is_accepted(capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path) -> None:
    """An auth: section that lets anonymous clients pull needs no user."""
    path = write(tmp_path, "trow.yaml", "auth:\n  anonymous: pull\n")
    outcome = parse(capsys, "--data-dir", data_dir, "--config", path)
    assert outcome.code is None
    assert outcome.options.settings.config.auth.anonymous == "pull"


def test_auth_section_nobody_can_log_in(capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path) -> None:
    """Auth switched on with no user and no anonymous pull would lock everyone out: refused."""
    path = write(tmp_path, "trow.yaml", "auth:\n  token_ttl: 1h\n")
    assert_one_line_error(parse(capsys, "--data-dir", data_dir, "--config", path), "nobody can log in")


def test_short_token_key_is_refused(capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path) -> None:
    """A token key too short to be a secret is refused at start-up."""
    path = write(tmp_path, "trow.yaml", "auth:\n  anonymous: pull\n  token_key: short\n")
    assert_one_line_error(parse(capsys, "--data-dir", data_dir, "--config", path), "token")


def test_password_never_printed(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    """An error about credentials does not echo the password."""
    outcome = parse(capsys, "--data-dir", data_dir, "--password", "hunter2-secret")
    assert outcome.code == 1
    assert "hunter2-secret" not in outcome.err + outcome.out


# -- --dry-run ---------------------------------------------------------------------------------

def test_dry_run_prints_json_and_exits_0(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    """--dry-run prints the effective settings as JSON on stdout and exits 0."""
    outcome = parse(capsys, "--dry-run", "--data-dir", data_dir, "--listen", "tcp:0")
    assert outcome.code == 0
    assert outcome.err == ""
    summary = json.loads(outcome.out)
    assert summary["listen"] == ["tcp:0"]
    assert summary["data_dir"] == os.path.abspath(data_dir)
    assert summary["config"]["gc"]["interval"] == 600


def test_dry_run_masks_config_secrets(capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path) -> None:
    """--dry-run never prints an upstream password from the config file."""
    path = write(tmp_path, "trow.yaml", "registry_proxies:\n  registries:\n    - host: docker.io\n      username: u\n      password: s3cr3t-value\n")
    outcome = parse(capsys, "--dry-run", "--data-dir", data_dir, "--config", path)
    assert outcome.code == 0
    assert "s3cr3t-value" not in outcome.out
    assert json.loads(outcome.out)["config"]["registry_proxies"]["registries"][0]["password"] == "***"


def test_dry_run_with_bad_config_exits_1(capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path) -> None:
    """--dry-run still fails with exit 1 on a bad config, and prints no settings."""
    path = write(tmp_path, "trow.yaml", "gc: {interval: soon}\n")
    assert_one_line_error(parse(capsys, "--dry-run", "--data-dir", data_dir, "--config", path), "gc.interval")


# -- the service tree --------------------------------------------------------------------------


def test_service_tree_cleans_leftovers_and_listens(tmp_path: Path) -> None:
    """Building the service cleans what a crash left (tmp files, orphan uploads) and adds one
    listener per --listen, which binds only when started."""
    data = tmp_path / "data"
    (data / "tmp").mkdir(parents=True)
    (data / "tmp" / "body-crashed").write_bytes(b"partial")
    (data / "uploads").mkdir()
    (data / "uploads" / "orphan-session").write_bytes(b"half")
    reactor = MemoryReactorClock()
    settings = Settings(listen=("tcp:5000", "tcp:5001"), data_dir=str(data), config=Config())
    root = build_service(settings, reactor)
    try:
        assert os.listdir(data / "tmp") == []
        assert os.listdir(data / "uploads") == []
        assert reactor.tcpServers == []
        root.startService()
        assert sorted(port for port, *_ in reactor.tcpServers) == [5000, 5001]
    finally:
        root.stopService()


def test_webhook_listener_with_unreadable_certificate_is_refused(
    capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path
) -> None:
    """An ssl: webhook listener whose key file cannot be read stops trow before it binds."""
    missing = str(tmp_path / "tls.key")
    args = ("--data-dir", data_dir, "--webhook-listen", f"ssl:0:privateKey={missing}")
    assert_one_line_error(parse(capsys, *args), "--webhook-listen", missing)


def test_image_mutation_needs_hostname(capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path) -> None:
    """Rewriting images needs the name nodes pull trow by: without --hostname, trow refuses."""
    path = write(tmp_path, "trow.yaml", "image_mutation:\n  registries: [docker.io]\n")
    assert_one_line_error(parse(capsys, "--data-dir", data_dir, "--config", path), "--hostname")


def test_bad_validation_prefix_names_its_key(capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path) -> None:
    """A validation rule that cannot match anything is refused with its config key."""
    path = write(tmp_path, "trow.yaml", "image_validation:\n  allow: [\"nginx:1.25\"]\n")
    assert_one_line_error(parse(capsys, "--data-dir", data_dir, "--config", path), "image_validation.allow[0]")


@pytest.mark.parametrize("content", [None, "not a certificate\n", "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n"])
def test_unusable_ca_file_is_refused_at_start(
    capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path, content: str | None
) -> None:
    """A ca_file that is missing, holds no certificate, or a broken one: one error line naming
    the key, before any port is bound (not a 503 at the first pull)."""
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_text(content)
    path = write(
        tmp_path,
        "trow.yaml",
        f"registry_proxies:\n  registries:\n    - host: corp.example:5000\n      ca_file: {ca}\n",
    )
    assert_one_line_error(parse(capsys, "--data-dir", data_dir, "--config", path), "registries[0].ca_file")


def test_empty_password_file_is_refused(capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path) -> None:
    """An empty password file says so (not "--user and --password go together")."""
    empty = write(tmp_path, "pw", "\n")
    outcome = parse(capsys, "--data-dir", data_dir, "--user", "admin", "--password", f"file://{empty}")
    assert_one_line_error(outcome, "--password", "is empty")


# -- Trow's command line ---------------------------------------------------------------------------


def _pair(tmp_path: Path) -> tuple[str, str]:
    """A certificate and its key, as files (trow's own generator)."""
    from trow.certs import make_bundle

    bundle = make_bundle("trow", "test")
    return write(tmp_path, "tls.crt", bundle.cert_pem.decode()), write(tmp_path, "tls.key", bundle.key_pem.decode())


@pytest.mark.parametrize(
    "bind, listen",
    [
        ("0.0.0.0", "tcp:8000:interface=0.0.0.0"),
        ("127.0.0.1:8081", "tcp:8081:interface=127.0.0.1"),
        ("[::]", "tcp:8000:interface=\\:\\:"),
        ("[::1]:0", "tcp:0:interface=\\:\\:1"),
    ],
)
def test_bind_is_trows_way_to_write_listen(capsys: pytest.CaptureFixture[str], data_dir: str, bind: str, listen: str) -> None:
    outcome = parse(capsys, "--data-dir", data_dir, "--bind", bind)
    assert outcome.code is None, outcome.err
    assert outcome.options.settings.listen == (listen,)


@pytest.mark.parametrize(
    "bind, fragment",
    [
        ("localhost:8000", "not an IP address"),
        ("::1", "in brackets"),
        ("[::1", "in brackets"),
        ("127.0.0.1:http", "port must be a number"),
        ("127.0.0.1:70000", "port must be a number"),
    ],
)
def test_a_bad_bind_is_one_line(capsys: pytest.CaptureFixture[str], data_dir: str, bind: str, fragment: str) -> None:
    assert_one_line_error(parse(capsys, "--data-dir", data_dir, "--bind", bind), "--bind", fragment)


def test_bind_and_listen_together_are_refused(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    outcome = parse(capsys, "--data-dir", data_dir, "--bind", "0.0.0.0", "--listen", "tcp:8000")
    assert_one_line_error(outcome, "--bind and --listen")


def test_trows_short_forms(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    outcome = parse(capsys, "-d", data_dir, "-n", "registry.example.com", "-U", "admin", "-P", "s3cret")
    assert outcome.code is None, outcome.err
    settings = outcome.options.settings
    assert (settings.data_dir, settings.hostname, settings.user, settings.password) == (
        data_dir,
        "registry.example.com",
        "admin",
        "s3cret",
    )
    assert parse(capsys, "-d", data_dir, "--name", "r.example.com").options.settings.hostname == "r.example.com"


def test_tls_serves_the_bind_address_over_https(capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path) -> None:
    cert, key = _pair(tmp_path)
    outcome = parse(capsys, "-d", data_dir, "--bind", "127.0.0.1:8443", f"--tls={cert},{key}")
    assert outcome.code is None, outcome.err
    [listen] = outcome.options.settings.listen
    assert listen.startswith("ssl:8443:interface=127.0.0.1:privateKey=") and "certKey=" in listen
    # Without --bind: the default port, over HTTPS.
    [default] = parse(capsys, "-d", data_dir, f"--tls={cert},{key}").options.settings.listen
    assert default.startswith("ssl:8000:interface=0.0.0.0:")


def test_a_bare_tls_means_trows_default_paths(
    capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(parse(capsys, "-d", data_dir, "--tls"), "./certs/domain.crt")
    (tmp_path / "certs").mkdir()
    cert, key = _pair(tmp_path)
    os.rename(cert, tmp_path / "certs" / "domain.crt")
    os.rename(key, tmp_path / "certs" / "domain.key")
    outcome = parse(capsys, "-d", data_dir, "--tls")
    assert outcome.code is None, outcome.err
    assert "certKey=./certs/domain.crt" in outcome.options.settings.listen[0]


def test_a_certificate_pair_that_does_not_load_is_one_line(capsys: pytest.CaptureFixture[str], data_dir: str, tmp_path: Path) -> None:
    cert, key = _pair(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = _pair(tmp_path / "other")
    assert_one_line_error(parse(capsys, "-d", data_dir, f"--tls={cert},{other_key}"), "do not load as a pair")
    assert_one_line_error(parse(capsys, "-d", data_dir, f"--tls={cert}"), "CERT,KEY")
    garbage = write(tmp_path, "garbage.pem", "not a certificate\n")
    assert_one_line_error(parse(capsys, "-d", data_dir, f"--tls={garbage},{key}"), "do not load")
    assert_one_line_error(parse(capsys, "-d", data_dir, "--listen", "tcp:0", f"--tls={cert},{key}"), "ssl: endpoint")


def test_cors_origins(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    outcome = parse(capsys, "-d", data_dir, "--cors", "https://UI.example.com, http://localhost:3000/", "--cors", "https://b.example")
    # Lower case, as browsers send them; a repeated --cors adds to the list.
    assert outcome.options.settings.cors == ("https://ui.example.com", "http://localhost:3000", "https://b.example")
    assert_one_line_error(parse(capsys, "-d", data_dir, "--cors", "ui.example.com"), "not an origin")
    assert_one_line_error(parse(capsys, "-d", data_dir, "--cors", ","), "allowed origins")
    # Any origin with credentials would let every website read the registry as its visitor.
    assert_one_line_error(parse(capsys, "-d", data_dir, "--cors", "*"), "'*' is not allowed")


def test_tls_with_its_files_after_a_space_says_how_to_write_it(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    assert_one_line_error(parse(capsys, "-d", data_dir, "--tls", "cert.pem,key.pem"), "--tls=cert.pem,key.pem")
