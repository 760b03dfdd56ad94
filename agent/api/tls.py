"""The device certificate: ECDSA P-256, self-signed, made at first start in `data_dir/tls/`.

Why self-signed and pinned by fingerprint: the robot has no name in any public PKI and may
never see the internet. The agent logs the certificate's SHA-256 fingerprint at start and
`oht-agent tls fingerprint` prints it, so a technician compares it once (trust on first use)
instead of clicking through a warning every time. The private key never leaves the data
directory and is created with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.store.private_files import write_atomic
from oht_errors import CodedError, ErrorKind

__all__ = [
    "MIN_VERSIONS",
    "TLS12_SUITES",
    "TlsError",
    "TlsFiles",
    "ensure_certificate",
    "fingerprint_of",
    "is_loopback",
    "read_fingerprint",
    "server_context",
]

log = logging.getLogger("oht.api.tls")

CERT_NAME = "device.crt"
KEY_NAME = "device.key"
_VALID_DAYS = 3650


class TlsError(CodedError):
    code = "TLS_CERT_UNUSABLE"
    kind = ErrorKind.UNAVAILABLE
    hint = "Check data_dir/tls/ (owner, permissions); move broken files away and restart to make new ones."


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    fingerprint: str


def is_loopback(host: str) -> bool:
    """Only loopback may be served without TLS (127.0.0.0/8, ::1, and the name localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def fingerprint_of(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate as colon-separated upper-case hex (what browsers show)."""
    digest = cert.fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def _names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    hostname = socket.gethostname()
    if hostname and hostname != "localhost":
        names.append(x509.DNSName(hostname))
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
        if not addr.is_unspecified and not addr.is_loopback:
            names.append(x509.IPAddress(addr))
    except ValueError:
        if host and host != hostname:
            names.append(x509.DNSName(host))
    return names


def _generate(tls_dir: Path, host: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"oht-agent {socket.gethostname()}"[:64])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(_names(host)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(tls_dir / KEY_NAME, key_pem, 0o600)
    write_atomic(tls_dir / CERT_NAME, cert.public_bytes(serialization.Encoding.PEM), 0o600)


def _load(tls_dir: Path) -> x509.Certificate:
    cert = x509.load_pem_x509_certificate((tls_dir / CERT_NAME).read_bytes())
    key = serialization.load_pem_private_key((tls_dir / KEY_NAME).read_bytes(), password=None)
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise TlsError(f"{tls_dir / KEY_NAME} does not belong to {tls_dir / CERT_NAME}")
    return cert


def ensure_certificate(data_dir: Path | str, host: str = "0.0.0.0") -> TlsFiles:
    """Load the device certificate, making it first if there is none; fix a too-open key mode."""
    tls_dir = Path(data_dir) / "tls"
    try:
        tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert_path, key_path = tls_dir / CERT_NAME, tls_dir / KEY_NAME
        if not cert_path.exists() or not key_path.exists():
            _generate(tls_dir, host)
            log.info("generated a new device certificate in %s", tls_dir)
        if key_path.stat().st_mode & 0o077:
            log.warning("%s was readable by others; set to 0600", key_path)
            os.chmod(key_path, 0o600)
        cert = _load(tls_dir)
    except (OSError, ValueError) as exc:
        raise TlsError(f"cannot use the device certificate in {tls_dir}: {exc}") from exc
    return TlsFiles(cert_path, key_path, fingerprint_of(cert))


def read_fingerprint(data_dir: Path | str) -> str | None:
    """The fingerprint of the existing certificate, or None if none was made yet."""
    path = Path(data_dir) / "tls" / CERT_NAME
    if not path.exists():
        return None
    try:
        return fingerprint_of(x509.load_pem_x509_certificate(path.read_bytes()))
    except (OSError, ValueError) as exc:
        raise TlsError(f"cannot read {path}: {exc}") from exc


# `[api] tls_min_version` -> the oldest protocol served.
MIN_VERSIONS: dict[str, ssl.TLSVersion] = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# TLS 1.2 suites: forward-secret key exchange and AEAD only. The CBC suites (Lucky13 and other
# padding-oracle timing attacks) and static-RSA key exchange are left out; with the ECDSA device
# key only the ECDHE-ECDSA ones are ever chosen. TLS 1.3's suites are all AEAD and not set here.
TLS12_SUITES = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_context(files: TlsFiles, min_version: str = "1.2") -> ssl.SSLContext:
    """TLS 1.3, and TLS 1.2 with AEAD suites unless `min_version` is "1.3", with the device certificate."""
    if min_version not in MIN_VERSIONS:
        raise ValueError(f'tls_min_version {min_version!r}: use "1.2" or "1.3"')
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSIONS[min_version]
    context.set_ciphers(TLS12_SUITES)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(files.cert, files.key)
    return context
