"""deploy/grafana/trow.json: the Grafana dashboard queries only metrics and labels trow exports.

The dashboard's PromQL is read from every panel target and every template variable query; each
metric name in it (``trow_...``; a histogram's ``_bucket``/``_sum``/``_count`` series map back to
their family) must be in a real exposition: a L{trow.metrics.Metrics} exercised once through its
public methods, rendered by prometheus_client's C{generate_latest} from the registry that
``--metrics-listen`` serves. Every label named in a selector, a C{by (...)} clause or a legend must
be on that metric (or be one Prometheus adds at scrape: C{job}, C{instance}), and every literal
value a selector compares with C{=} must be one trow exports. Renaming a metric or a label in
trow/metrics.py without updating the dashboard fails here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from trow.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "trow.json"

# Labels Prometheus attaches to every scraped series; they are never in trow's own exposition.
TARGET_LABELS = frozenset({"job", "instance"})
PANEL_TYPES = frozenset({"timeseries", "stat", "gauge"})
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

METRIC = re.compile(r"\btrow_[a-z0-9_]+")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
SELECTOR = re.compile(r"\b(trow_[a-z0-9_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
LABEL_VALUES = re.compile(
    r"label_values\(\s*(?:(trow_[a-z0-9_]+)\s*(?:\{[^}]*\})?\s*,)?\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)"
)


# --- trow's exposition -------------------------------------------------------------------------


def exercised_metrics() -> Metrics:
    """A Metrics on which every public recording method was called once (twice where a label has
    two values the dashboard names), so that every labelled family has samples to look at."""
    clock = Clock()
    clock.advance(1_700_000_000)
    m = Metrics(clock=clock)
    m.http_request(b"GET", "blob", 200, 0.2, sent=1024, received=0)
    m.http_request(b"PUT", "upload", 201, 0.1, sent=0, received=2048)
    m.connection_opened("registry")
    m.limit_hit("registry", "max_connections")
    m.uploads_in_progress.inc()
    m.cache_lookup("blob", hit=True)
    m.cache_lookup("manifest", hit=False)
    m.set_cache_size(10 * 2**20)
    m.cache_evicted(1, 2**20)
    m.upstream_request("docker.io", 200)
    m.upstream_request("docker.io", None)
    m.upstream_error("docker.io", "timeout")
    m.upstream_bytes("docker.io", 4096)
    m.download_started()
    m.download_waiter_added()
    m.download_started()
    m.download_finished("complete")
    m.download_lease("led")
    m.peer_stream("served")
    m.peer_bytes("served", 100)
    m.gc_pass(duration=1.5, uploads=1, blobs=2, manifests=1, freed_bytes=2**20)
    m.gc_pass(duration=0.5, failed=True)
    m.webhook_decision("validate", "allowed")
    m.reactor_tick(0.002)
    return m


@dataclass
class Exposition:
    """What C{/metrics} shows: the metric families with their types, and per sample name the
    label names and the values each label takes."""

    types: dict[str, str] = field(default_factory=dict)
    labels: dict[str, set[str]] = field(default_factory=dict)
    values: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def family(self, name: str) -> str:
        """The family a series name belongs to: C{x} for C{x_bucket}, C{x_sum}, C{x_count} of a
        histogram C{x}; else the name itself."""
        for suffix in HISTOGRAM_SUFFIXES:
            base = name[: -len(suffix)]
            if name.endswith(suffix) and self.types.get(base) == "histogram":
                return base
        return name


def parse_exposition(text: str) -> Exposition:
    exposition = Exposition()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            exposition.types[name] = kind
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exposition.labels.setdefault(sample.name, set()).update(sample.labels)
            for label, value in sample.labels.items():
                exposition.values.setdefault((sample.name, label), set()).add(value)
    return exposition


@pytest.fixture(scope="module")
def exposition() -> Exposition:
    # As trow.api.metrics serves it (its text encoder is generate_latest), from the same registry.
    metrics = exercised_metrics()
    return parse_exposition(generate_latest(metrics.registry).decode("utf-8"))


# --- the dashboard -----------------------------------------------------------------------------


def load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard(DASHBOARD)


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too; rows themselves are left out."""
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel.get("targets", []) if t.get("expr")]


def blank_strings(expr: str) -> str:
    """C{expr} with the inside of every string literal blanked, offsets kept: a parenthesis or a
    name inside a regex is not PromQL structure."""
    return STRING.sub(lambda m: '"' + " " * (len(m.group()) - 2) + '"', expr)


def matching_paren(text: str, start: int, step: int) -> int:
    """The index of the parenthesis balancing the one at C{start}, looking forwards (C{step} 1)
    or backwards (-1)."""
    opening, closing = ("(", ")") if step == 1 else (")", "(")
    depth = 0
    i = start
    while 0 <= i < len(text):
        if text[i] == opening:
            depth += 1
        elif text[i] == closing:
            depth -= 1
            if depth == 0:
                return i
        i += step
    raise AssertionError(f"unbalanced parentheses in {text!r}")


@dataclass
class Grouping:
    keyword: str
    labels: list[str]
    scope: str  # the part of the expression the labels must be found on


def groupings(expr: str) -> list[Grouping]:
    """Every C{by}/C{without} clause with the aggregation argument it applies to (in either form:
    C{sum by (x) (...)} or C{sum(...) by (x)}), and every C{on}/C{ignoring}/C{group_*} clause with
    the whole expression."""
    text = blank_strings(expr)
    found = []
    for m in GROUPING.finditer(text):
        labels = [label.strip() for label in m.group(2).split(",") if label.strip()]
        if m.group(1) in ("by", "without"):
            after = m.end()
            while after < len(text) and text[after].isspace():
                after += 1
            if after < len(text) and text[after] == "(":
                scope = text[after : matching_paren(text, after, 1) + 1]
            else:
                before = m.start() - 1
                while before >= 0 and text[before].isspace():
                    before -= 1
                assert before >= 0 and text[before] == ")", f"cannot find what {m.group()!r} groups in {expr!r}"
                scope = text[matching_paren(text, before, -1) : before + 1]
        else:
            scope = text
        found.append(Grouping(m.group(1), labels, scope))
    return found


def metric_names(expr: str) -> set[str]:
    return set(METRIC.findall(blank_strings(expr)))


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(where, expr, legend) for every panel target."""
    queries = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                queries.append((f"panel {panel['title']!r}", target["expr"], target.get("legendFormat", "")))
    return queries


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") == "query":
            query = variable["query"]
            found.append((variable["name"], query["query"] if isinstance(query, dict) else query))
    return found


def problems(dashboard: dict[str, Any], exposition: Exposition) -> list[str]:
    """Everything in the dashboard's PromQL that trow's exposition does not back."""
    errors = []

    def check_metric(where: str, name: str) -> bool:
        family = exposition.family(name)
        if family not in exposition.types:
            errors.append(f"{where}: {name}: trow exports no family {family} (exercised in exercised_metrics()?)")
            return False
        if name not in exposition.labels:
            kind = exposition.types[family]
            errors.append(f"{where}: {name}: no such series in the exposition (family {family} is a {kind})")
            return False
        return True

    for where, expr, legend in dashboard_queries(dashboard):
        names = metric_names(expr)
        known = {name for name in names if check_metric(where, name)}
        for m in SELECTOR.finditer(blank_strings(expr)):
            name, braces = m.group(1), m.group(2)
            if name not in known or not braces:
                continue
            original = expr[m.start(2) : m.end(2)]
            for label, op, value in MATCHER.findall(original):
                if label in TARGET_LABELS:
                    continue
                if label not in exposition.labels[name]:
                    errors.append(f"{where}: {name} has no label {label!r} (it has {sorted(exposition.labels[name])})")
                elif op == "=" and "$" not in value and value not in exposition.values.get((name, label), set()):
                    errors.append(f"{where}: {name}{{{label}={value!r}}}: trow exports no such value")
        for grouping in groupings(expr):
            scoped = metric_names(grouping.scope) & known
            for label in grouping.labels:
                if label in TARGET_LABELS:
                    continue
                for name in sorted(scoped):
                    if label not in exposition.labels[name]:
                        errors.append(f"{where}: {grouping.keyword} ({label}) but {name} has no label {label!r}")
            if grouping.keyword == "by" and any(exposition.family(n) != n and n.endswith("_bucket") for n in scoped):
                if "le" not in grouping.labels:
                    errors.append(f"{where}: a histogram's buckets summed without le: {expr}")
        for label in LEGEND_LABEL.findall(legend):
            if known and label not in TARGET_LABELS and not any(label in exposition.labels[n] for n in known):
                errors.append(f"{where}: legend {{{{{label}}}}} is a label of none of {sorted(known)}")

    for name, query in variable_queries(dashboard):
        where = f"variable {name!r}"
        for metric in metric_names(query):
            check_metric(where, metric)
        for metric, label in LABEL_VALUES.findall(query):
            if label in TARGET_LABELS or not metric or metric not in exposition.labels:
                continue
            if label not in exposition.labels[metric]:
                errors.append(f"{where}: {metric} has no label {label!r}")
    return errors


# --- the tests ---------------------------------------------------------------------------------


def test_dashboard_is_a_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    """Valid JSON with the identity, schema and template variables the docs promise."""
    assert dashboard["uid"] == "trow"
    assert dashboard["title"] == "trow"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["id"] is None, "an exported dashboard carries no database id"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE
    assert variables["max_size"]["type"] == "textbox"


def test_every_panel_queries_prometheus_through_the_variable(dashboard: dict[str, Any]) -> None:
    """Every panel is a timeseries, stat or gauge with at least one target, and it and its targets
    use the ${datasource} variable, never a datasource of the author's Grafana."""
    panels = list(all_panels(dashboard))
    assert panels
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert panel["title"].strip()
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_layout(dashboard: dict[str, Any]) -> None:
    """Unique ids; every panel within the 24-column grid; no two panels overlap."""
    nested = [p for p in all_panels(dashboard) if p not in dashboard["panels"]]
    ids = [p["id"] for p in dashboard["panels"] + nested]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, panel["title"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


# What the dashboard must show: (what, a pattern its panel's title matches, the metric families one
# panel must query together, a pattern that panel's PromQL must match).
REQUIRED = [
    ("request rate per route", r"request rate", {"trow_http_requests_total"}, r"by \(route\).*rate\("),
    (
        "p50 latency per route",
        r"latency",
        {"trow_http_request_duration_seconds"},
        r"histogram_quantile\(0\.5, sum by \(route, le\)",
    ),
    (
        "p95 latency per route",
        r"latency",
        {"trow_http_request_duration_seconds"},
        r"histogram_quantile\(0\.95, sum by \(route, le\)",
    ),
    (
        "p99 latency per route",
        r"latency",
        {"trow_http_request_duration_seconds"},
        r"histogram_quantile\(0\.99, sum by \(route, le\)",
    ),
    ("cache hit rate", r"hit rate", {"trow_cache_requests_total"}, r'result="hit"'),
    ("upstream requests per upstream", r"upstream", {"trow_upstream_requests_total"}, r"by \(upstream"),
    ("upstream errors per upstream", r"upstream", {"trow_upstream_errors_total"}, r"by \(upstream"),
    ("downloads and their waiters", r"download", {"trow_downloads_in_flight", "trow_download_waiters"}, r""),
    ("bytes served vs fetched", r"bytes", {"trow_http_response_bytes_total", "trow_upstream_bytes_total"}, r""),
    ("cache size against max_size", r"cache size", {"trow_cache_size_bytes"}, r"\$max_size"),
    ("GC passes", r"\bgc\b", {"trow_gc_runs_total"}, r"by \(result\)"),
    ("GC freed bytes", r"\bgc\b", {"trow_gc_freed_bytes_total"}, r""),
    ("GC duration", r"\bgc\b", {"trow_gc_duration_seconds"}, r""),
    ("last successful GC", r"\bgc\b", {"trow_gc_last_success_timestamp_seconds"}, r""),
    ("reactor lag", r"reactor", {"trow_reactor_tick_lag_seconds"}, r""),
]


@pytest.mark.parametrize("what, title, families, pattern", REQUIRED, ids=[r[0] for r in REQUIRED])
def test_dashboard_shows(
    dashboard: dict[str, Any], exposition: Exposition, what: str, title: str, families: set[str], pattern: str
) -> None:
    candidates = []
    for panel in all_panels(dashboard):
        exprs = panel_exprs(panel)
        used = {exposition.family(name) for expr in exprs for name in metric_names(expr)}
        if families <= used and re.search(title, panel["title"], re.I):
            candidates.append(panel["title"])
            if any(re.search(pattern, expr) for expr in exprs):
                return
    pytest.fail(f"no panel shows {what} (panels titled like it with those metrics: {candidates})")


def test_cache_size_panels_say_max_size_comes_from_config(dashboard: dict[str, Any]) -> None:
    """trow exports no max_size metric: the panels that compare with it say where it comes from."""
    panels = [p for p in all_panels(dashboard) if any("$max_size" in e for e in panel_exprs(p))]
    assert panels
    for panel in panels:
        assert "max_size" in panel["description"] and "config" in panel["description"], panel["title"]
        assert all("trow_max_size" not in e for e in panel_exprs(panel))


def test_every_metric_and_label_the_dashboard_queries_exists(dashboard: dict[str, Any], exposition: Exposition) -> None:
    """Each trow_* series, selector label and value, grouping label and legend label in the
    dashboard's PromQL is in trow's own exposition."""
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 20
    used = {exposition.family(name) for _, expr, _ in queries for name in metric_names(expr)}
    assert len(used) >= 15, used
    assert problems(dashboard, exposition) == []


def test_the_check_catches_a_renamed_metric_or_label(dashboard: dict[str, Any], exposition: Exposition) -> None:
    """The check above is not vacuous: a dashboard that names a metric, a histogram series, a label
    or a label value trow does not export is reported."""
    text = json.dumps(dashboard)
    for old, new in [
        ("trow_upstream_errors_total", "trow_upstream_failures_total"),
        ("trow_http_request_duration_seconds_bucket", "trow_http_request_duration_seconds_buckets"),
        ("trow_reactor_tick_lag_seconds_bucket", "trow_reactor_tick_lag_bucket"),
        ("sum by (upstream, reason)", "sum by (host, reason)"),
        ('result=\\"hit\\"', 'result=\\"hits\\"'),
        ("sum by (route, le)", "sum by (route)"),
        ("label_values(trow_build_info, job)", "label_values(trow_version_info, job)"),
    ]:
        assert old in text, old
        broken = json.loads(text.replace(old, new))
        assert problems(broken, exposition), f"renaming {old} to {new} went unnoticed"
    # And a metric trow stops exporting: the same dashboard against a smaller exposition.
    smaller = Exposition(
        types={k: v for k, v in exposition.types.items() if k != "trow_download_waiters"},
        labels={k: v for k, v in exposition.labels.items() if k != "trow_download_waiters"},
        values=exposition.values,
    )
    assert any("trow_download_waiters" in p for p in problems(dashboard, smaller))


def test_groupings_find_their_scope() -> None:
    """The by-clause reader handles both PromQL forms and ignores parentheses inside strings."""
    [g] = groupings('sum by (route) (rate(trow_x{a=~"(b|c)"}[5m])) / 2')
    assert g.labels == ["route"] and "trow_x" in g.scope
    [g] = groupings("sum(rate(trow_y[5m])) by (kind, result) + trow_z")
    assert g.labels == ["kind", "result"] and "trow_y" in g.scope and "trow_z" not in g.scope
