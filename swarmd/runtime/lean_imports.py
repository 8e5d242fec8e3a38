"""Keep modules the daemon never runs out of its memory.

Theory of operation
-------------------
About three quarters of an idle daemon's memory is code that importing
py-libp2p loads: ``import libp2p`` executes its whole package (QUIC, TLS with
an ACME client, relays, DHT, pubsub, ...) whether or not a host uses it.
Most of that cannot be avoided without patching py-libp2p, but two kinds of
import can be, safely:

* **Blocked**: ``httpx._main`` is httpx's command-line client.  httpx's
  ``__init__`` imports it inside ``try/except ImportError`` and falls back to
  a stub ``main`` when it is missing; importing it drags in rich, click and
  pygments.  The daemon never runs httpx's CLI, so the finder answers that
  one import with ImportError, exactly as if httpx's optional ``cli`` extra
  were not installed.
* **Deferred**: modules that py-libp2p (or aioquic) imports with a plain
  ``import x`` at the top of a subsystem swarmd does not run, and uses only
  inside functions: ``requests`` and ``httpx`` (AutoTLS's ACME client and
  broker), ``miniupnpc`` (UPnP), ``cbor2`` (IPNS records), ``mmh3``
  (bitswap), ``service_identity`` and ``pylsqpack`` (aioquic's TLS and
  HTTP/3).  Each is bound to a :class:`_DeferredModule`: a placeholder whose
  first read of an attribute it lacks imports the real module and delegates
  to it from then on -- so a subsystem that does run still works, it just
  loads its module then.  (The standard library's
  ``importlib.util.LazyLoader`` does not do here: on Python 3.11 a second
  ``import requests`` reads ``__spec__`` and loads the module.)

The placeholder has no ``__path__``: importing a submodule reads the parent's
``__path__``, which loads the real package first.  Loading is serialised by
a lock, so two threads touching a placeholder at once load it once.

:func:`install` is called by ``swarmd``'s ``main`` before the runtime is
imported; nothing here runs at import time, and ``swarmctl`` (which does want
rich) never calls it.  ``bench/cluster.py`` prints the daemon's RSS, PSS and
USS so the saving stays measured (README, "Figures").
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

#: Imported by a library only inside ``try/except ImportError`` and never
#: needed by the daemon.
BLOCKED = frozenset({"httpx._main"})
#: Top-level modules bound to a placeholder until an attribute is read.
DEFERRED = frozenset({"requests", "httpx", "miniupnpc", "cbor2", "mmh3", "service_identity",
                      "pylsqpack"})

_lock = threading.RLock()
_loading: set[str] = set()


class _DeferredModule(ModuleType):
    """Stands in for a module until an attribute it lacks is read."""

    #: False while the import system initialises the placeholder: it probes
    #: optional attributes (``__path__``, ``__file__``) that must not load
    #: the real module.
    _ready = False

    def __getattr__(self, attr: str) -> Any:
        if not self._ready:
            raise AttributeError(attr)
        return getattr(_real(self.__name__), attr)


def _real(name: str) -> ModuleType:
    with _lock:
        mod = sys.modules.get(name)
        if mod is None or isinstance(mod, _DeferredModule):
            sys.modules.pop(name, None)
            _loading.add(name)
            try:
                mod = importlib.import_module(name)
            finally:
                _loading.discard(name)
        return mod


class _PlaceholderLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return _DeferredModule(spec.name)

    def exec_module(self, module: ModuleType) -> None:
        assert isinstance(module, _DeferredModule)
        module._ready = True


class _LeanFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in BLOCKED:
            raise ImportError(f"{fullname} is not loaded by swarmd (see swarmd.runtime.lean_imports)")
        if fullname not in DEFERRED or fullname in _loading:
            return None
        return importlib.machinery.ModuleSpec(fullname, _PlaceholderLoader())


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, _LeanFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _LeanFinder())
