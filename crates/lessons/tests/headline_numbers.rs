//! Each lesson reaches the numbers its chapter promises (the acceptance criteria).

use std::path::PathBuf;
use yuanli_lessons::LessonOpts;

fn opts() -> LessonOpts {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    LessonOpts {
        data_dir: root.join("data"),
        out_dir: std::env::temp_dir().join("yuanli-lesson-tests"),
        seed: 1337,
        quiet: true,
    }
}

#[test]
fn lesson2_mlp_reaches_97_percent_test_accuracy_on_digits() {
    let o = opts();
    std::fs::create_dir_all(&o.out_dir).unwrap();
    let out = yuanli_lessons::l2_digits::run(&o).unwrap();
    let acc = out["test_accuracy"].as_f64().unwrap();
    assert!(acc >= 0.97, "test accuracy {acc}");
    assert!(std::path::Path::new(out["plot"].as_str().unwrap()).exists(), "the bias–variance plot is written");
}

#[test]
fn lesson3_mlp_beats_the_bigram_by_0_3_nats_and_both_bigrams_agree() {
    let out = yuanli_lessons::l3_char_lm::run(&opts()).unwrap();
    let (counts, mlp) = (out["bigram_counts_val_loss"].as_f64().unwrap(), out["mlp_val_loss"].as_f64().unwrap());
    assert!(counts - mlp >= 0.3, "bigram {counts} vs MLP {mlp}");
    let (ct, lt) =
        (out["bigram_counts_train_loss"].as_f64().unwrap(), out["bigram_learned_train_loss"].as_f64().unwrap());
    assert!((lt - ct).abs() < 0.01, "gradient descent should find the counted optimum: {lt} vs {ct}");
}

#[test]
fn lesson5_fused_attention_equals_the_textbook_formula_and_draws_the_heads() {
    let o = opts();
    std::fs::create_dir_all(&o.out_dir).unwrap();
    let out = yuanli_lessons::l5_attention::run(&o).unwrap();
    assert!(out["fused_vs_textbook_max_diff"].as_f64().unwrap() < 1e-5, "{out}");
    assert!(out["val_loss"].as_f64().unwrap() < 2.8, "a trained model beats the ~4.3 of uniform guessing: {out}");
    assert!(std::path::Path::new(out["plot"].as_str().unwrap()).exists());
}

#[test]
fn lesson7_rmsnorm_rope_swiglu_and_gqa_check_out_and_gqa_shrinks_the_cache_threefold() {
    // The model-free parts only: they take milliseconds; the model is checked in
    // crates/models/tests/smollm2_reference.rs.
    let out = yuanli_lessons::l7_llama::mechanisms(&opts());
    for key in ["rmsnorm_vs_layernorm_zero_mean_max_diff", "rope_relative_max_diff", "swiglu_fused_vs_formula_max_diff"]
    {
        assert!(out[key].as_f64().unwrap() < 1e-5, "{key}: {out}");
    }
    assert!(out["rmsnorm_vs_layernorm_shifted_max_diff"].as_f64().unwrap() > 0.1, "a mean makes them differ: {out}");
    assert_eq!(out["rope_layouts_max_diff"].as_f64().unwrap(), 0.0, "the layouts are one rotation, permuted");
    assert!(out["gqa_vs_repeated_mha_max_diff"].as_f64().unwrap() < 1e-6, "{out}");
    assert_eq!(out["swiglu_params"], out["gelu_mlp_params"], "F = 8C/3 matches a 4C GELU MLP");
    assert_eq!(out["kv_bytes_per_token_gqa_f32"], 46_080);
    assert_eq!(out["kv_bytes_per_token_mha_f32"], 138_240);
}

#[test]
fn lesson8_block_formats_err_as_uniform_rounding_predicts_and_the_kernel_adds_almost_nothing() {
    // The model-free part only (milliseconds); decoding speed and perplexity need the model.
    let out = yuanli_lessons::l8_quantization::model_free(&opts());
    let formats = out["formats"].as_array().unwrap();
    let rel = |name: &str| formats.iter().find(|f| f["type"] == name).unwrap()["relative_error"].as_f64().unwrap();
    assert!(rel("F16") < rel("BF16") && rel("BF16") < rel("Q8_0") && rel("Q8_0") < rel("Q4_1"), "{out}");
    for f in formats.iter().filter(|f| !f["predicted_rms"].is_null()) {
        let (rms, pred) = (f["rms_error"].as_f64().unwrap(), f["predicted_rms"].as_f64().unwrap());
        assert!((rms / pred - 1.0).abs() < 0.15, "step/√12 predicts the RMS error: {f}");
    }
    assert_eq!(out["q4_1_by_hand_vs_dequantize_max_diff"].as_f64().unwrap(), 0.0, "d·q + m by hand is the library");
    let (int_dot, float_dot) = (out["int_dot"].as_f64().unwrap(), out["float_dot"].as_f64().unwrap());
    assert!((int_dot - float_dot).abs() < 1e-4 * float_dot.abs().max(1e-3), "{int_dot} vs {float_dot}");
    let (kernel, weights) =
        (out["qmatmul_kernel_rel_error"].as_f64().unwrap(), out["qmatmul_weights_rel_error"].as_f64().unwrap());
    assert!(kernel < weights / 100.0, "16-bit activations are noise next to 4-bit weights: {kernel} vs {weights}");
    assert!(out["q4_1_outlier_block_rms"].as_f64().unwrap() > 3.0 * out["q4_1_other_block_rms"].as_f64().unwrap());
    assert_eq!(out["kv_bytes_per_token_f32"], 46_080);
    assert_eq!(out["kv_bytes_per_token_f16"], 23_040);
}

#[test]
fn lesson12_alibi_holds_its_loss_at_4x_the_training_length_where_learned_positions_do_not() {
    let o = opts();
    std::fs::create_dir_all(&o.out_dir).unwrap();
    let out = yuanli_lessons::l12_positions::run(&o).unwrap();
    assert!(out["permutation_gap_no_positions"].as_f64().unwrap() < 1e-12, "{out}");
    assert!(out["permutation_gap_sinusoidal"].as_f64().unwrap() > 1e-2, "{out}");
    let row = |name: &str| {
        let r = out["table"].as_array().unwrap().iter().find(|r| r["positions"] == name).unwrap().clone();
        (r["loss_1x"].as_f64().unwrap(), r["loss_4x"].as_f64().unwrap())
    };
    let (alibi1, alibi4) = row("alibi");
    assert!(alibi4 - alibi1 < 0.1, "ALiBi extrapolates: {alibi1} → {alibi4}");
    for name in ["learned", "sinusoidal"] {
        let (a, b) = row(name);
        assert!(b - a > 0.2, "{name} does not extrapolate: {a} → {b}");
    }
    let (rope1, _) = row("rope");
    assert!(rope1 < row("none").0, "RoPE beats no positions within the training length");
    for key in ["plot", "scaling_plot"] {
        assert!(std::path::Path::new(out[key].as_str().unwrap()).exists(), "{key}");
    }
}
