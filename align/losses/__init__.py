"""Losses as pure functions of tensors: `(loss, stats)`, picked from registries by name.

- `preference`: Bradley-Terry (reward models) and the DPO family (`PREFERENCE_LOSSES`:
  sigmoid, ipo, hinge, simpo).
- `policy`: PPO pieces (masked statistics, KL estimators `KL_ESTIMATORS`, per-token rewards, GAE,
  clipped policy and value losses, KL controllers; the entropy of logits is `align.tensors`).
- `grpo`: critic-free RL (group advantages `ADVANTAGE_ESTIMATORS`, clip-higher surrogate + KL,
  `LOSS_AGGREGATIONS` over `LossDenominators`, `grpo_loss`).

No models or tokenizers here. Tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_losses_*.py`.
"""

from __future__ import annotations

from align.losses.grpo import (
    ADVANTAGE_ESTIMATORS,
    LOSS_AGGREGATIONS,
    LossDenominators,
    group_advantages,
    group_stats,
    grpo_loss,
    per_token_policy_loss,
)
from align.losses.policy import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae_advantages,
    get_kl_estimator,
    kl_k1,
    kl_k2,
    kl_k3,
    masked_mean,
    masked_var,
    masked_whiten,
    per_token_rewards,
    ppo_policy_loss,
    ppo_value_loss,
)
from align.losses.preference import (
    PREFERENCE_LOSSES,
    REFERENCE_FREE_LOSSES,
    bradley_terry_loss,
    dpo_sigmoid_loss,
    get_preference_loss,
    hinge_loss,
    ipo_loss,
    simpo_loss,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "PREFERENCE_LOSSES",
    "AdaptiveKLController",
    "FixedKLController",
    "LossDenominators",
    "bradley_terry_loss",
    "dpo_sigmoid_loss",
    "explained_variance",
    "gae_advantages",
    "get_kl_estimator",
    "get_preference_loss",
    "group_advantages",
    "group_stats",
    "grpo_loss",
    "hinge_loss",
    "ipo_loss",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "per_token_policy_loss",
    "per_token_rewards",
    "ppo_policy_loss",
    "ppo_value_loss",
    "simpo_loss",
]
