"""The data plane: forwarded requests and model-file ranges between nodes, over TLS.

Theory of operation
-------------------
py-libp2p keeps what it does well here (identity, admission, membership,
discovery); request and bulk traffic between nodes goes over HTTP/1.1
keep-alive on mutually authenticated TLS 1.3 (Python ``ssl``, OpenSSL in C),
entirely on the asyncio side, so a forwarded request never enters the trio
thread.  Measured on loopback (bench/dataplane_probe.py): about 1 GB/s for
one stream vs 31 MB/s for a libp2p stream.

* :mod:`.certs` -- certificates carrying the libp2p identity (the libp2p TLS
  extension), issued by a CA derived from the swarm secret.
* :mod:`.tls` -- SSL contexts and the post-handshake peer check against the
  admission oracle.
* :mod:`.wire` -- the HTTP heads, error answers and ranges (sans-IO).
* :mod:`.server` -- :class:`DataPlaneServer`.
* :mod:`.client` -- :class:`DataPlaneClient` (the proxy's ``Forwarder``) and
  :meth:`DataPlaneClient.fetch_range`.

Wire: protocol/dataplane.md.  :func:`node_cert` builds what both need from
the node's identity and the swarm secret.
"""

from __future__ import annotations

from swarmd.dataplane.certs import NodeCert, make_node_cert, swarm_ca
from swarmd.identity import Identity


def node_cert(identity: Identity, secret: bytes) -> NodeCert:
    """This node's data-plane certificate (fresh TLS key) under the swarm's CA."""
    return make_node_cert(identity, swarm_ca(secret))


__all__ = ["NodeCert", "node_cert"]
