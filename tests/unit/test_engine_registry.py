"""Engine kinds: built-ins, entry-point plugins, and the errors for bad ones."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from swarmd.engines.base import Engine, EngineSpec
from swarmd.engines.registry import (
    BUILTINS,
    GROUP,
    EngineKindError,
    EngineRegistry,
    UnknownEngineKind,
    default_registry,
)
from tests.fakes.upstreams import FakePluginEngine


def ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=GROUP)


def test_every_builtin_loads_under_its_name() -> None:
    reg = EngineRegistry(eps=[])
    assert reg.kinds() == list(BUILTINS)
    for kind in BUILTINS:
        cls = reg.get(kind)
        assert issubclass(cls, Engine) and cls.kind == kind
        engine = reg.create(EngineSpec(kind=kind, url="http://127.0.0.1:1234"))
        assert engine.id == f"{kind}-1234"


def test_unknown_kind_lists_known_kinds() -> None:
    reg = EngineRegistry(eps=[ep("fakeplugin", "tests.fakes.upstreams:FakePluginEngine")])
    with pytest.raises(UnknownEngineKind) as info:
        reg.get("llama.cpp")
    msg = str(info.value)
    assert "'llama.cpp'" in msg
    for kind in [*BUILTINS, "fakeplugin"]:
        assert kind in msg


def test_entry_point_plugin_is_loaded_lazily() -> None:
    reg = EngineRegistry(eps=[ep("fakeplugin", "tests.fakes.upstreams:FakePluginEngine"),
                              ep("broken", "no_such_module_for_swarmd:Engine")])
    assert reg.kinds()[-2:] == ["broken", "fakeplugin"]  # listed without importing
    assert reg.get("fakeplugin") is FakePluginEngine
    engine = reg.create(EngineSpec(kind="fakeplugin", url="http://127.0.0.1:9"))
    assert isinstance(engine, FakePluginEngine)
    with pytest.raises(EngineKindError, match="broken.*failed to load.*ModuleNotFoundError"):
        reg.get("broken")
    # a broken plugin costs only its own kind
    assert [c.kind for c in reg.loadable()] == [*BUILTINS, "fakeplugin"]


def test_plugin_under_another_name_gets_that_kind() -> None:
    reg = EngineRegistry(eps=[ep("alias", "tests.fakes.upstreams:FakePluginEngine")])
    cls = reg.get("alias")
    assert issubclass(cls, FakePluginEngine) and cls.kind == "alias"


def test_non_engine_entry_point_is_refused() -> None:
    reg = EngineRegistry(eps=[ep("odd", "tests.fakes.upstreams:NOT_AN_ENGINE")])
    with pytest.raises(EngineKindError, match="not a swarmd.engines.base.Engine subclass"):
        reg.get("odd")


def test_plugin_cannot_take_over_a_builtin_name() -> None:
    reg = EngineRegistry(eps=[ep("openai", "tests.fakes.upstreams:FakePluginEngine"),
                              ep("vllm", BUILTINS["vllm"])])
    assert reg.get("openai").__name__ == "OpenAIEngine"
    assert reg.get("vllm").__name__ == "VllmEngine"


def test_default_registry_reads_installed_entry_points() -> None:
    reg = default_registry()
    assert reg is default_registry()
    assert set(BUILTINS) <= set(reg.kinds())
