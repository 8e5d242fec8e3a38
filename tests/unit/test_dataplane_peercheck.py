"""The data plane's peer check remembers what each certificate proves."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from swarmd.dataplane import node_cert, tls
from swarmd.identity import Identity

SECRET = b"\x11" * 32
A, B = Identity.generate(), Identity.generate()


class _FakeSSL:
    def __init__(self, der: bytes) -> None:
        self.der = der

    def selected_alpn_protocol(self) -> str:
        return tls.ALPN

    def getpeercert(self, binary_form: bool = False) -> bytes:
        return self.der


class _FakeTransport:
    def __init__(self, der: bytes) -> None:
        self.ssl = _FakeSSL(der)

    def get_extra_info(self, name: str) -> Any:
        return self.ssl if name == "ssl_object" else None


def test_a_peers_certificate_is_read_once_not_once_per_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    der_of = {}
    for ident in (A, B):
        pem = node_cert(ident, SECRET).cert_pem
        der_of[ident.peer_id] = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    reads: list[bytes] = []
    real = tls.peer_id_of_cert

    def counting(der: bytes) -> str:
        reads.append(der)
        return real(der)

    monkeypatch.setattr(tls, "peer_id_of_cert", counting)
    monkeypatch.setattr(tls, "CERT_CACHE", 1)
    check = tls.PeerCheck(lambda p: True)
    for _ in range(3):  # three connections of A: one read
        assert check.admit(_FakeTransport(der_of[A.peer_id]), A.peer_id) == A.peer_id
    assert len(reads) == 1 and check.stats["verified"] == 3
    with pytest.raises(tls.PeerRefused):  # a certificate that proves nothing: never cached
        check.peer_id(_FakeTransport(b"junk"))
    with pytest.raises(tls.PeerRefused):
        check.peer_id(_FakeTransport(b"junk"))
    assert reads.count(b"junk") == 2 and check.stats["refused_cert"] == 2
    assert check.peer_id(_FakeTransport(der_of[B.peer_id])) == B.peer_id  # evicts A (size 1)
    assert check.peer_id(_FakeTransport(der_of[A.peer_id])) == A.peer_id
    assert reads.count(der_of[A.peer_id]) == 2
    with pytest.raises(tls.PeerRefused):  # the cache does not bypass the identity check
        check.admit(_FakeTransport(der_of[B.peer_id]), A.peer_id)
