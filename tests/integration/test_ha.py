"""Replicas: three real trow processes on one PostgreSQL database and one shared data dir.

Every test starts its own set of three ``twistd -n trow --database ...`` replicas (a fresh
database from the C{pg_url} fixture, a fresh shared data dir) and spreads one workflow across
them: a push on one and pulls on the others, an upload session whose requests land on different
replicas, a tag moved or a manifest deleted on one and read on another, a token issued by one and
used on the others. Then the failures a set must survive: PostgreSQL stopped under it, a replica
killed (kill -9) in the middle of a push, and the replica running the garbage collection pass
killed while it holds the set-wide lock. Last, a plain sqlite trow must refuse the shared data dir.

What a replica left on the shared volume is looked at directly: C{<data>/tmp/<replica-id>/}, the
replica id being C{<host>-<pid>-<random>}, so a scratch dir names the process that owns it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import quote, urlsplit

import pytest

from tests.images import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Layout, pseudo_random_chunks
from tests.integration.conftest import (
    LOOPBACK,
    MIB,
    Images,
    RawResponse,
    Skopeo,
    StreamingRequest,
    TrowProcess,
    assert_same_image,
    digest_of_stream,
    free_port,
    get_and_hash,
    parse_response,
    port_is_free,
    trow_command,
)

# Upper bound of every poll: a condition not reached by then fails the test (never a timing
# assertion: the polls end as soon as the condition holds).
POLL_TIMEOUT = 60.0
# Client timeout while the database is down: trow promises an answer within a few seconds, so a
# request still hanging after this long is a hang.
OUTAGE_CLIENT_TIMEOUT = 15.0


# -- the replica set -------------------------------------------------------------------------


@pytest.fixture
def make_replicas(tmp_path: Path, pg_url: str) -> Iterator[Callable[..., list[TrowProcess]]]:
    """Start the replicas of one test: C{make_replicas(name, extra_args=(), count=3)} returns
    started L{TrowProcess}es on C{tmp_path/name/data} and the test's own database. None outlives
    the test, and they are gone before that database is dropped."""
    made: list[TrowProcess] = []

    def make(name: str, extra_args: Sequence[str] = (), count: int = 3) -> list[TrowProcess]:
        shared = tmp_path / name
        replicas = [
            TrowProcess(
                shared / f"replica{i}", data_dir=shared / "data", extra_args=["--database", pg_url, *extra_args]
            )
            for i in range(count)
        ]
        made.extend(replicas)
        for replica in replicas:
            replica.start()
        return replicas

    try:
        yield make
    finally:
        for replica in made:
            replica.close()


def stop_all_cleanly(replicas: Sequence[TrowProcess]) -> None:
    """SIGTERM every running replica and check it shut down in order, with no error logged."""
    for replica in replicas:
        if replica.running:
            replica.stop_cleanly()


def scratch_dirs(data_dir: Path) -> dict[int, Path]:
    """The replicas' scratch dirs (C{tmp/<host>-<pid>-<random>/}) by the pid they name."""
    found: dict[int, Path] = {}
    tmp = data_dir / "tmp"
    if tmp.is_dir():
        for entry in tmp.iterdir():
            parts = entry.name.rsplit("-", 2)
            if entry.is_dir() and len(parts) == 3 and parts[1].isdigit():
                found[int(parts[1])] = entry
    return found


def scratch_of(replica: TrowProcess) -> Path:
    """The scratch dir of a running replica."""
    wait_for(lambda: replica.pid in scratch_dirs(replica.data_dir), f"a scratch dir for pid {replica.pid}")
    return scratch_dirs(replica.data_dir)[replica.pid]


def wait_for(condition: Callable[[], Any], what: str, timeout: float = POLL_TIMEOUT) -> Any:
    """Poll C{condition} until it returns something true (returned); fail after C{timeout}."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout:.0f}s")
        time.sleep(0.1)


def access_statuses(replica: TrowProcess) -> list[int]:
    """The status of every request in the replica's access log."""
    return [int(s) for s in re.findall(r'\[trow\.access#\w+\] \S+ "[^"]*" (\d{3}) ', replica.log())]


def assert_no_server_errors(replicas: Sequence[TrowProcess], allowed: frozenset[int] = frozenset()) -> None:
    """No 5xx answer (except C{allowed}) and no traceback in any replica's log."""
    for replica in replicas:
        log = replica.log()
        bad = [s for s in access_statuses(replica) if s >= 500 and s not in allowed]
        assert not bad, f"replica on port {replica.port} answered {bad}; log:\n{log}"
        assert "Traceback" not in log and "Unhandled" not in log, f"errors were logged:\n{log}"


# -- raw registry requests -------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def path_of(location: str | None) -> str:
    """The path (and query) of a Location header, relative or absolute."""
    assert location, "no Location header"
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


def push_blob(replica: TrowProcess, repo: str, data: bytes, auth: Sequence[tuple[str, str]] = ()) -> str:
    """Push C{data} as a blob in one monolithic POST; returns its digest."""
    digest = sha256(data)
    reply = replica.request(
        "POST",
        f"/v2/{repo}/blobs/uploads/?digest={digest}",
        headers=[("Content-Type", "application/octet-stream"), *auth],
        body=data,
    )
    assert reply.status == 201, reply
    assert reply.header("Docker-Content-Digest") == digest, reply
    return digest


def image_manifest(config: bytes, layers: Sequence[bytes]) -> bytes:
    """An OCI image manifest over C{config} and uncompressed C{layers}."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)} for layer in layers],
        }
    ).encode()


def push_image(
    replica: TrowProcess,
    repo: str,
    reference: str,
    config: bytes,
    layers: Sequence[bytes],
    auth: Sequence[tuple[str, str]] = (),
) -> tuple[str, bytes]:
    """Push the blobs of an image, then its manifest as C{reference}; returns (digest, bytes)."""
    for data in (config, *layers):
        push_blob(replica, repo, data, auth)
    manifest = image_manifest(config, layers)
    reply = replica.request(
        "PUT", f"/v2/{repo}/manifests/{reference}", headers=[("Content-Type", OCI_MANIFEST), *auth], body=manifest
    )
    assert reply.status == 201, reply
    assert reply.header("Docker-Content-Digest") == sha256(manifest), reply
    return sha256(manifest), manifest


def get_manifest(replica: TrowProcess, repo: str, reference: str, method: str = "GET", **kwargs: Any) -> RawResponse:
    return replica.request(method, f"/v2/{repo}/manifests/{reference}", headers=[("Accept", OCI_MANIFEST)], **kwargs)


def assert_manifest(reply: RawResponse, digest: str, content: bytes) -> None:
    assert reply.status == 200, reply
    assert reply.header("Docker-Content-Digest") == digest, reply
    assert reply.body == content


def assert_blob(reply: RawResponse, data: bytes) -> None:
    assert reply.status == 200, reply
    assert reply.header("Docker-Content-Digest") == sha256(data), reply
    assert reply.body == data


def assert_error(reply: RawResponse, status: int, code: str) -> None:
    assert reply.status == status, reply
    assert code in reply.error_codes(), reply


def open_session(replica: TrowProcess, repo: str) -> str:
    """POST a new upload session; returns its Location path."""
    reply = replica.request("POST", f"/v2/{repo}/blobs/uploads/")
    assert reply.status == 202, reply
    return path_of(reply.header("Location"))


def patch(replica: TrowProcess, location: str, chunk: bytes, start: int) -> RawResponse:
    """PATCH C{chunk} at C{start} with a Content-Range."""
    return replica.request(
        "PATCH",
        location,
        headers=[("Content-Type", "application/octet-stream"), ("Content-Range", f"{start}-{start + len(chunk) - 1}")],
        body=chunk,
    )


def chunk_of(size: int, seed: int) -> bytes:
    return b"".join(pseudo_random_chunks(size, seed))


class HeldRequest:
    """A request sent whole but for its last byte, so that two of them can be let go at once."""

    def __init__(self, replica: TrowProcess, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        assert replica.port is not None and body
        lines = [f"{method} {path} HTTP/1.1", f"Host: {replica.host}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers]
        lines.append(f"Content-Length: {len(body)}")
        self.sock = socket.create_connection((LOOPBACK, replica.port), timeout=120)
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body[:-1])
        self._last = body[-1:]

    def release(self) -> None:
        self.sock.sendall(self._last)

    def response(self) -> RawResponse:
        received = bytearray()
        while data := self.sock.recv(65536):
            received += data
        self.sock.close()
        return parse_response(bytes(received))


# -- 1. push and pull across replicas ----------------------------------------------------------


def test_push_on_one_pull_from_the_others(
    make_replicas: Callable[..., list[TrowProcess]], images: Images, skopeo: Skopeo, tmp_path: Path
) -> None:
    """A multi-layer image pushed with skopeo to replica 1 pulls byte-exact from replicas 2 and 3.
    Then a push spread across replicas: an image pushed to replica 2, a second one sharing its
    layers pushed to replica 3 (whose skopeo finds the shared layers already there), and both
    pulled from replica 1 with every digest and byte checked."""
    r1, r2, r3 = make_replicas("push")

    skopeo.push(images.source("multi"), r1.ref("ha/image:v1"))
    for i, replica in enumerate((r2, r3)):
        pulled = tmp_path / f"pulled-{i}"
        skopeo.pull(replica.ref("ha/image:v1"), f"oci:{pulled}:v1")
        assert_same_image(images.layout, "multi", pulled, "v1")
        assert skopeo.inspect_raw(replica.ref("ha/image:v1"), "--tls-verify=false") == images.manifest_bytes("multi")

    layout = Layout(str(tmp_path / "spread-source"))
    shared_layers = [{"base/os-release": b"ID=trow-ha\n"}, {"base/lib.bin": chunk_of(MIB + 77, 21)}]
    layout.image([], tag="a", gzip_layers=shared_layers)
    layout.image([], tag="b", gzip_layers=[*shared_layers, {"app/extra": b"only in b\n"}])
    skopeo.push(f"oci:{layout.path}:a", r2.ref("ha/spread:a"))
    skopeo.push(f"oci:{layout.path}:b", r3.ref("ha/spread:b"))

    pulled = tmp_path / "pulled-spread"
    for tag in ("a", "b"):
        skopeo.pull(r1.ref(f"ha/spread:{tag}"), f"oci:{pulled}:{tag}")
        assert_same_image(Path(layout.path), tag, pulled, tag)
    tags = r1.request("GET", "/v2/ha/spread/tags/list")
    assert tags.status == 200 and sorted(tags.json()["tags"]) == ["a", "b"], tags

    assert_no_server_errors([r1, r2, r3])
    stop_all_cleanly([r1, r2, r3])


# -- 2. upload sessions across replicas --------------------------------------------------------


def test_chunked_upload_across_replicas(make_replicas: Callable[..., list[TrowProcess]]) -> None:
    """An upload session's POST, PATCHes and PUT each go to another replica than the request
    before; a second PATCH at an offset already taken, sent to yet another replica, gets 416;
    every replica reports the session's offset as the last accepted PATCH left it, and the blob
    (the accepted chunks only) is served whole by every replica."""
    r1, r2, r3 = make_replicas("chunked")
    repo = "ha/chunked"
    # Chunks above trow's in-memory body limit, so that each is spooled to the replica's scratch dir.
    first, second = chunk_of(3 * MIB + 11, 1), chunk_of(2 * MIB + 5, 2)
    data = first + second
    digest = sha256(data)

    location = open_session(r1, repo)
    patched = patch(r2, location, first, 0)
    assert patched.status == 202, patched
    assert patched.header("Range") == f"0-{len(first) - 1}", patched
    # The same offset again, with other bytes, on another replica: refused, and nothing written.
    again = patch(r3, location, chunk_of(len(first), 9), 0)
    assert again.status == 416, again
    assert again.header("Range") == f"0-{len(first) - 1}", again
    for replica in (r1, r2, r3):
        status = replica.request("GET", path_of(patched.header("Location")))
        assert status.status == 204 and status.header("Range") == f"0-{len(first) - 1}", status

    patched = patch(r3, path_of(patched.header("Location")), second, len(first))
    assert patched.status == 202, patched
    assert patched.header("Range") == f"0-{len(data) - 1}", patched

    put = r1.request("PUT", with_digest(path_of(patched.header("Location")), digest))
    assert put.status == 201, put
    assert put.header("Docker-Content-Digest") == digest, put

    for replica in (r2, r3, r1):
        assert get_and_hash(replica, f"/v2/{repo}/blobs/{digest}") == (200, digest, len(data))
        head = replica.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        assert head.status == 200 and head.header("Content-Length") == str(len(data)), head

    assert_no_server_errors([r1, r2, r3])
    stop_all_cleanly([r1, r2, r3])


RACE_ROUNDS = 3
RACE_CHUNK = 32 * MIB


def test_racing_patches_on_two_replicas(make_replicas: Callable[..., list[TrowProcess]]) -> None:
    """Two PATCHes at the same offset of one session, let go at the same moment on two replicas,
    with different bytes: exactly one is taken (202), the other is refused with 416, the session
    holds exactly the winner's bytes, and the upload finishes (on the third replica) into the
    blob made of the first chunk and the winner's chunk, served byte-exact everywhere.

    A few rounds, each on a fresh session, since the two requests overlap on the server only
    most of the time."""
    r1, r2, r3 = make_replicas("race")
    repo = "ha/race"
    first = chunk_of(MIB + 3, 3)
    for round_ in range(RACE_ROUNDS):
        contenders = {r2.port: chunk_of(RACE_CHUNK, 100 + 2 * round_), r3.port: chunk_of(RACE_CHUNK, 101 + 2 * round_)}
        location = open_session(r1, repo)
        patched = patch(r1, location, first, 0)
        assert patched.status == 202, patched
        location = path_of(patched.header("Location"))

        headers = [("Content-Type", "application/octet-stream"), ("Content-Range", f"{len(first)}-{len(first) + RACE_CHUNK - 1}")]
        held = {
            replica.port: HeldRequest(replica, "PATCH", location, headers, contenders[replica.port])
            for replica in (r2, r3)
        }
        for request in held.values():
            request.release()
        replies = {port: request.response() for port, request in held.items()}

        statuses = sorted(reply.status for reply in replies.values())
        assert statuses == [202, 416], f"round {round_}: {replies}"
        winner = next(port for port, reply in replies.items() if reply.status == 202)
        data = first + contenders[winner]
        digest = sha256(data)
        status = r1.request("GET", location)
        assert status.status == 204 and status.header("Range") == f"0-{len(data) - 1}", status

        put = r1.request("PUT", with_digest(location, digest))
        loser = next(port for port in contenders if port != winner)
        holds_loser = sha256(first + contenders[loser]) in put.body.decode(errors="replace")
        assert put.status == 201, (
            f"round {round_}: the upload does not hold the winner's bytes"
            f"{' but exactly the refused (416) chunk' if holds_loser else ''}: {put}"
        )
        for replica in (r1, r2, r3):
            assert get_and_hash(replica, f"/v2/{repo}/blobs/{digest}") == (200, digest, len(data))

    assert_no_server_errors([r1, r2, r3])
    stop_all_cleanly([r1, r2, r3])


# -- 3. what one replica changes, the others see at once ---------------------------------------


def test_changes_are_seen_by_every_replica_at_once(make_replicas: Callable[..., list[TrowProcess]]) -> None:
    """A tag pushed on replica 1 and moved on replica 2 is served with the new digest by replica
    3 right away; a manifest deleted on one replica is 404 on the others at once, including one
    that served it by digest just before (its in-memory cache must not answer); a blob deleted
    on one replica likewise, after the others served it."""
    r1, r2, r3 = make_replicas("changes")
    repo = "ha/changes"
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    old_digest, old = push_image(r1, repo, "latest", config, [b"old layer"])
    assert_manifest(get_manifest(r3, repo, "latest"), old_digest, old)

    new_digest, new = push_image(r2, repo, "latest", config, [b"new layer"])
    assert_manifest(get_manifest(r3, repo, "latest"), new_digest, new)
    head = get_manifest(r1, repo, "latest", method="HEAD")
    assert head.status == 200 and head.header("Docker-Content-Digest") == new_digest, head

    # The old manifest is untagged now; r3 and r2 serve it by digest, then r1 deletes it.
    for replica in (r3, r2):
        assert_manifest(get_manifest(replica, repo, old_digest), old_digest, old)
    deleted = r1.request("DELETE", f"/v2/{repo}/manifests/{old_digest}")
    assert deleted.status == 202, deleted
    for replica in (r3, r2, r1):
        assert_error(get_manifest(replica, repo, old_digest), 404, "MANIFEST_UNKNOWN")
        assert get_manifest(replica, repo, old_digest, method="HEAD").status == 404
        assert_manifest(get_manifest(replica, repo, "latest"), new_digest, new)

    # A blob: served by r1 and r3, deleted on r2.
    lone = b"a blob that no manifest references"
    lone_digest = push_blob(r1, repo, lone)
    for replica in (r1, r3):
        assert_blob(replica.request("GET", f"/v2/{repo}/blobs/{lone_digest}"), lone)
    deleted = r2.request("DELETE", f"/v2/{repo}/blobs/{lone_digest}")
    assert deleted.status == 202, deleted
    for replica in (r1, r3, r2):
        assert_error(replica.request("GET", f"/v2/{repo}/blobs/{lone_digest}"), 404, "BLOB_UNKNOWN")
        assert replica.request("HEAD", f"/v2/{repo}/blobs/{lone_digest}").status == 404

    assert_no_server_errors([r1, r2, r3])
    stop_all_cleanly([r1, r2, r3])


# -- 4. tokens -------------------------------------------------------------------------------

USER = "ha-user"
PASSWORD = "ha-password-9f3c1e"


def basic(user: str, password: str) -> tuple[str, str]:
    return ("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


def login(replica: TrowProcess, repo: str, credentials: tuple[str, str]) -> RawResponse:
    scope = quote(f"repository:{repo}:pull,push", safe="")
    return replica.request("GET", f"/login?service=trow&scope={scope}", headers=[basic(*credentials)])


def test_token_from_one_replica_works_on_the_others(make_replicas: Callable[..., list[TrowProcess]]) -> None:
    """With auth on every replica (--user/--password), a token that one replica's /login issues
    lets a client push on a second replica and pull on the third; without it, or with it
    altered, the others answer 401. Each replica in turn issues the token."""
    replicas = make_replicas("auth", ["--user", USER, "--password", PASSWORD])
    repo = "ha/auth"
    for i, issuer in enumerate(replicas):
        pusher, puller = replicas[(i + 1) % 3], replicas[(i + 2) % 3]
        assert login(issuer, repo, (USER, "wrong-password")).status == 401
        issued = login(issuer, repo, (USER, PASSWORD))
        assert issued.status == 200, issued
        token = issued.json()["token"]

        data = f"pushed with a token from replica {i}".encode()
        digest = sha256(data)
        anonymous = pusher.request(
            "POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", headers=[("Content-Type", "application/octet-stream")], body=data
        )
        assert anonymous.status == 401, anonymous
        push_blob(pusher, repo, data, auth=[bearer(token)])

        assert_blob(puller.request("GET", f"/v2/{repo}/blobs/{digest}", headers=[bearer(token)]), data)
        assert puller.request("GET", f"/v2/{repo}/blobs/{digest}").status == 401
        # The same token with its signature altered: refused, so the check above is a real check.
        head, payload, signature = token.split(".")
        altered = ".".join([head, payload, ("A" if signature[0] != "A" else "B") + signature[1:]])
        assert puller.request("GET", f"/v2/{repo}/blobs/{digest}", headers=[bearer(altered)]).status == 401

    assert_no_server_errors(replicas)
    stop_all_cleanly(replicas)


# -- 5. PostgreSQL down ----------------------------------------------------------------------


def test_database_outage(
    make_replicas: Callable[..., list[TrowProcess]],
    postgres: Any,
    images: Images,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    """PostgreSQL stopped under live replicas: requests that need it answer 503 UNAVAILABLE
    (OCI JSON, Retry-After) instead of hanging; /readiness says 503 and /healthz 200; a manifest
    by digest and a blob that a replica served before are still served by it. Once PostgreSQL is
    back, every replica becomes ready again by itself, and a push and a pull work. No 500 and
    no traceback at any point."""
    r1, r2, r3 = make_replicas("outage")
    repo = "ha/outage"
    skopeo.push(images.source("multi"), r1.ref(f"{repo}:v1"))
    digest = images.refs["multi"]["digest"]
    manifest = images.manifest_bytes("multi")
    layer_digest, layer_size = images.tree("multi")[-1]
    # r2 serves the manifest by digest and a layer before the outage.
    assert_manifest(get_manifest(r2, repo, digest), digest, manifest)
    assert get_and_hash(r2, f"/v2/{repo}/blobs/{layer_digest}") == (200, layer_digest, layer_size)

    postgres.stop()
    try:
        needs_database = [
            (r2, "GET", f"/v2/{repo}/manifests/v1"),
            (r2, "GET", f"/v2/{repo}/tags/list"),
            (r1, "POST", f"/v2/{repo}/blobs/uploads/"),
            (r3, "GET", f"/v2/{repo}/manifests/{digest}"),  # r3 never served it
            (r3, "GET", f"/v2/{repo}/blobs/{layer_digest}"),
        ]
        with ThreadPoolExecutor(len(needs_database) + 3) as pool:
            answers = [
                pool.submit(replica.request, method, path, timeout=OUTAGE_CLIENT_TIMEOUT)
                for replica, method, path in needs_database
            ]
            readiness = [
                pool.submit(replica.request, "GET", "/readiness", timeout=OUTAGE_CLIENT_TIMEOUT)
                for replica in (r1, r2, r3)
            ]
            for (replica, method, path), answer in zip(needs_database, answers):
                reply = answer.result()
                assert reply.status == 503, f"{method} {path}: {reply}"
                assert reply.header("Content-Type") == "application/json", reply
                assert reply.error_codes() == ["UNAVAILABLE"], reply
                assert int(reply.header("Retry-After") or "") > 0, reply
            for answer in readiness:
                assert answer.result().status == 503, answer.result()
        for replica in (r1, r2, r3):
            healthz = replica.request("GET", "/healthz", timeout=OUTAGE_CLIENT_TIMEOUT)
            assert healthz.status == 200, healthz

        # What r2 served before, it still serves.
        assert_manifest(get_manifest(r2, repo, digest, timeout=OUTAGE_CLIENT_TIMEOUT), digest, manifest)
        assert get_and_hash(r2, f"/v2/{repo}/blobs/{layer_digest}") == (200, layer_digest, layer_size)
    finally:
        if not postgres.running:
            postgres.start()

    for replica in (r1, r2, r3):
        wait_for(lambda: replica.request("GET", "/readiness").status == 200, f"replica {replica.port} ready again")
    skopeo.push(images.source("multiarch"), r3.ref(f"{repo}:after"), "--all")
    pulled = tmp_path / "pulled"
    skopeo.pull(r1.ref(f"{repo}:after"), f"oci:{pulled}:after", "--all")
    assert_same_image(images.layout, "multiarch", pulled, "after")
    skopeo.pull(r2.ref(f"{repo}:v1"), f"oci:{pulled}:v1")
    assert_same_image(images.layout, "multi", pulled, "v1")

    assert_no_server_errors([r1, r2, r3], allowed=frozenset({503}))
    stop_all_cleanly([r1, r2, r3])


# -- 6. a replica killed in the middle of a push -----------------------------------------------

BIG_UPLOAD = 96 * MIB
BIG_SEED = 77


def largest_file(directory: Path) -> int:
    sizes = [0]
    if directory.is_dir():
        for entry in directory.iterdir():
            try:
                sizes.append(entry.stat().st_size)
            except FileNotFoundError:  # renamed or removed since the listing
                pass
    return max(sizes)


def test_replica_killed_during_a_push(
    make_replicas: Callable[..., list[TrowProcess]], images: Images, skopeo: Skopeo, tmp_path: Path
) -> None:
    """kill -9 of the replica receiving a large blob: the other replicas keep serving (pulls and a
    new push), what was committed before is all there and the half-sent blob is not; the killed
    replica, restarted beside its old scratch dir, works again, including pushing that blob."""
    r1, r2, r3 = make_replicas("kill")
    skopeo.push(images.source("multi"), r1.ref("ha/before:v1"))
    digest = digest_of_stream(BIG_UPLOAD, BIG_SEED)

    scratch = scratch_of(r2)
    upload = StreamingRequest(r2, "PATCH", open_session(r2, "ha/big"), BIG_UPLOAD, BIG_SEED)
    try:
        reached = upload.send_until(lambda: upload.sent >= 32 * MIB and largest_file(scratch) >= 8 * MIB)
        assert reached, f"replica 2 spooled only {largest_file(scratch)} bytes while {upload.sent} were sent"
        r2.kill()
    finally:
        upload.abandon()
    assert largest_file(scratch) > 0, "the kill should leave a partial body in the dead replica's scratch dir"

    # The survivors serve what was there and take new pushes.
    for i, replica in enumerate((r1, r3)):
        pulled = tmp_path / f"survivor-{i}"
        skopeo.pull(replica.ref("ha/before:v1"), f"oci:{pulled}:v1")
        assert_same_image(images.layout, "multi", pulled, "v1")
        assert_error(replica.request("GET", f"/v2/ha/big/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    skopeo.push(images.source("multiarch"), r3.ref("ha/during:v1"), "--all")

    r2.start()
    assert scratch_of(r2) != scratch, "the restarted replica must get a scratch dir of its own"
    pulled = tmp_path / "restarted"
    skopeo.pull(r2.ref("ha/during:v1"), f"oci:{pulled}:during", "--all")
    assert_same_image(images.layout, "multiarch", pulled, "during")
    skopeo.pull(r2.ref("ha/before:v1"), f"oci:{pulled}:before")
    assert_same_image(images.layout, "multi", pulled, "before")

    patched = StreamingRequest(r2, "PATCH", open_session(r2, "ha/big"), BIG_UPLOAD, BIG_SEED).finish()
    assert patched.status == 202, patched
    put = r2.request("PUT", with_digest(path_of(patched.header("Location")), digest))
    assert put.status == 201, put
    for replica in (r1, r3, r2):
        assert get_and_hash(replica, f"/v2/ha/big/blobs/{digest}") == (200, digest, BIG_UPLOAD)

    assert_no_server_errors([r1, r2, r3])
    stop_all_cleanly([r1, r2, r3])


# -- 7. the replica running a GC pass killed ----------------------------------------------------

GC_SETTLE = 10  # seconds: the pass sleeps this long with the files it moved aside


def gc_passes(replica: TrowProcess) -> int:
    """How many garbage collection passes this run of the replica finished."""
    return replica.log().count("gc pass removed")


def quarantined(data_dir: Path, size: int) -> list[Path]:
    """Blob files of C{size} bytes that a GC pass moved aside (C{tmp/<replica>/gc-*})."""
    found = []
    for path in sorted(data_dir.glob("tmp/*/gc-*")):
        try:
            if path.stat().st_size == size:
                found.append(path)
        except FileNotFoundError:  # put back or deleted since the listing
            pass
    return found


def test_replica_killed_during_gc_pass(
    make_replicas: Callable[..., list[TrowProcess]], images: Images, skopeo: Skopeo, tmp_path: Path
) -> None:
    """kill -9 of the replica whose GC pass waits with an unreferenced blob moved aside: its
    advisory lock goes with its connection, so another replica runs passes again, ends the dead
    pass's quarantine (the file aside is deleted) and nothing linked is lost: the image pushed
    before pulls byte-exact from every replica, the killed one restarted included, and the
    collected blob can be pushed again and served."""
    config = tmp_path / "gc.yaml"
    config.write_text(f"gc:\n  interval: 1s\n  grace: 1s\n  settle: {GC_SETTLE}s\n")
    replicas = make_replicas("gc", ["--config", str(config)])
    data_dir = replicas[0].data_dir
    skopeo.push(images.source("multi"), replicas[0].ref("ha/kept:v1"))

    junk = chunk_of(MIB + 9, 55)
    junk_digest = push_blob(replicas[1], "ha/junk", junk)
    junk_file = data_dir / "blobs" / "sha256" / junk_digest[7:9] / junk_digest[7:]
    assert junk_file.exists()

    # Some pass sweeps the junk's link, moves its file aside and sleeps in its quarantine.
    aside = wait_for(
        lambda: not junk_file.exists() and quarantined(data_dir, len(junk)),
        "a GC pass to move the unreferenced blob aside",
    )
    assert len(aside) == 1 and sha256(aside[0].read_bytes()) == junk_digest, aside
    owner = int(aside[0].parent.name.rsplit("-", 2)[1])
    victim = next(replica for replica in replicas if replica.pid == owner)
    survivors = [replica for replica in replicas if replica is not victim]
    before = {replica.port: gc_passes(replica) for replica in survivors}
    victim.kill()

    wait_for(
        lambda: any(gc_passes(replica) > before[replica.port] for replica in survivors),
        "a surviving replica to run a GC pass",
    )
    # After the settle time, a survivor's pass ends the dead pass's quarantine: the copy aside goes.
    wait_for(lambda: not aside[0].exists(), "the file the dead pass moved aside to be deleted")
    assert not junk_file.exists()

    victim.start()
    for i, replica in enumerate(replicas):
        pulled = tmp_path / f"pulled-{i}"
        skopeo.pull(replica.ref("ha/kept:v1"), f"oci:{pulled}:v1")
        assert_same_image(images.layout, "multi", pulled, "v1")
    assert_error(survivors[0].request("GET", f"/v2/ha/junk/blobs/{junk_digest}"), 404, "BLOB_UNKNOWN")
    push_blob(survivors[1], "ha/junk", junk)
    for replica in replicas:
        assert_blob(replica.request("GET", f"/v2/ha/junk/blobs/{junk_digest}"), junk)

    assert_no_server_errors(replicas)
    stop_all_cleanly(replicas)


# -- 8. the shared data dir refused by a plain sqlite start --------------------------------------


def test_sqlite_start_refuses_the_shared_data_dir(make_replicas: Callable[..., list[TrowProcess]]) -> None:
    """A trow started without --database on the replicas' data dir (while they run) stops before
    binding its port, with one clear line that names the data dir and --database, exit status 1,
    and leaves no sqlite database there."""
    (replica,) = make_replicas("sqlite", count=1)
    data_dir = replica.data_dir
    port = free_port()
    result = subprocess.run(
        trow_command(["--listen", f"tcp:{port}:interface={LOOPBACK}", "--data-dir", str(data_dir)]),
        cwd=data_dir.parent,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("trow: error: "), lines
    assert str(data_dir) in lines[0] and "--database" in lines[0], lines
    assert "Traceback" not in result.stdout + result.stderr
    assert "starting on" not in result.stdout + result.stderr
    assert port_is_free(port)
    assert not (data_dir / "trow.db").exists()
    assert replica.request("GET", "/readiness").status == 200
    stop_all_cleanly([replica])
