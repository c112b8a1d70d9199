"""Built-in tasks, tokenizer and model config: determinism, splits, noise, verifier, gold rule.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_tasks.py`.
"""

from __future__ import annotations

import pytest
import torch

from align.tasks import BUILTIN_BASES, get_task
from align.tasks.arithmetic import (
    WORLD,
    ArithmeticWorld,
    answer_of,
    arithmetic_preference_rows,
    arithmetic_prompts,
    arithmetic_sft_rows,
    extract_answer,
    is_correct,
    pretrain_corpus,
    pretrain_rows,
    problems,
    split_of,
)
from align.tasks.base_model import tiny_llama_config
from align.tasks.preference import gold_score, preference_pairs, preference_sft_rows
from align.tasks.tokenizer import build_tokenizer

torch.set_num_threads(1)


# ---------------------------------------------------------------- splits and determinism


def test_splits_are_disjoint_cover_everything_and_fixed():
    train, eval_ = set(problems("train")), set(problems("eval"))
    assert not train & eval_
    n_total = sum(
        1
        for op in WORLD.operations
        for a in range(WORLD.max_operand + 1)
        for b in range(WORLD.max_second_operand + 1)
        if op == "+" or a >= b
    )
    assert len(train) + len(eval_) == n_total
    assert 0.15 < len(eval_) / n_total < 0.25  # eval_fraction = 0.2
    assert split_of(23, "+", 45) == split_of(23, "+", 45)


def test_prompts_are_deterministic_and_respect_the_split():
    a = arithmetic_prompts("eval", 50, seed=3)
    assert a == arithmetic_prompts("eval", 50, seed=3)
    assert a != arithmetic_prompts("eval", 50, seed=4)
    eval_prompts = {f"Q: {x}{op}{y}=? A:" for x, op, y in problems("eval")}
    assert all(row["prompt"] in eval_prompts for row in a)
    assert all(answer_of(row["prompt"]) == row["answer"] for row in a)
    # Asking for more than the split holds cycles through it with replacement.
    assert len(arithmetic_prompts("eval", len(problems("eval")) + 5, seed=0)) == len(problems("eval")) + 5


def test_corpus_uses_train_problems_only():
    eval_prompts = {f"Q: {x}{op}{y}=? A:" for x, op, y in problems("eval")}
    assert not any(row["prompt"] in eval_prompts for row in pretrain_rows(2000, seed=0))


@pytest.mark.parametrize("wrong,padded", [(0.3, 0.3), (0.0, 0.5), (0.55, 0.0)])
def test_corpus_noise_fraction_is_as_configured(wrong, padded):
    world = ArithmeticWorld(wrong_fraction=wrong, padded_fraction=padded)
    rows = pretrain_rows(1000, seed=1, world=world)
    n_wrong = sum(not is_correct(row["completion"], row["answer"]) for row in rows)
    n_padded = sum(row["completion"].strip() != str(extract_answer(row["completion"])) for row in rows)
    assert n_wrong == round(1000 * wrong)
    assert n_padded == round(1000 * padded)
    texts = pretrain_corpus(1000, seed=1, world=world)
    assert texts == [row["prompt"] + row["completion"] for row in rows]
    assert texts == pretrain_corpus(1000, seed=1, world=world)


def test_sft_and_pair_rows():
    for row in arithmetic_sft_rows("train", 50, seed=0):
        assert is_correct(row["completion"], answer_of(row["prompt"]))
        assert row["completion"] == f" {answer_of(row['prompt'])}"
    for row in arithmetic_preference_rows("train", 50, seed=0):
        assert is_correct(row["chosen"], answer_of(row["prompt"]))
        assert not is_correct(row["rejected"], answer_of(row["prompt"]))
        assert extract_answer(row["rejected"]) >= 0


# ---------------------------------------------------------------- verifier


@pytest.mark.parametrize(
    "completion,expected",
    [
        (" 68", 68),
        ("68", 68),
        (" um so it is 68", 68),
        (" 68 i think", 68),
        (" 12 no wait 68", 68),  # the last integer counts
        (" -3", -3),
        (" 007", 7),
        (" 68.", 68),
        ("", None),
        (" i do not know", None),
        (" 68\nQ: 1+2=? A: 3", 68),  # a run-on next question is ignored
        (" 23-5", 5),  # a minus glued to a digit is an operator, not a sign
        (" 1,234", 1234),  # thousands separators, as GSM8K answers write them
        (" so 1,234,567 dollars", 1234567),
        (" 3, 4", 4),  # a comma then a space separates two numbers
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


def test_is_correct():
    assert is_correct(" 68", 68)
    assert is_correct(" 68 i think", 68)
    assert not is_correct(" 67", 68)
    assert not is_correct(" 680", 68)
    assert not is_correct("", 0)
    assert is_correct(" 0", 0)


# ---------------------------------------------------------------- gold rule


def test_gold_rule_ordering():
    prompt = "Q: 23+45=? A:"
    concise = gold_score(prompt, " 68", 68)
    padded_short = gold_score(prompt, " 68 i think", 68)
    padded_long = gold_score(prompt, " um so it is 68 i think", 68)
    wrong_concise = gold_score(prompt, " 67", 68)
    wrong_padded = gold_score(prompt, " um so it is 67", 68)
    assert concise == 1.0
    assert concise > padded_short > padded_long > wrong_concise
    assert wrong_concise == wrong_padded == gold_score(prompt, " no idea", 68) == 0.0


def test_preference_pairs_are_gold_ordered_never_ties_and_varied():
    pairs = preference_pairs("train", 300, seed=0)
    assert pairs == preference_pairs("train", 300, seed=0)
    kinds = set()
    for row in pairs:
        answer = answer_of(row["prompt"])
        chosen, rejected = gold_score("", row["chosen"], answer), gold_score("", row["rejected"], answer)
        assert chosen > rejected
        kinds.add((chosen == 1.0, rejected > 0.0))
    assert kinds == {(True, True), (True, False), (False, False)}  # all three kinds of pair


def test_preference_sft_rows_are_correct_and_mixed_style():
    rows = preference_sft_rows("train", 200, seed=0)
    assert all(is_correct(r["completion"], answer_of(r["prompt"])) for r in rows)
    concise = sum(gold_score("", r["completion"], answer_of(r["prompt"])) == 1.0 for r in rows)
    assert 60 < concise < 140


# ---------------------------------------------------------------- task registry


@pytest.mark.parametrize("name", ["arithmetic", "preference"])
def test_task_interface(name):
    task = get_task(name)
    assert task.name == name
    rows = task.prompts("eval", 8, seed=0)
    assert set(rows[0]) == {"prompt", "answer"}
    assert set(task.sft_rows("train", 4)[0]) == {"prompt", "completion"}
    assert set(task.preference_rows("train", 4)[0]) == {"prompt", "chosen", "rejected"}
    assert task.pretrain_corpus(10, seed=0) == get_task("arithmetic").pretrain_corpus(10, seed=0)
    prompts = [r["prompt"] for r in rows[:3]]
    answers = [r["answer"] for r in rows[:3]]
    completions = [f" {answers[0]}", f" um so it is {answers[1]}", f" {answers[2] + 1}"]
    scores = task.score(prompts, completions, answers)
    assert scores[0] == 1.0 and scores[2] == 0.0
    assert scores[1] == (1.0 if name == "arithmetic" else gold_score("", completions[1], answers[1]))
    assert task.correct(completions, answers) == [True, True, False]
    with pytest.raises(ValueError):
        get_task("nope")


def test_builtin_base_description():
    base = BUILTIN_BASES["builtin:tiny-arith"]
    assert base.config_size == "tiny-arith"
    assert base.steps > 0 and base.learning_rate > 0 and base.batch_size > 0


# ---------------------------------------------------------------- tokenizer and config


def test_tokenizer_round_trip_and_special_tokens():
    tok = build_tokenizer()
    text = "Q: 23+45=? A: um so it is 68"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    # Char-level: no merge across the prompt/completion boundary.
    prompt, completion = "Q: 23+45=? A:", " 68"
    assert tok(prompt + completion)["input_ids"] == tok(prompt)["input_ids"] + tok(completion, add_special_tokens=False)["input_ids"]
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 4
    assert tok("é", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    # Deterministic: two builds agree.
    assert build_tokenizer().get_vocab() == tok.get_vocab()


def test_tokenizer_padding_sides():
    tok = build_tokenizer()
    left = tok(["Q: 1", "Q: 12+3"], padding=True, padding_side="left")
    assert left["input_ids"][0][:3] == [tok.pad_token_id] * 3 and left["attention_mask"][0][:3] == [0, 0, 0]
    right = tok(["Q: 1", "Q: 12+3"], padding=True, padding_side="right")
    assert right["input_ids"][0][-3:] == [tok.pad_token_id] * 3


def test_tokenizer_save_load(tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(loaded, PreTrainedTokenizerFast)
    text = "Q: 99-17=? A: 82 i think"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert (loaded.pad_token, loaded.bos_token, loaded.eos_token, loaded.unk_token) == ("<pad>", "<bos>", "<eos>", "<unk>")
    assert loaded.chat_template == tok.chat_template


def test_chat_template_renders_the_task_format():
    tok = build_tokenizer()
    messages = [{"role": "user", "content": "23+45=?"}, {"role": "assistant", "content": "68"}]
    assert tok.apply_chat_template(messages, tokenize=False) == "<bos>Q: 23+45=? A: 68<eos>"
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<bos>Q: 23+45=? A:"
    encoded = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert encoded["input_ids"] == tok("Q: 23+45=? A: 68")["input_ids"] + [tok.eos_token_id]
    assert sum(encoded["assistant_masks"]) == len(" 68") + 1  # completion + EOS


@pytest.mark.parametrize("size", ["tiny-arith", "test"])
def test_model_config(size):
    from transformers import LlamaForCausalLM

    tok = build_tokenizer()
    config = tiny_llama_config(len(tok), size)
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (
        tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    if size == "test":
        n_params = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
        assert n_params < 100_000
    else:
        assert config.num_hidden_layers == 2 and config.hidden_size == 128
    with pytest.raises(ValueError):
        tiny_llama_config(10, "huge")
