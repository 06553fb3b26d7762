"""llama.cpp on the quantized SmolLM2 file itself (Q4_1 weights, 8-bit activations in its
matmuls): the perplexity the fast quantized path is compared with.

Adds "perplexity_q4_1" to crates/models/testdata/smollm2/reference.json: the method of
llama_reference.py step 7 (tempest_gut.txt, ctx 512, 16 chunks, second halves scored, no BOS),
run by llama.cpp on models/SmolLM2-135M-Instruct.Q4_1.gguf with its default F16 KV cache and
with an F32 one.

Run after llama_reference.py:  bench/.venv/bin/python tools/reference/llama_quant_reference.py
"""
import json, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_reference as ref  # noqa: E402

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
out_path = os.path.join(root, "crates", "models", "testdata", "smollm2", "reference.json")
q41 = os.path.join(root, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
data = json.load(open(out_path))
result = {}
for name, kv_f16 in (("f16_kv_cache", True), ("f32_kv_cache", False)):
    llm = ref.load_llama(q41, 512, kv_f16=kv_f16)
    p = ref.perplexity(llm)
    result[name] = {k: p[k] for k in ("ppl", "total_nll", "count", "n_chunks", "chunk_nll")}
    print(name, p["ppl"])
data["perplexity_q4_1"] = dict(model=os.path.basename(q41), text=data["perplexity"]["text"], ctx=512, **result)
with open(out_path, "w") as f:
    f.write(ref.compact_json(data) + "\n")
