"""`rollout.engine: vllm` (`align.vllm_engine`) on the built-in tiny base: per-completion seeds,
adapter-only sync, the engine's log-probs against the trainer's, the mismatch and its truncated
importance-sampling correction, and GRPO / PPO end to end through the engine.

Needs the `vllm` extra (docs/vllm.md); without vLLM every test here skips. One engine for the
module (vLLM builds one per process comfortably; the end-to-end runs are subprocesses, as a user
runs them).

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_vllm_engine.py` in .venv-vllm (about 3 minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")

from align.config import LoraSettings  # noqa: E402
from align.data.prompts import render_prompts  # noqa: E402
from align.experience import completion_generators, mismatch_stats, response_logprobs  # noqa: E402
from align.losses.grpo import truncated_importance_weights  # noqa: E402
from align.models import resolve_model_path  # noqa: E402
from align.shared_base import SharedBase  # noqa: E402
from align.tasks import get_task  # noqa: E402
from align.vllm_engine import VLLMEngine, adapter_rank, full_weight_bytes  # noqa: E402

BASE = "builtin:tiny-arith"
MAX_NEW_TOKENS = 12
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup():
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    base = SharedBase.from_pretrained(BASE, mode="lora", lora=LoraSettings(rank=8, alpha=32, targets="all"))
    base.add_policy()
    base.add_reference()
    engine = VLLMEngine(resolve_model_path(BASE), "float32", adapter_rank(base), seed=0, kv_cache_gib=1.0)
    prompts = render_prompts([row["prompt"] for row in get_task("arithmetic").prompts("eval", 48, 0)], base.tokenizer, False)
    yield base, engine, prompts
    engine.close()


def _perturb(base, scale: float, seed: int) -> None:
    """An 'update': every lora_B of the policy moved in place (torch bumps the version counters)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in base.model.named_parameters():
            if "lora_B.policy" in name:
                p.add_(torch.randn(p.shape, generator=generator) * scale)


def _sample(engine, base, prompts, indices, step=0):
    return engine.generate(None, base.tokenizer, [prompts[i] for i in indices], MAX_NEW_TOKENS,
                           row_generators=completion_generators(0, step, list(indices)), eos_token_ids=[base.tokenizer.eos_token_id])


def _rows(rollout) -> list[list[int]]:
    return [[t for t, m in zip(ids, mask) if m] for ids, mask in zip(rollout.response_ids_BT.tolist(), rollout.response_mask_BT.tolist())]


def test_per_completion_seeds_give_the_same_samples_whatever_the_batch(setup):
    """Each completion's seed goes into its own SamplingParams: the whole batch at once, its
    reverse, two 'processes' (halves) and single rows sample the same tokens row by row."""
    base, engine, prompts = setup
    engine.sync(base)
    n = len(prompts)
    whole = _rows(_sample(engine, base, prompts, range(n)))
    reverse = _rows(_sample(engine, base, prompts, range(n - 1, -1, -1)))[::-1]
    halves = _rows(_sample(engine, base, prompts, range(n // 2))) + _rows(_sample(engine, base, prompts, range(n // 2, n)))
    singles = [_rows(_sample(engine, base, prompts, [i]))[0] for i in range(0, n, 6)]
    changed = sum(a != b for a, b in zip(whole, reverse)) + sum(a != b for a, b in zip(whole, halves))
    changed += sum(whole[i] != s for i, s in zip(range(0, n, 6), singles))
    print(f"batch composition changed {changed} of {2 * n + len(singles)} samples")
    assert changed == 0
    other_step = _rows(_sample(engine, base, prompts, range(n), step=1))
    assert sum(a != b for a, b in zip(whole, other_step)) > n // 2  # another iteration's seeds: other samples


def test_adapter_sync_moves_only_the_adapter_and_changes_samples(setup):
    base, engine, prompts = setup
    engine.sync(base)
    assert engine.sync(base) == 0  # nothing changed: nothing moves
    before = _rows(_sample(engine, base, prompts, range(len(prompts))))
    lora_id = engine.lora_request.lora_int_id
    _perturb(base, 0.5, seed=1)
    moved = engine.sync(base)
    adapter_bytes = sum(p.numel() * p.element_size() for n, p in base.model.named_parameters() if "lora_" in n and ".policy" in n)
    assert adapter_bytes <= moved < adapter_bytes + 64 * 1024  # the tensors plus the safetensors header
    assert moved < full_weight_bytes(base.model) / 5  # 47k adapter numbers against 0.55 M base weights
    assert engine.lora_request.lora_int_id == lora_id + 1 and engine.llm.llm_engine.list_loras() <= {lora_id + 1}
    after = _rows(_sample(engine, base, prompts, range(len(prompts))))
    assert sum(a != b for a, b in zip(before, after)) > len(prompts) // 4


def test_engine_logprobs_match_the_trainers_and_a_forced_mismatch_is_measured(setup):
    base, engine, prompts = setup
    _perturb(base, 0.3, seed=2)
    engine.sync(base)
    rollout = _sample(engine, base, prompts, range(len(prompts)))
    ids_BL, mask_BL = rollout.sequences()
    trainer_BT, _ = response_logprobs(base, "policy", ids_BL, mask_BL, rollout.response_mask_BT, 1.0)
    synced = mismatch_stats(trainer_BT, rollout.sampler_logps_BT, rollout.response_mask_BT)
    print("synced", synced)
    assert synced["rollout/logprob_mismatch_max"] < 1e-3 and synced["rollout/logprob_mismatch_mean"] < 1e-4

    # Forced: the trainer moves on, the engine is not synced: its log-probs are an older policy's.
    _perturb(base, 0.3, seed=3)
    moved_BT, _ = response_logprobs(base, "policy", ids_BL, mask_BL, rollout.response_mask_BT, 1.0)
    forced = mismatch_stats(moved_BT, rollout.sampler_logps_BT, rollout.response_mask_BT)
    print("forced", forced)
    assert forced["rollout/logprob_mismatch_mean"] > 100 * max(synced["rollout/logprob_mismatch_mean"], 1e-6)
    weights_BT = truncated_importance_weights(moved_BT, rollout.sampler_logps_BT, cap=2.0)
    live = rollout.response_mask_BT.bool()
    assert weights_BT[live].max() <= 2.0 and (weights_BT[live] - 1).abs().max() > 0.05
    torch.testing.assert_close(weights_BT[live], torch.exp(moved_BT - rollout.sampler_logps_BT)[live].clamp(max=2.0))


def test_a_policy_started_from_a_saved_adapter_samples_through_it(setup, tmp_path):
    """`rollout.init_adapter`: the policy role loaded from a saved adapter is what the engine samples."""
    base, engine, prompts = setup
    _perturb(base, 0.5, seed=4)
    engine.sync(base)
    expected = _rows(_sample(engine, base, prompts, range(len(prompts))))
    base.save_role("policy", tmp_path / "start")
    started = SharedBase.from_pretrained(BASE, mode="lora", lora=LoraSettings(rank=8, alpha=32, targets="all"))
    started.add_policy(init_adapter=tmp_path / "start")
    assert engine.sync(started) > 0
    assert _rows(_sample(engine, started, prompts, range(len(prompts)))) == expected


def test_greedy_and_seeded_generation_keep_the_hf_contract(setup):
    """The drop-in keeps `align.rollout.generate`'s result: left-padded prompts whose ids are our
    tokenizer's, the mask through EOS, texts without special tokens; greedy equals the hf loop."""
    from align.rollout import generate

    base, engine, prompts = setup
    engine.sync(base)
    eos = [base.tokenizer.eos_token_id]
    ours = engine.generate(None, base.tokenizer, prompts, MAX_NEW_TOKENS, do_sample=False, eos_token_ids=eos)
    with base.role("policy") as model:
        hf = generate(model, base.tokenizer, prompts, MAX_NEW_TOKENS, do_sample=False, eos_token_ids=eos)
    assert torch.equal(ours.prompt_ids_BP, hf.prompt_ids_BP) and torch.equal(ours.prompt_mask_BP, hf.prompt_mask_BP)
    assert ours.texts == hf.texts and torch.equal(ours.stopped_B, hf.stopped_B)
    assert torch.equal(ours.response_mask_BT, hf.response_mask_BT[:, : ours.response_mask_BT.shape[1]])
    assert ours.sampler_logps_BT is None  # greedy: no sampled distribution to compare


def _train(tmp_path, recipe, *overrides, processes: int = 1):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    launch = ([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "recipes" / "accelerate" / "cpu_2proc.yaml")] if processes == 2 else [sys.executable])
    cmd = [*launch, "-m", "align.cli", "train", str(REPO / "recipes" / recipe), f"output_dir={tmp_path}",
           "rollout.engine=vllm", "train.steps=2", "train.log_every=1", "eval.num_prompts=32", "tracking.wandb=false", *overrides]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = next(p.parent for p in Path(tmp_path).rglob("metrics.jsonl"))
    return done.stdout + done.stderr, [json.loads(line) for line in open(run_dir / "metrics.jsonl")], run_dir


@pytest.mark.slow
def test_grpo_runs_end_to_end_through_the_engine(tmp_path):
    out, rows, run_dir = _train(tmp_path, "grpo_lora.yaml", "rollout.tis_cap=2.0")
    assert "a merged full-weight sync would move" in out
    steps = [r for r in rows if "rollout/sync_bytes" in r]
    assert len(steps) == 2 and all(r["rollout/sync_bytes"] > 0 for r in steps)
    # grpo_lora is on-policy only (one update per generation): the mismatch is the update's own
    assert all(r["rollout/logprob_mismatch_max"] < 1e-3 for r in steps)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "accuracy_sampled" in summary["eval_after"]


@pytest.mark.slow
def test_ppo_runs_end_to_end_through_the_engine(tmp_path):
    _, rows, _ = _train(tmp_path, "ppo_lora.yaml", "eval.enabled=false")
    steps = [r for r in rows if "rollout/sync_bytes" in r]
    assert len(steps) == 2 and all(r["rollout/logprob_mismatch_max"] < 1e-3 for r in steps)


@pytest.mark.slow
def test_two_processes_sample_what_one_process_samples_through_the_engine(tmp_path):
    """Each process builds its own engine and samples its share with the completions' global
    seeds: the rollouts (scores, lengths) of 2 processes equal 1 process's, iteration by iteration."""
    keys = ("reward/score", "response_length", "no_stop_fraction")
    _, one, _ = _train(tmp_path / "one", "grpo_lora.yaml", "eval.enabled=false")
    out, two, _ = _train(tmp_path / "two", "grpo_lora.yaml", "eval.enabled=false", processes=2)
    assert "Traceback" not in out  # the engines' teardown comes before torch.distributed's
    one, two = ([{k: r[k] for k in keys} for r in rows if "reward/score" in r] for rows in (one, two))
    assert len(one) == 2 and one == two


@pytest.mark.slow
def test_bench_rollout_prints_its_ratio_line():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmarks" / "bench_rollout.py"), "--quick", "--repeats", "1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("rollout tokens/s vllm/hf: ") and float(last.split(": ")[1]) > 0
    assert "builtin:tiny-arith" in done.stdout and "8.72%" in done.stdout  # the sync against a full-weight sync
