"""TLS for the API port: configured files, or a self-signed certificate made once.

``[api] tls_cert`` / ``tls_key``: PEM files (a chain and its key), loaded as
they are.  ``[api] tls = "self-signed"``: on first start an ECDSA P-256 key
and a certificate (10 years, subject CN = the node name, SANs: localhost,
127.0.0.1, ::1, the listen host and the machine's host name) are written to
``data_dir/api-tls/`` (key mode 0600) and reused afterwards.  Either way the
SHA-256 fingerprint of the certificate (DER) is shown by ``swarmctl status``
(``api_tls_fingerprint``) so a client can pin it.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from pathlib import Path

from swarmd.config import ApiSection, ConfigError, parse_hostport

__all__ = ["fingerprint_of", "server_context"]


def fingerprint_of(cert_pem: bytes) -> str:
    der = ssl.PEM_cert_to_DER_cert(cert_pem.decode())
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _self_signed(directory: Path, name: str, listen_host: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "swarmd")])
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"),
                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                    x509.IPAddress(ipaddress.ip_address("::1"))]
    host = listen_host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
        if not ip.is_unspecified and str(ip) not in ("127.0.0.1", "::1"):
            sans.append(x509.IPAddress(ip))
    except ValueError:
        if host and host != "localhost":
            sans.append(x509.DNSName(host))
    hn = socket.gethostname()
    if hn and hn != "localhost":
        sans.append(x509.DNSName(hn))
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def server_context(api: ApiSection, data_dir: Path,
                   name: str) -> tuple[ssl.SSLContext | None, str | None]:
    """The API port's TLS context and certificate fingerprint, or (None, None)."""
    if api.tls_cert and api.tls_key:
        cert_path, key_path = Path(api.tls_cert).expanduser(), Path(api.tls_key).expanduser()
    elif api.tls == "self-signed":
        cert_path, key_path = _self_signed(data_dir / "api-tls", name,
                                           parse_hostport(api.listen)[0])
    else:
        return None, None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_path, key_path)
        pem = cert_path.read_bytes()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("api.tls_cert", f"cannot load {cert_path} / {key_path}: {exc}") from None
    return ctx, fingerprint_of(pem)
