//! Matrix products with block-quantized weights, read in place (never dequantized as a whole).
//!
//! `y[t, r] = Σ_k W[r, k] · x[t, k]` with `W` stored as GGML blocks ([`crate::quant`]).
//!
//! **The 32-weight formats** (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) take an integer route: the activations are
//! quantized on the fly to 16 bits per block of 32 (`x ≈ d_a·q_a`, `d_a = max|x|/32767`), and
//! each block product becomes one integer dot product and a rescale:
//!
//! ```text
//! Q8_0:  Σ (d_w q_w)(d_a q_a)       = d_w d_a · Σ q_w q_a
//! Q4_0:  Σ d_w (q_w − 8)(d_a q_a)   = d_w d_a · Σ q_w q_a − 8 d_w · (d_a Σ q_a)
//! Q4_1:  Σ (d_w q_w + m_w)(d_a q_a) = d_w d_a · Σ q_w q_a + m_w · (d_a Σ q_a)
//! ```
//!
//! (Q5_0 and Q5_1 are Q4_0 and Q4_1 with a fifth bit per weight and −16 for −8.)
//!
//! `d_a Σ q_a` is computed once per activation block ([`QuantizedActs::sd`]). The integer dot
//! `Σ q_w q_a` widens the weights to 16 bits and multiplies pairs into 32-bit sums
//! (`vpmaddwd`: 32 products per instruction with AVX-512BW, 16 with AVX2). The products are
//! exact integers, so every path — portable, AVX2, AVX-512 — computes the same block sums;
//! only the float accumulation order differs.
//!
//! Why 16-bit activations when llama.cpp uses 8? An 8-bit block keeps ~2 significant digits;
//! over SmolLM2's 211 matmuls per token that moved the top-1 token away from the exact f32
//! path at 5% of positions (measured: 1903/2000 agree), while 16 bits (4.5 digits) keep
//! 2000/2000 — and decoding is bound by reading the *weights*, so the wider activations cost
//! almost nothing.
//!
//! **The K-quants** Q4_K, Q5_K and Q6_K take the integer route for one token (decoding) on x86:
//! each of their 32- or 16-weight sub-blocks lies inside one 32-value activation block, so a
//! sub-block's product is `d·sⱼ·d_a·Σ q·q_a` (minus `dmin·mⱼ·d_a Σ q_a`). Otherwise — other
//! types, several tokens, the portable path — rows are decoded 256 weights at a time in
//! registers or on the stack and multiplied with the f32 activations ([`simd::dequant_dot`]).
//!
//! Decoding (`t = 1`) is memory-bound: the kernel's job is to stream the weight bytes once at
//! full bandwidth; a few tokens reuse each unpacked weight block across a tile of 8. The
//! one-token kernel takes two blocks per step: a 4-bit block's 16 bytes widen to 16 bits in
//! one instruction (low nibbles by a mask, high ones by a shift), and both blocks' f16 scales
//! convert together (F16C) and meet the activations' `(d_a, d_a Σ q_a)` pairs in one multiply.
//! 256-bit vectors already reach the memory's speed here, so the AVX-512 level runs the same
//! kernel (measured: 512-bit vectors were slower, not faster). The portable kernel is the same
//! arithmetic in plain Rust shaped for the compiler's vectorizer (integer sums of eight blocks
//! first, then their scales, from a table of the 65,536 f16 values).
//!
//! **Prefill** (`t ≥` [`GEMM_MIN_TOKENS`]) is compute-bound, so each thread dequantizes panels
//! of its weight rows once per call and multiplies them with all tokens: in bf16 with
//! `vdpbf16ps` where the CPU has AVX-512 BF16 ([`super::bf16gemm`]: twice the multiply-adds of
//! f32 FMA; the rounding moved SmolLM2 Q4_1's top-1 token at 0.6–0.8% of positions), else —
//! and always for F32 and F16 weights — with an f32 GEMM (`gemm` crate).

use super::bf16gemm;
use super::pool::{share, SpinPool};
use super::simd::{self, SimdLevel};
use crate::quant::{dequantize_row, QuantType};

/// Weights per block of the quantized activations (and of Q8_0, Q4_0, Q4_1).
pub const QK: usize = 32;

/// Activations quantized to 16 bits per block of 32: `x[t, b·32 + j] ≈ d[t, b] · q[t, b·32 + j]`.
#[derive(Clone, Debug, Default)]
pub struct QuantizedActs {
    /// Rows (tokens).
    pub rows: usize,
    /// Columns (a multiple of 32).
    pub cols: usize,
    /// Scale of each block, `(rows, cols/32)`.
    pub d: Vec<f32>,
    /// `d · Σ q` of each block (what the minimum or offset of the weights multiplies).
    pub sd: Vec<f32>,
    /// The 16-bit values, `(rows, cols)`.
    pub q: Vec<i16>,
    /// `d` of each full tile of 8 rows, transposed: `dt[(tile·nb + b)·8 + n] = d[tile·8 + n, b]`,
    /// so that the 8 scales a weight block meets in a tile are one vector load.
    pub dt: Vec<f32>,
    /// `sd` transposed the same way.
    pub sdt: Vec<f32>,
    /// `d` and `sd` interleaved, `(rows, cols/32, 2)`: the decode kernels read two blocks'
    /// scales as one vector.
    pub dsd: Vec<f32>,
    /// The activations rounded to bf16 and packed for the prefill route ([`bf16gemm`]).
    pub bf16: bf16gemm::PackedActs,
    /// The activations rounded to bf16, row by row as pairs (the small-batch bf16 route).
    pub bf16_rows: Vec<u32>,
    /// Choose the route by the weights' format only, never by the token count, so that each
    /// token's outputs are bitwise the same whatever other tokens share the product: the
    /// 32-weight formats take the 16-bit integer kernels at every `t` — one token, tiles of 8
    /// and prefill alike, summed in the same order (`dot1_avx2::<true>`, `dot8_avx2`, at both
    /// x86 levels, so the results are also the same on AVX2 and AVX-512 machines) — and the
    /// other formats an f32 dot product per token against the dequantized row. Off by
    /// default: the GEMM routes are faster for long prompts, and on AVX-512 BF16 the bf16 tile
    /// kernel for a few tokens. (The bf16 tiles would be invariant too, but they are 0.6× the
    /// integer kernel's speed for one token — a lone request — and 1.1× for 16 at once.)
    pub batch_invariant: bool,
    /// Round the activations as llama.cpp's CPU backend does before each product
    /// ([`round_like_ggml`]), to reproduce its numbers (perplexity side by side). Off by
    /// default: our 16-bit activations are closer to the exact product.
    pub ggml_activations: bool,
    /// The rounded copy of the activations when `ggml_activations`.
    ggml_rounded: Vec<f32>,
}

/// Rounds `x` (rows of `cols`) in place to what ggml's CPU backend multiplies a `ty` matrix
/// with — the weight type's `vec_dot_type`, into which llama.cpp converts every activation row
/// before a product:
/// - 32-weight formats (Q8_0, Q4_0, Q5_0, IQ4_NL; Q4_1, Q5_1 through Q8_1, the same values):
///   per 32, `d = max|x|/127` stored as f16, `q = round(x·127/max|x|)` (ties to even, as
///   `_mm256_round_ps`), value `q·d`;
/// - K-quants and IQ4_XS through Q8_K: per 256, `s = −127/m` with `m` the value of largest
///   magnitude, `q = min(127, round(s·x))`, value `q/s` (f32 scale);
/// - F16 and BF16 matrices: each value rounded to f16 / bf16; F32: unchanged.
pub fn round_like_ggml(ty: QuantType, x: &mut [f32], cols: usize) {
    let q8_0 = |blk: &mut [f32]| {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = half::f16::from_f32(amax / 127.0).to_f32();
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        blk.iter_mut().for_each(|v| *v = (*v * id).round_ties_even() * d);
    };
    let q8_k = |blk: &mut [f32]| {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in blk.iter() {
            if v.abs() > amax {
                (amax, max) = (v.abs(), v);
            }
        }
        if amax == 0.0 {
            blk.fill(0.0);
            return;
        }
        let iscale = -127.0 / max;
        let d = 1.0 / iscale;
        blk.iter_mut().for_each(|v| *v = (iscale * *v).round_ties_even().min(127.0) * d);
    };
    let rows = x.chunks_exact_mut(cols.max(1));
    match ty {
        QuantType::F32 => {}
        QuantType::F16 => x.iter_mut().for_each(|v| *v = half::f16::from_f32(*v).to_f32()),
        QuantType::BF16 => x.iter_mut().for_each(|v| *v = half::bf16::from_f32(*v).to_f32()),
        QuantType::Q8_0 | QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q5_0 | QuantType::Q5_1 | QuantType::IQ4NL => {
            rows.for_each(|r| r.chunks_mut(32).for_each(q8_0))
        }
        _ => rows.for_each(|r| r.chunks_mut(256).for_each(q8_k)),
    }
}

/// Rows per tile of the prefill kernels.
pub const TILE: usize = 8;

/// One row of [`QuantizedActs`].
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    d: &'a [f32],
    sd: &'a [f32],
    dsd: &'a [f32],
    q: &'a [i16],
}

impl QuantizedActs {
    /// Empty buffers with the two options set ([`QuantizedActs::batch_invariant`],
    /// [`QuantizedActs::ggml_activations`]).
    pub fn with_options(batch_invariant: bool, ggml_activations: bool) -> QuantizedActs {
        QuantizedActs { batch_invariant, ggml_activations, ..QuantizedActs::default() }
    }

    /// Quantizes `x (rows, cols)`: per block `d = max|x|/32767`, `q = round(x/d)`. Reuses the
    /// buffers (no allocation once they are large enough).
    #[track_caller]
    pub fn quantize(&mut self, x: &[f32], rows: usize, cols: usize) {
        assert!(
            cols.is_multiple_of(QK) && x.len() == rows * cols,
            "quantize acts: {rows}×{cols} from {} values",
            x.len()
        );
        let nb = cols / QK;
        self.rows = rows;
        self.cols = cols;
        self.d.resize(rows * nb, 0.0);
        self.sd.resize(rows * nb, 0.0);
        self.dsd.resize(2 * rows * nb, 0.0);
        self.q.resize(rows * cols, 0);
        for (i, blk) in x.chunks_exact(QK).enumerate() {
            let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 32767.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let q = &mut self.q[i * QK..(i + 1) * QK];
            let mut sum = 0i32;
            for (qi, &v) in q.iter_mut().zip(blk) {
                // round half away from zero, written so that it vectorises (no libm call)
                let y = v * id;
                *qi = (y + 0.5f32.copysign(y)) as i16;
                sum += *qi as i32;
            }
            self.d[i] = d;
            self.sd[i] = d * sum as f32;
            self.dsd[2 * i] = d;
            self.dsd[2 * i + 1] = d * sum as f32;
        }
        let tiles = rows / TILE;
        self.dt.resize(tiles * nb * TILE, 0.0);
        self.sdt.resize(tiles * nb * TILE, 0.0);
        for t in 0..tiles * TILE {
            for b in 0..nb {
                let at = ((t / TILE) * nb + b) * TILE + t % TILE;
                self.dt[at] = self.d[t * nb + b];
                self.sdt[at] = self.sd[t * nb + b];
            }
        }
    }

    /// Row `t`.
    #[inline]
    pub fn row(&self, t: usize) -> ActRow<'_> {
        let nb = self.cols / QK;
        ActRow {
            d: &self.d[t * nb..(t + 1) * nb],
            sd: &self.sd[t * nb..(t + 1) * nb],
            dsd: &self.dsd[2 * t * nb..2 * (t + 1) * nb],
            q: &self.q[t * self.cols..(t + 1) * self.cols],
        }
    }

    /// The activations as the kernels see them, `d·q` (for references in tests).
    pub fn dequantized(&self) -> Vec<f32> {
        self.q.iter().enumerate().map(|(i, &q)| self.d[i / QK] * q as f32).collect()
    }
}

/// Whether `ty` takes the integer route with quantized activations.
pub fn uses_quantized_acts(ty: QuantType) -> bool {
    matches!(ty, QuantType::Q8_0 | QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q5_0 | QuantType::Q5_1)
}

/// Whether `t` tokens of `ty` are multiplied on the integer route by `kernel`: the 32-weight
/// formats at any `t` below the GEMM routes, and, with the x86 kernels, Q4_K, Q5_K and Q6_K
/// for one token (decoding). A K-quant sub-block (32 or 16 weights) lies inside one 32-value
/// activation block, so its product is `d·sⱼ·d_a·Σ q·q_a` (minus `dmin·mⱼ·d_a Σ q_a` for Q4_K
/// and Q5_K). (The portable path keeps the K-quants in f32, decoded in registers: the
/// compiler did not vectorize the integer version, 4× slower.)
pub fn uses_int16_route(kernel: QKernel, ty: QuantType, t: usize) -> bool {
    uses_quantized_acts(ty)
        || (kernel != QKernel::Portable && t == 1 && matches!(ty, QuantType::Q4K | QuantType::Q5K | QuantType::Q6K))
}

// ---------------------------------------------------------------------------------------------
// Portable kernels: the formulas above in plain Rust, written so that the compiler vectorizes
// them (fixed-size arrays, no bounds checks in the inner loops, integer sums): SSE2 on any
// x86-64, NEON on ARM.

/// `Σ_j w[j]·q_a[j]` of 32 weights already widened to 16 bits: a multiply of 16-bit pairs
/// summed into 32 bits, the pattern compilers turn into `pmaddwd` (x86) or `smlal` (ARM).
#[inline(always)]
fn isum16(w: &[i16; 32], qa: &[i16; 32]) -> i32 {
    let mut s = 0i32;
    for j in 0..32 {
        s += w[j] as i32 * qa[j] as i32;
    }
    s
}

/// `Σ_j q_w[j]·q_a[j]` of a Q8_0 block's 32 signed bytes.
#[inline(always)]
fn isum_q8(qw: &[u8; 32], qa: &[i16; 32]) -> i32 {
    isum16(&qw.map(|q| q as i8 as i16), qa)
}

/// `Σ_j q_w[j]·q_a[j]` of a 4-bit block: low nibbles are weights 0–15, high nibbles 16–31.
#[inline(always)]
fn isum_q4(qs: &[u8; 16], qa: &[i16; 32]) -> i32 {
    let mut w = [0i16; 32];
    for j in 0..16 {
        w[j] = (qs[j] & 0x0F) as i16;
        w[j + 16] = (qs[j] >> 4) as i16;
    }
    isum16(&w, qa)
}

/// `Σ_j q_w[j]·q_a[j]` of a 5-bit block: the 4-bit layout plus bit `j` of `qh` as weight `j`'s
/// fifth bit.
#[inline(always)]
fn isum_q5(qh: &[u8; 4], qs: &[u8; 16], qa: &[i16; 32]) -> i32 {
    let h = u32::from_le_bytes(*qh);
    let mut w = [0i16; 32];
    for j in 0..16 {
        w[j] = ((qs[j] & 0x0F) as u32 | (((h >> j) & 1) << 4)) as i16;
        w[j + 16] = ((qs[j] >> 4) as u32 | (((h >> (j + 16)) & 1) << 4)) as i16;
    }
    isum16(&w, qa)
}

/// The portable kernel for blocks of `BB` bytes: `isum` takes a block's integer dot product,
/// `scales` its `(d, c)`: the weight scale and what multiplies `d_a Σ q_a`.
#[inline(always)]
fn rows_portable<const N: usize, const BB: usize>(
    w: &[u8],
    a: &[ActRow<'_>; N],
    isum: impl Fn(&[u8; BB], &[i16; QK]) -> i32,
    scales: impl Fn(&[u8; BB]) -> (f32, f32),
) -> [f32; N] {
    let mut out = [0f32; N];
    let (blocks, rest) = w.as_chunks::<BB>();
    assert!(rest.is_empty(), "dot_rows_portable: a row of {} bytes is not whole {BB}-byte blocks", w.len());
    for (n, a) in a.iter().enumerate() {
        let (qa, _) = a.q.as_chunks::<QK>();
        assert!(
            qa.len() >= blocks.len() && a.d.len() >= blocks.len(),
            "dot_rows_portable: activations shorter than the row"
        );
        let (mut acc, mut corr) = (0f32, 0f32);
        // Eight blocks at a time: their integer sums first, then their scales. (With both in
        // one loop body, LLVM pairs up the scale conversions and leaves the sums scalar.)
        for (g, grp) in blocks.chunks(8).enumerate() {
            let mut is = [0i32; 8];
            for (k, blk) in grp.iter().enumerate() {
                is[k] = isum(blk, &qa[g * 8 + k]);
            }
            for (k, blk) in grp.iter().enumerate() {
                let b = g * 8 + k;
                let (d, c) = scales(blk);
                acc += d * a.d[b] * is[k] as f32;
                corr += c * a.sd[b];
            }
        }
        out[n] = acc + corr;
    }
    out
}

/// `Σ_k W[row, k] · a[k]` for `N` activation rows at once (portable path).
fn dot_rows_portable<const N: usize>(ty: QuantType, w: &[u8], a: &[ActRow<'_>; N]) -> [f32; N] {
    fn sub<const M: usize>(blk: &[u8], at: usize) -> &[u8; M] {
        blk[at..at + M].try_into().expect("a block holds its fields")
    }
    let f16 = simd::f16_table();
    let h = |b: &[u8], at: usize| f16[u16::from_le_bytes([b[at], b[at + 1]]) as usize];
    match ty {
        QuantType::Q8_0 => rows_portable::<N, 34>(w, a, |b, qa| isum_q8(sub(b, 2), qa), |b| (h(b, 0), 0.0)),
        QuantType::Q4_0 => rows_portable::<N, 18>(
            w,
            a,
            |b, qa| isum_q4(sub(b, 2), qa),
            |b| {
                let d = h(b, 0);
                (d, -8.0 * d)
            },
        ),
        QuantType::Q4_1 => rows_portable::<N, 20>(w, a, |b, qa| isum_q4(sub(b, 4), qa), |b| (h(b, 0), h(b, 2))),
        QuantType::Q5_0 => rows_portable::<N, 22>(
            w,
            a,
            |b, qa| isum_q5(sub(b, 2), sub(b, 6), qa),
            |b| {
                let d = h(b, 0);
                (d, -16.0 * d)
            },
        ),
        QuantType::Q5_1 => {
            rows_portable::<N, 24>(w, a, |b, qa| isum_q5(sub(b, 4), sub(b, 8), qa), |b| (h(b, 0), h(b, 2)))
        }
        _ => unreachable!("dot_rows_portable: {ty} does not use quantized activations"),
    }
}

// ---------------------------------------------------------------------------------------------
// x86 kernels: 16-bit multiply-adds (`vpmaddwd`) on 256-bit (AVX2) and 512-bit (AVX-512BW) vectors.

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{ActRow, QuantType, QK};
    use std::arch::x86_64::*;

    // SAFETY (every function in this module): it runs only inside functions compiled with the
    // target features its intrinsics need, which the dispatcher checked at run time.

    /// Σ of the 8 f32 lanes.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    /// The 32 weights of a block as bytes in weight order: for the 4-bit formats, the low
    /// nibbles are weights 0–15 (low lane) and the high nibbles 16–31 (high lane); the 5-bit
    /// formats add bit `j` of `qh` as bit 4 of byte `j` (byte `j/8` of `qh` spread over eight
    /// lanes, each testing its own bit).
    #[inline(always)]
    unsafe fn block_bytes(ty: QuantType, blk: *const u8) -> __m256i {
        unsafe {
            match ty {
                QuantType::Q8_0 => _mm256_loadu_si256(blk.add(2) as *const __m256i),
                QuantType::Q5_0 | QuantType::Q5_1 => {
                    let (qh_at, qs_at) = if ty == QuantType::Q5_0 { (2, 6) } else { (4, 8) };
                    let qs = _mm_loadu_si128(blk.add(qs_at) as *const __m128i);
                    let low = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(qs, 4), qs), _mm256_set1_epi8(0x0F));
                    let qh = _mm256_set1_epi32((blk.add(qh_at) as *const i32).read_unaligned());
                    let spread = _mm256_shuffle_epi8(
                        qh,
                        _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0),
                    );
                    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
                    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
                    _mm256_or_si256(low, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
                }
                _ => {
                    let qs = _mm_loadu_si128(blk.add(if ty == QuantType::Q4_0 { 2 } else { 4 }) as *const __m128i);
                    let both = _mm256_set_m128i(_mm_srli_epi16(qs, 4), qs);
                    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
                }
            }
        }
    }

    /// `(d, c)` of a block: the weight scale, and what multiplies `d_a Σ q_a` (−8d for
    /// Q4_0, −16d for Q5_0, the minimum for Q4_1 and Q5_1, 0 for Q8_0); the f16 header
    /// converted with F16C.
    #[inline(always)]
    unsafe fn block_scales(ty: QuantType, blk: &[u8]) -> (f32, f32) {
        unsafe {
            let f = _mm_cvtph_ps(_mm_cvtsi32_si128((blk.as_ptr() as *const i32).read_unaligned()));
            let d = _mm_cvtss_f32(f);
            match ty {
                QuantType::Q8_0 => (d, 0.0),
                QuantType::Q4_0 => (d, -8.0 * d),
                QuantType::Q5_0 => (d, -16.0 * d),
                _ => (d, _mm_cvtss_f32(_mm_movehdup_ps(f))),
            }
        }
    }

    /// The 32 weights of a block widened to 16 bits, as two AVX2 vectors (weights 0–15, 16–31).
    #[inline(always)]
    unsafe fn widen_avx2(ty: QuantType, blk: *const u8) -> (__m256i, __m256i) {
        unsafe {
            let wb = block_bytes(ty, blk);
            let (lo, hi) = (_mm256_castsi256_si128(wb), _mm256_extracti128_si256(wb, 1));
            if ty == QuantType::Q8_0 {
                (_mm256_cvtepi8_epi16(lo), _mm256_cvtepi8_epi16(hi))
            } else {
                (_mm256_cvtepu8_epi16(lo), _mm256_cvtepu8_epi16(hi))
            }
        }
    }

    /// The 32 weights of a block widened to 16 bits in one AVX-512 vector.
    #[inline(always)]
    unsafe fn widen_avx512(ty: QuantType, blk: *const u8) -> __m512i {
        unsafe {
            let wb = block_bytes(ty, blk);
            if ty == QuantType::Q8_0 {
                _mm512_cvtepi8_epi16(wb)
            } else {
                _mm512_cvtepu8_epi16(wb)
            }
        }
    }

    /// `Σ_j q_w[j]·q_a[j]` of one 32-weight block at `p` and its activations at `qa`, as 8
    /// partial sums (AVX2): the weights widened to 16 bits, `vpmaddwd` against the 16-bit
    /// activations. A 4-bit block's 16 bytes widen in one instruction; the low nibbles are
    /// weights 0–15 and the high nibbles (a shift: the byte is < 256) weights 16–31.
    #[inline(always)]
    unsafe fn block_isum_avx2(ty: QuantType, p: *const u8, qa: *const i16) -> __m256i {
        unsafe {
            let (w0, w1) = match ty {
                QuantType::Q8_0 => (
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(2).cast())),
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(18).cast())),
                ),
                QuantType::Q5_0 | QuantType::Q5_1 => {
                    let wb = block_bytes(ty, p);
                    (
                        _mm256_cvtepu8_epi16(_mm256_castsi256_si128(wb)),
                        _mm256_cvtepu8_epi16(_mm256_extracti128_si256(wb, 1)),
                    )
                }
                _ => {
                    let v =
                        _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(if ty == QuantType::Q4_0 { 2 } else { 4 }).cast()));
                    (_mm256_and_si256(v, _mm256_set1_epi16(0x0F)), _mm256_srli_epi16(v, 4))
                }
            };
            let a0 = _mm256_loadu_si256(qa.cast());
            let a1 = _mm256_loadu_si256(qa.add(16).cast());
            _mm256_add_epi32(_mm256_madd_epi16(w0, a0), _mm256_madd_epi16(w1, a1))
        }
    }

    /// The factors of two blocks at `p0` and `p1`, `[d0, c0, d1, c1]` (`c` as in
    /// [`block_scales`]), from one F16C conversion of both blocks' f16 headers.
    #[inline(always)]
    unsafe fn pair_factors(ty: QuantType, p0: *const u8, p1: *const u8) -> __m128 {
        unsafe {
            let h0 = (p0 as *const i32).read_unaligned();
            let h1 = (p1 as *const i32).read_unaligned();
            // [d0, m0, d1, m1] for Q4_1 and Q5_1; for the others the odd lanes are other bytes.
            let f = _mm_cvtph_ps(_mm_set_epi32(0, 0, h1, h0));
            match ty {
                QuantType::Q4_1 | QuantType::Q5_1 => f,
                QuantType::Q4_0 => _mm_mul_ps(_mm_moveldup_ps(f), _mm_set_ps(-8.0, 1.0, -8.0, 1.0)),
                QuantType::Q5_0 => _mm_mul_ps(_mm_moveldup_ps(f), _mm_set_ps(-16.0, 1.0, -16.0, 1.0)),
                _ => _mm_and_ps(f, _mm_castsi128_ps(_mm_set_epi32(0, -1, 0, -1))),
            }
        }
    }

    /// `Σ_k W[row, k]·a[k]` for one activation row (decoding), AVX2: two blocks per step,
    /// their scales converted and multiplied as one vector.
    ///
    /// `TILE_ORDER = false` (the fastest): even and odd blocks go to two accumulators, so two
    /// chains of fused multiply-adds overlap; the offset terms `c·d_a·Σq_a` are summed in the
    /// odd lanes of another vector. `TILE_ORDER = true`: the sums run in exactly the order of
    /// the tile kernel [`dot8_avx2`] for each of its rows — one accumulator, block after block;
    /// the offset terms added by a fused multiply-add, block after block — so a token's result
    /// is bitwise the same alone or in a tile (batch-invariant products).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot1_avx2<const TILE_ORDER: bool>(ty: QuantType, w: &[u8], a: ActRow<'_>) -> f32 {
        // One copy of the loop per format, so that no test of `ty` is left inside it (the
        // compiler does not always hoist it by itself: 15% slower when it did not).
        unsafe {
            match ty {
                QuantType::Q8_0 => dot1_body::<TILE_ORDER>(QuantType::Q8_0, w, a),
                QuantType::Q4_0 => dot1_body::<TILE_ORDER>(QuantType::Q4_0, w, a),
                QuantType::Q4_1 => dot1_body::<TILE_ORDER>(QuantType::Q4_1, w, a),
                QuantType::Q5_0 => dot1_body::<TILE_ORDER>(QuantType::Q5_0, w, a),
                QuantType::Q5_1 => dot1_body::<TILE_ORDER>(QuantType::Q5_1, w, a),
                _ => dot1_body::<TILE_ORDER>(ty, w, a),
            }
        }
    }

    /// The loop of [`dot1_avx2`] (inlined into it, with its target features).
    #[inline(always)]
    unsafe fn dot1_body<const TILE_ORDER: bool>(ty: QuantType, w: &[u8], a: ActRow<'_>) -> f32 {
        unsafe {
            let bb = ty.block_bytes();
            let nb = w.len() / bb;
            assert!(a.q.len() >= nb * QK && a.dsd.len() >= 2 * nb, "dot1: activations shorter than the row");
            let (wp, qp, dsp) = (w.as_ptr(), a.q.as_ptr(), a.dsd.as_ptr());
            let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            // The offset terms: lanes 1 and 3 (even, odd blocks) or, in tile order, lane 0.
            let mut corr = _mm_setzero_ps();
            let mut b = 0;
            while b + 2 <= nb {
                let (p0, p1) = (wp.add(b * bb), wp.add((b + 1) * bb));
                let ds = _mm_loadu_ps(dsp.add(2 * b));
                // f = [d0, c0, d1, c1]; s = f·ds = [d0·d_a0, c0·sd0, d1·d_a1, c1·sd1].
                let f = pair_factors(ty, p0, p1);
                let s = _mm_mul_ps(f, ds);
                let i0 = _mm256_cvtepi32_ps(block_isum_avx2(ty, p0, qp.add(b * QK)));
                let i1 = _mm256_cvtepi32_ps(block_isum_avx2(ty, p1, qp.add((b + 1) * QK)));
                let (s0, s1) = (_mm256_broadcastss_ps(s), _mm256_broadcastss_ps(_mm_movehl_ps(s, s)));
                if TILE_ORDER {
                    let (c, sd) = (_mm_movehdup_ps(f), _mm_movehdup_ps(ds));
                    corr = _mm_fmadd_ss(c, sd, corr);
                    corr = _mm_fmadd_ss(_mm_movehl_ps(c, c), _mm_movehl_ps(sd, sd), corr);
                    acc0 = _mm256_fmadd_ps(i1, s1, _mm256_fmadd_ps(i0, s0, acc0));
                } else {
                    corr = _mm_add_ps(corr, s);
                    acc0 = _mm256_fmadd_ps(i0, s0, acc0);
                    acc1 = _mm256_fmadd_ps(i1, s1, acc1);
                }
                b += 2;
            }
            if b < nb {
                // The last block alone: its pair is itself, the second half of `ds` zero.
                let p0 = wp.add(b * bb);
                let ds = _mm_castpd_ps(_mm_load_sd(dsp.add(2 * b).cast()));
                let f = pair_factors(ty, p0, p0);
                let s = _mm_mul_ps(f, ds);
                if TILE_ORDER {
                    corr = _mm_fmadd_ss(_mm_movehdup_ps(f), _mm_movehdup_ps(ds), corr);
                } else {
                    corr = _mm_add_ps(corr, s);
                }
                let i0 = block_isum_avx2(ty, p0, qp.add(b * QK));
                acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), _mm256_broadcastss_ps(s), acc0);
            }
            if TILE_ORDER {
                _mm_cvtss_f32(corr) + hsum(acc0)
            } else {
                let c = _mm_add_ss(_mm_movehdup_ps(corr), _mm_movehl_ps(corr, _mm_movehdup_ps(corr)));
                hsum(_mm256_add_ps(acc0, acc1)) + _mm_cvtss_f32(c)
            }
        }
    }

    /// `Σ_k W[row, k]·a[k]` for a Q4_K, Q5_K or Q6_K row and one row of 16-bit activations
    /// (AVX2): each 32-weight sub-block's codes widened to 16 bits and multiplied with its
    /// activation block by `vpmaddwd`; Q6_K's two 16-weight halves keep separate sums for their
    /// two scales.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot1_k_avx2(ty: QuantType, w: &[u8], a: ActRow<'_>) -> f32 {
        unsafe {
            let bb = ty.block_bytes();
            let nb = w.len() / bb;
            assert!(a.q.len() >= nb * 256 && a.d.len() >= nb * 8, "dot1_k: activations shorter than the row");
            let qp = a.q.as_ptr();
            let (mut acc, mut corr) = (_mm256_setzero_ps(), 0f32);
            let low4 = _mm256_set1_epi8(0x0F);
            // One sub-block of 32 codes (bytes) times activation block `ab`, scaled by `s`.
            let madd32 = |acc: __m256, q: __m256i, ab: usize, s: f32| {
                let p = qp.add(ab * QK);
                let i0 =
                    _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(q)), _mm256_loadu_si256(p.cast()));
                let i1 = _mm256_madd_epi16(
                    _mm256_cvtepu8_epi16(_mm256_extracti128_si256(q, 1)),
                    _mm256_loadu_si256(p.add(16).cast()),
                );
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(i0, i1)), _mm256_set1_ps(s), acc)
            };
            for (i, b) in w.chunks_exact(bb).enumerate() {
                let bp = b.as_ptr();
                let hd = _mm_cvtph_ps(_mm_cvtsi32_si128(
                    (bp.add(if ty == QuantType::Q6K { 208 } else { 0 }) as *const i32).read_unaligned(),
                ));
                let d = _mm_cvtss_f32(hd);
                if ty == QuantType::Q6K {
                    let m32 = _mm256_set1_epi16(32);
                    for h in 0..2 {
                        let qh = _mm256_loadu_si256(bp.add(128 + 32 * h).cast());
                        for r in 0..4 {
                            let ql = _mm256_loadu_si256(bp.add(64 * h + 32 * (r % 2)).cast());
                            let lo =
                                _mm256_and_si256(_mm256_srl_epi16(ql, _mm_cvtsi32_si128(4 * (r as i32 / 2))), low4);
                            let hi = _mm256_and_si256(
                                _mm256_slli_epi16(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * r as i32)), 4),
                                _mm256_set1_epi8(0x30),
                            );
                            let q = _mm256_or_si256(lo, hi);
                            let ab = 8 * i + 4 * h + r;
                            let p = qp.add(ab * QK);
                            let w0 = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(q)), m32);
                            let w1 = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(q, 1)), m32);
                            let i0 = _mm256_cvtepi32_ps(_mm256_madd_epi16(w0, _mm256_loadu_si256(p.cast())));
                            let i1 = _mm256_cvtepi32_ps(_mm256_madd_epi16(w1, _mm256_loadu_si256(p.add(16).cast())));
                            let da = d * a.d[ab];
                            let (s0, s1) =
                                (*bp.add(192 + 8 * h + 2 * r) as i8 as f32, *bp.add(193 + 8 * h + 2 * r) as i8 as f32);
                            acc = _mm256_fmadd_ps(i0, _mm256_set1_ps(da * s0), acc);
                            acc = _mm256_fmadd_ps(i1, _mm256_set1_ps(da * s1), acc);
                        }
                    }
                } else {
                    let dmin = _mm_cvtss_f32(_mm_movehdup_ps(hd));
                    let scales = &b[4..16];
                    let (qs_at, qh) = if ty == QuantType::Q4K {
                        (16, _mm256_setzero_si256())
                    } else {
                        (48, _mm256_loadu_si256(bp.add(16).cast()))
                    };
                    for pair in 0..4 {
                        let v = _mm256_loadu_si256(bp.add(qs_at + 32 * pair).cast());
                        let (mut q0, mut q1) =
                            (_mm256_and_si256(v, low4), _mm256_and_si256(_mm256_srli_epi16(v, 4), low4));
                        if ty == QuantType::Q5K {
                            // Bit j of qh[l] is the fifth bit of weight l of sub-block j.
                            let one = _mm256_set1_epi8(1);
                            let b0 = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * pair as i32)), one);
                            let b1 =
                                _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * pair as i32 + 1)), one);
                            q0 = _mm256_or_si256(q0, _mm256_slli_epi16(b0, 4));
                            q1 = _mm256_or_si256(q1, _mm256_slli_epi16(b1, 4));
                        }
                        for (j, q) in [(2 * pair, q0), (2 * pair + 1, q1)] {
                            let (sc, m) = crate::quant::q4_k_scale_min(scales, j);
                            let ab = 8 * i + j;
                            acc = madd32(acc, q, ab, d * sc as f32 * a.d[ab]);
                            corr += dmin * m as f32 * a.sd[ab];
                        }
                    }
                }
            }
            hsum(acc) - corr
        }
    }

    /// A tile of 8 activation rows: the 16-bit values of row `n` at `q + n·cols`, and the
    /// transposed scales (see [`super::QuantizedActs::dt`]).
    #[derive(Clone, Copy)]
    pub(super) struct Tile<'a> {
        pub(super) q: &'a [i16],
        pub(super) cols: usize,
        pub(super) dt: &'a [f32],
        pub(super) sdt: &'a [f32],
    }

    /// `Σ_k W[row, k]·a_n[k]` for a tile of 8 rows (prefill), AVX2: each block is widened once
    /// and its 8 rescales `d_w·d_a[n]` are one vector multiply. Each row's sums run in
    /// the order of [`dot1_avx2`] with `TILE_ORDER`, so a row's result does not depend on the
    /// tile it is in.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot8_avx2(ty: QuantType, w: &[u8], t: Tile<'_>) -> [f32; 8] {
        unsafe {
            let bb = ty.block_bytes();
            let mut acc = [_mm256_setzero_ps(); 8];
            let mut corr = _mm256_setzero_ps();
            let mut sv = [0f32; 8];
            for (b, blk) in w.chunks_exact(bb).enumerate() {
                let (d, c) = block_scales(ty, blk);
                let s = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_loadu_ps(t.dt.as_ptr().add(b * 8)));
                corr = _mm256_fmadd_ps(_mm256_set1_ps(c), _mm256_loadu_ps(t.sdt.as_ptr().add(b * 8)), corr);
                _mm256_storeu_ps(sv.as_mut_ptr(), s);
                let (w0, w1) = widen_avx2(ty, blk.as_ptr());
                for n in 0..8 {
                    let p = t.q.as_ptr().add(n * t.cols + b * QK);
                    let a0 = _mm256_loadu_si256(p as *const __m256i);
                    let a1 = _mm256_loadu_si256(p.add(16) as *const __m256i);
                    let sum = _mm256_add_epi32(_mm256_madd_epi16(w0, a0), _mm256_madd_epi16(w1, a1));
                    acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(sv[n]), acc[n]);
                }
            }
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), corr);
            for n in 0..8 {
                out[n] += hsum(acc[n]);
            }
            out
        }
    }

    /// The tile kernel with AVX-512BW.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn dot8_avx512(ty: QuantType, w: &[u8], t: Tile<'_>) -> [f32; 8] {
        unsafe {
            let bb = ty.block_bytes();
            let mut acc = [_mm512_setzero_ps(); 8];
            let mut corr = _mm256_setzero_ps();
            let mut sv = [0f32; 8];
            for (b, blk) in w.chunks_exact(bb).enumerate() {
                let (d, c) = block_scales(ty, blk);
                let s = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_loadu_ps(t.dt.as_ptr().add(b * 8)));
                corr = _mm256_fmadd_ps(_mm256_set1_ps(c), _mm256_loadu_ps(t.sdt.as_ptr().add(b * 8)), corr);
                _mm256_storeu_ps(sv.as_mut_ptr(), s);
                let w16 = widen_avx512(ty, blk.as_ptr());
                for n in 0..8 {
                    let a16 = _mm512_loadu_si512(t.q.as_ptr().add(n * t.cols + b * QK) as *const __m512i);
                    let sum = _mm512_madd_epi16(w16, a16);
                    acc[n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(sv[n]), acc[n]);
                }
            }
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), corr);
            for n in 0..8 {
                out[n] += _mm512_reduce_add_ps(acc[n]);
            }
            out
        }
    }

    /// `Σ_k W[row, k]·a_n[k]` for `N ≤ 16` token rows in bf16 (AVX-512 BF16): each 32-weight
    /// block is dequantized once, in registers (`d·q + c` in f32, then rounded to bf16 pairs),
    /// and multiplied with every row's bf16 activations by one `vdpbf16ps` (32 multiply-adds
    /// into 16 f32 lanes). `a` holds the rows as bf16 pairs, `pairs` per row.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn dotn_bf16<const N: usize>(ty: QuantType, w: &[u8], a: &[u32], pairs: usize) -> [f32; N] {
        unsafe {
            let bb = ty.block_bytes();
            let mut acc = [_mm512_setzero_ps(); N];
            let nibbles = _mm512_set1_epi32(0x0F);
            for (b, blk) in w.chunks_exact(bb).enumerate() {
                let wv = block_bf16(ty, blk.as_ptr(), nibbles);
                let at = a.as_ptr().add(b * QK / 2);
                for (n, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_loadu_si512(at.add(n * pairs).cast());
                    *acc = _mm512_dpbf16_ps(*acc, wv, std::mem::transmute::<__m512i, __m512bh>(av));
                }
            }
            std::array::from_fn(|n| _mm512_reduce_add_ps(acc[n]))
        }
    }

    /// The 32-weight block at `p` dequantized (`d·q + c` in f32) and rounded to 32 bf16, in
    /// weight order.
    #[inline(always)]
    unsafe fn block_bf16(ty: QuantType, p: *const u8, nibbles: __m512i) -> __m512bh {
        unsafe {
            // The f16 scale (and Q4_1's minimum) in f32, with F16C.
            let sc = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
            let d = _mm512_broadcastss_ps(sc);
            let (i0, i1, c) = match ty {
                QuantType::Q8_0 => {
                    let i0 = _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(2).cast()));
                    let i1 = _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(18).cast()));
                    (i0, i1, _mm512_setzero_ps())
                }
                QuantType::Q5_0 | QuantType::Q5_1 => {
                    let wb = block_bytes(ty, p);
                    let c = if ty == QuantType::Q5_0 {
                        _mm512_mul_ps(d, _mm512_set1_ps(-16.0))
                    } else {
                        _mm512_broadcastss_ps(_mm_movehdup_ps(sc))
                    };
                    (
                        _mm512_cvtepu8_epi32(_mm256_castsi256_si128(wb)),
                        _mm512_cvtepu8_epi32(_mm256_extracti128_si256(wb, 1)),
                        c,
                    )
                }
                _ => {
                    // Byte j holds weight j (low nibble) and weight j + 16 (high nibble).
                    let q4 = if ty == QuantType::Q4_0 { 2 } else { 4 };
                    let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(q4).cast()));
                    let c = if ty == QuantType::Q4_0 {
                        _mm512_mul_ps(d, _mm512_set1_ps(-8.0))
                    } else {
                        _mm512_broadcastss_ps(_mm_movehdup_ps(sc))
                    };
                    (_mm512_and_si512(v, nibbles), _mm512_srli_epi32(v, 4), c)
                }
            };
            let f0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0), d, c); // weights 0–15
            let f1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1), d, c); // weights 16–31
            _mm512_cvtne2ps_pbh(f1, f0)
        }
    }

    /// How far ahead of the block being multiplied the bf16 tile kernel prefetches weights.
    const PREFETCH_AHEAD: usize = 1024;

    /// `dotn_bf16::<8>` for two weight rows at once: each activation load serves both.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn dot8x2_bf16(ty: QuantType, w0: &[u8], w1: &[u8], a: &[u32], pairs: usize) -> [[f32; 8]; 2] {
        unsafe {
            let bb = ty.block_bytes();
            let mut a0 = [_mm512_setzero_ps(); 8];
            let mut a1 = [_mm512_setzero_ps(); 8];
            let nibbles = _mm512_set1_epi32(0x0F);
            for b in 0..w0.len() / bb {
                // The weights stream from memory while the arithmetic per byte is 8× that of
                // one token: ask for the bytes a few blocks ahead (past the row's end that is
                // the next rows, which are the next to come; a prefetch never faults).
                _mm_prefetch(w0.as_ptr().wrapping_add(b * bb + PREFETCH_AHEAD) as *const i8, _MM_HINT_T0);
                _mm_prefetch(w1.as_ptr().wrapping_add(b * bb + PREFETCH_AHEAD) as *const i8, _MM_HINT_T0);
                let wv0 = block_bf16(ty, w0.as_ptr().add(b * bb), nibbles);
                let wv1 = block_bf16(ty, w1.as_ptr().add(b * bb), nibbles);
                let at = a.as_ptr().add(b * QK / 2);
                for n in 0..8 {
                    let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(at.add(n * pairs).cast()));
                    a0[n] = _mm512_dpbf16_ps(a0[n], wv0, av);
                    a1[n] = _mm512_dpbf16_ps(a1[n], wv1, av);
                }
            }
            [std::array::from_fn(|n| _mm512_reduce_add_ps(a0[n])), std::array::from_fn(|n| _mm512_reduce_add_ps(a1[n]))]
        }
    }

    pub(super) fn avx512bw_supported() -> bool {
        std::arch::is_x86_feature_detected!("avx512bw")
    }
}

/// The instruction set a quantized kernel runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QKernel {
    /// AVX-512BW (`vpmaddwd` on 512-bit vectors).
    Avx512,
    /// AVX2 + FMA (`vpmaddwd` on 256-bit vectors).
    Avx2,
    /// Plain Rust.
    Portable,
}

/// The fastest kernel this CPU runs (capped by `YUANLI_SIMD=portable|avx2`, as for the f32
/// kernels).
pub fn best_qkernel() -> QKernel {
    match simd::simd_level() {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 if x86::avx512bw_supported() => QKernel::Avx512,
        SimdLevel::Avx512 | SimdLevel::Avx2 => QKernel::Avx2,
        SimdLevel::Portable => QKernel::Portable,
    }
}

/// Whether this CPU can run `k`.
pub fn qkernel_supported(k: QKernel) -> bool {
    match k {
        QKernel::Portable => true,
        #[cfg(target_arch = "x86_64")]
        QKernel::Avx2 => simd::level_supported(SimdLevel::Avx2),
        #[cfg(target_arch = "x86_64")]
        QKernel::Avx512 => simd::level_supported(SimdLevel::Avx512) && x86::avx512bw_supported(),
        #[cfg(not(target_arch = "x86_64"))]
        _ => false,
    }
}

/// `Σ_k W[row, k] · a[k]` for one row of quantized activations, with kernel `k`;
/// `invariant`: summed in the order of the tile kernel [`dot8`] (see [`x86::dot1_avx2`]).
#[inline]
#[allow(unused_variables)] // `invariant` matters on x86 only: the portable kernel sums each row alike
fn dot1(k: QKernel, ty: QuantType, w: &[u8], a: ActRow<'_>, invariant: bool) -> f32 {
    match k {
        // One row is bound by reading the weights: the AVX2 kernel (two blocks per step, their
        // scales as one vector) streams them as fast as 512-bit vectors do (measured), so both
        // levels run it.
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `qmatmul_with` checked `qkernel_supported(k)`; AVX-512 implies AVX2.
        QKernel::Avx512 | QKernel::Avx2 => unsafe {
            match ty {
                QuantType::Q4K | QuantType::Q5K | QuantType::Q6K => x86::dot1_k_avx2(ty, w, a),
                _ if invariant => x86::dot1_avx2::<true>(ty, w, a),
                _ => x86::dot1_avx2::<false>(ty, w, a),
            }
        },
        _ => dot_rows_portable(ty, w, &[a])[0],
    }
}

/// The same for the tile of rows `8·tile .. 8·tile + 8`. Batch-invariant acts: each row's result
/// bitwise equal to [`dot1`]'s (the AVX2 tile kernel, whose sums run in `dot1`'s order, at
/// both x86 levels; the AVX-512 one sums 16 lanes where `dot1` sums 8).
#[inline]
fn dot8(k: QKernel, ty: QuantType, w: &[u8], acts: &QuantizedActs, tile: usize) -> [f32; TILE] {
    #[cfg(target_arch = "x86_64")]
    {
        let nb = acts.cols / QK;
        let t = x86::Tile {
            q: &acts.q[tile * TILE * acts.cols..(tile + 1) * TILE * acts.cols],
            cols: acts.cols,
            dt: &acts.dt[tile * nb * TILE..(tile + 1) * nb * TILE],
            sdt: &acts.sdt[tile * nb * TILE..(tile + 1) * nb * TILE],
        };
        match k {
            // SAFETY: `qmatmul_with` checked `qkernel_supported(k)`.
            QKernel::Avx512 if !acts.batch_invariant => return unsafe { x86::dot8_avx512(ty, w, t) },
            // SAFETY: as above.
            QKernel::Avx2 | QKernel::Avx512 => return unsafe { x86::dot8_avx2(ty, w, t) },
            QKernel::Portable => {}
        }
    }
    let rows: [ActRow<'_>; TILE] = std::array::from_fn(|n| acts.row(tile * TILE + n));
    dot_rows_portable(ty, w, &rows)
}

/// [`x86::dotn_bf16`] for `out.len() ≤ 8` rows of bf16 pairs in `a`.
#[allow(unused_variables)]
fn tile_bf16(ty: QuantType, w: &[u8], a: &[u32], pairs: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! go {
            ($n:literal) => {{
                // SAFETY: the caller took this route only after `uses_bf16_route` saw AVX-512
                // BF16 (and AVX-512BW, F16C); `a` holds $n rows of `pairs` pairs.
                let v = unsafe { x86::dotn_bf16::<$n>(ty, w, a, pairs) };
                out.copy_from_slice(&v);
            }};
        }
        match out.len() {
            1 => go!(1),
            2 => go!(2),
            3 => go!(3),
            4 => go!(4),
            5 => go!(5),
            6 => go!(6),
            7 => go!(7),
            8 => go!(8),
            n => unreachable!("tile_bf16: {n} rows"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the bf16 tile route exists only on x86_64");
}

/// `Σ_k W[row, k] · x[k]` for a K-quant (or other non-integer-route) row: 256 weights at a
/// time decoded to the stack, then an f32 dot product ([`simd::dequant_dot`]).
fn dot_row_f32(ty: QuantType, w: &[u8], x: &[f32]) -> f32 {
    simd::dequant_dot(ty, w, x)
}

/// From this many tokens on, [`qmatmul`] dequantizes panels of weights and runs an f32 GEMM
/// (or bf16, [`uses_bf16_gemm`]) — except where [`gemm_min_tokens`] says later.
pub const GEMM_MIN_TOKENS: usize = 16;

/// For the 32-weight formats with the x86 kernels, the tile kernels (bf16 with AVX-512 BF16,
/// else 16-bit integer) beat dequantizing panels up to this many tokens: a batch of 16–31
/// decoding sequences keeps them (`yuanli bench qmatmul`, Zen 4, 2 threads, Q4_1 1536×576:
/// bf16 tiles at t = 15 → 326 µs vs panels at t = 16 → 433 µs; AVX2, integer tiles at t = 8 →
/// 156 µs vs panels at t = 16 → 785 µs; at t = 32 the routes meet).
pub const GEMM_MIN_TOKENS_TILE: usize = 32;

/// The token count from which `ty` takes the GEMM route with `kernel`.
pub fn gemm_min_tokens(kernel: QKernel, ty: QuantType) -> usize {
    if kernel != QKernel::Portable && uses_quantized_acts(ty) {
        GEMM_MIN_TOKENS_TILE
    } else {
        GEMM_MIN_TOKENS
    }
}
/// Weight rows dequantized at once by the GEMM route (a per-thread buffer of `PANEL_ROWS·cols`).
const PANEL_ROWS: usize = 256;
/// Weight rows per panel of the bf16 route (a multiple of the 12-row micro-tile).
const PANEL_ROWS_BF16: usize = 240;

thread_local! {
    /// The GEMM route's dequantized weight panel, reused across calls on each thread.
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// One dequantized weight row, reused by every token of a small batch.
    static ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The bf16 route's panel (weight rows as bf16 pairs) and one dequantized f32 row.
    static PANEL_BF16: std::cell::RefCell<(Vec<u32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Whether prefill of weights `ty` with `kernel` takes the bf16 route ([`bf16gemm`]): with the
/// AVX-512 kernels on a CPU that has AVX-512 BF16, for the block-quantized formats and BF16.
/// F32 and F16 weights keep f32 arithmetic: whoever stores a model in them asked for their
/// precision (F16 has 11 significant bits, bf16 8).
pub fn uses_bf16_gemm(kernel: QKernel, ty: QuantType) -> bool {
    kernel == QKernel::Avx512 && !matches!(ty, QuantType::F32 | QuantType::F16) && bf16gemm::supported()
}

/// Whether `t` tokens of weights `ty` are multiplied in bf16 with `kernel`: prefill (`t ≥`
/// [`GEMM_MIN_TOKENS`], [`bf16gemm`]) and, for the 32-weight formats, any `t > 1` (several
/// sequences decoding together: the tile kernel `dotn_bf16`, whose arithmetic is a third of
/// the 16-bit integer route's). One token (single-sequence decoding) keeps the 16-bit integer
/// route: it is bound by reading the weights, not by arithmetic.
pub fn uses_bf16_route(kernel: QKernel, ty: QuantType, t: usize) -> bool {
    uses_bf16_gemm(kernel, ty) && (t >= gemm_min_tokens(kernel, ty) || (t > 1 && uses_quantized_acts(ty)))
}

/// A raw pointer that may cross threads; each thread writes a disjoint set of elements.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: used only to write disjoint indices from the threads of one `SpinPool::run`.
unsafe impl Send for SyncPtr {}
// SAFETY: as above.
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper, not the field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `y (t, rows) = x (t, cols) · Wᵀ` with `W (rows, cols)` stored as `ty` in `w`, on the
/// threads of `pool`, with the fastest kernel. `acts` is scratch for the quantized
/// activations (reused across calls: no allocation once warm).
#[track_caller]
#[allow(clippy::too_many_arguments)]
pub fn qmatmul(
    ty: QuantType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    t: usize,
    acts: &mut QuantizedActs,
    y: &mut [f32],
    pool: &SpinPool,
) {
    if acts.ggml_activations && ty != QuantType::F32 {
        let mut r = std::mem::take(&mut acts.ggml_rounded);
        r.clear();
        r.extend_from_slice(&x[..t * cols]);
        round_like_ggml(ty, &mut r, cols);
        qmatmul_with(best_qkernel(), ty, w, rows, cols, &r, t, acts, y, pool);
        acts.ggml_rounded = r;
        return;
    }
    qmatmul_with(best_qkernel(), ty, w, rows, cols, x, t, acts, y, pool)
}

/// [`qmatmul`] with an explicit kernel (tests run every supported one).
#[track_caller]
#[allow(clippy::too_many_arguments)]
pub fn qmatmul_with(
    kernel: QKernel,
    ty: QuantType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    t: usize,
    acts: &mut QuantizedActs,
    y: &mut [f32],
    pool: &SpinPool,
) {
    let rb = check_sizes(ty, w.len(), rows, cols, x.len(), t, y.len());
    assert!(qkernel_supported(kernel), "qmatmul: kernel {kernel:?} is not supported on this CPU");
    let threads = pool.threads();
    let out = SyncPtr(y.as_mut_ptr());
    let gemm_from = gemm_from(kernel, ty, acts.batch_invariant);
    if t >= gemm_from && uses_bf16_gemm(kernel, ty) {
        // Prefill with bf16 arithmetic: the activations are rounded and packed once; each
        // thread dequantizes its rows of W a panel at a time, rounds them to bf16 pairs, and
        // runs the `vdpbf16ps` kernel (twice the multiply-adds per instruction of f32 FMA).
        acts.bf16.pack(x, t, cols);
        let packed = &acts.bf16;
        let pairs = packed.pairs();
        pool.run(&|i| {
            let (r0, r1) = share(rows, i, threads, 4);
            PANEL_BF16.with(|bufs| {
                let (panel, row) = &mut *bufs.borrow_mut();
                row.resize(cols, 0.0);
                let mut p0 = r0;
                while p0 < r1 {
                    let p1 = (p0 + PANEL_ROWS_BF16).min(r1);
                    let n = p1 - p0;
                    let n_padded = n.next_multiple_of(bf16gemm::TILE_ROWS);
                    panel.resize(n_padded * pairs, 0);
                    for (j, dst) in panel.chunks_exact_mut(pairs).enumerate() {
                        if j < n {
                            dequantize_row(ty, &w[(p0 + j) * rb..(p0 + j + 1) * rb], row);
                            bf16gemm::pack_row(row, dst);
                        } else {
                            dst.fill(0);
                        }
                    }
                    // SAFETY: thread i writes only columns [p0, p1) ⊂ [r0, r1) of the t rows
                    // of y (row stride `rows`), a region no other thread touches.
                    unsafe { bf16gemm::gemm_panel(packed, &panel[..n_padded * pairs], n, out.get(), rows, p0) };
                    p0 = p1;
                }
            });
        });
    } else if t >= gemm_from {
        // Prefill: each thread dequantizes its rows of W, a panel at a time, into a reused
        // f32 buffer and multiplies with a single-threaded f32 GEMM (`gemm` crate). The
        // weights are decoded once per call instead of once per token tile, the arithmetic
        // runs at f32 FMA peak, and the activations stay exact.
        pool.run(&|i| {
            let (r0, r1) = share(rows, i, threads, 4);
            PANEL.with(|buf| {
                let mut buf = buf.borrow_mut();
                let mut p0 = r0;
                while p0 < r1 {
                    let p1 = (p0 + PANEL_ROWS).min(r1);
                    let n = p1 - p0;
                    // f32 weights (a parameter arena, an F32 tensor) are read in place.
                    let panel = match as_f32(ty, &w[p0 * rb..p1 * rb]) {
                        Some(f) => f,
                        None => {
                            buf.resize(n * cols, 0.0);
                            dequantize_row(ty, &w[p0 * rb..p1 * rb], &mut buf[..n * cols]);
                            &buf[..n * cols]
                        }
                    };
                    // SAFETY: thread i writes only columns [r0, r1) of y (rows·t values, row
                    // stride `rows`), a region no other thread touches.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(p0), (t - 1) * rows + n) };
                    super::gemm_into(
                        t,
                        cols,
                        n,
                        dst,
                        rows,
                        false,
                        x,
                        super::MatRef { off: 0, rs: cols, cs: 1 },
                        panel,
                        super::MatRef { off: 0, rs: 1, cs: cols },
                        1.0f32,
                        1,
                    );
                    p0 = p1;
                }
            });
        });
    } else {
        qmatmul_small(kernel, x, t, cols, &mut [QOut { ty, w, rows, y }], acts, pool);
    }
}

/// Checks that `W (rows, cols)` of `ty` fills `w_len` bytes, `x` holds `t·cols` values and `y`
/// `t·rows`; returns the bytes of one row.
#[track_caller]
fn check_sizes(ty: QuantType, w_len: usize, rows: usize, cols: usize, x_len: usize, t: usize, y_len: usize) -> usize {
    let row_bytes = ty.bytes_for(cols);
    assert!(
        row_bytes.is_some_and(|rb| rb * rows == w_len) && x_len == t * cols && y_len == t * rows,
        "qmatmul: W {rows}×{cols} {ty} in {w_len} bytes, x {x_len} values for t = {t}, y {y_len} values"
    );
    row_bytes.unwrap_or(0)
}

/// One product of [`qmatmul_many`]: `y (t, rows) = x · Wᵀ` with `W (rows, cols)` stored as
/// `ty` in `w`.
pub struct QOut<'a> {
    /// The weights' format.
    pub ty: QuantType,
    /// The weights, row by row.
    pub w: &'a [u8],
    /// Rows of `W` (outputs per token).
    pub rows: usize,
    /// The output, `(t, rows)`.
    pub y: &'a mut [f32],
}

/// Several products of the same input `x (t, cols)` — a layer's q, k and v projections, or
/// its gate and up — as one parallel job: the activations are prepared (quantized, rounded to
/// bf16) once, and the threads share the rows of all the matrices, so the team meets once
/// instead of once per matrix. At most 4 products; prefill-sized `t` runs them one by one.
#[track_caller]
pub fn qmatmul_many(
    x: &[f32],
    t: usize,
    cols: usize,
    outs: &mut [QOut<'_>],
    acts: &mut QuantizedActs,
    pool: &SpinPool,
) {
    let kernel = best_qkernel();
    if acts.ggml_activations {
        // each product rounds `x` for its own weight type
        for o in outs.iter_mut() {
            qmatmul(o.ty, o.w, o.rows, cols, x, t, acts, o.y, pool);
        }
        return;
    }
    if outs.iter().any(|o| t >= gemm_from(kernel, o.ty, acts.batch_invariant)) {
        for o in outs.iter_mut() {
            qmatmul_with(kernel, o.ty, o.w, o.rows, cols, x, t, acts, o.y, pool);
        }
        return;
    }
    for o in outs.iter() {
        check_sizes(o.ty, o.w.len(), o.rows, cols, x.len(), t, o.y.len());
    }
    qmatmul_small(kernel, x, t, cols, outs, acts, pool)
}

/// The routes for a few tokens (`t <` [`gemm_min_tokens`]), for one or more products of `x`
/// (sizes checked by the callers): each thread takes a share of all the products' rows, and
/// each row is multiplied with every token —
/// - in bf16 (`dotn_bf16`) where [`uses_bf16_route`] says so (several tokens, 32-weight
///   formats, AVX-512 BF16);
/// - with 16-bit quantized activations for the other 32-weight cases (tiles of 8 tokens, then
///   one at a time);
/// - in f32 for float weights and K-quants, the row dequantized once into a per-thread buffer
///   when several tokens share it.
fn qmatmul_small(
    kernel: QKernel,
    x: &[f32],
    t: usize,
    cols: usize,
    outs: &mut [QOut<'_>],
    acts: &mut QuantizedActs,
    pool: &SpinPool,
) {
    assert!(outs.len() <= 4, "qmatmul_many: {} products (at most 4)", outs.len());
    assert!(qkernel_supported(kernel), "qmatmul: kernel {kernel:?} is not supported on this CPU");
    let pairs = bf16gemm::pairs_for(cols);
    // Each product's route, its rows' start `first[k]` in the joint row count, its output.
    let mut routes = [Route::F32; 4];
    let mut first = [0usize; 5];
    let mut ptrs = [SyncPtr(std::ptr::null_mut()); 4];
    let invariant = acts.batch_invariant;
    for (k, o) in outs.iter_mut().enumerate() {
        routes[k] = Route::of(kernel, o.ty, t, invariant);
        first[k + 1] = first[k] + o.rows;
        ptrs[k] = SyncPtr(o.y.as_mut_ptr());
    }
    let routes = &routes[..outs.len()];
    if routes.contains(&Route::Bf16) {
        acts.bf16_rows.resize(t * pairs, 0);
        for (src, dst) in x.chunks_exact(cols).zip(acts.bf16_rows.chunks_exact_mut(pairs)) {
            bf16gemm::pack_row(src, dst);
        }
    }
    if routes.contains(&Route::Int16) {
        acts.quantize(x, t, cols);
    }
    let acts = &*acts;
    let outs = &*outs;
    let total = first[outs.len()];
    let threads = pool.threads();
    pool.run(&|i| {
        let (g0, g1) = share(total, i, threads, 4);
        for (k, o) in outs.iter().enumerate() {
            let (r0, r1) = (g0.max(first[k]) - first[k], g1.min(first[k + 1]).max(first[k]) - first[k]);
            let rb = o.ty.bytes_for(cols).unwrap_or(0);
            let out = ptrs[k];
            // SAFETY: thread i writes only rows [r0, r1) of product k's output rows (row
            // stride `o.rows`): its share of the joint rows, which no other thread has.
            let put = |tok: usize, r: usize, v: f32| unsafe { *out.get().add(tok * o.rows + r) = v };
            let mut r0 = r0;
            #[cfg(target_arch = "x86_64")]
            if t.is_multiple_of(2 * TILE) && routes[k] == Route::Bf16 {
                // 16, 32, … decoding sequences: each weight block decoded once per 16 tokens.
                for r in r0..r1 {
                    for t0 in (0..t).step_by(2 * TILE) {
                        // SAFETY: as in `tile_bf16`; the slice holds 16 rows of `pairs` pairs.
                        let v = unsafe {
                            x86::dotn_bf16::<16>(
                                o.ty,
                                &o.w[r * rb..(r + 1) * rb],
                                &acts.bf16_rows[t0 * pairs..(t0 + 2 * TILE) * pairs],
                                pairs,
                            )
                        };
                        for (n, &vn) in v.iter().enumerate() {
                            put(t0 + n, r, vn);
                        }
                    }
                }
                continue;
            }
            if t.is_multiple_of(TILE) && routes[k] == Route::Bf16 {
                // Two weight rows at a time against each tile of 8 tokens (a batch of 8, 16 or
                // 24 decoding sequences).
                while r0 + 2 <= r1 {
                    for t0 in (0..t).step_by(TILE) {
                        // SAFETY: as in `tile_bf16`.
                        let v = unsafe {
                            x86::dot8x2_bf16(
                                o.ty,
                                &o.w[r0 * rb..(r0 + 1) * rb],
                                &o.w[(r0 + 1) * rb..(r0 + 2) * rb],
                                &acts.bf16_rows[t0 * pairs..(t0 + TILE) * pairs],
                                pairs,
                            )
                        };
                        for n in 0..TILE {
                            put(t0 + n, r0, v[0][n]);
                            put(t0 + n, r0 + 1, v[1][n]);
                        }
                    }
                    r0 += 2;
                }
            }
            if t == 1 && routes[k] == Route::Int16 {
                // Decoding one token: the activation row is taken once, not once per weight row.
                let a = acts.row(0);
                for r in r0..r1 {
                    put(0, r, dot1(kernel, o.ty, &o.w[r * rb..(r + 1) * rb], a, invariant));
                }
                continue;
            }
            for r in r0..r1 {
                row_products(
                    routes[k],
                    kernel,
                    o.ty,
                    &o.w[r * rb..(r + 1) * rb],
                    x,
                    t,
                    cols,
                    acts,
                    pairs,
                    &mut |tok, v| put(tok, r, v),
                );
            }
        }
    });
}

/// How [`qmatmul_small`] multiplies the rows of one product (decided once per product).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// bf16 tiles of up to 8 tokens ([`uses_bf16_route`]).
    Bf16,
    /// 16-bit quantized activations (the 32-weight formats otherwise).
    Int16,
    /// f32 dot products (float weights, K-quants).
    F32,
}

impl Route {
    /// The route of `t` tokens of `ty` below the GEMM routes. Batch-invariant products
    /// (`QuantizedActs::batch_invariant`) are routed by the format only.
    fn of(kernel: QKernel, ty: QuantType, t: usize, invariant: bool) -> Route {
        if invariant {
            if uses_quantized_acts(ty) {
                Route::Int16
            } else {
                Route::F32
            }
        } else if uses_bf16_route(kernel, ty, t) {
            Route::Bf16
        } else if uses_int16_route(kernel, ty, t) {
            Route::Int16
        } else {
            Route::F32
        }
    }
}

/// The token count from which `ty` takes a GEMM route ([`gemm_min_tokens`]); never for a
/// batch-invariant product.
fn gemm_from(kernel: QKernel, ty: QuantType, invariant: bool) -> usize {
    if invariant {
        usize::MAX
    } else {
        gemm_min_tokens(kernel, ty)
    }
}

/// `Σ_k W[row, k]·x_t[k]` of one weight row `wr` for every token `t`, handed to `put(t, value)`
/// (`acts` prepared for `route`).
#[allow(clippy::too_many_arguments)]
fn row_products(
    route: Route,
    kernel: QKernel,
    ty: QuantType,
    wr: &[u8],
    x: &[f32],
    t: usize,
    cols: usize,
    acts: &QuantizedActs,
    pairs: usize,
    put: &mut dyn FnMut(usize, f32),
) {
    let invariant = acts.batch_invariant;
    if route == Route::Bf16 {
        for t0 in (0..t).step_by(TILE) {
            let m = TILE.min(t - t0);
            let mut v = [0f32; TILE];
            tile_bf16(ty, wr, &acts.bf16_rows[t0 * pairs..(t0 + m) * pairs], pairs, &mut v[..m]);
            v[..m].iter().enumerate().for_each(|(n, &vn)| put(t0 + n, vn));
        }
    } else if route == Route::Int16 {
        let tiles = t / TILE;
        for tile in 0..tiles {
            let v = dot8(kernel, ty, wr, acts, tile);
            v.iter().enumerate().for_each(|(n, &vn)| put(tile * TILE + n, vn));
        }
        for tok in tiles * TILE..t {
            put(tok, dot1(kernel, ty, wr, acts.row(tok), invariant));
        }
    } else if let Some(f) = as_f32(ty, wr) {
        for tok in 0..t {
            put(tok, simd::dot(f, &x[tok * cols..(tok + 1) * cols]));
        }
    } else if t == 1 && !invariant {
        put(0, dot_row_f32(ty, wr, &x[..cols]));
    } else {
        // Several tokens share each dequantized row.
        ROW.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.resize(cols, 0.0);
            dequantize_row(ty, wr, &mut buf[..cols]);
            for tok in 0..t {
                put(tok, simd::dot(&buf[..cols], &x[tok * cols..(tok + 1) * cols]));
            }
        });
    }
}

/// F32 weight bytes viewed as `f32`s, without a copy, when they are suitably aligned (they
/// are in a GGUF file, whose tensor data is aligned to 32 bytes, and in a parameter arena).
fn as_f32(ty: QuantType, w: &[u8]) -> Option<&[f32]> {
    if ty != QuantType::F32 || cfg!(target_endian = "big") {
        return None;
    }
    // SAFETY: every bit pattern is a valid f32; `align_to` puts only whole, aligned f32s in
    // the middle part, which is all we use (and only when nothing is left over).
    let (pre, mid, post) = unsafe { w.align_to::<f32>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_row;
    use crate::Rng;
    use half::f16;

    #[test]
    fn activations_round_as_ggml_rounds_them() {
        let mut rng = Rng::new(11);
        let x: Vec<f32> = (0..4 * 256).map(|_| rng.normal() as f32 * 3.0).collect();
        // 32-weight formats: Q8_0's blocks — our Q8_0 encoder (llama.cpp's reference) and
        // decoder give the same values, but for a rare tie the encoder breaks away from zero
        let mut r = x.clone();
        round_like_ggml(QuantType::Q4_0, &mut r, 256);
        let (mut bytes, mut back) = (Vec::new(), vec![0f32; x.len()]);
        quantize_row(QuantType::Q8_0, &x, &mut bytes).unwrap();
        dequantize_row(QuantType::Q8_0, &bytes, &mut back);
        let differ = r.iter().zip(&back).filter(|(a, b)| a != b).count();
        assert!(differ <= 2, "{differ} of {} values differ from Q8_0's", x.len());
        assert_ne!(r, x, "rounding changed something");
        // Q8_K (K-quants): the value of largest magnitude becomes exactly itself (q = ∓127),
        // every other one q/s with |q| ≤ 127
        let mut blk = vec![0.25f32; 256];
        blk[7] = -2.0;
        blk[8] = 1.0; // s = −127/−2 = 63.5; 63.5 rounds to 64 (ties to even): 64/63.5
        round_like_ggml(QuantType::Q4K, &mut blk, 256);
        assert_eq!(blk[7], -2.0);
        assert_eq!(blk[8], 64.0 / 63.5);
        assert_eq!(blk[0], (0.25f32 * 63.5).round_ties_even() / 63.5);
        // F16 matrices meet f16 activations; F32 ones the values as they are
        let mut h = vec![1.0f32 + 1e-4];
        round_like_ggml(QuantType::F16, &mut h, 1);
        assert_eq!(h[0], f16::from_f32(1.0 + 1e-4).to_f32());
        let mut same = x.clone();
        round_like_ggml(QuantType::F32, &mut same, 256);
        assert_eq!(same, x);
    }

    /// Random weights of `ty`: quantized from normals for the 32-formats; random bytes with
    /// tame f16 scales for the K-quants.
    fn random_weights(ty: QuantType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
        let x: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
        let mut w = Vec::new();
        if quantize_row(ty, &x, &mut w).is_some() {
            return w;
        }
        let bb = ty.block_bytes();
        let n = rows * cols / ty.block_len();
        let mut w: Vec<u8> = (0..n * bb).map(|_| rng.below(256) as u8).collect();
        for blk in w.chunks_exact_mut(bb) {
            for &at in ty.f16_fields() {
                let d = f16::from_f32(rng.uniform_range(-0.05, 0.05) as f32).to_le_bytes();
                blk[at..at + 2].copy_from_slice(&d);
            }
        }
        w
    }

    /// The kernels this CPU runs.
    fn supported_kernels() -> Vec<QKernel> {
        [QKernel::Portable, QKernel::Avx2, QKernel::Avx512].into_iter().filter(|&k| qkernel_supported(k)).collect()
    }

    /// With `batch_invariant`, every token's outputs are bitwise those it gets alone, whatever
    /// the token count (tiles of 16, 8, fewer; what would otherwise be the GEMM routes).
    #[test]
    fn batch_invariant_rows_equal_the_row_alone() {
        let pool = SpinPool::new(2);
        let mut rng = Rng::new(5);
        let kernels = supported_kernels();
        let rows = 24;
        let types = [
            QuantType::Q8_0,
            QuantType::Q4_0,
            QuantType::Q4_1,
            QuantType::Q5_0,
            QuantType::Q5_1,
            QuantType::Q4K,
            QuantType::Q6K,
            QuantType::F16,
            QuantType::F32,
        ];
        for &kernel in &kernels {
            for ty in types {
                // An odd number of 32-value blocks where the format allows it (the one-token
                // kernel's last block goes alone).
                let cols = if uses_quantized_acts(ty) { 544 } else { 512 };
                let w = random_weights(ty, rows, cols, &mut rng);
                let x: Vec<f32> = (0..40 * cols).map(|_| rng.normal() as f32).collect();
                let mut acts = QuantizedActs { batch_invariant: true, ..QuantizedActs::default() };
                let alone: Vec<Vec<f32>> = (0..40)
                    .map(|tok| {
                        let mut y = vec![0f32; rows];
                        qmatmul_with(
                            kernel,
                            ty,
                            &w,
                            rows,
                            cols,
                            &x[tok * cols..(tok + 1) * cols],
                            1,
                            &mut acts,
                            &mut y,
                            &pool,
                        );
                        y
                    })
                    .collect();
                for t in [2, 5, 8, 16, 21, 24, 32, 40] {
                    let mut y = vec![0f32; t * rows];
                    qmatmul_with(kernel, ty, &w, rows, cols, &x[..t * cols], t, &mut acts, &mut y, &pool);
                    for (tok, want) in alone.iter().take(t).enumerate() {
                        assert!(
                            y[tok * rows..(tok + 1) * rows] == want[..],
                            "{kernel:?} {ty}: token {tok} of {t} differs from the token alone"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_kernel_equals_the_dequantized_reference() {
        let pool = SpinPool::new(2);
        let mut rng = Rng::new(11);
        let kernels = supported_kernels();
        // Rows and tokens that are not multiples of the thread share (4) or the token tile (4);
        // columns an odd number of blocks.
        for ty in [
            QuantType::Q8_0,
            QuantType::Q4_0,
            QuantType::Q4_1,
            QuantType::Q5_0,
            QuantType::Q5_1,
            QuantType::Q4K,
            QuantType::Q5K,
            QuantType::Q6K,
            QuantType::IQ4XS,
            QuantType::Q3K,
            QuantType::F16,
        ] {
            // An odd number of blocks, and more blocks than a scale chunk holds (64).
            let cols_list: &[usize] = if ty.block_len() == 256 { &[768] } else { &[32 * 7, 32 * 67] };
            // Token counts below and above the GEMM route's thresholds (16, and 32 where the bf16
            // tile kernel runs), and multiples of the 8-token tile (the two-row tile path).
            let cases = [(13, 1), (5, 7), (32, 4), (7, 13), (3, 9), (9, 21), (6, 16), (5, 24), (4, 40)];
            for (&cols, (rows, t)) in cols_list.iter().cycle().zip(cases) {
                let w = random_weights(ty, rows, cols, &mut rng);
                let x: Vec<f32> = (0..t * cols).map(|_| rng.normal() as f32).collect();
                let mut wf = vec![0f32; rows * cols];
                dequantize_row(ty, &w, &mut wf);
                let mut acts = QuantizedActs::default();
                // The reference multiplies the dequantized weights by the activations the
                // kernel sees: quantized ones on the integer route, the inputs otherwise.
                acts.quantize(&x, t, cols);
                let x_int16 = acts.dequantized();
                for &k in &kernels {
                    let xs = if uses_int16_route(k, ty, t) { &x_int16 } else { &x };
                    let mut y = vec![0f32; t * rows];
                    qmatmul_with(k, ty, &w, rows, cols, &x, t, &mut acts, &mut y, &pool);
                    for tok in 0..t {
                        for r in 0..rows {
                            let want: f64 =
                                (0..cols).map(|c| wf[r * cols + c] as f64 * xs[tok * cols + c] as f64).sum();
                            let scale: f64 =
                                (0..cols).map(|c| (wf[r * cols + c] * xs[tok * cols + c]).abs() as f64).sum();
                            let got = y[tok * rows + r] as f64;
                            // The bf16 route rounds both operands (≤ 2⁻⁹ each): each product
                            // is within 2⁻⁸ of itself, the sum within 2⁻⁸·Σ|w·x|.
                            let rel = if uses_bf16_route(k, ty, t) { 1.0 / 256.0 } else { 0.0 };
                            assert!(
                                (got - want).abs() <= (rel + 1e-5) * scale + 1e-6,
                                "{ty} {k:?} rows {rows} t {t}: y[{tok},{r}] = {got}, reference {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn several_products_at_once_equal_each_alone() {
        // Products on different routes share one job (bf16 or 16-bit activations for the
        // 32-weight formats, f32 for K-quants and float weights): each must equal its own call.
        let pool = SpinPool::new(2);
        let mut rng = Rng::new(5);
        let cols = 256 * 3;
        let types = [QuantType::Q4_1, QuantType::Q8_0, QuantType::Q6K, QuantType::F32];
        let rows = [13, 6, 9, 5];
        let ws: Vec<Vec<u8>> = types
            .iter()
            .zip(rows)
            .map(|(&ty, r)| {
                if ty == QuantType::F32 {
                    (0..r * cols).flat_map(|_| (rng.normal() as f32).to_le_bytes()).collect()
                } else {
                    random_weights(ty, r, cols, &mut rng)
                }
            })
            .collect();
        for t in [1, 3, 8, 9] {
            let x: Vec<f32> = (0..t * cols).map(|_| rng.normal() as f32).collect();
            let mut acts = QuantizedActs::default();
            let mut ys: Vec<Vec<f32>> = rows.iter().map(|&r| vec![f32::NAN; t * r]).collect();
            let mut outs: Vec<QOut<'_>> = types
                .iter()
                .zip(&ws)
                .zip(rows)
                .zip(ys.iter_mut())
                .map(|(((&ty, w), rows), y)| QOut { ty, w, rows, y })
                .collect();
            qmatmul_many(&x, t, cols, &mut outs, &mut acts, &pool);
            drop(outs);
            for k in 0..types.len() {
                let mut alone = vec![0f32; t * rows[k]];
                qmatmul_with(best_qkernel(), types[k], &ws[k], rows[k], cols, &x, t, &mut acts, &mut alone, &pool);
                for (i, (&a, &b)) in alone.iter().zip(&ys[k]).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                        "{} t {t}: y[{i}] together {b}, alone {a}",
                        types[k]
                    );
                }
            }
        }
    }

    #[test]
    fn activation_quantization_error_is_within_half_a_step() {
        let mut rng = Rng::new(3);
        let x: Vec<f32> = (0..64).map(|_| 3.0 * rng.normal() as f32).collect();
        let mut a = QuantizedActs::default();
        a.quantize(&x, 2, 32);
        for (i, (v, q)) in x.iter().zip(a.dequantized()).enumerate() {
            assert!((v - q).abs() <= 0.5 * a.d[i / 32] * 1.0001, "{v} vs {q}");
        }
    }
}
