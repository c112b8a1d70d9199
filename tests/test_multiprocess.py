"""Two CPU processes (gloo) through `accelerate launch` equal one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.test_sft import FAST, losses


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_processes(repo, recipe_overrides: list[str], method_module: str = "align.cli") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(repo / "recipes" / "accelerate" / "cpu_2proc.yaml"),
        "--main_process_port", str(free_port()),
        "-m", method_module, "train", str(repo / "recipes" / "sft_lora.yaml"), *recipe_overrides,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo, timeout=600)


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, repo):
    from align.config import load_recipe
    from align.trainers.sft import train_sft

    overrides = FAST + ["train.steps=3", "train.threads=1", "train.eval_every=0"]
    recipe = repo / "recipes" / "sft_lora.yaml"
    single = losses(train_sft(load_recipe(recipe, overrides + [f"output_dir={tmp_path / 'one'}"])).run_dir)
    out_dir = tmp_path / "two"
    proc = launch_two_processes(repo, overrides + [f"output_dir={out_dir}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out_dir)  # last line: the run directory
    summary = json.load(open(out_dir / "summary.json"))
    assert summary["num_processes"] == 2
    # Equal up to float32 reduction order (gradients are summed over processes in another order).
    assert losses(out_dir) == pytest.approx(single, rel=1e-5)
