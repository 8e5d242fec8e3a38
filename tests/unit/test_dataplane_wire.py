"""Data-plane certificates and HTTP heads against protocol/vectors/dataplane/vectors.json.

The spec formulas are recomputed here by hand (DER, signature input, CA seed)
so that a codec change and a vector change cannot silently agree.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from swarmd.dataplane import certs, wire
from swarmd.identity import Identity

V = json.loads((Path(__file__).parents[2] / "protocol/vectors/dataplane/vectors.json")
               .read_text())
C = V["cert"]
SECRET = bytes.fromhex(C["swarm_secret"])
IDENT = Identity.from_private_bytes(bytes.fromhex(C["identity_seed"]))
CERT_KEY = ec.derive_private_key(int(C["cert_key_scalar"], 16), ec.SECP256R1())


def test_signed_key_follows_the_libp2p_formula() -> None:
    spki = CERT_KEY.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    assert spki.hex() == C["cert_spki_der"]
    sig = ed25519.Ed25519PrivateKey.from_private_bytes(IDENT.private_bytes).sign(
        b"libp2p-tls-handshake:" + spki)
    proto = b"\x08\x01\x12\x20" + IDENT.public_bytes
    by_hand = (b"\x30\x68" + b"\x04\x24" + proto + b"\x04\x40" + sig)
    assert by_hand.hex() == C["signed_key_der"]
    assert certs.libp2p_extension(IDENT, CERT_KEY.public_key()).hex() == C["signed_key_der"]
    assert certs.decode_signed_key(by_hand) == (proto, sig)
    assert IDENT.peer_id == C["peer_id"]


def test_swarm_ca_is_derived_from_the_secret_and_deterministic() -> None:
    seed = hmac.new(SECRET, b"swarmd-dataplane-ca-v1", hashlib.sha256).digest()
    assert seed.hex() == C["ca_seed"] == certs.ca_seed(SECRET).hex()
    ca = certs.swarm_ca(SECRET)
    assert ca.key.public_key().public_bytes_raw().hex() == C["ca_public"]
    assert ca.cert.public_bytes(serialization.Encoding.DER).hex() == C["ca_cert_der"]
    assert certs.swarm_ca(SECRET).cert == ca.cert  # every member builds the same CA
    assert certs.swarm_ca(b"\xff" * 32).cert != ca.cert


def test_node_cert_bytes_and_peer_id() -> None:
    ca = certs.swarm_ca(SECRET)
    nc = certs.make_node_cert(IDENT, ca, cert_key=CERT_KEY, serial=C["node_cert_serial"],
                              now=datetime.datetime.fromisoformat(C["node_cert_now"]))
    der = x509.load_pem_x509_certificate(nc.cert_pem).public_bytes(serialization.Encoding.DER)
    assert der.hex() == C["node_cert_der"]
    assert certs.peer_id_of_cert(der, ca.cert) == C["peer_id"]
    ext = x509.load_der_x509_certificate(der).extensions.get_extension_for_oid(certs.LIBP2P_OID)
    assert not ext.critical and ext.value.value.hex() == C["signed_key_der"]  # type: ignore[attr-defined]
    with pytest.raises(certs.CertError, match="not issued"):
        certs.peer_id_of_cert(der, certs.swarm_ca(b"\x07" * 32).cert)


def _cert(ext: bytes | None, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    ca = certs.swarm_ca(SECRET)
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
         .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(7)
         .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)))
    if ext is not None:
        b = b.add_extension(x509.UnrecognizedExtension(certs.LIBP2P_OID, ext), critical=False)
    return b.sign(ca.key, None).public_bytes(serialization.Encoding.DER)


def test_certificates_that_prove_no_identity_are_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = Identity.generate()
    good = certs.libp2p_extension(other, key.public_key())
    assert certs.peer_id_of_cert(_cert(good, key)) == other.peer_id
    # The extension signs another key (copied from someone else's certificate).
    with pytest.raises(certs.CertError, match="signature"):
        certs.peer_id_of_cert(_cert(good))
    # Claims IDENT's public key, signed by another identity: a forged identity.
    pk, sig = certs.decode_signed_key(good)
    forged = certs.encode_signed_key(b"\x08\x01\x12\x20" + IDENT.public_bytes, sig)
    with pytest.raises(certs.CertError, match="signature"):
        certs.peer_id_of_cert(_cert(forged, key))
    with pytest.raises(certs.CertError, match="no libp2p"):
        certs.peer_id_of_cert(_cert(None))
    with pytest.raises(certs.CertError, match="Ed25519"):  # a secp256k1/RSA key type
        certs.peer_id_of_cert(_cert(certs.encode_signed_key(b"\x08\x02\x12\x20" + bytes(32),
                                                            sig), key))
    with pytest.raises(certs.CertError):
        certs.peer_id_of_cert(b"not a certificate")


@pytest.mark.parametrize("der", [
    b"", b"\x30", b"\x31\x00", b"\x30\x02\x04\x00", b"\x30\x04\x04\x00\x04\x00\x00",
    b"\x30\x06\x04\x00\x04\x00\x04\x00", b"\x30\x81\x04\x04\x00\x04\x00",  # non-minimal
    b"\x30\x04\x04\x05\x04\x00", b"\x30\x04\x04\x00\x04\x00\xff",
])
def test_malformed_signed_key_is_a_cert_error(der: bytes) -> None:
    with pytest.raises(certs.CertError):
        certs.decode_signed_key(der)


def test_long_form_der_lengths_round_trip() -> None:
    big = bytes(300)
    assert certs.decode_signed_key(certs.encode_signed_key(big, b"s")) == (big, b"s")


@pytest.mark.parametrize("case", V["forward"], ids=lambda c: c["name"])
def test_forward_head_vectors(case: dict[str, object]) -> None:
    h = case["head"]
    assert isinstance(h, dict)
    head = wire.ForwardHead(route=h["route"], engine=h["engine"], model=h["model"],
                            request_id=h["request_id"], timeout=h["timeout"],
                            first_byte=h["first_byte"], idle=h["idle"],
                            headers=tuple(tuple(p) for p in h["headers"]))
    method, path, headers = wire.encode_forward(head)
    assert [method, path, [list(p) for p in headers]] == [case["method"], case["path"],
                                                          case["headers"]]
    back = wire.decode_forward(method, path, headers)
    assert back.engine == head.engine and back.route == head.route
    assert back.timeout == head.timeout and back.idle == head.idle
    assert back.headers == tuple(tuple(p) for p in headers[6:])  # type: ignore[misc]


@pytest.mark.parametrize(("method", "path", "headers", "match"), [
    ("POST", "/dp/1/forward/v1/chat", [], "Swarmd-Engine missing"),
    ("DELETE", "/dp/1/forward/v1/chat", [("Swarmd-Engine", "e")], "method"),
    ("POST", "/dp/2/forward/v1/chat", [("Swarmd-Engine", "e")], "forward path"),
    ("POST", "/dp/1/forward/v1/a b", [("Swarmd-Engine", "e")], "route"),
    ("POST", "/dp/1/forward/v1/c", [("Swarmd-Engine", "e"), ("Swarmd-Idle", "-1")], "Idle"),
    ("POST", "/dp/1/forward/v1/c", [("Swarmd-Engine", "e"), ("Swarmd-Timeout", "nan")],
     "Timeout"),
    ("POST", "/dp/1/forward/v1/c", [("Swarmd-Engine", "e"), ("Swarmd-First-Byte", "1e9")],
     "First-Byte"),
    ("POST", "/dp/1/forward/v1/c", [("Swarmd-Engine", "e")] + [("x-h", "v")] * 65,
     "forwarded headers"),
])
def test_malformed_forward_heads(method: str, path: str, headers: list[tuple[str, str]],
                                 match: str) -> None:
    with pytest.raises(wire.WireError, match=match):
        wire.decode_forward(method, path, headers)


@pytest.mark.parametrize("case", V["errors"], ids=lambda c: c["kind"])
def test_error_vectors(case: dict[str, object]) -> None:
    err = wire.PlaneError(str(case["kind"]), str(case["message"]),
                          case["retry_after"], case["status"])  # type: ignore[arg-type]
    status, headers, body = wire.encode_error(err)
    assert status == case["http_status"]
    assert [list(p) for p in headers] == case["headers"]
    assert body.decode() == case["body"]
    back = wire.decode_error(dict(headers), body)
    assert back.kind == (err.kind if err.kind in wire.ERROR_STATUS else "internal")
    assert (back.retry_after, back.status) == (err.retry_after, err.status)


def test_decode_error_never_raises_on_junk() -> None:
    e = wire.decode_error({"Swarmd-Error": "nonsense"}, b"\xff{not json")
    assert e.kind == "internal" and e.message
    e = wire.decode_error({"Swarmd-Error": "timeout"},
                          b'{"retry_after": true, "status": 9999, "message": 5}')
    assert (e.kind, e.retry_after, e.status) == ("timeout", None, None)


def test_content_range_and_range_vectors() -> None:
    for raw, want in V["content_range"]["valid"]:
        assert list(wire.parse_content_range(raw)) == want
    for raw in V["content_range"]["invalid"]:
        with pytest.raises(wire.WireError):
            wire.parse_content_range(raw)
    for (a, b), want in V["range_header"]:
        assert wire.range_header(a, b) == want
    with pytest.raises(ValueError):
        wire.range_header(5, 5)
    with pytest.raises(ValueError):
        wire.blob_path("ABC")
    with pytest.raises(wire.WireError):
        wire.parse_blob_path("/dp/1/blobs/" + "g" * 64)
    assert wire.parse_blob_path(wire.blob_path("a" * 64)) == "a" * 64


def test_relayed_headers_drop_hop_by_hop_and_plane_headers() -> None:
    got = wire.relayed_headers([("Content-Type", "text/event-stream"), ("Content-Length", "5"),
                                ("Transfer-Encoding", "chunked"), ("Swarmd-Error", "x"),
                                ("Connection", "close"), ("X-Other", "1")])
    assert got == [("Content-Type", "text/event-stream"), ("Content-Length", "5"),
                   ("X-Other", "1")]


def test_have_answers_match_the_vectors() -> None:
    for v in V["have"]["valid"]:
        chunks = None if v["chunks"] is None else frozenset(v["chunks"])
        have = wire.Have(v["size"], v["chunk_size"], chunks, tuple(v["peers"]),
                         frozenset(v["coming"]))
        assert wire.encode_have(have).decode() == v["body"]
        assert wire.decode_have(v["body"].encode()) == have
        assert wire.have_path("ab" * 32) == v["path"]
    for junk in V["have"]["invalid"]:
        with pytest.raises(wire.WireError):
            wire.decode_have(junk.encode())
