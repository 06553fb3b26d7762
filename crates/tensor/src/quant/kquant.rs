//! Encoders for the K-quants `Q4_K`, `Q5_K` and `Q6_K`: llama.cpp's reference quantizers
//! (`quantize_row_q*_K_ref`, used when no importance matrix is given), written out so the
//! choices are visible.
//!
//! A K-quant block of 256 weights has two levels of scale. Each sub-block (32 weights for
//! `Q4_K`/`Q5_K`, 16 for `Q6_K`) first gets its own best real scale (and, for `Q4_K`/`Q5_K`, a
//! minimum): the weights are fitted as `x ≈ s·q + m` with `q` in `0..=nmax`, by weighted least
//! squares over a few trial grids ([`fit_scale_min`]) or, for the symmetric `Q6_K`, by a scan
//! of grids `x ≈ s·q` ([`fit_scale`]). Then the sub-block scales themselves are quantized to
//! 6 bits (`Q4_K`/`Q5_K`, against the block's f16 `d` and `dmin`) or 8 bits (`Q6_K`), and every
//! weight is rounded again against the scale it will actually be decoded with.
//!
//! Rounding is [`nearest_int`] (to nearest, ties to even), as llama.cpp's; the arithmetic is
//! plain f32 in the order llama.cpp's C writes it (sums left to right, no fused multiply-add,
//! a real division in the final pass), which is what makes the bytes identical to an x86-64
//! llama.cpp build's: every block of SmolLM2's Q4_K, Q5_K and Q6_K tensors, and the presets'
//! files in `crates/cli/tests/quantize.rs`.

use super::q4_k_scale_min;
use half::f16;

/// Rounds to the nearest integer, ties to even (valid for `|x| < 2²²`), as llama.cpp's
/// `nearest_int`: adding 1.5·2²³ leaves the integer in the low mantissa bits.
#[inline]
fn nearest_int(x: f32) -> i32 {
    let bits = (x + 12_582_912.0f32).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// Weighted least-squares fit `x ≈ scale·L + min` with `L ∈ 0..=nmax` and `min ≤ 0`
/// (llama.cpp's `make_qkx2_quants` without MAD): start from the grid spanning `[min, max]`,
/// then try `nstep + 1` grids with `nmax + rmin + rdelta·i` steps over the same span; for each,
/// round, solve the 2×2 normal equations for the best `(scale, min)` given those codes, and keep
/// the one with the smallest weighted squared error. Writes the codes to `l`; returns
/// `(scale, −min)`.
fn fit_scale_min(x: &[f32], w: &[f32], nmax: i32, rmin: f32, rdelta: f32, nstep: i32, l: &mut [u8]) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let code = |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, nmax);
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let q = code(iscale, x[i], min);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += w[i] * (diff * diff);
    }
    let mut trial = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = code(iscale, x[i], min);
            trial[i] = q as u8;
            let q = q as f32;
            sum_l += w[i] * q;
            sum_l2 += w[i] * q * q;
            sum_xl += w[i] * q * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut err = 0f32;
            for i in 0..n {
                let diff = this_scale * trial[i] as f32 + this_min - x[i];
                err += w[i] * (diff * diff);
            }
            if err < best_error {
                l[..n].copy_from_slice(&trial[..n]);
                best_error = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Symmetric fit `x ≈ scale·(L − nmax)` with `L − nmax ∈ −nmax..nmax` weighted by `x²`
/// (llama.cpp's `make_qx_quants` with `rmse_type = 1`): the grid through the largest-magnitude
/// weight, then 18 grids with `nmax ± 0.1·i` steps; each gets its least-squares scale and the
/// one explaining most of `Σ w·x²` wins. Writes the offset codes to `l`; returns the scale.
fn fit_scale(x: &[f32], nmax: i32, l: &mut [u8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < 1e-15 {
        l.fill(0);
        return 0.0;
    }
    let code = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let q = code(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };
    let iscale = -(nmax as f32) / max;
    for (c, &v) in l.iter_mut().zip(x) {
        *c = (code(iscale, v) + nmax) as u8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (c, &v) in l.iter_mut().zip(x) {
                *c = (code(iscale, v) + nmax) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// The 12 bytes holding eight 6-bit scales and eight 6-bit minimums (the layout
/// [`q4_k_scale_min`] reads): entries 0–3 in the low six bits of bytes 0–3 (scales) and 4–7
/// (minimums); entries 4–7 as nibbles in bytes 8–11, their top two bits in the spare top bits of
/// bytes 0–7.
fn pack_scales_mins(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0x0F) | ((lm[j] & 0x0F) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// One `Q4_K` (`nmax = 15`) or `Q5_K` (`nmax = 31`) block's codes: eight sub-block fits
/// weighted by `rms(x) + |x|`, their scales and minimums quantized to 6 bits against
/// `d = max scale / 63` and `dmin = max minimum / 63`, then every weight re-rounded against the
/// stored scale. Returns `(d, dmin, packed scales, codes)`.
fn scale_min_block(x: &[f32], nmax: i32, rmin: f32, nstep: i32) -> (f16, f16, [u8; 12], [u8; 256]) {
    let mut codes = [0u8; 256];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xs.iter().map(|v| v * v).sum();
        let av_x = (sum_x2 / 32.0).sqrt();
        let w: [f32; 32] = std::array::from_fn(|l| av_x + xs[l].abs());
        (scales[j], mins[j]) = fit_scale_min(xs, &w, nmax, rmin, 0.1, nstep, &mut codes[32 * j..32 * j + 32]);
        max_scale = max_scale.max(scales[j]);
        max_min = max_min.max(mins[j]);
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let ls: [u8; 8] = std::array::from_fn(|j| nearest_int(inv_scale * scales[j]).min(63) as u8);
    let lm: [u8; 8] = std::array::from_fn(|j| nearest_int(inv_min * mins[j]).min(63) as u8);
    let packed = pack_scales_mins(&ls, &lm);
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    for j in 0..8 {
        let (sc, m) = q4_k_scale_min(&packed, j);
        let dl = d.to_f32() * sc as f32;
        if dl == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for i in 32 * j..32 * j + 32 {
            codes[i] = nearest_int((x[i] + dm) / dl).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, codes)
}

/// Appends one `Q4_K` block: `d`, `dmin`, 12 scale bytes, then 128 bytes where byte `l` of
/// each 32-byte group holds sub-block `2g` (low nibble) and `2g + 1` (high nibble).
pub(super) fn put_q4_k(out: &mut Vec<u8>, x: &[f32]) {
    let (d, dmin, scales, codes) = scale_min_block(x, 15, -1.0, 20);
    out.extend_from_slice(&d.to_le_bytes());
    out.extend_from_slice(&dmin.to_le_bytes());
    out.extend_from_slice(&scales);
    for g in 0..4 {
        out.extend((0..32).map(|l| codes[64 * g + l] | (codes[64 * g + 32 + l] << 4)));
    }
}

/// Appends one `Q5_K` block: as `Q4_K` with 5-bit codes, their fifth bits in 32 bytes `qh`
/// (bit `j` of byte `l` = weight `32j + l`) before the nibbles.
pub(super) fn put_q5_k(out: &mut Vec<u8>, x: &[f32]) {
    let (d, dmin, scales, codes) = scale_min_block(x, 31, -0.5, 15);
    out.extend_from_slice(&d.to_le_bytes());
    out.extend_from_slice(&dmin.to_le_bytes());
    out.extend_from_slice(&scales);
    out.extend((0..32).map(|l| (0..8).fold(0u8, |h, j| h | (((codes[32 * j + l] >> 4) & 1) << j))));
    for g in 0..4 {
        out.extend((0..32).map(|l| (codes[64 * g + l] & 0x0F) | ((codes[64 * g + 32 + l] & 0x0F) << 4)));
    }
}

/// Appends one `Q6_K` block: sixteen 16-weight sub-block fits, their scales quantized to
/// signed 8 bits against `d = −max/128` (the sign chosen so the largest scale maps to −128),
/// each weight re-rounded to `−32..=31`; stored as 128 bytes of low nibbles, 64 of high bit
/// pairs, 16 scales, `d`.
pub(super) fn put_q6_k(out: &mut Vec<u8>, x: &[f32]) {
    let mut codes = [0u8; 256];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs) = (0f32, 0f32);
    for (ib, s) in scales.iter_mut().enumerate() {
        *s = fit_scale(&x[16 * ib..16 * ib + 16], 32, &mut codes[16 * ib..16 * ib + 16]);
        if s.abs() > max_abs {
            max_abs = s.abs();
            max_scale = *s;
        }
    }
    let (d, sc) = if max_abs < 1e-15 {
        codes.fill(0); // llama.cpp writes an all-zero block
        (f16::ZERO, [0i8; 16])
    } else {
        let iscale = -128.0 / max_scale;
        let sc: [i8; 16] = std::array::from_fn(|ib| nearest_int(iscale * scales[ib]).min(127) as i8);
        let d = f16::from_f32(1.0 / iscale);
        for ib in 0..16 {
            let dl = d.to_f32() * sc[ib] as f32;
            if dl == 0.0 {
                continue;
            }
            for i in 16 * ib..16 * ib + 16 {
                codes[i] = (nearest_int(x[i] / dl).clamp(-32, 31) + 32) as u8;
            }
        }
        (d, sc)
    };
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for half in 0..2 {
        let c = &codes[128 * half..128 * half + 128];
        for l in 0..32 {
            ql[64 * half + l] = (c[l] & 0x0F) | ((c[l + 64] & 0x0F) << 4);
            ql[64 * half + l + 32] = (c[l + 32] & 0x0F) | ((c[l + 96] & 0x0F) << 4);
            qh[32 * half + l] =
                (c[l] >> 4) | ((c[l + 32] >> 4) << 2) | ((c[l + 64] >> 4) << 4) | ((c[l + 96] >> 4) << 6);
        }
    }
    out.extend_from_slice(&ql);
    out.extend_from_slice(&qh);
    out.extend(sc.iter().map(|&s| s as u8));
    out.extend_from_slice(&d.to_le_bytes());
}
