"""DPO trainer on a tiny random model (`scratch:test`): what trains, what must not, exactness.

A few steps each on the built-in preference task; together well under a minute on one thread.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from align.config import load_recipe
from align.losses import PREFERENCE_LOSSES
from align.models import load_model_and_tokenizer
from align.trainers.dpo import train_dpo
from tests.helpers import crash_after_checkpoint

FAST = [
    "method=dpo", "model=scratch:test", "data.task=preference", "data.num_train=64", "data.num_eval=16",
    "train.batch_size=8", "train.log_every=1", "optimizer.lr=0.01", "optimizer.warmup_steps=0",
    "eval.enabled=false", "tracking.wandb=false", "lora.rank=4", "dpo.beta=0.5",
]


def run(tmp_path, name, *overrides):
    cfg = load_recipe(None, FAST + [f"output_dir={tmp_path / name}", *overrides])
    return train_dpo(cfg)


def rows(run_dir):
    return [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]


def losses(run_dir):
    return [r["loss"] for r in rows(run_dir) if "loss" in r]


def test_lora_changes_only_the_policy_adapter(tmp_path):
    fresh, _ = load_model_and_tokenizer("scratch:test")
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    result = run(tmp_path, "lora", "train.steps=3")
    base = result.model  # the SharedBase
    assert base.roles == ["policy", "reference"]
    after = {k.replace(".base_layer", ""): v for k, v in base.model.state_dict().items() if "lora_" not in k}
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), f"base weight {k} changed"
    lora_b = [p for p in base.adapter_parameters("policy") if p.dim() == 2 and p.shape[1] == 4]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero, so it trained
    trainable = {id(p) for p in base.trainable_parameters("policy")}
    assert all(id(p) in trainable for p in base.model.parameters() if p.requires_grad)
    assert base.all_adapter_parameters() and set(map(id, base.all_adapter_parameters())) == trainable


def test_metrics_summary_and_adapter_files(tmp_path):
    result = run(tmp_path, "files", "train.steps=2", "eval.enabled=true", "eval.num_prompts=4", "eval.max_new_tokens=4")
    d = result.run_dir
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert os.path.exists(os.path.join(d, name)), name
    first = [r for r in rows(d) if "loss" in r][0]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected", "ref_logps/chosen", "ref_logps/rejected", "lr", "tokens_per_s", "grad_norm"):
        assert key in first, key
    summary = json.load(open(os.path.join(d, "summary.json")))
    assert summary["method"] == "dpo" and summary["lora_rank"] == 4 and summary["memory_bytes"]["base_weights"] > 0
    assert "gold_score_sampled" in summary["eval_before"] and "accuracy_sampled" in summary["eval_after"]
    assert "pairs/rewards/accuracies" in summary["eval_after"]

    from peft import PeftModel

    fresh, tok = load_model_and_tokenizer("scratch:test")
    loaded = PeftModel.from_pretrained(fresh, os.path.join(d, "adapter")).eval()
    ids = tok(["Q: 12+7=? A: 19"], return_tensors="pt")["input_ids"]
    with torch.no_grad(), result.model.role("policy") as policy:
        policy.eval()
        assert torch.allclose(loaded(ids).logits, policy(ids).logits, atol=1e-6)


def test_full_mode_runs_the_same_trainer(tmp_path):
    fresh, _ = load_model_and_tokenizer("scratch:test")
    result = run(tmp_path, "full", "train.steps=2", "mode=full", "optimizer.lr=0.001")
    base = result.model
    policy, reference = base.role_model("policy"), base.role_model("reference")
    assert policy is not reference
    for k, v in fresh.state_dict().items():
        assert torch.equal(reference.state_dict()[k], v), f"reference weight {k} changed"
    assert any(not torch.equal(policy.state_dict()[k], v) for k, v in fresh.state_dict().items())
    assert os.path.exists(os.path.join(result.run_dir, "model", "model.safetensors"))
    assert len(losses(result.run_dir)) == 2


def test_precomputed_reference_gives_the_same_losses(tmp_path):
    on_the_fly = rows(run(tmp_path, "fly", "train.steps=3").run_dir)
    precomputed = rows(run(tmp_path, "pre", "train.steps=3", "dpo.precompute_reference=true").run_dir)
    for a, b in zip(on_the_fly, precomputed):
        for key in ("loss", "rewards/margins", "ref_logps/chosen", "ref_logps/rejected"):
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-6), key


@pytest.mark.parametrize("loss_type", sorted(PREFERENCE_LOSSES))
def test_every_registered_loss_trains(tmp_path, loss_type):
    extra = ["dpo.label_smoothing=0.1"] if loss_type == "sigmoid" else []
    values = losses(run(tmp_path, loss_type, "train.steps=2", f"dpo.loss_type={loss_type}", *extra).run_dir)
    assert len(values) == 2 and all(math.isfinite(v) for v in values)


def test_simpo_never_runs_the_reference(tmp_path, monkeypatch):
    from align.shared_base import SharedBase

    used: list[str] = []
    original = SharedBase.role

    def recording_role(self, role):
        used.append(role)
        return original(self, role)

    monkeypatch.setattr(SharedBase, "role", recording_role)
    result = run(tmp_path, "simpo", "train.steps=2", "dpo.loss_type=simpo", "eval.enabled=true",
                 "eval.num_prompts=4", "eval.max_new_tokens=3", "dpo.precompute_reference=true")
    assert "policy" in used and "reference" not in used  # reference-free: no reference forward at all
    assert not any(k.startswith("ref_logps/") for r in rows(result.run_dir) for k in r)
    assert "pairs/loss" in result.summary["eval_after"]  # held-out pairs scored without a reference
    used.clear()
    run(tmp_path, "sigmoid", "train.steps=1")
    assert "reference" in used  # the check above can fail


def test_gradient_accumulation_invariance(tmp_path):
    one = losses(run(tmp_path, "b8", "train.steps=3").run_dir)
    two = losses(run(tmp_path, "b4x2", "train.steps=3", "train.grad_accum=2").run_dir)
    assert one == pytest.approx(two, abs=1e-5)


def test_resume_continues_the_exact_loss_curve(tmp_path):
    unbroken = losses(run(tmp_path, "unbroken", "train.steps=6").run_dir)
    crashed = run(tmp_path, "crashed", "train.steps=6", "train.save_every=3").run_dir
    ckpts = crash_after_checkpoint(crashed, 3)
    assert os.path.exists(os.path.join(ckpts, "step-000003", "adapter", "adapter_config.json"))
    resumed = losses(run(tmp_path, "crashed", "train.steps=6", "train.save_every=3", "resume=true").run_dir)
    assert len(resumed) == 6  # metrics rows after the checkpoint were replaced, not duplicated
    assert resumed == pytest.approx(unbroken, abs=1e-6)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_zero_learning_rate_keeps_policy_equal_to_reference(tmp_path, mode):
    run_dir = run(tmp_path, mode, "train.steps=2", "optimizer.lr=0", f"mode={mode}").run_dir
    for r in [r for r in rows(run_dir) if "loss" in r]:
        assert r["rewards/chosen"] == 0.0 and r["rewards/rejected"] == 0.0 and r["rewards/margins"] == 0.0
        assert r["logps/chosen"] == r["ref_logps/chosen"]
        assert r["loss"] == pytest.approx(math.log(2), abs=1e-7)


def test_frozen_embeddings_ablation_freezes_exactly_embeddings_and_head(tmp_path, repo):
    proc = subprocess.run(
        [sys.executable, "scripts/studies/dpo_frozen_embeddings.py", "--seeds", "0", "--runs-dir", str(tmp_path),
         "--override", "model=scratch:test", "train.steps=1", "train.batch_size=8", "data.num_train=16",
         "data.num_eval=8", "eval.num_prompts=4", "eval.max_new_tokens=3", "train.eval_every=0"],
        cwd=repo, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, _ = load_model_and_tokenizer("scratch:test")
    frozen = model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    summary = json.load(open(next(tmp_path.glob("*/summary.json"))))
    assert summary["mode"] == "full" and summary["trainable_parameters"] == total - frozen
