"""Who may do what: the C{auth.rules} grants, C{auth.anonymous}, and the catalog.

A rule grants actions (pull, push, delete) to users on repository prefixes. Prefixes match on
component boundaries: C{team-a} and C{team-a/} both cover C{team-a} and C{team-a/x}, never
C{team-ab}; C{""} covers every repository. A user gets the union of the rules that name it
(C{"*"} names every authenticated user). Without any C{rules}, every authenticated user may do
everything. C{anonymous: pull} lets everyone, anonymous clients included, pull everything.

Proxied repositories (C{f/<host>/<repo>}) are repository names like any other.
"""

from __future__ import annotations

from typing import Iterable

import attrs

from trow.auth.scopes import ALL, CATALOG, PULL, REGISTRY, REPOSITORY, REPOSITORY_ACTIONS, Scope
from trow.config import AuthConfig

EVERYONE = "*"


def normalise_prefix(prefix: str) -> str:
    """A rule prefix without the slashes around it: C{"team-a/"} -> C{"team-a"}."""
    return prefix.strip().strip("/")


def prefix_covers(prefix: str, repository: str) -> bool:
    """True if the (normalised) C{prefix} covers C{repository} on a component boundary."""
    return not prefix or repository == prefix or repository.startswith(prefix + "/")


@attrs.frozen
class Grant:
    """One rule: these users may do these actions under these prefixes."""

    users: frozenset[str]
    prefixes: tuple[str, ...]
    actions: frozenset[str]

    def names(self, user: str) -> bool:
        """True if the rule applies to the authenticated C{user}."""
        return user in self.users or EVERYONE in self.users

    def covers(self, repository: str) -> bool:
        """True if one of the rule's prefixes covers C{repository}."""
        return any(prefix_covers(p, repository) for p in self.prefixes)


@attrs.frozen
class Policy:
    """The authorisation rules. C{grants} None means every authenticated user may do anything."""

    grants: tuple[Grant, ...] | None = None
    anonymous_pull: bool = False

    @classmethod
    def from_config(cls, config: AuthConfig) -> "Policy":
        """The policy of an C{auth} config section (already checked by L{trow.config})."""
        grants = None
        if config.rules is not None:
            grants = tuple(
                Grant(
                    users=frozenset(rule.users),
                    prefixes=tuple(normalise_prefix(p) for p in rule.repositories),
                    actions=frozenset(rule.actions),
                )
                for rule in config.rules
            )
        return cls(grants=grants, anonymous_pull=config.anonymous == "pull")

    def granted(self, user: str | None, repository: str, actions: Iterable[str]) -> frozenset[str]:
        """The subset of C{actions} that C{user} (None: anonymous) may do on C{repository}."""
        wanted = frozenset(actions) & frozenset(REPOSITORY_ACTIONS)
        allowed: set[str] = set()
        if self.anonymous_pull:
            allowed.add(PULL)
        if user is not None:
            if self.grants is None:
                allowed.update(REPOSITORY_ACTIONS)
            else:
                for grant in self.grants:
                    if grant.names(user) and grant.covers(repository):
                        allowed.update(grant.actions)
        return wanted & allowed

    def allows(self, user: str | None, repository: str, action: str) -> bool:
        """True if C{user} may do C{action} on C{repository}."""
        return action in self.granted(user, repository, (action,))

    def can_pull(self, user: str | None, repository: str) -> bool:
        """True if C{user} may pull C{repository} (used to filter the catalog)."""
        return self.allows(user, repository, PULL)

    def can_list_catalog(self, user: str | None) -> bool:
        """The catalog lists every repository name: authenticated users only."""
        return user is not None

    def grant_scope(self, user: str | None, scope: Scope) -> Scope | None:
        """The part of C{scope} that C{user} may have, or None if nothing of it."""
        if scope.type == REPOSITORY:
            actions = self.granted(user, scope.name, scope.actions)
        elif scope.type == REGISTRY and scope.name == CATALOG and self.can_list_catalog(user):
            actions = scope.actions & {ALL}
        else:
            actions = frozenset()
        return Scope(scope.type, scope.name, actions) if actions else None
