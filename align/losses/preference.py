"""Preference losses: Bradley-Terry for reward models, and the DPO family for policies.

What it does:
- `bradley_terry_loss`: the pairwise reward-model loss, -log sigmoid(r_chosen - r_rejected [- margin]).
- The DPO family, one signature for every variant, picked by name from `PREFERENCE_LOSSES`:
      loss_fn(policy_chosen_logps_B, policy_rejected_logps_B, ref_chosen_logps_B, ref_rejected_logps_B,
              beta, label_smoothing=0.0, **kw) -> (loss, stats)
  `sigmoid` (DPO / conservative DPO), `ipo`, `hinge` (SLiC), `simpo` (reference-free).
  Every variant returns the mean over the batch and logs the same stats under the names TRL's
  `DPOTrainer` logs: rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies,
  logps/chosen, logps/rejected (batch means, detached).

Inputs are SEQUENCE log-probs: the sum over completion tokens of log pi(token), shape (B,).
Length information travels in two keyword arguments every variant accepts, so a trainer calls all
variants the same way and never branches on the loss name:
- `chosen_lengths_B`, `rejected_lengths_B`: number of completion tokens of each sequence.
  `simpo` requires them (it is defined on length-averaged log-probs); `ipo` uses them when given
  to length-normalise exactly as TRL does (see `ipo_loss`); `sigmoid` and `hinge` ignore them.
Variant-specific options also arrive through `**kw` (`simpo_gamma`). An unknown keyword is a
TypeError, so a misspelt option fails loudly instead of being ignored.

What it leaves out: computing log-probs (see `align.logprobs`), models and tokenizers.
Run the tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_losses_preference.py`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Stats = dict[str, torch.Tensor]

# Keyword arguments any DPO-family loss accepts (used by some variants, ignored by the others).
DPO_FAMILY_KWARGS = frozenset({"chosen_lengths_B", "rejected_lengths_B", "simpo_gamma"})


# --------------------------------------------------------------------------------------------------
# Reward modelling
# --------------------------------------------------------------------------------------------------


def bradley_terry_loss(
    chosen_scores_B: torch.Tensor,
    rejected_scores_B: torch.Tensor,
    margin_B: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Stats]:
    """Pairwise reward-model loss (Bradley & Terry 1952; Ouyang et al. 2022 eq. 1).

    With `margin_B` (Llama 2, Touvron et al. 2023 eq. 2) the chosen score must beat the rejected
    one by at least the margin before the loss flattens. Same formula as TRL's `RewardTrainer`.

    Stats: `accuracy` (fraction of pairs with r_c > r_r, ties count as wrong), `margin`
    (mean r_c - r_r, without the margin_B offset), `chosen_mean`, `rejected_mean`.
    """
    diff_B = chosen_scores_B - rejected_scores_B
    if margin_B is not None:
        diff_B = diff_B - margin_B  # Llama 2 eq. 2: -log sigmoid(r_c - r_r - m)
    # Bradley-Terry: P(c > r) = sigmoid(r_c - r_r); loss = -log P (Ouyang et al. 2022 eq. 1)
    loss = -F.logsigmoid(diff_B).mean()

    with torch.no_grad():
        stats = {
            "accuracy": (chosen_scores_B > rejected_scores_B).float().mean(),
            "margin": (chosen_scores_B - rejected_scores_B).mean(),
            "chosen_mean": chosen_scores_B.mean(),
            "rejected_mean": rejected_scores_B.mean(),
        }
    return loss, {k: v.detach() for k, v in stats.items()}


# --------------------------------------------------------------------------------------------------
# DPO family helpers
# --------------------------------------------------------------------------------------------------


def _check_kwargs(kw: dict, loss_name: str) -> None:
    unknown = sorted(set(kw) - DPO_FAMILY_KWARGS)
    if unknown:
        raise TypeError(
            f"{loss_name}: unknown keyword argument(s) {unknown}; "
            f"DPO-family losses accept {sorted(DPO_FAMILY_KWARGS)}"
        )


def _require_lengths(kw: dict, loss_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    chosen_lengths_B = kw.get("chosen_lengths_B")
    rejected_lengths_B = kw.get("rejected_lengths_B")
    if chosen_lengths_B is None or rejected_lengths_B is None:
        raise ValueError(
            f"{loss_name} is defined on length-averaged log-probs: pass chosen_lengths_B and "
            "rejected_lengths_B (number of completion tokens per sequence) with the summed log-probs"
        )
    # clamp like TRL (`mask.sum(dim=1).clamp(min=1.0)`), so an empty completion cannot divide by zero
    return chosen_lengths_B.clamp(min=1), rejected_lengths_B.clamp(min=1)


def _reject_label_smoothing(label_smoothing: float, loss_name: str) -> None:
    if label_smoothing != 0.0:
        raise ValueError(f"{loss_name} has no label-smoothing form; got label_smoothing={label_smoothing}")


def _logratios(policy_chosen_logps_B, policy_rejected_logps_B, ref_chosen_logps_B, ref_rejected_logps_B):
    """log pi(y|x) - log pi_ref(y|x) of the chosen and of the rejected completions."""
    return policy_chosen_logps_B - ref_chosen_logps_B, policy_rejected_logps_B - ref_rejected_logps_B


def _dpo_stats(
    chosen_rewards_B: torch.Tensor,
    rejected_rewards_B: torch.Tensor,
    policy_chosen_logps_B: torch.Tensor,
    policy_rejected_logps_B: torch.Tensor,
) -> Stats:
    """The metrics TRL's DPOTrainer logs (dpo_trainer.py, `_compute_loss`), as batch means."""
    with torch.no_grad():
        chosen_rewards_B = chosen_rewards_B.detach()
        rejected_rewards_B = rejected_rewards_B.detach()
        return {
            "rewards/chosen": chosen_rewards_B.mean(),
            "rewards/rejected": rejected_rewards_B.mean(),
            "rewards/margins": (chosen_rewards_B - rejected_rewards_B).mean(),
            "rewards/accuracies": (chosen_rewards_B > rejected_rewards_B).float().mean(),
            "logps/chosen": policy_chosen_logps_B.detach().mean(),
            "logps/rejected": policy_rejected_logps_B.detach().mean(),
        }


def _conservative_logistic(logits_B: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """-log sigmoid(z) (1 - eps) - log sigmoid(-z) eps: the cDPO form, as TRL 0.x / CPOTrainer code it."""
    # cDPO (Mitchell 2023, "A note on DPO with noisy preferences"): labels flipped with prob. eps
    return -F.logsigmoid(logits_B) * (1 - label_smoothing) - F.logsigmoid(-logits_B) * label_smoothing


# --------------------------------------------------------------------------------------------------
# DPO family
# --------------------------------------------------------------------------------------------------


def dpo_sigmoid_loss(
    policy_chosen_logps_B: torch.Tensor,
    policy_rejected_logps_B: torch.Tensor,
    ref_chosen_logps_B: torch.Tensor,
    ref_rejected_logps_B: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    **kw,
) -> tuple[torch.Tensor, Stats]:
    """DPO (Rafailov et al. 2023, eq. 7); with `label_smoothing` > 0, conservative DPO (cDPO).

    logits = (pi_c - pi_r) - (ref_c - ref_r);
    loss = -log sigmoid(beta * logits) (1 - ls) - log sigmoid(-beta * logits) ls.

    With ls = 0 this is exactly TRL 1.16 `DPOTrainer` `loss_type="sigmoid"`. Note that TRL 1.16
    ignores `label_smoothing` for "sigmoid" (it uses it only for "robust"/"exo_pair"/"aot"); the
    ls > 0 form here is the cDPO formula TRL 0.x used for "sigmoid" and `CPOTrainer` still uses.
    """
    _check_kwargs(kw, "sigmoid")
    chosen_logratios_B, rejected_logratios_B = _logratios(
        policy_chosen_logps_B, policy_rejected_logps_B, ref_chosen_logps_B, ref_rejected_logps_B)
    # DPO (Rafailov et al. 2023, eq. 7): -log sigmoid(beta * (policy margin - reference margin))
    logits_B = chosen_logratios_B - rejected_logratios_B
    loss_B = _conservative_logistic(beta * logits_B, label_smoothing)
    return loss_B.mean(), _dpo_stats(beta * chosen_logratios_B, beta * rejected_logratios_B, policy_chosen_logps_B,
                                     policy_rejected_logps_B)


def ipo_loss(
    policy_chosen_logps_B: torch.Tensor,
    policy_rejected_logps_B: torch.Tensor,
    ref_chosen_logps_B: torch.Tensor,
    ref_rejected_logps_B: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    **kw,
) -> tuple[torch.Tensor, Stats]:
    """IPO (Azar et al. 2023, eq. 17): (logits - 1 / (2 beta))^2, beta playing the role of tau.

    Length normalisation: the paper states IPO on whatever log-probs it is given. TRL 1.16
    (dpo_trainer.py, `loss_type == "ipo"`) divides each sequence's log-ratio by its completion
    length (confirmed with the IPO authors, per TRL's comment), which makes beta comparable across
    lengths. Here:
    - with `chosen_lengths_B` / `rejected_lengths_B` given, the log-ratios are divided by them
      exactly as TRL does, so the result equals TRL's "ipo" on the same batch;
    - without them, the logits are taken as given (the paper's formula on the passed log-probs;
      pass length-averaged log-probs to get the normalised form yourself).
    The reward stats use the un-normalised log-ratios, as TRL logs them.
    """
    _check_kwargs(kw, "ipo")
    _reject_label_smoothing(label_smoothing, "ipo")
    chosen_logratios_B, rejected_logratios_B = _logratios(
        policy_chosen_logps_B, policy_rejected_logps_B, ref_chosen_logps_B, ref_rejected_logps_B)
    chosen_scores_B, rejected_scores_B = chosen_logratios_B, rejected_logratios_B
    if kw.get("chosen_lengths_B") is not None or kw.get("rejected_lengths_B") is not None:
        chosen_lengths_B, rejected_lengths_B = _require_lengths(kw, "ipo with lengths")
        chosen_scores_B = chosen_logratios_B / chosen_lengths_B  # TRL: per-token average log-ratio
        rejected_scores_B = rejected_logratios_B / rejected_lengths_B
    logits_B = chosen_scores_B - rejected_scores_B
    # IPO (Azar et al. 2023, eq. 17): (h - 1/(2 tau))^2, regress the log-ratio gap onto 1/(2 tau)
    loss_B = (logits_B - 1 / (2 * beta)) ** 2
    return loss_B.mean(), _dpo_stats(beta * chosen_logratios_B, beta * rejected_logratios_B, policy_chosen_logps_B,
                                     policy_rejected_logps_B)


def hinge_loss(
    policy_chosen_logps_B: torch.Tensor,
    policy_rejected_logps_B: torch.Tensor,
    ref_chosen_logps_B: torch.Tensor,
    ref_rejected_logps_B: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    **kw,
) -> tuple[torch.Tensor, Stats]:
    """SLiC-HF hinge (Zhao et al. 2023, rank-calibration loss), on the DPO reference-adjusted log-ratio.

    loss = relu(1 - beta * logits), logits as in DPO; same as TRL `loss_type="hinge"`
    (so 1/beta is the margin the policy log-ratio gap must reach).
    """
    _check_kwargs(kw, "hinge")
    _reject_label_smoothing(label_smoothing, "hinge")
    chosen_logratios_B, rejected_logratios_B = _logratios(
        policy_chosen_logps_B, policy_rejected_logps_B, ref_chosen_logps_B, ref_rejected_logps_B)
    logits_B = chosen_logratios_B - rejected_logratios_B
    # SLiC (Zhao et al. 2023): max(0, delta - beta * logits) with delta = 1
    loss_B = torch.relu(1 - beta * logits_B)
    return loss_B.mean(), _dpo_stats(beta * chosen_logratios_B, beta * rejected_logratios_B, policy_chosen_logps_B,
                                     policy_rejected_logps_B)


def simpo_loss(
    policy_chosen_logps_B: torch.Tensor,
    policy_rejected_logps_B: torch.Tensor,
    ref_chosen_logps_B: torch.Tensor | None,
    ref_rejected_logps_B: torch.Tensor | None,
    beta: float,
    label_smoothing: float = 0.0,
    **kw,
) -> tuple[torch.Tensor, Stats]:
    """SimPO (Meng et al. 2024, the SimPO objective of Sec. 2): reference-free, on length-averaged log-probs.

    avg_c = pi_c / |y_c|, avg_r = pi_r / |y_r|  (pi_* are the SUMMED log-probs passed in);
    loss = -log sigmoid(beta (avg_c - avg_r) - gamma), with cDPO label smoothing as in TRL's
    `CPOTrainer` (`loss_type="simpo"`), which computes the same thing as
    beta * ((avg_c - avg_r) - gamma / beta).

    Design: the trainer passes summed log-probs plus `chosen_lengths_B` / `rejected_lengths_B`
    (required) to every variant, instead of pre-averaging for SimPO only; that keeps the trainer
    free of per-loss branches and keeps `logps/*` stats comparable across variants (they report
    the summed log-probs as passed). The reference log-probs are ignored (may be None).
    `simpo_gamma` (keyword, default 0.5 as TRL's `CPOConfig`) is the target reward margin gamma.
    Reward stats are SimPO's implicit rewards beta * avg_logp (what TRL's CPOTrainer logs).
    """
    _check_kwargs(kw, "simpo")
    gamma = kw.get("simpo_gamma", 0.5)
    chosen_lengths_B, rejected_lengths_B = _require_lengths(kw, "simpo")
    chosen_avg_logps_B = policy_chosen_logps_B / chosen_lengths_B
    rejected_avg_logps_B = policy_rejected_logps_B / rejected_lengths_B
    # SimPO (Meng et al. 2024): -log sigmoid(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma)
    logits_B = beta * (chosen_avg_logps_B - rejected_avg_logps_B) - gamma
    loss_B = _conservative_logistic(logits_B, label_smoothing)
    stats = _dpo_stats(
        beta * chosen_avg_logps_B, beta * rejected_avg_logps_B, policy_chosen_logps_B, policy_rejected_logps_B
    )
    return loss_B.mean(), stats


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

PreferenceLoss = Callable[..., tuple[torch.Tensor, Stats]]

# Variants that never read the reference log-probs: a trainer may skip the reference forward.
REFERENCE_FREE_LOSSES = frozenset({"simpo"})

PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {
    "sigmoid": dpo_sigmoid_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "simpo": simpo_loss,
}


def get_preference_loss(name: str) -> PreferenceLoss:
    """The DPO-family loss registered under `name` (same names as TRL's `loss_type`)."""
    try:
        return PREFERENCE_LOSSES[name]
    except KeyError:
        raise ValueError(
            f"unknown preference loss {name!r}; valid names: {sorted(PREFERENCE_LOSSES)}"
        ) from None
