"""Loads a `yuanli export --format hf` directory in Hugging Face transformers and checks that
greedy generation gives exactly the tokens `yuanli sample --temperature 0` gives.

    yuanli export --checkpoint runs/quickstart/checkpoint --out /tmp/hf
    bench/.venv/bin/python tools/reference/check_hf_export.py runs/quickstart/checkpoint /tmp/hf

(The logits and every gradient are compared with HF by crates/models/tests/hf_reference.rs,
from reference files this directory's gpt2_hf_reference.py writes.)
"""
import json
import subprocess
import sys

import torch
from transformers import GPT2LMHeadModel

ckpt, hf_dir = sys.argv[1], sys.argv[2]
prompt, n = "ROMEO:", 40
cfg = json.load(open(f"{ckpt}/config.json"))
meta = json.load(open(f"{cfg['data_dir']}/meta.json"))
ids = [meta["chars"].index(c) for c in prompt]
res = subprocess.run(["target/release/yuanli", "sample", "--checkpoint", ckpt, "--prompt", prompt, "--max-new-tokens", str(n),
                      "--temperature", "0", "--json"], check=True, capture_output=True, text=True)
ours = json.loads(res.stdout.strip().splitlines()[-1])["token_ids"]
model = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
x = torch.tensor([ids])
theirs = []
with torch.no_grad():
    for _ in range(n):
        nxt = int(torch.argmax(model(x).logits[0, -1, : meta["vocab_size"]]))
        theirs.append(nxt)
        x = torch.cat([x, torch.tensor([[nxt]])], 1)
print("yuanli:", ours)
print("HF    :", theirs)
print("identical" if ours == theirs else "DIFFERENT")
sys.exit(0 if ours == theirs else 1)
