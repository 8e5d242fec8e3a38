"""Pull by name from another node's store, chunk-verified: the hook the data plane plugs into.

The "peers" here read the other store in-process (no network: the data plane's own tests
cover the wire); what is tested is the store side -- a plan from a peer's manifest, every
chunk checked on arrival, a peer serving a bad chunk dropped and counted, the chunk
fetched from another, the result byte-identical with the same manifest digest.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest

from swarmd.models.manifest import FileEntry, decode
from swarmd.models.puller import Puller
from swarmd.models.sources.base import Plan, SourceSettings
from swarmd.models.sources.peers import manifest_plan
from swarmd.models.store import ModelStore, StoreError


class StorePeer:
    """Serves blobs from another store by digest, shaped like DataPlaneClient.fetch_range."""

    def __init__(self, store: ModelStore, label: str, corrupt: bool = False) -> None:
        self.store, self.label, self.corrupt = store, label, corrupt
        self.sha = ""
        self.calls = 0

    def write_range(self, dest: Path, offset: int, length: int, expect: str) -> None:
        self.calls += 1
        data = self.store.read_range(self.sha, offset, length)  # complete blobs only
        if self.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 1])
        fd = os.open(dest, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
        if hashlib.sha256(data).hexdigest() != expect:
            raise OSError("bad_digest: chunk does not match the manifest")


def test_pull_by_name_from_peers(tmp_path: Path) -> None:
    model = tmp_path / "src" / "m"
    model.mkdir(parents=True)
    hdr = b'{"w":{"dtype":"U8","shape":[40000000],"data_offsets":[0,40000000]}}'
    with open(model / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(hdr)) + hdr + os.urandom(40_000_000))
    (model / "config.json").write_text('{"architectures": ["X"]}')
    node1 = ModelStore(tmp_path / "node1")
    held = Puller(node1, SourceSettings()).pull(str(model), name="m:1")
    for p in model.iterdir():
        p.unlink()  # the original source is gone: only node 1 has it
    bad, good = StorePeer(node1, "peer-bad", corrupt=True), StorePeer(node1, "peer-good")
    wire_manifest = decode(node1.root.joinpath(
        "manifests", held.digest[7:] + ".json").read_bytes())  # as a peer would receive it

    serving = [bad]

    def sources(f: FileEntry) -> list[StorePeer]:
        for s in serving:
            s.sha = f.sha256
        return list(serving)

    def peer_plan(name: str) -> Plan | None:
        return manifest_plan(wire_manifest, sources) if name in wire_manifest.names else None

    node2 = ModelStore(tmp_path / "node2")
    puller = Puller(node2, SourceSettings(), peer_plan=peer_plan)
    with pytest.raises(StoreError, match="bad_digest"):  # only a bad peer: nothing stored
        puller.pull("m:1")
    assert node2.list() == [] and puller.bad_sources["peer-bad"] == 1
    assert all(not node2.has_blob(f.sha256) for f in held.manifest.files)
    serving.append(good)
    got = puller.pull("m:1")
    assert got.digest == held.digest  # the same manifest on both nodes
    for f in got.manifest.files:
        assert node2.blob_file(f.sha256).read_bytes() == node1.blob_file(f.sha256).read_bytes()
    assert good.calls >= 3  # 40 MB: three 16 MiB chunks, the config.json, each verified
    assert puller.bad_sources["peer-bad"] == bad.calls >= 2  # every bad chunk caught, counted
    assert node2.get("m:1").manifest.files == held.manifest.files
