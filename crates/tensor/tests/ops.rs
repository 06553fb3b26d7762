//! Tensor ops against naive references, on shapes that are not multiples of any block or
//! SIMD width, with transposed, narrowed and broadcast views.

use proptest::prelude::*;
use yuanli_tensor::cpu::{self, MatRef};
use yuanli_tensor::{DType, Device, Rng, RopeFreqs, RopeLayout, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, DType::F32, &mut Rng::new(seed))
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}: element {i}: {g} vs {w}");
    }
}

/// Naive (…, M, K)·(…, K, N) over explicit f64 data for checking.
fn naive_matmul(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let (a, b) = (a.to_dtype(DType::F64).contiguous(), b.to_dtype(DType::F64).contiguous());
    let (m, k, n) = (a.dim(-2), a.dim(-1), b.dim(-1));
    let batch = a.numel() / (m * k);
    let (av, bv) = (a.to_vec::<f64>(), b.to_vec::<f64>());
    let b_batch = b.numel() / (k * n);
    let mut out = Vec::new();
    for i in 0..batch {
        let ao = i * m * k;
        let bo = if b_batch == 1 { 0 } else { i * k * n };
        out.extend(cpu::matmul_naive(
            m,
            k,
            n,
            &av,
            MatRef { off: ao, rs: k, cs: 1 },
            &bv,
            MatRef { off: bo, rs: n, cs: 1 },
        ));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn matmul_matches_naive_for_every_layout(m in 1usize..40, k in 1usize..40, n in 1usize..40, ta in any::<bool>(), tb in any::<bool>(), seed in 0u64..10_000) {
        // Build A (m, k) and B (k, n) either directly or as transposed views.
        let a = if ta { randn(&[k, m], seed).t() } else { randn(&[m, k], seed) };
        let b = if tb { randn(&[n, k], seed + 1).t() } else { randn(&[k, n], seed + 1) };
        let got = a.matmul(&b).to_vec_f64();
        assert_close("matmul", &got, &naive_matmul(&a, &b), 1e-4);
        // f64 too (gradient checks run there).
        let got64 = a.to_dtype(DType::F64).matmul(&b.to_dtype(DType::F64)).to_vec_f64();
        assert_close("matmul f64", &got64, &naive_matmul(&a, &b), 1e-12);
    }

    #[test]
    fn large_products_split_over_the_team_match_naive(m in 64usize..300, k in 100usize..140, n in 80usize..120, ta in any::<bool>(), tb in any::<bool>(), seed in 0u64..10_000) {
        // m·k·n ≥ 2²⁰ multiply-adds: with more than one thread, row bands run on the spinning
        // team; bands end on multiples of 32 rows, and m is often not one.
        let a = if ta { randn(&[k, m], seed).t() } else { randn(&[m, k], seed) };
        let b = if tb { randn(&[n, k], seed + 1).t() } else { randn(&[k, n], seed + 1) };
        assert_close("large matmul", &a.matmul(&b).to_vec_f64(), &naive_matmul(&a, &b), 1e-4);
    }

    #[test]
    fn linear_is_matmul_with_transposed_weight_plus_bias(b in 1usize..3, t in 1usize..40, k in 1usize..20, n in 1usize..20, seed in 0u64..10_000) {
        let x = randn(&[b, t, k], seed);
        let w = randn(&[n, k], seed + 1);
        let bias = randn(&[n], seed + 2);
        let want = x.matmul(&w.t()).add(&bias).to_vec_f64();
        assert_close("linear", &x.linear(&w, Some(&bias)).to_vec_f64(), &want, 1e-5);
        assert_close("linear without bias", &x.linear(&w, None).to_vec_f64(), &x.matmul(&w.t()).to_vec_f64(), 1e-5);
        // A non-contiguous input and a transposed-view weight.
        let xt = randn(&[k, t], seed + 3).t();
        let wt = randn(&[k, n], seed + 4).t();
        assert_close("linear of views", &xt.linear(&wt, Some(&bias)).to_vec_f64(), &xt.matmul(&wt.t()).add(&bias).to_vec_f64(), 1e-5);
    }

    #[test]
    fn pad_axis_is_concat_with_zeros(s in prop::collection::vec(1usize..5, 1..4), axis in 0usize..3, before in 0usize..3, after in 0usize..3, seed in 0u64..10_000) {
        let a = axis % s.len();
        let x = randn(&s, seed);
        let x = if x.rank() >= 2 { x.t() } else { x }; // a transposed view is read through a copy
        let zeros = |l: usize| {
            let mut z = x.shape().to_vec();
            z[a] = l;
            Tensor::zeros(&z, DType::F32)
        };
        let want = Tensor::concat(&[zeros(before), x.contiguous(), zeros(after)], a as isize);
        let got = x.pad_axis(a as isize, before, after);
        prop_assert_eq!(got.shape(), want.shape());
        prop_assert_eq!(got.to_vec_f64(), want.to_vec_f64());
    }

    #[test]
    fn gemv_both_weight_layouts(k in 1usize..300, n in 1usize..300, seed in 0u64..10_000) {
        let x = randn(&[1, k], seed);
        let w = randn(&[k, n], seed + 1); // rows contiguous: axpy path
        assert_close("gemv (K,N)", &x.matmul(&w).to_vec_f64(), &naive_matmul(&x, &w), 1e-4);
        let wt = randn(&[n, k], seed + 2).t(); // weight stored [out, in]: dot path
        assert_close("gemv (N,K)ᵀ", &x.matmul(&wt).to_vec_f64(), &naive_matmul(&x, &wt), 1e-4);
    }

    #[test]
    fn batched_matmul_broadcasts_batch_axes(b in 1usize..4, m in 1usize..9, k in 1usize..9, n in 1usize..9, seed in 0u64..10_000) {
        let a = randn(&[b, m, k], seed);
        let w = randn(&[k, n], seed + 1);
        assert_close("(B,M,K)·(K,N)", &a.matmul(&w).to_vec_f64(), &naive_matmul(&a, &w), 1e-4);
        let bb = randn(&[b, k, n], seed + 2);
        assert_close("(B,M,K)·(B,K,N)", &a.matmul(&bb).to_vec_f64(), &naive_matmul(&a, &bb), 1e-4);
    }

    #[test]
    fn reductions_match_naive(s in prop::collection::vec(1usize..6, 1..4), axis in 0usize..3, seed in 0u64..10_000) {
        let x = randn(&s, seed);
        let a = axis % s.len();
        let v = x.to_vec_f64();
        let outer: usize = s[..a].iter().product();
        let inner: usize = s[a + 1..].iter().product();
        let (mut sum, mut mx, mut arg) = (vec![0.0; outer * inner], vec![f64::NEG_INFINITY; outer * inner], vec![0u32; outer * inner]);
        for o in 0..outer {
            for j in 0..s[a] {
                for i in 0..inner {
                    let val = v[(o * s[a] + j) * inner + i];
                    sum[o * inner + i] += val;
                    if val > mx[o * inner + i] {
                        mx[o * inner + i] = val;
                        arg[o * inner + i] = j as u32;
                    }
                }
            }
        }
        assert_close("sum", &x.sum(&[a as isize], false).to_vec_f64(), &sum, 1e-5);
        let mean: Vec<f64> = sum.iter().map(|t| t / s[a] as f64).collect();
        assert_close("mean", &x.mean(&[a as isize], true).to_vec_f64(), &mean, 1e-5);
        assert_close("max", &x.max(&[a as isize], false).to_vec_f64(), &mx, 0.0);
        prop_assert_eq!(x.argmax(a as isize).to_vec::<u32>(), arg);
    }

    #[test]
    fn binary_broadcast_of_noncontiguous_views(r in 2usize..7, c in 2usize..7, seed in 0u64..10_000) {
        let a = randn(&[c, r], seed).t(); // (r, c) transposed view
        let b = randn(&[1, c], seed + 1);
        let got = a.add(&b).to_vec_f64();
        let (av, bv) = (a.contiguous().to_vec_f64(), b.to_vec_f64());
        let want: Vec<f64> = (0..r * c).map(|i| av[i] + bv[i % c]).collect();
        assert_close("broadcast add", &got, &want, 1e-6);
        let n = a.narrow(1, 1, c - 1);
        let want_n: Vec<f64> = (0..r).flat_map(|i| (1..c).map(move |j| (i, j))).map(|(i, j)| av[i * c + j] * 2.0).collect();
        assert_close("narrow then mul", &n.mul_scalar(2.0).to_vec_f64(), &want_n, 1e-6);
    }
}

#[test]
fn views_share_storage_and_reshape_copies_only_when_it_must() {
    let x = Tensor::new((0..24).map(|i| i as f32).collect::<Vec<_>>(), &[2, 3, 4]);
    let p = x.permute(&[2, 0, 1]);
    assert!(p.same_storage(&x) && !p.is_contiguous());
    assert_eq!(p.shape(), [4, 2, 3]);
    assert_eq!(p.narrow(0, 1, 1).to_vec::<f32>(), vec![1.0, 5.0, 9.0, 13.0, 17.0, 21.0]);
    let r = x.reshape(&[6, 4]);
    assert!(r.same_storage(&x));
    let rp = p.reshape(&[24]);
    assert!(!rp.same_storage(&x), "merging permuted axes must copy");
    assert_eq!(rp.to_vec::<f32>()[..4], [0.0, 4.0, 8.0, 12.0]);
    let b = Tensor::new(vec![1.0f32, 2.0], &[2, 1]).broadcast_as(&[3, 2, 4]);
    assert_eq!(b.strides(), [0, 1, 0]);
    assert_eq!(b.contiguous().to_vec::<f32>().iter().sum::<f32>(), 3.0 * (4.0 + 8.0));
    assert_eq!(x.unsqueeze(0).shape(), [1, 2, 3, 4]);
    assert_eq!(x.unsqueeze(0).squeeze(0).shape(), [2, 3, 4]);
}

#[test]
fn softmax_handles_masked_rows_and_log_softmax_agrees() {
    let ninf = f32::NEG_INFINITY;
    let x = Tensor::new(vec![1.0f32, 2.0, ninf, 3.0, ninf, ninf, ninf, ninf], &[2, 4]);
    let s = x.softmax().to_vec::<f32>();
    assert_eq!(s[2], 0.0);
    assert!((s[..4].iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert_eq!(&s[4..], &[0.0; 4], "an all −∞ row gives zeros, not NaN");
    let ls = x.narrow(0, 0, 1).log_softmax().exp().to_vec::<f32>();
    assert_close(
        "exp(log_softmax)",
        &ls.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        &s[..4].iter().map(|&v| v as f64).collect::<Vec<_>>(),
        1e-6,
    );
}

#[test]
fn indexing_ops() {
    let x = Tensor::new((0..12).map(|i| i as f32).collect::<Vec<_>>(), &[3, 4]);
    let ids = Tensor::new(vec![2u32, 0, 2], &[3]);
    assert_eq!(x.index_select(&ids).to_vec::<f32>()[..4], [8.0, 9.0, 10.0, 11.0]);
    let g = x.index_select(&ids).index_add_rows(&ids, 3);
    assert_eq!(g.to_vec::<f32>()[8..], [16.0, 18.0, 20.0, 22.0]);
    let idx = Tensor::new(vec![3u32, 0, 1, 1, 2, 2], &[3, 2]);
    assert_eq!(x.gather(1, &idx).to_vec::<f32>(), vec![3.0, 0.0, 5.0, 5.0, 10.0, 10.0]);
    let back = Tensor::zeros(&[3, 4], DType::F32).scatter_add(1, &idx, &Tensor::ones(&[3, 2], DType::F32));
    assert_eq!(back.to_vec::<f32>(), vec![1.0, 0.0, 0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0]);
    let parts = x.split(1, &[1, 3]);
    assert_eq!(Tensor::concat(&parts, 1).to_vec::<f32>(), x.to_vec::<f32>());
    let (v, i) = Tensor::new(vec![0.5f32, 3.0, -1.0, 3.0, 2.0], &[5]).topk(3);
    assert_eq!((v.to_vec::<f32>(), i.to_vec::<u32>()), (vec![3.0, 3.0, 2.0], vec![1, 3, 4]));
    let mask = Tensor::new(vec![1.0f32, 0.0, 0.0, 1.0], &[1, 4]);
    let filled = x.masked_fill(&mask, -9.0).to_vec::<f32>();
    assert_eq!(filled[..4], [-9.0, 1.0, 2.0, -9.0]);
    assert_eq!(filled[4..8], [-9.0, 5.0, 6.0, -9.0]);
}

#[test]
fn dtype_conversions_round_trip() {
    let x = Tensor::new(vec![1.5f32, -2.25, 1024.0], &[3]);
    for dt in [DType::F64, DType::F16, DType::BF16] {
        assert_eq!(x.to_dtype(dt).to_dtype(DType::F32).to_vec::<f32>(), x.to_vec::<f32>(), "{dt}");
    }
    assert_eq!(Tensor::arange(4, DType::U32).to_vec::<u32>(), vec![0, 1, 2, 3]);
}

#[test]
fn outside_input_gets_errors_not_panics() {
    let err = Tensor::from_vec(vec![1.0f32; 5], &[2, 3]).expect_err("wrong length");
    let msg = err.to_string();
    assert!(msg.contains("from_vec") && msg.contains("[2, 3]") && msg.contains('5'), "{msg}");
    let err = Device::Cuda(0).check().expect_err("no CUDA in this build");
    assert!(err.to_string().contains("cuda:0"));
    assert!(x_cpu().to_device(Device::Cuda(1)).is_err());
}

fn x_cpu() -> Tensor {
    Tensor::zeros(&[2], DType::F32)
}

#[test]
#[should_panic(expected = "matmul: inner dimensions differ: [2, 3] · [4, 5]")]
fn shape_contract_violations_name_the_op_and_shapes() {
    randn(&[2, 3], 0).matmul(&randn(&[4, 5], 1));
}

#[test]
fn rope_backward_inverts_forward_and_keeps_norms() {
    for layout in [RopeLayout::HalfSplit, RopeLayout::Interleaved] {
        let x = randn(&[2, 3, 5, 8], 3).to_dtype(DType::F64);
        let f = RopeFreqs::new(8, 10000.0);
        let y = x.rope(2, 7, &f, layout);
        let back = y.rope_backward(2, 7, &f, layout);
        assert_close("rope⁻¹(rope(x))", &back.to_vec_f64(), &x.to_vec_f64(), 1e-12);
        let n = |t: &Tensor| t.sqr().sum_all().item();
        assert!((n(&x) - n(&y)).abs() < 1e-9, "rotations keep the norm");
    }
}

#[test]
fn attention_decode_row_equals_last_row_of_full_causal() {
    // A KV-cache step: one query against all keys equals the last row of the full pass.
    let (b, h, t, d) = (2, 4, 37, 16);
    let (q, k, v) = (randn(&[b, h, t, d], 1), randn(&[b, h, t, d], 2), randn(&[b, h, t, d], 3));
    let full = Tensor::attention(&q, &k, &v, None, true, None).out;
    let last = Tensor::attention(&q.narrow(2, t - 1, 1), &k, &v, None, true, None).out;
    assert_close("decode row", &last.to_vec_f64(), &full.narrow(2, t - 1, 1).to_vec_f64(), 1e-5);
}

#[test]
fn add_matmul_accumulates_alpha_times_the_product_into_a_band() {
    // out (7, 5) += 0.5 · a (7, 3) · Wᵀ, W (5, 3) read through its transposed view; the output
    // is a band of rows of a larger buffer, so the rows around it must not change.
    let (a, w) = (randn(&[7, 3], 1), randn(&[5, 3], 2));
    let big = randn(&[10, 5], 3);
    let before = big.to_vec_f64();
    big.narrow(0, 2, 7).add_matmul_(&a, &w.t(), 0.5);
    let prod = naive_matmul(&a, &w.t().contiguous());
    let after = big.to_vec_f64();
    for (i, (&got, &was)) in after.iter().zip(&before).enumerate() {
        let (r, c) = (i / 5, i % 5);
        let want = if (2..9).contains(&r) { was + 0.5 * prod[(r - 2) * 5 + c] } else { was };
        assert!((got - want).abs() < 1e-5 * (1.0 + want.abs()), "element ({r}, {c}): {got} vs {want}");
    }
}

#[test]
fn cross_entropy_grad_in_place_equals_loss_and_backward() {
    // Enough rows to split into bands on two threads; a row whose target is its largest logit.
    let (n, v) = (613, 301);
    let x = randn(&[n, v], 4).to_dtype(DType::F64);
    let ids: Vec<u32> = (0..n as u32).map(|i| (i * 97 + 5) % v as u32).collect();
    let t = Tensor::new(ids, &[n]);
    let (losses, lse) = x.cross_entropy_rows(&t, None);
    let g = 0.25;
    let want = x.cross_entropy_rows_backward(&t, &lse, &Tensor::full(g, &[n], DType::F64), None);
    let d = x.copy();
    let got_losses = d.cross_entropy_grad_(&t, g);
    assert_close("losses", &got_losses.to_vec_f64(), &losses.to_vec_f64(), 1e-12);
    assert_close("g·(softmax − onehot)", &d.to_vec_f64(), &want.to_vec_f64(), 1e-12);
}

#[test]
fn rope_in_parallel_bands_equals_the_formula_row_by_row() {
    // (B, T, H, D) with enough rows for several bands: each element against cos/sin of its own
    // position, computed here in f64 — with frequencies no plain RoPE has (each θ_i divided by
    // 1 + i/8, as a scaling would) and a factor 1.25 on cos and sin (YaRN's temperature).
    let (b, t, h, d, pos0, base, m) = (4, 80, 9, 64, 3, 10000.0, 1.25);
    let theta = |i: usize| f64::powf(base, -2.0 * i as f64 / d as f64) / (1.0 + i as f64 / 8.0);
    let freqs = RopeFreqs { inv_freq: (0..d / 2).map(theta).collect(), mscale: m };
    let x = randn(&[b, t, h, d], 9).to_dtype(DType::F64);
    let y = x.rope(1, pos0, &freqs, RopeLayout::HalfSplit).to_vec_f64();
    let xs = x.to_vec_f64();
    for (i, (&got, _)) in y.iter().zip(&xs).enumerate() {
        let (c, row) = (i % d, i / d);
        let p = (row / h) % t + pos0;
        let (pair, first) = if c < d / 2 { (c, true) } else { (c - d / 2, false) };
        let ang = p as f64 * theta(pair);
        let (x1, x2) = (xs[row * d + pair], xs[row * d + pair + d / 2]);
        let want = m * if first { x1 * ang.cos() - x2 * ang.sin() } else { x1 * ang.sin() + x2 * ang.cos() };
        assert!((got - want).abs() < 1e-12, "element {i} (position {p}, channel {c}): {got} vs {want}");
    }
}
