//! Lesson 8: quantization and the KV cache — what a weight costs in bits and in error, how the
//! kernels multiply straight from the packed blocks, why generating a token is bound by memory
//! bandwidth rather than arithmetic, and what the KV cache saves and costs.
//!
//! Part 1 (block formats, their error, one block decoded by hand, the integer dot product) and
//! the KV cache sizes need no files and take milliseconds. The rest loads
//! `models/SmolLM2-135M-Instruct.Q4_1.gguf` (as lesson 7 does; `YUANLI_MODEL` overrides it) and
//! measures: memory bandwidth, decode speed, decoding with and without the cache, and the
//! fast quantized path against the exact f32 one.

use crate::l7_llama::{model_path, smollm2_135m};
use crate::LessonOpts;
use anyhow::Context;
use serde_json::json;
use std::ops::ControlFlow;
use std::time::Instant;
use yuanli_models::generate::feed;
use yuanli_models::load::{load_pretrained_with, LoadOptions};
use yuanli_models::{generate, CausalLm, LlamaConfig, Message, SamplingParams, SessionOpts};
use yuanli_tensor::cpu::qmatmul::{qmatmul, QuantizedActs};
use yuanli_tensor::cpu::SpinPool;
use yuanli_tensor::quant::{dequantize_row, quantize_row, QuantType};
use yuanli_tensor::Rng;
use yuanli_tokenizer::SpecialMode;

/// The types part 1 compares, widest first.
const TYPES: [QuantType; 5] = [QuantType::F16, QuantType::BF16, QuantType::Q8_0, QuantType::Q4_1, QuantType::Q4_0];

// ANCHOR: error
/// Quantizes `x` to `ty` and back: the bytes and the values they stand for.
fn round_trip(ty: QuantType, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = Vec::new();
    quantize_row(ty, x, &mut bytes).expect("a type with an encoder");
    let mut y = vec![0f32; x.len()];
    dequantize_row(ty, &bytes, &mut y);
    (bytes, y)
}

/// The error of `y` as a copy of `x`: (RMS error, largest error, RMS error / RMS of `x`).
fn error_stats(x: &[f32], y: &[f32]) -> (f64, f64, f64) {
    let n = x.len() as f64;
    let err2: f64 = x.iter().zip(y).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let max = x.iter().zip(y).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max);
    let x2: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    ((err2 / n).sqrt(), max, (err2 / x2).sqrt())
}

/// Uniform rounding with step `Δ` errs uniformly in `[−Δ/2, Δ/2]`: RMS `Δ/√12`. The block
/// formats store their step `d` (an f16) in each block's first two bytes, so the prediction
/// for a row is `√(mean(d²)/12)`. (Q4_0's `d` is signed: its sign flips the grid.)
fn predicted_rms(ty: QuantType, bytes: &[u8]) -> Option<f64> {
    if !matches!(ty, QuantType::Q8_0 | QuantType::Q4_0 | QuantType::Q4_1) {
        return None;
    }
    let steps: Vec<f64> = bytes.chunks_exact(ty.block_bytes()).map(|b| f16_by_hand(u16_at(b, 0)) as f64).collect();
    Some((steps.iter().map(|d| d * d).sum::<f64>() / steps.len() as f64 / 12.0).sqrt())
}
// ANCHOR_END: error

// ANCHOR: f16
/// A little-endian `u16` at byte `i`.
fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

/// IEEE half precision by hand: 1 sign bit `s`, 5 exponent bits `e`, 10 mantissa bits `m`;
/// `(−1)^s · 2^(e−15) · (1 + m/1024)`, or `(−1)^s · 2^(−14) · m/1024` when `e = 0`.
fn f16_by_hand(h: u16) -> f32 {
    let (s, e, m) = ((h >> 15) as i32, ((h >> 10) & 0x1f) as i32, (h & 0x3ff) as f32);
    let sign = if s == 1 { -1.0 } else { 1.0 };
    match e {
        0 => sign * 2f32.powi(-14) * m / 1024.0,
        31 => sign * if m == 0.0 { f32::INFINITY } else { f32::NAN },
        _ => sign * 2f32.powi(e - 15) * (1.0 + m / 1024.0),
    }
}
// ANCHOR_END: f16

/// Part 1 and the KV cache sizes: the formats on a random row, one block by hand, the integer
/// dot product and `qmatmul`. Needs no files.
pub fn model_free(opts: &LessonOpts) -> serde_json::Value {
    let say = |s: String| crate::say(opts, &s);
    let mut rng = Rng::new(opts.seed);

    // ANCHOR: rows
    // A weight row as trained networks have them: Gaussian, σ = 0.02. The second row is the same
    // with 8 outliers of ±0.5 (25σ), as real weight matrices have a few.
    let n = 4096;
    let gauss: Vec<f32> = (0..n).map(|_| 0.02 * rng.normal() as f32).collect();
    let mut outliers = gauss.clone();
    let outlier_at: Vec<usize> = (0..8).map(|i| i * 509 + 17).collect();
    for (k, &i) in outlier_at.iter().enumerate() {
        outliers[i] = if k % 2 == 0 { 0.5 } else { -0.5 };
    }
    // ANCHOR_END: rows
    say("Lesson 8 — quantization and the KV cache\n".into());
    say(format!(
        "1. Block formats on a row of {n} Gaussian weights (σ = 0.02), and the same row with 8 outliers of ±0.5"
    ));
    say("   type   bits/weight   RMS error   step/√12    max error   relative   relative with outliers".into());
    let mut table = Vec::new();
    for ty in TYPES {
        let (bytes, y) = round_trip(ty, &gauss);
        let (rms, max, rel) = error_stats(&gauss, &y);
        let pred = predicted_rms(ty, &bytes);
        let (_, yo) = round_trip(ty, &outliers);
        let (_, _, rel_o) = error_stats(&outliers, &yo);
        say(format!(
            "   {:<6} {:>8.2}      {rms:>9.2e}   {:>9}   {max:>9.2e}   {:>7.3}%   {:>7.3}%",
            ty.name(),
            ty.bits_per_weight(),
            pred.map_or("—".to_string(), |p| format!("{p:.2e}")),
            100.0 * rel,
            100.0 * rel_o
        ));
        table.push(json!({
            "type": ty.name(), "bits_per_weight": ty.bits_per_weight(), "rms_error": rms,
            "predicted_rms": pred, "max_error": max, "relative_error": rel,
            "relative_error_with_outliers": rel_o,
        }));
    }
    // In the blocks that hold an outlier, the step is set by the outlier: the other 31 weights
    // of the block are rounded on a grid 10× coarser.
    let (_, yo) = round_trip(QuantType::Q4_1, &outliers);
    let in_outlier_block = |b: usize| outlier_at.iter().any(|&i| i / 32 == b);
    let block_rms = |hit: bool| {
        let errs: Vec<f64> = (0..n)
            .filter(|&i| in_outlier_block(i / 32) == hit && !outlier_at.contains(&i))
            .map(|i| ((outliers[i] - yo[i]) as f64).powi(2))
            .collect();
        (errs.iter().sum::<f64>() / errs.len() as f64).sqrt()
    };
    let (rms_outlier_blocks, rms_other_blocks) = (block_rms(true), block_rms(false));
    say(format!(
        "   Q4_1 with outliers: the ordinary weights of the 8 blocks that hold one err by {rms_outlier_blocks:.2e} (RMS),\n   \
         those of the other {} blocks by {rms_other_blocks:.2e}: {:.0}× — one large weight coarsens its whole block\n",
        n / 32 - 8,
        rms_outlier_blocks / rms_other_blocks
    ));

    // ANCHOR: q4_1_block
    // Block 0 of the Gaussian row in Q4_1: d (f16), m (f16), then 16 bytes of nibbles; byte 4 + j
    // holds weight j in its low nibble and weight j + 16 in its high one. Weight = d·q + m.
    let (bytes, y) = round_trip(QuantType::Q4_1, &gauss);
    let block = &bytes[..QuantType::Q4_1.block_bytes()];
    let (d, m) = (f16_by_hand(u16_at(block, 0)), f16_by_hand(u16_at(block, 2)));
    let by_hand: Vec<f32> = (0..32)
        .map(|i| {
            let byte = block[4 + i % 16];
            let q = if i < 16 { byte & 0x0f } else { byte >> 4 };
            d * q as f32 + m
        })
        .collect();
    let hand_vs_library = by_hand.iter().zip(&y).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max);
    // ANCHOR_END: q4_1_block
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ");
    say("   One Q4_1 block (32 weights in 20 bytes), byte by byte:".into());
    say(format!(
        "   bytes 0–1  {}        d = f16 0x{:04x} = {d:.6e}   (step: (max − min)/15)",
        hex(&block[..2]),
        u16_at(block, 0)
    ));
    say(format!(
        "   bytes 2–3  {}        m = f16 0x{:04x} = {m:.6e}   (the block's minimum)",
        hex(&block[2..4]),
        u16_at(block, 2)
    ));
    say(format!("   bytes 4–19 {}", hex(&block[4..])));
    for j in [0usize, 1] {
        let b = block[4 + j];
        let (lo, hi) = (b & 0x0f, b >> 4);
        say(format!(
            "   byte {}: 0x{b:02x} → w{j} = d·{lo:>2} + m = {:+.5} (was {:+.5}),  w{} = d·{hi:>2} + m = {:+.5} (was {:+.5})",
            4 + j,
            by_hand[j],
            gauss[j],
            j + 16,
            by_hand[j + 16],
            gauss[j + 16]
        ));
    }
    say(format!("   all 32 decoded by hand vs dequantize_row: {}\n", show(hand_vs_library)));

    // ANCHOR: int_dot
    // The kernels never rebuild f32 weights. Activations a are quantized to 16 bits per block,
    // a ≈ d_a·q_a, and a block's contribution to a dot product is
    //   Σ (d q_w + m)(d_a q_a) = d·d_a·Σ q_w q_a + m·(d_a Σ q_a)
    // with Σ q_w q_a an exact integer sum.
    let a: Vec<f32> = (0..32).map(|_| rng.normal() as f32).collect();
    let amax = a.iter().fold(0f32, |mx, v| mx.max(v.abs()));
    let d_a = amax / 32767.0;
    let q_a: Vec<i32> = a.iter().map(|v| (v / d_a).round() as i32).collect();
    let q_w: Vec<i32> = (0..32).map(|i| ((block[4 + i % 16] >> if i < 16 { 0 } else { 4 }) & 0x0f) as i32).collect();
    let int_sum: i32 = q_w.iter().zip(&q_a).map(|(w, a)| w * a).sum();
    let sum_qa: i32 = q_a.iter().sum();
    let integer_route = d as f64 * d_a as f64 * int_sum as f64 + m as f64 * (d_a as f64 * sum_qa as f64);
    let float_route: f64 = y[..32].iter().zip(&a).map(|(w, x)| *w as f64 * *x as f64).sum();
    // ANCHOR_END: int_dot
    say("   The integer route: one block · 32 activations, d·d_a·Σq_w·q_a + m·d_a·Σq_a".into());
    say(format!(
        "   Σq_w·q_a = {int_sum}, Σq_a = {sum_qa}: {integer_route:+.7} vs the f64 dot of the decoded weights {float_route:+.7}"
    ));

    // ANCHOR: qmatmul
    // The same for a whole matrix: W (256 × 4096) in Q4_1, y = W·x by qmatmul, against f64
    // products with the decoded weights (the kernel's own error) and with the original f32
    // weights (the error of 4-bit weights).
    let (rows, cols) = (256, n);
    let w: Vec<f32> = (0..rows * cols).map(|_| 0.02 * rng.normal() as f32).collect();
    let (wq, w_decoded) = round_trip(QuantType::Q4_1, &w);
    let x: Vec<f32> = (0..cols).map(|_| rng.normal() as f32).collect();
    let (mut acts, mut y_fast) = (QuantizedActs::default(), vec![0f32; rows]);
    let pool = SpinPool::new(yuanli_tensor::num_threads());
    qmatmul(QuantType::Q4_1, &wq, rows, cols, &x, 1, &mut acts, &mut y_fast, &pool);
    let matvec = |w: &[f32]| -> Vec<f64> {
        w.chunks_exact(cols).map(|r| r.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum()).collect()
    };
    let (y_decoded, y_exact) = (matvec(&w_decoded), matvec(&w));
    let rel = |a: &[f64], b: &[f64]| {
        let num: f64 = a.iter().zip(b).map(|(p, q)| (p - q).powi(2)).sum();
        (num / b.iter().map(|q| q * q).sum::<f64>()).sqrt()
    };
    let y_fast64: Vec<f64> = y_fast.iter().map(|&v| v as f64).collect();
    let (kernel_rel, weights_rel) = (rel(&y_fast64, &y_decoded), rel(&y_decoded, &y_exact));
    // ANCHOR_END: qmatmul
    say(format!(
        "   qmatmul, W {rows}×{cols} in Q4_1 ({} KB instead of {} KB as f32):",
        wq.len() / 1000,
        w.len() * 4 / 1000
    ));
    say(format!("   kernel vs the decoded weights in f64: relative error {kernel_rel:.1e}  (16-bit activations)"));
    say(format!("   decoded vs original f32 weights:       relative error {weights_rel:.1e}  (4-bit weights)\n"));

    // ANCHOR: kv_sizes
    // The KV cache keeps every past position's keys and values: 2·L·Hk·D values per token.
    let cfg = smollm2_135m();
    let kv_f32 = cfg.kv_bytes_per_token(4);
    let kv_f16 = cfg.kv_bytes_per_token(2);
    let contexts = [512usize, 2048, 8192];
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    // ANCHOR_END: kv_sizes
    say(format!(
        "   (part 3 ahead) KV cache of SmolLM2-135M: 2·L·Hk·D = 2·{}·{}·{} values per token = {kv_f32} bytes in f32, {kv_f16} in f16",
        cfg.n_layer, cfg.n_kv_head, cfg.head_dim
    ));
    for &t in &contexts {
        say(format!("   {t:>5}-token context: {:>6.1} MiB f32, {:>6.1} MiB f16", mib(t * kv_f32), mib(t * kv_f16)));
    }
    say(String::new());

    json!({
        "formats": table,
        "q4_1_outlier_block_rms": rms_outlier_blocks,
        "q4_1_other_block_rms": rms_other_blocks,
        "q4_1_block_d": d,
        "q4_1_block_m": m,
        "q4_1_by_hand_vs_dequantize_max_diff": hand_vs_library,
        "int_dot": integer_route,
        "float_dot": float_route,
        "qmatmul_kernel_rel_error": kernel_rel,
        "qmatmul_weights_rel_error": weights_rel,
        "kv_bytes_per_token_f32": kv_f32,
        "kv_bytes_per_token_f16": kv_f16,
        "kv_mib_f32": contexts.iter().map(|&t| mib(t * kv_f32)).collect::<Vec<_>>(),
        "kv_mib_f16": contexts.iter().map(|&t| mib(t * kv_f16)).collect::<Vec<_>>(),
    })
}

/// A difference for print: `0 (bit for bit)` or `1.2e-7`.
fn show(d: f64) -> String {
    if d == 0.0 {
        "0 (bit for bit)".into()
    } else {
        format!("{d:.1e}")
    }
}

// ANCHOR: bandwidth
/// Read bandwidth in bytes per second: `threads` threads sum a buffer of `bytes` (each its own
/// slice) again and again for about `secs` seconds. The buffer is filled first, so its pages are
/// real memory (a fresh zeroed allocation would read the kernel's one shared zero page).
pub fn read_bandwidth(bytes: usize, secs: f64, threads: usize) -> f64 {
    let buf = vec![1u64; bytes / 8];
    let chunk = buf.len().div_ceil(threads.max(1));
    let (start, mut passes, mut total) = (Instant::now(), 0usize, 0u64);
    while passes == 0 || start.elapsed().as_secs_f64() < secs {
        total += std::thread::scope(|s| {
            let parts: Vec<_> = buf.chunks(chunk).map(|c| s.spawn(move || c.iter().sum::<u64>())).collect();
            parts.into_iter().map(|h| h.join().expect("a summing thread")).sum::<u64>()
        });
        passes += 1;
    }
    assert_eq!(total, (passes * buf.len()) as u64, "every pass read every word");
    (passes * buf.len() * 8) as f64 / start.elapsed().as_secs_f64()
}
// ANCHOR_END: bandwidth

// ANCHOR: flops
/// Weights that take part in a matrix product per token — q, k, v, o, gate, up, down in every
/// layer, and the output head — each costing a multiply and an add: `2·N` FLOPs per token.
pub fn matmul_weights(c: &LlamaConfig) -> usize {
    let (q, kv) = (c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
    c.n_layer * (c.hidden_size * (q + 2 * kv) + q * c.hidden_size + 3 * c.hidden_size * c.intermediate_size)
        + c.vocab_size * c.hidden_size
}
// ANCHOR_END: flops

/// Index of the largest value.
fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
}

/// `−log softmax(z)[target]`, in f64.
fn nll(z: &[f32], target: u32) -> f64 {
    let mx = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = mx + z.iter().map(|&v| (v as f64 - mx).exp()).sum::<f64>().ln();
    lse - z[target as usize] as f64
}

/// Runs lesson 8.
pub fn run(opts: &LessonOpts) -> anyhow::Result<serde_json::Value> {
    let say = |s: String| crate::say(opts, &s);
    let mut out = model_free(opts);
    out["lesson"] = json!(8);
    let path = model_path(opts);
    if !path.exists() {
        say(format!(
            "2–4. No model at {}: run tools/fetch_models.sh (or set YUANLI_MODEL to a .gguf file)\n   \
             to measure decoding, the KV cache and perplexity. Part 1 above needs no model.",
            path.display()
        ));
        out["model_loaded"] = json!(false);
        return Ok(out);
    }
    let threads = yuanli_tensor::num_threads();

    // ANCHOR: memory_bound
    let bandwidth = read_bandwidth(256 << 20, 1.0, threads);
    let qm = load_pretrained_with(&path, LoadOptions::fast()).with_context(|| format!("opening {}", path.display()))?;
    let cfg = qm.model.config.clone();
    let weight_bytes = qm.model.weight_bytes(); // read once per decoded token
    let flops = 2 * matmul_weights(&cfg); // done once per decoded token
    let intensity = flops as f64 / weight_bytes as f64; // FLOP per byte read
    let ceiling_tok_s = bandwidth / weight_bytes as f64;

    let chat = &qm;
    let question = "Why is the sky blue?";
    let prompt = match &chat.chat_template {
        Some(t) => t.render(&[Message::new("user", question)], true).map_err(anyhow::Error::msg)?,
        None => question.to_string(),
    };
    let mut ids: Vec<u32> = chat.bos.filter(|_| chat.add_bos).into_iter().collect();
    ids.extend(chat.tokenizer.encode(&prompt, SpecialMode::Allow)?);
    let g = generate(&qm.model, &ids, 32, SamplingParams::greedy(), opts.seed, &mut |_| ControlFlow::Continue(()))?;
    let decode_tok_s = g.decode_tok_s();
    // ANCHOR_END: memory_bound
    say(format!("2. Decoding is memory-bound ({threads} threads; {})", qm.description));
    say(format!("   read bandwidth, summing a 256 MiB buffer for 1 s: {:.1} GB/s", bandwidth / 1e9));
    say(format!(
        "   per decoded token: {:.1} MB of weights read, {:.1} MFLOP → {intensity:.1} FLOP per byte",
        weight_bytes as f64 / 1e6,
        flops as f64 / 1e6
    ));
    say(format!(
        "   ceiling at {:.1} GB/s: {ceiling_tok_s:.0} tokens/s; measured greedy decode (32 tokens): {decode_tok_s:.0} tokens/s ({:.0}% of it)",
        bandwidth / 1e9,
        100.0 * decode_tok_s / ceiling_tok_s
    ));
    say(format!(
        "   the KV cache read per token grows with the position: {} bytes × p (f16, as the fast path keeps it) — as much as the weights at p ≈ {}\n",
        cfg.kv_bytes_per_token(2),
        weight_bytes / cfg.kv_bytes_per_token(2)
    ));

    // ANCHOR: with_without_cache
    // The first T tokens of The Tempest, predicted one at a time. With the cache, step t feeds
    // one token; without, step t feeds all t tokens to a fresh state: T(T+1)/2 positions in all.
    let text_path = opts.data_dir.join("shakespeare/tempest_gut.txt");
    let text = std::fs::read_to_string(&text_path).with_context(|| format!("reading {}", text_path.display()))?;
    let head = text.char_indices().nth(6000).map_or(text.len(), |(i, _)| i);
    let text_ids = chat.tokenizer.encode(&text[..head], SpecialMode::AsText)?;
    let t_len = 48;
    let seq = &text_ids[..t_len];
    let mut logits = Vec::new();

    let start = Instant::now();
    let mut session = qm.model.new_session(SessionOpts::tokens(t_len));
    let cached = session.add_sequence();
    for t in 0..t_len {
        feed(&qm.model, &mut session, cached, &seq[t..t + 1], 0, &mut logits)?;
    }
    let with_cache = start.elapsed().as_secs_f64();
    let last_cached = logits.clone();

    let start = Instant::now();
    session.remove(cached)?;
    for t in 1..=t_len {
        let fresh = session.add_sequence();
        feed(&qm.model, &mut session, fresh, &seq[..t], t - 1, &mut logits)?; // logits of the last token only
        session.remove(fresh)?;
    }
    let without_cache = start.elapsed().as_secs_f64();
    let cache_logits_diff = last_cached.iter().zip(&logits).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max);
    // ANCHOR_END: with_without_cache
    say(format!("3. The KV cache: {t_len} tokens of The Tempest, predicted one after another"));
    say(format!(
        "   with the cache:    {t_len} positions computed, {:.1} ms ({:.2} ms per token)",
        with_cache * 1e3,
        with_cache * 1e3 / t_len as f64
    ));
    say(format!(
        "   without (refeed):  {} positions computed, {:.1} ms ({:.2} ms per token): {:.1}× slower",
        t_len * (t_len + 1) / 2,
        without_cache * 1e3,
        without_cache * 1e3 / t_len as f64,
        without_cache / with_cache
    ));
    say(format!(
        "   ({:.1}× the positions; a batch of tokens reads each weight once, so the time grows less than that)",
        (t_len + 1) as f64 / 2.0
    ));
    say(format!("   last token's logits, cached vs recomputed: max difference {}\n", show(cache_logits_diff)));

    // ANCHOR: fast_vs_exact
    // One 256-token chunk, scored as llama.cpp's perplexity scores it (the second half), by the
    // fast quantized path and by the exact f32 model made from the same Q4_1 weights.
    let ctx = 256;
    let chunk = &text_ids[..ctx];
    let score = |m: &dyn CausalLm| -> anyhow::Result<Vec<f32>> {
        let mut s = m.new_session(SessionOpts::tokens(ctx));
        let seq = s.add_sequence();
        let mut out = Vec::new();
        feed(m, &mut s, seq, chunk, 0, &mut out)?;
        Ok(out)
    };
    let fast = score(&qm.model)?;
    let description = qm.description.clone();
    drop(qm);
    let pre =
        load_pretrained_with(&path, LoadOptions::exact()).with_context(|| format!("loading {}", path.display()))?;
    let exact = score(&pre.model)?;
    let v = cfg.vocab_size;
    let scored = ctx / 2..ctx - 1;
    let ppl = |z: &[f32]| {
        let total: f64 = scored.clone().map(|j| nll(&z[j * v..(j + 1) * v], chunk[j + 1])).sum();
        (total / scored.len() as f64).exp()
    };
    let (ppl_fast, ppl_exact) = (ppl(&fast), ppl(&exact));
    let agree = (0..ctx).filter(|&j| argmax(&fast[j * v..(j + 1) * v]) == argmax(&exact[j * v..(j + 1) * v])).count();
    let max_logit_diff = fast.iter().zip(&exact).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max);
    // ANCHOR_END: fast_vs_exact
    say(format!("4. Fast quantized path vs exact f32, same Q4_1 weights, one {ctx}-token chunk"));
    say(format!("   perplexity (second half scored): fast {ppl_fast:.4}, exact {ppl_exact:.4}"));
    say(format!("   top-1 token agrees at {agree}/{ctx} positions; largest logit difference {max_logit_diff:.1e}"));
    say("   more: the chapter's table of perplexity vs bits per weight (yuanli quantize --eval-file, yuanli perplexity)".into());

    out["model_loaded"] = json!(true);
    out["model"] = json!(description);
    out["threads"] = json!(threads);
    out["bandwidth_gb_s"] = json!(bandwidth / 1e9);
    out["weight_bytes_per_token"] = json!(weight_bytes);
    out["flops_per_token"] = json!(flops);
    out["flop_per_byte"] = json!(intensity);
    out["ceiling_tok_s"] = json!(ceiling_tok_s);
    out["decode_tok_s"] = json!(decode_tok_s);
    out["with_cache_secs"] = json!(with_cache);
    out["without_cache_secs"] = json!(without_cache);
    out["cache_logits_max_diff"] = json!(cache_logits_diff);
    out["ppl_fast_256"] = json!(ppl_fast);
    out["ppl_exact_256"] = json!(ppl_exact);
    out["top1_agree"] = json!(agree);
    out["max_logit_diff"] = json!(max_logit_diff);
    Ok(out)
}
