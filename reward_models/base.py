"""The one interface every reward shares: verifiable rules and learned reward models alike.

What it does:
- `RewardFunction`: a Protocol. A reward is called as
  `fn(prompts: list[str], completions: list[str], **metadata) -> RewardOutput`, where metadata
  carries per-row lists the trainer knows (`answers` for the built-in tasks, `response_lengths`
  in tokens) and the output holds one float per row plus per-row diagnostics in `info`;
- `needs_answer`: a reward that reads each row's answer (the `answers` metadata: a verifiable
  correctness reward) declares the class attribute `needs_answer = True`; one that does not (a
  learned reward model, format, length) declares False, and rows without an answer (a user's
  prompt file with no answer column) reach it with answer None. `reward_needs_answer(fn)` reads
  it (False when undeclared); PPO asks for an answer column only when a configured reward needs it,
  and then for an integer in every row (the answer-reading rewards compare integers);
- `RewardOutput(scores, info)`;
- a registry: `register_reward(name)` decorates a factory (a class or function taking keyword
  arguments), `build_reward(spec)` builds one from a recipe's spec: a name (`"arithmetic_correctness"`),
  a dict (`{"name": "length_penalty", "per_char": 0.01}`), or a weighted sum
  (`{"name": "weighted_sum", "terms": [[1.0, "arithmetic_correctness"], [0.1, "format"]]}`);
- `parse_reward_spec("1.0*learned + 0.2*format") -> RewardSpec`: a recipe's `rollout.reward`
  string, parsed once: its terms, whether it uses the learned reward role, which terms read
  answers, and `build(shared_base)`, the reward function (one term, or a `weighted_sum`).

What it leaves out: the rules themselves (`reward_models.verifiable`) and learned reward models
(`reward_models.learned`, registered under their own name; `build_reward` imports that module
on first use of a name it does not know yet).

Run: `python -c "from reward_models import build_reward; print(build_reward('arithmetic_correctness')(['Q: 1+2=? A:'], [' 3']))"`.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable


@dataclass
class RewardOutput:
    """One score per completion, plus per-row diagnostics (every list as long as `scores`)."""

    scores: list[float]
    info: dict[str, list] = field(default_factory=dict)

    def __post_init__(self):
        for key, values in self.info.items():
            if len(values) != len(self.scores):
                raise ValueError(f"reward info {key!r} has {len(values)} rows, scores have {len(self.scores)}")


@runtime_checkable
class RewardFunction(Protocol):
    """`fn(prompts, completions, **metadata) -> RewardOutput`; `name` labels its metrics."""

    name: str

    def __call__(self, prompts: list[str], completions: list[str], **metadata: Any) -> RewardOutput: ...


def reward_needs_answer(reward: Any) -> bool:
    """Whether a reward (an instance, or a registered factory) reads each row's answer: its
    declared `needs_answer`, False when it declares none (see the module docstring)."""
    return getattr(reward, "needs_answer", False) is True


REWARD_REGISTRY: dict[str, Callable[..., RewardFunction]] = {}

# Modules that register rewards when imported; tried in order when a name is not registered yet.
_PROVIDERS = ("reward_models.verifiable", "reward_models.instructions", "reward_models.learned")


def register_reward(name: str):
    """Decorator: register a reward factory (a class or a function of keyword arguments)."""

    def decorate(factory):
        if name in REWARD_REGISTRY and REWARD_REGISTRY[name] is not factory:
            raise ValueError(f"reward {name!r} is already registered")
        REWARD_REGISTRY[name] = factory
        return factory

    return decorate


def _lookup(name: str) -> Callable[..., RewardFunction]:
    for module in _PROVIDERS:
        if name in REWARD_REGISTRY:
            break
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:  # the module exists but one of its imports is missing
                raise
    if name not in REWARD_REGISTRY:
        raise ValueError(f"unknown reward {name!r}; registered rewards are {sorted(REWARD_REGISTRY)}")
    return REWARD_REGISTRY[name]


def build_reward(spec: str | dict | RewardFunction) -> RewardFunction:
    """A reward from a recipe spec: a name, `{"name": ..., **kwargs}`, or a reward object."""
    if isinstance(spec, str):
        return _lookup(spec)()
    if isinstance(spec, dict):
        kwargs = dict(spec)
        if "name" not in kwargs:
            raise ValueError(f"a reward spec dict needs a 'name' key, got {spec!r}")
        name = kwargs.pop("name")
        if name == "weighted_sum":
            terms = kwargs.pop("terms", None)
            if not terms:
                raise ValueError("weighted_sum needs 'terms': a list of [weight, reward spec]")
            kwargs["terms"] = [(float(weight), build_reward(term)) for weight, term in terms]
        return _lookup(name)(**kwargs)
    if callable(spec):
        return spec
    raise TypeError(f"cannot build a reward from {type(spec).__name__}: {spec!r}")


# ---- a recipe's reward string --------------------------------------------------------------------

LEARNED = "learned"  # the learned reward role in a reward string (reward_models.learned)
_TERM = re.compile(r"^\s*(?:([0-9.eE+-]+)\s*\*\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*$")


def reward_factory(name: str) -> Callable[..., RewardFunction]:
    """The registered factory of reward `name` (ValueError naming the registered ones)."""
    return _lookup(name)


@dataclass(frozen=True)
class RewardSpec:
    """A recipe's reward string, parsed: `terms` = ((weight, registered name), ...)."""

    text: str
    terms: tuple[tuple[float, str], ...]

    @property
    def uses_learned(self) -> bool:
        """Whether a term is the learned reward role (which needs `rollout.reward_model`)."""
        return any(name == LEARNED for _, name in self.terms)

    def answer_readers(self, key: str) -> list[str]:
        """The terms that read each prompt's answer (`needs_answer`), named for an error message:
        `["rollout.reward 'arithmetic_correctness'"]`, or `"... term 'x'"` inside a weighted sum."""
        single = len(self.terms) == 1 and self.text.strip() == self.terms[0][1]
        return [f"{key} {name!r}" if single else f"{key} term {name!r}"
                for _, name in self.terms if reward_needs_answer(_lookup(name))]

    def build(self, shared_base: Any = None) -> RewardFunction:
        """The reward function: one term with weight 1 is that reward itself, otherwise a
        `weighted_sum`. A `learned` term is built on `shared_base`, which must already hold the
        frozen reward role (`reward_models.learned.load_learned_reward`)."""
        def term(name: str) -> RewardFunction:
            if name == LEARNED:
                if shared_base is None:
                    raise ValueError("a learned reward term needs the shared base that holds the reward role")
                return build_reward({"name": LEARNED, "shared_base": shared_base})
            return build_reward(name)

        built = [(weight, term(name)) for weight, name in self.terms]
        if len(built) == 1 and built[0][0] == 1.0:
            return built[0][1]
        return build_reward({"name": "weighted_sum", "terms": built})


def parse_reward_spec(spec: str) -> RewardSpec:
    """'arithmetic_correctness' -> one term; '1.0*learned + 0.2*format' -> two terms.

    Every name must be a registered reward (`learned` is one); ValueError otherwise."""
    terms = []
    for part in spec.split("+"):
        match = _TERM.match(part)
        if match is None:
            raise ValueError(f"cannot read reward term {part.strip()!r}; write 'name' or 'weight*name'")
        weight, name = float(match.group(1)) if match.group(1) else 1.0, match.group(2)
        _lookup(name)  # raises ValueError naming the registered rewards
        terms.append((weight, name))
    return RewardSpec(spec, tuple(terms))
