"""AdmissionReview v1 in, AdmissionReview v1 out: the webhook's logic, without HTTP.

    POST /validate-image  ->  validate_review(body, validator)
    POST /mutate-image    ->  mutate_review(body, mutator)

Both return a L{Reply}: 200 with an AdmissionReview whose response echoes the request's
C{apiVersion}, C{kind} and C{uid}, or 400 with a Kubernetes C{Status} saying what is wrong with
the body (the apiserver shows a Status's message in its error, so the message reaches the user).

Where the images are, by the kind of the admitted object (C{request.kind}, any version):

    Pod                                     spec
    ReplicationController                   spec.template.spec
    apps Deployment, StatefulSet,
         DaemonSet, ReplicaSet              spec.template.spec
    batch Job                               spec.template.spec
    batch CronJob                           spec.jobTemplate.spec.template.spec

and in each pod spec, C{containers[*].image}, C{initContainers[*].image} and
C{ephemeralContainers[*].image}. Only CREATE and UPDATE of the resource itself, or of
C{pods/ephemeralcontainers} (whose object is the Pod), are looked at: DELETE and CONNECT carry no
pod spec to judge, and other subresources (status, scale) cannot change images.

On UPDATE, images the old object already had are left alone: neither judged again nor rewritten.
A rule added later then does not block unrelated updates (labels, finalizers, scaling, kubectl
debug) of workloads admitted earlier, and a rewrite never changes the image of a running pod,
which would restart its container. Any image an update brings in is judged and rewritten.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Callable, Iterable, Mapping

import attrs

from trow.webhook.rules import Decision, Mutator, Validator

API_VERSION = "admission.k8s.io/v1"
REVIEW_KIND = "AdmissionReview"

_TEMPLATE = ("spec", "template", "spec")
# (API group, kind) -> where that kind keeps its pod spec.
POD_SPECS: Mapping[tuple[str, str], tuple[str, ...]] = {
    ("", "Pod"): ("spec",),
    ("", "ReplicationController"): _TEMPLATE,
    ("apps", "Deployment"): _TEMPLATE,
    ("apps", "StatefulSet"): _TEMPLATE,
    ("apps", "DaemonSet"): _TEMPLATE,
    ("apps", "ReplicaSet"): _TEMPLATE,
    ("batch", "Job"): _TEMPLATE,
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template", "spec"),
}
CONTAINER_FIELDS = ("containers", "initContainers", "ephemeralContainers")
_OPERATIONS = ("CREATE", "UPDATE")
_SUBRESOURCES = ("", "ephemeralcontainers")


class BadReview(ValueError):
    """The body is not a usable AdmissionReview; the message says which part is wrong."""


@attrs.frozen
class Reply:
    """What to answer: an HTTP status and a JSON document.

    @ivar status: 200 for a review answered, 400 for a malformed body.
    @ivar document: the AdmissionReview (200) or Kubernetes Status (400) to send as JSON.
    """

    status: int
    document: dict[str, Any]

    def body(self) -> bytes:
        """The document as the response body (C{Content-Type: application/json})."""
        return json.dumps(self.document, separators=(",", ":")).encode("utf-8")


@attrs.frozen
class Review:
    """The parts of an AdmissionReview request that the webhook uses."""

    api_version: str
    review_kind: str
    uid: str
    group: str
    kind: str
    operation: str
    sub_resource: str
    object: Mapping[str, Any] | None
    old_object: Mapping[str, Any] | None


@attrs.frozen
class ImageField:
    """One C{image} field of a container, with where it is in the object.

    @ivar path: the keys and indexes from the object's root to the C{image} value.
    @ivar image: the image as written.
    """

    path: tuple[str | int, ...]
    image: str

    @property
    def pointer(self) -> str:
        """The JSON pointer of the field, as JSONPatch wants it (C{/spec/containers/0/image})."""
        return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in self.path)

    @property
    def container(self) -> str:
        """The container, as a reader finds it in the manifest (C{spec.containers[0]})."""
        text = ""
        for part in self.path[:-1]:
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        return text


def _field(mapping: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...], required: bool) -> Any:
    value = mapping.get(key)
    if value is None:
        if required:
            raise BadReview(f"{where}{key} is missing")
        return None
    if not isinstance(value, kind):
        expected = "an object" if kind is dict else "a string"
        raise BadReview(f"{where}{key} must be {expected}, got {type(value).__name__}")
    return value


def parse_review(body: bytes) -> Review:
    """Read an AdmissionReview C{admission.k8s.io/v1} request; raise L{BadReview} if it is not."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise BadReview(f"the body is not JSON: {e}") from None
    if not isinstance(document, dict):
        raise BadReview(f"the body must be a JSON object (an AdmissionReview), got {type(document).__name__}")
    api_version = _field(document, "apiVersion", "", str, True)
    if api_version != API_VERSION:
        raise BadReview(f"apiVersion must be {API_VERSION}, got {api_version!r}")
    review_kind = _field(document, "kind", "", str, True)
    if review_kind != REVIEW_KIND:
        raise BadReview(f"kind must be {REVIEW_KIND}, got {review_kind!r}")
    request = _field(document, "request", "", dict, True)
    uid = _field(request, "uid", "request.", str, True)
    if not uid:
        raise BadReview("request.uid is empty")
    kind = _field(request, "kind", "request.", dict, True)
    return Review(
        api_version=api_version,
        review_kind=review_kind,
        uid=uid,
        group=_field(kind, "group", "request.kind.", str, False) or "",
        kind=_field(kind, "kind", "request.kind.", str, True),
        operation=_field(request, "operation", "request.", str, True),
        sub_resource=_field(request, "subResource", "request.", str, False) or "",
        object=_field(request, "object", "request.", dict, False),
        old_object=_field(request, "oldObject", "request.", dict, False),
    )


def images_of(obj: Mapping[str, Any] | None, group: str, kind: str) -> list[ImageField]:
    """Every container image of an object of this kind, in document order; none for kinds that
    hold no pod spec."""
    where = POD_SPECS.get((group, kind))
    spec: Any = obj
    for key in where or ():
        spec = spec.get(key) if isinstance(spec, dict) else None
    if where is None or not isinstance(spec, dict):
        return []
    found = []
    for field in CONTAINER_FIELDS:
        containers = spec.get(field)
        if not isinstance(containers, list):
            continue
        for i, container in enumerate(containers):
            # Missing or non-string images are the apiserver's to refuse, not a pull to judge.
            if isinstance(container, dict) and isinstance(container.get("image"), str):
                found.append(ImageField((*where, field, i, "image"), container["image"]))
    return found


def images_to_review(review: Review) -> list[ImageField]:
    """The images this request brings in: those of the object, minus, on UPDATE, those the old
    object already had. Empty for operations and subresources that cannot bring in images."""
    if review.operation not in _OPERATIONS or review.sub_resource not in _SUBRESOURCES:
        return []
    fields = images_of(review.object, review.group, review.kind)
    if review.operation == "UPDATE":
        old = {field.image for field in images_of(review.old_object, review.group, review.kind)}
        fields = [field for field in fields if field.image not in old]
    return fields


def _answer(review: Review, response: dict[str, Any]) -> Reply:
    return Reply(200, {"apiVersion": review.api_version, "kind": review.review_kind, "response": response})


def _bad_request(error: BadReview) -> Reply:
    message = f"malformed AdmissionReview: {error}"
    return Reply(
        400,
        {
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "code": 400,
            "reason": "BadRequest",
            "message": message,
        },
    )


def _handle(body: bytes, answer: Callable[[Review], dict[str, Any]]) -> Reply:
    try:
        review = parse_review(body)
    except BadReview as e:
        return _bad_request(e)
    return _answer(review, {"uid": review.uid, "allowed": True, **answer(review)})


def denial_message(denied: Iterable[tuple[Decision, list[str]]]) -> str:
    """One message naming every denied image as written, where it is, and why."""
    parts = [f'image "{decision.image}" in {", ".join(where)}: {decision.reason}' for decision, where in denied]
    return f"trow denied {len(parts)} image{'s' if len(parts) > 1 else ''}: " + "; ".join(parts)


def validate_review(body: bytes, validator: Validator) -> Reply:
    """Answer a validating AdmissionReview: allowed unless an image it brings in is denied, in
    which case the response is C{allowed: false} with a 403 status whose message names every
    denied image and the rule (or default) that denied it."""

    def answer(review: Review) -> dict[str, Any]:
        denied: dict[str, tuple[Decision, list[str]]] = {}
        for field in images_to_review(review):
            if field.image in denied:
                denied[field.image][1].append(field.container)
                continue
            decision = validator.check(field.image)
            if not decision.allowed:
                denied[field.image] = (decision, [field.container])
        if not denied:
            return {}
        return {"allowed": False, "status": {"code": 403, "message": denial_message(denied.values())}}

    return _handle(body, answer)


def mutate_review(body: bytes, mutator: Mutator | None) -> Reply:
    """Answer a mutating AdmissionReview: always allowed, with a base64 JSONPatch of C{replace}
    operations for the images to pull through trow, and no patch at all when none changes
    (nor when there is no C{mutator}: no C{image_mutation} configured)."""

    def answer(review: Review) -> dict[str, Any]:
        if mutator is None:
            return {}
        patch = []
        for field in images_to_review(review):
            rewritten = mutator.rewrite(field.image)
            if rewritten is not None and rewritten != field.image:
                patch.append({"op": "replace", "path": field.pointer, "value": rewritten})
        if not patch:
            return {}
        encoded = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode("utf-8")).decode("ascii")
        return {"patchType": "JSONPatch", "patch": encoded}

    return _handle(body, answer)
