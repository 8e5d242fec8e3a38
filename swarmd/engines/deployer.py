"""The swarm runs the engines: deployments placed by the coordinator, reconciled by every node.

Theory of operation
-------------------
Runs on each node's asyncio thread, once a second (:meth:`Deployer.tick`):

1. **Coordinate** (only on the lease holder): the placement is a pure
   function of the snapshot (:func:`swarmd.core.placement.place`): the live
   deployments, every alive node's devices and stored models, and the
   current placements (kept where they still fit, so nothing flaps).  Each
   model whose placement changed is written to the ``placements`` table with
   the lease epoch; the table ranks entries by epoch, so a deposed
   coordinator's late writes lose (:mod:`swarmd.core.deployments`).  With no
   coordinator (no majority), nothing is written and engines keep serving.
2. **Reconcile** (every node): a model placed here and not running is
   fetched into the store when missing (from its source), launched through
   the :class:`~swarmd.engines.supervisor.Supervisor` (port, GPU visibility,
   restarts, logs, no orphans) and added to the engine manager once it
   answers, so routing sees it; a model no longer placed here is stopped and
   removed.  Progress (``pulling``, ``loading``, ``ready``, ``failed`` with a
   reason) is gossiped in this node's record (``managed``) for ``swarmctl ps``.

``swarmctl run`` (:meth:`deploy`) pulls on the node it runs on first, so the
deployment carries the model's measured memory need and the coordinator
needs no file access; other nodes pull from the same source (from peers,
once the data plane carries model files).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from swarmd.core import deployments as dep
from swarmd.core.deployments import DEPLOY_TABLE, PLACE_TABLE, DeploymentSpec
from swarmd.core.fit import facts_to_dict, need_bytes
from swarmd.core.replica import Entry
from swarmd.core.snapshot import Snapshot
from swarmd.engines.launching import Launcher, LaunchError, choose_kind, own_devices
from swarmd.engines.manager import EngineManager
from swarmd.engines.placing import compute
from swarmd.engines.supervisor import Supervisor
from swarmd.models.facts import model_facts
from swarmd.models.service import ModelService

log = logging.getLogger("swarmd.deploy")

Write = Callable[[str, str, Any], Awaitable[Entry]]
#: What ``swarmctl run`` and an on-demand start use when not told: tokens
#: of context per slot, and parallel slots.
DEFAULT_CTX = 4096
DEFAULT_SLOTS = 1
#: Chat templates llama-cpp-python needs by model architecture.
CHAT_FORMATS = {"gemma3": "gemma", "gemma2": "gemma", "gemma": "gemma"}


class DeployError(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Deployer:
    def __init__(self, *, node_id: str, snapshot: Callable[[], Snapshot], write: Write,
                 models: ModelService, engines: EngineManager, supervisor: Supervisor,
                 publish: Callable[[dict[str, Any]], None], interval: float = 1.0,
                 wall: Callable[[], float] = time.time, threads: int = 0) -> None:
        self.node_id = node_id
        self._snapshot = snapshot
        self._write = write
        self.models = models
        self.engines = engines
        self.supervisor = supervisor
        self.launcher = Launcher(supervisor, engines.http)
        self._publish = publish
        self.interval = interval
        self._wall = wall
        self.threads = threads
        #: model -> {"state", "reason", "engine_id", "memory_bytes", "slots"}
        self.local: dict[str, dict[str, Any]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._engine_ids: dict[str, str] = {}
        self._loop: asyncio.Task[None] | None = None
        self._published: dict[str, Any] | None = None

    # -- the front door (control API) ---------------------------------------------

    async def deploy(self, source: str, *, name: str | None, replicas: int, everywhere: bool,
                     gpu: bool | None, ctx: int, slots: int,
                     keep_alive: float = 0.0, kind: str = "") -> dict[str, Any]:
        """Pull here, then write the deployment; returns it (as written).
        ``keep_alive`` > 0 (on demand): removed after that many seconds idle.
        ``kind``: the engine kind to launch (default: by the model's format)."""
        if not everywhere and replicas < 1:
            raise DeployError(400, "replicas must be >= 1 (or use everywhere)")
        stored = self.models.store.find(name or source)
        if stored is None:
            try:
                stored = await asyncio.to_thread(self.models.pull, source, name=name)
            except Exception as exc:  # noqa: BLE001 -- the pull says why
                raise DeployError(400, f"cannot pull {source!r}: {exc}") from None
        man = stored.manifest
        classes = self.engines.registry.loadable()
        if kind:
            cls = next((c for c in classes if c.kind == kind), None)
            if cls is None or man.format not in cls.launch_formats:
                able = sorted(c.kind for c in classes if man.format in c.launch_formats)
                raise DeployError(400, f"{man.name}: engine kind {kind!r} cannot launch "
                                       f"{man.format} models (can: {', '.join(able) or 'none'})")
        else:
            try:
                kind, _ = choose_kind(man.format, classes)
            except LaunchError as exc:
                raise DeployError(400, f"{man.name}: {exc}; start its engine by hand") from None
        src = man.source if stored.manifest.source else source
        arch = (man.architecture or "").lower()
        facts = await asyncio.to_thread(model_facts, man, stored.path)
        spec = DeploymentSpec(model=man.name, source=src, replicas=0 if everywhere else replicas,
                              everywhere=everywhere, gpu=gpu, ctx=ctx, slots=slots,
                              kind=kind, chat_format=CHAT_FORMATS.get(arch, ""),
                              created=self._wall(), facts=facts_to_dict(facts),
                              keep_alive=keep_alive)
        value = spec.value()
        await self._write(DEPLOY_TABLE, man.name, value)
        need = need_bytes(facts, engine_kind=spec.kind, ctx=ctx, slots=slots)
        return {"model": man.name, **value, "need": need.describe()}

    async def undeploy(self, model: str) -> dict[str, Any]:
        table = self._snapshot().tables.get(DEPLOY_TABLE, {})
        e = table.get(model)
        if e is None or e.value is None:
            raise DeployError(404, f"no deployment {model!r}")
        await self._write(DEPLOY_TABLE, model, None)
        return {"model": model, "stopped": True}

    # -- the loop -----------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        for t in self._tasks.values():
            t.cancel()
        await self.supervisor.stop_all()

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("deployment upkeep failed")
            await asyncio.sleep(self.interval)

    async def tick(self) -> None:
        snap = self._snapshot()
        deployments = dep.live_deployments(snap.tables.get(DEPLOY_TABLE, {}))
        coord = snap.coordinator
        if coord is not None and coord[0] == self.node_id:
            await self._coordinate(snap, deployments, coord[1])
        self._reconcile(snap, deployments)
        await self._expire(deployments)
        self._report()

    async def _expire(self, deployments: Mapping[str, DeploymentSpec]) -> None:
        """Remove on-demand deployments whose engine here sat idle for keep_alive."""
        for model, d in deployments.items():
            eid = self._engine_ids.get(model)
            if not d.keep_alive or eid is None or self.local.get(model, {}).get("state") != "ready":
                continue
            idle = self.engines.idle_for(eid)
            if idle is not None and idle >= d.keep_alive:
                log.info("unloading %s: idle for %.0f s (keep_alive %g s)", model, idle,
                         d.keep_alive)
                await self._write(DEPLOY_TABLE, model, None)

    async def _coordinate(self, snap: Snapshot, deployments: Mapping[str, DeploymentSpec],
                          epoch: int) -> None:
        current = dep.placements_of(snap.tables.get(PLACE_TABLE, {}))
        for model, entry in compute(snap, deployments, current, epoch).items():
            old = current.get(model)
            if dep.needs_write(old, entry):
                await self._write(PLACE_TABLE, model, entry.value())
                log.info("placed %s on %s (epoch %d)%s", model,
                         ",".join(n[-8:] for n in entry.nodes) or "no node", epoch,
                         f": {entry.reason}" if entry.reason else "")

    def _reconcile(self, snap: Snapshot, deployments: Mapping[str, DeploymentSpec]) -> None:
        placements = dep.placements_of(snap.tables.get(PLACE_TABLE, {}))
        mine = {m for m, p in placements.items() if self.node_id in p.nodes and m in deployments}
        for model in mine:
            if model not in self._tasks:  # a failure stays failed until placed again
                self._tasks[model] = asyncio.ensure_future(self._bring_up(deployments[model]))
        for model in list(self._tasks):
            if model not in mine:
                self._tasks.pop(model).cancel()
                asyncio.ensure_future(self._take_down(model))

    async def _bring_up(self, d: DeploymentSpec) -> None:
        model = d.model
        eid = f"managed-{_slug(model)}"
        state = self.local.setdefault(model, {"engine_id": eid, "slots": d.slots})
        try:
            stored = self.models.store.find(model)
            if stored is None:
                state.update(state="pulling", reason="")
                self._report()
                stored = await asyncio.to_thread(self.models.pull, d.source, name=model)
            state.update(state="loading", reason="")
            self._report()
            main = stored.main_file
            digest = next((f.sha256 for f in stored.manifest.files
                           if stored.path / f.path == main), "")
            m, spec = await self.launcher.start(
                self.engines.registry.get(d.kind), d, eid, model_path=str(main), sha256=digest,
                threads=self.threads, devices=own_devices(self._snapshot(), self.node_id))
            if eid not in self._engine_ids.values():
                self._engine_ids[model] = self.engines.add(spec)
            state.update(reason="", port=m.port,
                         memory_bytes=sum(f.size for f in stored.manifest.files))
            was = ""
            while True:  # watch: a crash-restart shows as loading, a give-up as failed
                if m.state == "failed":
                    raise RuntimeError(m.reason)
                if m.state == "ready" and was != "ready":
                    if spec.url != m.url and not self.launcher.borrowed(eid):
                        # a restart takes a new port: point routing at it
                        old = self._engine_ids.pop(model, None)
                        if old is not None:
                            self.engines.remove(old)
                        spec = dataclasses.replace(spec, url=m.url)
                        self._engine_ids[model] = self.engines.add(spec)
                        state["port"] = m.port
                    self.engines.poke()  # (re)started: route to it as soon as it answers
                was = m.state
                # "ready" only once routing sees it healthy, not just the supervisor
                state["state"] = "ready" if m.state == "ready" and self._serving(model) \
                    else "loading"
                self._report()
                await asyncio.sleep(0.2 if state["state"] != "ready" else 0.5)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 -- reported, not fatal
            state.update(state="failed", reason=str(exc)[:300])
            log.warning("deployment of %s failed here: %s", model, exc)
            self._report()

    def _serving(self, model: str) -> bool:
        """Does the engine manager (so routing, once gossiped) see it healthy?"""
        eid = self._engine_ids.get(model)
        try:
            return eid is not None and self.engines.get(eid).healthy
        except KeyError:
            return False

    async def _take_down(self, model: str) -> None:
        st = self.local.pop(model, None)
        eid = self._engine_ids.pop(model, None) or (st or {}).get("engine_id")
        if eid:
            self.engines.remove(eid)
            await self.launcher.stop(eid)
        self._report()

    def _report(self) -> None:
        doc = {m: {k: v for k, v in s.items() if k in ("state", "reason", "engine_id",
                                                         "memory_bytes", "slots")}
               for m, s in self.local.items()}
        if doc != self._published:
            self._published = doc
            self._publish(doc)

    def listing(self) -> list[dict[str, Any]]:
        snap = self._snapshot()
        placed = dep.placements_of(snap.tables.get(PLACE_TABLE, {}))
        names = {n.node_id: n.name for n in snap.nodes}
        out = []
        for model, d in sorted(dep.live_deployments(snap.tables.get(DEPLOY_TABLE, {})).items()):
            p = placed.get(model)
            out.append({"model": model, **d.value(),
                        "nodes": [names.get(n, n) for n in p.nodes] if p else [],
                        "epoch": p.epoch if p else None,
                        "reason": (p.reason or None) if p else None})
        return out

    def ps(self) -> list[dict[str, Any]]:
        """Every managed engine in the swarm, from the nodes' records."""
        rows = []
        for n in self._snapshot().alive():
            managed = n.record.get("managed")
            if not isinstance(managed, Mapping):
                continue
            for model, s in managed.items():
                if isinstance(s, Mapping):
                    rows.append({"model": model, "node_id": n.node_id, "node": n.name,
                                 "engine_id": s.get("engine_id"), "state": s.get("state"),
                                 "memory_bytes": s.get("memory_bytes"), "slots": s.get("slots"),
                                 "reason": s.get("reason") or None})
        return sorted(rows, key=lambda r: (str(r["model"]), str(r["node"])))


def _slug(model: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in model)[:64]
