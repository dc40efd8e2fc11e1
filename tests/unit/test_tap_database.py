"""trow.tap for replicas: --database, --peer-url, default_peer_url and --dry-run's redaction.

Nothing here connects to a database: the URL is only parsed, before any port is bound.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.unit.test_tap import assert_one_line_error, parse
from trow import tap
from trow.tap import default_peer_url

SECRET = "hunter2-secret"
URL = f"postgresql://trow:{SECRET}@db.example:5432/trow"


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    """A data dir that does not exist yet but can be created."""
    return str(tmp_path / "data")


@pytest.fixture
def host_address(monkeypatch: pytest.MonkeyPatch) -> str:
    """This host's first non-loopback address, pinned so that results do not depend on the
    machine running the tests."""
    monkeypatch.setattr(tap, "_first_address", lambda: "10.9.8.7")
    return "10.9.8.7"


# -- --database ---------------------------------------------------------------------------------


def test_database_url_is_kept(capsys: pytest.CaptureFixture[str], data_dir: str, host_address: str) -> None:
    """A valid libpq URL is accepted as given (not connected to) and lands in the settings."""
    outcome = parse(capsys, "--data-dir", data_dir, "--database", URL)
    assert outcome.code is None, outcome.err
    assert outcome.options.settings.database == URL


def test_database_key_value_form_is_accepted(capsys: pytest.CaptureFixture[str], data_dir: str, host_address: str) -> None:
    """libpq's key=value form is a valid --database too."""
    conninfo = f"host=db.example dbname=trow user=trow password={SECRET}"
    outcome = parse(capsys, "--data-dir", data_dir, "--database", conninfo)
    assert outcome.code is None, outcome.err
    assert outcome.options.settings.database == conninfo


def test_database_settings_repr_hides_the_url(capsys: pytest.CaptureFixture[str], data_dir: str, host_address: str) -> None:
    """The settings object never shows the database URL (it holds a password) in its repr."""
    outcome = parse(capsys, "--data-dir", data_dir, "--database", URL)
    assert SECRET not in repr(outcome.options.settings)


def test_database_of_another_kind_is_one_line(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    """A URL that is not PostgreSQL's: one line naming --database and the expected form, exit 1,
    and the password is not echoed."""
    outcome = parse(capsys, "--data-dir", data_dir, "--database", f"mysql://trow:{SECRET}@db/trow")
    assert_one_line_error(outcome, "--database", "postgresql://")
    assert SECRET not in outcome.err


def test_database_word_is_one_line(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    """A bare word (a forgotten variable expansion, say) is refused the same way."""
    assert_one_line_error(parse(capsys, "--data-dir", data_dir, "--database", "trowdb"), "--database", "trowdb")


@pytest.mark.parametrize(
    "url", ["postgresql://trow@db/trow?sslmod=require", "host=db sslmod=require"], ids=["url", "key-value"]
)
def test_database_with_unknown_option_is_one_line(capsys: pytest.CaptureFixture[str], data_dir: str, url: str) -> None:
    """A misspelt connection option (sslmod for sslmode) is named in exactly one error line."""
    assert_one_line_error(parse(capsys, "--data-dir", data_dir, "--database", url), "--database", "sslmod")


@pytest.mark.parametrize(
    "url",
    [f"host=db password={SECRET} dbname", f"postgresql://trow:{SECRET}@[::1/trow"],
    ids=["key-value", "url"],
)
def test_unparseable_database_never_echoes_the_password(
    capsys: pytest.CaptureFixture[str], data_dir: str, url: str
) -> None:
    """An unparseable --database is refused without printing the password it holds."""
    outcome = parse(capsys, "--data-dir", data_dir, "--database", url)
    assert outcome.code == 1
    assert SECRET not in outcome.err + outcome.out


def test_database_with_non_numeric_port_is_refused(capsys: pytest.CaptureFixture[str], data_dir: str, host_address: str) -> None:
    """A port that is not a number is a bad URL, refused before start like any other."""
    outcome = parse(capsys, "--data-dir", data_dir, "--database", "postgresql://trow@db:fivefourthreetwo/trow")
    assert_one_line_error(outcome, "--database")


# -- --peer-url ---------------------------------------------------------------------------------


def test_peer_url_is_kept_without_trailing_slash(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    """--peer-url with --database is taken as given, minus a trailing slash (paths are appended)."""
    outcome = parse(capsys, "--data-dir", data_dir, "--database", URL, "--peer-url", "http://10.1.2.3:8000/")
    assert outcome.code is None, outcome.err
    assert outcome.options.settings.peer_url == "http://10.1.2.3:8000"


def test_https_peer_url_is_accepted(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    outcome = parse(capsys, "--data-dir", data_dir, "--database", URL, "--peer-url", "https://trow-1.trow:8443")
    assert outcome.options.settings.peer_url == "https://trow-1.trow:8443"


def test_peer_url_needs_database(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    """--peer-url alone makes no sense (trow runs alone): refused, naming both options."""
    outcome = parse(capsys, "--data-dir", data_dir, "--peer-url", "http://10.1.2.3:8000")
    assert_one_line_error(outcome, "--peer-url", "--database")


@pytest.mark.parametrize(
    "url",
    ["ftp://10.1.2.3:8000", "10.1.2.3:8000", "http://", "http:///path", "http://10.1.2.3:port"],
    ids=["scheme", "no-scheme", "no-host", "path-only", "bad-port"],
)
def test_bad_peer_url_is_one_line(capsys: pytest.CaptureFixture[str], data_dir: str, url: str) -> None:
    """A peer URL must be http(s) with a host (and a numeric port if any)."""
    assert_one_line_error(parse(capsys, "--data-dir", data_dir, "--database", URL, "--peer-url", url), "--peer-url")


def test_no_peer_url_without_database(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    """A trow on its own has no peer URL at all."""
    outcome = parse(capsys, "--data-dir", data_dir)
    assert outcome.options.settings.peer_url is None
    assert outcome.options.settings.database is None


def test_peer_url_defaults_from_the_first_listen(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    """With --database and no --peer-url, the first --listen's interface and port say it."""
    outcome = parse(
        capsys,
        "--data-dir", data_dir,
        "--database", URL,
        "--listen", "tcp:8123:interface=10.4.5.6",
        "--listen", "tcp:9000:interface=10.7.7.7",
    )
    assert outcome.options.settings.peer_url == "http://10.4.5.6:8123"


def test_peer_url_defaults_to_this_host_on_the_default_port(
    capsys: pytest.CaptureFixture[str], data_dir: str, host_address: str
) -> None:
    """No --listen (tcp:8000 on every interface): this host's address and port 8000."""
    outcome = parse(capsys, "--data-dir", data_dir, "--database", URL)
    assert outcome.options.settings.peer_url == f"http://{host_address}:8000"


# -- default_peer_url ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("tcp:8000:interface=10.1.2.3", "http://10.1.2.3:8000"),
        ("tcp:0:interface=127.0.0.1", "http://127.0.0.1:0"),
        (r"tcp6:8000:interface=fd00\:\:5", "http://[fd00::5]:8000"),
        ("tcp:9000", "http://10.9.8.7:9000"),
        ("tcp:9000:interface=0.0.0.0", "http://10.9.8.7:9000"),
        (r"tcp6:9000:interface=\:\:", "http://10.9.8.7:9000"),
    ],
    ids=["v4", "loopback-port-0", "v6-brackets", "no-interface", "v4-wildcard", "v6-wildcard"],
)
def test_default_peer_url(host_address: str, listen: str, expected: str) -> None:
    """An address named by --listen is used as is (IPv6 in brackets); a wildcard or no
    interface means this host's first non-loopback address; the port is the listener's."""
    assert default_peer_url((listen,)) == expected


def test_default_peer_url_uses_only_the_first_listen(host_address: str) -> None:
    assert default_peer_url(("tcp:8000:interface=10.0.0.1", "tcp:8001:interface=10.0.0.2")) == "http://10.0.0.1:8000"


def test_first_address_skips_loopback_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no route to probe (no UDP socket can be connected), the host name's addresses are
    used, skipping loopback ones (Debian maps the host name to 127.0.1.1)."""

    def no_socket(*args: object, **kwargs: object) -> socket.socket:
        raise OSError("no network")

    resolved = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.1.1", 0)),
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.20.30.40", 0)),
    ]
    monkeypatch.setattr(socket, "socket", no_socket)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: resolved)
    assert tap._first_address() == "10.20.30.40"
    assert default_peer_url(("tcp:8000",)) == "http://10.20.30.40:8000"


def test_first_address_falls_back_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host with nothing but loopback still gets a usable (if lonely) peer URL."""

    def no_socket(*args: object, **kwargs: object) -> socket.socket:
        raise OSError("no network")

    monkeypatch.setattr(socket, "socket", no_socket)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [(socket.AF_INET, 1, 6, "", ("127.0.0.1", 0))])
    assert tap._first_address() == "127.0.0.1"


# -- --dry-run ----------------------------------------------------------------------------------


def test_dry_run_redacts_the_database_password(capsys: pytest.CaptureFixture[str], data_dir: str, host_address: str) -> None:
    """--dry-run shows which database (user, host, port, name) but never its password."""
    outcome = parse(capsys, "--dry-run", "--data-dir", data_dir, "--database", URL)
    assert outcome.code == 0, outcome.err
    assert SECRET not in outcome.out
    summary = json.loads(outcome.out)
    assert summary["database"] == "postgresql://trow:***@db.example:5432/trow"
    assert summary["peer_url"] == f"http://{host_address}:8000"


def test_dry_run_redacts_a_key_value_password(capsys: pytest.CaptureFixture[str], data_dir: str, host_address: str) -> None:
    """The key=value form is redacted too, and still names the host."""
    outcome = parse(capsys, "--dry-run", "--data-dir", data_dir, "--database", f"host=db.example password={SECRET}")
    assert outcome.code == 0, outcome.err
    assert SECRET not in outcome.out
    assert "db.example" in json.loads(outcome.out)["database"]


def test_dry_run_without_database_shows_none(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    outcome = parse(capsys, "--dry-run", "--data-dir", data_dir)
    summary = json.loads(outcome.out)
    assert summary["database"] is None and summary["peer_url"] is None
