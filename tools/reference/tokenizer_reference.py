"""Reference token ids from tiktoken for yuanli's GPT-2 tokenizer test.

Writes crates/tokenizer/testdata/gpt2_reference.json, which
crates/tokenizer/tests/gpt2_reference.rs compares against:

* "torture": hand-picked hard cases (whitespace runs, tabs and newlines, contractions, digit
  runs, emoji and ZWJ sequences, CJK, combining marks, right-to-left text, very long words,
  <|endoftext|> in text), with their full id lists, both as ordinary text and with the
  special token allowed;
* "shakespeare": for each file of the corpus, its byte length, id count, FNV-1a 64 hash of
  the ids (each as 4 little-endian bytes) and the first 1000 ids;
* "tang": the same for the Tang poems, each poem written as title, author and its lines, one
  a line, followed by an empty line.

Usage (from the repository root; needs tiktoken, see bench/requirements-tokenizer.txt):
    bench/.venv/bin/python tools/reference/tokenizer_reference.py [--data ../shared/data]
"""
import argparse
import base64
import json
import os

import tiktoken

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
FIRST = 1000


def load_gpt2(path):
    ranks = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    return tiktoken.Encoding(
        name="gpt2-file",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": len(ranks)},
    )


def fnv1a64(ids):
    h = 0xCBF29CE484222325
    for i in ids:
        for b in int(i).to_bytes(4, "little"):
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def summary(text, ids):
    return {"bytes": len(text.encode("utf-8")), "count": len(ids), "fnv1a64": fnv1a64(ids),
            "first": ids[:FIRST]}


def tang_text(path):
    """The Tang corpus as plain text (the Rust test builds it the same way)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                poem = json.loads(line)
                out.append(poem["title"] + "\n" + poem["author"] + "\n"
                           + "".join(l + "\n" for l in poem["lines"]) + "\n")
    return "".join(out)


def torture():
    cases = [
        "",
        " ",
        "hello world",
        "Hello, World! HELLO world?",
        "   leading and trailing spaces   ",
        "many     inner      spaces",
        " " * 100,
        "\t\ttabs\tand\t\t\ttabs\t",
        "line one\nline two\n\nline four\n\n\n\nend\n",
        "windows\r\nline\r\nendings\r\n",
        " \n \n\t \n  x",
        "mixed \u00a0no-break\u00a0spaces and\u3000ideographic\u3000space",
        "it's I'm you're we've they'll he'd she'S IT'S 'tis rock'n'roll o'clock",
        "''quoted'' 'single' \"double\" ``tex''",
        "don't won't can't shouldn't y'all'd've",
        "0 1 12 123 1234 12345 123456789012345678901234567890",
        "3.14159 2,718 1e10 -42 +7 0x1F 1_000_000 12:30 2024-01-01",
        "\u0661\u0662\u0663 \u0969\u096a \u2460\u2461 \u00bd \u2167",
        "emoji 😀😃😄 🎉🎊 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇨🇳🇺🇸",
        "👩‍💻 coding; 🧑🏾‍🚀 astronaut; 🤷‍♀️",
        "中文文本：你好，世界！床前明月光，疑是地上霜。",
        "日本語のテキスト、カタカナとひらがな。",
        "한국어 텍스트 안녕하세요",
        "e\u0301 a\u0300 o\u0308 n\u0303 Zalgo: Z\u0351\u036b\u0343a\u0310\u0357l\u0350g\u0344o\u0346",
        "\u0915\u094d\u0937 \u0928\u092e\u0938\u094d\u0924\u0947 \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
        "עברית: שלום עולם! العربية: مرحبا بالعالم؟",
        "mixed \u202eRTL override\u202c and \u200fmarks\u200e",
        "zero\u200bwidth\u200cjoiners\u200d\ufeffBOM",
        "a" * 5000,
        "supercalifragilisticexpialidocious" * 200,
        "x" * 300 + " " + "y" * 300 + "!" * 300 + "7" * 300,
        "<|endoftext|>",
        "text before<|endoftext|>text after",
        "<|endoftext|><|endoftext|> twice, and <|endof text|> broken, <|endoftext| almost",
        "Ünïcödé ÀÉÎÕÜ ß ẞ ǅ ǈ Ω ω ﬁ ﬂ",
        "math: ∑∫∂√∞ ≤≥≠ ← → ⇒ ∀∃ ℝℕ",
        "control\x00\x01\x07\x1b[31mred\x1b[0m\x7f",
        "surrogate-free high planes: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈 𠀀",
        "punctuation!!!??? ...... ---- ____ ****  #$%&@^~`|\\",
        "urls https://example.com/a?b=c&d=e#f and emails a.b@c.de",
        "code: fn main() { println!(\"{}\", x[0]); } // done",
        "    indented\n        more\n    less\n",
        "trailing newline run\n\n\n",
        "\n",
        "\n\n\n\n\n",
        "  \t  \n  ",
    ]
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join("..", "shared", "data"))
    ap.add_argument("--out", default="crates/tokenizer/testdata/gpt2_reference.json")
    args = ap.parse_args()
    enc = load_gpt2(os.path.join(args.data, "gpt2.tiktoken"))
    ref = {"tiktoken": tiktoken.__version__, "torture": [], "shakespeare": {}}
    for text in torture():
        ref["torture"].append({
            "text": text,
            "ordinary": enc.encode_ordinary(text),
            "allowed": enc.encode(text, allowed_special="all"),
        })
    shk = os.path.join(args.data, "shakespeare")
    for name in sorted(os.listdir(shk)):
        if name.endswith(".txt"):
            with open(os.path.join(shk, name), encoding="utf-8") as f:
                text = f.read()
            ref["shakespeare"][name] = summary(text, enc.encode_ordinary(text))
    tang = tang_text(os.path.join(args.data, "tang_poems.jsonl"))
    ref["tang"] = summary(tang, enc.encode_ordinary(tang))
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(ref, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    n = sum(v["count"] for v in ref["shakespeare"].values())
    print(f"wrote {args.out}: {len(ref['torture'])} torture cases, "
          f"{len(ref['shakespeare'])} Shakespeare files ({n} ids), Tang ({ref['tang']['count']} ids)")


if __name__ == "__main__":
    main()
