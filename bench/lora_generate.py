"""Generation speed with a LoRA adapter applied unmerged by the engine (`yuanli generate
--lora`), against the same base without it, for one or more yuanli builds, interleaved.

    python3 bench/lora_generate.py MODEL ADAPTER [--yuanli BIN ...] [--rounds 5]

Each round runs, for every build, the base alone and the base with the adapter: a prompt of
the first 520 characters of data/shakespeare/tempest_gut.txt, 64 greedy tokens, 2 threads. Prints the median prefill and decode tokens/s of each, and the
adapter's cost as the ratio with / without. (llama.cpp applies LoRA from GGUF adapters only;
this project writes PEFT's format, so the reference here is the same engine without the
adapter: the ceiling the unmerged update is measured against.)
"""
import argparse
import json
import os
import statistics
import subprocess

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def run(binary, model, adapter, prompt, threads):
    cmd = [binary, "--threads", str(threads), "generate", "--model", model, "--prompt", prompt,
           "--max-new-tokens", "64", "--json"]
    if adapter:
        cmd += ["--lora", adapter]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    v = json.loads(out.strip().splitlines()[-1])
    return v["prefill_tok_s"], v["decode_tok_s"], len(v["token_ids"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("adapter")
    ap.add_argument("--yuanli", action="append", help="a yuanli binary (repeat to compare builds)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    builds = a.yuanli or [os.path.join(ROOT, "target", "release", "yuanli")]
    text = open(os.path.join(ROOT, "data", "shakespeare", "tempest_gut.txt"), encoding="utf-8").read()
    prompt = text[:520]
    res = {(b, l): [] for b in builds for l in (False, True)}
    for r in range(a.rounds):
        for b in builds:
            for lora in (False, True):
                res[(b, lora)].append(run(b, a.model, a.adapter if lora else None, prompt, a.threads))
    print(f"{a.model}, adapter {a.adapter}, {a.threads} threads, {a.rounds} rounds (medians)")
    for b in builds:
        base, with_ = res[(b, False)], res[(b, True)]
        med = lambda rows, i: statistics.median(x[i] for x in rows)
        ratio_p = statistics.median(w[0] / o[0] for w, o in zip(with_, base))
        ratio_d = statistics.median(w[1] / o[1] for w, o in zip(with_, base))
        print(f"{b}: prefill tok/s base {med(base, 0):.1f}, with adapter {med(with_, 0):.1f} ({ratio_p:.2f}×); "
              f"decode base {med(base, 1):.1f}, with adapter {med(with_, 1):.1f} ({ratio_d:.2f}×)")


if __name__ == "__main__":
    main()
