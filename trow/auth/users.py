"""User stores: the one C{--user/--password} user, and bcrypt htpasswd files.

bcrypt costs 50-300 ms of CPU per check by design, so it always runs on a L{Worker}, never on the
reactor thread. A successful check is remembered for a short while (L{HtpasswdUsers.cache_ttl})
under a keyed hash of the user and password, so that a client sending Basic credentials with
every request pays bcrypt once a minute, not once a request. Passwords themselves are never
kept, logged or put in an exception.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from typing import Any, Callable, Protocol

import attrs
import bcrypt
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from trow.workers import Worker

_log = Logger()

Clock = Callable[[], float]

# bcrypt only ever looked at the first 72 bytes; htpasswd -B hashed the truncated password, and
# bcrypt 5 refuses longer input instead of truncating it silently.
BCRYPT_MAX_PASSWORD = 72

_BCRYPT = re.compile(rb"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")


class AuthSetupError(Exception):
    """The authentication settings cannot be used; the message says which and why (no secret)."""


def read_secret(value: str, what: str) -> str:
    """A secret given on the command line or in the config: itself, or C{file:///path}.

    A file is read once, here, and its trailing newline stripped (C{echo secret > file} writes
    one). C{what} names the setting in the error, e.g. C{"--password"}.
    """
    if not value.startswith("file://"):
        return value
    path = value[len("file://") :]
    try:
        with open(path, encoding="utf-8") as handle:
            secret = handle.read().rstrip("\r\n")
    except OSError as e:
        raise AuthSetupError(f"{what}: cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise AuthSetupError(f"{what}: {path} is not UTF-8 text") from None
    if not secret:
        raise AuthSetupError(f"{what}: {path} is empty")
    return secret


class UserStore(Protocol):
    """Something that knows users and checks their passwords."""

    async def check(self, user: str, password: str) -> bool:
        """True if C{password} is the password of C{user}."""

    async def exists(self, user: str) -> bool:
        """True if C{user} is (still) a user: bearer tokens of deleted users stop working."""

    def may_match(self, user: str, password: str) -> bool:
        """At once, with no thread: False if C{check} certainly fails (an unknown user, say)."""


@attrs.frozen
class SingleUser:
    """The one user of C{--user}/C{--password} (Trow-compatible)."""

    user: str
    password: str = attrs.field(repr=False)

    async def check(self, user: str, password: str) -> bool:
        """Constant-time comparison of both the name and the password."""
        # Both comparisons always run: which one failed must not show in the timing.
        same_user = hmac.compare_digest(user.encode("utf-8"), self.user.encode("utf-8"))
        same_password = hmac.compare_digest(password.encode("utf-8"), self.password.encode("utf-8"))
        return same_user and same_password

    async def exists(self, user: str) -> bool:
        """True for the one user's name."""
        return hmac.compare_digest(user.encode("utf-8"), self.user.encode("utf-8"))

    def may_match(self, user: str, password: str) -> bool:
        """The whole check: it is cheap."""
        same_user = hmac.compare_digest(user.encode("utf-8"), self.user.encode("utf-8"))
        same_password = hmac.compare_digest(password.encode("utf-8"), self.password.encode("utf-8"))
        return same_user and same_password


def _unsupported_kind(hashed: bytes) -> str | None:
    """What kind of (unsupported) hash C{hashed} is, or None if it is bcrypt."""
    if hashed.startswith((b"$2y$", b"$2a$", b"$2b$")):
        return None
    if hashed.startswith(b"$apr1$"):
        return "MD5 (apr1)"
    if hashed.startswith(b"{SHA}"):
        return "SHA-1"
    if hashed.startswith(b"$1$"):
        return "MD5-crypt"
    if hashed.startswith((b"$5$", b"$6$")):
        return "SHA-crypt"
    if len(hashed) == 13:
        return "crypt (or plain text)"
    return "plain text (or an unknown hash)"


@attrs.frozen
class Htpasswd:
    """The parsed content of an htpasswd file: bcrypt hashes by user, and what was skipped."""

    entries: dict[str, bytes] = attrs.field(repr=False)
    warnings: tuple[str, ...] = ()


def parse_htpasswd(data: bytes) -> Htpasswd:
    """Parse an htpasswd file. Never raises: bad lines become warnings naming their line number.

    Only bcrypt entries (C{htpasswd -B}: C{$2y$}, also C{$2a$}, C{$2b$}) are kept. Warnings never
    quote a line: a line that does not parse may be a password pasted in the wrong place.
    """
    entries: dict[str, bytes] = {}
    warnings: list[str] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        user_bytes, colon, hashed = line.partition(b":")
        try:
            user = user_bytes.decode("utf-8")
        except UnicodeDecodeError:
            warnings.append(f"line {number}: the user name is not UTF-8; line skipped")
            continue
        if not colon or not user or not hashed or any(c.isspace() for c in user):
            warnings.append(f"line {number}: not of the form user:hash; line skipped")
            continue
        kind = _unsupported_kind(hashed)
        if kind is not None:
            warnings.append(
                f"line {number}: user {user!r} has a {kind} hash; only bcrypt is supported "
                "(create entries with htpasswd -B); user skipped"
            )
            continue
        if not _BCRYPT.match(hashed):
            warnings.append(f"line {number}: user {user!r} has a malformed bcrypt hash; user skipped")
            continue
        if user in entries:
            warnings.append(f"line {number}: user {user!r} appears again; the first entry is used")
            continue
        entries[user] = hashed
    return Htpasswd(entries, tuple(warnings))


@attrs.frozen
class _Signature:
    """What tells that an htpasswd file changed, without reading it."""

    mtime_ns: int
    size: int
    inode: int


def _signature(path: str) -> _Signature:
    info = os.stat(path)
    return _Signature(info.st_mtime_ns, info.st_size, info.st_ino)


@attrs.frozen
class _Read:
    """The outcome of one look at the file, computed on the worker."""

    signature: _Signature | None = None
    content: Htpasswd | None = None
    problem: str | None = None


def _read_if_changed(path: str, known: _Signature | None) -> _Read:
    """Stat the file and read it if it changed. Blocking: runs on the worker."""
    try:
        signature = _signature(path)
        if signature == known:
            return _Read(signature)
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as e:
        return _Read(problem=e.strerror or type(e).__name__)
    # A change during the read shows as another signature at the next look, which reads again.
    return _Read(signature, parse_htpasswd(data))


def _verify(password: bytes, hashed: bytes) -> bool:
    """bcrypt check. Blocking and slow on purpose: runs on the worker."""
    try:
        return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], hashed)
    except ValueError:
        return False


class HtpasswdUsers:
    """Users of a bcrypt htpasswd file, followed as it changes.

    The file is looked at (one C{stat}) at most once per L{reload_interval} seconds, when a check
    needs it; it is read again only when its mtime, size or inode changed. A file that vanishes or
    cannot be read later keeps the last good set of users, with a warning.
    """

    reload_interval = 1.0
    cache_ttl = 60.0
    max_cached = 10_000
    # bcrypt checks waiting or running at once; beyond, a check fails at once rather than queue
    # behind a flood of wrong passwords (users whose login succeeded lately are cached).
    max_pending = 64

    def __init__(self, path: str, content: Htpasswd, signature: _Signature, worker: Worker, clock: Clock) -> None:
        self.path = path
        self._entries = content.entries
        self._signature: _Signature | None = signature
        self._worker = worker
        self._clock = clock
        self._checked_at = clock()
        self._problem: str | None = None
        # Keys of the verification cache are HMACs under a per-process secret: what stays in
        # memory cannot be brute-forced offline the way a plain hash of a password could.
        self._cache_secret = secrets.token_bytes(32)
        self._cache: dict[bytes, float] = {}
        self._pending: dict[bytes, Deferred[bool]] = {}

    def __repr__(self) -> str:
        return f"<HtpasswdUsers {self.path!r}: {len(self._entries)} users>"

    @classmethod
    def load(cls, path: str, worker: Worker, clock: Clock) -> "HtpasswdUsers":
        """Read the file at start-up (blocking, before the reactor runs); missing = error."""
        try:
            signature = _signature(path)
            with open(path, "rb") as handle:
                content = parse_htpasswd(handle.read())
        except OSError as e:
            raise AuthSetupError(f"htpasswd file {path}: cannot read it: {e.strerror}") from None
        _log_warnings(path, content)
        if not content.entries:
            _log.warn("htpasswd file {path} has no usable bcrypt user", path=path)
        else:
            _log.info("htpasswd file {path}: {count} users", path=path, count=len(content.entries))
        return cls(path, content, signature, worker, clock)

    @property
    def users(self) -> frozenset[str]:
        """The names of the users currently loaded."""
        return frozenset(self._entries)

    async def exists(self, user: str) -> bool:
        """True if C{user} is in the file (as last read)."""
        await self._maybe_reload()
        return user in self._entries

    def may_match(self, user: str, password: str) -> bool:
        """C{user} is in the file as last read (bcrypt, for the password, cannot run here)."""
        return user in self._entries

    async def check(self, user: str, password: str) -> bool:
        """True if C{password} matches the bcrypt hash of C{user}; bcrypt runs on the worker."""
        await self._maybe_reload()
        key = self._cache_key(user, password)
        now = self._clock()
        expiry = self._cache.get(key)
        if expiry is not None:
            if expiry > now:
                return True
            del self._cache[key]
        pending = self._pending.get(key)
        if pending is None:
            if len(self._pending) >= self.max_pending:
                _log.warn(
                    "{count} password checks already waiting for bcrypt; refusing user {user!r} for now",
                    count=len(self._pending),
                    user=user,
                )
                return False
            pending = self._start_verify(key, user, password)
        return await _follow(pending)

    def _start_verify(self, key: bytes, user: str, password: str) -> "Deferred[bool]":
        """One bcrypt run, shared by every request that brings the same credentials meanwhile."""
        entries = self._entries
        hashed = entries.get(user)
        # An unknown user still costs one bcrypt run (against another entry), so that response
        # times do not tell which user names exist.
        decoy = hashed is None
        target = next(iter(entries.values()), None) if decoy else hashed
        done: Deferred[bool]
        if target is None:
            done = Deferred()
            done.callback(False)
            return done
        done = self._worker.run(_verify, password.encode("utf-8"), target)
        self._pending[key] = done

        def finished(result: Any) -> Any:
            self._pending.pop(key, None)
            if isinstance(result, Failure):
                _log.failure("bcrypt check failed for user {user}", result, user=user)
                return False
            ok = bool(result) and not decoy
            # A reload while bcrypt ran replaced the entries: do not cache against the old file.
            if ok and self._entries is entries:
                self._remember(key)
            return ok

        done.addBoth(finished)
        return done

    def _remember(self, key: bytes) -> None:
        now = self._clock()
        if len(self._cache) >= self.max_cached:
            self._cache = {k: t for k, t in self._cache.items() if t > now}
            if len(self._cache) >= self.max_cached:
                self._cache.clear()
        self._cache[key] = now + self.cache_ttl

    def _cache_key(self, user: str, password: str) -> bytes:
        # Length-prefixed, so that no (user, password) pair collides with another.
        user_bytes = user.encode("utf-8", "surrogatepass")
        message = len(user_bytes).to_bytes(4, "big") + user_bytes + password.encode("utf-8", "surrogatepass")
        return hmac.new(self._cache_secret, message, hashlib.sha256).digest()

    async def _maybe_reload(self) -> None:
        now = self._clock()
        if now - self._checked_at < self.reload_interval:
            return
        self._checked_at = now
        try:
            outcome = await self._worker.run(_read_if_changed, self.path, self._signature)
        except Exception:
            _log.failure("looking at htpasswd file {path} failed", path=self.path)
            return
        if outcome.problem is not None:
            if outcome.problem != self._problem:
                _log.warn(
                    "htpasswd file {path} cannot be read ({why}); keeping the {count} users read before",
                    path=self.path,
                    why=outcome.problem,
                    count=len(self._entries),
                )
            self._problem = outcome.problem
            return
        self._problem = None
        if outcome.content is None:
            return
        self._signature = outcome.signature
        _log_warnings(self.path, outcome.content)
        self._entries = outcome.content.entries
        self._cache.clear()
        _log.info("htpasswd file {path} reloaded: {count} users", path=self.path, count=len(self._entries))


def _log_warnings(path: str, content: Htpasswd) -> None:
    for warning in content.warnings:
        _log.warn("htpasswd file {path}: {warning}", path=path, warning=warning)


def _follow(shared: "Deferred[bool]") -> "Deferred[bool]":
    """A Deferred of its own that fires with C{shared}'s result.

    Cancelling it (Klein cancels a handler whose client left) must not cancel the bcrypt run that
    other requests are waiting on.
    """
    mine: Deferred[bool] = Deferred(lambda _: None)

    def forward(result: Any) -> Any:
        if not mine.called:
            if isinstance(result, Failure):
                mine.errback(result)
            else:
                mine.callback(result)
        return result

    shared.addBoth(forward)
    return mine


@attrs.frozen
class Users:
    """Several stores in one: a user of any of them is a user (C{--user} and C{--htpasswd})."""

    stores: tuple[UserStore, ...]

    async def check(self, user: str, password: str) -> bool:
        """True if any store accepts the credentials."""
        for store in self.stores:
            if await store.check(user, password):
                return True
        return False

    async def exists(self, user: str) -> bool:
        """True if any store knows C{user}."""
        for store in self.stores:
            if await store.exists(user):
                return True
        return False

    def may_match(self, user: str, password: str) -> bool:
        """True if any store may accept these credentials."""
        return any(store.may_match(user, password) for store in self.stores)
