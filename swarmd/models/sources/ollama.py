"""Ollama source: ``ollama:[NAMESPACE/]NAME[:TAG]``.

Theory of operation
-------------------
Ollama's registry speaks the OCI distribution API: ``GET
/v2/<ns>/<name>/manifests/<tag>`` (``Accept:
application/vnd.docker.distribution.manifest.v2+json``) lists layers by media
type, digest and size; ``GET /v2/<ns>/<name>/blobs/<digest>`` returns each
(often by redirect to a CDN).  Each layer becomes one file of the model,
named for its media type (``model.gguf``, ``template``, ``params.json``,
...), with the layer digest as the expected sha256.

When ``[models] ollama_dir`` points at an existing Ollama store
(``~/.ollama/models``) that holds the tag
(``manifests/registry.ollama.ai/<ns>/<name>/<tag>``), the blobs
(``blobs/sha256-<hex>``) are imported instead: verified by hashing, then hard
linked into the store where the file system allows (a copy otherwise).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swarmd.models.fetch import RangeSource, SourceError
from swarmd.models.manifest import MAX_FILE_SIZE
from swarmd.models.sources.base import FileRangeSource, Plan, RemoteFile, SourceSettings
from swarmd.models.sources.http import HttpRangeSource, request
from swarmd.models.spec import OllamaSpec, format_spec

ACCEPT = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA = {
    "application/vnd.ollama.image.model": "model.gguf",
    "application/vnd.ollama.image.projector": "projector.gguf",
    "application/vnd.ollama.image.adapter": "adapter.gguf",
    "application/vnd.ollama.image.template": "template",
    "application/vnd.ollama.image.system": "system",
    "application/vnd.ollama.image.params": "params.json",
    "application/vnd.ollama.image.messages": "messages.json",
    "application/vnd.ollama.image.license": "license",
}
MAX_LAYERS = 64
MAX_MANIFEST = 1024 * 1024


def _layers(doc: Any, where: str) -> list[tuple[str, str, int]]:
    """(file name, sha256 hex, size) per layer, checked."""
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
        raise SourceError(f"{where}: not an OCI image manifest (no layers)")
    layers = list(doc["layers"])
    if len(layers) > MAX_LAYERS:
        raise SourceError(f"{where}: {len(layers)} layers is over the {MAX_LAYERS} limit")
    if isinstance(doc.get("config"), dict):
        layers.append({**doc["config"], "mediaType": "config"})
    out: list[tuple[str, str, int]] = []
    seen: dict[str, int] = {}
    for layer in layers:
        if not isinstance(layer, dict):
            raise SourceError(f"{where}: a layer is not an object")
        digest, size, media = layer.get("digest"), layer.get("size"), layer.get("mediaType")
        if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71 \
                or any(c not in "0123456789abcdef" for c in digest[7:]):
            raise SourceError(f"{where}: bad layer digest {digest!r}")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_FILE_SIZE:
            raise SourceError(f"{where}: bad layer size {size!r}")
        name = "config.json" if media == "config" else MEDIA.get(str(media), f"layer-{digest[7:19]}")
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            stem, dot, ext = name.partition(".")
            name = f"{stem}-{seen[name]}{dot}{ext}"
        out.append((name, digest[7:], size))
    return out


def _file_opener(path: Path) -> Callable[[], RangeSource]:
    return lambda: FileRangeSource(path)


def _http_opener(url: str, timeout: float) -> Callable[[], RangeSource]:
    return lambda: HttpRangeSource(url, timeout=timeout)


def _model_name(spec: OllamaSpec) -> str:
    return f"{spec.name.removeprefix('library/')}:{spec.tag}"


def local_plan(spec: OllamaSpec, root: Path) -> Plan | None:
    mpath = root / "manifests" / "registry.ollama.ai" / spec.name / spec.tag
    if not mpath.is_file():
        return None
    try:
        doc = json.loads(mpath.read_bytes()[:MAX_MANIFEST])
    except (OSError, ValueError) as exc:
        raise SourceError(f"{mpath}: unreadable Ollama manifest ({exc})") from None
    files = []
    for name, sha, size in _layers(doc, str(mpath)):
        blob = root / "blobs" / f"sha256-{sha}"
        if not blob.is_file() or blob.is_symlink():
            raise SourceError(f"{mpath}: blob {blob.name} is missing from the Ollama store")
        files.append(RemoteFile(path=name, size=size, sha256=sha, local_path=blob,
                                open=_file_opener(blob)))
    return Plan(name=_model_name(spec), source=format_spec(spec), files=files, link_local=True)


def registry_plan(spec: OllamaSpec, settings: SourceSettings) -> Plan:
    base = settings.ollama_registry.rstrip("/")
    url = f"{base}/v2/{spec.name}/manifests/{spec.tag}"
    conn, resp, _ = request("GET", url, {"Accept": ACCEPT}, settings.timeout)
    try:
        body = resp.read(MAX_MANIFEST + 1)
    finally:
        conn.close()
    if resp.status == 404:
        raise SourceError(f"ollama:{spec.name}:{spec.tag}: not found on {base}")
    if resp.status != 200:
        raise SourceError(f"GET {url}: HTTP {resp.status} {resp.reason}")
    if len(body) > MAX_MANIFEST:
        raise SourceError(f"GET {url}: manifest over {MAX_MANIFEST} bytes")
    try:
        doc = json.loads(body)
    except ValueError:
        raise SourceError(f"GET {url}: manifest is not JSON") from None
    files = []
    for name, sha, size in _layers(doc, url):
        blob_url = f"{base}/v2/{spec.name}/blobs/sha256:{sha}"
        files.append(RemoteFile(
            path=name, size=size, sha256=sha,
            open=_http_opener(blob_url, settings.timeout)))
    return Plan(name=_model_name(spec), source=format_spec(spec), files=files)


def ollama_plan(spec: OllamaSpec, settings: SourceSettings) -> Plan:
    if settings.ollama_dir is not None:
        plan = local_plan(spec, settings.ollama_dir)
        if plan is not None:
            return plan
    return registry_plan(spec, settings)
