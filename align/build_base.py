"""Build a built-in base model offline: tokenizer, random init, pretraining with our SFT trainer.

    align build-base                 # builds builtin:tiny-arith into $ALIGN_HOME/bases/tiny-arith
    align build-base --force         # rebuild

Steps, all deterministic: (1) the built-in char-level tokenizer and a random Llama-style init
(`scratch:<size>`, seed 0); (2) full-mode training of every token of the task world's noisy
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
from pathlib import Path

from align.models import align_home, builtin_base_dir

# The pretraining recipe of each built-in base, as dotted overrides of the recipe defaults.
BASE_RECIPES: dict[str, list[str]] = {
    "builtin:tiny-arith": [
        "method=sft",
        "mode=full",
        "model=scratch:tiny-arith",
        "data.task=pretrain",
        "data.num_train=60000",
        "data.max_length=64",
        "sft.completion_only_loss=false",
        "optimizer.lr=0.003",
        "optimizer.schedule=cosine",
        "optimizer.warmup_steps=50",
        "optimizer.weight_decay=0.01",
        "train.steps=1500",
        "train.batch_size=64",
        "train.log_every=100",
        "train.seed=0",
        "eval.enabled=false",
        "tracking.wandb=false",
    ],
}


def scratch_model_dir(size: str) -> str:
    """A random-init model of a built-in size with the built-in tokenizer (seed 0), cached."""
    path = align_home() / "init" / size
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


def build_base(name: str = "builtin:tiny-arith", force: bool = False) -> str:
    """Build `name` if it is not cached (or `force`); return its folder."""
    from align.config import load_recipe
    from align.trainers.sft import train_sft

    if name not in BASE_RECIPES:
        raise ValueError(f"unknown built-in base {name!r}; known: {sorted(BASE_RECIPES)}")
    final = builtin_base_dir(name)
    if (final / "config.json").exists() and not force:
        return str(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=final.parent))
    print(f"building {name} (once; cached in {final}) ...", flush=True)
    t0 = time.time()
    cfg = load_recipe(None, BASE_RECIPES[name] + [f"output_dir={work / 'run'}"])
    run_dir = Path(train_sft(cfg).run_dir)
    shutil.copytree(run_dir / "model", work / "model")
    (work / "model" / "BUILD_INFO.txt").write_text(
        f"built by align build-base in {time.time() - t0:.0f}s with:\n" + "\n".join(BASE_RECIPES[name]) + "\n"
    )
    if final.exists():
        shutil.rmtree(final)
    os.replace(work / "model", final)
    shutil.rmtree(work, ignore_errors=True)
    print(f"built {name} in {time.time() - t0:.0f}s", flush=True)
    return str(final)
