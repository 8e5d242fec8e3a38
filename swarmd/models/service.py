"""The model store as the daemon runs it: store, puller and settings from config.

:meth:`ModelService.from_config` is the one constructor the daemon's wiring
calls; the control API (swarmd/control/models_routes.py) and the node record
(:meth:`inventory`) use the result.  :meth:`pull` and :meth:`remove` call
``on_change(inventory)`` afterwards (also after a failed pull, which may have
evicted models), so the daemon can put the new inventory in its gossiped
record.  Building it creates the store directories; nothing happens at import.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from swarmd.models.fetch import RateLimiter
from swarmd.models.inventory import inventory
from swarmd.models.puller import Puller
from swarmd.models.sources.base import Plan, SourceSettings
from swarmd.models.store import ModelStore, NotFound, StoredModel, StoreError

if TYPE_CHECKING:
    from swarmd.config import Config


Inventory = list[list[str]]


class ModelService:
    def __init__(self, store: ModelStore, puller: Puller,
                 on_change: Callable[[Inventory], None] | None = None) -> None:
        self.store = store
        self.puller = puller
        self.on_change = on_change
        #: Other nodes' stores (:class:`swarmd.runtime.peer_models.PeerModels`),
        #: set by the daemon once its data plane is up; None: this node only.
        self.peers: Any = None

    @classmethod
    def from_config(
        cls, cfg: Config, *, in_use: Callable[[], Collection[str]] = frozenset,
        peer_plan: Callable[[str], Plan | None] | None = None,
        on_change: Callable[[Inventory], None] | None = None,
    ) -> ModelService:
        from swarmd.config import models_dir, ollama_dir, resolve_hf_token

        m = cfg.models
        store = ModelStore(models_dir(cfg), max_disk=m.max_disk, in_use=in_use)
        settings = SourceSettings(
            hf_endpoint=m.hf_endpoint, hf_token=resolve_hf_token(m),
            ollama_registry=m.ollama_registry, ollama_dir=ollama_dir(m),
            allow_pickle=m.allow_pickle)
        puller = Puller(store, settings, limiter=RateLimiter(m.max_transfer_rate),
                        peer_plan=peer_plan)
        return cls(store, puller, on_change)

    def inventory(self) -> Inventory:
        """The compact inventory for this node's gossiped record."""
        return inventory(self.store.list())

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.inventory())

    def pull(self, source: str, *, name: str | None = None,
             progress: Callable[[dict[str, Any]], None] = lambda e: None,
             cancel: threading.Event | None = None) -> StoredModel:
        """:meth:`Puller.pull`, then ``on_change`` (blocking: run it in a thread)."""
        try:
            return self.puller.pull(source, name=name, progress=progress, cancel=cancel)
        finally:
            self._changed()

    def remove(self, ref: str) -> StoredModel:
        m = self.store.remove(ref)
        self._changed()
        return m

    def try_remove(self, ref: str) -> tuple[int, dict[str, Any]]:
        """:meth:`remove` as an HTTP outcome (blocking: run it in a thread):
        ``(200, {"removed": {name, digest, size}})``, ``(404, {"error", "code":
        "model_not_found"})`` or ``(409, {"error", "code": "in_use"})``.  The
        control API, a peer's ``rm --node`` (the data plane) and Ollama's
        ``/api/delete`` all answer from it."""
        try:
            m = self.remove(ref)
        except NotFound as exc:
            return 404, {"error": str(exc), "code": "model_not_found"}
        except StoreError as exc:
            return 409, {"error": str(exc), "code": "in_use"}
        return 200, {"removed": {"name": m.manifest.name, "digest": m.digest,
                                 "size": m.manifest.size}}

    def listing(self) -> dict[str, Any]:
        return {"dir": str(self.store.root), "usage": self.store.usage(),
                "max_disk": self.store.max_disk,
                "models": [m.to_json() for m in self.store.list()]}
