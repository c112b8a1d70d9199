"""Critic-free policy gradient (the GRPO family) as pure functions: group advantages, the clipped
surrogate with separate lower and upper clip and a KL term, and the loss aggregations.

What it does:
- `group_advantages(rewards_B, group_size, estimator, batch_std)`: one advantage per completion
  from the rewards of the G completions of its prompt, `ADVANTAGE_ESTIMATORS`:
      grpo     (r - mean_G) / (std_G + 1e-4)        (Shao et al. 2024, DeepSeekMath, eq. 3 outcome supervision)
      rloo     r - mean of the other G - 1 rewards  (Ahmadian et al. 2024, REINFORCE leave-one-out)
      dr_grpo  r - mean_G                           (Liu et al. 2025, "Understanding R1-Zero", no std)
  `batch_std=True` divides the centred rewards by the std of every reward in the batch instead of
  the group's (TRL's `scale_rewards="batch"`); `group_stats` says which groups have zero variance;
- `per_token_policy_loss(...)`: the clipped importance-ratio surrogate with DAPO's clip-higher
  (`clip_low`, `clip_high`), plus `kl_coef` x the per-token KL estimate to the reference
  (optionally weighted by the ratio, `kl_importance_weighted`: TRL 1.16's default
  `use_bias_correction_kl=True`, DeepSeek-V3.2; off by default, as in the GRPO paper);
- `LOSS_AGGREGATIONS`: how per-token losses become one number (each a sum that a trainer adds
  over micro-batches and processes; the `LossDenominators` are the GLOBAL counts):
      grpo     mean over sequences of each sequence's token mean         (Shao et al. 2024)
      bnpo     token mean of each micro-batch, averaged over micro-batches  (TRL's "bnpo")
      dapo     token mean over the whole global batch                     (Yu et al. 2025, DAPO eq. 8)
      dr_grpo  token sum / (sequences x max completion length)           (Liu et al. 2025)
  `grpo`, `dapo` and `dr_grpo` give the same gradient whatever the number of processes or
  accumulation steps; `bnpo` is TRL's per-micro-batch form and does not (kept to match TRL);
- `grpo_loss(...)`: the two composed, with the statistics TRL logs (clip fractions low/high/region,
  KL, ratio); optional per-token weights multiply each token's loss before aggregation;
- `truncated_importance_weights(trainer_logps_BT, sampler_logps_BT, cap)`: those weights for a
  rollout an inference engine sampled (veRL's truncated importance sampling, Yao et al. 2025,
  "Your efficient RL framework secretly brings you off-policy RL training"):
      w_t = min(pi_trainer(y_t) / pi_sampler(y_t), cap), no gradient.

Tensor names: `_B` one entry per completion, `_BT` completion tokens (0 off the mask).
What it leaves out: sampling and log-probs (`align.experience`), the loop (`align.trainers.grpo`).
Tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_losses_grpo.py tests/test_grpo_trl_oracle.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from align.losses.policy import get_kl_estimator

Stats = dict[str, torch.Tensor]

# --------------------------------------------------------------------------------------------------
# Group advantages
# --------------------------------------------------------------------------------------------------

_STD_EPS = 1e-4  # TRL's GRPOTrainer: advantages / (std + 1e-4)


def _grpo(rewards_NG: torch.Tensor) -> torch.Tensor:
    # GRPO (Shao et al. 2024): A_i = (r_i - mean(r)) / std(r) over the G completions of a prompt
    centred_NG = rewards_NG - rewards_NG.mean(-1, keepdim=True)
    return centred_NG / (rewards_NG.std(-1, keepdim=True) + _STD_EPS)


def _rloo(rewards_NG: torch.Tensor) -> torch.Tensor:
    # RLOO (Ahmadian et al. 2024): A_i = r_i - 1/(G-1) sum_{j != i} r_j
    G = rewards_NG.shape[-1]
    baseline_NG = (rewards_NG.sum(-1, keepdim=True) - rewards_NG) / (G - 1)
    return rewards_NG - baseline_NG


def _dr_grpo(rewards_NG: torch.Tensor) -> torch.Tensor:
    # Dr. GRPO (Liu et al. 2025): A_i = r_i - mean(r), no division by the std (no difficulty bias)
    return rewards_NG - rewards_NG.mean(-1, keepdim=True)


ADVANTAGE_ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "grpo": _grpo, "rloo": _rloo, "dr_grpo": _dr_grpo,
}


def group_stats(rewards_B: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N,) True for every group (prompt) whose G rewards are all equal: no learning signal."""
    rewards_NG = rewards_B.view(-1, group_size)
    return (rewards_NG == rewards_NG[:, :1]).all(-1)


def group_advantages(rewards_B: torch.Tensor, group_size: int, estimator: str = "grpo", batch_std: bool = False,
                     batch_reward_std: float | None = None) -> torch.Tensor:
    """One advantage per completion (B,) from rewards (B,) laid out group by group (the G
    completions of prompt 0, then of prompt 1, ...). See the module docstring.

    `batch_std`: divide the group-centred rewards (grpo and dr_grpo: r - mean_G; rloo: its
    leave-one-out form) by the std of all rewards of the batch + 1e-4 instead of the group std.
    `batch_reward_std` passes that std when the batch is spread over processes (default: the std
    of `rewards_B`)."""
    if group_size < 2:
        raise ValueError(f"group advantages need at least 2 completions per prompt, got group_size={group_size}")
    if rewards_B.numel() % group_size:
        raise ValueError(f"{rewards_B.numel()} rewards do not split into groups of {group_size}")
    try:
        estimate = ADVANTAGE_ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(f"unknown advantage estimator {estimator!r}; valid: {sorted(ADVANTAGE_ESTIMATORS)}") from None
    rewards_NG = rewards_B.float().view(-1, group_size)
    if not batch_std:
        return estimate(rewards_NG).reshape(-1)
    centred_NG = _rloo(rewards_NG) if estimator == "rloo" else _dr_grpo(rewards_NG)
    std = rewards_B.float().std() if batch_reward_std is None else torch.tensor(batch_reward_std)
    return (centred_NG / (std + _STD_EPS)).reshape(-1)


# --------------------------------------------------------------------------------------------------
# Per-token loss and aggregation
# --------------------------------------------------------------------------------------------------


def per_token_policy_loss(logps_BT: torch.Tensor, old_logps_BT: torch.Tensor, advantages_B: torch.Tensor,
                          clip_low: float, clip_high: float, ref_logps_BT: torch.Tensor | None = None,
                          kl_coef: float = 0.0, kl_estimator: str = "k3",
                          kl_importance_weighted: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token loss (B, T) and per-token diagnostics (B, T), before masking and aggregation.

    ratio = exp(logp - old_logp); loss_t = -min(ratio A, clip(ratio, 1 - clip_low, 1 + clip_high) A)
    (PPO's surrogate with DAPO's decoupled clip, Yu et al. 2025 eq. 10), + kl_coef * KL_t to the
    reference (k3 by default, as GRPO and TRL). `kl_importance_weighted`: KL_t x ratio (ratio not
    detached), the DeepSeek-V3.2 correction that makes k3's gradient the reverse-KL gradient when the
    samples come from the old policy (TRL 1.16's default `use_bias_correction_kl=True`); it changes
    the gradient even on-policy, where the ratio is 1 but d ratio / d logp is not 0."""
    advantages_B1 = advantages_B.to(logps_BT.dtype)[:, None]
    ratio_BT = torch.exp(logps_BT - old_logps_BT)
    clipped_BT = torch.clamp(ratio_BT, 1.0 - clip_low, 1.0 + clip_high)
    loss_BT = -torch.min(ratio_BT * advantages_B1, clipped_BT * advantages_B1)
    kl_BT = None
    if kl_coef != 0.0:
        if ref_logps_BT is None:
            raise ValueError("kl_coef is not 0 but no reference log-probs were given")
        kl_BT = get_kl_estimator(kl_estimator)(logps_BT, ref_logps_BT)
        if kl_importance_weighted:
            kl_BT = kl_BT * ratio_BT  # DeepSeek-V3.2 (2025): k3 sampled from pi_old, importance-weighted to pi
        loss_BT = loss_BT + kl_coef * kl_BT
    with torch.no_grad():
        info = {
            "ratio": ratio_BT.detach(),
            # the clip is active: the ratio left the region in the direction the advantage pushes it
            "clipped_low": ((ratio_BT < 1.0 - clip_low) & (advantages_B1 < 0)).float(),
            "clipped_high": ((ratio_BT > 1.0 + clip_high) & (advantages_B1 > 0)).float(),
        }
        if kl_BT is not None:
            info["kl"] = kl_BT.detach()
    return loss_BT, info


@dataclass
class LossDenominators:
    """Global counts of the minibatch one optimizer step covers (all processes, all micro-batches)."""

    sequences: float  # completions that count (after any zero-variance filter)
    tokens: float  # their completion tokens
    max_completion_length: int  # rollout.max_new_tokens (Dr. GRPO's constant)
    micro_batches: int = 1  # micro-batches per process per step (bnpo averages over them)
    processes: int = 1  # processes (bnpo averages over them)


def _grpo_aggregate(loss_BT, mask_BT, d: LossDenominators) -> torch.Tensor:
    # GRPO: (1/G) sum_i (1/|o_i|) sum_t loss_i,t: each sequence's token mean, averaged over sequences
    return ((loss_BT * mask_BT).sum(-1) / mask_BT.sum(-1).clamp(min=1.0)).sum() / d.sequences


def _bnpo_aggregate(loss_BT, mask_BT, d: LossDenominators) -> torch.Tensor:
    # TRL's bnpo: the token mean of THIS micro-batch, averaged over micro-batches and processes
    return (loss_BT * mask_BT).sum() / mask_BT.sum().clamp(min=1.0) / (d.micro_batches * d.processes)


def _dapo_aggregate(loss_BT, mask_BT, d: LossDenominators) -> torch.Tensor:
    # DAPO (Yu et al. 2025, eq. 8): sum over every token of the batch / number of tokens of the batch
    return (loss_BT * mask_BT).sum() / max(d.tokens, 1.0)


def _dr_grpo_aggregate(loss_BT, mask_BT, d: LossDenominators) -> torch.Tensor:
    # Dr. GRPO (Liu et al. 2025): token sum / (sequences x max completion length), a constant
    return (loss_BT * mask_BT).sum() / (d.sequences * d.max_completion_length)


LOSS_AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, LossDenominators], torch.Tensor]] = {
    "grpo": _grpo_aggregate, "bnpo": _bnpo_aggregate, "dapo": _dapo_aggregate, "dr_grpo": _dr_grpo_aggregate,
}


def grpo_loss(logps_BT: torch.Tensor, old_logps_BT: torch.Tensor, advantages_B: torch.Tensor, mask_BT: torch.Tensor,
              denominators: LossDenominators, aggregation: str = "grpo", clip_low: float = 0.2, clip_high: float = 0.2,
              ref_logps_BT: torch.Tensor | None = None, kl_coef: float = 0.0,
              kl_estimator: str = "k3", kl_importance_weighted: bool = False,
              token_weights_BT: torch.Tensor | None = None) -> tuple[torch.Tensor, Stats]:
    """This micro-batch's share of the loss of one optimizer step (module docstring), and stats
    (means over this micro-batch's completion tokens). `token_weights_BT` (no gradient) scales
    each token's loss, the aggregation's denominators unchanged (`truncated_importance_weights`)."""
    try:
        aggregate = LOSS_AGGREGATIONS[aggregation]
    except KeyError:
        raise ValueError(f"unknown loss aggregation {aggregation!r}; valid: {sorted(LOSS_AGGREGATIONS)}") from None
    mask_BT = mask_BT.to(logps_BT.dtype)
    loss_BT, info = per_token_policy_loss(logps_BT, old_logps_BT, advantages_B, clip_low, clip_high, ref_logps_BT,
                                          kl_coef, kl_estimator, kl_importance_weighted)
    if token_weights_BT is not None:
        loss_BT = loss_BT * token_weights_BT.detach().to(loss_BT.dtype)
    loss = aggregate(loss_BT, mask_BT, denominators)
    with torch.no_grad():
        tokens = mask_BT.sum().clamp(min=1.0)
        stats = {name: (values * mask_BT).sum() / tokens for name, values in info.items()}
        stats["clipped_region"] = stats["clipped_low"] + stats["clipped_high"]
    return loss, stats


def truncated_importance_weights(trainer_logps_BT: torch.Tensor, sampler_logps_BT: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-token truncated importance weights (module docstring): min(exp(log p_trainer - log
    p_sampler), cap) of the sampled tokens, detached (B, T)."""
    if cap < 1:
        raise ValueError(f"the truncation cap must be at least 1, got {cap}")
    return torch.exp(trainer_logps_BT.detach().float() - sampler_logps_BT.detach().float()).clamp(max=cap)
