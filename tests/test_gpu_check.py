"""`scripts/benchmarks/gpu_check.py` on CPU with its tiny shapes: the engine rows and the 7B case's
plumbing (a base built from config.json on load, never written; four PPO roles), and the full-copy
arithmetic it prints for Qwen2.5-7B against a hand count.

The run is a subprocess as a user would start it (`--tiny --methods grpo --7b`): about 20 s on 2
CPU cores where vLLM is absent (its row is skipped with one line), about 48 s where it is
installed (the row runs on vLLM's CPU build).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def gpu_check():
    script = Path(__file__).resolve().parents[1] / "scripts" / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_qwen_7b_count_and_full_mode_arithmetic(gpu_check):
    # Qwen2.5-7B by hand: embeddings and the untied LM head 152,064 x 3,584 each; per layer
    # q 3584x3584 + 3584 bias, k and v 512x3584 + 512 each, o 3584x3584, gate/up/down 3 x 3584x18944,
    # two norms of 3584; 28 layers; the final norm.
    lm_head = 152064 * 3584
    layer = (3584 * 3584 + 3584) + 2 * (512 * 3584 + 512) + 3584 * 3584 + 3 * 3584 * 18944 + 2 * 3584
    total = 2 * lm_head + 28 * layer + 3584
    assert gpu_check.parameter_counts(gpu_check.QWEN_7B_SHAPE) == (total, lm_head) == (7_615_616_512, 544_997_376)
    items, full = gpu_check.full_mode_arithmetic(total, lm_head)
    # reference 2N + policy 8N + reward 2N + value 2N + 6 (N - lm_head), in bytes (bf16)
    assert [b for _, _, b in items] == [2 * total, 8 * total, 2 * total, 2 * total + 6 * (total - lm_head)]
    assert full == 20 * total - 6 * lm_head


@pytest.mark.slow
def test_tiny_gpu_check_engine_rows_and_7b_case(repo, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(repo / "scripts" / "benchmarks" / "gpu_check.py"), "--tiny",
                           "--methods", "grpo", "--steps", "2", "--7b", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=repo, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    results = {(r["method"], r["engine"]): r for r in json.loads((tmp_path / "gpu_check.json").read_text())}
    assert "| grpo | hf | 1 ddp |" in out and "| grpo | hf-multinomial | 1 ddp |" in out
    assert "error" not in results[("grpo", "hf-multinomial")]
    if importlib.util.find_spec("vllm") is None:
        assert out.count("vllm is not importable here") == 1 and ("grpo", "vllm") not in results
    else:
        assert "| grpo | vllm | 1 ddp |" in out and "error" not in results[("grpo", "vllm")]
    # the 7B case: no weights on disk, a learned reward run, then PPO holding all four roles
    assert not list((tmp_path / "model-7b-tiny").glob("*.safetensors"))
    ppo = results[("7b-ppo-4-roles", "hf")]
    assert {"policy", "reference", "reward", "value"} <= set(ppo["by_role"])
    assert ppo["by_role"]["reward"] > 0 and ppo["by_role"]["value"] > 0
    assert "7B PPO, LoRA, one base for 4 roles, measured peak" in out
    assert "total = N x 20 - lm_head x 6" in out
