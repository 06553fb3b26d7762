"""What llama.cpp's own quantizer makes of two tiny LLaMA models, for `yuanli quantize`'s presets.

Writes crates/cli/testdata/quantize_presets.json: for each model ("tied": 8 layers, the head
tied to token_embd; "untied": 2 layers with an output.weight) and each preset (q4_k_m, q5_k_m,
q6_k, q8_0, q4_0), every tensor's name, the type llama.cpp chose and the SHA-256 of its bytes.
crates/cli/tests/quantize.rs builds the same F32 models, runs `yuanli quantize --type PRESET`
and must get the same types and the same bytes.

The models: hidden 256, 4 heads of 64, 2 KV heads, feed-forward 320, vocabulary 320. So the
attention and gate/up matrices have rows of whole 256-weight blocks (K-quants) and ffn_down's
320-weight rows do not (the fallback types). Values come from a xorshift32 stream both sides
can compute exactly: value k of tensor t (in the order listed by `tensors()`) is
`((s >> 8) / 2^24 - 0.5) * 2^-(row % 5)` with s the stream seeded with 0x9E3779B9 ^ (t + 1), and
every 97th value times 8 (outliers); the first 256 values of every even-numbered tensor are 0
(all-zero blocks). All of it is exact in f32.

llama.cpp: llama-cpp-python's `llama_model_quantize` (no importance matrix, default params).

Run: bench/.venv/bin/python tools/reference/quantize_reference.py   (needs llama-cpp-python,
gguf, numpy; bench/requirements-llama.txt)
"""
import hashlib
import json
import os
import sys
import tempfile

import numpy as np
import gguf
import llama_cpp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates", "cli", "testdata", "quantize_presets.json")
PRESETS = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
           "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K, "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
           "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0}
D, HEADS, KV, FF, VOCAB = 256, 4, 2, 320, 320


def tensors(n_layer, tied):
    """(name, shape as [rows, cols] or [n]) in the order the values are generated."""
    out = [("token_embd.weight", [VOCAB, D]), ("output_norm.weight", [D])]
    if not tied:
        out.append(("output.weight", [VOCAB, D]))
    hd = D // HEADS
    for i in range(n_layer):
        out += [(f"blk.{i}.attn_norm.weight", [D]), (f"blk.{i}.attn_q.weight", [D, D]),
                (f"blk.{i}.attn_k.weight", [KV * hd, D]), (f"blk.{i}.attn_v.weight", [KV * hd, D]),
                (f"blk.{i}.attn_output.weight", [D, D]), (f"blk.{i}.ffn_norm.weight", [D]),
                (f"blk.{i}.ffn_gate.weight", [FF, D]), (f"blk.{i}.ffn_up.weight", [FF, D]),
                (f"blk.{i}.ffn_down.weight", [D, FF])]
    return out


def values(t, shape):
    n = int(np.prod(shape))
    cols = shape[-1]
    s = 0x9E3779B9 ^ (t + 1)
    raw = np.empty(n, dtype=np.uint32)
    for k in range(n):
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        raw[k] = s
    x = ((raw >> 8).astype(np.float32) / np.float32(16777216.0) - np.float32(0.5))
    rows = np.arange(n) // cols
    x *= np.exp2(-(rows % 5)).astype(np.float32)
    x[np.arange(n) % 97 == 0] *= np.float32(8.0)
    if t % 2 == 0:
        x[:256] = 0.0
    return x.reshape(shape)


def write_model(path, n_layer, tied):
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_context_length(512)
    w.add_embedding_length(D)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(D // HEADS)
    w.add_vocab_size(VOCAB)
    w.add_file_type(0)
    for t, (name, shape) in enumerate(tensors(n_layer, tied)):
        w.add_tensor(name, values(t, shape) if len(shape) == 2 else np.ones(shape, dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


def main():
    result = {"llama_cpp_python": llama_cpp.__version__, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for model, n_layer, tied in (("tied", 8, True), ("untied", 2, False)):
            src = os.path.join(tmp, f"{model}.f32.gguf")
            write_model(src, n_layer, tied)
            result["models"][model] = {"n_layer": n_layer, "tied": tied, "presets": {}}
            for preset, ftype in PRESETS.items():
                dst = os.path.join(tmp, f"{model}.{preset}.gguf")
                params = llama_cpp.llama_model_quantize_default_params()
                params.ftype = ftype
                params.nthread = 2
                if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params) != 0:
                    sys.exit(f"llama_model_quantize failed: {model} {preset}")
                rows = []
                for t in gguf.GGUFReader(dst).tensors:
                    data = np.ascontiguousarray(np.asarray(t.data)).view(np.uint8).tobytes()
                    rows.append({"name": t.name, "type": t.tensor_type.name, "sha256": hashlib.sha256(data).hexdigest()})
                result["models"][model]["presets"][preset] = rows
                print(model, preset, {r["type"] for r in rows})
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
