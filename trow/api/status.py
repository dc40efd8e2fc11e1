"""The status page: C{GET /} for browsers, C{GET /status.json} for scripts.

The page is rendered with C{twisted.web.template}, which escapes every text it is given, so
whatever came from outside (an upstream's error, a repository name, a tag) shows as text. A
small script (C{/status.js}), with no framework and nothing loaded from elsewhere, polls C{/status.json?live=1}
every second and redraws the parts that move (downloads, uploads, the cache, the upstreams,
space and GC) with C{textContent}, which does not parse HTML either. Repositories are drawn when
the page loads; they page with C{?after=} and C{?cached_after=}.

With auth on, a visitor sees the repositories it may pull and nothing of the others but
counts: Basic credentials (C{/status-login} makes the browser ask for them) or a token.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, Iterable

from twisted.web.iweb import IRequest
from twisted.web.template import Tag, flattenString, tags

from trow.api.auth import AuthAPI
from trow.api.http import header, query, send_bytes, send_empty, send_error, send_json, shielded
from trow.auth.service import Identity
from trow.registry.errors import RegistryError
from trow.status import MayPull, StatusBoard

BASIC_PROMPT = 'Basic realm="trow status", charset="UTF-8"'
NO_STORE = {"Cache-Control": "no-store"}


def wants_html(request: IRequest) -> bool:
    """Does the client prefer HTML, as browsers do (C{Accept: text/html,...})?"""
    accept = (header(request, "Accept") or "").lower()
    return "text/html" in accept


class StatusAPI:
    """Serves the status page and its JSON (see the module docstring)."""

    def __init__(self, board: StatusBoard, auth: AuthAPI) -> None:
        self.board = board
        self.auth = auth

    async def _visitor(self, request: IRequest) -> tuple[MayPull, Identity | None]:
        """What this visitor may see. Wrong credentials are refused (401), none mean anonymous."""
        if not self.auth.enabled:
            return (lambda repo: True), None
        identity = await self.auth.identify(request)
        return (lambda repo: self.auth.can_pull(identity, repo)), identity

    async def _snapshot(self, request: IRequest, live: bool) -> tuple[dict[str, Any], Identity | None]:
        may_pull, identity = await self._visitor(request)
        status = await self.board.snapshot(
            may_pull, after=query(request, "after") or "", cached_after=query(request, "cached_after") or "", live=live
        )
        status["visitor"] = _visitor_json(self.auth.enabled, identity)
        return status, identity

    def json(self, request: IRequest) -> Any:
        """C{GET /status.json}: the status as JSON (C{?live=1}: without the repository lists)."""

        async def run() -> Any:
            try:
                status, _ = await self._snapshot(request, live=query(request, "live") in ("1", "true"))
            except RegistryError as e:
                return send_error(request, e)
            return send_json(request, 200, status, NO_STORE)

        return shielded(run)

    def page(self, request: IRequest) -> Any:
        """C{GET /} from a browser: the page."""

        async def run() -> Any:
            try:
                status, _ = await self._snapshot(request, live=False)
            except RegistryError as e:
                return send_error(request, e)
            html = await flattenString(None, render_page(status))
            return send_bytes(request, 200, b"<!DOCTYPE html>\n" + html, "text/html; charset=utf-8", NO_STORE)

        return shielded(run)

    @staticmethod
    def script(request: IRequest) -> bytes:
        """C{GET /status.js}: the page's script (nothing secret in it)."""
        return send_bytes(request, 200, _SCRIPT.encode(), "text/javascript; charset=utf-8", {"Cache-Control": "max-age=300"})

    def login(self, request: IRequest) -> Any:
        """C{GET /status-login}: ask the browser for credentials (a Basic challenge) until it
        sends good ones, then back to the page. The challenge is for a path at the root, so the
        browser then sends them to C{/} and C{/status.json} too."""

        async def run() -> Any:
            if not self.auth.enabled:
                return send_empty(request, 303, {"Location": "/"})
            try:
                identity = await self.auth.identify(request)
            except RegistryError:
                identity = None
            if identity is None or identity.user is None:
                return send_bytes(
                    request,
                    401,
                    b"Sign in to see the repositories you may pull.\n",
                    "text/plain; charset=utf-8",
                    {"WWW-Authenticate": BASIC_PROMPT, **NO_STORE},
                )
            return send_empty(request, 303, {"Location": "/", **NO_STORE})

        return shielded(run)


def _visitor_json(enabled: bool, identity: Identity | None) -> dict[str, Any]:
    if not enabled:
        return {"auth": False, "user": None}
    return {"auth": True, "user": identity.user if identity is not None else None}


# -- rendering -------------------------------------------------------------------------------------


def size_text(value: int | float | None) -> str:
    """1536 -> "1.5 KiB"; None -> "-"."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"


def ago_text(when: float | None, now: float) -> str:
    """How long ago C{when} was, roughly: "just now", "12 s ago", "3 min ago", "2 h ago", a date."""
    if when is None:
        return "never"
    seconds = max(0.0, now - when)
    if seconds < 2:
        return "just now"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def in_text(when: float | None, now: float) -> str:
    if when is None:
        return "not planned"
    seconds = max(0.0, when - now)
    return f"in {seconds:.0f} s" if seconds < 120 else f"in {seconds / 60:.0f} min"


def duration_text(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {seconds} s"


def _table(table_id: str, headings: Iterable[str], rows: list[Tag], empty: str, **attributes: str) -> Tag:
    body = tags.tbody(*rows) if rows else tags.tbody(tags.tr(tags.td(empty, colspan="9", class_="empty")))
    return tags.table(tags.thead(tags.tr(*[tags.th(h) for h in headings])), body, id=table_id, **attributes)


def _downloads(status: dict[str, Any]) -> Tag:
    downloads = status["downloads"]
    rows = []
    for d in downloads["items"]:
        size, done = d["size"], d["done"]
        bar = tags.progress(value=str(done), max=str(size)) if size else tags.progress()
        rows.append(
            tags.tr(
                tags.td(d["repository"], class_="repo"),
                tags.td(d["upstream"], class_="upstream"),
                tags.td(tags.code(d["digest"][:19]), title=d["digest"], class_="digest"),
                tags.td(bar, " ", tags.span(f"{size_text(done)} of {size_text(size)}", class_="bytes"), class_="progress"),
                tags.td(f"{size_text(d['bytes_per_second'])}/s" if d["bytes_per_second"] else "-", class_="speed"),
                tags.td(str(d["clients"]), class_="clients"),
                **{"data-digest": d["digest"]},
            )
        )
    note = f" ({downloads['hidden']} more you may not see)" if downloads["hidden"] else ""
    return tags.section(
        tags.h2("Downloads in flight", tags.small(note)),
        _table("downloads", ["Repository", "Upstream", "Digest", "Progress", "Speed", "Clients"], rows, "none right now"),
        id="downloads-section",
    )


def _uploads(status: dict[str, Any]) -> Tag:
    now = status["now"]
    uploads = status["uploads"]
    rows = [
        tags.tr(
            tags.td(u["repository"], class_="repo"),
            tags.td(size_text(u["size"]), class_="bytes"),
            tags.td(ago_text(u["started"], now), class_="when"),
        )
        for u in uploads["items"]
    ]
    return tags.section(
        tags.h2("Uploads in progress"),
        _table("uploads", ["Repository", "Received", "Started"], rows, "none right now"),
        id="uploads-section",
    )


def _cache(status: dict[str, Any]) -> Tag:
    cache = status["cache"]
    rate = cache["hit_rate"]
    now = status["now"]
    rows = []
    for u in status["upstreams"]:
        state = "up" if u["state"] == "up" else f"down since {ago_text(u['down_since'], now)}, retry {in_text(u['retry_at'], now)}"
        error = u["last_error"] or "-"
        rows.append(
            tags.tr(
                tags.td(u["host"], class_="host"),
                tags.td(u["alias"] or "-", class_="alias"),
                tags.td(state, class_="state " + u["state"]),
                tags.td(u["breaker"], class_="breaker"),
                tags.td(error, " ", tags.small(ago_text(u["last_error_at"], now)) if u["last_error_at"] else "", class_="error"),
                **{"data-upstream": u["host"]},
            )
        )
    return tags.section(
        tags.h2("Cache"),
        tags.p(
            "Hit rate ",
            tags.strong("-" if rate is None else f"{rate * 100:.1f}%", id="hit-rate"),
            f" ({cache['hits']} hits, {cache['misses']} misses) \u00b7 served ",
            tags.strong(size_text(cache["bytes_served"]), id="bytes-served"),
            " from the cache \u00b7 fetched ",
            tags.strong(size_text(cache["bytes_fetched"]), id="bytes-fetched"),
            " from upstreams",
        ),
        _table("upstreams", ["Upstream", "Alias", "State", "Breaker", "Last error"], rows, "no upstream configured"),
        id="cache-section",
    )


def _space(status: dict[str, Any]) -> Tag:
    space, gc, now = status["space"], status["gc"], status["now"]
    limit = space["max_size"]
    cached = space["cache_bytes"]
    parts: list[Any] = [
        tags.p(
            "Disk: ",
            tags.strong(f"{size_text(space['disk_used'])} of {size_text(space['disk_total'])}"),
            " used",
            tags.progress(value=str(space["disk_used"]), max=str(space["disk_total"])) if space["disk_total"] else "",
        )
    ]
    if limit is not None:
        parts.append(
            tags.p(
                "Cache: ",
                tags.strong(f"{size_text(cached)} of max_size {size_text(limit)}"),
                tags.progress(value=str(cached or 0), max=str(limit)),
            )
        )
    if not gc.get("enabled"):
        parts.append(tags.p("Garbage collection: off"))
    else:
        last = gc["last"]
        what = (
            "no pass yet"
            if last is None
            else f"last pass {ago_text(last['at'], now)}: freed {size_text(last['freed_bytes'])} "
            f"({last['blobs']} blobs, {last['manifests']} manifests, {last['uploads']} uploads) in {last['seconds']:.1f} s"
        )
        nxt = "running now" if gc["running"] else f"next {in_text(gc['next'], now)}"
        failures = f" \u00b7 {gc['failures']} failed" if gc["failures"] else ""
        parts.append(tags.p("Garbage collection: ", what, " \u00b7 ", nxt, failures))
    return tags.section(tags.h2("Space and GC"), *parts, id="space-section")


def _tags_cell(repo: dict[str, Any], now: float) -> Tag:
    spans: list[Any] = []
    for t in repo["tags"]:
        platforms = f", {t['platforms']} platforms" if t["platforms"] > 1 else ""
        spans.append(
            tags.span(t["tag"], class_="tag", title=f"{t['digest']} \u00b7 {size_text(t['size'])}{platforms} \u00b7 set {ago_text(t['updated'], now)}")
        )
        spans.append(" ")
    count = repo["tag_count"]
    if count > len(repo["tags"]):
        spans.append(tags.small(f"of {count}{'+' if repo['tag_count_capped'] else ''}"))
    return tags.td(*spans, class_="tags")


def _repo_rows(items: list[dict[str, Any]], now: float) -> list[Tag]:
    return [
        tags.tr(
            tags.td(r["name"], class_="repo"),
            _tags_cell(r, now),
            tags.td(size_text(r["size"]), class_="size"),
            tags.td(ago_text(r["pushed"], now), class_="pushed"),
            tags.td(ago_text(r["pulled"], now), class_="pulled"),
            **{"data-repo": r["name"]},
        )
        for r in items
    ]


REPO_HEADINGS = ["Repository", "Tags", "Size", "Last pushed", "Last pulled"]


def _more(page: dict[str, Any], parameter: str) -> list[Any]:
    found: list[Any] = []
    if page["hidden"]:
        found.append(tags.p(f"{page['hidden']} more you may not see.", class_="hidden-count"))
    if page["next"]:
        found.append(tags.p(tags.a("Next page", href=f"/?{parameter}={_quote(page['next'])}")))
    return found


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _stored(status: dict[str, Any]) -> Tag:
    now = status["now"]
    pushed = status["repositories"]
    cached = status["cached"]
    groups = [
        tags.div(
            tags.h3(g["upstream"]),
            _table(f"cached-{g['upstream']}", REPO_HEADINGS, _repo_rows(g["repositories"], now), "", class_="cached"),
        )
        for g in cached["upstreams"]
    ]
    return tags.div(
        tags.section(
            tags.h2("Repositories"),
            _table("repositories", REPO_HEADINGS, _repo_rows(pushed["items"], now), "nothing pushed yet"),
            *_more(pushed, "after"),
            id="stored-section",
        ),
        tags.section(
            tags.h2("Cached, by upstream"),
            *(groups or [tags.p("nothing cached yet", class_="empty")]),
            *_more(cached, "cached_after"),
            id="cached-section",
        ),
        id="stored",
    )


def _config_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_config_value(v) for v in value) or "none"
    if isinstance(value, dict):  # an upstream
        notes = [f"alias {value['alias']}"] if value.get("alias") else []
        notes += [k.replace("_", " ") for k in ("tls", "ca_file", "credentials") if value.get(k)]
        return f"{value.get('host')} ({', '.join(notes)})" if notes else str(value.get("host"))
    return str(value)


def _config(status: dict[str, Any]) -> Tag:
    items: list[Any] = []
    for key, value in status["config"].items():
        if key == "max_size" and isinstance(value, int):
            value = size_text(value)
        items += [tags.dt(key.replace("_", " ")), tags.dd(_config_value(value))]
    return tags.section(tags.h2("Configuration"), tags.dl(*items), id="config-section")


def render_live(status: dict[str, Any]) -> Tag:
    """The parts of the page that move (what the script redraws)."""
    return tags.div(_downloads(status), _uploads(status), _cache(status), _space(status), id="live")


def render_page(status: dict[str, Any]) -> Tag:
    """The whole page, for C{status} as L{StatusBoard.snapshot} made it (not live)."""
    visitor = status["visitor"]
    who: list[Any] = []
    if visitor["auth"]:
        who = (
            [" \u00b7 signed in as ", tags.strong(visitor["user"])]
            if visitor["user"]
            else [" \u00b7 ", tags.a("sign in", href="/status-login"), " to see your repositories"]
        )
    process = tags.span(
        f"version {status['version']} \u00b7 up ",
        tags.span(duration_text(status["uptime_seconds"]), id="uptime"),
        f" \u00b7 replica {status['replica']}" if status["replica"] else "",
        *who,
        id="process",
    )
    return tags.html(
        tags.head(
            tags.meta(charset="utf-8"),
            tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
            tags.title("trow"),
            tags.style(_STYLE),
        ),
        tags.body(
            tags.header(tags.h1("trow"), process, " ", tags.span("", id="updated")),
            tags.p("The metadata database is unavailable: ", status["metadata_error"], class_="alert")
            if status.get("metadata_error")
            else "",
            Tag("main")(render_live(status), _stored(status), _config(status)),  # not among tags.*
            # Its own route: twisted.web.template escapes text, a script's included.
            tags.script(src="/status.js"),
        ),
        lang="en",
    )


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5em 2em; color: #222; }
header { display: flex; gap: 1em; align-items: baseline; border-bottom: 1px solid #ddd; }
h1 { margin: .4em 0; } h2 { font-size: 1.1em; margin: 1.2em 0 .4em; } h3 { font-size: 1em; margin: .8em 0 .3em; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: .25em .6em; border-bottom: 1px solid #eee; vertical-align: top; }
th { font-weight: 600; color: #555; } td.empty { color: #888; } code { font-size: .9em; }
progress { width: 12em; vertical-align: middle; } .tag { background: #eef; border-radius: 3px; padding: 0 .35em; }
.state.down { color: #b00; font-weight: 600; } .state.up { color: #070; } #updated { color: #888; } #updated.stale { color: #b00; }
.alert { color: #b00; font-weight: 600; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; } dt { color: #555; } dd { margin: 0; }
"""

# Redraws the live parts from /status.json?live=1 every second. textContent and attributes only:
# nothing from the server is ever parsed as HTML.
_SCRIPT = r"""
(function () {
  "use strict";
  function size(v) {
    if (v === null || v === undefined) return "-";
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return i === 0 ? v.toFixed(0) + " B" : v.toFixed(1) + " " + units[i];
  }
  function ago(when, now) {
    if (when === null || when === undefined) return "never";
    var s = Math.max(0, now - when);
    if (s < 2) return "just now";
    if (s < 120) return s.toFixed(0) + " s ago";
    if (s < 7200) return (s / 60).toFixed(0) + " min ago";
    return (s / 3600).toFixed(0) + " h ago";
  }
  function inText(when, now) {
    if (when === null || when === undefined) return "not planned";
    var s = Math.max(0, when - now);
    return s < 120 ? "in " + s.toFixed(0) + " s" : "in " + (s / 60).toFixed(0) + " min";
  }
  function duration(s) {
    s = Math.floor(s);
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    if (d) return d + " d " + h + " h";
    if (h) return h + " h " + m + " min";
    return m + " min " + (s % 60) + " s";
  }
  function el(name, text, cls) {
    var e = document.createElement(name);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function fill(tableId, rows, empty) {
    var table = document.getElementById(tableId);
    if (!table) return;
    var body = table.tBodies[0];
    while (body.firstChild) body.removeChild(body.firstChild);
    if (!rows.length) {
      var tr = el("tr"), td = el("td", empty, "empty");
      td.colSpan = 9; tr.appendChild(td); body.appendChild(tr);
    }
    rows.forEach(function (r) { body.appendChild(r); });
  }
  function downloads(s) {
    fill("downloads", s.downloads.items.map(function (d) {
      var tr = el("tr"), bar = el("progress"), cell = el("td", null, "progress");
      tr.setAttribute("data-digest", d.digest);
      if (d.size) { bar.max = d.size; bar.value = d.done; }
      cell.appendChild(bar); cell.appendChild(document.createTextNode(" "));
      cell.appendChild(el("span", size(d.done) + " of " + size(d.size), "bytes"));
      var digest = el("td", null, "digest"); digest.title = d.digest; digest.appendChild(el("code", d.digest.slice(0, 19)));
      [el("td", d.repository, "repo"), el("td", d.upstream, "upstream"), digest, cell,
       el("td", d.bytes_per_second ? size(d.bytes_per_second) + "/s" : "-", "speed"),
       el("td", d.clients, "clients")].forEach(function (c) { tr.appendChild(c); });
      return tr;
    }), "none right now");
  }
  function uploads(s) {
    fill("uploads", s.uploads.items.map(function (u) {
      var tr = el("tr");
      [el("td", u.repository, "repo"), el("td", size(u.size), "bytes"), el("td", ago(u.started, s.now), "when")]
        .forEach(function (c) { tr.appendChild(c); });
      return tr;
    }), "none right now");
  }
  function upstreams(s) {
    fill("upstreams", s.upstreams.map(function (u) {
      var tr = el("tr");
      tr.setAttribute("data-upstream", u.host);
      var state = u.state === "up" ? "up" : "down since " + ago(u.down_since, s.now) + ", retry " + inText(u.retry_at, s.now);
      var error = el("td", u.last_error || "-", "error");
      if (u.last_error_at) { error.appendChild(document.createTextNode(" ")); error.appendChild(el("small", ago(u.last_error_at, s.now))); }
      [el("td", u.host, "host"), el("td", u.alias || "-", "alias"), el("td", state, "state " + u.state),
       el("td", u.breaker, "breaker"), error].forEach(function (c) { tr.appendChild(c); });
      return tr;
    }), "no upstream configured");
  }
  function text(id, value) { var e = document.getElementById(id); if (e) e.textContent = value; }
  function draw(s) {
    downloads(s); uploads(s); upstreams(s);
    var c = s.cache;
    text("hit-rate", c.hit_rate === null ? "-" : (c.hit_rate * 100).toFixed(1) + "%");
    text("bytes-served", size(c.bytes_served));
    text("bytes-fetched", size(c.bytes_fetched));
    text("uptime", duration(s.uptime_seconds));
  }
  var updated = document.getElementById("updated");
  var query = window.location.search ? "&" + window.location.search.slice(1) : "";
  function tick() {
    fetch("/status.json?live=1" + query, {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (s) {
        draw(s);
        updated.textContent = "updated " + new Date(s.now * 1000).toLocaleTimeString();
        updated.className = "";
      })
      .catch(function (e) { updated.textContent = "not updating: " + e.message; updated.className = "stale"; })
      .then(function () { window.setTimeout(tick, 1000); });
  }
  window.setTimeout(tick, 1000);
})();
"""
