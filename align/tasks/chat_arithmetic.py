"""Chat arithmetic: short word problems for a real chat model, with an exactly checkable answer.

What it does:
- seeded word problems of four kinds: sums, differences, products and two-step problems
  (a product then a sum or difference), each written in a few everyday templates ("Mia has 23
  stickers and gets 48 more. How many stickers does she have now?") and ending with "Give only the
  final number." Operands are sized so that SmolLM2-135M-Instruct's sampled accuracy starts
  inside the band where RL has signal (docs/real-base.md: measured, not assumed);
- a fixed train/eval split by hashing the problem (kind, operands): disjoint, independent of any
  seed;
- the verifier: the last integer of the answer equals the problem's answer
  (`align.tasks.arithmetic.extract_answer`, the rule of `arithmetic_correctness`);
- `chat_sft_rows`: correct, short demonstrations in conversational form
  (`{"prompt": [user turn], "completion": [assistant turn]}`) that the data loader renders with
  the model's own chat template: the equation and its result ("23 + 48 = 71."), two-step
  problems in two equations.

Prompts are plain user-turn texts; recipes set `data.chat_template: true` and the trainers render
them with the tokenizer's template (`ChatArithmeticTask.chat` says a task needs that).

What it leaves out: preference pairs (sampled from the model itself: `align.tasks.onpolicy_pairs`).

Run: `python -c "from align.tasks.chat_arithmetic import *; print(chat_arithmetic_prompts('train', 3, 0))"`.
"""

from __future__ import annotations

import hashlib
import random

KINDS = ("sum", "difference", "product", "two_step")
SUFFIX = " Answer with just the number."
EVAL_FRACTION = 0.2

NAMES = ("Mia", "Tom", "Ava", "Leo", "Zoe", "Sam", "Ivy", "Ben", "Lea", "Max", "Nora", "Eli")
ITEMS = ("apples", "stickers", "marbles", "books", "stamps", "coins", "cards", "pencils", "shells", "cookies")

TEMPLATES = {
    "sum": (
        "{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?",
        "A box holds {a} {item}. Someone adds {b} {item}. How many {item} are in the box?",
        "What is {a} plus {b}?",
    ),
    "difference": (
        "{name} has {a} {item} and gives away {b}. How many {item} are left?",
        "A shelf had {a} {item}. {b} were taken. How many {item} remain?",
        "What is {a} minus {b}?",
    ),
    "product": (
        "{name} buys {a} bags with {b} {item} in each bag. How many {item} is that in total?",
        "There are {a} rows of {b} {item}. How many {item} are there?",
        "What is {a} times {b}?",
    ),
    "two_step": (
        "{name} buys {a} packs of {b} {item} and already had {c}. How many {item} does {name} have now?",
        "There are {a} boxes with {b} {item} each, and {c} are taken out. How many {item} are left?",
    ),
}


def _operands(kind: str, rng: random.Random) -> tuple[int, ...]:
    # Small operands: with two-digit sums the base's sampled accuracy was ~0.0-0.1, no RL signal.
    if kind == "sum":
        return rng.randint(2, 20), rng.randint(2, 20)
    if kind == "difference":
        a = rng.randint(6, 25)
        return a, rng.randint(1, a - 1)
    if kind == "product":
        return rng.randint(2, 9), rng.randint(2, 9)
    a, b = rng.randint(2, 4), rng.randint(2, 5)
    return a, b, rng.randint(1, min(a * b - 1, 9))


def _answer(kind: str, operands: tuple[int, ...], template_index: int) -> int:
    if kind == "sum":
        return operands[0] + operands[1]
    if kind == "difference":
        return operands[0] - operands[1]
    if kind == "product":
        return operands[0] * operands[1]
    a, b, c = operands
    return a * b + c if template_index == 0 else a * b - c


def split_of(kind: str, operands: tuple[int, ...], template_index: int) -> str:
    """The split of a problem: a hash of its kind, template and operands (never of a seed)."""
    key = f"{kind}:{template_index}:{','.join(map(str, operands))}".encode()
    bucket = int.from_bytes(hashlib.sha256(key).digest()[:4], "big") / 2**32
    return "eval" if bucket < EVAL_FRACTION else "train"


def _problem(rng: random.Random, split: str) -> dict:
    while True:
        kind = rng.choice(KINDS)
        template_index = rng.randrange(len(TEMPLATES[kind]))
        operands = _operands(kind, rng)
        if split_of(kind, operands, template_index) == split:
            break
    fields = dict(zip("abc", operands), name=rng.choice(NAMES), item=rng.choice(ITEMS))
    question = TEMPLATES[kind][template_index].format(**fields)
    return {"prompt": question + SUFFIX, "answer": _answer(kind, operands, template_index),
            "kind": kind, "operands": operands, "template": template_index}


def chat_arithmetic_problems(split: str, n: int, seed: int = 0) -> list[dict]:
    """`n` problems of `split` ("train" or "eval"), seeded: `{"prompt", "answer", "kind", "operands", "template"}`."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    rng = random.Random(f"chat_arithmetic:{split}:{seed}")
    return [_problem(rng, split) for _ in range(n)]


def chat_arithmetic_prompts(split: str, n: int, seed: int = 0) -> list[dict]:
    """`[{"prompt", "answer"}]`: user-turn texts and integer answers."""
    return [{"prompt": p["prompt"], "answer": p["answer"]} for p in chat_arithmetic_problems(split, n, seed)]


def demonstration(problem: dict) -> str:
    """A correct, short answer: the equation(s) and the result."""
    kind, operands = problem["kind"], problem["operands"]
    if kind == "two_step":
        a, b, c = operands
        product = a * b
        sign = "+" if problem["template"] == 0 else "-"
        return f"{a} x {b} = {product}, {product} {sign} {c} = {problem['answer']}."
    symbol = {"sum": "+", "difference": "-", "product": "x"}[kind]
    return f"{operands[0]} {symbol} {operands[1]} = {problem['answer']}."


def chat_sft_rows(split: str, n: int, seed: int = 0) -> list[dict]:
    """`n` conversational demonstrations `{"prompt": [user], "completion": [assistant], "answer"}`."""
    return [
        {"prompt": [{"role": "user", "content": p["prompt"]}],
         "completion": [{"role": "assistant", "content": demonstration(p)}], "answer": p["answer"]}
        for p in chat_arithmetic_problems(split, n, seed + 10_000)  # other draws than the RL prompts of a seed
    ]
