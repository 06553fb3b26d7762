"""Held-out GSM8K answers of a model, with or without a LoRA adapter: how many end in GSM8K's
answer line `#### N` (format compliance) and how many N are right (exact match).

For each of the first --n problems of data/gsm8k/test.jsonl (never trained on), runs
`yuanli generate --chat --temperature 0 --max-new-tokens 256 --json` (greedy, the model's chat
template) and parses the text. Prints one JSON object: counts, rates and three sample answers.

Run: python3 tools/eval/gsm8k_format.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf [--lora DIR] [--n 40]
"""
import argparse
import json
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSWER = re.compile(r"####\s*\$?(-?[\d,]*\.?\d+)\s*$")


def number(s):
    return float(s.replace(",", ""))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--lora")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--yuanli", default=os.path.join(ROOT, "target", "release", "yuanli"))
    a = ap.parse_args()
    problems = [json.loads(l) for l in open(os.path.join(ROOT, "data", "gsm8k", "test.jsonl"), encoding="utf-8")][:a.n]
    formatted = correct = 0
    samples = []
    for p in problems:
        cmd = [a.yuanli, "--threads", str(a.threads), "generate", "--model", a.model, "--chat", "--prompt", p["prompt"],
               "--temperature", "0", "--max-new-tokens", "256", "--json"]
        if a.lora:
            cmd += ["--lora", a.lora]
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        text = out["text"].strip()
        m = ANSWER.search(text)
        want = number(ANSWER.search(p["completion"]).group(1))
        formatted += m is not None
        correct += m is not None and abs(number(m.group(1)) - want) < 1e-6
        if len(samples) < 3:
            samples.append({"question": p["prompt"], "answer": text, "gold": want})
    print(json.dumps({"model": a.model, "lora": a.lora, "n": len(problems), "formatted": formatted, "correct": correct,
                      "format_rate": formatted / len(problems), "exact_match": correct / len(problems),
                      "samples": samples}, ensure_ascii=False))


if __name__ == "__main__":
    main()
