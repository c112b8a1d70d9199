"""Checks a recipe against this machine before anything is written or loaded: `preflight(cfg)`.

`align.config.load_recipe` checks what a recipe says; `preflight` checks it against the disk. A
trainer runs it first (`align.trainers.common.start_run`), before anything is written or loaded:
- `model`: a known `builtin:` base that is loadable without training (its shipped weights, or a
  current build in `$ALIGN_HOME`; else the error says to run `align build-base`, which `align
  train` does before it starts a run), a known `scratch:` size, a model folder with config.json
  and tokenizer files (an adapter folder or a file is refused with what to set instead), or a
  valid hub id (with `HF_HUB_OFFLINE=1`, one in the local cache);
- `data.task`: on-policy pairs (`chat_arithmetic_pairs`, ...) are built (`align build-pairs`,
  which `align train` runs before a run);
- `output_dir`: `resume: true` finds a checkpoint there; a fresh run does not land in another
  run's folder;
- `dpo.init_adapter`, `rollout.init_adapter`, `rollout.reward_model` (when the run loads them): the folder
  exists, holds a save of the recipe's mode with the files that mode needs, and fits the recipe's
  model (shapes of the saved LoRA, full weights and scalar head, read from the safetensors headers,
  against the recipe's model built on the meta device);
- a policy's init adapter settles `lora.rank`, `lora.alpha`, `lora.targets` and `lora.rslora`
  (`_settle_lora`);
- `mode: full`: the run's folder has room for what the run will save (`_check_disk_room`: the
  trained copies' checkpoints with their AdamW state, and their exported weights; a full PPO run
  of SmolLM2-135M saves 4.0 GiB, its run folder measured 4.01), so a full disk stops it at the
  start, not at its last save (as two 23-minute runs of the PPO study learned).
  LoRA runs save a few MB and are not checked.
Each problem is one ConfigError line: key, path, what is wrong. `adapter_load_errors` wraps the
actual loads in the trainers, for a misfit these checks cannot foresee.

What it leaves out: nothing here downloads or loads weights (the model is built on the meta device
from its config; a hub id that is not cached is checked only for its form, and the load itself
says why it fails); data files (`load_recipe` checks that they exist, `align.data.loading` reads
them); the recipe's values themselves (`align.config_checks.validate`). (Shipped recipes name folders
that exist only after an earlier run, e.g. ppo_lora_rm.yaml's `reward_model: runs/rm_lora`, which
is why these checks run at the start of a run and not when a recipe is loaded.)

Run: `python -c "from align.config import load_recipe; from align.preflight import preflight; preflight(load_recipe('recipes/dpo_lora.yaml'))"`.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from align.builtin_bases import loadable_base_path
from align.checkpoint import KEEP_CHECKPOINTS, latest_checkpoint
from align.config import LoraSettings, RecipeConfig
from align.config_checks import ON_POLICY_METHODS, ConfigError, get_dotted, looks_like_path, path_exists, reward_spec
from align.fetched_bases import FETCHED_BASES, fetched_base_path
from align.gguf_io import gguf_config, is_gguf_path, require_gguf
from align.lora import TARGET_PRESETS, resolve_target_modules
from align.role_helpers import HEAD_FILE, hidden_size
from align.tasks import BUILTIN_BASES
from align.tasks.base_model import MODEL_SIZES, tiny_llama_config
from align.tasks.onpolicy_pairs import PAIR_SOURCES, not_built_message
from align.tasks.onpolicy_pairs import is_built as pairs_built
from align.tasks.tokenizer import build_tokenizer

_TRUE = {"1", "on", "yes", "true"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def preflight(cfg: RecipeConfig) -> RecipeConfig:
    """Check `cfg` against the disk before anything loads (see above), and settle `lora.rank`,
    `lora.alpha`, `lora.targets` and `lora.rslora` from a policy's init adapter (`_settle_lora`).
    Updates `cfg` in place and returns it; raises ConfigError."""
    _check_model(cfg.model)
    _check_output_dir(cfg)
    if cfg.data.task in PAIR_SOURCES and cfg.data.train_file is None and not pairs_built(cfg.data.task):
        raise ConfigError(f"data.task: {not_built_message(cfg.data.task)}")
    meta: list = []  # the recipe's model on the meta device, built on first use

    def recipe_model():
        if not meta:
            meta.append(_meta_model(cfg.model))
        return meta[0]

    for key, role in _saved_roles(cfg):
        _check_saved_role(cfg, key, role, recipe_model)
    if cfg.mode == "full":
        _check_disk_room(cfg, recipe_model())
    return cfg


def full_run_save_bytes(cfg: RecipeConfig, parameters: int) -> int:
    """What a `mode: full` run of a model with `parameters` weights writes at most at once: per
    trained copy (the policy; PPO's critic too) each live checkpoint holds the weights and AdamW's
    two moments (3 x 4 bytes, float32's: an upper bound for bfloat16 weights, whose moments are
    bfloat16 too), and the run exports the weights once in `cfg.dtype`. Live checkpoints: the newest
    KEEP_CHECKPOINTS and the one being written, only one when the run saves at its end alone
    (`train.save_every` 0 or >= the steps)."""
    copies = 2 if cfg.method == "ppo" else 1
    periodic = 0 < cfg.train.save_every < cfg.train.steps
    live_checkpoints = KEEP_CHECKPOINTS + 1 if periodic else 1
    export_bytes = 2 if cfg.dtype in ("bfloat16", "float16") else 4
    return copies * parameters * (live_checkpoints * 12 + export_bytes)


def _check_disk_room(cfg: RecipeConfig, meta_model: Any) -> None:
    """A full-mode run needs room for its saves (`full_run_save_bytes`) where it writes them; the
    folder's nearest existing parent is measured (the run folder is made later)."""
    if meta_model is None:
        return  # the model's size is unknown here (an uncached hub id): the load says the rest
    where = Path(cfg.output_dir) if cfg.output_dir is not None else Path("runs")
    existing = next((p for p in (where, *where.absolute().parents) if p.exists()), None)
    if existing is None:
        return
    need = full_run_save_bytes(cfg, sum(p.numel() for p in meta_model.parameters()))
    free = shutil.disk_usage(existing).free  # a resumed run's old checkpoints go only after its new one is written
    if free < need:
        raise ConfigError(f"output_dir: a mode=full {cfg.method} run of {cfg.model} saves up to {need / 2**30:.1f} GiB "
                          f"(checkpoints with AdamW state, and the exported weights) and {existing} has "
                          f"{free / 2**30:.1f} GiB free; free some space or set output_dir on another disk")


@contextmanager
def adapter_load_errors(key: str, path: str | os.PathLike | None) -> Iterator[None]:
    """Around the load of the saved role that recipe `key` names: a misfit that `preflight` could
    not foresee (peft's NoMatchingPeftModuleError, a shape mismatch, missing weights) becomes one
    ConfigError line naming the key and the path, not a traceback from deep inside peft."""
    try:
        yield
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        if path is None or isinstance(err, ConfigError):
            raise
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        if isinstance(err, RuntimeError) and not any("mismatch" in line or "state_dict" in line for line in lines):
            raise  # not a loading problem (out of memory, a device error): keep the traceback
        reason = next((line for line in lines if "mismatch" in line), lines[0] if lines else type(err).__name__)
        raise ConfigError(f"{key}: {path} cannot be loaded onto the recipe's model: {reason[:300]}") from err


def _saved_roles(cfg: RecipeConfig) -> list[tuple[str, str]]:
    """(recipe key, role) of every saved role this run will load."""
    keys = []
    if cfg.method == "dpo" and cfg.dpo.init_adapter is not None:
        keys.append(("dpo.init_adapter", "policy"))
    if cfg.method in ON_POLICY_METHODS:
        if cfg.rollout.init_adapter is not None:
            keys.append(("rollout.init_adapter", "policy"))
        if cfg.rollout.reward_model is not None and reward_spec(cfg).uses_learned:
            keys.append(("rollout.reward_model", "reward"))
    return keys


def _hub_offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_cached_file(repo_id: str, filename: str) -> str | None:
    """The local Hugging Face cache's copy of `filename` of model `repo_id`, or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # an id the cache cannot name: not cached
        return None
    return found if isinstance(found, str) else None


def _read_json(path: Path, key: str) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key}: {path} cannot be read ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: {path} is not a JSON object")
    return data


def _check_model(name: str) -> None:
    """`model`: a built-in name, an existing model folder, a GGUF file, or a hub id (checked offline only)."""
    if name in FETCHED_BASES:
        try:  # loading never fetches: `align train` fetches before the run, `align fetch-base` on its own
            fetched_base_path(name)
        except ConfigError as err:
            raise ConfigError(f"model: {err}") from None
        return
    if is_gguf_path(name):
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"model: {name} does not exist (a .gguf model must be a local file)")
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError as err:
            raise ConfigError(f"model: {name} cannot be read ({type(err).__name__}: {err})") from None
        if magic != b"GGUF":
            raise ConfigError(f"model: {name} is not a GGUF file (it does not start with the GGUF magic bytes)")
        require_gguf()
        return
    if name.startswith("builtin:"):
        if name not in BUILTIN_BASES:
            raise ConfigError(f"model: unknown built-in base {name!r}; built-in bases: {sorted([*BUILTIN_BASES, *FETCHED_BASES])}")
        try:  # loading never builds: say so before the run writes anything
            loadable_base_path(name)
        except ConfigError as err:
            raise ConfigError(f"model: {err}") from None
        return
    if name.startswith("scratch:"):
        if name.split(":", 1)[1] not in MODEL_SIZES:
            raise ConfigError(f"model: unknown scratch size {name!r}; sizes: {sorted('scratch:' + s for s in MODEL_SIZES)}")
        return
    path = Path(name)
    if path_exists(path, "model"):
        if not path.is_dir():
            raise ConfigError(f"model: {name} is a file; model takes a model folder (with config.json), a hub id or builtin:tiny-arith")
        if not (path / "config.json").is_file():
            if (path / "adapter_config.json").is_file():
                base = _read_json(path / "adapter_config.json", "model").get("base_model_name_or_path")
                raise ConfigError(f"model: {name} is a LoRA adapter, not a model: set model to its base ({base}) "
                                  "and dpo.init_adapter / rollout.init_adapter to this folder")
            raise ConfigError(f"model: {name} has no config.json: not a transformers model folder")
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            raise ConfigError(f"model: {name} has no tokenizer files ({' / '.join(_TOKENIZER_FILES[:2])}): "
                              "save the tokenizer into the model folder")
        return
    if looks_like_path(name):
        raise ConfigError(f"model: {name} does not exist (model takes a local model folder, a hub id like org/name, "
                          "or builtin:tiny-arith)")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ConfigError(f"model: {name!r} is neither a local folder nor a valid hub id (org/name)") from None
    if _hub_offline() and _hub_cached_file(name, "config.json") is None:
        raise ConfigError(f"model: {name} is neither a local folder nor in the local Hugging Face cache, and HF_HUB_OFFLINE=1 "
                          "forbids downloading it (download it once with a network, or point model at a local folder)")


def _check_output_dir(cfg: RecipeConfig) -> None:
    """`resume: true` needs a checkpoint; a fresh run must not land in another run's folder."""
    if cfg.output_dir is None:
        return  # a fresh folder under runs/ (resume without output_dir is refused by load_recipe)
    run_dir = Path(cfg.output_dir)
    if path_exists(run_dir, "output_dir") and not run_dir.is_dir():
        raise ConfigError(f"output_dir: {run_dir} is a file, not a run folder")
    if cfg.resume:
        if not run_dir.is_dir():
            raise ConfigError(f"resume: output_dir {run_dir} does not exist, so it holds no checkpoint to resume")
        if latest_checkpoint(run_dir) is None:
            raise ConfigError(f"resume: {run_dir} holds no checkpoint to resume ({run_dir / 'checkpoints' / 'latest'} is "
                              "missing or names no folder); drop resume=true to start a new run there")
    elif (run_dir / "checkpoints").exists():
        raise ConfigError(f"output_dir: {run_dir} already holds a run; pass resume=true to continue it, or choose another output_dir")


def _meta_model(name: str) -> Any:
    """The recipe's model built from its config on the meta device (no weights, no memory), for
    module names and shapes; None where its config is not on this machine (a hub id that is not
    cached) or transformers cannot build it here (the load itself will then say why)."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        if name in FETCHED_BASES:
            config = AutoConfig.from_pretrained(fetched_base_path(name))
        elif is_gguf_path(name):
            config = gguf_config(name)
        elif name.startswith(("builtin:", "scratch:")):
            size = BUILTIN_BASES[name].config_size if name.startswith("builtin:") else name.split(":", 1)[1]
            config = tiny_llama_config(len(build_tokenizer()), size)
        elif Path(name).is_dir():
            config = AutoConfig.from_pretrained(name)
        elif _hub_cached_file(name, "config.json") is not None:
            config = AutoConfig.from_pretrained(name, local_files_only=True)
        else:
            return None
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - a check that cannot run is skipped, never fatal
        return None


def _safetensors_shapes(path: Path, key: str) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from a safetensors file's header (no tensor is read); {} if absent."""
    if not path.is_file():
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except Exception as err:  # noqa: BLE001 - a damaged file: say which
        raise ConfigError(f"{key}: {path} cannot be read as safetensors ({type(err).__name__}: {err})") from None


def _in_out(module: Any) -> tuple[int, int] | None:
    """(input, output) width of a linear layer (GPT-2's Conv1D stores its weight transposed)."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features), int(module.out_features)
    if type(module).__name__ == "Conv1D":
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    return None


def _adapter_misfit(folder: Path, adapter: dict[str, Any], model: Any, key: str) -> str | None:
    """Why the LoRA adapter in `folder` cannot go onto `model`, or None if it fits."""
    modules = dict(model.named_modules())
    targets = adapter.get("target_modules")
    if isinstance(targets, list) and targets and not any(
        name == t or name.endswith("." + t) for name in modules for t in targets
    ):
        return f"none of its target modules ({', '.join(sorted(targets)[:3])}, ...) is in the model"
    for tensor, shape in _safetensors_shapes(folder / "adapter_model.safetensors", key).items():
        module_name, sep, part = tensor.removeprefix("base_model.model.").partition(".lora_")
        if not sep:
            continue
        module = modules.get(module_name)
        if module is None:
            return f"its layer {module_name} is not in the model"
        widths = _in_out(module)
        if widths is None or len(shape) != 2:
            continue
        if (part.startswith("A.") and shape[1] != widths[0]) or (part.startswith("B.") and shape[0] != widths[1]):
            return (f"its lora_{part.split('.')[0]} of {module_name} has shape {list(shape)}, "
                    f"the model's layer maps {widths[0]} -> {widths[1]}")
    return None


def _full_misfit(folder: Path, model: Any, key: str) -> str | None:
    """Why the full model saved in `folder` cannot be copied into `model`, or None if it fits."""
    index = folder / "model.safetensors.index.json"
    files = sorted(set(_read_json(index, key).get("weight_map", {}).values())) if index.is_file() else ["model.safetensors"]
    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        shapes.update(_safetensors_shapes(folder / name, key))
    params = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for name, shape in shapes.items():
        if name not in params:
            return f"its weight {name} is not in the model"
        if params[name] != shape:
            return f"its weight {name} has shape {list(shape)}, the model's {list(params[name])}"
    return None


def _head_misfit(folder: Path, model: Any, key: str) -> str | None:
    width = _safetensors_shapes(folder / HEAD_FILE, key).get("weight", (0, 0))[-1]
    hidden = hidden_size(model)
    return None if width == hidden else f"its scalar head reads {width} features, the model's hidden size is {hidden}"


def _check_saved_role(cfg: RecipeConfig, key: str, role: str, recipe_model) -> None:
    """A saved policy start (`*.init_adapter`) or reward model (`rollout.reward_model`): the folder
    exists, holds a save of the recipe's mode, and fits the recipe's model."""
    path = Path(get_dotted(cfg, key))
    if not path_exists(path, key):
        hint = f" (train one first: align train recipes/rm_lora.yaml output_dir={path})" if role == "reward" else ""
        raise ConfigError(f"{key}: {path} does not exist{hint}")
    if not path.is_dir():
        raise ConfigError(f"{key}: {path} is a file; {key} takes a folder")
    folder = path
    if role == "reward":  # a reward-model run folder, or its reward/ folder (reward_models.learned)
        found = [d for d in (path, path / "reward") if (d / HEAD_FILE).is_file()]
        if not found:
            raise ConfigError(f"{key}: {path} is neither a reward-model run folder (with reward/{HEAD_FILE}) nor a saved "
                              f"reward role (with {HEAD_FILE}); train one with `align train recipes/rm_lora.yaml`")
        folder = found[0]
    needed, other = ("adapter_config.json", "config.json") if cfg.mode == "lora" else ("config.json", "adapter_config.json")
    role_file = folder / "align_role.json"
    saved_mode = _read_json(role_file, key).get("mode") if role_file.is_file() else None
    if saved_mode is None and not (folder / needed).is_file() and (folder / other).is_file():
        saved_mode = "full" if cfg.mode == "lora" else "lora"
    if saved_mode is not None and saved_mode != cfg.mode:
        raise ConfigError(f"{key}: {folder} holds a {saved_mode}-mode save, but the recipe runs mode: {cfg.mode}")
    if not (folder / needed).is_file():
        inner = next((folder / d for d in ("adapter", "model") if (folder / d / needed).is_file()), None)
        raise ConfigError(f"{key}: {folder} has no {needed}" + (f"; did you mean {inner}?" if inner else ""))

    saved = _read_json(folder / needed, key)
    if cfg.mode == "lora" and saved.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"{key}: {folder} holds a {saved.get('peft_type')} adapter; only LoRA adapters can be loaded")
    saved_base = saved.get("base_model_name_or_path" if cfg.mode == "lora" else "_name_or_path")
    model = recipe_model()
    if model is not None:
        problem = (_adapter_misfit(folder, saved, model, key) if cfg.mode == "lora" else _full_misfit(folder, model, key))
        if problem is None and (folder / HEAD_FILE).is_file():
            problem = _head_misfit(folder, model, key)
        if problem is not None:
            raise ConfigError(f"{key}: {folder} was trained on another base model ({saved_base or 'not recorded'}) than "
                              f"the recipe's model ({cfg.model}): {problem}")
    if (isinstance(saved_base, str) and saved_base != cfg.model and not looks_like_path(saved_base)
            and not looks_like_path(cfg.model) and ":" not in cfg.model and not path_exists(cfg.model, "model")):
        # Two hub ids of the same architecture (e.g. a base and its -Instruct): it loads; say so.
        # Paths are not compared: one base has many paths (ALIGN_HOME, a moved folder, a cache).
        _note(f"warning: {key}: {folder} was trained on {saved_base}, the recipe's model is {cfg.model} "
              "(same shapes, so it loads; is that the base you meant?)")
    if role == "policy" and cfg.mode == "lora":
        _settle_lora(cfg, key, folder, saved, model)


def _note(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:  # one line, from the main process only
        print(message, flush=True)


def _target_preset(targets: Any, model: Any) -> str | None:
    """The `lora.targets` preset whose layers are exactly `targets` on `model`; "custom" when no
    preset matches; None when it cannot be told (model unknown, targets not an explicit list)."""
    if model is None or not isinstance(targets, list):
        return None
    for preset in TARGET_PRESETS:
        try:
            if set(resolve_target_modules(model, preset)) == set(targets):
                return preset
        except ValueError:
            continue
    return "custom"


def _settle_lora(cfg: RecipeConfig, key: str, folder: Path, adapter: dict[str, Any], model: Any) -> None:
    """A run started from a saved adapter trains that adapter as it is, so its rank, alpha,
    targets and scaling (rslora) are the run's. A `lora.*` value left at its default takes the
    adapter's (config.yaml and summary.json then record what was trained; in PPO the fresh value
    adapter gets the same shape); any other value must equal the adapter's, or the run is refused."""
    defaults = LoraSettings()
    saved = {
        "rank": adapter.get("r"),
        "alpha": float(adapter["lora_alpha"]) if isinstance(adapter.get("lora_alpha"), (int, float)) else None,
        "targets": _target_preset(adapter.get("target_modules"), model),
        "rslora": adapter.get("use_rslora") if isinstance(adapter.get("use_rslora"), bool) else None,
    }
    taken = []
    for name, value in saved.items():
        current = getattr(cfg.lora, name)
        if value is None or value == current:
            continue
        if value == "custom":
            message = f"targets {len(adapter['target_modules'])} layers that match no lora.targets preset"
            if current != defaults.targets:
                raise ConfigError(f"{key}: the adapter in {folder} {message}, but the recipe sets lora.targets {current!r}; "
                                  "leave lora.targets out of the recipe")
            _note(f"note: {key}: the adapter in {folder} {message}; lora.targets ({current!r}) applies to fresh adapters only")
            continue
        if current != getattr(defaults, name):
            raise ConfigError(f"{key}: the adapter in {folder} has lora.{name} {value!r}, but the recipe sets lora.{name} "
                              f"{current!r}; a run started from an adapter keeps its shape (set lora.{name}: {value!r}, "
                              "or leave it out of the recipe)")
        setattr(cfg.lora, name, value)
        taken.append(f"lora.{name}={value!r}")
    if taken:
        _note(f"{key}: took {', '.join(taken)} from the adapter in {folder}")
