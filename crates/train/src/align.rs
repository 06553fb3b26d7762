//! Alignment losses: the reward model, DPO, GRPO, PPO and distillation, each written as
//! Hugging Face TRL computes it (checked against TRL itself on fixed inputs:
//! `tools/reference/trl_reference.py` and `tests/trl_losses.rs`).
//!
//! Every loss is built from autograd ops over the few tensors it reads — per-token
//! log-probabilities `(B, T)`, per-sequence scores `(B,)`, values — so its gradient is the
//! autograd's, not a second derivation. Masks, old and reference log-probabilities, rewards
//! and advantages are constants (plain tensors): no gradient flows into them, as in TRL,
//! where they come out of `torch.no_grad()`.
//!
//! Notation: `σ` the logistic sigmoid, `π` the policy, `π_ref` the frozen reference,
//! `log π(y|x) = Σ_t log π(y_t | x, y_<t)` summed over the completion's tokens only.

use yuanli_autograd::Var;
use yuanli_tensor::Tensor;

fn mean_of(t: &Tensor) -> f64 {
    let v = t.to_vec_f64();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

// ------------------------------------------------------------------ reward model

/// A reward model's loss and what TRL's `RewardTrainer` logs with it.
pub struct RewardLoss {
    /// `mean −log σ(r_c − r_r − m) + c·mean (r_c + r_r)²`.
    pub loss: Var,
    /// Fraction of pairs with `r_c > r_r` (strictly).
    pub accuracy: f64,
    /// `mean (r_c − r_r)` (without the data's margin).
    pub margin: f64,
}

/// Bradley–Terry: `P(chosen ≻ rejected) = σ(r_c − r_r)`; the loss is its negative
/// log-likelihood, `−log σ(r_c − r_r − m)` averaged over pairs, with an optional per-pair
/// margin `m` (a pair known to be far apart must be separated by more) and TRL's optional
/// centering term `c · mean (r_c + r_r)²`, which keeps rewards near zero (the likelihood only
/// sees differences). `chosen`, `rejected`: `(B,)` scalar rewards.
pub fn reward_loss(chosen: &Var, rejected: &Var, margin: Option<&Tensor>, center: Option<f64>) -> RewardLoss {
    let diff = chosen.sub(rejected);
    let shifted = match margin {
        Some(m) => diff.sub(&Var::constant(m.to_dtype(diff.value().dtype()))),
        None => diff.clone(),
    };
    let mut loss = shifted.log_sigmoid().mean_all().neg();
    if let Some(c) = center {
        loss = loss.add(&chosen.add(rejected).powf(2.0).mean_all().scale(c));
    }
    let d = diff.value();
    RewardLoss { loss, accuracy: mean_of(&d.gt(&Tensor::zeros(&[], d.dtype()))), margin: mean_of(d) }
}

// ------------------------------------------------------------------ DPO

/// Which preference loss DPO minimises over `Δ = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DpoKind {
    /// `−log σ(βΔ)` — the DPO paper's loss.
    Sigmoid,
    /// `max(0, 1 − βΔ)` — SLiC's hinge.
    Hinge,
    /// `(Δ̄ − 1/(2β))²` with `Δ̄` from length-averaged log-ratios — IPO, which does not push
    /// `Δ` to infinity on deterministic preferences.
    Ipo,
    /// Robust DPO for labels flipped with probability `ε`:
    /// `[−(1−ε) log σ(βΔ) + ε log σ(−βΔ)] / (1 − 2ε)`.
    Robust {
        /// The label-smoothing (flip) rate `ε < 0.5`.
        label_smoothing: f64,
    },
}

/// The summed completion log-probabilities of one batch of pairs under the policy (with
/// gradient) and the reference (constants), and the completion lengths IPO averages by.
pub struct PairLogps<'a> {
    /// `log π(y_c | x)`, `(B,)`.
    pub chosen: &'a Var,
    /// `log π(y_r | x)`, `(B,)`.
    pub rejected: &'a Var,
    /// `log π_ref(y_c | x)`, `(B,)`.
    pub ref_chosen: &'a Tensor,
    /// `log π_ref(y_r | x)`, `(B,)`.
    pub ref_rejected: &'a Tensor,
    /// Completion tokens of each chosen answer, `(B,)` (IPO only).
    pub chosen_len: &'a Tensor,
    /// Completion tokens of each rejected answer, `(B,)` (IPO only).
    pub rejected_len: &'a Tensor,
}

/// DPO's loss and TRL's `rewards/*` logs.
pub struct DpoLoss {
    /// Mean over pairs of the chosen per-pair loss.
    pub loss: Var,
    /// `mean β·(log π(y_c) − log π_ref(y_c))`: the implicit reward of the chosen answers.
    pub reward_chosen: f64,
    /// The same for the rejected answers.
    pub reward_rejected: f64,
    /// Fraction of pairs whose chosen implicit reward is the larger (strictly).
    pub accuracy: f64,
    /// `mean` of the implicit-reward margins.
    pub margin: f64,
}

/// DPO (Rafailov et al.): the KL-regularised RL objective's optimal policy is
/// `π*(y|x) ∝ π_ref(y|x)·exp(r(x,y)/β)`, so a reward can be read off any policy as
/// `r = β·log(π/π_ref) + β·log Z(x)`; put into the Bradley–Terry likelihood, `Z` cancels and
/// the reward model's loss becomes a loss on the policy itself. `Δ` is the difference of
/// the two log-ratios, summed over completion tokens.
pub fn dpo_loss(p: &PairLogps<'_>, kind: DpoKind, beta: f64) -> DpoLoss {
    let dt = p.chosen.value().dtype();
    let hc = p.chosen.sub(&Var::constant(p.ref_chosen.to_dtype(dt)));
    let hr = p.rejected.sub(&Var::constant(p.ref_rejected.to_dtype(dt)));
    let delta = hc.sub(&hr);
    let per_pair = match kind {
        DpoKind::Sigmoid => delta.scale(beta).log_sigmoid().neg(),
        DpoKind::Hinge => delta.affine(-beta, 1.0).relu(),
        DpoKind::Ipo => {
            let avg = |h: &Var, len: &Tensor| h.div(&Var::constant(len.to_dtype(dt).maximum(&Tensor::ones(&[], dt))));
            avg(&hc, p.chosen_len).sub(&avg(&hr, p.rejected_len)).add_scalar(-1.0 / (2.0 * beta)).powf(2.0)
        }
        DpoKind::Robust { label_smoothing: e } => {
            let clean = delta.scale(beta).log_sigmoid().scale(-(1.0 - e));
            let flipped = delta.scale(-beta).log_sigmoid().scale(-e);
            clean.sub(&flipped).scale(1.0 / (1.0 - 2.0 * e))
        }
    };
    let (rc, rr) = (hc.value().mul_scalar(beta), hr.value().mul_scalar(beta));
    let margins = rc.sub(&rr);
    DpoLoss {
        loss: per_pair.mean_all(),
        reward_chosen: mean_of(&rc),
        reward_rejected: mean_of(&rr),
        accuracy: mean_of(&margins.gt(&Tensor::zeros(&[], dt))),
        margin: mean_of(&margins),
    }
}

// ------------------------------------------------------------------ GRPO

/// How GRPO divides a group's centred rewards.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RewardScale {
    /// By the group's standard deviation (TRL's default, `scale_rewards="group"`).
    Group,
    /// By the whole batch's standard deviation (`"batch"`; the mean stays the group's).
    Batch,
    /// Not at all (`"none"`, Dr. GRPO's advice).
    None,
}

fn std_unbiased(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    if x.len() < 2 {
        return f64::NAN;
    }
    let m = x.iter().sum::<f64>() / n;
    (x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
}

/// Group-relative advantages: the `G` completions of one prompt are consecutive, and each
/// gets `A_i = (r_i − mean_group r) / (std r + 10⁻⁴)` (unbiased standard deviation) — the
/// group's mean is the baseline a critic would otherwise have to learn.
pub fn group_advantages(rewards: &[f64], group: usize, scale: RewardScale) -> Vec<f64> {
    assert!(
        group > 0 && rewards.len().is_multiple_of(group),
        "group_advantages: {} rewards in groups of {group}",
        rewards.len()
    );
    let batch_std = std_unbiased(rewards);
    rewards
        .chunks(group)
        .flat_map(|g| {
            let mean = g.iter().sum::<f64>() / g.len() as f64;
            let std = match scale {
                RewardScale::Group => std_unbiased(g),
                RewardScale::Batch => batch_std,
                RewardScale::None => 0.0,
            };
            g.iter().map(move |r| {
                let a = if scale == RewardScale::None { r - mean } else { (r - mean) / (std + 1e-4) };
                if a.is_nan() {
                    0.0
                } else {
                    a
                }
            })
        })
        .collect()
}

/// How GRPO turns per-token losses into one number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GrpoAggregation {
    /// The original GRPO: each sequence's token mean, then the mean over sequences (long
    /// answers weigh less per token).
    Sequence,
    /// One token mean over the batch (`"bnpo"`).
    Token,
    /// Dr. GRPO: the sum over tokens divided by `B · max_len`, a constant.
    DrGrpo {
        /// The completion-length cap.
        max_len: usize,
    },
    /// DAPO (TRL's default): the sum over tokens divided by the active tokens of the whole
    /// generation batch (`tokens`), so micro-batches add up to one token mean.
    Dapo {
        /// Active completion tokens of the generation batch.
        tokens: f64,
    },
}

/// GRPO's settings (TRL's defaults: `ε = 0.2` both sides, DAPO aggregation).
#[derive(Clone, Copy, Debug)]
pub struct GrpoConfig {
    /// Lower clip: the ratio is kept above `1 − eps_low` where the advantage is negative.
    pub eps_low: f64,
    /// Upper clip: the ratio is kept below `1 + eps_high` where the advantage is positive.
    pub eps_high: f64,
    /// How per-token losses become one.
    pub aggregation: GrpoAggregation,
}

/// GRPO's loss and TRL's logs.
pub struct GrpoLoss {
    /// The aggregated loss.
    pub loss: Var,
    /// Masked mean of the k3 KL estimate (0 without a reference).
    pub kl: f64,
    /// Fraction of tokens clipped at `1 − ε_low` with a negative advantage.
    pub clip_low: f64,
    /// Fraction clipped at `1 + ε_high` with a positive advantage.
    pub clip_high: f64,
}

/// GRPO's per-token objective: with `ρ_t = π(y_t)/π_old(y_t)` and the sequence's advantage
/// `A`, the loss is `−min(ρ_t A, clip(ρ_t, 1−ε_low, 1+ε_high) A) + β·k3_t`, where
/// `k3_t = e^{ref_t − logp_t} − (ref_t − logp_t) − 1 ≥ 0` is an unbiased, always positive
/// estimate of `KL(π‖π_ref)` from the sampled token alone. `old = None` means the samples
/// came from the current policy (one optimisation step per generation): `ρ = 1` in value
/// but its gradient is `∇ log π`, the policy gradient. `kl`: `β` and the reference's
/// log-probabilities `(B, T)`; `None` is TRL's default `β = 0` (no reference needed).
pub fn grpo_loss(
    logps: &Var,
    old: Option<&Tensor>,
    kl: Option<(f64, &Tensor)>,
    advantages: &[f64],
    mask: &Tensor,
    cfg: GrpoConfig,
) -> GrpoLoss {
    let (b, t) = (logps.shape()[0], logps.shape()[1]);
    let dt = logps.value().dtype();
    let old = old.map(|o| o.to_dtype(dt)).unwrap_or_else(|| logps.value().copy());
    let ratio = logps.sub(&Var::constant(old)).exp();
    let adv = Tensor::new(advantages.to_vec(), &[b, 1]).to_dtype(dt);
    let adv_v = Var::constant(adv.clone());
    let unclipped = ratio.mul(&adv_v);
    let clipped = ratio.clamp(1.0 - cfg.eps_low, 1.0 + cfg.eps_high).mul(&adv_v);
    let mut per_token = unclipped.minimum(&clipped).neg();
    let m = mask.to_dtype(dt);
    let count = m.to_vec_f64().iter().sum::<f64>();
    let mut mean_kl = 0.0;
    if let Some((beta, reference)) = kl {
        let d = Var::constant(reference.to_dtype(dt)).sub(logps); // ref − logp
        let k3 = d.exp().sub(&d).add_scalar(-1.0);
        mean_kl = k3.value().mul(&m).to_vec_f64().iter().sum::<f64>() / count.max(1.0);
        per_token = per_token.add(&k3.scale(beta));
    }
    let masked = per_token.mul(&Var::constant(m.clone()));
    let loss = match cfg.aggregation {
        GrpoAggregation::Sequence => {
            let lens = m.sum(&[1], false).maximum(&Tensor::ones(&[], dt));
            masked.sum(&[1], false).div(&Var::constant(lens)).mean_all()
        }
        GrpoAggregation::Token => masked.sum_all().scale(1.0 / count.max(1.0)),
        GrpoAggregation::DrGrpo { max_len } => masked.sum_all().scale(1.0 / (b * max_len) as f64),
        GrpoAggregation::Dapo { tokens } => masked.sum_all().scale(1.0 / tokens.max(1.0)),
    };
    let r = ratio.value();
    let frac = |hit: Tensor| hit.mul(&m).to_vec_f64().iter().sum::<f64>() / count.max(1.0);
    let neg = adv.lt(&Tensor::zeros(&[], dt)).broadcast_as(&[b, t]);
    let pos = adv.gt(&Tensor::zeros(&[], dt)).broadcast_as(&[b, t]);
    let clip_low = frac(r.lt(&Tensor::full(1.0 - cfg.eps_low, &[], dt)).mul(&neg));
    let clip_high = frac(r.gt(&Tensor::full(1.0 + cfg.eps_high, &[], dt)).mul(&pos));
    GrpoLoss { loss, kl: mean_kl, clip_low, clip_high }
}

// ------------------------------------------------------------------ distillation

/// Generalised Jensen–Shannon divergence between a student's and a teacher's next-token
/// distributions (GKD, Agarwal et al.), summed over the vocabulary and averaged over the
/// `mask`ed positions: with `S`, `T` the softmaxes of `logits / temperature` and the mixture
/// `M = (1−β)·S + β·T`, the loss is `β·KL(T‖M) + (1−β)·KL(S‖M)`; `β = 0` is taken as the
/// forward KL `KL(T‖S)` (plain distillation) and `β = 1` as the reverse KL `KL(S‖T)`, as
/// TRL does. `student (…, V)` has the gradient; `teacher` (same shape) is a constant; `mask`
/// (the shape without `V`) picks the positions. Without a mask the sum is divided by the
/// first axis's size, as TRL's `batchmean` does.
pub fn generalized_jsd(student: &Var, teacher: &Tensor, mask: Option<&Tensor>, beta: f64, temperature: f64) -> Var {
    let dt = student.value().dtype();
    let log_s = student.scale(1.0 / temperature).log_softmax();
    let log_t = teacher.to_dtype(dt).mul_scalar(1.0 / temperature).log_softmax();
    let t = log_t.exp();
    let lt = Var::constant(log_t.clone());
    let per = if beta == 0.0 {
        Var::constant(t).mul(&lt.sub(&log_s))
    } else if beta == 1.0 {
        log_s.exp().mul(&log_s.sub(&lt))
    } else {
        // log M = c + log(e^{a−c} + e^{b−c}), a = log S + ln(1−β), b = log T + ln β, with the
        // constant c = max(a, b) keeping both exponentials ≤ 1.
        let a = log_s.add_scalar((1.0 - beta).ln());
        let bt = log_t.add_scalar(beta.ln());
        let c = Var::constant(a.value().maximum(&bt));
        let log_m = a.sub(&c).exp().add(&Var::constant(bt).sub(&c).exp()).log().add(&c);
        let kl_t = Var::constant(t).mul(&lt.sub(&log_m));
        let kl_s = log_s.exp().mul(&log_s.sub(&log_m));
        kl_t.scale(beta).add(&kl_s.scale(1.0 - beta))
    };
    let per_pos = per.sum(&[-1], false); // (N,)
    match mask {
        Some(m) => {
            let m = m.to_dtype(dt);
            let n = m.to_vec_f64().iter().sum::<f64>();
            per_pos.mul(&Var::constant(m)).sum_all().scale(1.0 / n.max(1.0))
        }
        None => per_pos.sum_all().scale(1.0 / student.shape()[0].max(1) as f64),
    }
}

// ------------------------------------------------------------------ PPO

/// Which sampled estimate of `KL(π‖π_ref)` a token contributes to PPO's reward penalty.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KlEstimator {
    /// `log π − log π_ref` (unbiased, may be negative; TRL's default).
    K1,
    /// `e^{ref − logp} − (ref − logp) − 1` (unbiased and never negative).
    K3,
}

/// RLHF's per-token reward: `r_t = −c·kl_t`, plus the reward model's score of the whole
/// answer on the position after its last token (`last[b]` is the index of row `b`'s last real
/// response token; on the last position when the row is full), as TRL's PPO places it.
/// `logps`, `ref_logps`: `(B, T)` sampled-token log-probabilities. Returns `(rewards, kl)`,
/// both `(B, T)` and zero past `last`.
pub fn ppo_rewards(
    logps: &Tensor,
    ref_logps: &Tensor,
    last: &[usize],
    scores: &[f64],
    kl_coef: f64,
    est: KlEstimator,
) -> (Tensor, Tensor) {
    let (b, t) = (logps.dim(0), logps.dim(1));
    let (lp, rp) = (logps.to_vec_f64(), ref_logps.to_vec_f64());
    let (mut rewards, mut kl) = (vec![0.0; b * t], vec![0.0; b * t]);
    for i in 0..b {
        for j in 0..=last[i].min(t - 1) {
            let logr = rp[i * t + j] - lp[i * t + j];
            kl[i * t + j] = match est {
                KlEstimator::K1 => -logr,
                KlEstimator::K3 => logr.exp() - 1.0 - logr,
            };
            rewards[i * t + j] = -kl_coef * kl[i * t + j];
        }
        let end = if last[i] + 1 < t { last[i] + 1 } else { last[i] };
        rewards[i * t + end] += scores[i];
    }
    let dt = logps.dtype();
    (Tensor::new(rewards, &[b, t]).to_dtype(dt), Tensor::new(kl, &[b, t]).to_dtype(dt))
}

/// Generalised advantage estimation (Schulman et al.): `δ_t = r_t + γ V_{t+1} − V_t`,
/// `A_t = δ_t + γλ A_{t+1}` from the end backwards (`V_T = 0`), and the value targets
/// `R_t = A_t + V_t`. `rewards`, `values`: `(B, T)`, zero past each row's end. Returns
/// `(advantages, returns)`.
pub fn gae(rewards: &Tensor, values: &Tensor, gamma: f64, lam: f64) -> (Tensor, Tensor) {
    let (b, t) = (rewards.dim(0), rewards.dim(1));
    let (r, v) = (rewards.to_vec_f64(), values.to_vec_f64());
    let mut adv = vec![0.0; b * t];
    for i in 0..b {
        let mut last = 0.0;
        for j in (0..t).rev() {
            let next = if j + 1 < t { v[i * t + j + 1] } else { 0.0 };
            let delta = r[i * t + j] + gamma * next - v[i * t + j];
            last = delta + gamma * lam * last;
            adv[i * t + j] = last;
        }
    }
    let ret: Vec<f64> = adv.iter().zip(&v).map(|(a, v)| a + v).collect();
    let dt = rewards.dtype();
    (Tensor::new(adv, &[b, t]).to_dtype(dt), Tensor::new(ret, &[b, t]).to_dtype(dt))
}

/// `(x − mean)/√(var + 10⁻⁸)` over the masked elements of the whole tensor (unbiased
/// variance); with `shift_mean = false` the mean is added back (scale only).
pub fn masked_whiten(x: &Tensor, mask: &Tensor, shift_mean: bool) -> Tensor {
    let (v, m) = (x.to_vec_f64(), mask.to_vec_f64());
    let n: f64 = m.iter().sum();
    let mean = v.iter().zip(&m).map(|(a, b)| a * b).sum::<f64>() / n;
    let var = v.iter().zip(&m).map(|(a, b)| (a - mean).powi(2) * b).sum::<f64>() / n * (n / (n - 1.0));
    let inv = 1.0 / (var + 1e-8).sqrt();
    let w: Vec<f64> = v.iter().map(|a| (a - mean) * inv + if shift_mean { 0.0 } else { mean }).collect();
    Tensor::new(w, x.shape()).to_dtype(x.dtype())
}

/// PPO's settings (TRL's defaults: 0.2, 0.2, 0.1).
#[derive(Clone, Copy, Debug)]
pub struct PpoConfig {
    /// The policy ratio is clipped to `1 ± cliprange`.
    pub cliprange: f64,
    /// The value prediction is clipped to `V_old ± cliprange_value`.
    pub cliprange_value: f64,
    /// Weight of the value loss.
    pub vf_coef: f64,
}

/// What one PPO minibatch step optimises and logs.
pub struct PpoLoss {
    /// `L_pg + vf_coef · L_vf`.
    pub loss: Var,
    /// The clipped policy loss.
    pub pg_loss: f64,
    /// The clipped value loss (with its ½).
    pub vf_loss: f64,
    /// Fraction of policy tokens where the clipped term won.
    pub pg_clipfrac: f64,
    /// Fraction of value positions where the clipped term won.
    pub vf_clipfrac: f64,
}

/// PPO's clipped surrogate (Schulman et al.) as TRL's `PPOTrainer` computes it:
/// `L_pg = mean_t max(−A_t ρ_t, −A_t clip(ρ_t, 1±ε))` with `ρ_t = π(y_t)/π_old(y_t)` over
/// `policy_mask`, and `L_vf = ½ mean_t max((V_t − R_t)², (clip(V_t, V_old ± ε_v) − R_t)²)`
/// over `value_mask` (one position longer: it covers the score's position). `logps`,
/// `vpred`: `(B, T)` with gradient; the rest constants of the same shape.
#[allow(clippy::too_many_arguments)]
pub fn ppo_loss(
    logps: &Var,
    vpred: &Var,
    old_logps: &Tensor,
    old_values: &Tensor,
    advantages: &Tensor,
    returns: &Tensor,
    policy_mask: &Tensor,
    value_mask: &Tensor,
    cfg: PpoConfig,
) -> PpoLoss {
    let dt = logps.value().dtype();
    let c = |t: &Tensor| Var::constant(t.to_dtype(dt));
    let masked_mean = |x: &Var, m: &Tensor| {
        let n = m.to_vec_f64().iter().sum::<f64>();
        x.mul(&c(m)).sum_all().scale(1.0 / n)
    };
    let ret = c(returns);
    let lo = c(&old_values.to_dtype(dt).add_scalar(-cfg.cliprange_value));
    let hi = c(&old_values.to_dtype(dt).add_scalar(cfg.cliprange_value));
    let vclip = vpred.maximum(&lo).minimum(&hi);
    let (vf1, vf2) = (vpred.sub(&ret).powf(2.0), vclip.sub(&ret).powf(2.0));
    let vf_loss = masked_mean(&vf1.maximum(&vf2), value_mask).scale(0.5);
    let ratio = logps.sub(&c(old_logps)).exp();
    let neg_adv = c(&advantages.to_dtype(dt).neg());
    let (pg1, pg2) = (neg_adv.mul(&ratio), neg_adv.mul(&ratio.clamp(1.0 - cfg.cliprange, 1.0 + cfg.cliprange)));
    let pg_loss = masked_mean(&pg1.maximum(&pg2), policy_mask);
    let frac = |a: &Var, b: &Var, m: &Tensor| {
        let hit = b.value().gt(a.value()).to_dtype(dt).mul(&m.to_dtype(dt));
        hit.to_vec_f64().iter().sum::<f64>() / m.to_vec_f64().iter().sum::<f64>()
    };
    PpoLoss {
        pg_clipfrac: frac(&pg1, &pg2, policy_mask),
        vf_clipfrac: frac(&vf1, &vf2, value_mask),
        pg_loss: pg_loss.value().item(),
        vf_loss: vf_loss.value().item(),
        loss: pg_loss.add(&vf_loss.scale(cfg.vf_coef)),
    }
}
