"""Wiring of keys, auth and usage accounting on the asyncio side.

Builds, from the config and the node's ports, the API's :class:`Auth`
middleware, the :class:`KeyService` both front doors use, and the
:class:`Accounting` that books every request into this node's SQLite store
and the replicated counters.  Writes to the replicated tables cross to the
trio side through the bridge only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from swarmd.api.accounting import Accounting
from swarmd.api.auth import LOOPBACK, Auth
from swarmd.api.key_service import KeyService
from swarmd.api.limits import Limits
from swarmd.config import Config, parse_hostport
from swarmd.core.escrow import Budget, budgets_of, window_start
from swarmd.core.keys import KeyInfo
from swarmd.core.replica import Entry
from swarmd.core.snapshot import Snapshot
from swarmd.metrics import RequestMetrics
from swarmd.usage.prices import PriceBook, to_micro
from swarmd.usage.store import UsageStore

if TYPE_CHECKING:
    from swarmd.api.proxy import Proxy
    from swarmd.runtime.bridge import Bridge

log = logging.getLogger("swarmd.services")


@dataclass
class KeysAndUsage:
    auth: Auth
    keys: KeyService
    accounting: Accounting
    limits: Limits

    @classmethod
    async def build(cls, cfg: Config, bridge: Bridge, *, snapshot: Callable[[], Snapshot],
                    write_table: Callable[[str, str, Any], Awaitable[Entry]],
                    write_table_many: Callable[[str, list[tuple[str, Any]]], None],
                    update_record: Callable[[Mapping[str, Any]], None],
                    metrics: RequestMetrics | None = None,
                    session: aiohttp.ClientSession | None = None) -> KeysAndUsage:
        """``write_table`` / ``write_table_many`` are trio-side calls (the node's)."""
        mode = cfg.api.auth
        host, _ = parse_hostport(cfg.api.listen)
        if mode == "off" and host.strip("[]") not in LOOPBACK and host != "localhost":
            log.warning("api.auth is off and the API port listens on %s: anyone who reaches "
                        "it may use every model", cfg.api.listen)
        auth = Auth(mode, snapshot, metrics=metrics)

        async def write(table: str, key: str, value: Any) -> Any:
            return await bridge.to_trio(write_table, table, key, value)

        keys = KeyService(snapshot, write)
        path = cfg.usage.db or str(cfg.node.data_dir / "usage.db")
        store = await asyncio.to_thread(UsageStore, path)
        snap = snapshot()
        acct = Accounting(
            node_id=snap.node_id, store=store, prices=PriceBook(cfg.prices),
            snapshot=snapshot,
            write_many=lambda table, items: bridge.call_trio_soon(
                write_table_many, table, items),
            flush_interval=cfg.usage.flush_interval, metrics=metrics)
        n = await asyncio.to_thread(acct.rebuild)
        if n:
            log.info("usage counters rebuilt from %d records", n)
        acct.start()
        limits = Limits(
            node_id=snap.node_id, config=cfg.limits, prices=acct.prices, snapshot=snapshot,
            write_many=lambda table, items: bridge.call_trio_soon(
                write_table_many, table, items),
            publish_rates=lambda doc: bridge.call_trio_soon(update_record, {"rates": doc}))
        spent = await asyncio.to_thread(_spent_on_disk, auth.ring.keys(), store,
                                        snap.node_id, time.time())
        limits.load_own(spent)
        limits.on_warn, limits.on_hook = _warner(cfg, metrics, session)
        limits.start(auth.ring.keys)
        return cls(auth, keys, acct, limits)

    def attach(self, proxy: Proxy) -> None:
        proxy.on_usage = self.accounting.on_usage
        proxy.admission = self.limits.admit

    async def stop(self) -> None:
        await self.limits.stop()
        await self.accounting.stop()


def _warner(cfg: Config, metrics: RequestMetrics | None, session: aiohttp.ClientSession | None
            ) -> tuple[Callable[[Budget, float], None], Callable[[Budget, float], None] | None]:
    """(on_warn, on_hook): a budget passed its warn fraction -- log it and set
    the gauge (every node); POST it to ``[limits] webhook`` (the coordinator)."""
    pending: set[asyncio.Task[None]] = set()

    def warn(b: Budget, used: float) -> None:
        log.warning("%s of %s is %.0f%% used (warn at %.0f%%; resets %s)", b.kind, b.label,
                    used * 100, b.warn * 100, time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                            time.gmtime(b.resets_at)))
        if metrics is not None:
            metrics.budget_used.labels(b.label[:64], b.kind).set(used)

    def hook(b: Budget, used: float) -> None:
        assert session is not None
        doc = {"budget": b.id, "owner": b.label, "kind": b.kind, "window": b.window,
               "used": round(used, 4), "amount": b.amount, "resets_at": b.resets_at}

        async def post() -> None:
            try:
                async with session.post(cfg.limits.webhook, json=doc,
                                        timeout=aiohttp.ClientTimeout(total=10)) as r:
                    if r.status >= 400:
                        log.warning("budget webhook answered HTTP %d", r.status)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("budget webhook failed: %r", exc)

        t = asyncio.ensure_future(post())
        pending.add(t)
        t.add_done_callback(pending.discard)

    return warn, (hook if cfg.limits.webhook and session is not None else None)


def _spent_on_disk(keys: Mapping[str, KeyInfo], store: UsageStore, node_id: str,
                   wall: float) -> dict[str, int]:
    """What this node spent of each current budget, from its usage records.

    A node killed right after answering may not have written its spending
    to the shares table; its usage records (committed before the answer
    ended) say what it spent.
    """
    out: dict[str, int] = {}
    for info in keys.values():
        for b in budgets_of(info, wall):
            start = window_start(b.window)
            rows = store.aggregate("key", start, only={"key": info.id})
            if not rows:
                continue
            r = rows[0]
            used = (int(r["prompt_tokens"]) + int(r["completion_tokens"])  # type: ignore[call-overload]
                    if b.kind == "tok_d" else to_micro(float(r["cost_usd"])))  # type: ignore[arg-type]
            out[f"{node_id}|{b.id}|$"] = used
    return out
