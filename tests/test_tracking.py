"""What the trainers hand to wandb, checked with a fake wandb module; and one real offline run.

The fake records wandb.init's arguments, define_metric, every log call, the run summary and the
objects logged (Table, Histogram, plot.bar). A short PPO, GRPO and DPO run on the tiny random
model (`scratch:test`, evaluation on) must give: namespaced scalars only (train/, rollout/,
reward/, eval/, memory/, time/), the two step metrics on every row, sample tables at every
evaluation (and every RL iteration) with typed rows, per-iteration histograms of rewards,
advantages and per-token KL for the RL trainers, and the memory breakdown as summary fields and
one bar chart. `tracking.wandb: false` never imports wandb into use; a wandb that fails to start
leaves the run going. Then one real offline wandb run must write its run files.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_tracking.py` (about 20 s).
"""

from __future__ import annotations

import importlib.machinery
import json
import math
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from align.config import load_recipe
from align.tracking import NAMESPACES, SAMPLE_COLUMNS, wandb_name

COMMON = ["model=scratch:test", "lora.rank=4", "train.log_every=1", "train.steps=2", "train.eval_every=1",
          "optimizer.lr=0.01", "optimizer.warmup_steps=0", "optimizer.schedule=constant", "train.threads=1",
          "eval.num_prompts=4", "eval.max_new_tokens=4", "tracking.samples=3", "tracking.group=g",
          "tracking.job_type=lora_r4", "tracking.run_name=lora_r4-lr1e-02-s0"]
PPO = ["method=ppo", "data.task=arithmetic", "data.num_train=64", "ppo.rollout_batch_size=8", "ppo.minibatch_size=4",
       "rollout.max_new_tokens=6", "ppo.ppo_epochs=1", "rollout.kl_coef=0.1"]
GRPO = ["method=grpo", "data.task=arithmetic", "data.num_train=64", "rollout.max_new_tokens=6", "rollout.kl_coef=0.05",
        "grpo.prompts_per_iteration=4", "grpo.group_size=4", "grpo.minibatch_size=8", "grpo.epochs=2"]
DPO = ["method=dpo", "data.task=preference", "data.num_train=64", "data.num_eval=16", "train.batch_size=8"]


# ---- the fake wandb -----------------------------------------------------------------------------

class FakeTable:
    def __init__(self, columns, data):
        self.columns, self.data = list(columns), [list(r) for r in data]


class FakeHistogram:
    def __init__(self, values):
        self.values = np.asarray(values)


class FakeChart:
    def __init__(self, table, label, value, title=None):
        self.table, self.label, self.value, self.title = table, label, value, title


class FakeRun:
    def __init__(self, record, **kwargs):
        self.record = record
        record["init"] = kwargs
        record["define_metric"], record["logs"], record["summary"] = [], [], {}
        self.summary = record["summary"]

    def define_metric(self, name, step_metric=None, **_):
        self.record["define_metric"].append((name, step_metric))

    def log(self, data, step=None):
        self.record["logs"].append((step, dict(data)))

    def finish(self):
        self.record["finished"] = True


def fake_wandb(record: dict, fail: bool = False) -> types.ModuleType:
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)  # accelerate looks wandb up

    def init(**kwargs):
        if fail:
            raise RuntimeError("not logged in and no network")
        return FakeRun(record, **kwargs)

    module.init, module.Table, module.Histogram = init, FakeTable, FakeHistogram
    module.plot = types.SimpleNamespace(bar=lambda table, label, value, title=None: FakeChart(table, label, value, title))
    return module


def run_with_fake(monkeypatch, tmp_path, name, overrides, fail=False):
    from align.cli import _train

    record: dict = {}
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(record, fail))
    out = tmp_path / name
    cfg_overrides = [*COMMON, *overrides, f"output_dir={out}", "tracking.wandb=true"]
    args = types.SimpleNamespace(recipe=None, overrides=cfg_overrides)
    assert Path(_train(args)) == out
    return record, out


def scalar_logs(record):
    for step, data in record["logs"]:
        for key, value in data.items():
            if not isinstance(value, (FakeTable, FakeHistogram, FakeChart)):
                yield step, key, value


def check_common(record, out, samples_per_step):
    init = record["init"]
    assert init["group"] == "g" and init["job_type"] == "lora_r4" and init["name"] == "lora_r4-lr1e-02-s0"
    assert init["mode"] == "disabled"  # conftest's WANDB_MODE: the user's setting wins
    assert init["config"]["method"] and init["dir"] == str(out)
    defined = dict(record["define_metric"])
    assert "train/step" in defined and "train/samples_seen" in defined
    for namespace in NAMESPACES:
        assert defined[f"{namespace}/*"] in ("train/step", "train/samples_seen")
    # every scalar is namespaced and a plain finite number; the step metrics ride on every row
    for step, key, value in scalar_logs(record):
        assert key.split("/", 1)[0] in NAMESPACES, key
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value), (key, value)
    for step, data in record["logs"]:
        if "memory/breakdown" in data:
            continue
        assert data["train/step"] == step and data["train/samples_seen"] == step * samples_per_step
    # eval tables: before training (0), after each step (eval_every=1): typed rows, 3 each
    eval_tables = {step: data["eval/samples"] for step, data in record["logs"] if "eval/samples" in data}
    assert sorted(eval_tables) == [0, 1, 2]
    for table in eval_tables.values():
        check_table(table)
    # the memory picture: summary fields and one bar chart
    summary = record["summary"]
    charts = [data["memory/breakdown"] for _, data in record["logs"] if "memory/breakdown" in data]
    assert len(charts) == 1 and isinstance(charts[0], FakeChart)
    parts = {row[0]: row[1] for row in charts[0].table.data}
    assert parts["base"] > 0 and parts["policy"] > 0 and all(isinstance(v, float) for v in parts.values())
    for key in ("memory/base_weights_bytes", "memory/adapter_weights_bytes", "memory/optimizer_state_bytes",
                "memory/role/base_bytes", "memory/role/policy_bytes", "memory/peak_bytes"):
        assert isinstance(summary[key], float) and summary[key] >= 0, key
    assert summary["memory/role/total_bytes"] == summary["memory/total_bytes"]  # the same bytes, split two ways
    assert "eval_after/accuracy_sampled" in summary and record["finished"]
    # the same samples in the run directory, for `align report`
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {(r["kind"], r["step"]) for r in rows if r["kind"] == "eval"} == {("eval", 0), ("eval", 1), ("eval", 2)}
    assert set(json.loads((out / "summary.json").read_text())["time_split_s"]) == {"setup", "training", "evaluation", "finishing"}
    return summary


def check_table(table):
    assert isinstance(table, FakeTable) and table.columns == SAMPLE_COLUMNS and len(table.data) == 3
    for step, prompt, response, reward, gold, length, stopped in table.data:
        assert isinstance(step, int) and isinstance(prompt, str) and isinstance(response, str)
        assert reward is None or isinstance(reward, float)
        assert gold is None or isinstance(gold, float)
        assert isinstance(length, int) and isinstance(stopped, bool)


def check_rl(record, advantage_per_token: bool):
    for step in (1, 2):
        data = {k: v for s, d in record["logs"] if s == step for k, v in d.items()}
        check_table(data["rollout/samples"])
        for key in ("rollout/hist/reward", "rollout/hist/advantage", "rollout/hist/kl_per_token"):
            assert isinstance(data[key], FakeHistogram) and data[key].values.size > 0, key
            assert np.isfinite(data[key].values).all()
        for key in ("reward/score", "rollout/kl", "rollout/entropy", "time/rollout", "time/update", "memory/peak_bytes"):
            assert key in data, key
    # PPO: advantages per response token (more values than completions); GRPO: one per completion
    data = {k: v for s, d in record["logs"] if s == 1 for k, v in d.items()}
    n_rewards, n_advantages = data["rollout/hist/reward"].values.size, data["rollout/hist/advantage"].values.size
    assert (n_advantages > n_rewards) if advantage_per_token else (n_advantages == n_rewards)


def test_wandb_names():
    assert wandb_name("loss") == "train/loss" and wandb_name("loss/policy") == "train/loss/policy"
    assert wandb_name("eval/accuracy_sampled") == "eval/accuracy_sampled" and wandb_name("reward/score") == "reward/score"
    assert wandb_name("time/rollout") == "time/rollout" and wandb_name("kl") == "rollout/kl"
    assert wandb_name("peak_memory_bytes") == "memory/peak_bytes" and wandb_name("rewards/margins") == "train/rewards/margins"
    assert wandb_name("skipped/too_long") == "train/skipped/too_long" and wandb_name("tokens_per_s") == "time/tokens_per_s"


def test_ppo_hands_wandb_every_key(monkeypatch, tmp_path):
    record, out = run_with_fake(monkeypatch, tmp_path, "ppo", PPO)
    summary = check_common(record, out, samples_per_step=8)
    check_rl(record, advantage_per_token=True)
    assert summary["memory/role/value_bytes"] > 0
    for key in ("train/loss/policy", "train/loss/value", "train/grad_norm", "train/lr", "rollout/kl_coef"):
        assert any(k == key for _, k, _ in scalar_logs(record)), key


def test_grpo_hands_wandb_every_key(monkeypatch, tmp_path):
    record, out = run_with_fake(monkeypatch, tmp_path, "grpo", GRPO)
    check_common(record, out, samples_per_step=16)
    check_rl(record, advantage_per_token=False)


def test_dpo_hands_wandb_every_key(monkeypatch, tmp_path):
    record, out = run_with_fake(monkeypatch, tmp_path, "dpo", DPO)
    check_common(record, out, samples_per_step=8)
    keys = {k for _, k, _ in scalar_logs(record)}
    assert {"train/loss", "train/rewards/margins", "eval/pairs/rewards/accuracies", "time/tokens_per_s"} <= keys
    assert not any(k.startswith("rollout/") for k in keys)  # no rollouts in DPO


def test_wandb_off_or_failing_never_stops_a_run(monkeypatch, tmp_path, capsys):
    from align.cli import _train

    record: dict = {}
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(record))
    args = types.SimpleNamespace(recipe=None, overrides=[*COMMON, *PPO, "train.steps=1", "tracking.wandb=false",
                                                         f"output_dir={tmp_path / 'off'}"])
    _train(args)
    assert record == {}  # wandb.init never called
    record, out = run_with_fake(monkeypatch, tmp_path, "failing", [*PPO, "train.steps=1"], fail=True)
    assert "warning: wandb did not start" in capsys.readouterr().err
    assert (out / "summary.json").exists() and (out / "samples.jsonl").exists()


@pytest.mark.slow
def test_real_offline_wandb_run_writes_its_files(monkeypatch, tmp_path):
    """The real wandb, offline (no login, no network): the run's files are written."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    from align.cli import _train

    out = tmp_path / "offline"
    args = types.SimpleNamespace(recipe=None, overrides=[*COMMON, *PPO, "train.steps=1", "tracking.wandb=true",
                                                         f"output_dir={out}"])
    _train(args)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (log,) = runs[0].glob("run-*.wandb")  # what `wandb sync` uploads later
    for _ in range(100):  # wandb's writer may still be flushing for a moment after finish()
        if log.stat().st_size > 1000:
            break
        time.sleep(0.1)
    assert log.stat().st_size > 1000
    media = runs[0] / "files" / "media" / "table"
    for name in ("eval/samples_0_", "rollout/samples_1_", "memory/breakdown_table_"):
        (table,) = media.glob(name + "*.table.json")
        assert json.loads(table.read_text())["data"], name
    assert json.loads(next(media.glob("eval/samples_0_*")).read_text())["columns"] == SAMPLE_COLUMNS
    assert (out / "metrics.jsonl").exists() and (out / "summary.json").exists()
