//! Gradient checks of each position scheme as GPT applies it: an embedding `x (B, T, C)` gets
//! its positions (sinusoidal added; RoPE rotating queries and keys; ALiBi's scores added to
//! attention; learned = a trainable table added; none), then one causal attention of `x` over
//! itself. Finite differences in f64 against the backward pass, with respect to `x` (and the
//! learned table).

use yuanli_autograd::gradcheck::{gradcheck, GradcheckOpts};
use yuanli_autograd::{AttentionOpts, RopeOpts, Var};
use yuanli_models::positions::{alibi_bias, sinusoidal_table, Positions};
use yuanli_tensor::{DType, Rng, RopeFreqs, RopeLayout, Tensor};

const B: usize = 2;
const T: usize = 5;
const H: usize = 2;
const HS: usize = 4;
const C: usize = H * HS;

/// Causal self-attention of `x (B, T, C)` under `positions` (`table`: the learned rows).
fn block(x: &Var, table: Option<&Var>, positions: Positions) -> Var {
    let x = match (positions, table) {
        (Positions::Learned, Some(p)) => x.add(p),
        (Positions::Sinusoidal, _) => x.add(&Var::constant(sinusoidal_table(T, C).to_dtype(DType::F64))),
        _ => x.clone(),
    };
    let heads = x.reshape(&[B, T, H, HS]);
    let freqs = RopeFreqs::new(HS, 10_000.0);
    let rotated = match positions {
        Positions::Rope => heads.rope(RopeOpts { seq_axis: 1, pos0: 0, freqs: &freqs, layout: RopeLayout::HalfSplit }),
        _ => heads.clone(),
    };
    let (q, k, v) = (rotated.permute(&[0, 2, 1, 3]), rotated.permute(&[0, 2, 1, 3]), heads.permute(&[0, 2, 1, 3]));
    let mask = (positions == Positions::Alibi).then(|| alibi_bias(H, T, T, DType::F64));
    Var::attention(&q, &k, &v, &AttentionOpts { causal: true, mask, scale: None })
}

#[test]
fn every_position_scheme_passes_a_gradient_check() {
    let mut rng = Rng::new(5);
    let x = Tensor::randn(&[B, T, C], 0.0, 1.0, DType::F64, &mut rng);
    let table = Tensor::randn(&[T, C], 0.0, 0.5, DType::F64, &mut rng);
    for positions in Positions::ALL {
        let worst = if positions == Positions::Learned {
            gradcheck(|v| block(&v[0], Some(&v[1]), positions), &[x.clone(), table.clone()], GradcheckOpts::default())
        } else {
            gradcheck(|v| block(&v[0], None, positions), std::slice::from_ref(&x), GradcheckOpts::default())
        }
        .unwrap_or_else(|m| panic!("{}: {m}", positions.name()));
        // the largest |analytic − numeric| in units of the tolerance 1e-6 + 1e-5·|g|
        assert!(worst <= 1.0, "{}: {worst}", positions.name());
    }
}

#[test]
fn the_schemes_differ_where_they_should() {
    // A test that cannot fail is a defect: the schemes give different outputs from the same x
    // (a scheme silently ignored would agree with "none").
    let _g = yuanli_autograd::no_grad();
    let mut rng = Rng::new(6);
    let x = Var::constant(Tensor::randn(&[B, T, C], 0.0, 1.0, DType::F64, &mut rng));
    let outs: Vec<Vec<f64>> = [Positions::Sinusoidal, Positions::Rope, Positions::Alibi, Positions::None]
        .iter()
        .map(|&p| block(&x, None, p).value().to_vec_f64())
        .collect();
    for i in 0..outs.len() {
        for j in i + 1..outs.len() {
            let d = outs[i].iter().zip(&outs[j]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(d > 1e-3, "schemes {i} and {j} agree ({d})");
        }
    }
}
