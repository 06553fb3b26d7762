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
        }
    }

    /// Every type this crate reads.
    pub const ALL: [QuantType; 8] = [
        QuantType::F32,
        QuantType::F16,
        QuantType::BF16,
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q4K,
        QuantType::Q6K,
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
            QuantType::Q4K | QuantType::Q6K => 256,
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

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
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
        }
    }
}

/// `Q8_0`: `y = d·q`.
fn dequantize_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (yi, &q) in y.iter_mut().zip(&b[2..34]) {
        *yi = d * (q as i8) as f32;
    }
}

/// `Q4_0`: `y = d·(q − 8)`, weight `j` in the low nibble of byte `j`, `j + 16` in the high.
fn dequantize_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = d * ((q & 0x0F) as i32 - 8) as f32;
        y[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

/// `Q4_1`: `y = d·q + m`.
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
pub fn q4_k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        ((scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))
    }
}

/// `Q4_K`: 8 sub-blocks of 32; sub-block `i` is `d·scᵢ·q − dmin·mᵢ`. Each 32-byte group of
/// `q` holds two sub-blocks: the low nibbles the first, the high nibbles the second.
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

/// Quantizes `x` (a whole number of blocks) to `ty` ∈ {F32, F16, BF16, Q8_0, Q4_0, Q4_1},
/// appending the bytes to `out`, with GGML's reference rounding:
/// - `Q8_0`: `d = max|x|/127`, `q = round(x/d)`;
/// - `Q4_0`: `d = x_m/−8` with `x_m` the value of largest magnitude (sign kept), so that
///   value maps to the end of the range; `q = min(15, trunc(x/d + 8.5))`;
/// - `Q4_1`: `d = (max − min)/15`, `m = min`, `q = min(15, trunc((x − min)/d + 0.5))`.
///
/// Returns `None` for the K-quants (their encoders search for scales; not needed here).
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
        QuantType::Q4K | QuantType::Q6K => return None,
    }
    Some(())
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
    fn quantize_then_dequantize_is_within_half_a_step() {
        let mut rng = Rng::new(7);
        let x: Vec<f32> = (0..96).map(|_| rng.normal() as f32).collect();
        for ty in [QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4_1, QuantType::F16, QuantType::BF16] {
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
                    _ => hi.abs().max(lo.abs()) / 128.0,
                };
                for (a, b) in blk_x.iter().zip(blk_y) {
                    assert!((a - b).abs() <= 0.5 * step * 1.01 + 1e-3, "{ty}: {a} → {b}, step {step}");
                }
            }
        }
    }
}
