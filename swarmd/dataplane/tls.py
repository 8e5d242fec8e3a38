"""TLS contexts of the data plane and the post-handshake peer check.

Theory of operation
-------------------
Both sides run TLS 1.3 (Python ``ssl``, OpenSSL) with mutual authentication:
each presents its :class:`~swarmd.dataplane.certs.NodeCert` and trusts only
the swarm CA (so the handshake fails for a peer without the swarm secret),
and both offer the single ALPN id :data:`ALPN`.  A peer speaking another
major version of the plane completes the handshake with no ALPN selected
(Python ``ssl`` on OpenSSL 3 does not abort it), and :class:`PeerCheck`
refuses the connection (``refused_alpn``).
Host names are not checked: peers are named by peer id, not DNS.

After the handshake, :class:`PeerCheck` reads the peer's certificate from
the connection, derives its peer id from the libp2p extension
(:func:`~swarmd.dataplane.certs.peer_id_of_cert`) and asks the admission
oracle ``is_admitted(peer_id)``.  The server runs it before the HTTP layer
sees the connection, the client before it writes a request (and also
requires the peer id it meant to reach).  Verdicts are cached per
connection; admission is asked again for every request, since a member can
be declared dead while its connection stays open.  The peer id a certificate
proves is a pure function of its DER bytes (and OpenSSL has checked the
chain and the key on every handshake), so it is also cached by those bytes
(:data:`CERT_CACHE` certificates): reading it costs about 0.4 ms here, paid
once per peer instead of once per connection -- 500 streams opened at once
through a hop were 1,000 such reads on 2 cores.  A certificate that proves
nothing is not cached.

``ssl`` only loads a certificate chain from files, so the PEMs are written
to a private temporary directory (0700), loaded and removed at once.
"""

from __future__ import annotations

import os
import ssl
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swarmd.dataplane.certs import CertError, NodeCert, peer_id_of_cert

ALPN = "swarmd-dp/1"

#: Certificates whose peer id is remembered (one per peer; a swarm of that
#: many nodes still hits the cache, a bigger one recomputes the oldest).
CERT_CACHE = 1024

#: Admission oracle: True if this peer id is an admitted, alive member now.
IsAdmitted = Callable[[str], bool]


class PeerRefused(Exception):
    """The peer at the other end of a connection is not one we accept."""


def _load_chain(ctx: ssl.SSLContext, cert: NodeCert) -> None:
    with tempfile.TemporaryDirectory(prefix="swarmd-dp-") as d:
        os.chmod(d, 0o700)
        cp, kp = Path(d) / "cert.pem", Path(d) / "key.pem"
        fd = os.open(kp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(cert.key_pem)
        cp.write_bytes(cert.cert_pem)
        ctx.load_cert_chain(cp, kp)


def _common(ctx: ssl.SSLContext, cert: NodeCert) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=cert.ca_pem)
    _load_chain(ctx, cert)
    ctx.set_alpn_protocols([ALPN])
    return ctx


def server_context(cert: NodeCert) -> ssl.SSLContext:
    return _common(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert)


def client_context(cert: NodeCert) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    return _common(ctx, cert)


class PeerCheck:
    """Peer id of a TLS connection, and whether we accept it."""

    def __init__(self, is_admitted: IsAdmitted) -> None:
        self.is_admitted = is_admitted
        self._ids: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._by_der: dict[bytes, str] = {}  # certificate DER -> peer id, oldest first
        self.stats = {"refused_cert": 0, "refused_admission": 0, "refused_identity": 0,
                      "refused_alpn": 0, "verified": 0}

    def peer_id(self, transport: Any) -> str:
        """The verified peer id of ``transport`` (cached); PeerRefused if none."""
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is None:
            raise PeerRefused("not a TLS connection")
        cached = self._ids.get(sslobj)
        if cached is not None:
            return cached
        if sslobj.selected_alpn_protocol() != ALPN:
            self.stats["refused_alpn"] += 1
            raise PeerRefused(f"peer did not negotiate {ALPN}")
        der = sslobj.getpeercert(binary_form=True)
        if not der:
            self.stats["refused_cert"] += 1
            raise PeerRefused("peer presented no certificate")
        pid = self._by_der.get(der)
        if pid is None:
            try:
                pid = peer_id_of_cert(der)
            except CertError as exc:
                self.stats["refused_cert"] += 1
                raise PeerRefused(f"peer certificate: {exc}") from None
            if len(self._by_der) >= CERT_CACHE:
                del self._by_der[next(iter(self._by_der))]
            self._by_der[der] = pid
        self._ids[sslobj] = pid
        self.stats["verified"] += 1
        return pid

    def admit(self, transport: Any, expect: str | None = None) -> str:
        """The peer id if it is admitted (and is ``expect``, when given); else PeerRefused."""
        pid = self.peer_id(transport)
        if expect is not None and pid != expect:
            self.stats["refused_identity"] += 1
            raise PeerRefused(f"expected peer {expect}, the connection proves {pid}")
        if not self.is_admitted(pid):
            self.stats["refused_admission"] += 1
            raise PeerRefused(f"peer {pid} is not an admitted, alive member")
        return pid
