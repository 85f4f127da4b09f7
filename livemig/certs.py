"""`livemig certs DIR --host source --host dest`: a CA and certificates in QEMU's layout.

QEMU's `tls-creds-x509` reads a directory: ``ca-cert.pem``, ``server-cert.pem`` and
``server-key.pem`` (a destination), ``client-cert.pem`` and ``client-key.pem`` (a source). One
directory made here serves both daemons, whichever way a VM moves: its server certificate names
every `--host` (DNS names or IP addresses, plus localhost), its client certificate is
``CN=<client name>,O=livemig``. Keys are ECDSA P-256, written with mode 0600; the CA's key is
not kept (make a new directory to rotate), so nobody who can read the directory can mint
certificates. Tests use `CertificateAuthority` directly to issue expired, future or misnamed
certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

DEFAULT_DAYS: Final = 365
DEFAULT_CLIENT: Final = "livemig-client"
ORGANIZATION: Final = "livemig"


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key, as PEM."""

    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A CA key and self-signed certificate (in memory)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str | None = None, *, days: int = DEFAULT_DAYS) -> CertificateAuthority:
        """A new CA valid from now for `days`, named uniquely unless `name` is given.

        Two directories made separately must not trust each other, and a verifier that meets a
        certificate of a CA with the same name reports a bad signature, not an unknown issuer.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(name or f"livemig CA {secrets.token_hex(4)}")
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, cert=cert)

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate (``ca-cert.pem``)."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        *,
        server: bool,
        hosts: Sequence[str] = (),
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Issued:
        """A server (TLS web server auth, names `hosts`) or client certificate, signed here."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(minutes=5))
            .not_valid_after(not_after or now + dt.timedelta(days=DEFAULT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if hosts:
            builder = builder.add_extension(_alt_names(hosts), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )

    def revocation_list(self, revoked: Sequence[bytes] = ()) -> bytes:
        """A CRL (``ca-crl.pem``) revoking the given PEM certificates, valid for a day."""
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=1))
        )
        for pem in revoked:
            serial = x509.load_pem_x509_certificate(pem).serial_number
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - dt.timedelta(minutes=1))
                .build()
            )
            builder = builder.add_revoked_certificate(entry)
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def make_creds_dir(
    directory: Path,
    hosts: Sequence[str],
    *,
    client_name: str = DEFAULT_CLIENT,
    days: int = DEFAULT_DAYS,
    ca: CertificateAuthority | None = None,
) -> CertificateAuthority:
    """Write a CA, a server and a client certificate into `directory` (QEMU's layout).

    Raises:
        ValueError: no host was given.
        OSError: the directory cannot be written.
    """
    if not hosts:
        msg = "name at least one host (--host) for the server certificate"
        raise ValueError(msg)
    ca = ca or CertificateAuthority.create(days=days)
    names = list(dict.fromkeys([*hosts, "localhost", "127.0.0.1"]))
    until = _now() + dt.timedelta(days=days)
    server = ca.issue(hosts[0], server=True, hosts=names, not_after=until)
    client = ca.issue(client_name, server=False, not_after=until)
    directory.mkdir(parents=True, exist_ok=True)
    write_pem(directory / "ca-cert.pem", ca.cert_pem)
    write_pem(directory / "server-cert.pem", server.cert_pem)
    write_pem(directory / "server-key.pem", server.key_pem, private=True)
    write_pem(directory / "client-cert.pem", client.cert_pem)
    write_pem(directory / "client-key.pem", client.key_pem, private=True)
    return ca


def write_pem(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write a PEM file (a private key readable by its owner only)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    if private:
        path.chmod(0o600)


def client_identity(client_name: str = DEFAULT_CLIENT) -> str:
    """The distinguished name of a client certificate made here, as `authz` rules match it."""
    return f"CN={client_name},O={ORGANIZATION}"


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _alt_names(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
