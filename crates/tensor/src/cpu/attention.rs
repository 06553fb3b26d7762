//! Fused causal scaled-dot-product attention, forward and backward (FlashAttention-style).
//!
//! For one head: `S = scale·Q Kᵀ + M`, `P = softmax(S)` row-wise, `O = P V`.
//! The forward never materialises the `(Tq, Tk)` matrix `P`: it walks key blocks with an
//! *online softmax* (running max `m` and normaliser `l`, rescaling the partial output when the
//! max grows) and keeps only the per-row log-sum-exp `L = m + ln l`. The backward recomputes
//! each block `P = exp(S − L)` from `Q`, `K` and `L`, and uses
//! `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP − Δ)` with `Δ_i = Σ_j dO_ij O_ij`,
//! `dQ = scale·dS K`, `dK = scale·dSᵀ Q` (derivation: docs/book, "Attention").
//!
//! Grouped-query attention: `H` query heads share `Hk` key/value heads, head `h` reads kv head
//! `h / (H / Hk)`. Causal masking with `Tq ≤ Tk` aligns the queries with the *last* `Tq` keys
//! (query `i` sees keys `j ≤ i + Tk − Tq`), which is what a KV-cache decode step needs.
//! The optional additive mask `M` is a constant (no gradient flows into it).
//! Block products go through `gemm` on one thread; parallelism is over heads (on the spinning
//! team when it is free, see [`team_for_each`]).

// Block scratch lives on the heap: 128×256 f64 blocks would take a large bite of a worker
// thread's stack.
#![allow(clippy::useless_vec)]

use super::matmul::{gemm_into, team_for_each, MatRef};
use crate::dtype::Float;

/// Query rows per block (tuned on Zen 4: 64×128 … 256×512 measured, 128×256 fastest at T = 1024).
pub const ATTN_BLOCK_Q: usize = 128;
/// Key rows per block.
pub const ATTN_BLOCK_K: usize = 256;

/// Query rows per block for causal attention over at most [`ATTN_SHORT_TK`] keys: smaller query
/// blocks skip more of the masked triangle (at T = 256 the blocks cover 62.5% of the T×T scores
/// instead of 75%), which outweighs the smaller products' lower GEMM efficiency there
/// (`yuanli bench attention`, Zen 4, AVX2 and AVX-512: 7% faster at T = 256, 3% slower at 1024).
pub const ATTN_BLOCK_Q_SHORT: usize = 64;
/// The longest key sequence that uses [`ATTN_BLOCK_Q_SHORT`].
pub const ATTN_SHORT_TK: usize = 512;

/// Block sizes `(query rows, key rows)` for one call.
fn blocks(dims: &AttnDims) -> (usize, usize) {
    if dims.causal && dims.tk <= ATTN_SHORT_TK {
        (ATTN_BLOCK_Q_SHORT, ATTN_BLOCK_K)
    } else {
        (ATTN_BLOCK_Q, ATTN_BLOCK_K)
    }
}

/// Where a `(B, heads, T, D)` operand's elements are: element `[b, h, t, d]` is at
/// `off + b·sb + h·sh + t·st + d` (the head dimension must be contiguous).
#[derive(Clone, Copy, Debug)]
pub struct HeadsView {
    /// Offset of element `[0, 0, 0, 0]`.
    pub off: usize,
    /// Batch stride.
    pub sb: usize,
    /// Head stride.
    pub sh: usize,
    /// Time stride (the row stride of one head's `(T, D)` matrix).
    pub st: usize,
}

impl HeadsView {
    fn at(&self, b: usize, h: usize) -> usize {
        self.off + b * self.sb + h * self.sh
    }
}

/// An additive mask broadcast to `(B, H, Tq, Tk)`: element at `off + b·s[0] + h·s[1] + i·s[2] + j·s[3]`.
#[derive(Clone, Copy, Debug)]
pub struct MaskView<'a, T> {
    /// The mask's buffer.
    pub data: &'a [T],
    /// Offset of element `[0, 0, 0, 0]`.
    pub off: usize,
    /// Strides (0 on broadcast axes).
    pub strides: [usize; 4],
}

/// Sizes and options of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    /// Batch size B.
    pub b: usize,
    /// Query heads H.
    pub h: usize,
    /// Key/value heads Hk (divides H).
    pub hk: usize,
    /// Query length Tq.
    pub tq: usize,
    /// Key length Tk.
    pub tk: usize,
    /// Head size D.
    pub d: usize,
    /// Multiplier of `Q Kᵀ`, usually `1/√D`.
    pub scale: f64,
    /// Whether query `i` is restricted to keys `j ≤ i + Tk − Tq`.
    pub causal: bool,
}

impl AttnDims {
    /// Number of keys visible to query row `i` (all `Tk` when not causal).
    fn keys_visible(&self, i: usize) -> usize {
        if self.causal {
            (i + 1 + self.tk - self.tq.min(self.tk)).min(self.tk)
        } else {
            self.tk
        }
    }
}

/// Writes `scale·Q_blk K_blkᵀ (+ mask)` into `s` (`bq × bk`, row stride `bk`). Columns past a
/// row's causal edge ([`AttnDims::keys_visible`]) hold garbage: callers zero them.
#[allow(clippy::too_many_arguments)]
fn scores_block<T: Float>(
    s: &mut [T],
    dims: &AttnDims,
    q: &[T],
    q_at: usize,
    q_st: usize,
    k: &[T],
    k_at: usize,
    k_st: usize,
    mask: Option<(&MaskView<'_, T>, usize, usize)>,
    i0: usize,
    bq: usize,
    j0: usize,
    bk: usize,
) {
    let scale = T::from_f64(dims.scale);
    gemm_into(
        bq,
        dims.d,
        bk,
        s,
        bk,
        false,
        q,
        MatRef { off: q_at + i0 * q_st, rs: q_st, cs: 1 },
        k,
        MatRef { off: k_at + j0 * k_st, rs: 1, cs: k_st },
        scale,
        1,
    );
    for r in 0..bq {
        let i = i0 + r;
        let row = &mut s[r * bk..(r + 1) * bk];
        if let Some((m, b, h)) = mask {
            let base = m.off + b * m.strides[0] + h * m.strides[1] + i * m.strides[2];
            for (c, v) in row.iter_mut().enumerate() {
                *v += m.data[base + (j0 + c) * m.strides[3]];
            }
        }
    }
}

/// Attention forward. Writes `out` `(B, H, Tq, D)` contiguous and `lse` `(B, H, Tq)` (`=`).
pub fn attention_forward<T: Float>(
    out: &mut [T],
    lse: &mut [T],
    dims: AttnDims,
    q: &[T],
    qv: HeadsView,
    k: &[T],
    kv: HeadsView,
    v: &[T],
    vv: HeadsView,
    mask: Option<MaskView<'_, T>>,
) {
    let AttnDims { h, hk, tq, d, .. } = dims;
    assert!(hk > 0 && h % hk == 0, "attention: {h} query heads are not a multiple of {hk} kv heads");
    let group = h / hk;
    if tq == 0 || d == 0 {
        return;
    }
    let (blk_q, blk_k) = blocks(&dims);
    let heads: Vec<_> = out.chunks_mut(tq * d).zip(lse.chunks_mut(tq)).enumerate().collect();
    team_for_each(heads, |(bh, (o, l_out))| {
        let (b, hq) = (bh / h, bh % h);
        let kvh = hq / group;
        let (q_at, k_at, v_at) = (qv.at(b, hq), kv.at(b, kvh), vv.at(b, kvh));
        // Score tiles hold at most min(block, sequence) rows and columns: a short sequence
        // zeroes a small buffer per head, not a full 128 × 256 tile.
        let mut s = vec![T::ZERO; blk_q.min(tq) * blk_k.min(dims.tk)];
        let mut m_run = vec![T::NEG_INFINITY; blk_q];
        let mut l_run = vec![T::ZERO; blk_q];
        for i0 in (0..tq).step_by(blk_q) {
            let bq = blk_q.min(tq - i0);
            let o_blk = &mut o[i0 * d..(i0 + bq) * d];
            o_blk.fill(T::ZERO);
            m_run[..bq].fill(T::NEG_INFINITY);
            l_run[..bq].fill(T::ZERO);
            let kend = dims.keys_visible(i0 + bq - 1);
            for j0 in (0..kend).step_by(blk_k) {
                let bk = blk_k.min(kend - j0);
                let sb = &mut s[..bq * bk];
                scores_block(
                    sb,
                    &dims,
                    q,
                    q_at,
                    qv.st,
                    k,
                    k_at,
                    kv.st,
                    mask.as_ref().map(|m| (m, b, hq)),
                    i0,
                    bq,
                    j0,
                    bk,
                );
                // Online softmax: new running max, rescale what was accumulated, add this block.
                // Columns past the causal edge are zeroed, not exponentiated.
                for r in 0..bq {
                    let row = &mut sb[r * bk..(r + 1) * bk];
                    let vis = dims.keys_visible(i0 + r).saturating_sub(j0).min(bk);
                    let (row, hidden) = row.split_at_mut(vis);
                    hidden.fill(T::ZERO);
                    let m_new = if vis == 0 { m_run[r] } else { m_run[r].max(T::max_slice(row)) };
                    if m_new == T::NEG_INFINITY {
                        row.fill(T::ZERO); // nothing visible yet in this row
                        continue;
                    }
                    let alpha = (m_run[r] - m_new).exp(); // 0 when m_run was −∞
                    let sum = T::exp_sub_sum(row, m_new);
                    l_run[r] = l_run[r] * alpha + sum;
                    m_run[r] = m_new;
                    if alpha != T::ONE {
                        T::scale_slice(&mut o_blk[r * d..(r + 1) * d], alpha);
                    }
                }
                // O_blk += P V_blk
                gemm_into(
                    bq,
                    bk,
                    d,
                    o_blk,
                    d,
                    true,
                    sb,
                    MatRef { off: 0, rs: bk, cs: 1 },
                    v,
                    MatRef { off: v_at + j0 * vv.st, rs: vv.st, cs: 1 },
                    T::ONE,
                    1,
                );
            }
            for r in 0..bq {
                let (m, l) = (m_run[r], l_run[r]);
                if l > T::ZERO {
                    T::scale_slice(&mut o_blk[r * d..(r + 1) * d], T::ONE / l);
                    l_out[i0 + r] = m + l.ln();
                } else {
                    l_out[i0 + r] = T::NEG_INFINITY; // a fully masked row: output 0
                }
            }
        }
    });
}

/// Attention backward. Accumulates (`+=`) into `dq` `(B, H, Tq, D)`, `dk` and `dv`
/// `(B, Hk, Tk, D)`, all contiguous; `out` and `lse` are the forward's outputs, `dout` is
/// contiguous `(B, H, Tq, D)`.
pub fn attention_backward<T: Float>(
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    dims: AttnDims,
    dout: &[T],
    out: &[T],
    lse: &[T],
    q: &[T],
    qv: HeadsView,
    k: &[T],
    kv: HeadsView,
    v: &[T],
    vv: HeadsView,
    mask: Option<MaskView<'_, T>>,
) {
    let AttnDims { h, hk, tq, tk, d, .. } = dims;
    let group = h / hk;
    if tq == 0 || tk == 0 || d == 0 {
        return;
    }
    let scale = T::from_f64(dims.scale);
    let (blk_q, blk_k) = blocks(&dims);
    // One task per (b, kv head): it owns dk, dv of that head and dq of its `group` query heads.
    let heads: Vec<_> =
        dq.chunks_mut(group * tq * d).zip(dk.chunks_mut(tk * d).zip(dv.chunks_mut(tk * d))).enumerate().collect();
    team_for_each(heads, |(bkv, (dq_g, (dk_h, dv_h)))| {
        let (b, kvh) = (bkv / hk, bkv % hk);
        let (k_at, v_at) = (kv.at(b, kvh), vv.at(b, kvh));
        let tile = blk_q.min(tq) * blk_k.min(tk);
        let mut p = vec![T::ZERO; tile];
        let mut dp = vec![T::ZERO; tile];
        let mut delta = vec![T::ZERO; blk_q];
        for gi in 0..group {
            let hq = kvh * group + gi;
            let q_at = qv.at(b, hq);
            let o_at = (b * h + hq) * tq * d; // out, dout and lse are contiguous
            let dq_h = &mut dq_g[gi * tq * d..(gi + 1) * tq * d];
            let lse_h = &lse[(b * h + hq) * tq..(b * h + hq + 1) * tq];
            for i0 in (0..tq).step_by(blk_q) {
                let bq = blk_q.min(tq - i0);
                // Δ_i = Σ_d dO_id O_id
                for r in 0..bq {
                    let row = o_at + (i0 + r) * d;
                    delta[r] = T::dot(&dout[row..row + d], &out[row..row + d]);
                }
                let kend = dims.keys_visible(i0 + bq - 1);
                for j0 in (0..kend).step_by(blk_k) {
                    let bk = blk_k.min(kend - j0);
                    let pb = &mut p[..bq * bk];
                    scores_block(
                        pb,
                        &dims,
                        q,
                        q_at,
                        qv.st,
                        k,
                        k_at,
                        kv.st,
                        mask.as_ref().map(|m| (m, b, hq)),
                        i0,
                        bq,
                        j0,
                        bk,
                    );
                    // P = exp(S − L), recomputed (masked entries were −∞ and become 0).
                    for r in 0..bq {
                        let l = lse_h[i0 + r];
                        let row = &mut pb[r * bk..(r + 1) * bk];
                        let vis = dims.keys_visible(i0 + r).saturating_sub(j0).min(bk);
                        let (row, hidden) = row.split_at_mut(if l == T::NEG_INFINITY { 0 } else { vis });
                        hidden.fill(T::ZERO);
                        T::exp_sub(row, l);
                    }
                    let do_ref = MatRef { off: o_at + i0 * d, rs: d, cs: 1 };
                    // dV_blk += Pᵀ dO_blk
                    gemm_into(
                        bk,
                        bq,
                        d,
                        &mut dv_h[j0 * d..(j0 + bk) * d],
                        d,
                        true,
                        pb,
                        MatRef { off: 0, rs: 1, cs: bk },
                        dout,
                        do_ref,
                        T::ONE,
                        1,
                    );
                    // dP = dO_blk V_blkᵀ
                    let dpb = &mut dp[..bq * bk];
                    gemm_into(
                        bq,
                        d,
                        bk,
                        dpb,
                        bk,
                        false,
                        dout,
                        do_ref,
                        v,
                        MatRef { off: v_at + j0 * vv.st, rs: 1, cs: vv.st },
                        T::ONE,
                        1,
                    );
                    // dS = P ⊙ (dP − Δ), stored over dP
                    for r in 0..bq {
                        for c in 0..bk {
                            dpb[r * bk + c] = pb[r * bk + c] * (dpb[r * bk + c] - delta[r]);
                        }
                    }
                    // dQ_blk += scale · dS K_blk
                    gemm_into(
                        bq,
                        bk,
                        d,
                        &mut dq_h[i0 * d..(i0 + bq) * d],
                        d,
                        true,
                        dpb,
                        MatRef { off: 0, rs: bk, cs: 1 },
                        k,
                        MatRef { off: k_at + j0 * kv.st, rs: kv.st, cs: 1 },
                        scale,
                        1,
                    );
                    // dK_blk += scale · dSᵀ Q_blk
                    gemm_into(
                        bk,
                        bq,
                        d,
                        &mut dk_h[j0 * d..(j0 + bk) * d],
                        d,
                        true,
                        dpb,
                        MatRef { off: 0, rs: 1, cs: bk },
                        q,
                        MatRef { off: q_at + i0 * qv.st, rs: qv.st, cs: 1 },
                        scale,
                        1,
                    );
                }
            }
        }
    });
}
