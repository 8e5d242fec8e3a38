"""A host's link shaped to a NIC's speed (``Lab.shape``), as bench/peer_pull_lan.py uses it.

Host 1 sends 6 MB to host 0 over plain TCP, timed by the receiver: at
200 Mbit/s (25 MB/s) each way it must take about 0.24 s -- not faster than
the rate allows (the limit applies), not far slower (the bucket passes 64 KB
GSO packets whole); with the limit taken off it is many times faster.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from swarmd.testing import netns

ok, why = netns.available()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(not ok, reason=why)]

NBYTES = 6_000_000

RECEIVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5901)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); got = 0; t0 = None
while True:
    b = c.recv(1 << 20)
    if not b: break
    if t0 is None: t0 = time.monotonic()
    got += len(b)
print(got, time.monotonic() - t0, flush=True)
"""

SENDER = """
import socket, sys
c = socket.create_connection((sys.argv[1], 5901)); c.sendall(b"x" * int(sys.argv[2])); c.close()
"""


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with netns.Lab(2) as lab:
        yield lab


def _send(lab: netns.Lab) -> float:
    ex = ("ip", "netns", "exec")
    rx = subprocess.Popen([*ex, lab.hosts[0], sys.executable, "-c", RECEIVER, lab.addr(0)],
                          stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        subprocess.run([*ex, lab.hosts[1], sys.executable, "-c", SENDER, lab.addr(0),
                        str(NBYTES)], check=True, timeout=30)
        got, secs = rx.communicate(timeout=30)[0].split()
    finally:
        rx.kill()
        rx.wait()
    assert int(got) == NBYTES
    return float(secs)


def test_a_shaped_link_runs_at_its_rate_and_unshaped_at_full_speed(lab: netns.Lab) -> None:
    for i in range(2):
        lab.shape(i, 200)
    line = NBYTES / 25e6  # seconds at 200 Mbit/s
    shaped = _send(lab)
    print(f"shaped: {shaped:.3f} s ({NBYTES / shaped / 1e6:.1f} MB/s; line {line:.3f} s)")
    assert line * 0.9 <= shaped <= line * 3
    for i in range(2):
        lab.shape(i, 0)
    free = _send(lab)
    print(f"unshaped: {free:.3f} s")
    assert free < shaped / 3
