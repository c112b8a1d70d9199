"""Verifiable (programmatic) rewards of the built-in tasks, and their weighted sum.

What it does, each behind the `RewardFunction` interface and registered by name for recipes:

    arithmetic_correctness  ArithmeticCorrectness()   1.0 if the extracted answer is exact, else 0.0
    format                  FormatReward(strict)      1.0 if an answer can be extracted (strict:
                                                      the completion is only the integer)
    length_penalty          LengthPenalty(per_token, per_char)
                                                      -(per_token * tokens + per_char * characters)
    gold_preference         GoldPreferenceRule()      the preference task's hidden gold score
    weighted_sum            WeightedSum(terms)        sum of weight * term score

The answer of each row comes from the `answers` metadata when given, otherwise it is parsed from
the built-in prompt format (`"Q: 23+45=? A:"`). Correctness and the gold rule read it
(`needs_answer = True`); format and length do not, nor does a weighted sum of rewards that do not.

What it leaves out: learned reward models (`reward_models.learned`).

Run: `python -c "from reward_models.verifiable import *; print(ArithmeticCorrectness()(['Q: 1+2=? A:'], [' 3']))"`.
"""

from __future__ import annotations

from typing import Any, Sequence

from align.tasks.arithmetic import answer_of, extract_answer
from align.tasks.preference import gold_score
from reward_models.base import RewardFunction, RewardOutput, register_reward, reward_needs_answer


def _answers(prompts: Sequence[str], metadata: dict[str, Any]) -> list[int]:
    answers = metadata.get("answers")
    if answers is None:
        return [answer_of(prompt) for prompt in prompts]
    if len(answers) != len(prompts):
        raise ValueError(f"got {len(answers)} answers for {len(prompts)} prompts")
    return [int(answer) for answer in answers]


def _check_lengths(prompts: Sequence[str], completions: Sequence[str]) -> None:
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(completions)} completions for {len(prompts)} prompts")


@register_reward("arithmetic_correctness")
class ArithmeticCorrectness:
    """1.0 when the completion's extracted answer equals the answer, else 0.0."""

    name = "arithmetic_correctness"
    needs_answer = True

    def __call__(self, prompts: list[str], completions: list[str], **metadata: Any) -> RewardOutput:
        _check_lengths(prompts, completions)
        answers = _answers(prompts, metadata)
        extracted = [extract_answer(c) for c in completions]
        correct = [value is not None and value == answer for value, answer in zip(extracted, answers)]
        return RewardOutput([float(ok) for ok in correct], {"extracted": extracted, "correct": correct})


@register_reward("format")
class FormatReward:
    """1.0 when an integer answer can be extracted; with `strict`, only for a bare integer."""

    name = "format"
    needs_answer = False

    def __init__(self, strict: bool = False):
        self.strict = strict

    def __call__(self, prompts: list[str], completions: list[str], **metadata: Any) -> RewardOutput:
        _check_lengths(prompts, completions)
        if self.strict:
            ok = [extract_answer(c) is not None and c.strip() == str(extract_answer(c)) for c in completions]
        else:
            ok = [extract_answer(c) is not None for c in completions]
        return RewardOutput([float(x) for x in ok], {"parseable": ok})


@register_reward("length_penalty")
class LengthPenalty:
    """-(per_token * tokens + per_char * characters) of each completion.

    Token counts come from the `response_lengths` metadata when given (the rollout mask, EOS
    included), else from `tokenizer` (no special tokens added); `per_token` needs one of them.
    """

    name = "length_penalty"
    needs_answer = False

    def __init__(self, per_token: float = 0.0, per_char: float = 0.0, tokenizer=None):
        if per_token < 0 or per_char < 0:
            raise ValueError("length penalty coefficients must be >= 0 (the score is their negative)")
        self.per_token, self.per_char, self.tokenizer = per_token, per_char, tokenizer

    def __call__(self, prompts: list[str], completions: list[str], **metadata: Any) -> RewardOutput:
        _check_lengths(prompts, completions)
        chars = [len(c) for c in completions]
        tokens = [0] * len(completions)
        if self.per_token:
            if metadata.get("response_lengths") is not None:
                tokens = [int(n) for n in metadata["response_lengths"]]
            elif self.tokenizer is not None:
                tokens = [len(ids) for ids in self.tokenizer(list(completions), add_special_tokens=False)["input_ids"]]
            else:
                raise ValueError("LengthPenalty(per_token=...) needs response_lengths metadata or a tokenizer")
        scores = [-(self.per_token * t + self.per_char * c) for t, c in zip(tokens, chars)]
        return RewardOutput(scores, {"chars": chars, "tokens": tokens})


@register_reward("gold_preference")
class GoldPreferenceRule:
    """The preference task's gold score: 1 concise correct, <0.5 padded correct, 0 wrong."""

    name = "gold_preference"
    needs_answer = True

    def __call__(self, prompts: list[str], completions: list[str], **metadata: Any) -> RewardOutput:
        _check_lengths(prompts, completions)
        answers = _answers(prompts, metadata)
        scores = [gold_score(p, c, a) for p, c, a in zip(prompts, completions, answers)]
        return RewardOutput(scores, {"correct": [extract_answer(c) == a for c, a in zip(completions, answers)]})


@register_reward("weighted_sum")
class WeightedSum:
    """sum_k weight_k * term_k(prompts, completions); `info` keeps every term's scores and info."""

    name = "weighted_sum"

    def __init__(self, terms: Sequence[tuple[float, RewardFunction]]):
        if not terms:
            raise ValueError("WeightedSum needs at least one (weight, reward) term")
        self.terms = [(float(weight), fn) for weight, fn in terms]

    @property
    def needs_answer(self) -> bool:
        return any(reward_needs_answer(fn) for _, fn in self.terms)

    def __call__(self, prompts: list[str], completions: list[str], **metadata: Any) -> RewardOutput:
        _check_lengths(prompts, completions)
        scores = [0.0] * len(completions)
        info: dict[str, list] = {}
        for k, (weight, fn) in enumerate(self.terms):
            output = fn(prompts, completions, **metadata)
            label = getattr(fn, "name", type(fn).__name__)
            label = label if f"{label}/score" not in info else f"{label}_{k}"
            scores = [s + weight * term for s, term in zip(scores, output.scores, strict=True)]
            info[f"{label}/score"] = list(output.scores)
            for key, values in output.info.items():
                info[f"{label}/{key}"] = list(values)
        return RewardOutput(scores, info)
