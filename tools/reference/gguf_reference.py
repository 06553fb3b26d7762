"""Reference files for the GGUF reader's tests (crates/gguf/tests/reference.rs).

Writes, with the `gguf` package (llama.cpp's own Python reader/writer, from PyPI):
- crates/gguf/testdata/quants.gguf: one tensor per supported type (F32, F16, BF16, Q8_0, Q4_0,
  Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0) holding random
  blocks (every byte random except the f16 scales, kept finite), plus metadata of every value
  type incl. nested arrays;
- crates/gguf/testdata/quants_f32.gguf: the same tensors as `gguf.quants.dequantize` decodes
  them, stored as F32 — what our dequantisation must reproduce exactly;
- crates/gguf/testdata/quantize_ref.gguf: random normal values (`x_<type>`, F32) and what
  `gguf.quants.quantize` makes of them in each type we encode (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) —
  what our encoders must reproduce byte for byte.

Run: bench/.venv/bin/python tools/reference/gguf_reference.py   (needs gguf==0.19.0, numpy)
"""
import os
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

root = os.path.join(os.path.dirname(__file__), "..", "..")
out_dir = os.path.join(root, "crates", "gguf", "testdata")
rng = np.random.default_rng(1234)

def random_blocks(qtype, rows, cols):
    """Random bytes for `rows × cols` weights of `qtype`, with the f16 scales kept finite."""
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block
    raw = rng.integers(0, 256, size=(n_blocks, nbytes), dtype=np.uint8)
    def scale(col):  # overwrite 2 bytes at `col` with a modest f16
        raw[:, col:col + 2] = np.frombuffer(
            rng.uniform(-0.1, 0.1, n_blocks).astype(np.float16).tobytes(), dtype=np.uint8).reshape(n_blocks, 2)
    # Byte offsets of each block's f16 fields (as QuantType::f16_fields in crates/tensor).
    fields = {T.Q8_0: [0], T.Q4_0: [0], T.Q5_0: [0], T.IQ4_NL: [0], T.IQ4_XS: [0],
              T.Q4_1: [0, 2], T.Q5_1: [0, 2], T.Q4_K: [0, 2], T.Q5_K: [0, 2],
              T.Q2_K: [80, 82], T.Q3_K: [108], T.Q6_K: [208], T.TQ1_0: [52], T.TQ2_0: [64]}
    for col in fields[qtype]:
        scale(col)
    return raw.reshape(rows, cols // block * nbytes)

w = gguf.GGUFWriter(os.path.join(out_dir, "quants.gguf"), arch="test")
wf = gguf.GGUFWriter(os.path.join(out_dir, "quants_f32.gguf"), arch="test")
w.add_uint8("t.u8", 200); w.add_int8("t.i8", -100); w.add_uint16("t.u16", 60000); w.add_int16("t.i16", -30000)
w.add_uint32("t.u32", 4000000000); w.add_int32("t.i32", -2000000000); w.add_float32("t.f32", 1.5)
w.add_uint64("t.u64", 2**63 + 5); w.add_int64("t.i64", -(2**62)); w.add_float64("t.f64", -2.25)
w.add_bool("t.bool", True); w.add_string("t.str", "原理 GGUF")
w.add_array("t.arr_str", ["a", "bc", ""]); w.add_array("t.arr_int", [1, -2, 3])
w.add_array("t.nested", [[1, 2], [3]])
for name, qtype, rows, cols in [
    ("f32", T.F32, 3, 5), ("f16", T.F16, 2, 7), ("bf16", T.BF16, 2, 6),
    ("q8_0", T.Q8_0, 3, 64), ("q4_0", T.Q4_0, 2, 96), ("q4_1", T.Q4_1, 4, 32),
    ("q4_k", T.Q4_K, 2, 512), ("q6_k", T.Q6_K, 3, 256),
    ("q5_0", T.Q5_0, 3, 64), ("q5_1", T.Q5_1, 2, 96), ("q2_k", T.Q2_K, 2, 512), ("q3_k", T.Q3_K, 3, 256),
    ("q5_k", T.Q5_K, 2, 512), ("iq4_nl", T.IQ4_NL, 3, 64), ("iq4_xs", T.IQ4_XS, 2, 512),
    ("tq1_0", T.TQ1_0, 3, 256), ("tq2_0", T.TQ2_0, 2, 512),
]:
    if qtype == T.F32:
        data = rng.standard_normal((rows, cols)).astype(np.float32)
        ref = data
    elif qtype == T.F16:
        data = rng.standard_normal((rows, cols)).astype(np.float16)
        ref = data.astype(np.float32)
    else:
        data = random_blocks(qtype, rows, cols) if qtype != T.BF16 else \
            rng.integers(0, 2**16, size=(rows, cols), dtype=np.uint16).view(np.uint8).reshape(rows, cols * 2)
        if qtype == T.BF16:  # keep bf16 finite: clear the top exponent bit
            data.view(np.uint16)[...] &= 0xBFFF
        ref = dequantize(data, qtype).astype(np.float32)
        data = data if qtype != T.BF16 else data
    w.add_tensor(name, data, raw_dtype=qtype if qtype not in (T.F32, T.F16) else None)
    wf.add_tensor(name, ref.reshape(rows, cols))
for x in (w, wf):
    x.write_header_to_file(); x.write_kv_data_to_file(); x.write_tensors_to_file(); x.close()
from gguf.quants import quantize
wq = gguf.GGUFWriter(os.path.join(out_dir, "quantize_ref.gguf"), arch="test")
for name, qtype in [("q8_0", T.Q8_0), ("q4_0", T.Q4_0), ("q4_1", T.Q4_1), ("q5_0", T.Q5_0), ("q5_1", T.Q5_1)]:
    x = rng.standard_normal((4, 96)).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block (d = 0)
    wq.add_tensor("x_" + name, x)
    wq.add_tensor(name, quantize(x, qtype), raw_dtype=qtype)
wq.write_header_to_file(); wq.write_kv_data_to_file(); wq.write_tensors_to_file(); wq.close()
print("wrote", out_dir)
