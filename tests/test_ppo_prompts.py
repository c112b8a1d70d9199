"""Prompt files of on-policy runs (`align.data.prompts`) follow `data.bad_rows` as every other
loader does (`align.data.loading`), and tell local files from hub ids by the recipe's own rule.

- `bad_rows: error`: the first bad row stops the load with one DataError naming file, line, field;
- `bad_rows: skip`: bad rows (a line that is not JSON, a row without a prompt, an answer a reward
  cannot compare) are left out and counted by reason in the SkipCounter, which the PPO trainer logs
  (`skipped/<reason>` in metrics.jsonl, `skipped_rows` in summary.json);
- a file whose rows are all skipped, or that has none, is `no_rows_error`'s DataError;
- a `data.*_file` value is a local file or a hub dataset id by `align.config_checks.is_local_data`, for
  recipe validation and the prompt loader alike.

Tiny model (`scratch:test`); the one training run takes a few seconds.
Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_ppo_prompts.py`.
"""

from __future__ import annotations

import json
import re

import pytest

from align.config import ConfigError, DataSettings, RecipeConfig, load_recipe
from align.config_checks import is_local_data
from align.data.loading import DataError, SkipCounter
from align.data.prompts import load_prompt_rows

PPO = [
    "method=ppo", "model=scratch:test", "data.task=null", "lora.rank=4", "train.log_every=1", "train.steps=1",
    "optimizer.lr=0.01", "eval.enabled=false", "tracking.wandb=false", "ppo.rollout_batch_size=4",
    "ppo.minibatch_size=2", "rollout.max_new_tokens=4", "ppo.ppo_epochs=1", "rollout.reward=arithmetic_correctness",
]
GOOD = [json.dumps({"prompt": f"Q: {a}+1=? A:", "answer": a + 1}) for a in range(4)]
BAD = {  # line 2 is not JSON, line 4 has no prompt, line 6 has an answer the reward cannot compare
    2: '{"prompt": "Q: 9+1=? A:", "answer": 10',
    4: json.dumps({"question": "Q: 8+1=? A:", "answer": 9}),
    6: json.dumps({"prompt": "Q: 7+1=? A:", "answer": "seven"}),
}


def prompt_file(tmp_path, lines: dict[int, str] = BAD, good: list[str] = GOOD) -> str:
    """A JSONL file with `lines` at their (1-based) line numbers and the good rows around them."""
    rest = iter(good)  # enough of them to fill every line up to the last of `lines`
    total = len(good) + len(lines)
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join((lines[n] if n in lines else next(rest)) + "\n" for n in range(1, total + 1)))
    return str(path)


def load(path: str, mode: str, skipped: SkipCounter | None = None, split: str = "train") -> list[dict]:
    """`load_prompt_rows` of `path` as `split`'s file (the train file too: a recipe needs one)."""
    cfg = load_recipe(None, PPO + [f"data.train_file={path}", f"data.eval_file={path}", f"data.bad_rows={mode}"])
    return load_prompt_rows(cfg, split, skipped)


def test_skip_leaves_out_and_counts_bad_rows_by_reason(tmp_path):
    path = prompt_file(tmp_path)
    skipped = SkipCounter()
    rows = load(path, "skip", skipped)
    assert rows == [{"prompt": f"Q: {a}+1=? A:", "answer": a + 1} for a in range(4)]
    assert skipped.as_dict() == {"skipped/missing_field": 1, "skipped/not_json": 1, "skipped/wrong_type": 1}
    load(path, "skip", skipped, "eval")  # the eval file counts into the same counter
    assert skipped.total == 6


@pytest.mark.parametrize("line, message", [
    (2, "line 2 is not valid JSON"),
    (4, "line 4: field 'prompt' must be a non-empty string"),
    (6, "line 6: field 'answer' must be an integer (or text ending in '#### 42'), got 'seven'"),
])
def test_error_names_the_file_line_and_field(tmp_path, line, message):
    path = prompt_file(tmp_path, {line: BAD[line]}, good=GOOD * 2)  # one bad line, good ones after it
    skipped = SkipCounter()
    with pytest.raises(DataError) as err:
        load(path, "error", skipped)
    assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value), str(err.value)
    assert skipped.total == 0


def test_a_file_whose_rows_are_all_skipped_or_that_has_none_is_one_data_error(tmp_path):
    path = prompt_file(tmp_path, {1: BAD[2], 2: BAD[4]}, good=[])
    pattern = rf"^{re.escape(path)}: all 2 rows were skipped \(data\.bad_rows: skip\): 1 missing_field, 1 not_json$"
    with pytest.raises(DataError, match=pattern):
        load(path, "skip", SkipCounter())
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(empty))}: has no rows$"):
        load(str(empty), "skip", SkipCounter(), "eval")


def test_hub_dataset_rows_follow_bad_rows_too(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [{"prompt": "Q: 1+1=? A:", "answer": 2}, {"answer": 3}])
    with pytest.raises(DataError, match=r"^user/prompts\[train\]: row 2: field 'prompt' must be a non-empty string$"):
        load("user/prompts", "error")
    skipped = SkipCounter()
    assert load("user/prompts", "skip", skipped) == [{"prompt": "Q: 1+1=? A:", "answer": 2}]
    assert skipped.as_dict() == {"skipped/missing_field": 1}


@pytest.mark.parametrize("value, local", [
    ("./prompts.jsonl", True), ("prompts.jsonl", True), ("./prompts", True), (".prompts", True), ("a/b/c", True),
    ("data/", True), ("org/name", False), ("gsm8k", False),
])
def test_one_rule_tells_local_files_from_hub_ids(tmp_path, monkeypatch, value, local):
    """Recipe validation and the prompt loader ask `is_local_data` the same question: a local
    value must exist when the recipe loads and is read as a file; a hub id is read as a dataset,
    its held-out prompts from `data.eval_split`."""
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.chdir(tmp_path)  # none of the values exists here
    monkeypatch.setattr(datasets, "load_dataset", offline)
    assert is_local_data(value, "data.train_file") is local
    if local:
        with pytest.raises(ConfigError, match=rf"data\.train_file file not found: {re.escape(value)}$"):
            load_recipe(None, PPO + [f"data.train_file={value}"])
    else:
        load_recipe(None, PPO + [f"data.train_file={value}"])
    cfg = RecipeConfig(method="ppo", data=DataSettings(task=None, train_file=value))
    with pytest.raises(DataError) as err:
        load_prompt_rows(cfg, "train")
    assert str(err.value).startswith(f"{value}: " if local else f"{value}[train]: "), str(err.value)
    if local:  # no eval file, and a local train file has no held-out split
        assert load_prompt_rows(cfg, "eval") == []
    else:
        with pytest.raises(DataError, match=rf"^{re.escape(value)}\[test\]: could not be read as a dataset"):
            load_prompt_rows(cfg, "eval")


def test_ppo_logs_skipped_prompt_rows_in_metrics_and_summary(tmp_path):
    from align.trainers.ppo import train_ppo

    path = prompt_file(tmp_path)
    result = train_ppo(load_recipe(None, PPO + [
        f"data.train_file={path}", "data.bad_rows=skip", f"output_dir={tmp_path / 'run'}",
    ]))
    metrics = [json.loads(line) for line in open(f"{result.run_dir}/metrics.jsonl")]
    logged = [row for row in metrics if "reward/score" in row]
    assert logged and all(row["skipped/not_json"] == 1 and row["skipped/missing_field"] == 1
                          and row["skipped/wrong_type"] == 1 for row in logged)
    summary = json.load(open(f"{result.run_dir}/summary.json"))
    assert summary["skipped_rows"] == 3 == result.summary["skipped_rows"]
