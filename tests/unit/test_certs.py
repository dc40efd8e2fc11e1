"""trow.certs: the webhook certificates for clusters without cert-manager (python -m trow.certs)."""

from __future__ import annotations

import base64
import datetime
import os
import stat
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import crypto

from tests.tools import require_module
from trow.certs import MAX_DAYS, main
from trow.webhook.tls import ReloadingContextFactory

ROOT = Path(__file__).resolve().parents[2]
NAMES = [
    "trow-webhook",
    "trow-webhook.trow",
    "trow-webhook.trow.svc",
    "trow-webhook.trow.svc.cluster.local",
]


@attrs.frozen
class Run:
    """How one run ended: exit code, stdout, stderr."""

    code: int
    out: str
    err: str


def run(capsys: pytest.CaptureFixture[str], *args: str) -> Run:
    """Run C{main(args)} in-process, catching argparse's exit."""
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else -1
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def make(capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> Run:
    """Make certificates for trow-webhook in namespace trow into C{out}; assert success."""
    result = run(capsys, "--namespace", "trow", "--service", "trow-webhook", "--out", str(out), *extra)
    assert result.code == 0, result.err
    return result


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(certificate: x509.Certificate) -> list[str]:
    return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )


def assert_one_line_error(result: Run, code: int, *fragments: str) -> None:
    """Exit C{code}, nothing on stdout, one 'trow.certs: error:' line containing C{fragments}."""
    assert result.code == code
    assert result.out == ""
    assert result.err.startswith("trow.certs: error: "), result.err
    assert result.err.count("\n") == 1 and result.err.endswith("\n"), result.err
    for fragment in fragments:
        assert fragment in result.err


def test_writes_the_three_files_with_their_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ca.crt and tls.crt are world-readable PEM certificates; tls.key is a PEM key only its owner
    can read; nothing else (no CA key, no temporary file) is left in the directory."""
    out = tmp_path / "certs"
    make(capsys, out)
    assert sorted(os.listdir(out)) == ["ca.crt", "tls.crt", "tls.key"]
    assert stat.S_IMODE(os.stat(out / "tls.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(out / "tls.crt").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(out / "ca.crt").st_mode) == 0o644
    assert (out / "tls.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    for name in ("ca.crt", "tls.crt"):
        assert (out / name).read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")


def test_serving_certificate_names_the_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The serving certificate covers every name of the Service, is for servers only, and is not
    a CA; the CA is one that can sign only end-entity certificates."""
    make(capsys, tmp_path)
    cert, ca = load(tmp_path / "tls.crt"), load(tmp_path / "ca.crt")
    assert sans(cert) == NAMES
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_serving_certificate_verifies_against_the_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """tls.crt chains to ca.crt, for the name the apiserver dials (<service>.<namespace>.svc), as
    both OpenSSL and cryptography's RFC 5280 verifier see it; tls.key is tls.crt's key."""
    make(capsys, tmp_path)
    ca_pem, cert_pem = (tmp_path / "ca.crt").read_bytes(), (tmp_path / "tls.crt").read_bytes()

    store = crypto.X509Store()
    store.add_cert(crypto.load_certificate(crypto.FILETYPE_PEM, ca_pem))
    crypto.X509StoreContext(store, crypto.load_certificate(crypto.FILETYPE_PEM, cert_pem)).verify_certificate()

    verification = require_module("cryptography.x509.verification", "'cryptography>=42'")
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([load(tmp_path / "ca.crt")]))
        .build_server_verifier(x509.DNSName("trow-webhook.trow.svc"))
    )
    chain = verifier.verify(load(tmp_path / "tls.crt"), [])
    assert chain[-1] == load(tmp_path / "ca.crt")

    key = serialization.load_pem_private_key((tmp_path / "tls.key").read_bytes(), password=None)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.PEM, public) == load(
        tmp_path / "tls.crt"
    ).public_key().public_bytes(serialization.Encoding.PEM, public)


def test_trow_serves_the_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """trow's webhook listener loads the pair as written (key and certificate belong together)."""
    make(capsys, tmp_path)
    factory = ReloadingContextFactory(str(tmp_path / "tls.key"), str(tmp_path / "tls.crt"))
    assert factory.getContext() is not None


def test_prints_the_ca_bundle_and_how_to_use_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """stdout is exactly one line, the caBundle: base64 of ca.crt. stderr holds only comment
    lines, one of which is the kubectl command that creates the Secret trow mounts."""
    result = make(capsys, tmp_path)
    assert result.out.count("\n") == 1
    bundle = result.out.strip()
    assert base64.b64decode(bundle, validate=True) == (tmp_path / "ca.crt").read_bytes()
    lines = result.err.splitlines()
    assert lines and all(line.startswith("#") for line in lines)
    assert any(
        f"kubectl -n trow create secret tls trow-webhook-tls --cert={tmp_path / 'tls.crt'} --key={tmp_path / 'tls.key'}"
        in line
        for line in lines
    ), result.err


def test_days_and_cluster_domain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--days sets both certificates' lifetime (backdated a few minutes for clock skew), and
    --cluster-domain the fully qualified name."""
    make(capsys, tmp_path, "--days", "30", "--cluster-domain", "corp.example")
    for name in ("tls.crt", "ca.crt"):
        certificate = load(tmp_path / name)
        lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        assert datetime.timedelta(days=30) < lifetime <= datetime.timedelta(days=30, minutes=10)
        assert certificate.not_valid_before_utc < datetime.datetime.now(datetime.timezone.utc)
    assert sans(load(tmp_path / "tls.crt"))[-1] == "trow-webhook.trow.svc.corp.example"


def test_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second run keeps the existing files (one line, exit 1) unless --force, which replaces
    all three with a new CA."""
    make(capsys, tmp_path)
    before = (tmp_path / "ca.crt").read_bytes()
    again = run(capsys, "--namespace", "trow", "--service", "trow-webhook", "--out", str(tmp_path))
    assert_one_line_error(again, 1, "already in", "--force")
    assert (tmp_path / "ca.crt").read_bytes() == before
    make(capsys, tmp_path, "--force")
    assert (tmp_path / "ca.crt").read_bytes() != before
    assert sorted(os.listdir(tmp_path)) == ["ca.crt", "tls.crt", "tls.key"]


def test_out_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--out naming a file is one clear error, exit 1."""
    target = tmp_path / "file"
    target.write_text("")
    result = run(capsys, "--namespace", "trow", "--service", "trow-webhook", "--out", str(target))
    assert_one_line_error(result, 1, "not a directory")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--service", "trow-webhook", "--out", "DIR"], "--namespace"),
        (["--namespace", "trow", "--out", "DIR"], "--service"),
        (["--namespace", "trow", "--service", "trow-webhook"], "--out"),
        (["--namespace", "Trow", "--service", "trow-webhook", "--out", "DIR"], "'Trow' is not a valid namespace"),
        (["--namespace", "trow", "--service", "-webhook", "--out", "DIR"], "--service"),
        (["--namespace", "trow", "--service", "a.b", "--out", "DIR"], "'a.b' is not a valid service"),
        (["--namespace", "x" * 64, "--service", "trow-webhook", "--out", "DIR"], "at most 63"),
        (["--namespace", "trow", "--service", "trow-webhook", "--out", "DIR", "--days", "0"], "1 to"),
        (["--namespace", "trow", "--service", "trow-webhook", "--out", "DIR", "--days", str(MAX_DAYS + 1)], "1 to"),
        (["--namespace", "trow", "--service", "trow-webhook", "--out", "DIR", "--days", "ten"], "whole number"),
        (["--namespace", "trow", "--service", "trow-webhook", "--out", "DIR", "--cluster-domain", "a_b"], "DNS domain"),
        (["--namespace", "trow", "--service", "trow-webhook", "--out", "DIR", "--bogus"], "--bogus"),
    ],
)
def test_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    """A bad or missing argument is one line naming it, exit 2, and nothing written."""
    out = tmp_path / "out"
    result = run(capsys, *[str(out) if arg == "DIR" else arg for arg in args])
    assert_one_line_error(result, 2, fragment)
    assert not out.exists()


def test_python_dash_m(tmp_path: Path) -> None:
    """`python -m trow.certs` is the command the docs give: it works as a module, and a bad
    argument exits non-zero with one line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "trow.certs", "--namespace", "trow", "--service", "trow-webhook"]
    done = subprocess.run(
        [*command, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert base64.b64decode(done.stdout.strip()) == (tmp_path / "ca.crt").read_bytes()
    assert sans(load(tmp_path / "tls.crt")) == NAMES

    bad = subprocess.run(
        [sys.executable, "-m", "trow.certs", "--namespace", "trow", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "--service" in bad.stderr, bad.stderr
