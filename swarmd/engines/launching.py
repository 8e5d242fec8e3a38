"""Launching a deployment's engine on this node: which kind, which device, which command.

Theory of operation
-------------------
Every engine kind that swarmd can launch declares it on its class
(:class:`~swarmd.engines.base.Engine`): the model formats it launches
(``launch_formats``: GGUF files for llama.cpp and Ollama, safetensors
directories for vLLM and TGI, MLX directories for mlx-lm), whether this
machine has it (``launch_available``: binary on PATH, module importable), the
command (``launch_command``, ``launch_env``), the id the engine lists the
model under (``launched_name``) and, for Ollama, an already running server
to use (``running_server``) and the import and load once it answers
(``after_launch``).

:func:`choose_kind` picks the kind for a new deployment on the node that
pulls it: the first kind of :data:`PREFERENCE` that launches the format and
is available here, else the first that launches the format at all (another
node may have it; a node that cannot launch it reports the engine failed and
placement moves on).

:class:`Launcher` brings one placed model up on this node:

1. the device: the engine kind's fit (:func:`swarmd.core.fit.need_bytes`)
   against this node's own devices, from its gossiped record; on a GPU the
   fraction of its memory the need plus margin is
   (:func:`swarmd.core.fit.vllm_memory_utilization`) goes to the engines that
   preallocate (vLLM ``--gpu-memory-utilization``, TGI
   ``--cuda-memory-fraction``) and, for those single-device kinds, the
   process sees only that GPU (``CUDA_VISIBLE_DEVICES`` /
   ``HIP_VISIBLE_DEVICES`` through the supervisor).  A model that goes to
   RAM (``gpu = false``, or the fit chose the CPU) runs with every GPU
   hidden;
2. a server already running (Ollama's daemon at ``OLLAMA_HOST``) is used as
   it is, else the command runs under the :class:`~swarmd.engines.supervisor.Supervisor`
   (port, process group, restarts, logs) and is health-waited;
3. ``after_launch`` (Ollama: push the store's GGUF as a blob, ``/api/create``,
   load it with ``keep_alive`` forever);
4. the :class:`~swarmd.engines.base.EngineSpec` the engine manager adds, with
   the upstream id renamed to the deployment's model name.

:meth:`Launcher.stop` undoes it: the supervisor stops what it started; a
borrowed server is only asked to let the model go (``Engine.release``; Ollama: unload
it with ``keep_alive`` 0).

Only llama.cpp is exercised with a real engine in this repository's tests;
vLLM, TGI, mlx-lm and Ollama are launched by command and tested against
stand-ins (:mod:`swarmd.testing.fake_engine`) that check the flags.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp

from swarmd.core.deployments import DeploymentSpec
from swarmd.core.fit import (
    Device,
    devices_of,
    facts_from_dict,
    fit,
    need_bytes,
    vllm_memory_utilization,
)
from swarmd.core.snapshot import Snapshot
from swarmd.engines.base import Engine, EngineSpec
from swarmd.engines.supervisor import LaunchSpec, Managed, Supervisor

log = logging.getLogger("swarmd.deploy")

#: Kinds tried in this order for a format (the first available one wins).
PREFERENCE = ("llamacpp", "vllm", "tgi", "mlx", "ollama")
#: Kinds whose process uses one GPU, preallocated by a fraction of its memory.
SINGLE_GPU = frozenset({"vllm", "tgi"})


class LaunchError(RuntimeError):
    """This node cannot launch the deployment (the reason is reported in ``swarmctl ps``)."""


def choose_kind(fmt: str, classes: Iterable[type[Engine]]) -> tuple[str, bool]:
    """``(kind, available_here)`` for a model of format ``fmt``: the first kind in
    :data:`PREFERENCE` order (then plugins, by name) that launches it and is
    available here, else the first that launches it.  LaunchError when none does."""
    rank = {k: i for i, k in enumerate(PREFERENCE)}
    fits = sorted((c for c in classes if fmt in c.launch_formats),
                  key=lambda c: (rank.get(c.kind, len(rank)), c.kind))
    if not fits:
        raise LaunchError(f"no engine kind launches {fmt} models "
                          "(GGUF: llamacpp, ollama; safetensors: vllm, tgi; mlx: mlx)")
    for c in fits:
        if c.launch_available():
            return c.kind, True
    return fits[0].kind, False


def own_devices(snap: Snapshot, node_id: str) -> list[Device]:
    for n in snap.nodes:
        if n.node_id == node_id:
            return devices_of(n.record.get("caps"), n.record.get("load"))
    return []


@dataclass(frozen=True)
class Placement:
    """Where on this node the model goes: GPU indices to expose and the memory fraction."""

    gpus: tuple[int, ...] | None
    gpu_vendor: str = "nvidia"
    memory_fraction: float = 0.0
    device: Device | None = None


def local_placement(d: DeploymentSpec, devices: list[Device]) -> Placement:
    """The device this node runs ``d`` on (see the module docstring, step 1)."""
    if d.gpu is False:
        return Placement(gpus=())
    facts = facts_from_dict(d.facts) if d.facts is not None else None
    if facts is None:  # no fit possible: GPUs only when the deployment asks for one
        return Placement(gpus=None if d.gpu else ())
    need = need_bytes(facts, engine_kind=d.kind, ctx=d.ctx, slots=d.slots)
    got = fit(need, devices, gpu=d.gpu).device
    if got is None:  # free memory moved since placement: the largest device it may use
        ok = [x for x in devices if x.kind in need.kinds and (d.gpu is None or x.gpu)]
        got = max(ok, key=lambda x: (x.gpu, x.total_bytes, x.id), default=None)
    if got is None or not got.gpu:  # in RAM: the engine must not take a GPU as well
        return Placement(gpus=(), device=got)
    frac = vllm_memory_utilization(need, got)
    if d.kind in SINGLE_GPU and got.index is not None:
        return Placement(gpus=(got.index,), gpu_vendor="amd" if got.kind == "rocm" else "nvidia",
                         memory_fraction=frac, device=got)
    return Placement(gpus=None, memory_fraction=frac, device=got)


@dataclass
class _Borrowed:
    cls: type[Engine]
    url: str
    upstream: str


class Launcher:
    """Starts and stops the engines of the deployments placed on this node."""

    def __init__(self, supervisor: Supervisor, http: aiohttp.ClientSession) -> None:
        self.supervisor = supervisor
        self.http = http
        self._borrowed: dict[str, _Borrowed] = {}

    async def start(self, cls: type[Engine], d: DeploymentSpec, engine_id: str, *,
                    model_path: str, sha256: str = "", threads: int = 0,
                    devices: list[Device] | None = None) -> tuple[Managed, EngineSpec]:
        """Bring ``d`` up (steps 1-4): the managed process (or a stand-in for a
        borrowed server, always ``ready``) and the engine spec to add."""
        model = d.model
        where = local_placement(d, devices or [])
        upstream = cls.launched_name(model_path, model)
        url = await cls.running_server(self.http)
        if url is not None:
            m = Managed(LaunchSpec(engine_id, d.kind, model, ()), state="ready")
            self._borrowed[engine_id] = _Borrowed(cls, url, upstream)
            log.info("%s: using the %s server at %s", model, d.kind, url)
        else:
            argv = cls.launch_command(model_path, model_id=model, ctx=d.ctx, slots=d.slots,
                                      threads=threads, chat_format=d.chat_format,
                                      memory_fraction=where.memory_fraction)
            if argv is None:
                raise LaunchError(f"engine kind {d.kind!r} cannot be launched on this node "
                                  "(not installed here)")
            m = self.supervisor.start(LaunchSpec(
                engine_id, d.kind, model, tuple(argv), env=cls.launch_env(ctx=d.ctx,
                                                                          slots=d.slots),
                gpus=where.gpus, gpu_vendor=where.gpu_vendor))
            while m.state not in ("ready", "failed"):  # noqa: ASYNC110 -- polled state
                await asyncio.sleep(0.2)
            if m.state == "failed":
                raise LaunchError(m.reason)
            url = m.url
        try:
            await cls.after_launch(self.http, url, model_path, model_id=model, ctx=d.ctx,
                                   slots=d.slots, sha256=sha256)
        except Exception:
            await self.stop(engine_id)
            raise
        options: dict[str, Any] = {"rename": {upstream: model}} if upstream != model else {}
        capacity = cls.launched_capacity(list(m.spec.argv), d.slots)
        return m, EngineSpec(kind=d.kind, url=url, id=engine_id, models=(model,),
                             capacity=capacity, options=options)

    def borrowed(self, engine_id: str) -> bool:
        """Is ``engine_id`` a server swarmd found running rather than launched?"""
        return engine_id in self._borrowed

    async def stop(self, engine_id: str) -> None:
        """Stop what :meth:`start` started; unload the model from a borrowed server."""
        b = self._borrowed.pop(engine_id, None)
        if b is None:
            await self.supervisor.stop(engine_id)
            return
        try:
            await b.cls.release(self.http, b.url, b.upstream)
        except Exception as exc:  # noqa: BLE001 -- the server may be gone already
            log.warning("could not release %s on %s: %s", b.upstream, b.url, exc)


__all__ = ["PREFERENCE", "LaunchError", "Launcher", "Placement", "choose_kind",
           "local_placement", "own_devices"]
