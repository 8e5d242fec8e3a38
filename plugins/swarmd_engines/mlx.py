"""mlx-lm's server (``mlx_lm.server``, Apple silicon).

Theory of operation (ml-explore/mlx-lm ``mlx_lm/server.py``): a Python
``http.server`` (``ThreadingHTTPServer``; its ``Server`` header starts with
``BaseHTTP/``) with ``POST /v1/completions`` and ``/v1/chat/completions``,
``GET /v1/models`` (the ``--model`` it was started with, as a resolved path
when local, plus the mlx models in the Hugging Face cache, which it loads on
demand; entries have no ``owned_by``) and, in recent releases, ``GET
/health`` -> ``{"status": "ok"}`` (older ones: 404, then health is
``/v1/models``).  No load figures.  Default port: 8080.

Launched by swarmd (MLX directories; ``mlx_lm.server`` on PATH):
``mlx_lm.server --model DIR --host 127.0.0.1 --port P`` with DIR resolved, as
the server lists it; a request naming exactly the ``--model`` it was started
with uses that preloaded model (``ModelProvider.default_model_map``), so the
manager renames DIR to the deployment's name.  mlx-lm has no flag for the
context or parallel slots: it batches by itself.  Apple silicon only (the fit
places it on ``metal`` devices); not run against a real mlx-lm in swarmd's tests.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import aiohttp

from swarmd.engines.base import get_status, get_text, quiet
from swarmd.engines.openai_compat import OpenAICompatEngine


class MlxEngine(OpenAICompatEngine):
    kind: ClassVar[str] = "mlx"
    max_tokens_field: ClassVar[str] = "max_tokens"  # ignores max_completion_tokens
    default_ports: ClassVar[tuple[int, ...]] = (8080,)
    launch_exe: ClassVar[str] = "mlx_lm.server"
    launch_formats: ClassVar[tuple[str, ...]] = ("mlx",)

    @classmethod
    def launch_command(cls, model_path: str, *, model_id: str, ctx: int, slots: int,
                       threads: int = 0, chat_format: str = "",
                       memory_fraction: float = 0.0) -> list[str] | None:
        exe = shutil.which(cls.launch_exe)
        if exe is None:
            return None
        return [exe, "--model", cls.launched_name(model_path, model_id), "--host", "127.0.0.1",
                "--port", "{port}"]

    @classmethod
    def launched_name(cls, model_path: str, model_id: str) -> str:
        return str(Path(model_path).resolve())

    async def health(self, http: aiohttp.ClientSession) -> bool:
        status = await get_status(http, self.url_for("/health"), headers=self.auth_headers())
        if status == 404:
            return await super().health(http)
        return 200 <= status < 300

    @classmethod
    async def probe(cls, http: aiohttp.ClientSession, url: str) -> bool:
        status, text, headers = await quiet(get_text(http, url + "/v1/models", wait_s=1.0),
                                            (0, "", {}))
        server = next((v for k, v in headers.items() if k.lower() == "server"), "")
        if status != 200 or not server.startswith("BaseHTTP/"):
            return False
        try:
            doc = json.loads(text)
        except ValueError:
            return False
        data = doc.get("data") if isinstance(doc, Mapping) else None
        return isinstance(data, list) and all(
            isinstance(m, Mapping) and "owned_by" not in m for m in data
        )
