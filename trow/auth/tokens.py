"""Bearer tokens: JWTs signed with HS256 under a key that survives restarts.

A token says who it was issued to (C{sub}, empty for anonymous clients) and what it grants, in
the Docker token format::

    {"iss": "trow", "aud": "trow", "sub": "alice", "iat": ..., "nbf": ..., "exp": ..., "jti": ...,
     "access": [{"type": "repository", "name": "team-a/app", "actions": ["pull", "push"]}]}

Times are checked here against the injected clock, not by PyJWT (which reads the system clock).

The key lives in the data dir unless the config gives one (C{auth.token_key})::

    <data-dir>/
      auth/                 mode 0700
        token.key           mode 0600: base64url text of 48 random bytes, one line
        token.key.<random>  (transient) the key being written; removed at start-up if left over
"""

from __future__ import annotations

import base64
import datetime
import os
import secrets
import time
from typing import Any, Callable, Sequence

import attrs
import jwt
from twisted.logger import Logger

from trow.auth.scopes import REGISTRY, REPOSITORY, Scope, parse_scope
from trow.auth.users import AuthSetupError, read_secret

_log = Logger()

Clock = Callable[[], float]

ISSUER = "trow"
AUDIENCE = "trow"
ALGORITHM = "HS256"
# RFC 7518 section 3.2: an HS256 key must be at least as long as the hash.
MIN_KEY_BYTES = 32
KEY_DIR = "auth"
KEY_FILE = "token.key"
# A token.key.<random> older than this is a leftover of a crash, not a creation in progress.
_LEFTOVER_AGE = 60.0
_CLAIMS = ("iss", "aud", "sub", "iat", "nbf", "exp", "jti", "access")


class InvalidToken(Exception):
    """A token that is not ours, was altered, has expired, or is malformed.

    The message says why in general terms; it never contains the token.
    """


def load_or_create_key(data_dir: str, name: str = KEY_FILE) -> bytes:
    """The token key in C{<data_dir>/auth/token.key} (or another key, C{name}, beside it: the
    replicas' peer key), created on first use.

    This is the only disk write of the auth package. It runs once at start-up, before the
    reactor, so it may block. Creation is crash-safe: the key is written to a temporary file,
    fsynced, and linked into place, so the file either does not exist or holds a whole key.
    A link, not a rename: it fails if the key exists, so replicas starting at once on one shared
    data dir all end up with the one key that was linked first, never each with its own.
    """
    directory = os.path.join(data_dir, KEY_DIR)
    path = os.path.join(directory, name)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        for entry in os.listdir(directory):
            if entry.startswith(name + "."):
                leftover = os.path.join(directory, entry)
                # A creation a crash interrupted (a young one may be a peer's, still running).
                try:
                    if time.time() - os.stat(leftover).st_mtime > _LEFTOVER_AGE:
                        os.unlink(leftover)
                except FileNotFoundError:
                    pass
        if os.path.exists(path):
            return _read_key_file(path)
        key = base64.urlsafe_b64encode(secrets.token_bytes(48))
        temporary = f"{path}.{secrets.token_hex(8)}"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(descriptor, key + b"\n")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        try:
            os.link(temporary, path)
        except FileExistsError:
            # Another replica made the key first: use that one.
            return _read_key_file(path)
        finally:
            os.unlink(temporary)
        directory_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)
    except OSError as e:
        raise AuthSetupError(f"token key {path}: {e.strerror}") from None
    _log.info("created the signing key {path}", path=path)
    return key


def _read_key_file(path: str) -> bytes:
    with open(path, "rb") as handle:
        key = handle.read().strip()
    if len(key) < MIN_KEY_BYTES:
        raise AuthSetupError(
            f"token key {path} is shorter than {MIN_KEY_BYTES} bytes; delete it to have a new one made"
        )
    if os.stat(path).st_mode & 0o077:
        _log.warn("token key {path} can be read by other users than trow's; chmod 600 it", path=path)
    return key


def key_from_config(value: str) -> bytes:
    """The key of C{auth.token_key}: the secret itself, or C{file:///path}."""
    key = read_secret(value, "auth.token_key").strip().encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise AuthSetupError(f"auth.token_key must be at least {MIN_KEY_BYTES} bytes long")
    return key


def rfc3339(timestamp: float) -> str:
    """C{2024-05-01T12:00:00Z}."""
    moment = datetime.datetime.fromtimestamp(int(timestamp), tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.frozen
class IssuedToken:
    """A token and what a token endpoint says about it."""

    token: str = attrs.field(repr=False)
    expires_in: int
    issued_at: str
    scopes: tuple[Scope, ...]

    def to_json(self) -> dict[str, Any]:
        """The token endpoint's answer (Docker token spec, and OAuth2's C{access_token})."""
        return {
            "token": self.token,
            "access_token": self.token,
            "expires_in": self.expires_in,
            "issued_at": self.issued_at,
        }


@attrs.frozen
class TokenClaims:
    """What a verified token says: whom it was issued to and what it grants."""

    subject: str | None
    access: frozenset[tuple[str, str, str]]
    expires_at: float

    def grants(self, kind: str, name: str, action: str) -> bool:
        """True if the token grants C{action} on the resource."""
        return (kind, name, action) in self.access


@attrs.define
class TokenIssuer:
    """Issues and verifies tokens under one key."""

    key: bytes = attrs.field(repr=False)
    ttl: float
    clock: Clock

    def issue(self, subject: str | None, scopes: Sequence[Scope]) -> IssuedToken:
        """A token for C{subject} (None: anonymous) granting exactly C{scopes}."""
        now = int(self.clock())
        expires_in = max(int(self.ttl), 1)
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject or "",
            "iat": now,
            "nbf": now,
            "exp": now + expires_in,
            "jti": secrets.token_urlsafe(16),
            "access": [scope.to_access() for scope in scopes],
        }
        token = jwt.encode(claims, self.key, algorithm=ALGORITHM)
        return IssuedToken(token, expires_in, rfc3339(now), tuple(scopes))

    def verify(self, token: str) -> TokenClaims:
        """The claims of a token signed by this key and valid now; else L{InvalidToken}."""
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={
                    "require": list(_CLAIMS),
                    # Times are checked below against the injected clock.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise InvalidToken("the token is for another service") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("the token was issued by another service") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("the token signature does not verify") from None
        except jwt.MissingRequiredClaimError as e:
            raise InvalidToken(f"the token has no {e.claim} claim") from None
        except jwt.InvalidTokenError:
            raise InvalidToken("the token is malformed") from None
        now = self.clock()
        expires_at = claims["exp"]
        not_before = claims["nbf"]
        if not isinstance(expires_at, (int, float)) or not isinstance(not_before, (int, float)):
            raise InvalidToken("the token's times are malformed")
        if now >= expires_at:
            raise InvalidToken("the token has expired")
        if now < not_before:
            raise InvalidToken("the token is not valid yet")
        subject = claims["sub"]
        if not isinstance(subject, str):
            raise InvalidToken("the token's subject is malformed")
        return TokenClaims(subject or None, _access(claims["access"]), float(expires_at))


def _access(value: object) -> frozenset[tuple[str, str, str]]:
    """The C{access} claim as (type, name, action) triples; malformed entries grant nothing."""
    if not isinstance(value, list):
        raise InvalidToken("the token's access claim is malformed")
    granted: set[tuple[str, str, str]] = set()
    for entry in value:
        if not isinstance(entry, dict):
            continue
        kind, name, actions = entry.get("type"), entry.get("name"), entry.get("actions")
        if kind not in (REPOSITORY, REGISTRY) or not isinstance(name, str) or not isinstance(actions, list):
            continue
        words = [a for a in actions if isinstance(a, str)]
        # Re-parse through the scope grammar, so that a token never grants more than a scope could.
        scope = parse_scope(f"{kind}:{name}:{','.join(words)}")
        if scope is not None:
            granted.update((scope.type, scope.name, action) for action in scope.actions)
    return frozenset(granted)
