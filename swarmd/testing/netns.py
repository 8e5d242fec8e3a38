"""Several hosts on one machine: network namespaces on a Linux bridge.

``Lab(n)`` makes a bridge, ``n`` namespaces each with a veth into the bridge
and an address 10.99.<net>.<i+1>/24, multicast routed to the veth (mDNS
works), and removes every namespace, veth and bridge on exit, also on failure.
Needs root and iproute2; :func:`available` says whether this machine can.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from types import TracebackType


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def available() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return False, f"{tool} (iproute2) is not installed"
    probe = f"swdprobe{random.randrange(1 << 16):x}"
    r = _run("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        return False, f"ip netns add failed: {r.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return True, ""


class Lab:
    def __init__(self, n: int) -> None:
        self.tag = f"{random.randrange(1 << 20):05x}"
        self.net = random.randrange(1, 250)
        self.bridge = f"swbr{self.tag}"
        self.hosts = [f"swns{self.tag}{i}" for i in range(n)]
        self._made_links: list[str] = []
        self._made_ns: list[str] = []

    def addr(self, i: int) -> str:
        return f"10.99.{self.net}.{i + 1}"

    def host_veth(self, i: int) -> str:
        return f"swh{self.tag}{i}"

    def __enter__(self) -> Lab:
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            self._made_links.append(self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for i, ns in enumerate(self.hosts):
                _run("ip", "netns", "add", ns)
                self._made_ns.append(ns)
                hv, nv = self.host_veth(i), f"swn{self.tag}{i}"
                _run("ip", "link", "add", hv, "type", "veth", "peer", "name", nv)
                self._made_links.append(hv)
                _run("ip", "link", "set", nv, "netns", ns)
                _run("ip", "link", "set", hv, "master", self.bridge)
                _run("ip", "link", "set", hv, "up")
                ex = ("ip", "netns", "exec", ns)
                _run(*ex, "ip", "link", "set", "lo", "up")
                _run(*ex, "ip", "link", "set", nv, "name", "eth0")
                _run(*ex, "ip", "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
                _run(*ex, "ip", "link", "set", "eth0", "up", "multicast", "on")
                _run(*ex, "ip", "route", "add", "224.0.0.0/4", "dev", "eth0")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for ns in self._made_ns:
            # Kill anything still running in the namespace before removing it.
            pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            _run("ip", "netns", "del", ns, check=False)
        for link in reversed(self._made_links):
            _run("ip", "link", "del", link, check=False)
        self._made_ns.clear()
        self._made_links.clear()

    def cut(self, i: int) -> None:
        """Take host ``i`` off the network: its link goes down (the bridge side).

        (netem would do as well, but this machine's kernel has no sch_netem.)
        """
        _run("ip", "link", "set", self.host_veth(i), "down")

    def heal(self, i: int) -> None:
        _run("ip", "link", "set", self.host_veth(i), "up")

    def shape(self, i: int, mbit: float) -> None:
        """Host ``i``'s link runs at ``mbit`` Mbit/s each way, as a NIC of that speed.

        A token bucket (``tbf``; this kernel has no netem) on both ends of its
        veth: inside the namespace it caps the host's upload, on the bridge
        side its download.  The bucket holds 4 ms of the rate (at least 64 KB,
        so a 64 KB GSO packet passes whole); packets wait at most 20 ms in it.
        ``mbit`` <= 0 takes the limit off.
        """
        ex = ("ip", "netns", "exec", self.hosts[i])
        for pre, dev in (((), self.host_veth(i)), (ex, "eth0")):
            if mbit <= 0:
                _run(*pre, "tc", "qdisc", "del", "dev", dev, "root", check=False)
                continue
            burst_kb = max(64, int(mbit * 4 / 8))  # 4 ms of mbit, in KB
            _run(*pre, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
                 f"{mbit}mbit", "burst", f"{burst_kb}kb", "latency", "20ms")

    def loss(self, i: int, percent: float) -> None:
        """Random loss on host ``i``'s link, both directions.

        netem where the kernel has it, else iptables' ``statistic`` match.
        """
        r = _run("tc", "qdisc", "replace", "dev", self.host_veth(i), "root", "netem", "loss",
                 f"{percent}%", check=False)
        ex = ("ip", "netns", "exec", self.hosts[i])
        if r.returncode == 0:
            _run(*ex, "tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "loss",
                 f"{percent}%")
            return
        p = f"{percent / 100:.4f}"
        for chain in ("INPUT", "OUTPUT"):
            _run(*ex, "iptables", "-A", chain, "-i" if chain == "INPUT" else "-o", "eth0",
                 "-m", "statistic", "--mode", "random", "--probability", p, "-j", "DROP")
