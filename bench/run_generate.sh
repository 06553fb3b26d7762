#!/usr/bin/env bash
# yuanli vs llama.cpp generation speed on SmolLM2-135M-Instruct in Q4_1 (the PyPI file) and
# Q8_0 (re-quantized from it by `yuanli quantize`), 2 threads, same machine, same run.
#
#   bash bench/run_generate.sh              both at this CPU's best level (llama.cpp built natively)
#   LEVEL=avx2 bash bench/run_generate.sh   both capped at AVX2+FMA: yuanli with YUANLI_SIMD=avx2,
#                                           llama.cpp built by pip with its AVX-512 options off
#                                           (in bench/.venv-avx2), so that an AVX-512 machine
#                                           measures the AVX2 path fairly
#   THREADS=1 …                             one thread instead of two
# Extra arguments go to bench/generate.py (e.g. --batch 0 to skip the batched-decoding rows).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/fetch_models.sh
case "${LEVEL:-native}" in
  native)
    venv=bench/.venv
    if [[ ! -x $venv/bin/python ]]; then python3 -m venv $venv; fi
    $venv/bin/pip install --quiet -r bench/requirements-llama.txt numpy
    ;;
  avx2)
    venv=bench/.venv-avx2
    export YUANLI_SIMD=avx2
    if [[ ! -x $venv/bin/python ]]; then
      python3 -m venv $venv
      # --no-cache-dir: a wheel cached from a native build would bring AVX-512 back.
      CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF" \
        $venv/bin/pip install --quiet --no-cache-dir "$(grep -m1 '^llama-cpp-python==' bench/requirements-llama.txt)" numpy
    fi
    ;;
  *) echo "LEVEL must be native or avx2 (got '$LEVEL')" >&2; exit 2 ;;
esac
cargo build --release -p yuanli
q8=models/SmolLM2-135M-Instruct.Q8_0.gguf
[[ -s $q8 ]] || ./target/release/yuanli quantize --in models/SmolLM2-135M-Instruct.Q4_1.gguf --type q8_0 --out "$q8"
$venv/bin/python bench/generate.py models/SmolLM2-135M-Instruct.Q4_1.gguf "$q8" --threads "${THREADS:-2}" "$@"
