"""Fixtures for integration tests: a real llama.cpp engine on a tiny model."""

from tests.fakes.llama_server import (  # noqa: F401  (pytest fixtures)
    llama_embed_server,
    llama_server,
    tiny_embed_model,
    tiny_model,
)
