"""Reference logits for RoPE scaling (crates/models/tests/rope_scaling.rs, crates/cli/tests/quantize.rs).

One tiny random LLaMA (2 layers, hidden 64, 4 query heads and 2 KV heads of 16 channels,
RoPE base 100 so that the pairs spread across YaRN's and LLaMA 3's ramps within a context of
32) is run by transformers in float64 on 96 tokens — three times the original context — under
each RoPE variant (default, linear, dynamic NTK, YaRN, LLaMA 3), with its config written in
both forms:

- `v4`: transformers 4's `rope_theta` + `rope_scaling` (this script under transformers 4.x);
- `v5`: transformers 5's `rope_parameters` (the same script under transformers 5.x).

Writes crates/models/testdata/rope_scaling/weights.safetensors (once; the same weights for every
variant — RoPE has no parameters) and <variant>_<form>/{config.json, reference.json}. The test
copies tiny_hf/llama's tokenizer beside them.

With LLAMA_CPP_DIR set (see tools/reference/llama_cpp_convert.py), the v4 run also converts each
variant with llama.cpp's own converter and records what it writes about RoPE — the
`llama.rope.*` keys and the `rope_freqs.weight` tensor — in llama_cpp_gguf.json, which
`yuanli quantize` must write too (crates/cli/tests/quantize.rs).

Run (both, from the repository root):
  bench/.venv-hf/bin/python tools/reference/rope_scaling_reference.py
  PYTHONPATH=<transformers 5 installed with --target> bench/.venv-hf/bin/python tools/reference/rope_scaling_reference.py
(transformers 5.25.0 needs huggingface-hub 2.x, tokenizers 0.23, kernels, typer, httpx2,
httpcore2, truststore beside it: `pip install --no-deps --target DIR` each.)
"""
import json, os, shutil
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
out = os.path.join(root, "crates", "models", "testdata", "rope_scaling")
os.makedirs(out, exist_ok=True)
form = "v5" if int(transformers.__version__.split(".")[0]) >= 5 else "v4"
torch.set_num_threads(2)

ORIGINAL = 32          # the "pretraining" context
LENGTH = 3 * ORIGINAL  # tokens run: positions far past it
BASE = 100.0
COLUMNS = 64
common = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, tie_word_embeddings=False)

# (name, max_position_embeddings, scaling parameters without the base); the original context
# is 32 in each
variants = [
    ("default", 4 * ORIGINAL, None),
    # a linear scaling's config states the stretched context (as Gemma 3's does)
    ("linear", 4 * ORIGINAL, {"rope_type": "linear", "factor": 4.0}),
    # dynamic NTK's states the original one (transformers reads it as such)
    ("dynamic", ORIGINAL, {"rope_type": "dynamic", "factor": 4.0}),
    ("yarn", 4 * ORIGINAL, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL}),
    ("llama3", 4 * ORIGINAL, {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": ORIGINAL}),
]


def config(max_pos, scaling):
    if form == "v4":
        return LlamaConfig(max_position_embeddings=max_pos, rope_theta=BASE, rope_scaling=scaling, **common)
    params = {"rope_type": "default", **(scaling or {}), "rope_theta": BASE}
    return LlamaConfig(max_position_embeddings=max_pos, rope_parameters=params, **common)


weights = os.path.join(out, "weights.safetensors")
torch.manual_seed(0)
ids = torch.randint(0, common["vocab_size"], (1, LENGTH), generator=torch.Generator().manual_seed(1))
if not os.path.exists(weights):
    model = LlamaForCausalLM(config(ORIGINAL, None))
    # O(1) attention logits, so that where RoPE puts a key matters: weights ~ N(0, 1/fan_in),
    # embeddings ~ N(0, 1), norm gains away from 1.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
            elif "embed" in n:
                p.normal_(0, 1)
            else:
                p.normal_(0, p.shape[1] ** -0.5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights, metadata={"format": "pt"})
state = load_file(weights)

default_logits = None
for name, max_pos, scaling in variants:
    model = LlamaForCausalLM(config(max_pos, scaling))
    model.load_state_dict(state, strict=True)
    model = model.double().eval()
    with torch.no_grad():
        logits = model(ids).logits[0]
    if default_logits is None:
        default_logits = logits
    spread = (logits - default_logits)[ORIGINAL:].abs().max().item()
    d = os.path.join(out, f"{name}_{form}")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    model.config.architectures = ["LlamaForCausalLM"]
    model.config.save_pretrained(d)
    # every position, the first COLUMNS logits (a map of the 64-wide final hidden state: enough
    # to see every position's state), 9 significant digits — the files stay small
    rows = [[float(f"{x:.9g}") for x in row[:COLUMNS]] for row in logits.tolist()]
    json.dump({"input_ids": ids[0].tolist(), "logits": rows, "columns": COLUMNS, "original_context": ORIGINAL,
               "max_abs_diff_from_default_past_original": spread,
               "generated_by": f"tools/reference/rope_scaling_reference.py (transformers {transformers.__version__}, float64)"},
              open(os.path.join(d, "reference.json"), "w"))
    if os.path.exists(os.path.join(d, "generation_config.json")):
        os.remove(os.path.join(d, "generation_config.json"))
    print(f"{name}_{form}: logits {tuple(logits.shape)}, past the original context max |Δ| from default RoPE = {spread:.3f}")

if form == "v4" and os.environ.get("LLAMA_CPP_DIR"):
    import subprocess, sys, tempfile
    sys.path.insert(0, os.path.join(os.environ["LLAMA_CPP_DIR"], "gguf-py"))
    import gguf
    tiny = os.path.join(root, "crates", "models", "testdata", "tiny_hf", "llama")
    written = {}
    for name, _, _ in variants:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(out, f"{name}_v4")
            shutil.copy(os.path.join(src, "config.json"), tmp)
            shutil.copy(weights, os.path.join(tmp, "model.safetensors"))
            for f in ["tokenizer.json", "tokenizer_config.json"]:
                shutil.copy(os.path.join(tiny, f), tmp)
            path = os.path.join(tmp, "out.gguf")
            subprocess.run([sys.executable, os.path.join(root, "tools", "reference", "llama_cpp_convert.py"), tmp,
                            "--outtype", "f32", "--outfile", path], check=True, capture_output=True)
            r = gguf.GGUFReader(path)
            keys = {k: r.fields[k].contents() for k in r.fields if ".rope." in k or k.endswith("context_length")}
            freqs = [t.data.tolist() for t in r.tensors if t.name == "rope_freqs.weight"]
            written[name] = {"metadata": keys, "rope_freqs": freqs[0] if freqs else None}
            print(f"llama.cpp's converter, {name}: {keys}, rope_freqs {written[name]['rope_freqs']}")
    json.dump({"written_by": "llama.cpp convert_hf_to_gguf.py (llama-cpp-python 0.3.36's vendored copy) via "
               "tools/reference/llama_cpp_convert.py", "variants": written},
              open(os.path.join(out, "llama_cpp_gguf.json"), "w"), indent=1)
