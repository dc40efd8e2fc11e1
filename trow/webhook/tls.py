"""TLS for the webhook listener, with certificates re-read when they change on disk.

cert-manager (or a Secret update) replaces C{tls.crt} and C{tls.key} in place when it rotates
them. Twisted's C{ssl:} endpoint loads them once, so trow builds the webhook's TLS endpoint itself
with a context factory that checks the files at each new connection (one stat of each) and
reloads them when they changed. Connections already open keep the certificate they began with.
"""

from __future__ import annotations

import os
from typing import Any

from OpenSSL import SSL
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.ssl import Certificate, CertificateOptions, PrivateCertificate
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger
from zope.interface import implementer

_log = Logger()


class CertificateError(ValueError):
    """The key or certificate files cannot be used."""


def _load(key_path: str, cert_path: str) -> CertificateOptions:
    try:
        with open(key_path, "rb") as handle:
            key = handle.read()
        with open(cert_path, "rb") as handle:
            chain = handle.read()
    except OSError as e:
        raise CertificateError(f"cannot read {e.filename}: {e.strerror}") from None
    marker = b"-----BEGIN CERTIFICATE-----"
    pems = [marker + part for part in chain.split(marker)[1:]]
    if not pems:
        raise CertificateError(f"{cert_path} holds no PEM certificate")
    try:
        # loadPEM of key + leaf also checks that the key belongs to the certificate.
        leaf = PrivateCertificate.loadPEM(key + b"\n" + pems[0])
        extra = [Certificate.loadPEM(pem).original for pem in pems[1:]]
    except Exception as e:  # OpenSSL raises several types for bad PEM or a key/cert mismatch
        raise CertificateError(f"{cert_path} and {key_path} are not a usable certificate and key: {e!r}") from None
    options = CertificateOptions(privateKey=leaf.privateKey.original, certificate=leaf.original, extraCertChain=extra)
    try:
        # OpenSSL's own checks (key size, signature digest) run when the context is built: build
        # it now, so a pair it refuses is refused here and never replaces a working one.
        options.getContext()
    except SSL.Error as e:
        raise CertificateError(f"OpenSSL refuses {cert_path} and {key_path}: {e}") from None
    return options


@implementer(IOpenSSLContextFactory)
class ReloadingContextFactory:
    """A server context factory that follows its key and certificate files."""

    def __init__(self, key_path: str, cert_path: str) -> None:
        self.key_path = key_path
        self.cert_path = cert_path
        self._stamp = self._stat()
        self._options = _load(key_path, cert_path)

    def _stat(self) -> tuple[Any, ...]:
        stamps: list[Any] = []
        for path in (self.key_path, self.cert_path):
            try:
                info = os.stat(path)
                stamps.append((info.st_ino, info.st_mtime_ns, info.st_size))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def getContext(self) -> SSL.Context:
        stamp = self._stat()
        if stamp != self._stamp:
            try:
                self._options = _load(self.key_path, self.cert_path)
                _log.info("webhook certificate reloaded from {cert}", cert=self.cert_path)
            except CertificateError as e:
                # Mid-rotation (one file new, the other not yet): keep serving the old pair and
                # try again at the next connection.
                _log.warn("keeping the previous webhook certificate: {why}", why=str(e))
                return self._options.getContext()
            self._stamp = stamp
        return self._options.getContext()


def _split(description: str) -> list[str]:
    """Split an endpoint description on unescaped colons (Twisted's own escaping: C{\\:})."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def reloading_ssl_endpoint(reactor: Any, description: str) -> SSL4ServerEndpoint | None:
    """An SSL endpoint for an C{ssl:PORT:privateKey=...:certKey=...} description, or None if the
    description is not C{ssl:} (the caller then uses Twisted's own parser)."""
    parts = _split(description)
    if parts[0] != "ssl":
        return None
    positional = [p for p in parts[1:] if "=" not in p]
    options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    port = options.pop("port", positional[0] if positional else None)
    if port is None or not str(port).isdigit():
        raise CertificateError(f"{description!r}: an ssl: listener needs a port, e.g. ssl:8443:privateKey=...")
    key = options.pop("privateKey", None)
    if key is None:
        raise CertificateError(f"{description!r}: an ssl: listener needs privateKey=<file>")
    cert = options.pop("certKey", key)
    interface = options.pop("interface", "")
    backlog = int(options.pop("backlog", "50"))
    if options:
        raise CertificateError(
            f"{description!r}: unsupported option(s) {', '.join(sorted(options))} for the webhook "
            "listener (supported: port, privateKey, certKey, interface, backlog)"
        )
    factory = ReloadingContextFactory(key, cert)
    return SSL4ServerEndpoint(reactor, int(port), factory, backlog=backlog, interface=interface)
