"""Data-plane certificates: libp2p identity in X.509, issued by a swarm CA (pure code).

Theory of operation
-------------------
Each node presents one X.509 certificate on the data plane.  It carries the
**libp2p public key extension** of the libp2p TLS handshake spec
(OID 1.3.6.1.4.1.53594.1.1)::

    SignedKey ::= SEQUENCE { publicKey OCTET STRING, signature OCTET STRING }
    publicKey = protobuf PublicKey {Type: Ed25519 (1), Data: 32 bytes}   (36 bytes)
    signature = Ed25519-sign(identity key,
                             "libp2p-tls-handshake:" || DER(SubjectPublicKeyInfo of the cert key))

so the certificate proves that whoever holds the TLS key was authorised by the
holder of the identity key; the peer id is derived from ``publicKey``
(:func:`swarmd.identity.peer_id_from_public`).  The TLS key itself is a fresh
ECDSA P-256 key per daemon start, never written to disk.

One deviation from libp2p: the certificate is not self-signed but issued by
a **swarm CA** whose Ed25519 key every member derives from the swarm secret
(``seed = HMAC-SHA256(secret, "swarmd-dataplane-ca-v1")``).  Python's ``ssl``
has no certificate-verify callback, so a server that asks for a client
certificate can only accept one that chains to a trust anchor; with the swarm
CA as the only anchor, OpenSSL itself refuses, inside the handshake, any peer
that does not know the swarm secret (wrong swarm, no secret, stale secret).
The extension is then checked in Python right after the handshake, before a
byte of HTTP is read.  The CA certificate is deterministic (fixed serial,
subject, validity; Ed25519 signatures are deterministic), so every member
builds the same one.  The extension is marked non-critical so that OpenSSL's
chain verification accepts it.

Specification and golden vectors: protocol/dataplane.md,
protocol/vectors/dataplane/.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from swarmd.core.admission import swarm_id
from swarmd.identity import Identity, peer_id_from_public

#: The libp2p public key extension.
LIBP2P_OID = x509.ObjectIdentifier("1.3.6.1.4.1.53594.1.1")
SIGNATURE_PREFIX = b"libp2p-tls-handshake:"
CA_LABEL = b"swarmd-dataplane-ca-v1"
#: protobuf PublicKey header for an Ed25519 key: field 1 = 1 (Ed25519), field 2 = 32 bytes.
ED25519_PROTO_PREFIX = b"\x08\x01\x12\x20"
CA_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
CA_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
#: Node certificates: valid from a day back (clock skew) for ten years.
NODE_CERT_SKEW = datetime.timedelta(days=1)
NODE_CERT_LIFETIME = datetime.timedelta(days=3650)


class CertError(ValueError):
    """A peer certificate that does not prove a libp2p identity; the message says why."""


# -- DER of SignedKey (two OCTET STRINGs in a SEQUENCE) ------------------------------------


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der_tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(content)) + content


def _der_read(data: bytes, pos: int, tag: int) -> tuple[bytes, int]:
    """(content, next position) of the TLV with ``tag`` at ``pos``; CertError if malformed."""
    if pos + 2 > len(data) or data[pos] != tag:
        raise CertError(f"SignedKey: expected DER tag {tag:#04x}")
    n = data[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 4 or pos + k > len(data):
            raise CertError("SignedKey: bad DER length")
        n = int.from_bytes(data[pos : pos + k], "big")
        if n < 0x80 or data[pos] == 0:
            raise CertError("SignedKey: non-minimal DER length")
        pos += k
    if pos + n > len(data):
        raise CertError("SignedKey: truncated")
    return data[pos : pos + n], pos + n


def encode_signed_key(public_key_proto: bytes, signature: bytes) -> bytes:
    return _der_tlv(0x30, _der_tlv(0x04, public_key_proto) + _der_tlv(0x04, signature))


def decode_signed_key(der: bytes) -> tuple[bytes, bytes]:
    """(publicKey, signature) of a SignedKey; CertError if malformed."""
    seq, end = _der_read(der, 0, 0x30)
    if end != len(der):
        raise CertError("SignedKey: trailing bytes")
    pk, pos = _der_read(seq, 0, 0x04)
    sig, pos = _der_read(seq, pos, 0x04)
    if pos != len(seq):
        raise CertError("SignedKey: extra fields")
    return pk, sig


def _spki(key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def libp2p_extension(identity: Identity, cert_public: ec.EllipticCurvePublicKey) -> bytes:
    """The DER value of the libp2p extension binding ``cert_public`` to ``identity``."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(identity.private_bytes)
    sig = key.sign(SIGNATURE_PREFIX + _spki(cert_public))
    return encode_signed_key(ED25519_PROTO_PREFIX + identity.public_bytes, sig)


# -- the swarm CA ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SwarmCA:
    key: ed25519.Ed25519PrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()


def ca_seed(secret: bytes) -> bytes:
    return hmac.new(secret, CA_LABEL, hashlib.sha256).digest()


def swarm_ca(secret: bytes) -> SwarmCA:
    """The swarm's CA, derived from its secret (the same on every member)."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(ca_seed(secret))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                         f"swarmd swarm {swarm_id(secret)}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(CA_NOT_BEFORE).not_valid_after(CA_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(key, None)
    )
    return SwarmCA(key, cert)


# -- node certificates ------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeCert:
    """This node's data-plane certificate and its TLS key (PEM, for ``ssl``)."""

    peer_id: str
    cert_pem: bytes
    key_pem: bytes = b""  # repr-safe: not printed
    ca_pem: str = ""

    def __repr__(self) -> str:
        return f"NodeCert(peer_id={self.peer_id!r})"


def make_node_cert(identity: Identity, ca: SwarmCA, *,
                   cert_key: ec.EllipticCurvePrivateKey | None = None,
                   serial: int | None = None,
                   now: datetime.datetime | None = None) -> NodeCert:
    """A certificate for ``identity`` issued by ``ca`` (fresh P-256 key unless given)."""
    key = cert_key or ec.generate_private_key(ec.SECP256R1())
    now = now or datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.peer_id)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else secrets.randbits(63) + 1)
        .not_valid_before(now - NODE_CERT_SKEW).not_valid_after(now + NODE_CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.UnrecognizedExtension(
            LIBP2P_OID, libp2p_extension(identity, key.public_key())), critical=False)
        .sign(ca.key, None)
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return NodeCert(identity.peer_id, cert.public_bytes(serialization.Encoding.PEM),
                    key_pem, ca.pem)


def peer_id_of_cert(der: bytes, ca: x509.Certificate | None = None) -> str:
    """The libp2p peer id a certificate proves; CertError if it proves none.

    Checks the extension (present, well formed, Ed25519 key, valid signature
    over this certificate's key).  With ``ca``, also that ``ca`` issued it
    (OpenSSL has already checked the chain on a live connection)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CertError(f"not an X.509 certificate: {exc}") from None
    if ca is not None:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise CertError("certificate not issued by this swarm's CA") from None
    try:
        ext = cert.extensions.get_extension_for_oid(LIBP2P_OID)
    except x509.ExtensionNotFound:
        raise CertError("certificate has no libp2p public key extension") from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):  # pragma: no cover - unknown OID
        raise CertError("libp2p extension not readable")
    proto, sig = decode_signed_key(value.value)
    if len(proto) != 36 or not proto.startswith(ED25519_PROTO_PREFIX):
        raise CertError("libp2p extension: only Ed25519 identity keys are accepted")
    raw = proto[len(ED25519_PROTO_PREFIX):]
    cert_key = cert.public_key()
    if not isinstance(cert_key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise CertError("certificate key must be ECDSA or Ed25519")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(raw).verify(
            sig, SIGNATURE_PREFIX + _spki(cert_key))
    except InvalidSignature:
        raise CertError("libp2p extension signature does not match the certificate key") \
            from None
    return peer_id_from_public(raw)


def cert_sha256(pem_or_der: bytes) -> str:
    """Hex SHA-256 of a certificate's DER (vectors, logs)."""
    if pem_or_der.startswith(b"-----"):
        pem_or_der = x509.load_pem_x509_certificate(pem_or_der).public_bytes(
            serialization.Encoding.DER)
    return hashlib.sha256(pem_or_der).hexdigest()

