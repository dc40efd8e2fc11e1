"""trow.logs: one access-log event per request with the right fields and no secrets, the JSON
and text formats, and --log-format handed to twistd and twist through their own options."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
from treq.testing import StubTreq
from twisted.application.app import ServerOptions as TwistdServerOptions
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.scripts.twistd import ServerOptions
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tests.unit.harness import result_of
from trow import logs
from trow.api.site import TrowSite
from trow.metrics import Metrics

SECRET = "hunter2-very-secret"


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    """Every log event emitted during the test."""
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(seen.append)


def access_events(events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in events if e.get("log_namespace") == logs.ACCESS_NAMESPACE]


class _App(Resource):
    """200 with a body, or (at /slow) an answer the test finishes by hand."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Request] = []

    def render(self, request: Request) -> Any:
        request.trow_route = "blob"  # type: ignore[attr-defined]
        if request.path == b"/slow":
            self.held.append(request)
            return NOT_DONE_YET
        request.setHeader(b"content-type", b"text/plain")
        return b"x" * 1000


def connect(site: TrowSite, peer: str = "10.1.2.3") -> tuple[Any, StringTransport]:
    transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
    channel = site.buildProtocol(transport.getPeer())
    channel.makeConnection(transport)
    return channel, transport


# -- the access event --------------------------------------------------------------------------


def test_one_access_event_per_request_with_its_fields(events: list[LogEvent]) -> None:
    """Method, path, route, status, bytes, duration (from the site's clock), client, and the
    X-Forwarded-For chain as a field of its own."""
    clock = Clock()
    app = _App()
    site = TrowSite(app, reactor=clock)
    channel, transport = connect(site)
    channel.dataReceived(
        b"GET /slow?n=10 HTTP/1.1\r\nHost: trow\r\nUser-Agent: skopeo/1.0\r\n"
        b"X-Forwarded-For: 203.0.113.9, 10.0.0.1\r\n\r\n"
    )
    clock.advance(2.5)
    [request] = app.held
    request.write(b"abc")
    request.finish()
    [event] = access_events(events)
    assert event["method"] == "GET"
    assert event["path"] == "/slow?n=10"
    assert event["route"] == "blob"
    assert event["status"] == 200
    assert event["bytes"] == 3
    assert event["duration"] == 2.5
    assert event["client"] == "10.1.2.3"
    assert event["forwarded_for"] == "203.0.113.9, 10.0.0.1"
    assert event["user_agent"] == "skopeo/1.0"
    assert event["completed"] is True
    assert event["log_level"] == LogLevel.info
    assert logs.text_line(event) is not None


def test_secrets_never_reach_the_access_log(events: list[LogEvent]) -> None:
    """Authorization headers are never read; query parameters named like secrets are redacted."""
    site = TrowSite(_App(), reactor=Clock())
    channel, transport = connect(site)
    channel.dataReceived(
        f"GET /v2/?password={SECRET}&access_token={SECRET}&last=a HTTP/1.1\r\nHost: trow\r\n"
        f"Authorization: Basic {SECRET}\r\nCookie: session={SECRET}\r\n\r\n".encode()
    )
    [event] = access_events(events)
    assert event["path"] == "/v2/?password=***&access_token=***&last=a"
    assert SECRET not in json.dumps({k: v for k, v in event.items() if not k.startswith("log_")})
    assert SECRET not in logs.json_line(event)
    assert SECRET not in (logs.text_line(event) or "")


def test_braces_in_a_path_are_logged_as_they_are(events: list[LogEvent]) -> None:
    """The access line is pre-formatted: braces a client sends stay text, never a format field."""
    site = TrowSite(_App(), reactor=Clock())
    channel, transport = connect(site)
    channel.dataReceived(b"GET /v2/{client}/{0} HTTP/1.1\r\nHost: trow\r\n\r\n")
    [event] = access_events(events)
    assert '"GET /v2/{client}/{0}" 200 1000' in (logs.text_line(event) or "")
    assert json.loads(logs.json_line(event))["message"] == '10.1.2.3 "GET /v2/{client}/{0}" 200 1000 0.000s'


def test_request_cut_mid_answer_is_logged_once_as_not_completed(events: list[LogEvent]) -> None:
    """A client that leaves before the answer: one event, completed false, status 499 when
    nothing had been sent, and the request metrics say the same."""
    clock = Clock()
    metrics = Metrics()
    app = _App()
    site = TrowSite(app, reactor=clock, metrics=metrics)
    channel, transport = connect(site)
    channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: trow\r\n\r\n")
    clock.advance(1)
    channel.connectionLost(Failure(ConnectionDone()))
    [event] = access_events(events)
    assert event["completed"] is False
    assert event["status"] == 499
    assert event["duration"] == 1
    assert "connection lost" in (logs.text_line(event) or "")
    assert metrics.value("trow_http_requests_total", method="GET", route="blob", status="499") == 1


def test_upload_cut_mid_body_is_logged_with_its_method_and_path(events: list[LogEvent]) -> None:
    """twisted.web learns method and path only once the body is in; a push cut half-way is still
    logged as the PUT it was."""
    site = TrowSite(_App(), reactor=Clock())
    channel, transport = connect(site)
    channel.dataReceived(b"PUT /v2/a/blobs/uploads/u1?digest=sha256:ab HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc")
    channel.connectionLost(Failure(ConnectionDone()))
    [event] = access_events(events)
    assert (event["method"], event["path"], event["completed"]) == ("PUT", "/v2/a/blobs/uploads/u1?digest=sha256:ab", False)


def test_twisted_combined_log_is_replaced(events: list[LogEvent]) -> None:
    """twisted.web's own access line (the combined log format, with the raw query) is not
    written: one request, one line."""
    site = TrowSite(_App(), reactor=Clock())
    site.startFactory()
    try:
        channel, transport = connect(site)
        channel.dataReceived(b"GET /v2/?token=abc HTTP/1.1\r\nHost: trow\r\n\r\n")
    finally:
        site.stopFactory()
    texts = [logs.text_line(e) or "" for e in events]
    assert len(access_events(events)) == 1
    assert not any("token=abc" in t for t in texts)


def test_access_log_through_stubtreq() -> None:
    """The site works behind treq's in-memory agent too (what the other unit tests use)."""
    app = _App()
    stub = StubTreq(app)
    stub._agent._serverFactory = TrowSite(app, reactor=Clock())
    d = stub.get("http://trow.test/ok")
    stub.flush()
    assert result_of(d).code == 200


# -- paths and free text -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "logged"),
    [
        (b"/v2/", "/v2/"),
        (b"/v2/a/tags/list?n=10&last=b", "/v2/a/tags/list?n=10&last=b"),
        (b"/login?password=x&Token=y&pass%77ord=z", "/login?password=***&Token=***&pass%77ord=***"),
        (b"/v2/?X-Amz-Signature=abc&X-Amz-Credential=def", "/v2/?X-Amz-Signature=***&X-Amz-Credential=***"),
        (b"/v2/\x1b[31mred", "/v2/\\x1b[31mred"),
    ],
)
def test_safe_path(uri: bytes, logged: str) -> None:
    """Secret-looking query parameters are redacted (even percent-encoded names); control
    characters cannot garble a text log."""
    assert logs.safe_path(uri) == logged


def test_safe_path_cuts_long_targets() -> None:
    assert len(logs.safe_path(b"/" + b"a" * 10000)) < 2100


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET https://bob:pa55@example.com/v2/", "GET https://bob:***@example.com/v2/"),
        ("Authorization: Basic Ym9iOnBhc3M=", "Authorization: Basic ***"),
        ("headers {'authorization': 'Bearer abc.def'}", "headers {'authorization': 'Bearer ***'}"),
        ("login with password=pa55 failed", "login with password=*** failed"),
        ('{"token": "abc"}', '{"token": "***"}'),
        ("nothing to hide here", "nothing to hide here"),
    ],
)
def test_scrub_text(text: str, expected: str) -> None:
    assert logs.scrub_text(text) == expected


# -- the formats -------------------------------------------------------------------------------


def emitted(log_format: str, namespace: str = "trow.test") -> LogEvent:
    captured: list[LogEvent] = []
    log = Logger(namespace=namespace, observer=captured.append)
    log.info(log_format, digest="sha256:ab", size=12, password=SECRET, raw=b"bytes", obj=object(), nan=float("nan"))
    return captured[0]


def test_json_line_is_one_object_with_the_event_fields() -> None:
    """One line, one object: time, level, namespace, message, the fields; secret fields
    redacted, bytes and other objects turned into strings."""
    line = logs.json_line(emitted("stored {digest} ({size} bytes) pw {password}"))
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert record["level"] == "info"
    assert record["namespace"] == "trow.test"
    assert record["message"] == "stored sha256:ab (12 bytes) pw ***"
    assert record["digest"] == "sha256:ab"
    assert record["size"] == 12
    assert record["password"] == "***"
    assert record["raw"] == "bytes"
    assert record["obj"].startswith("<object")
    assert record["nan"] == "nan"
    assert record["time"].endswith("Z")
    assert SECRET not in line


def test_json_line_carries_the_traceback() -> None:
    captured: list[LogEvent] = []
    log = Logger(namespace="trow.test", observer=captured.append)
    try:
        raise ValueError(f"password={SECRET}")
    except ValueError:
        log.failure("it broke")
    record = json.loads(logs.json_line(captured[0]))
    assert record["level"] == "critical"
    assert "ValueError" in record["traceback"]
    assert SECRET not in record["traceback"]


def test_json_line_survives_an_unformattable_event() -> None:
    """A log line must never take the logging system down."""
    record = json.loads(logs.json_line({"log_format": "{missing", "log_time": "not a time"}))
    assert "message" in record


def test_text_observer_writes_classic_lines_without_secrets() -> None:
    out = io.StringIO()
    observer = logs.text_observer(out)
    observer(emitted("pw {password}"))
    assert "pw ***" in out.getvalue()
    assert "[trow.test#info]" in out.getvalue()
    assert SECRET not in out.getvalue()


def test_json_observer_writes_json_lines() -> None:
    out = io.StringIO()
    observer = logs.json_observer(out)
    observer(emitted("a {size}"))
    observer(emitted("b {size}"))
    lines = out.getvalue().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["a 12", "b 12"]
    # No record separator: each line is a JSON document on its own.
    assert "\x1e" not in out.getvalue()


# -- --log-format and the runners --------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    return str(tmp_path / "data")


def twistd_options(*argv: str) -> TwistdServerOptions:
    options = ServerOptions()
    options.parseOptions(list(argv))
    return options


def test_twistd_json_sets_its_logger_option(data_dir: str) -> None:
    """twistd -n trow --log-format json: twistd's --logger names trow's JSON observer factory,
    which twistd resolves itself."""
    options = twistd_options("-n", "--pidfile=", "trow", "--data-dir", data_dir, "--log-format", "json")
    assert options["logger"] is logs.json_stdout_observer
    observer = options["logger"]()
    assert observer.formatEvent is logs.json_line  # type: ignore[attr-defined]


def test_twistd_text_leaves_twistd_alone(data_dir: str) -> None:
    """Text, or no --log-format: twistd's own observer (and its --logfile) stand."""
    for extra in ((), ("--log-format", "text")):
        options = twistd_options("-n", "--pidfile=", "trow", "--data-dir", data_dir, *extra)
        assert options["logger"] is None


@pytest.mark.parametrize(
    ("runner_args", "named"),
    [
        (("--pidfile=",), "without -n"),
        (("-n", "--pidfile=", "--logfile", "/tmp/trow.log"), "--logfile"),
        (("-n", "--pidfile=", "--syslog"), "--syslog"),
        (("-n", "--pidfile=", "--logger", "twisted.logger.textFileLogObserver"), "--logger"),
    ],
)
def test_twistd_json_refuses_what_it_cannot_honour(
    runner_args: tuple[str, ...], named: str, data_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSON goes to standard output: combined with a log file, syslog, a daemon or another
    observer, trow says so in one line and exits 1 instead of logging somewhere unexpected."""
    with pytest.raises(SystemExit) as exit:
        twistd_options(*runner_args, "trow", "--data-dir", data_dir, "--log-format", "json")
    assert exit.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and "--log-format json" in err[0]


def test_bad_log_format_is_refused(data_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        twistd_options("-n", "trow", "--data-dir", data_dir, "--log-format", "xml")
    assert "--log-format 'xml'" in capsys.readouterr().err


def twist_options(*argv: str) -> Any:
    from twisted.application.twist._options import TwistOptions

    options = TwistOptions()
    options.parseOptions(list(argv))
    return options


def test_twist_json_and_text_set_its_observer_factory(data_dir: str) -> None:
    """twist trow --log-format json|text: twist's fileLogObserverFactory is trow's; twist still
    opens the file and filters the level."""
    options = twist_options("trow", "--data-dir", data_dir, "--log-format", "json")
    assert options["fileLogObserverFactory"] is logs.json_observer
    options = twist_options("trow", "--data-dir", data_dir, "--log-format", "text")
    assert options["fileLogObserverFactory"] is logs.text_observer


def test_twist_without_log_format_keeps_its_own_choice(data_dir: str) -> None:
    from twisted.logger import jsonFileLogObserver

    options = twist_options("--log-format", "json", "trow", "--data-dir", data_dir)
    assert options["fileLogObserverFactory"] is jsonFileLogObserver


def test_no_runner_no_change() -> None:
    """Parsed on their own (tests, embedding), trow's options touch no runner."""
    logs.use_log_format(None, "json")
    logs.use_log_format({}, "text")


def test_dry_run_shows_the_log_format(data_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    from trow.tap import Options

    with pytest.raises(SystemExit):
        Options().parseOptions(["--dry-run", "--data-dir", data_dir, "--log-format", "json"])
    assert json.loads(capsys.readouterr().out)["log_format"] == "json"


def test_json_time_is_the_events_own_in_utc() -> None:
    """The JSON time is the event's own log_time, written in UTC."""
    event = emitted("x")
    record = json.loads(logs.json_line(event))
    written = datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
    assert written.utcoffset() == timedelta(0)
    assert abs(written.timestamp() - event["log_time"]) < 0.001


def test_the_authenticated_user_is_logged(events: list[LogEvent]) -> None:
    """When the registry's auth identified a user, the access event names them (never their
    credentials); without one, the line is unchanged."""

    class _Identified(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            request.trow_user = "alice"
            return b"ok"

    site = TrowSite(_Identified(), reactor=Clock())
    channel, _ = connect(site)
    channel.dataReceived(b"GET /v2/ HTTP/1.1\r\nHost: trow\r\nAuthorization: Basic YWxpY2U6c2VjcmV0\r\n\r\n")
    [event] = access_events(events)
    assert event["user"] == "alice"
    line = logs.text_line(event) or ""
    assert '10.1.2.3 alice "GET /v2/" 200' in line, line
    assert "YWxpY2U6c2VjcmV0" not in logs.json_line(event) and "secret" not in logs.json_line(event)
