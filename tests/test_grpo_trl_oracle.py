"""Oracle: our GRPO-family loss (`align.losses.grpo`) equals TRL 1.16 `GRPOTrainer._compute_loss`.

A real `trl.GRPOTrainer` (GRPOConfig, a trivial reward function, a tiny dataset, CPU,
report_to="none") is built around the `scratch:test` model. Its `_get_per_token_logps_and_entropies`
is replaced by one that checks it was given the batch's prompt + completion ids and masks and
returns a leaf tensor of per-token log-probs; the same values, as another leaf, go into our
`grpo_loss`. Then TRL's `_compute_loss(model, inputs)` (train mode, so its gradient-accumulation
normalisers apply) and ours must give the same loss, the same gradient w.r.t. the log-probs, and
the same logged clip fractions and KL, to 1e-5, for:
- loss_type grpo, dr_grpo, dapo, bnpo;
- KL off (beta = 0, no reference model), k3 (TRL `use_bias_correction_kl=False`, the GRPO paper),
  k3 weighted by the ratio (TRL's default `use_bias_correction_kl=True` = our `kl_importance_weighted`);
- clip-higher (epsilon 0.2, epsilon_high 0.28), with ratios inside and outside the band;
- one pass (TRL's path without `old_per_token_logps`: old = current, detached) and several
  (old log-probs from the sampler, ratios away from 1);
- gradient accumulation 1 and 2, and a generation batch spanning two optimizer steps
  (steps_per_generation 4 > gradient_accumulation_steps 2).
Mapping (one process; our trainer computes the denominators, TRL's config implies them):
  beta -> kl_coef, epsilon / epsilon_high -> clip_low / clip_high, max_completion_length ->
  LossDenominators.max_completion_length, sequences = micro-batch size x accumulation steps,
  micro_batches = accumulation steps, tokens = num_items_in_batch x accumulation steps /
  steps_per_generation (TRL's dapo normaliser: `num_items_in_batch` counts the tokens of the whole
  generation batch, of all processes).
The advantage code of TRL's `_generate_and_score_completions` (GRPO: scale_rewards group / batch /
none) and of `RLOOTrainer` sits inside methods that generate; its lines are reproduced verbatim
below, cited by file and line, and compared with `group_advantages`.
Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_grpo_trl_oracle.py` (a few seconds).
"""

from __future__ import annotations

import math

import pytest
import torch

from align.compat import checkpointing_args
from align.losses.grpo import LossDenominators, group_advantages, group_stats, grpo_loss
from align.models import load_model_and_tokenizer

MAX_COMPLETION_LENGTH = 8  # > the batch's T = 5: dr_grpo's constant is the config's, not the padded width
G = 2  # num_generations
CLIP_LOW, CLIP_HIGH = 0.2, 0.28
BETA = 0.04

# One micro-batch: 2 prompts x G = 2 completions. Prompts left-padded, completions right-padded.
PROMPT_IDS = torch.tensor([[0, 5, 6], [0, 5, 6], [7, 8, 9], [7, 8, 9]])
PROMPT_MASK = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]])
COMPLETION_MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]])
COMPLETION_IDS = torch.tensor([[11, 12, 13, 14, 15], [16, 17, 18, 0, 0], [19, 20, 21, 22, 0], [23, 0, 0, 0, 0]])
REWARDS = torch.tensor([1.0, 0.0, 0.9, 0.3])  # advantages +, -, +, -
# Importance ratios pi / pi_old for "several passes" (padding: 1). With A > 0, 1.25 and 1.22 lie in
# the clip-higher band (1.2, 1.28]: unclipped here, clipped by a symmetric 0.2; 1.35 and 1.3 are
# clipped high. With A < 0, 0.7 and 0.75 are clipped low; 1.35 is not clipped (upper clip, A < 0).
RATIOS = torch.tensor([
    [1.35, 1.25, 1.0, 0.7, 1.1],
    [0.7, 1.35, 0.9, 1.0, 1.0],
    [1.22, 1.3, 0.95, 1.05, 1.0],
    [0.75, 1.0, 1.0, 1.0, 1.0],
])
OTHER_MICRO_BATCH_TOKENS = 9  # completion tokens of each other micro-batch of the generation batch


def _batch():
    g = torch.Generator().manual_seed(0)
    logps_BT = -torch.rand(4, 5, generator=g) * 2 - 0.1
    ref_logps_BT = logps_BT + 0.3 * torch.randn(4, 5, generator=g)
    old_logps_BT = logps_BT - RATIOS.log()
    advantages_B = group_advantages(REWARDS, G, "grpo")
    return logps_BT, old_logps_BT, ref_logps_BT, advantages_B


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return load_model_and_tokenizer("scratch:test")


def _trainer(tmp_path, model_and_tokenizer, **config):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer = model_and_tokenizer
    args = GRPOConfig(
        output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True, save_strategy="no", logging_steps=1,
        per_device_train_batch_size=4, num_generations=G, max_completion_length=MAX_COMPLETION_LENGTH,
        **checkpointing_args(False), epsilon=CLIP_LOW, epsilon_high=CLIP_HIGH,
        bf16=False,  # compare in float32
        **config,
    )
    return GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                       train_dataset=Dataset.from_list([{"prompt": "Q: 1+1=? A:"}] * 8), processing_class=tokenizer)


def _trl_loss_and_grad(trainer, logps_BT, inputs, accumulation_steps):
    """TRL's `_compute_loss` on `inputs`, the model forward replaced by `logps_BT` (a leaf)."""
    leaf_BT = logps_BT.clone().requires_grad_(True)

    def per_token_logps(model, input_ids, attention_mask, logits_to_keep, **kwargs):
        assert torch.equal(input_ids, torch.cat([PROMPT_IDS, COMPLETION_IDS], 1))
        assert torch.equal(attention_mask, torch.cat([PROMPT_MASK, COMPLETION_MASK], 1))
        assert logits_to_keep == COMPLETION_IDS.shape[1]
        return leaf_BT, torch.zeros_like(logps_BT), None  # log-probs, entropies, MoE aux loss

    trainer._get_per_token_logps_and_entropies = per_token_logps
    trainer.model.train()  # TRL's normalisers and metrics read the mode
    trainer.current_gradient_accumulation_steps = accumulation_steps  # set by Trainer's loop
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), leaf_BT.grad


def _check_against_trl(tmp_path, model_and_tokenizer, loss_type, kl, passes, accumulation_steps=2,
                       steps_per_generation=None):
    steps_per_generation = steps_per_generation or accumulation_steps
    beta = 0.0 if kl == "off" else BETA
    trainer = _trainer(tmp_path, model_and_tokenizer, loss_type=loss_type, beta=beta,
                       use_bias_correction_kl=kl == "k3_weighted", gradient_accumulation_steps=accumulation_steps,
                       steps_per_generation=steps_per_generation)
    assert (trainer.epsilon_low, trainer.epsilon_high, trainer.beta) == (CLIP_LOW, CLIP_HIGH, beta)
    assert (trainer.ref_model is None) == (beta == 0.0)
    logps_BT, old_logps_BT, ref_logps_BT, advantages_B = _batch()
    if passes == "one":
        old_logps_BT = logps_BT  # TRL: no old_per_token_logps in the batch, it uses per_token_logps.detach()
    tokens = COMPLETION_MASK.sum() + (steps_per_generation - 1) * OTHER_MICRO_BATCH_TOKENS
    inputs = {
        "prompt_ids": PROMPT_IDS, "prompt_mask": PROMPT_MASK, "completion_ids": COMPLETION_IDS,
        "completion_mask": COMPLETION_MASK, "advantages": advantages_B, "num_items_in_batch": tokens,
    }
    if passes == "several":
        inputs["old_per_token_logps"] = old_logps_BT
    if beta:
        inputs["ref_per_token_logps"] = ref_logps_BT
    trl_loss, trl_grad = _trl_loss_and_grad(trainer, logps_BT, inputs, accumulation_steps)

    B = COMPLETION_MASK.shape[0]
    denominators = LossDenominators(
        sequences=B * accumulation_steps, tokens=float(tokens) * accumulation_steps / steps_per_generation,
        max_completion_length=MAX_COMPLETION_LENGTH, micro_batches=accumulation_steps, processes=1,
    )
    leaf_BT = logps_BT.clone().requires_grad_(True)
    loss, stats = grpo_loss(leaf_BT, old_logps_BT.detach(), advantages_B, COMPLETION_MASK, denominators, loss_type,
                            clip_low=CLIP_LOW, clip_high=CLIP_HIGH, ref_logps_BT=ref_logps_BT if beta else None,
                            kl_coef=beta, kl_importance_weighted=kl == "k3_weighted")
    loss.backward()

    assert float(loss.detach()) == pytest.approx(float(trl_loss), abs=1e-5)
    torch.testing.assert_close(leaf_BT.grad, trl_grad, atol=1e-5, rtol=0)
    assert trl_grad.abs().sum() > 0
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    for ours, theirs in (("clipped_low", "clip_ratio/low_mean"), ("clipped_high", "clip_ratio/high_mean"),
                         ("clipped_region", "clip_ratio/region_mean")):
        assert float(stats[ours]) == pytest.approx(metrics[theirs], abs=1e-6), ours
    if beta:
        assert float(stats["kl"]) == pytest.approx(metrics["kl"], abs=1e-6)
    return stats


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
@pytest.mark.parametrize("kl", ["off", "k3", "k3_weighted"])
@pytest.mark.parametrize("passes", ["one", "several"])
def test_loss_and_gradient_equal_trl(tmp_path, model_and_tokenizer, loss_type, kl, passes):
    stats = _check_against_trl(tmp_path, model_and_tokenizer, loss_type, kl, passes)
    if passes == "several":  # RATIOS: clipped high 1.35, 1.3 (A > 0); clipped low 0.7, 0.75 (A < 0); of 13 tokens
        assert float(stats["clipped_high"]) == pytest.approx(2 / 13)
        assert float(stats["clipped_low"]) == pytest.approx(2 / 13)
    else:
        assert float(stats["clipped_region"]) == 0.0


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
@pytest.mark.parametrize(("accumulation_steps", "steps_per_generation"), [(1, 1), (2, 4)])
def test_accumulation_and_generation_batch_normalisers_equal_trl(tmp_path, model_and_tokenizer, loss_type,
                                                                 accumulation_steps, steps_per_generation):
    _check_against_trl(tmp_path, model_and_tokenizer, loss_type, "k3", "several", accumulation_steps,
                       steps_per_generation)


# --------------------------------------------------------------------------------------------------
# Advantages: TRL's lines, verbatim
# --------------------------------------------------------------------------------------------------


def _trl_grpo_advantages(rewards, num_generations, scale_rewards):
    """trl 1.16 trl/trainer/grpo_trainer.py lines 2765-2788 (`_generate_and_score_completions`,
    multi_objective_aggregation="sum_then_normalize"), verbatim but for `self.` and the error branch."""
    from trl.trainer.utils import nanstd

    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    if scale_rewards in ["group", "none"]:
        # If self.scale_rewards = "none", we'll only use std_rewards to check for zero std for logging
        if num_generations > 1:
            std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
            std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
        else:  # doesn't occur during training, but could occur in eval when num_generations_eval=1
            std_rewards = torch.zeros_like(rewards)
    elif scale_rewards == "batch":
        # Compute global std
        if rewards.numel() > 1:
            std_rewards = nanstd(rewards).expand_as(rewards)
        else:  # doesn't occur during training, but could occur in eval when num_generations_eval=batch_size=1
            std_rewards = torch.zeros_like(rewards)

    advantages = rewards - mean_grouped_rewards
    if scale_rewards != "none":
        advantages = advantages / (std_rewards + 1e-4)
    is_std_zero = torch.isclose(std_rewards, torch.zeros_like(std_rewards))  # for logging
    return advantages, is_std_zero


def _trl_rloo_advantages(rewards, num_generations):
    """trl 1.16 trl/trainer/rloo_trainer.py lines 1675-1690 (`_generate_and_score_completions`,
    normalize_advantages=False), verbatim but for the num_generations == 1 branch."""
    grouped_rewards = rewards.view(-1, num_generations)
    scorable_counts = (~torch.isnan(grouped_rewards)).sum(dim=1, keepdim=True)  # (num_prompts, 1)
    grouped_sum = torch.nansum(grouped_rewards, dim=1, keepdim=True)  # (num_prompts, 1)
    baselines = (grouped_sum - grouped_rewards) / (scorable_counts - 1)  # (num_prompts, num_generations)
    baselines = baselines.view(-1)  # Flatten back to match rewards shape
    return rewards - baselines


REWARD_CASES = [
    (torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]), 4),  # one group with signal, one without
    (torch.randn(12, generator=torch.Generator().manual_seed(3)), 3),
    (torch.tensor([0.5, 0.5, 0.2, 0.9, 0.1, 0.1]), 2),
]


@pytest.mark.parametrize(("rewards_B", "group_size"), REWARD_CASES)
@pytest.mark.parametrize(("estimator", "batch_std", "scale_rewards"),
                         [("grpo", False, "group"), ("grpo", True, "batch"), ("dr_grpo", False, "none")])
def test_group_advantages_equal_trl_grpo(rewards_B, group_size, estimator, batch_std, scale_rewards):
    theirs, is_std_zero = _trl_grpo_advantages(rewards_B, group_size, scale_rewards)
    torch.testing.assert_close(group_advantages(rewards_B, group_size, estimator, batch_std), theirs, atol=1e-6, rtol=0)
    if scale_rewards != "batch":  # per-group std: TRL's "frac_reward_zero_std" groups are ours
        assert group_stats(rewards_B, group_size).tolist() == is_std_zero.view(-1, group_size)[:, 0].tolist()


@pytest.mark.parametrize(("rewards_B", "group_size"), REWARD_CASES)
def test_rloo_advantages_equal_trl_rloo(rewards_B, group_size):
    ours = group_advantages(rewards_B, group_size, "rloo")
    torch.testing.assert_close(ours, _trl_rloo_advantages(rewards_B, group_size), atol=1e-6, rtol=0)
    assert not math.isnan(float(ours.sum()))
