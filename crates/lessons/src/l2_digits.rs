//! Lesson 2: an MLP classifier on real data (hand-written digits), with the whole pipeline:
//! split, scaling fitted on training rows, cross-validation for a hyper-parameter, a final
//! test, a confusion matrix, and a bias–variance picture.

use crate::LessonOpts;
use anyhow::Context;
use serde_json::json;
use yuanli_autograd::{no_grad, Var};
use yuanli_data::{k_fold, split, StandardScaler, Table};
use yuanli_nn::{Activation, Mlp, Module, ParamStore};
use yuanli_tensor::{Rng, Tensor};
use yuanli_train::plot::{line_plot, Series};
use yuanli_train::{Adam, LrSchedule};

/// Training settings shared by every fit in the lesson.
#[derive(Clone, Copy, Debug)]
pub struct FitConfig {
    /// Hidden units of the one hidden layer.
    pub hidden: usize,
    /// Passes over the training rows.
    pub epochs: usize,
    /// Rows per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Seed of initialisation and batch order.
    pub seed: u64,
}

/// The data, already scaled: `x` is `(rows, 64)` f32 and `y` the labels.
pub struct Digits {
    x: Tensor,
    y: Vec<u32>,
}

impl Digits {
    /// Scales features with a standardiser fitted on `fit_rows` only.
    fn scaled(raw: &[f64], y: &[u32], fit_rows: &[usize]) -> Digits {
        let cols = 64;
        let scaler = StandardScaler::fit(raw, cols, fit_rows);
        let mut x = raw.to_vec();
        scaler.transform(&mut x);
        Digits { x: Tensor::new(x, &[y.len(), cols]).to_dtype(yuanli_tensor::DType::F32), y: y.to_vec() }
    }

    fn batch(&self, rows: &[usize]) -> (Var, Tensor) {
        let ids = Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), &[rows.len()]);
        let y = Tensor::new(rows.iter().map(|&r| self.y[r]).collect::<Vec<_>>(), &[rows.len()]);
        (Var::constant(self.x.index_select(&ids)), y)
    }
}

// ANCHOR: fit
/// Trains a 64 → hidden → 10 ReLU network with AdamW on `train` rows.
pub fn fit(data: &Digits, train: &[usize], cfg: FitConfig) -> anyhow::Result<(ParamStore, Mlp)> {
    let mut rng = Rng::new(cfg.seed);
    let mut store = ParamStore::new();
    let model = Mlp::new(&mut store, "mlp", &[64, cfg.hidden, 10], Activation::Relu, &mut rng)?;
    let mut opt = Adam::adamw(0.9, 0.999, 1e-8, cfg.weight_decay);
    let steps_per_epoch = train.len().div_ceil(cfg.batch);
    let total = cfg.epochs * steps_per_epoch;
    let schedule = LrSchedule::WarmupCosine { max_lr: cfg.lr, min_lr: cfg.lr / 10.0, warmup: steps_per_epoch, total };
    let mut order = train.to_vec();
    let mut step = 0;
    for _epoch in 0..cfg.epochs {
        // Shuffle the rows each epoch (Fisher–Yates with the lesson's generator).
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        for rows in order.chunks(cfg.batch) {
            let (x, y) = data.batch(rows);
            store.zero_grad();
            let loss = model.forward(&x).cross_entropy(&y, None);
            loss.backward();
            opt.step(&store, schedule.lr(step));
            step += 1;
        }
    }
    Ok((store, model))
}

/// Mean cross-entropy and accuracy of `model` on `rows` (no graph is recorded).
pub fn evaluate(model: &Mlp, data: &Digits, rows: &[usize]) -> (f64, f64, Vec<u32>) {
    let _no_grad = no_grad();
    let (x, y) = data.batch(rows);
    let logits = model.forward(&x);
    let loss = logits.cross_entropy(&y, None).value().item();
    let pred = logits.value().argmax(-1).to_vec::<u32>();
    let correct = pred.iter().zip(y.to_vec::<u32>()).filter(|(p, t)| **p == *t).count();
    (loss, correct as f64 / rows.len() as f64, pred)
}
// ANCHOR_END: fit

/// Runs lesson 2.
pub fn run(opts: &LessonOpts) -> anyhow::Result<serde_json::Value> {
    let say = |s: String| crate::say(opts, &s);
    let path = opts.data_dir.join("digits.csv");
    let table = Table::read_csv(&path, false).with_context(|| {
        format!("lesson 2 needs {} (run from the repository root or pass --data-dir)", path.display())
    })?;
    let (raw, labels) = table.features_and_labels();
    say(format!("Lesson 2 — an MLP classifier on {} hand-written 8×8 digits\n", table.rows));

    // ANCHOR: protocol
    // 1. Hold out a test set that nothing else looks at.
    let parts = split(table.rows, 0.0, 0.2, opts.seed);
    let base = FitConfig { hidden: 64, epochs: 30, batch: 32, lr: 3e-3, weight_decay: 1e-4, seed: opts.seed };
    // 2. Choose the hidden size by 5-fold cross-validation on the remaining rows; the scaler is
    //    refitted on each fold's training rows, so validation rows never leak into it.
    let candidates = [16, 32, 64, 128];
    let folds = k_fold(&parts.train, 5, opts.seed + 1);
    let mut cv = Vec::new();
    for &hidden in &candidates {
        let mut accs = Vec::new();
        for (tr, va) in &folds {
            let data = Digits::scaled(&raw, &labels, tr);
            let (_store, model) = fit(&data, tr, FitConfig { hidden, ..base })?;
            accs.push(evaluate(&model, &data, va).1);
        }
        let mean = accs.iter().sum::<f64>() / accs.len() as f64;
        say(format!(
            "hidden {hidden:>4}: 5-fold validation accuracy {:.2}% (folds {})",
            100.0 * mean,
            accs.iter().map(|a| format!("{:.1}", 100.0 * a)).collect::<Vec<_>>().join(" ")
        ));
        cv.push((hidden, mean));
    }
    let best = cv.iter().fold(cv[0], |b, &c| if c.1 > b.1 { c } else { b }).0;
    // 3. Refit on all non-test rows with the chosen size; report the test set once.
    let data = Digits::scaled(&raw, &labels, &parts.train);
    let (_store, model) = fit(&data, &parts.train, FitConfig { hidden: best, ..base })?;
    let (test_loss, test_acc, pred) = evaluate(&model, &data, &parts.test);
    // ANCHOR_END: protocol
    say(format!(
        "\nchosen hidden size {best}; test accuracy {:.2}% (loss {test_loss:.4}) on {} unseen digits\n",
        100.0 * test_acc,
        parts.test.len()
    ));

    // ANCHOR: confusion
    let mut confusion = [[0usize; 10]; 10];
    for (&r, &p) in parts.test.iter().zip(&pred) {
        confusion[labels[r] as usize][p as usize] += 1;
    }
    // ANCHOR_END: confusion
    say("confusion matrix (rows: true digit, columns: predicted)".into());
    say(format!("      {}", (0..10).map(|d| format!("{d:>4}")).collect::<String>()));
    for (t, row) in confusion.iter().enumerate() {
        say(format!("  {t:>2}  {}", row.iter().map(|c| format!("{c:>4}")).collect::<String>()));
    }

    // Bias and variance: train/validation loss against model size on one split.
    // ANCHOR: bias_variance
    let (tr, va) = &folds[0];
    let data_bv = Digits::scaled(&raw, &labels, tr);
    let sizes = [1usize, 2, 4, 8, 16, 32, 64, 128, 256];
    let (mut train_curve, mut val_curve) = (Vec::new(), Vec::new());
    for &hidden in &sizes {
        let (_s, m) = fit(&data_bv, tr, FitConfig { hidden, epochs: 60, weight_decay: 0.0, ..base })?;
        train_curve.push((hidden as f64, evaluate(&m, &data_bv, tr).0));
        val_curve.push((hidden as f64, evaluate(&m, &data_bv, va).0));
    }
    // ANCHOR_END: bias_variance
    let png = opts.out_dir.join("lesson2_bias_variance.png");
    line_plot(
        &png,
        "Digits MLP: loss against hidden size",
        "hidden units (log scale)",
        "cross-entropy",
        &[
            Series { label: "train", points: train_curve.clone() },
            Series { label: "validation", points: val_curve.clone() },
        ],
        true,
    )?;
    say(format!("\nbias–variance: small nets underfit (both losses high); large ones drive the training loss to almost zero while the validation loss improves far more slowly, so the gap between them (variance) widens. Plot: {}", png.display()));
    for ((h, t), (_, v)) in train_curve.iter().zip(&val_curve) {
        say(format!("  hidden {h:>4}: train {t:.4}  validation {v:.4}"));
    }
    Ok(json!({
        "lesson": 2,
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "chosen_hidden": best,
        "cv_accuracy": cv.iter().map(|(h, a)| json!({"hidden": h, "accuracy": a})).collect::<Vec<_>>(),
        "plot": png.display().to_string(),
    }))
}
