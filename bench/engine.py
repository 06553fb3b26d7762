"""Side-by-side engine benchmark: yuanli vs numpy (OpenBLAS) matmul and PyTorch SDPA.

Runs the same shapes with the same thread count in one process run and prints ratios
(ours / theirs; > 1 means yuanli is faster). Used by bench/run_engine.sh; results go to
docs/benchmarks.md.

--level avx2 measures the AVX2 path on a machine with AVX-512: every side capped by AVX2_ENV
(yuanli's kernels by YUANLI_SIMD, OpenBLAS by OPENBLAS_CORETYPE=Haswell, PyTorch by
ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA / MKL_ENABLE_INSTRUCTIONS), and yuanli's gemm by the
binary built without its AVX-512 kernels (`cargo build --release -p yuanli
--no-default-features --target-dir target/avx2`, the default --binary at this level).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


# Environment that caps every side at AVX2+FMA (also used by bench/train.py).
AVX2_ENV = {"YUANLI_SIMD": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2", "OPENBLAS_CORETYPE": "Haswell"}
AVX2_BINARY = "target/avx2/release/yuanli"
AVX2_BUILD = "cargo build --release -p yuanli --no-default-features --target-dir target/avx2"


def median_time(fn, min_secs, min_reps=3):
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_secs:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) >= 1000:
            break
    return statistics.median(times)


MATMUL_SHAPES = [
    (256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048),
    (2048, 768, 3072), (2048, 3072, 768), (1, 768, 3072), (2048, 768, 50304),
]
ATTN_SHAPES = [(8, 6, 256, 64), (4, 12, 1024, 64)]


def numpy_matmul(threads, secs):
    import numpy as np
    rng = np.random.default_rng(0)
    out = []
    for m, k, n in MATMUL_SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        t = median_time(lambda: a @ b, secs)
        out.append({"m": m, "k": k, "n": n, "gflops": 2 * m * k * n / t / 1e9})
    return out


def torch_attention(threads, secs):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    out = []
    for b, h, t, d in ATTN_SHAPES:
        q, k, v = (torch.randn(b, h, t, d, requires_grad=True) for _ in range(3))
        dout = torch.randn(b, h, t, d)

        def fwd():
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def fwd_bwd():
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            o.backward(dout)
            q.grad = k.grad = v.grad = None

        out.append({"b": b, "h": h, "t": t, "d": d,
                    "forward_ms": median_time(fwd, secs) * 1e3,
                    "forward_backward_ms": median_time(fwd_bwd, secs) * 1e3})
    return out


def ours(binary, threads, what, secs):
    cmd = [binary, "--threads", str(threads), "bench", what, "--json", "--secs", str(secs)]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--binary", default=None, help=f"yuanli binary (default: target/release/yuanli; {AVX2_BINARY} "
                    "with --level avx2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--secs", type=float, default=1.0)
    ap.add_argument("--level", choices=["native", "avx2"], default="native")
    ap.add_argument("--json", action="store_true", help="print one JSON object with all results")
    args = ap.parse_args()
    if args.level == "avx2":
        os.environ.update(AVX2_ENV)
    args.binary = args.binary or (AVX2_BINARY if args.level == "avx2" else "target/release/yuanli")
    # Reference libraries read their thread counts from the environment at import.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    report = {"threads": args.threads, "matmul": [], "attention": []}
    mm_ours = ours(args.binary, args.threads, "matmul", args.secs)
    gemm = mm_ours[0].get("gemm", "?")
    if args.level == "avx2" and gemm == "avx512":
        sys.exit(f"{args.binary} runs gemm's AVX-512 kernels: build the capped binary with `{AVX2_BUILD}`")
    mm_np = numpy_matmul(args.threads, args.secs)
    print(f"matmul f32, {args.threads} threads, yuanli gemm {gemm} kernels, numpy capped to "
          f"{os.environ.get('OPENBLAS_CORETYPE', 'its native kernels')}: GFLOP/s (ratio = yuanli / numpy; ≥ 0.90 required)")
    print(f"{'M':>6} {'K':>6} {'N':>6} {'yuanli':>9} {'numpy':>9} {'ratio':>7}")
    for o, r in zip(mm_ours, mm_np):
        ratio = o["gflops"] / r["gflops"]
        print(f"{o['m']:>6} {o['k']:>6} {o['n']:>6} {o['gflops']:>9.1f} {r['gflops']:>9.1f} {ratio:>7.2f}")
        report["matmul"].append({**o, "numpy_gflops": r["gflops"], "ratio": ratio})

    at_ours = ours(args.binary, args.threads, "attention", 2 * args.secs)
    at_torch = torch_attention(args.threads, 2 * args.secs)
    import torch
    print(f"\ncausal attention f32, {args.threads} threads, yuanli {at_ours[0].get('simd', '?')} kernels, torch "
          f"{torch.backends.cpu.get_cpu_capability().lower()}: median ms (ratio = torch / yuanli; ≥ 1 means yuanli is faster)")
    print(f"{'B':>3} {'H':>3} {'T':>5} {'D':>3} {'fwd yuanli':>11} {'fwd torch':>10} {'ratio':>6} {'f+b yuanli':>11} {'f+b torch':>10} {'ratio':>6}")
    for o, r in zip(at_ours, at_torch):
        rf = r["forward_ms"] / o["forward_ms"]
        rb = r["forward_backward_ms"] / o["forward_backward_ms"]
        print(f"{o['b']:>3} {o['h']:>3} {o['t']:>5} {o['d']:>3} {o['forward_ms']:>11.2f} {r['forward_ms']:>10.2f} {rf:>6.2f} "
              f"{o['forward_backward_ms']:>11.2f} {r['forward_backward_ms']:>10.2f} {rb:>6.2f}")
        report["attention"].append({**o, "torch_forward_ms": r["forward_ms"], "torch_forward_backward_ms": r["forward_backward_ms"],
                                    "forward_ratio": rf, "forward_backward_ratio": rb})
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
