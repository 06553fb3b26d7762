"""data/arithmetic/pref_{train,test}.jsonl: preference pairs from the multiple-choice arithmetic
items in data/arithmetic/{train,test}.jsonl (built by tools/data/arithmetic.py from AllenAI's
basic_arithmetic; see data/PROVENANCE.md).

Each item gives one pair: the prompt as posed to the policy, the gold choice as the chosen
answer, and one of the three other choices — the data set's own distractors, picked with a
fixed seed — as the rejected one:

    {"prompt": "What is 31 - 4? Choose from: 27, 28, 37, 26. Answer with just the number.",
     "chosen": "27", "rejected": "37"}

This is the reward model of PPO in lesson 11: it learns from these pairs which answer is right
(a question of arithmetic, read off one hidden state), and PPO then optimises the policy
against it. Train pairs come from train.jsonl only, held-out pairs from test.jsonl only.

Run: python3 tools/data/arithmetic_preferences.py   (standard library only)
"""
import json
import os
import random
import re

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "data", "arithmetic")


def pairs(name, seed):
    rng = random.Random(seed)
    out = []
    with open(os.path.join(DATA, name + ".jsonl"), encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            m = re.search(r"Choose from: (.*)\. Answer with just the number\.$", item["prompt"])
            if m is None:
                raise SystemExit(f"{name}: no choices in {item['prompt']!r}")
            choices = [c.strip() for c in m.group(1).split(", ")]
            wrong = [c for c in choices if c != item["answer"]]
            if item["answer"] not in choices or len(wrong) != 3:
                raise SystemExit(f"{name}: the answer {item['answer']!r} is not one of {choices}")
            out.append({"prompt": item["prompt"], "chosen": item["answer"], "rejected": rng.choice(wrong)})
    return out


def main():
    for name, seed in (("train", 1), ("test", 2)):
        rows = pairs(name, seed)
        path = os.path.join(DATA, f"pref_{name}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{path}: {len(rows)} pairs")


if __name__ == "__main__":
    main()
