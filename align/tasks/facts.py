"""The built-in memorisation task: N random key -> value facts, for measuring capacity.

What it does:
- `facts(n, world)`: N facts `(key, value)`, generated offline and deterministically from
  `world.seed`: keys are distinct random `key_digits`-digit strings, values independent uniform
  random `value_digits`-digit strings (leading zeros kept). The facts of N are the first N of
  the facts of any larger N (so a capacity sweep grows one set of facts);
- the prompt format `"K:48213=? A: "` and the completion `"730512904417"` (callers append EOS;
  strings never contain it): only characters the built-in tokenizer has (one token each), so the
  shipped base and its tokenizer are used unchanged;
- `fact_rows` (the SFT rows: every fact, whatever the split: the task is memorisation, so the
  training set and the evaluation set are the same N facts), `fact_prompts` (`{"prompt",
  "answer"}` of the first n facts), `is_recalled` (exact recall: the completion is the value);
- what a model knows of the facts (`bits_per_fact` and `recall`) is measured above the tasks, in
  `align.memorisation.memorisation_metrics`: a task makes rows and scores them, it runs no model.

The information content of a fact is exact: its value is `value_digits` uniform random digits,
`CONTENT_BITS = value_digits * log2(10)` (39.86 bits for 12 digits). A model that knows the format
but no fact pays exactly that (plus ~0 for the EOS); a model that memorised every fact pays ~0.
Values are 12 digits rather than 4 because the capacity study is compute-bound: a sequence of 27
tokens instead of 19 costs about the same CPU time per step and carries 3x the bits, so 1024 facts
(40.8k bits, ~7 bits per parameter of a rank-1 adapter on the built-in base) suffice where 4-digit
values would need ~3000 (probes in `scripts/studies/atlas_capacity.py`).

What it leaves out: preference pairs and a pretraining corpus (a memorised value has no "better"
wrong answer, and the base is built on the arithmetic world; `align.tasks.FactsTask` raises for
both), a held-out split (there is nothing to generalise to: a key says nothing of its value).

Run: `python -c "from align.tasks.facts import *; print(fact_rows(3))"`.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class FactsWorld:
    """The shape of the facts: key and value lengths, and the seed they are drawn from."""

    key_digits: int = 5
    """Digits of a key: at most 10**key_digits distinct facts."""
    value_digits: int = 12
    """Digits of a value: each fact holds exactly value_digits * log2(10) bits (39.86)."""
    seed: int = 0
    """The facts' seed; fixed, so a training seed changes the init and order, never the facts."""

    @property
    def content_bits(self) -> float:
        """Information content of one fact: log2 of the number of possible values."""
        return self.value_digits * math.log2(10)


WORLD = FactsWorld()
CONTENT_BITS = WORLD.content_bits  # 39.863... bits per fact (12 random digits)


def format_prompt(key: str) -> str:
    return f"K:{key}=? A: "


@functools.lru_cache(maxsize=8)
def facts(n: int, world: FactsWorld = WORLD) -> tuple[tuple[str, str], ...]:
    """The first `n` facts `(key, value)` of `world`: distinct keys, random values, fixed order."""
    if n < 1:
        raise ValueError(f"the number of facts must be at least 1, got {n}")
    if n > 10**world.key_digits:
        raise ValueError(f"{n} facts need more than the {10**world.key_digits} keys of {world.key_digits} digits")
    # One shuffle of the whole key space (a prefix of it is the first n keys) and one value
    # stream, so the facts of n are a prefix of the facts of any larger n.
    keys = random.Random(f"facts-keys:{world.seed}").sample(range(10**world.key_digits), 10**world.key_digits)[:n]
    value_rng = random.Random(f"facts-values:{world.seed}")
    values = [value_rng.randrange(10**world.value_digits) for _ in range(n)]
    return tuple((f"{k:0{world.key_digits}d}", f"{v:0{world.value_digits}d}") for k, v in zip(keys, values))


def fact_rows(n: int, world: FactsWorld = WORLD) -> list[dict]:
    """All `n` facts as SFT rows `{"prompt": "K:48213=? A: ", "completion": "730512904417"}`."""
    return [{"prompt": format_prompt(key), "completion": value} for key, value in facts(n, world)]


def fact_prompts(num_facts: int, n: int, world: FactsWorld = WORLD) -> list[dict]:
    """`{"prompt", "answer": "730512904417"}` of the first min(n, num_facts) facts (no repeats: a repeated
    fact adds nothing to a recall estimate). Answers are strings: leading zeros count."""
    return [{"prompt": format_prompt(key), "answer": value} for key, value in facts(num_facts, world)[:n]]


def is_recalled(completion: str, answer: str) -> bool:
    """Exact recall: the completion (surrounding whitespace aside) is the value, nothing more."""
    return completion.strip() == str(answer)
