"""The admission webhook's HTTP side: POST /validate-image and /mutate-image, and /healthz.

Only HTTP lives here; what is checked and rewritten is L{trow.webhook.admission}. The apiserver
appends C{?timeout=10s} to the configured path: routing ignores query strings, so that is fine.
"""

from __future__ import annotations

from typing import Any, Callable

from klein import Klein
from twisted.web.iweb import IRequest

from trow.api import health
from trow.api.http import send_bytes, send_json
from trow.metrics import Metrics
from trow.webhook.admission import Reply, mutate_review, validate_review
from trow.webhook.rules import Mutator, Validator

# The apiserver caps request bodies at 3 MiB; anything larger is not an AdmissionReview.
MAX_REVIEW_SIZE = 3 << 20


class WebhookAPI:
    """Klein app of the webhook listener."""

    app = Klein()

    def __init__(self, validator: Validator, mutator: Mutator | None, metrics: Metrics | None = None) -> None:
        self.validator = validator
        self.mutator = mutator
        self.metrics = metrics

    def resource(self) -> Any:
        """The twisted.web resource to serve."""
        return self.app.resource()

    @app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: IRequest) -> Any:
        _route(request, "healthz")
        return health.healthz(request)

    @app.route("/validate-image", methods=["POST"])
    def validate(self, request: IRequest) -> Any:
        _route(request, "validate")
        return self._review(request, "validate", lambda body: validate_review(body, self.validator))

    @app.route("/mutate-image", methods=["POST"])
    def mutate(self, request: IRequest) -> Any:
        _route(request, "mutate")
        # No image_mutation configured (mutator None): every pod is allowed unchanged.
        return self._review(request, "mutate", lambda body: mutate_review(body, self.mutator))

    def _review(self, request: IRequest, webhook: str, answer: Callable[[bytes], Reply]) -> bytes:
        def counted(body: bytes) -> Reply:
            reply = answer(body)
            if self.metrics is not None:
                self.metrics.webhook_decision(webhook, decision(reply))
            return reply

        return _review(request, counted)

    @app.route("/", branch=True)
    def not_found(self, request: IRequest) -> Any:
        _route(request, "unknown")
        return send_json(
            request, 404, {"message": f"no such endpoint: {request.path.decode('latin-1')}; use /validate-image or /mutate-image"}
        )


def _route(request: IRequest, name: str) -> None:
    # The route label of the request metrics (trow.api.site reads it when the request ends).
    request.trow_route = name  # type: ignore[attr-defined]


def decision(reply: Reply) -> str:
    """What an answer decided, for the metrics: C{allowed}, C{denied}, C{mutated} (allowed with
    a patch) or C{invalid} (the AdmissionReview was malformed)."""
    if reply.status != 200:
        return "invalid"
    response = reply.document.get("response") or {}
    if not response.get("allowed"):
        return "denied"
    return "mutated" if response.get("patch") else "allowed"


def _review(request: IRequest, answer: Callable[[bytes], Reply]) -> bytes:
    """Read the AdmissionReview (refusing oversized bodies) and send the answer as JSON."""
    content = request.content
    content.seek(0, 2)
    if content.tell() > MAX_REVIEW_SIZE:
        return send_json(request, 413, {"message": f"an AdmissionReview is at most {MAX_REVIEW_SIZE} bytes"})
    content.seek(0)
    reply = answer(content.read())
    return send_bytes(request, reply.status, reply.body(), "application/json")
