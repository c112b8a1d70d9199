"""Preference losses against hand computations, properties, and TRL as the numerical oracle.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_losses_preference.py`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from align.losses.preference import (
    PREFERENCE_LOSSES,
    bradley_terry_loss,
    dpo_sigmoid_loss,
    get_preference_loss,
    hinge_loss,
    ipo_loss,
    simpo_loss,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


# A batch shared by the DPO-family tests:
#   policy chosen  pc = [-10, -12]   policy rejected pr = [-14, -11]
#   ref chosen     rc = [-11, -12]   ref rejected    rr = [-13, -12]
#   chosen log-ratios   pc - rc = [ 1,  0]
#   rejected log-ratios pr - rr = [-1,  1]
#   logits = [1 - (-1), 0 - 1] = [2, -1]
PC, PR, RC, RR = t(-10, -12), t(-14, -11), t(-11, -12), t(-13, -12)


def assert_stats(stats: dict, expected: dict) -> None:
    for name, value in expected.items():
        assert stats[name].item() == pytest.approx(value, abs=1e-12), name
    for name, value in stats.items():
        assert value.dim() == 0 and not value.requires_grad, name


# --------------------------------------------------------------------------------------------------
# Bradley-Terry
# --------------------------------------------------------------------------------------------------


def test_bradley_terry_hand_computed():
    """chosen = [2, 0.5], rejected = [1, 1.5] -> diffs [1, -1].

    loss = (-log s(1) - log s(-1)) / 2 = (log(1 + e^-1) + log(1 + e^1)) / 2
    accuracy = 1/2, margin = (1 - 1) / 2 = 0, chosen_mean = 1.25, rejected_mean = 1.25.
    """
    loss, stats = bradley_terry_loss(t(2.0, 0.5), t(1.0, 1.5))
    assert loss.item() == pytest.approx((softplus(-1.0) + softplus(1.0)) / 2, abs=1e-12)
    assert_stats(stats, {"accuracy": 0.5, "margin": 0.0, "chosen_mean": 1.25, "rejected_mean": 1.25})


def test_bradley_terry_margin_hand_computed():
    """margin = [0.5, 0.5]: diffs - margin = [0.5, -1.5].

    loss = (log(1 + e^-0.5) + log(1 + e^1.5)) / 2; the `margin` stat stays the raw score gap, 0.
    """
    loss, stats = bradley_terry_loss(t(2.0, 0.5), t(1.0, 1.5), margin_B=t(0.5, 0.5))
    assert loss.item() == pytest.approx((softplus(-0.5) + softplus(1.5)) / 2, abs=1e-12)
    assert stats["margin"].item() == pytest.approx(0.0)


def test_bradley_terry_chosen_preferred_gives_lower_loss_and_right_gradients():
    chosen, rejected = t(1.0, 2.0).requires_grad_(), t(0.0, 3.0).requires_grad_()
    loss, _ = bradley_terry_loss(chosen, rejected)
    swapped_loss, _ = bradley_terry_loss(rejected, chosen)
    better_loss, _ = bradley_terry_loss(chosen + 1.0, rejected)
    assert better_loss < loss
    loss.backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()
    # equal scores: loss log 2 whichever way round; ties are not counted as correct
    tie_loss, tie_stats = bradley_terry_loss(t(1.0), t(1.0))
    assert tie_loss.item() == pytest.approx(math.log(2)) and tie_stats["accuracy"].item() == 0.0
    assert swapped_loss.item() == pytest.approx(
        (softplus(-1.0) + softplus(1.0)) / 2, abs=1e-12
    )  # diffs [-1, 1] swapped: same multiset -> same mean


# --------------------------------------------------------------------------------------------------
# DPO family: hand computations
# --------------------------------------------------------------------------------------------------

DPO_STATS_BETA_01 = {
    # rewards = beta * log-ratios: chosen 0.1 * [1, 0], rejected 0.1 * [-1, 1]
    "rewards/chosen": 0.05,
    "rewards/rejected": 0.0,
    "rewards/margins": 0.05,
    "rewards/accuracies": 0.5,  # [0.1 > -0.1, 0 > 0.1] = [1, 0]
    "logps/chosen": -11.0,
    "logps/rejected": -12.5,
}


def test_dpo_sigmoid_hand_computed():
    """beta = 0.1: beta * logits = [0.2, -0.1]; loss = (log(1 + e^-0.2) + log(1 + e^0.1)) / 2."""
    loss, stats = dpo_sigmoid_loss(PC, PR, RC, RR, beta=0.1)
    assert loss.item() == pytest.approx((softplus(-0.2) + softplus(0.1)) / 2, abs=1e-12)
    assert_stats(stats, DPO_STATS_BETA_01)


def test_dpo_sigmoid_label_smoothing_hand_computed():
    """cDPO, ls = 0.1, z = beta * logits = [0.2, -0.1]:
    per pair -log s(z) * 0.9 - log s(-z) * 0.1 = 0.9 log(1 + e^-z) + 0.1 log(1 + e^z).
    """
    loss, _ = dpo_sigmoid_loss(PC, PR, RC, RR, beta=0.1, label_smoothing=0.1)
    expected = sum(0.9 * softplus(-z) + 0.1 * softplus(z) for z in (0.2, -0.1)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_ipo_hand_computed():
    """beta = 0.1 -> target 1 / (2 beta) = 5. logits [2, -1]: ((2 - 5)^2 + (-1 - 5)^2) / 2 = (9 + 36) / 2."""
    loss, stats = ipo_loss(PC, PR, RC, RR, beta=0.1)
    assert loss.item() == pytest.approx(22.5, abs=1e-12)
    assert_stats(stats, DPO_STATS_BETA_01)


def test_ipo_length_normalised_hand_computed():
    """lengths chosen [2, 4], rejected [1, 2] (TRL's normalisation):
    chosen [1/2, 0/4] = [0.5, 0], rejected [-1/1, 1/2] = [-1, 0.5] -> logits [1.5, -0.5]
    loss = ((1.5 - 5)^2 + (-0.5 - 5)^2) / 2 = (12.25 + 30.25) / 2 = 21.25; reward stats unnormalised.
    """
    loss, stats = ipo_loss(PC, PR, RC, RR, beta=0.1, chosen_lengths_B=t(2, 4), rejected_lengths_B=t(1, 2))
    assert loss.item() == pytest.approx(21.25, abs=1e-12)
    assert_stats(stats, DPO_STATS_BETA_01)


def test_hinge_hand_computed():
    """beta = 0.1: relu(1 - [0.2, -0.1]) = [0.8, 1.1] -> 0.95. beta = 1: relu(1 - [2, -1]) = [0, 2] -> 1."""
    loss, stats = hinge_loss(PC, PR, RC, RR, beta=0.1)
    assert loss.item() == pytest.approx(0.95, abs=1e-12)
    assert_stats(stats, DPO_STATS_BETA_01)
    loss, _ = hinge_loss(PC, PR, RC, RR, beta=1.0)
    assert loss.item() == pytest.approx(1.0, abs=1e-12)


def test_simpo_hand_computed():
    """beta = 2, gamma = 0.5, lengths chosen [2, 4], rejected [7, 2]:
    avg chosen [-10/2, -12/4] = [-5, -3], avg rejected [-14/7, -11/2] = [-2, -5.5]
    z = 2 * ([-5, -3] - [-2, -5.5]) - 0.5 = 2 * [-3, 2.5] - 0.5 = [-6.5, 4.5]
    loss = (log(1 + e^6.5) + log(1 + e^-4.5)) / 2
    rewards chosen 2 * [-5, -3] -> mean -8; rejected 2 * [-2, -5.5] -> mean -7.5; margin -0.5;
    accuracies [-10 > -4, -6 > -11] = [0, 1] -> 0.5. logps stats are the summed inputs.
    """
    loss, stats = simpo_loss(
        PC, PR, None, None, beta=2.0, chosen_lengths_B=t(2, 4), rejected_lengths_B=t(7, 2), simpo_gamma=0.5
    )
    assert loss.item() == pytest.approx((softplus(6.5) + softplus(-4.5)) / 2, abs=1e-12)
    assert_stats(
        stats,
        {
            "rewards/chosen": -8.0,
            "rewards/rejected": -7.5,
            "rewards/margins": -0.5,
            "rewards/accuracies": 0.5,
            "logps/chosen": -11.0,
            "logps/rejected": -12.5,
        },
    )


# --------------------------------------------------------------------------------------------------
# DPO family: properties
# --------------------------------------------------------------------------------------------------

LENGTHS = {"chosen_lengths_B": t(3, 5), "rejected_lengths_B": t(4, 2)}


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
def test_chosen_preferred_gives_lower_loss(name):
    """A policy that prefers the chosen answer (more than the reference does) has a lower loss
    than the same pair with the labels swapped; raising the chosen log-prob, or lowering the
    rejected one, lowers the loss further. (Strictly here: no pair reaches the hinge margin
    1/beta = 10 or the IPO target 1/(2 beta) = 5, beyond which hinge is flat and IPO turns up.)"""
    loss_fn = get_preference_loss(name)
    # log-ratios: chosen [+1, +0.5], rejected [-1, -0.5]; same lengths so SimPO sees the same sign
    pc, pr, rc, rr = t(-10, -8), t(-14, -9), t(-11, -8.5), t(-13, -8.5)
    lengths = {"chosen_lengths_B": t(3, 4), "rejected_lengths_B": t(3, 4)}
    preferred, _ = loss_fn(pc, pr, rc, rr, 0.1, **lengths)
    swapped, _ = loss_fn(pr, pc, rr, rc, 0.1, **lengths)
    up_chosen, _ = loss_fn(pc + 0.5, pr, rc, rr, 0.1, **lengths)
    down_rejected, _ = loss_fn(pc, pr - 0.5, rc, rr, 0.1, **lengths)
    assert preferred < swapped
    assert up_chosen < preferred and down_rejected < preferred


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
def test_gradients_push_chosen_up_and_rejected_down(name):
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    loss, stats = get_preference_loss(name)(pc, pr, RC, RR, 0.1, **LENGTHS)
    loss.backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())


def test_policy_equal_to_reference():
    """pi = ref: logits 0. sigmoid -> log 2, ipo -> (1 / (2 beta))^2 = 25, hinge -> 1; rewards 0, accuracy 0."""
    same = (PC, PR, PC, PR)
    assert dpo_sigmoid_loss(*same, beta=0.1)[0].item() == pytest.approx(math.log(2))
    assert ipo_loss(*same, beta=0.1)[0].item() == pytest.approx(25.0)
    loss, stats = hinge_loss(*same, beta=0.1)
    assert loss.item() == pytest.approx(1.0)
    assert stats["rewards/margins"].item() == 0.0 and stats["rewards/accuracies"].item() == 0.0


def test_label_smoothing_half_is_symmetric():
    """ls = 0.5: 0.5 (log(1 + e^-z) + log(1 + e^z)) is even in z, so swapping chosen/rejected changes nothing."""
    a, _ = dpo_sigmoid_loss(PC, PR, RC, RR, beta=0.1, label_smoothing=0.5)
    b, _ = dpo_sigmoid_loss(PR, PC, RR, RC, beta=0.1, label_smoothing=0.5)
    assert a.item() == pytest.approx(b.item(), abs=1e-12)


def test_simpo_ignores_reference():
    a, _ = simpo_loss(PC, PR, RC, RR, 2.0, **LENGTHS)
    b, _ = simpo_loss(PC, PR, RC + 7.0, RR - 3.0, 2.0, **LENGTHS)
    c, _ = simpo_loss(PC, PR, None, None, 2.0, **LENGTHS)
    assert a.item() == b.item() == c.item()


def test_every_variant_accepts_the_uniform_call():
    """A trainer calls every variant the same way, with lengths and all options, without branching."""
    for name in PREFERENCE_LOSSES:
        loss, stats = get_preference_loss(name)(PC, PR, RC, RR, 0.1, 0.0, simpo_gamma=0.3, **LENGTHS)
        assert loss.dim() == 0 and torch.isfinite(loss)
        assert set(stats) == set(DPO_STATS_BETA_01)


def test_registry_and_argument_errors():
    with pytest.raises(ValueError, match=r"valid names: \['hinge', 'ipo', 'sigmoid', 'simpo'\]"):
        get_preference_loss("dpo")
    with pytest.raises(TypeError, match="simpo_gama"):
        dpo_sigmoid_loss(PC, PR, RC, RR, 0.1, simpo_gama=0.5)
    with pytest.raises(ValueError, match="chosen_lengths_B"):
        simpo_loss(PC, PR, RC, RR, 2.0)
    with pytest.raises(ValueError, match="label-smoothing"):
        ipo_loss(PC, PR, RC, RR, 0.1, label_smoothing=0.1)
    with pytest.raises(ValueError, match="label-smoothing"):
        hinge_loss(PC, PR, RC, RR, 0.1, label_smoothing=0.1)


# --------------------------------------------------------------------------------------------------
# TRL as the oracle
# --------------------------------------------------------------------------------------------------
#
# TRL 1.16 has no standalone DPO loss function: the loss lives inside `DPOTrainer._compute_loss`
# (trl/trainer/dpo_trainer.py, the `for loss_type, loss_weight in zip(...)` block), which runs the
# model itself. We call that method unbound on a minimal stand-in for the trainer (only the
# attributes it reads) and a fake model whose per-token log-probs sum to the sequence log-probs we
# want, with `precompute_ref_logps=True` so the reference log-probs come from the batch. TRL's own
# code path then computes the loss and the metrics it logs.


class _FakeLM:
    """Returns what `_compute_loss` reads from `model(..., fused_lm_head=True)`."""

    training = True

    def __init__(self, per_token_logps):
        self.per_token_logps = per_token_logps

    def __call__(self, **kwargs):
        zeros = torch.zeros_like(self.per_token_logps)
        return SimpleNamespace(
            log_probs=self.per_token_logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
        )


def trl_dpo(loss_type, beta, pc, pr, rc, rr, chosen_lengths, rejected_lengths, label_smoothing=0.0):
    dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")
    lengths = [int(n) for n in chosen_lengths] + [int(n) for n in rejected_lengths]
    seq_len = 1 + max(lengths)  # one prompt token, then the completion
    completion_mask = torch.zeros(len(lengths), seq_len, dtype=torch.long)
    for row, n in enumerate(lengths):
        completion_mask[row, 1 : 1 + n] = 1
    # per-token log-probs on the shifted positions: the whole sequence log-prob on the first
    # completion token, 0 elsewhere (TRL sums over the sequence; masked labels contribute 0)
    per_token = torch.zeros(len(lengths), seq_len - 1, dtype=pc.dtype)
    per_token[:, 0] = torch.cat([pc, pr])
    identity = lambda x: x  # noqa: E731
    trainer = SimpleNamespace(
        model=_FakeLM(per_token),
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather=identity, gather_for_metrics=identity),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        args=SimpleNamespace(),
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(len(lengths), seq_len, dtype=torch.long),
        "attention_mask": torch.ones(len(lengths), seq_len, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": rc,
        "ref_rejected_logps": rr,
    }
    loss = dpo_trainer.DPOTrainer._compute_loss(trainer, trainer.model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


def random_batch(B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logps = -20 * torch.rand(4, B, generator=g, dtype=torch.float64)
    chosen_lengths = torch.randint(1, 9, (B,), generator=g).double()
    rejected_lengths = torch.randint(1, 9, (B,), generator=g).double()
    return (*logps, chosen_lengths, rejected_lengths)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_dpo_family_equals_trl_dpo_trainer(loss_type):
    pc, pr, rc, rr, cl, rl = random_batch()
    beta = 0.3
    trl_loss, trl_metrics = trl_dpo(loss_type, beta, pc, pr, rc, rr, cl, rl)
    loss, stats = get_preference_loss(loss_type)(pc, pr, rc, rr, beta, chosen_lengths_B=cl, rejected_lengths_B=rl)
    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-6)
    for name, value in stats.items():
        assert value.item() == pytest.approx(trl_metrics[name], abs=1e-6), name


def test_simpo_and_cdpo_equal_trl_cpo_trainer():
    """TRL 1.16 keeps SimPO in `trl.experimental.cpo.CPOTrainer.cpo_loss` (a method reading only
    beta, loss_type, simpo_gamma, label_smoothing, alpha, accelerator.device), on averaged logps.
    Its reference-free "sigmoid" is cDPO with the reference at 0, so it also checks our
    label-smoothing form (which TRL 1.16's DPOTrainer "sigmoid" no longer applies)."""
    cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
    pc, pr, _, _, cl, rl = random_batch(seed=1)
    beta, gamma, ls = 2.0, 0.7, 0.15
    trainer = SimpleNamespace(
        alpha=0.0,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
        loss_type="simpo",
        simpo_gamma=gamma,
        beta=beta,
        label_smoothing=ls,
    )
    trl_losses, trl_chosen_rewards, trl_rejected_rewards = cpo.CPOTrainer.cpo_loss(trainer, pc / cl, pr / rl)
    loss, stats = simpo_loss(
        pc, pr, None, None, beta, ls, chosen_lengths_B=cl, rejected_lengths_B=rl, simpo_gamma=gamma
    )
    assert loss.item() == pytest.approx(trl_losses.mean().item(), abs=1e-6)
    assert stats["rewards/chosen"].item() == pytest.approx(trl_chosen_rewards.mean().item(), abs=1e-6)
    assert stats["rewards/rejected"].item() == pytest.approx(trl_rejected_rewards.mean().item(), abs=1e-6)

    trainer.loss_type, trainer.beta = "sigmoid", 0.1
    trl_losses, _, _ = cpo.CPOTrainer.cpo_loss(trainer, pc, pr)
    zeros = torch.zeros_like(pc)
    loss, _ = dpo_sigmoid_loss(pc, pr, zeros, zeros, 0.1, label_smoothing=ls)
    assert loss.item() == pytest.approx(trl_losses.mean().item(), abs=1e-6)
