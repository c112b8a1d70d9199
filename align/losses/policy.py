"""PPO pieces as pure tensor functions: masked statistics, KL, per-token rewards, GAE, losses, KL control.

Follows "The N Implementation Details of RLHF with PPO" (Huang et al. 2022/2024), OpenAI's
lm-human-preferences, cleanrl's `ppo.py` and TRL 0.x's `PPOTrainer` (removed from TRL 1.x).

Conventions:
- `_BT` tensors cover the response tokens of a batch of rollouts; `mask_BT` is 1 (or True) on real
  response tokens and 0 on padding. Masks are read as booleans. Masked positions may hold any
  finite or non-finite garbage (e.g. log-probs of pad tokens): every function here ignores them,
  and outputs that are `_BT` hold 0 there.
- Losses return `(loss, stats)`; stats are detached scalar tensors.
- A masked mean over an all-masked input is 0, not NaN.

What it leaves out: rollouts, log-prob computation, the optimisation loop (see `align.trainers`).
Run the tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_losses_policy.py`.
"""

from __future__ import annotations

from typing import Callable

import torch

from align.tensors import last_token_index

Stats = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------------
# Masked statistics
# --------------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over entries where `mask` is true (over `dim`, or over everything)."""
    mask = mask.bool()
    total = torch.where(mask, x, 0.0).sum() if dim is None else torch.where(mask, x, 0.0).sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp(min=1)  # all-masked -> 0 / 1 = 0


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `x` over the masked entries (all of them together), as TRL 0.x `masked_var`.

    unbiased=True applies Bessel's correction n / (n - 1) and needs at least 2 entries.
    """
    mean = masked_mean(x, mask)
    variance = masked_mean((x - mean) ** 2, mask)  # biased: sum (x - mean)^2 / n
    if unbiased:
        n = mask.bool().sum()
        if n < 2:
            raise ValueError(f"unbiased masked_var needs at least 2 unmasked entries, got {int(n)}")
        variance = variance * n / (n - 1)  # Bessel's correction
    return variance


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Whiten `x` with the mean and (unbiased) variance of its masked entries only.

    As TRL 0.x / lm-human-preferences `whiten`: (x - mean) / sqrt(var + 1e-8), and with
    shift_mean=False the mean is added back (rescale only; used for rewards). Unlike TRL, which
    leaves garbage in padded positions and masks it later, masked positions come back as 0.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, 0.0)


# --------------------------------------------------------------------------------------------------
# KL estimators (Schulman 2020, "Approximating KL Divergence"), per token, samples from the policy
# --------------------------------------------------------------------------------------------------


def kl_k1(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """k1 = log pi(x) - log ref(x): unbiased for KL(pi || ref), high variance, can be negative."""
    return logp_BT - ref_logp_BT  # k1 = -log r, r = ref / pi


def kl_k2(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 (log r)^2: biased, low variance, >= 0."""
    return 0.5 * (ref_logp_BT - logp_BT) ** 2  # k2 = (log r)^2 / 2


def kl_k3(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = ref(x) / pi(x): unbiased, low variance, >= 0."""
    log_ratio_BT = ref_logp_BT - logp_BT
    return torch.expm1(log_ratio_BT) - log_ratio_BT  # k3 = (r - 1) - log r  (Schulman 2020)


KLEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

KL_ESTIMATORS: dict[str, KLEstimator] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def get_kl_estimator(name: str) -> KLEstimator:
    """The per-token KL estimator registered under `name` ("k1", "k2", "k3")."""
    try:
        return KL_ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown KL estimator {name!r}; valid names: {sorted(KL_ESTIMATORS)}") from None


# --------------------------------------------------------------------------------------------------
# Rewards and advantages
# --------------------------------------------------------------------------------------------------


def per_token_rewards(
    score_B: torch.Tensor,
    logp_BT: torch.Tensor,
    ref_logp_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    kl_coef: float,
    estimator: str | KLEstimator = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """RLHF reward per token: -kl_coef * KL at every response token, plus the score at the last.

    r_t = -kl_coef * kl_t + [t == last] * score   (Ziegler et al. 2019 eq. 2, R = r - beta log(pi/rho),
    spread per token as in lm-human-preferences and TRL 0.x `compute_rewards`).
    Pass rollout-time (no-grad) tensors. Returns (rewards_BT, kl_BT), both 0 at masked positions.
    `estimator` is a name in `KL_ESTIMATORS` or a callable; TRL 0.x PPO uses k1.
    """
    kl_fn = get_kl_estimator(estimator) if isinstance(estimator, str) else estimator
    mask_BT = mask_BT.bool()
    # sanitise padding first, so garbage there cannot reach the output (or produce NaN)
    logp_BT = torch.where(mask_BT, logp_BT, 0.0)
    ref_logp_BT = torch.where(mask_BT, ref_logp_BT, 0.0)
    kl_BT = torch.where(mask_BT, kl_fn(logp_BT, ref_logp_BT), 0.0)
    rewards_BT = -kl_coef * kl_BT  # KL penalty at every response token
    last_B = last_token_index(mask_BT)
    rows_B = torch.arange(rewards_BT.size(0), device=rewards_BT.device)
    rewards_BT = rewards_BT.index_put((rows_B, last_B), score_B.to(rewards_BT.dtype), accumulate=True)
    return rewards_BT, kl_BT


@torch.no_grad()
def gae_advantages(
    rewards_BT: torch.Tensor,
    values_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16), backwards over tokens.

    delta_t = r_t + gamma V_{t'} - V_t,  A_t = delta_t + gamma lam A_{t'},
    where t' is the next RESPONSE token after t (masked positions are skipped, wherever they are)
    and V = 0, A = 0 after the last one (the episode ends there). Returns (advantages_BT,
    returns_BT) with returns = advantages + values (the value targets); both are 0 at masked
    positions. Outputs are targets, so they are computed without gradient.
    """
    mask_BT = mask_BT.bool()
    rewards_BT = torch.where(mask_BT, rewards_BT, 0.0)
    values_BT = torch.where(mask_BT, values_BT, 0.0)
    B, T = rewards_BT.shape
    advantages_BT = torch.zeros_like(rewards_BT)
    next_value_B = torch.zeros(B, dtype=values_BT.dtype, device=values_BT.device)  # bootstrap: V = 0 at the end
    next_advantage_B = torch.zeros_like(next_value_B)
    for t in reversed(range(T)):
        is_token_B = mask_BT[:, t]
        delta_B = rewards_BT[:, t] + gamma * next_value_B - values_BT[:, t]  # TD error (GAE eq. 11)
        advantage_B = delta_B + gamma * lam * next_advantage_B  # A_t = delta_t + gamma lam A_{t+1}
        advantages_BT[:, t] = torch.where(is_token_B, advantage_B, 0.0)
        # padding is transparent: carry the later token's value and advantage over it
        next_advantage_B = torch.where(is_token_B, advantage_B, next_advantage_B)
        next_value_B = torch.where(is_token_B, values_BT[:, t], next_value_B)
    returns_BT = torch.where(mask_BT, advantages_BT + values_BT, 0.0)
    return advantages_BT, returns_BT


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------


def ppo_policy_loss(
    logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    advantages_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, Stats]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), as a loss, masked mean over tokens.

    ratio = exp(logp - old_logp); loss = mean_t max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)).
    Stats: `clipfrac` (fraction of tokens where the clipped term is the larger, i.e. active),
    `approx_kl` = 0.5 mean((logp - old_logp)^2) (the k2 estimator, what TRL 0.x PPO logs;
    cleanrl logs k3), `ratio` (mean ratio over tokens).
    """
    mask_BT = mask_BT.bool()
    # zero the log-ratio on padding BEFORE exp: exp(garbage) = inf would turn gradients into NaN
    log_ratio_BT = torch.where(mask_BT, logp_BT - old_logp_BT, 0.0)
    ratio_BT = torch.exp(log_ratio_BT)
    unclipped_BT = -advantages_BT * ratio_BT
    clipped_BT = -advantages_BT * torch.clamp(ratio_BT, 1.0 - clip_range, 1.0 + clip_range)
    # PPO-clip (Schulman et al. 2017, eq. 7): -min(r A, clip(r, 1-eps, 1+eps) A) = max(-r A, -clip(r) A)
    loss = masked_mean(torch.maximum(unclipped_BT, clipped_BT), mask_BT)

    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped_BT > unclipped_BT).float(), mask_BT),
            "approx_kl": 0.5 * masked_mean(log_ratio_BT**2, mask_BT),  # k2 of old vs new, as TRL 0.x
            "ratio": masked_mean(ratio_BT, mask_BT),
        }
    return loss, {k: v.detach() for k, v in stats.items()}


def ppo_value_loss(
    values_BT: torch.Tensor,
    old_values_BT: torch.Tensor,
    returns_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    clip_range_value: float | None,
) -> tuple[torch.Tensor, Stats]:
    """Clipped value loss (N Implementation Details, "value function loss clipping"; cleanrl).

    v_clip = old + clip(v - old, -eps, eps); loss = 0.5 mean_t max((v - R)^2, (v_clip - R)^2).
    clip_range_value=None gives the plain 0.5 mean (v - R)^2. Stats: `value_clipfrac` (fraction of
    tokens where the clipped term is the larger), `explained_variance` (see `explained_variance`).
    """
    mask_BT = mask_BT.bool()
    values_BT = torch.where(mask_BT, values_BT, 0.0)
    old_values_BT = torch.where(mask_BT, old_values_BT, 0.0)
    returns_BT = torch.where(mask_BT, returns_BT, 0.0)
    unclipped_BT = (values_BT - returns_BT) ** 2
    if clip_range_value is None:
        clipped_BT = unclipped_BT
    else:
        delta_BT = torch.clamp(values_BT - old_values_BT, -clip_range_value, clip_range_value)
        values_clipped_BT = old_values_BT + delta_BT
        clipped_BT = (values_clipped_BT - returns_BT) ** 2
    # 0.5 max((v - R)^2, (clip(v, old - eps, old + eps) - R)^2)   (cleanrl ppo.py, clip_vloss)
    loss = 0.5 * masked_mean(torch.maximum(unclipped_BT, clipped_BT), mask_BT)

    with torch.no_grad():
        stats = {
            "value_clipfrac": masked_mean((clipped_BT > unclipped_BT).float(), mask_BT),
            "explained_variance": explained_variance(values_BT, returns_BT, mask_BT),
        }
    return loss, {k: v.detach() for k, v in stats.items()}


@torch.no_grad()
def explained_variance(values_BT: torch.Tensor, returns_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """1 - Var[R - V] / Var[R] over masked tokens (cleanrl); NaN when Var[R] = 0.

    1 = perfect value predictions, 0 = no better than a constant, < 0 = worse.
    """
    var_returns = masked_var(returns_BT, mask_BT, unbiased=False)
    var_residual = masked_var(returns_BT - values_BT, mask_BT, unbiased=False)
    ev = 1.0 - var_residual / var_returns
    return torch.where(var_returns == 0, torch.full_like(ev, float("nan")), ev)


# --------------------------------------------------------------------------------------------------
# KL coefficient controllers (Ziegler et al. 2019, Sec. 2.2)
# --------------------------------------------------------------------------------------------------


class FixedKLController:
    """A constant KL coefficient; `update` does nothing."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, Sec. 2.2; lm-human-preferences, TRL 0.x).

    e = clip(KL / target - 1, -0.2, 0.2);  coef <- coef * (1 + e * n_steps / horizon).
    `n_steps` is the number of samples (episodes) since the last update, as in the paper.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be positive, got target={target}, horizon={horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)  # clip to [-0.2, 0.2]
        self.value *= 1.0 + proportional_error * n_steps / self.horizon  # Ziegler et al. 2019, Sec. 2.2
        return self.value

    def state_dict(self) -> dict[str, float]:
        """Only the coefficient is state; target and horizon are configuration."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
