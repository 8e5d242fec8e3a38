"""Models started on demand: a request for a model the swarm stores but runs nowhere.

Theory of operation
-------------------
The proxy calls :meth:`OnDemand.ensure` when no engine in the swarm lists the
requested model.  If this node's store or some alive node's gossiped
inventory (its record's ``models``) holds it, one deployment is written for
it exactly as ``swarmctl run MODEL`` would (one replica, ``DEFAULT_CTX`` and
``DEFAULT_SLOTS``; the file pulled here first -- from the peers that hold it
-- so the deployment carries the model's fit facts), but with
``keep_alive`` set (:mod:`swarmd.core.deployments`).  The coordinator places
it, the chosen node fetches and launches it and its engine appears in
gossip; the request then routes like any other.

Concurrent requests for one model share one deployment and one wait (one
task per model).  The wait ends early, with the reason, when the placement
says the model fits nowhere or the chosen node reports its engine failed,
and after ``[models] load_timeout`` otherwise (:class:`LoadFailed`, which
the proxy answers as 503).

Unloading is the deployer's (``Deployer._expire``): the node whose engine
serves an on-demand deployment deletes the deployment once no request went
through swarmd to that engine for ``keep_alive`` seconds, and the engines
unload as after ``swarmctl stop``.  A request arriving later starts it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from swarmd.core import deployments as dep
from swarmd.core.deployments import DEPLOY_TABLE, PLACE_TABLE
from swarmd.core.snapshot import Snapshot
from swarmd.core.views import names_stored
from swarmd.engines.deployer import DEFAULT_CTX, DEFAULT_SLOTS, Deployer, DeployError

log = logging.getLogger("swarmd.deploy")

#: Seconds between looks at the snapshot while a model loads.
POLL = 0.1


class LoadFailed(Exception):
    """The model could not be started in time, or at all; ``code`` says which."""

    def __init__(self, code: str, message: str, status: int = 503) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def served(snap: Snapshot, model: str) -> bool:
    """Does a healthy engine on an alive node list ``model``?"""
    return any(model in e.models and e.healthy
               for n in snap.alive() for e in n.info.engines)


def stored_in_swarm(snap: Snapshot, model: str) -> bool:
    """Does some alive node's gossiped inventory hold ``model`` (by name)?"""
    return any(model in names_stored(n.info.extra.get("models")) for n in snap.alive())


def _failure(snap: Snapshot, model: str) -> str | None:
    """Why the model cannot come up, if the swarm already says so."""
    p = dep.placements_of(snap.tables.get(PLACE_TABLE, {})).get(model)
    if p is None:
        return None
    if not p.nodes and p.reason:
        return p.reason
    for n in snap.alive():
        if n.node_id in p.nodes:
            st = n.record.get("managed")
            s = st.get(model) if isinstance(st, Mapping) else None
            if isinstance(s, Mapping) and s.get("state") == "failed":
                return f"on {n.name}: {s.get('reason') or 'failed'}"
    return None


class OnDemand:
    def __init__(self, deployer: Deployer, snapshot: Callable[[], Snapshot], *,
                 load_timeout: float, keep_alive: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.deployer = deployer
        self._snapshot = snapshot
        self.load_timeout = load_timeout
        self.keep_alive = keep_alive
        self._clock = clock
        self._loading: dict[str, asyncio.Task[None]] = {}
        self.stats = {"started": 0, "served": 0, "failed": 0, "timed_out": 0}

    def holds(self, model: str) -> bool:
        """Is ``model`` stored here or on an alive peer (so it can be started)?"""
        return (self.deployer.models.store.find(model) is not None
                or stored_in_swarm(self._snapshot(), model))

    async def ensure(self, model: str) -> bool:
        """Wait until ``model`` is served; False if the swarm does not store it.

        Raises :class:`LoadFailed` when it cannot be started or is not up
        within ``load_timeout``.
        """
        if served(self._snapshot(), model):
            return True
        task = self._loading.get(model)
        if task is None:
            if not self.holds(model):
                return False
            task = self._loading[model] = asyncio.ensure_future(self._bring_up(model))
            task.add_done_callback(lambda _t: self._loading.pop(model, None))
        await asyncio.shield(task)
        return True

    async def _bring_up(self, model: str) -> None:
        deadline = self._clock() + self.load_timeout
        snap = self._snapshot()
        existing = dep.live_deployments(snap.tables.get(DEPLOY_TABLE, {})).get(model)
        if existing is None:
            self.stats["started"] += 1
            log.info("starting %s on demand (unloads after %g s idle)", model, self.keep_alive)
            try:
                await asyncio.wait_for(self.deployer.deploy(
                    model, name=None, replicas=1, everywhere=False, gpu=None,
                    ctx=DEFAULT_CTX, slots=DEFAULT_SLOTS, keep_alive=self.keep_alive),
                    max(0.0, deadline - self._clock()))
            except TimeoutError:
                self.stats["timed_out"] += 1
                raise LoadFailed("model_load_timeout", f"`{model}` was not fetched within "
                                 f"{self.load_timeout:g} s ([models] load_timeout)") from None
            except DeployError as exc:
                self.stats["failed"] += 1
                raise LoadFailed("model_load_failed",
                                 f"`{model}` cannot be started on demand: {exc}") from None
        while True:
            snap = self._snapshot()
            if served(snap, model):
                self.stats["served"] += 1
                return
            why = _failure(snap, model)
            if why is not None:
                self.stats["failed"] += 1
                raise LoadFailed("model_load_failed", f"`{model}` could not be started: {why}")
            if self._clock() >= deadline:
                self.stats["timed_out"] += 1
                raise LoadFailed("model_load_timeout", f"`{model}` did not load within "
                                 f"{self.load_timeout:g} s ([models] load_timeout); "
                                 f"`swarmctl ps` shows where it stands")
            await asyncio.sleep(POLL)
