"""The built-in preference task: the arithmetic world judged by a hidden gold rule.

What it does: over the same problems, prompts and tokenizer as `align.tasks.arithmetic`, the gold
rule is "correct AND concise beats correct but padded beats wrong":

    gold_score = 1.0                                   correct and concise (" 68")
               = max(0.1, 0.5 - 0.01 * extra_chars)    correct but padded (" um so it is 68")
               = 0.0                                   wrong or no answer

where extra_chars is how many characters the stripped completion has beyond the bare answer.
- `preference_prompts`: prompts with answers (the arithmetic prompts);
- `preference_sft_rows`: demonstrations that are always correct but half of them padded, so SFT
  teaches correctness while only the preferences reveal that concise is better;
- `preference_pairs`: `{"prompt", "chosen", "rejected"}` labelled by the gold rule, never ties,
  mixing three kinds: concise-correct vs padded-correct, correct vs wrong, padded-correct vs wrong;
- `gold_score`: the rule itself, to track beside a learned reward (over-optimisation shows as the
  learned reward rising while the gold score does not).

The pretraining corpus (`align.tasks.arithmetic.pretrain_corpus`) already mixes padded and wrong
answers, so the base produces them when sampled and DPO/PPO have room to raise the gold score.

What it leaves out: the learned reward model (`reward_models/learned.py`).

Run: `python -c "from align.tasks.preference import *; print(preference_pairs('train', 3))"`.
"""

from __future__ import annotations

import random

from align.tasks.arithmetic import (
    WORLD,
    ArithmeticWorld,
    arithmetic_prompts,
    concise_completion,
    extract_answer,
    padded_completion,
    wrong_answer,
)

CONCISE_SCORE = 1.0
PADDED_SCORE = 0.5
PADDED_FLOOR = 0.1  # a padded correct answer always beats a wrong one (0.0)
PENALTY_PER_CHAR = 0.01
SFT_PADDED_FRACTION = 0.5


def is_concise(completion: str, answer: int) -> bool:
    """The completion is the bare answer (surrounding whitespace allowed)."""
    return completion.strip() == str(int(answer))


def gold_score(prompt: str, completion: str, answer: int) -> float:
    """The hidden gold rule (see the module docstring). `prompt` is unused, kept for the interface."""
    del prompt
    value = extract_answer(completion)
    if value is None or value != int(answer):
        return 0.0
    if is_concise(completion, answer):
        return CONCISE_SCORE
    extra_chars = max(len(completion.strip()) - len(str(int(answer))), 1)
    return max(PADDED_FLOOR, PADDED_SCORE - PENALTY_PER_CHAR * extra_chars)


def preference_prompts(split: str, n: int, seed: int = 0, world: ArithmeticWorld = WORLD) -> list[dict]:
    """`n` rows `{"prompt", "answer"}` (the same prompts as the arithmetic task)."""
    return arithmetic_prompts(split, n, seed, world)


def preference_sft_rows(split: str, n: int, seed: int = 0, world: ArithmeticWorld = WORLD) -> list[dict]:
    """`n` demonstrations `{"prompt", "completion"}`: always correct, padded with probability 1/2."""
    rng = random.Random(f"preference-sft:{split}:{seed}")
    rows = []
    for row in preference_prompts(split, n, seed, world):
        padded = rng.random() < SFT_PADDED_FRACTION
        completion = padded_completion(row["answer"], rng) if padded else concise_completion(row["answer"])
        rows.append({"prompt": row["prompt"], "completion": completion})
    return rows


def _wrong_completion(answer: int, rng: random.Random) -> str:
    value = wrong_answer(answer, rng)
    return padded_completion(value, rng) if rng.random() < 0.5 else concise_completion(value)


def preference_pairs(split: str, n: int, seed: int = 0, world: ArithmeticWorld = WORLD) -> list[dict]:
    """`n` pairs `{"prompt", "chosen", "rejected"}` with gold(chosen) > gold(rejected) strictly."""
    rng = random.Random(f"preference-pairs:{split}:{seed}")
    rows = []
    for row in preference_prompts(split, n, seed, world):
        prompt, answer = row["prompt"], row["answer"]
        kind = rng.randrange(3)
        if kind == 0:  # concise correct vs padded correct
            chosen, rejected = concise_completion(answer), padded_completion(answer, rng)
        elif kind == 1:  # correct (either style) vs wrong (either style)
            chosen = concise_completion(answer) if rng.random() < 0.5 else padded_completion(answer, rng)
            rejected = _wrong_completion(answer, rng)
        else:  # padded correct vs wrong
            chosen, rejected = padded_completion(answer, rng), _wrong_completion(answer, rng)
        # The gold rule labels the pair; by construction the chosen side scores strictly higher.
        assert gold_score(prompt, chosen, answer) > gold_score(prompt, rejected, answer)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows
