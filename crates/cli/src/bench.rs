//! `yuanli bench …`: kernel benchmarks. Timing protocol: one warm-up call, then repeat until
//! `min_secs` have passed (at least `min_reps` times) and report the median.

use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;
use std::io::Write;
use std::time::{Duration, Instant};
use yuanli_tensor::quant::quantize_row;
use yuanli_tensor::{DType, QuantType, Rng, Tensor};

#[derive(Subcommand, Debug)]
pub(crate) enum BenchCommand {
    /// f32 matrix multiplication GFLOP/s: squares 256–2048 and GPT-2-sized LLM shapes.
    Matmul {
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Only shapes given as MxKxN (repeatable), e.g. --shape 1024x1024x1024.
        #[arg(long = "shape", value_name = "MxKxN")]
        shapes: Vec<String>,
        /// Seconds to spend per shape (median of the repetitions is reported).
        #[arg(long, default_value_t = 1.0)]
        secs: f64,
    },
    /// GPT training step speed (forward, backward, AdamW) on random tokens.
    Train {
        /// Model and batch preset: baby (4×128, block 64, batch 12, char vocab), char-6x384
        /// (6×384, block 256, batch 8), gpt2-124m (12×768, block 64, batch 4, vocab 50257).
        #[arg(long, default_value = "baby")]
        preset: String,
        /// Timed steps (after two warm-up steps).
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Generation speed of a model: prefill and decode tokens/s, peak memory. Compare with
    /// llama.cpp on the same file: `bash bench/run_generate.sh`.
    Generate {
        /// A .gguf file (fast quantized path), a Hugging Face directory or a yuanli checkpoint.
        #[arg(long)]
        model: std::path::PathBuf,
        /// Prompt length in tokens (taken from the start of data/shakespeare/tempest_gut.txt).
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        /// Tokens to generate (greedy) after the prompt.
        #[arg(long, default_value_t = 64)]
        gen_tokens: usize,
        /// Timed repetitions after one warm-up (the median is reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Use the exact f32 path for a GGUF file instead of the quantized kernels.
        #[arg(long)]
        exact: bool,
        /// Independent sequences prefilled and decoded together (each step reads every weight
        /// once for all of them); tokens/s are reported for the whole batch and per sequence,
        /// and one sequence alone is timed beside each repetition for the speed-up.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Quantized matrix products, kernel by kernel: `y = x·Wᵀ` with W stored in each GGUF type
    /// (SmolLM2's MLP shapes), for 1 token (decoding: GB/s of weights read), a few tokens
    /// (batched decoding) and a prompt (prefill: GFLOP/s). Names the SIMD level; cap it with
    /// YUANLI_SIMD=avx2|portable to measure the other kernels on the same machine.
    Qmatmul {
        /// Types to measure (repeatable; default: q8_0 q4_0 q4_1 q5_0 q4_k q5_k q6_k f16 bf16
        /// f32; any GGUF type yuanli reads).
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
        /// Token counts (repeatable; default: 1, 8, 128).
        #[arg(long = "tokens", value_name = "T")]
        tokens: Vec<usize>,
        /// Seconds to spend per measurement (median of the repetitions is reported).
        #[arg(long, default_value_t = 0.5)]
        secs: f64,
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A LoRA fine-tuning step — forward, masked loss, backward, AdamW on the adapters — on a
    /// pretrained model: tokens/s and peak memory. The batch is GSM8K conversations rendered
    /// with the model's chat template and laid end to end into --batch rows of --seq tokens
    /// (loss on the assistant's tokens only). Compare with PyTorch + PEFT on the same batch:
    /// `bench/.venv/bin/python bench/lora.py`.
    Lora {
        /// A .gguf file or a Hugging Face directory.
        #[arg(long)]
        model: std::path::PathBuf,
        /// Conversations (JSONL, as `yuanli sft` reads them).
        #[arg(long, default_value = "data/gsm8k/train.jsonl")]
        data: std::path::PathBuf,
        /// Rows per step.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Tokens per row.
        #[arg(long, default_value_t = 256)]
        seq: usize,
        /// LoRA rank.
        #[arg(long, default_value_t = 8)]
        rank: usize,
        /// LoRA α.
        #[arg(long, default_value_t = 16.0)]
        alpha: f64,
        /// LoRA dropout.
        #[arg(long, default_value_t = 0.05)]
        dropout: f64,
        /// Target modules (comma-separated, or all-linear).
        #[arg(long, default_value = "all-linear", value_delimiter = ',')]
        targets: Vec<String>,
        /// QLoRA: keep the GGUF's weights in their stored types.
        #[arg(long)]
        quantized_base: bool,
        /// Timed steps (after two warm-up steps; the median is reported).
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Write the batch (ids and targets, −100 where the loss does not count) to this JSON
        /// file, for the reference to train on the same tokens.
        #[arg(long)]
        dump: Option<std::path::PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Fused causal attention forward and forward+backward (B, H, T, D) in milliseconds.
    Attention {
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Seconds to spend per measurement.
        #[arg(long, default_value_t = 2.0)]
        secs: f64,
    },
}

/// Median seconds of `f` over repeated runs.
pub(crate) fn time_median(min_secs: f64, min_reps: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up: page faults, thread pool start, packing buffers
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < min_reps || start.elapsed() < Duration::from_secs_f64(min_secs) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
        if times.len() >= 1000 {
            break;
        }
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

#[derive(Serialize)]
struct MatmulResult {
    m: usize,
    k: usize,
    n: usize,
    threads: usize,
    gflops: f64,
    median_ms: f64,
    /// `gemm`'s micro-kernels ([`yuanli_tensor::cpu::gemm_level`]).
    gemm: &'static str,
}

#[derive(Serialize)]
struct AttentionResult {
    b: usize,
    h: usize,
    /// Key/value heads (fewer than `h`: grouped-query attention).
    hk: usize,
    t: usize,
    d: usize,
    threads: usize,
    causal: bool,
    forward_ms: f64,
    forward_backward_ms: f64,
    /// The SIMD level of yuanli's kernels.
    simd: String,
}

/// The shapes the engine issue asks for.
pub(crate) const MATMUL_SHAPES: &[(usize, usize, usize)] = &[
    (256, 256, 256),
    (512, 512, 512),
    (1024, 1024, 1024),
    (2048, 2048, 2048),
    (2048, 768, 3072),
    (2048, 3072, 768),
    (1, 768, 3072),
    (2048, 768, 50304),
];

fn parse_shape(s: &str) -> Result<(usize, usize, usize)> {
    let parts: Vec<&str> = s.split(['x', 'X', '×']).collect();
    let bad = || anyhow::anyhow!("--shape {s:?}: expected MxKxN with three positive integers, e.g. 1024x1024x1024");
    if parts.len() != 3 {
        return Err(bad());
    }
    let v: Vec<usize> = parts.iter().map(|p| p.trim().parse::<usize>()).collect::<Result<_, _>>().map_err(|_| bad())?;
    if v.contains(&0) {
        return Err(bad());
    }
    Ok((v[0], v[1], v[2]))
}

/// Peak resident memory of this process in MB (Linux `VmHWM`), if known.
pub(crate) fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The SIMD level of yuanli's own kernels (capped by `YUANLI_SIMD`) and of `gemm`'s f32
/// micro-kernels (capped by building without the `gemm-avx512` feature), e.g.
/// `("avx2", "avx512")`: every figure is printed beside them.
fn levels() -> (String, &'static str) {
    (format!("{:?}", yuanli_tensor::cpu::simd::simd_level()).to_lowercase(), yuanli_tensor::cpu::gemm_level())
}

fn bench_train(preset: &str, steps: usize, threads: usize) -> Result<serde_json::Value> {
    use yuanli_models::{Gpt, GptConfig};
    let (vocab, block, batch) = match preset {
        "baby" => (65, 64, 12),
        "char-6x384" => (65, 256, 8),
        "gpt2-124m" => (50257, 64, 4),
        other => anyhow::bail!("unknown preset {other:?}; choose baby, char-6x384 or gpt2-124m"),
    };
    let mut config = GptConfig::preset(preset, vocab).expect("preset names checked above");
    config.block_size = block;
    let mut store = yuanli_nn::ParamStore::new();
    let mut rng = Rng::new(0);
    let model = Gpt::new(config.clone(), &mut store, &mut rng)?;
    let mut opt = yuanli_train::Adam::adamw(0.9, 0.95, 1e-8, 0.1);
    let ids: Vec<u32> = (0..batch * (block + 1)).map(|_| rng.below(vocab) as u32).collect();
    let x = Tensor::new(
        ids.iter().enumerate().filter(|(i, _)| i % (block + 1) != block).map(|(_, &v)| v).collect::<Vec<_>>(),
        &[batch, block],
    );
    let y = Tensor::new(
        ids.iter().enumerate().filter(|(i, _)| i % (block + 1) != 0).map(|(_, &v)| v).collect::<Vec<_>>(),
        &[batch, block],
    );
    let mut step = || {
        store.zero_grad();
        let loss = model.loss(&x, &y, true, &mut rng);
        loss.backward();
        store.clip_grad_norm(1.0);
        opt.step(&store, 3e-4);
    };
    step();
    step();
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps.max(1) {
        let t = Instant::now();
        step();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let step_s = times[times.len() / 2];
    let tokens = (batch * block) as f64;
    Ok(serde_json::json!({
        "preset": preset, "threads": threads, "batch": batch, "block": block, "params": store.num_params(),
        "step_ms": step_s * 1e3, "tokens_per_sec": tokens / step_s, "peak_rss_mb": peak_rss_mb(),
        "simd": levels().0, "gemm": levels().1,
    }))
}

/// Options of `yuanli bench lora`.
struct LoraBench {
    model: std::path::PathBuf,
    data: std::path::PathBuf,
    batch: usize,
    seq: usize,
    lora: yuanli_nn::LoraConfig,
    targets: Vec<String>,
    quantized_base: bool,
    steps: usize,
    dump: Option<std::path::PathBuf>,
}

fn bench_lora(o: &LoraBench, threads: usize) -> Result<serde_json::Value> {
    use anyhow::Context;
    use yuanli_train::sft::{formatter, load_for_lora, packed_batch, read_conversations, train_step, IGNORE};
    let mut rng = Rng::new(0);
    let p = load_for_lora(&o.model, o.quantized_base, &o.lora, &o.targets, o.seq + 1, &mut rng)
        .with_context(|| format!("loading {}", o.model.display()))?;
    let convs = read_conversations(&o.data)?;
    let f = formatter(&p)?;
    // Enough conversations to fill the batch (they are a few hundred tokens each).
    let mut examples = Vec::new();
    let mut tokens = 0;
    for c in &convs {
        if tokens > o.batch * (o.seq + 1) * 2 {
            break;
        }
        let e = f.example(c)?;
        tokens += e.ids.len();
        examples.push(e);
    }
    let (x, y) = packed_batch(&examples, o.batch, o.seq);
    let counted = y.to_vec::<u32>().iter().filter(|&&t| t != IGNORE).count();
    if let Some(path) = &o.dump {
        let labels: Vec<i64> = y.to_vec::<u32>().iter().map(|&t| if t == IGNORE { -100 } else { t as i64 }).collect();
        let v = serde_json::json!({"batch": o.batch, "seq": o.seq, "input_ids": x.to_vec::<u32>(), "labels": labels});
        std::fs::write(path, v.to_string()).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut opt = yuanli_train::Adam::adamw(0.9, 0.999, 1e-8, 0.0);
    let mut losses = Vec::new();
    let mut step = |rng: &mut Rng| {
        yuanli_autograd::profile::mark();
        losses.push(train_step(&p, &mut opt, &x, &y, 1e-4, rng))
    };
    step(&mut rng);
    step(&mut rng);
    let _ = yuanli_autograd::profile::report(); // warm-up steps not counted
    let mut times = Vec::with_capacity(o.steps);
    for _ in 0..o.steps.max(1) {
        let t = Instant::now();
        step(&mut rng);
        times.push(t.elapsed().as_secs_f64());
    }
    let steps_ms: Vec<f64> = times.iter().map(|t| t * 1e3).collect();
    times.sort_by(f64::total_cmp);
    let step_s = times[times.len() / 2];
    if yuanli_autograd::profile::enabled() {
        eprintln!("{}", yuanli_autograd::profile::report());
    }
    Ok(serde_json::json!({
        "model": o.model.display().to_string(), "threads": threads, "batch": o.batch, "seq": o.seq,
        "rank": o.lora.r, "targets": o.targets, "quantized_base": o.quantized_base,
        "trainable": p.store.num_trainable(), "counted_tokens": counted, "first_loss": losses[0],
        "step_ms": step_s * 1e3, "steps_ms": steps_ms, "tokens_per_sec": (o.batch * o.seq) as f64 / step_s, "peak_rss_mb": peak_rss_mb(),
        "simd": levels().0, "gemm": levels().1,
    }))
}

pub(crate) fn run(cmd: BenchCommand, threads: usize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        BenchCommand::Lora {
            model,
            data,
            batch,
            seq,
            rank,
            alpha,
            dropout,
            targets,
            quantized_base,
            steps,
            dump,
            json,
        } => {
            let lora = yuanli_nn::LoraConfig { r: rank, alpha, dropout, rslora: false };
            let o = LoraBench { model, data, batch, seq, lora, targets, quantized_base, steps, dump };
            let r = bench_lora(&o, threads)?;
            if json {
                writeln!(out, "{r}")?;
            } else {
                writeln!(
                    out,
                    "LoRA step ({}, batch {}×{}, r {}, {}): {:.0} ms, {:.0} tokens/s, peak {:.0} MB [{} / gemm {}]",
                    if o.quantized_base { "quantized base" } else { "f32 base" },
                    o.batch,
                    o.seq,
                    o.lora.r,
                    o.targets.join(","),
                    r["step_ms"].as_f64().unwrap_or(0.0),
                    r["tokens_per_sec"].as_f64().unwrap_or(0.0),
                    r["peak_rss_mb"].as_f64().unwrap_or(0.0),
                    levels().0,
                    levels().1
                )?;
            }
        }
        BenchCommand::Generate { model, prompt_tokens, gen_tokens, reps, exact, batch, json } => {
            let r = crate::llm_cmd::bench_generate(&model, prompt_tokens, gen_tokens, reps, exact, batch, threads)?;
            if json {
                writeln!(out, "{r}")?;
            } else {
                let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
                writeln!(
                    out,
                    "{} ({threads} thread(s), {} kernels, {} path), batch {batch}: prefill {:.1} tok/s ({batch} × \
                     {prompt_tokens} tokens), decode {:.1} tok/s ({:.1} per sequence, {gen_tokens} steps), peak RSS \
                     {:.0} MB (median of {reps})",
                    model.display(),
                    r["simd"].as_str().unwrap_or("?"),
                    r["path"].as_str().unwrap_or("?"),
                    f("prefill_tok_s"),
                    f("decode_tok_s"),
                    f("per_seq_decode_tok_s"),
                    f("peak_rss_mb")
                )?;
                if batch > 1 {
                    writeln!(
                        out,
                        "one sequence alone, same run: decode {:.1} tok/s; the batch of {batch} decodes {:.2}× as many \
                         tokens per second (median of the per-repetition ratios)",
                        f("single_decode_tok_s"),
                        f("batch_speedup")
                    )?;
                }
            }
        }
        BenchCommand::Train { preset, steps, json } => {
            let r = bench_train(&preset, steps, threads)?;
            if json {
                writeln!(out, "{r}")?;
            } else {
                writeln!(out, "GPT training ({preset}, {threads} thread(s), {} kernels, gemm {}): {:.1} ms/step, {:.0} tokens/s, {} parameters, peak RSS {:.0} MB", r["simd"].as_str().unwrap_or("?"), r["gemm"].as_str().unwrap_or("?"), r["step_ms"].as_f64().unwrap_or(0.0), r["tokens_per_sec"].as_f64().unwrap_or(0.0), r["params"], r["peak_rss_mb"].as_f64().unwrap_or(0.0))?;
            }
        }
        BenchCommand::Matmul { json, shapes, secs } => {
            let shapes = if shapes.is_empty() {
                MATMUL_SHAPES.to_vec()
            } else {
                shapes.iter().map(|s| parse_shape(s)).collect::<Result<_>>()?
            };
            let mut results = Vec::new();
            if !json {
                writeln!(
                    out,
                    "f32 matmul (gemm {} kernels), {threads} thread(s), median of repeated runs",
                    levels().1
                )?;
                writeln!(out, "{:>6} {:>6} {:>6} {:>10} {:>10}", "M", "K", "N", "ms", "GFLOP/s")?;
            }
            let mut rng = Rng::new(0);
            for (m, k, n) in shapes {
                let a = Tensor::randn(&[m, k], 0.0, 1.0, DType::F32, &mut rng);
                let b = Tensor::randn(&[k, n], 0.0, 1.0, DType::F32, &mut rng);
                let t = time_median(secs, 3, || {
                    std::hint::black_box(a.matmul(&b));
                });
                let r = MatmulResult {
                    m,
                    k,
                    n,
                    threads,
                    gflops: 2.0 * (m * k * n) as f64 / t / 1e9,
                    median_ms: t * 1e3,
                    gemm: levels().1,
                };
                if !json {
                    writeln!(out, "{:>6} {:>6} {:>6} {:>10.3} {:>10.1}", m, k, n, r.median_ms, r.gflops)?;
                }
                results.push(r);
            }
            if json {
                writeln!(out, "{}", serde_json::to_string(&results)?)?;
            }
        }
        BenchCommand::Qmatmul { types, tokens, secs, json } => bench_qmatmul(&types, &tokens, secs, json, threads)?,
        BenchCommand::Attention { json, secs } => {
            let mut results = Vec::new();
            if !json {
                writeln!(out, "fused causal attention, f32, {} kernels, {threads} thread(s), median ms", levels().0)?;
                writeln!(
                    out,
                    "{:>3} {:>3} {:>3} {:>5} {:>3} {:>12} {:>16}",
                    "B", "H", "Hkv", "T", "D", "forward", "forward+backward"
                )?;
            }
            let mut rng = Rng::new(0);
            // GPT-2-style heads, SmolLM2-135M's grouped heads (9 query heads over 3 kv heads) at
            // the LoRA benchmark's batch, and a long context.
            for (b, h, hk, t, d) in [(8, 6, 6, 256, 64), (4, 9, 3, 256, 64), (4, 12, 12, 1024, 64)] {
                let q = Tensor::randn(&[b, h, t, d], 0.0, 1.0, DType::F32, &mut rng);
                let k = Tensor::randn(&[b, hk, t, d], 0.0, 1.0, DType::F32, &mut rng);
                let v = Tensor::randn(&[b, hk, t, d], 0.0, 1.0, DType::F32, &mut rng);
                let dout = Tensor::randn(&[b, h, t, d], 0.0, 1.0, DType::F32, &mut rng);
                let fwd = time_median(secs, 3, || {
                    std::hint::black_box(Tensor::attention(&q, &k, &v, None, true, None));
                });
                let fwd_bwd = time_median(secs, 3, || {
                    let o = Tensor::attention(&q, &k, &v, None, true, None);
                    std::hint::black_box(Tensor::attention_backward(&q, &k, &v, None, true, None, &o, &dout));
                });
                let r = AttentionResult {
                    b,
                    h,
                    hk,
                    t,
                    d,
                    threads,
                    causal: true,
                    forward_ms: fwd * 1e3,
                    forward_backward_ms: fwd_bwd * 1e3,
                    simd: levels().0,
                };
                if !json {
                    writeln!(
                        out,
                        "{:>3} {:>3} {:>3} {:>5} {:>3} {:>12.2} {:>16.2}",
                        b, h, hk, t, d, r.forward_ms, r.forward_backward_ms
                    )?;
                }
                results.push(r);
            }
            if json {
                writeln!(out, "{}", serde_json::to_string(&results)?)?;
            }
        }
    }
    Ok(())
}

/// Weights of `ty` for a benchmark: normal values quantized where we can quantize to `ty`,
/// else random bytes with small f16 scales in the places the K-quants keep them (the speed of
/// a kernel does not depend on the values, but NaNs and infinities could).
fn bench_weights(ty: QuantType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let x: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
    let mut w = Vec::new();
    if quantize_row(ty, &x, &mut w).is_some() {
        return w;
    }
    let bb = ty.block_bytes();
    let mut w: Vec<u8> = (0..rows * cols / ty.block_len() * bb).map(|_| rng.below(256) as u8).collect();
    let small = |rng: &mut Rng| yuanli_tensor::f16::from_f32(rng.uniform_range(0.0, 0.01) as f32).to_le_bytes();
    for blk in w.chunks_exact_mut(bb) {
        for &at in ty.f16_fields() {
            blk[at..at + 2].copy_from_slice(&small(rng));
        }
    }
    w
}

#[derive(Serialize)]
struct QmatmulResult {
    ty: String,
    simd: String,
    rows: usize,
    cols: usize,
    tokens: usize,
    threads: usize,
    median_us: f64,
    /// Weight bytes read per second (what bounds decoding).
    weight_gb_s: f64,
    gflops: f64,
}

fn bench_qmatmul(types: &[String], tokens: &[usize], secs: f64, json: bool, threads: usize) -> Result<()> {
    use yuanli_tensor::cpu::qmatmul::{best_qkernel, qmatmul};
    use yuanli_tensor::cpu::{with_team, QuantizedActs};
    let mut out = std::io::stdout().lock();
    let default_types = ["q8_0", "q4_0", "q4_1", "q5_0", "q4_k", "q5_k", "q6_k", "f16", "bf16", "f32"];
    let names: Vec<&str> =
        if types.is_empty() { default_types.to_vec() } else { types.iter().map(String::as_str).collect() };
    let types: Vec<QuantType> = names
        .iter()
        .map(|n| {
            QuantType::from_name(n).ok_or_else(|| {
                let all: Vec<&str> = QuantType::ALL.iter().map(|t| t.name()).collect();
                anyhow::anyhow!("--type {n:?}: not a type the kernels read (one of {})", all.join(", "))
            })
        })
        .collect::<Result<_>>()?;
    let tokens = if tokens.is_empty() { vec![1, 8, 128] } else { tokens.to_vec() };
    if tokens.contains(&0) {
        anyhow::bail!("--tokens must be at least 1");
    }
    let simd = format!("{:?}", best_qkernel()).to_lowercase();
    // SmolLM2-135M's MLP: gate/up (1536×576) and down (576×1536); for the 256-weight types the
    // 576 columns round up to 768 (a row must be whole blocks: llama.cpp stores such tensors
    // in another type).
    if !json {
        writeln!(out, "quantized matmul y = x·Wᵀ, {simd} kernels, {threads} thread(s), median of repeated runs")?;
        writeln!(
            out,
            "{:>5} {:>5} {:>5} {:>4} {:>10} {:>12} {:>9}",
            "type", "rows", "cols", "t", "µs", "weight GB/s", "GFLOP/s"
        )?;
    }
    let mut rng = Rng::new(0);
    let mut results = Vec::new();
    for (&ty, name) in types.iter().zip(&names) {
        let whole = |n: usize| n.div_ceil(ty.block_len()) * ty.block_len();
        for (rows, cols) in [(1536, whole(576)), (576, whole(1536))] {
            let w = bench_weights(ty, rows, cols, &mut rng);
            for &t in &tokens {
                let x: Vec<f32> = (0..t * cols).map(|_| rng.normal() as f32).collect();
                let mut y = vec![0f32; t * rows];
                let mut acts = QuantizedActs::default();
                let sec = with_team(|pool| {
                    time_median(secs, 5, || qmatmul(ty, &w, rows, cols, &x, t, &mut acts, &mut y, pool))
                });
                let r = QmatmulResult {
                    ty: name.to_string(),
                    simd: simd.clone(),
                    rows,
                    cols,
                    tokens: t,
                    threads,
                    median_us: sec * 1e6,
                    weight_gb_s: w.len() as f64 / sec / 1e9,
                    gflops: 2.0 * (rows * cols * t) as f64 / sec / 1e9,
                };
                if !json {
                    writeln!(
                        out,
                        "{:>5} {:>5} {:>5} {:>4} {:>10.1} {:>12.1} {:>9.1}",
                        name, rows, cols, t, r.median_us, r.weight_gb_s, r.gflops
                    )?;
                }
                results.push(r);
            }
        }
    }
    if json {
        writeln!(out, "{}", serde_json::to_string(&results)?)?;
    }
    Ok(())
}
