"""The webhook's HTTP side, in memory: size limit, routes, and the no-mutation default."""

from __future__ import annotations

import json

from treq.testing import StubTreq

from tests.unit.harness import result_of
from trow.api.webhook import MAX_REVIEW_SIZE, WebhookAPI
from trow.config import Config
from trow.webhook.rules import Validator

REVIEW = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "u-1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE",
        "object": {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": "a", "image": "nginx"}]}},
    },
}


def post(path: str, body: bytes) -> tuple[int, dict]:  # type: ignore[type-arg]
    stub = StubTreq(WebhookAPI(Validator.from_config(Config()), None).resource())
    d = stub.post("https://webhook.test" + path, data=body)
    stub.flush()
    response = result_of(d)
    return response.code, json.loads(result_of(response.content()))


def test_oversized_review_is_413() -> None:
    """A body larger than any AdmissionReview the apiserver sends is refused unread, with 413."""
    code, document = post("/validate-image", b" " * (MAX_REVIEW_SIZE + 1))
    assert code == 413
    assert str(MAX_REVIEW_SIZE) in document["message"]


def test_mutation_without_config_allows_unchanged() -> None:
    """With no image_mutation section, /mutate-image allows every pod and sends no patch."""
    code, document = post("/mutate-image?timeout=5s", json.dumps(REVIEW).encode())
    assert code == 200
    assert document["response"] == {"uid": "u-1", "allowed": True}


def test_unknown_path_is_404_json() -> None:
    """Paths other than the two admission endpoints get a JSON 404 naming them."""
    code, document = post("/v2/", b"{}")
    assert code == 404
    assert "/validate-image" in document["message"]
