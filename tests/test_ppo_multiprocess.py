"""PPO on two CPU processes (gloo) through `accelerate launch`, as a user runs it.

Each process samples half of every rollout batch and half of every minibatch; gradients are
averaged over processes. Sampling differs from a 1-process run (each rank has its own generator),
so this checks that the run works and that processes stay in lockstep, not bitwise equality.
Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_ppo_multiprocess.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.test_multiprocess import free_port

TINY = [
    "model=scratch:test", "data.num_train=64", "lora.rank=4", "train.steps=2", "train.log_every=1",
    "train.threads=1", "train.eval_every=0", "eval.enabled=false", "tracking.wandb=false",
    "ppo.rollout_batch_size=8", "ppo.minibatch_size=4", "rollout.max_new_tokens=6", "optimizer.warmup_steps=0",
]


@pytest.mark.slow
def test_two_process_ppo_run(tmp_path, repo):
    out_dir = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(repo / "recipes" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", str(free_port()),
        "-m", "align.cli", "train", str(repo / "recipes" / "ppo_lora.yaml"), *TINY, f"output_dir={out_dir}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out_dir)  # last line: the run directory
    summary = json.load(open(out_dir / "summary.json"))
    assert summary["num_processes"] == 2 and summary["method"] == "ppo"
    rows = [json.loads(line) for line in open(out_dir / "metrics.jsonl")]
    assert [r["step"] for r in rows if "kl" in r] == [1, 2]
    weights = load_file(str(out_dir / "checkpoints" / "step-000002" / "trainable.safetensors"))
    assert any("lora_B" in k and torch.count_nonzero(v) for k, v in weights.items())
