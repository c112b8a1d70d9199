"""The GRPO trainer on tiny models: what trains, which roles run, resume, full mode, the group
layout over processes, and 2 processes equal to 1 (per-completion sampling seeds).

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_grpo.py`.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from align.config import ConfigError, load_recipe
from align.models import load_model_and_tokenizer
from align.shared_base import SharedBase
from align.trainers.grpo import local_prompt_positions, train_grpo
from tests.helpers import crash_after_checkpoint

FAST = [
    "method=grpo", "model=scratch:test", "data.task=arithmetic", "data.num_train=64", "lora.rank=4",
    "train.log_every=1", "train.steps=2", "optimizer.lr=0.01", "optimizer.warmup_steps=0", "optimizer.schedule=constant",
    "eval.enabled=false", "tracking.wandb=false", "train.threads=1", "rollout.max_new_tokens=6",
    "grpo.prompts_per_iteration=4", "grpo.group_size=4", "grpo.minibatch_size=8",
]


def run(tmp_path, name, *overrides):
    return train_grpo(load_recipe(None, FAST + [f"output_dir={tmp_path / name}", *overrides]))


def rows(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]


def test_lora_grpo_trains_only_the_policy_adapter_and_logs_its_figures(tmp_path):
    fresh, _ = load_model_and_tokenizer("scratch:test")
    result = run(tmp_path, "lora", "rollout.kl_coef=0.05", "grpo.epochs=2")
    base: SharedBase = result.model
    assert base.roles == ["policy", "reference"]  # no critic, nothing else in memory
    plain = {n.replace(".base_layer", ""): p for n, p in base.model.named_parameters() if "lora_" not in n}
    assert set(plain) == set(fresh.state_dict())
    for name, value in fresh.state_dict().items():
        assert torch.equal(plain[name], value), f"base weight {name} changed"
    lora_b = [p for n, p in base.model.named_parameters() if "lora_B.policy" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at 0: it trained
    last = rows(result.run_dir)[-1]
    for key in ("reward/score", "reward/std", "zero_variance_fraction", "clipped_low", "clipped_high", "kl", "entropy",
                "response_length", "no_stop_fraction", "time/rollout", "time/scoring", "time/update", "tokens_per_s",
                "peak_memory_bytes", "loss", "grad_norm"):
        assert key in last, key
    assert last["updates"] == 2 * 2  # 16 completions / minibatch 8 = 2 updates, 2 epochs
    summary = json.load(open(os.path.join(result.run_dir, "summary.json")))
    assert summary["method"] == "grpo" and summary["completions"] == 2 * 4 * 4
    assert os.path.exists(os.path.join(result.run_dir, "adapter", "adapter_model.safetensors"))


def test_one_pass_over_one_minibatch_skips_the_old_log_prob_forward(monkeypatch, tmp_path):
    """epochs 1 and one minibatch per generation: every update is on-policy, so the old log-probs
    are the update's own (detached), the ratio is exactly 1 and nothing is clipped."""
    import align.experience as experience

    calls = []
    original = experience.response_logprobs
    monkeypatch.setattr(experience, "response_logprobs", lambda base, role, *a, **k: calls.append(role) or original(base, role, *a, **k))
    result = run(tmp_path, "on_policy", "grpo.minibatch_size=16", "rollout.kl_coef=0")
    assert calls == []  # sample_and_score ran no policy (and no reference) forward
    for row in (r for r in rows(result.run_dir) if "loss" in r):
        assert row["ratio"] == 1.0 and row["clipped_region"] == 0.0 and row["updates"] == 1
        assert row["entropy"] == row["update_entropy"] > 0


def test_full_mode_trains_its_copy_and_keeps_the_base(tmp_path):
    result = run(tmp_path, "full", "mode=full", "optimizer.lr=0.001")
    base: SharedBase = result.model
    fresh, _ = load_model_and_tokenizer("scratch:test")
    policy = base.role_model("policy")
    assert policy is not base.model
    assert any(not torch.equal(p, fresh.state_dict()[n]) for n, p in policy.state_dict().items())
    assert all(torch.equal(p, fresh.state_dict()[n]) for n, p in base.model.state_dict().items())


def _roles_run(monkeypatch, tmp_path, name, *overrides) -> set[str]:
    seen: set[str] = set()
    original = SharedBase.role

    def recording(self, role):
        seen.add(role)
        return original(self, role)

    monkeypatch.setattr(SharedBase, "role", recording)
    run(tmp_path, name, *overrides)
    return seen


def test_kl_coef_zero_runs_no_reference_forward(monkeypatch, tmp_path):
    assert "reference" not in _roles_run(monkeypatch, tmp_path, "no_kl", "rollout.kl_coef=0")
    assert "reference" in _roles_run(monkeypatch, tmp_path, "kl", "rollout.kl_coef=0.1")


def test_resume_continues_the_exact_curve(tmp_path):
    extra = ["train.steps=4", "train.save_every=2", "rollout.kl_coef=0.1"]
    full = run(tmp_path, "a", *extra)
    crash_after_checkpoint(full.run_dir, 2)
    resumed = run(tmp_path, "a", *extra, "resume=true")
    assert resumed.run_dir == full.run_dir
    again = run(tmp_path, "b", *extra)  # an unbroken run in another folder
    curve = [(r["step"], r["loss"], r["reward/score"]) for r in rows(again.run_dir) if "loss" in r]
    assert [(r["step"], r["loss"], r["reward/score"]) for r in rows(resumed.run_dir) if "loss" in r] == curve


@pytest.mark.parametrize("estimator,aggregation", [("rloo", "dapo"), ("dr_grpo", "dr_grpo"), ("grpo", "bnpo")])
def test_every_estimator_and_aggregation_trains(tmp_path, estimator, aggregation):
    result = run(tmp_path, f"{estimator}-{aggregation}", f"grpo.advantage={estimator}", f"grpo.loss_aggregation={aggregation}",
                 "grpo.clip_high=0.28", "grpo.batch_std=true", "grpo.drop_zero_variance_groups=true", "train.steps=1")
    last = rows(result.run_dir)[-1]
    assert 0.0 <= last["zero_variance_fraction"] <= 1.0 and last["updates"] <= 2


def test_recipes_validate_and_bad_layouts_are_config_errors():
    for recipe in ("grpo_lora", "grpo_full", "grpo_lora_rm", "grpo_qwen_lora"):
        assert load_recipe(f"recipes/{recipe}.yaml").method == "grpo"
    for bad, message in (("grpo.group_size=1", "at least 2"), ("grpo.minibatch_size=6", "multiple of grpo.group_size"),
                         ("grpo.minibatch_size=32", "must divide prompts_per_iteration x group_size"),
                         ("grpo.clip_low=1.5", "clip_low must be in")):
        with pytest.raises(ConfigError, match=message):
            load_recipe(None, FAST + [bad])


def test_each_process_holds_its_share_of_every_minibatch():
    # 8 prompts, 4 per minibatch: minibatch 0 = prompts 0-3, minibatch 1 = prompts 4-7
    assert local_prompt_positions(8, 4, 0, 1) == list(range(8))
    assert local_prompt_positions(8, 4, 0, 2) == [0, 1, 4, 5]
    assert local_prompt_positions(8, 4, 1, 2) == [2, 3, 6, 7]
