//! A linear layer whose weight is frozen — an f32 parameter the store froze, or a stored BF16,
//! Q8_0 or Q4_1 matrix — still passes the gradient to its input (the basis of QLoRA): checked
//! against finite differences in f64. The weight itself gets no gradient.

use yuanli_autograd::gradcheck::{gradcheck, GradcheckOpts};
use yuanli_autograd::Var;
use yuanli_nn::{Init, Linear, Module, ParamStore, Weight};
use yuanli_tensor::{DType, QMatrix, QuantType, Rng, Tensor};

const IN: usize = 64; // two blocks of 32: the quantized formats need whole blocks
const OUT: usize = 5;

fn input(seed: u64) -> Tensor {
    Tensor::randn(&[2, 3, IN], 0.0, 1.0, DType::F64, &mut Rng::new(seed))
}

fn check_input_gradient(name: &str, layer: &Linear) {
    let worst = gradcheck(|v| layer.forward(&v[0]), &[input(1)], GradcheckOpts::default())
        .unwrap_or_else(|m| panic!("{name}: {m}"));
    assert!(worst <= 1.0, "{name}: worst ratio {worst}");
    // The weight is no leaf of the graph: nothing accumulates into it.
    let x = Var::leaf(input(2));
    layer.forward(&x).sum_all().backward();
    assert!(x.grad().is_some(), "{name}: the input gets its gradient");
    if let Weight::Param(w) = &layer.weight {
        assert!(!w.requires_grad() && w.grad().is_none(), "{name}: a frozen weight gets no gradient");
    }
}

#[test]
fn frozen_f32_weight_passes_the_gradient_to_its_input() {
    let mut store = ParamStore::new();
    store.set_trainable(|name, _| !name.ends_with("weight")); // freeze weights
    let layer = Linear::new(&mut store, "fc", IN, OUT, false, Init::Normal { std: 0.5 }, &mut Rng::new(3)).unwrap();
    assert_eq!((store.num_trainable(), store.num_params()), (0, OUT * IN), "nothing is trainable");
    check_input_gradient("frozen f32", &layer);
}

#[test]
fn stored_bf16_q8_0_and_q4_1_weights_pass_the_gradient_to_their_input() {
    let mut rng = Rng::new(4);
    let w: Vec<f32> = (0..OUT * IN).map(|_| rng.normal() as f32).collect();
    for ty in [QuantType::BF16, QuantType::Q8_0, QuantType::Q4_1] {
        let q = QMatrix::quantize(ty, OUT, IN, &w).unwrap();
        let mut store = ParamStore::new();
        let layer = Linear::stored(&mut store, "fc", q.clone(), false).unwrap();
        check_input_gradient(ty.name(), &layer);
        // The forward is the product with the dequantized matrix.
        let x = input(5).to_dtype(DType::F32);
        let got = layer.forward(&Var::constant(x.clone())).value().to_vec::<f32>();
        let want = x.linear(&Tensor::new(q.dequantize(), &[OUT, IN]), None).to_vec::<f32>();
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 1e-5, "{ty}: forward differs from the dequantized product by {err}");
    }
}
