"""Side-by-side LoRA fine-tuning step: yuanli vs PyTorch + PEFT, same model, batch, rank,
targets, dropout and threads, fp32 on both sides.

The batch is the one `yuanli bench lora --dump` writes: GSM8K conversations rendered with
SmolLM2's chat template, laid end to end into B rows of T tokens, labels -100 outside the
assistant's turns (an SFT batch). Both sides start from the same weights (the GGUF file,
dequantized to f32; transformers reads it with `gguf_file=`) and report the same first loss.
One step = forward, masked cross-entropy, backward, gradient clipping at 1.0, AdamW on the
adapters. Median step time after two warm-up steps; rounds alternate yuanli and torch, each in
a fresh process so that peak memory (VmHWM / ru_maxrss) is per run. The ratio quoted is the
median of the rounds' ratios (each round's two runs are back to back, so a drift in the
machine's speed between rounds cancels). Also runs yuanli's QLoRA
step (the base kept in the file's Q4_1 blocks) for its memory.

Usage: bench/.venv-hf/bin/python bench/lora.py [--rounds 3] [--steps 5] [--batch 4] [--seq 256]
       [--rank 8] [--level avx2]
(bench/.venv-hf is the venv .ci/run makes with torch, transformers and PEFT; transformers reads
the GGUF file through the `gguf` package: pip install -r bench/requirements-gguf.txt into it.
--level avx2 needs the capped build: cargo build --release -p yuanli --no-default-features
--target-dir target/avx2.)
(--level avx2 caps both sides as bench/train.py does.)
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

MODEL = "models/SmolLM2-135M-Instruct.Q4_1.gguf"


def torch_side(batch_file, rank, alpha, dropout, steps, threads):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    b = json.load(open(batch_file))
    B, T = b["batch"], b["seq"]
    x = torch.tensor(b["input_ids"]).view(B, T)
    y = torch.tensor(b["labels"]).view(B, T)
    m = AutoModelForCausalLM.from_pretrained(os.path.dirname(MODEL), gguf_file=os.path.basename(MODEL),
                                             dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear",
                     task_type="CAUSAL_LM")
    m = get_peft_model(m, cfg)
    m.train()
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    def step():
        opt.zero_grad(set_to_none=True)
        # The labels are already the next tokens (HF's `labels=` would shift them once more), so
        # the loss is written out as transformers computes it: all logits, upcast, masked mean.
        logits = m(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.view(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    losses = [step(), step()]
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    s = statistics.median(times)
    return {"step_ms": s * 1e3, "tokens_per_sec": B * T / s, "first_loss": losses[0],
            "trainable": sum(p.numel() for p in params),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "simd": torch.backends.cpu.get_cpu_capability().lower()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=None)
    ap.add_argument("--level", choices=["native", "avx2"], default="native")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--torch-side", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_side:
        print(json.dumps(torch_side(args.torch_side, args.rank, args.alpha, args.dropout, args.steps, args.threads)))
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from engine import AVX2_BINARY, AVX2_BUILD, AVX2_ENV
    env = dict(os.environ)
    if args.level == "avx2":
        env.update(AVX2_ENV)
    binary = args.binary or (AVX2_BINARY if args.level == "avx2" else "target/release/yuanli")
    batch_file = os.path.join(tempfile.mkdtemp(), "batch.json")
    common = ["--threads", str(args.threads), "bench", "lora", "--model", MODEL, "--batch", str(args.batch),
              "--seq", str(args.seq), "--rank", str(args.rank), "--alpha", str(args.alpha), "--dropout",
              str(args.dropout), "--targets", "all-linear", "--steps", str(args.steps), "--json"]

    def ours(quantized):
        cmd = [binary] + common + ["--dump", batch_file] + (["--quantized-base"] if quantized else [])
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1])
        if args.level == "avx2" and r.get("gemm") == "avx512":
            sys.exit(f"{binary} runs gemm's AVX-512 kernels: build the capped binary with `{AVX2_BUILD}`")
        return r

    def theirs():
        cmd = [sys.executable, os.path.abspath(__file__), "--torch-side", batch_file, "--rank", str(args.rank),
               "--alpha", str(args.alpha), "--dropout", str(args.dropout), "--steps", str(args.steps),
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        return json.loads(out.strip().splitlines()[-1])

    print(f"LoRA step on SmolLM2-135M-Instruct (fp32 base, r {args.rank}, α {args.alpha:g}, dropout {args.dropout:g}, "
          f"all-linear), batch {args.batch}×{args.seq}, {args.threads} threads; ratio = yuanli / torch tokens/s")
    rows = []
    for i in range(args.rounds):
        y, t, q = ours(False), theirs(), ours(True)
        rows.append({"yuanli": y, "torch": t, "qlora": q})
        print(f"round {i + 1}: yuanli {y['tokens_per_sec']:.0f} tok/s {y['peak_rss_mb']:.0f} MB | torch+peft "
              f"{t['tokens_per_sec']:.0f} tok/s {t['peak_rss_mb']:.0f} MB | ratio {y['tokens_per_sec'] / t['tokens_per_sec']:.2f} "
              f"| QLoRA {q['tokens_per_sec']:.0f} tok/s {q['peak_rss_mb']:.0f} MB "
              f"| first loss {y['first_loss']:.5f} vs {t['first_loss']:.5f} "
              f"[yuanli {y['simd']} + gemm {y['gemm']}, torch {t['simd']}]")
    med = lambda side, k: statistics.median(r[side][k] for r in rows)
    yt, tt, qt = med("yuanli", "tokens_per_sec"), med("torch", "tokens_per_sec"), med("qlora", "tokens_per_sec")
    ym, tm, qm = med("yuanli", "peak_rss_mb"), med("torch", "peak_rss_mb"), med("qlora", "peak_rss_mb")
    # The machine's speed drifts between rounds (shared cores): each round's ratio compares two
    # runs made back to back, so their median is the figure to quote; the ratio of the medians
    # is printed beside it.
    paired = statistics.median(r["yuanli"]["tokens_per_sec"] / r["torch"]["tokens_per_sec"] for r in rows)
    print(f"median: yuanli {yt:.0f} tok/s vs torch+peft {tt:.0f} tok/s; ratio {paired:.2f}x (median of the rounds' "
          f"ratios; {yt / tt:.2f}x of the medians); peak memory {ym:.0f} vs {tm:.0f} MB = {ym / tm:.2f}x; "
          f"QLoRA {qt:.0f} tok/s, {qm:.0f} MB ({qm / ym:.2f}x yuanli LoRA)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
