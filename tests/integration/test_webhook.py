"""The admission webhook end to end: the real ``twistd trow`` on a TLS ``--webhook-listen``.

Every test talks HTTPS to a real trow child process with a client that verifies the served chain
against a CA generated here (no test ever turns verification off), with SNI set to the webhook
Service's name as the apiserver does. The AdmissionReviews are shaped like the apiserver's
(uid, kind, resource, requestKind, userInfo, options, the whole object).

Covered:

- validation and mutation of Pods, Deployments, CronJobs and ``pods/ephemeralcontainers``
  updates, against rules with component-boundary traps (``quay.io`` vs ``quay.io.evil.com``,
  ``quay.io:443``, images already rewritten to pull through trow);
- malformed reviews (HTTP 400), ``/healthz`` and the separation of the two listeners;
- the TLS itself (an untrusting client fails, the served SANs, hostname checking);
- certificate rotation on disk with no restart: per-file rename, Kubernetes' atomic writer
  (``..data`` symlink swap, with an intermediate in the chain), in-place overwrite, and
  half-written rotations;
- start-up errors for unusable key/certificate files (exit 1, one line, no port bound).

Tests that expose trow bugs are kept and marked ``xfail(strict=True)`` with the bug as reason.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.integration.conftest import (
    LOOPBACK,
    START_TIMEOUT,
    TrowProcess,
    free_port,
    raw_request,
    trow_command,
)

# trow's public name: rewritten images point at it.
HOSTNAME = "trow.example.com:8443"
# What the apiserver dials (and sends as SNI) for a webhook Service "trow-webhook" in "trow".
SERVICE_NAME = "trow-webhook.trow.svc"
SERVING_SANS = (SERVICE_NAME, "localhost", LOOPBACK)
CLIENT_TIMEOUT = 20.0

CONFIG = """\
image_validation:
  default: Deny
  allow:
    - quay.io
    - registry.k8s.io/
    - docker.io/library/
    - ghcr.io/acme/
  deny:
    - quay.io/evil/
    - docker.io/library/busybox
image_mutation:
  registries: [docker.io]
  ignore: [docker.io/bitnami/, postgres]
"""

DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "0f" * 32

_TLS_LISTENING = re.compile(rb"TrowSite \(TLS\) starting on (\d+)")
_ANY_LISTENING = re.compile(rb"starting on \d+")


# -- PKI ---------------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, traditional: bool = False) -> bytes:
    """PKCS#8 (C{BEGIN PRIVATE KEY}), or with C{traditional} the PKCS#1 / SEC1 encodings
    (C{BEGIN RSA PRIVATE KEY}, C{BEGIN EC PRIVATE KEY}) that cert-manager writes by default."""
    fmt = serialization.PrivateFormat.TraditionalOpenSSL if traditional else serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Authority:
    """A CA (root or intermediate) that issues certificates."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    # The certificates a server sends after its leaf: empty for a root-issued leaf.
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def pem(self) -> bytes:
        return _pem_cert(self.cert)


@dataclass
class ServingPair:
    """A serving key and certificate (chain), as written to C{tls.key} and C{tls.crt}."""

    key_pem: bytes
    cert_pem: bytes
    serial: int
    common_name: str


def _ca_extensions(builder: x509.CertificateBuilder, path_length: int) -> x509.CertificateBuilder:
    return builder.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True).add_extension(
        x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
        ),
        critical=True,
    )


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))


def make_root(common_name: str = "trow webhook test CA") -> Authority:
    """A self-signed root CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
    builder = _validity(builder.public_key(key.public_key()).serial_number(x509.random_serial_number()))
    cert = _ca_extensions(builder, path_length=1).sign(key, hashes.SHA256())
    return Authority(key, cert)


def make_intermediate(root: Authority, common_name: str = "trow webhook test intermediate") -> Authority:
    """An intermediate CA signed by C{root}; leaves it issues are served with it in the chain."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(root.cert.subject)
    builder = _validity(builder.public_key(key.public_key()).serial_number(x509.random_serial_number()))
    cert = _ca_extensions(builder, path_length=0).sign(root.key, hashes.SHA256())
    return Authority(key, cert, chain=(cert,))


def issue(
    authority: Authority, common_name: str, sans: Sequence[str] = SERVING_SANS, key_kind: str = "ec"
) -> ServingPair:
    """A serving certificate for C{sans} (DNS names and IP addresses), signed by C{authority}.

    C{key_kind}: C{ec} (P-256, PKCS#8), C{ec-sec1} (P-256, SEC1) or C{rsa-pkcs1} (RSA 2048,
    PKCS#1, cert-manager's default) or C{rsa-1024} (PKCS#1, too small for OpenSSL's default
    security level: a matching pair that a TLS server nevertheless cannot use).
    """
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_kind == "rsa-pkcs1":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif key_kind == "rsa-1024":
        key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    else:
        assert key_kind in ("ec", "ec-sec1"), key_kind
        key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for san in sans:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    serial = x509.random_serial_number()
    builder = x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(authority.cert.subject)
    builder = _validity(builder.public_key(key.public_key()).serial_number(serial))
    cert = (
        builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    chain = _pem_cert(cert) + b"".join(_pem_cert(extra) for extra in authority.chain)
    return ServingPair(_pem_key(key, traditional=key_kind != "ec"), chain, serial, common_name)


# -- certificate files on disk -------------------------------------------------------------------


class CertFiles:
    """C{tls.key} and C{tls.crt} in a directory, written the ways a rotation can write them."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.key = directory / "tls.key"
        self.cert = directory / "tls.crt"

    def webhook_listen(self) -> str:
        """The C{--webhook-listen} description for these files, on a port chosen by the kernel."""
        # Endpoint descriptions separate arguments with ':'; the temp paths must not hold one.
        assert ":" not in str(self.key) + str(self.cert)
        return f"ssl:0:interface={LOOPBACK}:privateKey={self.key}:certKey={self.cert}"

    def _rename_in(self, target: Path, data: bytes) -> None:
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        temporary.write_bytes(data)
        os.replace(temporary, target)

    def rename_key(self, pair: ServingPair) -> None:
        """Write a new key beside the old one, then rename it over C{tls.key}."""
        self._rename_in(self.key, pair.key_pem)

    def rename_cert(self, pair: ServingPair) -> None:
        """Write a new certificate beside the old one, then rename it over C{tls.crt}."""
        self._rename_in(self.cert, pair.cert_pem)

    def rename_both(self, pair: ServingPair) -> None:
        """Both files renamed in (key first, as a rotation that writes the key first would)."""
        self.rename_key(pair)
        self.rename_cert(pair)

    def overwrite(self, target: Path, data: bytes) -> None:
        """Rewrite C{target} in place: same inode, truncated then written."""
        before = target.stat().st_ino
        with open(target, "r+b") as handle:
            handle.truncate(0)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        assert target.stat().st_ino == before, "an in-place overwrite must keep the inode"


class AtomicWriterVolume(CertFiles):
    """A Secret volume as the kubelet's atomic writer lays it out and updates it.

    C{tls.crt -> ..data/tls.crt}, C{..data -> ..<timestamp>/}: an update writes a new timestamped
    directory, points a new symlink C{..data_tmp} at it, renames that over C{..data} (both files
    change in one step) and removes the old directory.
    """

    def __init__(self, directory: Path, pair: ServingPair) -> None:
        super().__init__(directory)
        self._generation = 0
        self._current: Path | None = None
        self.update(pair)
        os.symlink("..data/tls.key", self.key)
        os.symlink("..data/tls.crt", self.cert)

    def update(self, pair: ServingPair) -> None:
        """Publish C{pair} the atomic-writer way."""
        self._generation += 1
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y_%m_%d_%H_%M_%S")
        new = self.directory / f"..{stamp}.{self._generation:09d}"
        new.mkdir()
        (new / "tls.key").write_bytes(pair.key_pem)
        (new / "tls.crt").write_bytes(pair.cert_pem)
        link = self.directory / "..data_tmp"
        os.symlink(new.name, link)
        os.replace(link, self.directory / "..data")
        if self._current is not None:
            shutil.rmtree(self._current)
        self._current = new


# -- HTTPS client --------------------------------------------------------------------------------


@dataclass
class Reply:
    """One HTTP response read whole."""

    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookClient:
    """An HTTPS client of the webhook listener that verifies trow's chain against C{cafile}."""

    def __init__(self, port: int, cafile: Path) -> None:
        self.port = port
        self.cafile = cafile

    def context(self) -> ssl.SSLContext:
        """A verifying context that trusts the test CA only (hostname checking on)."""
        return ssl.create_default_context(cafile=str(self.cafile))

    def connect(
        self, server_hostname: str = SERVICE_NAME, context: ssl.SSLContext | None = None
    ) -> http.client.HTTPSConnection:
        """A new TCP connection to 127.0.0.1, with the TLS handshake done for C{server_hostname}
        (SNI and the name verified), as the apiserver dials a webhook Service."""
        context = context if context is not None else self.context()
        raw = socket.create_connection((LOOPBACK, self.port), timeout=CLIENT_TIMEOUT)
        try:
            tls = context.wrap_socket(raw, server_hostname=server_hostname)
        except BaseException:
            raw.close()
            raise
        connection = http.client.HTTPSConnection(server_hostname, self.port, context=context, timeout=CLIENT_TIMEOUT)
        connection.sock = tls
        return connection

    def exchange(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        connection: http.client.HTTPSConnection | None = None,
    ) -> Reply:
        """One request on C{connection} (kept open) or on a new connection (closed after)."""
        own = connection is None
        conn = self.connect() if connection is None else connection
        try:
            headers = {"Content-Type": "application/json", "Accept": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return Reply(response.status, response.getheader("Content-Type") or "", data)
        finally:
            if own:
                conn.close()

    def review(self, path: str, document: Mapping[str, Any], connection: http.client.HTTPSConnection | None = None) -> dict[str, Any]:
        """POST an AdmissionReview as the apiserver does (with C{?timeout=}), expect 200 and an
        AdmissionReview that echoes apiVersion, kind and uid; return its C{response}."""
        reply = self.exchange("POST", f"{path}?timeout=5s", json.dumps(document).encode(), connection)
        assert reply.status == 200, (reply.status, reply.body)
        assert reply.content_type.startswith("application/json"), reply.content_type
        answer = reply.json()
        assert answer["apiVersion"] == "admission.k8s.io/v1"
        assert answer["kind"] == "AdmissionReview"
        response: dict[str, Any] = answer["response"]
        assert response["uid"] == document["request"]["uid"]
        assert isinstance(response["allowed"], bool)
        return response


def peer_certificate(connection: http.client.HTTPSConnection) -> x509.Certificate:
    """The leaf certificate trow presented on C{connection}."""
    assert isinstance(connection.sock, ssl.SSLSocket)
    der = connection.sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def openssl_refuses(pair: ServingPair) -> bool:
    """Whether this machine's OpenSSL (the one trow's pyOpenSSL uses) refuses to serve C{pair}."""
    from OpenSSL import SSL

    context = SSL.Context(SSL.TLS_METHOD)
    key = serialization.load_pem_private_key(pair.key_pem, password=None)
    assert isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey))
    try:
        context.use_certificate(x509.load_pem_x509_certificate(pair.cert_pem))
        context.use_privatekey(key)
    except SSL.Error:
        return True
    return False


def refused_pair(root: Authority) -> ServingPair:
    """A key and certificate that match but that OpenSSL will not serve (RSA 1024 under the
    default security level); skips the test where this OpenSSL would serve it."""
    pair = issue(root, "trow-webhook weak RSA 1024", key_kind="rsa-1024")
    if not openssl_refuses(pair):
        pytest.skip("this OpenSSL serves RSA 1024 keys (security level 0 or 1)")
    return pair


def try_served_serial(client: WebhookClient) -> int | str:
    """Like L{served_serial}, but a failed connection or request gives its error as text."""
    try:
        return served_serial(client)
    except (OSError, http.client.HTTPException, AssertionError) as e:
        return f"new connection failed: {e!r}"


def served_serial(client: WebhookClient) -> int:
    """The serial of the certificate a NEW connection gets, after a /healthz on it succeeds."""
    connection = client.connect()
    try:
        reply = client.exchange("GET", "/healthz", connection=connection)
        assert reply.status == 200, reply
        return peer_certificate(connection).serial_number
    finally:
        connection.close()


def webhook_port(trow: TrowProcess, timeout: float = START_TIMEOUT) -> int:
    """The port of the webhook listener, from its C{TrowSite (TLS) starting on <port>} line."""
    deadline = time.monotonic() + timeout
    while True:
        match = _TLS_LISTENING.search(trow.log().encode())
        if match:
            return int(match.group(1))
        if not trow.running:
            pytest.fail(f"trow exited before the webhook listened; log:\n{trow.log()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no 'TrowSite (TLS) starting on' line within {timeout:.0f}s; log:\n{trow.log()}")
        time.sleep(0.05)


def webhook_args(files: CertFiles, config: Path) -> list[str]:
    return ["--config", str(config), "--hostname", HOSTNAME, "--webhook-listen", files.webhook_listen()]


def write_config(directory: Path) -> Path:
    path = directory / "trow.yaml"
    path.write_text(CONFIG)
    return path


# -- AdmissionReviews as the apiserver sends them -------------------------------------------------


def container(name: str, image: str) -> dict[str, Any]:
    """A container as the apiserver sends it (defaults filled in)."""
    return {
        "name": name,
        "image": image,
        "resources": {},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }


def pod_spec(containers: Sequence[str], init: Sequence[str] = (), ephemeral: Sequence[str] = ()) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [container(f"c{i}", image) for i, image in enumerate(containers)],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "securityContext": {},
        "schedulerName": "default-scheduler",
    }
    if init:
        spec["initContainers"] = [container(f"init{i}", image) for i, image in enumerate(init)]
    if ephemeral:
        spec["ephemeralContainers"] = [
            {**container(f"debugger-{i}", image), "stdin": True, "tty": True, "targetContainerName": "c0"}
            for i, image in enumerate(ephemeral)
        ]
    return spec


def _template(spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"creationTimestamp": None, "labels": {"app": "shop"}}, "spec": spec}


def pod(spec: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "shop", "namespace": "shop"}, "spec": spec}


def deployment(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "apiVersion": "apps/v1",
        "metadata": {"name": "shop", "namespace": "shop", "generation": 1},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": _template(spec),
            "strategy": {"type": "RollingUpdate"},
        },
    }


def cronjob(spec: dict[str, Any]) -> dict[str, Any]:
    spec = {**spec, "restartPolicy": "OnFailure"}
    return {
        "kind": "CronJob",
        "apiVersion": "batch/v1",
        "metadata": {"name": "shop", "namespace": "shop"},
        "spec": {
            "schedule": "*/5 * * * *",
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {"metadata": {"creationTimestamp": None}, "spec": {"backoffLimit": 6, "template": _template(spec)}},
        },
    }


# kind -> (group, version, resource, object builder, JSON pointer of the pod spec)
KINDS: dict[str, tuple[str, str, str, Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    "Pod": ("", "v1", "pods", pod, "/spec"),
    "Deployment": ("apps", "v1", "deployments", deployment, "/spec/template/spec"),
    "CronJob": ("batch", "v1", "cronjobs", cronjob, "/spec/jobTemplate/spec/template/spec"),
}


def admission_review(
    kind: str,
    obj: dict[str, Any],
    operation: str = "CREATE",
    old: dict[str, Any] | None = None,
    sub_resource: str | None = None,
) -> dict[str, Any]:
    """An AdmissionReview v1 request as kube-apiserver sends it, with a fresh uid."""
    group, version, resource, _, _ = KINDS[kind]
    gvk = {"group": group, "version": version, "kind": kind}
    gvr = {"group": group, "version": version, "resource": resource}
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": gvk,
        "resource": gvr,
        "requestKind": gvk,
        "requestResource": gvr,
        "name": obj["metadata"]["name"],
        "namespace": obj["metadata"]["namespace"],
        "operation": operation,
        "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
        "object": obj,
        "oldObject": old,
        "dryRun": False,
        "options": {
            "kind": "CreateOptions" if operation == "CREATE" else "UpdateOptions",
            "apiVersion": "meta.k8s.io/v1",
            "fieldManager": "kubectl-client-side-apply",
        },
    }
    if sub_resource:
        request["subResource"] = sub_resource
        request["requestSubResource"] = sub_resource
    return {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": request}


def denial_clauses(message: str, denied: Sequence[str]) -> dict[str, str]:
    """Split a denial message into the text that follows each denied image, up to the next one
    (whatever trow's separators are), so that each image's reason can be checked on its own."""
    positions = []
    for image in denied:
        # Quoted or not, the image must appear as written.
        found = [m.start() for m in re.finditer(r"(?<![\w./:@-])" + re.escape(image) + r"(?![\w./:@-])", message)]
        assert found, f"the denial message does not name {image!r}: {message}"
        positions.append((found[0], image))
    positions.sort()
    clauses = {}
    for i, (start, image) in enumerate(positions):
        end = positions[i + 1][0] if i + 1 < len(positions) else len(message)
        clauses[image] = message[start + len(image) : end]
    return clauses


def decode_patch(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The JSONPatch of a mutating response ([] when there is none)."""
    if "patch" not in response:
        assert "patchType" not in response, response
        return []
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"], validate=True))
    assert isinstance(patch, list)
    return patch


def apply_patch(document: dict[str, Any], patch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Apply C{replace} operations (RFC 6902) to a copy of C{document}, as the apiserver would;
    every path must exist."""
    result: dict[str, Any] = json.loads(json.dumps(document))
    for op in patch:
        assert op["op"] == "replace", op
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target: Any = result
        for part in parts[:-1]:
            target = target[int(part)] if isinstance(target, list) else target[part]
        last = parts[-1]
        if isinstance(target, list):
            assert 0 <= int(last) < len(target), op
            target[int(last)] = op["value"]
        else:
            assert last in target, op
            target[last] = op["value"]
    return result


# -- fixtures ---------------------------------------------------------------------------------


@dataclass
class Webhook:
    """A running trow with a TLS webhook listener, and a client that trusts its CA."""

    trow: TrowProcess
    client: WebhookClient
    files: CertFiles
    root: Authority
    pair: ServingPair


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    """One trow for the read-only tests (reviews, TLS checks): its certificates never change.

    It must shut down in order with no error in its log at the end.
    """
    workdir = tmp_path_factory.mktemp("webhook")
    root = make_root()
    pair = issue(root, "trow-webhook")
    files = CertFiles(workdir / "certs")
    files.key.write_bytes(pair.key_pem)
    files.cert.write_bytes(pair.cert_pem)
    cafile = workdir / "ca.crt"
    cafile.write_bytes(root.pem)
    trow = TrowProcess(workdir / "trow", extra_args=webhook_args(files, write_config(workdir)))
    try:
        trow.start()
        yield Webhook(trow, WebhookClient(webhook_port(trow), cafile), files, root, pair)
        trow.stop_cleanly()
    finally:
        trow.close()


@dataclass
class Rotating:
    """A trow of one test's own whose certificate files the test rotates."""

    trow: TrowProcess
    client: WebhookClient
    root: Authority


def start_rotating(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path, root: Authority, files: CertFiles
) -> Rotating:
    cafile = tmp_path / "ca.crt"
    cafile.write_bytes(root.pem)
    trow = trow_factory("trow", extra_args=webhook_args(files, write_config(tmp_path)))
    return Rotating(trow, WebhookClient(webhook_port(trow), cafile), root)


def assert_not_restarted(trow: TrowProcess, pid: int) -> None:
    """Same process, still running, and its listeners started exactly once."""
    assert trow.running, f"trow died; log:\n{trow.log()}"
    assert trow.pid == pid
    assert trow.starts == 1
    assert len(_TLS_LISTENING.findall(trow.log().encode())) == 1, trow.log()


def assert_quiet_log(trow: TrowProcess) -> None:
    log = trow.log()
    assert "Traceback" not in log and "Unhandled" not in log, log


# -- 1. validation over HTTPS -------------------------------------------------------------------


def test_validate_pod_denies_every_bad_image_and_says_why(webhook: Webhook) -> None:
    """A Pod CREATE with allowed and denied images in containers and initContainers: allowed
    false, and the message names each denied image as written with its own reason (the deny rule,
    or the Deny default), including the component-boundary trap quay.io.evil.com, and none of the
    allowed images."""
    allowed = ["nginx:1.27", "quay.io/prometheus/node-exporter:v1.8.2", "registry.k8s.io/pause:3.9"]
    denied = {
        "quay.io.evil.com/prometheus/node-exporter:v1.8.2": "default",  # not quay.io: Deny default
        "quay.io/evil/miner:1": "quay.io/evil",  # longer deny beats allow quay.io
        "busybox:1.36": "docker.io/library/busybox",  # longer deny beats allow docker.io/library/
    }
    spec = pod_spec(
        containers=[allowed[0], "quay.io.evil.com/prometheus/node-exporter:v1.8.2", allowed[1], "quay.io/evil/miner:1"],
        init=["busybox:1.36", allowed[2]],
    )
    response = webhook.client.review("/validate-image", admission_review("Pod", pod(spec)))
    assert response["allowed"] is False
    message = response["status"]["message"]
    clauses = denial_clauses(message, list(denied))
    for image, why in denied.items():
        assert why in clauses[image], f"{image}: expected the reason to mention {why!r}: {message}"
    assert "Deny" in clauses["quay.io.evil.com/prometheus/node-exporter:v1.8.2"], message
    for image in allowed:
        assert image not in message, f"allowed image {image} named in the denial: {message}"


def test_validate_pod_allowed(webhook: Webhook) -> None:
    """A Pod whose images all match allow rules (on component boundaries, any port of an allowed
    host) is allowed, with no denial message."""
    spec = pod_spec(
        containers=["nginx", "docker.io/library/nginx:1.27@" + DIGEST, "quay.io:443/prometheus/prometheus:v2"],
        init=["ghcr.io/acme/migrate:2.0"],
    )
    response = webhook.client.review("/validate-image", admission_review("Pod", pod(spec)))
    assert response["allowed"] is True, response
    assert "message" not in response.get("status", {}), response


def test_validate_deployment_judges_images_rewritten_to_trow_as_their_upstream(webhook: Webhook) -> None:
    """A Deployment's pod template is checked. Images already rewritten to pull through trow
    (what the mutating webhook produces, seen by the validating one afterwards) are judged as the
    upstream image: nginx allowed, busybox denied. A port does not dodge a deny rule."""
    rewritten_ok = f"{HOSTNAME}/f/docker.io/library/nginx:1.27"
    rewritten_bad = f"{HOSTNAME}/f/docker.io/library/busybox:1.36"
    spec = pod_spec(
        containers=[rewritten_ok, rewritten_bad],
        init=["ghcr.io/acme/migrate:2.0", "quay.io:443/evil/miner:1"],
    )
    response = webhook.client.review("/validate-image", admission_review("Deployment", deployment(spec)))
    assert response["allowed"] is False
    message = response["status"]["message"]
    clauses = denial_clauses(message, [rewritten_bad, "quay.io:443/evil/miner:1"])
    assert "docker.io/library/busybox" in clauses[rewritten_bad], message
    assert "quay.io/evil" in clauses["quay.io:443/evil/miner:1"], message
    assert rewritten_ok not in message and "ghcr.io/acme/migrate" not in message, message

    allowed = pod_spec(containers=[rewritten_ok], init=["ghcr.io/acme/migrate:2.0"])
    response = webhook.client.review("/validate-image", admission_review("Deployment", deployment(allowed)))
    assert response["allowed"] is True, response


def test_validate_cronjob(webhook: Webhook) -> None:
    """A CronJob's job template (spec.jobTemplate.spec.template.spec) is checked: a denied init
    container image refuses the CronJob at apply time; an all-allowed one passes."""
    spec = pod_spec(containers=["nginx:1.27"], init=["evil.example.com/miner:1"])
    response = webhook.client.review("/validate-image", admission_review("CronJob", cronjob(spec)))
    assert response["allowed"] is False
    message = response["status"]["message"]
    clauses = denial_clauses(message, ["evil.example.com/miner:1"])
    assert "Deny" in clauses["evil.example.com/miner:1"], message
    assert "nginx" not in message, message

    ok = pod_spec(containers=["nginx:1.27"], init=["registry.k8s.io/git-sync/git-sync:v4.2.1"])
    assert webhook.client.review("/validate-image", admission_review("CronJob", cronjob(ok)))["allowed"] is True


def test_validate_ephemeral_container_update(webhook: Webhook) -> None:
    """kubectl debug: an UPDATE of pods/ephemeralcontainers whose new ephemeral container image
    is denied is refused, naming that image; with an allowed debug image it passes."""
    running = pod_spec(containers=["nginx:1.27"])
    bad_image = "quay.io.evil.com/debug/busybox:1.36"
    debugged = pod_spec(containers=["nginx:1.27"], ephemeral=[bad_image])
    review = admission_review(
        "Pod", pod(debugged), operation="UPDATE", old=pod(running), sub_resource="ephemeralcontainers"
    )
    response = webhook.client.review("/validate-image", review)
    assert response["allowed"] is False
    message = response["status"]["message"]
    denial_clauses(message, [bad_image])
    assert "nginx" not in message, message

    fine = pod_spec(containers=["nginx:1.27"], ephemeral=["registry.k8s.io/e2e-test-images/agnhost:2.45"])
    review = admission_review("Pod", pod(fine), operation="UPDATE", old=pod(running), sub_resource="ephemeralcontainers")
    assert webhook.client.review("/validate-image", review)["allowed"] is True


# -- 2. mutation over HTTPS ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Pod", "Deployment", "CronJob"])
def test_mutate_rewrites_docker_hub_images_to_trow(webhook: Webhook, kind: str) -> None:
    """/mutate-image answers a base64 JSONPatch of replace operations that point docker.io images
    at trow (<hostname>/f/docker.io/library/<name>:<tag>, digests kept), and leaves alone images
    of other registries, images already on trow and ignored prefixes. Applying the patch and
    sending the result again gives no patch: the rewrite is idempotent."""
    _, _, _, build, spec_pointer = KINDS[kind]
    spec = pod_spec(
        containers=[
            "nginx:1.27",  # 0: rewritten
            f"docker.io/library/redis:7.2@{DIGEST}",  # 1: rewritten, tag and digest kept
            "quay.io/prometheus/node-exporter:v1.8.2",  # 2: not a mutated registry
            f"{HOSTNAME}/f/docker.io/library/nginx:1.27",  # 3: already through trow
            "bitnami/redis:7.2",  # 4: ignored (docker.io/bitnami/)
        ],
        init=[
            "busybox",  # 0: rewritten, :latest made explicit
            f"index.docker.io/library/alpine@{OTHER_DIGEST}",  # 1: rewritten, digest only
            "postgres:16",  # 2: ignored (postgres = docker.io/library/postgres)
        ],
    )
    document = admission_review(kind, build(spec))
    response = webhook.client.review("/mutate-image", document)
    assert response["allowed"] is True
    patch = decode_patch(response)
    expected = {
        f"{spec_pointer}/containers/0/image": f"{HOSTNAME}/f/docker.io/library/nginx:1.27",
        f"{spec_pointer}/containers/1/image": f"{HOSTNAME}/f/docker.io/library/redis:7.2@{DIGEST}",
        f"{spec_pointer}/initContainers/0/image": f"{HOSTNAME}/f/docker.io/library/busybox:latest",
        f"{spec_pointer}/initContainers/1/image": f"{HOSTNAME}/f/docker.io/library/alpine@{OTHER_DIGEST}",
    }
    assert all(op["op"] == "replace" for op in patch), patch
    assert {op["path"]: op["value"] for op in patch} == expected
    assert len(patch) == len(expected), patch

    patched = apply_patch(document["request"]["object"], patch)
    again = webhook.client.review("/mutate-image", admission_review(kind, patched))
    assert again["allowed"] is True
    assert decode_patch(again) == [], "a second pass over the patched object must change nothing"


def test_mutate_leaves_ignored_and_foreign_images_alone(webhook: Webhook) -> None:
    """A Pod with only ignored prefixes, other registries and trow's own images gets no patch."""
    spec = pod_spec(
        containers=["bitnami/redis:7.2", "docker.io/bitnami/postgresql:16", "quay.io/x/y:1"],
        init=["postgres:16", f"{HOSTNAME}/f/docker.io/library/busybox:1.36", "ghcr.io/acme/migrate:2.0"],
    )
    response = webhook.client.review("/mutate-image", admission_review("Pod", pod(spec)))
    assert response["allowed"] is True
    assert decode_patch(response) == []


def test_mutate_ephemeral_container_update(webhook: Webhook) -> None:
    """kubectl debug through the mutating webhook: the new ephemeral container's Docker Hub image
    is rewritten to pull through trow (a replace at /spec/ephemeralContainers/0/image); the
    running containers' images, which the old object already had, are not touched (rewriting
    them would be refused by the apiserver, and would restart them)."""
    running = pod_spec(containers=["nginx:1.27"])
    debugged = pod_spec(containers=["nginx:1.27"], ephemeral=["busybox:1.36"])
    review = admission_review("Pod", pod(debugged), operation="UPDATE", old=pod(running), sub_resource="ephemeralcontainers")
    response = webhook.client.review("/mutate-image", review)
    assert response["allowed"] is True
    assert decode_patch(response) == [
        {"op": "replace", "path": "/spec/ephemeralContainers/0/image", "value": f"{HOSTNAME}/f/docker.io/library/busybox:1.36"}
    ]


# -- 3. malformed bodies, health, listener separation ---------------------------------------------


@pytest.mark.parametrize("path", ["/validate-image", "/mutate-image"])
@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"this is not an AdmissionReview {", "json"),
        (
            json.dumps(
                {
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "request": {"kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE"},
                }
            ).encode(),
            "uid",
        ),
    ],
    ids=["not-json", "no-uid"],
)
def test_malformed_review_is_400_with_a_clear_message(webhook: Webhook, path: str, body: bytes, says: str) -> None:
    """A body that is not JSON, or an AdmissionReview without request.uid, gets HTTP 400 with a
    JSON message that says what is wrong; the listener keeps serving."""
    reply = webhook.client.exchange("POST", f"{path}?timeout=5s", body)
    assert reply.status == 400, reply
    assert reply.content_type.startswith("application/json"), reply.content_type
    message = reply.json()["message"]
    assert says in message.lower(), message
    assert webhook.client.exchange("GET", "/healthz").status == 200


def test_healthz_and_listener_separation(webhook: Webhook) -> None:
    """GET /healthz answers 200 on the webhook listener. The webhook endpoints are served only
    there: the plain registry listener does not admit pods, and the webhook listener is not a
    registry."""
    health = webhook.client.exchange("GET", "/healthz")
    assert health.status == 200, health
    assert webhook.client.exchange("GET", "/v2/").status == 404

    assert webhook.trow.port is not None
    document = json.dumps(admission_review("Pod", pod(pod_spec(["nginx"])))).encode()
    on_registry = raw_request(webhook.trow.port, "POST", "/validate-image", body=document)
    assert on_registry.status == 404, on_registry
    assert b"AdmissionReview" not in on_registry.body, on_registry


# -- 4. TLS -------------------------------------------------------------------------------------


def test_untrusting_client_fails_the_handshake(webhook: Webhook) -> None:
    """A client with the system trust store only (not the test CA) fails verification, as does a
    client that trusts the CA but expects another name; cleartext HTTP gets no answer."""
    with pytest.raises(ssl.SSLCertVerificationError):
        webhook.client.connect(context=ssl.create_default_context())
    with pytest.raises(ssl.SSLCertVerificationError):
        webhook.client.connect(server_hostname="trow-webhook.other.svc")
    plain = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection((LOOPBACK, webhook.client.port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(plain)
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
    assert not received.startswith(b"HTTP/"), received[:200]


@pytest.mark.parametrize("server_hostname", list(SERVING_SANS))
def test_served_certificate_and_names(webhook: Webhook, server_hostname: str) -> None:
    """The served leaf is the configured one (serial), carries the expected SANs, and verifies
    for each of them: the Service DNS name, localhost and 127.0.0.1."""
    connection = webhook.client.connect(server_hostname=server_hostname)
    try:
        assert webhook.client.exchange("GET", "/healthz", connection=connection).status == 200
        leaf = peer_certificate(connection)
    finally:
        connection.close()
    assert leaf.serial_number == webhook.pair.serial
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {SERVICE_NAME, "localhost"}
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(LOOPBACK)]


def test_webhook_listener_starts_without_warnings(webhook: Webhook) -> None:
    """Starting the TLS webhook listener logs no warning: an operator reading the log of a
    healthy start should not find a deprecation notice about trow's own TLS code."""
    warnings = [line for line in webhook.trow.log().splitlines() if "#warn]" in line]
    assert warnings == [], "\n".join(warnings)


# -- 5. rotation without a restart --------------------------------------------------------------


def test_rotation_by_rename_and_in_place_overwrite(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path
) -> None:
    """New files renamed over tls.key and tls.crt, and later the same files overwritten in place:
    each time a NEW connection gets the new certificate (serial and CN), with no restart, while a
    connection opened before the first rotation keeps working on its original certificate. The
    generations change key type and encoding too (EC PKCS#8, RSA PKCS#1, EC SEC1), as a switch to
    cert-manager's defaults would."""
    root = make_root()
    first = issue(root, "trow-webhook generation 1")
    files = CertFiles(tmp_path / "certs")
    files.key.write_bytes(first.key_pem)
    files.cert.write_bytes(first.cert_pem)
    rotating = start_rotating(trow_factory, tmp_path, root, files)
    client, trow = rotating.client, rotating.trow
    pid = trow.pid

    old = client.connect()
    try:
        review = admission_review("Pod", pod(pod_spec(["nginx:1.27"])))
        assert client.review("/validate-image", review, connection=old)["allowed"] is True
        old_sock = old.sock
        assert peer_certificate(old).serial_number == first.serial
        assert served_serial(client) == first.serial

        # Rename over (the key first, then the certificate).
        second = issue(root, "trow-webhook generation 2 (renamed)", key_kind="rsa-pkcs1")
        files.rename_both(second)
        connection = client.connect()
        try:
            leaf = peer_certificate(connection)
            assert leaf.serial_number == second.serial
            assert leaf.subject == _name(second.common_name)
            denied = admission_review("Pod", pod(pod_spec(["busybox:1.36"])))
            assert client.review("/validate-image", denied, connection=connection)["allowed"] is False
        finally:
            connection.close()

        # In place (same inodes): key, then certificate.
        third = issue(root, "trow-webhook generation 3 (overwritten in place)", key_kind="ec-sec1")
        files.overwrite(files.key, third.key_pem)
        files.overwrite(files.cert, third.cert_pem)
        assert served_serial(client) == third.serial

        # The connection opened before both rotations still works, on the same socket and
        # with the certificate it began with.
        review = admission_review("Pod", pod(pod_spec(["quay.io.evil.com/x:1"])))
        assert client.review("/validate-image", review, connection=old)["allowed"] is False
        assert old.sock is old_sock
        assert peer_certificate(old).serial_number == first.serial
    finally:
        old.close()
    assert_not_restarted(trow, pid)
    assert_quiet_log(trow)


def test_rotation_by_kubernetes_atomic_writer(trow_factory: Callable[..., TrowProcess], tmp_path: Path) -> None:
    """A Secret volume updated by the kubelet's atomic writer (tls.crt -> ..data/tls.crt, ..data
    swapped to a new directory, the old one removed): new connections get the new certificate,
    here issued by an intermediate CA and served with it in the chain (the client trusts only the
    root). A connection opened before keeps working; no restart; and SIGTERM with that keep-alive
    connection still open shuts trow down in order."""
    root = make_root()
    first = issue(root, "trow-webhook secret v1")
    volume = AtomicWriterVolume(tmp_path / "secret", first)
    rotating = start_rotating(trow_factory, tmp_path, root, volume)
    client, trow = rotating.client, rotating.trow
    pid = trow.pid
    old = client.connect()
    try:
        assert client.exchange("GET", "/healthz", connection=old).status == 200
        assert peer_certificate(old).serial_number == first.serial

        second = issue(make_intermediate(root), "trow-webhook secret v2")
        volume.update(second)
        assert served_serial(client) == second.serial

        third = issue(root, "trow-webhook secret v3")
        volume.update(third)
        assert served_serial(client) == third.serial

        assert client.exchange("GET", "/healthz", connection=old).status == 200
        assert peer_certificate(old).serial_number == first.serial
        assert_not_restarted(trow, pid)
        # A rolling update sends SIGTERM while the apiserver still holds keep-alive connections.
        trow.stop_cleanly()
    finally:
        old.close()


# -- 6. half-written rotations ------------------------------------------------------------------


def test_half_written_rotation_keeps_serving_the_previous_pair(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path
) -> None:
    """While only one of the two files is new (or a file is half written or empty), new
    connections still succeed with the previous pair; once the matching file arrives they get
    the new pair. Both orders: certificate first, then key first."""
    root = make_root()
    first = issue(root, "trow-webhook pair A")
    files = CertFiles(tmp_path / "certs")
    files.key.write_bytes(first.key_pem)
    files.cert.write_bytes(first.cert_pem)
    rotating = start_rotating(trow_factory, tmp_path, root, files)
    client, trow = rotating.client, rotating.trow
    pid = trow.pid
    assert served_serial(client) == first.serial

    # Certificate first: the new certificate with the old key is not a usable pair.
    second = issue(root, "trow-webhook pair B")
    files.rename_cert(second)
    assert served_serial(client) == first.serial
    assert served_serial(client) == first.serial  # and again: the failed reload is not sticky
    # The key half written, then empty (a writer that truncates and has not written yet).
    files.overwrite(files.key, second.key_pem[: len(second.key_pem) // 2])
    assert served_serial(client) == first.serial
    files.overwrite(files.key, b"")
    assert served_serial(client) == first.serial
    files.overwrite(files.key, second.key_pem)
    assert served_serial(client) == second.serial

    # Key first: the new key with the current certificate is not a usable pair either.
    third = issue(root, "trow-webhook pair C")
    files.rename_key(third)
    assert served_serial(client) == second.serial
    files.rename_cert(third)
    assert served_serial(client) == third.serial

    # A certificate file that vanished for a moment (deleted, then written back).
    fourth = issue(root, "trow-webhook pair D")
    files.cert.unlink()
    assert served_serial(client) == third.serial
    files.rename_key(fourth)
    files.rename_cert(fourth)
    assert served_serial(client) == fourth.serial

    assert_not_restarted(trow, pid)
    assert_quiet_log(trow)


def test_rotation_to_a_pair_openssl_refuses_keeps_the_previous_pair(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path
) -> None:
    """A rotation to a key and certificate that match but that OpenSSL will not serve (here
    RSA 1024, under the default security level) must not break the listener: like a half-written
    rotation, new connections keep getting the previous pair, and the next usable pair is
    picked up. A webhook that refuses every connection blocks every pod in the cluster when its
    failurePolicy is Fail."""
    root = make_root()
    first = issue(root, "trow-webhook good pair")
    files = CertFiles(tmp_path / "certs")
    files.key.write_bytes(first.key_pem)
    files.cert.write_bytes(first.cert_pem)
    weak = refused_pair(root)
    rotating = start_rotating(trow_factory, tmp_path, root, files)
    client, trow = rotating.client, rotating.trow
    pid = trow.pid
    assert served_serial(client) == first.serial

    files.rename_both(weak)
    assert try_served_serial(client) == first.serial
    assert try_served_serial(client) == first.serial

    second = issue(root, "trow-webhook next good pair")
    files.rename_both(second)
    assert served_serial(client) == second.serial
    assert_not_restarted(trow, pid)


# -- 7. start-up errors -------------------------------------------------------------------------


class ListenWatcher:
    """Connects to some ports over and over while a process runs: did any of them ever accept?

    Unlike a plain connect loop, it ignores the TCP self-connection Linux makes when the port
    asked for is in the ephemeral range and the kernel happens to pick it as the source port
    (nothing listens then, and the connection is to the watcher itself).
    """

    def __init__(self, ports: Sequence[int]) -> None:
        self.ports = list(ports)
        self.accepted: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            for port in self.ports:
                try:
                    with socket.create_connection((LOOPBACK, port), timeout=0.5) as sock:
                        if sock.getsockname() != sock.getpeername() and port not in self.accepted:
                            self.accepted.append(port)
                except OSError:
                    pass
            time.sleep(0.005)

    def __enter__(self) -> "ListenWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class BadFiles:
    """A webhook-listen case that must stop trow before it binds: (key, cert) and what stderr
    must say."""

    key: str
    cert: str
    says: tuple[str, ...]


def _bad_files(case: str, directory: Path) -> BadFiles:
    root = make_root()
    mine, other = issue(root, "mine"), issue(root, "other")
    key, cert = directory / "tls.key", directory / "tls.crt"
    directory.mkdir(parents=True, exist_ok=True)
    if case == "mismatched":
        key.write_bytes(other.key_pem)
        cert.write_bytes(mine.cert_pem)
        return BadFiles(str(key), str(cert), (str(key), str(cert), "match"))
    cert.write_bytes(mine.cert_pem)
    if case == "missing-key":
        return BadFiles(str(directory / "absent.key"), str(cert), (str(directory / "absent.key"), "no such file"))
    if case == "key-is-a-directory":
        (directory / "keydir").mkdir()
        return BadFiles(str(directory / "keydir"), str(cert), (str(directory / "keydir"), "directory"))
    if case == "cert-not-pem":
        key.write_bytes(mine.key_pem)
        cert.write_bytes(b"this is not a certificate\n")
        return BadFiles(str(key), str(cert), (str(cert), "pem"))
    raise AssertionError(case)


def run_failing_start(tmp_path: Path, tls_options: str) -> tuple[subprocess.CompletedProcess[bytes], ListenWatcher]:
    """Run trow (registry and webhook on fixed free ports) until it exits, watching both ports.
    If it does not exit on its own (it started after all), it is stopped after a while."""
    config = write_config(tmp_path)
    registry_port = free_port()
    webhook_port_ = free_port()
    while webhook_port_ == registry_port:
        webhook_port_ = free_port()
    args = [
        "--listen", f"tcp:{registry_port}:interface={LOOPBACK}",
        "--data-dir", str(tmp_path / "data"),
        "--config", str(config),
        "--hostname", HOSTNAME,
        "--webhook-listen", f"ssl:{webhook_port_}:interface={LOOPBACK}:{tls_options}",
    ]
    with ListenWatcher((registry_port, webhook_port_)) as watcher:
        # subprocess.run kills the child if it outlives the timeout.
        try:
            result = subprocess.run(
                trow_command(args), capture_output=True, timeout=20, cwd=tmp_path, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"trow did not exit; it started with unusable TLS files. Output:\n{e.stdout!r}\n{e.stderr!r}")
    return result, watcher


@pytest.mark.parametrize("case", ["mismatched", "missing-key", "key-is-a-directory", "cert-not-pem"])
def test_unusable_key_or_certificate_stops_startup(tmp_path: Path, case: str) -> None:
    """A key and certificate that do not match, or a key path that cannot be read, or a
    certificate file with no PEM in it: trow exits non-zero with one line on stderr that names
    the file and the problem, and never binds a port (neither the webhook's nor the registry's)."""
    bad = _bad_files(case, tmp_path / "certs")
    result, watcher = run_failing_start(tmp_path, f"privateKey={bad.key}:certKey={bad.cert}")
    stderr = result.stderr.decode(errors="replace")
    output = result.stdout.decode(errors="replace") + stderr
    assert result.returncode != 0, output
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    for needle in bad.says:
        assert needle.lower() in lines[0].lower(), f"{needle!r} not in {lines[0]!r}"
    assert "Traceback" not in output, output
    assert not _ANY_LISTENING.search(output.encode()), output
    assert watcher.accepted == [], f"trow listened on {watcher.accepted} before exiting"


def test_pair_openssl_refuses_stops_startup_cleanly(tmp_path: Path) -> None:
    """A key and certificate that match but that OpenSSL refuses to serve (RSA 1024 under the
    default security level) are as unusable as a mismatched pair: exit non-zero, one line on
    stderr naming the certificate, no traceback, no port bound."""
    directory = tmp_path / "certs"
    directory.mkdir()
    weak = refused_pair(make_root())
    key, cert = directory / "tls.key", directory / "tls.crt"
    key.write_bytes(weak.key_pem)
    cert.write_bytes(weak.cert_pem)
    result, watcher = run_failing_start(tmp_path, f"privateKey={key}:certKey={cert}")
    stderr = result.stderr.decode(errors="replace")
    output = result.stdout.decode(errors="replace") + stderr
    assert result.returncode != 0, output
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(cert) in lines[0], f"expected one line naming {cert} on stderr, got:\n{output}"
    assert "Traceback" not in output, output
    assert not _ANY_LISTENING.search(output.encode()), output
    assert watcher.accepted == [], f"trow listened on {watcher.accepted} before exiting"
