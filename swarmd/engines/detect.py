"""Finding engines nobody configured, on this machine's usual ports.

Theory of operation: each kind lists ``default_ports`` (llama.cpp 8080 and
8000, TGI 3000 and 8080, vLLM 8000, Ollama 11434, mlx-lm 8080).  For every
port not already taken by a configured engine, the kinds that claim it probe
``http://127.0.0.1:<port>`` with their signature request, in registry order
(most specific signature first); the first kind that recognises the server
wins, so one port gives at most one engine.  A closed port costs one refused
TCP connect on loopback, so a scan is a few milliseconds and can be repeated.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

import aiohttp

from swarmd.engines.base import Engine, EngineSpec

log = logging.getLogger("swarmd.engines")

_LOCAL = {"localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0"}


def endpoint_key(url: str) -> tuple[str, int]:
    """(host, port) with every loopback spelling folded into 127.0.0.1, for
    de-duplicating a detected engine against a configured one."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host in _LOCAL:
        host = "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return host, port


async def _probe(cls: type[Engine], http: aiohttp.ClientSession, url: str) -> bool:
    try:
        return bool(await cls.probe(http, url))
    except Exception as exc:  # a plugin's probe must not break detection
        log.debug("probe %s at %s failed: %r", cls.kind, url, exc)
        return False


async def _port_open(host: str, port: int, wait_s: float) -> bool:
    try:
        async with asyncio.timeout(wait_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True


async def detect_local(http: aiohttp.ClientSession, kinds: Iterable[type[Engine]], *,
                       host: str = "127.0.0.1", skip: Iterable[tuple[str, int]] = (),
                       ports: Mapping[str, tuple[int, ...]] | None = None,
                       connect_timeout: float = 0.3) -> list[EngineSpec]:
    """Engines answering on ``host`` at their kinds' default ports.

    ``skip``: endpoints (:func:`endpoint_key`) already configured.  ``ports``
    replaces every kind's ``default_ports`` (kinds it omits are not probed;
    tests use it with free ports).
    """
    classes = list(kinds)
    skipped = set(skip)
    by_port: dict[int, list[type[Engine]]] = {}
    for cls in classes:
        for port in (ports.get(cls.kind, ()) if ports is not None else cls.default_ports):
            by_port.setdefault(port, []).append(cls)
    key_host = "127.0.0.1" if host in _LOCAL else host

    async def one(port: int, claimants: list[type[Engine]]) -> EngineSpec | None:
        if (key_host, port) in skipped or not await _port_open(host, port, connect_timeout):
            return None
        url = f"http://{host}:{port}"
        for cls in claimants:
            if await _probe(cls, http, url):
                log.info("detected a %s engine at %s", cls.kind, url)
                return EngineSpec(kind=cls.kind, url=url, detected=True)
        log.debug("port %d is open but no engine kind recognised it", port)
        return None

    found = await asyncio.gather(*(one(p, c) for p, c in sorted(by_port.items())))
    return [s for s in found if s is not None]
