"""trow.auth.policy: grants on prefixes on component boundaries, unions, anonymous pull."""

from __future__ import annotations

from typing import Any

import pytest

from trow.auth.policy import Policy
from trow.auth.scopes import Scope
from trow.config import config_from_dict

ALL = frozenset({"pull", "push", "delete"})


def policy(**auth: Any) -> Policy:
    """The policy of an auth section written as in the YAML file."""
    return Policy.from_config(config_from_dict({"auth": auth}).auth)


TEAMS = policy(
    rules=[
        {"users": ["deployer"], "repositories": ["team-a/"], "actions": ["pull", "push", "delete"]},
        {"users": ["deployer"], "repositories": ["shared"], "actions": ["pull"]},
        {"users": ["ci"], "repositories": ["team-a"], "actions": ["push"]},
        {"users": ["*"], "repositories": ["public/"], "actions": ["pull"]},
    ]
)


@pytest.mark.parametrize(
    ("prefix", "repository", "covered"),
    [
        ("team-a/", "team-a", True),
        ("team-a/", "team-a/app", True),
        ("team-a/", "team-a/app/sub", True),
        ("team-a", "team-a/app", True),
        ("team-a", "team-a", True),
        ("team-a/", "team-ab", False),
        ("team-a", "team-ab/app", False),
        ("team-a", "xteam-a", False),
        ("team-a/app", "team-a", False),
        ("", "anything/at/all", True),
        ("f/docker.io/", "f/docker.io/library/alpine", True),
        ("f/docker.io", "f/docker.io.evil.com/x", False),
        ("f/127.0.0.1:5000", "f/127.0.0.1:5000/library/alpine", True),
        ("f/127.0.0.1:5000", "f/127.0.0.1:50001/x", False),
    ],
)
def test_prefixes_match_on_component_boundaries(prefix: str, repository: str, covered: bool) -> None:
    """"team-a/" and "team-a" cover team-a and team-a/x, never team-ab; "" covers everything."""
    p = policy(rules=[{"users": ["u"], "repositories": [prefix], "actions": ["pull"]}])
    assert p.allows("u", repository, "pull") is covered


def test_a_user_gets_the_union_of_its_rules() -> None:
    """deployer: everything under team-a, pull on shared, pull on public via "*"."""
    assert TEAMS.granted("deployer", "team-a/app", ALL) == ALL
    assert TEAMS.granted("deployer", "shared", ALL) == {"pull"}
    assert TEAMS.granted("deployer", "public/x", ALL) == {"pull"}
    assert TEAMS.granted("deployer", "team-b/app", ALL) == set()


def test_rules_only_grant_what_they_name() -> None:
    """ci may push to team-a but not pull it; a rule for another user gives nothing."""
    assert TEAMS.granted("ci", "team-a/app", ALL) == {"push"}
    assert TEAMS.granted("ci", "shared", ALL) == set()
    assert TEAMS.granted("nobody", "team-a/app", ALL) == set()


def test_star_means_every_authenticated_user_not_anonymous() -> None:
    """users: ["*"] covers any user name but not an anonymous client."""
    assert TEAMS.allows("someone-new", "public/x", "pull")
    assert not TEAMS.allows(None, "public/x", "pull")


def test_no_rules_lets_every_user_do_everything_and_anonymous_nothing() -> None:
    """rules absent: every authenticated user may do everything; anonymous: none gives nothing."""
    p = policy()
    assert p.granted("anyone", "any/repo", ALL) == ALL
    assert p.granted(None, "any/repo", ALL) == set()


def test_empty_rules_grant_nothing() -> None:
    """rules: [] is not "no rules": nobody may do anything."""
    p = policy(rules=[])
    assert p.granted("anyone", "x", ALL) == set()


def test_anonymous_pull_opens_pulls_to_everyone() -> None:
    """anonymous: pull lets anonymous clients and users without a rule pull, nothing more."""
    p = policy(anonymous="pull", rules=[{"users": ["dev"], "repositories": ["dev/"], "actions": ["push"]}])
    assert p.granted(None, "anything", ALL) == {"pull"}
    assert p.granted("stranger", "anything", ALL) == {"pull"}
    assert p.granted("dev", "dev/x", ALL) == {"pull", "push"}


def test_grant_scope_reduces_to_what_is_allowed() -> None:
    """A scope asking for more than allowed is cut down; one allowing nothing disappears."""
    assert TEAMS.grant_scope("deployer", Scope("repository", "shared", ALL)) == Scope(
        "repository", "shared", frozenset({"pull"})
    )
    assert TEAMS.grant_scope("deployer", Scope("repository", "team-b/x", ALL)) is None


def test_catalog_needs_an_authenticated_user() -> None:
    """registry:catalog:* goes to users, never to anonymous clients, whatever anonymous says."""
    p = policy(anonymous="pull")
    catalog = Scope("registry", "catalog", frozenset({"*"}))
    assert p.grant_scope("u", catalog) == catalog
    assert p.grant_scope(None, catalog) is None


def test_can_pull_filters_the_catalog() -> None:
    """can_pull answers per repository for the catalog filter."""
    names = ["team-a/app", "team-b/app", "shared", "public/x"]
    assert [n for n in names if TEAMS.can_pull("deployer", n)] == ["team-a/app", "shared", "public/x"]
