"""The memorisation task `facts` and the capacity study of the atlas (scripts/studies/atlas_capacity.py).

Facts: determinism, distinct keys, the built-in tokenizer's round trip, bits per fact against a
hand computation (a model with a zero LM head predicts the uniform distribution, so every target
token costs exactly log2(vocab) bits) and against a direct full-logits computation, exact recall,
the config's `data.num_facts`. The study: its shape (sizes x4, the smallest fitting rank 1, the
largest far past it), and its smoke run (the smallest configurations, 3 steps on scratch:test)
end to end with the capacity table and plot.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_facts_task.py`.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from align.config import ConfigError, load_recipe
from align.tasks import FactsTask, get_task, task_for
from align.memorisation import memorisation_metrics
from align.tasks.facts import CONTENT_BITS, WORLD, FactsWorld, fact_prompts, fact_rows, facts, is_recalled

# the `tokenizer` and `tiny_model` fixtures (the built-in tokenizer, a random tiny Llama) are conftest's


# ---------------------------------------------------------------- the facts


def test_facts_are_deterministic_distinct_and_nested():
    a = facts(256)
    assert a == facts(256) and len(a) == 256
    assert len({key for key, _ in a}) == 256  # keys unique
    assert facts(64) == a[:64]  # a sweep over N grows one set of facts
    assert all(len(k) == WORLD.key_digits and len(v) == WORLD.value_digits and (k + v).isdigit() for k, v in a)
    assert facts(64, FactsWorld(seed=1)) != facts(64)
    assert len({v for _, v in a}) > 250  # values are random, not a function of the position
    assert CONTENT_BITS == pytest.approx(WORLD.value_digits * math.log2(10)) == pytest.approx(39.863, abs=1e-3)
    with pytest.raises(ValueError, match="at least 1"):
        facts(0)
    with pytest.raises(ValueError, match="keys"):
        facts(11, FactsWorld(key_digits=1))


def test_task_rows_every_split_is_all_facts():
    task = FactsTask(num_facts=20)
    train, eval_ = task.sft_rows("train", 5, seed=3), task.sft_rows("eval", 999, seed=7)
    assert train == eval_ == fact_rows(20) and len(train) == 20  # memorisation: train = eval = all N facts
    assert train[0] == {"prompt": f"K:{facts(20)[0][0]}=? A: ", "completion": facts(20)[0][1]}
    prompts = task.prompts("eval", 8)
    assert prompts == fact_prompts(20, 8) and [p["answer"] for p in prompts] == [v for _, v in facts(8)]
    assert len(task.prompts("train", 100)) == 20  # no repeats past N
    with pytest.raises(ValueError, match="no preference pairs"):
        task.preference_rows("train", 4)
    with pytest.raises(ValueError, match="no pretraining corpus"):
        task.pretrain_corpus(4)


def test_tokenizer_round_trip_has_no_unknown_tokens(tokenizer):
    from align.data.loading import encode_completion, encode_prompt

    for row in fact_rows(64):
        text = row["prompt"] + row["completion"]
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert len(ids) == 1 + len(text)  # BOS + one token per character
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
        prompt_ids, completion_ids = encode_prompt(tokenizer, row["prompt"]), encode_completion(tokenizer, row["completion"])
        assert prompt_ids + completion_ids[:-1] == ids and completion_ids[-1] == tokenizer.eos_token_id
        assert len(completion_ids) == WORLD.value_digits + 1  # the value and EOS: the bits per fact count these


def test_exact_recall_scoring():
    assert is_recalled("012345678901", "012345678901") and is_recalled(" 012345678901 ", "012345678901")
    assert not is_recalled("12345678901", "012345678901")  # a leading zero is a digit of the value
    assert not is_recalled("0123456789012", "012345678901") and not is_recalled("012345678901 K", "012345678901")
    task = get_task("facts")
    answers = ["000000000001", "999999999999"]
    assert task.correct(["000000000001", "999999999998"], answers) == [True, False]
    assert task.score(["p", "q"], ["000000000001", "999999999998"], answers) == [1.0, 0.0]


# ---------------------------------------------------------------- bits per fact


def test_bits_per_fact_of_a_uniform_model_is_the_hand_computation(tiny_model, tokenizer):
    # A zero LM head gives every token logit 0: p = 1 / V for each of the value_digits + 1 target
    # tokens (the value and EOS), so a fact costs (value_digits + 1) * log2(V) bits exactly.
    model = type(tiny_model)(tiny_model.config).eval()
    model.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        model.lm_head.weight.zero_()
    vocab = model.config.vocab_size
    metrics = memorisation_metrics(model, tokenizer, 10, batch_size=4)
    assert metrics["bits_per_fact"] == pytest.approx((WORLD.value_digits + 1) * math.log2(vocab), rel=1e-5)
    assert metrics["recall"] == 0.0  # greedy picks token 0 (<pad>) on a tie, never the value


def test_bits_per_fact_matches_a_direct_full_logits_computation(tiny_model, tokenizer):
    rows = fact_rows(6)
    total_bits = 0.0
    for row in rows:
        prompt = tokenizer(row["prompt"])["input_ids"]
        completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(input_ids=ids).logits[0].double(), -1)
        # token t is predicted at position t - 1
        total_bits -= sum(float(logp[len(prompt) + i - 1, tok]) for i, tok in enumerate(completion)) / math.log(2)
    metrics = memorisation_metrics(tiny_model, tokenizer, 6, batch_size=4)  # batches of 4 and 2: padding too
    assert metrics["bits_per_fact"] == pytest.approx(total_bits / len(rows), rel=1e-4)


def test_evaluation_reports_bits_and_recall_on_all_facts(tiny_model, tokenizer):
    from align.evaluation import evaluate_task

    metrics = evaluate_task(tiny_model, tokenizer, FactsTask(num_facts=12), n=4, max_new_tokens=4)
    assert {"bits_per_fact", "recall", "accuracy_greedy", "accuracy_sampled"} <= set(metrics)
    assert metrics["bits_per_fact"] == pytest.approx(memorisation_metrics(tiny_model, tokenizer, 12)["bits_per_fact"])


# ---------------------------------------------------------------- recipes


def test_config_num_facts_is_validated_and_reaches_the_task(tokenizer):
    cfg = load_recipe("recipes/sft_lora.yaml", ["data.task=facts", "data.num_facts=48"])
    task = task_for(cfg.data)
    assert isinstance(task, FactsTask) and task.num_facts == 48
    assert task_for(SimpleNamespace(task="arithmetic")).name == "arithmetic"
    for bad in ("0", "-3"):
        with pytest.raises(ConfigError, match="data.num_facts must be at least 1"):
            load_recipe("recipes/sft_lora.yaml", ["data.task=facts", f"data.num_facts={bad}"])

    from align.data.loading import SkipCounter, load_examples

    train = load_examples(cfg.data, tokenizer, "sft", "train", 0, SkipCounter())
    evaluation = load_examples(cfg.data, tokenizer, "sft", "eval", 1, SkipCounter())
    assert len(train) == len(evaluation) == 48
    with pytest.raises(ValueError, match="no preference pairs"):
        load_examples(cfg.data, tokenizer, "pairs", "train", 0, SkipCounter())


# ---------------------------------------------------------------- the capacity study


def _capacity_module(repo):
    sys.path.insert(0, str(repo / "scripts" / "studies"))
    try:
        return importlib.import_module("atlas_capacity")
    finally:
        sys.path.remove(str(repo / "scripts" / "studies"))


def test_capacity_study_is_well_formed(repo):
    cap = _capacity_module(repo)
    study = cap.STUDIES["capacity"]
    assert len(cap.SIZES) >= 4 and all(b == 4 * a for a, b in zip(cap.SIZES, cap.SIZES[1:]))
    names = {c.name for c in study.configurations}
    assert names == set(cap.POINTS) and {f"lora_r{r}_n{n}" for r in (1, 4, 8) for n in cap.SIZES} <= names
    assert study.metric == "bits_per_fact" and study.higher_is_better is False
    rank1 = 2 * (4 * 256 + 3 * 640)  # rank-1 adapter on all layers of the built-in base (2 layers)
    assert cap.SIZES[0] * CONTENT_BITS / rank1 < 0.25  # the smallest N fits every rank easily ...
    assert cap.SIZES[-1] * CONTENT_BITS / rank1 > 3 * 2.0  # ... the largest is > 3x rank 1's ~2 bits/param
    for config in study.configurations:
        assert config.lrs == sorted(config.lrs) and 2 <= len(config.lrs) <= 3
        cfg = load_recipe(repo / study.recipe, [*study.overrides, *config.overrides])  # every key and value is valid
        assert cfg.data.task == "facts" and cfg.train.steps == cap.steps_for(cfg.data.num_facts) and not cfg.optimizer.lr_rule
        load_recipe(repo / study.recipe, [*study.overrides, *config.overrides, *study.smoke_overrides])
    runs, steps, low, high = cap.estimate(study, study.seeds)
    assert runs == sum(len(c.lrs) for c in study.configurations) and high <= 45


def test_departures_use_the_margin(repo):
    cap_rows = [
        {"series": "full", "facts": n, "bits_per_fact": b, "bits_std": 0.0, "trainable_parameters": 1000,
         "content_bits_per_parameter": n * 40 / 1000} for n, b in ((16, 0.1), (64, 0.2), (256, 5.0))
    ] + [
        {"series": "lora_r1", "facts": n, "bits_per_fact": b, "bits_std": s, "trainable_parameters": 100,
         "content_bits_per_parameter": n * 40 / 100} for n, b, s in ((16, 0.9, 0.0), (64, 1.0, 0.5), (256, 30.0, 0.0))
    ]
    (dep,) = _capacity_module(repo).departures(cap_rows)
    # 16: +0.8 < 1 bit; 64: +0.8 < max(1, 2 x 0.5); 256: +25 -> departs
    assert dep["holds_to_facts"] == 64 and dep["holds_to_bits_per_parameter"] == pytest.approx(64 * 40 / 100)
    assert dep["departs_at_facts"] == 256 and dep["departs_at_bits_per_parameter"] == pytest.approx(256 * 40 / 100)
    assert dep["gap_bits_per_fact"] == pytest.approx(25.0)


@pytest.mark.slow
def test_capacity_smoke_runs_and_draws(tmp_path, repo):
    out, runs = tmp_path / "out", tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "scripts/studies/atlas_capacity.py", "--smoke", "--runs-dir", str(runs), "--out", str(out)],
        cwd=repo, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for name in ("capacity.md", "capacity.csv", "capacity.json", "capacity.png"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(out / "capacity.csv")))
    assert [r["configuration"] for r in rows] == ["full_n16", "lora_r1_n16"]
    assert int(rows[0]["trainable_parameters"]) > int(rows[1]["trainable_parameters"]) > 0
    summary = json.loads(next(runs.glob("lora_r1_n16-*/summary.json")).read_text())
    assert summary["steps"] == 3 and summary["model"] == "scratch:test"
    assert {"bits_per_fact", "recall"} <= set(summary["eval_after"])
    data = json.loads((out / "capacity.json").read_text())
    assert [d["series"] for d in data["departures"]] == ["lora_r1"]
    assert "departs" in (out / "capacity.md").read_text()
