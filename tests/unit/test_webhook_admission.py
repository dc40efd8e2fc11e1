"""trow.webhook.admission: AdmissionReview v1 in and out, for validation and for mutation.

The fixtures in fixtures/admission/ are shaped like the apiserver sends them. Every workload has
C{nginx:1.25} in C{containers[0]} and C{ghcr.io/acme/migrate:2.0} in C{initContainers[0]} of its
pod template; the Pod has C{nginx:1.25}, C{quay.io/prometheus/node-exporter:v1.8.1} and an init
container C{busybox@sha256:...}. Reference: section 6 of the product reference.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from trow.config import config_from_dict
from trow.webhook.admission import ImageField, Reply, mutate_review, validate_review
from trow.webhook.rules import Mutator, Validator

FIXTURES = Path(__file__).parent / "fixtures" / "admission"
TROW = "trow.example.com"
EVIL = "evil.example.com/miner:1"
BUSYBOX_DIGEST = "busybox@sha256:" + "9c" * 32

WORKLOADS = {
    "deployment-create.json": "/spec/template/spec",
    "statefulset-create.json": "/spec/template/spec",
    "daemonset-create.json": "/spec/template/spec",
    "replicaset-create.json": "/spec/template/spec",
    "job-create.json": "/spec/template/spec",
    "replicationcontroller-create.json": "/spec/template/spec",
    "cronjob-create.json": "/spec/jobTemplate/spec/template/spec",
}

# Every image field of every fixture: (fixture, JSON pointer of the image in request.object).
IMAGE_FIELDS = [
    ("pod-create.json", "/spec/containers/0/image"),
    ("pod-create.json", "/spec/containers/1/image"),
    ("pod-create.json", "/spec/initContainers/0/image"),
    ("pod-update.json", "/spec/containers/0/image"),
    ("pod-ephemeralcontainers.json", "/spec/ephemeralContainers/0/image"),
] + [(name, f"{base}/{field}/0/image") for name, base in WORKLOADS.items() for field in ("containers", "initContainers")]


def load(name: str) -> dict[str, Any]:
    """A fixture AdmissionReview as a dict."""
    document: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return document


def encode(document: Any) -> bytes:
    """A document as the request body."""
    return json.dumps(document).encode()


def set_at(obj: Any, pointer: str, value: Any) -> None:
    """Set the value at a JSON pointer (no escapes needed for the paths used here)."""
    *parents, last = [int(p) if p.isdigit() else p for p in pointer.split("/")[1:]]
    for part in parents:
        obj = obj[part]
    obj[last] = value


def validator(default: str = "Allow", allow: Any = (), deny: Any = ()) -> Validator:
    """A validator from a YAML-shaped image_validation section, with trow at TROW."""
    section = {"default": default, "allow": list(allow), "deny": list(deny)}
    return Validator.from_config(config_from_dict({"image_validation": section}), TROW)


def mutator(registries: Any = ("docker.io", "ghcr.io")) -> Mutator:
    """A mutator from a YAML-shaped image_mutation section, with trow at TROW."""
    return Mutator.from_config(config_from_dict({"image_mutation": {"registries": list(registries)}}), TROW)


def validate(document: Any, rules: Validator | None = None) -> dict[str, Any]:
    """The response of a validating review that must be answered with 200."""
    reply = validate_review(encode(document), rules or validator())
    assert reply.status == 200, reply.document
    response: dict[str, Any] = reply.document["response"]
    return response


def patch_of(document: Any, rules: Mutator | None = None) -> list[dict[str, Any]] | None:
    """The decoded JSONPatch of a mutating review (None when there is none)."""
    reply = mutate_review(encode(document), rules or mutator())
    assert reply.status == 200, reply.document
    response = reply.document["response"]
    assert response["allowed"] is True
    if "patch" not in response:
        assert "patchType" not in response
        return None
    assert response["patchType"] == "JSONPatch"
    patch: list[dict[str, Any]] = json.loads(base64.b64decode(response["patch"], validate=True))
    return patch


# -- the response envelope ---------------------------------------------------------------------


def test_response_echoes_api_version_kind_and_uid() -> None:
    """The answer is an AdmissionReview v1 whose response carries the request's uid."""
    reply = validate_review(encode(load("pod-create.json")), validator())
    assert reply.status == 200
    assert reply.document["apiVersion"] == "admission.k8s.io/v1"
    assert reply.document["kind"] == "AdmissionReview"
    assert reply.document["response"]["uid"] == "b5a3f9e2-1c4d-4e8f-9a6b-0d2c3e4f5a6b"


def test_allowed_review_says_allowed_and_nothing_else() -> None:
    """An allowed request gets allowed: true, and no status to confuse the apiserver."""
    assert validate(load("pod-create.json")) == {"uid": "b5a3f9e2-1c4d-4e8f-9a6b-0d2c3e4f5a6b", "allowed": True}


def test_reply_body_is_the_document_as_json() -> None:
    """Reply.body() is what the HTTP layer sends: the document, JSON-encoded."""
    reply = validate_review(encode(load("pod-create.json")), validator())
    assert json.loads(reply.body()) == reply.document


# -- validation: which images are judged -------------------------------------------------------


@pytest.mark.parametrize(("fixture", "pointer"), IMAGE_FIELDS)
def test_denied_image_in_every_field_and_kind_is_refused(fixture: str, pointer: str) -> None:
    """A denied image anywhere a pod spec keeps one, in any kind that holds a pod spec, is refused
    with a 403 naming the image and the container it is in."""
    document = load(fixture)
    set_at(document["request"]["object"], pointer, EVIL)
    response = validate(document, validator("Allow", deny=["evil.example.com"]))
    container = ".".join(pointer.split("/")[1:-2]) + f"[{pointer.split('/')[-2]}]"
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert f'image "{EVIL}" in {container}: {EVIL} matches deny rule "evil.example.com"' in response["status"]["message"]


def test_kind_is_recognised_in_any_version() -> None:
    """A CronJob sent as batch/v1beta1 keeps its pod spec at the same place and is judged."""
    document = load("cronjob-create.json")
    document["request"]["kind"]["version"] = "v1beta1"
    assert validate(document, validator("Deny"))["allowed"] is False


def test_denial_names_every_denied_image_and_its_reason() -> None:
    """Two denied images, for two different reasons, are both named with their reasons; the
    allowed one is not."""
    rules = validator("Deny", allow=["docker.io/library/nginx"], deny=["quay.io/prometheus/"])
    response = validate(load("pod-create.json"), rules)
    assert response["status"]["message"] == (
        "trow denied 2 images: "
        'image "quay.io/prometheus/node-exporter:v1.8.1" in spec.containers[1]: '
        'quay.io/prometheus/node-exporter:v1.8.1 matches deny rule "quay.io/prometheus/"; '
        f'image "{BUSYBOX_DIGEST}" in spec.initContainers[0]: '
        f"docker.io/library/{BUSYBOX_DIGEST} matches no allow or deny rule, and image_validation.default is Deny"
    )


def test_denied_image_is_named_as_written() -> None:
    """The message quotes the image as the manifest writes it, not its normalised form, so the
    user can find it."""
    response = validate(load("deployment-create.json"), validator("Allow", deny=["docker.io/library/nginx"]))
    assert 'image "nginx:1.25" in spec.template.spec.containers[0]' in response["status"]["message"]


def test_image_used_twice_is_named_once_with_both_places() -> None:
    """The same denied image in two containers is one entry listing both containers."""
    document = load("pod-create.json")
    set_at(document["request"]["object"], "/spec/initContainers/0/image", "nginx:1.25")
    response = validate(document, validator("Allow", deny=["nginx"]))
    assert response["status"]["message"] == (
        'trow denied 1 image: image "nginx:1.25" in spec.containers[0], spec.initContainers[0]: '
        'docker.io/library/nginx:1.25 matches deny rule "nginx"'
    )


def test_invalid_image_reference_is_refused_with_why() -> None:
    """A reference trow cannot parse is refused, and the message says what is wrong with it."""
    document = load("pod-create.json")
    set_at(document["request"]["object"], "/spec/containers/0/image", "Nginx:1")
    response = validate(document)
    assert response["allowed"] is False
    assert "not a valid image reference: repository 'Nginx' must be lowercase" in response["status"]["message"]


def test_proxy_path_image_is_judged_as_its_upstream() -> None:
    """An image already rewritten to trow's proxy is judged as the upstream image it pulls."""
    document = load("pod-create.json")
    set_at(document["request"]["object"], "/spec/containers/0/image", f"{TROW}/f/quay.io/evil/miner:1")
    response = validate(document, validator("Allow", allow=[f"{TROW}/"], deny=["quay.io/evil"]))
    assert "trow's proxy path for quay.io/evil/miner:1, which matches deny rule" in response["status"]["message"]


def test_object_without_images_is_allowed() -> None:
    """A pod spec with no containers brings in no image, so even a default Deny allows it."""
    document = load("pod-create.json")
    spec = document["request"]["object"]["spec"]
    spec["containers"], spec["initContainers"] = [], []
    assert validate(document, validator("Deny"))["allowed"] is True


def test_delete_is_allowed() -> None:
    """DELETE carries no object to judge; it is allowed whatever the rules."""
    assert validate(load("pod-delete.json"), validator("Deny"))["allowed"] is True


def test_unknown_kind_is_allowed() -> None:
    """Kinds that hold no pod spec (a ConfigMap with an 'image' key) are not judged."""
    assert validate(load("configmap-create.json"), validator("Allow", deny=["evil.example.com"]))["allowed"] is True


def test_update_judges_the_images_it_brings_in() -> None:
    """On UPDATE the new image (nginx:1.26) is judged, and only it: the unchanged ones are not named."""
    response = validate(load("pod-update.json"), validator("Deny"))
    assert response["status"]["message"].startswith('trow denied 1 image: image "nginx:1.26" in spec.containers[0]')


def test_update_leaves_images_the_old_object_had() -> None:
    """An update that brings in no new image (a label change) is allowed even if a rule added
    since then would deny the images the object already runs."""
    document = load("pod-update.json")
    set_at(document["request"]["object"], "/spec/containers/0/image", "nginx:1.25")
    document["request"]["object"]["metadata"]["labels"]["tier"] = "web"
    assert validate(document, validator("Deny"))["allowed"] is True


def test_ephemeral_containers_subresource_judges_the_new_container() -> None:
    """kubectl debug (UPDATE pods/ephemeralcontainers, object: the Pod) has its debug image judged."""
    response = validate(load("pod-ephemeralcontainers.json"), validator("Deny"))
    assert response["status"]["message"].startswith(
        'trow denied 1 image: image "docker.io/library/busybox:1.36" in spec.ephemeralContainers[0]'
    )


def test_update_without_the_old_object_judges_every_image() -> None:
    """An UPDATE with no oldObject has nothing to keep: all its images are judged."""
    document = load("pod-update.json")
    document["request"]["oldObject"] = None
    assert "trow denied 3 images" in validate(document, validator("Deny"))["status"]["message"]


def test_status_subresource_is_not_judged() -> None:
    """pods/status cannot change images, so it is allowed even when it carries a new one."""
    document = load("pod-update.json")
    document["request"]["subResource"] = "status"
    assert validate(document, validator("Deny"))["allowed"] is True


def test_connect_is_not_judged() -> None:
    """CONNECT (exec, attach) brings in no image."""
    document = load("pod-create.json")
    document["request"]["operation"] = "CONNECT"
    assert validate(document, validator("Deny"))["allowed"] is True


# -- mutation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fixture", "base"), WORKLOADS.items())
def test_mutation_patches_workload_templates_at_exact_paths(fixture: str, base: str) -> None:
    """Each workload's pod template images are replaced, each at its exact JSON pointer."""
    assert patch_of(load(fixture)) == [
        {"op": "replace", "path": f"{base}/containers/0/image", "value": f"{TROW}/f/docker.io/library/nginx:1.25"},
        {"op": "replace", "path": f"{base}/initContainers/0/image", "value": f"{TROW}/f/ghcr.io/acme/migrate:2.0"},
    ]


def test_mutation_patches_pod_containers_and_init_containers() -> None:
    """A Pod's listed-registry images are replaced (digest kept); quay.io, not listed, is not."""
    assert patch_of(load("pod-create.json")) == [
        {"op": "replace", "path": "/spec/containers/0/image", "value": f"{TROW}/f/docker.io/library/nginx:1.25"},
        {"op": "replace", "path": "/spec/initContainers/0/image", "value": f"{TROW}/f/docker.io/library/{BUSYBOX_DIGEST}"},
    ]


def test_mutation_patches_a_new_ephemeral_container() -> None:
    """kubectl debug's image is rewritten; the running containers are not touched."""
    assert patch_of(load("pod-ephemeralcontainers.json")) == [
        {"op": "replace", "path": "/spec/ephemeralContainers/0/image", "value": f"{TROW}/f/docker.io/library/busybox:1.36"},
    ]


def test_mutation_on_update_leaves_images_the_old_object_had() -> None:
    """Only the image the update brings in is rewritten: rewriting a running pod's unchanged
    image would restart its container."""
    assert patch_of(load("pod-update.json")) == [
        {"op": "replace", "path": "/spec/containers/0/image", "value": f"{TROW}/f/docker.io/library/nginx:1.26"},
    ]


def test_mutation_with_nothing_to_change_sends_no_patch() -> None:
    """When no image is from a listed registry the response has no patch and no patchType."""
    assert patch_of(load("deployment-create.json"), mutator(registries=["quay.io"])) is None


def test_mutation_is_idempotent() -> None:
    """A review of the already-patched object produces no patch."""
    document = load("cronjob-create.json")
    patch = patch_of(document)
    assert patch
    for op in patch:
        set_at(document["request"]["object"], op["path"], op["value"])
    assert patch_of(document) is None


def test_mutation_of_delete_sends_no_patch() -> None:
    """DELETE has no object to patch."""
    assert patch_of(load("pod-delete.json")) is None


def test_mutation_of_unknown_kind_sends_no_patch() -> None:
    """Kinds without a pod spec are never patched."""
    assert patch_of(load("configmap-create.json")) is None


def test_mutated_object_passes_validation_that_allows_its_upstreams() -> None:
    """Mutation runs before validation: the rewritten images are judged as their upstreams, so a
    default Deny that allows the upstreams still allows the rewritten pod."""
    document = load("deployment-create.json")
    for op in patch_of(document) or []:
        set_at(document["request"]["object"], op["path"], op["value"])
    rules = validator("Deny", allow=["docker.io/library/nginx", "ghcr.io/acme/"])
    assert validate(document, rules)["allowed"] is True


# -- malformed reviews -------------------------------------------------------------------------

_MISSING = object()

MALFORMED = [
    (("apiVersion",), "admission.k8s.io/v1beta1", "apiVersion must be admission.k8s.io/v1, got 'admission.k8s.io/v1beta1'"),
    (("apiVersion",), _MISSING, "apiVersion is missing"),
    (("kind",), "Pod", "kind must be AdmissionReview, got 'Pod'"),
    (("request",), _MISSING, "request is missing"),
    (("request",), [], "request must be an object, got list"),
    (("request", "uid"), _MISSING, "request.uid is missing"),
    (("request", "uid"), 42, "request.uid must be a string, got int"),
    (("request", "uid"), "", "request.uid is empty"),
    (("request", "kind"), _MISSING, "request.kind is missing"),
    (("request", "kind", "kind"), _MISSING, "request.kind.kind is missing"),
    (("request", "operation"), _MISSING, "request.operation is missing"),
    (("request", "object"), "a pod", "request.object must be an object, got str"),
    (("request", "oldObject"), 7, "request.oldObject must be an object, got int"),
]


@pytest.mark.parametrize(("path", "value", "message"), MALFORMED, ids=[m[2] for m in MALFORMED])
def test_malformed_review_is_400_saying_what_is_wrong(path: tuple[str, ...], value: Any, message: str) -> None:
    """A review with a missing or wrong part gets 400 with a message naming that part."""
    document = load("pod-create.json")
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if value is _MISSING:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    reply = validate_review(encode(document), validator())
    assert reply.status == 400
    assert reply.document["message"] == f"malformed AdmissionReview: {message}"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the body is not JSON"),
        (b"<html>", "the body is not JSON"),
        (b'{"apiVersion": "\xff"}', "the body is not JSON"),
        (b"[1, 2]", "the body must be a JSON object (an AdmissionReview), got list"),
        (b'"AdmissionReview"', "the body must be a JSON object (an AdmissionReview), got str"),
    ],
)
def test_body_that_is_not_a_json_object_is_400(body: bytes, message: str) -> None:
    """A body that is not JSON, or not a JSON object, gets 400 saying so."""
    reply = validate_review(body, validator())
    assert reply.status == 400
    assert reply.document["message"].startswith(f"malformed AdmissionReview: {message}")


def test_bad_request_is_a_kubernetes_status() -> None:
    """The 400 body is a Status, which the apiserver decodes and quotes in its error."""
    reply = validate_review(b"[]", validator())
    assert reply == Reply(
        400,
        {
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "code": 400,
            "reason": "BadRequest",
            "message": "malformed AdmissionReview: the body must be a JSON object (an AdmissionReview), got list",
        },
    )


def test_malformed_review_to_mutate_is_400() -> None:
    """The mutating endpoint refuses malformed reviews the same way."""
    document = load("pod-create.json")
    del document["request"]["uid"]
    reply = mutate_review(encode(document), mutator())
    assert reply.status == 400
    assert reply.document["message"] == "malformed AdmissionReview: request.uid is missing"


# -- image fields ------------------------------------------------------------------------------


def test_image_field_pointer_escapes_per_rfc_6901() -> None:
    """'~' and '/' in a key are escaped as '~0' and '~1' in the JSON pointer."""
    assert ImageField(("a/b", "c~d", 0, "image"), "x").pointer == "/a~1b/c~0d/0/image"


def test_image_field_names_its_container_like_a_manifest_path() -> None:
    """The container is named as a reader finds it: spec.template.spec.containers[2]."""
    field = ImageField(("spec", "template", "spec", "containers", 2, "image"), "x")
    assert field.container == "spec.template.spec.containers[2]"
