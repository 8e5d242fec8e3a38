"""Pulls from local paths: names, eviction under max_disk, free space, pickles, symlinks,
restart, inventory."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from swarmd.models.inventory import holders, inventory, parse_inventory
from swarmd.models.puller import Puller, PullError
from swarmd.models.sources.base import SourceSettings
from swarmd.models.store import FREE_MARGIN, ModelStore, NoSpaceError, StoreError
from swarmd.testing.tiny_gguf import write_tiny_gguf

MB = 1024 * 1024


def safetensors(path: Path, n: int = 1000) -> Path:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4 * n))
    return path


def model_dir(root: Path, name: str, size: int, seed: int) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"],
                                               "max_position_embeddings": 2048,
                                               "torch_dtype": "bfloat16"}))
    safetensors(d / "model.safetensors", n=size // 4)
    with open(d / "model.safetensors", "r+b") as f:
        f.seek(100)
        f.write(os.urandom(64) + bytes([seed]))
    return d


def puller(store: ModelStore, **kw: object) -> Puller:
    return Puller(store, SourceSettings(**kw))  # type: ignore[arg-type]


def test_pull_local_gguf_reads_its_metadata(tmp_path: Path) -> None:
    g = write_tiny_gguf(tmp_path / "tiny.gguf", n_ctx=512)
    store = ModelStore(tmp_path / "store")
    events: list[dict] = []
    m = puller(store).pull(str(g), progress=events.append)
    assert m.manifest.name == "tiny" and m.manifest.format == "gguf"
    assert m.manifest.architecture == "llama" and m.manifest.context_length == 512
    assert m.manifest.parameters and m.manifest.parameters > 1000
    assert m.main_file.read_bytes() == g.read_bytes()
    assert events[0]["status"] == "resolving" and events[-1] == {
        "status": "success", "name": "tiny", "digest": m.digest, "size": g.stat().st_size,
        "path": str(m.main_file)}
    # A restarted node sees the same store; a second pull by name fetches nothing.
    again = ModelStore(tmp_path / "store")
    assert [x.digest for x in again.list()] == [m.digest]
    assert puller(again).pull("tiny").digest == m.digest


def test_pull_safetensors_dir_and_name(tmp_path: Path) -> None:
    d = model_dir(tmp_path, "llama-mini", 40_000, 1)
    store = ModelStore(tmp_path / "store")
    m = puller(store).pull(str(d), name="mini:1")
    assert m.manifest.name == "mini:1" and m.manifest.format == "safetensors"
    assert m.manifest.architecture == "LlamaForCausalLM" and m.manifest.context_length == 2048
    assert m.manifest.parameters == 10_000 and m.manifest.quantization == "bfloat16"
    assert sorted(f.path for f in m.manifest.files) == ["config.json", "model.safetensors"]
    assert (m.path / "config.json").read_bytes() == (d / "config.json").read_bytes()
    assert store.get("mini:1").digest == m.digest


def test_eviction_lru_under_max_disk(tmp_path: Path) -> None:
    used: set[str] = set()
    store = ModelStore(tmp_path / "store", max_disk=int(2.5 * MB), in_use=lambda: used)
    p = puller(store)
    p.pull(str(model_dir(tmp_path, "a", MB, 1)))
    b = p.pull(str(model_dir(tmp_path, "b", MB, 2)))
    store.touch("a")  # b is now the least recently used
    p.pull(str(model_dir(tmp_path, "c", MB, 3)))
    assert {m.manifest.name for m in store.list()} == {"a", "c"}
    weights = {f.path: f.sha256 for f in b.manifest.files}
    assert not store.has_blob(weights["model.safetensors"])  # b's own blob is gone
    assert store.has_blob(weights["config.json"])  # the config a and c share is kept
    used.update({"a", "c"})  # engines use both: nothing may go
    with pytest.raises(NoSpaceError, match=r"needs 1\.0 MiB .* every remaining model is in use"):
        p.pull(str(model_dir(tmp_path, "d", MB, 4)))
    assert {m.manifest.name for m in store.list()} == {"a", "c"}
    assert store.usage() <= 2.5 * MB
    with pytest.raises(StoreError, match="in use"):
        store.remove("a")


def test_free_space_checked_before_writing(tmp_path: Path) -> None:
    d = model_dir(tmp_path, "big", 2 * MB, 1)
    store = ModelStore(tmp_path / "store", free_space=lambda p: FREE_MARGIN + MB)
    with pytest.raises(NoSpaceError) as err:
        puller(store).pull(str(d))
    assert "needs 2.0 MiB" in str(err.value) and "free on the file system" in str(err.value)
    assert list((tmp_path / "store" / "partial").iterdir()) == []
    assert list((tmp_path / "store" / "blobs" / "sha256").iterdir()) == []


def test_pickle_weights_refused_unless_allowed(tmp_path: Path) -> None:
    d = tmp_path / "pt"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    store = ModelStore(tmp_path / "store")
    with pytest.raises(PullError, match="pickle"):
        puller(store).pull(str(d))
    assert list((tmp_path / "store" / "blobs" / "sha256").iterdir()) == []
    m = puller(store, allow_pickle=True).pull(str(d))
    assert "pytorch_model.bin" in [f.path for f in m.manifest.files]


def test_pickle_in_disguise_refused(tmp_path: Path) -> None:
    d = tmp_path / "disguise"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(PullError, match="not a safetensors file"):
        puller(ModelStore(tmp_path / "s1")).pull(str(d))
    e = tmp_path / "weights"
    e.mkdir()
    (e / "weights").write_bytes(b"\x80\x04\x95" + bytes(100))
    with pytest.raises(PullError, match="is a pickle"):
        puller(ModelStore(tmp_path / "s2")).pull(str(e))


def test_symlink_out_of_the_model_dir_refused(tmp_path: Path) -> None:
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    d = model_dir(tmp_path, "m", 1000, 1)
    (d / "tokenizer.json").symlink_to(secret)
    store = ModelStore(tmp_path / "store")
    with pytest.raises(PullError, match="symlink out of"):
        puller(store).pull(str(d))
    assert list((tmp_path / "store" / "blobs" / "sha256").iterdir()) == []


def test_gguf_that_does_not_parse_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(2000))
    store = ModelStore(tmp_path / "store")
    with pytest.raises(PullError, match="GGUF header does not parse"):
        puller(store).pull(str(bad))
    assert store.list() == [] and list((tmp_path / "store" / "blobs" / "sha256").iterdir()) == []


def test_bad_specs_and_unknown_names(tmp_path: Path) -> None:
    p = puller(ModelStore(tmp_path / "store"))
    with pytest.raises(PullError, match="unknown source scheme"):
        p.pull("s3://bucket/x.gguf")
    with pytest.raises(PullError, match="no model 'nothing:here'"):
        p.pull("nothing:here")
    with pytest.raises(PullError, match="no such file"):
        p.pull("/does/not/exist.gguf")
    down = Puller(ModelStore(tmp_path / "s2"), SourceSettings(
        hf_endpoint="http://127.0.0.1:9", ollama_registry="http://127.0.0.1:9", timeout=3))
    with pytest.raises(PullError, match="hf:a/b: cannot reach http://127.0.0.1:9"):
        down.pull("hf:a/b")
    with pytest.raises(PullError, match="Connection refused"):
        down.pull("ollama:x")
    with pytest.raises(PullError, match="HEAD http://127.0.0.1:9/x.gguf"):
        down.pull("http://127.0.0.1:9/x.gguf")
    with pytest.raises(PullError, match="not a usable model name"):
        p.pull(str(write_tiny_gguf(tmp_path / "t.gguf")), name="bad name")


def test_shared_blob_survives_removing_one_model(tmp_path: Path) -> None:
    g = write_tiny_gguf(tmp_path / "t.gguf")
    store = ModelStore(tmp_path / "store")
    p = puller(store)
    a, b = p.pull(str(g), name="one"), p.pull(str(g), name="two")
    assert a.digest != b.digest and a.manifest.files == b.manifest.files
    store.remove("one")
    assert store.has_blob(b.manifest.files[0].sha256)
    assert b.main_file.read_bytes() == g.read_bytes()
    store.remove("two")
    assert list((tmp_path / "store" / "blobs" / "sha256").iterdir()) == []


def test_inventory_is_compact_and_parsed_defensively(tmp_path: Path) -> None:
    g = write_tiny_gguf(tmp_path / "t.gguf")
    store = ModelStore(tmp_path / "store")
    m = puller(store).pull(str(g), name="tiny:1")
    inv = inventory(store.list())
    assert inv == [[m.digest.removeprefix("sha256:"), "tiny:1"]]
    assert parse_inventory(inv) == {m.digest: ("tiny:1",)}
    assert parse_inventory([["zz", "x"], "junk", [m.digest[7:], "../bad", 3], None]) == {}
    assert parse_inventory({"not": "a list"}) == {}
    assert holders({"n1": inv, "n2": [], "n3": "junk"}, "tiny:1") == ["n1"]
    assert holders({"n1": inv}, m.digest) == ["n1"]
