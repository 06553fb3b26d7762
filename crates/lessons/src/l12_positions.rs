//! Lesson 12: positions and length — why attention needs positions, five ways to give them,
//! which of them still work past the length they were trained on, and what RoPE scaling does
//! to the frequencies.

use crate::l3_char_lm::Corpus;
use crate::LessonOpts;
use serde_json::json;
use yuanli_autograd::{no_grad, AttentionOpts, Var};
use yuanli_models::positions::Positions;
use yuanli_models::{Gpt, GptConfig, RopeScaling};
use yuanli_nn::ParamStore;
use yuanli_tensor::{DType, Rng, Tensor};
use yuanli_train::plot::{line_plot, Series};
use yuanli_train::{Adam, LrSchedule};

/// Training windows (tokens).
pub const TRAIN_LEN: usize = 64;
/// Longest evaluation window: 4× the training length.
pub const EVAL_LEN: usize = 4 * TRAIN_LEN;

// ANCHOR: permutation
/// Attention without positions is permutation-equivariant: `attn(P·x) = P·attn(x)` for any
/// reordering `P` of the tokens. Returns the largest `|attn(P·x + pe) − P·attn(x + pe)|` over a
/// random `x` and a reversal `P`, without positions (`pe = 0`) and with sinusoidal ones (the
/// positions belong to the slots, so they are added after the tokens are reordered).
pub fn permutation_demo(seed: u64) -> (f64, f64) {
    let _g = no_grad();
    let (t, c) = (8, 16);
    let x = Tensor::randn(&[t, c], 0.0, 1.0, DType::F64, &mut Rng::new(seed));
    let reverse = Tensor::new((0..t as u32).rev().collect::<Vec<_>>(), &[t]);
    // one head, no mask (a causal mask is itself a positional signal), q = k = v = x + pe
    let attend = |x: &Tensor| {
        let h = Var::constant(x.reshape(&[1, 1, t, c]));
        Var::attention(&h, &h, &h, &AttentionOpts::default()).value().reshape(&[t, c])
    };
    let gap = |pe: &Tensor| {
        let reordered_after = attend(&x.add(pe)).index_select(&reverse);
        let reordered_before = attend(&x.index_select(&reverse).add(pe));
        let (a, b) = (reordered_after.to_vec_f64(), reordered_before.to_vec_f64());
        a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max)
    };
    let none = Tensor::zeros(&[t, c], DType::F64);
    let sinusoidal = yuanli_models::positions::sinusoidal_table(t, c).to_dtype(DType::F64);
    (gap(&none), gap(&sinusoidal))
}
// ANCHOR_END: permutation

// ANCHOR: train
/// Trains a 2-layer GPT with `positions` on windows of [`TRAIN_LEN`] characters (`block_size`
/// [`EVAL_LEN`], so that learned positions have rows past the training length — rows no
/// gradient ever reaches) and returns it.
fn train(positions: Positions, corpus: &Corpus, steps: usize, seed: u64) -> anyhow::Result<(Gpt, ParamStore)> {
    let cfg = GptConfig {
        vocab_size: corpus.chars.len(),
        block_size: EVAL_LEN,
        n_layer: 2,
        n_head: 4,
        n_embd: 64,
        dropout: 0.0,
        bias: true,
        positions,
    };
    let mut rng = Rng::new(seed);
    let mut store = ParamStore::new();
    let model = Gpt::new(cfg, &mut store, &mut rng)?;
    let mut opt = Adam::adamw(0.9, 0.99, 1e-8, 0.1);
    let schedule = LrSchedule::WarmupCosine { max_lr: 3e-3, min_lr: 3e-4, warmup: steps / 10, total: steps };
    for step in 0..steps {
        let (x, y) = windows(&corpus.train, 16, TRAIN_LEN, &mut rng);
        store.zero_grad();
        model.loss(&x, &y, true, &mut rng).backward();
        opt.step(&store, schedule.lr(step));
    }
    Ok((model, store))
}
// ANCHOR_END: train

/// `b` random windows of `t` tokens of `ids` and their next tokens.
fn windows(ids: &[u32], b: usize, t: usize, rng: &mut Rng) -> (Tensor, Tensor) {
    let starts: Vec<usize> = (0..b).map(|_| rng.below(ids.len() - t - 1)).collect();
    let x: Vec<u32> = starts.iter().flat_map(|&s| ids[s..s + t].to_vec()).collect();
    let y: Vec<u32> = starts.iter().flat_map(|&s| ids[s + 1..s + t + 1].to_vec()).collect();
    (Tensor::new(x, &[b, t]), Tensor::new(y, &[b, t]))
}

// ANCHOR: evaluate
/// Cross-entropy at each position `0..EVAL_LEN` of validation windows of [`EVAL_LEN`]
/// characters, averaged over the windows (the same windows for every model).
fn loss_by_position(model: &Gpt, corpus: &Corpus) -> Vec<f64> {
    let _g = no_grad();
    let (b, n_batches) = (16, 4);
    let mut rng = Rng::new(99);
    let v = corpus.chars.len();
    let mut sum = vec![0.0; EVAL_LEN];
    for _ in 0..n_batches {
        let (x, y) = windows(&corpus.val, b, EVAL_LEN, &mut rng);
        let logits = model.forward(&x, false, &mut rng).value().narrow(-1, 0, v).contiguous().to_dtype(DType::F64);
        let (l, ys) = (logits.to_vec_f64(), y.to_vec::<u32>());
        for (r, row) in l.chunks_exact(v).enumerate() {
            let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = mx + row.iter().map(|z| (z - mx).exp()).sum::<f64>().ln();
            sum[r % EVAL_LEN] += lse - row[ys[r] as usize];
        }
    }
    sum.iter().map(|s| s / (b * n_batches) as f64).collect()
}
// ANCHOR_END: evaluate

/// Runs lesson 12.
pub fn run(opts: &LessonOpts) -> anyhow::Result<serde_json::Value> {
    let say = |s: String| crate::say(opts, &s);
    let corpus = Corpus::load(&opts.data_dir.join("shakespeare"))?;
    say("Lesson 12 — positions and length\n".into());

    let (plain, with_sin) = permutation_demo(opts.seed);
    say(format!(
        "1. attention without positions is blind to order: reverse the tokens and the outputs are \
         just reversed (largest difference {plain:.1e}); add sinusoidal positions and they are not ({with_sin:.2})\n"
    ));

    let steps = 600;
    say(format!(
        "2. five 2-layer GPTs (64 wide, 4 heads) trained {steps} steps on {TRAIN_LEN}-character windows, \
         evaluated on windows of {TRAIN_LEN}, {}, {EVAL_LEN} characters (mean loss over the window, nats/char):\n",
        2 * TRAIN_LEN
    ));
    say(format!("   {:<11} {:>8} {:>8} {:>8}", "positions", "1×", "2×", "4×"));
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    let started = std::time::Instant::now();
    for positions in Positions::ALL {
        let (model, _store) = train(positions, &corpus, steps, opts.seed)?;
        let by_pos = loss_by_position(&model, &corpus);
        let mean = |n: usize| by_pos[..n].iter().sum::<f64>() / n as f64;
        let (l1, l2, l4) = (mean(TRAIN_LEN), mean(2 * TRAIN_LEN), mean(EVAL_LEN));
        say(format!("   {:<11} {l1:>8.3} {l2:>8.3} {l4:>8.3}", positions.name()));
        rows.push(json!({"positions": positions.name(), "loss_1x": l1, "loss_2x": l2, "loss_4x": l4}));
        // buckets of 8 positions, for a readable curve
        let pts =
            by_pos.chunks(8).enumerate().map(|(i, c)| ((i * 8 + 4) as f64, c.iter().sum::<f64>() / c.len() as f64));
        curves.push((positions.name(), pts.collect::<Vec<_>>()));
    }
    let seconds = started.elapsed().as_secs_f64();
    say(format!("   ({seconds:.0} s for the five)\n"));
    std::fs::create_dir_all(&opts.out_dir)?;
    let plot = opts.out_dir.join("lesson12-length.png");
    let series: Vec<Series> = curves.iter().map(|(n, p)| Series { label: n, points: p.clone() }).collect();
    line_plot(
        &plot,
        &format!("loss by position, trained on {TRAIN_LEN} characters"),
        "position in the window",
        "cross-entropy (nats/char)",
        &series,
        false,
    )?;
    say(format!("   per-position loss drawn in {}\n", plot.display()));

    // ANCHOR: scaling
    // 3. What a RoPE scaling does to the frequencies: θ_i of a 64-channel head, base 10 000,
    //    trained on 2 048 positions, stretched 4×.
    let (d, base, original, factor) = (64, 10_000.0, 2048, 4.0);
    let schemes = [
        ("plain", RopeScaling::None),
        ("linear", RopeScaling::Linear { factor }),
        ("dynamic NTK at 8192", RopeScaling::Dynamic { factor, original }),
        (
            "YaRN",
            RopeScaling::Yarn {
                factor,
                original,
                beta_fast: 32.0,
                beta_slow: 1.0,
                attention_factor: yuanli_models::rope_scaling::yarn_mscale(factor, 1.0),
                truncate: true,
            },
        ),
        ("LLaMA 3", RopeScaling::Llama3 { factor, low_freq_factor: 1.0, high_freq_factor: 4.0, original }),
    ];
    let freq_curves: Vec<(&str, Vec<(f64, f64)>)> = schemes
        .iter()
        .map(|(name, s)| {
            let f = s.freqs(d, base, 4 * original);
            (*name, f.inv_freq.iter().enumerate().map(|(i, t)| (i as f64, t.log10())).collect())
        })
        .collect();
    // ANCHOR_END: scaling
    let freq_plot = opts.out_dir.join("lesson12-rope-scaling.png");
    let series: Vec<Series> = freq_curves.iter().map(|(n, p)| Series { label: n, points: p.clone() }).collect();
    line_plot(
        &freq_plot,
        "RoPE frequencies, stretched 4× (head of 64, base 10 000)",
        "pair i",
        "log10 θ_i",
        &series,
        false,
    )?;
    say(format!(
        "3. RoPE scaling only changes the frequencies θ_i (drawn in {}): linear divides all by 4, \
         NTK raises the base, YaRN and LLaMA 3 keep the fast pairs and divide the slow ones\n",
        freq_plot.display()
    ));

    Ok(json!({
        "permutation_gap_no_positions": plain,
        "permutation_gap_sinusoidal": with_sin,
        "train_len": TRAIN_LEN,
        "steps": steps,
        "table": rows,
        "seconds": seconds,
        "plot": plot.display().to_string(),
        "scaling_plot": freq_plot.display().to_string(),
    }))
}
