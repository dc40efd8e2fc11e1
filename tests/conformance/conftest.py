"""Targets and helpers for the conformance workflows.

Every workflow test talks to a L{Target}: something that takes one HTTP request (method, path,
body, headers) and returns C{(status, headers, body)}, with header names lower-cased and every
header line kept as its own list entry. Two targets exist, and the C{target} fixture runs each
test against both:

- C{memory}: a trow built by L{tests.unit.harness.make_trow} on a fresh data dir, driven through
  the harness's StubTreq client. Always runs. Bodies always travel with a Content-Length.
- C{replicas}: three real C{twistd -n trow} replicas on one PostgreSQL database and one data dir,
  each request of a test sent to the next replica in turn: every workflow (a chunked upload's
  POST, PATCHes and PUT, a tag pushed on one and read on another, a delete) crosses replicas.
- C{live}: a running registry at C{TROW_CONFORMANCE_URL} (for example
  C{http://127.0.0.1:8000}), or else a real C{twistd -n trow} process started for the session,
  spoken to with C{http.client}.
  It can also send C{Transfer-Encoding: chunked} bodies, as the newer conformance suite does for
  manifest PUTs and streamed PATCHes.

Repositories get fresh random names in every test, so a live registry that keeps data between
runs cannot make a test pass with leftovers.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import ssl
import tempfile
import uuid
from typing import Any, Iterator, Mapping, NamedTuple, Protocol, Sequence
from urllib.parse import urlencode, urlsplit

import pytest

from tests.conformance.data import INDEX, MANIFEST, Blob, Content, DataSet, Manifest
from tests.tools import require_tool
from tests.unit.harness import Trow, make_trow, result_of

LIVE_URL_VARIABLE = "TROW_CONFORMANCE_URL"
SEED_VARIABLE = "TROW_CONFORMANCE_SEED"

# The newer suite sends two Accept lines on manifest GET and HEAD; so do we, by default.
ACCEPT_BOTH = [INDEX, MANIFEST]

# Every code of the spec's error table, plus the legacy ones the v1.1 suite still accepts.
SPEC_ERROR_CODES = {
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
    "TAG_INVALID",
    "MANIFEST_UNVERIFIED",
}

Headers = Mapping[str, "str | Sequence[str]"]


class Reply(NamedTuple):
    """One HTTP response: status, headers (lower-cased names, one list entry per line), body."""

    status: int
    headers: dict[str, list[str]]
    body: bytes

    def values(self, name: str) -> list[str]:
        """Every line of header C{name}."""
        return self.headers.get(name.lower(), [])

    def header(self, name: str) -> str | None:
        """The first line of header C{name}, or None."""
        values = self.values(name)
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    def describe(self) -> str:
        """A short account of the reply, for assertion messages."""
        return f"{self.status} {self.headers} {self.body[:500]!r}"


class Target(Protocol):
    """A registry under test."""

    name: str
    supports_chunked: bool
    # Does the reply show every header as sent, Content-Length included, whatever the status?
    sees_framing_headers: bool

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Headers | None = None, *, chunked: bool = False
    ) -> Reply:
        """Send one request for C{path} (a path plus query, such as C{/v2/a/tags/list?n=1})."""


def _header_lines(headers: Headers | None) -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    for name, value in (headers or {}).items():
        if isinstance(value, str):
            lines.append((name, value))
        else:
            lines.extend((name, v) for v in value)
    return lines


_BODY_METHODS = ("POST", "PUT", "PATCH")


class MemoryTarget:
    """The in-memory trow of the unit-test harness, reached through its client's StubTreq.

    The requests are real HTTP/1.1 exchanges between twisted's client and server, in memory. The
    harness's C{Client.request} is bypassed for one reason: it returns headers as twisted's client
    parsed them, which moves a body's Content-Length out of the headers; here it is put back from
    the parsed length, so that tests can check it like on the wire.
    """

    name = "memory"
    supports_chunked = False
    sees_framing_headers = False

    def __init__(self, trow: Trow) -> None:
        self.trow = trow

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Headers | None = None, *, chunked: bool = False
    ) -> Reply:
        if chunked:
            raise NotImplementedError("the in-memory client always sends a Content-Length")
        # The client frames the body itself: a framing header of ours would confuse it.
        grouped: dict[str, list[str]] = {}
        for name, value in _header_lines(headers):
            if name.lower() not in ("content-length", "transfer-encoding"):
                grouped.setdefault(name, []).append(value)
        if body is None and method in _BODY_METHODS:
            body = b""
        stub: Any = self.trow.client.stub  # StubTreq sets its methods up at run time
        deferred = stub.request(method, "http://trow.test" + path, data=body, headers=grouped, allow_redirects=False)
        stub.flush()
        response = result_of(deferred)
        content = result_of(response.content())
        lines: dict[str, list[str]] = {}
        for name, values in response.headers.getAllRawHeaders():
            lines[name.decode("latin-1").lower()] = [v.decode("latin-1") for v in values]
        if lines.get("content-encoding") == [""]:
            # Left behind by the client's content decoder, never sent by the server.
            del lines["content-encoding"]
        # twisted's HTTP client moves a framing Content-Length from the headers to .length. It
        # cannot tell whether a 204 or 304 carried one, so none is made up for those.
        framed = method != "HEAD" and response.code >= 200 and response.code not in (204, 304)
        if "content-length" not in lines and framed and isinstance(response.length, int):
            lines["content-length"] = [str(response.length)]
        return Reply(response.code, lines, content)


class LiveTarget:
    """A registry over the network, as the official suites reach it (TLS is not verified).

    Like Go's client, it keeps one connection alive across requests, so that a response with
    wrong framing (a HEAD body, a Content-Length that lies) breaks the next request instead of
    going unnoticed. It reconnects only when the server said it would close.
    """

    name = "live"
    supports_chunked = True
    sees_framing_headers = True

    def __init__(self, url: str, timeout: float = 120.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{LIVE_URL_VARIABLE} must be an http:// or https:// URL, got {url!r}")
        if parts.path not in ("", "/"):
            raise ValueError(f"{LIVE_URL_VARIABLE} must be the registry root (no path), got {url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            if self.scheme == "https":
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                self._connection = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=context)
            else:
                self._connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._connection

    def close(self) -> None:
        """Close the kept-alive connection."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Headers | None = None, *, chunked: bool = False
    ) -> Reply:
        lines = _header_lines(headers)
        given = {name.lower() for name, _ in lines}
        connection = self._connect()
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            for name, value in lines:
                connection.putheader(name, value)
            if chunked:
                if "transfer-encoding" not in given:
                    connection.putheader("Transfer-Encoding", "chunked")
                connection.endheaders()
                data = body or b""
                # Several chunks of uneven size, so that the server has to reassemble them.
                step = max(1, min(len(data) // 3 + 1, 64 * 1024))
                for start in range(0, len(data), step):
                    piece = data[start : start + step]
                    connection.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                connection.send(b"0\r\n\r\n")
            else:
                if (body is not None or method in _BODY_METHODS) and "content-length" not in given:
                    connection.putheader("Content-Length", str(len(body or b"")))
                connection.endheaders(body)
            response = connection.getresponse()
            content = response.read()
            received: dict[str, list[str]] = {}
            for name, value in response.msg.items():
                received.setdefault(name.lower(), []).append(value)
            if response.will_close:
                self.close()
            return Reply(response.status, received, content)
        except BaseException:
            self.close()
            raise


class RoundRobinTarget:
    """Several replicas of one registry, each request sent to the next one in turn."""

    name = "replicas"
    supports_chunked = True
    sees_framing_headers = True

    def __init__(self, urls: Sequence[str]) -> None:
        self._targets = [LiveTarget(url) for url in urls]
        self._next = 0

    def close(self) -> None:
        for target in self._targets:
            target.close()

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Headers | None = None, *, chunked: bool = False
    ) -> Reply:
        target = self._targets[self._next % len(self._targets)]
        self._next += 1
        return target.request(method, path, body, headers, chunked=chunked)


# ------------------------------------------------------------------------------------------
# Locations and assertions shared by the workflows.


def location_path(location: str | None) -> str:
    """Path and query of a C{Location} (absolute or relative), as the suites use it."""
    assert location, "a Location header is required"
    parts = urlsplit(location)
    path = parts.path if parts.path.startswith("/") else "/" + parts.path
    return path + (f"?{parts.query}" if parts.query else "")


def with_params(location: str, **params: str) -> str:
    """C{location} with query parameters appended."""
    separator = "&" if "?" in location else "?"
    return location + separator + urlencode(params)


def assert_error(reply: Reply, statuses: int | Sequence[int], codes: Sequence[str] = ()) -> None:
    """The reply has one of C{statuses}; if it carries JSON, it is the spec's error body.

    With C{codes}, the first error code must be one of them.
    """
    wanted = (statuses,) if isinstance(statuses, int) else tuple(statuses)
    assert reply.status in wanted, f"expected {wanted}, got {reply.describe()}"
    if not reply.body:
        assert not codes, f"expected an error body with one of {codes}, got none"
        return
    try:
        document = reply.json()
    except ValueError:
        assert not codes, f"expected a JSON error body with one of {codes}, got {reply.body[:200]!r}"
        return
    errors = document.get("errors") if isinstance(document, dict) else None
    assert isinstance(errors, list) and errors, f"JSON error bodies are {{'errors': [...]}}, got {document}"
    for error in errors:
        assert isinstance(error, dict) and isinstance(error.get("code"), str), error
        assert error["code"] in SPEC_ERROR_CODES, f"{error['code']} is not a spec error code"
    if codes:
        assert errors[0]["code"] in codes, f"expected one of {codes}, got {errors[0]['code']}"


def assert_digest_header(reply: Reply, digest: str) -> None:
    """C{Docker-Content-Digest}, when sent (trow always sends it), names exactly C{digest}."""
    values = reply.values("Docker-Content-Digest")
    assert values == [digest], f"Docker-Content-Digest {values} != {digest}"


def assert_manifest_reply(reply: Reply, manifest: Manifest, head: bool = False) -> None:
    """A manifest GET or HEAD answer: 200, exact type, length, digest and (for GET) bytes."""
    assert reply.status == 200, reply.describe()
    assert reply.values("Content-Type") == [manifest.media_type]
    assert reply.values("Content-Length") == [str(manifest.size)]
    assert_digest_header(reply, manifest.digest)
    if head:
        assert reply.body == b""
    else:
        assert reply.body == manifest.content


def assert_blob_reply(reply: Reply, blob: Blob, head: bool = False) -> None:
    """A blob GET or HEAD answer: 200, exact length, digest, bytes, and a bare Content-Type."""
    assert reply.status == 200, reply.describe()
    assert reply.values("Content-Length") == [str(blob.size)]
    assert_digest_header(reply, blob.digest)
    content_types = reply.values("Content-Type")
    assert len(content_types) == 1 and ";" not in content_types[0], content_types
    if head:
        assert reply.body == b""
    else:
        assert reply.body == blob.data


def assert_range_header(reply: Reply, end: int) -> None:
    """C{Range} on an upload answer is the bare C{0-<end>} (no "bytes=").

    With nothing received (C{end} < 0) the format cannot say so: any C{0-<int>} will do.
    """
    ranges = reply.values("Range")
    if end < 0:
        assert len(ranges) == 1 and ranges[0].startswith("0-"), reply.describe()
        int(ranges[0][2:])
    else:
        assert ranges == [f"0-{end}"], reply.describe()


# ------------------------------------------------------------------------------------------
# Answers of the discovery endpoints.


def tag_list(reply: Reply, repo: Repo) -> list[str]:
    """The tags of a 200 tag-list answer, after checking its shape."""
    assert reply.status == 200, reply.describe()
    assert reply.values("Content-Type") == ["application/json"], reply.describe()
    document = reply.json()
    assert document["name"] == repo.name
    tags = document["tags"]
    assert isinstance(tags, list) and all(isinstance(t, str) for t in tags), document
    return tags


def referrers_index(reply: Reply) -> list[dict[str, Any]]:
    """The descriptors of a referrers answer, after checking it is a proper image index."""
    assert reply.status == 200, reply.describe()
    assert reply.values("Content-Type") == [INDEX], reply.describe()
    document = reply.json()
    assert document.get("schemaVersion") == 2, document
    assert document.get("mediaType") == INDEX, document
    manifests = document.get("manifests")
    assert isinstance(manifests, list), document
    return manifests


def normalised(descriptor: dict[str, Any]) -> dict[str, Any]:
    """A descriptor with an empty annotations map dropped (both mean "no annotations")."""
    result = dict(descriptor)
    if result.get("annotations") == {}:
        del result["annotations"]
    return result


def assert_exact_referrers(reply: Reply, expected: list[Manifest]) -> None:
    """The answer lists exactly C{expected} (any order), each descriptor exactly as the spec says."""
    listed = [normalised(d) for d in referrers_index(reply)]
    digests = [d.get("digest") for d in listed]
    assert len(digests) == len(set(digests)), f"duplicate referrers: {digests}"
    want = {m.digest: m.referrer_descriptor() for m in expected}
    assert {d["digest"]: d for d in listed} == want


# ------------------------------------------------------------------------------------------
# A repository on a target, with the request sequences the workflows share.


class Repo:
    """One repository of a target, and the request sequences every workflow uses."""

    def __init__(self, target: Target, name: str) -> None:
        self.target = target
        self.name = name

    def path(self, tail: str) -> str:
        return f"/v2/{self.name}/{tail}"

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Headers | None = None, *, chunked: bool = False
    ) -> Reply:
        """A request for C{path}: a full path (C{/v2/...}) or a tail under this repository."""
        full = path if path.startswith("/") else self.path(path)
        return self.target.request(method, full, body, headers, chunked=chunked)

    # Blobs.

    def head_blob(self, digest: str) -> Reply:
        return self.request("HEAD", f"blobs/{digest}")

    def get_blob(self, digest: str, headers: Headers | None = None) -> Reply:
        return self.request("GET", f"blobs/{digest}", headers=headers)

    def delete_blob(self, digest: str) -> Reply:
        return self.request("DELETE", f"blobs/{digest}")

    def start_upload(self, query: str = "") -> Reply:
        """POST to open an upload session, with C{Content-Length: 0} as the spec asks."""
        return self.request("POST", f"blobs/uploads/{query}", b"", {"Content-Length": "0"})

    def open_session(self) -> str:
        """Open an upload session; return its location (path and query)."""
        reply = self.start_upload()
        assert reply.status == 202, reply.describe()
        return location_path(reply.header("Location"))

    def put_upload(self, location: str, digest: str, body: bytes = b"", headers: Headers | None = None) -> Reply:
        """The closing PUT of an upload session."""
        all_headers = {"Content-Type": "application/octet-stream", **(headers or {})}
        return self.request("PUT", with_params(location, digest=digest), body, all_headers)

    def patch(self, location: str, body: bytes, content_range: str | None = None, *, chunked: bool = False) -> Reply:
        """A PATCH of C{body} to an upload session, with a C{Content-Range} if given."""
        headers = {"Content-Type": "application/octet-stream"}
        if content_range is not None:
            headers["Content-Range"] = content_range
        return self.request("PATCH", location, body, headers, chunked=chunked)

    def push_blob(self, blob: Blob, how: str = "monolithic") -> Reply:
        """Push C{blob} one of the ways the spec allows; assert the 201 and return it.

        C{how}: C{monolithic} (POST ?digest=), C{post-put}, C{stream} (one PATCH, no range) or
        C{chunked} (PATCHes with Content-Range).
        """
        if how == "monolithic":
            reply = self.request(
                "POST", f"blobs/uploads/?digest={blob.digest}", blob.data, {"Content-Type": "application/octet-stream"}
            )
        else:
            location = self.open_session()
            if how == "post-put":
                reply = self.put_upload(location, blob.digest, blob.data)
            elif how == "stream":
                patched = self.patch(location, blob.data)
                assert patched.status == 202, patched.describe()
                reply = self.put_upload(location_path(patched.header("Location")), blob.digest)
            elif how == "chunked":
                middle = blob.size // 2
                for start, end in ((0, middle), (middle, blob.size)):
                    if start == end:
                        continue
                    patched = self.patch(location, blob.data[start:end], f"{start}-{end - 1}")
                    assert patched.status == 202, patched.describe()
                    location = location_path(patched.header("Location"))
                reply = self.put_upload(location, blob.digest)
            else:
                raise ValueError(how)
        assert reply.status == 201, f"pushing {blob.digest} ({how}): {reply.describe()}"
        assert location_path(reply.header("Location")) == self.path(f"blobs/{blob.digest}")
        assert_digest_header(reply, blob.digest)
        return reply

    # Manifests.

    def head_manifest(self, reference: str, accept: Sequence[str] = ACCEPT_BOTH) -> Reply:
        return self.request("HEAD", f"manifests/{reference}", headers={"Accept": list(accept)})

    def get_manifest(self, reference: str, accept: Sequence[str] = ACCEPT_BOTH) -> Reply:
        return self.request("GET", f"manifests/{reference}", headers={"Accept": list(accept)})

    def delete_manifest(self, reference: str) -> Reply:
        return self.request("DELETE", f"manifests/{reference}")

    def put_manifest(
        self,
        manifest: Manifest,
        reference: str | None = None,
        *,
        content: bytes | None = None,
        chunked: bool | None = None,
        query: str = "",
    ) -> Reply:
        """PUT a manifest by digest (default) or tag, chunked when the target can (like the newer suite)."""
        use_chunked = self.target.supports_chunked if chunked is None else chunked
        return self.request(
            "PUT",
            f"manifests/{reference or manifest.digest}{query}",
            manifest.content if content is None else content,
            {"Content-Type": manifest.media_type},
            chunked=use_chunked,
        )

    def push_manifest(self, manifest: Manifest, reference: str | None = None, *, chunked: bool | None = None) -> Reply:
        """PUT a manifest and check the 201: Location, digest and (for a referrer) OCI-Subject."""
        reply = self.put_manifest(manifest, reference, chunked=chunked)
        assert reply.status == 201, f"pushing {manifest.digest} as {reference}: {reply.describe()}"
        assert location_path(reply.header("Location")) == self.path(f"manifests/{manifest.digest}")
        assert_digest_header(reply, manifest.digest)
        if manifest.subject is not None:
            assert reply.values("OCI-Subject") == [manifest.subject], reply.describe()
        return reply

    def push_dataset(self, dataset: DataSet, how: str = "monolithic") -> None:
        """Push a data set: blobs, manifests by digest in order, then its tags."""
        for blob in dataset.blobs:
            self.push_blob(blob, how)
        for manifest in dataset.manifests:
            self.push_manifest(manifest)
        for tag, manifest in dataset.tags.items():
            self.push_manifest(manifest, tag)

    # Discovery.

    def tags(self, query: str = "") -> Reply:
        return self.request("GET", f"tags/list{query}")

    def referrers(self, digest: str, artifact_type: str | None = None) -> Reply:
        query = "" if artifact_type is None else "?" + urlencode({"artifactType": artifact_type})
        return self.request("GET", f"referrers/{digest}{query}")


# ------------------------------------------------------------------------------------------
# Fixtures.

_SEED = int(os.environ.get(SEED_VARIABLE) or random.SystemRandom().randrange(2**32))


def pytest_report_header(config: pytest.Config) -> list[str]:
    live = os.environ.get(LIVE_URL_VARIABLE)
    return [
        f"conformance: seed {_SEED} (set {SEED_VARIABLE} to replay)",
        f"conformance: live target {live}" if live else "conformance: live target is a twistd trow started for the run",
    ]


@pytest.fixture(scope="session")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The live registry: C{TROW_CONFORMANCE_URL} if set, else a real C{twistd -n trow} process
    (the installed trow, as CI installs it) started for this session."""
    url = os.environ.get(LIVE_URL_VARIABLE)
    if url:
        yield url
        return
    require_tool("twistd", "'.[test]'", pip=True, why=f"to start a live trow, {LIVE_URL_VARIABLE} being unset")
    from tests.integration.conftest import TrowProcess

    process = TrowProcess(tmp_path_factory.mktemp("conformance-trow"))
    try:
        process.start()
        yield f"http://127.0.0.1:{process.port}"
        process.stop_cleanly()
    finally:
        process.close()


@pytest.fixture(scope="session")
def replica_urls(tmp_path_factory: pytest.TempPathFactory, postgres: Any) -> Iterator[list[str]]:
    """Three real trow replicas sharing one PostgreSQL database and one data dir."""
    from tests.integration.conftest import TrowProcess

    database = postgres.fresh_database()
    shared = tmp_path_factory.mktemp("conformance-replicas")
    processes = [
        TrowProcess(shared / f"replica{i}", data_dir=shared / "data", extra_args=["--database", database])
        for i in range(3)
    ]
    try:
        for process in processes:
            process.start()
        yield [f"http://127.0.0.1:{process.port}" for process in processes]
        for process in processes:
            process.stop_cleanly()
    finally:
        for process in processes:
            process.close()


@pytest.fixture(params=["memory", "replicas", "live"])
def target(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Target]:
    """The registry under test: the in-memory trow, three replicas taking turns, then the live
    one if configured."""
    if request.param == "memory":
        # These tests check the protocol, not durability: on tmpfs, trow's fsyncs cost nothing,
        # and on a busy disk they are most of the run time.
        shm = "/dev/shm"
        base = tempfile.mkdtemp(prefix="trow-conformance-", dir=shm) if os.access(shm, os.W_OK) else str(tmp_path)
        trow = make_trow(os.path.join(base, "data"))
        try:
            yield MemoryTarget(trow)
        finally:
            trow.stores.metadata.close()
            if base != str(tmp_path):
                shutil.rmtree(base, ignore_errors=True)
        return
    if request.param == "replicas":
        replicas = RoundRobinTarget(request.getfixturevalue("replica_urls"))
        try:
            yield replicas
        finally:
            replicas.close()
        return
    live = LiveTarget(request.getfixturevalue("live_url"))
    try:
        yield live
    finally:
        live.close()


@pytest.fixture
def chunked_target(target: Target) -> Target:
    """A target that can send Transfer-Encoding: chunked bodies (the live one)."""
    if not target.supports_chunked:
        pytest.skip("this target's client always sends a Content-Length")
    return target


@pytest.fixture
def wire_target(target: Target) -> Target:
    """A target whose replies show framing headers exactly as sent (the live one)."""
    if not target.sees_framing_headers:
        pytest.skip("this target's client hides framing headers of bodiless answers")
    return target


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """Randomness for content, reproducible from the run's seed and the test's id."""
    return random.Random(f"{_SEED}:{request.node.nodeid}")


@pytest.fixture
def content(rng: random.Random) -> Content:
    """A content builder digesting with sha256."""
    return Content(rng)


@pytest.fixture
def namespace() -> str:
    """A repository prefix no other test (or earlier run) uses."""
    return f"conformance/{uuid.uuid4().hex[:16]}"


@pytest.fixture
def repo(target: Target, namespace: str) -> Repo:
    """The main repository of a test (like the suites' OCI_NAMESPACE / OCI_REPO1)."""
    return Repo(target, f"{namespace}/repo1")


@pytest.fixture
def repo2(target: Target, namespace: str) -> Repo:
    """A second repository (the cross-mount namespace / OCI_REPO2)."""
    return Repo(target, f"{namespace}/repo2")
