//! Every primitive op against central finite differences, over random shapes, broadcasting
//! and non-contiguous views.

mod common;
use common::{check, positive, randn};
use proptest::prelude::*;
use yuanli_autograd::Var;
use yuanli_tensor::Tensor;

fn shape_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..4, 1..4)
}

/// A shape that broadcasts against `s`: some axes set to 1, maybe fewer leading axes.
fn broadcast_of(s: &[usize], mask: u32, drop_lead: bool) -> Vec<usize> {
    let mut b: Vec<usize> = s.iter().enumerate().map(|(i, &d)| if mask >> i & 1 == 1 { 1 } else { d }).collect();
    if drop_lead && b.len() > 1 {
        b.remove(0);
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn binary_ops_with_broadcasting(s in shape_strategy(), mask in 0u32..8, drop in any::<bool>(), seed in 0u64..1000) {
        let t = broadcast_of(&s, mask, drop);
        let (a, b, bp) = (randn(&s, seed), randn(&t, seed + 1), positive(&t, seed + 2));
        check("add", |v| v[0].add(&v[1]), &[a.clone(), b.clone()]);
        check("sub", |v| v[1].sub(&v[0]), &[a.clone(), b.clone()]);
        check("mul", |v| v[0].mul(&v[1]), &[a.clone(), b.clone()]);
        check("div", |v| v[0].div(&v[1]), &[a.clone(), bp]);
        check("minimum", |v| v[0].minimum(&v[1]), &[a.clone(), b.clone()]);
        check("maximum", |v| v[1].maximum(&v[0]), &[a.clone(), b.clone()]);
    }

    #[test]
    fn unary_ops(s in shape_strategy(), seed in 0u64..1000) {
        let (x, p) = (randn(&s, seed), positive(&s, seed));
        check("neg", |v| v[0].neg(), &[x.clone()]);
        check("exp", |v| v[0].exp(), &[x.clone()]);
        check("log", |v| v[0].log(), &[p.clone()]);
        check("sqrt", |v| v[0].sqrt(), &[p.clone()]);
        check("pow", |v| v[0].powf(2.5), &[p.clone()]);
        check("tanh", |v| v[0].tanh(), &[x.clone()]);
        check("sigmoid", |v| v[0].sigmoid(), &[x.clone()]);
        check("log_sigmoid", |v| v[0].log_sigmoid(), &[x.clone()]);
        check("log_sigmoid far out", |v| v[0].scale(12.0).log_sigmoid(), &[x.clone()]);
        check("clamp", |v| v[0].clamp(-0.5, 0.7), &[x.clone()]);
        check("relu", |v| v[0].relu(), &[x.clone()]);
        check("erf", |v| v[0].erf(), &[x.clone()]);
        check("affine", |v| v[0].affine(-1.5, 0.25), &[x]);
    }

    #[test]
    fn reductions(s in shape_strategy(), axis_pick in 0usize..3, keep in any::<bool>(), seed in 0u64..1000) {
        let x = randn(&s, seed);
        let axis = (axis_pick % s.len()) as isize;
        check("sum", |v| v[0].sum(&[axis], keep), &[x.clone()]);
        check("sum over -1", |v| v[0].sum(&[-1], keep), &[x.clone()]);
        check("mean", |v| v[0].mean(&[axis], keep), &[x.clone()]);
        check("max", |v| v[0].max(&[axis], keep), &[x.clone()]);
        check("sum_all", |v| v[0].sum_all(), &[x]);
    }

    #[test]
    fn matmul_batched_broadcast_and_transposed(m in 1usize..5, k in 1usize..5, n in 1usize..5, b in 1usize..3, seed in 0u64..1000) {
        let (a, w) = (randn(&[b, m, k], seed), randn(&[k, n], seed + 1));
        check("matmul (B,M,K)·(K,N)", |v| v[0].matmul(&v[1]), &[a.clone(), w]);
        let wt = randn(&[n, k], seed + 2);
        check("matmul A·Bᵀ (view)", |v| v[0].matmul(&v[1].t()), &[a.clone(), wt]);
        let at = randn(&[b, k, m], seed + 3);
        let bb = randn(&[b, k, n], seed + 4);
        check("matmul Aᵀ·B batched", |v| v[0].t().matmul(&v[1]), &[at, bb]);
    }

    #[test]
    fn views_and_copies(s in prop::collection::vec(2usize..4, 2..4), seed in 0u64..1000) {
        let x = randn(&s, seed);
        let r = s.len();
        let total: usize = s.iter().product();
        check("reshape", |v| v[0].reshape(&[total]), &[x.clone()]);
        let perm: Vec<usize> = (0..r).rev().collect();
        check("permute", |v| v[0].permute(&perm), &[x.clone()]);
        check("reshape of a permuted view", |v| v[0].permute(&perm).reshape(&[total]), &[x.clone()]);
        check("narrow", |v| v[0].narrow(-1, 1, s[r - 1] - 1), &[x.clone()]);
        check("narrow then exp", |v| v[0].narrow(0, 0, 1).exp(), &[x.clone()]);
        let y = randn(&s, seed + 7);
        check("concat", |v| Var::concat(&[v[0].clone(), v[1].clone()], 0), &[x.clone(), y]);
        let mut bshape = vec![3];
        bshape.extend(&s);
        check("broadcast_as", |v| v[0].broadcast_as(&bshape), &[x.clone()]);
        check("transpose of a transpose", |v| v[0].transpose(0, -1).t(), &[x]);
    }

    #[test]
    fn indexing_and_where(rows in 2usize..5, cols in 1usize..4, seed in 0u64..1000) {
        let x = randn(&[rows, cols], seed);
        let ids: Vec<u32> = (0..5).map(|i| ((i * 7 + seed as usize) % rows) as u32).collect();
        let ids_t = Tensor::new(ids.clone(), &[5]);
        check("index_select (repeated ids)", |v| v[0].index_select(&ids_t), &[x.clone()]);
        let gidx: Vec<u32> = (0..rows * 2).map(|i| ((i + seed as usize) % cols) as u32).collect();
        let gidx = Tensor::new(gidx, &[rows, 2]);
        check("gather", |v| v[0].gather(1, &gidx), &[x.clone()]);
        let cond = Tensor::new((0..rows * cols).map(|i| (i % 3 == 0) as u32 as f64).collect::<Vec<_>>(), &[rows, cols]);
        let y = randn(&[1, cols], seed + 1);
        check("where (broadcast branch)", |v| Var::where_cond(&cond, &v[0], &v[1]), &[x, y]);
    }
}
