#!/usr/bin/env bash
# Side-by-side tokenizer benchmark: yuanli vs tiktoken (encoding GPT-2's vocabulary) and
# Hugging Face tokenizers (BPE training), on the Shakespeare corpus, in one run.
# Builds yuanli in release mode, installs tiktoken and tokenizers from PyPI into bench/.venv
# (git-ignored). Usage: bash bench/run_tokenizer.sh [--data DIR] [--threads N] [--repeat R]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install --quiet --upgrade pip
fi
bench/.venv/bin/pip install --quiet -r bench/requirements-tokenizer.txt
cargo build --release -p yuanli
export YUANLI_BIN="${CARGO_TARGET_DIR:-target}/release/yuanli"
bench/.venv/bin/python bench/tokenizer.py "$@"
