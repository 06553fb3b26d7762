"""Every tensor of a GGUF file dequantized by the `gguf` package (`gguf.quants.dequantize`,
llama.cpp's own Python reference), printed as one JSON line per tensor: name, type, shape and
the SHA-256 of its values as little-endian f32. crates/gguf/tests/real_files.rs compares ours
with these digests, so a real file's every tensor must decode bit for bit as the reference does.

Run: bench/.venv/bin/python tools/reference/gguf_digest.py FILE.gguf   (needs gguf==0.19.0)
"""
import hashlib
import json
import sys

import numpy as np
import gguf
from gguf.quants import dequantize

reader = gguf.GGUFReader(sys.argv[1])
for t in reader.tensors:
    if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        values = np.asarray(t.data).astype(np.float32)
    else:
        values = dequantize(t.data, t.tensor_type).astype(np.float32)
    digest = hashlib.sha256(np.ascontiguousarray(values, dtype="<f4").tobytes()).hexdigest()
    print(json.dumps({"name": t.name, "type": t.tensor_type.name, "n": int(values.size), "sha256": digest}), flush=True)
