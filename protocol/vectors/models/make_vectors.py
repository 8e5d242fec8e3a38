"""Regenerate protocol/vectors/models/*.json from the code (then review the diff).

    .venv/bin/python protocol/vectors/models/make_vectors.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from swarmd.models.manifest import CHUNK_SIZE, FileEntry, Manifest
from swarmd.models.spec import SpecError, format_spec, parse_spec

HERE = Path(__file__).parent


def main() -> None:
    data = b"swarmd" * 1000
    small = FileEntry("config.json", len(b"{}"), hashlib.sha256(b"{}").hexdigest(),
                      (hashlib.sha256(b"{}").hexdigest(),))
    big_size = CHUNK_SIZE + 6000
    m = Manifest(
        name="gemma3:270m", aliases=("gemma-3-270m",), source="hf:google/gemma-3-270m-GGUF:Q4_K_M",
        format="gguf", architecture="gemma3", parameters=268098176, quantization="Q4_K_M",
        context_length=32768,
        files=(FileEntry("gemma-3-270m-q4_k_m.gguf", big_size, "a" * 64, ("b" * 64, "c" * 64)),
               small))
    manifests = {"manifests": [{
        "manifest": m.to_json(), "canonical": m.encode().decode(), "digest": m.digest}],
        "chunking": {"chunk_size": CHUNK_SIZE, "data": "the bytes 'swarmd' repeated 1000 times",
                     "size": len(data), "chunks": [hashlib.sha256(data).hexdigest()]}}
    base = m.to_json()

    def bad_file(**kw: object) -> dict[str, object]:
        doc = json.loads(json.dumps(base))
        doc["files"][1].update(kw)
        return doc

    hostile = []
    for why, doc in [
        ("path traversal", bad_file(path="../../etc/passwd")),
        ("traversal inside", bad_file(path="a/../../b")),
        ("absolute path", bad_file(path="/etc/passwd")),
        ("backslash", bad_file(path="..\\evil")),
        ("empty component", bad_file(path="a//b")),
        ("control character", bad_file(path="a\nb")),
        ("wrong chunk count", bad_file(chunks=[])),
        ("malformed digest", bad_file(sha256="XYZ")),
        ("oversize file", bad_file(size=5 * 1024**4, chunks=[])),
        ("negative size", bad_file(size=-1)),
        ("duplicate path", bad_file(path="gemma-3-270m-q4_k_m.gguf")),
        ("file and directory", bad_file(path="gemma-3-270m-q4_k_m.gguf/x")),
        ("bad version", {**base, "version": 2}),
        ("bad chunk size", {**base, "chunk_size": 1024}),
        ("bad name", {**base, "name": "../x"}),
        ("unknown format", {**base, "format": "pickle"}),
        ("no files", {**base, "files": []}),
    ]:
        from swarmd.models.manifest import ManifestError, from_json

        try:
            from_json(doc)
        except ManifestError as exc:
            hostile.append({"why": why, "manifest": doc, "error": str(exc)})
        else:
            raise SystemExit(f"hostile manifest accepted: {why}")
    manifests["hostile"] = hostile
    (HERE / "manifest.json").write_text(json.dumps(manifests, indent=1) + "\n")
    specs = []
    for text in ["hf:google/gemma-3-270m-GGUF", "hf:google/gemma-3-270m-GGUF:Q4_K_M",
                 "hf:unsloth/Qwen3-8B-GGUF:*Q4_K_M*.gguf@v1.0", "hf:org/repo:sub/dir/f.gguf@main",
                 "ollama:gemma3", "ollama:gemma3:270m", "ollama:someone/model:q4",
                 "https://example.com/models/m.gguf", "http://10.0.0.1:8000/x/y.safetensors",
                 "/models/gemma.gguf", "./local/dir", "~/models/m.gguf", "gemma3:270m",
                 "  hf:a/b  "]:
        spec = parse_spec(text)
        specs.append({"text": text, "kind": type(spec).__name__, "fields": vars(spec),
                      "canonical": format_spec(spec)})
    bad = []
    for text in ["", "hf:", "hf:noslash", "hf:a/b:", "hf:a/../b", "hf:a/b@", "hf:a/b:../x",
                 "ollama:UPPER", "ollama:a:b:c", "ollama:", "s3://bucket/m.gguf", "https:///x",
                 "https://host/", "bad name!", "a\nb"]:
        try:
            parse_spec(text)
        except SpecError as exc:
            bad.append({"text": text, "error": str(exc)})
        else:
            raise SystemExit(f"{text!r} parsed")
    (HERE / "specs.json").write_text(json.dumps({"valid": specs, "invalid": bad}, indent=1) + "\n")


if __name__ == "__main__":
    main()
