//! Block-quantized weight formats (the GGML family) and their dequantisation.
//!
//! A quantized row is a sequence of fixed-size *blocks*; each block stores `n` weights as small
//! integers plus one or two f16 numbers that map them back to reals:
//!
//! | type   | weights/block | bytes/block | bits/weight | a block                                   | weight                  |
//! | ------ | ------------- | ----------- | ----------- | ----------------------------------------- | ----------------------- |
//! | `Q8_0` | 32            | 34          | 8.5         | `d: f16, q: [i8; 32]`                     | `d·q`                   |
//! | `Q4_0` | 32            | 18          | 4.5         | `d: f16, q: [u8; 16]` (two nibbles each)  | `d·(q − 8)`             |
//! | `Q4_1` | 32            | 20          | 5.0         | `d: f16, m: f16, q: [u8; 16]`             | `d·q + m`               |
//! | `Q4_K` | 256           | 144         | 4.5         | `d, dmin: f16, scales: [u8; 12], q: [u8; 128]` | `d·sᵢ·q − dmin·mᵢ` |
//! | `Q6_K` | 256           | 210         | 6.5625      | `ql: [u8; 128], qh: [u8; 64], s: [i8; 16], d: f16` | `d·sᵢ·(q − 32)` |
//! | `Q5_0` | 32            | 22          | 5.5         | `d: f16, qh: u32, q: [u8; 16]` (fifth bits in `qh`) | `d·(q − 16)`     |
//! | `Q5_1` | 32            | 24          | 6.0         | `d, m: f16, qh: u32, q: [u8; 16]`         | `d·q + m`               |
//! | `Q2_K` | 256           | 84          | 2.625       | `s: [u8; 16], q: [u8; 64], d, dmin: f16`  | `d·(sᵢ&15)·q − dmin·(sᵢ>>4)` |
//! | `Q3_K` | 256           | 110         | 3.4375      | `hmask: [u8; 32], q: [u8; 64], s: [u8; 12], d: f16` | `d·(sᵢ − 32)·q` |
//! | `Q5_K` | 256           | 176         | 5.5         | `Q4_K` + `qh: [u8; 32]`                   | `d·sᵢ·q − dmin·mᵢ`      |
//! | `IQ4_NL` | 32          | 18          | 4.5         | `d: f16, q: [u8; 16]`                     | `d·level[q]`            |
//! | `IQ4_XS` | 256         | 136         | 4.25        | `d: f16, sh: u16, sl: [u8; 4], q: [u8; 128]` | `d·(sᵢ − 32)·level[q]` |
//! | `TQ1_0` | 256          | 54          | 1.6875      | `q: [u8; 52]` (five trits a byte), `d: f16` | `d·t`, `t ∈ {−1,0,1}` |
//! | `TQ2_0` | 256          | 66          | 2.0625      | `q: [u8; 64], d: f16`                     | `d·(q − 1)`             |
//!
//! Not read (yet): the grid i-quants (`IQ1_S`, `IQ1_M`, `IQ2_XXS`, `IQ2_XS`, `IQ2_S`,
//! `IQ3_XXS`, `IQ3_S`), whose codes index tables of 256–2048 lattice points, and the 4-bit
//! floating-point `MXFP4`/`NVFP4`; a file with them gets an error naming the tensor and type.
//!
//! In the 32-weight 4-bit formats, byte `j` holds weight `j` in its low nibble and weight
//! `j + 16` in its high nibble. The K-quants ("super-blocks" of 256) split the block into
//! sub-blocks with their own 6-bit (`Q4_K`) or 8-bit (`Q6_K`) scales, themselves scaled by the
//! f16 `d`: two levels of scale for little more storage.
//!
//! Everything here works on little-endian byte slices as GGUF files store them, so a memory
//! map can be read in place. Malformed lengths are the caller's contract (`dequantize_row`
//! panics with the type and lengths); the GGUF reader checks sizes before it gets here.

use half::{bf16, f16};

mod kquant;

/// A storage format for weights, numbered as GGML numbers them (`ggml_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// IEEE f32.
    F32,
    /// IEEE f16.
    F16,
    /// bfloat16.
    BF16,
    /// 8-bit, one f16 scale per 32 weights.
    Q8_0,
    /// 4-bit symmetric, one f16 scale per 32 weights.
    Q4_0,
    /// 4-bit with scale and minimum per 32 weights.
    Q4_1,
    /// 4-bit K-quant: 256-weight super-blocks, 6-bit scales and minimums per 32.
    Q4K,
    /// 6-bit K-quant: 256-weight super-blocks, 8-bit scales per 16.
    Q6K,
    /// 5-bit symmetric, one f16 scale per 32 weights (the fifth bits packed in a `u32`).
    Q5_0,
    /// 5-bit with scale and minimum per 32 weights.
    Q5_1,
    /// 2-bit K-quant: 4-bit scales and minimums per 16 weights.
    Q2K,
    /// 3-bit K-quant: 6-bit signed scales per 16 weights, the third bits in a mask.
    Q3K,
    /// 5-bit K-quant: like `Q4_K` plus a fifth bit per weight.
    Q5K,
    /// 4-bit non-linear: each nibble indexes 16 fixed levels, one f16 scale per 32.
    IQ4NL,
    /// `IQ4_NL`'s levels in 256-weight super-blocks with 6-bit scales per 32.
    IQ4XS,
    /// Ternary (−1, 0, 1), five weights per byte in base 3: 1.6875 bits per weight.
    TQ1_0,
    /// Ternary, four weights per byte (2 bits each).
    TQ2_0,
}

impl QuantType {
    /// The GGML type id (`ggml_type` in `ggml.h`), or `None` for ids this crate cannot read.
    pub fn from_ggml_id(id: u32) -> Option<QuantType> {
        Some(match id {
            0 => QuantType::F32,
            1 => QuantType::F16,
            2 => QuantType::Q4_0,
            3 => QuantType::Q4_1,
            8 => QuantType::Q8_0,
            12 => QuantType::Q4K,
            14 => QuantType::Q6K,
            30 => QuantType::BF16,
            6 => QuantType::Q5_0,
            7 => QuantType::Q5_1,
            10 => QuantType::Q2K,
            11 => QuantType::Q3K,
            13 => QuantType::Q5K,
            20 => QuantType::IQ4NL,
            23 => QuantType::IQ4XS,
            34 => QuantType::TQ1_0,
            35 => QuantType::TQ2_0,
            _ => return None,
        })
    }

    /// The GGML type id.
    pub fn ggml_id(self) -> u32 {
        match self {
            QuantType::F32 => 0,
            QuantType::F16 => 1,
            QuantType::Q4_0 => 2,
            QuantType::Q4_1 => 3,
            QuantType::Q8_0 => 8,
            QuantType::Q4K => 12,
            QuantType::Q6K => 14,
            QuantType::BF16 => 30,
            QuantType::Q5_0 => 6,
            QuantType::Q5_1 => 7,
            QuantType::Q2K => 10,
            QuantType::Q3K => 11,
            QuantType::Q5K => 13,
            QuantType::IQ4NL => 20,
            QuantType::IQ4XS => 23,
            QuantType::TQ1_0 => 34,
            QuantType::TQ2_0 => 35,
        }
    }

    /// The name GGML and llama.cpp print (`"Q4_1"`, `"F16"`, …).
    pub fn name(self) -> &'static str {
        match self {
            QuantType::F32 => "F32",
            QuantType::F16 => "F16",
            QuantType::BF16 => "BF16",
            QuantType::Q8_0 => "Q8_0",
            QuantType::Q4_0 => "Q4_0",
            QuantType::Q4_1 => "Q4_1",
            QuantType::Q4K => "Q4_K",
            QuantType::Q6K => "Q6_K",
            QuantType::Q5_0 => "Q5_0",
            QuantType::Q5_1 => "Q5_1",
            QuantType::Q2K => "Q2_K",
            QuantType::Q3K => "Q3_K",
            QuantType::Q5K => "Q5_K",
            QuantType::IQ4NL => "IQ4_NL",
            QuantType::IQ4XS => "IQ4_XS",
            QuantType::TQ1_0 => "TQ1_0",
            QuantType::TQ2_0 => "TQ2_0",
        }
    }

    /// Every type this crate reads.
    pub const ALL: [QuantType; 17] = [
        QuantType::F32,
        QuantType::F16,
        QuantType::BF16,
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q2K,
        QuantType::Q3K,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
        QuantType::IQ4NL,
        QuantType::IQ4XS,
        QuantType::TQ1_0,
        QuantType::TQ2_0,
    ];

    /// Parses a name as [`QuantType::name`] writes it (case-insensitive).
    pub fn from_name(s: &str) -> Option<QuantType> {
        QuantType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// Weights per block (1 for the float types).
    pub fn block_len(self) -> usize {
        match self {
            QuantType::F32 | QuantType::F16 | QuantType::BF16 => 1,
            QuantType::Q8_0 | QuantType::Q4_0 | QuantType::Q4_1 => 32,
            QuantType::Q5_0 | QuantType::Q5_1 | QuantType::IQ4NL => 32,
            QuantType::Q2K | QuantType::Q3K | QuantType::Q4K | QuantType::Q5K | QuantType::Q6K => 256,
            QuantType::IQ4XS | QuantType::TQ1_0 | QuantType::TQ2_0 => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantType::F32 => 4,
            QuantType::F16 | QuantType::BF16 => 2,
            QuantType::Q8_0 => 34,
            QuantType::Q4_0 => 18,
            QuantType::Q4_1 => 20,
            QuantType::Q4K => 144,
            QuantType::Q6K => 210,
            QuantType::Q5_0 => 22,
            QuantType::Q5_1 => 24,
            QuantType::Q2K => 84,
            QuantType::Q3K => 110,
            QuantType::Q5K => 176,
            QuantType::IQ4NL => 18,
            QuantType::IQ4XS => 136,
            QuantType::TQ1_0 => 54,
            QuantType::TQ2_0 => 66,
        }
    }

    /// Byte offsets of the f16 numbers in a block (its scales and minimums; empty for the
    /// float types): what a test or benchmark must keep finite when it fills blocks with
    /// random bytes.
    pub fn f16_fields(self) -> &'static [usize] {
        match self {
            QuantType::F32 | QuantType::F16 | QuantType::BF16 => &[],
            QuantType::Q8_0 | QuantType::Q4_0 | QuantType::Q5_0 | QuantType::IQ4NL | QuantType::IQ4XS => &[0],
            QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4K | QuantType::Q5K => &[0, 2],
            QuantType::Q2K => &[80, 82],
            QuantType::Q3K => &[108],
            QuantType::Q6K => &[208],
            QuantType::TQ1_0 => &[52],
            QuantType::TQ2_0 => &[64],
        }
    }

    /// Bytes that `n` weights take, or `None` when `n` is not a whole number of blocks (or
    /// the size overflows).
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_len()) {
            return None;
        }
        (n / self.block_len()).checked_mul(self.block_bytes())
    }

    /// Storage cost in bits per weight.
    pub fn bits_per_weight(self) -> f64 {
        8.0 * self.block_bytes() as f64 / self.block_len() as f64
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The f16 at byte `i` of `b`, converted exactly and branch-free (so loops over it vectorize).
#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    crate::cpu::simd::f16_bits_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// Dequantizes `src`, the bytes of `out.len()` consecutive weights of type `ty`, into `out`.
/// `out.len()` must be a whole number of blocks and `src.len()` exactly their size.
#[track_caller]
pub fn dequantize_row(ty: QuantType, src: &[u8], out: &mut [f32]) {
    let expected = ty.bytes_for(out.len());
    assert!(
        expected == Some(src.len()),
        "dequantize_row: {ty} with {} weights needs {expected:?} bytes, got {}",
        out.len(),
        src.len()
    );
    dequantize_blocks(ty, src, out);
}

/// [`dequantize_row`] without the size check (whole blocks of `src` and `out` are decoded
/// pairwise; a remainder is left alone): inlined into the kernels of every SIMD level
/// ([`crate::cpu::simd::dequant_dot`]), where the compiler vectorizes each format's loops.
#[inline(always)]
pub fn dequantize_blocks(ty: QuantType, src: &[u8], out: &mut [f32]) {
    let (bl, bb) = (ty.block_len(), ty.block_bytes());
    for (blk, y) in src.chunks_exact(bb).zip(out.chunks_exact_mut(bl)) {
        match ty {
            QuantType::F32 => y[0] = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]),
            QuantType::F16 => y[0] = f16_at(blk, 0),
            QuantType::BF16 => y[0] = bf16::from_le_bytes([blk[0], blk[1]]).to_f32(),
            QuantType::Q8_0 => dequantize_q8_0(blk, y),
            QuantType::Q4_0 => dequantize_q4_0(blk, y),
            QuantType::Q4_1 => dequantize_q4_1(blk, y),
            QuantType::Q4K => dequantize_q4_k(blk, y),
            QuantType::Q6K => dequantize_q6_k(blk, y),
            QuantType::Q5_0 => dequantize_q5_0(blk, y),
            QuantType::Q5_1 => dequantize_q5_1(blk, y),
            QuantType::Q2K => dequantize_q2_k(blk, y),
            QuantType::Q3K => dequantize_q3_k(blk, y),
            QuantType::Q5K => dequantize_q5_k(blk, y),
            QuantType::IQ4NL => dequantize_iq4_nl(blk, y),
            QuantType::IQ4XS => dequantize_iq4_xs(blk, y),
            QuantType::TQ1_0 => dequantize_tq1_0(blk, y),
            QuantType::TQ2_0 => dequantize_tq2_0(blk, y),
        }
    }
}

/// `Q8_0`: `y = d·q`.
#[inline(always)]
fn dequantize_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (yi, &q) in y.iter_mut().zip(&b[2..34]) {
        *yi = d * (q as i8) as f32;
    }
}

/// `Q4_0`: `y = d·(q − 8)`, weight `j` in the low nibble of byte `j`, `j + 16` in the high.
#[inline(always)]
fn dequantize_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = d * ((q & 0x0F) as i32 - 8) as f32;
        y[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

/// `Q4_1`: `y = d·q + m`.
#[inline(always)]
fn dequantize_q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = d * (q & 0x0F) as f32 + m;
        y[j + 16] = d * (q >> 4) as f32 + m;
    }
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) of a `Q4_K` block, packed in 12 bytes:
/// sub-blocks 0–3 keep theirs in the low 6 bits of bytes `j` (scale) and `j + 4` (min);
/// sub-blocks 4–7 take 4 bits from byte `j + 4` and their top 2 bits from the spare high bits
/// of bytes `j − 4` (scale) and `j` (min).
#[inline(always)]
pub fn q4_k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        ((scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))
    }
}

/// `Q4_K`: 8 sub-blocks of 32; sub-block `i` is `d·scᵢ·q − dmin·mᵢ`. Each 32-byte group of
/// `q` holds two sub-blocks: the low nibbles the first, the high nibbles the second.
#[inline(always)]
fn dequantize_q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for pair in 0..4 {
        let q = &qs[32 * pair..32 * pair + 32];
        let (s1, m1) = q4_k_scale_min(scales, 2 * pair);
        let (s2, m2) = q4_k_scale_min(scales, 2 * pair + 1);
        let (d1, dm1, d2, dm2) = (d * s1 as f32, dmin * m1 as f32, d * s2 as f32, dmin * m2 as f32);
        let out = &mut y[64 * pair..64 * pair + 64];
        for l in 0..32 {
            out[l] = d1 * (q[l] & 0x0F) as f32 - dm1;
            out[l + 32] = d2 * (q[l] >> 4) as f32 - dm2;
        }
    }
}

/// `Q6_K`: 16 sub-blocks of 16 with signed 8-bit scales; each 6-bit `q` is 4 low bits from
/// `ql` and 2 high bits from `qh`, stored minus 32. Each 128-weight half reads 64 bytes of
/// `ql`, 32 of `qh` and 8 scales.
#[inline(always)]
fn dequantize_q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let out = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// The fifth bit of weight `j` (0..32) of a `Q5_0`/`Q5_1` block: bit `j` of the little-endian
/// `u32` `qh`. The low four bits sit as in `Q4_0`: weight `j < 16` in the low nibble of byte `j`,
/// weight `j + 16` in its high nibble.
#[inline(always)]
fn q5_weights(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let h = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    std::array::from_fn(|j| {
        let low = if j < 16 { qs[j] & 0x0F } else { qs[j - 16] >> 4 };
        low | ((((h >> j) & 1) as u8) << 4)
    })
}

/// `Q5_0` (`d: f16, qh: u32, qs: [u8; 16]`): `y = d·(q − 16)`, `q` 5 bits.
#[inline(always)]
fn dequantize_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (yi, q) in y.iter_mut().zip(q5_weights(&b[2..6], &b[6..22])) {
        *yi = d * (q as i32 - 16) as f32;
    }
}

/// `Q5_1` (`d, m: f16, qh: u32, qs: [u8; 16]`): `y = d·q + m`.
#[inline(always)]
fn dequantize_q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (yi, q) in y.iter_mut().zip(q5_weights(&b[4..8], &b[8..24])) {
        *yi = d * q as f32 + m;
    }
}

/// Weight `e` (0..256) of a 2-bit field packed as the K-quants pack them: each 32-byte group
/// `g` of `qs` holds 128 weights, four per byte — weight `g·128 + s·32 + l` in bits `2s, 2s+1`
/// of byte `g·32 + l`.
#[inline(always)]
fn crumb(qs: &[u8], e: usize) -> u8 {
    let (g, s, l) = (e / 128, (e % 128) / 32, e % 32);
    (qs[g * 32 + l] >> (2 * s)) & 3
}

/// `Q2_K` (`scales: [u8; 16], qs: [u8; 64], d, dmin: f16`): sub-block `i` of 16 weights is
/// `(d·(sᵢ & 15))·q − dmin·(sᵢ >> 4)`, `q` 2 bits.
#[inline(always)]
fn dequantize_q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (e, yi) in y.iter_mut().enumerate() {
        let sc = scales[e / 16];
        let (dl, ml) = (d * (sc & 0x0F) as f32, dmin * (sc >> 4) as f32);
        *yi = dl * crumb(qs, e) as f32 - ml;
    }
}

/// `Q3_K` (`hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16`): sub-block `i` of 16 is
/// `(d·sᵢ)·q` with `sᵢ` a 6-bit scale minus 32 (low 4 bits from byte `i mod 8` — its low
/// nibble for `i < 8`, high nibble after — and 2 high bits from byte `8 + i mod 4` at bits
/// `2·(i div 4)`), and `q` = 2 low bits − 4 unless weight `e`'s bit in the mask (bit `e div 32`
/// of byte `e mod 32`) is set.
#[inline(always)]
fn dequantize_q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    let scale = |i: usize| {
        let low = if i < 8 { sc[i] & 0x0F } else { sc[i - 8] >> 4 };
        let high = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
        (low | (high << 4)) as i32 - 32
    };
    for (e, yi) in y.iter_mut().enumerate() {
        let dl = d * scale(e / 16) as f32;
        let hbit = (hmask[e % 32] >> (e / 32)) & 1;
        let q = crumb(qs, e) as i32 - if hbit == 1 { 0 } else { 4 };
        *yi = dl * q as f32;
    }
}

/// `Q5_K` (`d, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`): as `Q4_K`, with
/// weight `l` of sub-block `j` taking its fifth bit from bit `j` of `qh[l]`.
#[inline(always)]
fn dequantize_q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for j in 0..8 {
        let (s, m) = q4_k_scale_min(scales, j);
        let (dl, ml) = (d * s as f32, dmin * m as f32);
        let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
        for l in 0..32 {
            let low = if j % 2 == 0 { q[l] & 0x0F } else { q[l] >> 4 };
            let v = low | (((qh[l] >> j) & 1) << 4);
            y[32 * j + l] = dl * v as f32 - ml;
        }
    }
}

/// The 16 levels of `IQ4_NL` and `IQ4_XS` (a non-uniform grid, denser near zero, where trained
/// weights are).
pub const IQ4_LEVELS: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// `IQ4_NL` (`d: f16, qs: [u8; 16]`): `y = d·level[q]`, nibbles placed as in `Q4_0`.
#[inline(always)]
fn dequantize_iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = d * IQ4_LEVELS[(q & 0x0F) as usize] as f32;
        y[j + 16] = d * IQ4_LEVELS[(q >> 4) as usize] as f32;
    }
}

/// `IQ4_XS` (`d: f16, scales_h: u16, scales_l: [u8; 4], qs: [u8; 128]`): sub-block `i` of 32 is
/// `(d·(sᵢ − 32))·level[q]`, `sᵢ` 6 bits: the low 4 from nibble `i mod 2` of `scales_l[i/2]`,
/// the high 2 from bits `2i` of `scales_h`; its 16 bytes of `qs` as an `IQ4_NL` block.
#[inline(always)]
fn dequantize_iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let sh = u16::from_le_bytes([b[2], b[3]]);
    for i in 0..8 {
        let low = (b[4 + i / 2] >> (4 * (i % 2))) & 0x0F;
        let high = ((sh >> (2 * i)) & 3) as u8;
        let dl = d * ((low | (high << 4)) as i32 - 32) as f32;
        let q = &b[8 + 16 * i..8 + 16 * i + 16];
        for (j, &v) in q.iter().enumerate() {
            y[32 * i + j] = dl * IQ4_LEVELS[(v & 0x0F) as usize] as f32;
            y[32 * i + j + 16] = dl * IQ4_LEVELS[(v >> 4) as usize] as f32;
        }
    }
}

/// A base-3 digit stored as a fixed-point fraction: byte `v` holds `t = v·3/256` rounded up at
/// encoding, so multiplying by `3ᵏ` (mod 256) shifts digit `k` to the top and `(v·3) >> 8`
/// reads it. Returns the digit minus 1 (−1, 0 or 1).
#[inline(always)]
fn trit(v: u8, pow3: u8) -> i32 {
    let shifted = v.wrapping_mul(pow3);
    ((shifted as u16 * 3) >> 8) as i32 - 1
}

/// `TQ1_0` (`qs: [u8; 48], qh: [u8; 4], d: f16`): `y = d·t`, `t ∈ {−1, 0, 1}`: bytes 0–31 of
/// `qs` hold five weights each (weight `32k + l` is digit `k` of byte `l`), bytes 32–47 five
/// each (weight `160 + 16k + l`), and `qh` four each (weight `240 + 4k + l`).
#[inline(always)]
fn dequantize_tq1_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 52);
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    for k in 0..5 {
        for l in 0..32 {
            y[32 * k + l] = d * trit(b[l], POW3[k]) as f32;
        }
        for l in 0..16 {
            y[160 + 16 * k + l] = d * trit(b[32 + l], POW3[k]) as f32;
        }
    }
    for k in 0..4 {
        for l in 0..4 {
            y[240 + 4 * k + l] = d * trit(b[48 + l], POW3[k]) as f32;
        }
    }
}

/// `TQ2_0` (`qs: [u8; 64], d: f16`): `y = d·(q − 1)`, `q` 2 bits packed as in `Q2_K`.
#[inline(always)]
fn dequantize_tq2_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 64);
    for (e, yi) in y.iter_mut().enumerate() {
        *yi = d * (crumb(&b[0..64], e) as i32 - 1) as f32;
    }
}

/// Where the bytes of a [`QMatrix`] live: a memory-mapped file (a GGUF), or an owned buffer.
pub type ByteSource = std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A frozen matrix `(rows, cols)` stored row by row in a GGML format (F32, F16, BF16 or a
/// block-quantized type), read in place: the weights of a quantized model, never dequantized
/// as a whole. Cloning shares the bytes.
#[derive(Clone)]
pub struct QMatrix {
    ty: QuantType,
    rows: usize,
    cols: usize,
    data: ByteSource,
    start: usize,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QMatrix({}×{} {})", self.rows, self.cols, self.ty)
    }
}

impl QMatrix {
    /// The matrix whose rows are `data[range]`. Errors (naming the sizes) when `cols` is not a
    /// whole number of blocks or the range does not hold exactly `rows` rows.
    pub fn new(
        ty: QuantType,
        rows: usize,
        cols: usize,
        data: ByteSource,
        range: std::ops::Range<usize>,
    ) -> Result<QMatrix, String> {
        let row_bytes =
            ty.bytes_for(cols).ok_or_else(|| format!("{cols} columns are not a whole number of {ty} blocks"))?;
        let len = (*data).as_ref().len();
        let want = row_bytes.checked_mul(rows).ok_or_else(|| format!("{rows}×{cols} {ty} overflows"))?;
        if range.start > range.end || range.end > len || range.end - range.start != want {
            return Err(format!(
                "{rows}×{cols} {ty} needs {want} bytes; got bytes {}..{} of a {len}-byte buffer",
                range.start, range.end
            ));
        }
        Ok(QMatrix { ty, rows, cols, data, start: range.start })
    }

    /// Quantizes row-major `x (rows, cols)` to `ty` into an owned buffer (`None` for the
    /// K-quants, which have no encoder here).
    #[track_caller]
    pub fn quantize(ty: QuantType, rows: usize, cols: usize, x: &[f32]) -> Option<QMatrix> {
        assert_eq!(x.len(), rows * cols, "QMatrix::quantize: {} values for {rows}×{cols}", x.len());
        let mut bytes = Vec::new();
        for row in x.chunks(cols.max(1)) {
            quantize_row(ty, row, &mut bytes)?;
        }
        let n = bytes.len();
        QMatrix::new(ty, rows, cols, std::sync::Arc::new(bytes), 0..n).ok()
    }

    /// The storage format.
    pub fn ty(&self) -> QuantType {
        self.ty
    }

    /// Rows (output features of a linear map).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.ty.bytes_for(self.cols).unwrap_or(0)
    }

    /// All the bytes, row by row.
    pub fn bytes(&self) -> &[u8] {
        &(*self.data).as_ref()[self.start..self.start + self.rows * self.row_bytes()]
    }

    /// Dequantizes rows `r0..r1` into `out` (`(r1 − r0)·cols` values).
    #[track_caller]
    pub fn dequantize_rows(&self, r0: usize, r1: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        dequantize_row(self.ty, &self.bytes()[r0 * rb..r1 * rb], out);
    }

    /// The whole matrix in f32, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.dequantize_rows(0, self.rows, &mut out);
        out
    }
}

/// Quantizes `x` (a whole number of blocks) to `ty` ∈ {F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0,
/// Q5_1, Q4_K, Q5_K, Q6_K}, appending the bytes to `out`, with GGML's reference rounding:
/// - `Q8_0`: `d = max|x|/127`, `q = round(x/d)`;
/// - `Q4_0`: `d = x_m/−8` with `x_m` the value of largest magnitude (sign kept), so that
///   value maps to the end of the range; `q = min(15, trunc(x/d + 8.5))`;
/// - `Q4_1`: `d = (max − min)/15`, `m = min`, `q = min(15, trunc((x − min)/d + 0.5))`;
/// - `Q5_0` and `Q5_1`: the same with −16, 16.5 and 31 (the fifth bits packed into `qh`).
///
/// - `Q4_K`, `Q5_K`, `Q6_K`: llama.cpp's reference quantizers, which search each sub-block's
///   scale (and minimum) by least squares over a few grids — see `quant/kquant.rs`.
///
/// Returns `None` for the other types (`Q2_K`, `Q3_K`, the i-quants and ternary types are
/// read but not written).
#[track_caller]
pub fn quantize_row(ty: QuantType, x: &[f32], out: &mut Vec<u8>) -> Option<()> {
    assert!(
        x.len().is_multiple_of(ty.block_len()),
        "quantize_row: {} weights is not a whole number of {ty} blocks",
        x.len()
    );
    let put_f16 = |out: &mut Vec<u8>, v: f32| out.extend_from_slice(&f16::from_f32(v).to_le_bytes());
    match ty {
        QuantType::F32 => x.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        QuantType::F16 => x.iter().for_each(|&v| put_f16(out, v)),
        QuantType::BF16 => x.iter().for_each(|&v| out.extend_from_slice(&bf16::from_f32(v).to_le_bytes())),
        QuantType::Q8_0 => {
            for blk in x.chunks_exact(32) {
                let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                put_f16(out, d);
                out.extend(blk.iter().map(|&v| (v * inv).round() as i8 as u8));
            }
        }
        QuantType::Q4_0 => {
            for blk in x.chunks_exact(32) {
                let xm = blk.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = xm / -8.0;
                let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                put_f16(out, d);
                let q = |v: f32| ((v * inv + 8.5) as u8).min(15);
                out.extend((0..16).map(|j| q(blk[j]) | (q(blk[j + 16]) << 4)));
            }
        }
        QuantType::Q4_1 => {
            for blk in x.chunks_exact(32) {
                let (lo, hi) = blk.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
                let d = (hi - lo) / 15.0;
                let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                put_f16(out, d);
                put_f16(out, lo);
                let q = |v: f32| (((v - lo) * inv + 0.5) as u8).min(15);
                out.extend((0..16).map(|j| q(blk[j]) | (q(blk[j + 16]) << 4)));
            }
        }
        QuantType::Q5_0 => {
            for blk in x.chunks_exact(32) {
                let xm = blk.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = xm / -16.0;
                let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                put_f16(out, d);
                put_q5(out, blk, |v| ((v * inv + 16.5) as u8).min(31));
            }
        }
        QuantType::Q5_1 => {
            for blk in x.chunks_exact(32) {
                let (lo, hi) = blk.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
                let d = (hi - lo) / 31.0;
                let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                put_f16(out, d);
                put_f16(out, lo);
                put_q5(out, blk, |v| (((v - lo) * inv + 0.5) as u8).min(31));
            }
        }
        QuantType::Q4K => x.chunks_exact(256).for_each(|b| kquant::put_q4_k(out, b)),
        QuantType::Q5K => x.chunks_exact(256).for_each(|b| kquant::put_q5_k(out, b)),
        QuantType::Q6K => x.chunks_exact(256).for_each(|b| kquant::put_q6_k(out, b)),
        _ => return None,
    }
    Some(())
}

/// Appends a 5-bit block's `qh` (bit `j` = bit 4 of weight `j`) and its nibbles (weight `j` low,
/// `j + 16` high, as in `Q4_0`), with `q` the code of each value.
fn put_q5(out: &mut Vec<u8>, blk: &[f32], q: impl Fn(f32) -> u8) {
    let codes: Vec<u8> = blk.iter().map(|&v| q(v)).collect();
    let qh = codes.iter().enumerate().fold(0u32, |h, (j, &c)| h | (((c >> 4) as u32 & 1) << j));
    out.extend_from_slice(&qh.to_le_bytes());
    out.extend((0..16).map(|j| (codes[j] & 0x0F) | ((codes[j + 16] & 0x0F) << 4)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    #[test]
    fn block_sizes_match_ggml() {
        assert_eq!(QuantType::Q4_1.bits_per_weight(), 5.0);
        assert_eq!(QuantType::Q6K.bytes_for(512), Some(420));
        assert_eq!(QuantType::Q8_0.bytes_for(33), None);
        for id in 0..40 {
            if let Some(t) = QuantType::from_ggml_id(id) {
                assert_eq!(t.ggml_id(), id);
                assert_eq!(QuantType::from_name(t.name()), Some(t));
            }
        }
    }

    #[test]
    fn k_quant_encoders_round_trip_with_small_error() {
        // Two blocks: normal values (with a zeroed sub-block) and an all-zero block.
        let mut rng = Rng::new(11);
        let mut x: Vec<f32> = (0..512).map(|i| if i < 256 { rng.normal() as f32 } else { 0.0 }).collect();
        x[32..64].fill(0.0);
        let rms = (x[..256].iter().map(|v| v * v).sum::<f32>() / 256.0).sqrt();
        // Relative RMS error bounds: about half a step of each type's codes.
        for (ty, bound) in [(QuantType::Q4K, 0.12), (QuantType::Q5K, 0.06), (QuantType::Q6K, 0.03)] {
            let mut bytes = Vec::new();
            quantize_row(ty, &x, &mut bytes).unwrap();
            assert_eq!(bytes.len(), 2 * ty.block_bytes());
            let mut y = vec![0f32; x.len()];
            dequantize_row(ty, &bytes, &mut y);
            let err = (x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / 256.0).sqrt();
            assert!(err < bound * rms, "{ty}: rms error {err} vs rms {rms}");
            assert!(y[256..].iter().all(|&v| v == 0.0), "{ty}: a zero block decodes to zeros");
            assert!(y[32..64].iter().all(|&v| v.abs() < 1e-6), "{ty}: a zero sub-block decodes to zeros");
        }
    }

    #[test]
    fn quantize_then_dequantize_is_within_half_a_step() {
        let mut rng = Rng::new(7);
        let x: Vec<f32> = (0..96).map(|_| rng.normal() as f32).collect();
        for ty in [
            QuantType::Q8_0,
            QuantType::Q4_0,
            QuantType::Q4_1,
            QuantType::Q5_0,
            QuantType::Q5_1,
            QuantType::F16,
            QuantType::BF16,
        ] {
            let mut bytes = Vec::new();
            quantize_row(ty, &x, &mut bytes).unwrap();
            let mut y = vec![0f32; x.len()];
            dequantize_row(ty, &bytes, &mut y);
            for (blk_x, blk_y) in x.chunks(32).zip(y.chunks(32)) {
                let (lo, hi) = blk_x.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                let step = match ty {
                    QuantType::Q8_0 => 2.0 * lo.abs().max(hi.abs()) / 254.0,
                    QuantType::Q4_0 => 2.0 * lo.abs().max(hi.abs()) / 8.0,
                    QuantType::Q4_1 => (hi - lo) / 15.0,
                    QuantType::Q5_0 => 2.0 * lo.abs().max(hi.abs()) / 16.0,
                    QuantType::Q5_1 => (hi - lo) / 31.0,
                    _ => hi.abs().max(lo.abs()) / 128.0,
                };
                for (a, b) in blk_x.iter().zip(blk_y) {
                    assert!((a - b).abs() <= 0.5 * step * 1.01 + 1e-3, "{ty}: {a} → {b}, step {step}");
                }
            }
        }
    }
}
