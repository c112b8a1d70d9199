"""Verifiable rewards and the reward registry, on hand-computed examples.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_verifiable_rewards.py`.
"""

from __future__ import annotations

import pytest

from align.tasks.tokenizer import build_tokenizer
from reward_models import (
    ArithmeticCorrectness,
    FormatReward,
    GoldPreferenceRule,
    LengthPenalty,
    RewardFunction,
    RewardOutput,
    WeightedSum,
    build_reward,
)

PROMPTS = ["Q: 23+45=? A:", "Q: 23+45=? A:", "Q: 23+45=? A:", "Q: 9-3=? A:"]
COMPLETIONS = [" 68", " um 68 i think", " 67", " no idea"]
ANSWERS = [68, 68, 68, 6]


def test_arithmetic_correctness():
    out = ArithmeticCorrectness()(PROMPTS, COMPLETIONS, answers=ANSWERS)
    assert out.scores == [1.0, 1.0, 0.0, 0.0]
    assert out.info["extracted"] == [68, 68, 67, None]
    # Without `answers`, they are parsed from the prompts.
    assert ArithmeticCorrectness()(PROMPTS, COMPLETIONS).scores == out.scores


def test_format_reward():
    assert FormatReward()(PROMPTS, COMPLETIONS).scores == [1.0, 1.0, 1.0, 0.0]
    assert FormatReward(strict=True)(PROMPTS, COMPLETIONS).scores == [1.0, 0.0, 1.0, 0.0]


def test_length_penalty_per_char_and_per_token():
    assert LengthPenalty(per_char=0.1)(PROMPTS, COMPLETIONS).scores == pytest.approx([-0.3, -1.4, -0.3, -0.8])
    per_token = LengthPenalty(per_token=0.5)
    assert per_token(PROMPTS, COMPLETIONS, response_lengths=[4, 15, 4, 9]).scores == [-2.0, -7.5, -2.0, -4.5]
    # Char-level tokenizer: tokens == characters.
    with_tokenizer = LengthPenalty(per_token=1.0, tokenizer=build_tokenizer())
    assert with_tokenizer(PROMPTS, COMPLETIONS).scores == [-3.0, -14.0, -3.0, -8.0]
    with pytest.raises(ValueError):
        per_token(PROMPTS, COMPLETIONS)
    with pytest.raises(ValueError):
        LengthPenalty(per_char=-1.0)


def test_gold_preference_rule():
    scores = GoldPreferenceRule()(PROMPTS, COMPLETIONS, answers=ANSWERS).scores
    # concise correct 1.0; padded correct 0.5 - 0.01 * (len("um 68 i think") - 2) = 0.39; wrong 0.
    assert scores == pytest.approx([1.0, 0.39, 0.0, 0.0])


def test_weighted_sum_arithmetic():
    fn = WeightedSum([(2.0, ArithmeticCorrectness()), (0.5, LengthPenalty(per_char=0.1)), (1.0, FormatReward())])
    out = fn(PROMPTS, COMPLETIONS, answers=ANSWERS)
    # 2 * [1, 1, 0, 0] + 0.5 * [-0.3, -1.4, -0.3, -0.8] + [1, 1, 1, 0]
    assert out.scores == pytest.approx([2.85, 2.3, 0.85, -0.4])
    assert out.info["arithmetic_correctness/score"] == [1.0, 1.0, 0.0, 0.0]
    assert out.info["length_penalty/chars"] == [3, 14, 3, 8]
    # The same reward twice keeps both terms' info.
    twice = WeightedSum([(1.0, FormatReward()), (1.0, FormatReward())])(PROMPTS, COMPLETIONS)
    assert twice.scores == [2.0, 2.0, 2.0, 0.0] and "format_1/score" in twice.info


def test_build_reward_from_specs():
    assert isinstance(build_reward("arithmetic_correctness"), ArithmeticCorrectness)
    penalty = build_reward({"name": "length_penalty", "per_char": 0.1})
    assert isinstance(penalty, LengthPenalty) and penalty.per_char == 0.1
    fn = build_reward({"name": "weighted_sum", "terms": [[1.0, "arithmetic_correctness"],
                                                          [0.5, {"name": "length_penalty", "per_char": 0.1}]]})
    # [1, 1, 0, 0] + 0.5 * [-0.3, -1.4, -0.3, -0.8]
    assert fn(PROMPTS, COMPLETIONS, answers=ANSWERS).scores == pytest.approx([0.85, 0.3, -0.15, -0.4])
    assert build_reward(fn) is fn
    for bad in ("no_such_reward", {"per_char": 1.0}, {"name": "weighted_sum"}):
        with pytest.raises(ValueError):
            build_reward(bad)


def test_every_reward_follows_the_interface():
    for name in ("arithmetic_correctness", "format", "gold_preference", "length_penalty"):
        fn = build_reward(name)
        assert isinstance(fn, RewardFunction) and fn.name == name
        out = fn(PROMPTS, COMPLETIONS, answers=ANSWERS)
        assert isinstance(out, RewardOutput) and len(out.scores) == len(PROMPTS)
        assert all(isinstance(s, float) for s in out.scores)
        assert all(len(v) == len(PROMPTS) for v in out.info.values())
    with pytest.raises(ValueError):
        ArithmeticCorrectness()(PROMPTS, COMPLETIONS[:2])
    with pytest.raises(ValueError):
        RewardOutput([1.0], {"x": [1, 2]})
