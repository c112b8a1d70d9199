"""Where the built-in bases live and whether one can be loaded, without building or training it.

- `BASE_RECIPES`: the pretraining recipe of each built-in base, as dotted overrides of the recipe
  defaults (`align.build_base` trains it; `base_fingerprint` hashes it with its model size);
- `shipped_base_dir(name)`: the package's shipped weights (`align/tasks/bases/<name>/`);
  `builtin_base_dir(name)`: the cache's build (`$ALIGN_HOME/bases/<name>`);
- `shipped_base_usable`, `is_built`: whether the shipped weights come from the current recipe
  (damaged ones are a ConfigError), whether the cache holds a build from it;
- `loadable_base_path(name)`: the folder `name` loads from (shipped, else the cache's build), or
  one ConfigError line saying to run `align build-base`;
- `scratch_model_dir(size)`: a deterministic random init of a built-in size (seed 0), cached.

This is what loading (`align.models`) and the recipe checks (`align.preflight`) need of the bases;
building one (`align.build_base`, a use of the SFT trainer) sits above it, and the once-per-machine
quality check beside it (`align.base_quality`).

Run: `python -c "from align.builtin_bases import loadable_base_path as p; print(p('builtin:tiny-arith'))"`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from align.config import ConfigError
from align.home import align_home, file_sha256
from align.tasks.base_model import MODEL_SIZES, tiny_llama_config
from align.tasks.tokenizer import build_tokenizer

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


def builtin_base_dir(name: str) -> Path:
    return align_home() / "bases" / name.split(":", 1)[1]


def shipped_base_dir(name: str) -> Path:
    """Where the package keeps the shipped weights of built-in base `name`."""
    return Path(__file__).resolve().parent / "tasks" / "bases" / name.split(":", 1)[1]


def _fingerprint(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def base_fingerprint(name: str) -> str:
    """Changes whenever the base's recipe or its model size changes, so a stale cache is rebuilt
    (and only then: adding another size to MODEL_SIZES must not rebuild every base)."""
    recipe = BASE_RECIPES[name]
    size = next(o.split("scratch:", 1)[1] for o in recipe if o.startswith("model=scratch:"))
    return _fingerprint({"recipe": recipe, "size": MODEL_SIZES[size]})


def _shipped_base_problem(name: str) -> str | None:
    """Why the package's shipped weights of `name` are not loadable (None: they are).

    Weights of an older recipe (a developer changed BASE_RECIPES) are not loaded: the build from
    the current recipe is (`align build-base`, or `align train` before its run). Weights whose sha256 differs from their BUILD_INFO.json were
    damaged after shipping: that is an error, not something to paper over with a rebuild."""
    folder = shipped_base_dir(name)
    info_file = folder / "BUILD_INFO.json"
    if not info_file.exists() or not (folder / "model.safetensors").exists():
        return f"are missing from {folder}"
    info = json.loads(info_file.read_text())
    if info.get("fingerprint") != base_fingerprint(name):
        return f"in {folder} were built by another recipe than the current one"
    actual = file_sha256(folder / "model.safetensors")
    if actual != info.get("sha256"):
        raise ConfigError(  # one `error:` line from the CLI, not a traceback
            f"the shipped weights of {name} in {folder} are damaged (sha256 {actual[:12]}..., expected "
            f"{str(info.get('sha256'))[:12]}...): reinstall the package, or run `align build-base` and use its folder as `model`"
        )
    return None


def shipped_base_usable(name: str) -> bool:
    """Whether the package's shipped weights of `name` exist and come from the current recipe
    (ConfigError when they are damaged; see `_shipped_base_problem`)."""
    return _shipped_base_problem(name) is None


def is_built(name: str) -> bool:
    info = builtin_base_dir(name) / "BUILD_INFO.json"
    if not info.exists():
        return False
    return json.loads(info.read_text()).get("fingerprint") == base_fingerprint(name)


def loadable_base_path(name: str) -> str:
    """The folder that built-in base `name` loads from, without ever training it: the shipped
    weights when they come from the current recipe, else the cache's build from that recipe
    (`$ALIGN_HOME/bases/<name>`). Neither there: one ConfigError line saying why, and that
    `align build-base` builds it."""
    problem = _shipped_base_problem(name)
    if problem is None:
        return str(shipped_base_dir(name))
    if is_built(name):
        return str(builtin_base_dir(name))
    raise ConfigError(
        f"{name} is not built on this machine: its shipped weights {problem}, and {builtin_base_dir(name)} holds no "
        f"build from the current recipe; run `align build-base {name}` once (`align train` does it before its run)"
    )


def scratch_model_dir(size: str) -> str:
    """A random-init model of a built-in size with the built-in tokenizer (seed 0), cached."""
    path = align_home() / "init" / f"{size}-{_fingerprint(MODEL_SIZES.get(size))}"
    if (path / "config.json").exists():
        return str(path)
    import torch
    from transformers import LlamaForCausalLM

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
