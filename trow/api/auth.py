"""HTTP side of auth: challenges on C{/v2/}, and the token endpoint C{/login} (GET and POST).

L{AuthAPI.require} is what the registry routes call before they do anything: it reads the
C{Authorization} header, asks the L{Authenticator}, and turns a refusal into a L{RegistryError}
(401 C{UNAUTHORIZED} with a Bearer challenge, or 403 C{DENIED}) that L{send_error} answers.

The challenge's realm is this registry's own C{/login}, as the client reaches it: behind an
ingress, C{X-Forwarded-Proto} and C{X-Forwarded-Host} say how; else C{--hostname}; else the
request's C{Host}.
"""

from __future__ import annotations

import re
from typing import Any, Iterable
from urllib.parse import parse_qs

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from trow.api.http import query_all, request_body, send_error, send_json, shielded
from trow.auth.scopes import DELETE, PULL, PUSH, Scope, parse_scopes
from trow.auth.service import AuthError, Authenticator, Credentials, Denied, Identity, parse_authorization
from trow.registry.errors import RegistryError

SERVICE = "trow"
LOGIN_PATH = "/login"
BASIC_CHALLENGE = 'Basic realm="trow"'
# What may stand in a realm's host: a name or address, a port, IPv6 brackets. Anything else (a
# quote, a space, a slash) could break or redirect the challenge, so it is not used.
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(?::\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::\d{1,5})?$")
# A token request body is a short form; anything larger is not one.
MAX_FORM_BYTES = 64 * 1024


def required_actions(method: bytes, kind: str) -> tuple[str, ...]:
    """What a request on a repository needs: GET and HEAD pull, DELETE delete, the rest push.

    C{kind} is RegistryAPI's route kind. Everything on an upload session (C{uploads}, C{upload}),
    its status (GET) and its cancellation (DELETE) included, is part of a push.
    """
    verb = method.upper()
    if kind in ("uploads", "upload"):
        return (PUSH,)
    if verb in (b"GET", b"HEAD"):
        return (PULL,)
    if verb == b"DELETE":
        return (DELETE,)
    return (PUSH,)


def _header(request: IRequest, name: str) -> str | None:
    """A request header as latin-1 text, whatever bytes the client sent.

    (Asking twisted for a header by C{str} name decodes it as UTF-8 and raises on other bytes:
    a client must not turn a malformed Authorization header into a 500.)
    """
    values = request.requestHeaders.getRawHeaders(name.encode("ascii"))
    if not values:
        return None
    value = values[0]
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _first(value: str | None) -> str | None:
    """The first value of a comma-separated header (proxies append theirs)."""
    if value is None:
        return None
    first = value.split(",", 1)[0].strip()
    return first or None


class AuthAPI:
    """The registry's auth over HTTP: guards for the /v2/ routes and the /login handler."""

    def __init__(self, authenticator: Authenticator, hostname: str | None = None) -> None:
        self.authenticator = authenticator
        self.hostname = hostname

    @property
    def enabled(self) -> bool:
        """False when auth is off: every guard passes."""
        return self.authenticator.enabled

    # -- challenges ---------------------------------------------------------------------------

    def realm(self, request: IRequest) -> str:
        """C{<scheme>://<host>/login} as the client reaches this registry."""
        proto = (_first(_header(request, "X-Forwarded-Proto")) or "").lower()
        if proto not in ("http", "https"):
            proto = "https" if request.isSecure() else "http"
        host = None
        for candidate in (_first(_header(request, "X-Forwarded-Host")), self.hostname, _header(request, "Host")):
            if candidate and _HOST.match(candidate.strip()):
                host = candidate.strip()
                break
        if host is None:
            address = request.getHost()
            host = f"{getattr(address, 'host', 'localhost')}:{getattr(address, 'port', 80)}"
        return f"{proto}://{host}{LOGIN_PATH}"

    def challenge(self, request: IRequest, scopes: Iterable[Scope] = (), error: str | None = None) -> str:
        """The C{WWW-Authenticate} value of a Bearer challenge."""
        parts = [f'realm="{self.realm(request)}"', f'service="{SERVICE}"']
        written = " ".join(s.format() for s in scopes)
        if written:
            parts.append(f'scope="{written}"')
        if error:
            parts.append(f'error="{error}"')
        return "Bearer " + ",".join(parts)

    def refusal(self, request: IRequest, failure: AuthError) -> RegistryError:
        """The registry error that answers a refused request."""
        if isinstance(failure, Denied):
            return RegistryError("DENIED", failure.message)
        return RegistryError(
            "UNAUTHORIZED",
            failure.message,
            headers={"WWW-Authenticate": self.challenge(request, failure.scopes, failure.error)},
        )

    # -- guards -------------------------------------------------------------------------------

    async def identify(self, request: IRequest) -> Identity:
        """Who sent C{request}; L{RegistryError} 401 for wrong credentials or a bad token."""
        try:
            identity = await self.authenticator.identify(_header(request, "Authorization"))
        except AuthError as e:
            raise self.refusal(request, e) from None
        if identity.user is not None:
            request.trow_user = identity.user  # type: ignore[attr-defined]  # for the access log
        return identity

    def refuse_body(self, request: IRequest) -> RegistryError | None:
        """Called when a large request body is about to be read (see L{trow.api.site}): the
        refusal for a client that sent no credentials or an invalid token, None otherwise.
        Such a body is then dropped as it arrives instead of being spooled to disk, and the
        client gets its 401 once it has sent it. The login form is exempt: it is how a client
        gets credentials."""
        if request.uri.split(b"?", 1)[0] == LOGIN_PATH.encode():
            return None
        try:
            self.authenticator.check_presented(_header(request, "Authorization"))
        except AuthError as e:
            return self.refusal(request, e)
        return None

    async def require(
        self,
        request: IRequest,
        repository: str | None,
        actions: str | Iterable[str] = (),
        cache_repository: str | None = None,
    ) -> Identity:
        """The identity of C{request} if it may do C{actions} on C{repository}, else raise.

        C{repository} None means the API base C{/v2/} (any authenticated client). Raises
        L{RegistryError}: 401 C{UNAUTHORIZED} with a Bearer challenge naming the scope needed,
        or 403 C{DENIED}.
        """
        identity = await self.identify(request)
        try:
            self.authenticator.authorize(identity, repository, actions, cache_repository)
        except AuthError as e:
            raise self.refusal(request, e) from None
        return identity

    def authorize(
        self,
        request: IRequest,
        identity: Identity,
        repository: str,
        actions: str | Iterable[str],
        cache_repository: str | None = None,
    ) -> None:
        """L{require} for an identity already known: raise L{RegistryError} 401/403 unless allowed.

        For a proxied request whose cache repository is only known after routing (an alias, or
        C{?ns=}): C{require} on the name in the path first, then this with the cache name.
        """
        try:
            self.authenticator.authorize(identity, repository, actions, cache_repository)
        except AuthError as e:
            raise self.refusal(request, e) from None

    def permits(self, identity: Identity, repository: str, actions: str | Iterable[str]) -> bool:
        """True if C{identity} may do C{actions} on C{repository} (no error, no challenge)."""
        return self.authenticator.permits(identity, repository, actions)

    async def require_catalog(self, request: IRequest) -> Identity:
        """Like L{require}, for C{/v2/_catalog}; filter the list with L{can_pull}."""
        identity = await self.identify(request)
        try:
            self.authenticator.authorize_catalog(identity)
        except AuthError as e:
            raise self.refusal(request, e) from None
        return identity

    def can_pull(self, identity: Identity, repository: str) -> bool:
        """True if C{identity} may pull C{repository}."""
        return self.authenticator.can_pull(identity, repository)

    # -- the token endpoint -------------------------------------------------------------------

    def login(self, request: IRequest) -> "Deferred[Any]":
        """C{GET /login} (Basic credentials, C{scope} query parameters) and C{POST /login}
        (OAuth2 password grant in a form body): answer with a token, or a 401 with a Basic
        challenge."""

        async def run() -> Any:
            try:
                if not self.enabled:
                    raise RegistryError("UNSUPPORTED", "authentication is not enabled on this registry", status=404)
                if request.method == b"POST":
                    credentials, scopes = await self._post_request(request)
                else:
                    credentials, scopes = self._get_request(request)
                try:
                    issued = await self.authenticator.login(credentials, parse_scopes(scopes))
                except AuthError as e:
                    raise RegistryError("UNAUTHORIZED", e.message, headers={"WWW-Authenticate": BASIC_CHALLENGE})
                return send_json(
                    request, 200, issued.to_json(), {"Cache-Control": "no-store", "Pragma": "no-cache"}
                )
            except RegistryError as e:
                return send_error(request, e)

        return shielded(run)

    @staticmethod
    def _credentials(request: IRequest) -> Credentials | None:
        try:
            presented = parse_authorization(_header(request, "Authorization"))
        except AuthError as e:
            raise RegistryError("UNAUTHORIZED", e.message, headers={"WWW-Authenticate": BASIC_CHALLENGE}) from None
        if presented is None or isinstance(presented, Credentials):
            return presented
        raise RegistryError(
            "UNAUTHORIZED", "the token endpoint takes Basic credentials", headers={"WWW-Authenticate": BASIC_CHALLENGE}
        )

    def _get_request(self, request: IRequest) -> tuple[Credentials | None, list[str]]:
        return self._credentials(request), query_all(request, "scope")

    async def _post_request(self, request: IRequest) -> tuple[Credentials | None, list[str]]:
        body = await request_body(request)
        if not isinstance(body, bytes):
            body.discard()
            raise RegistryError("UNSUPPORTED", "a token request is a short form", status=400)
        if len(body) > MAX_FORM_BYTES:
            raise RegistryError("UNSUPPORTED", "a token request is a short form", status=400)
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200)
        except (UnicodeDecodeError, ValueError):
            raise RegistryError("UNSUPPORTED", "the token request is not a UTF-8 form", status=400) from None
        grant_type = (form.get("grant_type") or [""])[0]
        if grant_type != "password":
            # Refresh tokens are not issued; containerd falls back to GET on a 400.
            raise RegistryError("UNSUPPORTED", f"grant_type {grant_type[:40]!r} is not supported", status=400)
        username = (form.get("username") or [""])[0]
        password = (form.get("password") or [""])[0]
        credentials = Credentials(username, password) if username else self._credentials(request)
        return credentials, form.get("scope", [])
