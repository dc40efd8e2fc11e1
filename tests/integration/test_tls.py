"""An ssl: listener: skopeo pushes and pulls with certificate verification on."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import ssl
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.integration.conftest import LOOPBACK, Images, Skopeo, TrowProcess, assert_same_image


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate it signed for 127.0.0.1 and localhost.

    Returns (server key, server certificate, cert dir holding the CA as ca.crt for skopeo).
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("trow test CA"))
        .issuer_name(_name("trow test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / "key.pem"
    cert_path = directory / "cert.pem"
    cert_dir = directory / "certs.d"
    cert_dir.mkdir()
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (cert_dir / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path, cert_dir


def test_ssl_listener_push_and_pull_with_verification(
    trow_factory: Callable[..., TrowProcess], images: Images, skopeo: Skopeo, tmp_path: Path
) -> None:
    """trow on an ssl: endpoint serves skopeo with TLS verification on (trusting only the test
    CA): an image goes up and comes back with every digest intact, and a client that does not
    trust the CA is refused by its own verification."""
    key, cert, cert_dir = make_pki(tmp_path / "pki")
    # Endpoint descriptions separate arguments with ':'; the temp paths must not contain one.
    assert ":" not in str(key) + str(cert)
    trow = trow_factory("tls", listen=f"ssl:0:interface={LOOPBACK}:privateKey={key}:certKey={cert}")
    assert "TrowSite (TLS) starting on" in trow.log()

    ref = trow.ref("secure/multi:v1")
    skopeo.run("copy", "--preserve-digests", f"--dest-cert-dir={cert_dir}", images.source("multi"), ref)
    pulled = tmp_path / "pulled"
    skopeo.run("copy", "--preserve-digests", f"--src-cert-dir={cert_dir}", ref, f"oci:{pulled}:v1")
    assert_same_image(images.layout, "multi", pulled, "v1")
    raw = skopeo.run("inspect", "--raw", f"--cert-dir={cert_dir}", ref).stdout
    assert raw == images.manifest_bytes("multi")

    untrusted = skopeo.run("inspect", "--raw", ref, check=False, timeout=60)
    assert untrusted.returncode != 0
    assert b"certificate" in untrusted.stderr, untrusted.stderr


def test_ssl_listener_answers_https(trow_factory: Callable[..., TrowProcess], tmp_path: Path) -> None:
    """The ssl: listener speaks HTTPS with the configured certificate (checked against the CA),
    for the registry API and the health endpoints alike."""
    key, cert, cert_dir = make_pki(tmp_path / "pki")
    trow = trow_factory("tls", listen=f"ssl:0:interface={LOOPBACK}:privateKey={key}:certKey={cert}")
    context = ssl.create_default_context(cafile=str(cert_dir / "ca.crt"))
    assert trow.port is not None
    for path in ("/v2/", "/healthz", "/readiness"):
        connection = http.client.HTTPSConnection(LOOPBACK, trow.port, context=context, timeout=30)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            assert response.status == 200, path
        finally:
            connection.close()
