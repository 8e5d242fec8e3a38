"""This node's engines: configuration, detection, polling, the gossiped record.

Theory of operation
-------------------
The :class:`EngineManager` lives on the daemon's asyncio thread.  It holds
one :class:`Engine` per configured ``[[engines]]`` entry plus those found by
local detection (:mod:`swarmd.engines.detect`; on by default, re-run every
``redetect_interval`` so an engine started after swarmd is found).  A
detected engine that stays unreachable for ``forget_after`` seconds is
dropped (detection finds it again when it returns); configured engines stay
and show ``healthy: false``.

Polling: every ``poll_interval`` seconds (default 2 s; a kind or
``options.poll_interval`` can ask for less often -- cloud upstreams are
polled every 15 s) each engine is asked for health, then, when healthy, its
load and -- every ``models_interval`` seconds or when it turns healthy --
its model list.  Each call is bounded by ``poll_timeout``.

Busy is not down.  Many engines answer nothing else while they generate
(llama-cpp-python holds even ``/v1/models`` until a stream ends), so a poll
that times out while this node has requests in flight on the engine (or the
engine last reported running ones) means *busy*: the engine keeps its health
and its last load and capacity, and the poll counts no failure.  Down is a
refused connection (at once), or ``fail_threshold`` failed polls in a row
while idle, or ``fail_threshold`` failed requests in a row
(:meth:`note_result`) while polls also fail.  Flapping is damped: an engine
that went down comes back only after ``rise_threshold`` good polls in a row
(one when it was down for a refused connection and answers again).  The last
model list is kept while an engine is down.

Capabilities: learned when the model list changes (:meth:`Engine.capabilities`)
unless configured; gossiped per engine as ``capabilities`` (the union) and
``model_capabilities`` (per model, only where models differ).

Record: :meth:`record` gives the ``engines`` list of the node record (protocol/records.md).  Models are the
engine's ids after ``options.rename``; a configured ``models`` list serves its
literal ids as given and uses its glob entries (``*?[``) to filter the
reported ids.  ``load.running`` is the engine's own figure, or when it cannot
tell, the number of requests this node has in flight on it
(:meth:`inflight`, entered by the API layer around each request);
``capacity`` is the configured one, else the engine's; ``kv_cache`` is
rounded to 0.01 so that noise does not churn the record.  After each poll
round, when the record differs from the last one reported, ``on_change`` is
called with it (the membership layer rate-limits gossip).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from swarmd.engines.base import Engine, EngineLoad, EngineSpec, ModelInfo, UpstreamRequest
from swarmd.engines.detect import detect_local, endpoint_key
from swarmd.engines.registry import EngineRegistry, default_registry

log = logging.getLogger("swarmd.engines")

_GLOB = set("*?[")


@dataclass(frozen=True)
class EngineState:
    """A read-only view of one local engine."""

    id: str
    kind: str
    url: str
    healthy: bool
    models: tuple[str, ...]
    load: EngineLoad
    inflight: int
    detected: bool
    error: str | None = None
    checked_at: float | None = None  # monotonic time of the last poll
    model_info: tuple[ModelInfo, ...] = ()
    busy: bool = False  # the last poll timed out while requests were in flight
    #: model -> capabilities; empty: unknown (all assumed)
    capabilities: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"id": self.id, "kind": self.kind, "healthy": self.healthy,
                               "models": list(self.models), "load": self.load.as_record()}
        caps = [self.capabilities.get(m) for m in self.models]
        if caps and all(c is not None for c in caps):
            union = sorted({c for cs in caps if cs is not None for c in cs})
            rec["capabilities"] = union
            differ = {m: list(c) for m, c in zip(self.models, caps, strict=True)
                      if c is not None and sorted(c) != union}
            if differ:
                rec["model_capabilities"] = differ
        return rec


@dataclass(eq=False)
class _Slot:
    engine: Engine
    healthy: bool = False
    failures: int = 0
    models: list[ModelInfo] = field(default_factory=list)
    models_at: float | None = None
    load: EngineLoad = field(default_factory=EngineLoad)
    inflight: int = 0
    polled_inflight: int = 0  # our in-flight requests while `load` was read
    next_poll: float = 0.0
    checked_at: float | None = None
    down_since: float | None = None
    error: str | None = None
    busy: bool = False
    rises: int = 0  # good polls in a row while down
    definitive: bool = False  # the last failure was a refused connection
    ever_healthy: bool = False
    request_failures: int = 0  # failed requests in a row (note_result)
    caps: dict[str, tuple[str, ...]] = field(default_factory=dict)
    caps_for: tuple[str, ...] | None = None  # model ids the caps were learned for
    last_used: float = field(default_factory=time.monotonic)  # our last request ended

    @property
    def spec(self) -> EngineSpec:
        return self.engine.spec


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class EngineManager:
    def __init__(
        self,
        engines: Iterable[Any] = (),
        *,
        session: aiohttp.ClientSession,
        detect: bool = True,
        poll_interval: float = 2.0,
        on_change: Callable[[list[dict[str, Any]]], Any] | None = None,
        registry: EngineRegistry | None = None,
        models_interval: float = 10.0,
        redetect_interval: float = 30.0,
        forget_after: float = 60.0,
        fail_threshold: int = 2,
        rise_threshold: int = 2,
        poll_timeout: float = 2.0,
        detect_host: str = "127.0.0.1",
        detect_ports: Mapping[str, tuple[int, ...]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``engines``: EngineSpec or config ``EngineEntry`` objects.  Raises
        UnknownEngineKind / EngineKindError / ValueError for a bad entry."""
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.http = session
        self.detect = detect
        self.poll_interval = poll_interval
        self.on_change = on_change
        self.registry = registry or default_registry()
        self.models_interval = models_interval
        self.redetect_interval = redetect_interval
        self.forget_after = forget_after
        self.fail_threshold = max(1, fail_threshold)
        self.rise_threshold = max(1, rise_threshold)
        self.poll_timeout = poll_timeout
        self.detect_host = detect_host
        self.detect_ports = dict(detect_ports) if detect_ports is not None else None
        self.clock = clock
        self._slots: dict[str, _Slot] = {}
        self._last_record: list[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._next_detect = 0.0
        self._wake = asyncio.Event()
        for entry in engines:
            self._add(EngineSpec.from_entry(entry))

    # -- membership of the engine set ----------------------------------------------

    def _add(self, spec: EngineSpec) -> str:
        engine = self.registry.create(spec)
        eid = spec.engine_id
        if eid in self._slots:
            if spec.id:
                raise ValueError(f"two engines have the id {eid!r}")
            n = 2
            while f"{eid}-{n}" in self._slots:
                n += 1
            eid = f"{eid}-{n}"
            spec = dataclasses.replace(spec, id=eid)
            engine = self.registry.create(spec)
        self._slots[eid] = _Slot(engine)
        return eid

    def add(self, spec: EngineSpec) -> str:
        """Add an engine at run time (one swarmd launched); polled at once."""
        eid = self._add(spec)
        self.poke()
        return eid

    def remove(self, engine_id: str) -> None:
        """Forget an engine (a managed one that was stopped)."""
        if self._slots.pop(engine_id, None) is not None:
            self._report()

    async def detect_once(self) -> list[str]:
        """Run local detection now; returns the ids of engines added."""
        taken = {endpoint_key(s.spec.url) for s in self._slots.values()}
        specs = await detect_local(self.http, self.registry.loadable(), host=self.detect_host,
                                   skip=taken, ports=self.detect_ports)
        added = []
        for spec in specs:
            try:
                added.append(self._add(spec))
            except ValueError as exc:
                log.warning("detected engine at %s not added: %s", spec.url, exc)
        return added

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Detect (if enabled), poll every engine once, then keep polling in a task."""
        if self.detect:
            await self.detect_once()
            self._next_detect = self.clock() + self.redetect_interval
        await self.poll_once(force=True)
        self._task = asyncio.create_task(self._run(), name="swarmd-engines")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def poke(self) -> None:
        """Poll every engine soon (e.g. after a request failed on one)."""
        for slot in self._slots.values():
            slot.next_poll = 0.0
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                if self.detect and self.clock() >= self._next_detect:
                    self._next_detect = self.clock() + self.redetect_interval
                    await self.detect_once()
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("engine poll round failed")
            now = self.clock()
            due = min((s.next_poll for s in self._slots.values()),
                      default=now + self.poll_interval)
            if self.detect:
                due = min(due, self._next_detect)
            delay = min(self.poll_interval, max(0.05, due - now))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    # -- polling -----------------------------------------------------------------------

    async def poll_once(self, force: bool = False) -> bool:
        """Poll the engines that are due (all with ``force``); report a changed
        record to ``on_change``.  Returns True when the record changed."""
        now = self.clock()
        slots = [s for s in self._slots.values() if force or s.next_poll <= now]
        if slots:
            await asyncio.gather(*(self._poll(s) for s in slots))
        self._forget_gone()
        return self._report()

    async def _call(self, coro: Any) -> Any:
        async with asyncio.timeout(self.poll_timeout):
            return await coro

    async def _poll(self, slot: _Slot) -> None:
        eng = slot.engine
        now = self.clock()
        slot.next_poll = now + eng.poll_every(self.poll_interval)
        slot.checked_at = now
        if slot.healthy and slot.inflight > 0 and eng.polls_disturb():
            slot.busy = True  # a poll now would interrupt what it serves
            return
        definitive = False
        timed_out = False
        err: str | None = None
        busy_before = self._busy(slot)
        try:
            ok = bool(await self._call(eng.health(self.http)))
            if not ok:
                err = "health check failed"
        except (aiohttp.ClientConnectorError, ConnectionRefusedError) as exc:
            ok, definitive, err = False, True, _describe(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            ok, err = False, _describe(exc)
            timed_out = isinstance(exc, TimeoutError)
        if not ok and timed_out and slot.healthy and (busy_before or self._busy(slot)):
            # Busy, not down: keep health, load and capacity as they were.
            if not slot.busy:
                log.debug("engine %s is busy (poll timed out with %d in flight)",
                          eng.id, slot.inflight)
            slot.busy = True
            return
        slot.busy = False
        if not ok:
            slot.failures += 1
            slot.rises = 0
            if slot.healthy and (definitive or slot.failures >= self.fail_threshold):
                log.warning("engine %s (%s) is down: %s", eng.id, eng.spec.kind, err)
                slot.healthy = False
            if not slot.healthy:
                slot.load = EngineLoad()
                if slot.down_since is None:
                    slot.down_since = now
            slot.error = err
            slot.definitive = definitive
            return
        was_healthy = slot.healthy
        slot.failures = 0
        if not was_healthy:
            slot.rises += 1
            if slot.ever_healthy and not slot.definitive and slot.rises < self.rise_threshold:
                slot.error = f"recovering ({slot.rises}/{self.rise_threshold} good polls)"
                return
        slot.healthy = True
        slot.ever_healthy = True
        slot.rises = 0
        slot.request_failures = 0
        slot.down_since = None
        slot.error = None
        if not was_healthy:
            log.info("engine %s (%s) at %s is up", eng.id, eng.spec.kind, eng.spec.url)
        if (not was_healthy or slot.models_at is None
                or now - slot.models_at >= self.models_interval):
            try:
                slot.models = list(await self._call(eng.models(self.http)))
                slot.models_at = now
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                slot.error = f"model list: {_describe(exc)}"
        await self._learn_capabilities(slot)
        try:
            before = slot.inflight
            slot.load = await self._call(eng.load(self.http))
            # Requests in flight for the whole read are surely in the engine's
            # count; ones that began or ended meanwhile may or may not be.
            slot.polled_inflight = min(before, slot.inflight)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) and self._busy(slot)):
                slot.load = EngineLoad(capacity=slot.load.capacity)
            slot.error = f"load: {_describe(exc)}"

    @staticmethod
    def _busy(slot: _Slot) -> bool:
        """Requests in flight on the engine: ours now, or the engine's own count."""
        return slot.inflight > 0 or bool(slot.load.running) or bool(slot.load.waiting)

    async def _learn_capabilities(self, slot: _Slot) -> None:
        ids = tuple(sorted(m.id for m in slot.models))
        if slot.spec.capabilities or ids == slot.caps_for or slot.inflight > 0:
            return  # configured, already known, or busy (learn when idle)
        try:
            learned = await self._call(slot.engine.capabilities(self.http, slot.models))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("engine %s: capabilities not learned: %s", slot.engine.id, _describe(exc))
            return
        slot.caps = dict(learned or {})
        slot.caps_for = ids
        if learned:
            log.info("engine %s capabilities: %s", slot.engine.id,
                     ", ".join(f"{m}={'+'.join(c) or 'none'}" for m, c in sorted(learned.items())))

    def note_result(self, engine_id: str, ok: bool) -> None:
        """A request on the engine succeeded or failed (for engine reasons:
        refused, broken, 5xx).  A success proves the engine up; failures in a
        row while polls also fail take it down sooner than polls alone."""
        slot = self._slots.get(engine_id)
        if slot is None:
            return
        if ok:
            slot.request_failures = 0
            return
        slot.request_failures += 1
        if (slot.healthy and slot.failures >= 1
                and slot.request_failures >= self.fail_threshold):
            log.warning("engine %s (%s) is down: %d failed requests and a failed poll",
                        engine_id, slot.spec.kind, slot.request_failures)
            slot.healthy = False
            slot.down_since = self.clock()
            slot.load = EngineLoad()
            self._report()

    def _forget_gone(self) -> None:
        now = self.clock()
        for eid, slot in list(self._slots.items()):
            if (slot.spec.detected and not slot.healthy and slot.down_since is not None
                    and now - slot.down_since >= self.forget_after and slot.inflight == 0):
                log.info("forgetting detected engine %s at %s (down %.0f s)",
                         eid, slot.spec.url, now - slot.down_since)
                del self._slots[eid]

    def _report(self) -> bool:
        rec = self.record()
        if rec == self._last_record:
            return False
        self._last_record = rec
        if self.on_change is not None:
            try:
                self.on_change(rec)
            except Exception:
                log.exception("engines on_change callback failed")
        return True

    # -- views -------------------------------------------------------------------------

    def _served(self, slot: _Slot) -> tuple[str, ...]:
        eng = slot.engine
        reported = [eng.public_name.get(m.id, m.id) for m in slot.models]
        wanted = slot.spec.models
        if not wanted:
            return tuple(dict.fromkeys(reported))
        literal = [m for m in wanted if not (_GLOB & set(m))]
        globs = [m for m in wanted if _GLOB & set(m)]
        matched = [r for r in reported if any(fnmatch.fnmatchcase(r, g) for g in globs)]
        return tuple(dict.fromkeys(literal + matched))

    def _capabilities(self, slot: _Slot) -> dict[str, tuple[str, ...]]:
        served = self._served(slot)
        if slot.spec.capabilities:
            return {m: slot.spec.capabilities for m in served}
        if not slot.caps:
            return {}
        back = slot.engine.upstream_name
        out = {}
        for m in served:
            c = slot.caps.get(back.get(m, m))
            if c is None:
                return {}  # one unknown: say nothing (all assumed)
            out[m] = c
        return out

    def _state(self, eid: str, slot: _Slot) -> EngineState:
        spec = slot.spec
        got = slot.load
        kv = None if got.kv_cache is None else round(got.kv_cache, 2)
        load = EngineLoad(
            running=got.running if got.running is not None else slot.inflight,
            waiting=got.waiting,
            kv_cache=kv,
            capacity=spec.capacity or got.capacity,
        )
        return EngineState(
            id=eid, kind=spec.kind, url=spec.url, healthy=slot.healthy,
            models=self._served(slot), load=load, inflight=slot.inflight,
            detected=spec.detected, error=slot.error, checked_at=slot.checked_at,
            model_info=tuple(slot.models), busy=slot.busy,
            capabilities=self._capabilities(slot),
        )

    def engines(self) -> list[EngineState]:
        return [self._state(eid, s) for eid, s in sorted(self._slots.items())]

    def get(self, engine_id: str) -> EngineState:
        """KeyError if ``engine_id`` is not on this node."""
        return self._state(engine_id, self._slots[engine_id])

    def engine(self, engine_id: str) -> Engine:
        return self._slots[engine_id].engine

    def record(self) -> list[dict[str, Any]]:
        """The record's ``engines`` entries (protocol/records.md), sorted by id."""
        return [s.record() for s in self.engines()]

    # -- request path (API layer) ------------------------------------------------------

    def request(self, engine_id: str, route: str, body: bytes,
                headers: Mapping[str, str]) -> UpstreamRequest:
        """The HTTP request for a client request; KeyError if the engine is unknown."""
        return self._slots[engine_id].engine.request(route, body, headers)

    async def count_tokens(self, engine_id: str, model: str, text: str) -> int | None:
        """The engine's own token count for ``text`` (None: it cannot tell)."""
        slot = self._slots.get(engine_id)
        if slot is None or not text:
            return None
        back = slot.engine.upstream_name.get(model, model)
        try:
            return await self._call(slot.engine.count_tokens(self.http, back, text))
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None

    def capacity(self, engine_id: str) -> int | None:
        """Max concurrent requests the engine takes (configured, else its own), if known."""
        slot = self._slots.get(engine_id)
        if slot is None:
            return None
        return slot.spec.capacity or slot.load.capacity or None

    def current_load(self, engine_id: str) -> EngineLoad | None:
        """The engine's load now, as well as this node can tell (None if unknown).

        The polled load is up to ``poll_interval`` old, but every request that
        reaches the engine through swarmd on this node is counted here as it
        starts and ends.  So: what the engine reported minus our requests at
        that time (others' load: direct clients), plus our requests now.
        """
        slot = self._slots.get(engine_id)
        if slot is None:
            return None
        load = slot.load
        others = 0
        if load.running is not None or load.waiting is not None:
            others = max(0, (load.running or 0) + (load.waiting or 0) - slot.polled_inflight)
        return EngineLoad(running=slot.inflight + others, waiting=0, kv_cache=load.kv_cache,
                          capacity=slot.spec.capacity or load.capacity or None)

    @contextlib.contextmanager
    def inflight(self, engine_id: str) -> Iterator[None]:
        """Counts one request in flight on the engine while entered (KeyError if unknown)."""
        slot = self._slots[engine_id]
        slot.inflight += 1
        try:
            yield
        finally:
            slot.inflight -= 1
            slot.last_used = time.monotonic()

    def idle_for(self, engine_id: str) -> float | None:
        """Seconds since a request through swarmd last ended on the engine (0
        while one is in flight; since it was added if none came); None if unknown."""
        slot = self._slots.get(engine_id)
        if slot is None:
            return None
        return 0.0 if slot.inflight else time.monotonic() - slot.last_used
