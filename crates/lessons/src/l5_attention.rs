//! Lesson 5: attention and the Transformer block — what a head looks at, and the fused kernel
//! checked against the textbook formula on a trained model.

use crate::l3_char_lm::Corpus;
use crate::LessonOpts;
use serde_json::json;
use yuanli_autograd::{composite, no_grad, AttentionOpts, Var};
use yuanli_models::{Gpt, GptConfig};
use yuanli_nn::ParamStore;
use yuanli_tensor::{Rng, Tensor};
use yuanli_train::{Adam, LrSchedule};

/// Runs lesson 5.
pub fn run(opts: &LessonOpts) -> anyhow::Result<serde_json::Value> {
    let say = |s: String| crate::say(opts, &s);
    let corpus = Corpus::load(&opts.data_dir.join("shakespeare"))?;
    let v = corpus.chars.len();
    say("Lesson 5 — attention: train a small Transformer, then look inside one of its heads\n".into());

    // ANCHOR: train
    let cfg = GptConfig {
        vocab_size: v,
        block_size: 64,
        n_layer: 2,
        n_head: 4,
        n_embd: 64,
        dropout: 0.0,
        bias: true,
        positions: Default::default(),
    };
    let mut rng = Rng::new(opts.seed);
    let mut store = ParamStore::new();
    let model = Gpt::new(cfg.clone(), &mut store, &mut rng)?;
    let mut opt = Adam::adamw(0.9, 0.99, 1e-8, 0.1);
    let steps = 400;
    let schedule = LrSchedule::WarmupCosine { max_lr: 3e-3, min_lr: 3e-4, warmup: 40, total: steps };
    let (b, t) = (16, 64);
    let window = |ids: &[u32], rng: &mut Rng| {
        let starts: Vec<usize> = (0..b).map(|_| rng.below(ids.len() - t - 1)).collect();
        let x: Vec<u32> = starts.iter().flat_map(|&s| ids[s..s + t].to_vec()).collect();
        let y: Vec<u32> = starts.iter().flat_map(|&s| ids[s + 1..s + t + 1].to_vec()).collect();
        (Tensor::new(x, &[b, t]), Tensor::new(y, &[b, t]))
    };
    for step in 0..steps {
        let (x, y) = window(&corpus.train, &mut rng);
        store.zero_grad();
        let loss = model.loss(&x, &y, true, &mut rng);
        loss.backward();
        opt.step(&store, schedule.lr(step));
        if step % 100 == 0 || step + 1 == steps {
            say(format!("step {step:>3}: train loss {:.3}", loss.value().item()));
        }
    }
    // ANCHOR_END: train
    let val_loss = {
        let _g = no_grad();
        let mut total = 0.0;
        let mut erng = Rng::new(0);
        for _ in 0..20 {
            let (x, y) = window(&corpus.val, &mut erng);
            total += model.loss(&x, &y, false, &mut erng).value().item();
        }
        total / 20.0
    };
    say(format!("validation loss {val_loss:.3} nats/char\n"));

    // ANCHOR: inspect
    // The fused kernel against the formula softmax(QKᵀ/√d + mask)·V on random heads.
    let mut r2 = Rng::new(1);
    let q = Var::constant(Tensor::randn(&[1, 4, t, 16], 0.0, 1.0, yuanli_tensor::DType::F32, &mut r2));
    let k = Var::constant(Tensor::randn(&[1, 4, t, 16], 0.0, 1.0, yuanli_tensor::DType::F32, &mut r2));
    let vv = Var::constant(Tensor::randn(&[1, 4, t, 16], 0.0, 1.0, yuanli_tensor::DType::F32, &mut r2));
    let causal = AttentionOpts { causal: true, ..Default::default() };
    let fused = Var::attention(&q, &k, &vv, &causal).value().to_vec::<f32>();
    let textbook = composite::attention(&q, &k, &vv, &causal).value().to_vec::<f32>();
    let max_diff = fused.iter().zip(&textbook).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    say(format!("fused attention vs the textbook formula: largest difference {max_diff:.2e}\n"));

    // What each head of the last block attends to, on 48 characters of validation text.
    let n = 48;
    let sample: Vec<u32> = corpus.val[1000..1000 + n].to_vec();
    let probs = model.attention_probs(&Tensor::new(sample.clone(), &[1, n]), cfg.n_layer - 1); // (1, H, n, n)
                                                                                               // ANCHOR_END: inspect
    let p = probs.to_vec::<f32>();
    let labels: Vec<String> =
        sample.iter().map(|&i| format!("{:?}", corpus.chars[i as usize]).trim_matches('\'').to_string()).collect();
    let panels: Vec<(String, Vec<f64>)> = (0..cfg.n_head)
        .map(|h| (format!("head {h}"), p[h * n * n..(h + 1) * n * n].iter().map(|&x| x as f64).collect()))
        .collect();
    let png = opts.out_dir.join("lesson5_attention.png");
    yuanli_train::plot::heatmaps(
        &png,
        "Attention of the last block's heads (row: query position, column: key)",
        &panels,
        n,
        &labels,
    )?;
    let text: String = sample.iter().map(|&i| corpus.chars[i as usize]).collect();
    say(format!("sample: {text:?}"));
    let last = n - 1;
    for h in 0..cfg.n_head {
        let row = &p[h * n * n + last * n..h * n * n + (last + 1) * n];
        let mut best: Vec<usize> = (0..n).collect();
        best.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let tops: Vec<String> = best
            .iter()
            .take(3)
            .map(|&j| format!("{:?}@{j} ({:.2})", corpus.chars[sample[j] as usize], row[j]))
            .collect();
        say(format!("head {h}: the last position attends most to {}", tops.join(", ")));
    }
    say(format!("\nheat map of every head: {}", png.display()));
    Ok(
        json!({ "lesson": 5, "val_loss": val_loss, "fused_vs_textbook_max_diff": max_diff, "plot": png.display().to_string() }),
    )
}
