"""data/gsm8k/pref_{train,test}.jsonl: preference pairs built from real GSM8K solutions
(data/gsm8k/{train,test}.jsonl, made by tools/data/gsm8k.py; MIT).

Each pair is `{"prompt": question, "chosen": the worked solution, "rejected": the same solution
with its final number wrong}`: the last occurrence of the answer N in the reasoning and the
`#### N` line both become N' (N plus or minus a small offset, or N doubled or halved, never N),
so the rejected answer is fluent and locally plausible but its last step's arithmetic is wrong.
A model that prefers the chosen answer has to check that step, not spot a stray token.

The pairs of `pref_test.jsonl` come from the held-out problems only: nothing trains on them.

Run: python3 tools/data/gsm8k_preferences.py   (deterministic: a fixed seed)
"""
import json
import os
import random
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIR = os.path.join(ROOT, "data", "gsm8k")


def wrong(n: str, rng: random.Random) -> str:
    """A different number written as GSM8K writes N (integers; commas kept out)."""
    v = int(n.replace(",", ""))
    while True:
        kind = rng.random()
        if kind < 0.6:
            w = v + rng.choice([-1, 1]) * rng.randint(1, max(2, abs(v) // 5))
        elif kind < 0.8:
            w = v * 2
        else:
            w = v // 2 if v % 2 == 0 else v + 10
        if w != v and (w >= 0 or v < 0):
            return str(w)


def pair(ex, rng):
    text = ex["completion"]
    body, n = text.rsplit("#### ", 1)
    n = n.strip()
    if not re.fullmatch(r"-?[\d,]+", n):
        return None
    w = wrong(n, rng)
    # The last place the reasoning states N (as written, with or without commas).
    pattern = re.compile(r"(?<![\d.,])" + re.escape(n) + r"(?![\d,]|\.\d)")
    hits = list(pattern.finditer(body))
    if not hits:
        plain = n.replace(",", "")
        hits = list(re.compile(r"(?<![\d.,])" + re.escape(plain) + r"(?![\d,]|\.\d)").finditer(body))
    if not hits:
        return None
    h = hits[-1]
    rejected = body[:h.start()] + w + body[h.end():] + "#### " + w
    return {"prompt": ex["prompt"], "chosen": text, "rejected": rejected}


def main():
    rng = random.Random(20261206)
    for split in ("train", "test"):
        rows = [json.loads(l) for l in open(os.path.join(DIR, f"{split}.jsonl"))]
        pairs = [p for p in (pair(r, rng) for r in rows) if p]
        with open(os.path.join(DIR, f"pref_{split}.jsonl"), "w") as f:
            for p in pairs:
                f.write(json.dumps(p) + "\n")
        print(f"pref_{split}.jsonl: {len(pairs)} pairs from {len(rows)} problems")


if __name__ == "__main__":
    main()
