"""Side-by-side tokenizer benchmark: yuanli vs tiktoken and Hugging Face tokenizers.

* encoding: GPT-2's vocabulary (data/gpt2.tiktoken, GPT-2 pattern) on the Shakespeare corpus,
  single-threaded on the whole corpus as one text, and as a batch of one text per file on
  1, 2, ... threads; yuanli vs tiktoken;
* training: a 32,768-token byte-level BPE vocabulary on the same files with GPT-2's pattern;
  yuanli vs HF tokenizers' BpeTrainer (ByteLevel pre-tokenizer), same number of threads;
* a check that both encoders give identical ids on the corpus.

Ratios are ours / theirs as speed (> 1 means yuanli is faster). Used by
bench/run_tokenizer.sh; results go to docs/benchmarks.md.
"""
import argparse
import base64
import glob
import json
import os
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--data", default=os.path.join("..", "shared", "data"),
                help="directory with shakespeare/ (falls back to data/shakespeare)")
ap.add_argument("--threads", type=int, default=2, help="threads for training and the largest batch")
ap.add_argument("--repeat", type=int, default=5)
ap.add_argument("--vocab", type=int, default=32768)
args = ap.parse_args()

# HF tokenizers sizes its rayon pool from this variable, read when the pool first starts.
os.environ["RAYON_NUM_THREADS"] = str(args.threads)
os.environ["TOKENIZERS_PARALLELISM"] = "true"
import tiktoken  # noqa: E402
import tokenizers  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders  # noqa: E402

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
YUANLI = os.environ.get("YUANLI_BIN", "target/release/yuanli")


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


files = sorted(glob.glob(os.path.join(args.data, "shakespeare", "*.txt")))
if not files:
    files = sorted(glob.glob(os.path.join("data", "shakespeare", "*.txt")))
if not files:
    sys.exit("no Shakespeare text found (use --data DIR)")
texts = [open(f, encoding="utf-8").read() for f in files]
whole = "".join(texts)
mb = len(whole.encode("utf-8")) / 1e6
threads_list = sorted({1, args.threads})

# --- yuanli (one process: encode single, batch, train) ---
cmd = [YUANLI, "--threads", str(args.threads), "tokenizer", "bench", "--tokenizer", "data/gpt2.tiktoken",
       "--input", *files, "--batch-threads", ",".join(map(str, threads_list)),
       "--train-vocab", str(args.vocab), "--repeat", str(args.repeat), "--json"]
ours = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)

# --- tiktoken ---
ranks = {}
with open("data/gpt2.tiktoken", "rb") as f:
    for line in f:
        if line.strip():
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
enc = tiktoken.Encoding(name="gpt2-file", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                        special_tokens={"<|endoftext|>": len(ranks)})
ids = enc.encode_ordinary(whole)
assert len(ids) == ours["tokens"], f"token counts differ: tiktoken {len(ids)}, yuanli {ours['tokens']}"
tk_single = best(lambda: enc.encode_ordinary(whole), args.repeat)
tk_batch = {t: best(lambda: enc.encode_ordinary_batch(texts, num_threads=t), args.repeat) for t in threads_list}

# --- HF tokenizers training ---
def hf_train():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train(files, trainer)
    return tok


hf_secs = best(hf_train, min(args.repeat, 3))
hf_vocab = hf_train().get_vocab_size()

print(f"corpus: {len(files)} Shakespeare files, {mb:.2f} MB, {len(ids)} GPT-2 tokens (ids identical count)")
print(f"tiktoken {tiktoken.__version__}, tokenizers {tokenizers.__version__}, threads {args.threads}")
print()
print("encode, GPT-2 vocabulary          yuanli MB/s   tiktoken MB/s   ratio")
y1 = ours["encode_single"]["mb_per_s"]
print(f"  single thread, one text        {y1:11.1f}   {mb / tk_single:13.1f}   {y1 / (mb / tk_single):5.2f}")
for b in ours["encode_batch"]:
    t = b["threads"]
    theirs = mb / tk_batch[t]
    label = f"batch of {len(files)} files, {t} thread(s)"
    print(f"  {label:<30} {b['mb_per_s']:11.1f}   {theirs:13.1f}   {b['mb_per_s'] / theirs:5.2f}")
print()
ys = ours["train"]["secs"]
print(f"train {args.vocab} tokens, {args.threads} threads   yuanli s      HF tokenizers s   ratio")
print(f"  GPT-2 pattern                  {ys:9.3f}   {hf_secs:15.3f}   {hf_secs / ys:5.2f}"
      f"   (HF vocab {hf_vocab})")
print()
print(json.dumps({"yuanli": ours, "tiktoken": {"single_secs": tk_single, "batch_secs": tk_batch},
                  "hf_train_secs": hf_secs, "mb": mb}))
