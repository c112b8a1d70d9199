"""Reward-model trainer and LearnedReward on a tiny random model (`scratch:test`).

What trains and what must not, the saved role round trip onto a FRESH SharedBase, the
`RewardFunction` interface, full mode on the same code, bad preference rows through the trainer,
exact resume and accumulation invariance, and the recipe as a user runs it. A few steps each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from align.config import load_recipe
from align.data.batching import collate_pairs
from align.data.loading import DataError, SkipCounter, load_examples
from align.models import load_model_and_tokenizer
from align.shared_base import SharedBase
from align.trainers.reward import train_reward
from reward_models import LearnedReward, RewardFunction, build_reward, load_learned_reward
from tests.helpers import crash_after_checkpoint

FAST = [
    "method=reward", "model=scratch:test", "data.task=preference", "data.num_train=64", "data.num_eval=32",
    "train.batch_size=8", "train.log_every=1", "optimizer.lr=0.01", "optimizer.warmup_steps=0",
    "eval.enabled=false", "tracking.wandb=false", "lora.rank=4",
]
PROMPTS = ["Q: 23+45=? A:", "Q: 9-4=? A:", "Q: 23+45=? A:"]
COMPLETIONS = [" 68", " um so it is 5", " 12"]


def run(tmp_path, name, *overrides):
    return train_reward(load_recipe(None, FAST + [f"output_dir={tmp_path / name}", *overrides]))


def metric_rows(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]


def losses(run_dir):
    return [r["loss"] for r in metric_rows(run_dir) if "loss" in r]


def eval_scores(base: SharedBase, tokenizer, n: int = 16) -> torch.Tensor:
    cfg = load_recipe(None, FAST)
    pairs = load_examples(cfg.data, tokenizer, "pairs", "eval", 0, SkipCounter())[:n]
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    with torch.no_grad():
        return base.scores("reward", batch["input_ids"], batch["attention_mask"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short LoRA reward-model run, shared by the tests that only read it."""
    return run(tmp_path_factory.mktemp("rm"), "lora", "train.steps=6", "train.eval_every=3")


def test_bradley_terry_trains_only_the_reward_adapter_and_head(trained):
    fresh, _ = load_model_and_tokenizer("scratch:test")
    before = fresh.state_dict()
    base: SharedBase = trained.model
    after = {k.replace(".base_layer", ""): v for k, v in base.model.state_dict().items() if "lora_" not in k}
    assert set(after) == set(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), f"base weight {key} changed"
    lora_b = [v for k, v in base.model.state_dict().items() if "lora_B.reward" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero, so it trained
    assert base.roles == ["reward"]
    assert {id(p) for p in base.trainable_parameters("reward")} == {
        id(p) for p in base.adapter_parameters("reward") + list(base.head("reward").parameters())
    }
    summary = trained.summary
    assert summary["method"] == "reward" and summary["mode"] == "lora"
    # the loss went down over six steps at this learning rate, and held-out pairs were scored
    assert summary["eval_after"]["pairs/loss"] < summary["eval_before"]["pairs/loss"]
    assert 0.0 <= summary["pairwise_accuracy_before"] <= 1.0 and 0.0 <= summary["pairwise_accuracy_after"] <= 1.0


def test_metrics_summary_and_memory_report(trained):
    rows = metric_rows(trained.run_dir)
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 6 and {"accuracy", "margin", "lr", "grad_norm", "tokens_per_s"} <= set(steps[0])
    assert [r["step"] for r in rows if "eval/pairs/accuracy" in r] == [0, 3, 6]  # before, eval_every, end
    memory = [r for r in rows if "memory/total" in r]
    assert memory and memory[-1]["memory/gradients"] > 0 and memory[-1]["memory/optimizer_state"] > 0
    summary = json.load(open(os.path.join(trained.run_dir, "summary.json")))
    mem = summary["memory_bytes"]
    for key in ("base_weights", "adapter_weights", "heads", "gradients", "optimizer_state", "total", "peak_measured"):
        assert mem[key] > 0, key
    # LoRA: adapters + head are small next to the frozen base, and Adam keeps two moments of them
    assert mem["adapter_weights"] < mem["base_weights"]
    assert mem["optimizer_state"] >= 2 * (mem["adapter_weights"] + mem["heads"])
    for name in ("reward/adapter_config.json", "reward/adapter_model.safetensors", "reward/head.safetensors", "config.yaml"):
        assert os.path.exists(os.path.join(trained.run_dir, name)), name


def test_saved_reward_role_round_trips_onto_a_fresh_shared_base(trained):
    model, tokenizer = load_model_and_tokenizer("scratch:test")
    fresh = SharedBase(model, tokenizer, mode="lora")
    reward = load_learned_reward(trained.run_dir, fresh)  # a run directory is accepted ...
    assert not fresh.is_trainable("reward")
    assert torch.equal(eval_scores(fresh, tokenizer), eval_scores(trained.model, tokenizer))
    model2, _ = load_model_and_tokenizer("scratch:test")
    other = SharedBase(model2, tokenizer, mode="lora")
    load_learned_reward(os.path.join(trained.run_dir, "reward"), other)  # ... and so is the role dir
    assert reward(PROMPTS, COMPLETIONS).scores == LearnedReward(other)(PROMPTS, COMPLETIONS).scores
    # the adapter is plain peft: PeftModel.from_pretrained loads it
    from peft import PeftModel

    PeftModel.from_pretrained(load_model_and_tokenizer("scratch:test")[0], os.path.join(trained.run_dir, "reward"))
    with pytest.raises(FileNotFoundError, match="reward-model run directory"):
        load_learned_reward(os.path.join(trained.run_dir, "checkpoints"), fresh)
    with pytest.raises(ValueError, match="lora-mode reward model"):
        load_learned_reward(trained.run_dir, SharedBase(load_model_and_tokenizer("scratch:test")[0], tokenizer, mode="full"))


def test_learned_reward_interface_on_hand_examples(trained):
    model, tokenizer = load_model_and_tokenizer("scratch:test")
    base = SharedBase(model, tokenizer, mode="lora")
    reward = load_learned_reward(trained.run_dir, base, batch_size=2)
    assert isinstance(reward, RewardFunction) and reward.name == "learned"
    out = reward(PROMPTS, COMPLETIONS, answers=[68, 5, 68])
    assert len(out.scores) == 3 and all(isinstance(s, float) for s in out.scores)
    assert out.scores == reward(PROMPTS, COMPLETIONS).scores  # deterministic
    assert out.scores[0] == reward(PROMPTS[:1], COMPLETIONS[:1]).scores[0]  # batch composition does not matter
    assert out.scores[0] != out.scores[1]
    # the same as scoring the project's token convention by hand: prompt ids + completion ids + EOS
    ids = tokenizer(PROMPTS[1])["input_ids"] + tokenizer(COMPLETIONS[1], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert reward.encode(PROMPTS[1], COMPLETIONS[1]) == (ids, len(tokenizer(PROMPTS[1])["input_ids"]))
    by_hand = base.scores("reward", torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    assert out.scores[1] == pytest.approx(float(by_hand), abs=1e-6)
    assert out.info["reward_tokens"][1] == len(ids)
    assert build_reward({"name": "learned", "shared_base": base})(PROMPTS, COMPLETIONS).scores == pytest.approx(out.scores, abs=1e-6)
    with pytest.raises(ValueError, match="completions"):
        reward(PROMPTS, COMPLETIONS[:2])
    with pytest.raises(KeyError, match="no 'reward' role"):
        LearnedReward(SharedBase(load_model_and_tokenizer("scratch:test")[0], tokenizer))


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_logprob_readout_trains_and_scores_through_learned_reward(tmp_path, mode):
    result = run(tmp_path, mode, f"mode={mode}", "reward.readout=last_token+logprob", "train.steps=3")
    head = result.model.head("reward")
    assert head.readout == "last_token+logprob" and head.logprob_weight.abs().sum() > 0  # it trained from 0
    assert result.summary["pairwise_accuracy_after"] is not None

    model, tokenizer = load_model_and_tokenizer("scratch:test")
    base = SharedBase(model, tokenizer, mode=mode)
    reward = load_learned_reward(result.run_dir, base, batch_size=2)
    assert base.head("reward").readout == "last_token+logprob"
    out = reward(PROMPTS, COMPLETIONS)
    assert out.scores[2] == pytest.approx(reward(PROMPTS[2:], COMPLETIONS[2:]).scores[0], abs=1e-5)  # batching
    # by hand: the completion (EOS included) is what follows the prompt's tokens
    ids, n_prompt = reward.encode(PROMPTS[1], COMPLETIONS[1])
    completion = torch.tensor([[0] * n_prompt + [1] * (len(ids) - n_prompt)])
    ids_BT, mask_BT = torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)
    by_hand = base.scores("reward", ids_BT, mask_BT, completion)
    assert out.scores[1] == pytest.approx(float(by_hand), abs=1e-5)
    with pytest.raises(ValueError, match="completion_mask"):
        reward.score_ids([ids])  # no prompt lengths: the log-prob readout cannot know the completion


def test_full_mode_runs_the_same_code_and_round_trips(tmp_path):
    result = run(tmp_path, "full", "mode=full", "train.steps=2")
    base: SharedBase = result.model
    assert result.summary["mode"] == "full" and result.summary["lora_rank"] is None
    assert os.path.exists(os.path.join(result.run_dir, "reward", "model.safetensors"))
    fresh, _ = load_model_and_tokenizer("scratch:test")
    trained_copy = base.role_model("reward").state_dict()
    changed = [k for k, v in fresh.state_dict().items() if not torch.equal(trained_copy[k], v)]
    assert changed and all(torch.equal(v, fresh.state_dict()[k]) for k, v in base.model.state_dict().items())
    mem = result.summary["memory_bytes"]
    assert mem["adapter_weights"] == 0 and mem["gradients"] > 0
    model, tokenizer = load_model_and_tokenizer("scratch:test")
    other = SharedBase(model, tokenizer, mode="full")
    load_learned_reward(result.run_dir, other)
    assert torch.equal(eval_scores(other, tokenizer), eval_scores(base, tokenizer))


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


GOOD = [
    {"prompt": "Q: 1+2=? A:", "chosen": " 3", "rejected": " 4"},
    {"prompt": "Q: 5+5=? A:", "chosen": " 10", "rejected": " so it is 10"},
    {"prompt": "Q: 7-2=? A:", "chosen": " 5", "rejected": " 6"},
]


def test_bad_preference_rows_error_or_are_counted(tmp_path):
    rows = GOOD[:1] + [{"prompt": "Q: 2+2=? A:", "chosen": " 4", "rejected": " 4"}] + GOOD[1:]
    train_file = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    eval_file = _write_jsonl(tmp_path / "eval.jsonl", GOOD)
    files = [f"data.train_file={train_file}", f"data.eval_file={eval_file}", "data.task=null", "train.batch_size=2", "train.steps=2"]
    with pytest.raises(DataError, match=r"pairs\.jsonl: line 2: field 'rejected' is identical"):
        run(tmp_path, "error", *files)
    result = run(tmp_path, "skip", *files, "data.bad_rows=skip")
    assert result.summary["skipped_rows"] == 1 and result.summary["skipped"] == {"skipped/identical_pair": 1}
    assert all(r["skipped/identical_pair"] == 1 for r in metric_rows(result.run_dir) if "loss" in r)
    # through the command line: one line naming file, row and field, exit status 2
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "align.cli", "train", os.devnull, *FAST, *files,
                           f"output_dir={tmp_path / 'cli'}"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "line 2: field 'rejected'" in proc.stderr and "Traceback" not in proc.stderr


def test_margin_column(tmp_path):
    rows = [dict(r, margin=m) for r, m in zip(GOOD, (1.0, 0.5, 2))]
    files = [f"data.train_file={_write_jsonl(tmp_path / 'm.jsonl', rows)}", "data.task=null", "train.batch_size=3",
             "train.steps=1", "reward.margin=true"]
    with_margin = run(tmp_path, "margin", *files)
    without = run(tmp_path, "plain", *[f for f in files if not f.startswith("reward.margin")])
    assert losses(with_margin.run_dir)[0] > losses(without.run_dir)[0]  # -log sigmoid(d - m) > -log sigmoid(d)
    bad = _write_jsonl(tmp_path / "bad.jsonl", GOOD[:2] + [dict(GOOD[2], margin="big")])
    with pytest.raises(DataError, match=r"bad\.jsonl: line 3: field 'margin'"):
        run(tmp_path, "bad", *files[1:], f"data.train_file={bad}")


def test_margin_rows_follow_bad_rows_like_every_loader(tmp_path):
    from align.tasks.tokenizer import build_tokenizer
    from align.data.loading import load_examples

    tokenizer = build_tokenizer()

    def pairs(lines, mode):
        path = tmp_path / "m.jsonl"
        path.write_text("\n".join(lines) + "\n")
        cfg = load_recipe(None, ["method=reward", "data.task=null", f"data.train_file={path}", "reward.margin=true",
                                 f"data.bad_rows={mode}"])
        skipped = SkipCounter()
        examples = load_examples(cfg.data, tokenizer, "pairs", "train", cfg.train.seed, skipped, read_margin=True)
        return (examples, [e.margin for e in examples]), skipped.as_dict(), str(path)

    good = [json.dumps(dict(GOOD[0], margin=1.5)), json.dumps(GOOD[2])]  # no margin column: 0
    bad = ["{not json", json.dumps(dict(GOOD[1], rejected=GOOD[1]["chosen"])), json.dumps(dict(GOOD[1], margin="big")),
           '{"prompt": "Q: 1+2=? A:", "chosen": " 3", "rejected": " 4", "margin": NaN}']
    (examples, margins), skipped, _ = pairs(good[:1] + bad + good[1:], "skip")
    assert len(examples) == 2 and margins == [1.5, 0.0]
    assert skipped == {"skipped/identical_pair": 1, "skipped/not_json": 1, "skipped/wrong_type": 2}
    problems = [" is not valid JSON", ": field 'rejected' is identical to 'chosen'",
                ": field 'margin' must be a finite number, got 'big'", ": field 'margin' must be a finite number, got nan"]
    for line, problem in zip(bad, problems):
        with pytest.raises(DataError) as err:
            pairs(good[:1] + [line], "error")
        assert str(err.value).startswith(f"{tmp_path / 'm.jsonl'}: line 2{problem}"), str(err.value)
    with pytest.raises(DataError, match=r"m\.jsonl: all 4 rows were skipped \(data.bad_rows: skip\): 1 identical_pair, "
                                        r"1 not_json, 2 wrong_type$"):
        pairs(bad, "skip")
    with pytest.raises(DataError, match=r"m\.jsonl: has no rows$"):
        pairs([""], "skip")


def test_gradient_accumulation_invariance(tmp_path):
    one = losses(run(tmp_path, "b8", "train.steps=3").run_dir)
    two = losses(run(tmp_path, "b4x2", "train.steps=3", "train.grad_accum=2").run_dir)
    assert one == pytest.approx(two, abs=1e-5)


def test_resume_continues_the_exact_loss_curve(tmp_path):
    unbroken = run(tmp_path, "unbroken", "train.steps=6")
    crashed = run(tmp_path, "crashed", "train.steps=6", "train.save_every=3").run_dir
    ckpts = crash_after_checkpoint(crashed, 3)
    assert os.path.exists(os.path.join(ckpts, "step-000003", "adapter", "head.safetensors"))
    resumed = run(tmp_path, "crashed", "train.steps=6", "train.save_every=3", "resume=true")
    assert len(losses(resumed.run_dir)) == 6  # rows after the checkpoint were replaced, not duplicated
    assert losses(resumed.run_dir) == pytest.approx(losses(unbroken.run_dir), abs=1e-6)
    assert resumed.summary["pairwise_accuracy_after"] == unbroken.summary["pairwise_accuracy_after"]


@pytest.mark.parametrize("recipe", ["rm_lora.yaml", "rm_full.yaml"])
def test_recipe_runs_end_to_end(tmp_path, repo, recipe):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "align.cli", "train", str(repo / "recipes" / recipe), "model=scratch:test",
         "train.steps=2", "train.batch_size=4", "data.num_train=16", "data.num_eval=8", "tracking.wandb=false",
         f"output_dir={out}"],
        capture_output=True, text=True, env=env, cwd=repo, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    summary = json.load(open(out / "summary.json"))
    assert summary["method"] == "reward" and summary["pairwise_accuracy_after"] is not None
    assert (out / "reward" / "head.safetensors").exists()


def test_per_kind_script_agrees_with_the_trainers_own_evaluation(trained, repo):
    import importlib.util

    spec = importlib.util.spec_from_file_location("rm_per_kind", repo / "scripts" / "studies" / "rm_per_kind.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.per_kind_accuracy(Path(trained.run_dir))
    assert out["accuracy"] == pytest.approx(trained.summary["pairwise_accuracy_after"], abs=1e-4)
    assert sum(out[f"{k}_pairs"] for k in module.KINDS) == out["pairs"] == 32
    assert module.pair_kind("Q: 2+3=? A:", " 5", " um 5") == "concise_vs_padded"
    assert module.pair_kind("Q: 2+3=? A:", " 5", " um 6") == "concise_vs_wrong"
    assert module.pair_kind("Q: 2+3=? A:", " so it is 5", " 6") == "padded_vs_wrong"


def test_probe_script_runs_on_a_tiny_model(repo):
    proc = subprocess.run(
        [sys.executable, "scripts/studies/rm_probe.py", "--model", "scratch:test", "--train", "64", "--eval", "32"],
        cwd=repo, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["feature"] for r in rows] == ["last_token", "logprob", "both"]
    assert [r["dims"] for r in rows] == [32, 2, 34]
    assert all(0.0 <= r["eval_accuracy"] <= 1.0 for r in rows)


def test_probe_script_on_user_files(tmp_path, repo):
    from align.tasks.preference import preference_pairs

    for split, n in (("train", 40), ("eval", 12)):
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            for row in preference_pairs(split, n, seed=3):
                f.write(json.dumps(row) + "\n")
    command = [sys.executable, "scripts/studies/rm_probe.py", "--model", "scratch:test", "--train-file", str(tmp_path / "train.jsonl"),
               "--eval-file", str(tmp_path / "eval.jsonl")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["eval_pairs"] for r in rows] == [12, 12, 12]
    assert all("padded_vs_wrong" not in r for r in rows)  # kinds exist only for the built-in task
    with open(tmp_path / "eval.jsonl", "a") as f:
        f.write(json.dumps({"prompt": "Q: 1+1=? A:", "chosen": " 2", "rejected": " 2"}) + "\n")  # a tie
    proc = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and "eval.jsonl: line 13: field 'rejected'" in proc.stderr, proc.stderr[-2000:]


def test_head_learning_rate_is_its_own_param_group(tmp_path):
    # head LR 0: the head stays at its initial weights (those of an LR-0 run) while the adapter trains
    frozen_head = run(tmp_path, "h0", "train.steps=2", "reward.head_lr=0")
    untrained = run(tmp_path, "lr0", "train.steps=1", "optimizer.lr=0")
    default = run(tmp_path, "default", "train.steps=2")
    assert torch.equal(frozen_head.model.head("reward").weight, untrained.model.head("reward").weight)
    assert not torch.equal(default.model.head("reward").weight, untrained.model.head("reward").weight)
    lora_b = [v for k, v in frozen_head.model.model.state_dict().items() if "lora_B.reward" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)
    with pytest.raises(Exception, match="reward.head_lr"):
        load_recipe(None, FAST + ["reward.head_lr=-1"])
