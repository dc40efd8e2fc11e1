"""docs/configuration.md is the full reference: every option, config key and route is in it.

The names are collected from the code itself, so that a new option, key or route added without
its documentation fails here:

- options: C{optParameters}, C{optFlags} and the C{opt_*} methods of L{trow.tap.Options} (and of
  the commands beside the server: C{python -m trow gc}, C{migrate}, C{trow.certs}), long and
  short forms, each of which must start a code span (C{`--name ...`}, C{`-d`});
- config keys: every C{_check_keys(section, path, known)} call in C{trow/config.py}, found with
  L{ast}; C{known} is evaluated in the module (a literal list, C{list(_SECTIONS)}, or a local
  such as the limits' C{keys = [f.name for f in attrs.fields(LimitsConfig)]}); each key must be a
  code span (C{`settle`}, or qualified, C{`gc.settle`});
- routes: C{url_map.iter_rules()} of the Klein apps of the registry and webhook listeners; a
  static path must be a code span (C{`/healthz`}, also C{`GET /healthz`} or with a query); a path
  with a variable must be written with it (C{`/_trow/peer/blobs/<digest>`}), and a catch-all
  (C{/v2/<anypath:rest>}) as its prefix followed by a placeholder (C{`/v2/<name>/...`}).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any, Iterable

import pytest
from twisted.python import usage

import trow.config
from trow.api.registry import RegistryAPI
from trow.api.webhook import WebhookAPI
from trow.tap import Options

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def code_spans(text: str) -> list[str]:
    """The inline code spans of a Markdown text (C{`...`}), stripped."""
    return [span.strip() for span in re.findall(r"`([^`\n]+)`", text)]


SPANS = code_spans(DOC.read_text(encoding="utf-8"))


# -- options ------------------------------------------------------------------------------------


def option_names(options: type[usage.Options]) -> set[str]:
    """Every option a twisted C{usage.Options} class accepts, as written: C{--long} and C{-s}.
    Options inherited from Twisted itself (C{--help}, C{--version}) are the runner's, not trow's."""
    names: set[str] = set()
    for entry in [*getattr(options, "optParameters", []), *getattr(options, "optFlags", [])]:
        names.add("--" + entry[0])
        if entry[1]:
            names.add("-" + entry[1])
    for cls in options.__mro__:
        if not cls.__module__.startswith("trow"):
            continue
        for attr in vars(cls):
            if attr.startswith("opt_"):
                names.add("--" + attr[len("opt_") :].replace("_", "-"))
    return names


def certs_option_names() -> set[str]:
    from trow.certs import parser

    return {
        flag
        for action in parser()._actions
        for flag in action.option_strings
        if flag not in ("-h", "--help")
    }


def command_options() -> dict[str, set[str]]:
    from trow.gccli import GCOptions
    from trow.migrate import MigrateOptions

    return {
        "twistd trow": option_names(Options),
        "python -m trow gc": option_names(GCOptions),
        "python -m trow migrate": option_names(MigrateOptions),
        "python -m trow.certs": certs_option_names(),
    }


def option_documented(name: str, spans: Iterable[str]) -> bool:
    """C{name} starts a code span: C{`--tls[=CERT,KEY]`}, C{`--listen DESC`}, C{`-d`}."""
    return any(re.split(r"[\s=\[]", span, maxsplit=1)[0] == name for span in spans)


def test_trow_options_are_collected() -> None:
    """The collector sees the options of every kind (a guard against a collector finding none)."""
    names = option_names(Options)
    assert {"--data-dir", "-d", "--dry-run", "--listen", "--config-file", "--bind", "--name", "-U", "-P", "-n"} <= names
    assert "--help" not in names and "--version" not in names


@pytest.mark.parametrize("command", sorted(command_options()))
def test_every_option_is_documented(command: str) -> None:
    missing = sorted(name for name in command_options()[command] if not option_documented(name, SPANS))
    assert not missing, f"options of {command} missing from {DOC.name} (write them as `--name ...`): {missing}"


# -- config keys --------------------------------------------------------------------------------


def config_keys() -> dict[str, list[str]]:
    """The keys each C{_check_keys} call in trow/config.py accepts, by the function it is in
    (C{config_from_dict} is the top level), read from the source with L{ast} and evaluated in
    the module, so that however a list of keys is built, it is the one the loader uses."""
    source_path = Path(trow.config.__file__)
    tree = ast.parse(source_path.read_text(encoding="utf-8"))
    namespace = dict(vars(trow.config))
    found: dict[str, list[str]] = {}
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef):
            continue
        local = {
            target.id: node.value
            for node in ast.walk(function)
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for call in ast.walk(function):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "_check_keys"):
                continue
            known: Any = call.args[2] if len(call.args) > 2 else next(k.value for k in call.keywords if k.arg == "known")
            if isinstance(known, ast.Name) and known.id in local:
                known = local[known.id]
            expression = ast.Expression(known)
            ast.fix_missing_locations(expression)
            try:
                keys = eval(compile(expression, str(source_path), "eval"), namespace)  # noqa: S307 - our own source
            except Exception as e:  # pragma: no cover - a shape this collector does not know yet
                pytest.fail(f"cannot evaluate the keys of _check_keys at {source_path.name}:{call.lineno}: {e}")
            found.setdefault(function.name, [])
            found[function.name] += [str(key) for key in keys if str(key) not in found[function.name]]
    return found


def test_config_keys_are_collected() -> None:
    """The collector finds every section and the keys of each (a guard against finding none)."""
    keys = config_keys()
    assert set(keys["config_from_dict"]) == set(trow.config._SECTIONS)
    everything = {key for section in keys.values() for key in section}
    assert {"settle", "token_key", "max_connections_per_client", "ca_file", "any_registry", "ignore", "actions"} <= everything
    assert len(keys) >= 9, sorted(keys)


def key_documented(key: str, spans: Iterable[str]) -> bool:
    """C{key} is a code span of its own, or the last part of a qualified one (C{`gc.settle`})."""
    return any(span == key or span.endswith("." + key) for span in spans)


def test_every_config_key_is_documented() -> None:
    missing = sorted(
        f"{function}: {key}"
        for function, keys in config_keys().items()
        for key in keys
        if not key_documented(key, SPANS)
    )
    assert not missing, f"config keys missing from {DOC.name} (write them as `key`): {missing}"


# -- routes -------------------------------------------------------------------------------------

_VARIABLE = re.compile(r"<(?:(?P<converter>[^:>]+):)?(?P<name>[^>]+)>")
_CATCH_ALL = {"path", "anypath"}


def routes(app: Any) -> set[str]:
    """The path rules of a Klein app, without Klein's own branch rules (C{/<path:__rest__>})."""
    return {rule.rule for rule in app.url_map.iter_rules() if "__rest__" not in rule.rule}


def route_documented(rule: str, spans: Iterable[str]) -> bool:
    # A span may carry a method before the path (`GET /login`) and a query after it.
    paths = [re.sub(r"^[A-Z]+ ", "", span).split("?", 1)[0].split(" ", 1)[0] for span in spans]
    variable = _VARIABLE.search(rule)
    if variable is None:
        return rule in paths
    if variable.group("converter") in _CATCH_ALL:
        prefix = rule[: variable.start()] + "<"
        return any(path.startswith(prefix) for path in paths)
    written = _VARIABLE.sub(lambda m: f"<{m.group('name')}>", rule)
    return written in paths


def test_routes_are_collected() -> None:
    found = routes(RegistryAPI.app)
    assert {"/", "/v2/", "/login", "/healthz", "/readiness", "/status.json", "/_trow/peer/blobs/<digest>"} <= found
    assert {"/validate-image", "/mutate-image", "/healthz"} <= routes(WebhookAPI.app)


@pytest.mark.parametrize("listener, app", [("registry", RegistryAPI.app), ("webhook", WebhookAPI.app)])
def test_every_route_is_documented(listener: str, app: Any) -> None:
    missing = sorted(rule for rule in routes(app) if not route_documented(rule, SPANS))
    assert not missing, f"routes of the {listener} listener missing from {DOC.name} (write them as `/path`): {missing}"


def test_the_matchers_refuse_what_is_not_there() -> None:
    """The matchers need the name itself, not a longer one or a mention inside other text."""
    spans = ["--listen DESC", "--tls[=CERT,KEY]", "-d", "gc.settle", "GET /login", "/v2/<name>/tags/list", "the /healthz path"]
    assert option_documented("--listen", spans) and option_documented("--tls", spans) and option_documented("-d", spans)
    assert not option_documented("--list", spans) and not option_documented("--listen-all", spans)
    assert key_documented("settle", spans) and not key_documented("settl", spans) and not key_documented("gc", spans)
    assert route_documented("/login", spans) and route_documented("/v2/<anypath:rest>", spans)
    assert not route_documented("/healthz", spans) and not route_documented("/log", spans)
    assert not route_documented("/_trow/peer/blobs/<digest>", spans)
