"""Peer addresses as data: seed parsing and multiaddr splitting (pure, no I/O).

Seeds come in three spellings (config ``p2p.seeds``, ``--seed``, join tokens):
``/ip4/H/tcp/P/p2p/ID`` (peer id known), ``/ip4/H/tcp/P`` and ``host:port``
(peer id learnt when dialled, see protocol/transport.md).  :func:`parse_seed`
turns any of them into ``(addrs, peer_id | None)`` or raises ValueError with a
message fit for the config error line.  The config checks seeds with it, so it
sits at the bottom of the layers; expanding a bound listen address into this
machine's interface addresses reads the host and stays in
:mod:`swarmd.runtime.p2p_addrs`.
"""

from __future__ import annotations

import ipaddress
import re

import base58
import multiaddr

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
_HOST_PROTOCOLS = ("ip4", "ip6", "dns", "dns4", "dns6")


def hostport_to_multiaddr(value: str) -> str:
    """``host:port`` / ``[v6]:port`` -> ``/ip4|ip6|dns/host/tcp/port``."""
    v = value.strip()
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)", v) or re.fullmatch(r"([^:\[\]]+):(\d+)", v)
    if not m:
        raise ValueError(f"{value!r} is not host:port, [ipv6]:port or a multiaddr")
    host, port_s = m.group(1), m.group(2)
    port = int(port_s)
    if not 1 <= port <= 65535:
        raise ValueError(f"{value!r}: port must be 1..65535")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.match(host):
            raise ValueError(f"{value!r}: {host!r} is not an IP address or host name") from None
        return f"/dns/{host.rstrip('.')}/tcp/{port}"
    return f"/ip{ip.version}/{ip.compressed}/tcp/{port}"


def split_p2p(addr: str) -> tuple[str, str | None]:
    """(transport part, peer id or None) of a multiaddr string."""
    ma = multiaddr.Multiaddr(addr)
    try:
        pid = ma.value_for_protocol("p2p")
    except Exception:
        pid = None
    if not pid:
        return str(ma), None
    return str(ma.decapsulate(multiaddr.Multiaddr(f"/p2p/{pid}"))), str(pid)


def parse_seed(value: str) -> tuple[tuple[str, ...], str | None]:
    """Parse one seed into ``((multiaddr,), peer_id | None)``.

    The returned address carries ``/p2p/<id>`` exactly when the seed did.
    """
    v = value.strip()
    if not v:
        raise ValueError("empty seed")
    if not v.startswith("/"):
        return (hostport_to_multiaddr(v),), None
    try:
        ma = multiaddr.Multiaddr(v)
    except Exception as exc:
        raise ValueError(f"{value!r} is not a valid multiaddr ({exc})") from None
    names = [p.name for p in ma.protocols()]
    if not names or names[0] not in _HOST_PROTOCOLS:
        raise ValueError(f"{value!r} must start with /ip4/, /ip6/ or /dns/")
    if len(names) < 2 or names[1] != "tcp":
        raise ValueError(f"{value!r} needs a /tcp/<port> part after the host")
    port = int(ma.value_for_protocol("tcp"))
    if not 1 <= port <= 65535:
        raise ValueError(f"{value!r}: port must be 1..65535")
    extra = [n for n in names[2:] if n != "p2p"]
    if extra or names.count("p2p") > 1:
        raise ValueError(f"{value!r}: only /host/tcp/port[/p2p/<id>] is supported")
    base, pid = split_p2p(v)
    if pid is not None:
        try:
            base58.b58decode(pid)
        except Exception:
            raise ValueError(f"{value!r}: {pid!r} is not a valid peer id") from None
    return (str(ma),), pid
