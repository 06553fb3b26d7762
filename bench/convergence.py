"""The "baby" convergence recipe in yuanli and in PyTorch on the same data, in one run.

Recipe: GPT 4 layers × 128 wide, 4 heads, context 64, batch 12, AdamW (β 0.9/0.99, weight
decay 0.1, matrices only), lr 1e-3 with 100 warm-up steps then cosine to 1e-4 over 2000
iterations, dropout 0, character-level over the 42 Shakespeare texts, 90/10 split, clip 1.0.
Both read the same train.bin/val.bin made by `yuanli prepare`; each draws its own random
windows. Prints both final validation losses (mean over 200 batches) and their difference
(the target is |Δ| ≤ 0.03).

    bench/.venv/bin/python bench/convergence.py [--shakespeare ../shared/data/shakespeare] [--iters 2000]
"""
import argparse
import glob
import json
import math
import os
import subprocess
import time

import numpy as np
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_gpt import adamw, make_gpt  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--shakespeare", default="../shared/data/shakespeare")
ap.add_argument("--iters", type=int, default=2000)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--out", default="runs/convergence")
args = ap.parse_args()

files = sorted(glob.glob(os.path.join(args.shakespeare, "*_gut.txt")))
data = os.path.join(args.out, "data")
subprocess.run(["target/release/yuanli", "prepare", "--tokenizer", "char", "--input", *files, "--out", data], check=True)
meta = json.load(open(os.path.join(data, "meta.json")))
V = meta["vocab_size"]
cfg = f"""data_dir = "{data}"
out_dir = "{args.out}/yuanli"
batch_size = 12
max_iters = {args.iters}
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 100
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0
eval_interval = {args.iters}
eval_iters = 200
seed = 1337
[model]
vocab_size = 0
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
"""
cfg_path = os.path.join(args.out, "baby.toml")
open(cfg_path, "w").write(cfg)
t0 = time.time()
subprocess.run(["target/release/yuanli", "--threads", str(args.threads), "train", "--config", cfg_path], check=True, capture_output=True)
ours_s = time.time() - t0
ours = [json.loads(l) for l in open(os.path.join(args.out, "yuanli", "metrics.jsonl")) if "val_loss" in l][-1]["val_loss"]

# PyTorch, same recipe.
torch.set_num_threads(args.threads)
torch.manual_seed(1337)
train = np.fromfile(os.path.join(data, "train.bin"), dtype=np.uint16).astype(np.int64)
val = np.fromfile(os.path.join(data, "val.bin"), dtype=np.uint16).astype(np.int64)
C, H, L, T, B = 128, 4, 4, 64, 12


def batch(arr, g):
    ix = torch.randint(len(arr) - T - 1, (B,), generator=g)
    x = torch.stack([torch.from_numpy(arr[i:i + T]) for i in ix])
    y = torch.stack([torch.from_numpy(arr[i + 1:i + 1 + T]) for i in ix])
    return x, y


model = make_gpt(C, H, L, T, V)
opt = adamw(model, 1e-3, (0.9, 0.99), 0.1)
g = torch.Generator().manual_seed(1337)


def lr_at(step):
    if step < 100:
        return 1e-3 * (step + 1) / 100
    r = (step - 100) / (args.iters - 100)
    return 1e-4 + 0.5 * (1 + math.cos(math.pi * min(r, 1.0))) * (1e-3 - 1e-4)


t0 = time.time()
for step in range(args.iters):
    for grp in opt.param_groups:
        grp["lr"] = lr_at(step)
    x, y = batch(train, g)
    loss = model(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
theirs_s = time.time() - t0
with torch.no_grad():
    ge = torch.Generator().manual_seed(0)
    theirs = float(np.mean([model(*batch(val, ge)).item() for _ in range(200)]))
print(f"baby recipe, {args.iters} iterations, {args.threads} threads")
print(f"  yuanli  val loss {ours:.4f}  ({ours_s:.0f} s including evaluation)")
print(f"  PyTorch val loss {theirs:.4f}  ({theirs_s:.0f} s)")
print(f"  difference {ours - theirs:+.4f} (target |Δ| ≤ 0.03)")
