"""PEFT's side of the LoRA interop checks (crates/models/tests/peft.rs), on the tiny LLaMA in
crates/models/testdata/tiny_hf/llama (transformers, float64):

- crates/models/testdata/peft/from_peft/: an adapter PEFT makes itself — rank 4, α 8, rsLoRA,
  every linear map (`all-linear`), `init_lora_weights=False` so that B is random and non-zero
  — saved with `save_pretrained`, and `reference.json`: the adapted model's float64 logits on
  fixed ids. Ours, loading that adapter, must match.
- crates/models/testdata/peft/from_yuanli/: the adapter yuanli wrote
  (`YUANLI_REGEN=1 cargo test -p yuanli-models --test peft` writes it), loaded here with
  `PeftModel.from_pretrained`; `reference.json` holds PEFT's logits for it.

Run: bench/.venv/bin/python tools/reference/peft_reference.py   (needs torch, transformers,
peft==0.21.0: bench/requirements-peft.txt)
"""
import json
import os

import torch
import peft
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TD = os.path.join(ROOT, "crates", "models", "testdata")
BASE = os.path.join(TD, "tiny_hf", "llama")
IDS = [3, 17, 42, 99, 150, 7, 250, 11, 64, 5]


def base():
    return AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float64).eval()


def dump(model, out_dir, note):
    with torch.no_grad():
        logits = model(torch.tensor([IDS])).logits[0]
    ref = {"note": note, "peft": peft.__version__, "input_ids": IDS, "logits": logits.tolist()}
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(ref, f)
        f.write("\n")


def main():
    torch.manual_seed(20261205)
    out = os.path.join(TD, "peft", "from_peft")
    os.makedirs(out, exist_ok=True)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, use_rslora=True, target_modules="all-linear",
                     init_lora_weights=False, task_type="CAUSAL_LM")
    m = get_peft_model(base(), cfg).eval()
    m.save_pretrained(out, safe_serialization=True)
    # keep the files small and exact in f32: the saved tensors are float64 from a float64 model
    from safetensors.torch import load_file, save_file
    st = os.path.join(out, "adapter_model.safetensors")
    save_file({k: v.to(torch.float32) for k, v in load_file(st).items()}, st)
    # no local paths in the committed files, and no generated model card
    cj = os.path.join(out, "adapter_config.json")
    c = json.load(open(cj))
    c["base_model_name_or_path"] = "tiny_hf/llama"
    c["target_modules"] = sorted(c["target_modules"])  # a set in PEFT: its order varies by process
    json.dump(c, open(cj, "w"), indent=2)
    if os.path.exists(os.path.join(out, "README.md")):
        os.remove(os.path.join(out, "README.md"))
    m = PeftModel.from_pretrained(base(), out).eval()  # the logits of the file as saved
    dump(m, out, "PEFT-made adapter (rsLoRA, all-linear, random B) on tiny_hf/llama, float64")
    print("wrote", out)

    mine = os.path.join(TD, "peft", "from_yuanli")
    if os.path.exists(os.path.join(mine, "adapter_model.safetensors")):
        m = PeftModel.from_pretrained(base(), mine).eval()
        dump(m, mine, "yuanli-made adapter loaded by PEFT on tiny_hf/llama, float64")
        print("wrote", mine)
    else:
        print("no", mine, "yet: YUANLI_REGEN=1 cargo test -p yuanli-models --test peft, then run this again")


if __name__ == "__main__":
    main()
