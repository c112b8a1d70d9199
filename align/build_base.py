"""Build a built-in base model offline: tokenizer, random init, pretraining with our SFT trainer.

    align build-base                 # rebuilds builtin:tiny-arith into $ALIGN_HOME/bases/tiny-arith
                                     # and says how it compares with the shipped weights
    align build-base --force         # rebuild even if that cache is current

Why the weights also ship with the package: training is deterministic on one CPU, but float
rounding differs between CPUs (other SIMD kernels, another summation order), and 3000 steps of
training carry a rounding difference into visibly different weights. The recipe was chosen so
that every such build lands in the same narrow quality band (`scripts/studies/base_robustness.py` checks
seeds x kernel sets; the table is in docs/results.md), yet only the shipped file makes every user
start from exactly the base that the figures of docs/results.md were measured on. So `builtin:tiny-arith`
loads the shipped weights (checked against their sha256), and this module rebuilds them on
demand, for anyone who wants to see the recipe work or to change it.

Loading never trains: `align.models` loads the shipped weights, or a current build from the cache
(`align.builtin_bases.loadable_base_path`), or stops with an error naming `align build-base`;
nothing that loads imports this module (it sits above the SFT trainer it uses). Building is an
explicit step: `align build-base`, or `align train`, which calls `ensure_builtin_base` before it starts a
run from a `builtin:` base that is not loadable yet (shipped weights missing or from an older
recipe, and no current build in the cache). A Python caller does the same:

    from align.build_base import ensure_builtin_base
    ensure_builtin_base("builtin:tiny-arith")   # builds only when needed; returns the folder

Steps, all deterministic: (1) the built-in char-level tokenizer and a random Llama-style init
(`scratch:<size>`, seed 0); (2) full-mode training on the completions of the task world's noisy
pretraining corpus with the toolkit's own SFT trainer, using `recipes/base_tiny_arith.yaml`'s
settings (kept in `align.builtin_bases.BASE_RECIPES` too, so an installed package needs no
checkout; a test checks they agree);
(3) the final model and tokenizer are moved into the cache atomically.

What it leaves out: larger bases. Any Hugging Face model id or local path works in a recipe's
`model` field instead.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from align.base_quality import evaluate_base, store_quality
from align.builtin_bases import BASE_RECIPES, base_fingerprint, builtin_base_dir, is_built, shipped_base_dir, shipped_base_usable
from align.config import ConfigError, load_recipe
from align.home import file_sha256
from align.trainers.sft import train_sft


def ensure_builtin_base(name: str) -> str:
    """The loadable folder of built-in base `name`, building it into the cache first only when
    neither the shipped weights nor a current build are there (`align train` calls this before a
    run starts; loading itself never builds)."""
    if shipped_base_usable(name):
        return str(shipped_base_dir(name))
    return build_base(name)


def compare_with_shipped(name: str, built: str) -> str:
    """One paragraph on how a rebuild at `built` compares with the shipped weights of `name`."""
    shipped = shipped_base_dir(name)
    if not (shipped / "model.safetensors").exists():
        return f"no shipped weights of {name} to compare with"
    mine, theirs = load_file(str(Path(built) / "model.safetensors")), load_file(str(shipped / "model.safetensors"))
    if set(mine) != set(theirs) or any(mine[k].shape != theirs[k].shape for k in theirs):
        same = "a different model (other tensor names or shapes) from"
    else:
        diff = max(float((mine[k] - theirs[k]).abs().max()) for k in theirs)
        same = "bit-identical to" if diff == 0 else f"different from (max |weight difference| {diff:.3g})"
    q_built = json.loads((Path(built) / "BUILD_INFO.json").read_text())["eval_arithmetic"]
    q_shipped = json.loads((shipped / "BUILD_INFO.json").read_text())["eval_arithmetic"]
    return (
        f"the rebuild is {same} the shipped weights (built with {json.loads((shipped / 'BUILD_INFO.json').read_text()).get('built_with')}; "
        f"this machine: torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}).\n"
        f"  greedy / sampled accuracy (4 x 256 prompts): rebuild {q_built['accuracy_greedy_4x256']:.3f} / "
        f"{q_built['accuracy_sampled_4x256']:.3f}, shipped {q_shipped['accuracy_greedy_4x256']:.3f} / "
        f"{q_shipped['accuracy_sampled_4x256']:.3f}.\n"
        f"  Recipes use the shipped weights (`model: {name}`); to train from the rebuild, set `model={built}`."
    )


def build_base(name: str = "builtin:tiny-arith", force: bool = False) -> str:
    """Build `name` into the cache if it is not built there from the current recipe (or `force`);
    return its folder. The caller's torch thread count is the same afterwards."""
    if name not in BASE_RECIPES:
        raise ConfigError(f"unknown built-in base {name!r}; known: {sorted(BASE_RECIPES)}")
    final = builtin_base_dir(name)
    if is_built(name) and not force:
        return str(final)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # The build's SFT run would see the launch and train as several processes.
        raise ConfigError(f"{name} cannot be built inside a multi-process launch: run `align build-base {name}` "
                          "once in one process, then launch")
    # The build runs before a run in the same process (`align train`), and its recipe sets 2
    # threads. A run with `train.threads: 0` leaves torch's thread count as it finds it, so
    # without this the first run on a machine would run with the build's 2 threads and every
    # later one with torch's default (other kernels, other rounding, another result). The RNG
    # states need no keeping any more: nothing builds inside a run, and every run seeds Python,
    # NumPy and torch (CPU and CUDA) itself (`align.trainers.common.start_run`).
    threads = torch.get_num_threads()
    try:
        build_into(name, final)
    finally:
        torch.set_num_threads(threads)
    return str(final)


def build_into(name: str, final: Path, overrides: list[str] = ()) -> dict:
    """Train `name`'s recipe (plus `overrides`, e.g. another seed for a robustness study), evaluate
    it, and move the model with its BUILD_INFO.json into `final`; return the build info."""
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=final.parent))
    print(f"building {name} (cached in {final}) ...", flush=True)
    t0 = time.time()
    recipe = BASE_RECIPES[name] + list(overrides)
    cfg = load_recipe(None, recipe + [f"output_dir={work / 'run'}"])
    run_dir = Path(train_sft(cfg).run_dir)
    shutil.copytree(run_dir / "model", work / "model")
    # The training curve travels with the weights: loss and gradient norm every 100 steps show
    # whether a build trained smoothly (a spike is what an unstable recipe looks like).
    shutil.copy(run_dir / "metrics.jsonl", work / "model" / "build_metrics.jsonl")
    build_seconds = round(time.time() - t0, 1)
    quality = evaluate_base(str(work / "model"))
    info = {
        "name": name, "fingerprint": base_fingerprint(name) if not overrides else None,
        "sha256": file_sha256(work / "model" / "model.safetensors"), "build_seconds": build_seconds,
        "eval_arithmetic": quality, "recipe": recipe,
        "built_with": {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()},
    }
    (work / "model" / "BUILD_INFO.json").write_text(json.dumps(info, indent=2))
    store_quality(info["sha256"], quality)  # evaluated on this machine just now
    if final.exists():
        shutil.rmtree(final)
    os.replace(work / "model", final)
    shutil.rmtree(work, ignore_errors=True)
    print(f"built {name} in {build_seconds:.0f}s; arithmetic eval: {quality}", flush=True)
    return info
