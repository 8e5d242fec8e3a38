"""mDNS discovery of swarmd nodes on the local link (python-zeroconf).

Theory of operation
-------------------
Each node registers one service instance of type ``_swarmd._tcp.local.``
named after its peer id, with a TXT record (see :func:`encode_txt`) carrying
the protocol version, the peer id, the swarm id (a public hash of the swarm
secret, :func:`swarmd.core.admission.swarm_id`) and up to 8 multiaddrs, and
browses for the same type.  Instances of other swarms, our own, and malformed
records are ignored (and counted) without dialling anyone; admission still
decides who joins, this only saves work.

Discovery only introduces: every instance found, added or updated, is handed
to ``on_found(peer_id, addrs)`` in the trio thread, and every
``reintroduce`` seconds all instances still announced are handed over again,
so membership can re-join a peer it had given up on (a healed partition).
Membership decides what to do with it.

zeroconf runs its own threads.  Creating, registering, unregistering and
closing block, so they run in ``trio.to_thread``; browser callbacks run on
zeroconf's browser thread and cross into trio with
``TrioToken.run_sync_soon``.  ``interfaces`` takes interface names (or IP
addresses) to bind to; empty means all, which python-zeroconf handles less
reliably (python-zeroconf issue 54).  :meth:`MdnsDiscovery.run` unregisters (sending the
mDNS goodbye) and closes on cancellation.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psutil
import trio

from swarmd.core.admission import swarm_id as make_swarm_id

log = logging.getLogger("swarmd.discovery")

SERVICE_TYPE = "_swarmd._tcp.local."
TXT_VERSION = "1"
MAX_ADDRS = 8
_PEER_ID = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{40,60}$")
_SWARM_ID = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class Announcement:
    peer_id: str
    swarm_id: str
    addrs: tuple[str, ...]  # full multiaddrs ending /p2p/<peer_id>


def _strip_p2p(addr: str, peer_id: str) -> str:
    suffix = f"/p2p/{peer_id}"
    return addr[: -len(suffix)] if addr.endswith(suffix) else addr


def encode_txt(peer_id: str, swarm_id: str, addrs: Sequence[str]) -> dict[str, str]:
    """TXT properties: ``v``, ``id``, ``swarm``, ``a0``..``a7`` (one bare
    multiaddr each; TXT strings are limited to 255 bytes, so one address per key)."""
    props = {"v": TXT_VERSION, "id": peer_id, "swarm": swarm_id}
    bare = [a for a in (_strip_p2p(x, peer_id) for x in addrs) if a.startswith("/")]
    for i, a in enumerate(bare[:MAX_ADDRS]):
        props[f"a{i}"] = a
    return props


def _text(v: bytes | str | None) -> str | None:
    if v is None:
        return None
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return v


def decode_txt(props: Mapping[Any, Any]) -> Announcement | None:
    """The announcement in TXT properties, or None when it is not a valid v1 record."""
    p = {_text(k): _text(v) for k, v in props.items()}
    if p.get("v") != TXT_VERSION:
        return None
    pid, swarm = p.get("id"), p.get("swarm")
    if not pid or not _PEER_ID.match(pid) or not swarm or not _SWARM_ID.match(swarm):
        return None
    addrs: list[str] = []
    for i in range(MAX_ADDRS):
        a = p.get(f"a{i}")
        if not a:
            continue
        if not re.fullmatch(r"/(ip4|ip6|dns|dns4|dns6)/[^/]+/tcp/\d{1,5}", a):
            continue
        full = f"{a}/p2p/{pid}"
        if full not in addrs:
            addrs.append(full)
    if not addrs:
        return None
    return Announcement(peer_id=pid, swarm_id=swarm, addrs=tuple(addrs))


def resolve_interfaces(names: Sequence[str]) -> list[str]:
    """IPv4 addresses for interface names (IP addresses pass through)."""
    table = psutil.net_if_addrs()
    out: list[str] = []
    for name in names:
        try:
            ipaddress.ip_address(name)
            out.append(name)
            continue
        except ValueError:
            pass
        if name not in table:
            raise ValueError(f"no network interface named {name!r} (have: "
                             f"{', '.join(sorted(table))})")
        ips = [a.address for a in table[name] if a.family == socket.AF_INET]
        if not ips:
            raise ValueError(f"network interface {name!r} has no IPv4 address")
        out.extend(ips)
    return out


def _host_ips(addrs: Sequence[str]) -> list[bytes]:
    """Packed IPv4/IPv6 addresses for the SRV target's A/AAAA records."""
    out: list[bytes] = []
    for a in addrs:
        m = re.match(r"^/(ip4|ip6)/([^/]+)/", a)
        if not m:
            continue
        try:
            ip = ipaddress.ip_address(m.group(2))
        except ValueError:
            continue
        if not ip.is_unspecified and ip.packed not in out:
            out.append(ip.packed)
    return out


def _port(addrs: Sequence[str]) -> int:
    for a in addrs:
        m = re.search(r"/tcp/(\d+)", a)
        if m:
            return int(m.group(1))
    return 0


class MdnsDiscovery:
    def __init__(
        self,
        *,
        peer_id: str,
        addrs: Sequence[str],
        secret: bytes,
        on_found: Callable[[str, tuple[str, ...]], None],
        interfaces: Sequence[str] = (),
        service_type: str = SERVICE_TYPE,
        reintroduce: float = 30.0,
    ) -> None:
        self.peer_id = peer_id
        self.addrs = tuple(addrs)
        self.swarm_id = make_swarm_id(secret)
        self.on_found = on_found
        self.interfaces = tuple(interfaces)
        self.service_type = service_type
        self.reintroduce = reintroduce
        self.stats: dict[str, int] = dict.fromkeys(
            ("found", "ignored_self", "ignored_other_swarm", "ignored_malformed", "removed"), 0)
        self._known: dict[str, Announcement] = {}  # mDNS instance name -> announcement
        self._lock = threading.Lock()
        self._token: trio.lowlevel.TrioToken | None = None

    def instance_name(self) -> str:
        return f"{self.peer_id}.{self.service_type}"

    def known(self) -> list[Announcement]:
        with self._lock:
            return list(self._known.values())

    # -- zeroconf thread side -----------------------------------------------------

    def _resolve(self, zc: Any, name: str) -> None:
        try:
            info = zc.get_service_info(self.service_type, name, timeout=3000)
        except Exception:
            info = None
        if info is None:
            return
        ann = decode_txt(info.properties or {})
        with self._lock:
            if ann is None:
                self.stats["ignored_malformed"] += 1
                return
            if ann.peer_id == self.peer_id:
                self.stats["ignored_self"] += 1
                return
            if ann.swarm_id != self.swarm_id:
                self.stats["ignored_other_swarm"] += 1
                return
            self.stats["found"] += 1
            self._known[name] = ann
        self._deliver(ann)

    def _removed(self, name: str) -> None:
        with self._lock:
            if self._known.pop(name, None) is not None:
                self.stats["removed"] += 1

    def _deliver(self, ann: Announcement) -> None:
        token = self._token
        if token is None:
            return
        try:
            token.run_sync_soon(self._call, ann)
        except trio.RunFinishedError:
            pass

    # -- trio side ----------------------------------------------------------------

    def _call(self, ann: Announcement) -> None:
        try:
            self.on_found(ann.peer_id, ann.addrs)
        except Exception:
            log.exception("discovery on_found callback failed")

    def _info(self) -> Any:
        from zeroconf import ServiceInfo

        return ServiceInfo(
            self.service_type,
            self.instance_name(),
            addresses=_host_ips(self.addrs),
            port=_port(self.addrs),
            properties=encode_txt(self.peer_id, self.swarm_id, self.addrs),
            server=f"swarmd-{self.peer_id[-12:].lower()}.local.",
        )

    def _start(self) -> tuple[Any, Any]:
        from zeroconf import InterfaceChoice, IPVersion, ServiceBrowser, ServiceListener, Zeroconf

        ifaces: Any = resolve_interfaces(self.interfaces) if self.interfaces else InterfaceChoice.All
        zc = Zeroconf(interfaces=ifaces, ip_version=IPVersion.V4Only)
        disc = self

        class _Listener(ServiceListener):
            def add_service(self, zc: Any, type_: str, name: str) -> None:
                disc._resolve(zc, name)

            def update_service(self, zc: Any, type_: str, name: str) -> None:
                disc._resolve(zc, name)

            def remove_service(self, zc: Any, type_: str, name: str) -> None:
                disc._removed(name)

        try:
            browser = ServiceBrowser(zc, self.service_type, _Listener())
        except BaseException:
            zc.close()
            raise
        return zc, browser

    def _register(self, zc: Any, info: Any) -> bool:
        """Probe and announce (about 1.7 s); False when the name is taken."""
        try:
            zc.register_service(info, allow_name_change=False)
        except Exception as exc:
            # NonUniqueNameException: another daemon announces our peer id
            # (two daemons sharing one data_dir?).  Browsing still works.
            log.error("mDNS registration failed",
                      extra={"fields": {"service": self.instance_name(), "err": repr(exc)}})
            return False
        return True

    @staticmethod
    def _stop(zc: Any, info: Any, browser: Any) -> None:
        # Unregistering a service that never got registered is a harmless no-op.
        for step in (browser.cancel, lambda: zc.unregister_service(info), zc.close):
            try:
                step()
            except Exception:
                log.debug("zeroconf shutdown step failed", exc_info=True)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Browse and register until cancelled; then unregister and close.

        ``task_status.started()`` once browsing; registration (mDNS probing)
        completes about 1.7 s later.
        """
        self._token = trio.lowlevel.current_trio_token()
        zc, browser = await trio.to_thread.run_sync(self._start)
        info = self._info()
        try:
            task_status.started()
            if await trio.to_thread.run_sync(self._register, zc, info):
                log.info("mDNS discovery started",
                         extra={"fields": {"service": self.instance_name(),
                                           "swarm": self.swarm_id}})
            while True:
                await trio.sleep(self.reintroduce)
                for ann in self.known():
                    self._call(ann)
        finally:
            self._token = None
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._stop, zc, info, browser)
