"""The once-per-machine quality check of a built-in base: evaluate it (no training) and warn when
it lands outside its expected band, instead of letting a run train silently from a broken base.

- `check_base_quality(name, path)`: evaluates the base at `path` once per machine (cached under
  `$ALIGN_HOME/bases/quality/` by its sha256), warns outside `align.tasks.BUILTIN_BASES[name]`'s
  band, and returns the evaluation; the caller's RNG states and torch threads are kept;
- `evaluate_base(path)`: greedy and sampled accuracy on held-out arithmetic prompts
  (`align.evaluation.evaluate_task`), the sampled one over 4 eval seeds;
- `store_quality(sha, quality)`: record an evaluation (`align.build_base` does, after a build).

`align.models` runs the check when it first loads a built-in base; nothing here builds or trains.

Run: `python -c "from align.base_quality import evaluate_base; from align.builtin_bases import shipped_base_dir as d; print(evaluate_base(str(d('builtin:tiny-arith'))))"`.
"""

from __future__ import annotations

import json
import os
import random
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from align.evaluation import evaluate_task
from align.home import align_home, file_sha256
from align.tasks import BUILTIN_BASES, get_task

_QUALITY_CHECKED: dict[str, dict] = {}


def _quality_cache(sha: str) -> Path:
    return align_home() / "bases" / "quality" / f"{sha[:16]}.json"


def store_quality(sha: str, quality: dict) -> None:
    cache = _quality_cache(sha)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(quality, indent=2))
    os.replace(tmp, cache)


def check_base_quality(name: str, path: str) -> dict:
    """Evaluate the base at `path` once per machine (cached under $ALIGN_HOME by its sha256) and
    print a warning when it is outside `name`'s expected band, instead of letting a run train
    silently from a broken base. Returns the evaluation. The caller's RNG and threads are kept."""
    sha = file_sha256(Path(path) / "model.safetensors")
    if sha in _QUALITY_CHECKED:
        return _QUALITY_CHECKED[sha]
    cache = _quality_cache(sha)
    if cache.exists():
        quality = json.loads(cache.read_text())
    else:
        print(f"checking the quality of {name} on this machine (once) ...", file=sys.stderr, flush=True)
        with _caller_state_kept():
            quality = evaluate_base(path)
        store_quality(sha, quality)
    base = BUILTIN_BASES[name]
    low, high = base.sampled_accuracy_range
    greedy, sampled = quality["accuracy_greedy_4x256"], quality["accuracy_sampled_4x256"]
    if greedy < base.min_greedy_accuracy or not low <= sampled <= high:
        print(
            f"warning: the base {name} at {path} evaluates outside its expected band on this machine: "
            f"greedy accuracy {greedy:.3f} (expected >= {base.min_greedy_accuracy}), sampled {sampled:.3f} "
            f"(expected {low}-{high}; 4 x 256 held-out prompts). Results of runs from it will not match "
            f"the README. If these are the shipped weights, please report it with your CPU and torch version; "
            f"if you changed the base recipe, check it with scripts/studies/base_robustness.py.",
            file=sys.stderr, flush=True,
        )
    _QUALITY_CHECKED[sha] = quality
    return quality


def evaluate_base(path: str) -> dict[str, float]:
    """Quality of a built base on held-out prompts.

    `accuracy_greedy` / `accuracy_sampled` etc.: 256 prompts, eval seed 0 (what a run's
    `eval_before` shows at seed 0). `accuracy_sampled_4x256`: the sampled accuracy over 4 eval
    seeds (1,024 samples), whose sampling noise (std ~0.015) is half that of one 256-sample eval,
    so it is the figure the quality band is checked on.
    """
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    task = get_task("arithmetic")
    with torch.random.fork_rng():
        runs = [evaluate_task(model, tokenizer, task, n=256, split="eval", seed=s, max_new_tokens=20) for s in range(4)]
    result = dict(runs[0])
    result["accuracy_sampled_4x256"] = sum(r["accuracy_sampled"] for r in runs) / len(runs)
    result["accuracy_greedy_4x256"] = sum(r["accuracy_greedy"] for r in runs) / len(runs)
    return {k: round(v, 4) for k, v in result.items()}


@contextmanager
def _caller_state_kept():
    """Keep the calling process's torch threads and RNG states (torch, Python, NumPy) as they
    were. The quality check runs inside whatever first loads a base, often a training run that
    has already seeded itself and set its threads; without this, that run would continue with
    the evaluation's RNG state, and its first run would differ from every later one."""
    threads = torch.get_num_threads()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng():  # the CPU generator and every initialised CUDA one
            yield
    finally:
        torch.set_num_threads(threads)
        random.setstate(python_state)
        np.random.set_state(numpy_state)
