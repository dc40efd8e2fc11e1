"""L{Authenticator}: who is asking (identify), may they (authorize), and tokens for them (login).

No HTTP here: the api layer (L{trow.api.auth}) passes the C{Authorization} header's value in and
turns L{Unauthorized} into a 401 with a challenge and L{Denied} into a 403.

Decisions for a request on a repository that needs some actions:

- no credentials: L{Unauthorized} (the client is to fetch a token and come back);
- Basic credentials: wrong -> L{Unauthorized}; right but the policy says no -> L{Denied};
- a bearer token: invalid or expired -> L{Unauthorized} (C{invalid_token}); valid but without
  the actions -> L{Unauthorized} (C{insufficient_scope}) if the policy would grant them now, so
  that the client fetches a wider token, else L{Denied}. The policy is checked on every use, so
  a rule removed after a token was issued takes effect at once.
"""

from __future__ import annotations

import base64
import binascii
from typing import Callable, Iterable, Sequence

import attrs
from twisted.logger import Logger

from trow.auth.policy import Policy
from trow.auth.scopes import ALL, CATALOG, PUSH, REGISTRY, REPOSITORY, Scope, sorted_actions
from trow.auth.tokens import InvalidToken, IssuedToken, TokenClaims, TokenIssuer, key_from_config, load_or_create_key
from trow.auth.users import AuthSetupError, Clock, HtpasswdUsers, SingleUser, UserStore, Users, read_secret
from trow.config import AuthConfig
from trow.workers import Worker

_log = Logger()

# A token request naming more scopes than this gets the first ones only: a token travels in an
# Authorization header, which has to stay well under twisted.web's 16 KiB line limit.
MAX_SCOPES = 64


class AuthError(Exception):
    """A request is refused. C{scopes} are what it needed (for the challenge)."""

    def __init__(self, message: str, scopes: Sequence[Scope] = (), error: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.scopes = tuple(scopes)
        self.error = error


class Unauthorized(AuthError):
    """401: no credentials, wrong ones, an invalid token, or a token without the scope needed.

    C{error} is the RFC 6750 challenge error: None, C{invalid_token} or C{insufficient_scope}.
    """


class Denied(AuthError):
    """403: the client is known, and the policy does not let it do this."""


@attrs.frozen
class Credentials:
    """A user name and password (Basic, or the OAuth2 password grant)."""

    user: str
    password: str = attrs.field(repr=False)


@attrs.frozen
class Bearer:
    """A bearer token as presented, not yet verified."""

    token: str = attrs.field(repr=False)


def parse_authorization(value: str | None) -> Credentials | Bearer | None:
    """Parse an C{Authorization} header value; None if absent.

    The scheme word is case-insensitive. Anything else than well-formed Basic or Bearer raises
    L{Unauthorized}: a client that sends garbage gets a challenge, never a 500.
    """
    if value is None or not value.strip():
        return None
    scheme, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    scheme = scheme.lower()
    if scheme == "bearer" and rest and " " not in rest:
        return Bearer(rest)
    if scheme == "basic" and rest:
        try:
            # Some clients leave the padding out.
            raw = base64.b64decode(rest + "=" * (-len(rest) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise Unauthorized("malformed Basic credentials") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")  # RFC 7617's historical default
        user, colon, password = text.partition(":")
        if not colon or not user:
            raise Unauthorized("malformed Basic credentials")
        return Credentials(user, password)
    raise Unauthorized("unsupported or malformed Authorization header")


@attrs.frozen
class Identity:
    """Who a request comes from.

    C{method}: C{open} (auth is off: anything goes), C{anonymous} (no credentials), C{basic}, or
    C{bearer} (then C{claims} holds what the token grants). C{user} is None for anonymous clients
    and for anonymous tokens.
    """

    user: str | None
    method: str
    claims: TokenClaims | None = None

    @property
    def authenticated(self) -> bool:
        """True if a user proved who they are (Basic, or a token issued to a user)."""
        return self.user is not None


OPEN = Identity(None, "open")
ANONYMOUS = Identity(None, "anonymous")


def _needed(actions: str | Iterable[str]) -> frozenset[str]:
    return frozenset((actions,) if isinstance(actions, str) else actions)


class Authenticator:
    """The authentication and authorisation of one trow process.

    When C{enabled} is False (no C{--user}, C{--htpasswd} or C{auth:} section), every request is
    allowed and L{identify} returns the C{open} identity.
    """

    def __init__(
        self,
        users: UserStore | None,
        policy: Policy,
        tokens: TokenIssuer | None,
        enabled: bool = True,
    ) -> None:
        self.users = users
        self.policy = policy
        self.tokens = tokens
        self.enabled = enabled
        # The repository a name stands for, as rules see it: the pull-through cache sets this so
        # that f/<alias>/x and f/<host>/x are judged as one repository (identity by default).
        self.canonical: Callable[[str], str] = lambda name: name

    def __repr__(self) -> str:
        return f"<Authenticator enabled={self.enabled}>"

    @classmethod
    def disabled(cls) -> "Authenticator":
        """Auth is off: everyone may do everything."""
        return cls(None, Policy(), None, enabled=False)

    @classmethod
    def build(
        cls,
        *,
        user: str | None,
        password: str | None,
        htpasswd: str | None,
        config: AuthConfig,
        data_dir: str,
        worker: Worker,
        clock: Clock,
    ) -> "Authenticator":
        """Build it from the settings; blocking (reads files, may create the key): start-up only.

        C{password} is the password itself (C{file://} already read, as L{trow.tap} does, or
        with L{trow.auth.users.read_secret}). C{htpasswd} (C{--htpasswd}) takes precedence over
        C{auth.htpasswd}. C{worker} runs bcrypt and htpasswd reloads; C{clock} returns seconds.
        Raises L{AuthSetupError} with a message fit for the operator.
        """
        check_settings(user=user, password=password, htpasswd=htpasswd, config=config)
        if not auth_enabled(user, htpasswd, config):
            return cls.disabled()
        stores: list[UserStore] = []
        if user:
            assert password is not None  # check_settings
            stores.append(SingleUser(user, password))
        path = htpasswd or config.htpasswd
        if path:
            stores.append(HtpasswdUsers.load(path, worker, clock))
        key = key_from_config(config.token_key) if config.token_key else load_or_create_key(data_dir)
        tokens = TokenIssuer(key, config.token_ttl, clock)
        return cls(Users(tuple(stores)) if stores else None, Policy.from_config(config), tokens)

    # -- who is asking ------------------------------------------------------------------------

    async def identify(self, authorization: str | None) -> Identity:
        """The identity behind an C{Authorization} header value (None: no header).

        Raises L{Unauthorized} for wrong credentials or an invalid token; no credentials at all
        is the C{anonymous} identity (what it may do is L{authorize}'s business).
        """
        if not self.enabled:
            return OPEN
        presented = parse_authorization(authorization)
        if presented is None:
            return ANONYMOUS
        if isinstance(presented, Credentials):
            await self._check_password(presented)
            return Identity(presented.user, "basic")
        assert self.tokens is not None
        try:
            claims = self.tokens.verify(presented.token)
        except InvalidToken as e:
            raise Unauthorized(str(e), error="invalid_token") from None
        if claims.subject is not None and not await self._exists(claims.subject):
            raise Unauthorized("the token's user no longer exists", error="invalid_token")
        return Identity(claims.subject, "bearer", claims)

    def check_presented(self, authorization: str | None) -> None:
        """What can be judged at once, with no thread and no wait: raise L{Unauthorized} for no
        credentials, malformed ones, or a token that is not valid. Basic credentials pass (bcrypt
        cannot run here); L{identify} still checks everything before anything is done.

        For request bodies: a client that could never be allowed to send one is refused before
        its bytes are read to disk.
        """
        if not self.enabled:
            return
        presented = parse_authorization(authorization)
        if presented is None:
            raise Unauthorized("authentication required")
        if isinstance(presented, Credentials):
            if self.users is None or not self.users.may_match(presented.user, presented.password):
                raise Unauthorized("wrong user name or password")
            return
        assert self.tokens is not None
        try:
            claims = self.tokens.verify(presented.token)
        except InvalidToken as e:
            raise Unauthorized(str(e), error="invalid_token") from None
        # A body is always part of a push: a token that pushes nowhere (an anonymous one, say)
        # cannot be the right one.
        if claims.subject is None or not any(action == PUSH for _, _, action in claims.access):
            raise Unauthorized("the token grants no push", error="insufficient_scope")

    async def _check_password(self, credentials: Credentials) -> None:
        if self.users is None or not await self.users.check(credentials.user, credentials.password):
            _log.info("wrong password or unknown user {user!r}", user=credentials.user)
            raise Unauthorized("wrong user name or password")

    async def _exists(self, user: str) -> bool:
        return self.users is not None and await self.users.exists(user)

    # -- may they -----------------------------------------------------------------------------

    def authorize(
        self,
        identity: Identity,
        repository: str | None,
        actions: str | Iterable[str] = (),
        cache_repository: str | None = None,
    ) -> None:
        """Raise L{Unauthorized} or L{Denied} unless C{identity} may do C{actions} on C{repository}.

        C{repository} None is the API base C{/v2/}: any identity but an anonymous one passes.
        C{repository} is the name the client used (the one its token names); C{cache_repository}
        is, for a proxied request, the cache repository it maps to (C{?ns=docker.io} turns
        C{library/alpine} into C{f/docker.io/library/alpine}). The rules judge the repository
        really accessed: the cache repository if there is one, else C{repository}, both through
        L{canonical} (so an alias and its host are one repository).
        """
        if not self.enabled:
            return
        needed = _needed(actions)
        if repository is None:
            if identity.method == "anonymous":
                raise Unauthorized("authentication required")
            return
        scope = Scope(REPOSITORY, repository, needed)
        if identity.method == "anonymous":
            raise Unauthorized("authentication required", (scope,))
        target = self.canonical(cache_repository or repository)
        allowed = self.policy.granted(identity.user, target, needed) == needed
        if identity.claims is not None:
            carried = all(identity.claims.grants(REPOSITORY, repository, action) for action in needed)
            if carried and allowed:
                return
            if allowed:
                raise Unauthorized("the token does not grant this access", (scope,), "insufficient_scope")
            if identity.user is None:
                # An anonymous token: logging in may help, so challenge rather than refuse.
                raise Unauthorized("authentication required", (scope,))
        elif allowed:
            return
        _log.info(
            "denied {user!r} {actions} on {repository}",
            user=identity.user,
            actions=",".join(sorted_actions(needed)),
            repository=repository,
        )
        who = identity.user or "anonymous"
        raise Denied(f"{who} may not {'/'.join(sorted_actions(needed))} {repository}", (scope,))

    def permits(
        self, identity: Identity, repository: str, actions: str | Iterable[str], cache_repository: str | None = None
    ) -> bool:
        """L{authorize} as a yes/no: for optional extras such as the source of a cross-repository
        mount, which a client without pull rights on it simply does not get (a plain upload)."""
        try:
            self.authorize(identity, repository, actions, cache_repository)
        except AuthError:
            return False
        return True

    def authorize_catalog(self, identity: Identity) -> None:
        """The catalog (C{registry:catalog:*}) is for authenticated users only.

        Filter what it lists with L{can_pull}.
        """
        if not self.enabled:
            return
        scope = Scope(REGISTRY, CATALOG, frozenset({ALL}))
        if identity.method == "anonymous":
            raise Unauthorized("authentication required", (scope,))
        allowed = self.policy.can_list_catalog(identity.user)
        if identity.claims is not None:
            if allowed and identity.claims.grants(REGISTRY, CATALOG, ALL):
                return
            if allowed:
                raise Unauthorized("the token does not grant this access", (scope,), "insufficient_scope")
            raise Unauthorized("authentication required", (scope,))
        if not allowed:
            raise Denied("the catalog is for authenticated users", (scope,))

    def can_pull(self, identity: Identity, repository: str) -> bool:
        """True if C{identity} may pull C{repository}: for filtering the catalog."""
        return not self.enabled or self.policy.can_pull(identity.user, repository)

    async def require(
        self,
        authorization: str | None,
        repository: str | None,
        actions: str | Iterable[str] = (),
        cache_repository: str | None = None,
    ) -> Identity:
        """L{identify} then L{authorize}: the identity, if it may do C{actions} on C{repository}."""
        identity = await self.identify(authorization)
        self.authorize(identity, repository, actions, cache_repository)
        return identity

    # -- tokens -------------------------------------------------------------------------------

    async def login(self, credentials: Credentials | None, scopes: Sequence[Scope]) -> IssuedToken:
        """A token for C{credentials} (None: an anonymous client) with the C{scopes} it may have.

        Scopes are reduced to what the policy grants, and those it grants nothing of are left out
        (Docker token spec); this is never an error. Wrong credentials raise L{Unauthorized};
        so do no credentials unless C{auth.anonymous} is C{pull}.
        """
        if not self.enabled or self.tokens is None:
            raise Unauthorized("authentication is not enabled on this registry")
        if credentials is None:
            if not self.policy.anonymous_pull:
                raise Unauthorized("authentication required")
            user = None
        else:
            await self._check_password(credentials)
            user = credentials.user
        granted = [g for g in (self._grant(user, s) for s in scopes[:MAX_SCOPES]) if g is not None]
        issued = self.tokens.issue(user, granted)
        _log.info(
            "token for {user!r}: {scopes}",
            user=user or "(anonymous)",
            scopes=" ".join(s.format() for s in granted) or "(no scope)",
        )
        return issued


    def _grant(self, user: str | None, scope: Scope) -> Scope | None:
        """The part of C{scope} the rules give C{user}, judged on the canonical repository but
        naming the repository as the client asked for it (its requests will name it so)."""
        if scope.type != REPOSITORY:
            return self.policy.grant_scope(user, scope)
        actions = self.policy.granted(user, self.canonical(scope.name), scope.actions)
        return Scope(scope.type, scope.name, actions) if actions else None


def auth_enabled(user: str | None, htpasswd: str | None, config: AuthConfig) -> bool:
    """Auth is on with C{--user}, C{--htpasswd}, or an C{auth:} section."""
    return bool(user) or bool(htpasswd) or bool(config.htpasswd) or config.configured


def check_settings(*, user: str | None, password: str | None, htpasswd: str | None, config: AuthConfig) -> None:
    """Check the auth settings without writing anything (for C{--dry-run} and C{postOptions}).

    Raises L{AuthSetupError} naming the problem: a user without a password, an htpasswd file
    that cannot be read, a token key that is too short or unreadable, or auth switched on with no
    way in for anyone.
    """
    if bool(user) != (password is not None and password != ""):
        raise AuthSetupError("--user and --password go together")
    if not auth_enabled(user, htpasswd, config):
        return
    path = htpasswd or config.htpasswd
    if path:
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            which = "--htpasswd" if htpasswd else "auth.htpasswd"
            raise AuthSetupError(f"{which} {path}: cannot read it: {e.strerror}") from None
    if config.token_key:
        key_from_config(config.token_key)
    if not user and not path and config.anonymous != "pull":
        raise AuthSetupError(
            "auth is switched on but nobody can log in: give --user/--password, --htpasswd or "
            "auth.htpasswd, or set auth.anonymous: pull"
        )


__all__ = [
    "AuthError",
    "AuthSetupError",
    "Authenticator",
    "Bearer",
    "Credentials",
    "Denied",
    "Identity",
    "Unauthorized",
    "auth_enabled",
    "check_settings",
    "parse_authorization",
    "read_secret",
]
