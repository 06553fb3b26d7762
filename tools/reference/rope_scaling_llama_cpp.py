"""llama.cpp's own logits on the RoPE-scaled tiny models, as GGUF files written by
`yuanli quantize --type f32`: does llama.cpp read our GGUF RoPE metadata (and the rope_freqs
tensor) as we do? Prints, per variant, the largest |llama.cpp − transformers float64| over the
96 positions (64 of them past the original context of 32) and the first 64 logits of each.

Run (after `cargo build --release -p yuanli`):
  bench/.venv/bin/python tools/reference/rope_scaling_llama_cpp.py      (llama-cpp-python 0.3.36)
"""
import json, os, shutil, subprocess, tempfile
import numpy as np
from llama_cpp import Llama, GGML_TYPE_F32

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
data = os.path.join(root, "crates", "models", "testdata")
yuanli = os.path.join(root, "target", "release", "yuanli")

for variant in ["default", "linear", "yarn", "llama3"]:
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "hf")
        os.makedirs(src)
        shutil.copy(os.path.join(data, "rope_scaling", f"{variant}_v4", "config.json"), src)
        shutil.copy(os.path.join(data, "rope_scaling", "weights.safetensors"), os.path.join(src, "model.safetensors"))
        for f in ["tokenizer.json", "tokenizer_config.json"]:
            shutil.copy(os.path.join(data, "tiny_hf", "llama", f), src)
        gguf = os.path.join(tmp, "m.gguf")
        subprocess.run([yuanli, "quantize", "--in", src, "--type", "f32", "--out", gguf], check=True, capture_output=True)
        ref = json.load(open(os.path.join(data, "rope_scaling", f"{variant}_v4", "reference.json")))
        ids, want = ref["input_ids"], np.array(ref["logits"])
        llm = Llama(model_path=gguf, n_ctx=128, n_batch=128, n_threads=2, logits_all=True, verbose=False,
                    type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids), : want.shape[1]], dtype=np.float64)
        worst = np.abs(got - want).max()
        past = np.abs(got - want)[ref["original_context"]:].max()
        print(f"{variant:8s} llama.cpp vs transformers float64: largest |Δ| {worst:.2e} (past the original context {past:.2e})")
