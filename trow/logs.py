"""Logs: one access-log event per request, ``--log-format text|json``, and secrets kept out.

Access log
    L{access} emits one C{twisted.logger} event per request, in the namespace C{trow.access},
    with the fields C{client}, C{forwarded_for} (only when the request has X-Forwarded-For),
    C{method}, C{path}, C{route}, C{status}, C{bytes}, C{duration}, C{user_agent}, C{user} (the
    user the registry's auth identified, when there is one) and C{completed} (False when the connection was lost before the answer ended). The path's query
    parameters whose names look like secrets (password, token, secret, signature, ...) are
    redacted, and no request header but User-Agent and X-Forwarded-For is ever read.

``--log-format`` and the two runners
    The runner, not the plugin, creates the log observer, and it does so from its own options:
    C{twistd} in C{AppLogger.start}, after C{makeService}; C{twist} in C{Runner.startLogging},
    after the service has even started. Adding a second observer from the plugin would write
    every line twice, so instead trow's C{postOptions} sets the runner's own option, on the
    runner's options object (the plugin options' C{parent}), before the runner reads it:

    - C{twistd}: its public C{--logger} option, "a fully-qualified name to a log observer
      factory", set to C{trow.logs.json_stdout_observer}. twistd resolves that name itself right
      after trow's options are parsed. That observer writes to standard output, so the
      combinations where twistd would write elsewhere (C{--logfile FILE}, C{--syslog}, a
      daemon without C{-n}) and an explicit C{--logger} are refused with a clear message.
      C{text} leaves twistd's own observer, and all its options, alone.
    - C{twist}: its C{fileLogObserverFactory} option (what C{twist --log-format} sets), set to
      L{json_observer} or L{text_observer}; twist still opens C{--log-file} and filters by
      C{--log-level}.

    Without trow's C{--log-format} the runner's own choice stands: twistd writes text; twist
    writes text to a terminal and otherwise Twisted's own JSON records (each after an RS
    character), unless told otherwise by C{twist --log-format}. twist makes that choice before
    it parses trow's options, so trow cannot tell twist's default from an explicit choice, and
    does not override either. Under any other runner (tests, an embedding program) the option
    changes nothing.

JSON lines
    One JSON object per line, no record separator: C{time} (ISO 8601, UTC), C{level},
    C{namespace}, C{message} (the event's text), then the event's own fields, and
    C{traceback} when a failure was logged.

    (A plugin could also hand twistd an observer as a component of the application, but only
    by catching the C{Application} in C{setServiceParent}, and twist ignores that component.)

Secrets
    Secrets never reach the access log in the first place: trow's code must not log them.
    As a second line of defence, trow's own observers (JSON, and text under twist) redact, in
    every event, fields whose names look like secrets (C{password}, C{token},
    C{authorization}, ...) and, in the text of every line, credentials in URLs
    (C{https://user:***@host}), C{Authorization:} values and C{password=}-style pairs.
    twistd's own text observer does no such thing.
"""

from __future__ import annotations

import json
import math
import re
import sys
from datetime import datetime, timezone
from typing import IO, Any, Mapping
from urllib.parse import unquote

from twisted.logger import FileLogObserver, LogEvent, Logger, formatEvent, formatEventAsClassicLogText
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

LOG_FORMATS = ("text", "json")
ACCESS_NAMESPACE = "trow.access"

_access_log = Logger(namespace=ACCESS_NAMESPACE)

REDACTED = "***"

# Names of fields and query parameters that hold secrets.
_SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|secret|token|authori[sz]ation|credential|signature|api[-_]?key|private[-_]?key|cookie",
    re.IGNORECASE,
)
# Secrets inside free text: URL credentials, Authorization values, key=value pairs.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^/\s:@]*):[^/\s@]*@", re.IGNORECASE)
_AUTH_VALUE = re.compile(
    r"(?P<name>(?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?)(?P<scheme>(?:basic|bearer|digest)\s+)?[^\s'\",;]+",
    re.IGNORECASE,
)
_SECRET_PAIR = re.compile(
    r"(?P<name>\b[\w-]*(?:password|passwd|secret|token)['\"]?\s*[:=]\s*['\"]?)(?!\*\*\*)[^\s'\",;&]+",
    re.IGNORECASE,
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LEGACY_KEYS = frozenset({"message", "format", "isError", "failure", "why", "system", "time"})
_MAX_FIELD = 2048
_MAX_PATH = 2048


def is_secret_name(name: str) -> bool:
    """Whether a field or parameter called C{name} holds a secret."""
    return bool(_SECRET_NAME.search(name))


def scrub_text(text: str) -> str:
    """C{text} with credentials in URLs, Authorization values and C{password=...} pairs redacted."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    text = _AUTH_VALUE.sub(lambda m: f"{m['name']}{m['scheme'] or ''}{REDACTED}", text)
    return _SECRET_PAIR.sub(lambda m: f"{m['name']}{REDACTED}", text)


def _escape(text: str) -> str:
    # A request line cannot hold CR or LF, but other control bytes would garble a text log.
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def safe_path(uri: bytes) -> str:
    """The request target as logged: query parameters named like secrets redacted, control
    characters escaped, and long targets cut."""
    text = uri.decode("latin-1")
    path, sep, query = text.partition("?")
    if sep:
        parts = []
        for part in query.split("&"):
            name = unquote(part.partition("=")[0])
            parts.append(f"{part.partition('=')[0]}={REDACTED}" if is_secret_name(name) else part)
        path = f"{path}?{'&'.join(parts)}"
    path = _escape(path)
    return path if len(path) <= _MAX_PATH else path[:_MAX_PATH] + "..."


def _client(request: IRequest) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    if host is not None:
        return str(host)
    name = getattr(address, "name", None)  # a UNIX socket
    return name.decode("latin-1", "replace") if isinstance(name, bytes) else str(name or "-")


def _header(request: IRequest, name: bytes) -> str | None:
    value = request.getHeader(name)
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return _escape(text[:256])


def access(request: IRequest, status: int, sent: int, duration: float, route: str, completed: bool) -> None:
    """Log one request: the access-log event of L{trow.api.site}."""
    fields: dict[str, Any] = {
        "client": _client(request),
        "method": _escape(request.method.decode("latin-1"))[:32],
        "path": safe_path(request.uri),
        "route": route,
        "status": status,
        "bytes": sent,
        "duration": round(max(0.0, duration), 6),
        "completed": completed,
    }
    forwarded = _header(request, b"x-forwarded-for")
    if forwarded is not None:
        fields["forwarded_for"] = forwarded
    agent = _header(request, b"user-agent")
    if agent is not None:
        fields["user_agent"] = agent
    # Who the registry's auth found the client to be (set by trow.api.auth; "-" if nobody).
    user = getattr(request, "trow_user", None)
    if user is not None:
        fields["user"] = _escape(str(user))[:128]
    who = f'{fields["client"]} {fields["user"]}' if "user" in fields else fields["client"]
    text = (
        f'{who} "{fields["method"]} {fields["path"]}" {status} {sent} {fields["duration"]:.3f}s'
        + ("" if completed else " (connection lost)")
    )
    # The line is built here and handed over as a format without fields (braces doubled):
    # twisted.logger's field formatting costs more than the rest of a small request.
    _access_log.info(text.replace("{", "{{").replace("}", "}}"), **fields)


# -- formatting -------------------------------------------------------------------------------


def scrub_event(event: LogEvent) -> LogEvent:
    """A copy of C{event} with the values of fields named like secrets replaced."""
    return {
        key: (REDACTED if value is not None and not key.startswith("log_") and is_secret_name(key) else value)
        for key, value in event.items()
    }


def _jsonable(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        return scrub_text(value[:_MAX_FIELD])
    if depth < 3 and isinstance(value, (list, tuple)):
        return [_jsonable(item, depth + 1) for item in value[:100]]
    if depth < 3 and isinstance(value, Mapping):
        return {
            str(k): (REDACTED if is_secret_name(str(k)) else _jsonable(v, depth + 1))
            for k, v in list(value.items())[:100]
        }
    return scrub_text(repr(value)[:_MAX_FIELD])


def _iso_time(when: Any) -> str | None:
    if not isinstance(when, (int, float)):
        return None
    return datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_line(event: LogEvent) -> str:
    """One log event as one line of JSON (see the module docstring for the fields)."""
    try:
        clean = scrub_event(event)
        record: dict[str, Any] = {}
        for key, value in clean.items():
            if not key.startswith("log_") and key not in _LEGACY_KEYS:
                record[key] = _jsonable(value)
        level = clean.get("log_level")
        record.update(
            time=_iso_time(clean.get("log_time")),
            level=getattr(level, "name", None),
            namespace=clean.get("log_namespace"),
            message=scrub_text(formatEvent(clean)),
        )
        failure = clean.get("log_failure")
        if isinstance(failure, Failure):
            record["traceback"] = scrub_text(failure.getTraceback())
        return json.dumps(record, ensure_ascii=False) + "\n"
    except Exception as e:  # a log line must never take the logging system down
        return json.dumps({"level": "error", "message": f"unformattable log event: {type(e).__name__}"}) + "\n"


def text_line(event: LogEvent) -> str | None:
    """One log event as twisted's classic text line, with secrets redacted."""
    line = formatEventAsClassicLogText(scrub_event(event))
    return None if line is None else scrub_text(line)


def json_observer(out: IO[Any]) -> FileLogObserver:
    """An observer writing one JSON object per line to C{out}."""
    return FileLogObserver(out, json_line)


def text_observer(out: IO[Any]) -> FileLogObserver:
    """An observer writing twisted's classic text lines, secrets redacted, to C{out}."""
    return FileLogObserver(out, text_line)


def json_stdout_observer() -> FileLogObserver:
    """The observer factory trow names in twistd's C{--logger}: JSON lines on standard output.

    Called by twistd before it redirects C{sys.stdout} into the log, so this is the real one.
    """
    return json_observer(sys.stdout)


class LogFormatError(Exception):
    """The requested log format cannot be honoured with the runner's other options."""


def use_log_format(runner_options: Any, log_format: str | None) -> None:
    """Make the runner that parsed trow's options (its C{parent}) log in C{log_format}.

    See the module docstring. Raises L{LogFormatError} for combinations that cannot work.
    """
    from twisted.application.app import ServerOptions as TwistdOptions

    if log_format is not None and log_format not in LOG_FORMATS:
        raise LogFormatError(f"--log-format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")
    if isinstance(runner_options, TwistdOptions):
        if log_format != "json":
            return
        clash = [
            problem
            for problem, present in (
                ("twistd --logger", runner_options.get("logger") is not None),
                ("twistd --syslog", bool(runner_options.get("syslog"))),
                ("twistd --logfile", runner_options.get("logfile") not in (None, "", "-")),
                ("twistd without -n (a daemon has no standard output)", not runner_options.get("nodaemon", True)),
            )
            if present
        ]
        if clash:
            raise LogFormatError(
                f"--log-format json writes JSON lines to standard output and cannot be combined with {clash[0]}; "
                "run 'twistd -n trow --log-format json' or 'twist trow --log-format json'"
            )
        runner_options["logger"] = f"{__name__}.json_stdout_observer"
        return
    if log_format is not None and _is_twist(runner_options):
        runner_options["fileLogObserverFactory"] = json_observer if log_format == "json" else text_observer
        runner_options["logFormat"] = log_format


def _is_twist(options: Any) -> bool:
    try:
        from twisted.application.twist._options import TwistOptions
    except ImportError:  # twist's options moved: leave its logging alone rather than fail
        return False
    return isinstance(options, TwistOptions)

