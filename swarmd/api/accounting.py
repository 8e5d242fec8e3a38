"""Booking finished requests: the usage record, its cost, the swarm-wide counters.

Theory of operation
-------------------
The proxy calls :meth:`Accounting.on_usage` once per request it received,
as the request is booked (before the client sees the answer end, see
:mod:`swarmd.api.relay`).  It prices the request (:class:`PriceBook`),
commits one row to this node's SQLite store (durable against a crash of the
process when the call returns) and adds it to a :class:`Tally`.  Every
``[usage] flush_interval`` seconds the tally becomes new cumulative values of
this node's slots in the replicated ``usage`` table, written through the
trio side in one delta (:meth:`swarmd.runtime.node.Node.write_table_many`).

At start the node's own slots are rebuilt from its SQLite rows of the last
:data:`~swarmd.core.usage_counters.KEEP_DAYS` days (the counters merge by
max, so a copy that peers or our own table file hold can only be caught up,
never double counted), so requests booked just before a kill -9 are in the
totals after the restart too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from swarmd.api.usage import UsageEvent
from swarmd.core.hlc import ZERO
from swarmd.core.replica import Entry
from swarmd.core.snapshot import Snapshot
from swarmd.core.usage_counters import KEEP_DAYS, USAGE_TABLE, Counts, Tally, groups_of
from swarmd.metrics import RequestMetrics
from swarmd.usage.prices import PriceBook, to_micro
from swarmd.usage.store import UsageRow, UsageStore

log = logging.getLogger("swarmd.usage")

#: route path -> the short route name stored in usage rows.
ROUTE_NAMES = {
    "/v1/chat/completions": "chat", "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}

WriteMany = Callable[[str, list[tuple[str, tuple[int, ...]]]], None]


class Accounting:
    def __init__(self, *, node_id: str, store: UsageStore, prices: PriceBook,
                 snapshot: Callable[[], Snapshot], write_many: WriteMany,
                 flush_interval: float = 1.0,
                 wall: Callable[[], float] = time.time,
                 metrics: RequestMetrics | None = None) -> None:
        self.node_id = node_id
        self.store = store
        self.prices = prices
        self._snapshot = snapshot
        self._write_many = write_many
        self.flush_interval = flush_interval
        self._wall = wall
        self.tally = Tally(node_id)
        self.metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self.stats = {"recorded": 0, "record_errors": 0, "flushes": 0}

    # -- per request ---------------------------------------------------------------

    def on_usage(self, ev: UsageEvent) -> None:
        wall = self._wall()
        cost = self.prices.cost(ev.model, ev.prompt_tokens, ev.completion_tokens)
        p: Mapping[str, Any] = ev.principal or {}
        row = UsageRow(
            ts=wall, request_id=ev.request_id, model=ev.model,
            route=ROUTE_NAMES.get(ev.route, ev.route.strip("/").replace("/", ".")),
            status=ev.status, key_id=str(p.get("key_id") or ""), user=str(p.get("user") or ""),
            project=str(p.get("project") or ""), node_id=ev.node_id, engine_id=ev.engine_id,
            prompt_tokens=ev.prompt_tokens, completion_tokens=ev.completion_tokens,
            cost_usd=cost, latency_ms=ev.latency_s * 1000,
            ttft_ms=ev.ttft_s * 1000 if ev.ttft_s is not None else None)
        try:
            self.store.record(row)
            self.stats["recorded"] += 1
        except Exception:
            self.stats["record_errors"] += 1
            log.exception("cannot record usage of request %s", ev.request_id)
        self._count(row)
        if self.metrics is not None:
            self.metrics.booked(row.model, row.project, row.prompt_tokens, row.completion_tokens,
                                row.cost_usd)
            if ev.status == 429 and ev.error_code in ("insufficient_quota",
                                                      "rate_limit_exceeded"):
                self.metrics.limit_refusals.labels(ev.error_code).inc()

    def _count(self, row: UsageRow) -> None:
        self.tally.add(row.ts, *_counted(row))

    # -- counters ------------------------------------------------------------------

    def rebuild(self) -> int:
        """Fold this node's rows of the retained days into its slots (at start)."""
        since = self._wall() - KEEP_DAYS * 86400
        n = 0
        rebuilt = Tally(self.node_id)
        for row in self.store.rows_since(since):
            rebuilt.add(row.ts, *_counted(row))
            n += 1
        items = rebuilt.flush({})  # absolute values: max-merged with any other copy
        if items:
            self._write_many(USAGE_TABLE, items)
        return n

    def flush(self) -> int:
        if not self.tally:
            return 0
        table: Mapping[str, Entry] = self._snapshot().tables.get(USAGE_TABLE, {})
        items = self.tally.flush(table)
        self._write_many(USAGE_TABLE, items)
        self.stats["flushes"] += 1
        return len(items)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                self.flush()
            except Exception:
                log.exception("usage counter flush failed")

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()
        self.store.close()


def _counted(row: UsageRow) -> tuple[list[str], Counts]:
    """The counter groups a usage row falls in, and what it adds to each."""
    groups = groups_of(key_id=row.key_id, user=row.user, project=row.project, model=row.model)
    return groups, Counts(requests=1, prompt_tokens=row.prompt_tokens,
                          completion_tokens=row.completion_tokens,
                          cost_micro_usd=to_micro(row.cost_usd),
                          errors=1 if row.status >= 400 else 0)


def usage_answer(acct: Accounting, query: Mapping[str, str],
                 principal: Mapping[str, Any] | None) -> tuple[int, dict[str, Any]]:
    """``GET /v1/usage``: swarm-wide totals from the counters; a key without the
    admin scope sees only its own usage, from this node's records."""
    from swarmd.core.usage_counters import totals
    from swarmd.usage.report import parse_usage_query, usage_doc

    try:
        by, since = parse_usage_query(query)
    except ValueError as exc:
        return 400, {"error": {"message": str(exc), "type": "invalid_request_error",
                               "param": None, "code": "bad_query"}}
    info = (principal or {}).get("key")
    wall = acct._wall()
    if info is not None and not info.allows_scope("admin"):
        rows = acct.store.aggregate(by, wall - since, only={"key": info.id})  # type: ignore[arg-type]
        return 200, dict(usage_doc(by, since, rows, partial=True,
                                   note="this key's own requests, as recorded on this node"))
    table = dict(acct._snapshot().tables.get(USAGE_TABLE, {}))
    for key, value in acct.tally.peek(table):  # our own not yet flushed
        table[key] = Entry(key, ZERO, value)
    rows = totals(table, by=by, since=since, wall=wall)
    return 200, dict(usage_doc(by, since, rows, note="swarm-wide counters; buckets are whole "
                                                     "hours, days or months"))
