"""TRL's side of the alignment-loss checks: runs Hugging Face TRL's own loss code on fixed
random inputs in float64 and writes the losses, their gradients and the logged statistics to
crates/train/testdata/trl/reference.json, which crates/train/tests/trl_losses.rs compares with
yuanli's `align` module (to 1e-5; in practice ~1e-12).

How TRL's code is driven (its losses are methods of the trainers, not free functions):
- RewardTrainer.compute_loss and DPOTrainer._compute_loss and GRPOTrainer._compute_loss are
  called unbound, with `self` a stub holding exactly the attributes they read, and a stand-in
  model: for the reward model one that returns fixed rewards; for DPO a fixed "backbone"
  output H (2B, L, d) and LM head W (V, d) patched with TRL's own `add_fused_lm_head`, so the
  per-token log-probabilities are TRL's fused kernel's (the gradient is taken w.r.t. H); for
  GRPO the per-token log-probabilities are TRL's `selective_log_softmax` of fixed logits.
- GKD: GKDTrainer.generalized_jsd_loss, a static method, called directly.
- GRPO's advantages: the lines of GRPOTrainer._generate_and_score_completions, restated
  with TRL's `nanstd`.
- PPO: removed from TRL after 1.12, so the PPO cases run in a second process against trl
  1.12.0 (installed with --target into bench/.trl-1.12, no dependencies of its own): its
  `masked_mean`/`masked_whiten` and PPOTrainer.train's loss and GAE lines restated (they are
  inline in the training loop).

Usage: bench/.venv-hf/bin/python tools/reference/trl_reference.py   (pip install -r bench/requirements-trl.txt first)
"""
import json
import os
import subprocess
import sys
from collections import defaultdict
from types import SimpleNamespace

import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "train", "testdata", "trl", "reference.json")
PPO_TRL = os.path.join(os.path.dirname(__file__), "..", "..", "bench", ".trl-1.12")
torch.set_default_dtype(torch.float64)


def flat(t):
    return [float(v) for v in t.detach().reshape(-1).tolist()]


class Acc:
    """The accelerator methods the loss code calls, for one process."""
    device = torch.device("cpu")
    num_processes = 1

    def gather_for_metrics(self, x):
        return x

    def gather(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x


def stub(**kw):
    s = SimpleNamespace(model=SimpleNamespace(training=True), accelerator=Acc(), _tp_size=1, _total_train_tokens=0,
                        _metrics={"train": defaultdict(list), "eval": defaultdict(list)})
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def last(metrics, key):
    return metrics["train"][key][-1]


# ------------------------------------------------------------------ reward model
def reward_cases(gen):
    from trl import RewardTrainer
    cases = []
    for b, margin, center in [(6, False, None), (5, True, None), (7, True, 0.01)]:
        r = (torch.randn(2 * b, generator=gen) * 2).requires_grad_()
        m = torch.rand(b, generator=gen) if margin else None
        self = stub(args=SimpleNamespace(center_rewards_coefficient=center))
        model = lambda **kw: SimpleNamespace(logits=r.unsqueeze(-1))  # noqa: E731
        inputs = {"input_ids": torch.zeros(2 * b, 3, dtype=torch.long), "attention_mask": torch.ones(2 * b, 3)}
        if margin:
            inputs["margin"] = m
        loss = RewardTrainer.compute_loss(self, model, inputs)
        loss.backward()
        cases.append({"chosen": flat(r[:b]), "rejected": flat(r[b:]), "margin": flat(m) if margin else None,
                      "center": center, "loss": loss.item(), "grad_chosen": flat(r.grad[:b]),
                      "grad_rejected": flat(r.grad[b:]), "accuracy": last(self._metrics, "accuracy"),
                      "logged_margin": last(self._metrics, "margin")})
    return cases


# ------------------------------------------------------------------ DPO
def fused_model(h, w):
    """A stand-in causal LM: the backbone returns the fixed hidden states `h`, the head is `w`;
    TRL's add_fused_lm_head turns it into what DPOTrainer calls."""
    from transformers import PretrainedConfig
    from trl.trainer.utils import add_fused_lm_head

    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.h = h

        def forward(self, *args, **kw):
            return SimpleNamespace(last_hidden_state=self.h)

    class Lm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = PretrainedConfig()
            self.base_model = Backbone()
            self.lm_head = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
            self.lm_head.weight = torch.nn.Parameter(w, requires_grad=False)

        def get_output_embeddings(self):
            return self.lm_head

        def forward(self, input_ids=None, attention_mask=None, **kw):
            raise RuntimeError("only the fused head is used")

    m = Lm()
    add_fused_lm_head(m, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    return m


def dpo_cases(gen):
    from trl import DPOTrainer
    cases = []
    for kind, beta, ls in [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.0), ("hinge", 0.3, 0.0), ("ipo", 0.1, 0.0),
                           ("ipo", 0.7, 0.0), ("robust", 0.2, 0.1)]:
        b, length, d, v = 3, 9, 5, 11
        ids = torch.randint(0, v, (2 * b, length), generator=gen)
        cmask = torch.zeros(2 * b, length, dtype=torch.long)
        for i in range(2 * b):  # prompt of 2-4 tokens, completion to a random end, right padding after
            p = int(torch.randint(2, 5, (1,), generator=gen))
            e = int(torch.randint(p + 2, length + 1, (1,), generator=gen))
            cmask[i, p:e] = 1
        h = (torch.randn(2 * b, length, d, generator=gen)).requires_grad_()
        h_ref = torch.randn(2 * b, length, d, generator=gen)
        w = torch.randn(v, d, generator=gen)
        policy, ref = fused_model(h, w), fused_model(h_ref, w)
        self = stub(aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=False, ref_model=ref,
                    f_divergence_type="reverse_kl", loss_types=[kind], loss_weights=[1.0], beta=beta,
                    label_smoothing=ls, use_weighting=False,
                    args=SimpleNamespace(gradient_checkpointing_kwargs=None, discopop_tau=0.05))
        policy.is_gradient_checkpointing = False
        self.model = policy  # what is_peft_model and disable_gradient_checkpointing inspect
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": cmask}
        loss = DPOTrainer._compute_loss(self, policy, inputs, return_outputs=False)
        loss.backward()
        cases.append({"kind": kind, "beta": beta, "label_smoothing": ls, "pairs": b, "len": length, "d": d, "vocab": v,
                      "input_ids": ids.reshape(-1).tolist(), "completion_mask": cmask.reshape(-1).tolist(),
                      "hidden": flat(h), "ref_hidden": flat(h_ref), "head": flat(w), "loss": loss.item(),
                      "grad_hidden": flat(h.grad),
                      "reward_chosen": last(self._metrics, "rewards/chosen"),
                      "reward_rejected": last(self._metrics, "rewards/rejected"),
                      "accuracy": last(self._metrics, "rewards/accuracies"),
                      "margin": last(self._metrics, "rewards/margins")})
    return cases


# ------------------------------------------------------------------ GRPO
def grpo_advantages(rewards, g, scale):
    """GRPOTrainer._generate_and_score_completions's advantage lines (one reward function)."""
    from trl.trainer.utils import nanstd
    mean = torch.nanmean(rewards.view(-1, g), dim=1).repeat_interleave(g, dim=0)
    if scale in ["group", "none"]:
        std = nanstd(rewards.view(-1, g), dim=1).repeat_interleave(g, dim=0)
    else:
        std = nanstd(rewards).expand_as(rewards)
    adv = rewards - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


def grpo_cases(gen):
    from trl import GRPOTrainer
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax
    cases = []
    for loss_type, beta, with_old, scale in [("dapo", 0.0, False, "group"), ("dapo", 0.04, True, "group"),
                                             ("grpo", 0.04, True, "batch"), ("bnpo", 0.1, True, "none"),
                                             ("dr_grpo", 0.02, True, "group")]:
        g, prompts, t, v = 4, 2, 7, 13
        b = g * prompts
        rewards = torch.randint(0, 3, (b,), generator=gen).double()
        adv = grpo_advantages(rewards, g, scale)
        ids = torch.randint(0, v, (b, t), generator=gen)
        mask = torch.ones(b, t, dtype=torch.long)
        for i in range(b):
            mask[i, int(torch.randint(2, t + 1, (1,), generator=gen)):] = 0
        logits = torch.randn(b, t, v, generator=gen).requires_grad_()
        cur = selective_log_softmax(logits.detach(), ids)
        old = cur + 0.3 * torch.randn(b, t, generator=gen) if with_old else None  # ratios well outside 1 ± 0.2
        ref = cur + 0.5 * torch.randn(b, t, generator=gen)
        max_len = 10
        self = stub(top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
                    beta=beta, loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.28, use_vllm=False,
                    vllm_importance_sampling_correction=False, _entropy_bonus_enabled=False, aux_loss_enabled=False,
                    current_gradient_accumulation_steps=1, max_completion_length=max_len,
                    args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1))
        self._get_per_token_logps_and_entropies = lambda model, *a, **k: (
            selective_log_softmax(logits, ids), entropy_from_logits(logits), None)
        inputs = {"prompt_ids": torch.zeros(b, 1, dtype=torch.long), "prompt_mask": torch.ones(b, 1, dtype=torch.long),
                  "completion_ids": ids, "completion_mask": mask, "advantages": adv,
                  "num_items_in_batch": mask.sum().double(), "ref_per_token_logps": ref}
        if with_old:
            inputs["old_per_token_logps"] = old
        loss = GRPOTrainer._compute_loss(self, None, inputs)
        loss.backward()
        m = self._metrics["train"]
        cases.append({"loss_type": loss_type, "beta": beta, "eps_low": 0.2, "eps_high": 0.28, "scale": scale,
                      "group": g, "rows": b, "len": t, "vocab": v, "max_len": max_len, "rewards": flat(rewards),
                      "advantages": flat(adv), "ids": ids.reshape(-1).tolist(), "mask": mask.reshape(-1).tolist(),
                      "logits": flat(logits), "old": flat(old) if with_old else None, "ref": flat(ref),
                      "loss": loss.item(), "grad_logits": flat(logits.grad),
                      "kl": m["kl"][-1] if beta != 0 else 0.0, "clip_low": m["clip_ratio/low_mean"][-1],
                      "clip_high": m["clip_ratio/high_mean"][-1]})
    return cases


# ------------------------------------------------------------------ GKD
def gkd_cases(gen):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gkd import GKDTrainer
    cases = []
    for beta, temperature, labelled in [(0.5, 1.0, True), (0.0, 1.0, True), (1.0, 1.0, True), (0.1, 2.0, True),
                                        (0.9, 0.7, False)]:
        b, t, v = 2, 5, 9
        s = (torch.randn(b, t, v, generator=gen) * 2).requires_grad_()
        te = torch.randn(b, t, v, generator=gen) * 2
        labels = torch.randint(0, v, (b, t), generator=gen)
        labels[torch.rand(b, t, generator=gen) < 0.3] = -100
        loss = GKDTrainer.generalized_jsd_loss(s, te, labels=labels if labelled else None, beta=beta,
                                               temperature=temperature)
        loss.backward()
        cases.append({"beta": beta, "temperature": temperature, "shape": [b, t, v], "student": flat(s),
                      "teacher": flat(te), "mask": (labels != -100).long().reshape(-1).tolist() if labelled else None,
                      "loss": loss.item(), "grad_student": flat(s.grad)})
    return cases


# ------------------------------------------------------------------ PPO (trl 1.12, second process)
def ppo_cases(seed):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.ppo.ppo_trainer import masked_mean, masked_whiten
    import trl
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for est, kl_coef, cliprange, cliprange_value, vf_coef in [("k1", 0.05, 0.2, 0.2, 0.1), ("k3", 0.2, 0.1, 0.3, 0.5)]:
        b, t, gamma, lam = 4, 8, 1.0, 0.95
        seq_len = torch.tensor([int(torch.randint(1, t, (1,), generator=gen)) for _ in range(b)])
        seq_len[0] = t - 1  # one full row: the score lands on its last position
        idx = torch.arange(t).repeat(b, 1)
        padding_mask = idx > seq_len[:, None]
        padding_mask_p1 = idx > (seq_len + 1)[:, None]
        logprobs = -torch.rand(b, t, generator=gen) * 3
        ref_logprobs = logprobs + 0.4 * torch.randn(b, t, generator=gen)
        values = torch.randn(b, t, generator=gen)
        scores = torch.randn(b, generator=gen)
        # PPOTrainer.train, rollout part
        logprobs = torch.masked_fill(logprobs, padding_mask, 1.0)
        ref_logprobs = torch.masked_fill(ref_logprobs, padding_mask, 1.0)
        values = torch.masked_fill(values, padding_mask_p1, 0)
        logr = ref_logprobs - logprobs
        kl = -logr if est == "k1" else (logr.exp() - 1) - logr
        non_score_reward = -kl_coef * kl
        rewards = non_score_reward.clone()
        actual_start = torch.arange(rewards.size(0))
        sequence_lengths_p1 = seq_len + 1
        actual_end = torch.where(sequence_lengths_p1 < rewards.size(1), sequence_lengths_p1, seq_len)
        rewards[actual_start, actual_end] += scores
        lastgaelam, adv_rev = 0, []
        for i in reversed(range(t)):
            nextvalues = values[:, i + 1] if i < t - 1 else 0.0
            delta = rewards[:, i] + gamma * nextvalues - values[:, i]
            lastgaelam = delta + gamma * lam * lastgaelam
            adv_rev.append(lastgaelam)
        advantages = torch.stack(adv_rev[::-1], axis=1)
        returns = advantages + values
        raw_adv = advantages
        advantages = masked_whiten(advantages, ~padding_mask)
        advantages = torch.masked_fill(advantages, padding_mask, 0)
        # PPOTrainer.train, one minibatch: a new policy and value head near the old ones
        new_lp = (logprobs + 0.3 * torch.randn(b, t, generator=gen)).requires_grad_()
        vpred_raw = (values + 0.4 * torch.randn(b, t, generator=gen)).requires_grad_()
        new_logprobs = torch.masked_fill(new_lp, padding_mask, 1.0)
        vpred = torch.masked_fill(vpred_raw, padding_mask_p1, 0)
        vpredclipped = torch.clamp(vpred, values - cliprange_value, values + cliprange_value)
        vf_losses1 = torch.square(vpred - returns)
        vf_losses2 = torch.square(vpredclipped - returns)
        vf_loss_max = torch.max(vf_losses1, vf_losses2)
        vf_loss = 0.5 * masked_mean(vf_loss_max, ~padding_mask_p1)
        vf_clipfrac = masked_mean((vf_losses2 > vf_losses1).float(), ~padding_mask_p1)
        logprobs_diff = new_logprobs - logprobs
        ratio = torch.exp(logprobs_diff)
        pg_losses = -advantages * ratio
        pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
        pg_loss_max = torch.max(pg_losses, pg_losses2)
        pg_loss = masked_mean(pg_loss_max, ~padding_mask)
        loss = pg_loss + vf_coef * vf_loss
        pg_clipfrac = masked_mean((pg_losses2 > pg_losses).float(), ~padding_mask)
        loss.backward()
        cases.append({"estimator": est, "kl_coef": kl_coef, "cliprange": cliprange, "cliprange_value": cliprange_value,
                      "vf_coef": vf_coef, "gamma": gamma, "lam": lam, "rows": b, "len": t,
                      "last": seq_len.tolist(), "logprobs": flat(logprobs), "ref_logprobs": flat(ref_logprobs),
                      "values": flat(values), "scores": flat(scores), "rewards": flat(rewards), "kl": flat(kl),
                      "raw_advantages": flat(raw_adv), "advantages": flat(advantages), "returns": flat(returns),
                      "new_logprobs": flat(new_lp), "vpred": flat(vpred_raw), "loss": loss.item(),
                      "pg_loss": pg_loss.item(), "vf_loss": vf_loss.item(), "pg_clipfrac": pg_clipfrac.item(),
                      "vf_clipfrac": vf_clipfrac.item(), "grad_logprobs": flat(new_lp.grad),
                      "grad_vpred": flat(vpred_raw.grad)})
    return {"trl_version": trl.__version__, "cases": cases}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--ppo":
        print(json.dumps(ppo_cases(int(sys.argv[2]))))
        return
    import trl
    gen = torch.Generator().manual_seed(20261206)
    out = {"trl_version": trl.__version__, "reward": reward_cases(gen), "dpo": dpo_cases(gen),
           "grpo": grpo_cases(gen), "gkd": gkd_cases(gen)}
    env = dict(os.environ, PYTHONPATH=os.path.abspath(PPO_TRL))
    if not os.path.isdir(PPO_TRL):
        sys.exit(f"trl_reference: {PPO_TRL} is missing: pip install --no-deps --target {PPO_TRL} trl==1.12.0")
    ppo = json.loads(subprocess.run([sys.executable, __file__, "--ppo", "7"], env=env, check=True,
                                    capture_output=True, text=True).stdout)
    out["ppo_trl_version"], out["ppo"] = ppo["trl_version"], ppo["cases"]
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"trl_reference: wrote {os.path.relpath(OUT)} (trl {trl.__version__}; PPO from trl {ppo['trl_version']}): "
          f"{len(out['reward'])} reward, {len(out['dpo'])} DPO, {len(out['grpo'])} GRPO, {len(out['gkd'])} GKD, "
          f"{len(out['ppo'])} PPO cases")


if __name__ == "__main__":
    main()
