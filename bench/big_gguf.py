"""Write a GGUF of a chosen size with random weights, to move through the store.

A valid ``llama``-architecture header and one F32 tensor of the asked size
(random, so nothing compresses or dedups it).  It is not a working model:
it is for transfer and memory benchmarks, e.g.::

    PYTHONPATH=. .venv/bin/python bench/big_gguf.py /tmp/big1g.gguf --mib 1000
    PYTHONPATH=.:plugins .venv/bin/python bench/peer_pull.py --model /tmp/big1g.gguf
"""

from __future__ import annotations

import argparse
from pathlib import Path


def write(path: Path, mib: int) -> Path:
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(512)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tensor("pad.weight",
                 np.random.default_rng(0).standard_normal(mib * 262_144, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", type=Path)
    ap.add_argument("--mib", type=int, default=1000, help="tensor size, MiB")
    a = ap.parse_args()
    print(write(a.path, a.mib))


if __name__ == "__main__":
    main()
