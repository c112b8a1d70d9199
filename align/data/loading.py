"""Rows in, validated token ids out: loading, validation and tokenisation of training data.

Sources: the built-in tasks (`data.task`), or files through `datasets` (local JSON, JSONL or
Parquet; a hub id where a network exists). Formats recognised per row:
- SFT: `prompt`/`completion`, or conversational `messages` (list of {role, content}, the last
  one the assistant's) rendered with the tokenizer's chat template;
- preference: explicit `prompt`/`chosen`/`rejected`; implicit prompt (`chosen`/`rejected` full
  texts sharing a prefix, split at the longest common prefix); conversational (`chosen`/
  `rejected` as message lists sharing all but the last assistant turn).

A malformed row (missing field, wrong type, empty completion, a tie, over `max_length` after
tokenisation) raises `DataError` naming the file, row and field, or, with `bad_rows: skip`, is
skipped and counted in `SkipCounter`, which the trainer logs. Never a bare traceback.

Token convention, shared by every trainer and by generation: prompt ids are
`tokenizer(prompt)` (with the model's own special tokens, e.g. a BOS), completion ids are
`tokenizer(completion, add_special_tokens=False)` followed by EOS.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable


class DataError(ValueError):
    """A malformed data row, reported with its file, row number and field."""

    def __init__(self, message: str, reason: str = "unreadable") -> None:
        super().__init__(message)
        self.reason = reason  # a short category, used to count skipped rows


@dataclass
class SkipCounter:
    """Rows skipped under `bad_rows: skip`, by reason; logged by the trainers."""

    counts: Counter = field(default_factory=Counter)

    def add(self, reason: str) -> None:
        self.counts[reason] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return {f"skipped/{k}": v for k, v in sorted(self.counts.items())}


@dataclass
class Row:
    """One raw row and where it came from (for error messages)."""

    data: dict[str, Any]
    source: str
    index: int


def read_rows(path: str) -> list[Row]:
    """Read a local JSON/JSONL/Parquet file, or a hub dataset id through `datasets`.

    JSON and JSONL are parsed row by row with the standard library rather than through Arrow:
    Arrow unifies column types across rows, which would turn one row's wrong type into a cast
    or a file-level error instead of an error naming that row and field.
    """
    suffix = Path(path).suffix.lower()
    if suffix in {".json", ".jsonl"}:
        return _read_json_rows(path)
    import datasets

    datasets.disable_progress_bars()
    try:
        if suffix == ".parquet":
            ds = datasets.load_dataset("parquet", data_files=path, split="train")
        else:
            ds = datasets.load_dataset(path, split="train")
    except Exception as err:  # datasets raises many types; say which file and why
        raise DataError(f"{path}: could not be read as a dataset ({type(err).__name__}: {err})") from None
    return [Row(dict(r), path, i) for i, r in enumerate(ds)]


def _read_json_rows(path: str) -> list[Row]:
    text = Path(path).read_text()
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            records = json.loads(text)
        else:
            records = []
            for line_no, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}: could not be read: line {line_no} is not valid JSON ({err.msg})") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: could not be read: not valid JSON ({err.msg} at line {err.lineno})") from None
    rows = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{path}: row {i} must be a JSON object, got {type(record).__name__}", "wrong_type")
        rows.append(Row(record, path, i))
    return rows


def rows_from_task(rows: Iterable[dict[str, Any]], name: str) -> list[Row]:
    return [Row(dict(r), f"builtin:{name}", i) for i, r in enumerate(rows)]


def _fail(row: Row, fieldname: str, why: str, reason: str) -> DataError:
    return DataError(f"{row.source}: row {row.index}: field '{fieldname}' {why}", reason)


def _get_text(row: Row, key: str) -> str:
    if key not in row.data or row.data[key] is None:
        raise _fail(row, key, "is missing", "missing_field")
    value = row.data[key]
    if not isinstance(value, str):
        raise _fail(row, key, f"must be a string, got {type(value).__name__}", "wrong_type")
    return value


def _messages_prompt_and_reply(row: Row, key: str, tokenizer) -> tuple[str, str]:
    messages = row.data[key]
    if not isinstance(messages, list) or not messages:
        raise _fail(row, key, "must be a non-empty list of {role, content} messages", "wrong_type")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise _fail(row, f"{key}[{i}]", "must be a {role, content} mapping of strings", "wrong_type")
    if messages[-1]["role"] != "assistant":
        raise _fail(row, key, "must end with an assistant message (the completion)", "wrong_type")
    if not messages[-1]["content"].strip():
        raise _fail(row, key, "ends with an empty assistant message", "empty")
    if getattr(tokenizer, "chat_template", None) is None:
        raise _fail(row, key, "is conversational but the tokenizer has no chat template", "no_chat_template")
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise _fail(row, key, "renders with a chat template whose prompt is not a prefix of the conversation", "template_mismatch")
    # The completion is what the template adds for the last turn (its own spacing and end
    # token included), so it matches what the model will see at generation time.
    return prompt, full[len(prompt):]


def encode_prompt(tokenizer, prompt: str, chat_rendered: bool = False) -> list[int]:
    # A chat template already contains the model's special tokens; a plain prompt gets them here.
    return list(tokenizer(prompt, add_special_tokens=not chat_rendered)["input_ids"])


def encode_completion(tokenizer, completion: str) -> list[int]:
    ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    # A chat template may already end the turn with EOS; never add a second one.
    return ids if ids and ids[-1] == tokenizer.eos_token_id else ids + [tokenizer.eos_token_id]


@dataclass
class SFTExample:
    prompt_ids: list[int]
    completion_ids: list[int]


@dataclass
class PairExample:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


def _check_length(row: Row, n: int, max_length: int, fieldname: str) -> None:
    if n > max_length:
        raise _fail(row, fieldname, f"is {n} tokens with the prompt, over data.max_length={max_length}", "too_long")


def _handle(rows: list[Row], convert, bad_rows: str, skipped: SkipCounter) -> list:
    out = []
    for row in rows:
        try:
            out.append(convert(row))
        except DataError as err:
            if bad_rows == "error":
                raise
            skipped.add(err.reason)
    return out


def sft_examples(rows: list[Row], tokenizer, max_length: int, bad_rows: str, skipped: SkipCounter) -> list[SFTExample]:
    """Validate and tokenise SFT rows (prompt/completion or messages)."""

    def convert(row: Row) -> SFTExample:
        if "messages" in row.data:
            prompt, completion = _messages_prompt_and_reply(row, "messages", tokenizer)
            chat = True
            fieldname = "messages"
        else:
            prompt, completion = _get_text(row, "prompt"), _get_text(row, "completion")
            chat = False
            fieldname = "completion"
        if not completion.strip():
            raise _fail(row, fieldname, "is empty", "empty")
        p, c = encode_prompt(tokenizer, prompt, chat), encode_completion(tokenizer, completion)
        _check_length(row, len(p) + len(c), max_length, fieldname)
        return SFTExample(p, c)

    return _handle(rows, convert, bad_rows, skipped)


def _split_implicit(row: Row, chosen: str, rejected: str) -> tuple[str, str, str]:
    """Implicit prompt: chosen and rejected are full texts; the prompt is their common prefix."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise _fail(row, "chosen", "and 'rejected' share no common prompt prefix", "no_common_prompt")
    # Cut at a whitespace boundary so that the completions start with a whole word.
    cut = chosen.rfind(" ", 0, n + 1)
    cut = cut if cut > 0 else n
    return chosen[:cut], chosen[cut:], rejected[cut:]


def pair_examples(rows: list[Row], tokenizer, max_length: int, bad_rows: str, skipped: SkipCounter) -> list[PairExample]:
    """Validate and tokenise preference rows (explicit, implicit or conversational)."""

    def convert(row: Row) -> PairExample:
        chat = False
        if isinstance(row.data.get("chosen"), list):
            prompt_c, chosen = _messages_prompt_and_reply(row, "chosen", tokenizer)
            prompt_r, rejected = _messages_prompt_and_reply(row, "rejected", tokenizer)
            if prompt_c != prompt_r:
                raise _fail(row, "rejected", "must share the conversation before the last turn with 'chosen'", "prompt_mismatch")
            prompt, chat = prompt_c, True
        elif "prompt" in row.data and row.data["prompt"] is not None:
            prompt, chosen, rejected = _get_text(row, "prompt"), _get_text(row, "chosen"), _get_text(row, "rejected")
        else:
            prompt, chosen, rejected = _split_implicit(row, _get_text(row, "chosen"), _get_text(row, "rejected"))
        for name, text in (("chosen", chosen), ("rejected", rejected)):
            if not text.strip():
                raise _fail(row, name, "is empty", "empty")
        if chosen == rejected:
            raise _fail(row, "rejected", "is identical to 'chosen' (a tie carries no preference)", "identical_pair")
        p = encode_prompt(tokenizer, prompt, chat)
        c, r = encode_completion(tokenizer, chosen), encode_completion(tokenizer, rejected)
        _check_length(row, len(p) + len(c), max_length, "chosen")
        _check_length(row, len(p) + len(r), max_length, "rejected")
        return PairExample(p, c, r)

    return _handle(rows, convert, bad_rows, skipped)


def load_examples(data, tokenizer, kind: str, split: str, seed: int, skipped: SkipCounter) -> list:
    """Training ("train") or held-out ("eval") examples of `kind` "sft" or "pairs".

    `data` is the recipe's `DataSettings`. Files win over the built-in task; without an eval
    file, held-out rows come from the built-in task's eval split (or none, for file-only data).
    """
    path = data.train_file if split == "train" else data.eval_file
    if path is not None:
        rows = read_rows(path)
    elif data.task == "pretrain":
        # The base's pretraining corpus (train-split problems only); held-out loss is not used.
        from align.tasks.arithmetic import pretrain_rows

        if split != "train":
            return []
        rows = rows_from_task(
            ({"prompt": r["prompt"], "completion": r["completion"]} for r in pretrain_rows(data.num_train, seed)),
            "pretrain",
        )
    elif data.task is not None:
        from align.tasks import get_task

        task = get_task(data.task)
        n = data.num_train if split == "train" else data.num_eval
        produce = task.sft_rows if kind == "sft" else task.preference_rows
        rows = rows_from_task(produce(split, n, seed), f"{data.task}/{split}")
    else:
        return []
    convert = sft_examples if kind == "sft" else pair_examples
    return convert(rows, tokenizer, data.max_length, data.bad_rows, skipped)
