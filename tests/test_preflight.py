"""User input that cannot work ends in one line, never a traceback (issue 9).

- PPO asks a prompt file for answers only when a configured reward reads them (`needs_answer`);
  with a learned reward, rows without answers train and evaluate with answer None;
- `preflight` (run first by every trainer) refuses, before anything is written or loaded, a model
  value that cannot load, a missing or wrong folder, a saved adapter or reward model of another
  base, and resume without a checkpoint, each as one ConfigError line naming key and path; the
  CLI prints it as `error: ...` with exit status 2;
- a policy's init adapter decides lora.rank/alpha/targets: taken when the recipe leaves them at
  their defaults (and recorded in config.yaml and summary.json), refused when they conflict.

Tiny models only (`scratch:test`, a 2-layer random init); a few seconds each.
Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_preflight.py`.
"""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
import yaml

from align.cli import main
from align.config import ConfigError, load_recipe
from align.data.loading import DataError
from align.models import load_model_and_tokenizer
from align.preflight import adapter_load_errors, preflight
from align.shared_base import SharedBase
from align.data.prompts import answer_readers, load_prompt_rows, parse_answer
from reward_models import (
    ArithmeticCorrectness, FormatReward, GoldPreferenceRule, LearnedReward, LengthPenalty, WeightedSum,
    reward_needs_answer,
)

PPO = [
    "method=ppo", "model=scratch:test", "lora.rank=4", "train.log_every=1", "train.steps=1", "optimizer.lr=0.01",
    "eval.enabled=false", "tracking.wandb=false", "ppo.rollout_batch_size=4", "ppo.minibatch_size=2",
    "rollout.max_new_tokens=4", "ppo.ppo_epochs=1",
]
DPO = [
    "method=dpo", "model=scratch:test", "data.task=preference", "data.num_train=16", "data.num_eval=8",
    "train.batch_size=4", "train.steps=1", "eval.enabled=false", "tracking.wandb=false",
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A reward-model run folder (`rm/reward/`: rank-4 adapter + head) and a policy adapter
    (rank 2, alpha 16, attention layers only), both on `scratch:test`."""
    root = tmp_path_factory.mktemp("saved")
    model, tokenizer = load_model_and_tokenizer("scratch:test")
    torch.manual_seed(0)
    base = SharedBase(model, tokenizer, mode="lora", lora={"rank": 4})
    base.add_reward()
    with torch.no_grad():
        for p in base.adapter_parameters("reward"):
            p.normal_(std=0.05)
    base.save_role("reward", root / "rm" / "reward")
    model, tokenizer = load_model_and_tokenizer("scratch:test")
    policy = SharedBase(model, tokenizer, mode="lora", lora={"rank": 2, "alpha": 16.0, "targets": "attention"})
    policy.add_policy()
    policy.save_role("policy", root / "sft" / "adapter")
    return root


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ---------------------------------------------------------------- 1. answers only where a reward reads them


def test_rewards_declare_whether_they_read_answers():
    assert reward_needs_answer(ArithmeticCorrectness()) and reward_needs_answer(GoldPreferenceRule())
    assert not reward_needs_answer(FormatReward()) and not reward_needs_answer(LengthPenalty(per_char=0.1))
    assert LearnedReward.needs_answer is False
    assert not reward_needs_answer(lambda prompts, completions, **m: None)  # undeclared: reads none
    assert not reward_needs_answer(WeightedSum([(1.0, FormatReward()), (0.5, LengthPenalty())]))
    assert reward_needs_answer(WeightedSum([(1.0, FormatReward()), (0.5, ArithmeticCorrectness())]))


def test_a_prompt_file_without_answers_is_refused_only_by_rewards_that_read_them(tmp_path):
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"prompt": f"Q: {a}+1=? A:"} for a in range(3)])
    base = PPO + ["data.task=null", f"data.train_file={prompts}"]

    def rows(*overrides):
        return load_prompt_rows(load_recipe(None, base + list(overrides)), "train")

    with pytest.raises(DataError) as err:
        rows("rollout.reward=arithmetic_correctness")
    message = str(err.value)  # the file, its first row (JSONL: "line 1"), the field and the reward
    assert message.startswith(f"{prompts}: ") and re.search(r": (line 1|row 0): field 'answer' is missing", message)
    assert "and rollout.reward 'arithmetic_correctness' needs an answer for every prompt" in message
    with pytest.raises(DataError, match="rollout.reward term 'arithmetic_correctness'"):
        rows("rollout.reward=1.0*format + 0.5*arithmetic_correctness")
    learned = ["rollout.reward=learned", "rollout.reward_model=rm"]  # the folder is only read when training
    with pytest.raises(DataError, match="rollout.gold_reward 'gold_preference' needs an answer"):
        rows(*learned, "rollout.gold_reward=gold_preference")
    with pytest.raises(DataError, match="field 'label' is missing"):
        rows("data.answer_field=label")
    assert answer_readers(load_recipe(None, base + learned)) == []
    assert rows(*learned) == [{"prompt": f"Q: {a}+1=? A:", "answer": None} for a in range(3)]
    assert [r["answer"] for r in rows("rollout.reward=1.0*format + 0.1*length_penalty")] == [None] * 3


@pytest.mark.parametrize("raw, problem", [
    ('"seven"', "must be an integer (or text ending in '#### 42'), got 'seven'; rollout.reward 'arithmetic_correctness' compares integer answers"),
    ("3.5", "must be an integer (or text ending in '#### 42'), got 3.5; rollout.reward 'arithmetic_correctness' compares"),
    ('"#### many"', "must be an integer (or text ending in '#### 42'), got '#### many'"),
    ("[3]", "must be an integer (or text ending in '#### 42'), got [3]"),
    ("1e400", ": an answer must be a finite number, got inf"),  # json reads 1e400 as inf
    ("NaN", ": an answer must be a finite number, got nan"),
    ("true", ": an answer must be a number or text, not a boolean"),
])
def test_answers_a_reward_compares_must_be_integers_when_the_file_loads(tmp_path, raw, problem):
    path = tmp_path / "prompts.jsonl"  # line 2 is blank: messages count the file's lines
    path.write_text('{"prompt": "Q: 1+2=? A:", "answer": 3}\n\n{"prompt": "Q: 2+2=? A:", "answer": ' + raw + "}\n")
    cfg = load_recipe(None, PPO + ["data.task=null", f"data.train_file={path}"])
    with pytest.raises(DataError) as err:
        load_prompt_rows(cfg, "train")
    message = str(err.value)
    assert message.startswith(f"{path}: line 3: field 'answer'") and problem in message, message
    assert "\n" not in message and (err.value.__context__ is None or err.value.__suppress_context__)


def test_answers_no_reward_reads_may_be_text(tmp_path):
    path = write_rows(tmp_path / "prompts.jsonl", [{"prompt": "Q: 1+2=? A:", "answer": "seven"},
                                                    {"prompt": "Q: 1+3=? A:", "answer": "#### 4.0"}])
    cfg = load_recipe(None, PPO + ["data.task=null", f"data.train_file={path}", "rollout.reward=format"])
    assert [r["answer"] for r in load_prompt_rows(cfg, "train")] == ["seven", "4.0"]
    with pytest.raises(ValueError, match="finite"):
        parse_answer(float("nan"))  # never an answer, whichever reward runs
    assert parse_answer(3.0) == 3 and parse_answer(" 12 ") == 12 and parse_answer("x #### -1,000") == -1000


def test_ppo_with_a_learned_reward_trains_and_evaluates_on_prompts_without_answers(tmp_path, saved):
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"prompt": f"Q: {a}+{a}=? A:"} for a in range(8)])
    from align.trainers.ppo import train_ppo

    cfg = load_recipe(None, PPO + [
        "data.task=null", f"data.train_file={prompts}", f"data.eval_file={prompts}", "eval.enabled=true",
        "eval.num_prompts=4", "eval.max_new_tokens=4", "rollout.reward=1.0*learned + 0.1*format",
        f"rollout.reward_model={saved / 'rm'}", f"output_dir={tmp_path / 'run'}",
    ])
    result = train_ppo(cfg)
    metrics = [json.loads(line) for line in open(os.path.join(result.run_dir, "metrics.jsonl"))]
    assert any("reward/learned" in row for row in metrics)
    assert set(result.summary["eval_after"]) >= {"reward_greedy", "reward_sampled"}


# ---------------------------------------------------------------- 2. paths and misfits, before loading


def test_what_a_recipe_says_is_checked_when_it_loads():
    with pytest.raises(ConfigError, match="rollout.gold_reward unknown reward 'gold_preferenc'"):
        load_recipe(None, PPO + ["rollout.gold_reward=gold_preferenc"])
    with pytest.raises(ConfigError, match="rollout.gold_reward must be a verifiable reward"):
        load_recipe(None, PPO + ["rollout.gold_reward=learned"])
    home = os.path.expanduser("~")
    with pytest.raises(ConfigError, match=f"data.train_file file not found: {re.escape(home)}/no-such-prompts.jsonl"):
        load_recipe(None, ["data.train_file=~/no-such-prompts.jsonl"])  # `~` is expanded once, for every loader
    assert load_recipe(None, ["output_dir=~/runs/x"]).output_dir == os.path.join(home, "runs/x")


@pytest.mark.parametrize("value, problem", [
    ("./models/my-sft", "does not exist"),
    ("../my-sft", "does not exist"),
    ("~/definitely-not-here-align-test", "does not exist"),
    ("runs/sft/adapterr", "does not exist"),
    ("my-models/", "does not exist"),
    ("my model", "is neither a local folder nor a valid hub id"),
    ("builtin:tiny-arithh", "unknown built-in base"),
    ("scratch:huge", "unknown scratch size"),
])
def test_model_values_that_cannot_load_are_refused_in_one_line(value, problem):
    with pytest.raises(ConfigError) as err:
        preflight(load_recipe(None, [f"model={value}"]))
    message = str(err.value)
    assert message.startswith("model: ") and problem in message and "\n" not in message
    assert value.lstrip("~") in message


def test_local_model_folders_must_hold_a_model(tmp_path, saved):
    (tmp_path / "weights.bin").write_text("")
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "weights.bin"): "is a file",
        str(tmp_path / "empty"): "has no config.json",
        str(saved / "sft" / "adapter"): "is a LoRA adapter, not a model: set model to its base",
    }
    for value, problem in cases.items():
        with pytest.raises(ConfigError, match=problem):
            preflight(load_recipe(None, [f"model={value}"]))


def test_a_hub_id_is_allowed_unless_offline_and_not_cached(monkeypatch):
    cfg = load_recipe(None, ["model=nobody-here/no-such-model-xyz"])
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    preflight(cfg)  # a user with a network downloads it when the model loads
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="neither a local folder nor in the local Hugging Face cache, and HF_HUB_OFFLINE=1"):
        preflight(cfg)


def test_missing_or_wrong_folders_name_their_key(tmp_path, saved):
    missing = tmp_path / "runs" / "rm_lora"
    learned = PPO + ["data.task=preference", "rollout.reward=learned"]
    cases = [
        (learned + [f"rollout.reward_model={missing}"], f"rollout.reward_model: {missing} does not exist"),
        (learned + [f"rollout.reward_model={saved / 'sft'}"], "is neither a reward-model run folder"),
        (learned + [f"rollout.reward_model={saved / 'rm'}", "mode=full"], "holds a lora-mode save, but the recipe runs mode: full"),
        (PPO + [f"rollout.init_adapter={missing}"], f"rollout.init_adapter: {missing} does not exist"),
        (DPO + [f"dpo.init_adapter={saved / 'sft'}"], f"has no adapter_config.json; did you mean {saved / 'sft' / 'adapter'}?"),
        (DPO + [f"dpo.init_adapter={saved / 'sft' / 'adapter' / 'adapter_config.json'}"], "is a file; dpo.init_adapter takes a folder"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError) as err:
            preflight(load_recipe(None, overrides))
        assert message in str(err.value)
    # data files are checked when the recipe loads (shipped recipes never name missing ones)
    with pytest.raises(ConfigError, match="data.train_file file not found: data/prompts/train.csv"):
        load_recipe(None, ["data.train_file=data/prompts/train.csv"])
    preflight(load_recipe(None, learned + [f"rollout.reward_model={saved / 'rm'}"]))  # a fitting one passes


def test_names_too_long_to_look_up_are_one_line_naming_their_key(tmp_path, saved):
    too_long = str(tmp_path / ("x" * 5000))  # the system refuses to look it up (File name too long)
    cases = [
        ([f"model={too_long}"], "model"),
        ([f"output_dir={too_long}"], "output_dir"),
        (DPO + [f"dpo.init_adapter={too_long}"], "dpo.init_adapter"),
        (PPO + ["data.task=preference", "rollout.reward=learned", f"rollout.reward_model={too_long}"], "rollout.reward_model"),
    ]
    for overrides, key in cases:
        with pytest.raises(ConfigError) as err:
            preflight(load_recipe(None, overrides))
        message = str(err.value)
        assert message.startswith(f"{key}: {too_long[:60]}... (") and message.endswith("is not a usable path (File name too long)")
        assert len(message) < 200 and err.value.__suppress_context__


def test_a_reward_model_of_another_base_stops_the_cli_before_anything_loads(tmp_path, saved, capsys):
    recipe = tmp_path / "ppo.yaml"
    run_dir = tmp_path / "run"
    recipe.write_text(yaml.safe_dump({"method": "ppo", "model": "scratch:tiny-arith", "data": {"task": "preference"},
                                      "rollout": {"reward": "learned", "reward_model": str(saved / "rm")},
                                      "output_dir": str(run_dir), "tracking": {"wandb": False}}))
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: rollout.reward_model: ")
    adapter_base = json.loads((saved / "rm" / "reward" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert f"trained on another base model ({adapter_base}) than the recipe's model (scratch:tiny-arith)" in err[0]
    assert not run_dir.exists()  # refused before the run folder (or the model) was made


@pytest.mark.filterwarnings("ignore:The PEFT config's `base_model_name_or_path` was renamed")
def test_load_errors_that_preflight_cannot_foresee_become_one_line(saved):
    model, tokenizer = load_model_and_tokenizer("scratch:tiny-arith")  # another width than the saved reward model
    base = SharedBase(model, tokenizer, mode="lora")
    from reward_models.learned import load_learned_reward

    with pytest.raises(ConfigError) as err:
        with adapter_load_errors("rollout.reward_model", str(saved / "rm")):
            load_learned_reward(saved / "rm", base)
    message = str(err.value)
    assert message.startswith(f"rollout.reward_model: {saved / 'rm'} cannot be loaded onto the recipe's model: ")
    assert "size mismatch" in message and "\n" not in message
    with pytest.raises(RuntimeError, match="out of memory"):  # not a loading problem: left alone
        with adapter_load_errors("rollout.reward_model", str(saved / "rm")):
            raise RuntimeError("CUDA out of memory")


def test_resume_without_a_checkpoint_fails_before_writing_anything(tmp_path):
    from align.trainers.dpo import train_dpo

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=f"resume: {empty} holds no checkpoint to resume"):
        train_dpo(load_recipe(None, DPO + [f"output_dir={empty}", "resume=true"]))
    assert sorted(p.name for p in empty.iterdir()) == ["notes.txt"]
    with pytest.raises(ConfigError, match="does not exist, so it holds no checkpoint"):
        train_dpo(load_recipe(None, DPO + [f"output_dir={tmp_path / 'nope'}", "resume=true"]))
    assert not (tmp_path / "nope").exists()
    (empty / "checkpoints").mkdir()
    with pytest.raises(ConfigError, match="already holds a run; pass resume=true"):
        train_dpo(load_recipe(None, DPO + [f"output_dir={empty}"]))


# ---------------------------------------------------------------- 3. an init adapter decides lora.*


def test_an_init_adapter_shape_is_taken_and_recorded_when_the_recipe_leaves_the_defaults(tmp_path, saved):
    from align.trainers.dpo import train_dpo

    result = train_dpo(load_recipe(None, DPO + [f"dpo.init_adapter={saved / 'sft' / 'adapter'}", f"output_dir={tmp_path / 'run'}"]))
    assert (result.summary["lora_rank"], result.summary["lora_targets"]) == (2, "attention")
    recorded = yaml.safe_load(open(os.path.join(result.run_dir, "config.yaml")))["lora"]
    assert (recorded["rank"], recorded["alpha"], recorded["targets"]) == (2, 16.0, "attention")
    trained = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert (trained["r"], trained["lora_alpha"]) == (2, 16.0)


def test_a_ppo_init_adapter_shape_is_the_runs_value_adapter_included(tmp_path, saved):
    from align.trainers.ppo import train_ppo

    result = train_ppo(load_recipe(None, [*PPO, "lora.rank=8",  # back at the default: the adapter's rank is taken
                                          "data.task=arithmetic", "data.num_train=8",
                                          f"rollout.init_adapter={saved / 'sft' / 'adapter'}", f"output_dir={tmp_path / 'run'}"]))
    assert (result.summary["lora_rank"], result.summary["lora_targets"]) == (2, "attention")
    value = json.loads((tmp_path / "run" / "value" / "adapter_config.json").read_text())
    assert value["r"] == 2  # the fresh value adapter takes the run's (the adapter's) shape


def test_an_init_adapter_with_rslora_scaling_makes_the_run_rslora(tmp_path):
    model, tokenizer = load_model_and_tokenizer("scratch:test")
    policy = SharedBase(model, tokenizer, mode="lora", lora={"rank": 4, "rslora": True})
    policy.add_policy()
    policy.save_role("policy", tmp_path / "adapter")
    cfg = preflight(load_recipe(None, DPO + [f"dpo.init_adapter={tmp_path / 'adapter'}"]))
    assert (cfg.lora.rank, cfg.lora.rslora) == (4, True)  # lora.rslora left at its default takes the adapter's


@pytest.mark.parametrize("override, adapter_value", [("lora.rank=4", 2), ("lora.alpha=8", 16.0), ("lora.targets=mlp", "'attention'")])
def test_an_init_adapter_that_conflicts_with_the_recipe_is_refused(tmp_path, saved, override, adapter_value):
    key, value = override.split("=")
    cfg = load_recipe(None, DPO + [f"dpo.init_adapter={saved / 'sft' / 'adapter'}", override])
    with pytest.raises(ConfigError) as err:
        preflight(cfg)
    assert f"dpo.init_adapter: the adapter in {saved / 'sft' / 'adapter'} has {key} {adapter_value}" in str(err.value)
    assert f"the recipe sets {key} " in str(err.value)
    # the same values as the adapter's are no conflict
    same = {"lora.rank": "2", "lora.alpha": "16", "lora.targets": "attention"}[key]
    preflight(load_recipe(None, DPO + [f"dpo.init_adapter={saved / 'sft' / 'adapter'}", f"{key}={same}"]))


def test_a_full_run_without_room_for_its_saves_stops_before_anything_is_written(tmp_path, monkeypatch):
    """mode=full: preflight measures the free space where the run will save against what it will
    save (checkpoints with AdamW state and the exported weights of each trained copy), so a full
    disk stops the run at its start with one line, not at its last save. LoRA runs are not checked."""
    import shutil
    from collections import namedtuple

    from align.preflight import full_run_save_bytes

    cfg = load_recipe(None, [*PPO, "mode=full", f"output_dir={tmp_path / 'run'}"])
    params = sum(p.numel() for p in load_model_and_tokenizer("scratch:test")[0].parameters())
    need = full_run_save_bytes(cfg, params)
    assert need == 2 * params * 16  # policy and critic, one checkpoint (saved at the end) and the export
    assert full_run_save_bytes(load_recipe(None, [*PPO, "mode=full", "train.steps=4", "train.save_every=1"]), params) == 2 * params * 40
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * need, 9 * need, need - 1))
    with pytest.raises(ConfigError, match=r"^output_dir: a mode=full ppo run of scratch:test saves up to .* GiB free"):
        preflight(cfg)
    assert not (tmp_path / "run").exists()
    preflight(load_recipe(None, [*PPO, f"output_dir={tmp_path / 'run'}"]))  # LoRA: a few MB, not checked
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * need, 9 * need, need))
    preflight(cfg)
