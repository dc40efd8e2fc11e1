"""Helpers the test_auth_* modules share (fake clock, workers, htpasswd files, log capture).

They live in a test_auth_* module because that is the part of tests/ the auth work owns; the
tests at the bottom check the helpers themselves, so that a broken helper cannot hide a bug.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import bcrypt
import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

# A realistic "now" for tokens (2023-11-14T22:13:20Z).
T0 = 1_700_000_000.0


def fake_clock() -> Clock:
    """A twisted Clock set to T0."""
    clock = Clock()
    clock.advance(T0)
    return clock


def bcrypt_hash(password: str, prefix: bytes = b"$2y$") -> str:
    """A cheap bcrypt hash (cost 4), written with the C{$2y$} prefix htpasswd -B uses."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))
    return (prefix + hashed[4:]).decode()


def write_file(path: str, text: str | bytes, mtime_ns: int | None = None) -> None:
    """Write C{text} to C{path}, and set its mtime so that a rewrite is always noticed."""
    data = text.encode() if isinstance(text, str) else text
    with open(path, "wb") as handle:
        handle.write(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


class RecordingWorker:
    """Runs calls at once (like InlineWorker) and records which functions it ran."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> "Deferred[Any]":
        self.calls.append(f.__name__)
        try:
            return succeed(f(*args, **kwargs))
        except BaseException:
            return fail(Failure())


class ManualWorker:
    """Queues calls until the test runs them: shows what waits on the worker."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[..., Any], tuple[Any, ...], "Deferred[Any]"]] = []

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        self.queue.append((lambda: f(*args, **kwargs), (), d))
        return d

    def run_all(self) -> int:
        """Run every queued call (and those they queue); return how many ran."""
        count = 0
        while self.queue:
            call, _, d = self.queue.pop(0)
            count += 1
            try:
                d.callback(call())
            except BaseException:
                d.errback(Failure())
        return count


class LogCapture:
    """Every twisted.logger event emitted while it is installed."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def texts(self) -> list[str]:
        """Each event formatted, plus the repr of everything in it (failures included)."""
        out = []
        for event in self.events:
            extra = ""
            failure = event.get("log_failure")
            if failure is not None:
                extra = failure.getTraceback()
            out.append(f"{formatEvent(event)} {event!r} {extra}")
        return out

    def messages(self) -> list[str]:
        """The formatted messages only."""
        return [formatEvent(e) for e in self.events]

    def assert_absent(self, *secrets: str) -> None:
        """No event mentions any of C{secrets} in any form."""
        assert self.events, "nothing was logged: the test would pass whatever the code logs"
        for text in self.texts():
            for secret in secrets:
                assert secret not in text, f"a secret was logged: {text[:200]}"


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    """Capture log events for the duration of a test."""
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    try:
        yield capture
    finally:
        globalLogPublisher.removeObserver(capture)


# -- the helpers themselves ------------------------------------------------------------------


def test_log_capture_sees_a_secret(logs: LogCapture) -> None:
    """The capture would catch a logged secret, in the message or in the event's fields."""
    from twisted.logger import Logger

    Logger().info("value {v}", v="hunter2")
    with pytest.raises(AssertionError):
        logs.assert_absent("hunter2")
    logs.events.clear()
    Logger().info("nothing here", hidden="hunter2")
    with pytest.raises(AssertionError):
        logs.assert_absent("hunter2")


def test_manual_worker_holds_calls_until_run() -> None:
    """ManualWorker runs nothing until run_all, then fires each Deferred with the result."""
    worker = ManualWorker()
    ran: list[int] = []
    d = worker.run(lambda x: ran.append(x) or x * 2, 21)
    assert not d.called and ran == []
    assert worker.run_all() == 1
    assert ran == [21] and d.result == 42


def test_bcrypt_hash_has_the_htpasswd_prefix() -> None:
    """Hashes look like htpasswd -B output and still verify."""
    hashed = bcrypt_hash("pw")
    assert hashed.startswith("$2y$04$") and len(hashed) == 60
    assert bcrypt.checkpw(b"pw", hashed.encode())
