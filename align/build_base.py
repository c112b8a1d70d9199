"""Build a built-in base model offline: tokenizer, random init, pretraining with our SFT trainer.

    align build-base                 # rebuilds builtin:tiny-arith into $ALIGN_HOME/bases/tiny-arith
                                     # and says how it compares with the shipped weights
    align build-base --force         # rebuild even if that cache is current

Why the weights also ship with the package: training is deterministic on one CPU, but float
rounding differs between CPUs (other SIMD kernels, another summation order), and 3000 steps of
training carry a rounding difference into visibly different weights. The recipe was chosen so
that every such build lands in the same narrow quality band (`scripts/studies/base_robustness.py` checks
seeds x kernel sets; the table is in the README), yet only the shipped file makes every user
start from exactly the base that the README's figures were measured on. So `builtin:tiny-arith`
loads the shipped weights (checked against their sha256), and this module rebuilds them on
demand, for anyone who wants to see the recipe work or to change it.

Loading never trains: `align.models` loads the shipped weights, or a current build from the cache
(`loadable_base_path`), or stops with an error naming `align build-base`. Building is an explicit
step: `align build-base`, or `align train`, which calls `ensure_builtin_base` before it starts a
run from a `builtin:` base that is not loadable yet (shipped weights missing or from an older
recipe, and no current build in the cache). A Python caller does the same:

    from align.build_base import ensure_builtin_base
    ensure_builtin_base("builtin:tiny-arith")   # builds only when needed; returns the folder

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

from align.home import file_sha256
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
        "optimizer.lr=0.001",
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


def _shipped_base_problem(name: str) -> str | None:
    """Why the package's shipped weights of `name` are not loadable (None: they are).

    Weights of an older recipe (a developer changed BASE_RECIPES) are not loaded: the build from
    the current recipe is (`align build-base`, or `align train` before its run). Weights whose sha256 differs from their BUILD_INFO.json were
    damaged after shipping: that is an error, not something to paper over with a rebuild."""
    import json

    from align.models import shipped_base_dir

    folder = shipped_base_dir(name)
    info_file = folder / "BUILD_INFO.json"
    if not info_file.exists() or not (folder / "model.safetensors").exists():
        return f"are missing from {folder}"
    info = json.loads(info_file.read_text())
    if info.get("fingerprint") != base_fingerprint(name):
        return f"in {folder} were built by another recipe than the current one"
    actual = file_sha256(folder / "model.safetensors")
    if actual != info.get("sha256"):
        from align.config import ConfigError  # one `error:` line from the CLI, not a traceback

        raise ConfigError(
            f"the shipped weights of {name} in {folder} are damaged (sha256 {actual[:12]}..., expected "
            f"{str(info.get('sha256'))[:12]}...): reinstall the package, or run `align build-base` and use its folder as `model`"
        )
    return None


def shipped_base_usable(name: str) -> bool:
    """Whether the package's shipped weights of `name` exist and come from the current recipe
    (ConfigError when they are damaged; see `_shipped_base_problem`)."""
    return _shipped_base_problem(name) is None


def loadable_base_path(name: str) -> str:
    """The folder that built-in base `name` loads from, without ever training it: the shipped
    weights when they come from the current recipe, else the cache's build from that recipe
    (`$ALIGN_HOME/bases/<name>`). Neither there: one ConfigError line saying why, and that
    `align build-base` builds it."""
    from align.config import ConfigError
    from align.models import shipped_base_dir

    problem = _shipped_base_problem(name)
    if problem is None:
        return str(shipped_base_dir(name))
    if is_built(name):
        return str(builtin_base_dir(name))
    raise ConfigError(
        f"{name} is not built on this machine: its shipped weights {problem}, and {builtin_base_dir(name)} holds no "
        f"build from the current recipe; run `align build-base {name}` once (`align train` does it before its run)"
    )


def ensure_builtin_base(name: str) -> str:
    """The loadable folder of built-in base `name`, building it into the cache first only when
    neither the shipped weights nor a current build are there (`align train` calls this before a
    run starts; loading itself never builds)."""
    if shipped_base_usable(name):
        from align.models import shipped_base_dir

        return str(shipped_base_dir(name))
    return build_base(name)


_QUALITY_CHECKED: dict[str, dict] = {}


def _quality_cache(sha: str) -> Path:
    return align_home() / "bases" / "quality" / f"{sha[:16]}.json"


def _store_quality(sha: str, quality: dict) -> None:
    import json

    cache = _quality_cache(sha)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(quality, indent=2))
    os.replace(tmp, cache)


def check_base_quality(name: str, path: str) -> dict:
    """Evaluate the base at `path` once per machine (cached under $ALIGN_HOME by its sha256) and
    print a warning when it is outside `name`'s expected band, instead of letting a run train
    silently from a broken base. Returns the evaluation. The caller's RNG and threads are kept."""
    import json
    import sys

    from align.tasks import BUILTIN_BASES

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
        _store_quality(sha, quality)
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


def evaluate_base(path: str) -> dict[str, float]:
    """Quality of a built base on held-out prompts.

    `accuracy_greedy` / `accuracy_sampled` etc.: 256 prompts, eval seed 0 (what a run's
    `eval_before` shows at seed 0). `accuracy_sampled_4x256`: the sampled accuracy over 4 eval
    seeds (1,024 samples), whose sampling noise (std ~0.015) is half that of one 256-sample eval,
    so it is the figure the quality band is checked on.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.evaluation import evaluate_task
    from align.tasks import get_task

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


def compare_with_shipped(name: str, built: str) -> str:
    """One paragraph on how a rebuild at `built` compares with the shipped weights of `name`."""
    import json

    import torch
    from safetensors.torch import load_file

    from align.models import shipped_base_dir

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
    from align.config import ConfigError

    if name not in BASE_RECIPES:
        raise ConfigError(f"unknown built-in base {name!r}; known: {sorted(BASE_RECIPES)}")
    final = builtin_base_dir(name)
    if is_built(name) and not force:
        return str(final)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # The build's SFT run would see the launch and train as several processes.
        raise ConfigError(f"{name} cannot be built inside a multi-process launch: run `align build-base {name}` "
                          "once in one process, then launch")
    import torch

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
    import json

    from align.config import load_recipe
    from align.trainers.sft import train_sft

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
    import torch

    info = {
        "name": name, "fingerprint": base_fingerprint(name) if not overrides else None,
        "sha256": file_sha256(work / "model" / "model.safetensors"), "build_seconds": build_seconds,
        "eval_arithmetic": quality, "recipe": recipe,
        "built_with": {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()},
    }
    (work / "model" / "BUILD_INFO.json").write_text(json.dumps(info, indent=2))
    _store_quality(info["sha256"], quality)  # evaluated on this machine just now
    if final.exists():
        shutil.rmtree(final)
    os.replace(work / "model", final)
    shutil.rmtree(work, ignore_errors=True)
    print(f"built {name} in {build_seconds:.0f}s; arithmetic eval: {quality}", flush=True)
    return info
