"""PPO pieces against hand computations (plain Python floats) and properties.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_losses_policy.py`.
"""

from __future__ import annotations

import math

import pytest
import torch

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
from align.tensors import entropy_from_logits, last_token_index

NAN, INF = float("nan"), float("inf")


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def close(actual: torch.Tensor, expected, abs: float = 1e-12) -> None:
    expected_shape = torch.as_tensor(expected).shape
    assert expected_shape == () or actual.shape == expected_shape, (actual.shape, expected_shape)
    assert torch.allclose(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=abs, rtol=0), (
        actual,
        expected,
    )


# --------------------------------------------------------------------------------------------------
# Masked statistics
# --------------------------------------------------------------------------------------------------

# unmasked entries: 1, 2, 4; the masked ones hold garbage that must never leak
X_BT = t([1.0, 2.0, NAN], [4.0, INF, -INF])
MASK_BT = t([1, 1, 0], [1, 0, 0])


def test_masked_mean_hand_computed():
    """all: (1 + 2 + 4) / 3 = 7/3; per row: [(1 + 2) / 2, 4 / 1] = [1.5, 4]."""
    close(masked_mean(X_BT, MASK_BT), 7 / 3)
    close(masked_mean(X_BT, MASK_BT, dim=1), [1.5, 4.0])
    close(masked_mean(X_BT, MASK_BT.bool(), dim=1), [1.5, 4.0])
    close(masked_mean(X_BT, torch.zeros_like(MASK_BT)), 0.0)  # all masked -> 0, not NaN


def test_masked_var_hand_computed():
    """mean 7/3; deviations -4/3, -1/3, 5/3; squares sum (16 + 1 + 25) / 9 = 42/9.
    biased = 42/9 / 3 = 14/9; unbiased = 42/9 / 2 = 7/3."""
    close(masked_var(X_BT, MASK_BT, unbiased=False), 14 / 9)
    close(masked_var(X_BT, MASK_BT), 7 / 3)
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(X_BT, t([1, 0, 0], [0, 0, 0]))


def test_masked_whiten_hand_computed():
    """(x - 7/3) / sqrt(7/3 + 1e-8) on unmasked entries, 0 on masked; shift_mean=False adds 7/3 back."""
    s = math.sqrt(7 / 3 + 1e-8)
    expected = [[(1 - 7 / 3) / s, (2 - 7 / 3) / s, 0.0], [(4 - 7 / 3) / s, 0.0, 0.0]]
    close(masked_whiten(X_BT, MASK_BT), expected)
    expected_no_shift = [[(1 - 7 / 3) / s + 7 / 3, (2 - 7 / 3) / s + 7 / 3, 0.0], [(4 - 7 / 3) / s + 7 / 3, 0, 0]]
    close(masked_whiten(X_BT, MASK_BT, shift_mean=False), expected_no_shift)


def test_masked_whiten_gives_zero_mean_unit_variance():
    g = torch.Generator().manual_seed(0)
    x = 3 + 5 * torch.randn(4, 7, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 7, generator=g) < 0.6
    w = masked_whiten(x, mask)
    close(masked_mean(w, mask), 0.0, abs=1e-9)
    close(masked_var(w, mask), 1.0, abs=1e-6)
    assert (w[~mask] == 0).all()


# --------------------------------------------------------------------------------------------------
# KL estimators
# --------------------------------------------------------------------------------------------------


def test_kl_estimators_hand_computed():
    """logp = [-1, -2], ref = [-1.5, -1]; log r = ref - logp = [-0.5, 1].
    k1 = -log r = [0.5, -1]; k2 = (log r)^2 / 2 = [0.125, 0.5];
    k3 = (r - 1) - log r = [e^-0.5 - 1 + 0.5, e - 1 - 1] = [e^-0.5 - 0.5, e - 2]."""
    logp, ref = t(-1.0, -2.0), t(-1.5, -1.0)
    close(kl_k1(logp, ref), [0.5, -1.0])
    close(kl_k2(logp, ref), [0.125, 0.5])
    close(kl_k3(logp, ref), [math.exp(-0.5) - 0.5, math.e - 2])


@pytest.mark.parametrize("name", sorted(KL_ESTIMATORS))
def test_identical_logps_give_zero_kl(name):
    logp = -torch.rand(3, 5, dtype=torch.float64)
    close(get_kl_estimator(name)(logp, logp.clone()), torch.zeros(3, 5))


def test_k2_k3_nonnegative():
    g = torch.Generator().manual_seed(1)
    logp, ref = -5 * torch.rand(2, 1000, generator=g), -5 * torch.rand(2, 1000, generator=g)
    assert (kl_k3(logp, ref) >= 0).all() and (kl_k2(logp, ref) >= 0).all()
    assert (kl_k1(logp, ref) < 0).any()  # k1 alone can go negative


def test_k1_and_k3_are_unbiased_for_kl():
    """Exact expectation under x ~ p over a 3-symbol alphabet:
    KL(p || q) = sum_x p log(p / q); E_p[k1] = KL; E_p[k3] = sum p (q/p - 1) + KL = (1 - 1) + KL."""
    p, q = [0.5, 0.3, 0.2], [0.2, 0.5, 0.3]
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    logp, logq = torch.tensor(p, dtype=torch.float64).log(), torch.tensor(q, dtype=torch.float64).log()
    weights = torch.tensor(p, dtype=torch.float64)
    close((weights * kl_k1(logp, logq)).sum(), kl)
    close((weights * kl_k3(logp, logq)).sum(), kl)


def test_kl_registry_error_lists_names():
    with pytest.raises(ValueError, match=r"valid names: \['k1', 'k2', 'k3'\]"):
        get_kl_estimator("k4")


# --------------------------------------------------------------------------------------------------
# Per-token rewards
# --------------------------------------------------------------------------------------------------


def test_per_token_rewards_hand_computed():
    """kl_coef 0.1, k1. Row 0 (3 tokens): kl = [-1 + 1.5, -2 + 1, -3 + 3] = [0.5, -1, 0]
    -> rewards [-0.05, 0.1, 0 + score 1.0]. Row 1 (2 tokens, 1 pad holding NaN):
    kl = [-1 + 2, -1 + 1, pad 0] = [1, 0, 0] -> rewards [-0.1, 0 + score 2.0, 0]."""
    logp = t([-1.0, -2.0, -3.0], [-1.0, -1.0, NAN])
    ref = t([-1.5, -1.0, -3.0], [-2.0, -1.0, NAN])
    mask = t([1, 1, 1], [1, 1, 0])
    rewards, kl = per_token_rewards(t(1.0, 2.0), logp, ref, mask, kl_coef=0.1, estimator="k1")
    close(kl, [[0.5, -1.0, 0.0], [1.0, 0.0, 0.0]])
    close(rewards, [[-0.05, 0.1, 1.0], [-0.1, 2.0, 0.0]])


def test_per_token_rewards_k3_callable_and_left_zeros():
    """k3 on one row whose mask starts late (prompt positions masked): mask [0, 1, 1].
    log r = ref - logp = [., -0.5, 1]; k3 = [0, e^-0.5 - 0.5, e - 2];
    rewards = [0, -0.2 k3_1, -0.2 k3_2 + 3]."""
    logp, ref, mask = t([9.0, -1.0, -2.0]), t([-9.0, -1.5, -1.0]), t([0, 1, 1])
    k3_1, k3_2 = math.exp(-0.5) - 0.5, math.e - 2
    for estimator in ("k3", kl_k3):
        rewards, kl = per_token_rewards(t(3.0), logp, ref, mask, kl_coef=0.2, estimator=estimator)
        close(kl, [[0.0, k3_1, k3_2]])
        close(rewards, [[0.0, -0.2 * k3_1, -0.2 * k3_2 + 3.0]])


def test_last_token_index_and_empty_row_error():
    close(last_token_index(t([1, 1, 0, 0], [0, 1, 1, 1], [1, 0, 1, 0])).double(), [1.0, 3.0, 2.0])
    with pytest.raises(ValueError, match="at least one response token"):
        per_token_rewards(t(1.0), t([-1.0]), t([-1.0]), t([0]), 0.1)


# --------------------------------------------------------------------------------------------------
# GAE
# --------------------------------------------------------------------------------------------------


def test_gae_hand_computed():
    """rewards [1, 0, 2], values [0.5, 1, 1.5], gamma 0.9, lam 0.8 (gamma lam = 0.72):
    t=2: delta = 2 + 0.9 * 0 - 1.5 = 0.5            A2 = 0.5
    t=1: delta = 0 + 0.9 * 1.5 - 1 = 0.35           A1 = 0.35 + 0.72 * 0.5 = 0.71
    t=0: delta = 1 + 0.9 * 1 - 0.5 = 1.4            A0 = 1.4 + 0.72 * 0.71 = 1.9112
    returns = A + V = [2.4112, 1.71, 2.0]."""
    adv, ret = gae_advantages(t([1.0, 0.0, 2.0]), t([0.5, 1.0, 1.5]), t([1, 1, 1]), gamma=0.9, lam=0.8)
    close(adv, [[1.9112, 0.71, 0.5]])
    close(ret, [[2.4112, 1.71, 2.0]])


def test_gae_lambda_one_gamma_one_is_reward_to_go_minus_value():
    g = torch.Generator().manual_seed(2)
    rewards, values = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(3, 6, generator=g).double()
    mask = torch.ones(3, 6)
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    reward_to_go = rewards.flip(1).cumsum(1).flip(1)
    close(adv, reward_to_go - values, abs=1e-10)
    close(ret, reward_to_go, abs=1e-10)


def test_gae_lambda_zero_is_one_step_td():
    rewards, values = t([1.0, 2.0, 3.0]), t([0.5, 0.25, 4.0])
    adv, _ = gae_advantages(rewards, values, t([1, 1, 1]), gamma=0.5, lam=0.0)
    # delta_t = r_t + 0.5 V_{t+1} - V_t = [1 + 0.125 - 0.5, 2 + 2 - 0.25, 3 + 0 - 4]
    close(adv, [[0.625, 3.75, -1.0]])


def test_gae_padding_is_ignored_wherever_it_is():
    """Appending padding (holding garbage), or inserting it between tokens, changes nothing on the
    real tokens; padded positions get advantage 0 and return 0."""
    rewards, values, mask = t([1.0, 0.0, 2.0]), t([0.5, 1.0, 1.5]), t([1, 1, 1])
    adv, ret = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)

    padded_adv, padded_ret = gae_advantages(
        t([1.0, 0.0, 2.0, 7.0, NAN]), t([0.5, 1.0, 1.5, -3.0, INF]), t([1, 1, 1, 0, 0]), gamma=0.9, lam=0.8
    )
    close(padded_adv[:, :3], adv)
    close(padded_ret[:, :3], ret)
    close(padded_adv[:, 3:], [[0.0, 0.0]])
    close(padded_ret[:, 3:], [[0.0, 0.0]])

    holed_adv, _ = gae_advantages(
        t([9.0, 1.0, 5.0, 0.0, 2.0]), t([9.0, 0.5, 5.0, 1.0, 1.5]), t([0, 1, 0, 1, 1]), gamma=0.9, lam=0.8
    )
    close(holed_adv[:, [1, 3, 4]], adv)
    close(holed_adv[:, [0, 2]], [[0.0, 0.0]])


def test_gae_returns_no_gradient():
    values = t([0.5, 1.0]).requires_grad_()
    adv, ret = gae_advantages(t([1.0, 1.0]), values, t([1, 1]), 1.0, 1.0)
    assert not adv.requires_grad and not ret.requires_grad


# --------------------------------------------------------------------------------------------------
# PPO policy loss
# --------------------------------------------------------------------------------------------------


def test_ppo_policy_loss_hand_computed():
    """eps 0.2; ratios [1.5, 0.5, 1.1] on 3 tokens, a 4th padded one holding -inf/NaN.
    t0: A = 1,  -A r = -1.5, -A clip(r) = -1.2 -> max -1.2 (clipped term active)
    t1: A = 1,  -A r = -0.5, -A clip(r) = -0.8 -> max -0.5
    t2: A = -2, -A r =  2.2, -A clip(r) =  2.2 -> max  2.2 (a tie is not counted as clipped)
    loss = (-1.2 - 0.5 + 2.2) / 3 = 1/6; clipfrac = 1/3; ratio = (1.5 + 0.5 + 1.1) / 3;
    approx_kl = 0.5 (ln^2 1.5 + ln^2 0.5 + ln^2 1.1) / 3."""
    old_logp = t([-1.0, -1.0, -1.0, -INF])
    logp = (old_logp + t([math.log(1.5), math.log(0.5), math.log(1.1), NAN])).requires_grad_()
    advantages, mask = t([1.0, 1.0, -2.0, 5.0]), t([1, 1, 1, 0])
    loss, stats = ppo_policy_loss(logp, old_logp, advantages, mask, clip_range=0.2)
    close(loss, 1 / 6)
    close(stats["clipfrac"], 1 / 3)
    close(stats["ratio"], 3.1 / 3)
    close(stats["approx_kl"], 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.1) ** 2) / 3)
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())
    loss.backward()
    # d/dlogp: t0 clipped -> 0; t1 -A r / 3 = -0.5 / 3; t2 -A r / 3 = 2.2 / 3; padding 0 (not NaN)
    close(logp.grad, [[0.0, -0.5 / 3, 2.2 / 3, 0.0]])


def test_ppo_policy_loss_zero_advantage_is_zero():
    g = torch.Generator().manual_seed(3)
    logp = torch.randn(2, 5, generator=g, dtype=torch.float64).requires_grad_()
    old = torch.randn(2, 5, generator=g, dtype=torch.float64)
    loss, _ = ppo_policy_loss(logp, old, torch.zeros(2, 5, dtype=torch.float64), torch.ones(2, 5), 0.2)
    loss.backward()
    assert loss.item() == 0.0 and (logp.grad == 0).all()


def test_ppo_policy_loss_on_policy_is_the_policy_gradient():
    """At ratio 1 (first minibatch) nothing is clipped: loss = -mean(A), d loss / d logp_t = -A_t / N."""
    logp = t([-1.0, -2.0, -0.5]).requires_grad_()
    advantages = t([0.3, -1.0, 2.0])
    loss, stats = ppo_policy_loss(logp, logp.detach().clone(), advantages, t([1, 1, 1]), 0.2)
    loss.backward()
    close(loss, -(0.3 - 1.0 + 2.0) / 3)
    close(logp.grad, -advantages / 3)
    close(stats["clipfrac"], 0.0)
    close(stats["approx_kl"], 0.0)


def test_ppo_policy_loss_padding_appended_changes_nothing():
    logp, old, adv = t([-1.0, -2.0]), t([-1.2, -1.5]), t([1.0, -1.0])
    loss, stats = ppo_policy_loss(logp, old, adv, t([1, 1]), 0.2)
    padded_loss, padded_stats = ppo_policy_loss(
        t([-1.0, -2.0, 50.0]), t([-1.2, -1.5, -50.0]), t([1.0, -1.0, 9.0]), t([1, 1, 0]), 0.2
    )
    close(padded_loss, loss.item())
    for name in stats:
        close(padded_stats[name], stats[name].item())


# --------------------------------------------------------------------------------------------------
# Value loss and explained variance
# --------------------------------------------------------------------------------------------------


def test_ppo_value_loss_hand_computed():
    """eps 0.2. values [1, 2, 0], old [0.5, 2.1, 0], returns [2, 1, 0.5]:
    t0: (v - R)^2 = 1; v_clip = 0.5 + clip(0.5) = 0.7, (0.7 - 2)^2 = 1.69 -> 1.69 (clipped active)
    t1: (v - R)^2 = 1; v_clip = 2.1 + clip(-0.1) = 2.0, (2.0 - 1)^2 = 1 -> 1 (tie: not clipped)
    t2: (v - R)^2 = 0.25; v_clip = 0, 0.25 -> 0.25
    loss = 0.5 (1.69 + 1 + 0.25) / 3 = 0.49; value_clipfrac = 1/3; unclipped: 0.5 * 2.25 / 3 = 0.375.
    Padded 4th token holds garbage."""
    values = t([1.0, 2.0, 0.0, NAN])
    old_values, returns, mask = t([0.5, 2.1, 0.0, INF]), t([2.0, 1.0, 0.5, -INF]), t([1, 1, 1, 0])
    loss, stats = ppo_value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    close(loss, 0.49)
    close(stats["value_clipfrac"], 1 / 3)
    close(stats["explained_variance"], -6 / 7)  # see test_explained_variance_hand_computed
    loss, stats = ppo_value_loss(values, old_values, returns, mask, clip_range_value=None)
    close(loss, 0.375)
    close(stats["value_clipfrac"], 0.0)


def test_ppo_value_loss_gradient_and_perfect_values():
    values = t([1.0, 3.0]).requires_grad_()
    loss, _ = ppo_value_loss(values, values.detach().clone(), t([2.0, 3.0]), t([1, 1]), 0.2)
    loss.backward()
    close(values.grad, [[(1.0 - 2.0) / 2, 0.0]])  # d/dv 0.5 mean (v - R)^2 = (v - R) / N
    loss, stats = ppo_value_loss(t([2.0, 3.0]), t([2.0, 3.0]), t([2.0, 3.0]), t([1, 1]), 0.2)
    close(loss, 0.0)
    close(stats["explained_variance"], 1.0)


def test_explained_variance_hand_computed():
    """R = [2, 1, 0.5], V = [1, 2, 0], residual R - V = [1, -1, 0.5] (biased variances):
    Var[R]: mean 7/6, deviations 5/6, -1/6, -4/6 -> (25 + 1 + 16) / 36 / 3 = 7/18
    Var[R - V]: mean 1/6, deviations 5/6, -7/6, 2/6 -> (25 + 49 + 4) / 36 / 3 = 13/18
    EV = 1 - (13/18) / (7/18) = -6/7. Constant returns -> NaN."""
    close(explained_variance(t([1.0, 2.0, 0.0]), t([2.0, 1.0, 0.5]), t([1, 1, 1])), -6 / 7)
    assert torch.isnan(explained_variance(t([1.0, 2.0]), t([3.0, 3.0]), t([1, 1])))


# --------------------------------------------------------------------------------------------------
# Entropy
# --------------------------------------------------------------------------------------------------


def test_entropy_hand_computed():
    """logits [0, ln 3] -> p = [1/4, 3/4]; H = -(1/4 ln 1/4 + 3/4 ln 3/4) = ln 4 - (3/4) ln 3.
    Uniform over 5 -> ln 5. [0, 0, -inf] -> ln 2 (0 log 0 = 0), with finite gradients."""
    logits = torch.tensor([[[0.0, math.log(3), -INF, -INF, -INF], [0.0] * 5, [0.0, 0.0, -INF, -INF, -INF]]])
    logits.requires_grad_()
    entropy = entropy_from_logits(logits)
    assert entropy.shape == (1, 3) and entropy.dtype == torch.float32
    close(entropy, [[math.log(4) - 0.75 * math.log(3), math.log(5), math.log(2)]], abs=1e-6)
    entropy.sum().backward()
    assert torch.isfinite(logits.grad).all()


# --------------------------------------------------------------------------------------------------
# KL controllers
# --------------------------------------------------------------------------------------------------


def test_adaptive_kl_controller_hand_computed():
    """init 0.2, target 6, horizon 10000.
    update(kl 9, n 256):  e = clip(9/6 - 1 = 0.5) = 0.2  -> 0.2 (1 + 0.2 * 256 / 10000) = 0.2 * 1.00512
    update(kl 5.7, n 512): e = 5.7/6 - 1 = -0.05         -> x (1 - 0.05 * 512 / 10000) = x * 0.99744"""
    controller = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    assert controller.update(9.0, 256) == pytest.approx(0.2 * 1.00512, abs=1e-15)
    assert controller.update(torch.tensor(5.7), 512) == pytest.approx(0.2 * 1.00512 * 0.99744, abs=1e-9)
    assert controller.value == pytest.approx(0.2 * 1.00512 * 0.99744, abs=1e-9)


def test_kl_controllers_resume_from_state_dict():
    unbroken = AdaptiveKLController(0.1, target=1.0, horizon=100)
    for kl in (3.0, 0.2, 1.1):
        unbroken.update(kl, 8)
    resumed = AdaptiveKLController(0.1, target=1.0, horizon=100)
    resumed.load_state_dict(unbroken.state_dict())
    assert resumed.value == unbroken.value
    assert resumed.update(0.5, 8) == unbroken.update(0.5, 8)

    fixed = FixedKLController(0.05)
    assert fixed.update(100.0, 64) == 0.05 and fixed.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.05
