"""The chat tasks of the real base, offline: chat arithmetic (seeded, disjoint splits, answers and
demonstrations that the verifier accepts), on-policy pairs (the ranking rule, the cache, the
build on a tiny local chat model with per-sample seeds, the pairs task the trainers read), the
recipe rule that a chat task needs `data.chat_template`, and SFT / DPO / GRPO steps of a tiny chat
model on these tasks.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_chat_tasks.py`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import pytest

from align.cli import TRAINERS
from align.config import ConfigError, load_recipe
from align.tasks import get_task, onpolicy_pairs
from align.tasks.arithmetic import extract_answer
from align.tasks.chat_arithmetic import chat_arithmetic_problems, chat_sft_rows, demonstration
from tests.helpers import tiny_bpe_llama

FAST = ["data.num_train=16", "data.num_eval=8", "train.steps=2", "optimizer.lr=0.01", "optimizer.warmup_steps=0",
        "tracking.wandb=false", "lora.rank=4", "train.threads=1", "train.log_every=1", "data.chat_template=true",
        "eval.num_prompts=4", "eval.max_new_tokens=4", "data.max_length=256"]


def test_chat_arithmetic_is_seeded_and_its_splits_are_disjoint():
    assert chat_arithmetic_problems("train", 50, 3) == chat_arithmetic_problems("train", 50, 3)
    assert chat_arithmetic_problems("train", 50, 3) != chat_arithmetic_problems("train", 50, 4)
    key = lambda p: (p["kind"], p["template"], p["operands"])  # noqa: E731
    train = {key(p) for p in chat_arithmetic_problems("train", 2000, 0)}
    held_out = {key(p) for p in chat_arithmetic_problems("eval", 500, 0)}
    assert train and held_out and not train & held_out
    assert {p["kind"] for p in chat_arithmetic_problems("train", 200, 0)} == {"sum", "difference", "product", "two_step"}


def test_answers_and_demonstrations_are_right():
    for problem in chat_arithmetic_problems("train", 300, 1):
        a, b, *rest = problem["operands"]
        expected = {"sum": a + b, "difference": a - b, "product": a * b}.get(problem["kind"])
        if expected is None:
            expected = a * b + rest[0] if problem["template"] == 0 else a * b - rest[0]
        assert problem["answer"] == expected and expected >= 0
        assert extract_answer(demonstration(problem)) == expected
        assert problem["prompt"].endswith("Answer with just the number.")
    task = get_task("chat_arithmetic")
    rows = chat_sft_rows("train", 4, 0)
    assert rows[0]["prompt"][0]["role"] == "user" and rows[0]["completion"][0]["role"] == "assistant"
    assert task.correct([r["completion"][0]["content"] for r in rows], [r["answer"] for r in rows]) == [True] * 4
    assert task.score(["q"], ["It is 7, no 8"], [8]) == [1.0] and task.score(["q"], ["8 or 7"], [8]) == [0.0]


def test_rank_samples_prefers_score_then_concision():
    assert onpolicy_pairs.rank_samples(["long right answer", "right", "wrong"], [1.0, 1.0, 0.0]) == (1, 2)
    assert onpolicy_pairs.rank_samples(["a", "bb"], [0.5, 0.5]) is None  # no verifier signal: no pair
    assert onpolicy_pairs.rank_samples(["x", "yy", "zzz"], [0.0, 0.5, 0.5]) == (1, 0)


def test_chat_task_needs_the_chat_template():
    with pytest.raises(ConfigError, match="data.chat_template"):
        load_recipe(None, ["data.task=chat_arithmetic"])
    with pytest.raises(ConfigError, match="data.chat_template"):
        load_recipe(None, ["method=dpo", "data.task=chat_arithmetic_pairs"])


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat-model") / "model"
    model, tokenizer = tiny_bpe_llama(tied=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def small_pairs(tiny_chat_model, tmp_path, monkeypatch):
    """chat_arithmetic_pairs redefined on the tiny chat model with a handful of prompts, built
    into a temporary $ALIGN_HOME; the verifier is made to prefer short answers so that a random
    model's samples rank at all (every answer of a random model is wrong)."""
    from align import build_pairs as build_pairs_module

    monkeypatch.setenv("ALIGN_HOME", str(tmp_path / "home"))
    source = dataclasses.replace(onpolicy_pairs.PAIR_SOURCES["chat_arithmetic_pairs"], model=tiny_chat_model,
                                 train_prompts=6, eval_prompts=3, samples_per_prompt=3, max_new_tokens=5, batch_size=4)
    monkeypatch.setitem(onpolicy_pairs.PAIR_SOURCES, "chat_arithmetic_pairs", source)
    task_class = type(get_task("chat_arithmetic"))
    monkeypatch.setattr(task_class, "score", lambda self, prompts, completions, answers: [-float(len(c)) for c in completions])
    lines: list[str] = []
    folder = build_pairs_module.build_pairs("chat_arithmetic_pairs", say=lines.append)
    return Path(folder), lines, build_pairs_module


def test_build_pairs_caches_trl_format_pairs_reproducibly(small_pairs):
    folder, lines, module = small_pairs
    assert lines[0].startswith("built chat_arithmetic_pairs:")
    info = json.loads((folder / "BUILD_INFO.json").read_text())
    assert info["stats"]["train"]["samples"] == 18 and info["stats"]["eval"]["samples"] == 9
    train = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    assert train and len(train) == info["stats"]["train"]["pairs"]
    for pair in train:
        assert pair["prompt"][0]["role"] == "user" and pair["chosen"][0]["role"] == "assistant"
        assert pair["chosen_score"] > pair["rejected_score"]
    assert module.build_pairs("chat_arithmetic_pairs", say=pytest.fail) == str(folder)  # cached: nothing sampled
    module.build_pairs("chat_arithmetic_pairs", force=True, say=lambda line: None)
    assert [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()] == train  # seeded
    rows = get_task("chat_arithmetic_pairs").preference_rows("train", 100)
    assert [r["chosen"] for r in rows] == [p["chosen"] for p in train]


def test_pairs_task_without_a_build_says_how(tmp_path, monkeypatch):
    from align.preflight import preflight

    monkeypatch.setenv("ALIGN_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="align build-pairs chat_arithmetic_pairs"):
        preflight(load_recipe(None, ["method=dpo", "data.task=chat_arithmetic_pairs", "data.chat_template=true"]))
    with pytest.raises(FileNotFoundError, match="align build-pairs chat_arithmetic_pairs"):
        get_task("chat_arithmetic_pairs").preference_rows("train", 4)


def _train(cfg):
    module_name, function_name = TRAINERS[cfg.method]
    run = getattr(importlib.import_module(module_name), function_name)(cfg)
    return Path(run.run_dir), json.loads((Path(run.run_dir) / "summary.json").read_text())


def test_sft_and_grpo_on_chat_arithmetic_with_a_chat_model(tiny_chat_model, tmp_path):
    for method in (["method=sft", "train.batch_size=4"],
                   ["method=grpo", "grpo.prompts_per_iteration=2", "grpo.group_size=2", "grpo.minibatch_size=4",
                    "rollout.max_new_tokens=4", "rollout.kl_coef=0"]):
        cfg = load_recipe(None, FAST + method + ["data.task=chat_arithmetic", f"model={tiny_chat_model}",
                                                 f"output_dir={tmp_path / method[0]}"])
        run_dir, summary = _train(cfg)
        assert "accuracy_sampled" in summary["eval_after"]
        samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
        assert samples and "Answer with just the number." in samples[0]["prompt"]


def test_dpo_on_onpolicy_pairs(small_pairs, tiny_chat_model, tmp_path):
    cfg = load_recipe(None, FAST + ["method=dpo", "train.batch_size=2", "data.task=chat_arithmetic_pairs",
                                    f"model={tiny_chat_model}", f"output_dir={tmp_path / 'dpo'}"])
    run_dir, summary = _train(cfg)
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
