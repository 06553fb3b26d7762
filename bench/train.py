"""Side-by-side GPT training speed: yuanli vs PyTorch eager, same model, batch, threads.

The PyTorch model is bench/torch_gpt.py (nanoGPT layout: pre-LayerNorm, fused QKV, GELU-tanh
MLP, tied head, padded vocab, F.scaled_dot_product_attention).
One step = forward, backward, global-norm clipping at 1.0, AdamW. Median step time after
two warm-up steps; ratio = yuanli tokens/s / torch tokens/s (≥ 1 means yuanli is faster).
Usage: bench/.venv/bin/python bench/train.py [--threads 2] [--steps 10]
"""
import argparse
import json
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
    return {"step_ms": s * 1e3, "tokens_per_sec": B * T / s, "peak_rss_mb": rss}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--binary", default="target/release/yuanli")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--presets", default="baby,char-6x384,gpt2-124m")
    args = ap.parse_args()
    print(f"GPT training step (forward, backward, clip, AdamW), fp32, {args.threads} threads; ratio = yuanli / torch tokens/s")
    print(f"{'preset':<11} {'yuanli tok/s':>13} {'torch tok/s':>12} {'ratio':>6} {'yuanli MB':>10} {'torch MB':>9}")
    rows = []
    for name in args.presets.split(","):
        out = subprocess.run([args.binary, "--threads", str(args.threads), "bench", "train", "--preset", name, "--steps", str(args.steps), "--json"],
                             check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        ours = json.loads(out)
        # Each torch run in a fresh process so peak memory is per preset.
        code = f"import json,sys; sys.path.insert(0,'bench'); import train; print(json.dumps(train.torch_bench({name!r}, {args.steps}, {args.threads})))"
        theirs = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        ratio = ours["tokens_per_sec"] / theirs["tokens_per_sec"]
        print(f"{name:<11} {ours['tokens_per_sec']:>13.0f} {theirs['tokens_per_sec']:>12.0f} {ratio:>6.2f} {ours['peak_rss_mb']:>10.0f} {theirs['peak_rss_mb']:>9.0f}")
        rows.append({"preset": name, "yuanli": ours, "torch": theirs, "ratio": ratio})
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
