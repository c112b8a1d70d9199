"""Every standard TRL data format gives TRL's own tokens, and a completion ends in one end token.

The oracle is TRL 1.16 itself: `DPOTrainer._prepare_dataset` and `SFTTrainer._prepare_dataset`
(extract the prompt, render with the chat template, tokenise, split at the shared prefix, add EOS
to plain text) run on a one-format dataset, called without building a trainer or a model (they
read nothing from the trainer but its tokenizer). Two tokenizers: the built-in one (its template
drops system turns and ends a turn with `<eos>`) and a ChatML-like one (system turns rendered; a
turn ends `<eos>\\n`, where a second EOS used to be appended after the newline). One deliberate
difference: a completion ends at its EOS, so the newline a ChatML template writes after it, which
TRL keeps, is cut (`TRL_ENDED` below; see align/data/loading.py's token convention).

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_data_formats.py` (a few seconds, most of it
importing TRL).
"""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest

from align.compat import checkpointing_args
from align.config import DataSettings
from align.data.loading import (
    DataError, SkipCounter, load_examples, pair_examples, read_rows, rows_from_task, sft_examples,
)
from align.tasks.tokenizer import build_tokenizer

# A turn is "<role>content<eos>\n"; the generation prompt is "<assistant>".
CHATML = (
    "{{ bos_token }}{% for m in messages %}{{ '<' + m['role'] + '>' + m['content'] + eos_token + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}"
)
NO_EOS = CHATML.replace(" + eos_token", "")  # a template that never ends a turn with EOS

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "1+2=?"}


def said(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def preference_row(fmt: str, system: bool) -> dict:
    """The pair "1+2=? -> 3 over 4" in one of TRL's four preference formats."""
    head = [SYSTEM, USER] if system else [USER]
    text = ("Be brief. " if system else "") + "Q: 1+2=? A:"
    return {
        "explicit": {"prompt": text, "chosen": " 3", "rejected": " 4"},
        "implicit": {"chosen": text + " 3", "rejected": text + " 4"},
        "conversational_explicit": {"prompt": head, "chosen": [said("3")], "rejected": [said("4")]},
        "conversational_implicit": {"chosen": head + [said("3")], "rejected": head + [said("4")]},
    }[fmt]


@pytest.fixture(scope="module")
def tokenizers():
    chatml = build_tokenizer()
    chatml.chat_template = CHATML
    return {"builtin": build_tokenizer(), "chatml": chatml}


@pytest.fixture(scope="module")
def trl_prepare():
    """`prepare(kind, rows, tokenizer)`: TRL's own tokenisation of `rows` ("dpo" or "sft")."""
    from datasets import Dataset, disable_progress_bars
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    disable_progress_bars()
    common = dict(output_dir="/tmp/unused", report_to=[], use_cpu=True, dataset_num_proc=None, bf16=False,
                  **checkpointing_args(False))
    dpo_args, sft_args = DPOConfig(max_length=None, **common), SFTConfig(max_length=None, **common)

    def prepare(kind: str, rows: list[dict], tokenizer) -> list[dict]:
        dataset = Dataset.from_list(rows)
        if kind == "dpo":
            out = DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=tokenizer), dataset, tokenizer, dpo_args, "t")
        else:
            trainer = SimpleNamespace(_tokenizer=tokenizer, chat_template=None, completion_only_loss=True)
            out = SFTTrainer._prepare_dataset(trainer, dataset, tokenizer, sft_args, False, None, "t")
        return list(out)

    return prepare


FORMATS = ["explicit", "implicit", "conversational_explicit", "conversational_implicit"]


def ended(ids: list[int], eos: int) -> list[int]:
    """TRL's completion cut after its last EOS: ours ends there (nothing trained past the end)."""
    return ids[: len(ids) - ids[::-1].index(eos)]


@pytest.mark.parametrize("tokenizer_name", ["builtin", "chatml"])
@pytest.mark.parametrize("system", [False, True], ids=["no_system", "system"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_preference_format_gives_trl_dpo_tokens(tokenizers, trl_prepare, tokenizer_name, system, fmt):
    tok = tokenizers[tokenizer_name]
    row = preference_row(fmt, system)
    (ours,) = pair_examples(rows_from_task([row], fmt), tok, 64, "error", SkipCounter())
    (theirs,) = trl_prepare("dpo", [row], tok)
    eos = tok.eos_token_id
    assert ours.prompt_ids == theirs["prompt_ids"]
    assert ours.chosen_ids == ended(theirs["chosen_ids"], eos) and ours.rejected_ids == ended(theirs["rejected_ids"], eos)
    for completion in (ours.chosen_ids, ours.rejected_ids):
        assert completion.count(eos) == 1 and completion[-1] == eos
    if tokenizer_name == "chatml" and fmt.startswith("conversational"):  # the one difference: TRL's trailing "\n"
        assert theirs["chosen_ids"][len(ours.chosen_ids):] == tok("\n", add_special_tokens=False)["input_ids"]


def test_multi_turn_conversations_and_a_string_prompt_beside_them(tokenizers, trl_prepare):
    tok = tokenizers["chatml"]
    earlier = [SYSTEM, USER, said("3"), {"role": "user", "content": "and 2+2?"}]
    implicit = {"chosen": earlier + [said("4")], "rejected": earlier + [said("5")]}
    explicit = {"prompt": earlier, "chosen": [said("4")], "rejected": [said("5")]}
    a, b = pair_examples(rows_from_task([implicit, explicit], "multi"), tok, 128, "error", SkipCounter())
    (theirs,) = trl_prepare("dpo", [implicit], tok)
    eos = tok.eos_token_id
    for ours in (a, b):
        assert (ours.prompt_ids, ours.chosen_ids, ours.rejected_ids) == (
            theirs["prompt_ids"], ended(theirs["chosen_ids"], eos), ended(theirs["rejected_ids"], eos))
    # TRL's maybe_extract_prompt ignores a string prompt beside conversational chosen/rejected
    (c,) = pair_examples(rows_from_task([dict(implicit, prompt="ignored")], "multi"), tok, 128, "error", SkipCounter())
    assert c == a


def test_all_formats_agree_with_the_builtin_template(tokenizers):
    # The built-in template renders [user, assistant] as the task text "Q: ... A: 3<eos>", so the
    # four formats (a system turn is dropped by it) give the very same tokens.
    rows = [preference_row(fmt, False) for fmt in FORMATS] + [preference_row(f, True) for f in FORMATS[2:]]
    examples = pair_examples(rows_from_task(rows, "all"), tokenizers["builtin"], 64, "error", SkipCounter())
    assert all(e == examples[0] for e in examples)


def test_conversational_preference_file_through_load_examples(tmp_path, tokenizers):
    # The row: prompt as messages, chosen/rejected as single assistant turns (it crashed
    # with "Cannot apply chat template to an empty conversation").
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(preference_row("conversational_explicit", s)) + "\n" for s in (False, True)))
    data = DataSettings(task=None, train_file=str(path))
    examples = load_examples(data, tokenizers["chatml"], "pairs", "train", 0, SkipCounter())
    assert len(examples) == 2 and examples[0] != examples[1]  # the system turn is in the second prompt


@pytest.mark.parametrize("tokenizer_name", ["builtin", "chatml"])
def test_sft_conversations_give_trl_sft_tokens_with_one_end_token(tokenizers, trl_prepare, tokenizer_name):
    tok = tokenizers[tokenizer_name]
    conversation = [SYSTEM, USER, said("3")]
    rows = [{"messages": conversation}, {"prompt": conversation[:-1], "completion": conversation[-1:]}]
    messages, prompt_completion = sft_examples(rows_from_task(rows, "sft"), tok, 64, "error", SkipCounter())
    eos = tok.eos_token_id
    # TRL's language-modelling row: the rendered conversation, up to its end token, and no EOS added
    (lm,) = trl_prepare("sft", rows[:1], tok)
    assert messages.prompt_ids + messages.completion_ids == ended(lm["input_ids"], eos)
    # TRL's prompt-completion row: the same split between prompt and completion
    (pc,) = trl_prepare("sft", rows[1:], tok)
    assert prompt_completion.prompt_ids + prompt_completion.completion_ids == ended(pc["input_ids"], eos)
    n = len(prompt_completion.prompt_ids) + len(prompt_completion.completion_ids)
    assert [-100] * len(prompt_completion.prompt_ids) + prompt_completion.completion_ids == pc["labels"][:n]
    assert prompt_completion == messages
    assert messages.completion_ids.count(eos) == 1 and messages.completion_ids[-1] == eos


def test_completion_ends_in_exactly_one_end_token(tokenizers):
    tok = tokenizers["chatml"]
    conversation = [USER, said("3")]
    (chat,) = sft_examples(rows_from_task([{"messages": conversation}], "x"), tok, 64, "error", SkipCounter())
    # the template's own end of turn "<eos>" ends the completion: no second EOS, and not the
    # newline the template writes after it (generation stops at EOS and never produces it)
    assert chat.completion_ids == tok("3<eos>", add_special_tokens=False)["input_ids"]
    assert chat.prompt_ids + chat.completion_ids == tok.apply_chat_template(conversation, tokenize=True)["input_ids"][:-1]
    # a template that puts no EOS in the turn: one EOS is added, so that generation can stop
    no_eos = copy.deepcopy(tok)
    no_eos.chat_template = NO_EOS
    (bare,) = sft_examples(rows_from_task([{"messages": conversation}], "x"), no_eos, 64, "error", SkipCounter())
    assert bare.completion_ids == tok("3\n", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    # plain text: EOS is added, unless the completion already ends with it
    plain = [{"prompt": "Q: 1+2=? A:", "completion": " 3"}, {"prompt": "Q: 1+2=? A:", "completion": " 3<eos>"}]
    a, b = sft_examples(rows_from_task(plain, "x"), tok, 64, "error", SkipCounter())
    assert a == b and a.completion_ids.count(tok.eos_token_id) == 1 and a.completion_ids[-1] == tok.eos_token_id


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": [USER], "chosen": " 3", "rejected": [said("4")]},
         "line 1: field 'chosen' must be a non-empty list of {role, content} messages (the row is conversational)"),
        ({"prompt": [USER], "chosen": [said("3")], "rejected": [USER]},
         "line 1: field 'rejected' must end with an assistant message"),
        ({"prompt": [USER], "chosen": [said("3")], "rejected": [said(" ")]},
         "line 1: field 'rejected' ends with an empty assistant message"),
        ({"prompt": [USER], "chosen": [said("3")], "rejected": [said("3")]},
         "line 1: field 'rejected' is identical to 'chosen'"),
        ({"prompt": [{"role": "user"}], "chosen": [said("3")], "rejected": [said("4")]},
         "line 1: field 'prompt[0]' must be a {role, content} mapping of strings"),
        ({"chosen": [said("3")], "rejected": [said("4")]},
         "line 1: field 'chosen' and 'rejected' share no leading prompt messages"),
        ({"prompt": 7, "chosen": [said("3")], "rejected": [said("4")]},
         "line 1: field 'prompt' must be a list of messages or a string, got int"),
        ({"prompt": [USER], "chosen": [said("3 " * 40)], "rejected": [said("4")]},
         "line 1: field 'chosen' is 94 tokens with the prompt, over data.max_length=64"),
    ],
)
def test_bad_conversational_rows_name_file_line_and_field(tmp_path, tokenizers, row, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError) as err:
        pair_examples(read_rows(str(path)), tokenizers["builtin"], 64, "error", SkipCounter())
    assert str(err.value).startswith(f"{path}: {message}")


def test_template_errors_and_missing_templates_are_data_errors(tokenizers):
    strict = copy.deepcopy(tokenizers["builtin"])
    strict.chat_template = "{{ raise_exception('roles must alternate') }}"
    row = rows_from_task([{"messages": [USER, said("3")]}], "x")
    with pytest.raises(DataError, match=r"builtin:x: row 1: field 'messages' could not be rendered with the chat "
                                        r"template \(TemplateError: roles must alternate\)"):
        sft_examples(row, strict, 64, "error", SkipCounter())
    strict.chat_template = None
    with pytest.raises(DataError, match="row 1: field 'messages' is conversational but the tokenizer has no chat template"):
        sft_examples(row, strict, 64, "error", SkipCounter())
