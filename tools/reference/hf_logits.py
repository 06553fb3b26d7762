"""Logits of a Hugging Face model directory in transformers (float64), for the export checks
of crates/models/tests/peft.rs: a model `yuanli export --model … [--lora …]` wrote must load in
`AutoModelForCausalLM` and give the logits ours gives.

Run: bench/.venv-hf/bin/python tools/reference/hf_logits.py DIR 3,17,42
Prints one JSON object: {"transformers": version, "logits": [[…] per position]}.
(The venv: python3 -m venv bench/.venv-hf && bench/.venv-hf/bin/pip install
 -r bench/requirements.txt -r bench/requirements-peft.txt; .ci/run makes it.)
"""
import json
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM

directory, ids = sys.argv[1], [int(t) for t in sys.argv[2].split(",")]
model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float64).eval()
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0]
print(json.dumps({"transformers": transformers.__version__, "logits": logits.tolist()}))
