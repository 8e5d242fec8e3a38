"""Write a tiny llama-architecture GGUF model with random weights.

Theory of operation: llama.cpp loads any GGUF file whose metadata and tensor
shapes match an architecture it knows, whatever the weights hold. This module
uses the ``gguf`` package's :class:`gguf.GGUFWriter` to write such a file for
the ``llama`` architecture: 2 blocks, n_embd 64, 4 heads, n_ff 128, a
SentencePiece-style ("llama") vocabulary of ``<unk>``, ``<s>``, ``</s>``, the
256 byte-fallback tokens ``<0x00>``..``<0xFF>`` and a few words (with
the prefixes SPM merges go through), plus a small
chat template so ``/v1/chat/completions`` formats messages from the model's
own metadata. Weights are float32 noise drawn from ``numpy.random`` with a
fixed seed, so the same seed gives byte-identical files.

The text such a model produces is noise; the engine, tokenizer, KV cache,
sampler and HTTP API that serve it are real, which is what tests need. Files
are generated in test setup (about 0.5 MB); none is committed.

CLI: ``python -m swarmd.testing.tiny_gguf OUT.gguf [--seed N] [--n-ctx N] [--embedding]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

ARCH = "llama"
N_LAYER = 2
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 4
N_FF = 128
RMS_EPS = 1e-5
ROPE_BASE = 10000.0

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
# SentencePiece marks a leading space with U+2581.
WORDS = ["▁the", "▁a", "▁hello", "▁world", "▁swarm", "▁node", "▁cat", "▁dog", "."]

# Minimal chat template: one line per message, then the assistant cue.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# gguf TokenType values (the enum is re-stated to keep this module's
# top-level imports free of optional packages).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE = 1, 2, 3, 6


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of the tiny vocabulary, in id order."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TOKEN_BYTE] * 256
    # SPM merges adjacent symbols only when the merged text is a token, so
    # every prefix of a word must be in the vocabulary for the word to form.
    pieces: list[str] = []
    for word in WORDS:
        for end in range(min(2, len(word)), len(word) + 1):
            if word[:end] not in pieces:
                pieces.append(word[:end])
    tokens += pieces
    types += [TOKEN_NORMAL] * len(pieces)
    # Higher score = preferred merge in SPM: longer pieces win.
    scores = [0.0] * (3 + 256) + [float(len(piece)) for piece in pieces]
    return tokens, scores, types


def write_tiny_gguf(
    path: Path, *, seed: int = 0, n_ctx: int = 512, embedding: bool = False
) -> Path:
    """Write the tiny model to ``path`` and return ``path``.

    ``n_ctx`` is the training context length written to the metadata (the
    largest context the server should be asked for). ``embedding`` adds
    ``llama.pooling_type = mean`` so an embedding server returns one pooled
    vector per input rather than one per token.
    """
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens, scores, types = vocabulary()
    n_vocab = len(tokens)
    head_dim = N_EMBD // N_HEAD
    n_embd_kv = head_dim * N_HEAD_KV

    def weight(*shape: int) -> NDArray[np.float32]:
        # numpy shape is the reverse of ggml's ne: (rows=out, cols=in).
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def ones(n: int) -> NDArray[np.float32]:
        return np.ones((n,), dtype=np.float32)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), ARCH)
    try:
        writer.add_name("swarmd-tiny-test")
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_context_length(n_ctx)
        writer.add_embedding_length(N_EMBD)
        writer.add_block_count(N_LAYER)
        writer.add_feed_forward_length(N_FF)
        writer.add_head_count(N_HEAD)
        writer.add_head_count_kv(N_HEAD_KV)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(ROPE_BASE)
        writer.add_layer_norm_rms_eps(RMS_EPS)
        writer.add_vocab_size(n_vocab)
        if embedding:
            writer.add_pooling_type(gguf.PoolingType.MEAN)

        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_unk_token_id(UNK_ID)
        writer.add_bos_token_id(BOS_ID)
        writer.add_eos_token_id(EOS_ID)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_chat_template(CHAT_TEMPLATE)

        writer.add_tensor("token_embd.weight", weight(n_vocab, N_EMBD))
        writer.add_tensor("output_norm.weight", ones(N_EMBD))
        writer.add_tensor("output.weight", weight(n_vocab, N_EMBD))
        for i in range(N_LAYER):
            p = f"blk.{i}."
            writer.add_tensor(p + "attn_norm.weight", ones(N_EMBD))
            writer.add_tensor(p + "attn_q.weight", weight(N_EMBD, N_EMBD))
            writer.add_tensor(p + "attn_k.weight", weight(n_embd_kv, N_EMBD))
            writer.add_tensor(p + "attn_v.weight", weight(n_embd_kv, N_EMBD))
            writer.add_tensor(p + "attn_output.weight", weight(N_EMBD, N_EMBD))
            writer.add_tensor(p + "ffn_norm.weight", ones(N_EMBD))
            writer.add_tensor(p + "ffn_gate.weight", weight(N_FF, N_EMBD))
            writer.add_tensor(p + "ffn_up.weight", weight(N_FF, N_EMBD))
            writer.add_tensor(p + "ffn_down.weight", weight(N_EMBD, N_FF))

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a tiny random llama GGUF model.")
    parser.add_argument("out", type=Path, help="output .gguf path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-ctx", type=int, default=512)
    parser.add_argument(
        "--embedding", action="store_true", help="add mean pooling for an embedding server"
    )
    args = parser.parse_args(argv)
    out = write_tiny_gguf(args.out, seed=args.seed, n_ctx=args.n_ctx, embedding=args.embedding)
    print(f"{out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
