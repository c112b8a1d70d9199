"""GRPO-family losses (`align.losses.grpo`) against hand computations and their invariances.

Each test's docstring or comments carry the arithmetic (torchtune style). The last tests check the
property the aggregations are built for: splitting one global batch into micro-batches and
processes (each part's loss with the GLOBAL `LossDenominators`, summed the way the trainer sums
them) gives the same loss and the same gradient as one batch, for grpo, dapo and dr_grpo, and not
for bnpo. TRL's own code is the oracle in `tests/test_grpo_trl_oracle.py`.
Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_losses_grpo.py`.
"""

from __future__ import annotations

import math

import pytest
import torch

from align.losses.grpo import (
    ADVANTAGE_ESTIMATORS,
    LOSS_AGGREGATIONS,
    LossDenominators,
    group_advantages,
    group_stats,
    grpo_loss,
    per_token_policy_loss,
    truncated_importance_weights,
)

# Two groups of G = 4: prompt 0 half right, prompt 1 always right (no learning signal).
REWARDS_B = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
G = 4


def _close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# --------------------------------------------------------------------------------------------------
# Group advantages
# --------------------------------------------------------------------------------------------------


def test_grpo_advantages_by_hand():
    """Group 0 [1, 0, 0, 1]: mean 0.5, std (Bessel, as TRL's nanstd) = sqrt(4 x 0.25 / 3) = 0.57735;
    A = +-0.5 / (0.57735 + 1e-4) = +-0.865876. Group 1 [1, 1, 1, 1]: centred 0, std 0: A = 0."""
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert a == pytest.approx(0.865876, abs=1e-6)
    _close(group_advantages(REWARDS_B, G, "grpo"), [a, -a, -a, a, 0, 0, 0, 0])


def test_rloo_advantages_by_hand():
    """A_i = r_i - mean of the 3 others. r = 1: others [0, 0, 1], baseline 1/3, A = 2/3; r = 0:
    others [1, 0, 1], baseline 2/3, A = -2/3 (= G / (G - 1) x (r - mean_G) = 4/3 x 0.5).
    Group [1, 1, 1, 1]: baseline 1, A = 0."""
    _close(group_advantages(REWARDS_B, G, "rloo"), [2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0])


def test_dr_grpo_advantages_by_hand():
    """A_i = r_i - mean_G, no std: [0.5, -0.5, -0.5, 0.5] and [0, 0, 0, 0]."""
    _close(group_advantages(REWARDS_B, G, "dr_grpo"), [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])


def test_batch_std_divides_group_centred_rewards_by_the_batch_std():
    """All 8 rewards: mean 0.75, squared deviations 6 x 0.0625 + 2 x 0.5625 = 1.5, std (Bessel) =
    sqrt(1.5 / 7) = 0.462910. grpo / dr_grpo: (r - mean_G) / (0.462910 + 1e-4) = +-1.080; rloo:
    its leave-one-out form (+-2/3) over the same std. An explicit `batch_reward_std` (the std of
    the batch over all processes) replaces the local one."""
    std = math.sqrt(1.5 / 7)
    assert std == pytest.approx(0.462910, abs=1e-6)
    centred = torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    for estimator in ("grpo", "dr_grpo"):
        _close(group_advantages(REWARDS_B, G, estimator, batch_std=True), centred / (std + 1e-4))
    _close(group_advantages(REWARDS_B, G, "rloo", batch_std=True), centred * 4 / 3 / (std + 1e-4))
    _close(group_advantages(REWARDS_B, G, "grpo", batch_std=True, batch_reward_std=2.0), centred / (2.0 + 1e-4))


def test_advantages_are_zero_mean_per_group_and_keep_shape():
    rewards_B = torch.randn(12, generator=torch.Generator().manual_seed(0))
    for estimator in ADVANTAGE_ESTIMATORS:
        advantages_B = group_advantages(rewards_B, 3, estimator)
        assert advantages_B.shape == (12,)
        _close(advantages_B.view(4, 3).sum(-1), torch.zeros(4), atol=1e-5)


def test_advantage_errors():
    with pytest.raises(ValueError, match="at least 2 completions"):
        group_advantages(torch.tensor([1.0, 0.0]), 1)
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), 3)
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        group_advantages(REWARDS_B, G, "ppo")


def test_group_stats_flags_zero_variance_groups():
    """[1, 0, 0, 1] has a signal; [1, 1, 1, 1] and [0.3, 0.3] do not."""
    assert group_stats(REWARDS_B, G).tolist() == [False, True]
    assert group_stats(torch.tensor([0.3, 0.3, 0.3, 0.7]), 2).tolist() == [True, False]


# --------------------------------------------------------------------------------------------------
# The clipped surrogate with clip-higher
# --------------------------------------------------------------------------------------------------


def _surrogate(ratio: float, advantage: float, clip_low: float = 0.2, clip_high: float = 0.28):
    """Loss and d loss / d logp of one token whose ratio pi / pi_old is `ratio`."""
    logps_BT = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss_BT, info = per_token_policy_loss(logps_BT, torch.zeros(1, 1), torch.tensor([advantage]), clip_low, clip_high)
    loss_BT.sum().backward()
    return float(loss_BT.detach()), float(logps_BT.grad), float(info["clipped_low"]), float(info["clipped_high"])


def test_clip_higher_by_hand():
    """loss = -min(ratio A, clip(ratio, 1 - 0.2, 1 + 0.28) A); d loss / d logp = -ratio A where the
    unclipped term is the min, else 0 (the clipped term is constant)."""
    # A = +1, ratio 1.25: inside (0.8, 1.28): -min(1.25, 1.25) = -1.25, gradient -1.25, not clipped
    assert _surrogate(1.25, 1.0) == pytest.approx((-1.25, -1.25, 0.0, 0.0))
    # same token with a symmetric clip of 0.2: clip to 1.2, -min(1.25, 1.2) = -1.2, gradient 0: clipped high
    assert _surrogate(1.25, 1.0, clip_high=0.2) == pytest.approx((-1.2, 0.0, 0.0, 1.0))
    # A = +1, ratio 1.35 > 1.28: -min(1.35, 1.28) = -1.28, gradient 0, clipped high
    assert _surrogate(1.35, 1.0) == pytest.approx((-1.28, 0.0, 0.0, 1.0))
    # A = +1, ratio 0.7 < 0.8: -min(0.7, 0.8) = -0.7, gradient -0.7: the lower clip never binds for A > 0
    assert _surrogate(0.7, 1.0) == pytest.approx((-0.7, -0.7, 0.0, 0.0))
    # A = -1, ratio 0.7 < 0.8: -min(-0.7, -0.8) = 0.8, gradient 0, clipped low
    assert _surrogate(0.7, -1.0) == pytest.approx((0.8, 0.0, 1.0, 0.0))
    # A = -1, ratio 1.35 > 1.28: -min(-1.35, -1.28) = 1.35, gradient +1.35: the upper clip never binds for A < 0
    assert _surrogate(1.35, -1.0) == pytest.approx((1.35, 1.35, 0.0, 0.0))
    # A = -2, ratio 0.9 inside: -min(-1.8, -1.8) = 1.8, gradient 1.8
    assert _surrogate(0.9, -2.0) == pytest.approx((1.8, 1.8, 0.0, 0.0))


def test_clip_fractions_are_token_means_over_the_mask():
    """Sequence 0 (A = +1) ratios [1.35, 1.25, 1.0], sequence 1 (A = -1) ratios [0.7, 1.35, pad].
    Clipped high: 1.35 with A > 0 (1 token); clipped low: 0.7 with A < 0 (1 token); of 5 tokens:
    clipped_low = clipped_high = 0.2, clipped_region = 0.4. The padded token (ratio 0.1, A < 0)
    would count as clipped low if the mask were ignored. ratio: mean(1.35, 1.25, 1, 0.7, 1.35) = 1.13."""
    ratios_BT = torch.tensor([[1.35, 1.25, 1.0], [0.7, 1.35, 0.1]])
    mask_BT = torch.tensor([[1, 1, 1], [1, 1, 0]])
    d = LossDenominators(sequences=2, tokens=5, max_completion_length=3)
    _, stats = grpo_loss(ratios_BT.log(), torch.zeros(2, 3), torch.tensor([1.0, -1.0]), mask_BT, d, clip_high=0.28)
    _close(stats["clipped_low"], 0.2)
    _close(stats["clipped_high"], 0.2)
    _close(stats["clipped_region"], 0.4)
    _close(stats["ratio"], 1.13, atol=1e-6)
    assert "kl" not in stats


# --------------------------------------------------------------------------------------------------
# The KL term
# --------------------------------------------------------------------------------------------------


def test_k3_kl_term_by_hand():
    """pi = 0.5, ref = 0.25: r = ref / pi = 0.5, k3 = (r - 1) - log r = -0.5 + 0.693147 = 0.193147.
    On-policy (ratio 1) with A = 0 the surrogate is 0, so loss = 0.1 x 0.193147 = 0.0193147.
    d k3 / d logp = 1 - r = 0.5, so the gradient is 0.1 x 0.5 = 0.05. Weighted by the ratio
    (`kl_importance_weighted`), the value is the same (ratio 1) but the gradient gains
    k3 x d ratio / d logp = 0.193147: 0.1 x (0.5 + 0.193147) = 0.0693147."""
    k3 = -0.5 + math.log(2)
    assert k3 == pytest.approx(0.193147, abs=1e-6)
    for weighted, grad in ((False, 0.05), (True, 0.1 * (0.5 + k3))):
        logps_BT = torch.tensor([[math.log(0.5)]], requires_grad=True)
        loss_BT, info = per_token_policy_loss(logps_BT, logps_BT.detach(), torch.zeros(1), 0.2, 0.2,
                                              ref_logps_BT=torch.tensor([[math.log(0.25)]]), kl_coef=0.1,
                                              kl_importance_weighted=weighted)
        loss_BT.sum().backward()
        _close(info["kl"], [[k3]])
        _close(loss_BT.detach(), [[0.1 * k3]])
        _close(logps_BT.grad, [[grad]])


def test_kl_coef_zero_needs_no_reference_and_kl_needs_one():
    logps_BT = torch.zeros(1, 2)
    d = LossDenominators(sequences=1, tokens=2, max_completion_length=2)
    loss, stats = grpo_loss(logps_BT, logps_BT, torch.ones(1), torch.ones(1, 2), d)  # kl_coef=0, no reference
    _close(loss, -1.0)  # ratio 1, A = 1: each token -1, the sequence mean -1
    assert "kl" not in stats
    with pytest.raises(ValueError, match="no reference log-probs"):
        grpo_loss(logps_BT, logps_BT, torch.ones(1), torch.ones(1, 2), d, kl_coef=0.1)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        grpo_loss(logps_BT, logps_BT, torch.ones(1), torch.ones(1, 2), d, ref_logps_BT=logps_BT, kl_coef=0.1,
                  kl_estimator="k4")


# --------------------------------------------------------------------------------------------------
# Aggregations
# --------------------------------------------------------------------------------------------------

# Per-token losses of a padded micro-batch: sequence 0 has 3 tokens, sequence 1 has 1; padding holds
# 100 so that any leak through the mask shows.
LOSS_BT = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
MASK_BT = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(("aggregation", "expected"), [
    ("grpo", 3.0),  # sequence means (1 + 2 + 3) / 3 = 2 and 4 / 1 = 4; their mean (2 + 4) / 2 = 3
    ("bnpo", 2.5),  # token mean of the micro-batch (1 + 2 + 3 + 4) / 4 = 2.5, one micro-batch, one process
    ("dapo", 2.5),  # token sum / global tokens: 10 / 4
    ("dr_grpo", 1.25),  # token sum / (sequences x max completion length): 10 / (2 x 4)
])
def test_aggregations_by_hand(aggregation, expected):
    d = LossDenominators(sequences=2, tokens=4, max_completion_length=4)
    _close(LOSS_AGGREGATIONS[aggregation](LOSS_BT, MASK_BT, d), expected)


@pytest.mark.parametrize(("aggregation", "expected"), [
    ("grpo", 0.75),  # this micro-batch's share: (2 + 4) / 8 global sequences
    ("bnpo", 2.5 / 6),  # its token mean 2.5 / (3 micro-batches x 2 processes)
    ("dapo", 0.5),  # 10 / 20 global tokens
    ("dr_grpo", 10 / 32),  # 10 / (8 sequences x 4)
])
def test_aggregations_use_the_global_denominators(aggregation, expected):
    d = LossDenominators(sequences=8, tokens=20, max_completion_length=4, micro_batches=3, processes=2)
    _close(LOSS_AGGREGATIONS[aggregation](LOSS_BT, MASK_BT, d), expected)


@pytest.mark.parametrize(("aggregation", "expected"), [
    ("grpo", 0.5),  # sequence means -1 and +2: (-1 + 2) / 2
    ("bnpo", -0.25),  # (3 x -1 + 2) / 4
    ("dapo", -0.25),  # (3 x -1 + 2) / 4
    ("dr_grpo", -0.125),  # (3 x -1 + 2) / (2 x 4)
])
def test_grpo_loss_end_to_end_by_hand(aggregation, expected):
    """On-policy (ratio 1), no KL: each token's loss is -A. A = [1, -2] on MASK_BT: tokens -1, -1, -1
    and +2. The padding carries garbage log-probs (ratio e^5 there), which must not count."""
    logps_BT = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, 5.0, 5.0]])
    old_logps_BT = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, 0.0, 0.0]])
    d = LossDenominators(sequences=2, tokens=4, max_completion_length=4)
    loss, stats = grpo_loss(logps_BT, old_logps_BT, torch.tensor([1.0, -2.0]), MASK_BT, d, aggregation)
    _close(loss, expected)
    _close(stats["ratio"], 1.0)


def test_truncated_importance_weights_by_hand_and_in_the_loss():
    """w = min(p_trainer / p_sampler, cap): a sampler that put less mass on a token than the trainer
    gets weight > 1 (capped), more mass < 1; the weights scale each token's loss, not the
    denominators, and carry no gradient."""
    trainer_BT = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, 5.0, 5.0]], requires_grad=True)
    sampler_BT = torch.tensor([[-1.0, -2.0 - math.log(3.0), -0.5 + math.log(2.0)], [-3.0 - math.log(1.5), 0.0, 0.0]])
    w_BT = truncated_importance_weights(trainer_BT, sampler_BT, cap=2.0)
    _close(w_BT[:, :3], [[1.0, 2.0, 0.5], [1.5, 2.0, 2.0]], atol=1e-5)  # 3 and e^5 capped at 2
    assert not w_BT.requires_grad
    with pytest.raises(ValueError, match="at least 1"):
        truncated_importance_weights(trainer_BT, sampler_BT, cap=0.5)
    # dapo: token mean over the 4 masked tokens of -A x w: (-1 x 1 - 1 x 2 - 1 x 0.5 + 2 x 1.5) / 4
    d = LossDenominators(sequences=2, tokens=4, max_completion_length=4)
    old_BT = trainer_BT.detach()
    loss, _ = grpo_loss(trainer_BT, old_BT, torch.tensor([1.0, -2.0]), MASK_BT, d, "dapo", token_weights_BT=w_BT)
    _close(loss, (-1.0 - 2.0 - 0.5 + 3.0) / 4, atol=1e-5)
    plain, _ = grpo_loss(trainer_BT, old_BT, torch.tensor([1.0, -2.0]), MASK_BT, d, "dapo",
                         token_weights_BT=torch.ones_like(w_BT))
    _close(plain, -0.25)


def test_unknown_aggregation_is_an_error():
    d = LossDenominators(sequences=2, tokens=4, max_completion_length=4)
    with pytest.raises(ValueError, match="unknown loss aggregation 'token_sum'"):
        grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2), MASK_BT, d, "token_sum")


# --------------------------------------------------------------------------------------------------
# Invariance: micro-batches and processes give the loss and gradient of one batch
# --------------------------------------------------------------------------------------------------


def _global_batch(B: int = 8, T: int = 6, seed: int = 0):
    """Random log-probs, a policy a few steps away from the sampler, a reference, advantages, and
    completion lengths 1..T that differ between the parts (so token counts are unequal)."""
    g = torch.Generator().manual_seed(seed)
    logps_BT = -torch.rand(B, T, generator=g) * 3
    old_logps_BT = logps_BT + 0.3 * torch.randn(B, T, generator=g)  # ratios well outside [0.8, 1.28]
    ref_logps_BT = logps_BT + 0.2 * torch.randn(B, T, generator=g)
    advantages_B = torch.randn(B, generator=g)
    lengths_B = torch.tensor([6, 1, 2, 5, 3, 3, 6, 1])[:B]
    mask_BT = (torch.arange(T)[None, :] < lengths_B[:, None]).float()
    return logps_BT, old_logps_BT, ref_logps_BT, advantages_B, mask_BT


def _split_loss_and_grad(aggregation: str, processes: int, micro_batches: int):
    """The loss one optimizer step backpropagates and its gradient w.r.t. the per-token log-probs.

    Each process p backpropagates world x sum over its micro-batches of grpo_loss(part, GLOBAL
    denominators); the gradients are then averaged over processes. The effective objective is
    (1 / world) sum_p world sum_m loss_pm = sum over all parts of loss_pm, which is what we sum."""
    logps_BT, old_logps_BT, ref_logps_BT, advantages_B, mask_BT = _global_batch()
    leaf_BT = logps_BT.clone().requires_grad_(True)
    B = leaf_BT.shape[0]
    d = LossDenominators(sequences=B, tokens=float(mask_BT.sum()), max_completion_length=7,
                         micro_batches=micro_batches, processes=processes)
    world = processes
    parts = torch.arange(B).chunk(processes * micro_batches)  # process p holds parts p*M .. p*M + M-1
    total = torch.zeros(())
    for p in range(processes):
        process_loss = sum(
            grpo_loss(leaf_BT[i], old_logps_BT[i], advantages_B[i], mask_BT[i], d, aggregation, clip_low=0.2,
                      clip_high=0.28, ref_logps_BT=ref_logps_BT[i], kl_coef=0.05)[0]
            for i in parts[p * micro_batches:(p + 1) * micro_batches]
        )
        total = total + (world * process_loss) / world  # each process: world x its loss; DDP: mean over world
    total.backward()
    return total.detach(), leaf_BT.grad


@pytest.mark.parametrize("aggregation", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize(("processes", "micro_batches"), [(1, 2), (1, 4), (2, 1), (2, 2), (4, 2)])
def test_micro_batches_and_processes_equal_one_batch(aggregation, processes, micro_batches):
    one_loss, one_grad = _split_loss_and_grad(aggregation, 1, 1)
    loss, grad = _split_loss_and_grad(aggregation, processes, micro_batches)
    _close(loss, one_loss)
    _close(grad, one_grad)
    assert one_grad.abs().sum() > 0


def test_bnpo_depends_on_the_split():
    """bnpo (TRL's) averages each micro-batch's token mean: with parts of unequal token counts it is
    not the token mean of the batch. Global batch lengths [6, 1, 2, 5 | 3, 3, 6, 1]: two halves of 14
    and 13 tokens; the mean of the two halves' means weighs each token of the second half by
    1/26 instead of 1/27. (dapo is the split-invariant token mean.)"""
    one_loss, one_grad = _split_loss_and_grad("bnpo", 1, 1)
    dapo_loss, _ = _split_loss_and_grad("dapo", 1, 1)
    _close(one_loss, dapo_loss)  # one micro-batch, one process: bnpo is the token mean, as dapo
    for processes, micro_batches in ((1, 2), (2, 1), (2, 2)):
        loss, grad = _split_loss_and_grad("bnpo", processes, micro_batches)
        assert abs(float(loss - one_loss)) > 1e-4
        assert (grad - one_grad).abs().max() > 1e-4
