"""`train.activation_checkpointing`: on or off, a trainer computes the same losses.

Checkpointing is switched on when the shared base is loaded, BEFORE any role exists
(`align.trainers.common.load_shared_base`): LoRA adapters added afterwards must still have their
forward-time switches replayed in the backward recompute, and full-mode copies made afterwards
must be checkpointed too. PPO switches roles (policy, reference, reward, value) between forwards
and backwards, so it is the trainer that would show a wrong replay; DPO and SFT run too.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_activation_checkpointing.py` (about a minute).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from align.config import load_recipe

PPO = [
    "method=ppo", "model=scratch:test", "data.task=arithmetic", "data.num_train=64", "lora.rank=4",
    "train.log_every=1", "train.steps=2", "optimizer.lr=0.01", "optimizer.warmup_steps=0", "optimizer.schedule=constant",
    "eval.enabled=false", "tracking.wandb=false", "ppo.rollout_batch_size=8", "ppo.minibatch_size=4",
    "rollout.max_new_tokens=6", "ppo.ppo_epochs=2", "rollout.kl_coef=0.1",
]
TIMING = ("time", "seconds", "per_s", "elapsed", "memory", "peak")


def losses(run_dir) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return [{k: v for k, v in row.items() if isinstance(v, float) and not any(t in k for t in TIMING)} for row in rows]


def assert_same_curves(off, on):
    assert len(off) == len(on) and any(off)
    for row_off, row_on in zip(off, on):
        assert row_off.keys() == row_on.keys()
        for key in row_off:
            assert row_on[key] == pytest.approx(row_off[key], abs=1e-5, rel=1e-5), key


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_ppo_with_checkpointing_gives_the_same_losses(tmp_path, mode):
    from align.trainers.ppo import train_ppo

    curves = []
    for on in (False, True):
        cfg = load_recipe(None, PPO + [f"mode={mode}", f"output_dir={tmp_path / str(on)}",
                                       f"train.activation_checkpointing={str(on).lower()}"])
        curves.append(losses(train_ppo(cfg).run_dir))
    assert any("loss/policy" in row for row in curves[0]) and any("loss/value" in row for row in curves[0])
    assert_same_curves(*curves)


def test_checkpointing_reaches_roles_added_after_it():
    """Enabled on a bare base, then roles added: every decoder layer of the shared model (LoRA)
    and of each full copy is checkpointed, and LoRA layers carry the replaying context_fn."""
    from align.models import load_model_and_tokenizer
    from align.role_helpers import CheckpointContextFn
    from align.shared_base import SharedBase

    for mode in ("lora", "full"):
        model = load_model_and_tokenizer("scratch:test")[0]
        base = SharedBase(model, None, mode=mode, lora={"rank": 4})
        base.enable_activation_checkpointing()
        base.add_policy()
        base.add_reference()
        base.add_value()
        for role in ("policy", "value"):
            layers = [m for m in base.role_model(role).modules() if getattr(m, "gradient_checkpointing", False)]
            assert layers, (mode, role)
            if mode == "lora":
                assert all(isinstance(m._gradient_checkpointing_func.keywords["context_fn"], CheckpointContextFn) for m in layers)
        if mode == "full":
            assert base.role_model("policy") is not base.role_model("value")


def test_dpo_and_sft_with_checkpointing_give_the_same_losses(tmp_path):
    from align.trainers.dpo import train_dpo
    from align.trainers.sft import train_sft

    common = ["model=scratch:test", "lora.rank=4", "train.log_every=1", "train.steps=2", "train.batch_size=4",
              "eval.enabled=false", "tracking.wandb=false", "data.num_train=32"]
    for method, train in (("dpo", train_dpo), ("sft", train_sft)):
        curves = []
        for on in (False, True):
            cfg = load_recipe(None, common + [f"method={method}", f"data.task={'preference' if method == 'dpo' else 'arithmetic'}",
                                              f"output_dir={tmp_path / method / str(on)}",
                                              f"train.activation_checkpointing={str(on).lower()}"])
            curves.append(losses(train(cfg).run_dir))
        assert any("loss" in row for row in curves[0]), method
        assert_same_curves(*curves)
