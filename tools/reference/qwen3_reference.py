"""A tiny random Qwen3 (QK-norm: an RMSNorm over each query and key head before RoPE; no q/k/v
biases; explicit head_dim) in Hugging Face layout, for the loader tests
(crates/models/tests/hf_llama.rs, crates/cli/tests/quantize.rs).

Writes crates/models/testdata/tiny_hf/qwen3/: model.safetensors, config.json, the byte-level
BPE tokenizer of tiny_hf/llama (copied), and reference.json with transformers' float64 logits
for a fixed token sequence and the tokenizer's ids for a text.

Run: bench/.venv-hf/bin/python tools/reference/qwen3_reference.py   (torch, transformers, tokenizers)
"""
import json, os, shutil
import torch
import transformers
from tokenizers import Tokenizer
from transformers import Qwen3Config, Qwen3ForCausalLM

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
tiny = os.path.join(root, "crates", "models", "testdata", "tiny_hf")
out = os.path.join(tiny, "qwen3")
torch.manual_seed(3)
torch.set_num_threads(2)

tok = Tokenizer.from_file(os.path.join(tiny, "llama", "tokenizer.json"))
sample_text = "Full fathom five thy father lies; 1234 <|im_end|>"
ids_in = [5, 17, 42, 100, 7, 250, 3, 3, 64, 128, 199, 11]

cfg = Qwen3Config(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                  rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True)
model = Qwen3ForCausalLM(cfg).float()
with torch.no_grad():
    for n, p in model.named_parameters():
        if "norm" in n:
            p.uniform_(0.5, 1.5)  # away from 1, so that a skipped norm shows
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
model.save_pretrained(out, safe_serialization=True)
for f in ["tokenizer.json", "tokenizer_config.json"]:
    shutil.copy(os.path.join(tiny, "llama", f), out)
if os.path.exists(os.path.join(out, "generation_config.json")):
    os.remove(os.path.join(out, "generation_config.json"))
m64 = model.double().eval()
with torch.no_grad():
    logits = m64(torch.tensor([ids_in])).logits[0]
json.dump({"input_ids": ids_in, "logits": logits.tolist(), "text": sample_text, "text_ids": tok.encode(sample_text).ids,
           "generated_by": f"tools/reference/qwen3_reference.py (transformers {transformers.__version__}, float64)"},
          open(os.path.join(out, "reference.json"), "w"))
print(sorted(os.listdir(out)))
