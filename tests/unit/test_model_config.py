"""``[models]`` config: defaults, validation, the store dir, the Hub token (read in one place)."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarmd import config
from swarmd.models.service import ModelService


def test_defaults_and_store_dir(tmp_path: Path) -> None:
    cfg = config.from_mapping({"node": {"data_dir": str(tmp_path)}})
    m = cfg.models
    assert (m.max_disk, m.max_transfer_rate, m.allow_pickle) == (0, 0, False)
    assert m.hf_endpoint == "https://huggingface.co"
    assert config.models_dir(cfg) == tmp_path / "models"
    cfg = config.from_mapping({"models": {"dir": str(tmp_path / "elsewhere")}})
    assert config.models_dir(cfg) == tmp_path / "elsewhere"
    assert "[models]" in config.to_toml(cfg)


@pytest.mark.parametrize("models,key", [
    ({"max_disk": -1}, "models.max_disk"),
    ({"max_transfer_rate": -5}, "models.max_transfer_rate"),
    ({"max_disk": "10G"}, "models.max_disk"),
    ({"allow_pickle": "yes"}, "models.allow_pickle"),
    ({"hf_endpoint": "ftp://mirror"}, "models.hf_endpoint"),
    ({"ollama_registry": "registry.ollama.ai"}, "models.ollama_registry"),
    ({"bogus": 1}, "models.bogus"),
])
def test_bad_values_name_the_key(models: dict, key: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.from_mapping({"models": models})
    assert err.value.key == key


def test_hf_token_from_file_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "from-env")
    assert config.resolve_hf_token(config.ModelsSection()) == "from-env"
    monkeypatch.delenv("HF_TOKEN")
    assert config.resolve_hf_token(config.ModelsSection()) is None
    (tmp_path / "tok").write_text("hf_abc\n")
    assert config.resolve_hf_token(config.ModelsSection(hf_token_file=str(tmp_path / "tok"))) == "hf_abc"
    with pytest.raises(config.ConfigError, match="models.hf_token_file"):
        config.resolve_hf_token(config.ModelsSection(hf_token_file=str(tmp_path / "missing")))


def test_service_from_config(tmp_path: Path) -> None:
    cfg = config.from_mapping({"node": {"data_dir": str(tmp_path)},
                               "models": {"max_disk": 123456789, "max_transfer_rate": 1000,
                                          "ollama_dir": str(tmp_path / "ollama"),
                                          "hf_endpoint": "http://127.0.0.1:9"}})
    svc = ModelService.from_config(cfg, in_use=lambda: {"x"})
    assert svc.store.root == tmp_path / "models" and svc.store.max_disk == 123456789
    assert svc.puller.limiter.rate == 1000
    assert svc.puller.settings.ollama_dir == tmp_path / "ollama"
    assert svc.puller.settings.hf_endpoint == "http://127.0.0.1:9"
    assert svc.store.in_use() == {"x"}
    assert svc.listing()["models"] == [] and svc.inventory() == []
