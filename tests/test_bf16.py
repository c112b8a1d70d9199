"""bf16 bases: `dtype: bfloat16` keeps the frozen base in bfloat16 while what trains (adapters,
heads) and the optimizer state stay float32, for every trainer, on the CPU.

Each trainer runs 3 steps on the tiny test model in float32 and in bfloat16. Checked: the bf16
run's base weights are bfloat16 and frozen, its trained tensors and Adam moments
are float32 (the last checkpoint), the base takes half the bytes, and its losses stay within the
stated tolerance of float32's: |bf16 - fp32| <= 0.02 + 0.02 |fp32| per step (bf16 keeps 8 bits of
mantissa, about 3 significant digits, and 3 steps at LR 1e-3 let the difference grow; measured here
at most 0.0027, PPO's policy loss at step 3). That training still improves the built-in task in bf16 is
measured in docs/scaling.md ("bf16 bases"), not here.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_bf16.py`.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align.cli import TRAINERS
from align.config import load_recipe
from tests.conftest import REPO
from tests.test_multiprocess import COMMON, METHODS

torch.set_num_threads(1)


def train(method: str, dtype: str, out: Path):
    recipe, overrides, _ = METHODS[method]
    # LR 1e-3: at the 1e-2 of the world-size tests the reward model's loss jumps around and on a GPU
    # the two precisions drift apart by step 3 from that alone (seen on an H200: over 0.04).
    cfg = load_recipe(REPO / "recipes" / recipe, COMMON + overrides + [
        "optimizer.lr=0.001", f"dtype={dtype}", "train.save_every=3", f"output_dir={out}"])
    module, function = TRAINERS[cfg.method]
    return getattr(importlib.import_module(module), function)(cfg)


def losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in open(Path(run_dir) / "metrics.jsonl")]
    key = "loss" if any("loss" in r for r in rows) else "loss/policy"
    return [r[key] for r in rows if "grad_norm" in r]


@pytest.mark.parametrize("method", list(METHODS))
def test_bf16_base_trains_float32_adapters_within_tolerance(tmp_path, method):
    full = train(method, "float32", tmp_path / "fp32")
    half = train(method, "bfloat16", tmp_path / "bf16")
    model = half.model.model if hasattr(half.model, "base_parameters") else half.model
    base = [p for n, p in model.named_parameters() if "lora_" not in n]
    assert base and all(p.dtype == torch.bfloat16 and not p.requires_grad for p in base)
    checkpoint = Path(half.run_dir) / "checkpoints" / "step-000003"
    trained = load_file(str(checkpoint / "trainable.safetensors"))
    moments = [t for f in checkpoint.glob("optimizer*.safetensors") for t in load_file(str(f)).values() if t.dim()]
    assert trained and all(t.dtype == torch.float32 for t in trained.values())
    assert moments and all(t.dtype == torch.float32 for t in moments)
    for fp32, bf16 in zip(losses(full.run_dir), losses(half.run_dir), strict=True):
        assert abs(bf16 - fp32) <= 0.02 + 0.02 * abs(fp32), (method, fp32, bf16)
    if hasattr(half.model, "base_parameters"):  # the SharedBase trainers report their memory
        from align.memory import memory_report

        assert memory_report(half.model)["base_weights"] * 2 == memory_report(full.model)["base_weights"]
