"""Build a built-in base model offline: tokenizer, random init, pretraining with our SFT trainer.

    align build-base                 # builds builtin:tiny-arith into $ALIGN_HOME/bases/tiny-arith
    align build-base --force         # rebuild

Steps, all deterministic: (1) the built-in char-level tokenizer and a random Llama-style init
(`scratch:<size>`, seed 0); (2) full-mode training on the completions of the task world's noisy
pretraining corpus with the toolkit's own SFT trainer, using `recipes/base_tiny_arith.yaml`'s
settings (kept here too, so an installed package needs no checkout; a test checks they agree);
(3) the final model and tokenizer are moved into the cache atomically.

What it leaves out: larger bases. Any Hugging Face model id or local path works in a recipe's
`model` field instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from align.models import align_home, builtin_base_dir

# The pretraining recipe of each built-in base, as dotted overrides of the recipe defaults.
BASE_RECIPES: dict[str, list[str]] = {
    "builtin:tiny-arith": [
        "method=sft",
        "mode=full",
        "model=scratch:tiny-arith",
        "data.task=pretrain",
        "data.num_train=50000",
        "data.max_length=64",
        "sft.completion_only_loss=true",
        "optimizer.lr=0.003",
        "optimizer.beta2=0.98",
        "optimizer.schedule=cosine",
        "optimizer.warmup_steps=100",
        "optimizer.weight_decay=0.01",
        "train.steps=3000",
        "train.batch_size=32",
        "train.log_every=100",
        "train.seed=0",
        "train.threads=2",
        "eval.enabled=false",
        "tracking.wandb=false",
    ],
}


def _fingerprint(obj) -> str:
    import hashlib
    import json

    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def base_fingerprint(name: str) -> str:
    """Changes whenever the base's recipe or its model size changes, so a stale cache is rebuilt
    (and only then: adding another size to MODEL_SIZES must not rebuild every base)."""
    from align.tasks.base_model import MODEL_SIZES

    recipe = BASE_RECIPES[name]
    size = next(o.split("scratch:", 1)[1] for o in recipe if o.startswith("model=scratch:"))
    return _fingerprint({"recipe": recipe, "size": MODEL_SIZES[size]})


def is_built(name: str) -> bool:
    info = builtin_base_dir(name) / "BUILD_INFO.json"
    if not info.exists():
        return False
    import json

    return json.loads(info.read_text()).get("fingerprint") == base_fingerprint(name)


def scratch_model_dir(size: str) -> str:
    """A random-init model of a built-in size with the built-in tokenizer (seed 0), cached."""
    from align.tasks.base_model import MODEL_SIZES

    path = align_home() / "init" / f"{size}-{_fingerprint(MODEL_SIZES.get(size))}"
    if (path / "config.json").exists():
        return str(path)
    import torch
    from transformers import LlamaForCausalLM

    from align.tasks.base_model import tiny_llama_config
    from align.tasks.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), size))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{size}-", dir=path.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, path)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return str(path)


def _evaluate_base(path: str) -> dict[str, float]:
    """Greedy and sampled accuracy of the freshly built base on 256 held-out prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.evaluation import evaluate_task
    from align.tasks import get_task

    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    result = evaluate_task(model, tokenizer, get_task("arithmetic"), n=256, split="eval", seed=0, max_new_tokens=20)
    return {k: round(v, 4) for k, v in result.items()}


@contextmanager
def _caller_state_kept():
    """Keep the calling process's torch threads and RNG states (torch, Python, NumPy) as they
    were. A base is built inside whatever first asks for it, often a training run that has
    already seeded itself and set its threads; without this, that run would continue with the
    build's thread count and RNG state, and its first run would differ from every later one."""
    import random

    import numpy as np
    import torch

    threads = torch.get_num_threads()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng():  # the CPU generator and every initialised CUDA one
            yield
    finally:
        torch.set_num_threads(threads)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def build_base(name: str = "builtin:tiny-arith", force: bool = False) -> str:
    """Build `name` if it is not cached (or `force`); return its folder. The caller's torch
    threads and RNG states are the same afterwards (see `_caller_state_kept`)."""
    if name not in BASE_RECIPES:
        raise ValueError(f"unknown built-in base {name!r}; known: {sorted(BASE_RECIPES)}")
    final = builtin_base_dir(name)
    if is_built(name) and not force:
        return str(final)
    with _caller_state_kept():
        return _build(name, final)


def _build(name: str, final: Path) -> str:
    from align.config import load_recipe
    from align.trainers.sft import train_sft

    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=final.parent))
    print(f"building {name} (once; cached in {final}) ...", flush=True)
    t0 = time.time()
    cfg = load_recipe(None, BASE_RECIPES[name] + [f"output_dir={work / 'run'}"])
    run_dir = Path(train_sft(cfg).run_dir)
    shutil.copytree(run_dir / "model", work / "model")
    import json

    build_seconds = round(time.time() - t0, 1)
    quality = _evaluate_base(str(work / "model"))
    (work / "model" / "BUILD_INFO.json").write_text(json.dumps({
        "name": name, "fingerprint": base_fingerprint(name), "build_seconds": build_seconds,
        "eval_arithmetic": quality, "recipe": BASE_RECIPES[name],
    }, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(work / "model", final)
    shutil.rmtree(work, ignore_errors=True)
    print(f"built {name} in {build_seconds:.0f}s; arithmetic eval: {quality}", flush=True)
    return str(final)
