"""deploy/: the kustomize manifests and the container image recipe.

Three installations are rendered: deploy/ (certificates from cert-manager), deploy/no-cert-manager
(certificates from trow.certs), and deploy/ha (three replicas over deploy/no-cert-manager, sharing a
PostgreSQL and a ReadWriteMany volume). Rendering uses a small kustomize of this test's own, which
knows exactly the features deploy/ uses, so the tests need no kubectl; where kubectl is installed, its
`kubectl kustomize` output must equal ours, which keeps the small one honest.

Every Kubernetes object, as written and as rendered, is validated offline against the Kubernetes
OpenAPI schemas (the kubernetes-validate package, strict: unknown fields are errors). cert-manager's
Issuer and Certificate are custom resources that those schemas do not have: they are validated by
hand against the parts of cert-manager's v1 API that deploy/ uses (CERT_MANAGER_SCHEMAS). The
Kustomization files are checked by hand too.
"""

from __future__ import annotations

import base64
import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.tools import require_module, require_tool
from trow.certs import make_bundle, write_bundle
from trow.config import load_config
from trow.tap import Options
from trow.webhook.admission import POD_SPECS
from trow.webhook.rules import Mutator, Validator

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NAMESPACE = "trow"
# The oldest Kubernetes the manifests are written for; they are also checked against the newest
# that kubernetes-validate knows.
OLDEST_KUBERNETES = "1.27"
CLUSTER_SCOPED = {"Namespace", "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"}
WEBHOOK_KINDS = ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")
WEBHOOK_PATHS = {"ValidatingWebhookConfiguration": "/validate-image", "MutatingWebhookConfiguration": "/mutate-image"}

Obj = dict[str, Any]


# --- reading deploy/ ---------------------------------------------------------------------------


def documents(path: Path) -> list[Obj]:
    """The YAML documents of a file, empty ones left out."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") and "certs" not in p.parts)


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml") if "certs" not in p.parts)


def key(obj: Obj) -> tuple[str, str, str]:
    return (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# --- a small kustomize: exactly what deploy/ uses ------------------------------------------------

KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "images",
    "patches",
    "secretGenerator",
    "generatorOptions",
    "replacements",
}


def _merge(target: Obj, patch: Obj) -> None:
    """A strategic merge patch, for the maps deploy/ patches (no list merging needed); null
    removes a field."""
    for name, value in patch.items():
        if value is None:
            target.pop(name, None)
        elif isinstance(value, dict) and isinstance(target.get(name), dict):
            _merge(target[name], value)
        else:
            target[name] = copy.deepcopy(value)


def _split_path(field_path: str) -> list[str]:
    """kustomize's field path: dot-separated, with '\\.' for a dot inside a key."""
    return [part.replace("\0", ".") for part in field_path.replace("\\.", "\0").split(".")]


def _get(obj: Any, parts: list[str]) -> Any:
    for part in parts:
        obj = obj[part]
    return obj


def _set(obj: Any, parts: list[str], value: Any, create: bool) -> None:
    head, rest = parts[0], parts[1:]
    if head == "*":
        for item in obj:
            _set(item, rest, value, create)
        return
    if not rest:
        assert create or head in obj, f"replacement target {head} missing"
        obj[head] = value
        return
    if head not in obj:
        assert create, f"replacement target {head} missing"
        obj[head] = {}
    _set(obj[head], rest, value, create)


def _selects(obj: Obj, select: Obj) -> bool:
    group = obj["apiVersion"].rpartition("/")[0]
    return all(
        (select_key == "group" and group == wanted)
        or (select_key == "kind" and re.fullmatch(wanted, obj["kind"]) is not None)
        or (select_key == "name" and obj["metadata"]["name"] == wanted)
        for select_key, wanted in select.items()
    )


def _json_patch(target: Obj, operations: list[Obj]) -> None:
    """A JSON patch (RFC 6902) of 'add' operations, the only ones deploy/ uses; '-' appends."""
    for operation in operations:
        assert operation["op"] == "add", f"this test's kustomize does not know op {operation['op']}"
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in operation["path"].split("/")[1:]]
        parent: Any = target
        for part in parents:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        value = copy.deepcopy(operation["value"])
        if isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else int(last), value)
        else:
            parent[last] = value


def _env_file(path: Path) -> dict[str, str]:
    """kustomize's env file: KEY=value lines, the value taken as written; blank lines and
    '#' comments skipped."""
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.lstrip()
        if line and not line.startswith("#"):
            name, equals, value = line.partition("=")
            assert equals and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name), f"{path}: bad line {line!r}"
            pairs[name] = value
    return pairs


def _pod_spec(obj: Obj) -> Obj | None:
    group = obj["apiVersion"].rpartition("/")[0]
    where = POD_SPECS.get((group, obj["kind"]))
    return _get(obj, list(where)) if where else None


def render(directory: Path) -> list[Obj]:
    """What `kubectl kustomize directory` prints, for the features deploy/ uses."""
    kustomization = documents(directory / "kustomization.yaml")[0]
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    assert not unknown, f"{directory}: this test's kustomize does not know {unknown}"
    objects: list[Obj] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        objects += render(path) if path.is_dir() else documents(path)
    options = kustomization.get("generatorOptions", {})
    for generator in kustomization.get("secretGenerator", []):
        assert options.get("disableNameSuffixHash"), "this test's kustomize makes no name hashes"
        data = {}
        for item in generator.get("files", []):
            name, _, source = item.partition("=")
            data[name] = base64.b64encode((directory / source).read_bytes()).decode("ascii")
        for source in generator.get("envs", []):
            for name, value in _env_file(directory / source).items():
                data[name] = base64.b64encode(value.encode("utf-8")).decode("ascii")
        metadata = {"name": generator["name"], "labels": dict(options.get("labels", {}))}
        kind = generator.get("type", "Opaque")
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": kind, "data": data}
        objects.append(secret)
    for entry in kustomization.get("patches", []):
        patch = yaml.safe_load(entry["patch"])
        if "target" in entry:
            assert isinstance(patch, list) and set(entry["target"]) == {"kind", "name"}, "JSON patches by name"
            _json_patch(one(objects, entry["target"]["kind"], entry["target"]["name"]), patch)
            continue
        assert isinstance(patch, dict), "strategic merge patches name their target"
        target = one(objects, patch["kind"], patch["metadata"]["name"])
        _merge(target, patch)
    if "namespace" in kustomization:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kustomization["namespace"]
            for webhook in obj.get("webhooks", []):
                webhook["clientConfig"]["service"]["namespace"] = kustomization["namespace"]
    for image in kustomization.get("images", []):
        for obj in objects:
            spec = _pod_spec(obj)
            for container in (spec or {}).get("containers", []):
                if container["image"].partition(":")[0] == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    for replacement in kustomization.get("replacements", []):
        source = replacement["source"]
        value = _get(one(objects, source["kind"], source["name"]), _split_path(source["fieldPath"]))
        for target in replacement["targets"]:
            create = target.get("options", {}).get("create", False)
            selected = [obj for obj in objects if _selects(obj, target["select"])]
            assert selected, f"replacement selects nothing: {target['select']}"
            for obj in selected:
                for field_path in target["fieldPaths"]:
                    _set(obj, _split_path(field_path), value, create)
    return objects


def _normalise(obj: Obj) -> Obj:
    """kubectl wraps base64 at 70 columns; compare the bytes, not the wrapping."""
    obj = copy.deepcopy(obj)
    if obj["kind"] == "Secret":
        obj["data"] = {k: base64.b64decode(v) for k, v in obj.get("data", {}).items()}
    for webhook in obj.get("webhooks", []):
        if "caBundle" in webhook["clientConfig"]:
            webhook["clientConfig"]["caBundle"] = base64.b64decode(webhook["clientConfig"]["caBundle"])
    return obj


# --- the three installations -------------------------------------------------------------------

# What deploy/ha/database.env holds in the copy: a password with the characters an env file must
# keep as written.
DATABASE_ENV = {
    "TROW_DATABASE_URL": "postgresql://trow@postgres.example:5432/trow?sslmode=require",
    "PGPASSWORD": "s3=cr#t",
}


@pytest.fixture(scope="module")
def copied_deploy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/ with certs/ made by trow.certs, as docs/webhook.md says to, and
    ha/database.env written as deploy/ha/kustomization.yaml says to; the real ones, if a checkout
    has them, are never read."""
    target = tmp_path_factory.mktemp("deploy") / "deploy"
    shutil.copytree(DEPLOY, target, ignore=shutil.ignore_patterns("certs", "database.env"))
    write_bundle(make_bundle("trow-webhook", NAMESPACE), str(target / "no-cert-manager" / "certs"))
    (target / "ha" / "database.env").write_text("".join(f"{k}={v}\n" for k, v in DATABASE_ENV.items()))
    return target


@pytest.fixture(scope="module")
def with_cert_manager() -> list[Obj]:
    return render(DEPLOY)


@pytest.fixture(scope="module")
def without_cert_manager(copied_deploy: Path) -> list[Obj]:
    return render(copied_deploy / "no-cert-manager")


@pytest.fixture(scope="module")
def high_availability(copied_deploy: Path) -> list[Obj]:
    return render(copied_deploy / "ha")


@pytest.fixture(scope="module", params=["cert-manager", "no-cert-manager", "ha"])
def installation(
    request: pytest.FixtureRequest,
    with_cert_manager: list[Obj],
    without_cert_manager: list[Obj],
    high_availability: list[Obj],
) -> list[Obj]:
    """Each installation, for what all must get right."""
    installations = {
        "cert-manager": with_cert_manager,
        "no-cert-manager": without_cert_manager,
        "ha": high_availability,
    }
    return installations[request.param]


@pytest.fixture(scope="module", params=["cert-manager", "no-cert-manager"])
def single_replica(
    request: pytest.FixtureRequest, with_cert_manager: list[Obj], without_cert_manager: list[Obj]
) -> list[Obj]:
    """Each single-replica installation."""
    return with_cert_manager if request.param == "cert-manager" else without_cert_manager


# --- files and kustomizations ------------------------------------------------------------------


def test_every_yaml_document_parses() -> None:
    """Every YAML file under deploy/ parses, and every document in it is a mapping."""
    files = yaml_files()
    assert files
    for path in files:
        docs = documents(path)
        assert docs, f"{path} is empty"
        assert all(isinstance(doc, dict) for doc in docs), path


def test_kustomizations_list_exactly_the_files_present() -> None:
    """Each kustomization lists every manifest beside it, once, and nothing that is not there;
    every directory it names is a kustomization; no manifest lies outside a kustomization."""
    listed: set[Path] = set()
    for directory in kustomization_dirs():
        kustomization = documents(directory / "kustomization.yaml")[0]
        assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
        assert kustomization["kind"] == "Kustomization"
        assert set(kustomization) <= KUSTOMIZATION_KEYS, directory
        resources = kustomization.get("resources", [])
        assert len(resources) == len(set(resources)), f"{directory}: a resource is listed twice"
        files = set()
        for resource in resources:
            path = (directory / resource).resolve()
            assert path.exists(), f"{directory}/kustomization.yaml lists {resource}, which does not exist"
            if path.is_dir():
                assert (path / "kustomization.yaml").is_file(), f"{resource} is not a kustomization"
            else:
                assert path.parent == directory, f"{resource}: kustomize refuses files outside the directory"
                files.add(path)
        present = {p for p in directory.glob("*.yaml") if p.name != "kustomization.yaml"}
        assert files == present, f"{directory}: listed {sorted(files)}, present {sorted(present)}"
        listed |= files | {directory / "kustomization.yaml"}
    assert set(yaml_files()) == listed


def test_certs_directory_is_ignored_by_git() -> None:
    """The private key that trow.certs writes into deploy/no-cert-manager/certs is never committed."""
    assert "certs/" in (DEPLOY / "no-cert-manager" / ".gitignore").read_text().split()


def test_database_env_is_ignored_by_git() -> None:
    """deploy/ha/database.env, which holds the database password, is never committed, and it is
    the file the Secret is generated from."""
    assert "database.env" in (DEPLOY / "ha" / ".gitignore").read_text().split()
    kustomization = documents(DEPLOY / "ha" / "kustomization.yaml")[0]
    [generator] = [g for g in kustomization["secretGenerator"] if g["name"] == "trow-database"]
    assert generator["envs"] == ["database.env"] and "files" not in generator


@pytest.mark.parametrize("variant", [".", "no-cert-manager", "ha"])
def test_kubectl_kustomize_agrees(copied_deploy: Path, variant: str) -> None:
    """`kubectl kustomize` renders each installation, to the same objects as this test's kustomize."""
    require_tool("kubectl", "kubectl")
    directory = copied_deploy / variant
    done = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    theirs = sorted((_normalise(doc) for doc in yaml.safe_load_all(done.stdout) if doc), key=key)
    ours = sorted((_normalise(doc) for doc in render(directory)), key=key)
    assert [key(o) for o in theirs] == [key(o) for o in ours]
    assert theirs == ours


# --- schemas -----------------------------------------------------------------------------------

_ISSUER_REF = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "kind": {"enum": ["Issuer", "ClusterIssuer"]},
        "group": {"type": "string"},
    },
}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": {"type": "object"}},
}
_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"}
# From cert-manager's v1 API reference (cert-manager.io/docs/reference/api-docs): the fields deploy/
# uses, with their types and enums, and nothing else allowed.
CERT_MANAGER_SCHEMAS: dict[str, Obj] = {
    "Issuer": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "additionalProperties": False,
                "properties": {
                    "selfSigned": {"type": "object", "additionalProperties": False},
                    "ca": {
                        "type": "object",
                        "required": ["secretName"],
                        "additionalProperties": False,
                        "properties": {"secretName": {"type": "string"}},
                    },
                },
            },
        },
    },
    "Certificate": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["secretName", "issuerRef"],
                "anyOf": [{"required": ["commonName"]}, {"required": ["dnsNames"]}],
                "additionalProperties": False,
                "properties": {
                    "secretName": {"type": "string"},
                    "issuerRef": _ISSUER_REF,
                    "isCA": {"type": "boolean"},
                    "commonName": {"type": "string", "maxLength": 64},
                    "dnsNames": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "duration": _DURATION,
                    "renewBefore": _DURATION,
                    "usages": {
                        "type": "array",
                        "items": {
                            "enum": [
                                "signing",
                                "digital signature",
                                "content commitment",
                                "key encipherment",
                                "key agreement",
                                "data encipherment",
                                "cert sign",
                                "crl sign",
                                "server auth",
                                "client auth",
                            ]
                        },
                    },
                    "privateKey": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                            "size": {"type": "integer"},
                            "rotationPolicy": {"enum": ["Never", "Always"]},
                            "encoding": {"enum": ["PKCS1", "PKCS8"]},
                        },
                    },
                },
            },
        },
    },
}


def validate(obj: Obj) -> None:
    """Validate one object: Kubernetes kinds against the Kubernetes schemas (strict), cert-manager
    kinds against CERT_MANAGER_SCHEMAS; any other kind is an error."""
    # Only the schema tests need these packages (kubernetes-validate brings jsonschema); the other
    # tests run without them.
    jsonschema = require_module("jsonschema", "jsonschema")
    if obj["apiVersion"] == "cert-manager.io/v1":
        assert obj["kind"] in CERT_MANAGER_SCHEMAS, f"no schema for cert-manager kind {obj['kind']}"
        jsonschema.Draft202012Validator(CERT_MANAGER_SCHEMAS[obj["kind"]]).validate(obj)
        return
    kubernetes_validate = require_module("kubernetes_validate", "kubernetes-validate")
    for version in (OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(f"{key(obj)} is not valid for Kubernetes {version}: {where}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            pytest.fail(f"{key(obj)}: {e.message}")


def test_manifests_as_written_are_valid() -> None:
    """Every object in every manifest file, before kustomize, matches its schema."""
    for path in yaml_files():
        if path.name == "kustomization.yaml":
            continue
        for obj in documents(path):
            validate(obj)


def test_rendered_installations_are_valid(installation: list[Obj]) -> None:
    """Every object of each rendered installation matches its schema; none is there twice."""
    keys = [key(obj) for obj in installation]
    assert len(keys) == len(set(keys))
    for obj in installation:
        validate(obj)


def test_hand_schemas_catch_mistakes(with_cert_manager: list[Obj]) -> None:
    """The hand-written cert-manager schemas refuse a misspelt field and a missing one."""
    jsonschema = require_module("jsonschema", "jsonschema")
    certificate = copy.deepcopy(one(with_cert_manager, "Certificate", "trow-webhook"))
    certificate["spec"]["dnsName"] = certificate["spec"].pop("dnsNames")
    with pytest.raises(jsonschema.ValidationError):
        validate(certificate)
    issuer = copy.deepcopy(one(with_cert_manager, "Issuer", "trow-ca"))
    del issuer["spec"]["ca"]["secretName"]
    with pytest.raises(jsonschema.ValidationError):
        validate(issuer)


# --- the webhooks ------------------------------------------------------------------------------

# (API group, resource) -> kind, for the resources the webhooks are registered for.
RESOURCE_KINDS = {
    ("", "pods"): "Pod",
    ("", "pods/ephemeralcontainers"): "Pod",
    ("", "replicationcontrollers"): "ReplicationController",
    ("apps", "deployments"): "Deployment",
    ("apps", "statefulsets"): "StatefulSet",
    ("apps", "daemonsets"): "DaemonSet",
    ("apps", "replicasets"): "ReplicaSet",
    ("batch", "jobs"): "Job",
    ("batch", "cronjobs"): "CronJob",
}
REQUIRED_RULES = {
    ("", "v1", "pods", "CREATE"),
    ("", "v1", "pods", "UPDATE"),
    ("", "v1", "pods/ephemeralcontainers", "UPDATE"),
} | {
    (group, "v1", resource, operation)
    for group, resources in {
        "apps": ("deployments", "statefulsets", "daemonsets", "replicasets"),
        "batch": ("jobs", "cronjobs"),
    }.items()
    for resource in resources
    for operation in ("CREATE", "UPDATE")
}


def webhooks(objects: list[Obj]) -> Iterator[tuple[str, Obj]]:
    for kind in WEBHOOK_KINDS:
        configuration = one(objects, kind)
        assert len(configuration["webhooks"]) == 1
        yield kind, configuration["webhooks"][0]


def test_webhook_settings(installation: list[Obj]) -> None:
    """Both webhooks: no side effects, AdmissionReview v1, a short timeout, failurePolicy Ignore,
    trow's own namespace left out, and trow's paths on the webhook Service's port 443."""
    for kind, webhook in webhooks(installation):
        assert webhook["sideEffects"] == "None"
        assert webhook["admissionReviewVersions"] == ["v1"]
        assert webhook["timeoutSeconds"] == 5
        assert webhook["failurePolicy"] == "Ignore"
        assert webhook["namespaceSelector"] == {
            "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [NAMESPACE]}]
        }
        assert webhook["clientConfig"]["service"] == {
            "name": "trow-webhook",
            "namespace": NAMESPACE,
            "path": WEBHOOK_PATHS[kind],
            "port": 443,
        }
        if kind == "MutatingWebhookConfiguration":
            assert webhook["reinvocationPolicy"] == "Never"


def test_webhook_rules_match_what_trow_reviews(installation: list[Obj]) -> None:
    """The webhooks see pods (and their ephemeral containers) and every workload kind, and only
    kinds whose pod spec trow.webhook.admission knows how to find."""
    for _, webhook in webhooks(installation):
        registered = set()
        for rule in webhook["rules"]:
            assert rule["scope"] == "Namespaced"
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    kind = RESOURCE_KINDS.get((group, resource))
                    assert kind is not None and (group, kind) in POD_SPECS, (group, resource)
                    for version in rule["apiVersions"]:
                        for operation in rule["operations"]:
                            assert operation in ("CREATE", "UPDATE")
                            registered.add((group, version, resource, operation))
        assert REQUIRED_RULES <= registered, REQUIRED_RULES - registered


def test_webhook_service_reaches_the_webhook_listener(installation: list[Obj]) -> None:
    """trow-webhook's port 443 goes to the container's 8443, where --webhook-listen listens;
    the registry Service's port goes to the --listen port; both select trow's pod."""
    statefulset = one(installation, "StatefulSet", "trow")
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    def target(service: Obj, port: int) -> int:
        assert service["spec"]["selector"].items() <= pod_labels.items()
        [entry] = [p for p in service["spec"]["ports"] if p["port"] == port]
        target = entry["targetPort"]
        return int(ports[target] if isinstance(target, str) else target)

    assert target(one(installation, "Service", "trow-webhook"), 443) == 8443 == ports["webhook"]
    assert target(one(installation, "Service", "trow"), 8000) == 8000 == ports["http"]


def test_cert_manager_chain(with_cert_manager: list[Obj]) -> None:
    """inject-ca-from on both webhooks names the serving Certificate, which is for the webhook
    Service's names and is signed by a CA Issuer backed by a self-signed CA Certificate; its
    Secret is the one trow mounts."""
    objects = with_cert_manager
    for kind in WEBHOOK_KINDS:
        annotation = one(objects, kind)["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        namespace, _, name = annotation.partition("/")
        certificate = one(objects, "Certificate", name)
        assert certificate["metadata"]["namespace"] == namespace == NAMESPACE
    service = one(objects, "Service", "trow-webhook")["metadata"]
    assert set(certificate["spec"]["dnsNames"]) == {
        f"{service['name']}.{service['namespace']}.svc",
        f"{service['name']}.{service['namespace']}.svc.cluster.local",
    }
    assert certificate["spec"]["secretName"] == mounted_secret(objects)
    issuer = one(objects, "Issuer", certificate["spec"]["issuerRef"]["name"])
    ca_secret = issuer["spec"]["ca"]["secretName"]
    [ca_certificate] = [c for c in objects if c["kind"] == "Certificate" and c["spec"]["secretName"] == ca_secret]
    assert ca_certificate["spec"]["isCA"] is True
    root = one(objects, "Issuer", ca_certificate["spec"]["issuerRef"]["name"])
    assert root["spec"] == {"selfSigned": {}}
    for obj in objects:
        if obj["apiVersion"].startswith("cert-manager.io/"):
            assert obj["metadata"]["namespace"] == NAMESPACE
            if "issuerRef" in obj.get("spec", {}):
                assert obj["spec"]["issuerRef"]["kind"] == "Issuer"


def test_no_cert_manager_installation(without_cert_manager: list[Obj], copied_deploy: Path) -> None:
    """Without cert-manager: no cert-manager object or annotation, the Secret trow mounts holds
    trow.certs' files, and both caBundles are its CA."""
    objects = without_cert_manager
    assert not [o for o in objects if o["apiVersion"].startswith("cert-manager.io/")]
    certs = copied_deploy / "no-cert-manager" / "certs"
    secret = one(objects, "Secret", mounted_secret(objects))
    assert secret["metadata"]["namespace"] == NAMESPACE
    assert secret["type"] == "kubernetes.io/tls"
    for name in ("tls.crt", "tls.key", "ca.crt"):
        assert base64.b64decode(secret["data"][name]) == (certs / name).read_bytes()
    for kind, webhook in webhooks(objects):
        assert "annotations" not in one(objects, kind)["metadata"]
        assert base64.b64decode(webhook["clientConfig"]["caBundle"]) == (certs / "ca.crt").read_bytes()


# --- the StatefulSet ---------------------------------------------------------------------------


def container_of(objects: list[Obj]) -> Obj:
    containers = one(objects, "StatefulSet", "trow")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: Obj = containers[0]
    return container


def args_of(objects: list[Obj]) -> dict[str, str]:
    """The container's options, written as '--name value' or '--name=value'."""
    pairs = []
    args = iter(container_of(objects)["args"])
    for arg in args:
        assert arg.startswith("--"), arg
        name, equals, value = arg.partition("=")
        if not equals:
            value = next(args, None)
            assert value is not None, f"{arg} has no value"
        pairs.append((name, value))
    options = dict(pairs)
    assert len(options) == len(pairs), "an option is given twice"
    return options


def mounted_files(objects: list[Obj]) -> dict[str, tuple[str, str, str]]:
    """Every file the container sees from a ConfigMap or Secret: path -> (kind, name, key)."""
    spec = one(objects, "StatefulSet", "trow")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    files = {}
    for mount in container_of(objects)["volumeMounts"]:
        volume = volumes.get(mount["name"], {})
        sources = volume.get("projected", {}).get("sources", [])
        if "secret" in volume:
            sources = [{"secret": volume["secret"]}]
        for source in sources:
            for kind, field in (("ConfigMap", "configMap"), ("Secret", "secret")):
                if field in source:
                    for item in source[field]["items"]:
                        path = f"{mount['mountPath'].rstrip('/')}/{item['path']}"
                        files[path] = (kind, source[field]["name"], item["key"])
    return files


def mounted_secret(objects: list[Obj]) -> str:
    secrets = {name for kind, name, _ in mounted_files(objects).values() if kind == "Secret"}
    assert len(secrets) == 1
    return secrets.pop()


def test_container_args(installation: list[Obj]) -> None:
    """trow listens for the registry on 8000 and for the webhook with TLS on 8443, with the key
    and certificate from the mounted Secret; it has a --hostname, its config and its data dir."""
    args = args_of(installation)
    assert args["--listen"] == "tcp:8000"
    assert args["--data-dir"] == "/data"
    assert args["--config"] == "/etc/trow/config.yaml"
    assert args["--hostname"]
    webhook = args["--webhook-listen"].split(":")
    assert webhook[:2] == ["ssl", "8443"]
    options = dict(part.split("=", 1) for part in webhook[2:])
    assert options == {"privateKey": "/etc/trow/tls/tls.key", "certKey": "/etc/trow/tls/tls.crt"}
    files = mounted_files(installation)
    secret = mounted_secret(installation)
    assert files[options["privateKey"]] == ("Secret", secret, "tls.key")
    assert files[options["certKey"]] == ("Secret", secret, "tls.crt")
    assert files[args["--config"]] == ("ConfigMap", "trow-config", "config.yaml")
    one(installation, "ConfigMap", "trow-config")


def test_volumes(installation: list[Obj]) -> None:
    """The certificate is mounted without subPath (so renewals reach the files), read-only; /tmp
    is a writable emptyDir."""
    statefulset = one(installation, "StatefulSet", "trow")
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container_of(installation)["volumeMounts"]}
    for mount in mounts.values():
        assert "subPath" not in mount and "subPathExpr" not in mount, mount
    [etc] = [m for m in mounts.values() if m["mountPath"] == "/etc/trow"]
    assert etc["readOnly"] is True
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert "/data" in mounts and not mounts["/data"].get("readOnly", False)


def test_single_replica_data_volume(single_replica: list[Obj]) -> None:
    """A single replica keeps /data on the StatefulSet's ReadWriteOnce PersistentVolumeClaim
    template."""
    statefulset = one(single_replica, "StatefulSet", "trow")
    assert statefulset["spec"]["replicas"] == 1
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container_of(single_replica)["volumeMounts"]}
    assert mounts["/data"]["name"] in [t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]]
    assert mounts["/data"]["name"] not in volumes
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]


def test_security_context(installation: list[Obj]) -> None:
    """Non-root with a numeric uid and gid, fsGroup so the volumes are the pod's, no privilege
    escalation, no capabilities, the runtime's seccomp profile, a read-only root filesystem."""
    pod = one(installation, "StatefulSet", "trow")["spec"]["template"]["spec"]
    pod_context = pod["securityContext"]
    assert pod_context["runAsNonRoot"] is True
    assert isinstance(pod_context["runAsUser"], int) and pod_context["runAsUser"] > 0
    assert isinstance(pod_context["runAsGroup"], int) and pod_context["runAsGroup"] > 0
    assert pod_context["fsGroup"] == pod_context["runAsGroup"]
    assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container_of(installation)["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context.get("runAsUser", pod_context["runAsUser"]) == pod_context["runAsUser"]
    assert pod["automountServiceAccountToken"] is False


def test_probes_and_resources(installation: list[Obj]) -> None:
    """Liveness on /healthz and readiness on /readiness, on the registry port; CPU and memory
    requests and a memory limit."""
    container = container_of(installation)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readiness"), ("startupProbe", "/healthz")):
        http = container[probe]["httpGet"]
        assert http["path"] == path
        assert ports.get(http["port"], http["port"]) == 8000
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert "memory" in container["resources"]["limits"]


def _uncomment(text: str, header: str) -> str:
    """Uncomment the example block that starts with the comment line C{header}."""
    lines = text.splitlines()
    [start] = [i for i, line in enumerate(lines) if line.strip() == header]
    indent = lines[start][: lines[start].index("#")]
    lines[start] = indent + lines[start].strip()[2:]
    i = start + 1
    while i < len(lines) and lines[i].startswith(indent + "#   "):
        lines[i] = indent + lines[i][len(indent) + 2 :]
        i += 1
    return "\n".join(lines) + "\n"


# A pod IP, where the downward API would give one.
POD_IP = "10.42.0.7"
# The options that deploy/ha adds for trow's high availability, which tap.py may not know yet.
HA_OPTIONS = {"--database", "--peer-url"}


def container_env(objects: list[Obj]) -> dict[str, str]:
    """The container's environment as the kubelet would set it: Secret keys from the rendered
    Secrets, status.podIP as POD_IP; an optional key that is missing sets nothing."""
    env = {}
    for var in container_of(objects).get("env", []):
        source = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = var["value"]
        elif source.get("fieldRef", {}).get("fieldPath") == "status.podIP":
            env[var["name"]] = POD_IP
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = one(objects, "Secret", ref["name"]).get("data", {})
            assert ref["key"] in data or ref.get("optional") is True, f"Secret {ref['name']} has no {ref['key']}"
            if ref["key"] in data:
                env[var["name"]] = base64.b64decode(data[ref["key"]]).decode("utf-8")
        else:
            pytest.fail(f"no stand-in for env {var}")
    return env


def expand(arg: str, env: dict[str, str]) -> str:
    """The kubelet's expansion of args: $(NAME) from env ($(UNKNOWN) stays as written), $$ is $."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]) if m[1] else "$", arg)


def test_trow_accepts_the_args_and_config(installation: list[Obj], tmp_path: Path) -> None:
    """trow's own option parsing (the checks it runs before binding a port) accepts the
    container's args, with the mounted files made real under a temporary directory: the ConfigMap's
    config.yaml and a certificate from trow.certs, and $(VAR) expanded as the kubelet would."""
    known = {"--" + name.rstrip("=") for name in Options().longOpt}
    unknown = set(args_of(installation)) - known
    assert unknown <= HA_OPTIONS, f"trow has no option {sorted(unknown - HA_OPTIONS)}"
    if unknown:
        pytest.skip(f"trow's Options does not know {sorted(unknown)} yet")
    etc, data = tmp_path / "etc", tmp_path / "data"
    bundle = make_bundle("trow-webhook", NAMESPACE)
    secret = {"tls.crt": bundle.cert_pem, "tls.key": bundle.key_pem}
    config = one(installation, "ConfigMap", "trow-config")["data"]
    for path, (kind, _, item) in mounted_files(installation).items():
        local = etc / Path(path).relative_to("/etc/trow")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(secret[item] if kind == "Secret" else config[item].encode("utf-8"))
    env = container_env(installation)
    written = [expand(arg, env) for arg in container_of(installation)["args"]]
    assert not [arg for arg in written if "$(" in arg], "an arg names a variable the container does not have"
    args = [str(data) if arg == "/data" else arg.replace("/etc/trow/", f"{etc}/") for arg in written]
    options = Options()
    options.parseOptions(args)
    settings = options.settings
    assert settings.hostname == args_of(installation)["--hostname"]
    assert settings.webhook_listen and settings.config.image_validation.default == "Allow"
    assert not settings.config.image_mutation.registries


def test_config_examples_are_valid(tmp_path: Path) -> None:
    """The commented examples in the ConfigMap, switched on together, are a config trow accepts,
    with rules it can build for the StatefulSet's --hostname."""
    objects = render(DEPLOY)
    text = one(objects, "ConfigMap", "trow-config")["data"]["config.yaml"]
    text = text.replace("  deny: []\n", "")
    for header in ("# registry_proxies:", "# image_mutation:", "# deny:"):
        text = _uncomment(text, header)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    config = load_config(str(path))
    assert config.registry_proxies.configured and config.image_validation.deny and config.image_mutation.registries
    hostname = args_of(objects)["--hostname"]
    validator = Validator.from_config(config, hostname)
    assert not validator.check("busybox:1.36").allowed
    assert validator.check("nginx").allowed
    mutator = Mutator.from_config(config, hostname)
    assert mutator.rewrite("nginx:1.27") == f"{hostname}/f/docker.io/library/nginx:1.27"


# --- high availability (deploy/ha) ---------------------------------------------------------------


def pod_labels(objects: list[Obj]) -> dict[str, str]:
    labels: dict[str, str] = one(objects, "StatefulSet", "trow")["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels only, which is all deploy/ uses) selects these labels."""
    assert set(selector) == {"matchLabels"} and selector["matchLabels"], selector
    return bool(selector["matchLabels"].items() <= labels.items())


def test_ha_replicas(high_availability: list[Obj]) -> None:
    """Three replicas, started and stopped together, with no per-replica claim."""
    spec = one(high_availability, "StatefulSet", "trow")["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    assert "volumeClaimTemplates" not in spec


def test_ha_pod_is_the_single_replica_pod_plus_ha(
    high_availability: list[Obj], without_cert_manager: list[Obj]
) -> None:
    """The overlay only adds to base's pod (anti-affinity, env, two args, the shared /data claim):
    base's args, probes, mounts, ports and security settings are all still there, unchanged."""
    ha = copy.deepcopy(one(high_availability, "StatefulSet", "trow")["spec"]["template"])
    single = copy.deepcopy(one(without_cert_manager, "StatefulSet", "trow")["spec"]["template"])
    del ha["spec"]["affinity"]
    [container] = ha["spec"]["containers"]
    del container["env"]
    assert container["args"][-2:] == ["--database=$(TROW_DATABASE_URL)", "--peer-url=http://$(POD_IP):8000"]
    del container["args"][-2:]
    ha["spec"]["volumes"] = [v for v in ha["spec"]["volumes"] if v["name"] != "data"]
    assert ha == single


def test_ha_disruption_budget(high_availability: list[Obj]) -> None:
    """A PodDisruptionBudget over trow's pods lets a drain take one of the three at a time."""
    [budget] = [o for o in high_availability if o["kind"] == "PodDisruptionBudget"]
    statefulset = one(high_availability, "StatefulSet", "trow")
    assert budget["metadata"]["namespace"] == statefulset["metadata"]["namespace"]
    assert selects(budget["spec"]["selector"], pod_labels(high_availability))
    assert budget["spec"]["selector"] == statefulset["spec"]["selector"]
    replicas = statefulset["spec"]["replicas"]
    limits = {k: v for k, v in budget["spec"].items() if k in ("minAvailable", "maxUnavailable")}
    assert limits in ({"maxUnavailable": 1}, {"minAvailable": replicas - 1})


def test_ha_anti_affinity(high_availability: list[Obj]) -> None:
    """The scheduler prefers to put trow's pods on different nodes; it is a preference, so that
    small clusters still run all replicas."""
    anti = one(high_availability, "StatefulSet", "trow")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti
    [preferred] = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["weight"] == 100
    term = preferred["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["labelSelector"], pod_labels(high_availability))


def test_ha_shared_data_volume(high_availability: list[Obj]) -> None:
    """/data in every replica is the one ReadWriteMany PersistentVolumeClaim."""
    pod = one(high_availability, "StatefulSet", "trow")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container_of(high_availability)["volumeMounts"]}
    assert args_of(high_availability)["--data-dir"] == "/data"
    claim_name = volumes[mounts["/data"]["name"]]["persistentVolumeClaim"]["claimName"]
    claim = one(high_availability, "PersistentVolumeClaim", claim_name)
    assert claim["metadata"]["namespace"] == NAMESPACE
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    assert [o for o in high_availability if o["kind"] == "PersistentVolumeClaim"] == [claim]


def test_ha_database_url_from_secret(high_availability: list[Obj]) -> None:
    """--database is $(TROW_DATABASE_URL), an env var from a key of the generated Secret (and the
    password may come from the same Secret as PGPASSWORD); no URL is written in the manifests."""
    assert args_of(high_availability)["--database"] == "$(TROW_DATABASE_URL)"
    env = {var["name"]: var for var in container_of(high_availability)["env"]}
    for name, optional in (("TROW_DATABASE_URL", False), ("PGPASSWORD", True)):
        assert "value" not in env[name]
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref.get("optional", False) is optional
        secret = one(high_availability, "Secret", ref["name"])
        assert secret["metadata"]["namespace"] == NAMESPACE
    resolved = container_env(high_availability)
    assert expand(args_of(high_availability)["--database"], resolved) == DATABASE_ENV["TROW_DATABASE_URL"]
    assert resolved["PGPASSWORD"] == DATABASE_ENV["PGPASSWORD"]
    for path in (DEPLOY / "ha").glob("*.yaml"):
        assert "postgresql://" not in yaml.safe_dump(documents(path)), f"{path} holds a database URL"


def test_ha_peer_url_is_the_pod_ip(high_availability: list[Obj]) -> None:
    """--peer-url is http://$(POD_IP):<the registry port>, with POD_IP from the downward API."""
    args = args_of(high_availability)
    assert args["--peer-url"] == "http://$(POD_IP):8000"
    [pod_ip] = [var for var in container_of(high_availability)["env"] if var["name"] == "POD_IP"]
    assert pod_ip["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    ports = {p["name"]: p["containerPort"] for p in container_of(high_availability)["ports"]}
    assert expand(args["--peer-url"], container_env(high_availability)) == f"http://{POD_IP}:{ports['http']}"
    assert args["--listen"] == f"tcp:{ports['http']}"


def test_ha_services_and_webhooks(high_availability: list[Obj], without_cert_manager: list[Obj]) -> None:
    """The registry Service spreads clients over all replicas (no ClientIP affinity); the webhook
    Service selects every replica, each of which serves the webhook; the webhook configurations
    are base's, failurePolicy and timeout included."""
    registry = one(high_availability, "Service", "trow")["spec"]
    assert registry.get("sessionAffinity", "None") == "None"
    labels = pod_labels(high_availability)
    webhook = one(high_availability, "Service", "trow-webhook")["spec"]
    assert webhook["selector"].items() <= labels.items()
    assert "statefulset.kubernetes.io/pod-name" not in webhook["selector"]
    assert webhook["selector"] == registry["selector"]
    assert args_of(high_availability)["--webhook-listen"].startswith("ssl:8443:")
    for kind in WEBHOOK_KINDS:
        assert one(high_availability, kind) == one(without_cert_manager, kind)


# --- the image ---------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """The Containerfile's instructions (continuations joined, comments dropped)."""
    text = (DEPLOY / "Containerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def test_containerfile(with_cert_manager: list[Obj]) -> None:
    """The image: python:3.12-slim, trow installed from the build context (not editable), the
    StatefulSet's numeric user, the ports the Services use, twistd -n --pidfile= trow as the
    entrypoint, and the glibc malloc tunables."""
    steps = instructions()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert froms and all(f.split()[0] == "python:3.12-slim" for f in froms)
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert "pip install" in runs and "/src" in runs
    assert not re.search(r"pip install[^&]*(-e|--editable)\b", runs)
    copies = [rest.split() for word, rest in steps if word == "COPY" and "--from" not in rest]
    assert {"setup.py", "README.md", "trow", "twisted"} <= {src for parts in copies for src in parts[:-1]}
    [user] = [rest for word, rest in steps if word == "USER"]
    pod = one(with_cert_manager, "StatefulSet", "trow")["spec"]["template"]["spec"]["securityContext"]
    assert user == f"{pod['runAsUser']}:{pod['runAsGroup']}"
    [expose] = [rest for word, rest in steps if word == "EXPOSE"]
    ports = {p["containerPort"] for p in container_of(with_cert_manager)["ports"]}
    assert {int(p) for p in expose.split()} == ports == {8000, 8443, 9090}
    [entrypoint] = [rest for word, rest in steps if word == "ENTRYPOINT"]
    assert yaml.safe_load(entrypoint) == ["twistd", "-n", "--pidfile=", "trow"]
    envs = " ".join(rest for word, rest in steps if word == "ENV")
    assert "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=8388608:glibc.malloc.trim_threshold=268435456" in envs
