"""Certificates for the admission webhook without cert-manager: ``python -m trow.certs``.

    python -m trow.certs --namespace trow --service trow-webhook --out DIR [--days N]

makes a throwaway CA and a serving certificate that it signs, for the names the apiserver dials
for a webhook Service:

    DIR/
      ca.crt    the CA certificate (PEM); base64 of this file is the webhook's caBundle
      tls.crt   the serving certificate (PEM), for <service>, <service>.<namespace>,
                <service>.<namespace>.svc and <service>.<namespace>.svc.<cluster domain>
      tls.key   its private key (PEM, PKCS#8, mode 0600)

The caBundle (base64 of ca.crt, one line) goes to stdout, so that it can be captured; what to do
with the files goes to stderr as comment lines. The CA's private key is never written anywhere: no
other certificate can ever be signed with it. To renew, run the command again (with ``--force``)
and replace both the Secret and the caBundle. trow re-reads tls.crt and tls.key when they change,
so a Secret update needs no restart.

Keys are ECDSA P-256, which every apiserver accepts. Bad arguments print one line naming the
problem and exit 2, as argparse does; a file that cannot be written exits 1.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import os
import re
import sys
import tempfile
from typing import Callable, NoReturn, Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILE = "ca.crt"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
DEFAULT_DAYS = 365
MAX_DAYS = 3650
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
# The Secret that deploy/ mounts at /etc/trow/tls.
SECRET_NAME = "trow-webhook-tls"
# Certificates start this much in the past, so that a node whose clock lags still accepts them.
_BACKDATE = datetime.timedelta(minutes=5)

# A Kubernetes namespace or Service name: a DNS-1123 label (RFC 1123), as the apiserver requires.
_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class CertsError(Exception):
    """The certificates cannot be made or written; the message says why."""


@attrs.frozen
class Bundle:
    """A CA and a serving certificate signed by it, as PEM.

    @ivar ca_pem: the CA certificate.
    @ivar cert_pem: the serving certificate.
    @ivar key_pem: the serving certificate's private key (unencrypted PKCS#8).
    @ivar dns_names: the names the serving certificate is valid for.
    @ivar not_after: when both certificates expire.
    """

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes = attrs.field(repr=False)
    dns_names: tuple[str, ...]
    not_after: datetime.datetime

    @property
    def ca_bundle(self) -> str:
        """The webhook configurations' C{caBundle}: base64 of the CA's PEM, one line."""
        return base64.b64encode(self.ca_pem).decode("ascii")



def _key_usage(signs_certificates: bool) -> x509.KeyUsage:
    """Digital signatures (ECDSA TLS), plus certificate and CRL signing for the CA."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )

def dns_names(service: str, namespace: str, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> tuple[str, ...]:
    """Every name a client inside the cluster may use for C{service} in C{namespace}.

    The apiserver dials C{<service>.<namespace>.svc}; the others cover clients that use the short
    forms or the fully qualified name.
    """
    return (
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.{cluster_domain}",
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def make_bundle(
    service: str,
    namespace: str,
    days: int = DEFAULT_DAYS,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
    now: datetime.datetime | None = None,
) -> Bundle:
    """Make a CA and a serving certificate for C{service} in C{namespace}, valid for C{days}.

    @param now: the time to start from (for tests); the current time when None.
    """
    start = (now or datetime.datetime.now(datetime.timezone.utc)) - _BACKDATE
    end = start + _BACKDATE + datetime.timedelta(days=days)
    names = dns_names(service, namespace, cluster_domain)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"trow webhook CA for {service}.{namespace}")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(signs_certificates=True),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[2]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(signs_certificates=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Bundle(_pem(ca), _pem(cert), key_pem, names, end)


def _write(directory: str, name: str, data: bytes, mode: int) -> str:
    """Write C{data} to C{directory/name} with C{mode}, atomically: a reader (trow following its
    certificate files) sees the old file or the new one, never a partial one."""
    path = os.path.join(directory, name)
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        with os.fdopen(handle, "wb") as stream:
            # mkstemp creates the file 0600; set the final mode before any byte is written.
            os.fchmod(stream.fileno(), mode)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def write_bundle(bundle: Bundle, directory: str, force: bool = False) -> tuple[str, str, str]:
    """Write ca.crt, tls.crt and tls.key (mode 0600) into C{directory}, creating it if needed.

    Existing files are kept, and L{CertsError} raised, unless C{force}. Returns the three paths.
    """
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CertsError(f"--out {directory!r} exists and is not a directory")
    if not force:
        existing = [name for name in (CA_FILE, CERT_FILE, KEY_FILE) if os.path.lexists(os.path.join(directory, name))]
        if existing:
            raise CertsError(
                f"{', '.join(existing)} already in {directory!r}; pass --force to replace "
                "(then update both the Secret and the caBundle)"
            )
    try:
        os.makedirs(directory, exist_ok=True)
        # The key first: a reader that sees the new certificate also finds its key.
        key_path = _write(directory, KEY_FILE, bundle.key_pem, 0o600)
        cert_path = _write(directory, CERT_FILE, bundle.cert_pem, 0o644)
        ca_path = _write(directory, CA_FILE, bundle.ca_pem, 0o644)
    except OSError as e:
        where = e.filename or directory
        raise CertsError(f"cannot write into {where!r}: {e.strerror or e}") from None
    return ca_path, cert_path, key_path


class _Parser(argparse.ArgumentParser):
    """argparse with one error line that names the command: 'trow.certs: error: ...'."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _label(what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if len(value) > 63 or not _LABEL_RE.fullmatch(value):
            raise argparse.ArgumentTypeError(
                f"{value!r} is not a valid {what} name: at most 63 lowercase letters, digits and '-', "
                "starting and ending with a letter or digit"
            )
        return value

    check.__name__ = what
    return check


def _domain(value: str) -> str:
    labels = value.rstrip(".").split(".")
    if len(value) > 253 or not all(len(label) <= 63 and _LABEL_RE.fullmatch(label) for label in labels):
        raise argparse.ArgumentTypeError(f"{value!r} is not a DNS domain such as cluster.local")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return value.rstrip(".")
    raise argparse.ArgumentTypeError(f"{value!r} is an IP address, not a DNS domain such as cluster.local")


def _days(value: str) -> int:
    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of days") from None
    if not 1 <= days <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"{days} is out of range: give 1 to {MAX_DAYS} days")
    return days


def parser() -> argparse.ArgumentParser:
    """The command line of C{python -m trow.certs}."""
    p = _Parser(
        prog="trow.certs",
        description=(
            "Make a CA and a serving certificate for trow's admission webhook, for clusters without "
            "cert-manager. Writes ca.crt, tls.crt and tls.key into --out and prints the caBundle "
            "(base64 of ca.crt) on stdout."
        ),
    )
    p.add_argument(
        "--namespace", required=True, type=_label("namespace"), help="namespace of the webhook Service (trow)"
    )
    p.add_argument(
        "--service", required=True, type=_label("service"), help="name of the webhook Service (trow-webhook)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write ca.crt, tls.crt, tls.key into")
    p.add_argument(
        "--days", type=_days, default=DEFAULT_DAYS, help=f"validity of both certificates (default {DEFAULT_DAYS})"
    )
    p.add_argument(
        "--cluster-domain",
        type=_domain,
        default=DEFAULT_CLUSTER_DOMAIN,
        help=f"the cluster's DNS domain (default {DEFAULT_CLUSTER_DOMAIN})",
    )
    p.add_argument("--force", action="store_true", help="replace ca.crt, tls.crt and tls.key if they exist")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return the exit status (argparse exits 2 itself on a bad argument)."""
    args = parser().parse_args(argv)
    bundle = make_bundle(args.service, args.namespace, args.days, args.cluster_domain)
    try:
        ca_path, cert_path, key_path = write_bundle(bundle, args.out, args.force)
    except CertsError as e:
        sys.stderr.write(f"trow.certs: error: {e}\n")
        return 1
    sys.stdout.write(bundle.ca_bundle + "\n")
    sys.stdout.flush()
    sys.stderr.write(
        f"# wrote {ca_path}, {cert_path} and {key_path} for {', '.join(bundle.dns_names)}, "
        f"valid until {bundle.not_after:%Y-%m-%d %H:%M} UTC\n"
        f"# create the Secret trow mounts:\n"
        f"#   kubectl -n {args.namespace} create secret tls {SECRET_NAME} --cert={cert_path} --key={key_path}\n"
        f"# and set the line on stdout as caBundle of both webhooks (deploy/no-cert-manager does both: "
        f"see docs/webhook.md)\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
