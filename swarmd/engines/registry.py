"""Engine kinds by name: the built-ins and third-party plugins.

Theory of operation
-------------------
A kind name (``[[engines]] kind = "vllm"``) maps to an :class:`Engine`
subclass.  Built-ins live in the ``swarmd_engines`` package
(``plugins/swarmd_engines``) and are listed here by import path, so a source
checkout works without installing entry points.  Third parties register a
class under the entry point group ``swarmd.engines``::

    [project.entry-points."swarmd.engines"]
    mykind = "my_package.engine:MyEngine"

Classes are imported lazily, the first time a kind is asked for; a plugin that
fails to import or is not an Engine subclass breaks only its own kind, with
an error saying why.  A plugin cannot take over a built-in name (the
``openai`` kind, for one, holds API keys): such an entry point is ignored
unless it points at the built-in class itself.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from swarmd.engines.base import Engine, EngineSpec

log = logging.getLogger("swarmd.engines")

GROUP = "swarmd.engines"

#: Built-in kinds -> "module:Class".  Detection probes them in this order
#: (most specific signature first).
BUILTINS: dict[str, str] = {
    "llamacpp": "swarmd_engines.llamacpp:LlamaCppEngine",
    "tgi": "swarmd_engines.tgi:TgiEngine",
    "vllm": "swarmd_engines.vllm:VllmEngine",
    "ollama": "swarmd_engines.ollama:OllamaEngine",
    "mlx": "swarmd_engines.mlx:MlxEngine",
    "openai": "swarmd_engines.openai:OpenAIEngine",
    "simulated": "swarmd_engines.simulated:SimulatedEngine",
}


class UnknownEngineKind(ValueError):
    def __init__(self, kind: str, known: Iterable[str]) -> None:
        self.kind = kind
        self.known = sorted(known)
        super().__init__(
            f"unknown engine kind {kind!r}; known kinds: {', '.join(self.known)} "
            f"(plugins register more under the {GROUP!r} entry point group)"
        )


class EngineKindError(ValueError):
    """A kind exists but its class cannot be loaded."""


def _import(target: str) -> object:
    module, _, attr = target.partition(":")
    obj: object = importlib.import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class _Source:
    target: str  # "module:attr"
    origin: str  # "built-in" or "entry point <name> from <dist>"
    load: Callable[[], object]


class EngineRegistry:
    """Kind name -> Engine class.  ``eps`` replaces the installed entry points
    (tests pass their own)."""

    def __init__(self, eps: Iterable[EntryPoint] | None = None) -> None:
        self._sources: dict[str, _Source] = {
            k: _Source(t, "built-in", lambda t=t: _import(t))  # type: ignore[misc]
            for k, t in BUILTINS.items()
        }
        self._loaded: dict[str, type[Engine]] = {}
        found = list(entry_points(group=GROUP)) if eps is None else list(eps)
        for ep in found:
            dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
            if ep.name in BUILTINS:
                if ep.value.replace(" ", "") != BUILTINS[ep.name]:
                    log.warning("engine plugin %s = %s (from %s) ignored: %r is a built-in kind",
                                ep.name, ep.value, dist, ep.name)
                continue
            if ep.name in self._sources:
                log.warning("engine plugin %s registered twice; keeping %s",
                            ep.name, self._sources[ep.name].origin)
                continue
            self._sources[ep.name] = _Source(ep.value, f"entry point {ep.name} from {dist}",
                                             ep.load)

    def kinds(self) -> list[str]:
        """Known kind names, built-ins first in detection order, then plugins sorted."""
        builtins = [k for k in BUILTINS]
        return builtins + sorted(k for k in self._sources if k not in BUILTINS)

    def get(self, kind: str) -> type[Engine]:
        """The class for ``kind``; UnknownEngineKind or EngineKindError."""
        cls = self._loaded.get(kind)
        if cls is not None:
            return cls
        src = self._sources.get(kind)
        if src is None:
            raise UnknownEngineKind(kind, self._sources)
        try:
            obj = src.load()
        except Exception as exc:
            raise EngineKindError(
                f"engine kind {kind!r} ({src.origin}, {src.target}) failed to load: "
                f"{type(exc).__name__}: {exc}") from exc
        if not (isinstance(obj, type) and issubclass(obj, Engine)):
            raise EngineKindError(
                f"engine kind {kind!r} ({src.origin}) is {src.target}, "
                "which is not a swarmd.engines.base.Engine subclass")
        if getattr(obj, "kind", None) != kind:
            # The registered name wins; a plugin class may serve several names.
            obj = type(obj.__name__, (obj,), {"kind": kind, "__module__": obj.__module__})
        self._loaded[kind] = obj
        return obj

    def create(self, spec: EngineSpec) -> Engine:
        return self.get(spec.kind)(spec)

    def loadable(self) -> list[type[Engine]]:
        """Every kind's class that loads (failures logged and skipped), in
        :meth:`kinds` order.  For detection."""
        out = []
        for kind in self.kinds():
            try:
                out.append(self.get(kind))
            except EngineKindError as exc:
                log.warning("%s", exc)
        return out


_default: EngineRegistry | None = None


def default_registry() -> EngineRegistry:
    """The process-wide registry over the installed entry points (made on first use)."""
    global _default
    if _default is None:
        _default = EngineRegistry()
    return _default
