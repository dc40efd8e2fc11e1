"""The status page (issue 11) in a real headless browser: Debian's chromium.

Every check here looks at what chromium made of the page: the DOM after the page's script ran
(C{--dump-dom} with a virtual-time budget, so C{/status.js} polled C{/status.json?live=1} a few
times), or a screenshot. The upstream of the in-flight download is a real docker-registry
reached through L{ThrottledRelay}, a TCP forwarder of our own that slows the upstream's bytes
down, so that a cold blob download lasts long enough to be watched; the hostile upstream of the
escaping test is L{HostileUpstream}, a raw-socket server, since no real registry sends the reason
phrase it sends.

The screenshot of the page taken while a download is in flight is written to
C{$TROW_TEST_ARTIFACTS/status-page.png} (default C{<repository>/test-artifacts/}) for people to
look at; nothing compares it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.integration.conftest import LOOPBACK, MIB, Images, Skopeo, TrowProcess
from tests.integration.upstream import (  # noqa: F401 - fixtures
    ALIAS,
    DEADLINE,
    BodyStream,
    Distribution,
    assert_clean_log,
    make_big_blob,
    private_upstream,
    proxy_entry,
    start_proxy_trow,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
BLOB_SIZE = 32 * MIB
# Upstream -> trow while the browser looks: 32 MiB take 16 s, far more than the checks need;
# the relay is unthrottled afterwards, so the test does not wait for the rest.
THROTTLE = 2 * MIB
CHROMIUM_TIMEOUT = 60.0
# Enough virtual time for the script's first polls (it polls 1 s after load, then every second).
BUDGET_MS = 3500

HOSTILE_PHRASE = "<img src=x onerror=alert(1)><script>document.title='pwned'</script>"

USER = "statususer"
PASSWORD = "pw-" + os.urandom(6).hex() + "-never-shown"
SECRET_REPO = "status/secret-app"


# -- chromium --------------------------------------------------------------------------------


class Chromium:
    """Runs Debian's chromium headless, once per page, each time with a fresh profile.

    The flags keep it off the network (no component updates, no sync, no Google services), so
    that on a closed network it talks to nothing but the page's host. A failed run fails the test
    with chromium's stderr."""

    FLAGS = (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
    )

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("chromium")
        if binary is None:
            pytest.fail("chromium is not installed: apt-get install -y chromium (the README's test set-up does)")
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)

    def run(self, url: str, *args: str, budget_ms: int = BUDGET_MS) -> subprocess.CompletedProcess[bytes]:
        profile = tempfile.mkdtemp(prefix="profile-", dir=self.workdir)
        argv = [
            self.binary,
            *self.FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            *args,
            url,
        ]
        # Its own process group, so that a hung chromium is killed with all its helpers.
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        try:
            stdout, stderr = process.communicate(timeout=CHROMIUM_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(f"chromium did not finish within {CHROMIUM_TIMEOUT:.0f}s: {argv}\n{stderr.decode(errors='replace')}")
        finally:
            shutil.rmtree(profile, ignore_errors=True)
        result = subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
        if result.returncode != 0:
            pytest.fail(f"chromium exited {result.returncode}: {argv}\n{stderr.decode(errors='replace')}")
        return result

    def dump_dom(self, url: str, budget_ms: int = BUDGET_MS) -> str:
        """The DOM after the page's script ran for C{budget_ms} of virtual time, serialized."""
        result = self.run(url, "--dump-dom", budget_ms=budget_ms)
        dom = result.stdout.decode("utf-8", errors="replace")
        if "<html" not in dom:
            pytest.fail(f"chromium dumped no DOM for {url}:\n{dom[:2000]}\nstderr:\n{result.stderr.decode(errors='replace')}")
        return dom

    def screenshot(self, url: str, path: Path, budget_ms: int = BUDGET_MS) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        result = self.run(url, f"--screenshot={path}", "--window-size=1280,1600", "--hide-scrollbars", budget_ms=budget_ms)
        if not path.exists():
            pytest.fail(f"chromium wrote no screenshot of {url}:\n{result.stderr.decode(errors='replace')}")
        return path


@pytest.fixture
def chromium(tmp_path: Path) -> Chromium:
    return Chromium(tmp_path / "chromium")


def artifacts_dir() -> Path:
    """Where screenshots go: C{$TROW_TEST_ARTIFACTS}, else C{<repository>/test-artifacts}."""
    configured = os.environ.get("TROW_TEST_ARTIFACTS")
    return Path(configured) if configured else REPO_ROOT / "test-artifacts"


# -- reading the dumped DOM ------------------------------------------------------------------

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Element:
    """An element of a parsed document (chromium's serialization closes every element)."""

    tag: str
    attrs: dict[str, str]
    children: list["Element | str"] = field(default_factory=list)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self) -> Iterator["Element"]:
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter()

    def has_class(self, name: str) -> bool:
        return name in self.attrs.get("class", "").split()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list["Element"]:
        return [
            e
            for e in self.iter()
            if (tag is None or e.tag == tag)
            and (cls is None or e.has_class(cls))
            and all(e.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def by_id(self, element_id: str) -> "Element":
        found = [e for e in self.iter() if e.attrs.get("id") == element_id]
        assert len(found) == 1, f"{len(found)} elements with id {element_id!r}"
        return found[0]

    def one(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> "Element":
        found = self.find_all(tag, cls, **attrs)
        assert len(found) == 1, f"{len(found)} <{tag} class={cls} {attrs}> elements"
        return found[0]


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in _VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def assert_script_ran(document: Element) -> None:
    """C{#updated} is empty as served; only the script sets it, after a poll of /status.json."""
    updated = document.by_id("updated").text()
    assert re.fullmatch(r"updated \d{1,2}:\d{2}:\d{2}( [AP]M)?", updated.strip()), (
        f"#updated is {updated!r}: the script did not draw from /status.json"
    )


def progress_of(document: Element, digest: str) -> tuple[float, float]:
    """(value, max) of the <progress> in the download row of C{digest}."""
    rows = document.by_id("downloads").find_all("tr", data_digest=digest)
    assert len(rows) == 1, f"{len(rows)} download rows for {digest}"
    bar = rows[0].one("progress")
    return float(bar.attrs["value"]), float(bar.attrs["max"])


# -- a throttling TCP relay ------------------------------------------------------------------


class ThrottledRelay:
    """A TCP forwarder on 127.0.0.1 to C{target}: what the target sends back reaches the client at
    C{rate} bytes per second at most (None: as fast as it comes), per connection; the other way
    is not slowed. The rate may change at any time. One thread per direction per connection."""

    PIECE = 16 * 1024

    def __init__(self, target_port: int, rate: float | None) -> None:
        self.target_port = target_port
        self.rate = rate
        self.forwarded = 0  # bytes target -> clients, all connections
        self._listener = socket.socket()
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                target = socket.create_connection((LOOPBACK, self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            target.settimeout(None)
            with self._lock:
                self._sockets += [client, target]
            threading.Thread(target=self._pump, args=(client, target, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(target, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, throttled: bool) -> None:
        paced_until = time.monotonic()
        try:
            while True:
                data = source.recv(self.PIECE if throttled else 65536)
                if not data:
                    break
                rate = self.rate if throttled else None
                if rate:
                    # Each piece may leave only when the previous ones have had their time.
                    paced_until = max(paced_until, time.monotonic() - 0.1) + len(data) / rate
                    delay = paced_until - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                sink.sendall(data)
                if throttled:
                    self.forwarded += len(data)
        except OSError:
            pass
        finally:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


# -- an upstream with a hostile reason phrase --------------------------------------------------


class HostileUpstream:
    """A raw-socket HTTP server that answers every request with
    C{HTTP/1.1 500 <HOSTILE_PHRASE>}, a JSON error body and C{Connection: close}."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self.requests: list[str] = []
        self._closed = threading.Event()
        threading.Thread(target=self._serve, name="hostile-upstream", daemon=True).start()

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(10)
            received = b""
            try:
                while b"\r\n\r\n" not in received:
                    data = connection.recv(65536)
                    if not data:
                        return
                    received += data
                request_line = received.split(b"\r\n", 1)[0].decode("latin-1")
                self.requests.append(request_line)
                body = json.dumps({"errors": [{"code": "UNKNOWN", "message": "boom"}]}).encode()
                head = (
                    f"HTTP/1.1 500 {HOSTILE_PHRASE}\r\n"
                    "Content-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n"
                ).encode("latin-1")
                connection.sendall(head if request_line.startswith("HEAD ") else head + body)
            except OSError:
                pass

    def close(self) -> None:
        self._closed.set()
        self._listener.close()


# -- helpers ---------------------------------------------------------------------------------


def status_json(trow: TrowProcess, live: bool = False, headers: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    response = trow.request("GET", "/status.json?live=1" if live else "/status.json", headers=headers or [])
    assert response.status == 200, f"/status.json: {response.status} {response.body[:500]!r}"
    return dict(response.json())


def download_item(trow: TrowProcess, digest: str) -> dict[str, Any] | None:
    for item in status_json(trow, live=True)["downloads"]["items"]:
        if item["digest"] == digest:
            return dict(item)
    return None


def page_html(trow: TrowProcess, headers: list[tuple[str, str]] | None = None) -> str:
    """The page as the server renders it (no script run)."""
    response = trow.request("GET", "/", headers=[("Accept", "text/html,application/xhtml+xml"), *(headers or [])])
    assert response.status == 200, f"GET / as a browser: {response.status} {response.body[:500]!r}"
    assert (response.header("Content-Type") or "").startswith("text/html"), response.headers
    return response.body.decode("utf-8")


def basic(user: str, password: str) -> tuple[str, str]:
    return ("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())


class BackgroundGet:
    """A GET through trow read to the end on a thread of its own."""

    def __init__(self, port: int, path: str) -> None:
        self.stream: BodyStream | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(port, path), daemon=True)
        self._thread.start()

    def _run(self, port: int, path: str) -> None:
        try:
            stream = BodyStream(port, path, timeout=DEADLINE)
            self.stream = stream
            stream.read_to_end()
        except BaseException as e:  # reported by finish()
            self.error = e

    def finish(self, timeout: float = DEADLINE) -> BodyStream:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the GET did not finish within {timeout:.0f}s"
        if self.error is not None:
            raise AssertionError(f"the GET failed: {self.error!r}")
        assert self.stream is not None
        self.stream.close()
        return self.stream


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def relay(private_upstream: Distribution) -> Iterator[ThrottledRelay]:
    forwarder = ThrottledRelay(private_upstream.port, THROTTLE)
    try:
        yield forwarder
    finally:
        forwarder.close()


@pytest.fixture
def hostile() -> Iterator[HostileUpstream]:
    server = HostileUpstream()
    try:
        yield server
    finally:
        server.close()


# == 1. a download in flight, as the browser shows it ============================================


def test_page_shows_repositories_and_a_moving_download(
    trow_factory: Callable[..., TrowProcess],
    tmp_path: Path,
    private_upstream: Distribution,
    relay: ThrottledRelay,
    images: Images,
    skopeo: Skopeo,
    chromium: Chromium,
) -> None:
    """A pushed repository and its tag are listed; a cold blob download through the cache (a real
    registry behind a 2 MiB/s relay) shows as a row whose progress bar is part-way and moves
    between two looks; the script drew the page from /status.json; a screenshot of it is kept;
    and the client still gets the whole blob."""
    blob = make_big_blob(private_upstream, BLOB_SIZE, seed=11, repos=("big/one",))
    trow = start_proxy_trow(trow_factory, tmp_path, [proxy_entry(relay.host)])
    skopeo.push(images.source("multi"), trow.ref("status/app:v1"))
    url = f"http://{trow.host}/"

    client = BackgroundGet(trow.port or 0, f"/v2/f/{ALIAS}/big/one/blobs/{blob.digest}")
    assert wait_until(lambda: (download_item(trow, blob.digest) or {}).get("done", 0) > 0, DEADLINE), (
        f"no download of {blob.digest} in flight: {status_json(trow, live=True)['downloads']}"
    )

    first = parse(chromium.dump_dom(url))
    assert_script_ran(first)
    assert first.one("title").text() == "trow"
    row = first.by_id("repositories").one("tr", data_repo="status/app")
    assert [t.text() for t in row.one("td", cls="tags").find_all("span", cls="tag")] == ["v1"]
    done, size = progress_of(first, blob.digest)
    assert size == BLOB_SIZE
    assert 0 < done < size, f"progress {done} of {size}"
    clients = first.by_id("downloads").one("tr", data_digest=blob.digest).one("td", cls="clients").text()
    assert clients == "1"

    # Once trow has more bytes, a second look shows the bar further on.
    assert wait_until(lambda: (download_item(trow, blob.digest) or {}).get("done", 0) > done + MIB, DEADLINE)
    second = parse(chromium.dump_dom(url))
    assert_script_ran(second)
    later, size = progress_of(second, blob.digest)
    assert done < later < size, f"progress went from {done} to {later} of {size}"
    # The other live figures were drawn too: MiBs fetched so far, an uptime, a hit rate.
    assert re.fullmatch(r"\d+\.\d MiB", second.by_id("bytes-fetched").text()), second.by_id("bytes-fetched").text()
    assert re.fullmatch(r"\d+ min \d+ s", second.by_id("uptime").text()), second.by_id("uptime").text()
    assert re.fullmatch(r"\d+\.\d%", second.by_id("hit-rate").text()), second.by_id("hit-rate").text()

    # Nothing needs the bar to move any more: slower still, so the screenshot surely shows it.
    relay.rate = MIB / 2
    shot = chromium.screenshot(url, artifacts_dir() / "status-page.png")
    still = download_item(trow, blob.digest)
    assert still is not None and still["done"] < BLOB_SIZE, "the download finished before the screenshot"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10 * 1024, f"{shot}: {shot.stat().st_size} bytes"

    relay.rate = None  # the rest as fast as it comes
    stream = client.finish()
    assert stream.status == 200
    assert (stream.received, stream.digest) == (BLOB_SIZE, blob.digest)
    assert not stream.cut
    assert relay.forwarded >= BLOB_SIZE, "the blob did not come through the relay"
    assert wait_until(lambda: download_item(trow, blob.digest) is None, DEADLINE)
    assert_clean_log(trow)


# == 2. an upstream's error is text, however it reads ============================================


def test_hostile_reason_phrase_is_shown_as_text(
    trow_factory: Callable[..., TrowProcess],
    tmp_path: Path,
    hostile: HostileUpstream,
    chromium: Chromium,
) -> None:
    """An upstream whose status line reads C{500 <img ...><script>...</script>} is recorded as
    the upstream's last error; the page shows it as text in the upstream's row, both as served
    and as the script redraws it: no element comes of it, no script of it runs."""
    trow = start_proxy_trow(trow_factory, tmp_path, [proxy_entry(hostile.host, alias="evil")])
    response = trow.request("GET", "/v2/f/evil/some/app/manifests/latest")
    assert response.status == 502, response
    assert hostile.requests and "/v2/some/app/manifests/latest" in hostile.requests[0], hostile.requests
    assert wait_until(lambda: HOSTILE_PHRASE in str(status_json(trow, live=True)["upstreams"]), DEADLINE), (
        f"trow recorded no error with the phrase: {status_json(trow, live=True)['upstreams']}"
    )

    # As served: escaped text.
    html = page_html(trow)
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in html or (
        "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;" in html
    ), html
    assert "<script>document.title" not in html
    assert "<img src=x" not in html and '<img src="x"' not in html
    served = parse(html)
    served_cell = served.by_id("upstreams").one("tr", data_upstream=hostile.host).one("td", cls="error")
    assert HOSTILE_PHRASE in served_cell.text(), served_cell.text()
    assert served_cell.find_all("img") == [] and served_cell.find_all("script") == []

    # In the browser, after the script redrew the upstreams from /status.json.
    dom = chromium.dump_dom(f"http://{trow.host}/")
    document = parse(dom)
    assert_script_ran(document)
    cell = document.by_id("upstreams").one("tr", data_upstream=hostile.host).one("td", cls="error")
    assert HOSTILE_PHRASE in cell.text(), cell.text()
    assert cell.find_all("img") == [] and cell.find_all("script") == []
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom
    assert [e for e in document.find_all("script") if "pwned" in e.text()] == []
    assert [e.attrs.get("src") for e in document.find_all("script")] == ["/status.js"]
    assert [e for e in document.find_all("img") if e.attrs.get("src") == "x"] == []
    assert '<img src="x"' not in dom
    assert document.one("title").text() == "trow"
    assert_clean_log(trow)


# == 3. with auth on, an anonymous visitor sees no repository =====================================


def test_anonymous_visitor_sees_no_repository_names(
    trow_factory: Callable[..., TrowProcess],
    tmp_path: Path,
    images: Images,
    skopeo: Skopeo,
    chromium: Chromium,
) -> None:
    """With C{--user/--password} and C{auth: {anonymous: none}}: an anonymous visitor (JSON,
    the page as served, the page in chromium) learns no repository name, only a count; Basic
    credentials show the repository; /status-login challenges for them; and the password is
    never part of the JSON or the page."""
    config = tmp_path / "auth-config.yml"
    config.write_text(json.dumps({"auth": {"anonymous": "none"}}))
    trow = trow_factory("auth", extra_args=["--config", str(config), "--user", USER, "--password", PASSWORD])
    skopeo.push(images.source("multi"), trow.ref(f"{SECRET_REPO}:v1"), "--dest-creds", f"{USER}:{PASSWORD}")
    credentials = basic(USER, PASSWORD)

    anonymous = trow.request("GET", "/status.json")
    assert anonymous.status == 200, anonymous
    text = anonymous.body.decode()
    assert SECRET_REPO not in text and "secret-app" not in text
    assert PASSWORD not in text
    document = anonymous.json()
    assert document["repositories"]["items"] == [] and document["repositories"]["hidden"] >= 1
    assert document["visitor"] == {"auth": True, "user": None}

    html = page_html(trow)
    assert "secret-app" not in html and PASSWORD not in html
    dom = chromium.dump_dom(f"http://{trow.host}/")
    assert_script_ran(parse(dom))
    assert "secret-app" not in dom and PASSWORD not in dom
    assert parse(dom).by_id("repositories").find_all("tr", data_repo=SECRET_REPO) == []

    signed_in = trow.request("GET", "/status.json", headers=[credentials])
    assert signed_in.status == 200, signed_in
    assert [r["name"] for r in signed_in.json()["repositories"]["items"]] == [SECRET_REPO]
    assert PASSWORD not in signed_in.body.decode()
    signed_in_html = page_html(trow, [credentials])
    assert f'data-repo="{SECRET_REPO}"' in signed_in_html
    assert PASSWORD not in signed_in_html

    challenge = trow.request("GET", "/status-login")
    assert challenge.status == 401, challenge
    assert (challenge.header("WWW-Authenticate") or "").startswith("Basic "), challenge.headers
    wrong = trow.request("GET", "/status-login", headers=[basic(USER, "wrong")])
    assert wrong.status == 401, wrong
    good = trow.request("GET", "/status-login", headers=[credentials])
    assert (good.status, good.header("Location")) == (303, "/"), good
    assert_clean_log(trow)
