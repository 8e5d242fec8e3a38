"""pytest fixtures: a real llama.cpp engine on a tiny model (import them in a conftest.py).

``tiny_model`` / ``tiny_embed_model`` (paths), ``llama_server`` (chat and
completions, alias ``tiny``), ``llama_embed_server`` (embeddings, alias
``tiny-embed``), all session scoped.  They skip when llama-cpp-python is not
installed.  The server itself is :mod:`swarmd.testing.llama_server`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmd.testing.llama_server import SKIP_REASON, LlamaServer, llama_available, start
from swarmd.testing.tiny_gguf import write_tiny_gguf


def _require_llama() -> None:
    if not llama_available():
        pytest.skip(SKIP_REASON)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly generated tiny chat/completion model (seed 0)."""
    _require_llama()
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_embed_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny model with mean pooling, for an embedding server."""
    _require_llama()
    path = tmp_path_factory.mktemp("gguf") / "tiny-embed.gguf"
    return write_tiny_gguf(path, embedding=True)


@pytest.fixture(scope="session")
def llama_server(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    """A real llama.cpp server for chat and completions (alias ``tiny``)."""
    with start(tiny_model, alias="tiny", log_dir=tmp_path_factory.mktemp("llama-log")) as srv:
        yield srv


@pytest.fixture(scope="session")
def llama_embed_server(
    tiny_embed_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    """A real llama.cpp server with embeddings enabled (alias ``tiny-embed``)."""
    log_dir = tmp_path_factory.mktemp("llama-log")
    with start(tiny_embed_model, alias="tiny-embed", embedding=True, log_dir=log_dir) as srv:
        yield srv
