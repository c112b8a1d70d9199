"""The built-in verifiable task: GSM8K-lite arithmetic with exactly checkable answers.

What it does:
- defines the offline "world" every built-in task shares: problems `a+b` and `a-b` (a >= b)
  with a in 0..`max_operand` (99) and b in 0..`max_second_operand` (9), a fixed train/eval split
  by hashing the problem text (disjoint, independent of any seed), the prompt format
  `"Q: 53+7=? A:"` and the completion format `" 60"` (callers append EOS; strings never
  contain it). A second operand of one digit keeps the world learnable by a ~1M-parameter model
  in CPU minutes while the answer still needs a carry or borrow;
- `arithmetic_prompts`, `arithmetic_sft_rows`, `arithmetic_preference_rows`: seeded samples of a
  split (prompts with answers, correct demonstrations, correct-vs-wrong pairs);
- `extract_answer` / `is_correct`: the verifier (last integer of the completion);
- `pretrain_corpus`: the noisy pretraining texts of the tiny base. A configured fraction of the
  answers is wrong (off by 1, 2, 3 or 10) and a configured fraction is "padded" with filler words
  (" um 68", " 68 i think"), so a base pretrained on it is right when greedy but often
  wrong or padded when sampled at temperature 1: RL and DPO have room to improve it. The corpus
  only uses train-split problems, so eval accuracy measures generalisation.

What it leaves out: the preference task's gold rule (`align.tasks.preference`), tokenization
(`align.tasks.tokenizer`), the pretraining loop (the toolkit's SFT trainer in full mode).

Run: `python -c "from align.tasks.arithmetic import *; print(pretrain_corpus(5, 0))"`.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from dataclasses import dataclass

SPLITS = ("train", "eval")


@dataclass(frozen=True)
class ArithmeticWorld:
    """The shape of the built-in world (problems, split, and pretraining noise)."""

    max_operand: int = 99
    """The first operand is an integer in [0, max_operand]."""
    max_second_operand: int = 9
    """The second operand is an integer in [0, max_second_operand]."""
    operations: tuple[str, ...] = ("+", "-")
    """Operations; subtraction only appears with a >= b, so answers are never negative."""
    eval_fraction: float = 0.2
    """Fraction of all problems (chosen by hash) that belong to the eval split."""
    wrong_fraction: float = 0.3
    """Fraction of pretraining texts whose answer is wrong (off by 1, 2, 3 or 10)."""
    padded_fraction: float = 0.3
    """Fraction of pretraining texts whose completion is padded with filler words."""


WORLD = ArithmeticWorld()

# Wrong answers are near misses, each much rarer than the right one, so the right answer stays the
# mode of the corpus distribution (greedy is right) while sampling is often wrong.
WRONG_OFFSETS = (-10, -3, -2, -1, 1, 2, 3, 10)
FILLER_PREFIXES = ("um", "so", "it is", "well")
FILLER_SUFFIXES = ("i think", "ok", "or so", "right")


# ---------------------------------------------------------------- problems and splits


def format_prompt(a: int, op: str, b: int) -> str:
    return f"Q: {a}{op}{b}=? A:"


_PROMPT = re.compile(r"Q: (\d+)([+-])(\d+)=\? A:")


def answer_of(prompt: str) -> int:
    """The answer of a prompt in the task format (so pairs and texts need no answer field)."""
    match = _PROMPT.search(prompt)
    if match is None:
        raise ValueError(f"not an arithmetic prompt: {prompt!r}")
    return solve(int(match.group(1)), match.group(2), int(match.group(3)))


def solve(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    raise ValueError(f"unknown operation {op!r}")


def split_of(a: int, op: str, b: int, eval_fraction: float = WORLD.eval_fraction) -> str:
    """The split a problem belongs to: a hash of its text, so it never depends on a seed."""
    digest = hashlib.sha256(f"{a}{op}{b}".encode()).digest()
    bucket = int.from_bytes(digest[:4], "big") / 2**32  # uniform in [0, 1)
    return "eval" if bucket < eval_fraction else "train"


@functools.lru_cache(maxsize=8)
def problems(split: str, world: ArithmeticWorld = WORLD) -> tuple[tuple[int, str, int], ...]:
    """All problems `(a, op, b)` of a split, in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    out = []
    for op in world.operations:
        for a in range(world.max_operand + 1):
            for b in range(world.max_second_operand + 1):
                if op == "-" and b > a:
                    continue
                if split_of(a, op, b, world.eval_fraction) == split:
                    out.append((a, op, b))
    return tuple(out)


def _sample_problems(split: str, n: int, seed: int, world: ArithmeticWorld) -> list[tuple[int, str, int]]:
    """`n` problems of `split`: without replacement while the split lasts, then with."""
    pool = problems(split, world)
    rng = random.Random(f"{split}:{seed}")
    if n <= len(pool):
        return rng.sample(pool, n)
    return rng.sample(pool, len(pool)) + rng.choices(pool, k=n - len(pool))


def wrong_answer(answer: int, rng: random.Random) -> int:
    """A near miss: the answer off by 1, 2, 3 or 10 (never negative, never the answer)."""
    wrong = answer + rng.choice(WRONG_OFFSETS)
    return wrong if wrong >= 0 else answer - (wrong - answer)


def padded_completion(value: int, rng: random.Random) -> str:
    """`value` with filler words before, after, or both (e.g. " um so it is 68 i think")."""
    prefix, suffix = rng.choice(FILLER_PREFIXES), rng.choice(FILLER_SUFFIXES)
    kind = rng.randrange(3)
    if kind == 0:
        return f" {prefix} {value}"
    if kind == 1:
        return f" {value} {suffix}"
    return f" {prefix} {value} {suffix}"


def concise_completion(value: int) -> str:
    return f" {value}"


# ---------------------------------------------------------------- rows


def arithmetic_prompts(split: str, n: int, seed: int = 0, world: ArithmeticWorld = WORLD) -> list[dict]:
    """`n` rows `{"prompt": "Q: 23+45=? A:", "answer": 68}` from `split` (seeded)."""
    return [
        {"prompt": format_prompt(a, op, b), "answer": solve(a, op, b)}
        for a, op, b in _sample_problems(split, n, seed, world)
    ]


def arithmetic_sft_rows(split: str, n: int, seed: int = 0, world: ArithmeticWorld = WORLD) -> list[dict]:
    """`n` demonstrations `{"prompt", "completion": " 68"}`, always correct and concise."""
    return [
        {"prompt": row["prompt"], "completion": concise_completion(row["answer"])}
        for row in arithmetic_prompts(split, n, seed, world)
    ]


def arithmetic_preference_rows(split: str, n: int, seed: int = 0, world: ArithmeticWorld = WORLD) -> list[dict]:
    """`n` pairs `{"prompt", "chosen": " 68", "rejected": " 67"}`: correct beats a near miss."""
    rng = random.Random(f"pairs:{split}:{seed}")
    return [
        {
            "prompt": row["prompt"],
            "chosen": concise_completion(row["answer"]),
            "rejected": concise_completion(wrong_answer(row["answer"], rng)),
        }
        for row in arithmetic_prompts(split, n, seed, world)
    ]


# ---------------------------------------------------------------- verifier

# An integer not glued to a digit on its left ("23-5" yields 23 and 5, not 23 and -5).
# An integer, with thousands separators allowed ("1,234" is 1234, as GSM8K answers write it);
# "3, 4" (a space after the comma) is two integers.
_INTEGER = re.compile(r"(?<![\d,])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)")


def extract_answer(completion: str) -> int | None:
    """The answer a completion gives: its last integer, or None when it has none.

    Text from a following `"Q:"` on is ignored (a model that runs on into a new question).
    """
    completion = completion.split("Q:", 1)[0]
    matches = _INTEGER.findall(completion)
    return int(matches[-1].replace(",", "")) if matches else None


def is_correct(completion: str, answer: int) -> bool:
    """Exact correctness of the extracted answer (filler words around it are allowed)."""
    value = extract_answer(completion)
    return value is not None and value == int(answer)


# ---------------------------------------------------------------- pretraining corpus


def pretrain_rows(n: int, seed: int = 0, world: ArithmeticWorld = WORLD) -> list[dict]:
    """`n` pretraining rows `{"prompt", "completion", "answer", "wrong", "padded"}`.

    Exactly round(n * wrong_fraction) rows are wrong and round(n * padded_fraction) are padded
    (chosen independently), all on train-split problems.
    """
    rng = random.Random(f"corpus:{seed}")
    pool = problems("train", world)
    picked = [rng.choice(pool) for _ in range(n)]
    wrong = set(rng.sample(range(n), round(n * world.wrong_fraction)))
    padded = set(rng.sample(range(n), round(n * world.padded_fraction)))
    rows = []
    for i, (a, op, b) in enumerate(picked):
        answer = solve(a, op, b)
        value = wrong_answer(answer, rng) if i in wrong else answer
        completion = padded_completion(value, rng) if i in padded else concise_completion(value)
        rows.append({
            "prompt": format_prompt(a, op, b),
            "completion": completion,
            "answer": answer,
            "wrong": i in wrong,
            "padded": i in padded,
        })
    return rows


def pretrain_corpus(n: int, seed: int = 0, world: ArithmeticWorld = WORLD) -> list[str]:
    """`n` pretraining texts `prompt + completion` (no BOS/EOS: the trainer adds them)."""
    return [row["prompt"] + row["completion"] for row in pretrain_rows(n, seed, world)]
