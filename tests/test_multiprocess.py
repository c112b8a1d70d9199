"""World size does not change the result: every trainer, launched as 2 CPU processes (gloo)
through `accelerate launch` under `distributed.strategy: ddp` and `fsdp`, logs the curve that
1 process logs with the same global batch (to float32 reduction order, 1e-5).

What makes the RL trainers equal too: each completion samples from a generator seeded by its
GLOBAL index in the iteration's batch (`align.experience.completion_generators`), PPO whitens and
shuffles over the global rollout batch (`gather_rollout`), and every loss and logged token mean is
normalised by counts over all processes. One fsdp run also resumes exactly, and its saved adapter
loads into one process with plain peft.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_multiprocess.py` (about 3 minutes).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO
from tests.helpers import crash_after_checkpoint

COMMON = ["model=scratch:test", "data.num_train=64", "lora.rank=4", "train.log_every=1", "train.steps=3",
          "train.threads=1", "optimizer.lr=0.01", "optimizer.lr_rule=false", "optimizer.warmup_steps=0", "eval.enabled=false", "tracking.wandb=false"]
# method -> (recipe, its overrides, the logged figures that must agree)
METHODS = {
    "sft": ("sft_lora.yaml", ["data.task=arithmetic", "data.num_eval=16", "train.batch_size=8"], ["loss", "grad_norm"]),
    "reward": ("rm_lora.yaml", ["data.task=preference", "data.num_eval=16", "train.batch_size=8"], ["loss", "accuracy", "grad_norm"]),
    "dpo": ("dpo_lora.yaml", ["data.task=preference", "data.num_eval=16", "train.batch_size=8", "dpo.beta=0.5"],
            ["loss", "logps/chosen", "grad_norm"]),
    "ppo": ("ppo_lora.yaml", ["data.task=arithmetic", "ppo.rollout_batch_size=8", "ppo.minibatch_size=4",
                              "rollout.max_new_tokens=6", "rollout.kl_coef=0.1",
                              "optimizer.lr=0.001"],  # 4 epochs at 0.01 amplify float rounding past 1e-5 by step 2
            ["reward/score", "kl", "loss/policy", "loss/value", "grad_norm"]),
    "grpo": ("grpo_lora.yaml", ["data.task=arithmetic", "rollout.max_new_tokens=6", "grpo.prompts_per_iteration=4",
                                "grpo.group_size=4", "grpo.minibatch_size=8", "rollout.kl_coef=0.1",
                                "grpo.loss_aggregation=dapo", "grpo.batch_std=true"],
             ["reward/score", "reward/std", "response_length", "loss", "kl", "grad_norm"]),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(repo: Path, out_dir: Path, recipe: str, overrides: list[str], processes: int = 1) -> subprocess.CompletedProcess:
    """`align train` in a fresh process (1) or through `accelerate launch` (2); fails the test on error."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    launch = [sys.executable, "-m", "align.cli"] if processes == 1 else [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(repo / "recipes" / "accelerate" / "cpu_2proc.yaml"),
        "--main_process_port", str(free_port()), "-m", "align.cli"]
    proc = subprocess.run([*launch, "train", str(repo / "recipes" / recipe), *overrides, f"output_dir={out_dir}"],
                          capture_output=True, text=True, env=env, cwd=repo, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out_dir)  # last line: the run directory
    return proc


def step_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    return [r for r in rows if "grad_norm" in r]


@pytest.fixture(scope="module")
def one_process_runs(tmp_path_factory):
    """The 1-process run of each method, made once and compared with both strategies."""
    cache: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in cache:
            recipe, overrides, _ = METHODS[method]
            cache[method] = tmp_path_factory.mktemp(f"one-{method}")
            train(REPO, cache[method], recipe, COMMON + overrides)
        return cache[method]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_equal_one(tmp_path, repo, one_process_runs, method, strategy):
    recipe, overrides, figures = METHODS[method]
    two = tmp_path / "two"
    proc = train(repo, two, recipe, COMMON + overrides + [f"distributed.strategy={strategy}"], processes=2)
    assert ("fsdp: base sharded over 2 processes" in proc.stdout) == (strategy == "fsdp")
    assert json.load(open(two / "summary.json"))["num_processes"] == 2
    a, b = step_rows(one_process_runs(method)), step_rows(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for key in figures:
            assert ra[key] == pytest.approx(rb[key], abs=1e-5, rel=1e-5), (method, strategy, ra["step"], key)


@pytest.mark.slow
def test_fsdp_resumes_exactly_and_saves_a_whole_adapter(tmp_path, repo):
    from peft import PeftModel

    from align.models import load_model_and_tokenizer

    recipe, overrides, figures = METHODS["grpo"]
    args = COMMON + overrides + ["train.steps=4", "train.save_every=2", "distributed.strategy=fsdp"]
    full = tmp_path / "full"
    train(repo, full, recipe, args, processes=2)
    curve = [[r[k] for k in figures] for r in step_rows(full)]
    crash_after_checkpoint(full, 2)
    train(repo, full, recipe, args + ["resume=true"], processes=2)
    assert [[r[k] for k in figures] for r in step_rows(full)] == curve  # bit for bit

    # adapter/: whole (not a shard), plain peft format, loadable in one process, = the last checkpoint
    trained = {k.replace(".policy.", "."): v for k, v in
               load_file(str(full / "checkpoints" / "step-000004" / "trainable.safetensors")).items()}
    model, _ = load_model_and_tokenizer("scratch:test")
    loaded = PeftModel.from_pretrained(model, str(full / "adapter"))
    lora = {n.removeprefix("base_model.model.").replace(".default.", "."): p for n, p in loaded.named_parameters() if "lora_" in n}
    assert sorted(lora) == sorted(trained)
    assert all(torch.equal(p, trained[name]) for name, p in lora.items())
    assert any(torch.count_nonzero(p) for name, p in lora.items() if "lora_B" in name)


def test_fsdp_with_full_copies_is_a_config_error(repo):
    from align.config import ConfigError, load_recipe

    with pytest.raises(ConfigError, match="distributed.strategy"):
        load_recipe(repo / "recipes" / "grpo_full.yaml", ["distributed.strategy=fsdp"])
