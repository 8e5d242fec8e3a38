"""Manifest encoding and validation: golden vectors, hostile manifests refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from swarmd.models.manifest import (
    CHUNK_SIZE,
    MAX_MANIFEST_BYTES,
    ManifestError,
    check_path,
    decode,
    encode_canonical,
    from_json,
)

VECTORS = json.loads(
    (Path(__file__).resolve().parents[2] / "protocol/vectors/models/manifest.json").read_text())


def test_golden_manifest_encoding_and_digest() -> None:
    for case in VECTORS["manifests"]:
        m = from_json(case["manifest"])
        assert m.encode().decode() == case["canonical"]
        assert m.digest == case["digest"]
        assert m.digest == "sha256:" + hashlib.sha256(case["canonical"].encode()).hexdigest()
        # Any JSON spelling of the same manifest decodes to the same digest.
        assert decode(json.dumps(case["manifest"], indent=3).encode()).digest == case["digest"]


def test_chunking_vector() -> None:
    c = VECTORS["chunking"]
    assert c["chunk_size"] == CHUNK_SIZE == 16 * 1024 * 1024
    data = b"swarmd" * 1000
    assert len(data) == c["size"] and [hashlib.sha256(data).hexdigest()] == c["chunks"]


@pytest.mark.parametrize("case", VECTORS["hostile"], ids=lambda c: c["why"])
def test_hostile_manifests_refused(case: dict) -> None:
    with pytest.raises(ManifestError) as err:
        from_json(case["manifest"])
    assert str(err.value) == case["error"]
    with pytest.raises(ManifestError):
        decode(encode_canonical(case["manifest"]))


def test_undecodable_and_oversize_bytes() -> None:
    for data in (b"\xff\xfe", b"{not json", b"[]", b"null"):
        with pytest.raises(ManifestError):
            decode(data)
    with pytest.raises(ManifestError, match="over the"):
        decode(b" " * (MAX_MANIFEST_BYTES + 1))


def test_check_path() -> None:
    assert check_path("a/b.gguf") == "a/b.gguf"
    assert check_path(".gitattributes") == ".gitattributes"
    for bad in ("", "/x", "..", "a/..", "./a", "a\\b", "C:x", "a\x00b", "x" * 300, None, 3):
        with pytest.raises(ManifestError):
            check_path(bad)
