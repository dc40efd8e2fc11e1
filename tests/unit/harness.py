"""In-memory harness for unit tests: a real Registry on a temp dir, driven through StubTreq.

Everything is synchronous: blocking work runs on an L{InlineWorker}, and StubTreq delivers
requests through memory, so a test reads a response with L{call} without a running reactor.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from treq.testing import StubTreq
from twisted.internet.defer import Deferred

from trow.api.registry import RegistryAPI
from trow.app import Stores, open_stores
from trow.registry.service import Registry
from trow.storage.postgres import PostgresMetadata
from trow.workers import InlineWorker


def result_of(d: "Deferred[Any]") -> Any:
    """The result of a Deferred that has already fired (raise its failure otherwise)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired: something in the request path waits on the reactor"
    outcome = results[0]
    if hasattr(outcome, "raiseException"):
        outcome.raiseException()
    return outcome


@attrs.define
class Response:
    """What a test looks at: status, headers (lower-cased names, every value) and body."""

    code: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    def error_code(self) -> str:
        return str(self.json()["errors"][0]["code"])


class Client:
    """Sends requests to an in-memory trow and returns L{Response}s."""

    def __init__(self, resource: Any) -> None:
        self.stub = StubTreq(resource)

    def request(self, method: str, url: str, body: bytes | None = None, headers: dict[str, Any] | None = None) -> Response:
        full = url if url.startswith("http") else "http://trow.test" + url
        d = self.stub.request(method, full, data=body, headers=headers or {})
        self.stub.flush()
        response = result_of(d)
        content = result_of(response.content())
        raw = {
            k.decode().lower(): [v.decode() for v in vs] for k, vs in response.headers.getAllRawHeaders()
        }
        return Response(response.code, raw, content)

    def get(self, url: str, **kw: Any) -> Response:
        return self.request("GET", url, **kw)

    def head(self, url: str, **kw: Any) -> Response:
        return self.request("HEAD", url, **kw)

    def put(self, url: str, body: bytes | None = None, **kw: Any) -> Response:
        return self.request("PUT", url, body=body, **kw)

    def post(self, url: str, body: bytes | None = None, **kw: Any) -> Response:
        return self.request("POST", url, body=body, **kw)

    def patch(self, url: str, body: bytes | None = None, **kw: Any) -> Response:
        return self.request("PATCH", url, body=body, **kw)

    def delete(self, url: str, **kw: Any) -> Response:
        return self.request("DELETE", url, **kw)


@attrs.define
class Trow:
    """A registry on a temp dir with everything a unit test may want to poke at."""

    root: str
    stores: Stores
    registry: Registry
    client: Client


def make_trow(root: str, max_manifest_size: int = 4 * 2**20) -> Trow:
    """Build an in-memory trow over the data dir C{root}."""
    worker = InlineWorker()
    stores = open_stores(root, worker, worker)
    registry = Registry(stores.blobs, stores.uploads, stores.metadata, max_manifest_size)
    return Trow(root, stores, registry, Client(RegistryAPI(registry).resource()))


def open_postgres(url: str, worker: Any = None, clock: Any = None) -> PostgresMetadata:
    """A PostgreSQL metadata store on C{url}, migrated and ready, for tests that run each
    metadata scenario on both backends."""
    kwargs = {} if clock is None else {"clock": clock}
    metadata = PostgresMetadata(url, worker or InlineWorker(), **kwargs)
    metadata.open()
    metadata.migrate_sync()
    return metadata
