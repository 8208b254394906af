"""TLS for the local Vertex AI surface: a throwaway CA and a certificate for ``*.googleapis.com``.

Google's gRPC clients always use TLS and always name the regional host
(``us-central1-aiplatform.googleapis.com:443``). The local route (``tools/vertex_route.py``)
sends that host to this service through an HTTP CONNECT proxy, and clients trust this
CA through ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``; nothing else trusts it. The CA's private key
is never written: once the server certificate is signed, nothing can mint another one.
Made once per state dir (``vertex_tls/``; the key readable by the service only) and reused while valid.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

VALID_DAYS = 365
RENEW_BEFORE_DAYS = 7
HOSTS = ("*.googleapis.com", "aiplatform.googleapis.com")


@dataclass(frozen=True)
class TlsFiles:
    """The CA certificate clients trust, and the server's certificate chain and key."""

    ca: Path
    certificate: Path
    key: Path

    def server_pair(self) -> tuple[bytes, bytes]:
        """(private key PEM, certificate PEM) as grpc.ssl_server_credentials takes them."""
        return self.key.read_bytes(), self.certificate.read_bytes()


def ensure(directory: Path) -> TlsFiles:
    """The TLS files in ``directory``, made now if missing or expiring within RENEW_BEFORE_DAYS."""
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    if not _valid(files):
        _make(files)
    return files


def _valid(files: TlsFiles) -> bool:
    from cryptography import x509

    if not all(path.is_file() for path in (files.ca, files.certificate, files.key)):
        return False
    certificate = x509.load_pem_x509_certificate(files.certificate.read_bytes())
    left = certificate.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return left > datetime.timedelta(days=RENEW_BEFORE_DAYS)


def _make(files: TlsFiles) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Local Vertex AI emulator CA (throwaway)")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTS[0])]))
              .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName(host) for host in HOSTS]), critical=False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    files.ca.parent.mkdir(parents=True, exist_ok=True)
    files.ca.parent.chmod(0o755)  # the CA certificate is public; the key file is 0600
    pem = serialization.Encoding.PEM
    _write(files.key, key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), 0o600)
    _write(files.certificate, server.public_bytes(pem), 0o644)
    _write(files.ca, ca.public_bytes(pem), 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data``, created with ``mode`` from the start."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(temporary, path)
