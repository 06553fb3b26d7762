"""Reference outputs for yuanli's LLaMA-architecture path, from SmolLM2-135M-Instruct.

Writes crates/models/testdata/smollm2/reference.json, which the Rust tests compare against,
and (if missing) models/SmolLM2-135M-Instruct.F32.gguf.

What it does
------------
1. F32 GGUF. Reads models/SmolLM2-135M-Instruct.Q4_1.gguf with gguf.GGUFReader, dequantizes
   every tensor (Q4_1, Q8_0 token_embd; F32 norms copied) with gguf.quants.dequantize to
   float32, and writes models/SmolLM2-135M-Instruct.F32.gguf with gguf.GGUFWriter: all
   metadata key/values copied in their original order and with their original types
   (tokenizer arrays included), except general.file_type = 0 (ALL_F32); tensor names, order
   and shapes unchanged. Skipped if the file exists. Loaded once with llama.cpp to check it.
2. Prompts: plain English, plain Chinese, code, chat English, chat Chinese, chat with a custom
   system message. Chat prompts are rendered with jinja2 from the GGUF's own
   tokenizer.chat_template (messages=[...], add_generation_prompt=True; environment as
   transformers' apply_chat_template: sandboxed, trim_blocks, lstrip_blocks).
3. prompt_ids = llama.cpp tokenize(text, add_bos=False, special=True).
4. llamacpp_f32_greedy: llama.cpp on the F32 GGUF (n_ctx 1024, n_batch 512, 2 threads, no
   flash attention, logits_all, F32 KV cache: llama.cpp's default F16 KV cache alone moves
   the logits by 0.01-0.05 from float64, the F32 one leaves ~3e-5): eval(prompt_ids), then 32 x (argmax of the last logits row,
   eval([next])); no EOS stop.
5. hf_f64_greedy: transformers reading the ORIGINAL Q4_1 GGUF (dequantized), float64, eval
   mode: 32 greedy steps (plain argmax, KV cache, no EOS stop). Then a full float64 forward
   over seq = prompt_ids + hf_f64_greedy (teacher forcing); for every 4th position and the
   last prompt position, the logsumexp and max of the logits row, and the logits at 48 ids
   (the 32 highest, descending, ties to the lower id; then 16 other ids from
   numpy.random.default_rng([SEED, prompt_index, position])). Values are the full float64
   repr. Also the top-1 minus top-2 logit margin at each generated step for both engines,
   and the max |llama.cpp f32 logit - HF f64 logit| over all rows of seq (llama.cpp also
   teacher-forced over the HF sequence).
6. Tokenization of data/shakespeare/*.txt and data/tang_poems.jsonl: each file's bytes
   decoded as UTF-8 (no newline translation), whole text tokenized with llama.cpp
   (add_bos=False, special=False); n_tokens, sha256 of the ids as little-endian u32, the
   first 64 ids, and sha256 of each consecutive 4096-id chunk.
7. Perplexity, as llama.cpp's tools/perplexity/perplexity.cpp (perplexity(), no --ppl-stride)
   does it: tokens = common_tokenize(text, add_special=true, parse_special=false), which for
   this model (tokenizer.ggml.add_bos_token = false) is tokenize(add_bos=False,
   special=False); n_ctx = 512; n_chunks = min(len(tokens) // 512, 16); for each chunk c the
   KV cache is cleared and tokens[c*512:(c+1)*512] are decoded as one sequence starting at
   position 0. A BOS replaces the chunk's first token only when the vocab's add_bos is true,
   so here NO BOS is put at chunk start. Scoring window: first = n_ctx/2 = 256; logits rows
   j = 256..510 (n_ctx - 1 - first = 255 rows per chunk) score the token at j+1, i.e. chunk
   tokens 257..511; nll += max + log(sum exp(l - max)) - l[tok] (here in float64 from the
   float32 logits; llama.cpp sums exp in double of float differences). ppl = exp(nll/count).
   Text: data/shakespeare/tempest_gut.txt. Uses a separate llama.cpp context with n_ctx 512,
   n_batch 512, like `llama-perplexity -c 512 -b 512`, with an F32 KV cache ("ppl"); the
   same with llama.cpp's default F16 KV cache is stored too ("f16_kv_cache").

Usage (from the repository root; about 2 minutes on 2 cores, +10 s the first time):
    bench/.venv/bin/python tools/reference/llama_reference.py

Needs (in bench/.venv): torch (CPU), transformers 4.57.1 + accelerate 1.15.0 (required by
transformers to load a GGUF), gguf 0.19.0, llama-cpp-python 0.3.36, numpy, jinja2.
Everything runs with 2 threads.
"""
import glob
import hashlib
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "models")
Q_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
F32_NAME = "SmolLM2-135M-Instruct.F32.gguf"
Q_PATH = os.path.join(MODELS, Q_NAME)
F32_PATH = os.path.join(MODELS, F32_NAME)
OUT = os.path.join(ROOT, "crates", "models", "testdata", "smollm2", "reference.json")
SCRIPT = "tools/reference/llama_reference.py"

THREADS = 2
N_GEN = 32
N_TOP = 32
N_RAND = 16
SEED = 20251123
CHUNK = 4096
FIRST_IDS = 64
PPL_CTX = 512
PPL_MAX_CHUNKS = 16
PPL_TEXT = "data/shakespeare/tempest_gut.txt"

os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ.setdefault("MKL_NUM_THREADS", str(THREADS))

PROMPTS = [
    {"name": "en_plain", "chat": False, "text": "The capital of France is"},
    {"name": "zh_plain", "chat": False, "text": "中国的首都是"},
    {"name": "code_fib", "chat": False, "text": "def fibonacci(n):"},
    {"name": "numbers", "chat": False, "text": "1, 1, 2, 3, 5, 8,"},
    {"name": "chat_en", "chat": True,
     "messages": [{"role": "user", "content": "What is gravity? Answer in one sentence."}]},
    {"name": "chat_zh", "chat": True,
     "messages": [{"role": "user", "content": "请用一句话介绍你自己。"}]},
    {"name": "chat_system", "chat": True,
     "messages": [{"role": "system", "content": "You are a pirate. Always answer like a pirate."},
                  {"role": "user", "content": "How do I boil an egg?"}]},
]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_ids(ids):
    return hashlib.sha256(np.asarray(ids, dtype="<u4").tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------
# 1. F32 GGUF


def convert_to_f32():
    import gguf

    if os.path.exists(F32_PATH):
        print(f"[f32] {F32_NAME} present, skipping conversion")
        return
    t0 = time.time()
    reader = gguf.GGUFReader(Q_PATH)
    arch = reader.fields["general.architecture"].contents()
    tmp = F32_PATH + ".tmp"
    writer = gguf.GGUFWriter(tmp, arch)  # adds general.architecture first, as in the source
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        if key == "general.file_type":
            writer.add_key_value(key, int(gguf.LlamaFileType.ALL_F32), vtype)
            continue
        if key == "general.alignment":
            writer.data_alignment = field.contents()
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), vtype)
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # numpy order
        if t.tensor_type == gguf.GGMLQuantizationType.F32:
            arr = np.array(t.data, dtype=np.float32).reshape(shape)
        else:
            arr = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        writer.add_tensor(t.name, np.ascontiguousarray(arr))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, F32_PATH)
    print(f"[f32] wrote {F32_NAME} ({len(reader.tensors)} tensors) in {time.time() - t0:.1f}s")


# ---------------------------------------------------------------------------------------
# 2. Prompts


def render_prompts():
    import gguf
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    reader = gguf.GGUFReader(Q_PATH)
    template_src = reader.fields["tokenizer.chat_template"].contents()
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(template_src)
    prompts = []
    for p in PROMPTS:
        q = {"name": p["name"], "chat": p["chat"]}
        if p["chat"]:
            q["messages"] = p["messages"]
            q["text"] = template.render(messages=p["messages"], add_generation_prompt=True)
        else:
            q["messages"] = None
            q["text"] = p["text"]
        prompts.append(q)
    return prompts, template_src


# ---------------------------------------------------------------------------------------
# llama.cpp helpers


def load_llama(path, n_ctx, kv_f16=False):
    import llama_cpp
    from llama_cpp import Llama

    # llama.cpp's default KV cache is F16, which alone moves the logits by ~0.01-0.05 against
    # float64; the reference uses an F32 KV cache (logits then within ~3e-5 of HF float64).
    kv = llama_cpp.GGML_TYPE_F16 if kv_f16 else llama_cpp.GGML_TYPE_F32
    return Llama(model_path=path, n_ctx=n_ctx, n_threads=THREADS, n_threads_batch=THREADS,
                 n_batch=512, flash_attn=False, logits_all=True, verbose=False, type_k=kv, type_v=kv)


def margin(row):
    top2 = np.partition(np.asarray(row, dtype=np.float64), -2)[-2:]
    return float(top2[1] - top2[0])


def llamacpp_greedy(llm, prompt_ids):
    llm.reset()
    llm.eval(prompt_ids)
    out, margins = [], []
    for _ in range(N_GEN):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        nxt = int(np.argmax(row))
        margins.append(margin(row))
        out.append(nxt)
        llm.eval([nxt])
    return out, margins


def llamacpp_all_logits(llm, seq):
    llm.reset()
    llm.eval(seq)
    return np.array(llm.scores[: len(seq)], dtype=np.float32)


# ---------------------------------------------------------------------------------------
# 5. HF float64


def load_hf():
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(THREADS)
    model = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=Q_NAME, dtype=torch.float64)
    model.eval()
    return model


def hf_greedy(model, prompt_ids):
    import torch

    with torch.no_grad():
        ids = torch.tensor([prompt_ids], dtype=torch.long)
        out = model(input_ids=ids, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1]
        gen = []
        for step in range(N_GEN):
            nxt = int(torch.argmax(logits))
            gen.append(nxt)
            if step == N_GEN - 1:
                break
            out = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1]
    return gen


def hf_full_logits(model, seq):
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([seq], dtype=torch.long), use_cache=False)
    return out.logits[0].to(torch.float64).numpy()


def logit_samples(logits, prompt_index, n_prompt):
    L, V = logits.shape
    positions = sorted(set(range(0, L, 4)) | {n_prompt - 1})
    rows = []
    for pos in positions:
        row = logits[pos]
        m = float(row.max())
        lse = float(m + np.log(np.sum(np.exp(row - m))))
        top = np.argsort(-row, kind="stable")[:N_TOP]
        rng = np.random.default_rng([SEED, prompt_index, pos])
        topset = set(int(i) for i in top)
        rand = []
        while len(rand) < N_RAND:
            i = int(rng.integers(0, V))
            if i not in topset and i not in rand:
                rand.append(i)
        ids = [int(i) for i in top] + rand
        rows.append({"position": pos, "logsumexp": lse, "max_logit": m, "ids": ids,
                     "logits": [float(row[i]) for i in ids]})
    return rows


# ---------------------------------------------------------------------------------------
# 6. Corpus tokenization


def read_text(rel):
    with open(os.path.join(ROOT, rel), "rb") as f:
        return f.read().decode("utf-8")


def corpus_tokenization(llm):
    files = sorted(glob.glob(os.path.join(ROOT, "data", "shakespeare", "*.txt")))
    files = [os.path.relpath(f, ROOT) for f in files] + ["data/tang_poems.jsonl"]
    res = []
    for rel in files:
        text = read_text(rel)
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        res.append({
            "file": rel,
            "n_bytes": len(text.encode("utf-8")),
            "n_tokens": len(ids),
            "sha256_u32le": sha256_ids(ids),
            "first_ids": ids[:FIRST_IDS],
            "chunk_size": CHUNK,
            "chunk_sha256_u32le": [sha256_ids(ids[i:i + CHUNK]) for i in range(0, len(ids), CHUNK)],
        })
        print(f"[tok] {rel}: {len(ids)} tokens")
    return res


# ---------------------------------------------------------------------------------------
# 7. Perplexity


def perplexity(llm):
    text = read_text(PPL_TEXT)
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    n_ctx = PPL_CTX
    assert len(tokens) >= 2 * n_ctx
    n_chunks = min(len(tokens) // n_ctx, PPL_MAX_CHUNKS)
    first = n_ctx // 2
    total, count, per_chunk = 0.0, 0, []
    for c in range(n_chunks):
        chunk = tokens[c * n_ctx:(c + 1) * n_ctx]
        llm.reset()
        llm.eval(chunk)
        logits = np.array(llm.scores[:n_ctx], dtype=np.float32).astype(np.float64)
        s = 0.0
        for j in range(first, n_ctx - 1):
            row = logits[j]
            m = row.max()
            s += float(m + np.log(np.sum(np.exp(row - m))) - row[chunk[j + 1]])
        per_chunk.append(s)
        total += s
        count += n_ctx - 1 - first
        print(f"[ppl] chunk {c + 1}/{n_chunks}: running ppl {np.exp(total / count):.4f}")
    return {
        "text": PPL_TEXT,
        "method": "llama.cpp perplexity(): no BOS (add_bos_token=false), fresh KV per chunk, "
                  "rows j=n_ctx/2..n_ctx-2 score token j+1 (255 per chunk)",
        "n_text_tokens": len(tokens),
        "ctx": n_ctx,
        "first": first,
        "n_chunks": n_chunks,
        "count": count,
        "total_nll": total,
        "ppl": float(np.exp(total / count)),
        "chunk_nll": per_chunk,
    }


# ---------------------------------------------------------------------------------------


def main():
    import gguf
    import jinja2
    import llama_cpp
    import torch
    import transformers

    t_start = time.time()
    convert_to_f32()
    prompts, template_src = render_prompts()

    llm = load_llama(F32_PATH, 1024)
    md = llm.metadata
    assert md.get("general.file_type") == "0", md.get("general.file_type")
    assert llm.n_vocab() == 49152
    print(f"[f32] llama.cpp loaded {F32_NAME}: n_vocab {llm.n_vocab()}, file_type {md['general.file_type']}")

    for p in prompts:
        p["prompt_ids"] = llm.tokenize(p["text"].encode("utf-8"), add_bos=False, special=True)
        p["llamacpp_f32_greedy"], p["_lc_margins"] = llamacpp_greedy(llm, p["prompt_ids"])
        print(f"[llama.cpp] {p['name']}: {len(p['prompt_ids'])} prompt ids")
    t_lc = time.time()

    model = load_hf()
    print(f"[hf] loaded in {time.time() - t_lc:.1f}s")
    for k, p in enumerate(prompts):
        n = len(p["prompt_ids"])
        p["hf_f64_greedy"] = hf_greedy(model, p["prompt_ids"])
        seq = p["prompt_ids"] + p["hf_f64_greedy"]
        logits = hf_full_logits(model, seq)
        tf_argmax = [int(np.argmax(logits[n - 1 + i])) for i in range(N_GEN)]
        assert tf_argmax == p["hf_f64_greedy"], f"{p['name']}: KV-cache greedy != full recompute"
        hf_margins = [margin(logits[n - 1 + i]) for i in range(N_GEN)]
        lc = llamacpp_all_logits(llm, seq).astype(np.float64)
        agree = p["hf_f64_greedy"] == p["llamacpp_f32_greedy"]
        first_diff = None
        if not agree:
            first_diff = next(i for i, (a, b) in enumerate(zip(p["hf_f64_greedy"], p["llamacpp_f32_greedy"])) if a != b)
        p["greedy_agree"] = agree
        p["first_divergence"] = first_diff
        p["hf_f64_margins"] = hf_margins
        p["hf_f64_min_margin"] = min(hf_margins)
        p["llamacpp_f32_margins"] = p.pop("_lc_margins")
        p["llamacpp_f32_min_margin"] = min(p["llamacpp_f32_margins"])
        p["llamacpp_f32_vs_hf_f64_max_abs_logit_diff"] = float(np.max(np.abs(lc - logits)))
        p["hf_f64_greedy_text"] = llm.detokenize(p["hf_f64_greedy"], special=True).decode("utf-8", "replace")
        p["logits"] = logit_samples(logits, k, n)
        print(f"[hf] {p['name']}: agree={agree} min_margin={p['hf_f64_min_margin']:.4g}")
    del model
    t_hf = time.time()

    tokenization = corpus_tokenization(llm)
    del llm
    t_tok = time.time()

    ppl_llm = load_llama(F32_PATH, PPL_CTX)
    ppl = perplexity(ppl_llm)
    del ppl_llm
    ppl_llm = load_llama(F32_PATH, PPL_CTX, kv_f16=True)
    ppl16 = perplexity(ppl_llm)
    del ppl_llm
    ppl["kv_cache"] = "f32"
    ppl["f16_kv_cache"] = {"ppl": ppl16["ppl"], "total_nll": ppl16["total_nll"], "chunk_nll": ppl16["chunk_nll"]}
    t_ppl = time.time()

    key_order = ["name", "chat", "messages", "text", "prompt_ids", "llamacpp_f32_greedy", "hf_f64_greedy",
                 "hf_f64_greedy_text", "greedy_agree", "first_divergence", "hf_f64_min_margin",
                 "llamacpp_f32_min_margin", "hf_f64_margins", "llamacpp_f32_margins",
                 "llamacpp_f32_vs_hf_f64_max_abs_logit_diff", "logits"]
    prompts = [{k: p[k] for k in key_order} for p in prompts]

    doc = {
        "model": Q_NAME,
        "model_sha256": sha256_file(Q_PATH),
        "f32_model": F32_NAME,
        "f32_model_sha256": sha256_file(F32_PATH),
        "generated_by": {
            "script": SCRIPT,
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "accelerate": _dist_version("accelerate"),
            "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"),
            "llama_cpp_python": llama_cpp.__version__,
            "numpy": np.__version__,
            "jinja2": jinja2.__version__,
        },
        "llamacpp_settings": {"n_ctx": 1024, "n_batch": 512, "n_threads": THREADS, "flash_attn": False,
                              "kv_cache": "f32", "ppl_n_ctx": PPL_CTX},
        "chat_template": template_src,
        "n_gen": N_GEN,
        "logit_positions": "every 4th position of prompt_ids + hf_f64_greedy, plus the last prompt "
                           "position; ids[:32] = top-32 descending (ties: lower id), ids[32:] = random",
        "prompts": prompts,
        "tokenization": tokenization,
        "perplexity": ppl,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(compact_json(doc))
        f.write("\n")

    print()
    print(f"wrote {os.path.relpath(OUT, ROOT)} ({os.path.getsize(OUT)} bytes)")
    for p in prompts:
        print(f"  {p['name']:<12} {len(p['prompt_ids']):3d} ids  agree={str(p['greedy_agree']):<5} "
              f"first_div={p['first_divergence']}  min_margin hf={p['hf_f64_min_margin']:.4g} "
              f"lc={p['llamacpp_f32_min_margin']:.4g}  max|dlogit|={p['llamacpp_f32_vs_hf_f64_max_abs_logit_diff']:.3g}")
    print(f"  perplexity {ppl['text']}: ctx {ppl['ctx']}, {ppl['n_chunks']} chunks, {ppl['count']} tokens, "
          f"ppl {ppl['ppl']:.4f}")
    print(f"  times: llama.cpp greedy {t_lc - t_start:.1f}s, hf {t_hf - t_lc:.1f}s, tokenize {t_tok - t_hf:.1f}s, "
          f"ppl {t_ppl - t_tok:.1f}s, total {time.time() - t_start:.1f}s")


def _dist_version(name):
    from importlib.metadata import version

    return version(name)


def compact_json(obj, indent=1, level=0):
    """Pretty at the object level, lists of scalars on one line."""
    pad = " " * (indent * level)
    inner = " " * (indent * (level + 1))
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {compact_json(v, indent, level + 1)}"
                 for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(not isinstance(v, (dict, list)) for v in obj):
            return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        if all(isinstance(v, dict) and all(not isinstance(x, (dict, list)) for x in v.values()) for v in obj) \
                and len(json.dumps(obj, ensure_ascii=False)) < 400:
            return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        items = [inner + compact_json(v, indent, level + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


if __name__ == "__main__":
    main()
