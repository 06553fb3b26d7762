"""Side-by-side GPT training speed: yuanli vs PyTorch eager, same model, batch, threads.

The PyTorch model is bench/torch_gpt.py (nanoGPT layout: pre-LayerNorm, fused QKV, GELU-tanh
MLP, tied head, padded vocab, F.scaled_dot_product_attention).
One step = forward, backward, global-norm clipping at 1.0, AdamW. Median step time after
two warm-up steps; ratio = yuanli tokens/s / torch tokens/s (≥ 1 means yuanli is faster).
Usage: bench/.venv/bin/python bench/train.py [--threads 2] [--steps 10] [--level avx2]

--level avx2 measures the AVX2 path on a machine that has AVX-512: yuanli's kernels capped with
YUANLI_SIMD=avx2 and a binary built without gemm's AVX-512 kernels
(`cargo build --release -p yuanli --no-default-features --target-dir target/avx2`, the default
--binary at this level); PyTorch capped with ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2
and MKL_ENABLE_INSTRUCTIONS=AVX2. Each line names the levels that ran.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

PRESETS = {
    "baby": dict(n_layer=4, n_head=4, n_embd=128, block=64, batch=12, vocab=65),
    "char-6x384": dict(n_layer=6, n_head=6, n_embd=384, block=256, batch=8, vocab=65),
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, block=64, batch=4, vocab=50257),
}


def torch_bench(name, steps, threads):
    import torch
    from torch_gpt import adamw, make_gpt
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    p = PRESETS[name]
    C, H, L, T, B, V = p["n_embd"], p["n_head"], p["n_layer"], p["block"], p["batch"], p["vocab"]

    model = make_gpt(C, H, L, T, V)
    opt = adamw(model, 3e-4, (0.9, 0.95), 0.1)
    data = torch.randint(0, V, (B, T + 1))
    x, y = data[:, :-1], data[:, 1:]

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()
    step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    s = statistics.median(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"step_ms": s * 1e3, "tokens_per_sec": B * T / s, "peak_rss_mb": rss,
            "simd": torch.backends.cpu.get_cpu_capability().lower()}



def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--binary", default=None, help="yuanli binary (default: target/release/yuanli; "
                    "target/avx2/release/yuanli with --level avx2)")
    ap.add_argument("--level", choices=["native", "avx2"], default="native")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--presets", default="baby,char-6x384,gpt2-124m")
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from engine import AVX2_BINARY, AVX2_BUILD, AVX2_ENV
    env = dict(os.environ)
    if args.level == "avx2":
        env.update(AVX2_ENV)
    binary = args.binary or (AVX2_BINARY if args.level == "avx2" else "target/release/yuanli")
    print(f"GPT training step (forward, backward, clip, AdamW), fp32, {args.threads} threads; ratio = yuanli / torch tokens/s")
    print(f"{'preset':<11} {'yuanli tok/s':>13} {'torch tok/s':>12} {'ratio':>6} {'yuanli MB':>10} {'torch MB':>9}")
    rows = []
    for name in args.presets.split(","):
        out = subprocess.run([binary, "--threads", str(args.threads), "bench", "train", "--preset", name, "--steps", str(args.steps), "--json"],
                             check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1]
        ours = json.loads(out)
        if args.level == "avx2" and ours.get("gemm") == "avx512":
            sys.exit(f"{binary} runs gemm's AVX-512 kernels: build the capped binary with `{AVX2_BUILD}`")
        # Each torch run in a fresh process so peak memory is per preset.
        code = f"import json,sys; sys.path.insert(0,'bench'); import train; print(json.dumps(train.torch_bench({name!r}, {args.steps}, {args.threads})))"
        theirs = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1])
        ratio = ours["tokens_per_sec"] / theirs["tokens_per_sec"]
        print(f"{name:<11} {ours['tokens_per_sec']:>13.0f} {theirs['tokens_per_sec']:>12.0f} {ratio:>6.2f} {ours['peak_rss_mb']:>10.0f} {theirs['peak_rss_mb']:>9.0f}"
              f"   yuanli {ours.get('simd', '?')} + gemm {ours.get('gemm', '?')}, torch {theirs['simd']}")
        rows.append({"preset": name, "yuanli": ours, "torch": theirs, "ratio": ratio})
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
