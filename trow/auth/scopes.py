"""Docker token scopes: C{<type>[(<class>)]:<name>:<actions>}.

Examples: C{repository:team-a/app:pull,push}, C{repository(plugin):x/y:pull},
C{registry:catalog:*}, and proxied names that carry a port,
C{repository:f/127.0.0.1:5000/library/alpine:pull}. The type ends at the first C{:} and the
actions start after the last one; everything between is the name.

Parsing never raises: a scope that does not fit the grammar is dropped (the token spec says a
server grants what it can and silently leaves out the rest).
"""

from __future__ import annotations

import re
from typing import Iterable

import attrs

REPOSITORY = "repository"
REGISTRY = "registry"

PULL = "pull"
PUSH = "push"
DELETE = "delete"
# The order actions are written in scopes and tokens.
REPOSITORY_ACTIONS = (PULL, PUSH, DELETE)
CATALOG = "catalog"
ALL = "*"

_TYPE = re.compile(r"^(?P<type>[a-z0-9]+)(?:\((?P<cls>[a-z0-9]+)\))?$")
# Names are compared as strings against rules and token entries; anything a repository name or a
# proxied f/<host:port>/... name can hold is accepted, but never spaces, quotes or control
# characters, which could break the challenge header a scope is echoed in.
_NAME = re.compile(r"^[A-Za-z0-9._\-/:]+$")
MAX_NAME_LENGTH = 512


@attrs.frozen
class Scope:
    """One parsed scope: C{type} (repository or registry), C{name}, and the actions asked for.

    C{actions} of a repository scope are among pull, push and delete (C{*} is expanded to all
    three); the one registry scope is C{registry:catalog:*}.
    """

    type: str
    name: str
    actions: frozenset[str]

    def format(self) -> str:
        """The scope as written in a challenge or a token request."""
        return f"{self.type}:{self.name}:{','.join(sorted_actions(self.actions))}"

    def to_access(self) -> dict[str, object]:
        """The entry of a token's C{access} claim (Docker token format)."""
        return {"type": self.type, "name": self.name, "actions": sorted_actions(self.actions)}


def sorted_actions(actions: Iterable[str]) -> list[str]:
    """Actions in their usual order (pull, push, delete), then any other."""
    wanted = set(actions)
    known = [a for a in REPOSITORY_ACTIONS if a in wanted]
    return known + sorted(wanted - set(REPOSITORY_ACTIONS))


def parse_scope(text: str) -> Scope | None:
    """Parse one scope, or return None if it is malformed or asks for nothing trow knows."""
    first = text.find(":")
    last = text.rfind(":")
    if first <= 0 or last == first:
        return None
    type_part, name, action_part = text[:first], text[first + 1 : last], text[last + 1 :]
    type_match = _TYPE.match(type_part)
    if type_match is None or not name or len(name) > MAX_NAME_LENGTH or not _NAME.match(name):
        return None
    # The resource class (plugin) says what kind of content the repository holds; it changes
    # nothing about who may access it, so a repository(plugin) scope is a repository scope.
    kind = type_match.group("type")
    asked = {a.strip() for a in action_part.split(",") if a.strip()}
    if kind == REPOSITORY:
        if name.startswith("/") or name.endswith("/") or "//" in name:
            return None
        actions = set(REPOSITORY_ACTIONS) if ALL in asked else asked & set(REPOSITORY_ACTIONS)
    elif kind == REGISTRY and name == CATALOG:
        actions = asked & {ALL}
    else:
        return None
    if not actions:
        return None
    return Scope(kind, name, frozenset(actions))


def parse_scopes(values: Iterable[str]) -> list[Scope]:
    """Parse the C{scope} parameters of a token request.

    Each value may hold several scopes separated by spaces (the OAuth2 form and some clients put
    them all in one). Scopes on the same resource are merged; order of first mention is kept.
    """
    merged: dict[tuple[str, str], set[str]] = {}
    for value in values:
        for text in value.split():
            scope = parse_scope(text)
            if scope is not None:
                merged.setdefault((scope.type, scope.name), set()).update(scope.actions)
    return [Scope(kind, name, frozenset(actions)) for (kind, name), actions in merged.items()]
