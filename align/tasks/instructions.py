"""The built-in chat task of verifiable instructions, in the style of IFEval (Zhou et al. 2023).

What it does:
- a prompt is a short everyday writing request ("Describe a rainy morning in a city.") followed
  by 1 to 3 constraints in plain English ("Answer in at most 20 words. Do not use any commas.").
  Prompts are user-turn text: the trainer renders them with the model's chat template;
- `CONSTRAINTS`: the constraint kinds, each a small frozen dataclass with `instruction()` (its
  English sentence), `check(text) -> bool` and a JSON spec (`{"kind": "max_words", "n": 20}`):
  max_words, min_words, lowercase, include_word, avoid_word, end_with, bullets, no_commas,
  start_with. Word-level checks are case-insensitive and count words as runs of letters/digits
  (so "- " bullet marks and punctuation are not words); `end_with` is exact (case included);
- `conflicts(spec)`: why a combination is contradictory (lowercase with a capitalised start word
  or end phrase, include and avoid the same word, a comma in the end phrase with no_commas,
  min_words too close to max_words, ...). The generator never draws one;
- `instruction_prompts(split, n, seed)`: seeded rows `{"prompt", "answer": [spec, ...]}`. The
  answer is the list of the prompt's constraint specs (JSON-serialisable: rows go to JSONL files).
  Train and eval are split by topic (a fixed 20% of the topics of each family, chosen by hash and
  independent of any seed), so no eval request is ever seen in training;
- `constraints_met`, `fraction_met` (the reward), `all_met` (correctness). Text is stripped first;
  an answer with no word meets no constraint, so an empty completion cannot collect the
  "negative" constraints (no commas, avoid a word, at most N words) for free.

Sizes are chosen for SmolLM2-135M-Instruct sampling ~48 new tokens (~35 words): word limits of
15-30, at most 3 bullets, everyday keywords. None of it was measured on that model.

What it leaves out: SFT demonstrations and preference pairs (this task has no gold completion:
pairs are built elsewhere by sampling the model and ranking with `fraction_met`), IFEval's harder
kinds (JSON output, sections, languages, placeholders) and its "loose" checking variants.

Run: `python -c "from align.tasks.instructions import *; print(*instruction_prompts('train', 3, 0), sep='\\n')"`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from dataclasses import dataclass
from typing import Any, ClassVar

SPLITS = ("train", "eval")
EVAL_FRACTION = 0.2
"""Fraction of each family's topics (chosen by hash) held out for the eval split."""
MAX_CONSTRAINTS = 3

# A word: letters or digits, with inner apostrophes or hyphens ("don't", "well-known").
_WORD = re.compile(r"[A-Za-z0-9]+(?:['\u2019-][A-Za-z0-9]+)*")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def _has_word(text: str, word: str) -> bool:
    return word.lower() in (w.lower() for w in words(text))


# ---------------------------------------------------------------- constraint kinds


@dataclass(frozen=True)
class MaxWords:
    kind: ClassVar[str] = "max_words"
    n: int

    def instruction(self) -> str:
        return f"Answer in at most {self.n} words."

    def check(self, text: str) -> bool:
        return len(words(text)) <= self.n


@dataclass(frozen=True)
class MinWords:
    kind: ClassVar[str] = "min_words"
    n: int

    def instruction(self) -> str:
        return f"Write at least {self.n} words."

    def check(self, text: str) -> bool:
        return len(words(text)) >= self.n


@dataclass(frozen=True)
class Lowercase:
    kind: ClassVar[str] = "lowercase"

    def instruction(self) -> str:
        return "Write your whole answer in lowercase letters, with no capital letters."

    def check(self, text: str) -> bool:
        return text == text.lower()


@dataclass(frozen=True)
class IncludeWord:
    kind: ClassVar[str] = "include_word"
    word: str

    def instruction(self) -> str:
        return f"Use the word '{self.word}' at least once."

    def check(self, text: str) -> bool:
        return _has_word(text, self.word)


@dataclass(frozen=True)
class AvoidWord:
    kind: ClassVar[str] = "avoid_word"
    word: str

    def instruction(self) -> str:
        return f"Do not use the word '{self.word}'."

    def check(self, text: str) -> bool:
        return not _has_word(text, self.word)


@dataclass(frozen=True)
class EndWith:
    kind: ClassVar[str] = "end_with"
    phrase: str

    def instruction(self) -> str:
        return f"End your answer with the exact phrase '{self.phrase}'"

    def check(self, text: str) -> bool:
        return text.endswith(self.phrase)


@dataclass(frozen=True)
class Bullets:
    kind: ClassVar[str] = "bullets"
    n: int

    def instruction(self) -> str:
        return f"Format your answer as exactly {self.n} bullet points, each on its own line starting with '- '."

    def check(self, text: str) -> bool:
        return sum(line.lstrip().startswith("- ") for line in text.splitlines()) == self.n


@dataclass(frozen=True)
class NoCommas:
    kind: ClassVar[str] = "no_commas"

    def instruction(self) -> str:
        return "Do not use any commas."

    def check(self, text: str) -> bool:
        return "," not in text


@dataclass(frozen=True)
class StartWith:
    kind: ClassVar[str] = "start_with"
    word: str

    def instruction(self) -> str:
        return f"Start your answer with the word '{self.word}'."

    def check(self, text: str) -> bool:
        found = words(text)
        return bool(found) and found[0].lower() == self.word.lower()


CONSTRAINTS: dict[str, type] = {
    cls.kind: cls
    for cls in (MaxWords, MinWords, Lowercase, IncludeWord, AvoidWord, EndWith, Bullets, NoCommas, StartWith)
}


def to_spec(constraint) -> dict:
    """`{"kind": ..., **fields}`: the JSON form of a constraint."""
    return {"kind": constraint.kind, **dataclasses.asdict(constraint)}


def from_spec(spec: dict):
    """The constraint of a JSON spec; an unknown kind or field is a one-line ValueError."""
    fields = dict(spec)
    kind = fields.pop("kind", None)
    if kind not in CONSTRAINTS:
        raise ValueError(f"unknown instruction constraint kind {kind!r}; kinds are {sorted(CONSTRAINTS)}")
    try:
        return CONSTRAINTS[kind](**fields)
    except TypeError:
        raise ValueError(f"bad fields for constraint {kind!r}: {spec!r}") from None


def parse_spec(spec: Any) -> list:
    """The constraints of an answer: a list of specs, or its JSON text (a column read back from a file)."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError:
            raise ValueError(f"an instructions answer is not JSON: {spec[:60]!r}") from None
    if not isinstance(spec, (list, tuple)):
        raise ValueError(f"an instructions answer is a list of constraint specs, got {type(spec).__name__}")
    return [from_spec(item) for item in spec]


# ---------------------------------------------------------------- contradictions


def conflicts(spec: list[dict]) -> list[str]:
    """Why the constraints of `spec` cannot (or can hardly) all be met; empty when consistent."""
    by_kind: dict[str, dict] = {}
    reasons = []
    for item in spec:
        if item["kind"] in by_kind:
            reasons.append(f"{item['kind']} appears twice")
        by_kind[item["kind"]] = item
    has = by_kind.__contains__
    if has("lowercase"):
        for kind, field in (("start_with", "word"), ("end_with", "phrase"), ("include_word", "word")):
            if has(kind) and by_kind[kind][field] != by_kind[kind][field].lower():
                reasons.append(f"lowercase with a capitalised {kind}")
    if has("no_commas") and has("end_with") and "," in by_kind["end_with"]["phrase"]:
        reasons.append("no_commas with a comma in the end phrase")
    if has("avoid_word"):
        avoided = by_kind["avoid_word"]["word"]
        for kind, field in (("include_word", "word"), ("start_with", "word"), ("end_with", "phrase")):
            if has(kind) and _has_word(by_kind[kind][field], avoided):
                reasons.append(f"avoid_word '{avoided}' is required by {kind}")
    if has("max_words") and has("min_words") and by_kind["max_words"]["n"] - by_kind["min_words"]["n"] < 10:
        reasons.append("min_words within 10 of max_words")
    # A bulleted answer starts with "- ": asking for a first word as well reads as a contradiction.
    if has("bullets") and has("start_with"):
        reasons.append("bullets with start_with")
    # Bullets need a few words each: 3 bullets in 15 words is a list of single words.
    if has("bullets") and has("max_words") and by_kind["max_words"]["n"] < 6 * by_kind["bullets"]["n"]:
        reasons.append("too many bullets for max_words")
    return reasons


# ---------------------------------------------------------------- prompts

# Two families of requests: a topic (a noun phrase) goes into one of its family's forms.
DESCRIBE_FORMS = ("Describe {}.", "Write a few sentences about {}.", "Tell a friend about {}.",
                  "Write a short paragraph about {}.")
DESCRIBE_TOPICS = (
    "a rainy morning in a city", "your favourite breakfast", "a walk in the park", "a busy train station",
    "a quiet library", "the first day of spring", "a visit to the seaside", "a cup of hot tea",
    "a snowy evening", "your ideal weekend", "a local market", "an old bicycle", "a summer thunderstorm",
    "a small garden", "a long car journey", "a birthday party", "a cat asleep in the sun",
    "a picnic with friends", "a crowded bus", "a mountain lake", "learning to swim", "a favourite book",
    "cooking dinner for family", "a lazy Sunday afternoon", "a school playground", "an autumn forest",
    "a night sky full of stars", "a bakery early in the morning", "a football match", "moving to a new house",
    "a walk along a river", "a farmers' field at harvest", "your favourite song", "a windy beach",
    "a visit to a museum", "a power cut at home",
)
NOTE_FORMS = ("Write a short note {}.", "Write a brief message {}.", "Write a text message {}.")
NOTE_TOPICS = (
    "thanking a neighbour for watering your plants", "inviting a friend to dinner",
    "apologising for missing a meeting", "congratulating a colleague on a new job",
    "asking a friend to borrow a book", "wishing a cousin a happy birthday",
    "reminding your flatmate to buy milk", "welcoming a new neighbour", "thanking a teacher",
    "telling your family you will be home late", "asking a neighbour to feed your cat",
    "cancelling a dentist appointment", "thanking a friend for a gift", "inviting a colleague to lunch",
)

MAX_WORDS = (15, 20, 25, 30)
MIN_WORDS = (8, 10, 12)
BULLETS = (2, 3)
INCLUDE_WORDS = ("today", "friend", "quiet", "light", "happy", "small", "warm", "simple", "together", "time")
AVOID_WORDS = ("very", "really", "and", "the", "good", "nice", "just")
END_PHRASES = ("See you soon.", "That is all.", "Have a nice day!", "Thank you.", "Take care, friend.",
               "and that is all.")
START_WORDS = ("Today", "Yesterday", "Honestly", "Sometimes", "First", "Imagine", "Hello")


def _draw_constraint(kind: str, rng: random.Random):
    cls = CONSTRAINTS[kind]
    if kind == "max_words":
        return cls(rng.choice(MAX_WORDS))
    if kind == "min_words":
        return cls(rng.choice(MIN_WORDS))
    if kind == "bullets":
        return cls(rng.choice(BULLETS))
    if kind == "include_word":
        return cls(rng.choice(INCLUDE_WORDS))
    if kind == "avoid_word":
        return cls(rng.choice(AVOID_WORDS))
    if kind == "end_with":
        return cls(rng.choice(END_PHRASES))
    if kind == "start_with":
        return cls(rng.choice(START_WORDS))
    return cls()


def draw_spec(rng: random.Random) -> list[dict]:
    """1 to `MAX_CONSTRAINTS` constraints of distinct kinds with no conflict (redrawn until so)."""
    while True:
        kinds = rng.sample(sorted(CONSTRAINTS), rng.randint(1, MAX_CONSTRAINTS))
        spec = [to_spec(_draw_constraint(kind, rng)) for kind in kinds]
        if not conflicts(spec):
            return spec


def _split_topics(topics: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """A fixed round(EVAL_FRACTION * len) of `topics` for eval: those whose hash ranks first."""
    ranked = sorted(topics, key=lambda t: hashlib.sha256(f"instructions:{t}".encode()).hexdigest())
    held_out = set(ranked[: round(EVAL_FRACTION * len(topics))])
    return {"eval": tuple(t for t in topics if t in held_out), "train": tuple(t for t in topics if t not in held_out)}


def requests(split: str) -> tuple[str, ...]:
    """Every writing request of `split` (topic x form), in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    out = []
    for topics, forms in ((DESCRIBE_TOPICS, DESCRIBE_FORMS), (NOTE_TOPICS, NOTE_FORMS)):
        for topic in _split_topics(topics)[split]:
            out.extend(form.format(topic) for form in forms)
    return tuple(out)


def render_prompt(request: str, spec: list[dict]) -> str:
    return " ".join([request] + [from_spec(item).instruction() for item in spec])


def instruction_prompts(split: str, n: int, seed: int = 0) -> list[dict]:
    """`n` rows `{"prompt": "Describe ... Answer in at most 20 words.", "answer": [spec, ...]}`."""
    pool = requests(split)
    rng = random.Random(f"instructions:{split}:{seed}")
    rows = []
    for _ in range(n):
        request = rng.choice(pool)
        spec = draw_spec(rng)
        rows.append({"prompt": render_prompt(request, spec), "answer": spec})
    return rows


# ---------------------------------------------------------------- verifier


def constraints_met(text: str, spec: Any) -> list[bool]:
    """Whether `text` (stripped) meets each constraint of `spec`; a text with no word meets none."""
    constraints = parse_spec(spec)
    text = text.strip()
    if not words(text):
        return [False] * len(constraints)
    return [c.check(text) for c in constraints]


def fraction_met(text: str, spec: Any) -> float:
    """Fraction of the constraints met (0.0 for an empty spec)."""
    met = constraints_met(text, spec)
    return sum(met) / len(met) if met else 0.0


def all_met(text: str, spec: Any) -> bool:
    met = constraints_met(text, spec)
    return bool(met) and all(met)


# ---------------------------------------------------------------- the task


@dataclass(frozen=True)
class InstructionsTask:
    """Verifiable instructions for a chat model: score = fraction of constraints met,
    correct = all met. `chat`: prompts are user turns, rendered with the chat template."""

    name: str = "instructions"
    chat: bool = True

    def prompts(self, split: str, n: int, seed: int = 0) -> list[dict]:
        return instruction_prompts(split, n, seed)

    def sft_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        raise ValueError("task 'instructions' has no SFT demonstrations (no gold completion exists); "
                         "use an on-policy method (grpo, ppo) with reward instruction_following")

    def preference_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        raise ValueError("task 'instructions' has no built-in preference pairs: build them by sampling the "
                         "model and ranking with reward instruction_following")

    def pretrain_corpus(self, n: int, seed: int = 0) -> list[str]:
        raise ValueError("task 'instructions' has no pretraining corpus: it is for a pretrained chat model")

    def correct(self, completions: list[str], answers: list) -> list[bool]:
        return [all_met(c, a) for c, a in zip(completions, answers, strict=True)]

    def score(self, prompts: list[str], completions: list[str], answers: list) -> list[float]:
        del prompts  # the constraints are in the answers
        return [fraction_met(c, a) for c, a in zip(completions, answers, strict=True)]
