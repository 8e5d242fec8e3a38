"""Other clients' APIs on the API port: Ollama, OpenAI Responses, Anthropic Messages.

Theory of operation
-------------------
:func:`register_client_apis` adds the routes of :mod:`swarmd.api.ollama_api`,
:mod:`swarmd.api.responses_api` and :mod:`swarmd.api.anthropic_api` to the
OpenAI app.  Each handler checks its API's body and maps it with the pure
translators in :mod:`swarmd.api.translate`, then routes it through
:meth:`swarmd.api.proxy.Proxy.exchange` -- the same router, queue, retries
before the first byte and metrics as the OpenAI routes -- and maps the
committed answer back, streamed or not.  What the three share (reading
bodies, relaying streams, the error carrier) is in
:mod:`swarmd.api.client_common`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from swarmd.api.anthropic_api import register as register_anthropic
from swarmd.api.ollama_api import register as register_ollama
from swarmd.api.responses_api import register as register_responses


def register_client_apis(app: web.Application, proxy: Any, deps: Any) -> None:
    """Add the Ollama, Responses and Anthropic routes to the API app."""
    register_ollama(app, proxy, deps)
    register_responses(app, proxy, deps)
    register_anthropic(app, proxy, deps)
