"""Stand-in engine executables: ``vllm``, ``text-generation-launcher``, ``mlx_lm.server``, ``ollama``.

Not engines: tiny standard-library HTTP servers that swarmd's tests put on
``PATH`` (:func:`install`) so that the real supervisor launches them from the
real command lines, health-waits on them and routes to them.  Each one

- refuses a flag its real tool does not have (the sets below are those swarmd
  uses, checked against the tools' sources: vLLM ``vllm/engine/arg_utils.py``,
  TGI ``launcher/src/main.rs``, mlx-lm ``mlx_lm/server.py``, Ollama ``serve``
  with ``OLLAMA_HOST``) and a value TGI itself refuses (input tokens not
  below total tokens), exiting 2 like argparse/clap;
- records its argv and GPU/Ollama environment in ``$FAKE_ENGINE_RECORD/<name>-<pid>.json``
  and, for Ollama, every native call in ``<name>-<pid>.events`` (JSON lines);
- answers ``GET /health``, ``GET /v1/models`` (the model under the id the real
  server lists: ``--served-model-name``, the resolved ``--model`` path, the
  ``--model-id``, Ollama's ``NAME:latest``) and ``POST /v1/chat/completions``
  (plain or streamed), 404 for a model it does not serve, so a missing rename
  shows;
- TGI: ``GET /info``; Ollama: ``GET /``, ``/api/version``, ``/api/tags``,
  ``/api/ps``, ``HEAD``/``POST /api/blobs/sha256:D`` (the body's digest is
  checked), ``POST /api/create`` (its files must be uploaded blobs), ``POST
  /api/generate`` without a prompt (load, or unload with ``keep_alive`` 0),
  ``POST /api/show``.

:func:`install_rocm_smi` adds a ``rocm-smi`` that reports one AMD GPU, so a
node's hardware probe (swarmd/hw/amd.py) sees a GPU and the fit places
vLLM/TGI there.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

NAMES = ("vllm", "text-generation-launcher", "mlx_lm.server", "ollama")

#: Flags each stand-in accepts (with a value), as the real tool spells them.
FLAGS: dict[str, frozenset[str]] = {
    "vllm": frozenset({"--host", "--port", "--served-model-name", "--max-model-len",
                       "--max-num-seqs", "--gpu-memory-utilization"}),
    "text-generation-launcher": frozenset({"--model-id", "--hostname", "--port",
                                           "--max-total-tokens", "--max-input-tokens",
                                           "--max-concurrent-requests",
                                           "--cuda-memory-fraction"}),
    "mlx_lm.server": frozenset({"--model", "--host", "--port"}),
    "ollama": frozenset(),
}
ENV_KEYS = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "OLLAMA_HOST", "OLLAMA_NUM_PARALLEL")


def install(bin_dir: Path, names: Sequence[str] = NAMES) -> Path:
    """Write the stand-ins as executables into ``bin_dir`` (put it on PATH)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        exe = bin_dir / name
        exe.write_text(f"#!{sys.executable}\nimport runpy\n"
                       f"runpy.run_path({str(Path(__file__).resolve())!r}, "
                       f"init_globals={{'STAND_IN': {name!r}}}, run_name='__main__')\n")
        exe.chmod(0o755)
    return bin_dir


def install_rocm_smi(bin_dir: Path, *, total: int = 24 << 30, used: int = 1 << 30) -> Path:
    """A ``rocm-smi`` reporting one AMD GPU (card0) with ``total`` bytes of VRAM."""
    doc = {"card0": {"Card series": "Fake Radeon", "VRAM Total Memory (B)": str(total),
                     "VRAM Total Used Memory (B)": str(used), "GPU use (%)": "0",
                     "Temperature (Sensor edge) (C)": "40.0",
                     "Average Graphics Package Power (W)": "20.0"}}
    exe = bin_dir / "rocm-smi"
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe.write_text(f"#!{sys.executable}\nprint({json.dumps(json.dumps(doc))})\n")
    exe.chmod(0o755)
    return exe


def records(record_dir: Path, name: str) -> list[dict[str, Any]]:
    """The recorded starts of stand-in ``name`` (argv, env), oldest first."""
    out = [json.loads(p.read_text()) for p in record_dir.glob(f"{name}-*.json")]
    return sorted(out, key=lambda r: float(r["t"]))


def events(record_dir: Path, name: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in sorted(record_dir.glob(f"{name}-*.events")):
        out += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return out


# ----------------------------------------------------------------------- the servers


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def _parse(name: str, argv: list[str]) -> tuple[list[str], dict[str, str]]:
    pos: list[str] = []
    opts: dict[str, str] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            if a not in FLAGS[name]:
                _fail(f"unexpected argument '{a}' found")
            if i + 1 >= len(argv):
                _fail(f"a value is required for '{a}'")
            opts[a] = argv[i + 1]
            i += 2
        else:
            pos.append(a)
            i += 1
    return pos, opts


class _State:
    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.served: set[str] = set()
        self.info: dict[str, Any] = {}
        self.blobs: set[str] = set()
        self.created: dict[str, dict[str, Any]] = {}
        self.loaded: dict[str, float] = {}
        self.events: Path | None = None
        pos, opts = _parse(name, argv)
        if name == "vllm":
            if pos[:1] != ["serve"] or len(pos) != 2:
                _fail("usage: vllm serve MODEL [options]")
            self.host, self.port = opts.get("--host", "0.0.0.0"), int(opts.get("--port", "8000"))
            self.served = {opts.get("--served-model-name", pos[1])}
        elif name == "text-generation-launcher":
            total = int(opts.get("--max-total-tokens", "4096"))
            inp = int(opts.get("--max-input-tokens", "4095"))
            if inp >= total:
                _fail(f"`max_input_tokens`({inp}) must be < `max_total_tokens`({total})")
            self.host, self.port = opts.get("--hostname", "0.0.0.0"), int(opts.get("--port",
                                                                                  "3000"))
            mid = opts.get("--model-id", "bigscience/bloom-560m")
            self.served = {mid}
            self.info = {"model_id": mid, "max_total_tokens": total, "max_input_tokens": inp,
                         "max_concurrent_requests": int(opts.get("--max-concurrent-requests",
                                                                 "128")),
                         "router": "text-generation-router", "version": "fake"}
        elif name == "mlx_lm.server":
            self.host, self.port = opts.get("--host", "127.0.0.1"), int(opts.get("--port",
                                                                                "8080"))
            model = opts.get("--model")
            self.served = {str(Path(model).resolve())} if model else set()
        elif name == "ollama":
            if pos != ["serve"]:
                _fail("usage: ollama serve")
            host = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").rpartition("://")[2]
            h, _, p = host.rpartition(":")
            self.host, self.port = h or "127.0.0.1", int(p or 11434)
        else:
            _fail(f"unknown stand-in {name!r}")

    def log(self, **event: Any) -> None:
        if self.events is not None:
            with self.events.open("a") as f:
                f.write(json.dumps(event) + "\n")

    def model_ok(self, model: Any) -> bool:
        if self.name == "text-generation-launcher":
            return True  # TGI does not check the model field
        if self.name == "ollama":
            return model in self.created or f"{model}:latest" in self.created
        if self.name == "mlx_lm.server" and model == "default_model":
            return True
        return model in self.served


def _handler(st: _State) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:
            sys.stderr.write(f"{st.name}: {fmt % args}\n")

        def _send(self, status: int, doc: Any, ctype: str = "application/json") -> None:
            body = doc if isinstance(doc, bytes) else (
                doc.encode() if isinstance(doc, str) else json.dumps(doc).encode())
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                return self.rfile.read(n)
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().strip() or b"0", 16)
                    if not size:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return b""

        def _models(self) -> list[str]:
            return sorted(st.created) if st.name == "ollama" else sorted(st.served)

        def do_HEAD(self) -> None:  # noqa: N802
            if self.path.startswith("/api/blobs/"):
                d = self.path.rsplit("/", 1)[1]
                self._send(200 if d in st.blobs else 404, b"")
            else:
                self._send(200, b"")

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                self._send(200, {"status": "ok"} if st.name == "mlx_lm.server" else b"")
            elif self.path == "/v1/models":
                owner = {"vllm": "vllm", "ollama": "library"}.get(st.name)
                data = [{"id": m, "object": "model", **({"owned_by": owner} if owner else {})}
                        for m in self._models()]
                self._send(200, {"object": "list", "data": data})
            elif self.path == "/info" and st.info:
                self._send(200, st.info)
            elif st.name == "ollama" and self.path == "/":
                self._send(200, "Ollama is running", "text/plain")
            elif st.name == "ollama" and self.path == "/api/version":
                self._send(200, {"version": "0.12.0"})
            elif st.name == "ollama" and self.path in ("/api/tags", "/api/ps"):
                names = st.created if self.path == "/api/tags" else st.loaded
                self._send(200, {"models": [{"name": n, "model": n, "size": 1,
                                             "digest": "0" * 64, "details": {}}
                                            for n in sorted(names)]})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            raw = self._body()
            if st.name == "ollama" and self.path.startswith("/api/blobs/"):
                d = self.path.rsplit("/", 1)[1]
                ok = d == "sha256:" + hashlib.sha256(raw).hexdigest()
                st.log(call="blob", digest=d, size=len(raw), ok=ok)
                if ok:
                    st.blobs.add(d)
                self._send(201 if ok else 400, b"" if ok else {"error": "digest mismatch"})
                return
            try:
                doc = json.loads(raw or b"{}")
            except ValueError:
                self._send(400, {"error": "bad json"})
                return
            if st.name == "ollama" and self.path == "/api/create":
                st.log(call="create", doc=doc)
                files = doc.get("files") or {}
                if not files or any(d not in st.blobs for d in files.values()):
                    self._send(400, {"error": "files must be uploaded blobs"})
                    return
                name = str(doc.get("model"))
                st.created[name if ":" in name else name + ":latest"] = doc
                self._send(200, {"status": "success"})
            elif st.name == "ollama" and self.path == "/api/generate":
                st.log(call="generate", doc=doc)
                model = str(doc.get("model"))
                name = model if model in st.created else f"{model}:latest"
                if name not in st.created:
                    self._send(404, {"error": f"model '{model}' not found"})
                elif doc.get("keep_alive") == 0:
                    st.loaded.pop(name, None)
                    self._send(200, {"model": model, "done": True, "done_reason": "unload"})
                else:
                    st.loaded[name] = time.time()
                    self._send(200, {"model": model, "done": True, "done_reason": "load"})
            elif st.name == "ollama" and self.path == "/api/show":
                self._send(200, {"capabilities": ["completion"]})
            elif self.path == "/v1/chat/completions":
                self._chat(doc)
            else:
                self._send(404, {"error": "not found"})

        def _chat(self, doc: dict[str, Any]) -> None:
            model = doc.get("model")
            if not st.model_ok(model):
                self._send(404, {"error": {"message": f"model {model!r} not served here"}})
                return
            words = [f"fake-{st.name}", "answer", "to", str(len(doc.get("messages") or []))]
            if not doc.get("stream"):
                self._send(200, {"id": "c1", "object": "chat.completion", "model": model,
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant",
                                                          "content": " ".join(words)}}],
                                 "usage": {"prompt_tokens": 3, "completion_tokens": 4,
                                           "total_tokens": 7}})
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            for i, w in enumerate(words):
                chunk = {"id": "c1", "object": "chat.completion.chunk", "model": model,
                         "choices": [{"index": 0, "delta": {"content": (" " if i else "") + w},
                                      "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            end = {"id": "c1", "object": "chat.completion.chunk", "model": model,
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
            self.wfile.flush()
            self.close_connection = True

    return H


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv if argv is None else argv)
    name = Path(args[0]).name
    st = _State(name, args[1:])
    rec = os.environ.get("FAKE_ENGINE_RECORD")
    if rec:
        base = f"{name}-{os.getpid()}"
        (Path(rec) / f"{base}.json").write_text(json.dumps(
            {"t": time.time(), "argv": args, "pid": os.getpid(),
             "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ}}))
        st.events = Path(rec) / f"{base}.events"
    time.sleep(float(os.environ.get("FAKE_ENGINE_STARTUP", "0.3")))  # "loading"
    server = ThreadingHTTPServer((st.host, st.port), _handler(st))
    print(f"{name}: serving on {st.host}:{st.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main([globals().get("STAND_IN", sys.argv[0]), *sys.argv[1:]])
