"""One table of quantization types: size, perplexity and decode speed, yuanli beside llama.cpp.

For each GGUF file given (for lesson 8: SmolLM2-135M-Instruct in F32, Q8_0, Q5_1, Q5_0, Q4_1,
Q4_0, Q4_K_M, Q5_K_M — see `bash bench/run_quant_table.sh`, which makes them), in this order:

- bits per weight: all tensor bytes x 8 / all tensor elements (norms and embeddings included,
  as llama.cpp's own "BPW" counts them), read with the `gguf` package;
- perplexity on data/shakespeare/tempest_gut.txt, ctx 512, `--chunks` chunks (default 16):
  `yuanli perplexity --json` (the fast path: quantized kernels, f16 KV cache) and llama.cpp on
  the same file with tools/reference/llama_reference.py's method (F32 KV cache), and their
  relative difference; and ours again with `--llama-cpp-activations` (activations rounded as
  llama.cpp rounds them before each product: 8-bit blocks) and its difference;
- decode tokens/s with `--threads` threads (default 2): `yuanli bench generate --json` and
  llama.cpp's bench/generate.py child (prefill 128 tokens, decode 64), alternated for
  `--rounds` rounds, medians (`--rounds 0`: perplexity only).

Every figure names the SIMD level of each side. Run it with nothing else heavy on the machine.

Run: bench/.venv/bin/python bench/quant_table.py models/SmolLM2-135M-Instruct.*.gguf
"""
import argparse, json, os, statistics, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
from generate import run_json, simd_of  # noqa: E402


def bits_per_weight(path):
    from gguf import GGUFReader
    r = GGUFReader(path)
    nbytes = sum(int(t.n_bytes) for t in r.tensors)
    nelem = sum(int(t.n_elements) for t in r.tensors)
    types = {}
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return 8.0 * nbytes / nelem, types


def llama_ppl_child(model, chunks):
    import llama_reference as ref
    import llama_cpp
    ref.PPL_MAX_CHUNKS = chunks
    llm = ref.load_llama(model, ref.PPL_CTX)
    out = ref.perplexity(llm)
    print(json.dumps({"perplexity": out["ppl"], "chunks": out["n_chunks"],
                      "simd": simd_of(llama_cpp.llama_print_system_info().decode())}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--yuanli", default=os.path.join(ROOT, "target", "release", "yuanli"))
    ap.add_argument("--ppl-child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.ppl_child:
        return llama_ppl_child(a.models[0], a.chunks)
    text = os.path.join("data", "shakespeare", "tempest_gut.txt")
    gen = [os.path.join(HERE, "generate.py")]
    rows = []
    for model in a.models:
        bpw, types = bits_per_weight(model)
        ppl = [a.yuanli, "--threads", str(a.threads), "perplexity", "--model", model, "--file", text,
               "--chunks", str(a.chunks), "--json"]
        ours = run_json(ppl)
        ours_g = run_json(ppl + ["--llama-cpp-activations"])
        theirs = run_json([sys.executable, __file__, model, "--ppl-child", "--chunks", str(a.chunks)])
        dec_ours, dec_theirs, simd = [], [], "?"
        for _ in range(a.rounds):
            r = run_json([a.yuanli, "--threads", str(a.threads), "bench", "generate", "--model", model,
                          "--prompt-tokens", "128", "--gen-tokens", "64", "--json"])
            dec_ours.append(r["decode_tok_s"])
            simd = r.get("simd", "?")
            dec_theirs.append(run_json([sys.executable] + gen + [model, "--child", "--threads", str(a.threads),
                                        "--prompt-tokens", "128", "--gen-tokens", "64"])["decode_tok_s"])
        row = {"model": os.path.basename(model), "bits_per_weight": bpw, "tensor_types": types,
               "ppl_yuanli": ours["perplexity"], "ppl_llama_cpp": theirs["perplexity"],
               "ppl_diff": ours["perplexity"] / theirs["perplexity"] - 1.0,
               "ppl_yuanli_llama_cpp_acts": ours_g["perplexity"],
               "ppl_diff_llama_cpp_acts": ours_g["perplexity"] / theirs["perplexity"] - 1.0,
               "decode_yuanli": statistics.median(dec_ours) if dec_ours else float("nan"),
               "decode_llama_cpp": statistics.median(dec_theirs) if dec_theirs else float("nan"),
               "simd": simd, "llama_cpp_simd": theirs["simd"], "threads": a.threads, "chunks": a.chunks}
        rows.append(row)
        print(f"{row['model']}: {bpw:.2f} bits/weight {types}; perplexity {row['ppl_yuanli']:.3f} vs llama.cpp "
              f"{row['ppl_llama_cpp']:.3f} ({100 * row['ppl_diff']:+.2f}%; with llama.cpp's activation rounding "
              f"{row['ppl_yuanli_llama_cpp_acts']:.3f}, {100 * row['ppl_diff_llama_cpp_acts']:+.2f}%); decode {row['decode_yuanli']:.1f} vs "
              f"{row['decode_llama_cpp']:.1f} tok/s (x{row['decode_yuanli'] / row['decode_llama_cpp']:.2f}; "
              f"yuanli {simd}, llama.cpp {theirs['simd']}, {a.threads} threads, {a.rounds} rounds)", flush=True)
    print("\n| type | bits/weight | perplexity (yuanli / llama.cpp) | with llama.cpp's activation rounding | "
          "decode tok/s (yuanli / llama.cpp) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['bits_per_weight']:.2f} | {r['ppl_yuanli']:.3f} / {r['ppl_llama_cpp']:.3f} "
              f"({100 * r['ppl_diff']:+.2f}%) | {r['ppl_yuanli_llama_cpp_acts']:.3f} "
              f"({100 * r['ppl_diff_llama_cpp_acts']:+.2f}%) | {r['decode_yuanli']:.1f} / {r['decode_llama_cpp']:.1f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
