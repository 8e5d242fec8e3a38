"""This machine's dialable addresses: advertised-address expansion (reads the host).

:func:`expand_listen_addr` turns a bound listen address into addresses other
machines can dial: an unspecified host (0.0.0.0, ::) becomes this machine's
interface addresses (loopback and IPv6 link-local only when nothing else is
there).  Seed parsing is pure data and lives in :mod:`swarmd.core.addrs`
(re-exported here for the transport).
"""

from __future__ import annotations

import ipaddress

import multiaddr
import psutil

from swarmd.core.addrs import hostport_to_multiaddr, parse_seed, split_p2p

__all__ = ["expand_listen_addr", "hostport_to_multiaddr", "interface_ips", "parse_seed",
           "split_p2p"]


def interface_ips(version: int) -> list[str]:
    """This machine's addresses of one IP version, routable ones first."""
    good: list[str] = []
    fallback: list[str] = []
    family = 2 if version == 4 else 10  # AF_INET / AF_INET6
    for _name, addrs in sorted(psutil.net_if_addrs().items()):
        for a in addrs:
            if int(a.family) != family:
                continue
            try:
                ip = ipaddress.ip_address(a.address.split("%")[0])
            except ValueError:
                continue
            if ip.is_loopback:
                fallback.append(ip.compressed)
            elif ip.version == 6 and ip.is_link_local:
                continue  # needs a zone id; not dialable from a multiaddr
            elif ip.compressed not in good:
                good.append(ip.compressed)
    return good or fallback


def expand_listen_addr(addr: str) -> list[str]:
    """Dialable forms of a bound listen multiaddr (no /p2p/ part)."""
    ma = multiaddr.Multiaddr(addr)
    names = [p.name for p in ma.protocols()]
    if not names or names[0] not in ("ip4", "ip6"):
        return [str(ma)]
    host = ma.value_for_protocol(names[0])
    if host not in ("0.0.0.0", "::"):
        return [str(ma)]
    rest = str(ma)[len(f"/{names[0]}/{host}"):]
    version = 4 if names[0] == "ip4" else 6
    return [f"/ip{version}/{ip}{rest}" for ip in interface_ips(version)]
