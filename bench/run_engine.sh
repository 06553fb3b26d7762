#!/usr/bin/env bash
# Side-by-side engine benchmark: builds yuanli in release mode, installs numpy and PyTorch from
# PyPI into bench/.venv (git-ignored; the first run downloads a few GB), and runs both on the
# same shapes with the same threads. Usage: bash bench/run_engine.sh [--threads N] [--secs S]
# LEVEL=avx2 bash bench/run_engine.sh: every side capped at AVX2+FMA (see bench/engine.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install --quiet --upgrade pip
fi
bench/.venv/bin/pip install --quiet -r bench/requirements.txt
if [[ ${LEVEL:-native} == avx2 ]]; then
  cargo build --release -p yuanli --no-default-features --target-dir target/avx2
  bench/.venv/bin/python bench/engine.py --level avx2 "$@"
else
  cargo build --release -p yuanli
  bench/.venv/bin/python bench/engine.py "$@"
fi
