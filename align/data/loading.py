"""Rows in, validated token ids out: loading, validation and tokenisation of training data.

Sources: the built-in tasks (`data.task`), or files through `datasets` (local JSON, JSONL or
Parquet; a hub id where a network exists). One loader per data shape: `load_examples(..., "sft")`
and `load_examples(..., "pairs")` here, and the prompts of on-policy runs in
`align.data.prompts.load_prompt_rows`, which reads files with `read_rows` and rows with
`convert_rows`, as these do. Formats recognised per row, TRL's standard ones:
- SFT: `prompt`/`completion` strings; conversational `messages` (a list of {role, content}, the
  last one the assistant's reply, which is the completion); conversational `prompt`/`completion`
  (two message lists: the conversation so far, and the reply turn(s));
- preference, each with or without a system message:
  - explicit prompt: `prompt`/`chosen`/`rejected` strings;
  - implicit prompt: `chosen`/`rejected` full texts sharing a prefix; the prompt is that prefix,
    cut back to the last space before the first difference so that the completions start with a
    whole word (TRL's `extract_prompt` cuts at the first differing character, inside a word
    when the two texts differ inside one; the two agree when they differ at a word start);
  - conversational, explicit prompt: `prompt` a message list, `chosen`/`rejected` message lists
    of the assistant turn(s);
  - conversational, implicit prompt: `chosen`/`rejected` full conversations sharing all but the
    last turn(s); the prompt is their shared leading messages (TRL's `extract_prompt`: a string
    `prompt` beside conversational `chosen`/`rejected` is ignored, as in TRL);
  - an optional per-pair `margin` column (a finite number, 0 when absent), read into
    `PairExample.margin` when asked for (`read_margin=True`: the reward model's `reward.margin`).

Conversations are tokenised as TRL 1.16's DPOTrainer and SFTTrainer do: the prompt rendered with
the chat template and `add_generation_prompt=True`, the prompt plus each reply rendered whole, and
the split at the token prefix all of them share; a completion is the rest of its rendering, the
template's spacing and end of turn included, up to its last EOS (see the token convention).

A malformed row (missing field, wrong type, empty completion, a tie, a line that is not JSON,
over `max_length` after tokenisation) raises `DataError` naming the file, the line (JSONL: the
file's 1-based "line N"; JSON arrays, Parquet and built-in tasks: the 1-based "row N") and the
field, or, with `bad_rows: skip`, is skipped and counted in `SkipCounter`, which the trainer logs.
A source whose rows are all skipped is a `DataError` counting the reasons. Never a bare traceback.

Token convention, shared by every trainer and by generation: prompt ids are
`tokenizer(prompt)` (with the model's own special tokens, e.g. a BOS; a chat-rendered prompt
carries its own), completion ids are `tokenizer(completion, add_special_tokens=False)` ending in
one EOS, with nothing after it: a plain completion gets EOS unless it already ends with it; a
chat-rendered completion ends at the template's own EOS, and what the template writes after it
(ChatML's newline after "<|im_end|>") is cut, where TRL keeps it: nothing is trained past the end,
and a reward model reads the same last token that generation, which stops at EOS, produces. A
template that puts no EOS in the turn gets one added, so that generation can stop.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from align.tasks import task_for
from align.tasks.arithmetic import pretrain_rows


class DataError(ValueError):
    """A malformed data row, reported with its file, line (or row) number and field."""

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
    """One raw row and where it came from (for error messages).

    `index` is 1-based: the file's line number for JSONL (`unit="line"`), else the row number.
    """

    data: dict[str, Any]
    source: str
    index: int
    unit: str = "row"

    @property
    def where(self) -> str:
        """`"path: line 3"`: the prefix of every message about this row."""
        return f"{self.source}: {self.unit} {self.index}"


def read_rows(path: str, bad_rows: str = "error", skipped: SkipCounter | None = None,
              key: str | None = None) -> list[Row]:
    """Read a local JSON/JSONL/Parquet file, or a hub dataset id through `datasets`.

    JSON and JSONL are parsed row by row with the standard library rather than through Arrow:
    Arrow unifies column types across rows, which would turn one row's wrong type into a cast
    or a file-level error instead of an error naming that row and field. A JSONL line that is not
    JSON, or a row that is not an object, raises `DataError`, or with `bad_rows="skip"` is counted
    in `skipped` and left out. A file the system cannot open is a DataError, naming the recipe
    `key` (e.g. "data.train_file") when one is given.
    """
    suffix = Path(path).suffix.lower()
    if suffix in {".json", ".jsonl"}:
        return _read_json_rows(path, suffix, bad_rows, skipped if skipped is not None else SkipCounter(), key)
    import datasets

    datasets.disable_progress_bars()
    try:
        if suffix == ".parquet":
            ds = datasets.load_dataset("parquet", data_files=path, split="train")
        else:
            ds = datasets.load_dataset(path, split="train")
    except Exception as err:  # datasets raises many types; say which file and why
        raise DataError(f"{path}: could not be read as a dataset ({type(err).__name__}: {err})") from None
    return [Row(dict(r), path, i) for i, r in enumerate(ds, start=1)]


def _read_json_rows(path: str, suffix: str, bad_rows: str, skipped: SkipCounter, key: str | None = None) -> list[Row]:
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        named = f"{key}: " if key else ""
        raise DataError(f"{path}: could not be read ({named}{err.strerror or type(err).__name__})") from None
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark, as some editors write
    if suffix == ".json" and raw.lstrip()[:1] == b"[":
        # One JSON array: a syntax error anywhere leaves no row to trust, so it is file-level.
        try:
            records = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: could not be read: not valid UTF-8 (byte {err.start})") from None
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: could not be read: not valid JSON ({err.msg} at line {err.lineno})") from None
        except (ValueError, RecursionError) as err:  # e.g. an integer over Python's digit limit, deep nesting
            raise DataError(f"{path}: could not be read: could not be parsed as JSON ({type(err).__name__}: {err})") from None
        numbered = [(i, record, None) for i, record in enumerate(records, start=1)]
        unit = "row"
    else:
        # JSON Lines (also a .json file that is not an array): one object per line, numbered as
        # the file's lines are; a bad line is one bad row.
        numbered, unit = [], "line"
        for line_no, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((line_no, json.loads(line.decode("utf-8")), None))
            except UnicodeDecodeError as err:
                numbered.append((line_no, None, f"is not valid UTF-8 (byte {err.start})"))
            except json.JSONDecodeError as err:
                numbered.append((line_no, None, f"is not valid JSON ({err.msg} at column {err.colno})"))
            except (ValueError, RecursionError) as err:  # an integer over Python's digit limit, deep nesting
                numbered.append((line_no, None, f"could not be parsed as JSON ({type(err).__name__}: {err})"))
    rows = []
    for number, record, problem in numbered:
        try:
            if problem is not None:
                raise DataError(f"{path}: {unit} {number} {problem}", "not_json")
            if not isinstance(record, dict):
                raise DataError(f"{path}: {unit} {number} must be a JSON object, got {_json_type(record)}", "wrong_type")
        except DataError as err:
            if bad_rows != "skip":
                raise
            skipped.add(err.reason)
            continue
        rows.append(Row(record, path, number, unit))
    return rows


def _json_type(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def rows_from_task(rows: Iterable[dict[str, Any]], name: str) -> list[Row]:
    return [Row(dict(r), f"builtin:{name}", i) for i, r in enumerate(rows, start=1)]


def _fail(row: Row, fieldname: str, why: str, reason: str) -> DataError:
    return DataError(f"{row.where}: field '{fieldname}' {why}", reason)


def _get_text(row: Row, key: str) -> str:
    if key not in row.data or row.data[key] is None:
        raise _fail(row, key, "is missing", "missing_field")
    value = row.data[key]
    if not isinstance(value, str):
        raise _fail(row, key, f"must be a string, got {type(value).__name__}", "wrong_type")
    return value


# ---- conversations ---------------------------------------------------------------------------

def _messages(row: Row, key: str, why_listed: str = "") -> list[dict[str, str]]:
    """Field `key` as a non-empty list of {role, content} messages of strings."""
    if key not in row.data or row.data[key] is None:
        raise _fail(row, key, "is missing", "missing_field")
    messages = row.data[key]
    if not isinstance(messages, list) or not messages:
        raise _fail(row, key, f"must be a non-empty list of {{role, content}} messages{why_listed}", "wrong_type")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise _fail(row, f"{key}[{i}]", "must be a {role, content} mapping of strings", "wrong_type")
    return messages


def _check_reply(row: Row, key: str, reply: list[dict[str, str]]) -> None:
    if reply[-1]["role"] != "assistant":
        raise _fail(row, key, "must end with an assistant message (the completion)", "wrong_type")
    if not reply[-1]["content"].strip():
        raise _fail(row, key, "ends with an empty assistant message", "empty")


def _apply_template(row: Row, key: str, tokenizer, messages: list, **kwargs) -> str:
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as err:  # templates raise their own errors (jinja's raise_exception, ...)
        raise _fail(row, key, f"could not be rendered with the chat template ({type(err).__name__}: {err})",
                    "template_error") from None
    if not isinstance(text, str):
        raise _fail(row, key, f"rendered with the chat template to {type(text).__name__}, not text", "template_error")
    return text


def _chat_ids(row: Row, tokenizer, prompt_key: str, prompt: list, replies: dict[str, list]) -> tuple[list[int], dict[str, list[int]]]:
    """Prompt ids and one completion's ids per reply, as TRL 1.16's DPOTrainer and SFTTrainer
    tokenise a conversational row.

    The prompt is rendered with `add_generation_prompt=True`, the prompt plus each reply as a
    whole, all tokenised; the prompt is the token prefix that all renderings share (a template
    may render the prompt alone differently, e.g. a generation prompt the conversation does not
    repeat) and each completion is the rest of its rendering, the template's end of turn included.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise _fail(row, prompt_key, "is conversational but the tokenizer has no chat template", "no_chat_template")
    for key, reply in replies.items():
        _check_reply(row, key, reply)
    prompt_ids = encode_prompt(tokenizer, _apply_template(row, prompt_key, tokenizer, prompt, add_generation_prompt=True), True)
    full = {key: encode_prompt(tokenizer, _apply_template(row, key, tokenizer, prompt + reply), True)
            for key, reply in replies.items()}
    n = len(prompt_ids)
    for ids in full.values():
        n = next((i for i, (a, b) in enumerate(zip(prompt_ids[:n], ids)) if a != b), min(n, len(ids)))
    if n == 0:
        raise _fail(row, prompt_key, "renders with a chat template whose prompt shares no tokens with the conversation",
                    "template_mismatch")
    return prompt_ids[:n], {key: _end_turn(tokenizer, ids[n:]) for key, ids in full.items()}


def _extract_prompt_turns(row: Row, chosen: list, rejected: list) -> tuple[list, list, list]:
    """TRL's `extract_prompt` on conversations: the prompt is the messages both begin with."""
    shortest = min(len(chosen), len(rejected))
    k = next((i for i in range(shortest) if chosen[i] != rejected[i]), shortest - 1)
    if k == 0:
        raise _fail(row, "chosen", "and 'rejected' share no leading prompt messages (give the prompt as 'prompt', "
                    "a list of messages; a string 'prompt' is ignored beside conversations, as in TRL)",
                    "no_common_prompt")
    return chosen[:k], chosen[k:], rejected[k:]


# ---- tokens ----------------------------------------------------------------------------------

def encode_prompt(tokenizer, prompt: str, chat_rendered: bool = False) -> list[int]:
    # A chat template already contains the model's special tokens; a plain prompt gets them here.
    return list(tokenizer(prompt, add_special_tokens=not chat_rendered)["input_ids"])


def encode_completion(tokenizer, completion: str) -> list[int]:
    """A plain completion's ids, ending in exactly one EOS (added unless the text ends with it)."""
    ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    eos = tokenizer.eos_token_id
    return ids if eos is None or (ids and ids[-1] == eos) else ids + [eos]


def _end_turn(tokenizer, ids: list[int]) -> list[int]:
    """A chat-rendered completion's ids, ending at its end token: what a template writes after
    EOS (ChatML's newline after "<|im_end|>") is cut, since the model would be trained on a token
    past its end and a reward head would read a position generation never reaches; a template
    that puts no EOS in the turn gets one added, so that generation, which stops at EOS, can stop."""
    eos = tokenizer.eos_token_id
    if eos is None:
        return ids
    if eos not in ids:
        return ids + [eos]
    return ids[: len(ids) - ids[::-1].index(eos)]  # up to and including the last EOS


@dataclass
class SFTExample:
    prompt_ids: list[int]
    completion_ids: list[int]


@dataclass
class PairExample:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    margin: float = 0.0  # the row's `margin` column when read (`read_margin=True`), else 0


def _check_length(row: Row, n: int, max_length: int, fieldname: str) -> None:
    if n > max_length:
        raise _fail(row, fieldname, f"is {n} tokens with the prompt, over data.max_length={max_length}", "too_long")


def convert_rows(rows: list[Row], convert, bad_rows: str, skipped: SkipCounter) -> list:
    """`convert(row)` of each row, in order. A row that `convert` refuses with a DataError stops
    the load (`bad_rows: error`) or is left out and counted in `skipped` under the error's reason
    (`skip`): the per-row rule of every loader (SFT and preference examples here, the prompts of
    on-policy runs in `align.data.prompts.load_prompt_rows`)."""
    out = []
    for row in rows:
        try:
            out.append(convert(row))
        except DataError as err:
            if bad_rows == "error":
                raise
            skipped.add(err.reason)
    return out


def _sft_ids(row: Row, tokenizer) -> tuple[list[int], list[int], str]:
    """(prompt ids, completion ids, field named in errors) of one SFT row."""
    if "messages" in row.data:
        messages = _messages(row, "messages")
        if len(messages) < 2:
            _check_reply(row, "messages", messages)
            raise _fail(row, "messages", "needs a message before the assistant's reply (the prompt)", "wrong_type")
        prompt_ids, replies = _chat_ids(row, tokenizer, "messages", messages[:-1], {"messages": messages[-1:]})
        return prompt_ids, replies["messages"], "messages"
    if isinstance(row.data.get("prompt"), list) or isinstance(row.data.get("completion"), list):
        listed = " (the row is conversational)"
        prompt_msgs, reply = _messages(row, "prompt", listed), _messages(row, "completion", listed)
        prompt_ids, replies = _chat_ids(row, tokenizer, "prompt", prompt_msgs, {"completion": reply})
        return prompt_ids, replies["completion"], "completion"
    prompt, completion = _get_text(row, "prompt"), _get_text(row, "completion")
    if not completion.strip():
        raise _fail(row, "completion", "is empty", "empty")
    return encode_prompt(tokenizer, prompt), encode_completion(tokenizer, completion), "completion"


def sft_examples(rows: list[Row], tokenizer, max_length: int, bad_rows: str, skipped: SkipCounter) -> list[SFTExample]:
    """Validate and tokenise SFT rows (prompt/completion, conversational or not, or messages)."""

    def convert(row: Row) -> SFTExample:
        p, c, fieldname = _sft_ids(row, tokenizer)
        _check_length(row, len(p) + len(c), max_length, fieldname)
        return SFTExample(p, c)

    return convert_rows(rows, convert, bad_rows, skipped)


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


def _tie(row: Row) -> DataError:
    return _fail(row, "rejected", "is identical to 'chosen' (a tie carries no preference)", "identical_pair")


def _pair_ids(row: Row, tokenizer) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) ids of one preference row, in any of TRL's formats."""
    prompt = row.data.get("prompt")
    if any(isinstance(row.data.get(k), list) for k in ("prompt", "chosen", "rejected")):
        listed = " (the row is conversational)"
        chosen, rejected = _messages(row, "chosen", listed), _messages(row, "rejected", listed)
        if chosen == rejected:
            raise _tie(row)
        if isinstance(prompt, list):
            prompt_key, prompt = "prompt", _messages(row, "prompt", listed)
        elif prompt is None or isinstance(prompt, str):
            prompt_key = "chosen"
            prompt, chosen, rejected = _extract_prompt_turns(row, chosen, rejected)
        else:
            raise _fail(row, "prompt", f"must be a list of messages or a string, got {type(prompt).__name__}", "wrong_type")
        prompt_ids, replies = _chat_ids(row, tokenizer, prompt_key, prompt, {"chosen": chosen, "rejected": rejected})
        return prompt_ids, replies["chosen"], replies["rejected"]
    if prompt is not None:
        prompt, chosen, rejected = _get_text(row, "prompt"), _get_text(row, "chosen"), _get_text(row, "rejected")
    else:
        prompt, chosen, rejected = _split_implicit(row, _get_text(row, "chosen"), _get_text(row, "rejected"))
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise _fail(row, name, "is empty", "empty")
    if chosen == rejected:
        raise _tie(row)
    return encode_prompt(tokenizer, prompt), encode_completion(tokenizer, chosen), encode_completion(tokenizer, rejected)


def _margin(row: Row) -> float:
    """A row's `margin` column (0 when absent) as a float; anything but a finite number is a DataError."""
    margin = row.data.get("margin", 0.0)
    if isinstance(margin, (int, float)) and not isinstance(margin, bool):
        try:
            if math.isfinite(float(margin)):
                return float(margin)
        except OverflowError:  # an integer past float range
            pass
    raise _fail(row, "margin", f"must be a finite number, got {margin!r}", "wrong_type")


def pair_examples(rows: list[Row], tokenizer, max_length: int, bad_rows: str, skipped: SkipCounter, *,
                  read_margin: bool = False) -> list[PairExample]:
    """Validate and tokenise preference rows (explicit or implicit prompt, conversational or not).

    With `read_margin`, each row's `margin` column is read into its example (0 when absent), as
    part of the row: a bad margin is that row's DataError (checked before the pair itself), so a
    row skipped under `bad_rows: skip` takes its margin with it."""

    def convert(row: Row) -> PairExample:
        margin = _margin(row) if read_margin else 0.0
        p, c, r = _pair_ids(row, tokenizer)
        if c == r:  # different texts can still be the same tokens (e.g. two unknown characters)
            raise _fail(row, "rejected", "has the same tokens as 'chosen' (a tie carries no preference)", "identical_pair")
        _check_length(row, len(p) + len(c), max_length, "chosen")
        _check_length(row, len(p) + len(r), max_length, "rejected")
        return PairExample(p, c, r, margin)

    return convert_rows(rows, convert, bad_rows, skipped)


def load_examples(data, tokenizer, kind: str, split: str, seed: int, skipped: SkipCounter, *,
                  read_margin: bool = False) -> list:
    """Training ("train") or held-out ("eval") examples of `kind` "sft" or "pairs".

    `data` is the recipe's `DataSettings`. Files win over the built-in task; without an eval
    file, held-out rows come from the built-in task's eval split (or none, for file-only data).
    A file with no rows, or whose rows were all skipped, is a `DataError`. `read_margin` (pairs
    only) reads a file's per-pair `margin` column into `PairExample.margin` (`pair_examples`);
    a built-in task's pairs keep margin 0.
    """
    if read_margin and kind != "pairs":
        raise ValueError(f"read_margin applies to preference pairs, not {kind!r} examples")
    before = Counter(skipped.counts)
    path = data.train_file if split == "train" else data.eval_file
    if path is not None:
        rows = read_rows(path, data.bad_rows, skipped)
        source = path
    elif data.task == "pretrain":
        # The base's pretraining corpus (train-split problems only); held-out loss is not used.
        if split != "train":
            return []
        rows = rows_from_task(
            ({"prompt": r["prompt"], "completion": r["completion"]} for r in pretrain_rows(data.num_train, seed)),
            "pretrain",
        )
        source = "builtin:pretrain"
    elif data.task is not None:
        task = task_for(data)
        n = data.num_train if split == "train" else data.num_eval
        produce = task.sft_rows if kind == "sft" else task.preference_rows
        rows = rows_from_task(produce(split, n, seed), f"{data.task}/{split}")
        source = f"builtin:{data.task}/{split}"
    else:
        return []
    if kind == "sft":
        examples = sft_examples(rows, tokenizer, data.max_length, data.bad_rows, skipped)
    else:
        examples = pair_examples(rows, tokenizer, data.max_length, data.bad_rows, skipped,
                                 read_margin=read_margin and path is not None)
    if not examples:
        raise no_rows_error(source, skipped.counts - before)  # this source's skips, unreadable lines included
    return examples


def no_rows_error(source: str, dropped: Counter) -> DataError:
    """The error for a source that gave no example: it has no rows, or (`dropped`: this source's
    skips by reason) all of them were skipped."""
    total = sum(dropped.values())
    if total == 0:
        return DataError(f"{source}: has no rows")
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items()))
    return DataError(f"{source}: all {total} rows were skipped (data.bad_rows: skip): {why}", "all_skipped")
