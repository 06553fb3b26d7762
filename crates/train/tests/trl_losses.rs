//! The alignment losses against Hugging Face TRL's own code on the same fixed inputs:
//! `tools/reference/trl_reference.py` runs TRL (1.16 from PyPI; PPO from 1.12, the last
//! release that has it) in float64 and writes `testdata/trl/reference.json` — CI rewrites it
//! in every run before the tests — and each case here recomputes the loss, its gradient and
//! the logged statistics with `yuanli_train::align` in f64, to 1e-5 (they agree to ~1e-12).

use serde_json::Value;
use yuanli_autograd::Var;
use yuanli_tensor::Tensor;
use yuanli_train::align::*;

const TOL: f64 = 1e-5;

fn reference() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/trl/reference.json");
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e} (run tools/reference/trl_reference.py)"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().expect("an array").iter().map(|x| x.as_f64().expect("a number")).collect()
}

fn tensor(v: &Value, shape: &[usize]) -> Tensor {
    Tensor::new(f64s(v), shape)
}

fn ids(v: &Value, shape: &[usize]) -> Tensor {
    Tensor::new(f64s(v).iter().map(|&x| x as u32).collect::<Vec<u32>>(), shape)
}

/// `log p(target)` at every position of `logits (…, V)` (log-softmax, then a gather).
fn token_logps(logits: &Var, targets: &Tensor) -> Var {
    let lead = logits.shape()[..logits.shape().len() - 1].to_vec();
    let n: usize = lead.iter().product();
    let v = logits.shape()[lead.len()];
    logits.reshape(&[n, v]).log_softmax().gather(-1, &targets.reshape(&[n, 1])).reshape(&lead)
}

/// `Σ_t x[b, t] · mask[b, t]` per row.
fn masked_sum(x: &Var, mask: &Tensor) -> Var {
    x.mul(&Var::constant(mask.to_dtype(x.value().dtype()))).sum(&[1], false)
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

fn close(what: &str, ours: f64, theirs: f64) {
    assert!((ours - theirs).abs() <= TOL * (1.0 + theirs.abs()), "{what}: yuanli {ours:.12} vs TRL {theirs:.12}");
}

fn close_all(what: &str, ours: &Tensor, theirs: &[f64]) {
    let ours = ours.to_vec_f64();
    assert_eq!(ours.len(), theirs.len(), "{what}: {} values vs TRL's {}", ours.len(), theirs.len());
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!((a - b).abs() <= TOL * (1.0 + b.abs()), "{what}[{i}]: yuanli {a:.12} vs TRL {b:.12}");
    }
}

#[test]
fn reward_model_loss_matches_trl() {
    let r = reference();
    for (n, c) in r["reward"].as_array().unwrap().iter().enumerate() {
        let b = f64s(&c["chosen"]).len();
        let chosen = Var::leaf(tensor(&c["chosen"], &[b]));
        let rejected = Var::leaf(tensor(&c["rejected"], &[b]));
        let margin = c["margin"].as_array().map(|_| tensor(&c["margin"], &[b]));
        let out = reward_loss(&chosen, &rejected, margin.as_ref(), c["center"].as_f64());
        out.loss.backward();
        let what = format!("reward case {n}");
        close(&format!("{what} loss"), out.loss.value().item(), num(&c["loss"]));
        close_all(&format!("{what} ∂/∂r_c"), &chosen.grad().unwrap(), &f64s(&c["grad_chosen"]));
        close_all(&format!("{what} ∂/∂r_r"), &rejected.grad().unwrap(), &f64s(&c["grad_rejected"]));
        close(&format!("{what} accuracy"), out.accuracy, num(&c["accuracy"]));
        close(&format!("{what} margin"), out.margin, num(&c["logged_margin"]));
    }
}

/// Per-sequence completion log-probabilities from hidden states `h (2B, L, d)` and a head
/// `w (V, d)`: position `t` predicts token `t+1`, counted where the completion mask of `t+1` is set.
fn sequence_logps(h: &Var, w: &Tensor, ids: &Tensor, cmask: &Tensor) -> Var {
    let (rows, len) = (ids.dim(0), ids.dim(1));
    let logits = h.matmul(&Var::constant(w.t().contiguous())).narrow(1, 0, len - 1);
    let targets = ids.narrow(1, 1, len - 1).contiguous();
    let tok = token_logps(&logits.reshape(&[rows, len - 1, w.dim(0)]), &targets);
    masked_sum(&tok, &cmask.narrow(1, 1, len - 1).contiguous())
}

#[test]
fn dpo_losses_match_trl() {
    let r = reference();
    for (n, c) in r["dpo"].as_array().unwrap().iter().enumerate() {
        let (b, len, d, v) =
            (num(&c["pairs"]) as usize, num(&c["len"]) as usize, num(&c["d"]) as usize, num(&c["vocab"]) as usize);
        let ids = ids(&c["input_ids"], &[2 * b, len]);
        let cmask = tensor(&c["completion_mask"], &[2 * b, len]);
        let w = tensor(&c["head"], &[v, d]);
        let h = Var::leaf(tensor(&c["hidden"], &[2 * b, len, d]));
        let logps = sequence_logps(&h, &w, &ids, &cmask);
        let ref_logps = sequence_logps(&Var::constant(tensor(&c["ref_hidden"], &[2 * b, len, d])), &w, &ids, &cmask);
        let lens = cmask.sum(&[1], false);
        let (chosen, rejected) = (logps.narrow(0, 0, b), logps.narrow(0, b, b));
        let (rc, rr) = (ref_logps.value().narrow(0, 0, b).contiguous(), ref_logps.value().narrow(0, b, b).contiguous());
        let (lc, lr) = (lens.narrow(0, 0, b).contiguous(), lens.narrow(0, b, b).contiguous());
        let kind = match c["kind"].as_str().unwrap() {
            "sigmoid" => DpoKind::Sigmoid,
            "hinge" => DpoKind::Hinge,
            "ipo" => DpoKind::Ipo,
            "robust" => DpoKind::Robust { label_smoothing: num(&c["label_smoothing"]) },
            k => panic!("unknown DPO kind {k}"),
        };
        let pairs = PairLogps {
            chosen: &chosen,
            rejected: &rejected,
            ref_chosen: &rc,
            ref_rejected: &rr,
            chosen_len: &lc,
            rejected_len: &lr,
        };
        let out = dpo_loss(&pairs, kind, num(&c["beta"]));
        out.loss.backward();
        let what = format!("DPO case {n} ({:?}, β {})", kind, c["beta"]);
        close(&format!("{what} loss"), out.loss.value().item(), num(&c["loss"]));
        close_all(&format!("{what} ∂/∂h"), &h.grad().unwrap(), &f64s(&c["grad_hidden"]));
        close(&format!("{what} rewards/chosen"), out.reward_chosen, num(&c["reward_chosen"]));
        close(&format!("{what} rewards/rejected"), out.reward_rejected, num(&c["reward_rejected"]));
        close(&format!("{what} rewards/accuracies"), out.accuracy, num(&c["accuracy"]));
        close(&format!("{what} rewards/margins"), out.margin, num(&c["margin"]));
    }
}

#[test]
fn grpo_loss_and_advantages_match_trl() {
    let r = reference();
    for (n, c) in r["grpo"].as_array().unwrap().iter().enumerate() {
        let (b, t, v) = (num(&c["rows"]) as usize, num(&c["len"]) as usize, num(&c["vocab"]) as usize);
        let scale = match c["scale"].as_str().unwrap() {
            "group" => RewardScale::Group,
            "batch" => RewardScale::Batch,
            _ => RewardScale::None,
        };
        let what = format!("GRPO case {n} ({}, β {}, scale {})", c["loss_type"], c["beta"], c["scale"]);
        let adv = group_advantages(&f64s(&c["rewards"]), num(&c["group"]) as usize, scale);
        close_all(&format!("{what} advantages"), &Tensor::new(adv.clone(), &[b]), &f64s(&c["advantages"]));
        let mask = tensor(&c["mask"], &[b, t]);
        let logits = Var::leaf(tensor(&c["logits"], &[b, t, v]));
        let logps = token_logps(&logits, &ids(&c["ids"], &[b, t]));
        let old = c["old"].as_array().map(|_| tensor(&c["old"], &[b, t]));
        let reference = tensor(&c["ref"], &[b, t]);
        let count = mask.to_vec_f64().iter().sum::<f64>();
        let aggregation = match c["loss_type"].as_str().unwrap() {
            "grpo" => GrpoAggregation::Sequence,
            "bnpo" => GrpoAggregation::Token,
            "dr_grpo" => GrpoAggregation::DrGrpo { max_len: num(&c["max_len"]) as usize },
            "dapo" => GrpoAggregation::Dapo { tokens: count },
            k => panic!("unknown GRPO loss type {k}"),
        };
        let cfg = GrpoConfig { eps_low: num(&c["eps_low"]), eps_high: num(&c["eps_high"]), aggregation };
        // TRL's β = 0 runs without a reference; the fixture's β = 0 case checks that path.
        let beta = num(&c["beta"]);
        let kl = (beta != 0.0).then_some((beta, &reference));
        let out = grpo_loss(&logps, old.as_ref(), kl, &adv, &mask, cfg);
        out.loss.backward();
        close(&format!("{what} loss"), out.loss.value().item(), num(&c["loss"]));
        close_all(&format!("{what} ∂/∂logits"), &logits.grad().unwrap(), &f64s(&c["grad_logits"]));
        close(&format!("{what} kl"), out.kl, num(&c["kl"]));
        close(&format!("{what} clip_ratio/low_mean"), out.clip_low, num(&c["clip_low"]));
        close(&format!("{what} clip_ratio/high_mean"), out.clip_high, num(&c["clip_high"]));
    }
}

#[test]
fn generalized_jsd_matches_trl_gkd() {
    let r = reference();
    for (n, c) in r["gkd"].as_array().unwrap().iter().enumerate() {
        let shape: Vec<usize> = f64s(&c["shape"]).iter().map(|&x| x as usize).collect();
        let student = Var::leaf(tensor(&c["student"], &shape));
        let teacher = tensor(&c["teacher"], &shape);
        let mask = c["mask"].as_array().map(|_| tensor(&c["mask"], &shape[..2]));
        let loss = generalized_jsd(&student, &teacher, mask.as_ref(), num(&c["beta"]), num(&c["temperature"]));
        loss.backward();
        let what = format!("GKD case {n} (β {}, T {})", c["beta"], c["temperature"]);
        close(&format!("{what} loss"), loss.value().item(), num(&c["loss"]));
        close_all(&format!("{what} ∂/∂student"), &student.grad().unwrap(), &f64s(&c["grad_student"]));
    }
}

#[test]
fn ppo_rewards_gae_and_losses_match_trl() {
    let r = reference();
    for (n, c) in r["ppo"].as_array().unwrap().iter().enumerate() {
        let (b, t) = (num(&c["rows"]) as usize, num(&c["len"]) as usize);
        let what = format!("PPO case {n} ({})", c["estimator"]);
        let last: Vec<usize> = f64s(&c["last"]).iter().map(|&x| x as usize).collect();
        let est = if c["estimator"] == "k1" { KlEstimator::K1 } else { KlEstimator::K3 };
        let logprobs = tensor(&c["logprobs"], &[b, t]);
        let (rewards, kl) = ppo_rewards(
            &logprobs,
            &tensor(&c["ref_logprobs"], &[b, t]),
            &last,
            &f64s(&c["scores"]),
            num(&c["kl_coef"]),
            est,
        );
        close_all(&format!("{what} kl"), &kl, &f64s(&c["kl"]));
        close_all(&format!("{what} rewards"), &rewards, &f64s(&c["rewards"]));
        let values = tensor(&c["values"], &[b, t]);
        let (adv, returns) = gae(&rewards, &values, num(&c["gamma"]), num(&c["lam"]));
        close_all(&format!("{what} advantages"), &adv, &f64s(&c["raw_advantages"]));
        close_all(&format!("{what} returns"), &returns, &f64s(&c["returns"]));
        // Policy positions: up to each row's last token; value positions one further.
        let mask = |extra: usize| {
            let m: Vec<f64> = (0..b * t).map(|i| if i % t <= last[i / t] + extra { 1.0 } else { 0.0 }).collect();
            Tensor::new(m, &[b, t])
        };
        let (pm, vm) = (mask(0), mask(1));
        let adv = masked_whiten(&adv, &pm, true).mul(&pm);
        close_all(&format!("{what} whitened advantages"), &adv, &f64s(&c["advantages"]));
        let logps = Var::leaf(tensor(&c["new_logprobs"], &[b, t]));
        let vpred = Var::leaf(tensor(&c["vpred"], &[b, t]));
        let cfg = PpoConfig {
            cliprange: num(&c["cliprange"]),
            cliprange_value: num(&c["cliprange_value"]),
            vf_coef: num(&c["vf_coef"]),
        };
        let out = ppo_loss(&logps, &vpred, &logprobs, &values, &adv, &returns, &pm, &vm, cfg);
        out.loss.backward();
        close(&format!("{what} loss"), out.loss.value().item(), num(&c["loss"]));
        close(&format!("{what} pg_loss"), out.pg_loss, num(&c["pg_loss"]));
        close(&format!("{what} vf_loss"), out.vf_loss, num(&c["vf_loss"]));
        close(&format!("{what} pg_clipfrac"), out.pg_clipfrac, num(&c["pg_clipfrac"]));
        close(&format!("{what} vf_clipfrac"), out.vf_clipfrac, num(&c["vf_clipfrac"]));
        close_all(&format!("{what} ∂/∂logp"), &logps.grad().unwrap().mul(&pm), &f64s(&c["grad_logprobs"]));
        close_all(&format!("{what} ∂/∂V"), &vpred.grad().unwrap().mul(&vm), &f64s(&c["grad_vpred"]));
    }
}

#[test]
fn the_fixture_came_from_trl() {
    let r = reference();
    assert!(r["trl_version"].as_str().is_some_and(|v| v.starts_with("1.")), "trl_version {}", r["trl_version"]);
    assert!(
        r["ppo_trl_version"].as_str().is_some_and(|v| v.starts_with("1.12")),
        "ppo_trl_version {}",
        r["ppo_trl_version"]
    );
    for key in ["reward", "dpo", "grpo", "gkd", "ppo"] {
        assert!(r[key].as_array().is_some_and(|c| !c.is_empty()), "no {key} cases in the fixture");
    }
}
