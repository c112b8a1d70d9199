"""Prompts of an on-policy run (PPO today): loaded, checked and rendered, in one place.

What it does:
- `load_prompt_rows(cfg, split, skipped)`: `[{"prompt", "answer"}]` of `split` ("train" or
  "eval") from the built-in task, a local JSON/JSONL/Parquet file (`align.data.loading.read_rows`)
  or a hub dataset (`data.dataset_config`; held-out prompts from its `data.eval_split` when
  `data.eval_file` is null). Which of the last two a `data.*_file` value is, is decided by
  `align.config_checks.is_local_data`, the rule recipe validation uses too. `data.prompt_field` and
  `data.answer_field` name the columns;
- `parse_answer(value)`: an answer is an integer or GSM8K text ending in `#### 42`;
- `answer_readers(cfg)`: the configured rewards that read answers (`rollout.reward` and
  `rollout.gold_reward` terms with `needs_answer`, e.g. arithmetic_correctness). The answer column
  is needed only when one does, and then every answer must be an integer (those rewards compare
  integers): text such as "seven", 3.5, NaN or 1e400 is a DataError naming file, line and field
  when the file is loaded, not a crash mid-run; otherwise a row without one gets answer None,
  which rollout, scoring and evaluation pass through untouched;
- `render_prompts(prompts, tokenizer, chat_template)`: prompts as the model sees them, plain or a
  user turn rendered with the chat template (`data.chat_template`).

A bad row (not JSON, no prompt, a bad answer) follows `data.bad_rows` as in every other loader
(`align.data.loading.convert_rows`): a DataError naming file, line and field, or under `skip` left
out and counted in the caller's `SkipCounter`; a source that gives no prompt is a DataError.

What it leaves out: sampling, scoring and tokenising responses (`align.rollout`,
`align.experience`), and the rows of offline methods (SFT and preference pairs:
`align.data.loading.load_examples`).

Run its tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_ppo_prompts.py tests/test_preflight.py`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

from align.config_checks import is_local_data, reward_spec
from align.data.loading import DataError, Row, SkipCounter, convert_rows, no_rows_error, read_rows
from align.tasks import task_for
from reward_models.base import parse_reward_spec


def parse_answer(value: Any) -> Any:
    """An integer answer from an int, an integral float or a GSM8K-style string ("... #### 1,234"
    -> 1234); other strings are returned stripped. A boolean, or a float that is not finite (JSON's
    1e400 reads as inf, NaN as nan), is a ValueError."""
    if isinstance(value, bool):
        raise ValueError("an answer must be a number or text, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"an answer must be a finite number, got {value!r}")
        if value.is_integer():
            return int(value)
    text = str(value)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    text = text.strip().replace(",", "")
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def answer_readers(cfg) -> list[str]:
    """The configured rewards that read each prompt's answer (`needs_answer`), named for an error
    message: `["rollout.reward term 'arithmetic_correctness'", ...]`. A learned reward reads none."""
    readers = reward_spec(cfg).answer_readers("rollout.reward")
    if cfg.rollout.gold_reward:
        readers += parse_reward_spec(cfg.rollout.gold_reward).answer_readers("rollout.gold_reward")
    return readers


def load_prompt_rows(cfg, split: str, skipped: SkipCounter | None = None) -> list[dict]:
    """`[{"prompt", "answer"}]` of `split` ("train" or "eval"), see the module docstring. A bad row
    of a file or hub dataset follows `data.bad_rows` as in every loader (`convert_rows`): an error
    naming file, line and field, or skipped and counted in `skipped`; a source that gives no prompt
    is `no_rows_error`'s DataError."""
    data = cfg.data
    skipped = skipped if skipped is not None else SkipCounter()
    key = "data.train_file" if split == "train" else "data.eval_file"
    path = data.train_file if split == "train" else data.eval_file
    if path is None and split == "eval" and data.train_file is not None and not is_local_data(data.train_file, "data.train_file"):
        key, path = "data.train_file", data.train_file  # a hub dataset: evaluate on its held-out split
    if path is None:
        if data.task is None:
            return []
        n = data.num_train if split == "train" else data.num_eval
        return task_for(data).prompts(split, n, cfg.train.seed)
    before = Counter(skipped.counts)
    if is_local_data(path, key):
        source = path
        rows = read_rows(path, data.bad_rows, skipped, key=key)  # Row.where: "file: line 3" (JSONL), "file: row 3"
    else:
        import datasets

        hub_split = "train" if split == "train" else data.eval_split
        source = f"{path}[{hub_split}]"
        try:
            dataset = datasets.load_dataset(path, data.dataset_config, split=hub_split)
        except Exception as err:  # datasets raises many types; say which dataset and why, in one line
            reason = (str(err).strip().splitlines() or [""])[0]
            raise DataError(f"{source}: could not be read as a dataset ({type(err).__name__}: {reason})") from None
        rows = [Row(dict(r), source, i) for i, r in enumerate(dataset, start=1)]
    readers = answer_readers(cfg)
    out = convert_rows(rows, lambda row: _prompt_row(row, data.prompt_field, data.answer_field, readers), data.bad_rows, skipped)
    if not out:
        raise no_rows_error(source, skipped.counts - before)  # this source's skips, unreadable lines included
    return out if split == "train" else out[: data.num_eval]


def _prompt_row(row: Row, prompt_field: str, answer_field: str, readers: list[str]) -> dict:
    """One `{"prompt", "answer"}` from a file's row, or a DataError naming its line and field."""
    prompt = row.data.get(prompt_field)
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{row.where}: field '{prompt_field}' must be a non-empty string", "missing_field")
    answer = row.data.get(answer_field)
    if answer is None and readers:
        raise DataError(
            f"{row.where}: field '{answer_field}' is missing, and {readers[0]} needs an answer for every prompt "
            f"(name the answer column with data.answer_field, or use a reward that reads none, e.g. learned)",
            "missing_field",
        )
    if answer is not None:
        try:
            parsed = parse_answer(answer)
        except ValueError as err:
            raise DataError(f"{row.where}: field '{answer_field}': {err}", "wrong_type") from None
        if readers and not isinstance(parsed, int):  # checked here, not when the reward first runs
            shown = repr(answer) if len(repr(answer)) <= 60 else repr(answer)[:57] + "..."
            raise DataError(
                f"{row.where}: field '{answer_field}' must be an integer (or text ending in '#### 42'), got {shown}; "
                f"{readers[0]} compares integer answers", "wrong_type",
            )
        answer = parsed
    return {"prompt": prompt, "answer": answer}


def render_prompts(prompts: list[str], tokenizer, chat_template: bool) -> list[str]:
    """Prompts as the model sees them: plain, or a user turn rendered with the chat template."""
    if not chat_template:
        return list(prompts)
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


def load_train_and_eval_prompts(cfg, skipped: SkipCounter) -> tuple[list[dict], list[dict]]:
    """An on-policy run's prompts: the train split (none is a SystemExit naming what to set) and,
    for a prompt file with evaluation on, its held-out prompts (a built-in task evaluates itself)."""
    train_rows = load_prompt_rows(cfg, "train", skipped)
    if not train_rows:
        raise SystemExit(f"no {cfg.method.upper()} prompts: set data.task or data.train_file")
    eval_rows = load_prompt_rows(cfg, "eval", skipped) if cfg.data.task is None and cfg.eval.enabled else []
    return train_rows, eval_rows
