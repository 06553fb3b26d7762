//! Small vector kernels with run-time CPU-feature dispatch.
//!
//! Each kernel is written once as plain Rust (`*_impl`, `#[inline(always)]`) that LLVM
//! auto-vectorises; thin wrappers compile it with `avx512f` or `avx2,fma` enabled, and the
//! public function picks one at run time (`is_x86_feature_detected!` caches its answer). A
//! release binary built for baseline x86-64 therefore still uses AVX-512 where it exists.
//! The portable path is the same code without the extra features, so all paths compute the
//! same formula and the tests compare each one to a scalar reference.

use crate::quant::{dequantize_blocks, QuantType};

/// Which instruction-set path the dispatcher picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdLevel {
    /// AVX-512F (16 f32 lanes).
    Avx512,
    /// AVX2 + FMA + F16C (8 f32 lanes; every AVX2 CPU has F16C).
    Avx2,
    /// Whatever the baseline target gives (SSE2 on x86-64).
    Portable,
}

/// The best level this CPU supports (`YUANLI_SIMD=portable|avx2` caps it, for tests).
pub fn simd_level() -> SimdLevel {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = std::env::var("YUANLI_SIMD").unwrap_or_default();
        if cap != "portable" && cap != "avx2" && level_supported(SimdLevel::Avx512) {
            SimdLevel::Avx512
        } else if cap != "portable" && level_supported(SimdLevel::Avx2) {
            SimdLevel::Avx2
        } else {
            SimdLevel::Portable
        }
    })
}

/// Whether this CPU can run `level`.
pub fn level_supported(level: SimdLevel) -> bool {
    match level {
        SimdLevel::Portable => true,
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
        }
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => false,
    }
}

/// Defines `pub fn $name(args)`, which runs `$imp` compiled for the best level, and
/// `pub fn ${name}_at(level, args)` for an explicit level (tests run every supported one).
///
/// `=> fused imp(…)` is for an `imp` generic over `const FUSED: bool` (see [`fmadd`]): the AVX
/// levels run `imp::<true>`, the portable path `imp::<PORTABLE_FUSED>`.
macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident, $name_at:ident => fused $imp:ident ( $($arg:ident : $ty:ty),* ) $(-> $ret:ty)?) => {
        dispatch!(@body $(#[$doc])* $name, $name_at, $imp::<true>, $imp::<PORTABLE_FUSED>, ($($arg: $ty),*) $(-> $ret)?);
    };
    ($(#[$doc:meta])* $name:ident, $name_at:ident => $imp:ident ( $($arg:ident : $ty:ty),* ) $(-> $ret:ty)?) => {
        dispatch!(@body $(#[$doc])* $name, $name_at, $imp, $imp, ($($arg: $ty),*) $(-> $ret)?);
    };
    (@body $(#[$doc:meta])* $name:ident, $name_at:ident, $fast:path, $portable:path, ( $($arg:ident : $ty:ty),* ) $(-> $ret:ty)?) => {
        $(#[$doc])*
        #[inline]
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            $name_at(simd_level(), $($arg),*)
        }

        $(#[$doc])*
        ///
        /// Runs the code path of `level`; panics if the CPU does not support it.
        pub fn $name_at(level: SimdLevel, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { $fast($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { $fast($($arg),*) }
                match level {
                    SimdLevel::Avx512 => {
                        assert!(level_supported(level), "simd: AVX-512 requested on a CPU without it");
                        // SAFETY: the CPU reported every feature the wrapper is compiled with.
                        return unsafe { avx512($($arg),*) };
                    }
                    SimdLevel::Avx2 => {
                        assert!(level_supported(level), "simd: AVX2+FMA requested on a CPU without them");
                        // SAFETY: as above, for AVX2 and FMA.
                        return unsafe { avx2($($arg),*) };
                    }
                    SimdLevel::Portable => {}
                }
            }
            let _ = level;
            $portable($($arg),*)
        }
    };
}

// Cephes-style expf: x = n·ln2 + r, |r| ≤ ln2/2, eʳ ≈ 1 + r + r²·P(r) with P of degree 5
// (a degree-7 polynomial in all), 2ⁿ by exponent bits.
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_HI: f32 = 88.3;
const EXP_LO: f32 = -87.336_55;

/// eˣ for one f32, within 2 ulp of the correctly rounded result on [−87.3, 88.3]; exactly 0
/// below (so −∞ gives 0), and it saturates near 2.2·10³⁸ above. Branch-free and free of
/// float→int casts, so loops over it vectorise.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer in the low bits
    let xc = x.clamp(EXP_LO, EXP_HI);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4f32 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r2 + r + 1.0;
    // n sits in the low mantissa bits of t (two's complement); 2ⁿ has exponent field n + 127.
    let n_int = t.to_bits().wrapping_sub(MAGIC.to_bits());
    let pow2 = f32::from_bits(n_int.wrapping_add(127) << 23);
    let y = e * pow2;
    if x < EXP_LO {
        0.0
    } else {
        y
    }
}

/// tanh x for one f32 (Cephes' tanhf scheme): an odd polynomial for |x| < 0.625, and
/// `1 − 2/(e^{2|x|} + 1)` with the fast exp above it; within a few ulp, branch-free.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let poly =
        ((((-5.704_988_7e-3f32 * z + 0.02063909) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z - 0.3333328) * z * x
            + x;
    let e = exp_f32(2.0 * a.min(40.0));
    let big = 1.0 - 2.0 / (e + 1.0);
    let big = if x < 0.0 { -big } else { big };
    if a < 0.625 {
        poly
    } else {
        big
    }
}

const GELU_K: f32 = 0.797_884_6; // √(2/π)
const GELU_C: f32 = 0.044_715;

#[inline(always)]
fn gelu_tanh_forward_impl(out: &mut [f32], x: &[f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        let t = tanh_f32(GELU_K * (v + GELU_C * v * v * v));
        *o = 0.5 * v * (1.0 + t);
    }
}

#[inline(always)]
fn gelu_tanh_backward_impl(dx: &mut [f32], dout: &[f32], x: &[f32]) {
    for ((d, &g), &v) in dx.iter_mut().zip(dout).zip(x) {
        let t = tanh_f32(GELU_K * (v + GELU_C * v * v * v));
        let dt = GELU_K * (1.0 + 3.0 * GELU_C * v * v);
        *d += g * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * dt);
    }
}

#[inline(always)]
fn tanh_impl(out: &mut [f32], x: &[f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = tanh_f32(v);
    }
}

#[inline(always)]
fn exp_sub_inplace_impl(x: &mut [f32], shift: f32) {
    for v in x.iter_mut() {
        *v = exp_f32(*v - shift);
    }
}

#[inline(always)]
fn exp_sub_sum_impl(x: &mut [f32], shift: f32) -> f32 {
    // Sixteen partial sums keep the loop vectorised (float addition is not reassociated).
    let mut acc = [0.0f32; 16];
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        for k in 0..16 {
            c[k] = exp_f32(c[k] - shift);
            acc[k] += c[k];
        }
    }
    let mut s = 0.0;
    for v in chunks.into_remainder() {
        *v = exp_f32(*v - shift);
        s += *v;
    }
    acc.iter().sum::<f32>() + s
}

#[inline(always)]
fn max_impl(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let rem = chunks.remainder();
    for c in chunks {
        for k in 0..16 {
            acc[k] = if c[k] > acc[k] { c[k] } else { acc[k] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(rem) {
        m = if v > m { v } else { m };
    }
    m
}

/// Whether the portable path's multiply-adds are fused: on aarch64 (every CPU has FMA) and
/// where the whole program is built with FMA; not on a plain x86-64 build.
const PORTABLE_FUSED: bool = cfg!(any(target_arch = "aarch64", target_feature = "fma"));

/// `a·b + c`: one fused multiply-add (`FUSED`, for code compiled with FMA), else a multiply and
/// an add. (`f32::mul_add` in code compiled without FMA calls a software routine, one value
/// at a time: measured, it made the portable decoding step 1.6× slower.)
#[inline(always)]
fn fmadd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
fn dot_impl<const F: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..16 {
            acc[k] = fmadd::<F>(x[k], y[k], acc[k]);
        }
    }
    let mut s = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        s = fmadd::<F>(*x, *y, s);
    }
    acc.iter().sum::<f32>() + s
}

/// Weights per chunk of [`dequant_dot`]: one K-quant block, or eight 32-weight blocks.
const DEQUANT_CHUNK: usize = 256;

/// `acc[k] += (q[k]·ds − dm)·x[k]` for 32 weights: one sub-block of a K-quant, decoded and
/// multiplied in registers (no trip through memory). 32 running sums: four independent chains
/// of AVX2 multiply-adds, so each waits less on the one before.
#[inline(always)]
fn subblock_dot<const F: bool>(acc: &mut [f32; 32], q: &[u8; 32], ds: f32, dm: f32, x: &[f32]) {
    let x: &[f32; 32] = x.try_into().expect("32 activations");
    for k in 0..32 {
        let w = fmadd::<F>(q[k] as f32, ds, -dm);
        acc[k] = fmadd::<F>(w, x[k], acc[k]);
    }
}

/// `Q4_K` (see [`crate::quant`]): sub-block `j` is `d·scⱼ·q − dmin·mⱼ`, its 4-bit `q` the low
/// (even `j`) or high (odd `j`) nibbles of a 32-byte group.
#[inline(always)]
fn dot_q4_k<const F: bool>(acc: &mut [f32; 32], b: &[u8], x: &[f32]) {
    let (d, dmin) =
        (f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]])), f16_bits_to_f32(u16::from_le_bytes([b[2], b[3]])));
    for j in 0..8 {
        let (sc, m) = crate::quant::q4_k_scale_min(&b[4..16], j);
        let g: &[u8; 32] = b[16 + 32 * (j / 2)..48 + 32 * (j / 2)].try_into().expect("a 32-byte group");
        let shift = 4 * (j % 2) as u32;
        let mut q = [0u8; 32];
        for l in 0..32 {
            q[l] = (g[l] >> shift) & 0x0F;
        }
        subblock_dot::<F>(acc, &q, d * sc as f32, dmin * m as f32, &x[32 * j..32 * j + 32]);
    }
}

/// `Q5_K`: `Q4_K` with bit `j` of `qh[l]` as weight `l`'s fifth bit in sub-block `j`.
#[inline(always)]
fn dot_q5_k<const F: bool>(acc: &mut [f32; 32], b: &[u8], x: &[f32]) {
    let (d, dmin) =
        (f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]])), f16_bits_to_f32(u16::from_le_bytes([b[2], b[3]])));
    let qh: &[u8; 32] = b[16..48].try_into().expect("32 high-bit bytes");
    for j in 0..8 {
        let (sc, m) = crate::quant::q4_k_scale_min(&b[4..16], j);
        let g: &[u8; 32] = b[48 + 32 * (j / 2)..80 + 32 * (j / 2)].try_into().expect("a 32-byte group");
        let shift = 4 * (j % 2) as u32;
        let mut q = [0u8; 32];
        for l in 0..32 {
            q[l] = ((g[l] >> shift) & 0x0F) | (((qh[l] >> j) & 1) << 4);
        }
        subblock_dot::<F>(acc, &q, d * sc as f32, dmin * m as f32, &x[32 * j..32 * j + 32]);
    }
}

/// `Q6_K`: 16 sub-blocks of 16 with signed scales; `q` (6 bits, minus 32) from `ql` and `qh`.
/// Weight `l` (0..32) of quarter `r` (0..4) of half `h` takes nibble `r div 2` of
/// `ql[64h + 32(r mod 2) + l]` and bits `2r` of `qh[32h + l]`.
#[inline(always)]
fn dot_q6_k<const F: bool>(acc: &mut [f32; 32], b: &[u8], x: &[f32]) {
    let d = f16_bits_to_f32(u16::from_le_bytes([b[208], b[209]]));
    for h in 0..2 {
        let qh: &[u8; 32] = b[128 + 32 * h..160 + 32 * h].try_into().expect("32 high-bit bytes");
        for r in 0..4 {
            let at = 64 * h + 32 * (r % 2);
            let ql: &[u8; 32] = b[at..at + 32].try_into().expect("32 low-bit bytes");
            let mut q = [0u8; 32];
            for l in 0..32 {
                q[l] = ((ql[l] >> (4 * (r / 2))) & 0x0F) | (((qh[l] >> (2 * r)) & 3) << 4);
            }
            let x = &x[128 * h + 32 * r..128 * h + 32 * r + 32];
            // Two sub-blocks of 16, each with its own scale: the first 16 weights, then the next.
            let (s0, s1) = (b[192 + 8 * h + 2 * r] as i8 as f32, b[192 + 8 * h + 2 * r + 1] as i8 as f32);
            for k in 0..32 {
                let ds = if k < 16 { d * s0 } else { d * s1 };
                let w = fmadd::<F>(q[k] as f32, ds, -32.0 * ds);
                acc[k] = fmadd::<F>(w, x[k], acc[k]);
            }
        }
    }
}

#[inline(always)]
fn dequant_dot_impl<const F: bool>(ty: QuantType, w: &[u8], x: &[f32]) -> f32 {
    // The K-quants that fill most downloaded files: decoded and multiplied in registers.
    // (Called directly, not through a function pointer: each must be inlined into the
    // wrapper compiled for the level.)
    if matches!(ty, QuantType::Q4K | QuantType::Q5K | QuantType::Q6K) {
        let mut acc = [0f32; 32];
        for (b, xb) in w.chunks_exact(ty.block_bytes()).zip(x.chunks_exact(256)) {
            match ty {
                QuantType::Q4K => dot_q4_k::<F>(&mut acc, b, xb),
                QuantType::Q5K => dot_q5_k::<F>(&mut acc, b, xb),
                _ => dot_q6_k::<F>(&mut acc, b, xb),
            }
        }
        return acc.iter().sum();
    }
    let (bl, bb) = (ty.block_len(), ty.block_bytes());
    let blocks = DEQUANT_CHUNK.div_ceil(bl);
    let mut buf = [0f32; DEQUANT_CHUNK];
    // 16 running sums for the whole row, reduced once at the end.
    let (mut acc, mut tail) = ([0f32; 16], 0f32);
    for (wc, xc) in w.chunks(blocks * bb).zip(x.chunks(blocks * bl)) {
        let y = &mut buf[..xc.len()];
        dequantize_blocks(ty, wc, y);
        let ((ys, yr), (xs, xr)) = (y.as_chunks::<16>(), xc.as_chunks::<16>());
        for (a, b) in ys.iter().zip(xs) {
            for k in 0..16 {
                acc[k] = fmadd::<F>(a[k], b[k], acc[k]);
            }
        }
        for (a, b) in yr.iter().zip(xr) {
            tail = fmadd::<F>(*a, *b, tail);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy_impl<const F: bool>(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = fmadd::<F>(a, x, *y);
    }
}

#[inline(always)]
fn axpy4_impl<const F: bool>(y: &mut [f32], a: [f32; 4], x0: &[f32], x1: &[f32], x2: &[f32], x3: &[f32]) {
    let n = y.len();
    let (x0, x1, x2, x3) = (&x0[..n], &x1[..n], &x2[..n], &x3[..n]);
    // Blocks of 64 floats (one 256-byte stretch per row) with a software prefetch of the
    // rows' next stretch: four streams from L3/DRAM stay ahead of the FMAs.
    const BLK: usize = 64;
    let mut i0 = 0;
    while i0 < n {
        let i1 = (i0 + BLK).min(n);
        prefetch(x0, i0 + 2 * BLK);
        prefetch(x1, i0 + 2 * BLK);
        prefetch(x2, i0 + 2 * BLK);
        prefetch(x3, i0 + 2 * BLK);
        for i in i0..i1 {
            y[i] = fmadd::<F>(
                a[3],
                x3[i],
                fmadd::<F>(a[2], x2[i], fmadd::<F>(a[1], x1[i], fmadd::<F>(a[0], x0[i], y[i]))),
            );
        }
        i0 = i1;
    }
}

/// Asks the CPU to bring every cache line of `x` into the cache (no effect off x86-64): for
/// data read soon from a place the hardware prefetcher cannot guess, such as the next block
/// of a paged KV cache.
#[inline]
pub fn prefetch_slice<T>(x: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let (p, bytes) = (x.as_ptr() as *const i8, std::mem::size_of_val(x));
        for off in (0..bytes).step_by(64) {
            // SAFETY: a prefetch never faults, and the address is inside `x` anyway.
            unsafe { std::arch::x86_64::_mm_prefetch(p.add(off), std::arch::x86_64::_MM_HINT_T0) };
        }
    }
}

/// Hints the CPU to fetch the cache lines around `x[i..i + 64]` (nothing if out of range).
#[inline(always)]
fn prefetch(x: &[f32], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if i < x.len() {
        for off in [0, 16, 32, 48] {
            if i + off < x.len() {
                // SAFETY: a prefetch never faults, and the address is inside `x` anyway.
                unsafe {
                    std::arch::x86_64::_mm_prefetch(
                        x.as_ptr().add(i + off) as *const i8,
                        std::arch::x86_64::_MM_HINT_T0,
                    )
                };
            }
        }
    }
}

/// IEEE f16 bits → f32, exactly (normal, subnormal, ±0, ±∞, NaN), branch-free so that a loop
/// over it vectorises: the exponent and mantissa move into f32 position, and one multiply by
/// 2¹¹² re-biases the exponent (15 → 127) — exact, and right for subnormals too.
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let em = h & 0x7fff;
    let scaled = (f32::from_bits(em << 13) * f32::from_bits(0x7780_0000)).to_bits();
    let bits = if em >= 0x7c00 { (em << 13) | 0x7f80_0000 } else { scaled };
    f32::from_bits(bits | ((h & 0x8000) << 16))
}

/// Every f16 value as f32, indexed by its bits (256 KiB, built on first use): the portable
/// kernels' conversion of block scales, one load instead of a dozen integer operations (only
/// the few cache lines of the scales' exponent range are ever touched).
pub fn f16_table() -> &'static [f32; 65536] {
    use std::sync::OnceLock;
    static TABLE: OnceLock<Box<[f32; 65536]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let v: Vec<f32> = (0..=u16::MAX).map(f16_bits_to_f32).collect();
        v.into_boxed_slice().try_into().expect("65,536 values")
    })
}

#[inline(always)]
fn f16_to_f32_impl(src: &[u16], dst: &mut [f32]) {
    for (d, &h) in dst.iter_mut().zip(src) {
        *d = f16_bits_to_f32(h);
    }
}

/// The 16 values at `x[at..at + 16]` as an array (its length known to the compiler, so loops
/// over it vectorise without bounds checks).
#[inline(always)]
fn lanes(x: &[f32], at: usize) -> &[f32; 16] {
    x[at..at + 16].try_into().expect("a 16-value stretch")
}

#[inline(always)]
fn axpy_rows_impl<const F: bool>(y: &mut [f32], a: &[f32], rows: &[f32]) {
    // `y` (a head: 64–128 values) is held in up to 8 registers of 16 lanes, and the rows go by
    // pairs into two sets of accumulators: each register's chain of fused multiply-adds is a
    // quarter as long as one chain over every row would be (an FMA waits ~4 cycles for the
    // previous one on the same register).
    let d = y.len();
    if d > 128 || !d.is_multiple_of(16) {
        for (&aj, r) in a.iter().zip(rows.chunks_exact(d)) {
            axpy_impl::<F>(y, aj, r);
        }
        return;
    }
    let chunks = d / 16;
    let mut acc = [[[0.0f32; 16]; 8]; 2];
    let mut pairs = a.chunks_exact(2);
    let mut j = 0;
    for pair in &mut pairs {
        for (half, &aj) in pair.iter().enumerate() {
            for c in 0..chunks {
                let r = lanes(rows, (j + half) * d + c * 16);
                for k in 0..16 {
                    acc[half][c][k] = fmadd::<F>(aj, r[k], acc[half][c][k]);
                }
            }
        }
        j += 2;
    }
    if let [aj] = pairs.remainder() {
        for c in 0..chunks {
            let r = lanes(rows, j * d + c * 16);
            for k in 0..16 {
                acc[0][c][k] = fmadd::<F>(*aj, r[k], acc[0][c][k]);
            }
        }
    }
    for c in 0..chunks {
        for k in 0..16 {
            y[c * 16 + k] += acc[0][c][k] + acc[1][c][k];
        }
    }
}

#[inline(always)]
fn swiglu_inplace_impl(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp_f32(-*g)) * u;
    }
}

#[inline(always)]
fn geglu_tanh_inplace_impl(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let v = *g;
        let t = tanh_f32(GELU_K * (v + GELU_C * v * v * v));
        *g = 0.5 * v * (1.0 + t) * u;
    }
}

/// σ(x) = 1/(1 + e^{−x}) with the fast exp: `e^{−x}` saturates instead of overflowing, so
/// σ goes smoothly to 0 and 1 without a branch.
#[inline(always)]
fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

#[inline(always)]
fn swiglu_forward_impl(out: &mut [f32], gate: &[f32], up: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g * sigmoid_f32(g) * u;
    }
}

#[inline(always)]
fn swiglu_backward_impl(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    for i in 0..dout.len().min(dgate.len()).min(dup.len()).min(gate.len()).min(up.len()) {
        let (g, s) = (gate[i], sigmoid_f32(gate[i]));
        dgate[i] = dout[i] * up[i] * s * (1.0 + g * (1.0 - s));
        dup[i] = dout[i] * g * s;
    }
}

#[inline(always)]
fn dropout_hashed_impl(out: &mut [f32], x: &[f32], i0: u32, t: u32, keep: f32, seed: u64, add: bool) {
    let (lo, hi) = (seed as u32, (seed >> 32) as u32);
    let n = out.len().min(x.len());
    let mask = |k: usize| {
        let i = i0.wrapping_add(k as u32);
        let h = super::fmix32(super::fmix32(i.wrapping_mul(0x9e37_79b9) ^ lo) ^ hi) >> 8;
        if h >= t {
            x[k] * keep
        } else {
            0.0
        }
    };
    // Two loops, not a branch per element, so that each vectorises.
    if add {
        for k in 0..n {
            out[k] += mask(k);
        }
    } else {
        for k in 0..n {
            out[k] = mask(k);
        }
    }
}

#[inline(always)]
fn scale_impl(x: &mut [f32], s: f32) {
    for v in x.iter_mut() {
        *v *= s;
    }
}

dispatch! {
    /// `out = gelu_tanh(x)` (`=`).
    gelu_tanh_forward, gelu_tanh_forward_at => gelu_tanh_forward_impl(out: &mut [f32], x: &[f32])
}
dispatch! {
    /// `dx += dout ⊙ gelu_tanh'(x)`.
    gelu_tanh_backward, gelu_tanh_backward_at => gelu_tanh_backward_impl(dx: &mut [f32], dout: &[f32], x: &[f32])
}
dispatch! {
    /// `out = silu(gate) ⊙ up` (`=`).
    swiglu_forward, swiglu_forward_at => swiglu_forward_impl(out: &mut [f32], gate: &[f32], up: &[f32])
}
dispatch! {
    /// `dgate = dout ⊙ up ⊙ silu'(gate)`, `dup = dout ⊙ silu(gate)` (`=`, not accumulated).
    swiglu_backward, swiglu_backward_at => swiglu_backward_impl(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32])
}
dispatch! {
    /// `out = x ⊙ m` (`add`: `out += x ⊙ m`) with the hashed dropout mask from index `i0` on
    /// ([`dropout_keeps`](super::dropout_keeps); `keep` = 1/(1−p), `t` its threshold).
    dropout_hashed, dropout_hashed_at => dropout_hashed_impl(out: &mut [f32], x: &[f32], i0: u32, t: u32, keep: f32, seed: u64, add: bool)
}
dispatch! {
    /// `out = tanh(x)` (`=`).
    tanh, tanh_at => tanh_impl(out: &mut [f32], x: &[f32])
}
dispatch! {
    /// `x ← exp(x − shift)` elementwise.
    exp_sub_inplace, exp_sub_inplace_at => exp_sub_inplace_impl(x: &mut [f32], shift: f32)
}
dispatch! {
    /// `x ← exp(x − shift)` elementwise; returns `Σ x` after the update.
    exp_sub_sum, exp_sub_sum_at => exp_sub_sum_impl(x: &mut [f32], shift: f32) -> f32
}
dispatch! {
    /// `max x` (−∞ for an empty slice; NaNs are skipped).
    max, max_at => max_impl(x: &[f32]) -> f32
}
dispatch! {
    /// `Σ a_i b_i` (fused multiply-adds where the level has them).
    dot, dot_at => fused dot_impl(a: &[f32], b: &[f32]) -> f32
}
dispatch! {
    /// `Σ_k W[k]·x[k]` for one row `w` of weights stored as `ty` (whole blocks; `x` as long as
    /// the row): 256 weights at a time decoded to the stack, then a dot product — both compiled
    /// for the level, so the decoding loops vectorize too.
    dequant_dot, dequant_dot_at => fused dequant_dot_impl(ty: QuantType, w: &[u8], x: &[f32]) -> f32
}
dispatch! {
    /// `y ← y + a·x`.
    axpy, axpy_at => fused axpy_impl(y: &mut [f32], a: f32, x: &[f32])
}
dispatch! {
    /// `y ← y + a₀x₀ + a₁x₁ + a₂x₂ + a₃x₃` (one load and store of `y` per four rows).
    axpy4, axpy4_at => fused axpy4_impl(y: &mut [f32], a: [f32; 4], x0: &[f32], x1: &[f32], x2: &[f32], x3: &[f32])
}
dispatch! {
    /// `dst[i] = f32(src[i])` for f16 bits (exact), in plain Rust (see [`f16_to_f32`]).
    f16_to_f32_plain, f16_to_f32_plain_at => f16_to_f32_impl(src: &[u16], dst: &mut [f32])
}

/// `dst[i] = f32(src[i])` for f16 bits (exact): with F16C's `vcvtph2ps` (one instruction per 8
/// values) where the CPU has it and the level is not capped to portable, else
/// [`f16_to_f32_plain`].
pub fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd_level() != SimdLevel::Portable && std::arch::is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU reported AVX (every level above portable has it) and F16C.
        return unsafe { f16_to_f32_f16c(src, dst) };
    }
    f16_to_f32_plain(src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f16_to_f32_f16c(src: &[u16], dst: &mut [f32]) {
    use std::arch::x86_64::{_mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: values i..i + 8 exist in both slices.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i).cast());
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    f16_to_f32_impl(&src[i..n], &mut dst[i..n]);
}
dispatch! {
    /// `y ← y + Σ_j a[j]·rows[j]` over the `a.len()` consecutive rows of `y.len()` values in
    /// `rows` (attention's weighted sum of a block of values, in one call).
    axpy_rows, axpy_rows_at => fused axpy_rows_impl(y: &mut [f32], a: &[f32], rows: &[f32])
}
dispatch! {
    /// `gate ← silu(gate) ⊙ up` (SwiGLU in place, the fast exp: the inference engine's; the
    /// autograd op uses [`super::swiglu_forward`], the same formula).
    swiglu_inplace, swiglu_inplace_at => swiglu_inplace_impl(gate: &mut [f32], up: &[f32])
}
dispatch! {
    /// `gate ← gelu_tanh(gate) ⊙ up` (GeGLU in place: Gemma's MLP in the inference engine;
    /// the same formula as [`gelu_tanh_forward`]).
    geglu_tanh_inplace, geglu_tanh_inplace_at => geglu_tanh_inplace_impl(gate: &mut [f32], up: &[f32])
}
dispatch! {
    /// `x ← s·x`.
    scale, scale_at => scale_impl(x: &mut [f32], s: f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_is_exact_for_every_bit_pattern() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        for l in [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512].into_iter().filter(|&l| level_supported(l)) {
            let mut out = vec![0f32; all.len()];
            f16_to_f32_plain_at(l, &all, &mut out);
            for (&h, &got) in all.iter().zip(&out) {
                let want = half::f16::from_bits(h).to_f32();
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "{l:?}: f16 {h:#06x} → {got} ({:#x}), want {want}",
                    got.to_bits()
                );
            }
        }
        let mut out = vec![0f32; all.len()];
        f16_to_f32(&all, &mut out); // F16C where present
        let table = f16_table(); // the portable quantized kernels' scales
        for (&h, &got) in all.iter().zip(&out) {
            let t = table[h as usize];
            let want = half::f16::from_bits(h).to_f32();
            assert!(t.to_bits() == want.to_bits() || (t.is_nan() && want.is_nan()), "f16 table {h:#06x} → {t}");
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "f16 {h:#06x} → {got}");
        }
    }

    #[test]
    fn axpy_rows_equals_the_f64_sum_at_every_level() {
        let levels = [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512];
        // Rows of a head (64, 80), of a block of scores (16), and a length the fast path skips.
        for d in [64, 80, 16, 7, 144] {
            for n in [1, 3, 4, 17, 64] {
                let q: Vec<f32> = (0..d).map(|i| (i as f32 * 0.37).sin()).collect();
                let rows: Vec<f32> = (0..n * d).map(|i| (i as f32 * 0.11).cos()).collect();
                let a: Vec<f32> = (0..n).map(|j| 0.5 - j as f32 * 0.03).collect();
                for &l in levels.iter().filter(|&&l| level_supported(l)) {
                    let mut y = q.clone();
                    axpy_rows_at(l, &mut y, &a, &rows);
                    for c in 0..d {
                        let want = q[c] as f64 + (0..n).map(|j| a[j] as f64 * rows[j * d + c] as f64).sum::<f64>();
                        assert!((y[c] as f64 - want).abs() < 1e-4, "axpy_rows {l:?} d {d} n {n} col {c}");
                    }
                }
            }
        }
    }

    #[test]
    fn fast_exp_is_within_two_ulp_and_maps_minus_infinity_to_zero() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            let ulp = (want as f32).next_up() as f64 - want as f32 as f64;
            worst = worst.max((got - want).abs() / ulp);
            x += 0.0137;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-200.0), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn fast_tanh_and_gelu_match_f64() {
        let mut x = -12.0f32;
        while x < 12.0 {
            let want = (x as f64).tanh();
            let got = tanh_f32(x) as f64;
            assert!(
                (got - want).abs() <= 4.0 * f32::EPSILON as f64 * want.abs() + 1e-9,
                "tanh({x}) = {got}, want {want}"
            );
            x += 0.00731;
        }
        let xs: Vec<f32> = (0..257).map(|i| i as f32 * 0.05 - 6.4).collect();
        for level in [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512] {
            if !level_supported(level) {
                continue;
            }
            let mut y = vec![0.0; xs.len()];
            gelu_tanh_forward_at(level, &mut y, &xs);
            let mut dx = vec![0.0; xs.len()];
            gelu_tanh_backward_at(level, &mut dx, &vec![1.0; xs.len()], &xs);
            for i in 0..xs.len() {
                let v = xs[i] as f64;
                let t = (0.797_884_560_802_865_4 * (v + 0.044715 * v * v * v)).tanh();
                let want = 0.5 * v * (1.0 + t);
                let dwant = 0.5 * (1.0 + t)
                    + 0.5 * v * (1.0 - t * t) * 0.797_884_560_802_865_4 * (1.0 + 3.0 * 0.044715 * v * v);
                assert!((y[i] as f64 - want).abs() < 1e-6 * (1.0 + want.abs()), "{level:?} gelu({v})");
                assert!((dx[i] as f64 - dwant).abs() < 1e-6 * (1.0 + dwant.abs()), "{level:?} gelu'({v})");
            }
        }
    }

    #[test]
    fn hashed_dropout_is_the_same_at_every_level() {
        let x: Vec<f32> = (0..1003).map(|i| i as f32 * 0.5 - 7.0).collect();
        let (p, seed) = (0.3, 0x1234_5678_9abc_def0u64);
        let mut want = vec![0.0f32; x.len()];
        super::super::dropout_hashed(&mut want, &x, 17, p, seed, false);
        let base: Vec<f32> = (0..x.len()).map(|i| (i % 7) as f32).collect();
        let mut want_added = base.clone();
        super::super::dropout_hashed(&mut want_added, &x, 17, p, seed, true);
        assert!(want.contains(&0.0) && want.iter().zip(&x).any(|(&w, &v)| w != 0.0 && w != v));
        for level in [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512] {
            if !level_supported(level) {
                continue;
            }
            let (t, keep) = (super::super::dropout_threshold(p), (1.0 / (1.0 - p)) as f32);
            let mut got = vec![1.0f32; x.len()];
            dropout_hashed_at(level, &mut got, &x, 17, t, keep, seed, false);
            assert_eq!(got, want, "{level:?}");
            let mut added = base.clone();
            dropout_hashed_at(level, &mut added, &x, 17, t, keep, seed, true);
            assert_eq!(added, want_added, "{level:?} (+=)");
        }
    }

    #[test]
    fn swiglu_matches_f64_at_every_level() {
        let g: Vec<f32> = (0..301).map(|i| i as f32 * 0.11 - 16.5).chain([-100.0, 100.0]).collect();
        let u: Vec<f32> = g.iter().enumerate().map(|(i, _)| ((i * 7) % 13) as f32 * 0.25 - 1.5).collect();
        let dy: Vec<f32> = g.iter().enumerate().map(|(i, _)| ((i * 5) % 11) as f32 * 0.2 - 1.0).collect();
        for level in [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512] {
            if !level_supported(level) {
                continue;
            }
            let n = g.len();
            let (mut y, mut dg, mut du) = (vec![0.0; n], vec![9.0; n], vec![9.0; n]);
            swiglu_forward_at(level, &mut y, &g, &u);
            swiglu_backward_at(level, &mut dg, &mut du, &dy, &g, &u);
            for i in 0..n {
                let (gv, uv, d) = (g[i] as f64, u[i] as f64, dy[i] as f64);
                let s = 1.0 / (1.0 + (-gv).exp());
                let (want, dgw, duw) = (gv * s * uv, d * uv * s * (1.0 + gv * (1.0 - s)), d * gv * s);
                let close = |a: f32, b: f64| (a as f64 - b).abs() <= 1e-6 * (1.0 + b.abs());
                assert!(close(y[i], want), "{level:?} swiglu({gv}, {uv}) = {}, want {want}", y[i]);
                assert!(close(dg[i], dgw) && close(du[i], duw), "{level:?} swiglu' at {gv}");
            }
        }
    }

    #[test]
    fn every_supported_level_matches_the_scalar_reference() {
        // Lengths that are not multiples of 16 (the vector width) exercise the remainders.
        for len in [0usize, 1, 7, 16, 33, 103, 1000] {
            let x: Vec<f32> = (0..len).map(|i| ((i * 37) % 23) as f32 * 0.3 - 3.0).collect();
            let y: Vec<f32> = (0..len).map(|i| ((i * 11) % 7) as f32 * 0.5 - 1.0).collect();
            let want_dot: f64 = x.iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum();
            let want_max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let want_exp: Vec<f64> = x.iter().map(|&v| ((v - 1.0) as f64).exp()).collect();
            for level in [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512] {
                if !level_supported(level) {
                    continue;
                }
                assert!((dot_at(level, &x, &y) as f64 - want_dot).abs() < 1e-4, "{level:?} dot");
                assert_eq!(max_at(level, &x), want_max, "{level:?} max");
                let mut e = x.clone();
                let s = exp_sub_sum_at(level, &mut e, 1.0);
                assert!(
                    (s as f64 - want_exp.iter().sum::<f64>()).abs() <= 1e-6 * want_exp.iter().sum::<f64>().max(1.0),
                    "{level:?} exp sum"
                );
                for (g, w) in e.iter().zip(&want_exp) {
                    assert!((*g as f64 - w).abs() <= 3e-7 * w, "{level:?} exp {g} vs {w}");
                }
                let mut z = y.clone();
                axpy_at(level, &mut z, 2.0, &x);
                let mut z4 = y.clone();
                axpy4_at(level, &mut z4, [1.0, 0.5, -1.0, 2.0], &x, &y, &x, &y);
                for i in 0..len {
                    assert!((z[i] - (y[i] + 2.0 * x[i])).abs() < 1e-5, "{level:?} axpy");
                    assert!((z4[i] - (y[i] + x[i] + 0.5 * y[i] - x[i] + 2.0 * y[i])).abs() < 1e-5, "{level:?} axpy4");
                }
            }
        }
    }
}
