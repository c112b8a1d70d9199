"""Tests of the instructions task (`align.tasks.instructions`) and its reward
(`reward_models.instructions`): every constraint against hand examples, the generator's
determinism, split and consistency, and the reward against hand-computed fractions.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_instructions_task.py`.
"""

from __future__ import annotations

import json
import random

import pytest

from align.tasks import instructions as ins
from reward_models.base import build_reward, reward_needs_answer
from reward_models.instructions import InstructionFollowing


def met(text: str, *spec: dict) -> list[bool]:
    return ins.constraints_met(text, list(spec))


# ---------------------------------------------------------------- each constraint


@pytest.mark.parametrize(
    "spec, text, expected",
    [
        ({"kind": "max_words", "n": 3}, "One two three.", True),
        ({"kind": "max_words", "n": 3}, "One two three four.", False),
        ({"kind": "max_words", "n": 3}, "- one\n- two\n- three", True),  # "- " marks are not words
        ({"kind": "max_words", "n": 2}, "Don't stop.", True),  # "don't" is one word
        ({"kind": "min_words", "n": 4}, "a b c d", True),
        ({"kind": "min_words", "n": 4}, "a, b, c!", False),
        ({"kind": "lowercase"}, "all small here, 42 times.", True),
        ({"kind": "lowercase"}, "all small here but One", False),
        ({"kind": "include_word", "word": "quiet"}, "It was Quiet.", True),  # case-insensitive
        ({"kind": "include_word", "word": "quiet"}, "It was quietly done.", False),  # whole words only
        ({"kind": "avoid_word", "word": "the"}, "There, then, they.", True),
        ({"kind": "avoid_word", "word": "the"}, "The end.", False),
        ({"kind": "end_with", "phrase": "See you soon."}, "Bye for now. See you soon.", True),
        ({"kind": "end_with", "phrase": "See you soon."}, "Bye. See you soon", False),
        ({"kind": "end_with", "phrase": "See you soon."}, "Bye. see you soon.", False),  # exact case
        ({"kind": "bullets", "n": 2}, "Intro:\n- tea\n- toast", True),
        ({"kind": "bullets", "n": 2}, "- tea\n- toast\n- jam", False),
        ({"kind": "bullets", "n": 2}, "-tea\n-toast", False),  # a bullet is "- ", with the space
        ({"kind": "no_commas"}, "No commas here.", True),
        ({"kind": "no_commas"}, "Well, no.", False),
        ({"kind": "start_with", "word": "Today"}, "today I walked.", True),
        ({"kind": "start_with", "word": "Today"}, '"Today," she said.', True),  # punctuation is not a word
        ({"kind": "start_with", "word": "Today"}, "Todays are long.", False),
        ({"kind": "start_with", "word": "Today"}, "It is today.", False),
    ],
)
def test_constraint_checks(spec, text, expected):
    assert met(text, spec) == [expected]


def test_text_is_stripped_and_an_empty_answer_meets_nothing():
    assert met("  \n Thank you. \n", {"kind": "end_with", "phrase": "Thank you."}) == [True]
    spec = [{"kind": "no_commas"}, {"kind": "avoid_word", "word": "the"}, {"kind": "max_words", "n": 20}]
    assert ins.constraints_met("   ", spec) == [False, False, False]
    assert ins.constraints_met("...", spec) == [False, False, False]


def test_every_kind_is_tested_and_has_an_instruction():
    assert set(ins.CONSTRAINTS) == {"max_words", "min_words", "lowercase", "include_word", "avoid_word",
                                    "end_with", "bullets", "no_commas", "start_with"}
    for spec in ins.draw_spec(random.Random(0)):
        assert ins.from_spec(spec).instruction().endswith((".", "!", "'"))


def test_fraction_and_all_met():
    spec = [{"kind": "max_words", "n": 5}, {"kind": "no_commas"}, {"kind": "include_word", "word": "tea"}]
    assert ins.constraints_met("Tea, please.", spec) == [True, False, True]
    assert ins.fraction_met("Tea, please.", spec) == pytest.approx(2 / 3)
    assert not ins.all_met("Tea, please.", spec)
    assert ins.all_met("Tea please.", spec)
    assert ins.fraction_met("anything", []) == 0.0 and not ins.all_met("anything", [])


def test_bad_specs_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown instruction constraint kind 'shout'"):
        ins.constraints_met("x", [{"kind": "shout"}])
    with pytest.raises(ValueError, match="bad fields"):
        ins.constraints_met("x", [{"kind": "max_words", "words": 3}])
    with pytest.raises(ValueError, match="list of constraint specs"):
        ins.constraints_met("x", 68)


# ---------------------------------------------------------------- the generator


def test_prompts_are_deterministic_and_seeded():
    rows = ins.instruction_prompts("train", 50, seed=3)
    assert rows == ins.instruction_prompts("train", 50, seed=3)
    assert rows != ins.instruction_prompts("train", 50, seed=4)
    assert ins.instruction_prompts("train", 10, seed=3) == rows[:10]  # a longer draw extends a shorter one


def test_prompt_is_request_plus_instructions():
    for row in ins.instruction_prompts("eval", 20, seed=0):
        request = next(r for r in ins.requests("eval") if row["prompt"].startswith(r + " "))
        assert row["prompt"] == ins.render_prompt(request, row["answer"])
        assert 1 <= len(row["answer"]) <= ins.MAX_CONSTRAINTS
        for spec in row["answer"]:
            assert ins.from_spec(spec).instruction() in row["prompt"]


def test_train_and_eval_are_disjoint_by_topic():
    train, held_out = set(ins.requests("train")), set(ins.requests("eval"))
    assert train and held_out and not train & held_out
    topics = ins.DESCRIBE_TOPICS + ins.NOTE_TOPICS
    assert len(topics) >= 40 and len(set(topics)) == len(topics)
    train_topics = {t for t in topics if any(t in r for r in train)}
    eval_topics = {t for t in topics if any(t in r for r in held_out)}
    assert train_topics | eval_topics == set(topics) and not train_topics & eval_topics
    assert len(eval_topics) == round(0.2 * len(ins.DESCRIBE_TOPICS)) + round(0.2 * len(ins.NOTE_TOPICS))
    for row in ins.instruction_prompts("eval", 200, seed=1):
        assert not any(row["prompt"].startswith(r + " ") for r in train)
    with pytest.raises(ValueError, match="split must be one of"):
        ins.instruction_prompts("test", 1)


def test_no_contradictory_combinations_in_2000_draws():
    rows = ins.instruction_prompts("train", 1000, seed=0) + ins.instruction_prompts("eval", 1000, seed=0)
    sizes = set()
    for row in rows:
        spec = {item["kind"]: item for item in row["answer"]}
        sizes.add(len(row["answer"]))
        assert len(spec) == len(row["answer"])  # one constraint per kind
        # The rules written out again here, independently of `conflicts`.
        if "lowercase" in spec:
            for item in spec.values():
                for value in (item.get("word"), item.get("phrase")):
                    assert value is None or value == value.lower(), row
        if "no_commas" in spec and "end_with" in spec:
            assert "," not in spec["end_with"]["phrase"]
        if "avoid_word" in spec:
            avoided = spec["avoid_word"]["word"]
            for kind in ("include_word", "start_with", "end_with"):
                if kind in spec:
                    text = spec[kind].get("word") or spec[kind]["phrase"]
                    assert avoided not in [w.lower() for w in ins.words(text)], row
        if "max_words" in spec and "min_words" in spec:
            assert spec["max_words"]["n"] >= spec["min_words"]["n"] + 10
        assert not ("bullets" in spec and "start_with" in spec)
        assert not ins.conflicts(row["answer"])
    assert sizes == {1, 2, 3}


def test_conflicts_are_detected():
    assert ins.conflicts([{"kind": "lowercase"}, {"kind": "start_with", "word": "Today"}])
    assert ins.conflicts([{"kind": "lowercase"}, {"kind": "end_with", "phrase": "Thank you."}])
    assert not ins.conflicts([{"kind": "lowercase"}, {"kind": "end_with", "phrase": "and that is all."}])
    assert ins.conflicts([{"kind": "include_word", "word": "the"}, {"kind": "avoid_word", "word": "the"}])
    assert ins.conflicts([{"kind": "avoid_word", "word": "and"}, {"kind": "end_with", "phrase": "and that is all."}])
    assert ins.conflicts([{"kind": "no_commas"}, {"kind": "end_with", "phrase": "Take care, friend."}])
    assert ins.conflicts([{"kind": "max_words", "n": 15}, {"kind": "min_words", "n": 12}])
    assert ins.conflicts([{"kind": "max_words", "n": 15}, {"kind": "bullets", "n": 3}])
    assert ins.conflicts([{"kind": "no_commas"}, {"kind": "no_commas"}])
    assert not ins.conflicts([{"kind": "max_words", "n": 25}, {"kind": "min_words", "n": 12}])


def test_specs_round_trip_through_json():
    rows = ins.instruction_prompts("train", 200, seed=5)
    assert json.loads(json.dumps(rows)) == rows
    for row in rows:
        text = "- today i walked and it was nice\n- see you soon."
        assert ins.constraints_met(text, json.dumps(row["answer"])) == ins.constraints_met(text, row["answer"])
        assert [ins.to_spec(ins.from_spec(s)) for s in row["answer"]] == row["answer"]


# ---------------------------------------------------------------- the task and the reward


def test_task_interface():
    task = ins.InstructionsTask()
    assert task.name == "instructions" and task.chat
    rows = task.prompts("train", 4, 0)
    assert rows == ins.instruction_prompts("train", 4, 0)
    answers = [[{"kind": "no_commas"}, {"kind": "max_words", "n": 3}], [{"kind": "lowercase"}]]
    completions = ["Yes, it is fine.", "all good"]
    assert task.correct(completions, answers) == [False, True]
    assert task.score(["p1", "p2"], completions, answers) == [0.0, 1.0]
    for method, args in (("sft_rows", ("train", 2)), ("preference_rows", ("train", 2)), ("pretrain_corpus", (2,))):
        with pytest.raises(ValueError, match="task 'instructions' has no"):
            getattr(task, method)(*args)


def test_reward_equals_hand_computed_fractions():
    reward = build_reward("instruction_following")  # registered by importing reward_models.instructions
    assert isinstance(reward, InstructionFollowing) and reward_needs_answer(reward)
    answers = [
        [{"kind": "max_words", "n": 5}, {"kind": "no_commas"}, {"kind": "include_word", "word": "tea"}],
        [{"kind": "lowercase"}, {"kind": "bullets", "n": 2}],
        [{"kind": "start_with", "word": "Hello"}],
        [{"kind": "no_commas"}],
    ]
    completions = [
        "Tea, please.",           # 5 words ok, comma, has tea -> 2/3
        "- tea\n- Toast",         # capital T, 2 bullets -> 1/2
        "Hello there, friend.",   # -> 1/1
        "   ",                    # empty: meets nothing -> 0/1
    ]
    out = reward(["p"] * 4, completions, answers=answers)
    assert out.scores == pytest.approx([2 / 3, 1 / 2, 1.0, 0.0])
    assert out.info["all_met"] == [False, False, True, False]
    assert out.info["no_commas/met"] == [0.0, None, None, 0.0]
    assert out.info["bullets/met"] == [None, 1.0, None, None]
    assert out.info["start_with/met"] == [None, None, 1.0, None]


def test_reward_needs_answers():
    reward = InstructionFollowing()
    with pytest.raises(ValueError, match="needs the answers metadata"):
        reward(["p"], ["text"])
    with pytest.raises(ValueError, match="needs the answers metadata"):
        reward(["p"], ["text"], answers=[None])
    with pytest.raises(ValueError, match="got 2 answers for 1 prompts"):
        reward(["p"], ["text"], answers=[[], []])
