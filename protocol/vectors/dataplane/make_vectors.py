"""Regenerate protocol/vectors/dataplane/vectors.json (golden data-plane vectors).

Run: PYTHONPATH=. .venv/bin/python protocol/vectors/dataplane/make_vectors.py
Tests compare the code against the committed file, never against this script.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from swarmd.dataplane import certs, wire
from swarmd.identity import Identity

SECRET = bytes(range(32))
SEED = b"\x01" * 32
#: The certificate key: P-256 private scalar 0x0102...20 (fixed, for the vectors only).
CERT_SCALAR = int.from_bytes(bytes(range(1, 33)), "big")
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
SERIAL = 42

FORWARD_CASES = [
    ("chat", wire.ForwardHead(
        route="/v1/chat/completions", engine="llama-0", model="gemma-3-270m",
        request_id="rid-1", timeout=1799.5, first_byte=300.0, idle=120.0,
        headers=(("content-type", "application/json"), ("accept", "text/event-stream"),
                 ("X-Request-Id", "rid-1"), ("Connection", "keep-alive"),
                 ("Swarmd-Engine", "spoofed")))),
    ("embeddings_defaults", wire.ForwardHead(route="/v1/embeddings", engine="e1")),
]


def main() -> None:
    ident = Identity.from_private_bytes(SEED)
    key = ec.derive_private_key(CERT_SCALAR, ec.SECP256R1())
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    ca = certs.swarm_ca(SECRET)
    ca_der = ca.cert.public_bytes(serialization.Encoding.DER)
    node = certs.make_node_cert(ident, ca, cert_key=key, serial=SERIAL, now=NOW)
    leaf = x509.load_pem_x509_certificate(node.cert_pem).public_bytes(serialization.Encoding.DER)
    out = {
        "cert": {
            "identity_seed": SEED.hex(),
            "peer_id": ident.peer_id,
            "cert_key_scalar": f"{CERT_SCALAR:064x}",
            "cert_spki_der": spki.hex(),
            "signed_key_der": certs.libp2p_extension(ident, key.public_key()).hex(),
            "swarm_secret": SECRET.hex(),
            "ca_seed": certs.ca_seed(SECRET).hex(),
            "ca_public": ca.key.public_key().public_bytes_raw().hex(),
            "ca_cert_der": ca_der.hex(),
            "node_cert_serial": SERIAL,
            "node_cert_now": NOW.isoformat(),
            "node_cert_der": leaf.hex(),
        },
        "forward": [],
        "errors": [],
        "content_range": {
            "valid": [["bytes 0-99/100", [0, 100, 100]], ["bytes 5-5/6", [5, 6, 6]]],
            "invalid": ["bytes 5-4/10", "bytes 0-10/10", "bytes */10", "bytes 0-1", "items 0-1/2",
                        "bytes -1-2/3"],
        },
        "range_header": [[[0, 100], "bytes=0-99"], [[4096, 8192], "bytes=4096-8191"]],
    }
    for name, head in FORWARD_CASES:
        method, path, headers = wire.encode_forward(head)
        out["forward"].append({
            "name": name,
            "head": {"route": head.route, "engine": head.engine, "model": head.model,
                     "request_id": head.request_id, "timeout": head.timeout,
                     "first_byte": head.first_byte, "idle": head.idle,
                     "headers": [list(p) for p in head.headers]},
            "method": method, "path": path, "headers": [list(p) for p in headers],
        })
    for err in (wire.PlaneError("saturated", "engine answered 429", 2.0, 429),
                wire.PlaneError("refused", "peer x is not an admitted, alive member"),
                wire.PlaneError("bogus", "unknown kinds are sent as internal")):
        status, headers, body = wire.encode_error(err)
        out["errors"].append({"kind": err.kind, "message": err.message,
                              "retry_after": err.retry_after, "status": err.status,
                              "http_status": status, "headers": [list(p) for p in headers],
                              "body": body.decode()})
    out["have"] = {"valid": [], "invalid": [
        '[]', '{', '{"size":-1,"chunk_size":1,"complete":true}',
        '{"size":1,"chunk_size":0,"complete":true}', '{"size":1,"chunk_size":1,"complete":1}',
        '{"size":10,"chunk_size":1,"complete":false}',
        '{"size":10,"chunk_size":1,"complete":false,"chunks":"!!"}',
        '{"size":1099511627776,"chunk_size":1,"complete":true}',
        '{"size":10,"chunk_size":1,"complete":false,"chunks":"AAA=","coming":"!!"}',
        '{"size":10,"chunk_size":1,"complete":false,"chunks":"AAA=","coming":"AAE="}',
        '{"size":10,"chunk_size":1,"complete":false,"chunks":"AAA=","coming":5}',
        '{"size":10,"chunk_size":1,"complete":true,"coming":"AAA="}']}
    for have in (wire.Have(10 * 16_777_216 - 5, 16_777_216, frozenset({0, 9}), ("12D3KooWabc",)),
                 wire.Have(5, 16_777_216, None),
                 wire.Have(10 * 16_777_216 - 5, 16_777_216, frozenset({0}), (),
                           frozenset({3, 4}))):
        out["have"]["valid"].append({
            "size": have.size, "chunk_size": have.chunk_size, "peers": list(have.peers),
            "chunks": None if have.chunks is None else sorted(have.chunks),
            "coming": sorted(have.coming),
            "path": wire.have_path("ab" * 32), "body": wire.encode_have(have).decode()})
    path = Path(__file__).with_name("vectors.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
