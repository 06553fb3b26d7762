//! Every fused op: gradient-checked in f64, and equal to its composite twin (built from
//! primitives) in f32, forward and backward.

mod common;
use common::{check, fused_matches_composite, randn};
use proptest::prelude::*;
use yuanli_autograd::{composite, AttentionOpts, GeluKind, RopeLayout, RopeOpts, Var};
use yuanli_tensor::{DType, Rng, RopeFreqs, Tensor};

// f32 tolerances for fused-vs-composite: both sides round differently; 1e-5 absolute plus
// 1e-4 relative is ~1000 ulps, far below any formula error (which shows up at 1e-2).
const ATOL: f64 = 1e-5;
const RTOL: f64 = 1e-4;

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn softmax_family(rows in 1usize..4, c in 1usize..7, seed in 0u64..1000) {
        let x = randn(&[rows, c], seed).mul_scalar(3.0);
        check("softmax", |v| v[0].softmax(), &[x.clone()]);
        check("log_softmax", |v| v[0].log_softmax(), &[x.clone()]);
        check("softmax of a transposed view", |v| v[0].t().softmax(), &[x.clone()]);
        fused_matches_composite("softmax", |v| v[0].softmax(), |v| composite::softmax(&v[0]), &[x.clone()], ATOL, RTOL);
        fused_matches_composite("log_softmax", |v| v[0].log_softmax(), |v| composite::log_softmax(&v[0]), &[x], ATOL, RTOL);
    }

    #[test]
    fn cross_entropy_with_ignore_index(b in 1usize..3, t in 1usize..4, v in 2usize..7, seed in 0u64..1000) {
        let logits = randn(&[b, t, v], seed).mul_scalar(2.0);
        let n = b * t;
        let ids: Vec<u32> = (0..n).map(|i| if i % 3 == 1 { 999 } else { ((i * 5 + seed as usize) % v) as u32 }).collect();
        let targets = Tensor::new(ids, &[b, t]);
        check("cross_entropy", |x| x[0].cross_entropy(&targets, Some(999)), &[logits.clone()]);
        fused_matches_composite("cross_entropy", |x| x[0].cross_entropy(&targets, Some(999)), |x| composite::cross_entropy(&x[0], &targets, Some(999)), &[logits], ATOL, RTOL);
    }

    #[test]
    fn linear(b in 1usize..3, t in 1usize..4, k in 1usize..5, n in 1usize..5, seed in 0u64..1000) {
        let (x, w, bias) = (randn(&[b, t, k], seed), randn(&[n, k], seed + 1), randn(&[n], seed + 2));
        check("linear", |v| v[0].linear(&v[1], Some(&v[2])), &[x.clone(), w.clone(), bias.clone()]);
        check("linear without bias", |v| v[0].linear(&v[1], None), &[x.clone(), w.clone()]);
        check("linear of a transposed input", |v| v[0].t().linear(&v[1], None), &[randn(&[k, t], seed + 3), w.clone()]);
        fused_matches_composite("linear", |v| v[0].linear(&v[1], Some(&v[2])), |v| composite::linear(&v[0], &v[1], Some(&v[2])), &[x.clone(), w.clone(), bias], ATOL, RTOL);
        fused_matches_composite("linear without bias", |v| v[0].linear(&v[1], None), |v| composite::linear(&v[0], &v[1], None), &[x, w], ATOL, RTOL);
    }

    #[test]
    fn norms(rows in 1usize..4, c in 2usize..9, seed in 0u64..1000) {
        let (x, w, b) = (randn(&[rows, c], seed), randn(&[c], seed + 1), randn(&[c], seed + 2));
        check("layer_norm", |v| v[0].layer_norm(&v[1], Some(&v[2]), 1e-5), &[x.clone(), w.clone(), b.clone()]);
        check("layer_norm without bias", |v| v[0].layer_norm(&v[1], None, 1e-5), &[x.clone(), w.clone()]);
        check("rms_norm", |v| v[0].rms_norm(&v[1], 1e-6), &[x.clone(), w.clone()]);
        fused_matches_composite("layer_norm", |v| v[0].layer_norm(&v[1], Some(&v[2]), 1e-5), |v| composite::layer_norm(&v[0], &v[1], Some(&v[2]), 1e-5), &[x.clone(), w.clone(), b], ATOL, RTOL);
        fused_matches_composite("rms_norm", |v| v[0].rms_norm(&v[1], 1e-6), |v| composite::rms_norm(&v[0], &v[1], 1e-6), &[x, w], ATOL, RTOL);
    }

    #[test]
    fn activations(s in prop::collection::vec(1usize..5, 1..3), seed in 0u64..1000) {
        let (x, y) = (randn(&s, seed).mul_scalar(2.0), randn(&s, seed + 1));
        for kind in [GeluKind::Tanh, GeluKind::Exact] {
            check("gelu", |v| v[0].gelu(kind), &[x.clone()]);
            fused_matches_composite("gelu", |v| v[0].gelu(kind), |v| composite::gelu(&v[0], kind), &[x.clone()], ATOL, RTOL);
        }
        check("silu", |v| v[0].silu(), &[x.clone()]);
        check("swiglu", |v| v[0].swiglu(&v[1]), &[x.clone(), y.clone()]);
        fused_matches_composite("silu", |v| v[0].silu(), |v| composite::silu(&v[0]), &[x.clone()], ATOL, RTOL);
        fused_matches_composite("swiglu", |v| v[0].swiglu(&v[1]), |v| composite::swiglu(&v[0], &v[1]), &[x.clone(), y], ATOL, RTOL);
        // Dropout: the same mask on both sides (one RNG draw each, same seed).
        let mask = yuanli_autograd::ops::activation::dropout_mask(&s, 0.3, DType::F32, &mut Rng::new(seed));
        check("dropout", |v| v[0].dropout(0.3, true, &mut Rng::new(seed)), &[x.clone()]);
        fused_matches_composite("dropout", |v| v[0].dropout(0.3, true, &mut Rng::new(seed)), |v| composite::dropout(&v[0], &mask), &[x], ATOL, RTOL);
    }

    #[test]
    fn embedding(vocab in 2usize..6, c in 1usize..4, seed in 0u64..1000) {
        let table = randn(&[vocab, c], seed);
        let ids = Tensor::new((0..6).map(|i| ((i * 3 + seed as usize) % vocab) as u32).collect::<Vec<_>>(), &[2, 3]);
        check("embedding", |v| v[0].embedding(&ids), &[table.clone()]);
        fused_matches_composite("embedding", |v| v[0].embedding(&ids), |v| composite::embedding(&v[0], &ids), &[table], ATOL, RTOL);
    }

    #[test]
    fn rope_both_layouts(b in 1usize..3, h in 1usize..3, t in 1usize..5, half in 1usize..4, pos0 in 0usize..5, seed in 0u64..1000) {
        let d = 2 * half;
        let x = randn(&[b, h, t, d], seed);
        // plain RoPE, and frequencies a scaling made (each θ_i divided, cos and sin × 1.2)
        let plain = RopeFreqs::new(d, 10000.0);
        let scaled = RopeFreqs { inv_freq: plain.inv_freq.iter().enumerate().map(|(i, f)| f / (1.0 + i as f64)).collect(), mscale: 1.2 };
        for (layout, freqs) in [(RopeLayout::HalfSplit, &plain), (RopeLayout::Interleaved, &plain), (RopeLayout::HalfSplit, &scaled)] {
            let o = RopeOpts { seq_axis: 2, pos0, freqs, layout };
            check("rope", |v| v[0].rope(o), &[x.clone()]);
            fused_matches_composite("rope", |v| v[0].rope(o), |v| composite::rope(&v[0], o), &[x.clone()], ATOL, RTOL);
            // (B, T, H, D) layout: the sequence axis is 1.
            let o1 = RopeOpts { seq_axis: 1, ..o };
            fused_matches_composite("rope (B,T,H,D)", |v| v[0].rope(o1), |v| composite::rope(&v[0], o1), &[x.clone()], ATOL, RTOL);
        }
    }

    #[test]
    fn attention_causal_gqa_and_masked(b in 1usize..3, hk in 1usize..3, group in 1usize..3, tq in 1usize..6, extra in 0usize..3, d in 1usize..5, seed in 0u64..1000) {
        let h = hk * group;
        let tk = tq + extra;
        let (q, k, v) = (randn(&[b, h, tq, d], seed), randn(&[b, hk, tk, d], seed + 1), randn(&[b, hk, tk, d], seed + 2));
        let causal = AttentionOpts { causal: true, ..Default::default() };
        check("attention causal", |x| Var::attention(&x[0], &x[1], &x[2], &causal), &[q.clone(), k.clone(), v.clone()]);
        fused_matches_composite("attention causal", |x| Var::attention(&x[0], &x[1], &x[2], &causal), |x| composite::attention(&x[0], &x[1], &x[2], &causal), &[q.clone(), k.clone(), v.clone()], ATOL, RTOL);
        let mask = randn(&[1, 1, tq, tk], seed + 3);
        let masked = AttentionOpts { causal: false, mask: Some(mask.clone()), scale: Some(0.7) };
        check("attention with additive mask", |x| Var::attention(&x[0], &x[1], &x[2], &masked), &[q.clone(), k.clone(), v.clone()]);
        let masked32 = AttentionOpts { mask: Some(mask.to_dtype(DType::F32)), ..masked };
        fused_matches_composite("attention masked", |x| Var::attention(&x[0], &x[1], &x[2], &masked32), |x| composite::attention(&x[0], &x[1], &x[2], &masked32), &[q, k, v], ATOL, RTOL);
    }
}

/// Shapes larger than one attention block (64 or 128 × 256), so the online-softmax rescaling across
/// key blocks and the multi-block backward both run; q/k/v are strided views of one tensor.
#[test]
fn attention_multi_block_strided_views_match_composite() {
    let (b, h, t, d) = (1, 2, 300, 16);
    let qkv = randn(&[b, t, 3, h, d], 5);
    let split = |x: &[Var], i: usize| x[0].narrow(2, i, 1).reshape(&[b, t, h, d]).permute(&[0, 2, 1, 3]);
    let causal = AttentionOpts { causal: true, ..Default::default() };
    fused_matches_composite(
        "attention multi-block",
        |x| Var::attention(&split(x, 0), &split(x, 1), &split(x, 2), &causal),
        |x| composite::attention(&split(x, 0), &split(x, 1), &split(x, 2), &causal),
        &[qkv],
        2e-5,
        2e-4,
    );
}

/// Causal attention whose queries are the last 200 of 300 positions (a continued prefill):
/// rows of a query block see no key of a later key block (the zero-width visible part), and a
/// sequence longer than the short-sequence block rule (640 keys) takes the long blocks.
#[test]
fn attention_offset_and_long_causal_match_composite() {
    let causal = AttentionOpts { causal: true, ..Default::default() };
    for (tq, tk) in [(200, 300), (640, 640)] {
        let (q, k, v) = (randn(&[1, 2, tq, 8], 7), randn(&[1, 1, tk, 8], 8), randn(&[1, 1, tk, 8], 9));
        fused_matches_composite(
            "attention offset/long",
            |x| Var::attention(&x[0], &x[1], &x[2], &causal),
            |x| composite::attention(&x[0], &x[1], &x[2], &causal),
            &[q, k, v],
            2e-5,
            2e-4,
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]

    /// LoRA's fused map over a frozen dense base, with and without dropout and bias: gradient-
    /// checked (x, A, B, bias) in f64 and equal to the composite with the same hashed mask.
    #[test]
    fn lora_linear(b in 1usize..3, t in 1usize..4, k in 1usize..6, n in 1usize..5, r in 1usize..4, p in prop::sample::select(vec![0.0, 0.3]), seed in 0u64..1000) {
        use yuanli_autograd::{Frozen, LoraOpts};
        let (x, w, bias) = (randn(&[b, t, k], seed), randn(&[n, k], seed + 1), randn(&[n], seed + 2));
        let (a, bm) = (randn(&[r, k], seed + 3), randn(&[n, r], seed + 4));
        let opts = LoraOpts { scale: 1.7, dropout: p, seed: seed * 31 + 7 };
        let w32 = w.to_dtype(DType::F32);
        check("lora_linear", |v| v[0].lora_linear(Frozen::Dense(&w), Some(&v[3]), &v[1], &v[2], opts), &[x.clone(), a.clone(), bm.clone(), bias.clone()]);
        check("lora_linear without bias", |v| v[0].lora_linear(Frozen::Dense(&w), None, &v[1], &v[2], opts), &[x.clone(), a.clone(), bm.clone()]);
        fused_matches_composite(
            "lora_linear",
            |v| v[0].lora_linear(Frozen::Dense(&w32), Some(&v[3]), &v[1], &v[2], opts),
            |v| composite::lora_linear(&v[0], &w32, Some(&v[3]), &v[1], &v[2], opts),
            &[x, a, bm, bias],
            ATOL,
            RTOL,
        );
    }

    /// The fused LM head and loss: gradient-checked (x and W) and equal to linear followed by
    /// cross-entropy, over more rows than one chunk holds when the vocabulary is large.
    #[test]
    fn linear_cross_entropy(n in 1usize..6, k in 1usize..5, v in 2usize..7, seed in 0u64..1000) {
        let (x, w) = (randn(&[n, k], seed), randn(&[v, k], seed + 1));
        let ids: Vec<u32> = (0..n).map(|i| ((i * 5 + seed as usize) % v) as u32).collect();
        let targets = Tensor::new(ids, &[n]);
        check("linear_cross_entropy", |x| x[0].linear_cross_entropy(&x[1], &targets), &[x.clone(), w.clone()]);
        fused_matches_composite(
            "linear_cross_entropy",
            |x| x[0].linear_cross_entropy(&x[1], &targets),
            |x| composite::cross_entropy(&composite::linear(&x[0], &x[1], None), &targets, None),
            &[x, w],
            ATOL,
            RTOL,
        );
    }

    /// Per-token log-probabilities through the fused head: gradient-checked with a frozen `W`
    /// (the fused path) and a trainable one (the composite it falls back to), and equal to
    /// linear, log-softmax and gather.
    #[test]
    fn linear_token_logps(n in 1usize..6, k in 1usize..5, v in 2usize..7, seed in 0u64..1000) {
        let (x, w) = (randn(&[n, k], seed), randn(&[v, k], seed + 1));
        let ids: Vec<u32> = (0..n).map(|i| ((i * 3 + seed as usize) % v) as u32).collect();
        let targets = Tensor::new(ids, &[n]);
        let (frozen, frozen32) = (w.to_dtype(DType::F64), w.to_dtype(DType::F32));
        check("linear_token_logps (frozen W)", |x| x[0].linear_token_logps(&Var::constant(frozen.clone()), &targets), &[x.clone()]);
        check("linear_token_logps (trainable W)", |x| x[0].linear_token_logps(&x[1], &targets), &[x.clone(), w.clone()]);
        let idx = targets.reshape(&[n, 1]);
        fused_matches_composite(
            "linear_token_logps",
            |x| x[0].linear_token_logps(&Var::constant(frozen32.clone()), &targets),
            |x| composite::linear(&x[0], &Var::constant(frozen32.clone()), None).log_softmax().gather(-1, &idx).reshape(&[n]),
            &[x],
            ATOL,
            RTOL,
        );
    }
}

/// Hashed dropout drops about p of the elements, the same ones for the same seed.
#[test]
fn hashed_dropout_is_repeatable_and_drops_p() {
    let ones = Tensor::ones(&[1000, 100], DType::F32);
    let (m1, m2, m3) = (ones.dropout_hashed(0.1, 5), ones.dropout_hashed(0.1, 5), ones.dropout_hashed(0.1, 6));
    assert_eq!(m1.to_vec::<f32>(), m2.to_vec::<f32>());
    assert_ne!(m1.to_vec::<f32>(), m3.to_vec::<f32>());
    let dropped = m1.to_vec::<f32>().iter().filter(|&&v| v == 0.0).count() as f64 / 1e5;
    assert!((dropped - 0.1).abs() < 0.005, "dropped {dropped}");
    let kept = m1.to_vec::<f32>().into_iter().find(|&v| v != 0.0).unwrap_or(0.0);
    assert!((kept - 1.0 / 0.9).abs() < 1e-6);
}

/// A vocabulary large enough that the fused head runs in several chunks of rows.
#[test]
fn linear_cross_entropy_in_several_chunks_matches_the_composite() {
    // 24 M logits a chunk: 2 rows of a 9 M vocabulary, so the 5 rows take chunks of 2, 2 and 1.
    let (n, k, v) = (5, 3, 9_000_000);
    let x = randn(&[n, k], 1);
    let w = randn(&[v, k], 2).mul_scalar(0.1);
    let targets = Tensor::new(vec![0u32, 7, 8_999_999, 123_456, 7], &[n]);
    fused_matches_composite(
        "linear_cross_entropy (chunked)",
        |x| x[0].linear_cross_entropy(&x[1], &targets),
        |x| composite::cross_entropy(&composite::linear(&x[0], &x[1], None), &targets, None),
        &[x, w],
        ATOL,
        RTOL,
    );
}
