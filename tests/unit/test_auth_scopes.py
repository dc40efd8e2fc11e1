"""trow.auth.scopes: the Docker token scope grammar, proxied names with ports, malformed input."""

from __future__ import annotations

import pytest

from trow.auth.scopes import Scope, parse_scope, parse_scopes


def actions(*names: str) -> frozenset[str]:
    return frozenset(names)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("repository:team-a/app:pull", Scope("repository", "team-a/app", actions("pull"))),
        ("repository:team-a/app:pull,push", Scope("repository", "team-a/app", actions("pull", "push"))),
        ("repository:library/alpine:*", Scope("repository", "library/alpine", actions("pull", "push", "delete"))),
        ("repository:a:delete", Scope("repository", "a", actions("delete"))),
        # A proxied repository whose upstream has a port: the name holds a ":".
        (
            "repository:f/127.0.0.1:5000/library/alpine:pull",
            Scope("repository", "f/127.0.0.1:5000/library/alpine", actions("pull")),
        ),
        (
            "repository:f/registry.local:5000/x:pull,push",
            Scope("repository", "f/registry.local:5000/x", actions("pull", "push")),
        ),
        ("repository(plugin):vieux/sshfs:pull", Scope("repository", "vieux/sshfs", actions("pull"))),
        ("registry:catalog:*", Scope("registry", "catalog", actions("*"))),
        # Unknown actions are dropped, known ones kept.
        ("repository:a:pull,fly", Scope("repository", "a", actions("pull"))),
        ("repository:a: pull , push ", Scope("repository", "a", actions("pull", "push"))),
    ],
)
def test_parse_scope(text: str, expected: Scope) -> None:
    """Type before the first colon, actions after the last, the name in between."""
    assert parse_scope(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "repository",
        "repository:",
        "repository:a",  # no actions part
        "repository::pull",  # empty name
        ":a:pull",  # empty type
        "repository:a:",  # no action
        "repository:a:fly",  # no known action
        "repository:a b:pull",
        'repository:a"b:pull',  # would break the challenge header it is echoed in
        "repository:/a:pull",
        "repository:a/:pull",
        "repository:a//b:pull",
        "repository(:a:pull",
        "Repository:a:pull",
        "registry:catalog:pull",  # the catalog has only *
        "registry:other:*",
        "spaceship:a:pull",
        "repository:" + "a" * 600 + ":pull",
    ],
)
def test_malformed_scopes_are_dropped(text: str) -> None:
    """Nothing that does not fit the grammar becomes a scope; nothing raises."""
    assert parse_scope(text) is None


def test_parse_scopes_splits_spaces_and_merges() -> None:
    """Several scope parameters, several scopes in one, duplicates merged in first-seen order."""
    scopes = parse_scopes(
        [
            "repository:b:pull repository:a:push",
            "repository:b:push",
            "garbage",
            "registry:catalog:*",
        ]
    )
    assert scopes == [
        Scope("repository", "b", actions("pull", "push")),
        Scope("repository", "a", actions("push")),
        Scope("registry", "catalog", actions("*")),
    ]


def test_format_round_trips() -> None:
    """A scope is written back in the usual action order, and parses to itself."""
    scope = Scope("repository", "f/127.0.0.1:5000/x", actions("delete", "pull", "push"))
    assert scope.format() == "repository:f/127.0.0.1:5000/x:pull,push,delete"
    assert parse_scope(scope.format()) == scope
    assert scope.to_access() == {
        "type": "repository",
        "name": "f/127.0.0.1:5000/x",
        "actions": ["pull", "push", "delete"],
    }
