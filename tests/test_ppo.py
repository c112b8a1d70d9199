"""PPO trainer on a tiny random model (`scratch:test`): what trains, what must not, masks, rewards,
full mode and exact resume.

Each run is 1-4 PPO iterations of 8 rollouts; together they take well under a minute on one thread.
Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_ppo.py`.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

from align.config import load_recipe
from align.models import load_model_and_tokenizer
from align.shared_base import SharedBase
from align.trainers.ppo import train_ppo
from align.data.prompts import parse_answer
from align.experience import RolloutRewards, sample_and_score
from align.trainers.ppo import ppo_experience
from reward_models.base import parse_reward_spec
from tests.helpers import crash_after_checkpoint

FAST = [
    "method=ppo", "model=scratch:test", "data.task=arithmetic", "data.num_train=64", "lora.rank=4",
    "train.log_every=1", "train.steps=2", "optimizer.lr=0.01", "optimizer.warmup_steps=0", "optimizer.schedule=constant",
    "eval.enabled=false", "tracking.wandb=false", "ppo.rollout_batch_size=8", "ppo.minibatch_size=4",
    "rollout.max_new_tokens=6", "ppo.ppo_epochs=2", "rollout.kl_coef=0.1",
]


def run(tmp_path, name, *overrides):
    return train_ppo(load_recipe(None, FAST + [f"output_dir={tmp_path / name}", *overrides]))


def rows(run_dir):
    return [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]


def curve(run_dir, key):
    return [r[key] for r in rows(run_dir) if key in r]


def plain_base_weights(base: SharedBase) -> dict[str, torch.Tensor]:
    """The frozen base's weights under their plain transformers names (LoRA wrappers removed)."""
    return {n.replace(".base_layer", ""): p for n, p in base.model.named_parameters() if "lora_" not in n}


def test_lora_ppo_trains_only_the_policy_and_value_adapters_and_head(tmp_path):
    fresh, _ = load_model_and_tokenizer("scratch:test")
    result = run(tmp_path, "lora", "ppo.value_lr=0.01")
    base: SharedBase = result.model
    weights = plain_base_weights(base)
    assert set(weights) == set(fresh.state_dict())
    for name, value in fresh.state_dict().items():
        assert torch.equal(weights[name], value), f"base weight {name} changed"
    # B starts at zero in both adapters, so a nonzero B means that adapter trained.
    for role in ("policy", "value"):
        lora_b = [p for n, p in base.model.named_parameters() if f"lora_B.{role}" in n]
        assert lora_b and all(p.abs().sum() > 0 for p in lora_b), role
    trainable = {id(p) for p in base.trainable_parameters("policy") + base.trainable_parameters("value")}
    assert {id(p) for p in base.model.parameters() if p.requires_grad} <= trainable
    assert all(p.requires_grad for p in base.head("value").parameters())
    saved_head = load_file(os.path.join(result.run_dir, "value", "head.safetensors"))
    assert torch.equal(saved_head["weight"], base.head("value").weight.detach())
    # the value head moved away from its initialisation (saved in the first checkpoint's weights)
    ckpt = load_file(os.path.join(result.run_dir, "checkpoints", "step-000002", "trainable.safetensors"))
    assert {k.split(".")[0] for k in ckpt} == {"policy", "value"}
    assert "value.head.weight" in ckpt
    summary = json.load(open(os.path.join(result.run_dir, "summary.json")))
    assert summary["method"] == "ppo" and summary["memory_bytes"]["adapter_weights"] > 0
    for key in ("reward/score", "kl", "entropy", "clipfrac", "approx_kl", "loss/value", "explained_variance",
                "response_length", "no_stop_fraction", "time/rollout", "time/scoring", "time/update",
                "tokens_per_s", "peak_memory_bytes", "kl_coef"):
        assert key in rows(result.run_dir)[-1], key


def test_zero_learning_rate_keeps_the_policy_and_kl_at_zero(tmp_path):
    result = run(tmp_path, "zero", "optimizer.lr=0", "train.steps=3", "rollout.kl_estimator=k3")
    base: SharedBase = result.model
    assert all(torch.all(p == 0) for n, p in base.model.named_parameters() if "lora_B.policy" in n)
    assert curve(result.run_dir, "kl") == [0.0, 0.0, 0.0]
    assert all(abs(r - 1.0) < 1e-6 for r in curve(result.run_dir, "ratio"))


def test_experience_masks_stop_at_eos_and_exclude_padding(tmp_path):
    cfg = load_recipe(None, FAST + ["rollout.max_new_tokens=8", "rollout.no_stop_penalty=-3.0"])
    model, tokenizer = load_model_and_tokenizer("scratch:test")
    base = SharedBase(model, tokenizer, mode="lora", lora=cfg.lora)
    base.add_policy()
    base.add_reference()
    base.add_value()
    from align.tasks import get_task
    from reward_models import build_reward

    prompt_rows = get_task("arithmetic").prompts("train", 32, 0)
    # Raise the EOS logit (p ~ 0.15 a token) so that some rows stop early and some never do.
    eos_boost_V = torch.zeros(len(tokenizer))
    eos_boost_V[tokenizer.eos_token_id] = 2.0
    hook = model.lm_head.register_forward_hook(lambda module, inputs, out: out + eos_boost_V)
    model.train()  # generation must run in eval mode and hand the modes back unchanged
    try:
        samples = sample_and_score(base, prompt_rows, RolloutRewards(build_reward("arithmetic_correctness")), cfg,
                                   torch.Generator().manual_seed(0), [tokenizer.eos_token_id])
        exp = ppo_experience(base, samples, 0.1, cfg)
    finally:
        hook.remove()
    assert all(module.training for module in model.modules())
    P, mask_BT = samples.prompt_width, samples.response_mask_BT.bool()
    response_ids_BT = samples.input_ids_BL[:, P:]
    assert samples.stopped_B.any() and (~samples.stopped_B).any()
    for b in range(len(samples)):
        ids, mask = response_ids_BT[b].tolist(), mask_BT[b].tolist()
        n = sum(mask)
        assert mask == [True] * n + [False] * (len(mask) - n)  # contiguous from the start
        if samples.stopped_B[b]:
            assert ids[n - 1] == tokenizer.eos_token_id and tokenizer.eos_token_id not in ids[: n - 1]
            assert all(i == tokenizer.pad_token_id for i in ids[n:])  # post-stop tokens are padding
        else:
            assert n == cfg.rollout.max_new_tokens and tokenizer.eos_token_id not in ids
            assert float(samples.scores_B[b]) == -3.0  # the no-stop penalty replaced the score
    # attention covers prompt (left padding excluded) + response tokens only
    assert torch.equal(samples.attention_mask_BL[:, P:].bool(), mask_BT)
    for name in ("old_logps_BT", "ref_logps_BT"):
        assert torch.all(getattr(samples, name)[~mask_BT] == 0), name
    for name in ("old_values_BT", "advantages_BT", "returns_BT"):
        assert torch.all(getattr(exp, name)[~mask_BT] == 0), name
    assert abs(float(exp.advantages_BT[mask_BT].mean())) < 1e-5  # whitened over real tokens only
    assert samples.stats["no_stop_fraction"] == pytest.approx(float((~samples.stopped_B).float().mean()))


def test_learned_reward_path_keeps_the_reward_role_frozen(tmp_path):
    model, tokenizer = load_model_and_tokenizer("scratch:test")
    torch.manual_seed(1)
    reward_base = SharedBase(model, tokenizer, mode="lora", lora={"rank": 4})
    reward_base.add_reward()  # a fresh (untrained) reward role is enough to exercise the path
    with torch.no_grad():
        for p in reward_base.adapter_parameters("reward"):
            p.normal_(std=0.05)
    reward_dir = reward_base.save_role("reward", tmp_path / "rm" / "reward")
    result = run(tmp_path, "learned", "data.task=preference", "rollout.reward=learned",
                 f"rollout.reward_model={tmp_path / 'rm'}", "rollout.gold_reward=gold_preference", "ppo.value_init_from_reward=true")
    base: SharedBase = result.model
    saved = load_file(str(reward_dir / "adapter_model.safetensors"))
    current = {n: p for n, p in base.model.named_parameters() if "lora_" in n and ".reward." in n + "."}
    assert len(saved) == len(current) > 0
    for saved_tensor in saved.values():
        assert any(torch.equal(saved_tensor, p) for p in current.values())
    assert torch.equal(load_file(str(reward_dir / "head.safetensors"))["weight"], base.head("reward").weight)
    assert not any(p.requires_grad for p in base.role_parameters("reward"))
    last = rows(result.run_dir)[-1]
    assert "reward/gold" in last and "reward/score" in last


def test_weighted_sum_reward_logs_every_term(tmp_path):
    assert parse_reward_spec("1.0*arithmetic_correctness + 0.5*format").terms == ((1.0, "arithmetic_correctness"), (0.5, "format"))
    with pytest.raises(ValueError, match="unknown reward"):
        parse_reward_spec("correctnes")
    result = run(tmp_path, "sum", "train.steps=1", "rollout.reward=1.0*arithmetic_correctness + 0.5*format")
    last = rows(result.run_dir)[-1]
    assert "reward/format" in last and "reward/arithmetic_correctness" in last


def test_full_mode_runs_the_same_trainer(tmp_path):
    fresh, _ = load_model_and_tokenizer("scratch:test")
    result = run(tmp_path, "full", "mode=full", "optimizer.lr=0.001", "train.steps=1")
    base: SharedBase = result.model
    for name, value in fresh.state_dict().items():  # the reference (the base module) is untouched
        assert torch.equal(base.model.state_dict()[name], value), name
    policy = base.role_model("policy").state_dict()
    assert any(not torch.equal(policy[k], v) for k, v in fresh.state_dict().items())
    assert os.path.isfile(os.path.join(result.run_dir, "model", "model.safetensors"))
    assert curve(result.run_dir, "kl") == [0.0]  # the policy copy starts equal to the reference


def test_resume_repeats_the_unbroken_run_exactly(tmp_path):
    keys = ("reward/score", "kl", "loss/policy", "loss/value", "kl_coef")
    extra = ["train.steps=4", "ppo.adaptive_kl=true", "ppo.kl_target=0.01", "ppo.kl_horizon=10"]
    unbroken = run(tmp_path, "unbroken", *extra).run_dir
    crashed = run(tmp_path, "crashed", *extra, "train.save_every=2").run_dir
    crash_after_checkpoint(crashed, 2)
    resumed = run(tmp_path, "crashed", *extra, "train.save_every=2", "resume=true").run_dir
    for key in keys:
        assert len(curve(resumed, key)) == 4
        assert curve(resumed, key) == pytest.approx(curve(unbroken, key), abs=1e-6), key
    assert len(set(curve(unbroken, "kl_coef"))) > 1  # the adaptive controller moved, and resumed


def test_answers_from_files_and_gsm8k_text(tmp_path):
    assert parse_answer(" The total is 5.\n#### 1,234") == 1234
    assert parse_answer(7) == 7 and parse_answer("12") == 12
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"question": f"Q: {a}+1=? A:", "answer": f"#### {a + 1}"}) + "\n" for a in range(8)))
    result = run(tmp_path, "file", "train.steps=1", "data.task=null", f"data.train_file={prompts}",
                 f"data.eval_file={prompts}", "data.prompt_field=question", "eval.enabled=true", "eval.num_prompts=4")
    assert curve(result.run_dir, "reward/score")
    summary = json.load(open(os.path.join(result.run_dir, "summary.json")))
    assert set(summary["eval_after"]) >= {"reward_greedy", "reward_sampled", "no_stop_fraction"}


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_kl_zero_keeps_no_reference_and_logs_no_kl(tmp_path, mode):
    """A fixed kl_coef of 0 reads no reference: no reference role (full mode: the policy trains
    the loaded base in place, so one copy of the weights fewer) and no `kl` metric."""
    result = run(tmp_path, mode, f"mode={mode}", "rollout.kl_coef=0", "train.steps=2")
    base: SharedBase = result.model
    assert "reference" not in base.roles and {"policy", "value"} <= set(base.roles)
    rows = [json.loads(line) for line in open(os.path.join(result.run_dir, "metrics.jsonl"))]
    trained = [r for r in rows if "loss/policy" in r]
    assert len(trained) == 2 and all("kl" not in r for r in rows)
    assert all(math.isfinite(r["loss/policy"]) and math.isfinite(r["loss/value"]) for r in trained)
    if mode == "full":
        assert base.role_model("policy") is base.model  # trained in place: no frozen copy
        assert base.role_model("value") is not base.model
