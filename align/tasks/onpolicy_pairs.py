"""On-policy preference pairs (definitions, ranking, cache reader) for DPO and reward modelling on a real chat base, ranked by a verifier.

    align build-pairs chat_arithmetic_pairs     # once; `align train` does it before a run that needs it

What it does: for each prompt of a chat task (`chat_arithmetic`, `instructions`) it samples K
completions from the base (`PairSource.model`, chat template on, per-prompt seeds), scores each
with the task's verifier (`task.score`), ranks them by score, ties broken by concision (fewer
characters first), and keeps the best and the worst as a pair when their scores differ (a prompt
whose K samples all score the same says nothing about the verifier and gives no pair). Train and
eval pairs come from the task's disjoint splits. The pairs are generated once, reproducibly
(seeded), and cached under `$ALIGN_HOME/pairs/<name>-<fingerprint>/` as TRL-format JSONL
(`{"prompt": [user turn], "chosen": [assistant turn], "rejected": [assistant turn]}`, plus the
answer and both scores), which a user can read, with `BUILD_INFO.json` beside them.

`PAIR_SOURCES` fixes every setting (model, K, prompts, temperature, length) so that a recipe's
`data.task: chat_arithmetic_pairs` always means the same pairs; the fingerprint changes with them.

The sampling itself is `align.build_pairs.build_pairs` (it loads the model, so it sits above the
tasks); this module holds the definitions, the ranking rule and the reader.

What it leaves out: training on the pairs (the DPO and reward trainers read them through the
pairs task in `align.tasks`, like any other built-in pairs).

Run: `align build-pairs chat_arithmetic_pairs` (about 5 minutes on 2 CPU cores).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from align.home import align_home


@dataclass(frozen=True)
class PairSource:
    task: str
    """The chat task whose prompts are sampled and whose verifier ranks the samples."""
    model: str = "builtin:smollm2-135m-instruct"
    samples_per_prompt: int = 6
    train_prompts: int = 224
    eval_prompts: int = 64
    temperature: float = 0.9
    max_new_tokens: int = 24
    seed: int = 0
    batch_size: int = 96


PAIR_SOURCES: dict[str, PairSource] = {
    "chat_arithmetic_pairs": PairSource(task="chat_arithmetic"),
    "instructions_pairs": PairSource(task="instructions", max_new_tokens=48, train_prompts=160, eval_prompts=48),
}


def fingerprint(name: str) -> str:
    return hashlib.sha256(json.dumps(asdict(PAIR_SOURCES[name]), sort_keys=True).encode()).hexdigest()[:12]


def pairs_dir(name: str) -> Path:
    return align_home() / "pairs" / f"{name}-{fingerprint(name)}"


def is_built(name: str) -> bool:
    return (pairs_dir(name) / "BUILD_INFO.json").is_file()


def not_built_message(name: str) -> str:
    return (f"the on-policy pairs {name!r} are not built on this machine: run `align build-pairs {name}` once "
            f"(`align train` does it before its run); they go to {pairs_dir(name)}")


def read_pairs(name: str, split: str) -> list[dict]:
    """The cached pairs of `split` ("train" / "eval") as TRL conversational rows; not built yet:
    FileNotFoundError saying how (loading never samples; preflight says it first, as one line)."""
    if not is_built(name):
        raise FileNotFoundError(not_built_message(name))
    with open(pairs_dir(name) / f"{split}.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def rank_samples(completions: list[str], scores: list[float]) -> tuple[int, int] | None:
    """(best, worst) indices by score, ties broken by concision; None when every score is equal."""
    order = sorted(range(len(completions)), key=lambda i: (-scores[i], len(completions[i]), i))
    best, worst = order[0], order[-1]
    return None if scores[best] == scores[worst] else (best, worst)
