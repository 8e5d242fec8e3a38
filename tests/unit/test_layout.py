"""The package layout, checked from the source (no imports executed).

* No import cycle among ``swarmd`` modules.  Every import statement counts:
  module level, inside functions, and under ``if TYPE_CHECKING:`` too (a
  type-only cycle still means two modules that cannot be understood, moved
  or tested apart).
* No module over :data:`MAX_LINES` lines (swarmd, plugins, tests, bench).
* Layers, bottom up: ``swarmd.core`` (sans-IO rules and pure data) imports
  only ``swarmd.core``; the middle (config, api, engines, control, ctl, hw,
  models, dataplane, metrics, identity, ...) never imports ``swarmd.runtime``
  or ``swarmd.daemon``; ``swarmd.runtime`` (trio, threads, the composition
  root) never imports ``swarmd.daemon``; nothing but the testing kit
  (``swarmd.testing``, which may use any layer) imports the testing kit.  ``swarmd.core`` imports no trio,
  libp2p or aiohttp.

:data:`KNOWN` lists violations in files another change owns, each with the
rule it breaks; the test fails on any violation not listed *and* on a listed
one that is gone (so the list only shrinks).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 600
SIZE_DIRS = ("swarmd", "plugins", "tests", "bench")
IO_LIBS = ("trio", "libp2p", "aiohttp", "asyncio", "socket", "threading")

#: Line counts of the modules over MAX_LINES (filled by violations(), for messages).
SIZES: dict[str, int] = {}

#: Compatibility aliases left after a move; nothing in swarmd may import them.
MOVED = {"swarmd.runtime.snapshot": "swarmd.core.snapshot"}

#: (rule, detail) pairs still present in files owned elsewhere; must only shrink.
KNOWN: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for path in sorted((ROOT / "swarmd").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(mod: str) -> Iterator[tuple[str, int]]:
    """Every module name ``mod`` imports (any depth in the file), with the line."""
    path = MODULES[mod]
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(mod, path.name == "__init__.py", node)
            subs = [f"{target}.{a.name}" for a in node.names]
            # ``from pkg import submodule`` depends on the submodule (and on
            # pkg/__init__ only as every submodule does); any other name is
            # defined by ``target`` itself.
            if not all(s in MODULES for s in subs):
                yield target, node.lineno
            for sub in subs:
                if sub in MODULES:
                    yield sub, node.lineno


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod in MODULES:
        for name, _ in _imports(mod):
            # the deepest swarmd module named (a from-import of a function
            # names the module that defines it)
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != mod and name.startswith("swarmd"):
                graph[mod].add(name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _layer(mod: str) -> int:
    if mod == "swarmd.core" or mod.startswith("swarmd.core."):
        return 0
    if mod == "swarmd.runtime" or mod.startswith("swarmd.runtime."):
        return 2
    if mod in ("swarmd.daemon", "swarmd.testing") or mod.startswith("swarmd.testing."):
        return 3
    return 1


def _is_kit(mod: str) -> bool:
    return mod == "swarmd.testing" or mod.startswith("swarmd.testing.")


_LAYER_NAMES = {0: "core", 1: "middle", 2: "runtime", 3: "daemon/testing"}


def violations() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    graph = _graph()
    for comp in _cycles(graph):
        found.add(("cycle", " <-> ".join(comp)))
    for mod, deps in graph.items():
        for dep in deps:
            if dep in MOVED:
                found.add(("moved", f"{mod} imports {dep}, now {MOVED[dep]}"))
            if _is_kit(dep) and not _is_kit(mod):
                found.add(("layer", f"{mod} imports the testing kit {dep}"))
            if _layer(dep) > _layer(mod):
                found.add(("layer", f"{mod} ({_LAYER_NAMES[_layer(mod)]}) imports {dep} "
                                    f"({_LAYER_NAMES[_layer(dep)]})"))
    for mod in MODULES:
        if _layer(mod) != 0:
            continue
        for name, line in _imports(mod):
            if name.split(".")[0] in IO_LIBS:
                found.add(("io-in-core", f"{mod}:{line} imports {name}"))
    for d in SIZE_DIRS:
        for path in sorted((ROOT / d).rglob("*.py")):
            n = len(path.read_text().splitlines())
            if n > MAX_LINES:
                found.add(("size", str(path.relative_to(ROOT))))
                SIZES[str(path.relative_to(ROOT))] = n
    return found


def test_layout_rules_hold() -> None:
    found = violations()
    new = sorted(found - KNOWN)
    gone = sorted(KNOWN - found)
    def show(r: str, d: str) -> str:
        return f"  {r}: {d}" + (f" has {SIZES[d]} lines (max {MAX_LINES})" if r == "size" else "")

    assert not new, "layout rules broken:\n" + "\n".join(show(r, d) for r, d in new)
    assert not gone, "fixed, remove from KNOWN:\n" + "\n".join(f"  {r}: {d}" for r, d in gone)


def test_the_checker_sees_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    # The two ways the old runtime cycle hid: an import inside a function and
    # one under TYPE_CHECKING.  Both are edges.
    src = ("from typing import TYPE_CHECKING\n"
           "if TYPE_CHECKING:\n    from swarmd.runtime.node import Node\n"
           "def f():\n    from swarmd.runtime.services import start_services\n")
    tree = ast.parse(src)
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {"swarmd.runtime.node", "swarmd.runtime.services"} <= names
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _layer("swarmd.core.node") < _layer("swarmd.api.proxy") < _layer("swarmd.runtime.node")
