"""Wiring of the deployer: the supervisor of managed engines and the reconcile loop.

At start the supervisor reaps engines an earlier swarmd left (pid files in
``data_dir/engines/``), so a restarted node never runs duplicates; then the
:class:`~swarmd.engines.deployer.Deployer` loop starts.  Writes to the
replicated tables and the record cross to the trio side through the bridge.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from swarmd.config import Config
from swarmd.core.replica import Entry
from swarmd.core.snapshot import Snapshot
from swarmd.engines.deployer import Deployer
from swarmd.engines.manager import EngineManager
from swarmd.engines.supervisor import Managed, Supervisor
from swarmd.models.service import ModelService
from swarmd.runtime.bridge import Bridge

log = logging.getLogger("swarmd.services")


async def start_deployer(cfg: Config, bridge: Bridge, *, snapshot: Callable[[], Snapshot],
                         write_table: Callable[[str, str, Any], Awaitable[Entry]],
                         update_record: Callable[[Mapping[str, Any]], None],
                         models: ModelService, engines: EngineManager,
                         session: aiohttp.ClientSession) -> Deployer:
    async def healthy(m: Managed) -> bool:
        try:
            async with session.get(m.url + "/v1/models",
                                   timeout=aiohttp.ClientTimeout(total=2)) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    supervisor = Supervisor(cfg.node.data_dir / "engines", healthy)
    killed = await asyncio.to_thread(supervisor.reap)
    if killed:
        log.warning("reaped %d engine(s) an earlier swarmd left running", len(killed))

    async def write(table: str, key: str, value: Any) -> Entry:
        return await bridge.to_trio(write_table, table, key, value)

    d = Deployer(node_id=snapshot().node_id, snapshot=snapshot, write=write, models=models,
                 engines=engines, supervisor=supervisor,
                 publish=lambda doc: bridge.call_trio_soon(update_record, {"managed": doc}))
    d.start()
    return d
