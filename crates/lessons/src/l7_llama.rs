//! Lesson 7: from GPT to LLaMA — the four changes a modern open model makes to the GPT-2 block
//! (RMSNorm, RoPE, SwiGLU, grouped-query attention), each checked numerically with the engine's
//! own ops, then a real LLaMA-family model (SmolLM2-135M-Instruct, a GGUF file) loaded and asked
//! a question.
//!
//! The first four parts need no files and take milliseconds; the last needs
//! `models/SmolLM2-135M-Instruct.Q4_1.gguf` (`tools/fetch_models.sh` fetches it, or set
//! `YUANLI_MODEL` to another LLaMA-family `.gguf` file or Hugging Face directory).

use crate::LessonOpts;
use anyhow::Context;
use serde_json::json;
use std::ops::ControlFlow;
use std::path::PathBuf;
use yuanli_autograd::{AttentionOpts, RopeOpts, Var};
use yuanli_models::{generate, load_pretrained, LlamaConfig, Message, SamplingParams};
use yuanli_tensor::{DType, Rng, RopeFreqs, RopeLayout, Tensor};
use yuanli_tokenizer::SpecialMode;

/// SmolLM2-135M's hyper-parameters, as its GGUF file states them (part 5 prints the file's own).
pub fn smollm2_135m() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 49_152,
        hidden_size: 576,
        intermediate_size: 1536,
        n_layer: 30,
        n_head: 9,
        n_kv_head: 3,
        head_dim: 64,
        rope_theta: 100_000.0,
        rope_scaling: Default::default(),
        rope_layout: RopeLayout::Interleaved,
        rms_norm_eps: 1e-5,
        max_seq_len: 8192,
        tie_word_embeddings: true,
        attention_bias: false,
        extras: Default::default(),
    }
}

/// Where the lesson looks for the model: `$YUANLI_MODEL`, else `models/` beside `data/`.
pub fn model_path(opts: &LessonOpts) -> PathBuf {
    match std::env::var_os("YUANLI_MODEL") {
        Some(p) => PathBuf::from(p),
        None => opts.data_dir.join("../models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    }
}

/// A difference for print: `0 (bit for bit)` or `1.2e-7`.
fn show(d: f64) -> String {
    if d == 0.0 {
        "0 (bit for bit)".into()
    } else {
        format!("{d:.1e}")
    }
}

/// Largest `|a_i − b_i|`.
fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max)
}

/// A constant `Var` of standard normal f32 values.
fn randn(shape: &[usize], rng: &mut Rng) -> Var {
    Var::constant(Tensor::randn(shape, 0.0, 1.0, DType::F32, rng))
}

// ANCHOR: rope_helpers
/// `R(p)·x` for one head vector `x` of size `D` at position `p`, by the engine's rope op:
/// channel pair `i` is rotated by the angle `p·θ_i`, `θ_i = base^(−2i/D)`.
fn rotate(x: &Var, p: usize, base: f64, layout: RopeLayout) -> Vec<f32> {
    // x is (B=1, T=1, H=1, D); its single position is `p`.
    let freqs = RopeFreqs::new(x.shape()[3], base);
    x.rope(RopeOpts { seq_axis: 1, pos0: p, freqs: &freqs, layout }).value().to_vec::<f32>()
}

/// `q·k` accumulated in f64.
fn dot(q: &[f32], k: &[f32]) -> f64 {
    q.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// The channel order of the interleaved layout, in terms of the half-split one: interleaved
/// channel `2i + j` (`j ∈ {0, 1}`) is half-split channel `j·D/2 + i`. This is the row
/// permutation llama.cpp's converter applies to `q_proj` and `k_proj` when it writes a GGUF file.
pub fn interleave_permutation(d: usize) -> Vec<usize> {
    (0..d).map(|c| (c % 2) * (d / 2) + c / 2).collect()
}
// ANCHOR_END: rope_helpers

/// Parts 1–4: the mechanisms, on random data and SmolLM2's sizes. Needs no files.
pub fn mechanisms(opts: &LessonOpts) -> serde_json::Value {
    let say = |s: String| crate::say(opts, &s);
    let cfg = smollm2_135m();
    let mut rng = Rng::new(opts.seed);

    // ANCHOR: rmsnorm
    // RMSNorm(x) = x / √(mean(x²) + ε) ⊙ g;  LayerNorm(x) = (x − μ) / √(var(x) + ε) ⊙ g + b.
    // When μ = 0, var(x) = mean(x²), so the two agree (with b = 0).
    let c = cfg.hidden_size;
    let eps = cfg.rms_norm_eps;
    let x: Vec<f32> = (0..c).map(|_| 1.0 + rng.normal() as f32).collect(); // mean ≈ 1
    let mu = x.iter().sum::<f32>() / c as f32;
    let centered: Vec<f32> = x.iter().map(|v| v - mu).collect();
    let g = Var::constant(Tensor::new((0..c).map(|_| 1.0 + 0.1 * rng.normal() as f32).collect::<Vec<_>>(), &[c]));
    let zero = Var::constant(Tensor::new(vec![0.0f32; c], &[c]));
    let norms = |v: &[f32]| {
        let v = Var::constant(Tensor::new(v.to_vec(), &[1, c])); // (1, C)
        let rms = v.rms_norm(&g, eps).value().to_vec::<f32>();
        let ln = v.layer_norm(&g, Some(&zero), eps).value().to_vec::<f32>();
        max_diff(&rms, &ln)
    };
    let (rms_vs_ln_centered, rms_vs_ln_raw) = (norms(&centered), norms(&x));
    // ANCHOR_END: rmsnorm
    say("Lesson 7 — from GPT to LLaMA: four changes to the block, then a real model\n".into());
    say("1. RMSNorm: drop LayerNorm's mean and bias".into());
    say(format!("   on a zero-mean vector (C = {c}): |RMSNorm − LayerNorm| ≤ {}", show(rms_vs_ln_centered)));
    say(format!("   on the same vector before centring (mean {mu:.2}): they differ by up to {rms_vs_ln_raw:.2}"));
    let norm_params_saved = (2 * cfg.n_layer + 1) * c;
    say(format!(
        "   per vector: one reduction instead of two, ≈4C instead of ≈7C flops, C parameters instead of 2C\n   \
         (SmolLM2's {} norms: {norm_params_saved} fewer parameters)\n",
        2 * cfg.n_layer + 1
    ));

    // ANCHOR: rope
    // q_m·k_n after rotation depends only on m − n: check pairs with the same distance.
    let d = cfg.head_dim;
    let base = cfg.rope_theta;
    let (q, k) = (randn(&[1, 1, 1, d], &mut rng), randn(&[1, 1, 1, d], &mut rng)); // (B, T, H, D)
    let score = |m: usize, n: usize, layout| dot(&rotate(&q, m, base, layout), &rotate(&k, n, base, layout));
    let pairs = [(3, 1), (10, 8), (100, 98), (1000, 998)];
    let scores: Vec<f64> = pairs.iter().map(|&(m, n)| score(m, n, RopeLayout::HalfSplit)).collect();
    let rope_relative_spread = scores.iter().map(|s| (s - scores[0]).abs()).fold(0.0, f64::max);
    let other_distance = score(3, 2, RopeLayout::HalfSplit);

    // The interleaved layout is the half-split one with the channels reordered.
    let perm = interleave_permutation(d);
    let permute = |v: &[f32]| perm.iter().map(|&i| v[i]).collect::<Vec<f32>>();
    let q_half = q.value().to_vec::<f32>();
    let q_inter = Var::constant(Tensor::new(permute(&q_half), &[1, 1, 1, d]));
    let layouts_diff = max_diff(
        &permute(&rotate(&q, 7, base, RopeLayout::HalfSplit)),
        &rotate(&q_inter, 7, base, RopeLayout::Interleaved),
    );
    // ANCHOR_END: rope
    say(format!("2. RoPE (D = {d}, base θ = {base}): rotate q and k by their positions, then take q·k"));
    for (&(m, n), s) in pairs.iter().zip(&scores) {
        say(format!("   (m, n) = ({m:>4}, {n:>4}), m − n = {}: q·k = {s:+.6}", m - n));
    }
    say(format!("   (m, n) = (   3,    2), m − n = 1: q·k = {other_distance:+.6}   (another distance, another score)"));
    say(format!("   same distance ⇒ same score, up to {}", show(rope_relative_spread)));
    say(format!(
        "   half-split (Hugging Face) vs interleaved (GGUF) after reordering the channels: {}\n",
        show(layouts_diff)
    ));

    // ANCHOR: swiglu
    // SwiGLU(x) = W_down · (silu(W_gate x) ⊙ W_up x), silu(z) = z·σ(z): three matrices C×F.
    // A GELU MLP W₂·gelu(W₁x) with hidden 4C has 8C² parameters; F = 8C/3 matches it.
    let f = cfg.intermediate_size;
    let xs = randn(&[4, c], &mut rng); // (4 positions, C)
    let w = |rng: &mut Rng| Var::constant(Tensor::randn(&[c, f], 0.0, 1.0 / (c as f64).sqrt(), DType::F32, rng));
    let (w_gate, w_up) = (w(&mut rng), w(&mut rng));
    let (gate, up) = (xs.matmul(&w_gate), xs.matmul(&w_up)); // (4, F) each
    let fused = gate.swiglu(&up).value().to_vec::<f32>();
    let by_hand: Vec<f32> = gate
        .value()
        .to_vec::<f32>()
        .iter()
        .zip(up.value().to_vec::<f32>())
        .map(|(&z, u)| z / (1.0 + (-z).exp()) * u)
        .collect();
    let swiglu_diff = max_diff(&fused, &by_hand);
    let swiglu_params = 3 * c * f;
    let gelu_params = 2 * c * (4 * c);
    // ANCHOR_END: swiglu
    say(format!("3. SwiGLU: fused silu(gate) ⊙ up vs z·σ(z)·u by hand: {}", show(swiglu_diff)));
    say(format!(
        "   SwiGLU with F = {f}: 3·C·F = {swiglu_params} parameters; GELU MLP with 4C = {}: 2·C·4C = {gelu_params}\n",
        4 * c
    ));

    // ANCHOR: gqa
    // Grouped-query attention: H query heads share Hk key/value heads (query head h reads kv
    // head h / (H/Hk)). It is exactly MHA with each kv head repeated H/Hk times...
    let (h, hk, t) = (cfg.n_head, cfg.n_kv_head, 16);
    let qh = randn(&[1, h, t, d], &mut rng); // (B, H, T, D)
    let (kh, vh) = (randn(&[1, hk, t, d], &mut rng), randn(&[1, hk, t, d], &mut rng)); // (B, Hk, T, D)
    let repeat = |v: &Var| {
        let data = v.value().to_vec::<f32>();
        let rep: Vec<f32> =
            (0..h).flat_map(|i| data[(i / (h / hk)) * t * d..(i / (h / hk) + 1) * t * d].to_vec()).collect();
        Var::constant(Tensor::new(rep, &[1, h, t, d])) // (B, H, T, D)
    };
    let causal = AttentionOpts { causal: true, ..Default::default() };
    let gqa = Var::attention(&qh, &kh, &vh, &causal).value().to_vec::<f32>();
    let mha = Var::attention(&qh, &repeat(&kh), &repeat(&vh), &causal).value().to_vec::<f32>();
    let gqa_diff = max_diff(&gqa, &mha);
    // ...but the cache stores only the Hk heads: 2·L·Hk·D values per token.
    let mha_cfg = LlamaConfig { n_kv_head: cfg.n_head, ..cfg.clone() };
    let (kv_gqa, kv_mha) = (cfg.kv_bytes_per_token(4), mha_cfg.kv_bytes_per_token(4));
    let ctx = 2048;
    let mib = |bytes: usize| (bytes * ctx) as f64 / (1024.0 * 1024.0);
    // ANCHOR_END: gqa
    say(format!("4. Grouped-query attention: H = {h} query heads, Hk = {hk} key/value heads"));
    say(format!("   GQA vs MHA with each kv head repeated {}×: {}", h / hk, show(gqa_diff)));
    say(format!(
        "   KV cache (f32) per token: 2·L·Hk·D·4 = {kv_gqa} bytes ({:.0} KiB); as full MHA {kv_mha} bytes ({:.0} KiB)",
        kv_gqa as f64 / 1024.0,
        kv_mha as f64 / 1024.0
    ));
    say(format!(
        "   for a {ctx}-token context: {:.0} MiB instead of {:.0} MiB; {} fewer parameters in k_proj and v_proj\n",
        mib(kv_gqa),
        mib(kv_mha),
        mha_cfg.num_params() - cfg.num_params()
    ));

    json!({
        "rmsnorm_vs_layernorm_zero_mean_max_diff": rms_vs_ln_centered,
        "rmsnorm_vs_layernorm_shifted_max_diff": rms_vs_ln_raw,
        "norm_params_saved": norm_params_saved,
        "rope_scores_same_distance": scores,
        "rope_relative_max_diff": rope_relative_spread,
        "rope_score_other_distance": other_distance,
        "rope_layouts_max_diff": layouts_diff,
        "swiglu_fused_vs_formula_max_diff": swiglu_diff,
        "swiglu_params": swiglu_params,
        "gelu_mlp_params": gelu_params,
        "gqa_vs_repeated_mha_max_diff": gqa_diff,
        "kv_bytes_per_token_gqa_f32": kv_gqa,
        "kv_bytes_per_token_mha_f32": kv_mha,
        "kv_mib_2048_gqa_f32": mib(kv_gqa),
        "kv_mib_2048_mha_f32": mib(kv_mha),
    })
}

/// Runs lesson 7.
pub fn run(opts: &LessonOpts) -> anyhow::Result<serde_json::Value> {
    let say = |s: String| crate::say(opts, &s);
    let mut out = mechanisms(opts);
    out["lesson"] = json!(7);
    let path = model_path(opts);
    if !path.exists() {
        say(format!(
            "5. No model at {}: run tools/fetch_models.sh (or set YUANLI_MODEL to a .gguf file)\n   \
             to load SmolLM2-135M-Instruct and talk to it. Parts 1–4 above need no model.",
            path.display()
        ));
        out["model_loaded"] = json!(false);
        return Ok(out);
    }

    // ANCHOR: load
    let pre = load_pretrained(&path).with_context(|| format!("loading {}", path.display()))?;
    let m = &pre.model.config;
    // ANCHOR_END: load
    say(format!("5. A real LLaMA: {}", pre.description));
    let rows = [
        ("layers L", m.n_layer.to_string()),
        ("hidden C", m.hidden_size.to_string()),
        ("query heads H", m.n_head.to_string()),
        ("kv heads Hk", m.n_kv_head.to_string()),
        ("head size D", m.head_dim.to_string()),
        ("SwiGLU width F", m.intermediate_size.to_string()),
        ("vocabulary V", m.vocab_size.to_string()),
        ("RoPE base θ", m.rope_theta.to_string()),
        ("RoPE layout", format!("{:?}", m.rope_layout)),
        ("tied embeddings", m.tie_word_embeddings.to_string()),
    ];
    for (name, value) in &rows {
        say(format!("   {name:<16} {value}"));
    }
    say(format!(
        "   parameters       {} ({:.0} MB as f32 in memory)\n   KV cache (f32)   {} bytes per token",
        m.num_params(),
        m.num_params() as f64 * 4.0 / 1e6,
        m.kv_bytes_per_token(4)
    ));

    // ANCHOR: chat
    let question = "What is gravity? Answer in one sentence.";
    let prompt = match &pre.chat_template {
        Some(t) => t.render(&[Message::new("user", question)], true).map_err(anyhow::Error::msg)?,
        None => question.to_string(),
    };
    let mut ids: Vec<u32> = pre.bos.filter(|_| pre.add_bos).into_iter().collect();
    ids.extend(pre.tokenizer.encode(&prompt, SpecialMode::Allow)?);
    let eos = pre.eos.clone();
    let stop = |id: u32| if eos.contains(&id) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) };
    let g = generate(&pre.model, &ids, 64, SamplingParams::greedy(), opts.seed, &mut |id| stop(id))?;
    let answer_ids: Vec<u32> = g.tokens.iter().copied().filter(|id| !eos.contains(id)).collect();
    let answer = pre.tokenizer.decode_lossy(&answer_ids)?;
    // ANCHOR_END: chat
    say(format!("\n   user: {question}\n   assistant: {}", answer.trim()));
    let decode_tok_s = (g.tokens.len().saturating_sub(1)) as f64 / g.decode_secs.max(1e-9);
    say(format!(
        "   ({} prompt tokens in {:.2} s, then {:.1} tokens/s, greedy)",
        ids.len(),
        g.prefill_secs,
        decode_tok_s
    ));
    say("\n   more: yuanli generate / yuanli chat / yuanli perplexity --model <file> (see the chapter)".into());

    out["model_loaded"] = json!(true);
    out["model"] = json!(pre.description);
    out["num_params"] = json!(m.num_params());
    out["kv_bytes_per_token_f32"] = json!(m.kv_bytes_per_token(4));
    out["answer"] = json!(answer.trim());
    out["answer_tokens"] = json!(g.tokens);
    out["decode_tok_s"] = json!(decode_tok_s);
    out["weight_types"] = json!(pre.weight_types);
    Ok(out)
}
